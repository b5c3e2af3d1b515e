/* Shared by the CUDA op files: warp reductions and launch sizing. */
#ifndef CLUDA_KERNEL_COMMON_CUH
#define CLUDA_KERNEL_COMMON_CUH

#include <stdint.h>

#include "cuda_internal.h"

namespace cluda_kernels {

constexpr int kWarp = 32;
constexpr int kBlock = 256; /* threads per block for the row and elementwise kernels */
constexpr int kWarpsPerBlock = kBlock / kWarp;

/* Butterfly reductions: every lane ends with the same value, and the summation order is
 * fixed, so the result is deterministic. */
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = kWarp / 2; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

/* Global warp index and warp count of a 1-d launch (warp-per-row kernels). */
__device__ __forceinline__ int64_t global_warp() {
  return ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / kWarp;
}
__device__ __forceinline__ int64_t warp_count() { return (int64_t)gridDim.x * blockDim.x / kWarp; }

/* Blocks for `items` work items of `per_block` each, capped at `cap` (grid-stride loops
 * cover the rest). Never 0: callers return early for empty tensors. */
static inline unsigned grid_size(int64_t items, int64_t per_block, int64_t cap) {
  int64_t blocks = (items + per_block - 1) / per_block;
  if (blocks > cap) blocks = cap;
  if (blocks < 1) blocks = 1;
  return (unsigned)blocks;
}

/* Enough resident blocks to fill the GPU for grid-stride kernels whose result does not
 * depend on the grid (elementwise, per-row). */
static inline int64_t fill_cap(const cluda_cuda_device *d) {
  return (int64_t)(d->multiprocessors > 0 ? d->multiprocessors : 1) * 16;
}

} // namespace cluda_kernels

#endif

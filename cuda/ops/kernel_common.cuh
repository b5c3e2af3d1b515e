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

/* The position (n, y, x, c) of element i of an NHWC tensor [N, H, W, C] (channels fastest). */
struct NhwcPos {
  int64_t n;
  int y, x, c;
};
__device__ __forceinline__ NhwcPos nhwc_pos(int64_t i, int h, int w, int c) {
  NhwcPos p;
  p.c = (int)(i % c);
  const int64_t pix = i / c;
  p.x = (int)(pix % w);
  const int64_t t = pix / w;
  p.y = (int)(t % h);
  p.n = t / h;
  return p;
}

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

/* ---- Deterministic per-column sums in double (bias gradients, batchnorm statistics) ----
 * A [rows, cols] row-major matrix is cut into row chunks; a block (kWarp, TY) of the grid
 * (ceil(cols / kWarp), chunks) sums columns [kWarp blockIdx.x, +kWarp) over the rows of chunk
 * blockIdx.y into part[chunk, col], then one thread per column adds the chunk partials in
 * chunk order. Each thread sums every TY-th row of its chunk in order and thread row 0 adds
 * the TY sums in order: a fixed order whatever the schedule, and the chunking depends only
 * on the row count, so results are bitwise reproducible run to run. The shared arrays and
 * the kernels stay in the .cu files (the emulator instruments __shared__ declarations only
 * there); these are the pieces they have in common. */

/* Row chunks: about min_chunk_rows rows each, at most max_chunks (gridDim.y <= 65535), none
 * empty; a function of the row count only. */
static inline void row_chunking(int64_t rows, int64_t min_chunk_rows, int64_t max_chunks,
                                int64_t *chunks, int64_t *chunk_rows) {
  int64_t k = (rows + min_chunk_rows - 1) / min_chunk_rows;
  if (k > max_chunks) k = max_chunks;
  if (k < 1) k = 1;
  const int64_t per = (rows + k - 1) / k;
  *chunk_rows = per > 0 ? per : 1;
  *chunks = (rows + *chunk_rows - 1) / *chunk_rows;
  if (*chunks < 1) *chunks = 1;
}

/* This thread's sum of term(r) over the rows r0 + threadIdx.y, + TY, ... of chunk blockIdx.y
 * (term is only called for those rows). */
template <int TY, class Term>
__device__ __forceinline__ double chunk_column_sum(int64_t rows, int64_t chunk_rows, Term term) {
  const int64_t r0 = (int64_t)blockIdx.y * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  double s = 0.0;
  for (int64_t r = r0 + threadIdx.y; r < r1; r += TY)
    s += term(r);
  return s;
}

/* The TY per-thread sums of each column of the block, added in row order. sh is the kernel's
 * __shared__ double [TY][kWarp + 1]; contains __syncthreads, so every thread of the block
 * calls it. The result is meaningful in thread row 0 only. */
template <int TY, class Shared>
__device__ __forceinline__ double block_column_total(Shared &sh, double s) {
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  double t = 0.0;
  if (threadIdx.y == 0) {
#pragma unroll
    for (int k = 0; k < TY; k++)
      t += sh[k][threadIdx.x];
  }
  return t;
}

/* Column c of the chunk partials part [chunks, cols] added in chunk order. */
__device__ __forceinline__ double sum_chunk_partials(const double *__restrict__ part, int chunks,
                                                     int cols, int c) {
  double s = 0.0;
  for (int k = 0; k < chunks; k++)
    s += part[(int64_t)k * cols + c];
  return s;
}

} // namespace cluda_kernels

/* ---- Philox4x32-10 on the device, bit for bit the generator of src/rng.c ----
 * Dropout masks drawn on the GPU must equal the CPU's for the same key and index (tests
 * compare them exactly, and a run must not change when it moves between backends), so this
 * mirrors cluda_philox4x32_10, cluda_rng_bits and cluda_rng_uniform operation for operation:
 * __umulhi and the 32-bit product are the high and low halves of the CPU's 64-bit product. */
namespace cluda_kernels {

__device__ __forceinline__ void philox4x32_10(uint32_t c[4], uint32_t k0, uint32_t k1) {
#pragma unroll
  for (int round = 0; round < 10; round++) {
    const uint32_t hi0 = __umulhi(0xD2511F53u, c[0]), lo0 = 0xD2511F53u * c[0];
    const uint32_t hi1 = __umulhi(0xCD9E8D57u, c[2]), lo1 = 0xCD9E8D57u * c[2];
    const uint32_t n0 = hi1 ^ c[1] ^ k0, n2 = hi0 ^ c[3] ^ k1;
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
}

/* cluda_rng_bits: counter (index low 32 bits, index bits 32..47 | slot << 16, stream low,
 * stream high), key (seed low, seed high). */
__device__ __forceinline__ void rng_bits(const cluda_rng_key &key, uint64_t index,
                                         uint32_t out[4]) {
  out[0] = (uint32_t)index;
  out[1] = (uint32_t)((index >> 32) & 0xffffu) | (key.slot << 16);
  out[2] = (uint32_t)key.stream;
  out[3] = (uint32_t)(key.stream >> 32);
  philox4x32_10(out, (uint32_t)key.seed, (uint32_t)(key.seed >> 32));
}

/* cluda_rng_uniform: the top 24 bits of word 0 times 2^-24; both steps are exact in float. */
__device__ __forceinline__ float rng_uniform(const cluda_rng_key &key, uint64_t index) {
  uint32_t r[4];
  rng_bits(key, index, r);
  return (float)(r[0] >> 8) * (1.0f / 16777216.0f);
}

} // namespace cluda_kernels

#endif

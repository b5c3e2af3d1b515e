/* Softmax over the last axis on the GPU: one warp per row (grid-stride over rows), lanes
 * stride over the columns, so any row length works. Three passes over the row (max, sum of
 * exponentials, write); the row stays in L1/L2 between them. */
#include <math.h>

#include "kernel_common.cuh"

using namespace cluda_kernels;

namespace {

__global__ void softmax_forward_kernel(const float *x, float *y, int64_t rows, int cols) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t r = global_warp(); r < rows; r += warp_count()) {
    const float *xr = x + r * cols;
    float *yr = y + r * cols;
    float m = -INFINITY;
    for (int c = lane; c < cols; c += kWarp)
      m = fmaxf(m, xr[c]);
    m = warp_max(m);
    float s = 0.0f;
    for (int c = lane; c < cols; c += kWarp)
      s += expf(xr[c] - m);
    s = warp_sum(s);
    for (int c = lane; c < cols; c += kWarp)
      yr[c] = expf(xr[c] - m) / s;
  }
}

/* dx = y (dy - sum_j dy_j y_j) */
__global__ void softmax_backward_kernel(const float *y, const float *dy, float *dx, int64_t rows,
                                        int cols) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t r = global_warp(); r < rows; r += warp_count()) {
    const float *yr = y + r * cols, *gr = dy + r * cols;
    float *dr = dx + r * cols;
    float dot = 0.0f;
    for (int c = lane; c < cols; c += kWarp)
      dot += yr[c] * gr[c];
    dot = warp_sum(dot);
    for (int c = lane; c < cols; c += kWarp)
      dr[c] = yr[c] * (gr[c] - dot);
  }
}

} // namespace

extern "C" cluda_status cluda_cuda_softmax_forward(cluda_ctx *ctx, const cluda_tensor *x,
                                                   cluda_tensor *y) {
  const int64_t rows = cluda_tensor_rows(x);
  const int cols = cluda_tensor_cols(x);
  if (rows == 0 || cols == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const unsigned grid = grid_size(rows, kWarpsPerBlock, fill_cap(d));
  softmax_forward_kernel<<<grid, kBlock, 0, d->stream>>>(cluda_f32(x), cluda_f32(y), rows, cols);
  CLUDA_CUDA_CHECK_LAUNCH("softmax_forward", "softmax_forward_kernel");
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_softmax_backward(cluda_ctx *ctx, const cluda_tensor *y,
                                                    const cluda_tensor *dy, cluda_tensor *dx) {
  const int64_t rows = cluda_tensor_rows(y);
  const int cols = cluda_tensor_cols(y);
  if (rows == 0 || cols == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const unsigned grid = grid_size(rows, kWarpsPerBlock, fill_cap(d));
  softmax_backward_kernel<<<grid, kBlock, 0, d->stream>>>(cluda_f32(y), cluda_f32(dy),
                                                          cluda_f32(dx), rows, cols);
  CLUDA_CUDA_CHECK_LAUNCH("softmax_backward", "softmax_backward_kernel");
  return cluda_ok();
}

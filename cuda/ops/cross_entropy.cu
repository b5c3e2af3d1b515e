/* Per-pixel cross-entropy over the last axis on the GPU (semantics of ops.h: ignore_index
 * pixels give zero loss and gradient; the loss is the mean over ALL pixels).
 *
 * One warp per pixel row of K logits. The loss is reduced deterministically in double:
 * each warp accumulates its rows (a fixed grid-stride set) in a register, each block sums
 * its warps in warp order into partials[block], and a one-block kernel sums the partials
 * in a fixed tree and writes loss[0] on the device. The grid size depends only on the
 * number of rows, so the loss is bitwise reproducible on any GPU.
 *
 * A label that is neither ignore_index nor in [0, K) is reported: kernels record the
 * smallest such pixel index in the context's report word (atomicMin, so deterministic),
 * and the host reads it after the kernels and fails with CLUDA_ERR_ARG with the message
 * the CPU backend gives. Unlike the CPU backend the outputs have been written by then (do
 * not use them after a failure). That read waits for the stream: both directions
 * synchronise once per call. */
#include <math.h>

#include "kernel_common.cuh"

using namespace cluda_kernels;

namespace {

constexpr int64_t kMaxLossBlocks = 1024; /* fixed: the reduction order must not vary */
constexpr int kFinalBlock = 256;
constexpr unsigned long long kNoBadLabel = ~0ull;

__global__ void cross_entropy_forward_kernel(const float *logits, const uint8_t *labels,
                                             const float *weights, int ignore_index, int64_t rows,
                                             int classes, double *partials,
                                             unsigned long long *bad) {
  __shared__ double warp_sums[kWarpsPerBlock];
  const int lane = threadIdx.x % kWarp;
  double acc = 0.0;
  for (int64_t r = global_warp(); r < rows; r += warp_count()) {
    const int label = labels[r];
    if (label == ignore_index) continue;
    if (label >= classes) {
      if (lane == 0) atomicMin(bad, (unsigned long long)r);
      continue;
    }
    const float *xr = logits + r * classes;
    const double w = weights ? (double)weights[r] : 1.0;
    if (w == 0.0) continue; /* as the CPU: a zero weight contributes 0 even for inf logits */
    float m = -INFINITY;
    for (int c = lane; c < classes; c += kWarp)
      m = fmaxf(m, xr[c]);
    m = warp_max(m);
    float s = 0.0f;
    for (int c = lane; c < classes; c += kWarp)
      s += expf(xr[c] - m);
    s = warp_sum(s);
    const double logp = (double)xr[label] - (double)m - log((double)s);
    acc += -w * logp;
  }
  if (lane == 0) warp_sums[threadIdx.x / kWarp] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int k = 0; k < kWarpsPerBlock; k++)
      t += warp_sums[k];
    partials[blockIdx.x] = t;
  }
}

/* One block: loss[0] = (sum of partials) / rows. */
__global__ void cross_entropy_final_kernel(const double *partials, int count, double inv_rows,
                                           float *loss) {
  __shared__ double sh[kFinalBlock];
  double t = 0.0;
  for (int i = threadIdx.x; i < count; i += kFinalBlock)
    t += partials[i];
  sh[threadIdx.x] = t;
  __syncthreads();
  for (int half = kFinalBlock / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) sh[threadIdx.x] += sh[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) loss[0] = (float)(sh[0] * inv_rows);
}

/* dlogits = dloss w (softmax - onehot) / rows; zero on ignored (and bad) rows */
__global__ void cross_entropy_backward_kernel(const float *logits, const uint8_t *labels,
                                              const float *weights, int ignore_index, int64_t rows,
                                              int classes, const float *dloss, float inv_rows,
                                              float *dlogits, unsigned long long *bad) {
  const int lane = threadIdx.x % kWarp;
  const float g = dloss[0] * inv_rows;
  for (int64_t r = global_warp(); r < rows; r += warp_count()) {
    const int label = labels[r];
    const float *xr = logits + r * classes;
    float *dr = dlogits + r * classes;
    const float scale = label == ignore_index ? 0.0f : g * (weights ? weights[r] : 1.0f);
    if (label >= classes && label != ignore_index && lane == 0)
      atomicMin(bad, (unsigned long long)r);
    if (scale == 0.0f || label >= classes) { /* ignored, zero weight, zero dloss or bad */
      for (int c = lane; c < classes; c += kWarp)
        dr[c] = 0.0f;
      continue;
    }
    float m = -INFINITY;
    for (int c = lane; c < classes; c += kWarp)
      m = fmaxf(m, xr[c]);
    m = warp_max(m);
    float s = 0.0f;
    for (int c = lane; c < classes; c += kWarp)
      s += expf(xr[c] - m);
    s = warp_sum(s);
    for (int c = lane; c < classes; c += kWarp) {
      const float p = expf(xr[c] - m) / s;
      dr[c] = scale * (p - (c == label ? 1.0f : 0.0f));
    }
  }
}

/* Waits for the stream and fails when a kernel reported an out-of-range label. */
cluda_status check_labels(const cluda_cuda_device *d, const char *op, const cluda_tensor *labels,
                          int classes, int ignore_index) {
  unsigned long long first_bad = kNoBadLabel;
  CLUDA_CUDA_TRY(
      cudaMemcpyAsync(&first_bad, d->report, sizeof first_bad, cudaMemcpyDeviceToHost, d->stream));
  CLUDA_CUDA_TRY(cudaStreamSynchronize(d->stream));
  if (first_bad == kNoBadLabel) return cluda_ok();
  uint8_t value = 0;
  CLUDA_CUDA_TRY(
      cudaMemcpyAsync(&value, cluda_u8(labels) + first_bad, 1, cudaMemcpyDeviceToHost, d->stream));
  CLUDA_CUDA_TRY(cudaStreamSynchronize(d->stream));
  const int64_t i = (int64_t)first_bad;
  const int h = labels->shape[1], w = labels->shape[2];
  return CLUDA_FAIL(CLUDA_ERR_ARG,
                    "%s: label %d at pixel (n=%d, h=%d, w=%d) is neither a class (< K = %d) nor "
                    "ignore_index %d",
                    op, (int)value, (int)(i / ((int64_t)h * w)), (int)(i / w % h), (int)(i % w),
                    classes, ignore_index);
}

} // namespace

extern "C" cluda_status cluda_cuda_cross_entropy_forward(cluda_ctx *ctx, const cluda_tensor *logits,
                                                         const cluda_tensor *labels,
                                                         const cluda_tensor *weights,
                                                         int ignore_index, cluda_tensor *loss) {
  const int64_t rows = cluda_tensor_rows(logits);
  const int classes = cluda_tensor_cols(logits);
  cluda_cuda_device *d = cluda_cuda_dev(ctx);
  if (rows == 0 || classes == 0) {
    /* no pixels: nothing to average; 0 as the CPU backend */
    CLUDA_CUDA_TRY(cudaMemsetAsync(cluda_f32(loss), 0, sizeof(float), d->stream));
    return cluda_ok();
  }
  const unsigned grid = grid_size(rows, kWarpsPerBlock, kMaxLossBlocks);
  cluda_arena *scratch = ctx->scratch;
  CLUDA_REQUIRE(scratch != NULL, CLUDA_ERR_ALLOC,
                "cross_entropy_forward: needs %zu bytes of device scratch and ctx->scratch is NULL",
                (size_t)grid * sizeof(double));
  const size_t mark = cluda_arena_mark(scratch);
  void *partials = NULL;
  CLUDA_TRY(cluda_arena_alloc(scratch, (size_t)grid * sizeof(double),
                              "cross_entropy_forward partials", &partials));
  cudaError_t err = cudaMemsetAsync(d->report, 0xFF, sizeof(unsigned long long), d->stream);
  if (err == cudaSuccess) {
    cross_entropy_forward_kernel<<<grid, kBlock, 0, d->stream>>>(
        cluda_f32(logits), cluda_u8(labels), weights ? cluda_f32(weights) : NULL, ignore_index,
        rows, classes, (double *)partials, d->report);
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) {
    cross_entropy_final_kernel<<<1, kFinalBlock, 0, d->stream>>>(
        (const double *)partials, (int)grid, 1.0 / (double)rows, cluda_f32(loss));
    err = cudaGetLastError();
  }
  cluda_arena_release(scratch, mark);
  if (err != cudaSuccess)
    return CLUDA_FAIL(CLUDA_ERR_DEVICE, "cross_entropy_forward: %s: %s", cudaGetErrorName(err),
                      cudaGetErrorString(err));
  return check_labels(d, "cross_entropy_forward", labels, classes, ignore_index);
}

extern "C" cluda_status
cluda_cuda_cross_entropy_backward(cluda_ctx *ctx, const cluda_tensor *logits,
                                  const cluda_tensor *labels, const cluda_tensor *weights,
                                  int ignore_index, const cluda_tensor *dloss,
                                  cluda_tensor *dlogits) {
  const int64_t rows = cluda_tensor_rows(logits);
  const int classes = cluda_tensor_cols(logits);
  if (rows == 0 || classes == 0) return cluda_ok();
  cluda_cuda_device *d = cluda_cuda_dev(ctx);
  CLUDA_CUDA_TRY(cudaMemsetAsync(d->report, 0xFF, sizeof(unsigned long long), d->stream));
  const unsigned grid = grid_size(rows, kWarpsPerBlock, fill_cap(d));
  cross_entropy_backward_kernel<<<grid, kBlock, 0, d->stream>>>(
      cluda_f32(logits), cluda_u8(labels), weights ? cluda_f32(weights) : NULL, ignore_index, rows,
      classes, cluda_f32(dloss), (float)(1.0 / (double)rows), cluda_f32(dlogits), d->report);
  CLUDA_CUDA_CHECK_LAUNCH("cross_entropy_backward", "cross_entropy_backward_kernel");
  return check_labels(d, "cross_entropy_backward", labels, classes, ignore_index);
}

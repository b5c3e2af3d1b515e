/* BatchNorm2d over N, H, W of NHWC on the GPU (the CPU twin is src/ops/batchnorm.c).
 *
 * Training: per-channel mean, then the sum of squared deviations about it (two passes, not
 * E[x^2] - E[x]^2, which cancels when |mean| is large against the spread), both summed in
 * double; the biased variance normalises, the unbiased one (rows - 1) moves the running
 * variance: running = (1 - momentum) running + momentum batch. Saves the batch mean and
 * 1/sqrt(var + eps); y is computed from the double statistics like the CPU.
 * Inference: saves the running mean and 1/sqrt(running_var + eps) and normalises with them.
 *
 * Every per-channel reduction is deterministic without atomics: a partials kernel gives
 * each (row chunk, 32 channels) block a fixed set of rows, each thread sums every kTy-th row
 * of its chunk in order and row 0 of the block adds the kTy sums in order, into
 * part[chunk, C] (double) in the scratch arena; a final kernel adds the chunks in order. The
 * chunking depends only on the shape, so results are bitwise reproducible run to run.
 *
 * Backward: sums of dy and dy xhat per channel (the same partials scheme; dgamma and dbeta
 * ACCUMULATE them), then dx = gamma rstd (dy - mean(dy) - xhat mean(dy xhat)) in training
 * and dx = gamma rstd dy in inference (fixed statistics), dx overwritten.
 *
 * Scratch: (chunks + 2) C doubles forward, (2 chunks + 3) C backward, chunks <= 256, taken
 * from ctx->scratch and released before returning (the kernels that use it are queued
 * before anything queued later on the stream).
 *
 * SyncBatchNorm (ctx->bn_sync of more than one rank, training) is not implemented on the
 * GPU: the statistics would have to be all-reduced between the passes (NCCL on device
 * buffers, or MPI through host copies). Such calls fail with CLUDA_ERR_UNSUPPORTED; in
 * inference nothing is synchronised, so bn_sync is ignored there as on the CPU. */
#include <math.h>

#include "cluda/comm.h"
#include "kernel_common.cuh"

using namespace cluda_kernels;

namespace {

constexpr int kTy = 8; /* rows handled side by side in a partials block */
constexpr int64_t kMaxChunks = 256;
constexpr int64_t kMinChunkRows = 64;

/* Block (32, kTy) of grid (ceil(C / 32), chunks): part[k, c] = sum over the rows
 * [k chunk_rows, (k + 1) chunk_rows) of x[r, c] (center NULL) or (x[r, c] - center[c])^2. */
__global__ void bn_sum_partials_kernel(const float *__restrict__ x,
                                       const double *__restrict__ center, int64_t rows, int cols,
                                       int64_t chunk_rows, double *__restrict__ part) {
  __shared__ double sh[kTy][kWarp + 1];
  const int c = blockIdx.x * kWarp + threadIdx.x;
  double s = 0.0;
  if (c < cols) {
    if (center) {
      const double m = center[c];
      s = chunk_column_sum<kTy>(rows, chunk_rows, [&](int64_t r) {
        const double t = (double)x[r * cols + c] - m;
        return t * t;
      });
    } else {
      s = chunk_column_sum<kTy>(rows, chunk_rows,
                                [&](int64_t r) { return (double)x[r * cols + c]; });
    }
  }
  const double t = block_column_total<kTy>(sh, s);
  if (threadIdx.y == 0 && c < cols) part[(int64_t)blockIdx.y * cols + c] = t;
}

/* mean[c] = (sum of the chunk partials in order) / rows */
__global__ void bn_mean_kernel(const double *__restrict__ part, int chunks, int cols, int64_t rows,
                               double *__restrict__ mean) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x)
    mean[c] = sum_chunk_partials(part, chunks, cols, c) / (double)rows;
}

/* From the chunk partials of the squared deviations: the saved statistics, the running
 * update and scale[c] = rstd gamma[c] for the normalisation (as the CPU, in double). */
__global__ void bn_stats_kernel(const double *__restrict__ part, int chunks, int cols, int64_t rows,
                                double eps, double momentum, const double *__restrict__ mean,
                                const float *__restrict__ gamma, float *__restrict__ running_mean,
                                float *__restrict__ running_var, float *__restrict__ save_mean,
                                float *__restrict__ save_rstd, double *__restrict__ scale) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
    const double s = sum_chunk_partials(part, chunks, cols, c);
    const double biased = s / (double)rows, unbiased = s / (double)(rows - 1);
    const double rs = 1.0 / sqrt(biased + eps);
    save_mean[c] = (float)mean[c];
    save_rstd[c] = (float)rs;
    running_mean[c] = (float)((1.0 - momentum) * running_mean[c] + momentum * mean[c]);
    running_var[c] = (float)((1.0 - momentum) * running_var[c] + momentum * unbiased);
    scale[c] = rs * gamma[c];
  }
}

/* y = (x - mean) rstd gamma + beta with the double statistics (training) */
__global__ void bn_normalize_kernel(const float *__restrict__ x, const double *__restrict__ mean,
                                    const double *__restrict__ scale,
                                    const float *__restrict__ beta, float *__restrict__ y,
                                    int64_t total, int cols) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int c = (int)(i % cols);
    y[i] = (float)(((double)x[i] - mean[c]) * scale[c] + (double)beta[c]);
  }
}

/* inference: save_mean = running_mean, save_rstd = 1/sqrt(running_var + eps) */
__global__ void bn_inference_stats_kernel(const float *__restrict__ running_mean,
                                          const float *__restrict__ running_var, double eps,
                                          int cols, float *__restrict__ save_mean,
                                          float *__restrict__ save_rstd) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
    save_mean[c] = running_mean[c];
    save_rstd[c] = (float)(1.0 / sqrt((double)running_var[c] + eps));
  }
}

/* inference: y = (x - save_mean) save_rstd gamma + beta, in double from the saved floats */
__global__ void bn_inference_kernel(const float *__restrict__ x, const float *__restrict__ mean,
                                    const float *__restrict__ rstd, const float *__restrict__ gamma,
                                    const float *__restrict__ beta, float *__restrict__ y,
                                    int64_t total, int cols) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int c = (int)(i % cols);
    y[i] = (float)(((double)x[i] - (double)mean[c]) * (double)rstd[c] * (double)gamma[c] +
                   (double)beta[c]);
  }
}

/* Block (32, kTy) of grid (ceil(C / 32), chunks): the chunk's sums of dy and of
 * dy xhat, xhat = (x - save_mean) save_rstd, into part_dy / part_dyx [chunk, C]. */
__global__ void bn_backward_partials_kernel(const float *__restrict__ x,
                                            const float *__restrict__ dy,
                                            const float *__restrict__ mean,
                                            const float *__restrict__ rstd, int64_t rows, int cols,
                                            int64_t chunk_rows, double *__restrict__ part_dy,
                                            double *__restrict__ part_dyx) {
  __shared__ double sh_dy[kTy][kWarp + 1];
  __shared__ double sh_dyx[kTy][kWarp + 1];
  const int c = blockIdx.x * kWarp + threadIdx.x;
  const int64_t r0 = (int64_t)blockIdx.y * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  double sdy = 0.0, sdyx = 0.0;
  if (c < cols) {
    const double m = mean[c], rs = rstd[c];
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kTy) {
      const double g = (double)dy[r * cols + c];
      sdy += g;
      sdyx += g * (((double)x[r * cols + c] - m) * rs);
    }
  }
  sh_dy[threadIdx.y][threadIdx.x] = sdy;
  sh_dyx[threadIdx.y][threadIdx.x] = sdyx;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    double a = 0.0, b = 0.0;
#pragma unroll
    for (int k = 0; k < kTy; k++) {
      a += sh_dy[k][threadIdx.x];
      b += sh_dyx[k][threadIdx.x];
    }
    part_dy[(int64_t)blockIdx.y * cols + c] = a;
    part_dyx[(int64_t)blockIdx.y * cols + c] = b;
  }
}

/* Adds the chunk sums in order: dgamma += sum(dy xhat), dbeta += sum(dy); the dx
 * coefficients kc = gamma rstd, ac = mean(dy), bc = mean(dy xhat) (0, 0 in inference). */
__global__ void bn_backward_coef_kernel(const double *__restrict__ part_dy,
                                        const double *__restrict__ part_dyx, int chunks, int cols,
                                        int64_t rows, int training, const float *__restrict__ gamma,
                                        const float *__restrict__ rstd, float *__restrict__ dgamma,
                                        float *__restrict__ dbeta, double *__restrict__ kc,
                                        double *__restrict__ ac, double *__restrict__ bc) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
    const double sdy = sum_chunk_partials(part_dy, chunks, cols, c);
    const double sdyx = sum_chunk_partials(part_dyx, chunks, cols, c);
    dgamma[c] += (float)sdyx;
    dbeta[c] += (float)sdy;
    kc[c] = (double)gamma[c] * (double)rstd[c];
    ac[c] = training ? sdy / (double)rows : 0.0;
    bc[c] = training ? sdyx / (double)rows : 0.0;
  }
}

/* dx = kc (dy - ac - xhat bc) */
__global__ void bn_backward_dx_kernel(const float *__restrict__ x, const float *__restrict__ dy,
                                      const float *__restrict__ mean,
                                      const float *__restrict__ rstd, const double *__restrict__ kc,
                                      const double *__restrict__ ac, const double *__restrict__ bc,
                                      float *__restrict__ dx, int64_t total, int cols) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int c = (int)(i % cols);
    const double xhat = ((double)x[i] - (double)mean[c]) * (double)rstd[c];
    dx[i] = (float)(kc[c] * ((double)dy[i] - ac[c] - xhat * bc[c]));
  }
}

/* Takes `count` doubles from the scratch arena. */
cluda_status take_doubles(const char *op, cluda_arena *a, int64_t count, const char *what,
                          double **out) {
  *out = NULL;
  const size_t bytes = (size_t)count * sizeof(double);
  CLUDA_REQUIRE(a != NULL, CLUDA_ERR_ALLOC,
                "%s: needs %zu bytes of device scratch (%s) and ctx->scratch is NULL", op, bytes,
                what);
  void *p = NULL;
  CLUDA_TRY(cluda_arena_alloc(a, bytes, what, &p));
  *out = (double *)p;
  return cluda_ok();
}

/* SyncBatchNorm is not implemented on the GPU (see the file comment). */
cluda_status check_no_sync(const char *op, const cluda_ctx *ctx, const cluda_batchnorm_params *p) {
  if (p->training && ctx->bn_sync && ctx->bn_sync->size > 1)
    return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED,
                      "%s: SyncBatchNorm (ctx->bn_sync over %d ranks) is not supported by the "
                      "CUDA backend yet; train with per-rank statistics (model.sync_bn off) or on "
                      "the CPU backend",
                      op, ctx->bn_sync->size);
  return cluda_ok();
}

/* Returns the arena to its mark when the scope ends. */
struct ScratchScope {
  cluda_arena *arena;
  size_t mark;
  explicit ScratchScope(cluda_arena *a) : arena(a), mark(a ? cluda_arena_mark(a) : 0) {}
  ScratchScope(const ScratchScope &) = delete;
  ScratchScope &operator=(const ScratchScope &) = delete;
  ~ScratchScope() {
    if (arena) cluda_arena_release(arena, mark);
  }
};

} // namespace

extern "C" cluda_status
cluda_cuda_batchnorm_forward(cluda_ctx *ctx, const cluda_batchnorm_params *p, const cluda_tensor *x,
                             const cluda_tensor *gamma, const cluda_tensor *beta,
                             cluda_tensor *running_mean, cluda_tensor *running_var, cluda_tensor *y,
                             cluda_tensor *save_mean, cluda_tensor *save_rstd) {
  static const char op[] = "batchnorm_forward";
  CLUDA_TRY(check_no_sync(op, ctx, p));
  const int cols = x->shape[3];
  const int64_t rows = cluda_tensor_rows(x), total = rows * cols;
  if (cols == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const unsigned cgrid = grid_size(cols, kBlock, fill_cap(d));
  const unsigned egrid = grid_size(total, kBlock, fill_cap(d));

  if (!p->training) {
    bn_inference_stats_kernel<<<cgrid, kBlock, 0, d->stream>>>(
        cluda_f32(running_mean), cluda_f32(running_var), (double)p->eps, cols, cluda_f32(save_mean),
        cluda_f32(save_rstd));
    CLUDA_CUDA_CHECK_LAUNCH(op, "bn_inference_stats_kernel");
    if (total == 0) return cluda_ok();
    bn_inference_kernel<<<egrid, kBlock, 0, d->stream>>>(
        cluda_f32(x), cluda_f32(save_mean), cluda_f32(save_rstd), cluda_f32(gamma), cluda_f32(beta),
        cluda_f32(y), total, cols);
    CLUDA_CUDA_CHECK_LAUNCH(op, "bn_inference_kernel");
    return cluda_ok();
  }

  /* training: the entry point checked rows > 1 */
  int64_t chunks, chunk_rows;
  row_chunking(rows, kMinChunkRows, kMaxChunks, &chunks, &chunk_rows);
  ScratchScope scope(ctx->scratch);
  double *part = NULL, *mean = NULL, *scale = NULL;
  CLUDA_TRY(take_doubles(op, ctx->scratch, chunks * cols, "batchnorm_forward partials", &part));
  CLUDA_TRY(take_doubles(op, ctx->scratch, cols, "batchnorm_forward mean", &mean));
  CLUDA_TRY(take_doubles(op, ctx->scratch, cols, "batchnorm_forward scale", &scale));
  const dim3 block(kWarp, kTy);
  const dim3 grid((unsigned)((cols + kWarp - 1) / kWarp), (unsigned)chunks);

  bn_sum_partials_kernel<<<grid, block, 0, d->stream>>>(cluda_f32(x), NULL, rows, cols, chunk_rows,
                                                        part);
  CLUDA_CUDA_CHECK_LAUNCH(op, "bn_sum_partials_kernel (sum)");
  bn_mean_kernel<<<cgrid, kBlock, 0, d->stream>>>(part, (int)chunks, cols, rows, mean);
  CLUDA_CUDA_CHECK_LAUNCH(op, "bn_mean_kernel");
  bn_sum_partials_kernel<<<grid, block, 0, d->stream>>>(cluda_f32(x), mean, rows, cols, chunk_rows,
                                                        part);
  CLUDA_CUDA_CHECK_LAUNCH(op, "bn_sum_partials_kernel (squared deviations)");
  bn_stats_kernel<<<cgrid, kBlock, 0, d->stream>>>(
      part, (int)chunks, cols, rows, (double)p->eps, (double)p->momentum, mean, cluda_f32(gamma),
      cluda_f32(running_mean), cluda_f32(running_var), cluda_f32(save_mean), cluda_f32(save_rstd),
      scale);
  CLUDA_CUDA_CHECK_LAUNCH(op, "bn_stats_kernel");
  bn_normalize_kernel<<<egrid, kBlock, 0, d->stream>>>(cluda_f32(x), mean, scale, cluda_f32(beta),
                                                       cluda_f32(y), total, cols);
  CLUDA_CUDA_CHECK_LAUNCH(op, "bn_normalize_kernel");
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_batchnorm_backward(
    cluda_ctx *ctx, const cluda_batchnorm_params *p, const cluda_tensor *x,
    const cluda_tensor *gamma, const cluda_tensor *save_mean, const cluda_tensor *save_rstd,
    const cluda_tensor *dy, cluda_tensor *dx, cluda_tensor *dgamma, cluda_tensor *dbeta) {
  static const char op[] = "batchnorm_backward";
  CLUDA_TRY(check_no_sync(op, ctx, p));
  const int cols = x->shape[3];
  const int64_t rows = cluda_tensor_rows(x), total = rows * cols;
  /* no rows: nothing to add to dgamma / dbeta, and dx is empty */
  if (cols == 0 || rows == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);

  int64_t chunks, chunk_rows;
  row_chunking(rows, kMinChunkRows, kMaxChunks, &chunks, &chunk_rows);
  ScratchScope scope(ctx->scratch);
  double *part_dy = NULL, *part_dyx = NULL, *kc = NULL, *ac = NULL, *bc = NULL;
  CLUDA_TRY(
      take_doubles(op, ctx->scratch, chunks * cols, "batchnorm_backward dy partials", &part_dy));
  CLUDA_TRY(take_doubles(op, ctx->scratch, chunks * cols, "batchnorm_backward dy xhat partials",
                         &part_dyx));
  CLUDA_TRY(take_doubles(op, ctx->scratch, cols, "batchnorm_backward kc", &kc));
  CLUDA_TRY(take_doubles(op, ctx->scratch, cols, "batchnorm_backward ac", &ac));
  CLUDA_TRY(take_doubles(op, ctx->scratch, cols, "batchnorm_backward bc", &bc));

  const dim3 block(kWarp, kTy);
  const dim3 grid((unsigned)((cols + kWarp - 1) / kWarp), (unsigned)chunks);
  bn_backward_partials_kernel<<<grid, block, 0, d->stream>>>(
      cluda_f32(x), cluda_f32(dy), cluda_f32(save_mean), cluda_f32(save_rstd), rows, cols,
      chunk_rows, part_dy, part_dyx);
  CLUDA_CUDA_CHECK_LAUNCH(op, "bn_backward_partials_kernel");
  bn_backward_coef_kernel<<<grid_size(cols, kBlock, fill_cap(d)), kBlock, 0, d->stream>>>(
      part_dy, part_dyx, (int)chunks, cols, rows, p->training, cluda_f32(gamma),
      cluda_f32(save_rstd), cluda_f32(dgamma), cluda_f32(dbeta), kc, ac, bc);
  CLUDA_CUDA_CHECK_LAUNCH(op, "bn_backward_coef_kernel");
  bn_backward_dx_kernel<<<grid_size(total, kBlock, fill_cap(d)), kBlock, 0, d->stream>>>(
      cluda_f32(x), cluda_f32(dy), cluda_f32(save_mean), cluda_f32(save_rstd), kc, ac, bc,
      cluda_f32(dx), total, cols);
  CLUDA_CUDA_CHECK_LAUNCH(op, "bn_backward_dx_kernel");
  return cluda_ok();
}

/* LayerNorm over the last axis on the GPU (biased variance, affine).
 *
 * Forward and the dx part of the backward: one warp per row (grid-stride over rows), lanes
 * stride over the C columns, so any C works. The mean and the variance are two passes
 * (sum, then sum of squared deviations), which keeps the variance accurate when |mean| is
 * large against the spread.
 *
 * dgamma and dbeta are deterministic without float atomics: a first kernel gives each
 * (chunk of rows, 32 columns) block a fixed set of rows, reduced in a fixed order into
 * per-chunk partials [chunks, C] in the scratch arena; a second kernel sums the chunks in
 * order and adds the result to dgamma and dbeta. The chunking depends only on the shape,
 * so the result is bitwise reproducible from run to run and on any GPU. */
#include <math.h>

#include "kernel_common.cuh"

using namespace cluda_kernels;

namespace {

constexpr int kParamTy = 8;         /* rows handled side by side in a partials block */
constexpr int64_t kMaxChunks = 256; /* row chunks of the dgamma/dbeta partials */
constexpr int64_t kMinChunkRows = 64;

__global__ void layernorm_forward_kernel(const float *x, const float *gamma, const float *beta,
                                         float eps, float *y, float *mean_out, float *rstd_out,
                                         int64_t rows, int cols) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t r = global_warp(); r < rows; r += warp_count()) {
    const float *xr = x + r * cols;
    float *yr = y + r * cols;
    float s = 0.0f;
    for (int c = lane; c < cols; c += kWarp)
      s += xr[c];
    const float mean = warp_sum(s) / (float)cols;
    float v = 0.0f;
    for (int c = lane; c < cols; c += kWarp) {
      const float t = xr[c] - mean;
      v += t * t;
    }
    const float var = warp_sum(v) / (float)cols;
    const float rstd = 1.0f / sqrtf(var + eps);
    for (int c = lane; c < cols; c += kWarp)
      yr[c] = (xr[c] - mean) * rstd * gamma[c] + beta[c];
    if (lane == 0) {
      if (mean_out) mean_out[r] = mean;
      if (rstd_out) rstd_out[r] = rstd;
    }
  }
}

/* dx = rstd (g - mean(g) - xhat mean(g xhat)), g = dy gamma, xhat = (x - mean) rstd */
__global__ void layernorm_dx_kernel(const float *x, const float *gamma, const float *mean,
                                    const float *rstd, const float *dy, float *dx, int64_t rows,
                                    int cols) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t r = global_warp(); r < rows; r += warp_count()) {
    const float *xr = x + r * cols, *gr = dy + r * cols;
    float *dr = dx + r * cols;
    const float mu = mean[r], rs = rstd[r];
    float sum_g = 0.0f, sum_gx = 0.0f;
    for (int c = lane; c < cols; c += kWarp) {
      const float g = gr[c] * gamma[c];
      sum_g += g;
      sum_gx += g * (xr[c] - mu) * rs;
    }
    const float mean_g = warp_sum(sum_g) / (float)cols;
    const float mean_gx = warp_sum(sum_gx) / (float)cols;
    for (int c = lane; c < cols; c += kWarp) {
      const float xhat = (xr[c] - mu) * rs;
      dr[c] = rs * (gr[c] * gamma[c] - mean_g - xhat * mean_gx);
    }
  }
}

/* Block (32, kParamTy) covers columns [32 blockIdx.x, +32) of the rows of chunk
 * blockIdx.y; writes the chunk's sums of dy xhat and dy to part_g / part_b [chunk, C]. */
__global__ void layernorm_param_partials_kernel(const float *x, const float *mean,
                                                const float *rstd, const float *dy, int64_t rows,
                                                int cols, int64_t chunk_rows, float *part_g,
                                                float *part_b) {
  __shared__ float sh_g[kParamTy][kWarp + 1];
  __shared__ float sh_b[kParamTy][kWarp + 1];
  const int c = blockIdx.x * kWarp + threadIdx.x;
  const int64_t r0 = (int64_t)blockIdx.y * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  float sg = 0.0f, sb = 0.0f;
  if (c < cols) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kParamTy) {
      const float g = dy[r * cols + c];
      sg += g * (x[r * cols + c] - mean[r]) * rstd[r];
      sb += g;
    }
  }
  sh_g[threadIdx.y][threadIdx.x] = sg;
  sh_b[threadIdx.y][threadIdx.x] = sb;
  __syncthreads();
  if (threadIdx.y == 0 && c < cols) {
    float tg = 0.0f, tb = 0.0f;
#pragma unroll
    for (int k = 0; k < kParamTy; k++) {
      tg += sh_g[k][threadIdx.x];
      tb += sh_b[k][threadIdx.x];
    }
    part_g[(int64_t)blockIdx.y * cols + c] = tg;
    part_b[(int64_t)blockIdx.y * cols + c] = tb;
  }
}

/* dgamma[c] += sum over chunks of part_g[k, c] (in chunk order); likewise dbeta. */
__global__ void layernorm_param_final_kernel(const float *part_g, const float *part_b, int chunks,
                                             int cols, float *dgamma, float *dbeta) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x) {
    float tg = 0.0f, tb = 0.0f;
    for (int k = 0; k < chunks; k++) {
      tg += part_g[(int64_t)k * cols + c];
      tb += part_b[(int64_t)k * cols + c];
    }
    if (dgamma) dgamma[c] += tg;
    if (dbeta) dbeta[c] += tb;
  }
}

} // namespace

extern "C" cluda_status cluda_cuda_layernorm_forward(cluda_ctx *ctx, const cluda_tensor *x,
                                                     const cluda_tensor *gamma,
                                                     const cluda_tensor *beta, float eps,
                                                     cluda_tensor *y, cluda_tensor *mean,
                                                     cluda_tensor *rstd) {
  const int64_t rows = cluda_tensor_rows(x);
  const int cols = cluda_tensor_cols(x);
  if (rows == 0 || cols == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const unsigned grid = grid_size(rows, kWarpsPerBlock, fill_cap(d));
  layernorm_forward_kernel<<<grid, kBlock, 0, d->stream>>>(
      cluda_f32(x), cluda_f32(gamma), cluda_f32(beta), eps, cluda_f32(y),
      mean ? cluda_f32(mean) : NULL, rstd ? cluda_f32(rstd) : NULL, rows, cols);
  CLUDA_CUDA_CHECK_LAUNCH("layernorm_forward", "layernorm_forward_kernel");
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_layernorm_backward(cluda_ctx *ctx, const cluda_tensor *x,
                                                      const cluda_tensor *gamma,
                                                      const cluda_tensor *mean,
                                                      const cluda_tensor *rstd,
                                                      const cluda_tensor *dy, cluda_tensor *dx,
                                                      cluda_tensor *dgamma, cluda_tensor *dbeta) {
  const int64_t rows = cluda_tensor_rows(x);
  const int cols = cluda_tensor_cols(x);
  if (rows == 0 || cols == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);

  if (dx) {
    const unsigned grid = grid_size(rows, kWarpsPerBlock, fill_cap(d));
    layernorm_dx_kernel<<<grid, kBlock, 0, d->stream>>>(cluda_f32(x), cluda_f32(gamma),
                                                        cluda_f32(mean), cluda_f32(rstd),
                                                        cluda_f32(dy), cluda_f32(dx), rows, cols);
    CLUDA_CUDA_CHECK_LAUNCH("layernorm_backward", "layernorm_dx_kernel");
  }

  if (dgamma || dbeta) {
    int64_t chunks = (rows + kMinChunkRows - 1) / kMinChunkRows;
    if (chunks > kMaxChunks) chunks = kMaxChunks;
    const int64_t chunk_rows = (rows + chunks - 1) / chunks;
    chunks = (rows + chunk_rows - 1) / chunk_rows; /* no empty chunk */
    const size_t part_bytes = (size_t)chunks * (size_t)cols * sizeof(float);
    cluda_arena *scratch = ctx->scratch;
    CLUDA_REQUIRE(scratch != NULL, CLUDA_ERR_ALLOC,
                  "layernorm_backward: needs %zu bytes of device scratch and ctx->scratch is NULL",
                  2 * part_bytes);
    const size_t mark = cluda_arena_mark(scratch);
    void *pg = NULL, *pb = NULL;
    cluda_status s =
        cluda_arena_alloc(scratch, part_bytes, "layernorm_backward dgamma partials", &pg);
    if (s.code == CLUDA_OK)
      s = cluda_arena_alloc(scratch, part_bytes, "layernorm_backward dbeta partials", &pb);
    if (s.code != CLUDA_OK) {
      cluda_arena_release(scratch, mark);
      return s;
    }
    const dim3 block(kWarp, kParamTy);
    const dim3 grid((unsigned)((cols + kWarp - 1) / kWarp), (unsigned)chunks);
    layernorm_param_partials_kernel<<<grid, block, 0, d->stream>>>(
        cluda_f32(x), cluda_f32(mean), cluda_f32(rstd), cluda_f32(dy), rows, cols, chunk_rows,
        (float *)pg, (float *)pb);
    cudaError_t launch = cudaGetLastError();
    if (launch == cudaSuccess) {
      const unsigned fgrid = grid_size(cols, kBlock, fill_cap(d));
      layernorm_param_final_kernel<<<fgrid, kBlock, 0, d->stream>>>(
          (const float *)pg, (const float *)pb, (int)chunks, cols,
          dgamma ? cluda_f32(dgamma) : NULL, dbeta ? cluda_f32(dbeta) : NULL);
    }
    /* Later work on this stream runs after these kernels, so the scratch can be reused. */
    cluda_arena_release(scratch, mark);
    if (launch != cudaSuccess)
      return CLUDA_FAIL(CLUDA_ERR_DEVICE, "layernorm_backward: launching %s: %s: %s",
                        "layernorm_param_partials_kernel", cudaGetErrorName(launch),
                        cudaGetErrorString(launch));
    CLUDA_CUDA_CHECK_LAUNCH("layernorm_backward", "layernorm_param_final_kernel");
  }
  return cluda_ok();
}

/* Small memory-bound ops on the GPU: axpy, L2 normalisation over the last axis, the
 * DAFormer feature distance, average pooling, channel concat and slice. Each mirrors its CPU
 * twin in src/ops/ operation for operation where that is cheap, so the results agree to the
 * last bit or to a few ulp (tests/gpu documents each tolerance):
 *  - axpy rounds the product before the sum (__fmul_rn / __fadd_rn: no FMA contraction),
 *    as the CPU build (no -march, so no FMA) does;
 *  - l2norm and feature_distance reduce in double like the CPU, one warp per row / cell;
 *  - avgpool sums each window in the CPU's order (window rows, then columns) in float;
 *  - concat / slice are copies.
 * Every reduction is deterministic: warp butterflies and fixed-order block sums; the only
 * atomic is an integer count (exact in any order). */
#include <math.h>

#include "kernel_common.cuh"

using namespace cluda_kernels;

namespace {

constexpr int64_t kMaxFdBlocks = 1024; /* fixed: the loss reduction order must not vary */
constexpr int kFinalBlock = 256;

/* ---- axpy ---- */

__global__ void axpy_kernel(float alpha, const float *x, float *y, int64_t n) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
    y[i] = __fadd_rn(y[i], __fmul_rn(alpha, x[i]));
}

/* ---- l2norm: one warp per row; squares and dot products in double as the CPU ---- */

__global__ void l2norm_forward_kernel(const float *x, float eps, float *y, float *norms,
                                      int64_t rows, int cols) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t r = global_warp(); r < rows; r += warp_count()) {
    const float *xr = x + r * cols;
    float *yr = y + r * cols;
    double ss = 0.0;
    for (int c = lane; c < cols; c += kWarp) {
      const double v = (double)xr[c];
      ss += v * v; /* exact square: an FMA changes nothing */
    }
    ss = warp_sum(ss);
    const double norm = sqrt(ss);
    const float saved = (float)norm;
    /* the regime is decided on the saved float norm, as the backward sees it */
    const double inv = saved >= eps ? 1.0 / norm : 1.0 / (double)eps;
    for (int c = lane; c < cols; c += kWarp)
      yr[c] = (float)__dmul_rn((double)xr[c], inv);
    if (lane == 0) norms[r] = saved;
  }
}

/* n >= eps: dx = (dy - x k) / n with k = (x . dy) / n^2; else dx = dy / eps */
__global__ void l2norm_backward_kernel(const float *x, const float *norms, const float *dy,
                                       float eps, float *dx, int64_t rows, int cols) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t r = global_warp(); r < rows; r += warp_count()) {
    const float *xr = x + r * cols, *gr = dy + r * cols;
    float *dr = dx + r * cols;
    const float n = norms[r]; /* warp-uniform branch */
    if (n >= eps) {
      const double inv = 1.0 / (double)n;
      double dot = 0.0;
      for (int c = lane; c < cols; c += kWarp)
        dot += (double)xr[c] * (double)gr[c]; /* exact product in double */
      dot = warp_sum(dot);
      const double k = dot * inv * inv;
      /* the CPU's (dy - x k) inv, each operation rounded on its own (no FMA) */
      for (int c = lane; c < cols; c += kWarp)
        dr[c] = (float)__dmul_rn(__dsub_rn((double)gr[c], __dmul_rn((double)xr[c], k)), inv);
    } else {
      const double inv = 1.0 / (double)eps;
      for (int c = lane; c < cols; c += kWarp)
        dr[c] = (float)__dmul_rn((double)gr[c], inv);
    }
  }
}

/* ---- feature distance ---- */

/* ||a_i - b_i||_2 of cell i in double, on every lane of the calling warp */
__device__ __forceinline__ double cell_distance(const float *a, const float *b, int64_t i, int cols,
                                                int lane) {
  const float *ai = a + i * cols, *bi = b + i * cols;
  double s = 0.0;
  for (int k = lane; k < cols; k += kWarp) {
    const double t = (double)ai[k] - (double)bi[k];
    s += t * t;
  }
  return sqrt(warp_sum(s));
}

/* One warp per cell (grid-stride over a fixed grid); each warp accumulates its masked
 * cells' distances and count, each block sums its warps in warp order into partials. */
__global__ void fd_partials_kernel(const float *a, const float *b, const uint8_t *mask,
                                   int64_t cells, int cols, double *part_sum,
                                   unsigned long long *part_count) {
  __shared__ double warp_sum_sh[kWarpsPerBlock];
  __shared__ unsigned long long warp_count_sh[kWarpsPerBlock];
  const int lane = threadIdx.x % kWarp;
  double acc = 0.0;
  unsigned long long counted = 0;
  for (int64_t i = global_warp(); i < cells; i += warp_count()) {
    if (!mask[i]) continue; /* warp-uniform: the whole warp works on cell i */
    acc += cell_distance(a, b, i, cols, lane);
    counted++;
  }
  if (lane == 0) {
    warp_sum_sh[threadIdx.x / kWarp] = acc;
    warp_count_sh[threadIdx.x / kWarp] = counted;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    unsigned long long n = 0;
    for (int k = 0; k < kWarpsPerBlock; k++) {
      t += warp_sum_sh[k];
      n += warp_count_sh[k];
    }
    part_sum[blockIdx.x] = t;
    part_count[blockIdx.x] = n;
  }
}

/* One block: the partials in a fixed tree; loss = sum / n (0 when n = 0), count = n. */
__global__ void fd_final_kernel(const double *part_sum, const unsigned long long *part_count,
                                int parts, float *loss, float *count) {
  __shared__ double sh_sum[kFinalBlock];
  __shared__ unsigned long long sh_count[kFinalBlock];
  double t = 0.0;
  unsigned long long n = 0;
  for (int i = threadIdx.x; i < parts; i += kFinalBlock) {
    t += part_sum[i];
    n += part_count[i];
  }
  sh_sum[threadIdx.x] = t;
  sh_count[threadIdx.x] = n;
  __syncthreads();
  for (int half = kFinalBlock / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      sh_sum[threadIdx.x] += sh_sum[threadIdx.x + half];
      sh_count[threadIdx.x] += sh_count[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const unsigned long long total = sh_count[0];
    loss[0] = total > 0 ? (float)(sh_sum[0] / (double)total) : 0.0f;
    count[0] = (float)total;
  }
}

/* *count += the number of nonzero mask bytes (integer atomics: exact in any order) */
__global__ void fd_count_kernel(const uint8_t *mask, int64_t cells, unsigned long long *count) {
  __shared__ unsigned long long sh[kBlock];
  unsigned long long n = 0;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < cells; i += stride)
    n += mask[i] != 0;
  sh[threadIdx.x] = n;
  __syncthreads();
  for (int half = kBlock / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) sh[threadIdx.x] += sh[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0 && sh[0] > 0) atomicAdd(count, sh[0]);
}

/* da = (a - b) (dloss / n) / ||a - b|| on masked cells with nonzero distance, else 0;
 * db = -da. One warp per cell. */
__global__ void fd_backward_kernel(const float *a, const float *b, const uint8_t *mask,
                                   const float *dloss, const unsigned long long *count,
                                   int64_t cells, int cols, float *da, float *db) {
  const int lane = threadIdx.x % kWarp;
  const unsigned long long n = *count;
  const double g = n > 0 ? (double)dloss[0] / (double)n : 0.0;
  for (int64_t i = global_warp(); i < cells; i += warp_count()) {
    const double dist = mask[i] ? cell_distance(a, b, i, cols, lane) : 0.0;
    const float scale = dist > 0.0 ? (float)(g / dist) : 0.0f;
    const float *ai = a + i * cols, *bi = b + i * cols;
    float *gai = da + i * cols;
    float *gbi = db ? db + i * cols : nullptr;
    for (int k = lane; k < cols; k += kWarp) {
      /* as the CPU: exact zeros where the scale is 0 (unmasked, zero distance or dloss) */
      const float v = scale == 0.0f ? 0.0f : (ai[k] - bi[k]) * scale;
      gai[k] = v;
      if (gbi) gbi[k] = scale == 0.0f ? 0.0f : -v;
    }
  }
}

/* ---- average pooling (count_include_pad, floor mode: the divisor is always KH KW) ---- */

struct PoolGeom {
  int n, h, w, c, oh, ow;
  int kh, kw, sh, sw, ph, pw;
};

PoolGeom pool_geom(const cluda_pool2d_params *p, const cluda_tensor *in, const cluda_tensor *out) {
  PoolGeom g;
  g.n = in->shape[0];
  g.h = in->shape[1];
  g.w = in->shape[2];
  g.c = in->shape[3];
  g.oh = out->shape[1];
  g.ow = out->shape[2];
  g.kh = p->kernel_h;
  g.kw = p->kernel_w;
  g.sh = p->stride_h;
  g.sw = p->stride_w;
  g.ph = p->pad_h;
  g.pw = p->pad_w;
  return g;
}

/* One thread per output element (n, oh, ow, c), channels fastest (coalesced). */
__global__ void avgpool_forward_kernel(PoolGeom g, const float *x, float *y, int64_t total) {
  const float divisor = (float)g.kh * (float)g.kw;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const NhwcPos pos = nhwc_pos(idx, g.oh, g.ow, g.c);
    const int c = pos.c, ow = pos.x, oh = pos.y;
    const int64_t n = pos.n;
    int h0 = oh * g.sh - g.ph, h1 = h0 + g.kh;
    if (h0 < 0) h0 = 0;
    if (h1 > g.h) h1 = g.h;
    int w0 = ow * g.sw - g.pw, w1 = w0 + g.kw;
    if (w0 < 0) w0 = 0;
    if (w1 > g.w) w1 = g.w;
    const float *xn = x + n * g.h * g.w * g.c;
    float s = 0.0f;
    for (int ih = h0; ih < h1; ih++)
      for (int iw = w0; iw < w1; iw++)
        s += xn[((int64_t)ih * g.w + iw) * g.c + c];
    y[idx] = s / divisor;
  }
}

/* One thread per input element (n, ih, iw, c): gathers the windows that contain it (no
 * scatter, so no races), in the CPU's order. */
__global__ void avgpool_backward_kernel(PoolGeom g, const float *dy, float *dx, int64_t total) {
  const float divisor = (float)g.kh * (float)g.kw;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t idx = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const NhwcPos pos = nhwc_pos(idx, g.h, g.w, g.c);
    const int c = pos.c, iw = pos.x, ih = pos.y;
    const int64_t n = pos.n;
    /* windows oh with oh sh - ph <= ih < oh sh - ph + kh */
    const int a = ih + g.ph - g.kh + 1;
    const int oh0 = a <= 0 ? 0 : (a + g.sh - 1) / g.sh;
    int oh1 = (ih + g.ph) / g.sh;
    if (oh1 > g.oh - 1) oh1 = g.oh - 1;
    const int b = iw + g.pw - g.kw + 1;
    const int ow0 = b <= 0 ? 0 : (b + g.sw - 1) / g.sw;
    int ow1 = (iw + g.pw) / g.sw;
    if (ow1 > g.ow - 1) ow1 = g.ow - 1;
    float s = 0.0f;
    for (int oh = oh0; oh <= oh1; oh++)
      for (int ow = ow0; ow <= ow1; ow++)
        s += dy[((n * g.oh + oh) * g.ow + ow) * g.c + c];
    dx[idx] = s / divisor;
  }
}

/* ---- concat / slice: strided copies of channel runs ---- */

/* b[r, to + j] = a[r, begin + j] for j < cp: a is [rows, ca], b is [rows, cb] */
__global__ void copy_columns_kernel(const float *a, int ca, int begin, float *b, int cb, int to,
                                    int cp, int64_t rows) {
  const int64_t total = rows * cp;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t r = i / cp;
    const int j = (int)(i % cp);
    b[r * cb + to + j] = a[r * ca + begin + j];
  }
}

/* dx [rows, cx] = zeros with dy [rows, cy] at channels [begin, begin + cy) */
__global__ void slice_backward_kernel(const float *dy, int cy, int begin, float *dx, int cx,
                                      int64_t rows) {
  const int64_t total = rows * cx;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const int64_t r = i / cx;
    const int j = (int)(i % cx);
    dx[i] = j >= begin && j < begin + cy ? dy[r * cy + (j - begin)] : 0.0f;
  }
}

cluda_status copy_columns(cluda_ctx *ctx, const char *op, const float *a, int ca, int begin,
                          float *b, int cb, int to, int cp, int64_t rows) {
  if (cp == 0 || rows == 0) return cluda_ok(); /* nothing to copy (data may be NULL) */
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const unsigned grid = grid_size(rows * cp, kBlock, fill_cap(d));
  copy_columns_kernel<<<grid, kBlock, 0, d->stream>>>(a, ca, begin, b, cb, to, cp, rows);
  CLUDA_CUDA_CHECK_LAUNCH(op, "copy_columns_kernel");
  return cluda_ok();
}

} // namespace

extern "C" cluda_status cluda_cuda_axpy(cluda_ctx *ctx, float alpha, const cluda_tensor *x,
                                        cluda_tensor *y) {
  const int64_t n = cluda_tensor_numel(x);
  if (n == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const unsigned grid = grid_size(n, kBlock, fill_cap(d));
  axpy_kernel<<<grid, kBlock, 0, d->stream>>>(alpha, cluda_f32(x), cluda_f32(y), n);
  CLUDA_CUDA_CHECK_LAUNCH("axpy", "axpy_kernel");
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_l2norm_forward(cluda_ctx *ctx, float eps, const cluda_tensor *x,
                                                  cluda_tensor *y, cluda_tensor *norms) {
  const int64_t rows = cluda_tensor_rows(x);
  const int cols = cluda_tensor_cols(x);
  if (rows == 0) return cluda_ok();
  /* cols == 0 still writes the norms (0) */
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const unsigned grid = grid_size(rows, kWarpsPerBlock, fill_cap(d));
  l2norm_forward_kernel<<<grid, kBlock, 0, d->stream>>>(cluda_f32(x), eps, cluda_f32(y),
                                                        cluda_f32(norms), rows, cols);
  CLUDA_CUDA_CHECK_LAUNCH("l2norm_forward", "l2norm_forward_kernel");
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_l2norm_backward(cluda_ctx *ctx, float eps, const cluda_tensor *x,
                                                   const cluda_tensor *norms,
                                                   const cluda_tensor *dy, cluda_tensor *dx) {
  const int64_t rows = cluda_tensor_rows(x);
  const int cols = cluda_tensor_cols(x);
  if (rows == 0 || cols == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const unsigned grid = grid_size(rows, kWarpsPerBlock, fill_cap(d));
  l2norm_backward_kernel<<<grid, kBlock, 0, d->stream>>>(
      cluda_f32(x), cluda_f32(norms), cluda_f32(dy), eps, cluda_f32(dx), rows, cols);
  CLUDA_CUDA_CHECK_LAUNCH("l2norm_backward", "l2norm_backward_kernel");
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_feature_distance_forward(cluda_ctx *ctx, const cluda_tensor *a,
                                                            const cluda_tensor *b,
                                                            const cluda_tensor *mask,
                                                            cluda_tensor *loss,
                                                            cluda_tensor *count) {
  const int cols = a->shape[3];
  const int64_t cells = cluda_tensor_numel(mask);
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  if (cells == 0) {
    /* no cells: loss 0 and count 0 (0.0f is all zero bytes) */
    CLUDA_CUDA_TRY(cudaMemsetAsync(cluda_f32(loss), 0, sizeof(float), d->stream));
    CLUDA_CUDA_TRY(cudaMemsetAsync(cluda_f32(count), 0, sizeof(float), d->stream));
    return cluda_ok();
  }
  /* the grid depends only on the cell count, so the reduction order does too */
  const unsigned grid = grid_size(cells, kWarpsPerBlock, kMaxFdBlocks);
  const size_t sum_bytes = (size_t)grid * sizeof(double);
  const size_t count_bytes = (size_t)grid * sizeof(unsigned long long);
  cluda_arena *scratch = ctx->scratch;
  CLUDA_REQUIRE(scratch != NULL, CLUDA_ERR_ALLOC,
                "feature_distance_forward: needs %zu bytes of device scratch and ctx->scratch is "
                "NULL",
                sum_bytes + count_bytes);
  const size_t mark = cluda_arena_mark(scratch);
  void *part_sum = NULL, *part_count = NULL;
  cluda_status s =
      cluda_arena_alloc(scratch, sum_bytes, "feature_distance_forward partial sums", &part_sum);
  if (s.code == CLUDA_OK)
    s = cluda_arena_alloc(scratch, count_bytes, "feature_distance_forward partial counts",
                          &part_count);
  if (s.code != CLUDA_OK) {
    cluda_arena_release(scratch, mark);
    return s;
  }
  fd_partials_kernel<<<grid, kBlock, 0, d->stream>>>(cluda_f32(a), cluda_f32(b), cluda_u8(mask),
                                                     cells, cols, (double *)part_sum,
                                                     (unsigned long long *)part_count);
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) {
    fd_final_kernel<<<1, kFinalBlock, 0, d->stream>>>((const double *)part_sum,
                                                      (const unsigned long long *)part_count,
                                                      (int)grid, cluda_f32(loss), cluda_f32(count));
    err = cudaGetLastError();
  }
  /* later work on this stream runs after these kernels, so the scratch can be reused */
  cluda_arena_release(scratch, mark);
  if (err != cudaSuccess)
    return CLUDA_FAIL(CLUDA_ERR_DEVICE, "feature_distance_forward: launching a kernel: %s: %s",
                      cudaGetErrorName(err), cudaGetErrorString(err));
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_feature_distance_backward(cluda_ctx *ctx, const cluda_tensor *a,
                                                             const cluda_tensor *b,
                                                             const cluda_tensor *mask,
                                                             const cluda_tensor *dloss,
                                                             cluda_tensor *da, cluda_tensor *db) {
  const int cols = a->shape[3];
  const int64_t cells = cluda_tensor_numel(mask);
  if (cells == 0 || cols == 0) return cluda_ok(); /* da and db are empty */
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  cluda_arena *scratch = ctx->scratch;
  CLUDA_REQUIRE(scratch != NULL, CLUDA_ERR_ALLOC,
                "feature_distance_backward: needs %d bytes of device scratch and ctx->scratch is "
                "NULL",
                (int)sizeof(unsigned long long));
  const size_t mark = cluda_arena_mark(scratch);
  void *count = NULL;
  CLUDA_TRY(cluda_arena_alloc(scratch, sizeof(unsigned long long),
                              "feature_distance_backward cell count", &count));
  cudaError_t err = cudaMemsetAsync(count, 0, sizeof(unsigned long long), d->stream);
  if (err == cudaSuccess) {
    const unsigned cgrid = grid_size(cells, kBlock, fill_cap(d));
    fd_count_kernel<<<cgrid, kBlock, 0, d->stream>>>(cluda_u8(mask), cells,
                                                     (unsigned long long *)count);
    err = cudaGetLastError();
  }
  if (err == cudaSuccess) {
    const unsigned grid = grid_size(cells, kWarpsPerBlock, fill_cap(d));
    fd_backward_kernel<<<grid, kBlock, 0, d->stream>>>(
        cluda_f32(a), cluda_f32(b), cluda_u8(mask), cluda_f32(dloss),
        (const unsigned long long *)count, cells, cols, cluda_f32(da),
        db ? cluda_f32(db) : nullptr);
    err = cudaGetLastError();
  }
  cluda_arena_release(scratch, mark);
  if (err != cudaSuccess)
    return CLUDA_FAIL(CLUDA_ERR_DEVICE, "feature_distance_backward: %s: %s", cudaGetErrorName(err),
                      cudaGetErrorString(err));
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_avgpool_forward(cluda_ctx *ctx, const cluda_pool2d_params *p,
                                                   const cluda_tensor *x, cluda_tensor *y) {
  const int64_t total = cluda_tensor_numel(y);
  if (total == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const unsigned grid = grid_size(total, kBlock, fill_cap(d));
  avgpool_forward_kernel<<<grid, kBlock, 0, d->stream>>>(pool_geom(p, x, y), cluda_f32(x),
                                                         cluda_f32(y), total);
  CLUDA_CUDA_CHECK_LAUNCH("avgpool_forward", "avgpool_forward_kernel");
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_avgpool_backward(cluda_ctx *ctx, const cluda_pool2d_params *p,
                                                    const cluda_tensor *dy, cluda_tensor *dx) {
  const int64_t total = cluda_tensor_numel(dx);
  if (total == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const unsigned grid = grid_size(total, kBlock, fill_cap(d));
  avgpool_backward_kernel<<<grid, kBlock, 0, d->stream>>>(pool_geom(p, dx, dy), cluda_f32(dy),
                                                          cluda_f32(dx), total);
  CLUDA_CUDA_CHECK_LAUNCH("avgpool_backward", "avgpool_backward_kernel");
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_concat_forward(cluda_ctx *ctx, int count,
                                                  const cluda_tensor *const *xs, cluda_tensor *y) {
  const int64_t rows = cluda_tensor_rows(y);
  const int cy = cluda_tensor_cols(y);
  int at = 0;
  for (int i = 0; i < count; i++) {
    const int ci = cluda_tensor_cols(xs[i]);
    CLUDA_TRY(copy_columns(ctx, "concat_forward", cluda_f32(xs[i]), ci, 0, cluda_f32(y), cy, at, ci,
                           rows));
    at += ci;
  }
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_concat_backward(cluda_ctx *ctx, int count,
                                                   const cluda_tensor *dy,
                                                   cluda_tensor *const *dxs) {
  const int64_t rows = cluda_tensor_rows(dy);
  const int cy = cluda_tensor_cols(dy);
  int at = 0;
  for (int i = 0; i < count; i++) {
    const int ci = cluda_tensor_cols(dxs[i]);
    CLUDA_TRY(copy_columns(ctx, "concat_backward", cluda_f32(dy), cy, at, cluda_f32(dxs[i]), ci, 0,
                           ci, rows));
    at += ci;
  }
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_slice_forward(cluda_ctx *ctx, int begin, const cluda_tensor *x,
                                                 cluda_tensor *y) {
  const int cy = cluda_tensor_cols(y);
  return copy_columns(ctx, "slice_forward", cluda_f32(x), cluda_tensor_cols(x), begin, cluda_f32(y),
                      cy, 0, cy, cluda_tensor_rows(y));
}

extern "C" cluda_status cluda_cuda_slice_backward(cluda_ctx *ctx, int begin, const cluda_tensor *dy,
                                                  cluda_tensor *dx) {
  const int64_t rows = cluda_tensor_rows(dx);
  const int cx = cluda_tensor_cols(dx), cy = cluda_tensor_cols(dy);
  if (cx == 0 || rows == 0) return cluda_ok(); /* nothing to write (data may be NULL) */
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const unsigned grid = grid_size(rows * cx, kBlock, fill_cap(d));
  slice_backward_kernel<<<grid, kBlock, 0, d->stream>>>(cluda_f32(dy), cy, begin, cluda_f32(dx), cx,
                                                        rows);
  CLUDA_CUDA_CHECK_LAUNCH("slice_backward", "slice_backward_kernel");
  return cluda_ok();
}

/* conv2d on the GPU: NHWC activations, OHWI weights [C_out, KH, KW, C_in/groups], zero
 * padding, stride, dilation, groups (PyTorch Conv2d; the CPU twin is src/ops/conv2d.c).
 *
 * Two paths:
 *  - depthwise (one input and one output channel per group: groups == C_in == C_out, the
 *    MiT Mix-FFN 3x3 case) runs the direct kernels below, because cuDNN's grouped
 *    convolutions are slow with one channel per group. Any kernel size, stride, padding and
 *    dilation. Forward and dx are gathers (one thread per output element); dw is
 *    deterministic without float atomics: fixed pixel chunks (the CPU's chunk count, so the
 *    scratch the CPU declares covers it) reduce in a fixed order into per-chunk partials,
 *    which a second kernel adds in chunk order.
 *  - everything else goes through cuDNN 9's legacy convolution API (deprecated in cuDNN 9
 *    in favour of the graph API, but complete and still shipped) with NHWC tensor and filter
 *    descriptors (NHWC filter format = KRSC = OHWI, cluda's layout, so nothing is
 *    transposed) and the group count on the convolution descriptor.
 *
 * cuDNN numerics: fp32 data and compute with CUDNN_FMA_MATH. (CUDNN_DEFAULT_MATH is NOT
 * enough: on sm_80 and later it lets cuDNN use TF32 tensor cores for fp32 data, ~3e-4
 * relative error, which the fp32 tests would catch.) Algorithms come from the
 * cudnnGet*Algorithm_v7 heuristics, taking the first result that: succeeded, uses FMA math,
 * is deterministic (every direction, so runs are bitwise reproducible; for the backward this
 * excludes BWD_DATA_ALGO_0 and BWD_FILTER_ALGO_0/3, which use atomics), is a GEMM-type
 * algorithm (FFT and Winograd transform the data and add error that grows with the tile,
 * so they are skipped to keep the GPU within fp32 rounding of the CPU's direct sums), and
 * whose workspace fits the free part of the context's scratch arena. If none qualifies, a
 * fixed fallback (FWD IMPLICIT_GEMM, BWD_DATA_ALGO_1, BWD_FILTER_ALGO_1) is used when cuDNN
 * accepts it. The workspace is taken from ctx->scratch and released before returning
 * (later work on the stream runs after the convolution).
 *
 * Bias: cuDNN convolves with beta = 0 and a small kernel adds the bias; db is a
 * deterministic column sum of dy in double (fixed row chunks, then the chunks in order), as
 * the CPU does, rather than cudnnConvolutionBackwardBias, whose summation order and
 * determinism cuDNN does not document.
 *
 * Overwrite/accumulate: y and dx are overwritten (cuDNN beta = 0); dw (cuDNN beta = 1, or
 * the partials added onto dw) and db accumulate.
 *
 * bf16 / tensor cores: a mixed-precision path would describe x, w, y as CUDNN_DATA_BFLOAT16
 * with CUDNN_DATA_FLOAT compute in make_descriptors and set CUDNN_TENSOR_OP_MATH instead of
 * CUDNN_FMA_MATH (and accept results whose mathType is a tensor-op type in pick_algo). */
#include "kernel_common.cuh"

using namespace cluda_kernels;

namespace {

constexpr int kTy = 8; /* rows (pixels) handled side by side in a partials block */
/* Depthwise dw: at most this many pixel chunks of at least kDwChunkPixels pixels, the
 * CPU's CONV_DW_CHUNKS / CONV_DW_CHUNK_PIXELS: the partials then need exactly the scratch
 * that cluda_conv2d_scratch_bytes reports for the CPU. */
constexpr int64_t kDwChunks = 32;
constexpr int64_t kDwChunkPixels = 256;
/* The depthwise kernel's dw launch has one grid z slice per tap (limit 65535). */
constexpr int kDwMaxTaps = 1024;
/* db: row chunks of the bias-gradient partials */
constexpr int64_t kBiasMaxChunks = 256;
constexpr int64_t kBiasMinChunkRows = 64;
constexpr int kMaxPerf = 16; /* > every cuDNN *_ALGO_COUNT */

struct Geom {
  int n, h, w, cin;
  int oh, ow, cout;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int groups, cig, cog;
  int64_t m; /* N * OH * OW output pixels */
};

/* From validated arguments; out is y (forward) or dy (backward). */
Geom geom_of(const cluda_conv2d_params *p, const cluda_tensor *x, const cluda_tensor *w,
             const cluda_tensor *out) {
  Geom g;
  g.n = x->shape[0];
  g.h = x->shape[1];
  g.w = x->shape[2];
  g.cin = x->shape[3];
  g.oh = out->shape[1];
  g.ow = out->shape[2];
  g.cout = w->shape[0];
  g.kh = p->kernel_h;
  g.kw = p->kernel_w;
  g.sh = p->stride_h;
  g.sw = p->stride_w;
  g.ph = p->pad_h;
  g.pw = p->pad_w;
  g.dh = p->dilation_h;
  g.dw = p->dilation_w;
  g.groups = p->groups;
  g.cig = g.cin / g.groups;
  g.cog = g.cout / g.groups;
  g.m = (int64_t)g.n * g.oh * g.ow;
  return g;
}

bool use_depthwise(const Geom &g) {
  return g.cig == 1 && g.cog == 1 && (int64_t)g.kh * g.kw <= kDwMaxTaps;
}

/* ---- depthwise kernels (C = C_in = C_out; w [C, KH, KW, 1]) ---- */

/* y[n, oh, ow, c] = b[c] + sum over the taps inside x of x[n, ih, iw, c] w[c, kh, kw]. One
 * thread per output element, channels fastest, so x and y accesses are coalesced. */
__global__ void dw_forward_kernel(const float *__restrict__ x, const float *__restrict__ w,
                                  const float *__restrict__ b, float *__restrict__ y, Geom g) {
  const int64_t total = g.m * g.cin;
  const int taps = g.kh * g.kw;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const NhwcPos pos = nhwc_pos(i, g.oh, g.ow, g.cin);
    const int c = pos.c, ow = pos.x, oh = pos.y;
    const int64_t n = pos.n;
    const float *xn = x + n * g.h * g.w * g.cin + c;
    const float *wc = w + (int64_t)c * taps;
    float acc = b ? b[c] : 0.0f;
    for (int kh = 0; kh < g.kh; kh++) {
      const int ih = oh * g.sh - g.ph + kh * g.dh;
      if (ih < 0 || ih >= g.h) continue;
      for (int kw = 0; kw < g.kw; kw++) {
        const int iw = ow * g.sw - g.pw + kw * g.dw;
        if (iw < 0 || iw >= g.w) continue;
        acc += xn[((int64_t)ih * g.w + iw) * g.cin] * wc[kh * g.kw + kw];
      }
    }
    y[i] = acc;
  }
}

/* dx[n, ih, iw, c] = sum over the (kh, kw) that some output pixel (oh, ow) reads from here
 * of dy[n, oh, ow, c] w[c, kh, kw]: ih = oh sh - ph + kh dh, so oh = (ih + ph - kh dh) / sh
 * when that is a whole number in [0, OH) (likewise ow). A gather: one thread per dx element,
 * no atomics. */
__global__ void dw_backward_dx_kernel(const float *__restrict__ dy, const float *__restrict__ w,
                                      float *__restrict__ dx, Geom g) {
  const int64_t total = (int64_t)g.n * g.h * g.w * g.cin;
  const int taps = g.kh * g.kw;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const NhwcPos pos = nhwc_pos(i, g.h, g.w, g.cin);
    const int c = pos.c, iw = pos.x, ih = pos.y;
    const int64_t n = pos.n;
    const float *dyn = dy + n * g.oh * g.ow * g.cin + c;
    const float *wc = w + (int64_t)c * taps;
    float acc = 0.0f;
    for (int kh = 0; kh < g.kh; kh++) {
      const int th = ih + g.ph - kh * g.dh;
      if (th < 0) break; /* decreases with kh */
      if (th % g.sh != 0) continue;
      const int oh = th / g.sh;
      if (oh >= g.oh) continue;
      for (int kw = 0; kw < g.kw; kw++) {
        const int tw = iw + g.pw - kw * g.dw;
        if (tw < 0) break;
        if (tw % g.sw != 0) continue;
        const int ow = tw / g.sw;
        if (ow >= g.ow) continue;
        acc += dyn[((int64_t)oh * g.ow + ow) * g.cin] * wc[kh * g.kw + kw];
      }
    }
    dx[i] = acc;
  }
}

/* Block (32, kTy) of grid (ceil(C / 32), chunks, taps): channels [32 blockIdx.x, +32), tap
 * blockIdx.z = kh KW + kw, output pixels [m k / chunks, m (k + 1) / chunks) of chunk
 * k = blockIdx.y. Writes part[(k taps + tap) C + c] = sum over those pixels of
 * dy[p, c] x[n, ih, iw, c] (0 where the tap falls into the padding). Each thread sums every
 * kTy-th pixel in order, then row 0 adds the kTy sums in order: a fixed order throughout. */
__global__ void dw_backward_dw_partials_kernel(const float *__restrict__ x,
                                               const float *__restrict__ dy, Geom g, int chunks,
                                               float *__restrict__ part) {
  __shared__ float sh[kTy][kWarp + 1];
  const int c = blockIdx.x * kWarp + threadIdx.x;
  const int chunk = blockIdx.y, tap = blockIdx.z, taps = g.kh * g.kw;
  const int kh = tap / g.kw, kw = tap % g.kw;
  const int64_t p0 = g.m * chunk / chunks, p1 = g.m * (chunk + 1) / chunks;
  float s = 0.0f;
  if (c < g.cin) {
    for (int64_t p = p0 + threadIdx.y; p < p1; p += kTy) {
      const int ow = (int)(p % g.ow);
      const int64_t t = p / g.ow;
      const int oh = (int)(t % g.oh);
      const int64_t n = t / g.oh;
      const int ih = oh * g.sh - g.ph + kh * g.dh, iw = ow * g.sw - g.pw + kw * g.dw;
      if (ih < 0 || ih >= g.h || iw < 0 || iw >= g.w) continue;
      s += dy[p * g.cin + c] * x[((n * g.h + ih) * g.w + iw) * g.cin + c];
    }
  }
  sh[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && c < g.cin) {
    float t = 0.0f;
#pragma unroll
    for (int k = 0; k < kTy; k++)
      t += sh[k][threadIdx.x];
    part[((int64_t)chunk * taps + tap) * g.cin + c] = t;
  }
}

/* dw[c, kh, kw] (index c taps + tap) += sum over the chunks, in order, of the partials. */
__global__ void dw_backward_dw_final_kernel(const float *__restrict__ part, int chunks, int taps,
                                            int channels, float *__restrict__ dw) {
  const int64_t total = (int64_t)channels * taps;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int c = (int)(i / taps), tap = (int)(i % taps);
    float s = 0.0f;
    for (int k = 0; k < chunks; k++)
      s += part[((int64_t)k * taps + tap) * channels + c];
    dw[i] += s;
  }
}

/* ---- bias ---- */

/* y[r, c] += b[c] for the rows of y [rows, C] (after cuDNN wrote y with beta = 0) */
__global__ void bias_add_kernel(float *__restrict__ y, const float *__restrict__ b, int64_t total,
                                int cols) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x)
    y[i] += b[i % cols];
}

/* Block (32, kTy) of grid (ceil(C / 32), chunks): part[k, c] = sum in double over the rows
 * [k chunk_rows, (k + 1) chunk_rows) of dy[r, c], in a fixed order. */
__global__ void bias_grad_partials_kernel(const float *__restrict__ dy, int64_t rows, int cols,
                                          int64_t chunk_rows, double *__restrict__ part) {
  __shared__ double sh[kTy][kWarp + 1];
  const int c = blockIdx.x * kWarp + threadIdx.x;
  double s = 0.0;
  if (c < cols)
    s = chunk_column_sum<kTy>(rows, chunk_rows,
                              [&](int64_t r) { return (double)dy[r * cols + c]; });
  const double t = block_column_total<kTy>(sh, s);
  if (threadIdx.y == 0 && c < cols) part[(int64_t)blockIdx.y * cols + c] = t;
}

/* db[c] += the chunk partials of column c added in chunk order */
__global__ void bias_grad_final_kernel(const double *__restrict__ part, int chunks, int cols,
                                       float *__restrict__ db) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x)
    db[c] += (float)sum_chunk_partials(part, chunks, cols, c);
}

/* Returns the arena to its mark when the scope ends (every return path). The kernels and
 * cuDNN calls queued before run before anything queued later on the stream, so the scratch
 * may be handed out again as soon as the op returns. */
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

size_t scratch_free(const cluda_arena *a) { return a ? a->capacity - a->used : 0; }

cluda_status scratch_take(const char *op, cluda_arena *a, size_t bytes, const char *what,
                          void **out) {
  *out = NULL;
  if (bytes == 0) return cluda_ok();
  CLUDA_REQUIRE(a != NULL, CLUDA_ERR_ALLOC,
                "%s: needs %zu bytes of device scratch (%s) and ctx->scratch is NULL", op, bytes,
                what);
  return cluda_arena_alloc(a, bytes, what, out);
}

/* db[c] += sum over the N OH OW rows of dy[:, c] */
cluda_status bias_grad(const char *op, cluda_ctx *ctx, const float *dy, int64_t rows, int cols,
                       float *db) {
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  int64_t chunks, chunk_rows;
  row_chunking(rows, kBiasMinChunkRows, kBiasMaxChunks, &chunks, &chunk_rows);
  ScratchScope scope(ctx->scratch);
  void *part = NULL;
  CLUDA_TRY(scratch_take(op, ctx->scratch, (size_t)chunks * (size_t)cols * sizeof(double),
                         "conv2d db partials", &part));
  const dim3 block(kWarp, kTy);
  const dim3 grid((unsigned)((cols + kWarp - 1) / kWarp), (unsigned)chunks);
  bias_grad_partials_kernel<<<grid, block, 0, d->stream>>>(dy, rows, cols, chunk_rows,
                                                           (double *)part);
  CLUDA_CUDA_CHECK_LAUNCH(op, "bias_grad_partials_kernel");
  bias_grad_final_kernel<<<grid_size(cols, kBlock, fill_cap(d)), kBlock, 0, d->stream>>>(
      (const double *)part, (int)chunks, cols, db);
  CLUDA_CUDA_CHECK_LAUNCH(op, "bias_grad_final_kernel");
  return cluda_ok();
}

/* ---- depthwise drivers ---- */

/* The CPU's dw_chunks: min(N OH, 32, m / 256), at least 1. */
int dw_chunks(const Geom &g) {
  int64_t rows = (int64_t)g.n * g.oh, c = rows < kDwChunks ? rows : kDwChunks;
  if (g.m / kDwChunkPixels < c) c = g.m / kDwChunkPixels;
  return c < 1 ? 1 : (int)c;
}

cluda_status depthwise_backward_dw(const char *op, cluda_ctx *ctx, const Geom &g, const float *x,
                                   const float *dy, float *dw) {
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const int chunks = dw_chunks(g), taps = g.kh * g.kw;
  ScratchScope scope(ctx->scratch);
  void *part = NULL;
  CLUDA_TRY(scratch_take(op, ctx->scratch,
                         (size_t)chunks * (size_t)taps * (size_t)g.cin * sizeof(float),
                         "conv2d depthwise dw partials", &part));
  const dim3 block(kWarp, kTy);
  const dim3 grid((unsigned)((g.cin + kWarp - 1) / kWarp), (unsigned)chunks, (unsigned)taps);
  dw_backward_dw_partials_kernel<<<grid, block, 0, d->stream>>>(x, dy, g, chunks, (float *)part);
  CLUDA_CUDA_CHECK_LAUNCH(op, "dw_backward_dw_partials_kernel");
  const int64_t total = (int64_t)g.cin * taps;
  dw_backward_dw_final_kernel<<<grid_size(total, kBlock, fill_cap(d)), kBlock, 0, d->stream>>>(
      (const float *)part, chunks, taps, g.cin, dw);
  CLUDA_CUDA_CHECK_LAUNCH(op, "dw_backward_dw_final_kernel");
  return cluda_ok();
}

/* ---- cuDNN ---- */

/* Calls a cuDNN function; on failure returns CLUDA_ERR_DEVICE naming the op, the function
 * and cuDNN's error string (not the argument list, which would crowd the message out). */
#define CONV_CUDNN(op, fn, ...)                                                                    \
  do {                                                                                             \
    const cudnnStatus_t conv_cudnn_st_ = fn(__VA_ARGS__);                                          \
    if (conv_cudnn_st_ != CUDNN_STATUS_SUCCESS)                                                    \
      return CLUDA_FAIL(CLUDA_ERR_DEVICE, "%s: %s: %s", (op), #fn,                                 \
                        cudnnGetErrorString(conv_cudnn_st_));                                      \
  } while (0)

/* The descriptors of one call, destroyed on every return path. */
struct ConvDescs {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr; /* y also describes dy, x also dx */
  cudnnFilterDescriptor_t w = nullptr;              /* also dw */
  cudnnConvolutionDescriptor_t conv = nullptr;
  ConvDescs() = default;
  ConvDescs(const ConvDescs &) = delete;
  ConvDescs &operator=(const ConvDescs &) = delete;
  ~ConvDescs() {
    if (conv) (void)cudnnDestroyConvolutionDescriptor(conv);
    if (w) (void)cudnnDestroyFilterDescriptor(w);
    if (y) (void)cudnnDestroyTensorDescriptor(y);
    if (x) (void)cudnnDestroyTensorDescriptor(x);
  }
};

cluda_status make_descriptors(const char *op, const Geom &g, ConvDescs *d) {
  /* NHWC descriptors take their dimensions in N, C, H, W order. */
  CONV_CUDNN(op, cudnnCreateTensorDescriptor, &d->x);
  CONV_CUDNN(op, cudnnSetTensor4dDescriptor, d->x, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, g.n, g.cin,
             g.h, g.w);
  CONV_CUDNN(op, cudnnCreateTensorDescriptor, &d->y);
  CONV_CUDNN(op, cudnnSetTensor4dDescriptor, d->y, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, g.n, g.cout,
             g.oh, g.ow);
  /* filter K, C, R, S = C_out, C_in / groups, KH, KW; NHWC format stores it KRSC = OHWI */
  CONV_CUDNN(op, cudnnCreateFilterDescriptor, &d->w);
  CONV_CUDNN(op, cudnnSetFilter4dDescriptor, d->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, g.cout,
             g.cig, g.kh, g.kw);
  CONV_CUDNN(op, cudnnCreateConvolutionDescriptor, &d->conv);
  CONV_CUDNN(op, cudnnSetConvolution2dDescriptor, d->conv, g.ph, g.pw, g.sh, g.sw, g.dh, g.dw,
             CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT);
  CONV_CUDNN(op, cudnnSetConvolutionGroupCount, d->conv, g.groups);
  /* plain fp32 FMA kernels: DEFAULT_MATH would allow TF32 tensor cores on sm_80+ */
  CONV_CUDNN(op, cudnnSetConvolutionMathType, d->conv, CUDNN_FMA_MATH);
  /* cuDNN must see the same output size as cluda_conv2d_out_size */
  int on = 0, oc = 0, oh = 0, ow = 0;
  CONV_CUDNN(op, cudnnGetConvolution2dForwardOutputDim, d->conv, d->x, d->w, &on, &oc, &oh, &ow);
  CLUDA_REQUIRE(on == g.n && oc == g.cout && oh == g.oh && ow == g.ow, CLUDA_ERR_DEVICE,
                "%s: cuDNN computes the output as NCHW [%d,%d,%d,%d], cluda as NHWC [%d,%d,%d,%d]",
                op, on, oc, oh, ow, g.n, g.oh, g.ow, g.cout);
  return cluda_ok();
}

/* The three directions, overloaded on the algorithm / perf types. */
cudnnStatus_t heuristics(cudnnHandle_t h, const ConvDescs &d, int *count,
                         cudnnConvolutionFwdAlgoPerf_t *perf) {
  return cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.conv, d.y, kMaxPerf, count, perf);
}
cudnnStatus_t heuristics(cudnnHandle_t h, const ConvDescs &d, int *count,
                         cudnnConvolutionBwdDataAlgoPerf_t *perf) {
  return cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w, d.y, d.conv, d.x, kMaxPerf, count,
                                                     perf);
}
cudnnStatus_t heuristics(cudnnHandle_t h, const ConvDescs &d, int *count,
                         cudnnConvolutionBwdFilterAlgoPerf_t *perf) {
  return cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.x, d.y, d.conv, d.w, kMaxPerf, count,
                                                       perf);
}

cudnnStatus_t workspace_bytes(cudnnHandle_t h, const ConvDescs &d, cudnnConvolutionFwdAlgo_t a,
                              size_t *bytes) {
  return cudnnGetConvolutionForwardWorkspaceSize(h, d.x, d.w, d.conv, d.y, a, bytes);
}
cudnnStatus_t workspace_bytes(cudnnHandle_t h, const ConvDescs &d, cudnnConvolutionBwdDataAlgo_t a,
                              size_t *bytes) {
  return cudnnGetConvolutionBackwardDataWorkspaceSize(h, d.w, d.y, d.conv, d.x, a, bytes);
}
cudnnStatus_t workspace_bytes(cudnnHandle_t h, const ConvDescs &d,
                              cudnnConvolutionBwdFilterAlgo_t a, size_t *bytes) {
  return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, d.x, d.y, d.conv, d.w, a, bytes);
}

/* GEMM-type algorithms: each output is a plain fp32 dot product (no FFT / Winograd
 * transforms), so the GPU stays within fp32 rounding of the CPU. */
bool gemm_type(cudnnConvolutionFwdAlgo_t a) {
  return a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM ||
         a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
         a == CUDNN_CONVOLUTION_FWD_ALGO_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_DIRECT;
}
bool gemm_type(cudnnConvolutionBwdDataAlgo_t a) {
  return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
}
bool gemm_type(cudnnConvolutionBwdFilterAlgo_t a) {
  return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 ||
         a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3;
}

/* Picks the algorithm and its workspace (see the file comment): the first heuristic result
 * that succeeded, uses FMA math, is deterministic and GEMM-type and whose workspace fits
 * `free_bytes`; else `fallback` if cuDNN supports it and its workspace fits. */
template <typename Perf, typename Algo>
cluda_status pick_algo(const char *op, const char *dir, cudnnHandle_t h, const ConvDescs &d,
                       const Geom &g, Algo fallback, size_t free_bytes, Algo *algo,
                       size_t *ws_bytes) {
  Perf perf[kMaxPerf];
  int count = 0;
  const cudnnStatus_t st = heuristics(h, d, &count, perf);
  if (st != CUDNN_STATUS_SUCCESS)
    return CLUDA_FAIL(CLUDA_ERR_DEVICE, "%s: cudnnGetConvolution%sAlgorithm_v7: %s", op, dir,
                      cudnnGetErrorString(st));
  for (int i = 0; i < count && i < kMaxPerf; i++) {
    const Perf &r = perf[i];
    if (r.status != CUDNN_STATUS_SUCCESS || r.mathType != CUDNN_FMA_MATH ||
        r.determinism != CUDNN_DETERMINISTIC || !gemm_type(r.algo))
      continue;
    size_t need = 0;
    if (workspace_bytes(h, d, r.algo, &need) != CUDNN_STATUS_SUCCESS) continue;
    if (r.memory > need) need = r.memory;
    if (cluda_arena_align(need) > free_bytes) continue;
    *algo = r.algo;
    *ws_bytes = need;
    return cluda_ok();
  }
  size_t need = 0;
  const cudnnStatus_t fst = workspace_bytes(h, d, fallback, &need);
  if (fst == CUDNN_STATUS_SUCCESS && cluda_arena_align(need) <= free_bytes) {
    *algo = fallback;
    *ws_bytes = need;
    return cluda_ok();
  }
  return CLUDA_FAIL(
      fst == CUDNN_STATUS_SUCCESS ? CLUDA_ERR_ALLOC : CLUDA_ERR_DEVICE,
      "%s: no usable cuDNN %s algorithm for x [%d,%d,%d,%d], w [%d,%d,%d,%d], stride %dx%d, "
      "pad %dx%d, dilation %dx%d, groups %d (%zu bytes of scratch free; fallback %d: %s, "
      "%zu bytes)",
      op, dir, g.n, g.h, g.w, g.cin, g.cout, g.kh, g.kw, g.cig, g.sh, g.sw, g.ph, g.pw, g.dh, g.dw,
      g.groups, free_bytes, (int)fallback, cudnnGetErrorString(fst), need);
}

} // namespace

extern "C" cluda_status cluda_cuda_conv2d_forward(cluda_ctx *ctx, const cluda_conv2d_params *p,
                                                  const cluda_tensor *x, const cluda_tensor *w,
                                                  const cluda_tensor *b, cluda_tensor *y) {
  static const char op[] = "conv2d_forward";
  const Geom g = geom_of(p, x, w, y);
  if (g.m == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const float *bias = b ? cluda_f32(b) : NULL;

  if (use_depthwise(g)) {
    dw_forward_kernel<<<grid_size(g.m * g.cin, kBlock, fill_cap(d)), kBlock, 0, d->stream>>>(
        cluda_f32(x), cluda_f32(w), bias, cluda_f32(y), g);
    CLUDA_CUDA_CHECK_LAUNCH(op, "dw_forward_kernel");
    return cluda_ok();
  }

  ConvDescs desc;
  CLUDA_TRY(make_descriptors(op, g, &desc));
  ScratchScope scope(ctx->scratch);
  cudnnConvolutionFwdAlgo_t algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
  size_t ws_bytes = 0;
  CLUDA_TRY((pick_algo<cudnnConvolutionFwdAlgoPerf_t>(
      op, "Forward", d->cudnn, desc, g, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
      scratch_free(ctx->scratch), &algo, &ws_bytes)));
  void *ws = NULL;
  CLUDA_TRY(scratch_take(op, ctx->scratch, ws_bytes, "conv2d_forward cuDNN workspace", &ws));
  const float one = 1.0f, zero = 0.0f;
  CONV_CUDNN(op, cudnnConvolutionForward, d->cudnn, &one, desc.x, x->data, desc.w, w->data,
             desc.conv, algo, ws, ws_bytes, &zero, desc.y, y->data);
  if (bias) {
    const int64_t total = g.m * g.cout;
    bias_add_kernel<<<grid_size(total, kBlock, fill_cap(d)), kBlock, 0, d->stream>>>(
        cluda_f32(y), bias, total, g.cout);
    CLUDA_CUDA_CHECK_LAUNCH(op, "bias_add_kernel");
  }
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_conv2d_backward(cluda_ctx *ctx, const cluda_conv2d_params *p,
                                                   const cluda_tensor *x, const cluda_tensor *w,
                                                   const cluda_tensor *dy, cluda_tensor *dx,
                                                   cluda_tensor *dw, cluda_tensor *db) {
  static const char op[] = "conv2d_backward";
  const Geom g = geom_of(p, x, w, dy);
  /* an empty batch adds nothing to dw / db, and dx is empty too */
  if (g.m == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);

  if (db) CLUDA_TRY(bias_grad(op, ctx, cluda_f32(dy), g.m, g.cout, cluda_f32(db)));
  if (!dx && !dw) return cluda_ok();

  if (use_depthwise(g)) {
    if (dx) {
      const int64_t total = (int64_t)g.n * g.h * g.w * g.cin;
      dw_backward_dx_kernel<<<grid_size(total, kBlock, fill_cap(d)), kBlock, 0, d->stream>>>(
          cluda_f32(dy), cluda_f32(w), cluda_f32(dx), g);
      CLUDA_CUDA_CHECK_LAUNCH(op, "dw_backward_dx_kernel");
    }
    if (dw)
      CLUDA_TRY(depthwise_backward_dw(op, ctx, g, cluda_f32(x), cluda_f32(dy), cluda_f32(dw)));
    return cluda_ok();
  }

  ConvDescs desc;
  CLUDA_TRY(make_descriptors(op, g, &desc));
  const float one = 1.0f, zero = 0.0f;
  if (dx) { /* dx = conv^T(dy, w), overwritten (beta = 0) */
    ScratchScope scope(ctx->scratch);
    cudnnConvolutionBwdDataAlgo_t algo = CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
    size_t ws_bytes = 0;
    CLUDA_TRY((pick_algo<cudnnConvolutionBwdDataAlgoPerf_t>(
        op, "BackwardData", d->cudnn, desc, g, CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
        scratch_free(ctx->scratch), &algo, &ws_bytes)));
    void *ws = NULL;
    CLUDA_TRY(scratch_take(op, ctx->scratch, ws_bytes, "conv2d_backward dx cuDNN workspace", &ws));
    CONV_CUDNN(op, cudnnConvolutionBackwardData, d->cudnn, &one, desc.w, w->data, desc.y, dy->data,
               desc.conv, algo, ws, ws_bytes, &zero, desc.x, dx->data);
  }
  if (dw) { /* dw += x (*) dy (beta = 1) */
    ScratchScope scope(ctx->scratch);
    cudnnConvolutionBwdFilterAlgo_t algo = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1;
    size_t ws_bytes = 0;
    CLUDA_TRY((pick_algo<cudnnConvolutionBwdFilterAlgoPerf_t>(
        op, "BackwardFilter", d->cudnn, desc, g, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
        scratch_free(ctx->scratch), &algo, &ws_bytes)));
    void *ws = NULL;
    CLUDA_TRY(scratch_take(op, ctx->scratch, ws_bytes, "conv2d_backward dw cuDNN workspace", &ws));
    CONV_CUDNN(op, cudnnConvolutionBackwardFilter, d->cudnn, &one, desc.x, x->data, desc.y,
               dy->data, desc.conv, algo, ws, ws_bytes, &one, desc.w, dw->data);
  }
  return cluda_ok();
}

/* Linear layer on the GPU: y[rows, out] = x[rows, in] w[out, in]^T + b[out] over any leading
 * dims (flattened into rows), through cuBLASLt with fp32 inputs, fp32 outputs and fp32
 * accumulation (CUBLAS_COMPUTE_32F: no TF32, so the results stay within fp32 rounding of
 * the CPU's sgemm).
 *
 * Row-major -> column-major. cuBLAS(Lt) is column-major; a row-major [R, C] matrix with
 * leading dimension C is, byte for byte, the column-major [C, R] matrix (its transpose)
 * with the same leading dimension. Writing Xc = X^T [in, rows], Wc = W^T [in, out],
 * Yc = Y^T [out, rows] and dYc = dY^T [out, rows] for those views:
 *   forward  Y  = X W^T   <=>  Yc [out, rows]  = op_T(Wc) Xc   : m out, n rows, k in
 *                              A = w (lda in, transposed), B = x (ldb in), D = y (ldd out);
 *                              the bias is indexed by D's row (out): EPILOGUE_BIAS fits.
 *   dx       dX = dY W    <=>  dXc [in, rows]  = Wc dYc        : m in, n rows, k out
 *                              A = w (lda in), B = dy (ldb out), D = dx (ldd in), beta 0.
 *   dw      dW += dY^T X  <=>  dWc [in, out]  += Xc op_T(dYc)  : m in, n out, k rows
 *                              A = x (lda in), B = dy (ldb out, transposed), D = C = dw
 *                              (ldd in), beta 1 (accumulate, as the CPU backend).
 * db += column sums of dy is a deterministic two-pass reduction in double (fixed row chunks,
 * then the chunks in order), not CUBLASLT_EPILOGUE_BGRADB: that epilogue overwrites its
 * output (db must accumulate) and supports fewer layouts.
 *
 * Precision switch: a TF32 path would use CUBLAS_COMPUTE_32F_FAST_TF32 in
 * cublasLtMatmulDescCreate (same layouts); a bf16 path CUDA_R_16BF layouts for A and B with
 * CUBLAS_COMPUTE_32F and fp32 C/D. Both need the looser tolerances of tests/gpu.
 *
 * Workspace: cuBLASLt gets kLtWorkspaceBytes (the size cuBLAS recommends for Hopper) from
 * the context's device scratch arena when that much is free, else none (the heuristic then
 * picks an algorithm that needs none). The workspace is part of the heuristic's input, so
 * results are bitwise reproducible for a given context state, shapes and pointer alignment.
 * When cuBLASLt offers no algorithm (e.g. the bias epilogue for an unaligned bias) the bias
 * is written into y first and the product accumulated onto it (beta 1, as the CPU does);
 * with no algorithm at all the call goes to cublasSgemm on the context's cuBLAS handle
 * (default math mode: fp32, no TF32). Descriptors are made per call; a per-context plan
 * cache keyed by shape would save the heuristic query (a few microseconds of host time). */
#include <stdint.h>

#include "kernel_common.cuh"

using namespace cluda_kernels;

namespace {

constexpr size_t kLtWorkspaceBytes = (size_t)32 << 20;
constexpr uintptr_t kLtWorkspaceAlign = 256; /* cuBLASLt's default pointer alignment */

constexpr int kSumTy = 8;           /* rows handled side by side in a column-sum block */
constexpr int64_t kMaxChunks = 256; /* row chunks of the db partials (gridDim.y <= 65535) */
constexpr int64_t kMinChunkRows = 64;

/* Owns the cuBLASLt descriptors of one call; destroyed on every return path. */
struct LtDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  LtDescs() = default;
  LtDescs(const LtDescs &) = delete;
  LtDescs &operator=(const LtDescs &) = delete;
  ~LtDescs() {
    if (pref) (void)cublasLtMatmulPreferenceDestroy(pref);
    if (d) (void)cublasLtMatrixLayoutDestroy(d);
    if (b) (void)cublasLtMatrixLayoutDestroy(b);
    if (a) (void)cublasLtMatrixLayoutDestroy(a);
    if (op) (void)cublasLtMatmulDescDestroy(op);
  }
};

/* Releases what was taken from the scratch arena since construction. The ops of a context
 * run in stream order, so the memory can be reused as soon as the launches are queued. */
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

/* A column-major product D[m, n] = op(A) op(B) + beta D (+ bias[m] broadcast over columns).
 * A is stored [m, k] (ta N) or [k, m] (ta T); B is [k, n] (tb N) or [n, k] (tb T). */
struct Gemm {
  cublasOperation_t ta, tb;
  int64_t m, n, k;
  const float *A;
  int64_t lda;
  const float *B;
  int64_t ldb;
  float *D;
  int64_t ldd;
  float beta;
  const float *bias; /* NULL, or m floats for CUBLASLT_EPILOGUE_BIAS */
};

/* D = op(A) op(B) + beta D (+ bias per row of D when bias is not NULL), column-major */
Gemm make_gemm(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
               const float *A, int64_t lda, const float *B, int64_t ldb, float *D, int64_t ldd,
               float beta, const float *bias) {
  const Gemm g = {ta, tb, m, n, k, A, lda, B, ldb, D, ldd, beta, bias};
  return g;
}

/* The largest power of two (<= 256) dividing the address: cuBLASLt's heuristic assumes 256
 * unless told, and would pick kernels that fault on tensors carved at other offsets. */
uint32_t pointer_alignment(const void *p) {
  const uintptr_t u = (uintptr_t)p;
  uint32_t align = 256;
  while (align > 1 && (u & (uintptr_t)(align - 1)) != 0)
    align >>= 1;
  return align;
}

/* Runs g through cuBLASLt. *launched stays false, with nothing queued, when the heuristic
 * has no algorithm for this case, so the caller can take a fallback. */
cluda_status lt_matmul(cluda_ctx *ctx, const Gemm &g, bool *launched) {
  *launched = false;
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  ScratchScope scope(ctx->scratch);
  void *workspace = nullptr;
  uint64_t workspace_bytes = 0;
  cluda_arena *scratch = ctx->scratch;
  const size_t want = kLtWorkspaceBytes + kLtWorkspaceAlign;
  if (scratch && scratch->capacity - scratch->used >= cluda_arena_align(want)) {
    void *p = nullptr;
    CLUDA_TRY(cluda_arena_alloc(scratch, want, "linear cuBLASLt workspace", &p));
    workspace = (void *)(((uintptr_t)p + kLtWorkspaceAlign - 1) & ~(kLtWorkspaceAlign - 1));
    workspace_bytes = kLtWorkspaceBytes;
  }

  LtDescs L;
  CLUDA_CUBLAS_TRY(cublasLtMatmulDescCreate(&L.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  CLUDA_CUBLAS_TRY(
      cublasLtMatmulDescSetAttribute(L.op, CUBLASLT_MATMUL_DESC_TRANSA, &g.ta, sizeof g.ta));
  CLUDA_CUBLAS_TRY(
      cublasLtMatmulDescSetAttribute(L.op, CUBLASLT_MATMUL_DESC_TRANSB, &g.tb, sizeof g.tb));
  if (g.bias) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    CLUDA_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(L.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue,
                                                    sizeof epilogue));
    /* the attribute's value is the device pointer itself */
    CLUDA_CUBLAS_TRY(cublasLtMatmulDescSetAttribute(L.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                    &g.bias, sizeof g.bias));
  }
  const uint64_t a_rows = (uint64_t)(g.ta == CUBLAS_OP_N ? g.m : g.k);
  const uint64_t a_cols = (uint64_t)(g.ta == CUBLAS_OP_N ? g.k : g.m);
  const uint64_t b_rows = (uint64_t)(g.tb == CUBLAS_OP_N ? g.k : g.n);
  const uint64_t b_cols = (uint64_t)(g.tb == CUBLAS_OP_N ? g.n : g.k);
  CLUDA_CUBLAS_TRY(cublasLtMatrixLayoutCreate(&L.a, CUDA_R_32F, a_rows, a_cols, g.lda));
  CLUDA_CUBLAS_TRY(cublasLtMatrixLayoutCreate(&L.b, CUDA_R_32F, b_rows, b_cols, g.ldb));
  /* C and D are the same matrix with the same layout (in place when beta = 1) */
  CLUDA_CUBLAS_TRY(
      cublasLtMatrixLayoutCreate(&L.d, CUDA_R_32F, (uint64_t)g.m, (uint64_t)g.n, g.ldd));

  CLUDA_CUBLAS_TRY(cublasLtMatmulPreferenceCreate(&L.pref));
  CLUDA_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
      L.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes, sizeof workspace_bytes));
  const uint32_t align_a = pointer_alignment(g.A), align_b = pointer_alignment(g.B),
                 align_d = pointer_alignment(g.D);
  CLUDA_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
      L.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a, sizeof align_a));
  CLUDA_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
      L.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b, sizeof align_b));
  CLUDA_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
      L.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d, sizeof align_d));
  CLUDA_CUBLAS_TRY(cublasLtMatmulPreferenceSetAttribute(
      L.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d, sizeof align_d));

  cublasLtMatmulHeuristicResult_t result = {};
  int returned = 0;
  const cublasStatus_t hs = cublasLtMatmulAlgoGetHeuristic(d->cublaslt, L.op, L.a, L.b, L.d, L.d,
                                                           L.pref, 1, &result, &returned);
  if (hs == CUBLAS_STATUS_NOT_SUPPORTED || (hs == CUBLAS_STATUS_SUCCESS && returned == 0))
    return cluda_ok(); /* no algorithm: the caller falls back */
  if (hs != CUBLAS_STATUS_SUCCESS)
    return CLUDA_FAIL(CLUDA_ERR_DEVICE,
                      "linear: cublasLtMatmulAlgoGetHeuristic(m %lld, n %lld, k %lld): %s: %s",
                      (long long)g.m, (long long)g.n, (long long)g.k, cublasGetStatusName(hs),
                      cublasGetStatusString(hs));

  const float alpha = 1.0f;
  CLUDA_CUBLAS_TRY(cublasLtMatmul(d->cublaslt, L.op, &alpha, g.A, L.a, g.B, L.b, &g.beta, g.D, L.d,
                                  g.D, L.d, &result.algo, workspace, (size_t)workspace_bytes,
                                  d->stream));
  *launched = true;
  return cluda_ok();
}

/* y[r, c] = b[c] (b NULL: 0) for a row-major [rows, cols] y */
__global__ void fill_rows_kernel(const float *b, float *y, int64_t rows, int cols) {
  const int64_t total = rows * cols;
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride)
    y[i] = b ? b[i % cols] : 0.0f;
}

cluda_status fill_rows(cluda_ctx *ctx, const float *b, float *y, int64_t rows, int cols) {
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const unsigned grid = grid_size(rows * cols, kBlock, fill_cap(d));
  fill_rows_kernel<<<grid, kBlock, 0, d->stream>>>(b, y, rows, cols);
  CLUDA_CUDA_CHECK_LAUNCH("linear", "fill_rows_kernel");
  return cluda_ok();
}

/* The same product through classic cuBLAS (32-bit sizes: the public entry point limits rows
 * to INT_MAX; in and out are ints). */
cluda_status sgemm(cluda_ctx *ctx, const Gemm &g) {
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const float alpha = 1.0f;
  CLUDA_CUBLAS_TRY(cublasSgemm(d->cublas, g.ta, g.tb, (int)g.m, (int)g.n, (int)g.k, &alpha, g.A,
                               (int)g.lda, g.B, (int)g.ldb, &g.beta, g.D, (int)g.ldd));
  return cluda_ok();
}

/* Runs g (bias only in the forward: D is then y with rows n and ldd m) with the fallbacks
 * described at the top. */
cluda_status gemm(cluda_ctx *ctx, const Gemm &g) {
  bool launched = false;
  CLUDA_TRY(lt_matmul(ctx, g, &launched));
  if (launched) return cluda_ok();
  Gemm plain = g;
  if (g.bias) {
    /* D = bias broadcast, then D += A B: the CPU backend's order of operations */
    CLUDA_TRY(fill_rows(ctx, g.bias, g.D, g.n, (int)g.m));
    plain.bias = nullptr;
    plain.beta = 1.0f;
    CLUDA_TRY(lt_matmul(ctx, plain, &launched));
    if (launched) return cluda_ok();
  }
  return sgemm(ctx, plain);
}

/* Block (32, kSumTy) sums columns [32 blockIdx.x, +32) of the rows of chunk blockIdx.y in
 * double, in a fixed order; writes part[chunk, c], or adds to out[c] when part is NULL (a
 * single chunk, used when there is no scratch for partials). */
__global__ void column_sums_partials_kernel(const float *a, int64_t rows, int cols,
                                            int64_t chunk_rows, double *part, float *out) {
  __shared__ double sh[kSumTy][kWarp + 1];
  const int c = blockIdx.x * kWarp + threadIdx.x;
  double s = 0.0;
  if (c < cols)
    s = chunk_column_sum<kSumTy>(rows, chunk_rows,
                                 [&](int64_t r) { return (double)a[r * cols + c]; });
  const double t = block_column_total<kSumTy>(sh, s);
  if (threadIdx.y == 0 && c < cols) {
    if (part)
      part[(int64_t)blockIdx.y * cols + c] = t;
    else
      out[c] += (float)t;
  }
}

/* out[c] += sum over chunks of part[k, c], in chunk order */
__global__ void column_sums_final_kernel(const double *part, int chunks, int cols, float *out) {
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < cols; c += gridDim.x * blockDim.x)
    out[c] += (float)sum_chunk_partials(part, chunks, cols, c);
}

/* out[c] += sum over the rows of a[rows, cols] (db). The chunking depends only on the shape
 * (and on whether the scratch can hold the partials), so the sum is bitwise reproducible. */
cluda_status add_column_sums(cluda_ctx *ctx, const float *a, int64_t rows, int cols, float *out) {
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  int64_t chunks, chunk_rows;
  row_chunking(rows, kMinChunkRows, kMaxChunks, &chunks, &chunk_rows);
  ScratchScope scope(ctx->scratch);
  void *part = nullptr;
  const size_t part_bytes = (size_t)chunks * (size_t)cols * sizeof(double);
  cluda_arena *scratch = ctx->scratch;
  if (chunks > 1 &&
      (!scratch || scratch->capacity - scratch->used < cluda_arena_align(part_bytes))) {
    chunks = 1; /* no room for partials: one pass over all rows per column block */
    chunk_rows = rows;
  }
  if (chunks > 1)
    CLUDA_TRY(cluda_arena_alloc(scratch, part_bytes, "linear_backward db partials", &part));
  const dim3 block(kWarp, kSumTy);
  const dim3 grid((unsigned)((cols + kWarp - 1) / kWarp), (unsigned)chunks);
  column_sums_partials_kernel<<<grid, block, 0, d->stream>>>(a, rows, cols, chunk_rows,
                                                             (double *)part, out);
  CLUDA_CUDA_CHECK_LAUNCH("linear_backward", "column_sums_partials_kernel");
  if (part) {
    const unsigned fgrid = grid_size(cols, kBlock, fill_cap(d));
    column_sums_final_kernel<<<fgrid, kBlock, 0, d->stream>>>((const double *)part, (int)chunks,
                                                              cols, out);
    CLUDA_CUDA_CHECK_LAUNCH("linear_backward", "column_sums_final_kernel");
  }
  return cluda_ok();
}

} // namespace

extern "C" cluda_status cluda_cuda_linear_forward(cluda_ctx *ctx, const cluda_tensor *x,
                                                  const cluda_tensor *w, const cluda_tensor *b,
                                                  cluda_tensor *y) {
  const int64_t rows = cluda_tensor_rows(x);
  const int in = cluda_tensor_cols(x), out = w->shape[0];
  if (rows == 0 || out == 0) return cluda_ok();
  const float *pb = b ? cluda_f32(b) : nullptr;
  /* no inner dimension: y is the bias (or 0); cuBLAS rejects k = 0 layouts */
  if (in == 0) return fill_rows(ctx, pb, cluda_f32(y), rows, out);
  return gemm(ctx, make_gemm(CUBLAS_OP_T, CUBLAS_OP_N, out, rows, in, cluda_f32(w), in,
                             cluda_f32(x), in, cluda_f32(y), out, 0.0f, pb));
}

extern "C" cluda_status cluda_cuda_linear_backward(cluda_ctx *ctx, const cluda_tensor *x,
                                                   const cluda_tensor *w, const cluda_tensor *dy,
                                                   cluda_tensor *dx, cluda_tensor *dw,
                                                   cluda_tensor *db) {
  const int64_t rows = cluda_tensor_rows(x);
  const int in = cluda_tensor_cols(x), out = w->shape[0];
  if (rows == 0) return cluda_ok(); /* dx is empty and nothing is added to dw, db */
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  if (dx && in > 0) {
    if (out == 0) {
      /* an empty sum: dx = 0 */
      CLUDA_CUDA_TRY(
          cudaMemsetAsync(cluda_f32(dx), 0, (size_t)rows * (size_t)in * sizeof(float), d->stream));
    } else {
      CLUDA_TRY(gemm(ctx, make_gemm(CUBLAS_OP_N, CUBLAS_OP_N, in, rows, out, cluda_f32(w), in,
                                    cluda_f32(dy), out, cluda_f32(dx), in, 0.0f, nullptr)));
    }
  }
  if (out > 0 && in > 0) {
    CLUDA_TRY(gemm(ctx, make_gemm(CUBLAS_OP_N, CUBLAS_OP_T, in, out, rows, cluda_f32(x), in,
                                  cluda_f32(dy), out, cluda_f32(dw), in, 1.0f, nullptr)));
  }
  if (db && out > 0) CLUDA_TRY(add_column_sums(ctx, cluda_f32(dy), rows, out, cluda_f32(db)));
  return cluda_ok();
}

/* Multi-head scaled dot-product attention on the GPU (semantics of src/ops/attention.c: no
 * mask, scale head_dim^-0.5, head h owns channels [h d, (h+1) d), probs [B*heads, N, Nk]
 * saved for the backward, dq/dk/dv overwritten).
 *
 * Every (batch, head) pair is an independent problem whose matrices are strided slices
 * (leading dimension C) of the [B, N, C] tensors, as on the CPU, so cuBLAS reads and writes
 * them in place. The pairs are batched with cublasGemmStridedBatchedEx, which needs one
 * constant stride between the problems of a call: along the heads of one image the q/k/v
 * slices are d floats apart and the probs blocks N Nk floats apart; along the images of one
 * head they are N C (q), Nk C (k, v) and heads N Nk (probs) apart. The launcher loops over the
 * shorter of the two axes and batches the longer one. GEMMs compute in fp32
 * (CUBLAS_COMPUTE_32F with the handle's default math mode: no TF32), like the CPU's sgemm.
 *
 * Forward: S = scale Q K^T written straight into probs, the row softmax in place (one warp
 * per row), then O = P V into each head's channel block of out.
 * Backward: dP = dO V^T into a scratch block, dS = P (dP - rowsum(dP P)) in place (one warp
 * per row), dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO. dS needs N Nk floats per pair;
 * cluda_attention_scratch_bytes promises one pair's worth, so the backward takes as many pairs
 * per batched call as the free part of the scratch arena holds (at least one).
 *
 * cuBLAS is column-major: a row-major [r, c] matrix with leading dimension L is, to cuBLAS,
 * the column-major [c, r] transpose with the same L. Each row-major product Y = op(X) op(W)
 * is therefore issued as Y^T = op(W)^T op(X)^T; the comment at each call gives both forms. */
#include <math.h>

#include "kernel_common.cuh"

using namespace cluda_kernels;

namespace {

/* Row softmax in place over rows of `cols` floats (probs is contiguous). */
__global__ void attention_softmax_kernel(float *p, int64_t rows, int cols) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t r = global_warp(); r < rows; r += warp_count()) {
    float *row = p + r * cols;
    float m = -INFINITY;
    for (int c = lane; c < cols; c += kWarp)
      m = fmaxf(m, row[c]);
    m = warp_max(m);
    float s = 0.0f;
    for (int c = lane; c < cols; c += kWarp)
      s += expf(row[c] - m);
    s = warp_sum(s);
    const float inv = 1.0f / s; /* the CPU multiplies by the inverse too */
    /* each lane rewrites only the elements it read: in place is safe */
    for (int c = lane; c < cols; c += kWarp)
      row[c] = expf(row[c] - m) * inv;
  }
}

/* The softmax backward on `count` problems of n rows: ds (contiguous [count, n, nk], holding
 * dP on entry) becomes P (dP - rowsum(dP P)); problem j's probabilities start at
 * p + j p_stride. */
__global__ void attention_dsoftmax_kernel(const float *p, int64_t p_stride, float *ds, int count,
                                          int n, int nk) {
  const int lane = threadIdx.x % kWarp;
  const int64_t rows = (int64_t)count * n;
  for (int64_t r = global_warp(); r < rows; r += warp_count()) {
    const int64_t j = r / n, i = r % n;
    const float *prow = p + j * p_stride + i * nk;
    float *row = ds + r * nk;
    float dot = 0.0f;
    for (int c = lane; c < nk; c += kWarp)
      dot += row[c] * prow[c];
    dot = warp_sum(dot);
    for (int c = lane; c < nk; c += kWarp)
      row[c] = prow[c] * (row[c] - dot);
  }
}

/* Where the problems of one batched call live: for the outer index o (an image or a head)
 * and the batched range [j0, j0 + count) of the other axis, element offsets of the first
 * problem and strides between consecutive ones. */
struct PairBatch {
  int64_t q_off, kv_off, p_off;          /* q/out/dout/dq, k/v/dk/dv, probs */
  int64_t q_stride, kv_stride, p_stride; /* between consecutive problems */
  int count;
};

struct Shape {
  int b, n, c, nk, heads, d;
  int over_heads; /* 1: loop over images, batch the heads; 0: loop over heads, batch images */
  int outer() const { return over_heads ? b : heads; }
  int inner() const { return over_heads ? heads : b; }
  PairBatch batch(int o, int j0, int count) const {
    PairBatch pb;
    pb.count = count;
    const int64_t nn = (int64_t)n * nk;
    if (over_heads) { /* o = image, j = head */
      pb.q_off = (int64_t)o * n * c + (int64_t)j0 * d;
      pb.kv_off = (int64_t)o * nk * c + (int64_t)j0 * d;
      pb.p_off = ((int64_t)o * heads + j0) * nn;
      pb.q_stride = d;
      pb.kv_stride = d;
      pb.p_stride = nn;
    } else { /* o = head, j = image */
      pb.q_off = (int64_t)j0 * n * c + (int64_t)o * d;
      pb.kv_off = (int64_t)j0 * nk * c + (int64_t)o * d;
      pb.p_off = ((int64_t)j0 * heads + o) * nn;
      pb.q_stride = (int64_t)n * c;
      pb.kv_stride = (int64_t)nk * c;
      pb.p_stride = (int64_t)heads * nn;
    }
    return pb;
  }
};

Shape shape_of(int heads, const cluda_tensor *q, const cluda_tensor *k) {
  Shape s;
  s.b = q->shape[0];
  s.n = q->shape[1];
  s.c = q->shape[2];
  s.nk = k->shape[1];
  s.heads = heads;
  s.d = s.c / heads;
  s.over_heads = heads >= s.b;
  return s;
}

/* C = alpha op(A) op(B) + 0 C for `count` problems, fp32 in and out, fp32 compute. */
cublasStatus_t gemm_batched(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                            int n, int k, float alpha, const float *a, int lda, int64_t stride_a,
                            const float *b, int ldb, int64_t stride_b, float *c, int ldc,
                            int64_t stride_c, int count) {
  const float beta = 0.0f;
  return cublasGemmStridedBatchedEx(h, ta, tb, m, n, k, &alpha, a, CUDA_R_32F, lda,
                                    (long long)stride_a, b, CUDA_R_32F, ldb, (long long)stride_b,
                                    &beta, c, CUDA_R_32F, ldc, (long long)stride_c, count,
                                    CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

} // namespace

/* A failing cuBLAS call of the attention, named in the message. */
#define ATTN_CUBLAS(op, call)                                                                      \
  do {                                                                                             \
    cublasStatus_t st_ = (call);                                                                   \
    if (st_ != CUBLAS_STATUS_SUCCESS)                                                              \
      return CLUDA_FAIL(CLUDA_ERR_DEVICE, "%s: %s: %s: %s", (op), #call, cublasGetStatusName(st_), \
                        cublasGetStatusString(st_));                                               \
  } while (0)

extern "C" cluda_status cluda_cuda_attention_forward(cluda_ctx *ctx, int heads,
                                                     const cluda_tensor *q, const cluda_tensor *k,
                                                     const cluda_tensor *v, cluda_tensor *out,
                                                     cluda_tensor *probs) {
  const Shape s = shape_of(heads, q, k);
  if (s.b == 0) return cluda_ok();
  cluda_cuda_device *dev = cluda_cuda_dev(ctx);
  const float scale = 1.0f / sqrtf((float)s.d); /* as the CPU */
  const float *qd = cluda_f32(q), *kd = cluda_f32(k), *vd = cluda_f32(v);
  float *od = cluda_f32(out), *pd = cluda_f32(probs);

  /* S = scale Q K^T (row-major [n, nk]) = column-major S^T [nk, n] = scale K_cm^T Q_cm with
   * K_cm [d, nk] and Q_cm [d, n], both of leading dimension C. */
  for (int o = 0; o < s.outer(); o++) {
    const PairBatch pb = s.batch(o, 0, s.inner());
    ATTN_CUBLAS("attention_forward",
                gemm_batched(dev->cublas, CUBLAS_OP_T, CUBLAS_OP_N, s.nk, s.n, s.d, scale,
                             kd + pb.kv_off, s.c, pb.kv_stride, qd + pb.q_off, s.c, pb.q_stride,
                             pd + pb.p_off, s.nk, pb.p_stride, pb.count));
  }
  const int64_t rows = (int64_t)s.b * s.heads * s.n;
  attention_softmax_kernel<<<grid_size(rows, kWarpsPerBlock, fill_cap(dev)), kBlock, 0,
                             dev->stream>>>(pd, rows, s.nk);
  CLUDA_CUDA_CHECK_LAUNCH("attention_forward", "attention_softmax_kernel");
  /* O = P V (row-major [n, d], leading dimension C) = column-major O^T [d, n] = V_cm P_cm with
   * V_cm [d, nk] (ld C) and P_cm [nk, n] (ld nk). */
  for (int o = 0; o < s.outer(); o++) {
    const PairBatch pb = s.batch(o, 0, s.inner());
    ATTN_CUBLAS("attention_forward",
                gemm_batched(dev->cublas, CUBLAS_OP_N, CUBLAS_OP_N, s.d, s.n, s.nk, 1.0f,
                             vd + pb.kv_off, s.c, pb.kv_stride, pd + pb.p_off, s.nk, pb.p_stride,
                             od + pb.q_off, s.c, pb.q_stride, pb.count));
  }
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_attention_backward(cluda_ctx *ctx, int heads,
                                                      const cluda_tensor *q, const cluda_tensor *k,
                                                      const cluda_tensor *v,
                                                      const cluda_tensor *probs,
                                                      const cluda_tensor *dout, cluda_tensor *dq,
                                                      cluda_tensor *dk, cluda_tensor *dv) {
  static const char op[] = "attention_backward";
  const Shape s = shape_of(heads, q, k);
  if (s.b == 0) return cluda_ok();
  cluda_cuda_device *dev = cluda_cuda_dev(ctx);
  const float scale = 1.0f / sqrtf((float)s.d);
  const size_t pair_bytes = (size_t)s.n * (size_t)s.nk * sizeof(float);
  cluda_arena *scratch = ctx->scratch;
  CLUDA_REQUIRE(scratch != NULL, CLUDA_ERR_ARG, "%s: ctx->scratch is NULL (needs %zu bytes)", op,
                cluda_attention_scratch_bytes(heads, s.b, s.n, s.nk));
  /* as many pairs per call as the free scratch holds; one is what the documented size gives */
  const size_t free_bytes =
      scratch->capacity > scratch->used ? scratch->capacity - scratch->used : 0;
  int64_t per_call = (int64_t)(free_bytes / cluda_arena_align(pair_bytes));
  if (per_call > s.inner()) per_call = s.inner();
  if (per_call < 1) per_call = 1; /* the allocation below then reports the shortfall */
  const size_t mark = cluda_arena_mark(scratch);
  void *buf = NULL;
  CLUDA_TRY(
      cluda_arena_alloc(scratch, (size_t)per_call * pair_bytes, "attention_backward dS", &buf));
  float *ds = (float *)buf;
  const float *qd = cluda_f32(q), *kd = cluda_f32(k), *vd = cluda_f32(v), *pd = cluda_f32(probs),
              *god = cluda_f32(dout);
  float *dqd = cluda_f32(dq), *dkd = cluda_f32(dk), *dvd = cluda_f32(dv);
  const int64_t nn = (int64_t)s.n * s.nk;
  cluda_status st = cluda_ok();

  /* Work on the stream is ordered, so the scratch can be released as soon as the calls are
   * queued (also on an error return). */
#define BWD_CUBLAS(call)                                                                           \
  do {                                                                                             \
    cublasStatus_t st_ = (call);                                                                   \
    if (st_ != CUBLAS_STATUS_SUCCESS) {                                                            \
      st = CLUDA_FAIL(CLUDA_ERR_DEVICE, "%s: %s: %s: %s", op, #call, cublasGetStatusName(st_),     \
                      cublasGetStatusString(st_));                                                 \
      goto done;                                                                                   \
    }                                                                                              \
  } while (0)

  for (int o = 0; o < s.outer(); o++) {
    for (int j0 = 0; j0 < s.inner(); j0 += (int)per_call) {
      const int cnt = s.inner() - j0 < per_call ? s.inner() - j0 : (int)per_call;
      const PairBatch pb = s.batch(o, j0, cnt);
      /* dP = dO V^T (row-major [n, nk]) = column-major dP^T [nk, n] = V_cm^T dO_cm with V_cm
       * [d, nk] and dO_cm [d, n] (ld C); problem j's dP at ds + j n nk. */
      BWD_CUBLAS(gemm_batched(dev->cublas, CUBLAS_OP_T, CUBLAS_OP_N, s.nk, s.n, s.d, 1.0f,
                              vd + pb.kv_off, s.c, pb.kv_stride, god + pb.q_off, s.c, pb.q_stride,
                              ds, s.nk, nn, cnt));
      const int64_t rows = (int64_t)cnt * s.n;
      attention_dsoftmax_kernel<<<grid_size(rows, kWarpsPerBlock, fill_cap(dev)), kBlock, 0,
                                  dev->stream>>>(pd + pb.p_off, pb.p_stride, ds, cnt, s.n, s.nk);
      {
        const cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) {
          st = CLUDA_FAIL(CLUDA_ERR_DEVICE, "%s: launching attention_dsoftmax_kernel: %s: %s", op,
                          cudaGetErrorName(err), cudaGetErrorString(err));
          goto done;
        }
      }
      /* dQ = scale dS K (row-major [n, d], ld C) = column-major dQ^T [d, n] = scale K_cm dS_cm
       * with K_cm [d, nk] (ld C), dS_cm [nk, n] (ld nk). */
      BWD_CUBLAS(gemm_batched(dev->cublas, CUBLAS_OP_N, CUBLAS_OP_N, s.d, s.n, s.nk, scale,
                              kd + pb.kv_off, s.c, pb.kv_stride, ds, s.nk, nn, dqd + pb.q_off, s.c,
                              pb.q_stride, cnt));
      /* dK = scale dS^T Q (row-major [nk, d], ld C) = column-major dK^T [d, nk] = scale Q_cm
       * dS_cm^T with Q_cm [d, n] (ld C), dS_cm [nk, n] (ld nk). */
      BWD_CUBLAS(gemm_batched(dev->cublas, CUBLAS_OP_N, CUBLAS_OP_T, s.d, s.nk, s.n, scale,
                              qd + pb.q_off, s.c, pb.q_stride, ds, s.nk, nn, dkd + pb.kv_off, s.c,
                              pb.kv_stride, cnt));
      /* dV = P^T dO (row-major [nk, d], ld C) = column-major dV^T [d, nk] = dO_cm P_cm^T with
       * dO_cm [d, n] (ld C), P_cm [nk, n] (ld nk). */
      BWD_CUBLAS(gemm_batched(dev->cublas, CUBLAS_OP_N, CUBLAS_OP_T, s.d, s.nk, s.n, 1.0f,
                              god + pb.q_off, s.c, pb.q_stride, pd + pb.p_off, s.nk, pb.p_stride,
                              dvd + pb.kv_off, s.c, pb.kv_stride, cnt));
    }
  }
#undef BWD_CUBLAS
done:
  cluda_arena_release(scratch, mark);
  return st;
}

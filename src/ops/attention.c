/* Multi-head scaled dot-product attention (no mask, no dropout), heads split by channel:
 * head h owns channels [h d, (h+1) d) of q, k and v. Each (batch, head) pair is an
 * independent problem whose matrices are strided slices (leading dimension C) of the
 * [B, N, C] tensors, so BLAS works on them in place without head split/merge copies. */
#include <cblas.h>
#include <math.h>

#include "op_common.h"

/* The CPU backward takes one dS matrix [N, Nk], reused by the (batch, head) pairs, which
 * run one after the other. */
size_t cluda_attention_scratch_bytes(int heads, int batch, int n, int nk) {
  if (heads < 1 || batch < 1) return 0;
  return cluda_arena_align((size_t)n * (size_t)nk * sizeof(float));
}

static cluda_status check_common(const char *op, int heads, const cluda_tensor *q,
                                 const cluda_tensor *k, const cluda_tensor *v,
                                 const cluda_tensor *probs) {
  char dq[64], dk[64], dp[64];
  CLUDA_TRY(cluda_check_tensor(op, "q", q, CLUDA_F32, 3));
  CLUDA_TRY(cluda_check_tensor(op, "k", k, CLUDA_F32, 3));
  CLUDA_TRY(cluda_check_tensor(op, "v", v, CLUDA_F32, 3));
  CLUDA_TRY(cluda_check_tensor(op, "probs", probs, CLUDA_F32, 3));
  int b = q->shape[0], n = q->shape[1], c = q->shape[2], nk = k->shape[1];
  CLUDA_REQUIRE(heads >= 1, CLUDA_ERR_ARG, "%s: heads = %d must be >= 1", op, heads);
  CLUDA_REQUIRE(n >= 1 && c >= 1, CLUDA_ERR_SHAPE,
                "%s: q %s needs at least one token and one channel", op,
                cluda_tensor_describe(q, dq, sizeof dq));
  CLUDA_REQUIRE(c % heads == 0, CLUDA_ERR_SHAPE,
                "%s: channels of q %s are not divisible by heads = %d", op,
                cluda_tensor_describe(q, dq, sizeof dq), heads);
  CLUDA_REQUIRE(k->shape[0] == b && k->shape[2] == c && nk >= 1, CLUDA_ERR_SHAPE,
                "%s: k %s must be [%d, Nk >= 1, %d] to match q %s", op,
                cluda_tensor_describe(k, dk, sizeof dk), b, c,
                cluda_tensor_describe(q, dq, sizeof dq));
  CLUDA_REQUIRE_SAME_SHAPE(op, "v", v, "k", k);
  CLUDA_REQUIRE((int64_t)probs->shape[0] == (int64_t)b * heads && probs->shape[1] == n &&
                    probs->shape[2] == nk,
                CLUDA_ERR_SHAPE, "%s: probs %s must be [B*heads, N, Nk] = [%lld, %d, %d]", op,
                cluda_tensor_describe(probs, dp, sizeof dp), (long long)b * heads, n, nk);
  return cluda_ok();
}

cluda_status cluda_attention_forward(cluda_ctx *ctx, int heads, const cluda_tensor *q,
                                     const cluda_tensor *k, const cluda_tensor *v,
                                     cluda_tensor *out, cluda_tensor *probs) {
  const char *op = "attention_forward";
  CLUDA_TRY(check_common(op, heads, q, k, v, probs));
  CLUDA_TRY(cluda_check_tensor(op, "out", out, CLUDA_F32, 3));
  CLUDA_REQUIRE_SAME_SHAPE(op, "out", out, "q", q);
  CLUDA_DISPATCH(ctx, attention_forward, heads, q, k, v, out, probs);
}

cluda_status cluda_attention_backward(cluda_ctx *ctx, int heads, const cluda_tensor *q,
                                      const cluda_tensor *k, const cluda_tensor *v,
                                      const cluda_tensor *probs, const cluda_tensor *dout,
                                      cluda_tensor *dq, cluda_tensor *dk, cluda_tensor *dv) {
  const char *op = "attention_backward";
  CLUDA_TRY(check_common(op, heads, q, k, v, probs));
  CLUDA_TRY(cluda_check_tensor(op, "dout", dout, CLUDA_F32, 3));
  CLUDA_TRY(cluda_check_tensor(op, "dq", dq, CLUDA_F32, 3));
  CLUDA_TRY(cluda_check_tensor(op, "dk", dk, CLUDA_F32, 3));
  CLUDA_TRY(cluda_check_tensor(op, "dv", dv, CLUDA_F32, 3));
  CLUDA_REQUIRE_SAME_SHAPE(op, "dout", dout, "q", q);
  CLUDA_REQUIRE_SAME_SHAPE(op, "dq", dq, "q", q);
  CLUDA_REQUIRE_SAME_SHAPE(op, "dk", dk, "k", k);
  CLUDA_REQUIRE_SAME_SHAPE(op, "dv", dv, "v", v);
  CLUDA_DISPATCH(ctx, attention_backward, heads, q, k, v, probs, dout, dq, dk, dv);
}

/* ---- CPU implementation ---- */

/* Pairs run one after the other so that OpenBLAS can thread each GEMM (OpenMP threads
 * around a threaded OpenBLAS call oversubscribe the cores and serialise on its lock); the
 * row-wise softmax steps, which cost as much as the GEMMs, are split over OpenMP threads by
 * row. Every output element is computed by one thread in a fixed order, so the bits do not
 * depend on the thread count. */
static int parallel_rows(int n, int nk) { return (int64_t)n * nk > 16384; }

enum { LANES = 8 }; /* independent partial sums: vectorisable, and a fixed order */

static float row_max(const float *row, int nk) {
  float m[LANES];
  for (int l = 0; l < LANES; l++)
    m[l] = row[0];
  int j = 0;
  for (; j + LANES <= nk; j += LANES)
    for (int l = 0; l < LANES; l++)
      m[l] = row[j + l] > m[l] ? row[j + l] : m[l];
  for (; j < nk; j++)
    m[0] = row[j] > m[0] ? row[j] : m[0];
  float mx = m[0];
  for (int l = 1; l < LANES; l++)
    mx = m[l] > mx ? m[l] : mx;
  return mx;
}

static float row_sum(const float *row, int nk) {
  float acc[LANES] = {0};
  int j = 0;
  for (; j + LANES <= nk; j += LANES)
    for (int l = 0; l < LANES; l++)
      acc[l] += row[j + l];
  for (; j < nk; j++)
    acc[0] += row[j];
  float s = 0.0f;
  for (int l = 0; l < LANES; l++)
    s += acc[l];
  return s;
}

static float row_dot(const float *a, const float *b, int nk) {
  float acc[LANES] = {0};
  int j = 0;
  for (; j + LANES <= nk; j += LANES)
    for (int l = 0; l < LANES; l++)
      acc[l] += a[j + l] * b[j + l];
  for (; j < nk; j++)
    acc[0] += a[j] * b[j];
  float s = 0.0f;
  for (int l = 0; l < LANES; l++)
    s += acc[l];
  return s;
}

/* Row softmax of the scores in p [n, nk], in place. */
static void softmax_rows(float *p, int n, int nk) {
#pragma omp parallel for schedule(static) if (parallel_rows(n, nk))
  for (int i = 0; i < n; i++) {
    float *row = p + (size_t)i * nk;
    const float mx = row_max(row, nk);
    for (int j = 0; j < nk; j++)
      row[j] = expf(row[j] - mx);
    const float inv = 1.0f / row_sum(row, nk);
    for (int j = 0; j < nk; j++)
      row[j] *= inv;
  }
}

cluda_status cluda_cpu_attention_forward(cluda_ctx *ctx, int heads, const cluda_tensor *q,
                                         const cluda_tensor *k, const cluda_tensor *v,
                                         cluda_tensor *out, cluda_tensor *probs) {
  (void)ctx;
  const int b = q->shape[0], n = q->shape[1], c = q->shape[2], nk = k->shape[1];
  const int d = c / heads, pairs = b * heads;
  const float scale = 1.0f / sqrtf((float)d);
  const float *qd = cluda_f32(q), *kd = cluda_f32(k), *vd = cluda_f32(v);
  float *od = cluda_f32(out), *pd = cluda_f32(probs);

  for (int pair = 0; pair < pairs; pair++) {
    const int bi = pair / heads, h = pair % heads;
    const float *qh = qd + (size_t)bi * n * c + (size_t)h * d;
    const float *kh = kd + (size_t)bi * nk * c + (size_t)h * d;
    const float *vh = vd + (size_t)bi * nk * c + (size_t)h * d;
    float *p = pd + (size_t)pair * n * nk;
    /* S = scale Q K^T, written straight into probs and normalised there */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nk, d, scale, qh, c, kh, c, 0.0f, p,
                nk);
    softmax_rows(p, n, nk);
    /* O = P V into this head's channel block of out */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, nk, 1.0f, p, nk, vh, c, 0.0f,
                od + (size_t)bi * n * c + (size_t)h * d, c);
  }
  return cluda_ok();
}

cluda_status cluda_cpu_attention_backward(cluda_ctx *ctx, int heads, const cluda_tensor *q,
                                          const cluda_tensor *k, const cluda_tensor *v,
                                          const cluda_tensor *probs, const cluda_tensor *dout,
                                          cluda_tensor *dq, cluda_tensor *dk, cluda_tensor *dv) {
  const int b = q->shape[0], n = q->shape[1], c = q->shape[2], nk = k->shape[1];
  const int d = c / heads, pairs = b * heads;
  if (pairs == 0) return cluda_ok();
  const float scale = 1.0f / sqrtf((float)d);
  CLUDA_REQUIRE(ctx->scratch != NULL, CLUDA_ERR_ARG,
                "attention_backward: ctx->scratch is NULL (needs %zu bytes)",
                cluda_attention_scratch_bytes(heads, b, n, nk));
  const size_t mark = cluda_arena_mark(ctx->scratch);
  void *buf = NULL;
  CLUDA_TRY(cluda_arena_alloc(ctx->scratch, cluda_attention_scratch_bytes(heads, b, n, nk),
                              "attention_backward dS", &buf));
  float *ds = buf;
  const float *qd = cluda_f32(q), *kd = cluda_f32(k), *vd = cluda_f32(v), *pd = cluda_f32(probs),
              *god = cluda_f32(dout);
  float *dqd = cluda_f32(dq), *dkd = cluda_f32(dk), *dvd = cluda_f32(dv);

  for (int pair = 0; pair < pairs; pair++) {
    const int bi = pair / heads, h = pair % heads;
    const size_t qoff = (size_t)bi * n * c + (size_t)h * d;
    const size_t koff = (size_t)bi * nk * c + (size_t)h * d;
    const float *p = pd + (size_t)pair * n * nk;
    /* dP = dO V^T */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, nk, d, 1.0f, god + qoff, c, vd + koff,
                c, 0.0f, ds, nk);
    /* dS = P (dP - rowsum(dP P)), the softmax backward, in place */
#pragma omp parallel for schedule(static) if (parallel_rows(n, nk))
    for (int i = 0; i < n; i++) {
      float *row = ds + (size_t)i * nk;
      const float *prow = p + (size_t)i * nk;
      const float dot = row_dot(row, prow, nk);
      for (int j = 0; j < nk; j++)
        row[j] = prow[j] * (row[j] - dot);
    }
    /* dQ = scale dS K, dK = scale dS^T Q, dV = P^T dO */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, nk, scale, ds, nk, kd + koff, c,
                0.0f, dqd + qoff, c);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, d, n, scale, ds, nk, qd + qoff, c,
                0.0f, dkd + koff, c);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nk, d, n, 1.0f, p, nk, god + qoff, c, 0.0f,
                dvd + koff, c);
  }
  cluda_arena_release(ctx->scratch, mark);
  return cluda_ok();
}

/* Multi-head scaled dot-product attention (no mask, no dropout), heads split by channel:
 * head h owns channels [h d, (h+1) d) of q, k and v. Each (batch, head) pair is an
 * independent problem whose matrices are strided slices (leading dimension C) of the
 * [B, N, C] tensors, so BLAS works on them in place without head split/merge copies. */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

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

/* The backward (and the forward for long rows) runs the pairs one after the other so that
 * OpenBLAS can thread each GEMM (OpenMP threads around a threaded OpenBLAS call oversubscribe
 * the cores and serialise on its lock); the row-wise softmax steps are split over OpenMP
 * threads by row. The forward otherwise runs blocks of rows on OpenMP threads with GEMMs
 * small enough for OpenBLAS to run them on the calling thread (see ATTN_ROWS). Every output
 * element is computed by one thread in a fixed order, so the bits do not depend on the
 * thread count. */
static int parallel_rows(int n, int nk) { return (int64_t)n * nk > 16384; }

enum { LANES = 8 }; /* independent partial sums: vectorisable, and a fixed order */

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

/* e^x for x <= 0 (the softmax's x - max), within 1 ulp of the correctly rounded value
 * (checked against exp() for every 7th float in [-104, 0]); NaN in, NaN out. The softmax's expf
 * calls took a third of the forward; this one runs vectorised. Cephes' expf: x = n ln2 + r with n
 * rounded to nearest (by the 1.5 * 2^23 trick) and ln2 in two parts, a polynomial for e^r, then 2^n
 * applied in two halves so that results down to the subnormals come out right. EXP_STEPS is shared
 * by the scalar and the vector versions (T: float or a vector of floats; I: the integer type of the
 * same width; CVT: float to I, exact here) so both compute the same bits. */
#define EXP_LO (-104.0f) /* e^-104 rounds to 0 */
#define EXP_STEPS(T, I, CVT, x, out)                                                               \
  do {                                                                                             \
    const T n_ = ((x)*1.44269504088896341f + 12582912.0f) - 12582912.0f;                           \
    const T r_ = ((x)-n_ * 0.693359375f) - n_ * -2.12194440e-4f;                                   \
    T p_ = r_ * 1.9875691500e-4f + 1.3981999507e-3f;                                               \
    p_ = p_ * r_ + 8.3334519073e-3f;                                                               \
    p_ = p_ * r_ + 4.1665795894e-2f;                                                               \
    p_ = p_ * r_ + 1.6666665459e-1f;                                                               \
    p_ = p_ * r_ + 5.0000001201e-1f;                                                               \
    p_ = (p_ * (r_ * r_) + r_) + 1.0f;                                                             \
    const I ni_ = CVT(n_), n1_ = ni_ / 2, n2_ = ni_ - n1_;                                         \
    const I b1_ = (n1_ + 127) * (1 << 23), b2_ = (n2_ + 127) * (1 << 23);                          \
    T s1_, s2_;                                                                                    \
    memcpy(&s1_, &b1_, sizeof s1_);                                                                \
    memcpy(&s2_, &b2_, sizeof s2_);                                                                \
    (out) = (p_ * s1_) * s2_;                                                                      \
  } while (0)
#define EXP_CVT_SCALAR(v) ((int32_t)(v))

static inline float exp_nonpos(float x) {
  if (x != x) return x; /* NaN (kept out of the float-to-int conversion) */
  float e;
  x = x < EXP_LO ? EXP_LO : x;
  EXP_STEPS(float, int32_t, EXP_CVT_SCALAR, x, e);
  return e;
}

/* The softmax of one row, in place: the max (exact in any order), e^(x - max) with VW lanes
 * at a time (the rest scalar), the sum as SM_LANES partial sums (lane l takes j = l mod
 * SM_LANES up to the last whole group, the rest goes to lane 0; the lanes are then added in
 * order), and the scaling. Compiled for AVX-512, AVX2 and the baseline and picked at run
 * time; every variant computes the same bits (same order, no FMA contraction in ISO C). */
enum { SM_LANES = 16 };
#define SOFTMAX_ROW(SFX, VW, ATTR)                                                                 \
  typedef float exp_vf_##SFX __attribute__((vector_size((VW) * sizeof(float))));                   \
  typedef int32_t exp_vi_##SFX __attribute__((vector_size((VW) * sizeof(int32_t))));               \
  ATTR static void softmax_row_##SFX(float *row, int nk) {                                         \
    enum { NV = SM_LANES / (VW) };                                                                 \
    exp_vf_##SFX v, e, m = row[0] + (exp_vf_##SFX){0}, acc[NV];                                    \
    int j = 0;                                                                                     \
    for (; j + (VW) <= nk; j += (VW)) {                                                            \
      memcpy(&v, row + j, sizeof v);                                                               \
      const exp_vi_##SFX gt = v > m;                                                               \
      m = (exp_vf_##SFX)((gt & (exp_vi_##SFX)v) | (~gt & (exp_vi_##SFX)m));                        \
    }                                                                                              \
    float mx = m[0];                                                                               \
    for (int l = 1; l < (VW); l++)                                                                 \
      mx = m[l] > mx ? m[l] : mx;                                                                  \
    for (; j < nk; j++)                                                                            \
      mx = row[j] > mx ? row[j] : mx;                                                              \
    int32_t lo_bits;                                                                               \
    const float lo = EXP_LO;                                                                       \
    memcpy(&lo_bits, &lo, sizeof lo_bits);                                                         \
    for (j = 0; j + (VW) <= nk; j += (VW)) {                                                       \
      memcpy(&v, row + j, sizeof v);                                                               \
      v = v - mx;                                                                                  \
      /* lanes: all ones where v >= EXP_LO (not NaN, not below), where v is NaN */                 \
      const exp_vi_##SFX in = v >= EXP_LO, nan = v != v;                                           \
      const exp_vf_##SFX vc = (exp_vf_##SFX)((in & (exp_vi_##SFX)v) | (~in & lo_bits));            \
      EXP_STEPS(exp_vf_##SFX, exp_vi_##SFX, EXP_CVT_##SFX, vc, e);                                 \
      e = (exp_vf_##SFX)((nan & (exp_vi_##SFX)v) | (~nan & (exp_vi_##SFX)e));                      \
      memcpy(row + j, &e, sizeof e);                                                               \
    }                                                                                              \
    for (; j < nk; j++)                                                                            \
      row[j] = exp_nonpos(row[j] - mx);                                                            \
    for (int a = 0; a < NV; a++)                                                                   \
      acc[a] = (exp_vf_##SFX){0};                                                                  \
    for (j = 0; j + SM_LANES <= nk; j += SM_LANES)                                                 \
      for (int a = 0; a < NV; a++) {                                                               \
        memcpy(&v, row + j + a * (VW), sizeof v);                                                  \
        acc[a] += v;                                                                               \
      }                                                                                            \
    float lanes[SM_LANES];                                                                         \
    memcpy(lanes, acc, sizeof lanes);                                                              \
    for (; j < nk; j++)                                                                            \
      lanes[0] += row[j];                                                                          \
    float sum = 0.0f;                                                                              \
    for (int l = 0; l < SM_LANES; l++)                                                             \
      sum += lanes[l];                                                                             \
    const float inv = 1.0f / sum;                                                                  \
    for (j = 0; j + (VW) <= nk; j += (VW)) {                                                       \
      memcpy(&v, row + j, sizeof v);                                                               \
      v = v * inv;                                                                                 \
      memcpy(row + j, &v, sizeof v);                                                               \
    }                                                                                              \
    for (; j < nk; j++)                                                                            \
      row[j] *= inv;                                                                               \
  }

#if defined(__GNUC__) && defined(__x86_64__)
#define EXP_X86 1
#define EXP_CVT_avx512(v) __builtin_convertvector((v), exp_vi_avx512)
#define EXP_CVT_avx2(v) __builtin_convertvector((v), exp_vi_avx2)
SOFTMAX_ROW(avx512, 16, __attribute__((target("avx512f"))))
SOFTMAX_ROW(avx2, 8, __attribute__((target("avx2"))))
#endif
#define EXP_CVT_base(v) __builtin_convertvector((v), exp_vi_base)
SOFTMAX_ROW(base, 4, )

typedef void softmax_row_fn(float *row, int nk);

static softmax_row_fn *softmax_row_pick(void) {
#ifdef EXP_X86
  if (__builtin_cpu_supports("avx512f")) return softmax_row_avx512;
  if (__builtin_cpu_supports("avx2")) return softmax_row_avx2;
#endif
  return softmax_row_base;
}

/* Row softmax of the scores in p [n, nk], in place. */
static void softmax_rows(float *p, int n, int nk) {
  softmax_row_fn *softmax_row = softmax_row_pick();
#pragma omp parallel for schedule(static) if (parallel_rows(n, nk))
  for (int i = 0; i < n; i++)
    softmax_row(p + (size_t)i * nk, nk);
}

/* The forward's work items: blocks of up to ATTN_ROWS query rows of one (batch, head) pair.
 * Their GEMMs stay below OpenBLAS's threading threshold (it runs M*N*K <= 65536 * 4 on the
 * calling thread), so the items can run on OpenMP threads without the two thread pools
 * competing, and each score block is softmaxed and multiplied by V while it is in cache. */
enum { ATTN_ROWS = 64, ATTN_BLAS_SERIAL_MNK = 1 << 18, ATTN_MIN_ROWS = 8 };

static int forward_block_rows(int nk, int d) {
  int64_t rows = ATTN_BLAS_SERIAL_MNK / ((int64_t)nk * d);
  return rows > ATTN_ROWS ? ATTN_ROWS : (int)rows;
}

/* Scores, softmax and output for query rows [i0, i0 + rows) of one pair. */
static void forward_rows(int nk, int c, int d, float scale, const float *qh, const float *kh,
                         const float *vh, float *oh, float *p, int i0, int rows,
                         softmax_row_fn *softmax_row) {
  float *pb = p + (size_t)i0 * nk;
  /* S = scale Q K^T, written straight into probs and normalised there */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, nk, d, scale, qh + (size_t)i0 * c, c,
              kh, c, 0.0f, pb, nk);
  if (!softmax_row) /* called outside a parallel region: split the rows over the threads */
    softmax_rows(pb, rows, nk);
  else
    for (int i = 0; i < rows; i++)
      softmax_row(pb + (size_t)i * nk, nk);
  /* O = P V into this head's channel block of out */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, d, nk, 1.0f, pb, nk, vh, c, 0.0f,
              oh + (size_t)i0 * c, c);
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
  const int rb = forward_block_rows(nk, d);
  softmax_row_fn *const softmax_row = softmax_row_pick();

  if (rb >= ATTN_MIN_ROWS) {
    /* every item is computed by one thread with the same calls: the bits do not depend on
     * the thread count */
    const int blocks = (n + rb - 1) / rb;
    const int64_t items = (int64_t)pairs * blocks;
#pragma omp parallel for schedule(static) if (items > 1 && (int64_t)pairs * n * nk > 16384)
    for (int64_t it = 0; it < items; it++) {
      const int pair = (int)(it / blocks), i0 = (int)(it % blocks) * rb;
      const int bi = pair / heads, h = pair % heads;
      forward_rows(nk, c, d, scale, qd + (size_t)bi * n * c + (size_t)h * d,
                   kd + (size_t)bi * nk * c + (size_t)h * d,
                   vd + (size_t)bi * nk * c + (size_t)h * d,
                   od + (size_t)bi * n * c + (size_t)h * d, pd + (size_t)pair * n * nk, i0,
                   n - i0 < rb ? n - i0 : rb, softmax_row);
    }
    return cluda_ok();
  }
  /* long rows (N_k * head_dim > 2^15): the pairs one after the other, each GEMM threaded
   * by OpenBLAS and the softmax by OpenMP */
  for (int pair = 0; pair < pairs; pair++) {
    const int bi = pair / heads, h = pair % heads;
    forward_rows(nk, c, d, scale, qd + (size_t)bi * n * c + (size_t)h * d,
                 kd + (size_t)bi * nk * c + (size_t)h * d, vd + (size_t)bi * nk * c + (size_t)h * d,
                 od + (size_t)bi * n * c + (size_t)h * d, pd + (size_t)pair * n * nk, 0, n, NULL);
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

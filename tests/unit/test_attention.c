/* Multi-head attention: forward (out and probs) against a naive double reference, backward
 * (dq, dk, dv) against central finite differences of that reference, identical bits for 1
 * and 2 threads, and argument validation. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

typedef struct attn_shape {
  int b, n, nk, c, heads;
} attn_shape;

/* out [B,N,C] = per head softmax(q k^T / sqrt(d)) v; probs [B*heads,N,Nk] may be NULL */
static void attention_ref(const attn_shape *s, const double *q, const double *k, const double *v,
                          double *out, double *probs) {
  const int d = s->c / s->heads;
  const double scale = 1.0 / sqrt((double)d);
  double *row = malloc((size_t)s->nk * sizeof *row);
  for (int b = 0; b < s->b; b++)
    for (int h = 0; h < s->heads; h++)
      for (int i = 0; i < s->n; i++) {
        const double *qi = q + ((size_t)b * s->n + i) * s->c + h * d;
        double mx = -INFINITY, sum = 0.0;
        for (int j = 0; j < s->nk; j++) {
          const double *kj = k + ((size_t)b * s->nk + j) * s->c + h * d;
          double dot = 0.0;
          for (int e = 0; e < d; e++)
            dot += qi[e] * kj[e];
          row[j] = dot * scale;
          mx = fmax(mx, row[j]);
        }
        for (int j = 0; j < s->nk; j++)
          sum += (row[j] = exp(row[j] - mx));
        for (int j = 0; j < s->nk; j++)
          row[j] /= sum;
        if (probs)
          memcpy(probs + (((size_t)b * s->heads + h) * s->n + i) * s->nk, row,
                 (size_t)s->nk * sizeof *row);
        double *oi = out + ((size_t)b * s->n + i) * s->c + h * d;
        for (int e = 0; e < d; e++) {
          double acc = 0.0;
          for (int j = 0; j < s->nk; j++)
            acc += row[j] * v[((size_t)b * s->nk + j) * s->c + h * d + e];
          oi[e] = acc;
        }
      }
  free(row);
}

typedef struct fd_user {
  const attn_shape *s;
  const double *r; /* weights of L = sum r . out */
  double *out;
} fd_user;

/* L(q, k, v) with the three packed one after the other in x */
static double loss_qkv(const double *x, void *user) {
  fd_user *u = user;
  const size_t nq = (size_t)u->s->b * u->s->n * u->s->c, nk = (size_t)u->s->b * u->s->nk * u->s->c;
  attention_ref(u->s, x, x + nq, x + nq + nk, u->out, NULL);
  double l = 0.0;
  for (size_t i = 0; i < nq; i++)
    l += u->r[i] * u->out[i];
  return l;
}

static void check_case(attn_shape s, int with_fd, uint32_t seed) {
  const int64_t nq = (int64_t)s.b * s.n * s.c, nkv = (int64_t)s.b * s.nk * s.c;
  const int64_t np = (int64_t)s.b * s.heads * s.n * s.nk;
  cluda_ctx ctx = test_cpu_context((size_t)np * 4 + 4096);
  float *q = test_alloc_f32(nq), *k = test_alloc_f32(nkv), *v = test_alloc_f32(nkv);
  float *out = test_alloc_f32(nq), *probs = test_alloc_f32(np), *dout = test_alloc_f32(nq);
  float *dq = test_alloc_f32(nq), *dk = test_alloc_f32(nkv), *dv = test_alloc_f32(nkv);
  test_fill_uniform(q, nq, -1.5f, 1.5f, seed, 0);
  test_fill_uniform(k, nkv, -1.5f, 1.5f, seed, 1);
  test_fill_uniform(v, nkv, -1.0f, 1.0f, seed, 2);
  test_fill_uniform(dout, nq, -1.0f, 1.0f, seed, 3);
  cluda_tensor tq = cluda_tensor_3d(CLUDA_F32, q, s.b, s.n, s.c);
  cluda_tensor tk = cluda_tensor_3d(CLUDA_F32, k, s.b, s.nk, s.c);
  cluda_tensor tv = cluda_tensor_3d(CLUDA_F32, v, s.b, s.nk, s.c);
  cluda_tensor tout = cluda_tensor_3d(CLUDA_F32, out, s.b, s.n, s.c);
  cluda_tensor tp = cluda_tensor_3d(CLUDA_F32, probs, s.b * s.heads, s.n, s.nk);
  cluda_tensor tdout = cluda_tensor_3d(CLUDA_F32, dout, s.b, s.n, s.c);
  cluda_tensor tdq = cluda_tensor_3d(CLUDA_F32, dq, s.b, s.n, s.c);
  cluda_tensor tdk = cluda_tensor_3d(CLUDA_F32, dk, s.b, s.nk, s.c);
  cluda_tensor tdv = cluda_tensor_3d(CLUDA_F32, dv, s.b, s.nk, s.c);

  /* forward */
  const int64_t nx = nq + 2 * nkv;
  double *x = test_alloc_f64(nx), *want = test_alloc_f64(nq), *wantp = test_alloc_f64(np);
  test_to_double(q, x, nq);
  test_to_double(k, x + nq, nkv);
  test_to_double(v, x + nq + nkv, nkv);
  attention_ref(&s, x, x + nq, x + nq + nkv, want, wantp);
  TEST_OK(cluda_attention_forward(&ctx, s.heads, &tq, &tk, &tv, &tout, &tp));
  char what[128];
  snprintf(what, sizeof what, "attention forward out B%d N%d Nk%d C%d heads%d", s.b, s.n, s.nk, s.c,
           s.heads);
  test_compare(what, out, want, nq, 1e-5, 1e-6);
  snprintf(what, sizeof what, "attention forward probs B%d N%d Nk%d C%d heads%d", s.b, s.n, s.nk,
           s.c, s.heads);
  test_compare(what, probs, wantp, np, 1e-5, 1e-7);

  /* backward: poison the outputs to prove they are overwritten */
  for (int64_t i = 0; i < nq; i++)
    dq[i] = NAN;
  for (int64_t i = 0; i < nkv; i++)
    dk[i] = dv[i] = NAN;
  TEST_OK(cluda_attention_backward(&ctx, s.heads, &tq, &tk, &tv, &tp, &tdout, &tdq, &tdk, &tdv));
  TEST_CHECK(ctx.scratch->used == 0, "attention_backward releases its scratch");
  if (with_fd) {
    double *r = test_alloc_f64(nq), *grad = test_alloc_f64(nx), *tmp = test_alloc_f64(nq);
    test_to_double(dout, r, nq);
    fd_user u = {&s, r, tmp};
    test_finite_difference(loss_qkv, &u, x, nx, 1e-6, grad);
    snprintf(what, sizeof what, "attention dq vs FD B%d N%d Nk%d C%d heads%d", s.b, s.n, s.nk, s.c,
             s.heads);
    test_compare(what, dq, grad, nq, 1e-4, 1e-5);
    snprintf(what, sizeof what, "attention dk vs FD B%d N%d Nk%d C%d heads%d", s.b, s.n, s.nk, s.c,
             s.heads);
    test_compare(what, dk, grad + nq, nkv, 1e-4, 1e-5);
    snprintf(what, sizeof what, "attention dv vs FD B%d N%d Nk%d C%d heads%d", s.b, s.n, s.nk, s.c,
             s.heads);
    test_compare(what, dv, grad + nq + nkv, nkv, 1e-4, 1e-5);
    free(r);
    free(grad);
    free(tmp);
  } else {
    /* big case: results must not depend on the thread count */
    float *out1 = test_alloc_f32(nq), *dq1 = test_alloc_f32(nq), *dk1 = test_alloc_f32(nkv),
          *dv1 = test_alloc_f32(nkv);
    cluda_tensor to1 = cluda_tensor_3d(CLUDA_F32, out1, s.b, s.n, s.c);
    cluda_tensor tq1 = cluda_tensor_3d(CLUDA_F32, dq1, s.b, s.n, s.c);
    cluda_tensor tk1 = cluda_tensor_3d(CLUDA_F32, dk1, s.b, s.nk, s.c);
    cluda_tensor tv1 = cluda_tensor_3d(CLUDA_F32, dv1, s.b, s.nk, s.c);
    int threads = omp_get_max_threads();
    omp_set_num_threads(threads > 1 ? 1 : 2);
    TEST_OK(cluda_attention_forward(&ctx, s.heads, &tq, &tk, &tv, &to1, &tp));
    TEST_OK(cluda_attention_backward(&ctx, s.heads, &tq, &tk, &tv, &tp, &tdout, &tq1, &tk1, &tv1));
    omp_set_num_threads(threads);
    TEST_CHECK(memcmp(out, out1, (size_t)nq * 4) == 0 && memcmp(dq, dq1, (size_t)nq * 4) == 0 &&
                   memcmp(dk, dk1, (size_t)nkv * 4) == 0 && memcmp(dv, dv1, (size_t)nkv * 4) == 0,
               "attention: same bits with %d and %d threads", threads, threads > 1 ? 1 : 2);
    free(out1);
    free(dq1);
    free(dk1);
    free(dv1);
  }
  free(x);
  free(want);
  free(wantp);
  free(q);
  free(k);
  free(v);
  free(out);
  free(probs);
  free(dout);
  free(dq);
  free(dk);
  free(dv);
  test_context_free(&ctx);
}

static void check_validation(void) {
  enum { B = 2, N = 4, NK = 3, C = 6, H = 2 };
  static float q[B * N * C], k[B * NK * C], v[B * NK * C], out[B * N * C], probs[B * H * N * NK];
  static float dq[B * N * C], dk[B * NK * C], dv[B * NK * C], dout[B * N * C];
  cluda_ctx ctx = test_cpu_context(1 << 16);
  cluda_tensor tq = cluda_tensor_3d(CLUDA_F32, q, B, N, C);
  cluda_tensor tk = cluda_tensor_3d(CLUDA_F32, k, B, NK, C);
  cluda_tensor tv = cluda_tensor_3d(CLUDA_F32, v, B, NK, C);
  cluda_tensor tout = cluda_tensor_3d(CLUDA_F32, out, B, N, C);
  cluda_tensor tp = cluda_tensor_3d(CLUDA_F32, probs, B * H, N, NK);
  cluda_tensor tdout = cluda_tensor_3d(CLUDA_F32, dout, B, N, C);
  cluda_tensor tdq = cluda_tensor_3d(CLUDA_F32, dq, B, N, C);
  cluda_tensor tdk = cluda_tensor_3d(CLUDA_F32, dk, B, NK, C);
  cluda_tensor tdv = cluda_tensor_3d(CLUDA_F32, dv, B, NK, C);
  TEST_OK(cluda_attention_forward(&ctx, H, &tq, &tk, &tv, &tout, &tp));

  TEST_FAILS(cluda_attention_forward(&ctx, 0, &tq, &tk, &tv, &tout, &tp), CLUDA_ERR_ARG, "heads");
  TEST_FAILS(cluda_attention_forward(&ctx, 4, &tq, &tk, &tv, &tout, &tp), CLUDA_ERR_SHAPE, "heads");
  TEST_FAILS(cluda_attention_forward(&ctx, H, NULL, &tk, &tv, &tout, &tp), CLUDA_ERR_ARG,
             "q is NULL");
  TEST_FAILS(cluda_attention_forward(&ctx, H, &tq, NULL, &tv, &tout, &tp), CLUDA_ERR_ARG,
             "k is NULL");
  TEST_FAILS(cluda_attention_forward(&ctx, H, &tq, &tk, &tv, NULL, &tp), CLUDA_ERR_ARG,
             "out is NULL");
  cluda_tensor q2 = cluda_tensor_2d(CLUDA_F32, q, B * N, C);
  TEST_FAILS(cluda_attention_forward(&ctx, H, &q2, &tk, &tv, &tout, &tp), CLUDA_ERR_SHAPE, "q");
  cluda_tensor qu8 = cluda_tensor_3d(CLUDA_U8, q, B, N, C);
  TEST_FAILS(cluda_attention_forward(&ctx, H, &qu8, &tk, &tv, &tout, &tp), CLUDA_ERR_DTYPE, "q");
  cluda_tensor kb = cluda_tensor_3d(CLUDA_F32, k, 1, NK, C);
  TEST_FAILS(cluda_attention_forward(&ctx, H, &tq, &kb, &tv, &tout, &tp), CLUDA_ERR_SHAPE, "k ");
  cluda_tensor kc = cluda_tensor_3d(CLUDA_F32, k, B, NK * 2, C / 2);
  TEST_FAILS(cluda_attention_forward(&ctx, H, &tq, &kc, &tv, &tout, &tp), CLUDA_ERR_SHAPE, "k ");
  cluda_tensor vn = cluda_tensor_3d(CLUDA_F32, v, B, NK - 1, C);
  TEST_FAILS(cluda_attention_forward(&ctx, H, &tq, &tk, &vn, &tout, &tp), CLUDA_ERR_SHAPE, "v ");
  cluda_tensor ob = cluda_tensor_3d(CLUDA_F32, out, B, N - 1, C);
  TEST_FAILS(cluda_attention_forward(&ctx, H, &tq, &tk, &tv, &ob, &tp), CLUDA_ERR_SHAPE, "out");
  cluda_tensor pb = cluda_tensor_3d(CLUDA_F32, probs, B, N, NK * H);
  TEST_FAILS(cluda_attention_forward(&ctx, H, &tq, &tk, &tv, &tout, &pb), CLUDA_ERR_SHAPE, "probs");
  cluda_tensor p4 = cluda_tensor_4d(CLUDA_F32, probs, B, H, N, NK);
  TEST_FAILS(cluda_attention_forward(&ctx, H, &tq, &tk, &tv, &tout, &p4), CLUDA_ERR_SHAPE, "probs");
  cluda_tensor q0 = cluda_tensor_3d(CLUDA_F32, q, B, 0, C);
  TEST_FAILS(cluda_attention_forward(&ctx, H, &q0, &tk, &tv, &tout, &tp), CLUDA_ERR_SHAPE, "q");

  TEST_OK(cluda_attention_backward(&ctx, H, &tq, &tk, &tv, &tp, &tdout, &tdq, &tdk, &tdv));
  cluda_tensor dqb = cluda_tensor_3d(CLUDA_F32, dq, B, N, C - 1);
  TEST_FAILS(cluda_attention_backward(&ctx, H, &tq, &tk, &tv, &tp, &tdout, &dqb, &tdk, &tdv),
             CLUDA_ERR_SHAPE, "dq");
  cluda_tensor dkb = cluda_tensor_3d(CLUDA_F32, dk, B, NK + 1, C);
  TEST_FAILS(cluda_attention_backward(&ctx, H, &tq, &tk, &tv, &tp, &tdout, &tdq, &dkb, &tdv),
             CLUDA_ERR_SHAPE, "dk");
  TEST_FAILS(cluda_attention_backward(&ctx, H, &tq, &tk, &tv, &tp, &tdout, &tdq, &tdk, &dkb),
             CLUDA_ERR_SHAPE, "dv");
  TEST_FAILS(cluda_attention_backward(&ctx, H, &tq, &tk, &tv, &tp, &dqb, &tdq, &tdk, &tdv),
             CLUDA_ERR_SHAPE, "dout");
  TEST_FAILS(cluda_attention_backward(&ctx, H, &tq, &tk, &tv, &tp, &tdout, NULL, &tdk, &tdv),
             CLUDA_ERR_ARG, "dq is NULL");
  TEST_FAILS(cluda_attention_backward(&ctx, H, &tq, &tk, &tv, &pb, &tdout, &tdq, &tdk, &tdv),
             CLUDA_ERR_SHAPE, "probs");
  /* the backward's scratch: none, or too little */
  cluda_ctx bare = cluda_cpu_context(NULL);
  TEST_FAILS(cluda_attention_backward(&bare, H, &tq, &tk, &tv, &tp, &tdout, &tdq, &tdk, &tdv),
             CLUDA_ERR_ARG, "scratch");
  cluda_ctx small = test_cpu_context(0);
  TEST_FAILS(cluda_attention_backward(&small, H, &tq, &tk, &tv, &tp, &tdout, &tdq, &tdk, &tdv),
             CLUDA_ERR_ALLOC, "attention_backward");
  test_context_free(&small);
  test_context_free(&ctx);
}

int main(int argc, char **argv) {
  (void)argc;
  check_case((attn_shape){2, 5, 3, 6, 3}, 1, 1);    /* N > Nk, 3 heads of 2 */
  check_case((attn_shape){1, 4, 7, 5, 1}, 1, 2);    /* N < Nk, one head, odd C */
  check_case((attn_shape){3, 6, 6, 8, 2}, 1, 3);    /* self-attention shape, batch 3 */
  check_case((attn_shape){2, 3, 1, 4, 2}, 1, 4);    /* Nk = 1: probs are 1, dq = dk = 0 */
  check_case((attn_shape){1, 1, 5, 9, 3}, 1, 5);    /* one query */
  check_case((attn_shape){2, 97, 40, 48, 3}, 0, 6); /* threaded path, ragged row blocks */
  /* N_k * head_dim > 2^15: pairs one after the other, GEMMs threaded by OpenBLAS */
  check_case((attn_shape){1, 20, 300, 128, 1}, 0, 7);
  check_validation();
  return test_finish(argv[0]);
}

/* MiT efficient self-attention block: forward against a naive double reference of the whole
 * block, backward (dx and every weight gradient, accumulated onto prior values) against
 * central finite differences of that reference, plan sizes being sufficient, and argument
 * validation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/sr_attention.h"
#include "testing.h"

typedef struct block_cfg {
  int b, h, w, c, heads, r;
} block_cfg;

/* Parameter tensors in one packed vector, x first: offsets in elements. */
enum { P_X, P_QW, P_QB, P_KVW, P_KVB, P_SRW, P_SRB, P_NW, P_NB, P_PW, P_PB, P_COUNT };
static const char *const kNames[P_COUNT] = {"dx",   "q_w",    "q_b",    "kv_w",   "kv_b",  "sr_w",
                                            "sr_b", "norm_w", "norm_b", "proj_w", "proj_b"};

typedef struct packing {
  int64_t off[P_COUNT + 1];
} packing;

static packing pack_layout(const block_cfg *s) {
  const int64_t c = s->c;
  int64_t size[P_COUNT] = {(int64_t)s->b * s->h * s->w * c,
                           c * c,
                           c,
                           2 * c * c,
                           2 * c,
                           s->r > 1 ? c * s->r * s->r * c : 0,
                           s->r > 1 ? c : 0,
                           s->r > 1 ? c : 0,
                           s->r > 1 ? c : 0,
                           c * c,
                           c};
  packing pk;
  pk.off[0] = 0;
  for (int i = 0; i < P_COUNT; i++)
    pk.off[i + 1] = pk.off[i] + size[i];
  return pk;
}

/* y[M, out] = x[M, in] w[out, in]^T + b */
static void linear_ref(const double *x, const double *w, const double *b, int64_t m, int in,
                       int out, double *y) {
  for (int64_t i = 0; i < m; i++)
    for (int o = 0; o < out; o++) {
      double acc = b[o];
      for (int k = 0; k < in; k++)
        acc += x[i * in + k] * w[(int64_t)o * in + k];
      y[i * out + o] = acc;
    }
}

/* The whole block in double; y [B, H, W, C]. */
static void block_ref(const block_cfg *s, const double *prm, double *y) {
  packing pk = pack_layout(s);
  const double *x = prm + pk.off[P_X];
  const int c = s->c, r = s->r, d = c / s->heads, n = s->h * s->w;
  const int hs = r > 1 ? (s->h - r) / r + 1 : s->h, ws = r > 1 ? (s->w - r) / r + 1 : s->w;
  const int nk = hs * ws;
  double *q = malloc(sizeof(double) * s->b * n * c), *xr = NULL;
  double *k = malloc(sizeof(double) * s->b * nk * c), *v = malloc(sizeof(double) * s->b * nk * c);
  double *o = malloc(sizeof(double) * s->b * n * c),
         *kv = malloc(sizeof(double) * s->b * nk * 2 * c);
  double *row = malloc(sizeof(double) * nk);
  linear_ref(x, prm + pk.off[P_QW], prm + pk.off[P_QB], (int64_t)s->b * n, c, c, q);
  if (r > 1) {
    xr = malloc(sizeof(double) * s->b * nk * c);
    const double *sw = prm + pk.off[P_SRW], *sb = prm + pk.off[P_SRB];
    const double *nw = prm + pk.off[P_NW], *nb = prm + pk.off[P_NB];
    for (int b = 0; b < s->b; b++)
      for (int i = 0; i < hs; i++)
        for (int j = 0; j < ws; j++) {
          double *t = xr + (((int64_t)b * hs + i) * ws + j) * c;
          for (int co = 0; co < c; co++) {
            double acc = sb[co];
            for (int kh = 0; kh < r; kh++)
              for (int kw = 0; kw < r; kw++)
                for (int ci = 0; ci < c; ci++)
                  acc += x[(((int64_t)b * s->h + i * r + kh) * s->w + j * r + kw) * c + ci] *
                         sw[(((int64_t)co * r + kh) * r + kw) * c + ci];
            t[co] = acc;
          }
          /* LayerNorm, biased variance */
          double mean = 0.0, var = 0.0;
          for (int e = 0; e < c; e++)
            mean += t[e];
          mean /= c;
          for (int e = 0; e < c; e++)
            var += (t[e] - mean) * (t[e] - mean);
          var /= c;
          const double rstd = 1.0 / sqrt(var + 1e-5);
          for (int e = 0; e < c; e++)
            t[e] = (t[e] - mean) * rstd * nw[e] + nb[e];
        }
  }
  linear_ref(r > 1 ? xr : x, prm + pk.off[P_KVW], prm + pk.off[P_KVB], (int64_t)s->b * nk, c, 2 * c,
             kv);
  for (int64_t t = 0; t < (int64_t)s->b * nk; t++)
    for (int e = 0; e < c; e++) {
      k[t * c + e] = kv[t * 2 * c + e];
      v[t * c + e] = kv[t * 2 * c + c + e];
    }
  for (int b = 0; b < s->b; b++)
    for (int h = 0; h < s->heads; h++)
      for (int i = 0; i < n; i++) {
        const double *qi = q + ((int64_t)b * n + i) * c + h * d;
        double mx = -INFINITY, sum = 0.0;
        for (int j = 0; j < nk; j++) {
          double dot = 0.0;
          for (int e = 0; e < d; e++)
            dot += qi[e] * k[((int64_t)b * nk + j) * c + h * d + e];
          row[j] = dot / sqrt((double)d);
          mx = fmax(mx, row[j]);
        }
        for (int j = 0; j < nk; j++)
          sum += (row[j] = exp(row[j] - mx));
        for (int e = 0; e < d; e++) {
          double acc = 0.0;
          for (int j = 0; j < nk; j++)
            acc += row[j] * v[((int64_t)b * nk + j) * c + h * d + e];
          o[((int64_t)b * n + i) * c + h * d + e] = acc / sum;
        }
      }
  linear_ref(o, prm + pk.off[P_PW], prm + pk.off[P_PB], (int64_t)s->b * n, c, c, y);
  free(q);
  free(xr);
  free(k);
  free(v);
  free(o);
  free(kv);
  free(row);
}

typedef struct fd_user {
  const block_cfg *s;
  const double *r;
  double *y;
  int64_t ny;
} fd_user;

static double block_loss(const double *prm, void *user) {
  fd_user *u = user;
  block_ref(u->s, prm, u->y);
  double l = 0.0;
  for (int64_t i = 0; i < u->ny; i++)
    l += u->r[i] * u->y[i];
  return l;
}

/* The op's weights as views into the packed float vector. */
static cluda_sr_attention_weights weight_views(const block_cfg *s, float *f) {
  packing pk = pack_layout(s);
  const int c = s->c, r = s->r;
  cluda_sr_attention_weights w;
  memset(&w, 0, sizeof w);
  w.q_w = cluda_tensor_2d(CLUDA_F32, f + pk.off[P_QW], c, c);
  w.q_b = cluda_tensor_1d(CLUDA_F32, f + pk.off[P_QB], c);
  w.kv_w = cluda_tensor_2d(CLUDA_F32, f + pk.off[P_KVW], 2 * c, c);
  w.kv_b = cluda_tensor_1d(CLUDA_F32, f + pk.off[P_KVB], 2 * c);
  if (r > 1) {
    w.sr_w = cluda_tensor_4d(CLUDA_F32, f + pk.off[P_SRW], c, r, r, c);
    w.sr_b = cluda_tensor_1d(CLUDA_F32, f + pk.off[P_SRB], c);
    w.norm_w = cluda_tensor_1d(CLUDA_F32, f + pk.off[P_NW], c);
    w.norm_b = cluda_tensor_1d(CLUDA_F32, f + pk.off[P_NB], c);
  } /* r == 1: sr_* and norm_* stay empty and must be ignored */
  w.proj_w = cluda_tensor_2d(CLUDA_F32, f + pk.off[P_PW], c, c);
  w.proj_b = cluda_tensor_1d(CLUDA_F32, f + pk.off[P_PB], c);
  return w;
}

static void check_block(block_cfg s, uint32_t seed) {
  const packing pk = pack_layout(&s);
  const int64_t np = pk.off[P_COUNT], nx = pk.off[P_X + 1];
  cluda_sr_attention_params p = {s.c, s.heads, s.r, 1e-5f};
  size_t saved_bytes = 0, scratch_bytes = 0;
  TEST_OK(cluda_sr_attention_plan(&p, s.b, s.h, s.w, &saved_bytes, &scratch_bytes));
  cluda_ctx ctx = test_cpu_context(scratch_bytes); /* exactly what the plan asks for */
  void *saved = test_alloc(saved_bytes);

  float *prm = test_alloc_f32(np), *grad = test_alloc_f32(np), *prior = test_alloc_f32(np);
  float *y = test_alloc_f32(nx), *dy = test_alloc_f32(nx);
  test_fill_uniform(prm, np, -0.5f, 0.5f, seed, 0);
  test_fill_uniform(prm, nx, -1.0f, 1.0f, seed, 1); /* x */
  if (s.r > 1)                                      /* LN gamma around 1 */
    for (int64_t i = pk.off[P_NW]; i < pk.off[P_NW + 1]; i++)
      prm[i] += 1.0f;
  test_fill_uniform(dy, nx, -1.0f, 1.0f, seed, 2);
  test_fill_uniform(prior, np, -1.0f, 1.0f, seed, 3);
  memcpy(grad, prior, (size_t)np * sizeof(float));
  for (int64_t i = 0; i < nx; i++)
    grad[i] = NAN; /* dx must be overwritten */

  cluda_sr_attention_weights w = weight_views(&s, prm), g = weight_views(&s, grad);
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, prm, s.b, s.h, s.w, s.c);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y, s.b, s.h, s.w, s.c);
  cluda_tensor tdy = cluda_tensor_4d(CLUDA_F32, dy, s.b, s.h, s.w, s.c);
  cluda_tensor tdx = cluda_tensor_4d(CLUDA_F32, grad, s.b, s.h, s.w, s.c);

  char what[128];
  double *pd = test_alloc_f64(np), *want = test_alloc_f64(nx);
  test_to_double(prm, pd, np);
  block_ref(&s, pd, want);
  TEST_OK(cluda_sr_attention_forward(&ctx, &p, &w, &tx, saved, saved_bytes, &ty));
  snprintf(what, sizeof what, "sr_attention forward B%d %dx%d C%d heads%d r%d", s.b, s.h, s.w, s.c,
           s.heads, s.r);
  test_compare(what, y, want, nx, 1e-5, 1e-6);

  TEST_OK(cluda_sr_attention_backward(&ctx, &p, &w, &tx, saved, saved_bytes, &tdy, &tdx, &g));
  TEST_CHECK(ctx.scratch->used == 0 && ctx.scratch->peak <= scratch_bytes,
             "sr_attention backward stays within the planned scratch (%zu of %zu) and releases it",
             ctx.scratch->peak, scratch_bytes);

  double *r = test_alloc_f64(nx), *fd = test_alloc_f64(np), *ybuf = test_alloc_f64(nx);
  test_to_double(dy, r, nx);
  fd_user u = {&s, r, ybuf, nx};
  test_finite_difference(block_loss, &u, pd, np, 1e-6, fd);
  /* weights accumulate onto the prior values: compare what was added (the float rounding
   * of the subtraction, ~1e-7 absolute, is far below the tolerance); dx is overwritten */
  for (int64_t i = nx; i < np; i++)
    grad[i] -= prior[i];
  for (int t = 0; t < P_COUNT; t++) {
    const int64_t off = pk.off[t], len = pk.off[t + 1] - off;
    if (len == 0) continue;
    snprintf(what, sizeof what, "sr_attention %s%s vs FD B%d %dx%d C%d heads%d r%d", kNames[t],
             t == P_X ? "" : " (added)", s.b, s.h, s.w, s.c, s.heads, s.r);
    test_compare(what, grad + off, fd + off, len, 1e-4, 2e-6);
  }

  free(saved);
  free(prm);
  free(grad);
  free(prior);
  free(y);
  free(dy);
  free(pd);
  free(want);
  free(r);
  free(fd);
  free(ybuf);
  test_context_free(&ctx);
}

static void check_validation(void) {
  const block_cfg s = {2, 4, 4, 8, 2, 2};
  const packing pk = pack_layout(&s);
  cluda_sr_attention_params p = {8, 2, 2, 1e-5f};
  size_t saved_bytes = 0, scratch_bytes = 0;
  TEST_OK(cluda_sr_attention_plan(&p, 2, 4, 4, &saved_bytes, &scratch_bytes));
  float *prm = test_alloc_f32(pk.off[P_COUNT]), *grad = test_alloc_f32(pk.off[P_COUNT]);
  float *y = test_alloc_f32(pk.off[1]);
  void *saved = test_alloc(saved_bytes);
  test_fill_uniform(prm, pk.off[P_COUNT], -0.5f, 0.5f, 99, 0);
  cluda_sr_attention_weights w = weight_views(&s, prm), g = weight_views(&s, grad);
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, prm, 2, 4, 4, 8);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y, 2, 4, 4, 8);
  cluda_tensor tdx = cluda_tensor_4d(CLUDA_F32, grad, 2, 4, 4, 8);
  cluda_ctx ctx = test_cpu_context(scratch_bytes);

  /* plan */
  cluda_sr_attention_params bad = p;
  TEST_FAILS(cluda_sr_attention_plan(NULL, 2, 4, 4, &saved_bytes, &scratch_bytes), CLUDA_ERR_ARG,
             "p is NULL");
  bad.heads = 3;
  TEST_FAILS(cluda_sr_attention_plan(&bad, 2, 4, 4, &saved_bytes, &scratch_bytes), CLUDA_ERR_ARG,
             "p->heads");
  bad = p;
  bad.sr_ratio = 0;
  TEST_FAILS(cluda_sr_attention_plan(&bad, 2, 4, 4, &saved_bytes, &scratch_bytes), CLUDA_ERR_ARG,
             "p->sr_ratio");
  bad = p;
  bad.sr_norm_eps = 0.0f;
  TEST_FAILS(cluda_sr_attention_plan(&bad, 2, 4, 4, &saved_bytes, &scratch_bytes), CLUDA_ERR_ARG,
             "p->sr_norm_eps");
  bad = p;
  bad.channels = 0;
  TEST_FAILS(cluda_sr_attention_plan(&bad, 2, 4, 4, &saved_bytes, &scratch_bytes), CLUDA_ERR_ARG,
             "p->channels");
  TEST_FAILS(cluda_sr_attention_plan(&p, 2, 1, 4, &saved_bytes, &scratch_bytes), CLUDA_ERR_SHAPE,
             "sr_ratio");
  TEST_FAILS(cluda_sr_attention_plan(&p, 0, 4, 4, &saved_bytes, &scratch_bytes), CLUDA_ERR_SHAPE,
             "batch");
  TEST_FAILS(cluda_sr_attention_plan(&p, 2, 4, 4, NULL, &scratch_bytes), CLUDA_ERR_ARG,
             "saved_bytes");

  /* forward */
  TEST_OK(cluda_sr_attention_forward(&ctx, &p, &w, &tx, saved, saved_bytes, &ty));
  TEST_FAILS(cluda_sr_attention_forward(&ctx, &p, NULL, &tx, saved, saved_bytes, &ty),
             CLUDA_ERR_ARG, "w is NULL");
  cluda_sr_attention_weights wb = w;
  wb.kv_w = cluda_tensor_2d(CLUDA_F32, prm, 8, 16);
  TEST_FAILS(cluda_sr_attention_forward(&ctx, &p, &wb, &tx, saved, saved_bytes, &ty),
             CLUDA_ERR_SHAPE, "w->kv_w");
  wb = w;
  wb.sr_w = cluda_tensor_4d(CLUDA_F32, prm, 8, 3, 3, 8);
  TEST_FAILS(cluda_sr_attention_forward(&ctx, &p, &wb, &tx, saved, saved_bytes, &ty),
             CLUDA_ERR_SHAPE, "w->sr_w");
  wb = w;
  wb.norm_b.data = NULL;
  TEST_FAILS(cluda_sr_attention_forward(&ctx, &p, &wb, &tx, saved, saved_bytes, &ty), CLUDA_ERR_ARG,
             "w->norm_b");
  wb = w;
  wb.proj_w.dtype = CLUDA_U8;
  TEST_FAILS(cluda_sr_attention_forward(&ctx, &p, &wb, &tx, saved, saved_bytes, &ty),
             CLUDA_ERR_DTYPE, "w->proj_w");
  cluda_tensor x_c = cluda_tensor_4d(CLUDA_F32, prm, 2, 4, 8, 4);
  TEST_FAILS(cluda_sr_attention_forward(&ctx, &p, &w, &x_c, saved, saved_bytes, &ty),
             CLUDA_ERR_SHAPE, "x");
  cluda_tensor x3 = cluda_tensor_3d(CLUDA_F32, prm, 2, 16, 8);
  TEST_FAILS(cluda_sr_attention_forward(&ctx, &p, &w, &x3, saved, saved_bytes, &ty),
             CLUDA_ERR_SHAPE, "x");
  cluda_tensor y_bad = cluda_tensor_4d(CLUDA_F32, y, 2, 2, 8, 8);
  TEST_FAILS(cluda_sr_attention_forward(&ctx, &p, &w, &tx, saved, saved_bytes, &y_bad),
             CLUDA_ERR_SHAPE, "y");
  TEST_FAILS(cluda_sr_attention_forward(&ctx, &p, &w, &tx, saved, saved_bytes - 4, &ty),
             CLUDA_ERR_ARG, "saved_bytes");
  TEST_FAILS(cluda_sr_attention_forward(&ctx, &p, &w, &tx, NULL, saved_bytes, &ty), CLUDA_ERR_ARG,
             "saved is NULL");
  cluda_tensor x_small = cluda_tensor_4d(CLUDA_F32, prm, 2, 1, 4, 8);
  cluda_tensor y_small = cluda_tensor_4d(CLUDA_F32, y, 2, 1, 4, 8);
  TEST_FAILS(cluda_sr_attention_forward(&ctx, &p, &w, &x_small, saved, saved_bytes, &y_small),
             CLUDA_ERR_SHAPE, "sr_ratio");
  /* r == 1 ignores the sr and norm weights entirely */
  cluda_sr_attention_params p1 = {8, 2, 1, 0.0f};
  size_t saved1 = 0, scratch1 = 0;
  TEST_OK(cluda_sr_attention_plan(&p1, 2, 4, 4, &saved1, &scratch1));
  void *s1 = test_alloc(saved1);
  cluda_sr_attention_weights w1 = w;
  memset(&w1.sr_w, 0, sizeof w1.sr_w);
  memset(&w1.norm_w, 0, sizeof w1.norm_w);
  TEST_OK(cluda_sr_attention_forward(&ctx, &p1, &w1, &tx, s1, saved1, &ty));
  free(s1);

  /* backward */
  TEST_OK(cluda_sr_attention_forward(&ctx, &p, &w, &tx, saved, saved_bytes, &ty));
  TEST_OK(cluda_sr_attention_backward(&ctx, &p, &w, &tx, saved, saved_bytes, &ty, &tdx, &g));
  cluda_sr_attention_weights gb = g;
  gb.proj_b = cluda_tensor_1d(CLUDA_F32, grad, 7);
  TEST_FAILS(cluda_sr_attention_backward(&ctx, &p, &w, &tx, saved, saved_bytes, &ty, &tdx, &gb),
             CLUDA_ERR_SHAPE, "grads->proj_b");
  TEST_FAILS(cluda_sr_attention_backward(&ctx, &p, &w, &tx, saved, saved_bytes, &ty, &tdx, NULL),
             CLUDA_ERR_ARG, "grads is NULL");
  cluda_tensor dx_bad = cluda_tensor_4d(CLUDA_F32, grad, 2, 4, 2, 16);
  TEST_FAILS(cluda_sr_attention_backward(&ctx, &p, &w, &tx, saved, saved_bytes, &ty, &dx_bad, &g),
             CLUDA_ERR_SHAPE, "dx");
  TEST_FAILS(cluda_sr_attention_backward(&ctx, &p, &w, &tx, saved, saved_bytes, &y_bad, &tdx, &g),
             CLUDA_ERR_SHAPE, "dy");
  TEST_FAILS(cluda_sr_attention_backward(&ctx, &p, &w, &tx, saved, 64, &ty, &tdx, &g),
             CLUDA_ERR_ARG, "saved_bytes");
  cluda_ctx bare = cluda_cpu_context(NULL);
  TEST_FAILS(cluda_sr_attention_backward(&bare, &p, &w, &tx, saved, saved_bytes, &ty, &tdx, &g),
             CLUDA_ERR_ARG, "scratch");
  /* too little scratch: fails cleanly and gives back what it took */
  cluda_ctx small = test_cpu_context(scratch_bytes / 2);
  cluda_status st =
      cluda_sr_attention_backward(&small, &p, &w, &tx, saved, saved_bytes, &ty, &tdx, &g);
  TEST_CHECK(st.code == CLUDA_ERR_ALLOC, "half the planned scratch fails with ALLOC: %s",
             st.message);
  TEST_CHECK(small.scratch->used == 0, "a failed backward releases its scratch");
  test_context_free(&small);
  test_context_free(&ctx);
  free(prm);
  free(grad);
  free(y);
  free(saved);
}

int main(int argc, char **argv) {
  (void)argc;
  check_block((block_cfg){2, 4, 4, 8, 2, 2}, 1); /* H, W divisible by r */
  check_block((block_cfg){2, 5, 6, 8, 2, 2}, 2); /* last row not covered by the SR conv */
  check_block((block_cfg){2, 4, 5, 8, 2, 1}, 3); /* no reduction */
  check_block((block_cfg){1, 6, 7, 6, 3, 3}, 4); /* r = 3, 3 heads of 2, odd W */
  check_validation();
  return test_finish(argv[0]);
}

/* batchnorm (BatchNorm2d on NHWC), both modes: forward (y, saved mean / rstd) against a
 * double reference; the running-statistics update (momentum, unbiased variance) and that
 * inference leaves it alone; backward (dx, dgamma, dbeta) against central finite differences
 * of the reference, through the batch statistics in training and with fixed statistics in
 * inference, with dx overwritten and dgamma / dbeta accumulated; edge cases (batch 1, 1x1
 * spatial, N*H*W = 1 rejected in training, momentum 0 and 1, a large mean); a threaded shape,
 * bit-identical for 1 and 2 threads; scratch / stack partials and 1-3 threads bit-identical;
 * and argument validation. Synchronised statistics (ctx->bn_sync) without MPI, through
 * stand-in communicators: one rank changes nothing; two ranks holding the same batch give
 * the same bits as one (only the unbiased running variance sees the doubled count), in the
 * expected collective sequence, none in inference; the global count admits N*H*W = 1 per
 * rank; comm errors come back as statuses. tests/mpi/test_sync_batchnorm.c runs real ranks. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/comm.h"
#include "testing.h"

typedef struct bn_ref {
  double *x, *g, *b, *r;
  const double *rm, *rv; /* running statistics (inference) */
  int64_t n;             /* N*H*W */
  int c, training;
  double eps;
} bn_ref;

/* The reference forward; mean / var receive the statistics used (biased variance). Returns
 * sum r y when r is set. */
static double ref_run(const bn_ref *p, double *y, double *mean, double *var) {
  double l = 0.0;
  for (int ch = 0; ch < p->c; ch++) {
    double m, v;
    if (p->training) {
      m = 0.0, v = 0.0;
      for (int64_t i = 0; i < p->n; i++)
        m += p->x[i * p->c + ch];
      m /= (double)p->n;
      for (int64_t i = 0; i < p->n; i++) {
        double d = p->x[i * p->c + ch] - m;
        v += d * d;
      }
      v /= (double)p->n;
    } else {
      m = p->rm[ch], v = p->rv[ch];
    }
    if (mean) mean[ch] = m;
    if (var) var[ch] = v;
    double rs = 1.0 / sqrt(v + p->eps);
    for (int64_t i = 0; i < p->n; i++) {
      double yi = (p->x[i * p->c + ch] - m) * rs * p->g[ch] + p->b[ch];
      if (y) y[i * p->c + ch] = yi;
      if (p->r) l += p->r[i * p->c + ch] * yi;
    }
  }
  return l;
}

static double ref_loss(const double *unused, void *user) {
  (void)unused;
  return ref_run(user, NULL, NULL, NULL);
}

static void check_batchnorm(int bn, int h, int w, int c, int training, float momentum, float offset,
                            int do_backward, uint64_t seed) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int64_t rows = (int64_t)bn * h * w, n = rows * c;
  const float eps = 1e-5f;
  cluda_batchnorm_params p = {eps, momentum, training};
  float *x = test_alloc_f32(n), *y = test_alloc_f32(n), *dy = test_alloc_f32(n),
        *dx = test_alloc_f32(n), *g = test_alloc_f32(c), *b = test_alloc_f32(c),
        *rm = test_alloc_f32(c), *rv = test_alloc_f32(c), *rm0 = test_alloc_f32(c),
        *rv0 = test_alloc_f32(c), *sm = test_alloc_f32(c), *sr = test_alloc_f32(c),
        *dg = test_alloc_f32(c), *dbt = test_alloc_f32(c);
  test_fill_uniform(x, n, offset - 1.0f, offset + 1.0f, seed, 0);
  test_fill_uniform(g, c, 0.5f, 1.5f, seed, 1);
  test_fill_uniform(b, c, -0.5f, 0.5f, seed, 2);
  test_fill_uniform(dy, n, -1.0f, 1.0f, seed, 3);
  test_fill_uniform(rm0, c, offset - 0.5f, offset + 0.5f, seed, 4);
  test_fill_uniform(rv0, c, 0.5f, 1.5f, seed, 5);
  memcpy(rm, rm0, (size_t)c * 4);
  memcpy(rv, rv0, (size_t)c * 4);
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, bn, h, w, c),
               ty = cluda_tensor_4d(CLUDA_F32, y, bn, h, w, c),
               tdy = cluda_tensor_4d(CLUDA_F32, dy, bn, h, w, c),
               tdx = cluda_tensor_4d(CLUDA_F32, dx, bn, h, w, c);
  cluda_tensor tg = cluda_tensor_1d(CLUDA_F32, g, c), tb = cluda_tensor_1d(CLUDA_F32, b, c),
               trm = cluda_tensor_1d(CLUDA_F32, rm, c), trv = cluda_tensor_1d(CLUDA_F32, rv, c),
               tsm = cluda_tensor_1d(CLUDA_F32, sm, c), tsr = cluda_tensor_1d(CLUDA_F32, sr, c),
               tdg = cluda_tensor_1d(CLUDA_F32, dg, c), tdb = cluda_tensor_1d(CLUDA_F32, dbt, c);

  double *xd = test_alloc_f64(n), *gd = test_alloc_f64(c), *bd = test_alloc_f64(c),
         *rd = test_alloc_f64(n), *rmd = test_alloc_f64(c), *rvd = test_alloc_f64(c),
         *want = test_alloc_f64(n), *wm = test_alloc_f64(c), *wv = test_alloc_f64(c);
  test_to_double(x, xd, n);
  test_to_double(g, gd, c);
  test_to_double(b, bd, c);
  test_to_double(dy, rd, n);
  test_to_double(rm0, rmd, c);
  test_to_double(rv0, rvd, c);
  bn_ref ref = {xd, gd, bd, rd, rmd, rvd, rows, c, training, eps};
  char what[112], msg[200];
  snprintf(what, sizeof what, "batchnorm %s [%d,%d,%d,%d] momentum %g offset %g",
           training ? "train" : "eval", bn, h, w, c, (double)momentum, (double)offset);

  for (int64_t i = 0; i < n; i++)
    y[i] = 1e3f;
  TEST_OK(cluda_batchnorm_forward(&ctx, &p, &tx, &tg, &tb, &trm, &trv, &ty, &tsm, &tsr));
  ref_run(&ref, want, wm, wv);
  snprintf(msg, sizeof msg, "%s: y", what);
  test_compare(msg, y, want, n, 1e-5, 1e-5);
  snprintf(msg, sizeof msg, "%s: save_mean", what);
  test_compare(msg, sm, wm, c, 1e-6, 1e-6);
  for (int i = 0; i < c; i++)
    wv[i] = 1.0 / sqrt(wv[i] + eps);
  snprintf(msg, sizeof msg, "%s: save_rstd", what);
  test_compare(msg, sr, wv, c, 1e-5, 0.0);
  if (training) {
    /* running = (1 - m) running + m batch, with the unbiased variance */
    ref_run(&ref, NULL, wm, wv);
    for (int i = 0; i < c; i++) {
      wm[i] = (1.0 - momentum) * rm0[i] + (double)momentum * wm[i];
      wv[i] = (1.0 - momentum) * rv0[i] + (double)momentum * wv[i] * rows / (rows - 1.0);
    }
    snprintf(msg, sizeof msg, "%s: running_mean updated", what);
    test_compare(msg, rm, wm, c, 1e-6, 1e-6);
    snprintf(msg, sizeof msg, "%s: running_var updated (unbiased)", what);
    test_compare(msg, rv, wv, c, 1e-6, 1e-6);
  } else {
    snprintf(msg, sizeof msg, "%s: running statistics untouched", what);
    TEST_CHECK(memcmp(rm, rm0, (size_t)c * 4) == 0 && memcmp(rv, rv0, (size_t)c * 4) == 0, "%s",
               msg);
  }

  if (do_backward) {
    for (int64_t i = 0; i < n; i++)
      dx[i] = 1e3f;
    for (int i = 0; i < c; i++)
      dg[i] = 0.25f * (float)i, dbt[i] = 1.0f - 0.5f * (float)i;
    TEST_OK(cluda_batchnorm_backward(&ctx, &p, &tx, &tg, &tsm, &tsr, &tdy, &tdx, &tdg, &tdb));
    test_finite_difference(ref_loss, &ref, xd, n, 1e-6, want);
    snprintf(msg, sizeof msg, "%s: dx vs finite differences", what);
    test_compare(msg, dx, want, n, 1e-4, 1e-5);
    test_finite_difference(ref_loss, &ref, gd, c, 1e-6, want);
    for (int i = 0; i < c; i++)
      want[i] += 0.25f * (float)i;
    snprintf(msg, sizeof msg, "%s: dgamma accumulated vs finite differences", what);
    test_compare(msg, dg, want, c, 1e-4, 1e-5);
    test_finite_difference(ref_loss, &ref, bd, c, 1e-6, want);
    for (int i = 0; i < c; i++)
      want[i] += 1.0f - 0.5f * (float)i;
    snprintf(msg, sizeof msg, "%s: dbeta accumulated vs finite differences", what);
    test_compare(msg, dbt, want, c, 1e-4, 1e-5);
  }
  free(x), free(y), free(dy), free(dx), free(g), free(b), free(rm), free(rv), free(rm0), free(rv0),
      free(sm), free(sr), free(dg), free(dbt);
  free(xd), free(gd), free(bd), free(rd), free(rmd), free(rvd), free(want), free(wm), free(wv);
}

/* N*H*W = 1 in training is refused (PyTorch: "Expected more than 1 value per channel when
 * training"); inference with the same shape is fine. */
static void check_single_value(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  float v[4] = {1, 2, 3, 4}, o[4], s1[4], s2[4], rm[4] = {0}, rv[4] = {1, 1, 1, 1};
  cluda_tensor x = cluda_tensor_4d(CLUDA_F32, v, 1, 1, 1, 4),
               y = cluda_tensor_4d(CLUDA_F32, o, 1, 1, 1, 4);
  cluda_tensor vec = cluda_tensor_1d(CLUDA_F32, v, 4), trm = cluda_tensor_1d(CLUDA_F32, rm, 4),
               trv = cluda_tensor_1d(CLUDA_F32, rv, 4), ts1 = cluda_tensor_1d(CLUDA_F32, s1, 4),
               ts2 = cluda_tensor_1d(CLUDA_F32, s2, 4);
  cluda_batchnorm_params train = {1e-5f, 0.1f, 1};
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &train, &x, &vec, &vec, &trm, &trv, &y, &ts1, &ts2),
             CLUDA_ERR_SHAPE, "more than 1 value per channel");
  TEST_FAILS(cluda_batchnorm_backward(&ctx, &train, &x, &vec, &ts1, &ts2, &x, &y, &ts1, &ts2),
             CLUDA_ERR_SHAPE, "more than 1 value per channel");
  TEST_CHECK(rm[0] == 0.0f && rv[0] == 1.0f, "batchnorm: refused call leaves running stats alone");
}

/* Large enough for the threaded column-block loops; both modes against an analytic double
 * reference and bit-identical for 1 and 2 threads. */
static void check_threaded(int training) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int bn = 2, h = 16, w = 16, c = 72;
  const int64_t rows = bn * h * w, n = rows * c;
  cluda_batchnorm_params p = {1e-5f, 0.1f, training};
  float *x = test_alloc_f32(n), *dy = test_alloc_f32(n), *g = test_alloc_f32(c),
        *b = test_alloc_f32(c), *rm0 = test_alloc_f32(c), *rv0 = test_alloc_f32(c);
  float *y[2], *dx[2], *dg[2], *dbt[2], *sm[2], *sr[2], *rm[2], *rv[2];
  test_fill_uniform(x, n, -2.0f, 4.0f, 31, 0);
  test_fill_uniform(dy, n, -1.0f, 1.0f, 31, 1);
  test_fill_uniform(g, c, 0.5f, 1.5f, 31, 2);
  test_fill_uniform(b, c, -0.5f, 0.5f, 31, 3);
  test_fill_uniform(rm0, c, -0.5f, 0.5f, 31, 4);
  test_fill_uniform(rv0, c, 0.5f, 1.5f, 31, 5);
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, bn, h, w, c),
               tdy = cluda_tensor_4d(CLUDA_F32, dy, bn, h, w, c);
  cluda_tensor tg = cluda_tensor_1d(CLUDA_F32, g, c), tb = cluda_tensor_1d(CLUDA_F32, b, c);
  for (int t = 0; t < 2; t++) {
    omp_set_num_threads(t + 1);
    y[t] = test_alloc_f32(n), dx[t] = test_alloc_f32(n);
    dg[t] = test_alloc_f32(c), dbt[t] = test_alloc_f32(c), sm[t] = test_alloc_f32(c),
    sr[t] = test_alloc_f32(c), rm[t] = test_alloc_f32(c), rv[t] = test_alloc_f32(c);
    memcpy(rm[t], rm0, (size_t)c * 4);
    memcpy(rv[t], rv0, (size_t)c * 4);
    cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y[t], bn, h, w, c),
                 tdx = cluda_tensor_4d(CLUDA_F32, dx[t], bn, h, w, c);
    cluda_tensor tdg = cluda_tensor_1d(CLUDA_F32, dg[t], c),
                 tdb = cluda_tensor_1d(CLUDA_F32, dbt[t], c),
                 tsm = cluda_tensor_1d(CLUDA_F32, sm[t], c),
                 tsr = cluda_tensor_1d(CLUDA_F32, sr[t], c),
                 trm = cluda_tensor_1d(CLUDA_F32, rm[t], c),
                 trv = cluda_tensor_1d(CLUDA_F32, rv[t], c);
    TEST_OK(cluda_batchnorm_forward(&ctx, &p, &tx, &tg, &tb, &trm, &trv, &ty, &tsm, &tsr));
    TEST_OK(cluda_batchnorm_backward(&ctx, &p, &tx, &tg, &tsm, &tsr, &tdy, &tdx, &tdg, &tdb));
  }
  omp_set_num_threads(2);
  int same = memcmp(y[0], y[1], (size_t)n * 4) == 0 && memcmp(dx[0], dx[1], (size_t)n * 4) == 0;
  same = same && memcmp(dg[0], dg[1], (size_t)c * 4) == 0 &&
         memcmp(dbt[0], dbt[1], (size_t)c * 4) == 0 && memcmp(sm[0], sm[1], (size_t)c * 4) == 0 &&
         memcmp(sr[0], sr[1], (size_t)c * 4) == 0 && memcmp(rm[0], rm[1], (size_t)c * 4) == 0 &&
         memcmp(rv[0], rv[1], (size_t)c * 4) == 0;
  TEST_CHECK(same, "batchnorm %s: results bit-identical for 1 and 2 threads",
             training ? "train" : "eval");

  double *wy = test_alloc_f64(n), *wdx = test_alloc_f64(n), *wdg = test_alloc_f64(c),
         *wdb = test_alloc_f64(c);
  for (int ch = 0; ch < c; ch++) {
    double m = rm0[ch], v = rv0[ch];
    if (training) {
      m = 0.0, v = 0.0;
      for (int64_t i = 0; i < rows; i++)
        m += x[i * c + ch];
      m /= rows;
      for (int64_t i = 0; i < rows; i++)
        v += (x[i * c + ch] - m) * (x[i * c + ch] - m);
      v /= rows;
    }
    double rs = 1.0 / sqrt(v + 1e-5f);
    for (int64_t i = 0; i < rows; i++) {
      double xh = (x[i * c + ch] - m) * rs;
      wy[i * c + ch] = xh * g[ch] + b[ch];
      wdg[ch] += dy[i * c + ch] * xh;
      wdb[ch] += dy[i * c + ch];
    }
    for (int64_t i = 0; i < rows; i++) {
      double xh = (x[i * c + ch] - m) * rs;
      wdx[i * c + ch] = training
                            ? g[ch] * rs * (dy[i * c + ch] - wdb[ch] / rows - xh * wdg[ch] / rows)
                            : g[ch] * rs * dy[i * c + ch];
    }
  }
  const char *mode = training ? "train" : "eval";
  char msg[96];
  snprintf(msg, sizeof msg, "batchnorm threaded %s: y", mode);
  test_compare(msg, y[1], wy, n, 1e-5, 1e-5);
  snprintf(msg, sizeof msg, "batchnorm threaded %s: dx", mode);
  test_compare(msg, dx[1], wdx, n, 1e-4, 1e-5);
  snprintf(msg, sizeof msg, "batchnorm threaded %s: dgamma", mode);
  test_compare(msg, dg[1], wdg, c, 1e-5, 1e-4);
  snprintf(msg, sizeof msg, "batchnorm threaded %s: dbeta", mode);
  test_compare(msg, dbt[1], wdb, c, 1e-5, 1e-4);
  for (int t = 0; t < 2; t++)
    free(y[t]), free(dx[t]), free(dg[t]), free(dbt[t]), free(sm[t]), free(sr[t]), free(rm[t]),
        free(rv[t]);
  free(x), free(dy), free(g), free(b), free(rm0), free(rv0), free(wy), free(wdx), free(wdg),
      free(wdb);
}

/* Wide enough that the chunk partials come from ctx->scratch when it has room and from the
 * stack buffer (narrower sub-panels) when not: all outputs bit-identical across both and
 * 1, 2 and 3 threads. */
static void check_scratch_paths(void) {
  const int bn = 2, h = 16, w = 16, c = 1100;
  const int64_t n = (int64_t)bn * h * w * c;
  float *in = test_alloc_f32(2 * n + 2 * c), *out[6];
  test_fill_uniform(in, 2 * n + 2 * c, -1.0f, 3.0f, 41, 0);
  cluda_arena arena;
  TEST_OK(cluda_arena_create(&arena, (size_t)1 << 20));
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, in, bn, h, w, c),
               tdy = cluda_tensor_4d(CLUDA_F32, in + n, bn, h, w, c),
               tg = cluda_tensor_1d(CLUDA_F32, in + 2 * n, c),
               tb = cluda_tensor_1d(CLUDA_F32, in + 2 * n + c, c);
  cluda_batchnorm_params p = {1e-5f, 0.1f, 1};
  for (int run = 0; run < 6; run++) { /* threads 1..3, without and with scratch */
    omp_set_num_threads(run % 3 + 1);
    cluda_ctx ctx = cluda_cpu_context(run < 3 ? NULL : &arena);
    float *o = out[run] = test_alloc_f32(2 * n + 6 * c);
    for (int i = 0; i < c; i++)
      o[2 * n + 2 * c + i] = 0.0f, o[2 * n + 3 * c + i] = 1.0f, o[2 * n + 4 * c + i] = 0.5f,
                        o[2 * n + 5 * c + i] = -0.5f;
    cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, o, bn, h, w, c),
                 tdx = cluda_tensor_4d(CLUDA_F32, o + n, bn, h, w, c), v[6];
    for (int i = 0; i < 6; i++)
      v[i] = cluda_tensor_1d(CLUDA_F32, o + 2 * n + (int64_t)i * c, c);
    TEST_OK(cluda_batchnorm_forward(&ctx, &p, &tx, &tg, &tb, &v[2], &v[3], &ty, &v[0], &v[1]));
    TEST_OK(cluda_batchnorm_backward(&ctx, &p, &tx, &tg, &v[0], &v[1], &tdy, &tdx, &v[4], &v[5]));
    TEST_CHECK(arena.used == 0, "batchnorm: scratch released");
  }
  omp_set_num_threads(2);
  for (int run = 1; run < 6; run++)
    TEST_CHECK(memcmp(out[0], out[run], (size_t)(2 * n + 6 * c) * 4) == 0,
               "batchnorm [2,16,16,1100]: run %d (%d threads, %s scratch) bit-identical to run 0",
               run, run % 3 + 1, run < 3 ? "without" : "with");
  for (int run = 0; run < 6; run++)
    free(out[run]);
  cluda_arena_destroy(&arena);
  free(in);
}

static void check_validation(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  float buf[256] = {0}, ones[8] = {1, 1, 1, 1, 1, 1, 1, 1};
  cluda_batchnorm_params p = {1e-5f, 0.1f, 1};
  cluda_tensor x = cluda_tensor_4d(CLUDA_F32, buf, 2, 3, 2, 5), y = x, dy = x, dx = x;
  cluda_tensor v = cluda_tensor_1d(CLUDA_F32, ones, 5),
               rm = cluda_tensor_1d(CLUDA_F32, buf + 200, 5), rv = v, sm = rm, sr = v, dg = rm,
               db = rm;
  TEST_OK(cluda_batchnorm_forward(&ctx, &p, &x, &v, &v, &rm, &rv, &y, &sm, &sr));
  TEST_OK(cluda_batchnorm_backward(&ctx, &p, &x, &v, &sm, &sr, &dy, &dx, &dg, &db));

  cluda_batchnorm_params bad = p;
  TEST_FAILS(cluda_batchnorm_forward(&ctx, NULL, &x, &v, &v, &rm, &rv, &y, &sm, &sr), CLUDA_ERR_ARG,
             "p is NULL");
  bad.eps = 0.0f;
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &bad, &x, &v, &v, &rm, &rv, &y, &sm, &sr), CLUDA_ERR_ARG,
             "eps");
  bad.eps = NAN;
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &bad, &x, &v, &v, &rm, &rv, &y, &sm, &sr), CLUDA_ERR_ARG,
             "eps");
  bad = p, bad.momentum = -0.1f;
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &bad, &x, &v, &v, &rm, &rv, &y, &sm, &sr), CLUDA_ERR_ARG,
             "momentum");
  bad.momentum = 1.5f;
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &bad, &x, &v, &v, &rm, &rv, &y, &sm, &sr), CLUDA_ERR_ARG,
             "momentum");
  bad.momentum = NAN;
  TEST_FAILS(cluda_batchnorm_backward(&ctx, &bad, &x, &v, &sm, &sr, &dy, &dx, &dg, &db),
             CLUDA_ERR_ARG, "momentum");
  bad = p, bad.training = 2;
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &bad, &x, &v, &v, &rm, &rv, &y, &sm, &sr), CLUDA_ERR_ARG,
             "training");
  TEST_FAILS(cluda_batchnorm_backward(&ctx, &bad, &x, &v, &sm, &sr, &dy, &dx, &dg, &db),
             CLUDA_ERR_ARG, "training");

  cluda_tensor x3 = cluda_tensor_3d(CLUDA_F32, buf, 6, 2, 5);
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &p, &x3, &v, &v, &rm, &rv, &y, &sm, &sr),
             CLUDA_ERR_SHAPE, "x [6,2,5]");
  cluda_tensor xu8 = x;
  xu8.dtype = CLUDA_U8;
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &p, &xu8, &v, &v, &rm, &rv, &y, &sm, &sr),
             CLUDA_ERR_DTYPE, "x");
  cluda_tensor c4 = cluda_tensor_1d(CLUDA_F32, buf, 4);
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &p, &x, &c4, &v, &rm, &rv, &y, &sm, &sr),
             CLUDA_ERR_SHAPE, "gamma [4]");
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &p, &x, &v, &c4, &rm, &rv, &y, &sm, &sr),
             CLUDA_ERR_SHAPE, "beta [4]");
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &p, &x, &v, &v, &c4, &rv, &y, &sm, &sr), CLUDA_ERR_SHAPE,
             "running_mean [4]");
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &p, &x, &v, &v, &rm, &c4, &y, &sm, &sr), CLUDA_ERR_SHAPE,
             "running_var [4]");
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &p, &x, &v, &v, &rm, NULL, &y, &sm, &sr), CLUDA_ERR_ARG,
             "running_var is NULL");
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &p, &x, &v, &v, &rm, &rv, &y, &c4, &sr), CLUDA_ERR_SHAPE,
             "save_mean [4]");
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &p, &x, &v, &v, &rm, &rv, &y, &sm, &c4), CLUDA_ERR_SHAPE,
             "save_rstd [4]");
  cluda_tensor ybad = cluda_tensor_4d(CLUDA_F32, buf, 2, 2, 3, 5);
  TEST_FAILS(cluda_batchnorm_forward(&ctx, &p, &x, &v, &v, &rm, &rv, &ybad, &sm, &sr),
             CLUDA_ERR_SHAPE, "y [2,2,3,5]");
  TEST_FAILS(cluda_batchnorm_forward(NULL, &p, &x, &v, &v, &rm, &rv, &y, &sm, &sr), CLUDA_ERR_ARG,
             "ctx");

  TEST_FAILS(cluda_batchnorm_backward(&ctx, NULL, &x, &v, &sm, &sr, &dy, &dx, &dg, &db),
             CLUDA_ERR_ARG, "p is NULL");
  TEST_FAILS(cluda_batchnorm_backward(&ctx, &p, &x, &c4, &sm, &sr, &dy, &dx, &dg, &db),
             CLUDA_ERR_SHAPE, "gamma [4]");
  TEST_FAILS(cluda_batchnorm_backward(&ctx, &p, &x, &v, &c4, &sr, &dy, &dx, &dg, &db),
             CLUDA_ERR_SHAPE, "save_mean [4]");
  TEST_FAILS(cluda_batchnorm_backward(&ctx, &p, &x, &v, &sm, &c4, &dy, &dx, &dg, &db),
             CLUDA_ERR_SHAPE, "save_rstd [4]");
  TEST_FAILS(cluda_batchnorm_backward(&ctx, &p, &x, &v, &sm, &sr, &ybad, &dx, &dg, &db),
             CLUDA_ERR_SHAPE, "dy [2,2,3,5]");
  TEST_FAILS(cluda_batchnorm_backward(&ctx, &p, &x, &v, &sm, &sr, &dy, &ybad, &dg, &db),
             CLUDA_ERR_SHAPE, "dx [2,2,3,5]");
  TEST_FAILS(cluda_batchnorm_backward(&ctx, &p, &x, &v, &sm, &sr, &dy, &dx, &c4, &db),
             CLUDA_ERR_SHAPE, "dgamma [4]");
  TEST_FAILS(cluda_batchnorm_backward(&ctx, &p, &x, &v, &sm, &sr, &dy, &dx, &dg, &c4),
             CLUDA_ERR_SHAPE, "dbeta [4]");
  TEST_FAILS(cluda_batchnorm_backward(&ctx, &p, &x, &v, &sm, &sr, &dy, &dx, &dg, NULL),
             CLUDA_ERR_ARG, "dbeta is NULL");
}

/* ---- synchronised statistics through stand-in communicators ---- */

enum { MIRROR_LOG = 8 };

/* A communicator of two ranks that hold the same data: an all-reduce sum doubles (exactly).
 * Logs its calls; call number fail_at fails instead. */
typedef struct mirror {
  int calls, fail_at;
  size_t counts[MIRROR_LOG];
  cluda_comm_dtype dtypes[MIRROR_LOG];
} mirror;

static cluda_status mirror_allreduce(cluda_comm *c, const void *send, void *recv, size_t count,
                                     cluda_comm_dtype dt, cluda_comm_op op) {
  mirror *m = c->impl;
  const int k = m->calls++;
  if (k < MIRROR_LOG) m->counts[k] = count, m->dtypes[k] = dt;
  CLUDA_REQUIRE(k != m->fail_at, CLUDA_ERR_COMM, "mirror: all-reduce %d fails", k);
  CLUDA_REQUIRE(op == CLUDA_COMM_SUM, CLUDA_ERR_ARG, "mirror: op %s", cluda_comm_op_name(op));
  for (size_t i = 0; i < count; i++) {
    if (dt == CLUDA_COMM_F64)
      ((double *)recv)[i] = 2.0 * ((const double *)send)[i];
    else if (dt == CLUDA_COMM_I64)
      ((int64_t *)recv)[i] = 2 * ((const int64_t *)send)[i];
    else
      return CLUDA_FAIL(CLUDA_ERR_ARG, "mirror: dtype %s", cluda_comm_dtype_name(dt));
  }
  return cluda_ok();
}

static const cluda_comm_ops mirror_ops = {.name = "mirror", .allreduce = mirror_allreduce};

static cluda_comm mirror_comm(mirror *m, int fail_at) {
  memset(m, 0, sizeof *m);
  m->fail_at = fail_at;
  cluda_comm c = {.ops = &mirror_ops, .rank = 0, .size = 2, .local_size = 2, .device = -1};
  c.impl = m;
  return c;
}

/* Everything one forward + backward reads and writes: x, dy, y, dx [n] then g, b, rm, rv, sm,
 * sr, dg, db [c]. */
typedef struct bn_bufs {
  int bn, h, w, c;
  int64_t n;
  float *mem;
} bn_bufs;

static bn_bufs bufs_make(int bn, int h, int w, int c, uint64_t seed) {
  bn_bufs B = {bn, h, w, c, (int64_t)bn * h * w * c, NULL};
  B.mem = test_alloc_f32(4 * B.n + 8 * c);
  test_fill_uniform(B.mem, 2 * B.n, -1.0f, 3.0f, seed, 0);
  test_fill_uniform(B.mem + 2 * B.n, 2 * B.n + 8 * c, 0.5f, 1.5f, seed, 1);
  return B;
}

/* Forward, then backward when the forward succeeded (training or not) with ctx; the statuses
 * are returned in *fs / *bs (*bs = *fs after a failed forward). */
static void bufs_run(cluda_ctx *ctx, int training, bn_bufs *B, cluda_status *fs, cluda_status *bs) {
  float *m = B->mem;
  cluda_tensor t4[4], t1[8];
  for (int i = 0; i < 4; i++)
    t4[i] = cluda_tensor_4d(CLUDA_F32, m + i * B->n, B->bn, B->h, B->w, B->c);
  for (int i = 0; i < 8; i++)
    t1[i] = cluda_tensor_1d(CLUDA_F32, m + 4 * B->n + (int64_t)i * B->c, B->c);
  cluda_batchnorm_params p = {1e-5f, 0.1f, training};
  *fs = cluda_batchnorm_forward(ctx, &p, &t4[0], &t1[0], &t1[1], &t1[2], &t1[3], &t4[2], &t1[4],
                                &t1[5]);
  if (fs->code != CLUDA_OK) {
    *bs = *fs;
    return;
  }
  *bs = cluda_batchnorm_backward(ctx, &p, &t4[0], &t1[0], &t1[4], &t1[5], &t4[1], &t4[3], &t1[6],
                                 &t1[7]);
}

/* One rank (a self communicator) and two ranks with the same batch against bn_sync NULL. */
static void check_sync_mirror(int bn, int h, int w, int c, int training) {
  bn_bufs ref = bufs_make(bn, h, w, c, 51), one = bufs_make(bn, h, w, c, 51),
          two = bufs_make(bn, h, w, c, 51);
  const size_t bytes = (size_t)(4 * ref.n + 8 * c) * 4;
  const int64_t rv = 4 * ref.n + 3 * c; /* running_var */
  float *rv0 = test_alloc_f32(c);
  memcpy(rv0, ref.mem + rv, (size_t)c * 4);
  cluda_comm self;
  cluda_comm_init_self(&self);
  mirror m;
  cluda_comm pair = mirror_comm(&m, -1);
  cluda_ctx ctx = cluda_cpu_context(NULL), ctx_one = ctx, ctx_two = ctx;
  ctx_one.bn_sync = &self, ctx_two.bn_sync = &pair;
  cluda_status fs, bs;
  bufs_run(&ctx, training, &ref, &fs, &bs);
  TEST_OK(fs), TEST_OK(bs);
  bufs_run(&ctx_one, training, &one, &fs, &bs);
  TEST_OK(fs), TEST_OK(bs);
  bufs_run(&ctx_two, training, &two, &fs, &bs);
  TEST_OK(fs), TEST_OK(bs);
  const char *mode = training ? "train" : "eval";
  TEST_CHECK(memcmp(one.mem, ref.mem, bytes) == 0,
             "batchnorm %s [%d,%d,%d,%d]: bn_sync of one rank is bit-identical to NULL", mode, bn,
             h, w, c);
  /* the running variance aside, doubling every sum keeps every bit */
  int same = memcmp(two.mem, ref.mem, (size_t)rv * 4) == 0 &&
             memcmp(two.mem + rv + c, ref.mem + rv + c, (size_t)(4 * c) * 4) == 0;
  TEST_CHECK(same, "batchnorm %s [%d,%d,%d,%d]: two ranks with the same batch give one's bits",
             mode, bn, h, w, c);
  if (!training) {
    TEST_CHECK(memcmp(two.mem + rv, ref.mem + rv, (size_t)c * 4) == 0 && m.calls == 0,
               "batchnorm eval [%d,%d,%d,%d]: bn_sync communicates nothing (%d calls)", bn, h, w, c,
               m.calls);
  } else {
    /* unbiased over the global count: (1 - m) rv0 + m (2 sum (x - mean)^2) / (2 N*H*W - 1) */
    const int64_t rows = (int64_t)bn * h * w;
    const double mom = 0.1f;
    double *want = test_alloc_f64(c);
    for (int ch = 0; ch < c; ch++) {
      double mean = 0.0, ss = 0.0;
      for (int64_t r = 0; r < rows; r++)
        mean += ref.mem[r * c + ch];
      mean /= (double)rows;
      for (int64_t r = 0; r < rows; r++)
        ss += (ref.mem[r * c + ch] - mean) * (ref.mem[r * c + ch] - mean);
      want[ch] = (1.0 - mom) * rv0[ch] + mom * 2.0 * ss / (2.0 * (double)rows - 1.0);
    }
    test_compare("batchnorm train: two ranks' running_var uses the global count", two.mem + rv,
                 want, c, 1e-6, 1e-6);
    free(want);
    /* the count, then per panel of <= 2048 channels the sums and the squared deviations
     * (forward) and sum(dy) with sum(dy xhat) (backward) */
    size_t counts[MIRROR_LOG];
    cluda_comm_dtype dtypes[MIRROR_LOG];
    int k = 0;
    for (int pass = 0; pass < 2; pass++) {
      counts[k] = 1, dtypes[k++] = CLUDA_COMM_I64;
      for (int p0 = 0; p0 < c; p0 += 2048) {
        const size_t pw = (size_t)(c - p0 < 2048 ? c - p0 : 2048);
        for (int j = 0; j < (pass == 0 ? 2 : 1); j++)
          counts[k] = pass == 0 ? pw : 2 * pw, dtypes[k++] = CLUDA_COMM_F64;
      }
    }
    int order = m.calls == k;
    for (int i = 0; i < k && order; i++)
      order = m.counts[i] == counts[i] && m.dtypes[i] == dtypes[i];
    TEST_CHECK(order, "batchnorm train [%d,%d,%d,%d]: %d all-reduces in the expected order (%d)",
               bn, h, w, c, m.calls, k);
  }
  free(ref.mem), free(one.mem), free(two.mem), free(rv0);
}

/* N*H*W = 1 on each of two ranks is two values per channel: training proceeds. */
static void check_sync_single_value(void) {
  mirror m;
  cluda_comm pair = mirror_comm(&m, -1);
  cluda_ctx ctx = cluda_cpu_context(NULL);
  ctx.bn_sync = &pair;
  bn_bufs B = bufs_make(1, 1, 1, 4, 53);
  cluda_status fs, bs;
  bufs_run(&ctx, 1, &B, &fs, &bs);
  TEST_OK(fs), TEST_OK(bs);
  TEST_CHECK(m.calls == 5, "batchnorm: N*H*W = 1 per rank trains over two ranks (%d calls)",
             m.calls);
  free(B.mem);
}

/* A failing all-reduce comes back as its status: the count first, so nothing is written;
 * later ones with the scratch partials released. */
static void check_sync_errors(void) {
  cluda_arena arena;
  TEST_OK(cluda_arena_create(&arena, (size_t)1 << 20));
  bn_bufs B = bufs_make(4, 16, 16, 1100, 55); /* partials from the scratch arena */
  const size_t bytes = (size_t)(4 * B.n + 8 * B.c) * 4;
  float *before = test_alloc_f32(4 * B.n + 8 * B.c);
  memcpy(before, B.mem, bytes);
  mirror m;
  cluda_comm pair = mirror_comm(&m, 0);
  cluda_ctx ctx = cluda_cpu_context(&arena);
  ctx.bn_sync = &pair;
  cluda_status fs, bs;
  bufs_run(&ctx, 1, &B, &fs, &bs);
  TEST_FAILS(fs, CLUDA_ERR_COMM, "all-reduce 0 fails");
  TEST_CHECK(memcmp(before, B.mem, bytes) == 0,
             "batchnorm: a failed count all-reduce writes nothing");
  for (int fail_at = 1; fail_at <= 2; fail_at++) {
    pair = mirror_comm(&m, fail_at);
    bufs_run(&ctx, 1, &B, &fs, &bs);
    TEST_FAILS(fs, CLUDA_ERR_COMM, "fails");
    TEST_CHECK(arena.used == 0, "batchnorm forward: scratch released after all-reduce %d failed",
               fail_at);
  }
  pair = mirror_comm(&m, 4); /* the forward's 3, the backward's count, then its sums */
  bufs_run(&ctx, 1, &B, &fs, &bs);
  TEST_OK(fs);
  TEST_FAILS(bs, CLUDA_ERR_COMM, "all-reduce 4 fails");
  TEST_CHECK(arena.used == 0, "batchnorm backward: scratch released after a failed all-reduce");
  cluda_arena_destroy(&arena);
  free(B.mem), free(before);
}

int main(int argc, char **argv) {
  (void)argc;
  for (int training = 0; training <= 1; training++) {
    check_batchnorm(2, 3, 2, 5, training, 0.1f, 0.0f, 1, 1);  /* batch 2, odd C */
    check_batchnorm(1, 3, 3, 4, training, 0.1f, 2.0f, 1, 2);  /* batch 1 */
    check_batchnorm(2, 1, 1, 6, training, 0.1f, 0.0f, 1, 3);  /* 1x1 spatial, N*H*W = 2 */
    check_batchnorm(3, 2, 1, 1, training, 0.1f, -1.0f, 1, 4); /* one channel */
  }
  check_batchnorm(1, 1, 1, 3, 0, 0.1f, 0.0f, 1, 5);    /* N*H*W = 1: inference only */
  check_batchnorm(2, 2, 3, 3, 1, 0.0f, 0.0f, 0, 6);    /* momentum 0: running unchanged */
  check_batchnorm(2, 2, 3, 3, 1, 1.0f, 0.0f, 0, 7);    /* momentum 1: running = batch */
  check_batchnorm(2, 4, 4, 8, 1, 0.1f, 1000.0f, 0, 8); /* mean >> spread */
  check_single_value();
  check_threaded(1);
  check_threaded(0);
  check_scratch_paths();
  check_validation();
  for (int training = 0; training <= 1; training++) {
    check_sync_mirror(2, 3, 5, 5, training);
    check_sync_mirror(2, 3, 5, 2100, training); /* two channel panels */
  }
  check_sync_mirror(2, 16, 16, 72, 1); /* threaded */
  check_sync_single_value();
  check_sync_errors();
  return test_finish(argv[0]);
}

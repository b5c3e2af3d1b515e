/* layernorm: forward (y, saved mean and rstd) against a double reference for 1- to 4-d
 * inputs, both MiT epsilons, C = 1 and a large common offset; backward (dx, dgamma, dbeta)
 * against central finite differences of that reference, with dx overwritten and dgamma /
 * dbeta accumulated onto known values; a threaded shape against an analytic double
 * reference, bit-identical for 1 and 2 threads; and argument validation. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

typedef struct ln_ref {
  double *x, *g, *b, *r;
  int64_t rows;
  int c;
  double eps;
} ln_ref;

/* y, mean and rstd of the reference (any of them may be NULL); returns sum r y when r is set */
static double ref_run(const ln_ref *p, double *y, double *mean, double *rstd) {
  double l = 0.0;
  for (int64_t r = 0; r < p->rows; r++) {
    const double *xr = p->x + r * p->c;
    double m = 0.0, v = 0.0;
    for (int i = 0; i < p->c; i++)
      m += xr[i];
    m /= p->c;
    for (int i = 0; i < p->c; i++)
      v += (xr[i] - m) * (xr[i] - m);
    v /= p->c;
    double rs = 1.0 / sqrt(v + p->eps);
    if (mean) mean[r] = m;
    if (rstd) rstd[r] = rs;
    for (int i = 0; i < p->c; i++) {
      double yi = (xr[i] - m) * rs * p->g[i] + p->b[i];
      if (y) y[r * p->c + i] = yi;
      if (p->r) l += p->r[r * p->c + i] * yi;
    }
  }
  return l;
}

static double ref_loss(const double *unused, void *user) {
  (void)unused;
  return ref_run(user, NULL, NULL, NULL);
}

static void check_layernorm(int ndim, const int *lead, int c, float eps, float offset, float spread,
                            int do_backward, uint64_t seed) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  int64_t rows = 1;
  for (int i = 0; i + 1 < ndim; i++)
    rows *= lead[i];
  const int64_t n = rows * c;
  float *x = test_alloc_f32(n), *y = test_alloc_f32(n), *dy = test_alloc_f32(n),
        *dx = test_alloc_f32(n), *g = test_alloc_f32(c), *b = test_alloc_f32(c),
        *dg = test_alloc_f32(c), *dbt = test_alloc_f32(c), *mean = test_alloc_f32(rows),
        *rstd = test_alloc_f32(rows);
  test_fill_uniform(x, n, offset - spread, offset + spread, seed, 0);
  test_fill_uniform(g, c, 0.5f, 1.5f, seed, 1);
  test_fill_uniform(b, c, -0.5f, 0.5f, seed, 2);
  test_fill_uniform(dy, n, -1.0f, 1.0f, seed, 3);
  cluda_tensor tx = test_tensor_rows(ndim, lead, c, x), ty = test_tensor_rows(ndim, lead, c, y),
               tdy = test_tensor_rows(ndim, lead, c, dy), tdx = test_tensor_rows(ndim, lead, c, dx);
  cluda_tensor tg = cluda_tensor_1d(CLUDA_F32, g, c), tb = cluda_tensor_1d(CLUDA_F32, b, c),
               tdg = cluda_tensor_1d(CLUDA_F32, dg, c), tdb = cluda_tensor_1d(CLUDA_F32, dbt, c),
               tm = cluda_tensor_1d(CLUDA_F32, mean, (int)rows),
               tr = cluda_tensor_1d(CLUDA_F32, rstd, (int)rows);

  double *xd = test_alloc_f64(n), *gd = test_alloc_f64(c), *bd = test_alloc_f64(c),
         *rd = test_alloc_f64(n), *want = test_alloc_f64(n), *wm = test_alloc_f64(rows),
         *wr = test_alloc_f64(rows);
  test_to_double(x, xd, n);
  test_to_double(g, gd, c);
  test_to_double(b, bd, c);
  test_to_double(dy, rd, n);
  ln_ref ref = {xd, gd, bd, rd, rows, c, eps};
  char what[96], msg[160];
  snprintf(what, sizeof what, "layernorm %dd rows %lld C %d eps %g offset %g", ndim,
           (long long)rows, c, (double)eps, (double)offset);

  for (int64_t i = 0; i < n; i++)
    y[i] = 1e3f;
  TEST_OK(cluda_layernorm_forward(&ctx, &tx, &tg, &tb, eps, &ty, &tm, &tr));
  ref_run(&ref, want, wm, wr);
  snprintf(msg, sizeof msg, "%s: y", what);
  test_compare(msg, y, want, n, 1e-5, 1e-5);
  snprintf(msg, sizeof msg, "%s: saved mean", what);
  test_compare(msg, mean, wm, rows, 1e-6, 1e-6);
  snprintf(msg, sizeof msg, "%s: saved rstd", what);
  test_compare(msg, rstd, wr, rows, 1e-5, 0.0);

  if (do_backward) {
    for (int64_t i = 0; i < n; i++)
      dx[i] = 1e3f;
    for (int i = 0; i < c; i++)
      dg[i] = 0.25f * (float)i, dbt[i] = 1.0f - 0.5f * (float)i;
    TEST_OK(cluda_layernorm_backward(&ctx, &tx, &tg, &tm, &tr, &tdy, &tdx, &tdg, &tdb));
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
  free(x), free(y), free(dy), free(dx), free(g), free(b), free(dg), free(dbt), free(mean),
      free(rstd);
  free(xd), free(gd), free(bd), free(rd), free(want), free(wm), free(wr);
}

/* Large enough for the threaded row loop and the column-block reduction. */
static void check_threaded(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int lead[2] = {8, 50}, c = 96;
  const int64_t rows = 400, n = rows * c;
  const float eps = 1e-6f;
  float *x = test_alloc_f32(n), *dy = test_alloc_f32(n), *g = test_alloc_f32(c),
        *b = test_alloc_f32(c);
  float *y[2], *dx[2], *dg[2], *dbt[2], *mean[2], *rstd[2];
  test_fill_uniform(x, n, -3.0f, 5.0f, 21, 0);
  test_fill_uniform(dy, n, -1.0f, 1.0f, 21, 1);
  test_fill_uniform(g, c, 0.5f, 1.5f, 21, 2);
  test_fill_uniform(b, c, -0.5f, 0.5f, 21, 3);
  cluda_tensor tx = test_tensor_rows(3, lead, c, x), tdy = test_tensor_rows(3, lead, c, dy);
  cluda_tensor tg = cluda_tensor_1d(CLUDA_F32, g, c), tb = cluda_tensor_1d(CLUDA_F32, b, c);
  for (int t = 0; t < 2; t++) {
    omp_set_num_threads(t + 1);
    y[t] = test_alloc_f32(n), dx[t] = test_alloc_f32(n), dg[t] = test_alloc_f32(c),
    dbt[t] = test_alloc_f32(c), mean[t] = test_alloc_f32(rows), rstd[t] = test_alloc_f32(rows);
    cluda_tensor ty = test_tensor_rows(3, lead, c, y[t]), tdx = test_tensor_rows(3, lead, c, dx[t]);
    cluda_tensor tdg = cluda_tensor_1d(CLUDA_F32, dg[t], c),
                 tdb = cluda_tensor_1d(CLUDA_F32, dbt[t], c),
                 tm = cluda_tensor_1d(CLUDA_F32, mean[t], (int)rows),
                 tr = cluda_tensor_1d(CLUDA_F32, rstd[t], (int)rows);
    TEST_OK(cluda_layernorm_forward(&ctx, &tx, &tg, &tb, eps, &ty, &tm, &tr));
    TEST_OK(cluda_layernorm_backward(&ctx, &tx, &tg, &tm, &tr, &tdy, &tdx, &tdg, &tdb));
  }
  omp_set_num_threads(2);
  TEST_CHECK(memcmp(y[0], y[1], (size_t)n * 4) == 0 && memcmp(dx[0], dx[1], (size_t)n * 4) == 0 &&
                 memcmp(dg[0], dg[1], (size_t)c * 4) == 0 &&
                 memcmp(dbt[0], dbt[1], (size_t)c * 4) == 0 &&
                 memcmp(mean[0], mean[1], (size_t)rows * 4) == 0 &&
                 memcmp(rstd[0], rstd[1], (size_t)rows * 4) == 0,
             "layernorm: results bit-identical for 1 and 2 threads");

  /* analytic double reference: dx = rstd (gdy - mean(gdy) - xhat mean(gdy xhat)) */
  double *wy = test_alloc_f64(n), *wdx = test_alloc_f64(n), *wdg = test_alloc_f64(c),
         *wdb = test_alloc_f64(c);
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * c, *dyr = dy + r * c;
    double m = 0.0, v = 0.0, sg = 0.0, sgx = 0.0;
    for (int i = 0; i < c; i++)
      m += xr[i];
    m /= c;
    for (int i = 0; i < c; i++)
      v += (xr[i] - m) * (xr[i] - m);
    double rs = 1.0 / sqrt(v / c + eps);
    for (int i = 0; i < c; i++) {
      double xh = (xr[i] - m) * rs;
      wy[r * c + i] = xh * g[i] + b[i];
      sg += (double)dyr[i] * g[i];
      sgx += (double)dyr[i] * g[i] * xh;
      wdg[i] += dyr[i] * xh;
      wdb[i] += dyr[i];
    }
    for (int i = 0; i < c; i++)
      wdx[r * c + i] = rs * ((double)dyr[i] * g[i] - sg / c - (xr[i] - m) * rs * sgx / c);
  }
  test_compare("layernorm threaded: y", y[1], wy, n, 1e-5, 1e-5);
  test_compare("layernorm threaded: dx", dx[1], wdx, n, 1e-4, 1e-5);
  test_compare("layernorm threaded: dgamma", dg[1], wdg, c, 1e-5, 1e-4);
  test_compare("layernorm threaded: dbeta", dbt[1], wdb, c, 1e-5, 1e-4);
  for (int t = 0; t < 2; t++)
    free(y[t]), free(dx[t]), free(dg[t]), free(dbt[t]), free(mean[t]), free(rstd[t]);
  free(x), free(dy), free(g), free(b), free(wy), free(wdx), free(wdg), free(wdb);
}

static void check_validation(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  float buf[256] = {0};
  cluda_tensor x = cluda_tensor_3d(CLUDA_F32, buf, 2, 3, 5), y = x, dy = x, dx = x;
  cluda_tensor g = cluda_tensor_1d(CLUDA_F32, buf, 5), b = g, dg = g, db = g;
  cluda_tensor m = cluda_tensor_1d(CLUDA_F32, buf, 6), r = m;
  TEST_OK(cluda_layernorm_forward(&ctx, &x, &g, &b, 1e-5f, &y, &m, &r));
  TEST_OK(cluda_layernorm_backward(&ctx, &x, &g, &m, &r, &dy, &dx, &dg, &db));

  TEST_FAILS(cluda_layernorm_forward(&ctx, NULL, &g, &b, 1e-5f, &y, &m, &r), CLUDA_ERR_ARG,
             "x is NULL");
  cluda_tensor xu8 = x;
  xu8.dtype = CLUDA_U8;
  TEST_FAILS(cluda_layernorm_forward(&ctx, &xu8, &g, &b, 1e-5f, &y, &m, &r), CLUDA_ERR_DTYPE, "x");
  cluda_tensor xempty = cluda_tensor_3d(CLUDA_F32, buf, 2, 3, 0);
  TEST_FAILS(cluda_layernorm_forward(&ctx, &xempty, &g, &b, 1e-5f, &y, &m, &r), CLUDA_ERR_SHAPE,
             "last");
  TEST_FAILS(cluda_layernorm_forward(&ctx, &x, NULL, &b, 1e-5f, &y, &m, &r), CLUDA_ERR_ARG,
             "gamma is NULL");
  cluda_tensor c4 = cluda_tensor_1d(CLUDA_F32, buf, 4);
  TEST_FAILS(cluda_layernorm_forward(&ctx, &x, &c4, &b, 1e-5f, &y, &m, &r), CLUDA_ERR_SHAPE,
             "gamma [4]");
  TEST_FAILS(cluda_layernorm_forward(&ctx, &x, &g, &c4, 1e-5f, &y, &m, &r), CLUDA_ERR_SHAPE,
             "beta [4]");
  cluda_tensor g2 = cluda_tensor_2d(CLUDA_F32, buf, 1, 5);
  TEST_FAILS(cluda_layernorm_forward(&ctx, &x, &g2, &b, 1e-5f, &y, &m, &r), CLUDA_ERR_SHAPE,
             "gamma");
  TEST_FAILS(cluda_layernorm_forward(&ctx, &x, &g, &b, 0.0f, &y, &m, &r), CLUDA_ERR_ARG, "eps");
  TEST_FAILS(cluda_layernorm_forward(&ctx, &x, &g, &b, -1e-5f, &y, &m, &r), CLUDA_ERR_ARG, "eps");
  TEST_FAILS(cluda_layernorm_forward(&ctx, &x, &g, &b, NAN, &y, &m, &r), CLUDA_ERR_ARG, "eps");
  TEST_FAILS(cluda_layernorm_forward(&ctx, &x, &g, &b, INFINITY, &y, &m, &r), CLUDA_ERR_ARG, "eps");
  cluda_tensor ybad = cluda_tensor_3d(CLUDA_F32, buf, 3, 2, 5);
  TEST_FAILS(cluda_layernorm_forward(&ctx, &x, &g, &b, 1e-5f, &ybad, &m, &r), CLUDA_ERR_SHAPE,
             "y [3,2,5]");
  TEST_FAILS(cluda_layernorm_forward(&ctx, &x, &g, &b, 1e-5f, &y, &c4, &r), CLUDA_ERR_SHAPE,
             "mean [4]");
  TEST_FAILS(cluda_layernorm_forward(&ctx, &x, &g, &b, 1e-5f, &y, &m, &c4), CLUDA_ERR_SHAPE,
             "rstd [4]");
  TEST_FAILS(cluda_layernorm_forward(&ctx, &x, &g, &b, 1e-5f, &y, &m, NULL), CLUDA_ERR_ARG,
             "rstd is NULL");
  TEST_FAILS(cluda_layernorm_forward(NULL, &x, &g, &b, 1e-5f, &y, &m, &r), CLUDA_ERR_ARG, "ctx");

  TEST_FAILS(cluda_layernorm_backward(&ctx, &x, &c4, &m, &r, &dy, &dx, &dg, &db), CLUDA_ERR_SHAPE,
             "gamma [4]");
  TEST_FAILS(cluda_layernorm_backward(&ctx, &x, &g, &c4, &r, &dy, &dx, &dg, &db), CLUDA_ERR_SHAPE,
             "mean [4]");
  TEST_FAILS(cluda_layernorm_backward(&ctx, &x, &g, &m, &c4, &dy, &dx, &dg, &db), CLUDA_ERR_SHAPE,
             "rstd [4]");
  TEST_FAILS(cluda_layernorm_backward(&ctx, &x, &g, &m, &r, &ybad, &dx, &dg, &db), CLUDA_ERR_SHAPE,
             "dy [3,2,5]");
  TEST_FAILS(cluda_layernorm_backward(&ctx, &x, &g, &m, &r, &dy, &ybad, &dg, &db), CLUDA_ERR_SHAPE,
             "dx [3,2,5]");
  TEST_FAILS(cluda_layernorm_backward(&ctx, &x, &g, &m, &r, &dy, NULL, &dg, &db), CLUDA_ERR_ARG,
             "dx is NULL");
  TEST_FAILS(cluda_layernorm_backward(&ctx, &x, &g, &m, &r, &dy, &dx, &c4, &db), CLUDA_ERR_SHAPE,
             "dgamma [4]");
  TEST_FAILS(cluda_layernorm_backward(&ctx, &x, &g, &m, &r, &dy, &dx, &dg, &c4), CLUDA_ERR_SHAPE,
             "dbeta [4]");
  cluda_tensor dyu8 = dy;
  dyu8.dtype = CLUDA_U8;
  TEST_FAILS(cluda_layernorm_backward(&ctx, &x, &g, &m, &r, &dyu8, &dx, &dg, &db), CLUDA_ERR_DTYPE,
             "dy");
}

int main(int argc, char **argv) {
  (void)argc;
  const int l1[1] = {0}, l2[1] = {5}, l3[2] = {2, 3}, l4[3] = {2, 2, 3}, lone[1] = {3};
  check_layernorm(1, l1, 9, 1e-5f, 0.0f, 1.0f, 1, 1);    /* one row */
  check_layernorm(2, l2, 7, 1e-5f, 0.5f, 2.0f, 1, 2);    /* patch-embed / SR eps */
  check_layernorm(3, l3, 8, 1e-6f, -1.0f, 1.0f, 1, 3);   /* block-norm eps, [B, N, C] */
  check_layernorm(4, l4, 5, 1e-6f, 3.0f, 1.0f, 1, 4);    /* NHWC, odd C */
  check_layernorm(2, lone, 1, 1e-5f, 0.0f, 1.0f, 1, 5);  /* C = 1: y = beta, dx = 0 */
  check_layernorm(3, l3, 33, 1e-6f, 1e-3f, 1e-3f, 1, 6); /* spread comparable to sqrt(eps) */
  /* mean >> spread: the forward must not lose the spread (two-pass double statistics) */
  check_layernorm(3, l3, 64, 1e-6f, 1000.0f, 0.05f, 0, 7);
  check_threaded();
  check_validation();
  return test_finish(argv[0]);
}

/* l2norm (F.normalize over the last axis): forward (y and saved norms) against a double
 * reference for 1- to 4-d inputs; rows whose squares over- or underflow in float; a zero row
 * (zero output, finite gradient dy / eps) and rows just below, at and above eps; backward
 * against central finite differences of the reference in both regimes, with dx overwritten;
 * a threaded shape, bit-identical for 1 and 2 threads; and argument validation. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

typedef struct l2_ref {
  double *x, *r;
  int64_t rows;
  int c;
  double eps;
} l2_ref;

static double ref_run(const l2_ref *p, double *y, double *norms) {
  double l = 0.0;
  for (int64_t r = 0; r < p->rows; r++) {
    const double *xr = p->x + r * p->c;
    double ss = 0.0;
    for (int i = 0; i < p->c; i++)
      ss += xr[i] * xr[i];
    double nrm = sqrt(ss), den = fmax(nrm, p->eps);
    if (norms) norms[r] = nrm;
    for (int i = 0; i < p->c; i++) {
      double yi = xr[i] / den;
      if (y) y[r * p->c + i] = yi;
      if (p->r) l += p->r[r * p->c + i] * yi;
    }
  }
  return l;
}

static double ref_loss(const double *unused, void *user) {
  (void)unused;
  return ref_run(user, NULL, NULL);
}

/* x uniform in [-1, 1], row r then scaled to norm row_norm[r] when row_norm is given. */
static void check_l2norm(int ndim, const int *lead, int c, float eps, const double *row_norm,
                         int do_backward, uint64_t seed, const char *label) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  int64_t rows = 1;
  for (int i = 0; i + 1 < ndim; i++)
    rows *= lead[i];
  const int64_t n = rows * c;
  float *x = test_alloc_f32(n), *y = test_alloc_f32(n), *dy = test_alloc_f32(n),
        *dx = test_alloc_f32(n), *nm = test_alloc_f32(rows);
  test_fill_uniform(x, n, -1.0f, 1.0f, seed, 0);
  test_fill_uniform(dy, n, -1.0f, 1.0f, seed, 1);
  if (row_norm)
    for (int64_t r = 0; r < rows; r++) {
      double ss = 0.0;
      for (int i = 0; i < c; i++)
        ss += (double)x[r * c + i] * x[r * c + i];
      for (int i = 0; i < c; i++)
        x[r * c + i] = (float)(x[r * c + i] * row_norm[r] / sqrt(ss));
    }
  cluda_tensor tx = test_tensor_rows(ndim, lead, c, x), ty = test_tensor_rows(ndim, lead, c, y),
               tdy = test_tensor_rows(ndim, lead, c, dy), tdx = test_tensor_rows(ndim, lead, c, dx),
               tn = cluda_tensor_1d(CLUDA_F32, nm, (int)rows);
  double *xd = test_alloc_f64(n), *rd = test_alloc_f64(n), *want = test_alloc_f64(n),
         *wn = test_alloc_f64(rows);
  test_to_double(x, xd, n);
  test_to_double(dy, rd, n);
  l2_ref ref = {xd, rd, rows, c, eps};
  char msg[160];

  for (int64_t i = 0; i < n; i++)
    y[i] = 1e3f;
  TEST_OK(cluda_l2norm_forward(&ctx, eps, &tx, &ty, &tn));
  ref_run(&ref, want, wn);
  snprintf(msg, sizeof msg, "l2norm %s: y", label);
  test_compare(msg, y, want, n, 1e-5, 1e-7);
  snprintf(msg, sizeof msg, "l2norm %s: saved norms", label);
  test_compare(msg, nm, wn, rows, 1e-6, 0.0);

  if (do_backward) {
    for (int64_t i = 0; i < n; i++)
      dx[i] = 1e3f;
    TEST_OK(cluda_l2norm_backward(&ctx, eps, &tx, &tn, &tdy, &tdx));
    /* steps well below each row's distance to the eps kink */
    double h = 1e-6;
    if (row_norm)
      for (int64_t r = 0; r < rows; r++)
        if (row_norm[r] > 0.0 && row_norm[r] * 1e-4 < h) h = row_norm[r] * 1e-4;
    test_finite_difference(ref_loss, &ref, xd, n, h, want);
    snprintf(msg, sizeof msg, "l2norm %s: dx vs finite differences", label);
    test_compare(msg, dx, want, n, 1e-4, 1e-6);
    int finite = 1;
    for (int64_t i = 0; i < n; i++)
      finite = finite && isfinite(dx[i]);
    TEST_CHECK(finite, "l2norm %s: dx finite", label);
  }
  free(x), free(y), free(dy), free(dx), free(nm), free(xd), free(rd), free(want), free(wn);
}

/* A zero row: y = 0 exactly and dx = dy / eps. */
static void check_zero_row(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const float eps = 1e-12f;
  float x[2 * 3] = {0, 0, 0, 3, 0, -4}, y[6], nm[2], dy[6] = {1, -2, 0.5f, 1, 1, 1}, dx[6];
  cluda_tensor tx = cluda_tensor_2d(CLUDA_F32, x, 2, 3), ty = cluda_tensor_2d(CLUDA_F32, y, 2, 3),
               tn = cluda_tensor_1d(CLUDA_F32, nm, 2), tdy = cluda_tensor_2d(CLUDA_F32, dy, 2, 3),
               tdx = cluda_tensor_2d(CLUDA_F32, dx, 2, 3);
  TEST_OK(cluda_l2norm_forward(&ctx, eps, &tx, &ty, &tn));
  TEST_CHECK(y[0] == 0.0f && y[1] == 0.0f && y[2] == 0.0f && nm[0] == 0.0f,
             "l2norm zero row: y = 0, norm = 0");
  TEST_CHECK(nm[1] == 5.0f && fabsf(y[3] - 0.6f) < 1e-7f && fabsf(y[5] + 0.8f) < 1e-7f,
             "l2norm [3, 0, -4]: norm 5, y = x / 5");
  TEST_OK(cluda_l2norm_backward(&ctx, eps, &tx, &tn, &tdy, &tdx));
  const double want[3] = {1.0 / 1e-12f, -2.0 / 1e-12f, 0.5 / 1e-12f};
  test_compare("l2norm zero row: dx = dy / eps (finite)", dx, want, 3, 1e-6, 0.0);
}

static void check_threaded(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int lead[3] = {2, 16, 16}, c = 64;
  const int64_t rows = 512, n = rows * c;
  const float eps = 1e-12f;
  float *x = test_alloc_f32(n), *dy = test_alloc_f32(n), *y[2], *dx[2], *nm[2];
  test_fill_uniform(x, n, -1.0f, 1.0f, 51, 0);
  test_fill_uniform(dy, n, -1.0f, 1.0f, 51, 1);
  cluda_tensor tx = test_tensor_rows(4, lead, c, x), tdy = test_tensor_rows(4, lead, c, dy);
  for (int t = 0; t < 2; t++) {
    omp_set_num_threads(t + 1);
    y[t] = test_alloc_f32(n), dx[t] = test_alloc_f32(n), nm[t] = test_alloc_f32(rows);
    cluda_tensor ty = test_tensor_rows(4, lead, c, y[t]), tdx = test_tensor_rows(4, lead, c, dx[t]),
                 tn = cluda_tensor_1d(CLUDA_F32, nm[t], (int)rows);
    TEST_OK(cluda_l2norm_forward(&ctx, eps, &tx, &ty, &tn));
    TEST_OK(cluda_l2norm_backward(&ctx, eps, &tx, &tn, &tdy, &tdx));
  }
  omp_set_num_threads(2);
  TEST_CHECK(memcmp(y[0], y[1], (size_t)n * 4) == 0 && memcmp(dx[0], dx[1], (size_t)n * 4) == 0 &&
                 memcmp(nm[0], nm[1], (size_t)rows * 4) == 0,
             "l2norm: results bit-identical for 1 and 2 threads");
  double *wy = test_alloc_f64(n), *wdx = test_alloc_f64(n);
  for (int64_t r = 0; r < rows; r++) {
    double ss = 0.0, dot = 0.0;
    for (int i = 0; i < c; i++)
      ss += (double)x[r * c + i] * x[r * c + i];
    double nrm = sqrt(ss);
    for (int i = 0; i < c; i++)
      wy[r * c + i] = x[r * c + i] / nrm;
    for (int i = 0; i < c; i++)
      dot += wy[r * c + i] * dy[r * c + i];
    for (int i = 0; i < c; i++)
      wdx[r * c + i] = (dy[r * c + i] - wy[r * c + i] * dot) / nrm;
  }
  test_compare("l2norm threaded: forward", y[1], wy, n, 1e-5, 1e-7);
  test_compare("l2norm threaded: backward", dx[1], wdx, n, 1e-4, 1e-6);
  for (int t = 0; t < 2; t++)
    free(y[t]), free(dx[t]), free(nm[t]);
  free(x), free(dy), free(wy), free(wdx);
}

static void check_validation(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  float buf[64] = {0};
  cluda_tensor x = cluda_tensor_3d(CLUDA_F32, buf, 2, 3, 5), y = x, dy = x, dx = x;
  cluda_tensor nm = cluda_tensor_1d(CLUDA_F32, buf, 6),
               bad = cluda_tensor_3d(CLUDA_F32, buf, 3, 2, 5);
  cluda_tensor n5 = cluda_tensor_1d(CLUDA_F32, buf, 5), n2d = cluda_tensor_2d(CLUDA_F32, buf, 2, 3);
  TEST_OK(cluda_l2norm_forward(&ctx, 1e-12f, &x, &y, &nm));
  TEST_OK(cluda_l2norm_backward(&ctx, 1e-12f, &x, &nm, &dy, &dx));
  TEST_FAILS(cluda_l2norm_forward(&ctx, 0.0f, &x, &y, &nm), CLUDA_ERR_ARG, "eps");
  TEST_FAILS(cluda_l2norm_forward(&ctx, -1.0f, &x, &y, &nm), CLUDA_ERR_ARG, "eps");
  TEST_FAILS(cluda_l2norm_backward(&ctx, NAN, &x, &nm, &dy, &dx), CLUDA_ERR_ARG, "eps");
  TEST_FAILS(cluda_l2norm_forward(&ctx, 1e-12f, NULL, &y, &nm), CLUDA_ERR_ARG, "x is NULL");
  TEST_FAILS(cluda_l2norm_forward(&ctx, 1e-12f, &x, &y, NULL), CLUDA_ERR_ARG, "norms is NULL");
  TEST_FAILS(cluda_l2norm_forward(&ctx, 1e-12f, &x, &bad, &nm), CLUDA_ERR_SHAPE, "y [3,2,5]");
  TEST_FAILS(cluda_l2norm_forward(&ctx, 1e-12f, &x, &y, &n5), CLUDA_ERR_SHAPE, "norms [5]");
  TEST_FAILS(cluda_l2norm_forward(&ctx, 1e-12f, &x, &y, &n2d), CLUDA_ERR_SHAPE, "norms");
  cluda_tensor xu8 = x;
  xu8.dtype = CLUDA_U8;
  TEST_FAILS(cluda_l2norm_forward(&ctx, 1e-12f, &xu8, &y, &nm), CLUDA_ERR_DTYPE, "x");
  TEST_FAILS(cluda_l2norm_forward(NULL, 1e-12f, &x, &y, &nm), CLUDA_ERR_ARG, "ctx");
  TEST_FAILS(cluda_l2norm_backward(&ctx, 1e-12f, &x, &n5, &dy, &dx), CLUDA_ERR_SHAPE, "norms [5]");
  TEST_FAILS(cluda_l2norm_backward(&ctx, 1e-12f, &x, &nm, &bad, &dx), CLUDA_ERR_SHAPE,
             "dy [3,2,5]");
  TEST_FAILS(cluda_l2norm_backward(&ctx, 1e-12f, &x, &nm, &dy, &bad), CLUDA_ERR_SHAPE,
             "dx [3,2,5]");
  TEST_FAILS(cluda_l2norm_backward(&ctx, 1e-12f, &x, &nm, &dy, NULL), CLUDA_ERR_ARG, "dx is NULL");
}

int main(int argc, char **argv) {
  (void)argc;
  const int l1[1] = {0}, l2[1] = {5}, l3[2] = {2, 3}, l4[3] = {2, 2, 3}, l6[1] = {6};
  check_l2norm(1, l1, 9, 1e-12f, NULL, 1, 1, "1-d");
  check_l2norm(2, l2, 7, 1e-12f, NULL, 1, 2, "2-d");
  check_l2norm(3, l3, 16, 1e-12f, NULL, 1, 3, "3-d");
  check_l2norm(4, l4, 5, 1e-12f, NULL, 1, 4, "4-d");
  check_l2norm(2, l2, 1, 1e-12f, NULL, 1, 5, "C = 1");
  /* rows around eps = 0.01: below (gradient dy / eps) and above (through the norm) */
  const double near[6] = {0.5e-2, 0.9e-2, 0.99e-2, 1.01e-2, 1.1e-2, 2e-2};
  check_l2norm(2, l6, 6, 1e-2f, near, 1, 6, "rows near eps 1e-2");
  /* the same at the default eps 1e-12 */
  const int l4rows[1] = {4};
  const double tiny[4] = {0.3e-12, 0.8e-12, 1.5e-12, 4e-12};
  check_l2norm(2, l4rows, 4, 1e-12f, tiny, 1, 7, "rows near eps 1e-12");
  /* squares that overflow (1e25) or underflow (1e-25) in float */
  const double extreme[6] = {1e25, 3e30, 1e-25, 1e-28, 1.0, 1e-20};
  check_l2norm(2, l6, 8, 1e-30f, extreme, 0, 8, "extreme magnitudes");
  check_zero_row();
  check_threaded();
  check_validation();
  return test_finish(argv[0]);
}

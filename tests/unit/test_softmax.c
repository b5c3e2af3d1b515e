/* softmax over the last axis: forward against a double reference for 1- to 4-d inputs,
 * C = 1, equal logits and large logits (+-80, +-1000: max subtraction keeps them finite);
 * backward (from y) against central finite differences of the reference, with dx
 * overwritten; a threaded shape, bit-identical for 1 and 2 threads; argument validation. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

typedef struct sm_ref {
  double *x, *r;
  int64_t rows;
  int c;
} sm_ref;

static double ref_run(const sm_ref *p, double *y) {
  double l = 0.0;
  for (int64_t r = 0; r < p->rows; r++) {
    const double *xr = p->x + r * p->c;
    double mx = xr[0], s = 0.0;
    for (int i = 1; i < p->c; i++)
      mx = fmax(mx, xr[i]);
    for (int i = 0; i < p->c; i++)
      s += exp(xr[i] - mx);
    for (int i = 0; i < p->c; i++) {
      double yi = exp(xr[i] - mx) / s;
      if (y) y[r * p->c + i] = yi;
      if (p->r) l += p->r[r * p->c + i] * yi;
    }
  }
  return l;
}

static double ref_loss(const double *unused, void *user) {
  (void)unused;
  return ref_run(user, NULL);
}

/* x is uniform in [-scale, scale] unless preset is given (rows * c values). */
static void check_softmax(int ndim, const int *lead, int c, float scale, const float *preset,
                          uint64_t seed) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  int64_t rows = 1;
  for (int i = 0; i + 1 < ndim; i++)
    rows *= lead[i];
  const int64_t n = rows * c;
  float *x = test_alloc_f32(n), *y = test_alloc_f32(n), *dy = test_alloc_f32(n),
        *dx = test_alloc_f32(n);
  if (preset)
    memcpy(x, preset, (size_t)n * 4);
  else
    test_fill_uniform(x, n, -scale, scale, seed, 0);
  test_fill_uniform(dy, n, -1.0f, 1.0f, seed, 1);
  cluda_tensor tx = test_tensor_rows(ndim, lead, c, x), ty = test_tensor_rows(ndim, lead, c, y),
               tdy = test_tensor_rows(ndim, lead, c, dy), tdx = test_tensor_rows(ndim, lead, c, dx);
  double *xd = test_alloc_f64(n), *rd = test_alloc_f64(n), *want = test_alloc_f64(n);
  test_to_double(x, xd, n);
  test_to_double(dy, rd, n);
  sm_ref ref = {xd, rd, rows, c};
  char what[96], msg[160];
  snprintf(what, sizeof what, "softmax %dd rows %lld C %d scale %g%s", ndim, (long long)rows, c,
           (double)scale, preset ? " (preset)" : "");

  for (int64_t i = 0; i < n; i++)
    y[i] = 1e3f;
  TEST_OK(cluda_softmax_forward(&ctx, &tx, &ty));
  ref_run(&ref, want);
  snprintf(msg, sizeof msg, "%s: forward", what);
  test_compare(msg, y, want, n, 1e-5, 1e-7);

  for (int64_t i = 0; i < n; i++)
    dx[i] = 1e3f;
  TEST_OK(cluda_softmax_backward(&ctx, &ty, &tdy, &tdx));
  test_finite_difference(ref_loss, &ref, xd, n, 1e-6, want);
  snprintf(msg, sizeof msg, "%s: dx vs finite differences", what);
  test_compare(msg, dx, want, n, 1e-4, 1e-6);
  free(x), free(y), free(dy), free(dx), free(xd), free(rd), free(want);
}

static void check_threaded(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int lead[2] = {4, 64}, c = 100;
  const int64_t rows = 256, n = rows * c;
  float *x = test_alloc_f32(n), *dy = test_alloc_f32(n), *y[2], *dx[2];
  test_fill_uniform(x, n, -10.0f, 10.0f, 41, 0);
  test_fill_uniform(dy, n, -1.0f, 1.0f, 41, 1);
  cluda_tensor tx = test_tensor_rows(3, lead, c, x), tdy = test_tensor_rows(3, lead, c, dy);
  for (int t = 0; t < 2; t++) {
    omp_set_num_threads(t + 1);
    y[t] = test_alloc_f32(n), dx[t] = test_alloc_f32(n);
    cluda_tensor ty = test_tensor_rows(3, lead, c, y[t]), tdx = test_tensor_rows(3, lead, c, dx[t]);
    TEST_OK(cluda_softmax_forward(&ctx, &tx, &ty));
    TEST_OK(cluda_softmax_backward(&ctx, &ty, &tdy, &tdx));
  }
  omp_set_num_threads(2);
  TEST_CHECK(memcmp(y[0], y[1], (size_t)n * 4) == 0 && memcmp(dx[0], dx[1], (size_t)n * 4) == 0,
             "softmax: results bit-identical for 1 and 2 threads");
  double *xd = test_alloc_f64(n), *wy = test_alloc_f64(n), *wdx = test_alloc_f64(n);
  test_to_double(x, xd, n);
  sm_ref ref = {xd, NULL, rows, c};
  ref_run(&ref, wy);
  for (int64_t r = 0; r < rows; r++) {
    double dot = 0.0;
    for (int i = 0; i < c; i++)
      dot += dy[r * c + i] * wy[r * c + i];
    for (int i = 0; i < c; i++)
      wdx[r * c + i] = wy[r * c + i] * (dy[r * c + i] - dot);
  }
  test_compare("softmax threaded: forward", y[1], wy, n, 1e-5, 1e-7);
  test_compare("softmax threaded: backward", dx[1], wdx, n, 1e-4, 1e-6);
  for (int t = 0; t < 2; t++)
    free(y[t]), free(dx[t]);
  free(x), free(dy), free(xd), free(wy), free(wdx);
}

static void check_validation(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  float buf[64] = {0};
  cluda_tensor x = cluda_tensor_3d(CLUDA_F32, buf, 2, 3, 5), y = x;
  cluda_tensor bad = cluda_tensor_3d(CLUDA_F32, buf, 2, 5, 3);
  TEST_OK(cluda_softmax_forward(&ctx, &x, &y));
  TEST_FAILS(cluda_softmax_forward(&ctx, NULL, &y), CLUDA_ERR_ARG, "x is NULL");
  TEST_FAILS(cluda_softmax_forward(&ctx, &x, NULL), CLUDA_ERR_ARG, "y is NULL");
  TEST_FAILS(cluda_softmax_forward(&ctx, &x, &bad), CLUDA_ERR_SHAPE, "softmax_forward: y [2,5,3]");
  cluda_tensor xu8 = x;
  xu8.dtype = CLUDA_U8;
  TEST_FAILS(cluda_softmax_forward(&ctx, &xu8, &y), CLUDA_ERR_DTYPE, "x");
  TEST_FAILS(cluda_softmax_forward(NULL, &x, &y), CLUDA_ERR_ARG, "ctx");
  TEST_FAILS(cluda_softmax_backward(&ctx, &x, &bad, &y), CLUDA_ERR_SHAPE, "dy [2,5,3]");
  TEST_FAILS(cluda_softmax_backward(&ctx, &x, &y, &bad), CLUDA_ERR_SHAPE, "dx [2,5,3]");
  TEST_FAILS(cluda_softmax_backward(&ctx, &x, NULL, &y), CLUDA_ERR_ARG, "dy is NULL");
  TEST_FAILS(cluda_softmax_backward(&ctx, &xu8, &x, &y), CLUDA_ERR_DTYPE, "y");
}

int main(int argc, char **argv) {
  (void)argc;
  const int l1[1] = {0}, l2[1] = {5}, l3[2] = {2, 3}, l4[3] = {2, 2, 3}, lone[1] = {4};
  check_softmax(1, l1, 9, 3.0f, NULL, 1);
  check_softmax(2, l2, 7, 3.0f, NULL, 2);
  check_softmax(3, l3, 19, 5.0f, NULL, 3); /* 19 classes */
  check_softmax(4, l4, 6, 2.0f, NULL, 4);
  check_softmax(2, lone, 1, 3.0f, NULL, 5); /* C = 1: y = 1, dx = 0 */
  check_softmax(3, l3, 8, 80.0f, NULL, 6);  /* large logits */
  /* rows that overflow exp without the max subtraction, and equal logits */
  const float big[4 * 5] = {80.0f,    -80.0f, 79.0f,   0.0f,   -79.5f, 1000.0f, 999.0f,
                            -1000.0f, 998.5f, 1000.0f, -90.0f, -90.0f, -90.0f,  -90.0f,
                            -90.0f,   88.0f,  88.5f,   -88.0f, 87.0f,  88.25f};
  check_softmax(2, lone, 5, 0.0f, big, 7);
  check_threaded();
  check_validation();
  return test_finish(argv[0]);
}

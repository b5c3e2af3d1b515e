/* Channel concat and slice: forward against a double reference, backward against the
 * exact transpose and against finite differences, slice backward zero-filling, and
 * argument validation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

enum { MAXIN = 4 };

typedef struct concat_case {
  int ndim;
  int lead[3]; /* leading dims (ndim - 1 of them) */
  int count;
  int widths[MAXIN];
} concat_case;

static cluda_tensor make(int ndim, const int *lead, int c, float *data) {
  switch (ndim) {
  case 1: return cluda_tensor_1d(CLUDA_F32, data, c);
  case 2: return cluda_tensor_2d(CLUDA_F32, data, lead[0], c);
  case 3: return cluda_tensor_3d(CLUDA_F32, data, lead[0], lead[1], c);
  default: return cluda_tensor_4d(CLUDA_F32, data, lead[0], lead[1], lead[2], c);
  }
}

static int64_t lead_rows(const concat_case *cc) {
  int64_t r = 1;
  for (int i = 0; i + 1 < cc->ndim; i++)
    r *= cc->lead[i];
  return r;
}

/* y = concat(xs) for the reference and the finite differences */
typedef struct ref_user {
  const concat_case *cc;
  const double *r;
} ref_user;

static void concat_ref(const concat_case *cc, const double *const *xs, double *y) {
  int cy = 0;
  for (int i = 0; i < cc->count; i++)
    cy += cc->widths[i];
  for (int64_t row = 0; row < lead_rows(cc); row++) {
    int at = 0;
    for (int i = 0; i < cc->count; i++) {
      for (int j = 0; j < cc->widths[i]; j++)
        y[row * cy + at + j] = xs[i][row * cc->widths[i] + j];
      at += cc->widths[i];
    }
  }
}

/* L(x_0, ..., x_{count-1}) = sum r . concat(x), inputs packed one after the other */
static double concat_loss(const double *x, void *user) {
  ref_user *u = user;
  const double *xs[MAXIN] = {NULL};
  int64_t rows = lead_rows(u->cc), off = 0, total = 0;
  for (int i = 0; i < u->cc->count; i++) {
    xs[i] = x + off;
    off += rows * u->cc->widths[i];
    total += rows * u->cc->widths[i];
  }
  double *y = test_alloc_f64(total);
  concat_ref(u->cc, xs, y);
  double l = 0.0;
  for (int64_t i = 0; i < total; i++)
    l += u->r[i] * y[i];
  free(y);
  return l;
}

static void check_concat(const concat_case *cc, int with_fd, uint32_t seed) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int64_t rows = lead_rows(cc);
  int cy = 0;
  for (int i = 0; i < cc->count; i++)
    cy += cc->widths[i];
  const int64_t ny = rows * cy;
  float *x = test_alloc_f32(ny), *y = test_alloc_f32(ny), *dy = test_alloc_f32(ny),
        *dx = test_alloc_f32(ny);
  double *xd = test_alloc_f64(ny), *want = test_alloc_f64(ny);
  test_fill_uniform(x, ny, -1.0f, 1.0f, seed, 0);
  test_fill_uniform(dy, ny, -1.0f, 1.0f, seed, 1);
  for (int64_t i = 0; i < ny; i++)
    dx[i] = NAN;
  test_to_double(x, xd, ny);
  cluda_tensor txs[MAXIN], tdxs[MAXIN];
  const cluda_tensor *xs[MAXIN];
  cluda_tensor *dxs[MAXIN];
  const double *xsd[MAXIN];
  int64_t off = 0;
  for (int i = 0; i < cc->count; i++) {
    txs[i] = make(cc->ndim, cc->lead, cc->widths[i], x + off);
    tdxs[i] = make(cc->ndim, cc->lead, cc->widths[i], dx + off);
    xs[i] = &txs[i];
    dxs[i] = &tdxs[i];
    xsd[i] = xd + off;
    off += rows * cc->widths[i];
  }
  cluda_tensor ty = make(cc->ndim, cc->lead, cy, y), tdy = make(cc->ndim, cc->lead, cy, dy);
  char what[96];
  snprintf(what, sizeof what, "concat forward %d inputs, %d-d, rows %lld", cc->count, cc->ndim,
           (long long)rows);
  TEST_OK(cluda_concat_forward(&ctx, cc->count, xs, &ty));
  concat_ref(cc, xsd, want);
  test_compare(what, y, want, ny, 0.0, 0.0);

  /* backward is the transpose: dx_i = the columns of dy that came from x_i */
  TEST_OK(cluda_concat_backward(&ctx, cc->count, &tdy, dxs));
  int64_t o = 0;
  int at = 0, exact = 1;
  for (int i = 0; i < cc->count; i++) {
    for (int64_t r = 0; r < rows; r++)
      for (int j = 0; j < cc->widths[i]; j++)
        exact &= dx[o + r * cc->widths[i] + j] == dy[r * cy + at + j];
    o += rows * cc->widths[i];
    at += cc->widths[i];
  }
  snprintf(what, sizeof what, "concat backward %d inputs, %d-d is the exact transpose", cc->count,
           cc->ndim);
  TEST_CHECK(exact, "%s", what);
  if (with_fd) {
    double *r = test_alloc_f64(ny), *grad = test_alloc_f64(ny);
    test_to_double(dy, r, ny);
    ref_user u = {cc, r};
    test_finite_difference(concat_loss, &u, xd, ny, 1e-6, grad);
    snprintf(what, sizeof what, "concat backward %d inputs vs finite differences", cc->count);
    test_compare(what, dx, grad, ny, 1e-6, 1e-7);
    free(r);
    free(grad);
  }
  free(x);
  free(y);
  free(dy);
  free(dx);
  free(xd);
  free(want);
}

static void check_slice(int ndim, const int *lead, int cx, int begin, int cy, uint32_t seed) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  int64_t rows = 1;
  for (int i = 0; i + 1 < ndim; i++)
    rows *= lead[i];
  float *x = test_alloc_f32(rows * cx), *y = test_alloc_f32(rows * cy + 1),
        *dy = test_alloc_f32(rows * cy + 1), *dx = test_alloc_f32(rows * cx);
  double *want = test_alloc_f64(rows * cx);
  test_fill_uniform(x, rows * cx, -1.0f, 1.0f, seed, 0);
  test_fill_uniform(dy, rows * cy, -1.0f, 1.0f, seed, 1);
  for (int64_t i = 0; i < rows * cx; i++)
    dx[i] = NAN; /* the backward must zero-fill */
  cluda_tensor tx = make(ndim, lead, cx, x), ty = make(ndim, lead, cy, y);
  cluda_tensor tdx = make(ndim, lead, cx, dx), tdy = make(ndim, lead, cy, dy);
  char what[96];
  TEST_OK(cluda_slice_forward(&ctx, begin, &tx, &ty));
  for (int64_t r = 0; r < rows; r++)
    for (int j = 0; j < cy; j++)
      want[r * cy + j] = x[r * cx + begin + j];
  snprintf(what, sizeof what, "slice forward %d-d [%d:%d] of %d", ndim, begin, begin + cy, cx);
  test_compare(what, y, want, rows * cy, 0.0, 0.0);
  /* L = sum dy . slice(x) is linear, so its gradient is exactly dy placed into zeros */
  TEST_OK(cluda_slice_backward(&ctx, begin, &tdy, &tdx));
  for (int64_t r = 0; r < rows; r++)
    for (int j = 0; j < cx; j++)
      want[r * cx + j] = (j >= begin && j < begin + cy) ? dy[r * cy + j - begin] : 0.0;
  snprintf(what, sizeof what, "slice backward %d-d [%d:%d] of %d zero-fills", ndim, begin,
           begin + cy, cx);
  test_compare(what, dx, want, rows * cx, 0.0, 0.0);
  free(x);
  free(y);
  free(dy);
  free(dx);
  free(want);
}

static void check_validation(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  static float a[2 * 3 * 4], b[2 * 3 * 5], y[2 * 3 * 9];
  cluda_tensor ta = cluda_tensor_3d(CLUDA_F32, a, 2, 3, 4);
  cluda_tensor tb = cluda_tensor_3d(CLUDA_F32, b, 2, 3, 5);
  cluda_tensor ty = cluda_tensor_3d(CLUDA_F32, y, 2, 3, 9);
  const cluda_tensor *xs[2] = {&ta, &tb};
  cluda_tensor *dxs[2] = {&ta, &tb};
  TEST_OK(cluda_concat_forward(&ctx, 2, xs, &ty));
  TEST_FAILS(cluda_concat_forward(&ctx, 0, xs, &ty), CLUDA_ERR_ARG, "count");
  TEST_FAILS(cluda_concat_forward(&ctx, 2, NULL, &ty), CLUDA_ERR_ARG, "xs is NULL");
  TEST_FAILS(cluda_concat_forward(&ctx, 2, xs, NULL), CLUDA_ERR_ARG, "y is NULL");
  const cluda_tensor *xs_null[2] = {&ta, NULL};
  TEST_FAILS(cluda_concat_forward(&ctx, 2, xs_null, &ty), CLUDA_ERR_ARG, "xs[1] is NULL");
  cluda_tensor tb_lead = cluda_tensor_3d(CLUDA_F32, b, 3, 2, 5);
  const cluda_tensor *xs_lead[2] = {&ta, &tb_lead};
  TEST_FAILS(cluda_concat_forward(&ctx, 2, xs_lead, &ty), CLUDA_ERR_SHAPE, "xs[1]");
  cluda_tensor tb_rank = cluda_tensor_2d(CLUDA_F32, b, 6, 5);
  const cluda_tensor *xs_rank[2] = {&ta, &tb_rank};
  TEST_FAILS(cluda_concat_forward(&ctx, 2, xs_rank, &ty), CLUDA_ERR_SHAPE, "xs[1]");
  cluda_tensor ty_wide = cluda_tensor_3d(CLUDA_F32, y, 2, 3, 8);
  TEST_FAILS(cluda_concat_forward(&ctx, 2, xs, &ty_wide), CLUDA_ERR_SHAPE, "channels");
  cluda_tensor ta_u8 = cluda_tensor_3d(CLUDA_U8, a, 2, 3, 4);
  const cluda_tensor *xs_u8[2] = {&ta_u8, &tb};
  TEST_FAILS(cluda_concat_forward(&ctx, 2, xs_u8, &ty), CLUDA_ERR_DTYPE, "xs[0]");

  TEST_OK(cluda_concat_backward(&ctx, 2, &ty, dxs));
  TEST_FAILS(cluda_concat_backward(&ctx, 2, &ty_wide, dxs), CLUDA_ERR_SHAPE, "dy");
  cluda_tensor *dxs_lead[2] = {&ta, &tb_lead};
  TEST_FAILS(cluda_concat_backward(&ctx, 2, &ty, dxs_lead), CLUDA_ERR_SHAPE, "dxs[1]");
  TEST_FAILS(cluda_concat_backward(&ctx, -1, &ty, dxs), CLUDA_ERR_ARG, "count");
  TEST_FAILS(cluda_concat_backward(&ctx, 2, NULL, dxs), CLUDA_ERR_ARG, "dy is NULL");

  TEST_OK(cluda_slice_forward(&ctx, 4, &ty, &tb));
  TEST_FAILS(cluda_slice_forward(&ctx, -1, &ty, &tb), CLUDA_ERR_ARG, "begin");
  TEST_FAILS(cluda_slice_forward(&ctx, 5, &ty, &tb), CLUDA_ERR_ARG, "begin");
  TEST_FAILS(cluda_slice_forward(&ctx, 0, &ty, &tb_lead), CLUDA_ERR_SHAPE, "y");
  TEST_FAILS(cluda_slice_forward(&ctx, 0, NULL, &tb), CLUDA_ERR_ARG, "x is NULL");
  TEST_FAILS(cluda_slice_forward(&ctx, 0, &ty, &ta_u8), CLUDA_ERR_DTYPE, "y");
  TEST_OK(cluda_slice_backward(&ctx, 4, &tb, &ty));
  TEST_FAILS(cluda_slice_backward(&ctx, 6, &tb, &ty), CLUDA_ERR_ARG, "begin");
  TEST_FAILS(cluda_slice_backward(&ctx, 0, &tb, &tb_rank), CLUDA_ERR_SHAPE, "dx");
  TEST_FAILS(cluda_slice_backward(&ctx, 0, NULL, &ty), CLUDA_ERR_ARG, "dy is NULL");
}

int main(int argc, char **argv) {
  (void)argc;
  const concat_case cases[] = {
      {4, {2, 3, 5}, 2, {3, 5}},
      {3, {3, 1}, 3, {1, 4, 2}},
      {2, {7}, 4, {2, 7, 1, 3}},
      {1, {0}, 3, {5, 1, 2}},
      {4, {2, 64, 48}, 4, {16, 32, 7, 64}}, /* threaded */
  };
  for (int i = 0; i < 5; i++)
    check_concat(&cases[i], i < 4, 10 + i);
  const int lead4[3] = {2, 3, 5}, lead2[1] = {4}, big[3] = {2, 96, 64};
  check_slice(4, lead4, 9, 0, 4, 1);  /* head of the channels */
  check_slice(4, lead4, 9, 3, 5, 2);  /* middle */
  check_slice(4, lead4, 9, 7, 2, 3);  /* tail */
  check_slice(2, lead2, 6, 0, 6, 4);  /* everything */
  check_slice(1, NULL, 5, 2, 1, 5);   /* 1-d, one channel */
  check_slice(2, lead2, 6, 6, 0, 6);  /* empty slice: backward is all zeros */
  check_slice(4, big, 64, 16, 32, 7); /* threaded */
  check_validation();
  return test_finish(argv[0]);
}

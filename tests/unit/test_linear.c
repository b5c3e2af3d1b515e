/* linear: forward against a double reference for 1- to 4-d inputs with and without bias;
 * backward (dx, dw, db) against central finite differences of that reference, including the
 * overwrite (dx) and accumulate (dw, db) semantics and the optional dx / db; degenerate sizes;
 * a threaded shape against an analytic double reference with bit-identical results for 1
 * and 2 threads; and argument validation. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

/* A tensor of rank ndim whose leading dims are lead[0..ndim-2] and last dim is last. */
static cluda_tensor make(int ndim, const int *lead, int last, void *data) {
  cluda_tensor t = cluda_tensor_1d(CLUDA_F32, data, last);
  t.ndim = ndim;
  for (int i = 0; i + 1 < ndim; i++)
    t.shape[i] = lead[i];
  t.shape[ndim - 1] = last;
  return t;
}

typedef struct lin_ref {
  double *x, *w, *b, *r; /* b may be NULL; r weights the loss L = sum r y */
  int64_t rows;
  int in, out;
} lin_ref;

static void ref_forward(const lin_ref *p, double *y) {
  for (int64_t r = 0; r < p->rows; r++)
    for (int o = 0; o < p->out; o++) {
      double s = p->b ? p->b[o] : 0.0;
      for (int i = 0; i < p->in; i++)
        s += p->x[r * p->in + i] * p->w[(int64_t)o * p->in + i];
      y[r * p->out + o] = s;
    }
}

static double ref_loss(const double *unused, void *user) {
  (void)unused; /* the perturbed vector is one of the arrays in user */
  const lin_ref *p = user;
  double l = 0.0;
  for (int64_t r = 0; r < p->rows; r++)
    for (int o = 0; o < p->out; o++) {
      double s = p->b ? p->b[o] : 0.0;
      for (int i = 0; i < p->in; i++)
        s += p->x[r * p->in + i] * p->w[(int64_t)o * p->in + i];
      l += p->r[r * p->out + o] * s;
    }
  return l;
}

static void check_linear(int ndim, const int *lead, int in, int out, int with_bias, uint64_t seed) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  int64_t rows = 1;
  for (int i = 0; i + 1 < ndim; i++)
    rows *= lead[i];
  int64_t nx = rows * in, ny = rows * out, nw = (int64_t)out * in;
  float *x = test_alloc_f32(nx), *w = test_alloc_f32(nw), *b = test_alloc_f32(out),
        *y = test_alloc_f32(ny), *dy = test_alloc_f32(ny), *dx = test_alloc_f32(nx),
        *dw = test_alloc_f32(nw), *db = test_alloc_f32(out);
  test_fill_uniform(x, nx, -2.0f, 2.0f, seed, 0);
  test_fill_uniform(w, nw, -1.0f, 1.0f, seed, 1);
  test_fill_uniform(b, out, -1.0f, 1.0f, seed, 2);
  test_fill_uniform(dy, ny, -1.0f, 1.0f, seed, 3);
  cluda_tensor tx = make(ndim, lead, in, x), ty = make(ndim, lead, out, y),
               tdy = make(ndim, lead, out, dy), tdx = make(ndim, lead, in, dx);
  cluda_tensor tw = cluda_tensor_2d(CLUDA_F32, w, out, in), tb = cluda_tensor_1d(CLUDA_F32, b, out);
  cluda_tensor tdw = cluda_tensor_2d(CLUDA_F32, dw, out, in),
               tdb = cluda_tensor_1d(CLUDA_F32, db, out);

  double *xd = test_alloc_f64(nx), *wd = test_alloc_f64(nw), *bd = test_alloc_f64(out),
         *rd = test_alloc_f64(ny), *want = test_alloc_f64(ny + nx + nw + out);
  test_to_double(x, xd, nx);
  test_to_double(w, wd, nw);
  test_to_double(b, bd, out);
  test_to_double(dy, rd, ny);
  lin_ref ref = {xd, wd, with_bias ? bd : NULL, rd, rows, in, out};
  char what[128];
  snprintf(what, sizeof what, "linear %dd rows %lld in %d out %d bias %d", ndim, (long long)rows,
           in, out, with_bias);

  /* forward; y starts as garbage to show it is overwritten */
  for (int64_t i = 0; i < ny; i++)
    y[i] = 1e3f;
  TEST_OK(cluda_linear_forward(&ctx, &tx, &tw, with_bias ? &tb : NULL, &ty));
  ref_forward(&ref, want);
  char msg[256];
  snprintf(msg, sizeof msg, "%s: forward", what);
  test_compare(msg, y, want, ny, 1e-5, 1e-5);

  /* backward: dx overwritten, dw and db accumulated onto known values */
  for (int64_t i = 0; i < nx; i++)
    dx[i] = 1e3f;
  for (int64_t i = 0; i < nw; i++)
    dw[i] = 0.5f + 0.01f * (float)i;
  for (int o = 0; o < out; o++)
    db[o] = -0.25f + 0.1f * (float)o;
  TEST_OK(cluda_linear_backward(&ctx, &tx, &tw, &tdy, &tdx, &tdw, with_bias ? &tdb : NULL));
  double *gx = want, *gw = want + nx, *gb = want + nx + nw;
  test_finite_difference(ref_loss, &ref, xd, nx, 1e-6, gx);
  test_finite_difference(ref_loss, &ref, wd, nw, 1e-6, gw);
  if (with_bias) test_finite_difference(ref_loss, &ref, bd, out, 1e-6, gb);
  snprintf(msg, sizeof msg, "%s: dx vs finite differences", what);
  test_compare(msg, dx, gx, nx, 1e-4, 1e-5);
  for (int64_t i = 0; i < nw; i++)
    gw[i] += 0.5f + 0.01f * (float)i;
  snprintf(msg, sizeof msg, "%s: dw accumulated vs finite differences", what);
  test_compare(msg, dw, gw, nw, 1e-4, 1e-5);
  for (int o = 0; o < out; o++)
    gb[o] = (with_bias ? gb[o] : 0.0) + (double)(-0.25f + 0.1f * (float)o);
  snprintf(msg, sizeof msg, "%s: db accumulated (untouched when NULL)", what);
  test_compare(msg, db, gb, out, 1e-4, 1e-5);

  /* dx and db are optional; dw keeps accumulating */
  TEST_OK(cluda_linear_backward(&ctx, &tx, &tw, &tdy, NULL, &tdw, NULL));
  for (int64_t i = 0; i < nw; i++)
    gw[i] += gw[i] - (0.5f + 0.01f * (float)i);
  snprintf(msg, sizeof msg, "%s: dw accumulates twice, dx and db NULL", what);
  test_compare(msg, dw, gw, nw, 1e-4, 1e-5);
  test_compare(msg, db, gb, out, 1e-4, 1e-5);

  free(x), free(w), free(b), free(y), free(dy), free(dx), free(dw), free(db);
  free(xd), free(wd), free(bd), free(rd), free(want);
}

/* Degenerate sizes: no rows (nothing happens), no inputs (y = b, db still accumulates). */
static void check_degenerate(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  float b[3] = {1.0f, -2.0f, 0.5f}, db[3] = {1.0f, 1.0f, 1.0f}, y[6], dy[6] = {1, 2, 3, 4, 5, 6};
  float w[3 * 4] = {0}, dw[12] = {0};
  float one[1];
  cluda_tensor x0 = cluda_tensor_2d(CLUDA_F32, NULL, 0, 4),
               y0 = cluda_tensor_2d(CLUDA_F32, NULL, 0, 3);
  cluda_tensor tw = cluda_tensor_2d(CLUDA_F32, w, 3, 4), tdw = cluda_tensor_2d(CLUDA_F32, dw, 3, 4);
  cluda_tensor tb = cluda_tensor_1d(CLUDA_F32, b, 3), tdb = cluda_tensor_1d(CLUDA_F32, db, 3);
  TEST_OK(cluda_linear_forward(&ctx, &x0, &tw, &tb, &y0));
  TEST_OK(cluda_linear_backward(&ctx, &x0, &tw, &y0, &x0, &tdw, &tdb));
  TEST_CHECK(db[0] == 1.0f && db[1] == 1.0f && db[2] == 1.0f, "linear no rows: db unchanged");

  /* in = 0: y = b, dw is empty, db += column sums of dy */
  cluda_tensor xe = cluda_tensor_2d(CLUDA_F32, one, 2, 0),
               we = cluda_tensor_2d(CLUDA_F32, one, 3, 0);
  cluda_tensor ty = cluda_tensor_2d(CLUDA_F32, y, 2, 3), tdy = cluda_tensor_2d(CLUDA_F32, dy, 2, 3);
  cluda_tensor dwe = cluda_tensor_2d(CLUDA_F32, one, 3, 0);
  TEST_OK(cluda_linear_forward(&ctx, &xe, &we, &tb, &ty));
  TEST_CHECK(y[0] == 1.0f && y[4] == -2.0f && y[5] == 0.5f, "linear in=0: y = b");
  TEST_OK(cluda_linear_forward(&ctx, &xe, &we, NULL, &ty));
  TEST_CHECK(y[0] == 0.0f && y[4] == 0.0f, "linear in=0 without bias: y = 0");
  TEST_OK(cluda_linear_backward(&ctx, &xe, &we, &tdy, &xe, &dwe, &tdb));
  TEST_CHECK(db[0] == 6.0f && db[1] == 8.0f && db[2] == 10.0f, "linear in=0: db += sum dy");
}

/* A shape big enough for the threaded paths, against an analytic double reference, and
 * bit-identical for 1 and 2 threads. */
static void check_threaded(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int lead[2] = {8, 61}, in = 96, out = 80;
  const int64_t rows = 8 * 61, nx = rows * in, ny = rows * out, nw = (int64_t)in * out;
  float *x = test_alloc_f32(nx), *w = test_alloc_f32(nw), *b = test_alloc_f32(out),
        *y = test_alloc_f32(ny), *dy = test_alloc_f32(ny);
  float *dx[2], *dw[2], *db[2], *yy[2];
  test_fill_uniform(x, nx, -1.0f, 1.0f, 7, 0);
  test_fill_uniform(w, nw, -1.0f, 1.0f, 7, 1);
  test_fill_uniform(b, out, -1.0f, 1.0f, 7, 2);
  test_fill_uniform(dy, ny, -1.0f, 1.0f, 7, 3);
  cluda_tensor tx = make(3, lead, in, x), tdy = make(3, lead, out, dy);
  cluda_tensor tw = cluda_tensor_2d(CLUDA_F32, w, out, in), tb = cluda_tensor_1d(CLUDA_F32, b, out);
  for (int t = 0; t < 2; t++) {
    omp_set_num_threads(t + 1);
    yy[t] = test_alloc_f32(ny), dx[t] = test_alloc_f32(nx), dw[t] = test_alloc_f32(nw),
    db[t] = test_alloc_f32(out);
    cluda_tensor ty = make(3, lead, out, yy[t]), tdx = make(3, lead, in, dx[t]);
    cluda_tensor tdw = cluda_tensor_2d(CLUDA_F32, dw[t], out, in),
                 tdb = cluda_tensor_1d(CLUDA_F32, db[t], out);
    TEST_OK(cluda_linear_forward(&ctx, &tx, &tw, &tb, &ty));
    TEST_OK(cluda_linear_backward(&ctx, &tx, &tw, &tdy, &tdx, &tdw, &tdb));
  }
  omp_set_num_threads(2);
  TEST_CHECK(
      memcmp(yy[0], yy[1], (size_t)ny * 4) == 0 && memcmp(dx[0], dx[1], (size_t)nx * 4) == 0 &&
          memcmp(dw[0], dw[1], (size_t)nw * 4) == 0 && memcmp(db[0], db[1], (size_t)out * 4) == 0,
      "linear: results bit-identical for 1 and 2 threads");

  double *want = test_alloc_f64(ny > nx ? ny : nx);
  for (int64_t r = 0; r < rows; r++)
    for (int o = 0; o < out; o++) {
      double s = b[o];
      for (int i = 0; i < in; i++)
        s += (double)x[r * in + i] * w[o * in + i];
      want[r * out + o] = s;
    }
  test_compare("linear threaded: forward", yy[1], want, ny, 1e-5, 1e-5);
  for (int64_t r = 0; r < rows; r++)
    for (int i = 0; i < in; i++) {
      double s = 0.0;
      for (int o = 0; o < out; o++)
        s += (double)dy[r * out + o] * w[o * in + i];
      want[r * in + i] = s;
    }
  test_compare("linear threaded: dx", dx[1], want, nx, 1e-5, 1e-5);
  for (int o = 0; o < out; o++)
    for (int i = 0; i < in; i++) {
      double s = 0.0;
      for (int64_t r = 0; r < rows; r++)
        s += (double)dy[r * out + o] * x[r * in + i];
      want[o * in + i] = s;
    }
  test_compare("linear threaded: dw", dw[1], want, nw, 1e-5, 1e-4);
  for (int o = 0; o < out; o++) {
    double s = 0.0;
    for (int64_t r = 0; r < rows; r++)
      s += dy[r * out + o];
    want[o] = s;
  }
  test_compare("linear threaded: db", db[1], want, out, 1e-6, 1e-5);
  for (int t = 0; t < 2; t++)
    free(yy[t]), free(dx[t]), free(dw[t]), free(db[t]);
  free(x), free(w), free(b), free(y), free(dy), free(want);
}

static void check_validation(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  float buf[256] = {0};
  cluda_tensor x = cluda_tensor_3d(CLUDA_F32, buf, 2, 3, 5),
               w = cluda_tensor_2d(CLUDA_F32, buf, 4, 5);
  cluda_tensor b = cluda_tensor_1d(CLUDA_F32, buf, 4), y = cluda_tensor_3d(CLUDA_F32, buf, 2, 3, 4);
  cluda_tensor dw = w, db = b, dx = x, dy = y;
  TEST_OK(cluda_linear_forward(&ctx, &x, &w, &b, &y));
  TEST_OK(cluda_linear_backward(&ctx, &x, &w, &dy, &dx, &dw, &db));

  TEST_FAILS(cluda_linear_forward(&ctx, NULL, &w, &b, &y), CLUDA_ERR_ARG, "x is NULL");
  TEST_FAILS(cluda_linear_forward(&ctx, &x, NULL, &b, &y), CLUDA_ERR_ARG, "w is NULL");
  TEST_FAILS(cluda_linear_forward(&ctx, &x, &w, &b, NULL), CLUDA_ERR_ARG, "y is NULL");
  TEST_FAILS(cluda_linear_forward(NULL, &x, &w, &b, &y), CLUDA_ERR_ARG, "ctx");
  cluda_tensor xu8 = x;
  xu8.dtype = CLUDA_U8;
  TEST_FAILS(cluda_linear_forward(&ctx, &xu8, &w, &b, &y), CLUDA_ERR_DTYPE, "x");
  cluda_tensor nodata = x;
  nodata.data = NULL;
  TEST_FAILS(cluda_linear_forward(&ctx, &nodata, &w, &b, &y), CLUDA_ERR_ARG, "x");
  cluda_tensor w3 = cluda_tensor_3d(CLUDA_F32, buf, 4, 5, 1);
  TEST_FAILS(cluda_linear_forward(&ctx, &x, &w3, &b, &y), CLUDA_ERR_SHAPE, "w");
  cluda_tensor wbad = cluda_tensor_2d(CLUDA_F32, buf, 4, 6);
  TEST_FAILS(cluda_linear_forward(&ctx, &x, &wbad, &b, &y), CLUDA_ERR_SHAPE, "linear_forward: w");
  cluda_tensor bbad = cluda_tensor_1d(CLUDA_F32, buf, 5);
  TEST_FAILS(cluda_linear_forward(&ctx, &x, &w, &bbad, &y), CLUDA_ERR_SHAPE, "b [5]");
  cluda_tensor b2 = cluda_tensor_2d(CLUDA_F32, buf, 1, 4);
  TEST_FAILS(cluda_linear_forward(&ctx, &x, &w, &b2, &y), CLUDA_ERR_SHAPE, "b");
  cluda_tensor yout = cluda_tensor_3d(CLUDA_F32, buf, 2, 3, 5);
  TEST_FAILS(cluda_linear_forward(&ctx, &x, &w, &b, &yout), CLUDA_ERR_SHAPE, "y [2,3,5]");
  cluda_tensor ylead = cluda_tensor_3d(CLUDA_F32, buf, 3, 2, 4);
  TEST_FAILS(cluda_linear_forward(&ctx, &x, &w, &b, &ylead), CLUDA_ERR_SHAPE, "y [3,2,4]");
  cluda_tensor yrank = cluda_tensor_2d(CLUDA_F32, buf, 6, 4);
  TEST_FAILS(cluda_linear_forward(&ctx, &x, &w, &b, &yrank), CLUDA_ERR_SHAPE, "y [6,4]");

  TEST_FAILS(cluda_linear_backward(&ctx, &x, &w, &yout, &dx, &dw, &db), CLUDA_ERR_SHAPE, "dy");
  TEST_FAILS(cluda_linear_backward(&ctx, &x, &w, NULL, &dx, &dw, &db), CLUDA_ERR_ARG, "dy is NULL");
  TEST_FAILS(cluda_linear_backward(&ctx, &x, &w, &dy, &y, &dw, &db), CLUDA_ERR_SHAPE, "dx");
  TEST_FAILS(cluda_linear_backward(&ctx, &x, &w, &dy, &dx, NULL, &db), CLUDA_ERR_ARG, "dw is NULL");
  TEST_FAILS(cluda_linear_backward(&ctx, &x, &w, &dy, &dx, &wbad, &db), CLUDA_ERR_SHAPE, "dw");
  TEST_FAILS(cluda_linear_backward(&ctx, &x, &w, &dy, &dx, &dw, &bbad), CLUDA_ERR_SHAPE, "db");
  TEST_FAILS(cluda_linear_backward(&ctx, &x, &wbad, &dy, &dx, &dw, &db), CLUDA_ERR_SHAPE, "w");
  cluda_tensor dyu8 = dy;
  dyu8.dtype = CLUDA_U8;
  TEST_FAILS(cluda_linear_backward(&ctx, &x, &w, &dyu8, &dx, &dw, &db), CLUDA_ERR_DTYPE, "dy");
}

int main(int argc, char **argv) {
  (void)argc;
  const int l1[1] = {0}, l2[1] = {6}, l3[2] = {2, 3}, l4[3] = {2, 3, 2}, lone[1] = {1};
  check_linear(1, l1, 7, 3, 1, 1);   /* a single vector */
  check_linear(2, l2, 7, 5, 1, 2);   /* [rows, in] */
  check_linear(2, l2, 7, 5, 0, 3);   /* no bias */
  check_linear(3, l3, 5, 4, 1, 4);   /* [B, N, C] */
  check_linear(4, l4, 5, 6, 1, 5);   /* NHWC */
  check_linear(4, l4, 3, 9, 0, 6);   /* NHWC, no bias, out > in */
  check_linear(2, lone, 1, 1, 1, 7); /* 1 x 1 */
  check_degenerate();
  check_threaded();
  check_validation();
  return test_finish(argv[0]);
}

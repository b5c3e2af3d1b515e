/* Linear layer y[..., out] = x[..., in] w[out, in]^T + b[out] over any leading dims (the
 * leading dims are flattened into rows). All matrix products go through cblas_sgemm. */
#include <cblas.h>
#include <limits.h>
#include <string.h>

#include "op_common.h"
#include "reduce.h"

#define DESC(t, buf) cluda_tensor_describe((t), (buf), sizeof(buf))

/* Fails unless t has a's rank and leading dims and `cols` columns. */
static cluda_status check_rows_like(const char *op, const char *t_name, const cluda_tensor *t,
                                    const char *a_name, const cluda_tensor *a, int cols) {
  char dt[64], da[64];
  int ok = t->ndim == a->ndim && cluda_tensor_cols(t) == cols;
  for (int i = 0; ok && i + 1 < a->ndim; i++)
    ok = t->shape[i] == a->shape[i];
  CLUDA_REQUIRE(ok, CLUDA_ERR_SHAPE, "%s: %s %s must have the leading dims of %s %s and %d columns",
                op, t_name, DESC(t, dt), a_name, DESC(a, da), cols);
  return cluda_ok();
}

/* Common checks of x and w: w is [out, in] with in = x's last dim. */
static cluda_status check_x_w(const char *op, const cluda_tensor *x, const cluda_tensor *w) {
  char dx[64], dw[64];
  CLUDA_TRY(cluda_check_tensor(op, "x", x, CLUDA_F32, -1));
  CLUDA_TRY(cluda_check_tensor(op, "w", w, CLUDA_F32, 2));
  CLUDA_REQUIRE(w->shape[1] == cluda_tensor_cols(x), CLUDA_ERR_SHAPE,
                "%s: w %s must be [out, %d] to match x %s", op, DESC(w, dw), cluda_tensor_cols(x),
                DESC(x, dx));
  /* BLAS takes 32-bit sizes */
  CLUDA_REQUIRE(cluda_tensor_rows(x) <= INT_MAX, CLUDA_ERR_SHAPE,
                "%s: x %s has more than INT_MAX rows", op, DESC(x, dx));
  return cluda_ok();
}

static cluda_status check_bias(const char *op, const char *name, const cluda_tensor *b, int out) {
  char d[64];
  if (!b) return cluda_ok();
  CLUDA_TRY(cluda_check_tensor(op, name, b, CLUDA_F32, 1));
  CLUDA_REQUIRE(b->shape[0] == out, CLUDA_ERR_SHAPE, "%s: %s %s must be [%d] (w's out)", op, name,
                DESC(b, d), out);
  return cluda_ok();
}

cluda_status cluda_linear_forward(cluda_ctx *ctx, const cluda_tensor *x, const cluda_tensor *w,
                                  const cluda_tensor *b, cluda_tensor *y) {
  const char *op = "linear_forward";
  CLUDA_TRY(check_x_w(op, x, w));
  CLUDA_TRY(check_bias(op, "b", b, w->shape[0]));
  CLUDA_TRY(cluda_check_tensor(op, "y", y, CLUDA_F32, -1));
  CLUDA_TRY(check_rows_like(op, "y", y, "x", x, w->shape[0]));
  CLUDA_DISPATCH(ctx, linear_forward, x, w, b, y);
}

cluda_status cluda_linear_backward(cluda_ctx *ctx, const cluda_tensor *x, const cluda_tensor *w,
                                   const cluda_tensor *dy, cluda_tensor *dx, cluda_tensor *dw,
                                   cluda_tensor *db) {
  const char *op = "linear_backward";
  CLUDA_TRY(check_x_w(op, x, w));
  CLUDA_TRY(cluda_check_tensor(op, "dy", dy, CLUDA_F32, -1));
  CLUDA_TRY(check_rows_like(op, "dy", dy, "x", x, w->shape[0]));
  if (dx) {
    CLUDA_TRY(cluda_check_tensor(op, "dx", dx, CLUDA_F32, -1));
    CLUDA_REQUIRE_SAME_SHAPE(op, "dx", dx, "x", x);
  }
  CLUDA_TRY(cluda_check_tensor(op, "dw", dw, CLUDA_F32, 2));
  CLUDA_REQUIRE_SAME_SHAPE(op, "dw", dw, "w", w);
  CLUDA_TRY(check_bias(op, "db", db, w->shape[0]));
  CLUDA_DISPATCH(ctx, linear_backward, x, w, dy, dx, dw, db);
}

/* ---- CPU implementations ---- */

/* out[c] += sum over rows of a[r, c]. Threads own disjoint column blocks and sum their rows
 * serially in double, so the result does not depend on the thread count. */
static void add_column_sums(const float *a, int64_t rows, int cols, float *out) {
  int nblocks = (cols + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if (nblocks > 1 && rows * cols > 32768)
  for (int blk = 0; blk < nblocks; blk++) {
    int c0 = blk * COL_BLOCK;
    int width = cols - c0 < COL_BLOCK ? cols - c0 : COL_BLOCK;
    double acc[COL_BLOCK] = {0};
    for (int64_t r = 0; r < rows; r++) {
      const float *row = a + r * cols + c0;
      for (int c = 0; c < width; c++)
        acc[c] += row[c];
    }
    for (int c = 0; c < width; c++)
      out[c0 + c] += (float)acc[c];
  }
}

cluda_status cluda_cpu_linear_forward(cluda_ctx *ctx, const cluda_tensor *x, const cluda_tensor *w,
                                      const cluda_tensor *b, cluda_tensor *y) {
  (void)ctx;
  int64_t rows = cluda_tensor_rows(x);
  int in = cluda_tensor_cols(x), out = w->shape[0];
  float *py = cluda_f32(y);
  if (rows == 0 || out == 0) return cluda_ok();
  if (b) {
    /* seed y with the bias and let sgemm accumulate onto it (beta = 1) */
    const float *pb = cluda_f32(b);
#pragma omp parallel for schedule(static) if (rows * out > 65536)
    for (int64_t r = 0; r < rows; r++)
      memcpy(py + r * out, pb, (size_t)out * sizeof(float));
  } else if (in == 0) {
    memset(py, 0, (size_t)rows * (size_t)out * sizeof(float));
  }
  if (in == 0) return cluda_ok(); /* BLAS rejects zero leading dimensions */
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)rows, out, in, 1.0f, cluda_f32(x), in,
              cluda_f32(w), in, b ? 1.0f : 0.0f, py, out);
  return cluda_ok();
}

cluda_status cluda_cpu_linear_backward(cluda_ctx *ctx, const cluda_tensor *x, const cluda_tensor *w,
                                       const cluda_tensor *dy, cluda_tensor *dx, cluda_tensor *dw,
                                       cluda_tensor *db) {
  (void)ctx;
  int64_t rows = cluda_tensor_rows(x);
  int in = cluda_tensor_cols(x), out = w->shape[0];
  const float *px = cluda_f32(x), *pw = cluda_f32(w), *pdy = cluda_f32(dy);
  if (rows == 0) return cluda_ok(); /* dx is empty and nothing is added to dw, db */
  if (dx && in > 0) {
    /* dx[rows, in] = dy[rows, out] w[out, in] */
    if (out > 0)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)rows, in, out, 1.0f, pdy, out, pw,
                  in, 0.0f, cluda_f32(dx), in);
    else
      memset(cluda_f32(dx), 0, (size_t)rows * (size_t)in * sizeof(float));
  }
  /* dw[out, in] += dy^T[out, rows] x[rows, in] */
  if (out > 0 && in > 0)
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out, in, (int)rows, 1.0f, pdy, out, px, in,
                1.0f, cluda_f32(dw), in);
  if (db && out > 0) add_column_sums(pdy, rows, out, cluda_f32(db));
  return cluda_ok();
}

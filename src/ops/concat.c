/* Concatenation and slicing along the last (channel) axis of tensors with any leading
 * dimensions: a row-by-row copy of contiguous channel runs. */
#include <stdio.h>
#include <string.h>

#include "op_common.h"

/* Row copies are memory bound; threads only pay for big tensors. */
enum { kParallelFloats = 1 << 16 };

/* The leading dimensions (all but the last) of a and b agree. */
static int same_leading(const cluda_tensor *a, const cluda_tensor *b) {
  if (a->ndim != b->ndim) return 0;
  for (int i = 0; i + 1 < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return 0;
  return 1;
}

/* count inputs (or input gradients) named `parts`, against the concatenated y (or dy). */
static cluda_status check_concat(const char *op, int count, const cluda_tensor *const *xs,
                                 const char *parts, const char *whole_name,
                                 const cluda_tensor *whole) {
  char dx[64], dw[64], name[32];
  CLUDA_REQUIRE(count >= 1, CLUDA_ERR_ARG, "%s: count = %d must be >= 1", op, count);
  CLUDA_REQUIRE(xs != NULL, CLUDA_ERR_ARG, "%s: %s is NULL", op, parts);
  CLUDA_TRY(cluda_check_tensor(op, whole_name, whole, CLUDA_F32, -1));
  int64_t total = 0;
  for (int i = 0; i < count; i++) {
    snprintf(name, sizeof name, "%s[%d]", parts, i);
    CLUDA_TRY(cluda_check_tensor(op, name, xs[i], CLUDA_F32, -1));
    CLUDA_REQUIRE(same_leading(xs[i], whole), CLUDA_ERR_SHAPE,
                  "%s: %s %s and %s %s must have the same dimensions but the last", op, name,
                  cluda_tensor_describe(xs[i], dx, sizeof dx), whole_name,
                  cluda_tensor_describe(whole, dw, sizeof dw));
    total += cluda_tensor_cols(xs[i]);
  }
  CLUDA_REQUIRE(total == cluda_tensor_cols(whole), CLUDA_ERR_SHAPE,
                "%s: the %d %s have %lld channels in all but %s %s has %d", op, count, parts,
                (long long)total, whole_name, cluda_tensor_describe(whole, dw, sizeof dw),
                cluda_tensor_cols(whole));
  return cluda_ok();
}

/* x holds the channel range [begin, begin + part channels) of whole. */
static cluda_status check_slice(const char *op, int begin, const char *part_name,
                                const cluda_tensor *part, const char *whole_name,
                                const cluda_tensor *whole) {
  char dp[64], dw[64];
  CLUDA_TRY(cluda_check_tensor(op, whole_name, whole, CLUDA_F32, -1));
  CLUDA_TRY(cluda_check_tensor(op, part_name, part, CLUDA_F32, -1));
  CLUDA_REQUIRE(same_leading(part, whole), CLUDA_ERR_SHAPE,
                "%s: %s %s and %s %s must have the same dimensions but the last", op, part_name,
                cluda_tensor_describe(part, dp, sizeof dp), whole_name,
                cluda_tensor_describe(whole, dw, sizeof dw));
  CLUDA_REQUIRE(begin >= 0 && (int64_t)begin + cluda_tensor_cols(part) <= cluda_tensor_cols(whole),
                CLUDA_ERR_ARG, "%s: begin = %d with %s %s runs past the %d channels of %s %s", op,
                begin, part_name, cluda_tensor_describe(part, dp, sizeof dp),
                cluda_tensor_cols(whole), whole_name, cluda_tensor_describe(whole, dw, sizeof dw));
  return cluda_ok();
}

cluda_status cluda_concat_forward(cluda_ctx *ctx, int count, const cluda_tensor *const *xs,
                                  cluda_tensor *y) {
  CLUDA_TRY(check_concat("concat_forward", count, xs, "xs", "y", y));
  CLUDA_DISPATCH(ctx, concat_forward, count, xs, y);
}

cluda_status cluda_concat_backward(cluda_ctx *ctx, int count, const cluda_tensor *dy,
                                   cluda_tensor *const *dxs) {
  CLUDA_TRY(
      check_concat("concat_backward", count, (const cluda_tensor *const *)dxs, "dxs", "dy", dy));
  CLUDA_DISPATCH(ctx, concat_backward, count, dy, dxs);
}

cluda_status cluda_slice_forward(cluda_ctx *ctx, int begin, const cluda_tensor *x,
                                 cluda_tensor *y) {
  CLUDA_TRY(check_slice("slice_forward", begin, "y", y, "x", x));
  CLUDA_DISPATCH(ctx, slice_forward, begin, x, y);
}

cluda_status cluda_slice_backward(cluda_ctx *ctx, int begin, const cluda_tensor *dy,
                                  cluda_tensor *dx) {
  CLUDA_TRY(check_slice("slice_backward", begin, "dy", dy, "dx", dx));
  CLUDA_DISPATCH(ctx, slice_backward, begin, dy, dx);
}

/* ---- CPU implementations ---- */

/* Copies the channel run [begin, begin + cp) of every row of a [rows, ca] matrix into
 * columns [to, to + cp) of a [rows, cb] matrix. Rows are independent. */
static void copy_columns(const float *a, int ca, int begin, float *b, int cb, int to, int cp,
                         int64_t rows) {
  if (cp == 0) return;
#pragma omp parallel for schedule(static) if (rows * cp > kParallelFloats)
  for (int64_t r = 0; r < rows; r++)
    memcpy(b + r * cb + to, a + r * ca + begin, (size_t)cp * sizeof(float));
}

cluda_status cluda_cpu_concat_forward(cluda_ctx *ctx, int count, const cluda_tensor *const *xs,
                                      cluda_tensor *y) {
  (void)ctx;
  const int64_t rows = cluda_tensor_rows(y);
  const int cy = cluda_tensor_cols(y);
  int at = 0;
  for (int i = 0; i < count; i++) {
    const int ci = cluda_tensor_cols(xs[i]);
    copy_columns(cluda_f32(xs[i]), ci, 0, cluda_f32(y), cy, at, ci, rows);
    at += ci;
  }
  return cluda_ok();
}

cluda_status cluda_cpu_concat_backward(cluda_ctx *ctx, int count, const cluda_tensor *dy,
                                       cluda_tensor *const *dxs) {
  (void)ctx;
  const int64_t rows = cluda_tensor_rows(dy);
  const int cy = cluda_tensor_cols(dy);
  int at = 0;
  for (int i = 0; i < count; i++) {
    const int ci = cluda_tensor_cols(dxs[i]);
    copy_columns(cluda_f32(dy), cy, at, cluda_f32(dxs[i]), ci, 0, ci, rows);
    at += ci;
  }
  return cluda_ok();
}

cluda_status cluda_cpu_slice_forward(cluda_ctx *ctx, int begin, const cluda_tensor *x,
                                     cluda_tensor *y) {
  (void)ctx;
  const int cy = cluda_tensor_cols(y);
  copy_columns(cluda_f32(x), cluda_tensor_cols(x), begin, cluda_f32(y), cy, 0, cy,
               cluda_tensor_rows(y));
  return cluda_ok();
}

cluda_status cluda_cpu_slice_backward(cluda_ctx *ctx, int begin, const cluda_tensor *dy,
                                      cluda_tensor *dx) {
  (void)ctx;
  const int64_t rows = cluda_tensor_rows(dx);
  const int cx = cluda_tensor_cols(dx), cy = cluda_tensor_cols(dy);
  const float *g = cluda_f32(dy);
  float *out = cluda_f32(dx);
  if (cx == 0) return cluda_ok(); /* nothing to write (data may be NULL) */
                                  /* one pass per row: zeros, the gradient run, zeros */
#pragma omp parallel for schedule(static) if (rows * cx > kParallelFloats)
  for (int64_t r = 0; r < rows; r++) {
    float *row = out + r * cx;
    memset(row, 0, (size_t)begin * sizeof(float));
    if (cy > 0) memcpy(row + begin, g + r * cy, (size_t)cy * sizeof(float));
    memset(row + begin + cy, 0, (size_t)(cx - begin - cy) * sizeof(float));
  }
  return cluda_ok();
}

/* Softmax over the last axis, max-subtracted so large logits cannot overflow. The backward
 * works from the output: dx = y (dy - sum(dy y)). */
#include <math.h>

#include "op_common.h"
#include "reduce.h"

cluda_status cluda_softmax_forward(cluda_ctx *ctx, const cluda_tensor *x, cluda_tensor *y) {
  const char *op = "softmax_forward";
  CLUDA_TRY(cluda_check_tensor(op, "x", x, CLUDA_F32, -1));
  CLUDA_TRY(cluda_check_tensor(op, "y", y, CLUDA_F32, -1));
  CLUDA_REQUIRE_SAME_SHAPE(op, "y", y, "x", x);
  CLUDA_DISPATCH(ctx, softmax_forward, x, y);
}

cluda_status cluda_softmax_backward(cluda_ctx *ctx, const cluda_tensor *y, const cluda_tensor *dy,
                                    cluda_tensor *dx) {
  const char *op = "softmax_backward";
  CLUDA_TRY(cluda_check_tensor(op, "y", y, CLUDA_F32, -1));
  CLUDA_TRY(cluda_check_tensor(op, "dy", dy, CLUDA_F32, -1));
  CLUDA_REQUIRE_SAME_SHAPE(op, "dy", dy, "y", y);
  CLUDA_TRY(cluda_check_tensor(op, "dx", dx, CLUDA_F32, -1));
  CLUDA_REQUIRE_SAME_SHAPE(op, "dx", dx, "y", y);
  CLUDA_DISPATCH(ctx, softmax_backward, y, dy, dx);
}

/* ---- CPU implementations: rows are independent, one per iteration ---- */

cluda_status cluda_cpu_softmax_forward(cluda_ctx *ctx, const cluda_tensor *x, cluda_tensor *y) {
  (void)ctx;
  const int c = cluda_tensor_cols(x);
  const int64_t rows = cluda_tensor_rows(x);
  const float *px = cluda_f32(x);
  float *py = cluda_f32(y);
  if (c == 0) return cluda_ok();
#pragma omp parallel for schedule(static) if (rows * c > 16384)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = px + r * c;
    float *yr = py + r * c;
    float mx = xr[0];
    for (int i = 1; i < c; i++)
      mx = xr[i] > mx ? xr[i] : mx;
    for (int i = 0; i < c; i++)
      yr[i] = expf(xr[i] - mx);
    const double s = row_sum(yr, c);
    const float inv = (float)(1.0 / s);
    for (int i = 0; i < c; i++)
      yr[i] *= inv;
  }
  return cluda_ok();
}

cluda_status cluda_cpu_softmax_backward(cluda_ctx *ctx, const cluda_tensor *y,
                                        const cluda_tensor *dy, cluda_tensor *dx) {
  (void)ctx;
  const int c = cluda_tensor_cols(y);
  const int64_t rows = cluda_tensor_rows(y);
  const float *py = cluda_f32(y), *pdy = cluda_f32(dy);
  float *pdx = cluda_f32(dx);
#pragma omp parallel for schedule(static) if (rows * c > 16384)
  for (int64_t r = 0; r < rows; r++) {
    const float *yr = py + r * c, *dyr = pdy + r * c;
    float *dxr = pdx + r * c;
    const double dot = row_dot(dyr, yr, c);
    /* dy - dot can cancel, so form it in double */
    for (int i = 0; i < c; i++)
      dxr[i] = (float)(yr[i] * (dyr[i] - dot));
  }
  return cluda_ok();
}

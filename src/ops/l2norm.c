/* L2 normalisation over the last axis with F.normalize semantics:
 * y = x / max(||x||, eps); the forward saves ||x|| per row. Where ||x|| >= eps the gradient
 * flows through the norm, dx = (dy - y (y . dy)) / ||x||; below eps the divisor is the
 * constant eps, dx = dy / eps (PyTorch's clamp_min passes the gradient where norm >= eps). */
#include <math.h>

#include "op_common.h"
#include "reduce.h"

#define DESC(t, buf) cluda_tensor_describe((t), (buf), sizeof(buf))

static cluda_status check_common(const char *op, float eps, const cluda_tensor *x,
                                 const cluda_tensor *norms) {
  char d[64], dx[64];
  CLUDA_REQUIRE(eps > 0.0f && isfinite(eps), CLUDA_ERR_ARG,
                "%s: eps %g must be positive and finite", op, (double)eps);
  CLUDA_TRY(cluda_check_tensor(op, "x", x, CLUDA_F32, -1));
  CLUDA_TRY(cluda_check_tensor(op, "norms", norms, CLUDA_F32, 1));
  CLUDA_REQUIRE(norms->shape[0] == cluda_tensor_rows(x), CLUDA_ERR_SHAPE,
                "%s: norms %s must be [%lld] (one per row of x %s)", op, DESC(norms, d),
                (long long)cluda_tensor_rows(x), DESC(x, dx));
  return cluda_ok();
}

cluda_status cluda_l2norm_forward(cluda_ctx *ctx, float eps, const cluda_tensor *x, cluda_tensor *y,
                                  cluda_tensor *norms) {
  const char *op = "l2norm_forward";
  CLUDA_TRY(check_common(op, eps, x, norms));
  CLUDA_TRY(cluda_check_tensor(op, "y", y, CLUDA_F32, -1));
  CLUDA_REQUIRE_SAME_SHAPE(op, "y", y, "x", x);
  CLUDA_DISPATCH(ctx, l2norm_forward, eps, x, y, norms);
}

cluda_status cluda_l2norm_backward(cluda_ctx *ctx, float eps, const cluda_tensor *x,
                                   const cluda_tensor *norms, const cluda_tensor *dy,
                                   cluda_tensor *dx) {
  const char *op = "l2norm_backward";
  CLUDA_TRY(check_common(op, eps, x, norms));
  CLUDA_TRY(cluda_check_tensor(op, "dy", dy, CLUDA_F32, -1));
  CLUDA_REQUIRE_SAME_SHAPE(op, "dy", dy, "x", x);
  CLUDA_TRY(cluda_check_tensor(op, "dx", dx, CLUDA_F32, -1));
  CLUDA_REQUIRE_SAME_SHAPE(op, "dx", dx, "x", x);
  CLUDA_DISPATCH(ctx, l2norm_backward, eps, x, norms, dy, dx);
}

/* ---- CPU implementations: rows are independent, one per iteration ---- */

cluda_status cluda_cpu_l2norm_forward(cluda_ctx *ctx, float eps, const cluda_tensor *x,
                                      cluda_tensor *y, cluda_tensor *norms) {
  (void)ctx;
  const int c = cluda_tensor_cols(x);
  const int64_t rows = cluda_tensor_rows(x);
  const float *px = cluda_f32(x);
  float *py = cluda_f32(y), *pn = cluda_f32(norms);
#pragma omp parallel for schedule(static) if (rows * c > 16384)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = px + r * c;
    float *yr = py + r * c;
    /* double: no overflow or underflow of the squares of any float */
    const double ss = row_dot(xr, xr, c);
    const double norm = sqrt(ss);
    pn[r] = (float)norm;
    /* the regime is decided on the saved float norm, as the backward sees it */
    const double inv = pn[r] >= eps ? 1.0 / norm : 1.0 / (double)eps;
    for (int i = 0; i < c; i++)
      yr[i] = (float)(xr[i] * inv);
  }
  return cluda_ok();
}

cluda_status cluda_cpu_l2norm_backward(cluda_ctx *ctx, float eps, const cluda_tensor *x,
                                       const cluda_tensor *norms, const cluda_tensor *dy,
                                       cluda_tensor *dx) {
  (void)ctx;
  const int c = cluda_tensor_cols(x);
  const int64_t rows = cluda_tensor_rows(x);
  const float *px = cluda_f32(x), *pn = cluda_f32(norms), *pdy = cluda_f32(dy);
  float *pdx = cluda_f32(dx);
#pragma omp parallel for schedule(static) if (rows * c > 16384)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = px + r * c, *dyr = pdy + r * c;
    float *dxr = pdx + r * c;
    if (pn[r] >= eps) {
      /* dx = (dy - y (y . dy)) / n with y = x / n, i.e. dy / n - x (x . dy) / n^3 */
      const double inv = 1.0 / (double)pn[r];
      const double dot = row_dot(xr, dyr, c);
      const double k = dot * inv * inv;
      for (int i = 0; i < c; i++)
        dxr[i] = (float)((dyr[i] - xr[i] * k) * inv);
    } else {
      const double inv = 1.0 / (double)eps;
      for (int i = 0; i < c; i++)
        dxr[i] = (float)(dyr[i] * inv);
    }
  }
  return cluda_ok();
}

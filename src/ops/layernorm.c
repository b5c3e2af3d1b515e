/* LayerNorm over the last axis (nn.LayerNorm(C, eps), affine, biased variance). The forward
 * saves the row mean and rstd = 1 / sqrt(var + eps) for the backward. */
#include <math.h>

#include "op_common.h"
#include "reduce.h"

#define DESC(t, buf) cluda_tensor_describe((t), (buf), sizeof(buf))

/* Fails unless t is an f32 vector of n elements. */
static cluda_status check_vector(const char *op, const char *name, const cluda_tensor *t, int64_t n,
                                 const char *what) {
  char d[64];
  CLUDA_TRY(cluda_check_tensor(op, name, t, CLUDA_F32, 1));
  CLUDA_REQUIRE(t->shape[0] == n, CLUDA_ERR_SHAPE, "%s: %s %s must be [%lld] (%s)", op, name,
                DESC(t, d), (long long)n, what);
  return cluda_ok();
}

static cluda_status check_x(const char *op, const cluda_tensor *x) {
  char d[64];
  CLUDA_TRY(cluda_check_tensor(op, "x", x, CLUDA_F32, -1));
  CLUDA_REQUIRE(cluda_tensor_cols(x) > 0, CLUDA_ERR_SHAPE,
                "%s: x %s must have a non-empty last (normalised) dimension", op, DESC(x, d));
  return cluda_ok();
}

cluda_status cluda_layernorm_forward(cluda_ctx *ctx, const cluda_tensor *x,
                                     const cluda_tensor *gamma, const cluda_tensor *beta, float eps,
                                     cluda_tensor *y, cluda_tensor *mean, cluda_tensor *rstd) {
  const char *op = "layernorm_forward";
  CLUDA_TRY(check_x(op, x));
  int64_t c = cluda_tensor_cols(x), rows = cluda_tensor_rows(x);
  CLUDA_TRY(check_vector(op, "gamma", gamma, c, "the last dim of x"));
  CLUDA_TRY(check_vector(op, "beta", beta, c, "the last dim of x"));
  CLUDA_REQUIRE(eps > 0.0f && isfinite(eps), CLUDA_ERR_ARG,
                "%s: eps %g must be positive and finite", op, (double)eps);
  CLUDA_TRY(cluda_check_tensor(op, "y", y, CLUDA_F32, -1));
  CLUDA_REQUIRE_SAME_SHAPE(op, "y", y, "x", x);
  CLUDA_TRY(check_vector(op, "mean", mean, rows, "one per row of x"));
  CLUDA_TRY(check_vector(op, "rstd", rstd, rows, "one per row of x"));
  CLUDA_DISPATCH(ctx, layernorm_forward, x, gamma, beta, eps, y, mean, rstd);
}

cluda_status cluda_layernorm_backward(cluda_ctx *ctx, const cluda_tensor *x,
                                      const cluda_tensor *gamma, const cluda_tensor *mean,
                                      const cluda_tensor *rstd, const cluda_tensor *dy,
                                      cluda_tensor *dx, cluda_tensor *dgamma, cluda_tensor *dbeta) {
  const char *op = "layernorm_backward";
  CLUDA_TRY(check_x(op, x));
  int64_t c = cluda_tensor_cols(x), rows = cluda_tensor_rows(x);
  CLUDA_TRY(check_vector(op, "gamma", gamma, c, "the last dim of x"));
  CLUDA_TRY(check_vector(op, "mean", mean, rows, "one per row of x"));
  CLUDA_TRY(check_vector(op, "rstd", rstd, rows, "one per row of x"));
  CLUDA_TRY(cluda_check_tensor(op, "dy", dy, CLUDA_F32, -1));
  CLUDA_REQUIRE_SAME_SHAPE(op, "dy", dy, "x", x);
  CLUDA_TRY(cluda_check_tensor(op, "dx", dx, CLUDA_F32, -1));
  CLUDA_REQUIRE_SAME_SHAPE(op, "dx", dx, "x", x);
  CLUDA_TRY(check_vector(op, "dgamma", dgamma, c, "the last dim of x"));
  CLUDA_TRY(check_vector(op, "dbeta", dbeta, c, "the last dim of x"));
  CLUDA_DISPATCH(ctx, layernorm_backward, x, gamma, mean, rstd, dy, dx, dgamma, dbeta);
}

/* ---- CPU implementations ---- */

/* sum of (a - m)^2 */
static double row_sqdev(const float *a, int n, double m) {
  double acc[LANES] = {0};
  int i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int j = 0; j < LANES; j++)
      acc[j] += (a[i + j] - m) * (a[i + j] - m);
  for (int j = 0; i < n; i++, j++)
    acc[j] += (a[i] - m) * (a[i] - m);
  return lanes_total(acc);
}

/* sg = sum dy gamma and sgx = sum dy gamma xhat with xhat = (x - m) rs */
static void row_backward_sums(const float *x, const float *dy, const float *g, int n, double m,
                              double rs, double *sg, double *sgx) {
  double ag[LANES] = {0}, agx[LANES] = {0};
  int i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int j = 0; j < LANES; j++) {
      double gi = (double)dy[i + j] * g[i + j];
      ag[j] += gi;
      agx[j] += gi * ((x[i + j] - m) * rs);
    }
  for (int j = 0; i < n; i++, j++) {
    double gi = (double)dy[i] * g[i];
    ag[j] += gi;
    agx[j] += gi * ((x[i] - m) * rs);
  }
  *sg = lanes_total(ag);
  *sgx = lanes_total(agx);
}

cluda_status cluda_cpu_layernorm_forward(cluda_ctx *ctx, const cluda_tensor *x,
                                         const cluda_tensor *gamma, const cluda_tensor *beta,
                                         float eps, cluda_tensor *y, cluda_tensor *mean,
                                         cluda_tensor *rstd) {
  (void)ctx;
  const int c = cluda_tensor_cols(x);
  const int64_t rows = cluda_tensor_rows(x);
  const float *px = cluda_f32(x), *g = cluda_f32(gamma), *b = cluda_f32(beta);
  float *py = cluda_f32(y), *pm = cluda_f32(mean), *pr = cluda_f32(rstd);
#pragma omp parallel for schedule(static) if (rows * c > 16384)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = px + r * c;
    float *yr = py + r * c;
    /* two passes in double over a row that stays in cache: exact enough even when the
     * mean is large compared with the spread */
    const double m = row_sum(xr, c) / c;
    const double v = row_sqdev(xr, c, m);
    const double rs = 1.0 / sqrt(v / c + (double)eps);
    pm[r] = (float)m;
    pr[r] = (float)rs;
    for (int i = 0; i < c; i++)
      yr[i] = (float)((xr[i] - m) * rs * g[i] + b[i]);
  }
  return cluda_ok();
}

cluda_status cluda_cpu_layernorm_backward(cluda_ctx *ctx, const cluda_tensor *x,
                                          const cluda_tensor *gamma, const cluda_tensor *mean,
                                          const cluda_tensor *rstd, const cluda_tensor *dy,
                                          cluda_tensor *dx, cluda_tensor *dgamma,
                                          cluda_tensor *dbeta) {
  (void)ctx;
  const int c = cluda_tensor_cols(x);
  const int64_t rows = cluda_tensor_rows(x);
  const float *px = cluda_f32(x), *g = cluda_f32(gamma), *pm = cluda_f32(mean),
              *pr = cluda_f32(rstd), *pdy = cluda_f32(dy);
  float *pdx = cluda_f32(dx), *dg = cluda_f32(dgamma), *dbt = cluda_f32(dbeta);

  /* dx = rstd (g - mean(g) - xhat mean(g xhat)) with g = dy gamma, one row per iteration */
#pragma omp parallel for schedule(static) if (rows * c > 16384)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = px + r * c, *dyr = pdy + r * c;
    float *dxr = pdx + r * c;
    const double m = pm[r], rs = pr[r];
    double sg, sgx;
    row_backward_sums(xr, dyr, g, c, m, rs, &sg, &sgx);
    const double a = sg / c, k = sgx / c;
    for (int i = 0; i < c; i++)
      dxr[i] = (float)(rs * ((double)dyr[i] * g[i] - a - (xr[i] - m) * rs * k));
  }

  /* dgamma += sum_rows dy xhat, dbeta += sum_rows dy: threads own disjoint column blocks and
   * walk the rows serially in double, so the sums do not depend on the thread count */
  const int nblocks = (c + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if (nblocks > 1 && rows * c > 32768)
  for (int blk = 0; blk < nblocks; blk++) {
    const int c0 = blk * COL_BLOCK;
    const int width = c - c0 < COL_BLOCK ? c - c0 : COL_BLOCK;
    double ag[COL_BLOCK] = {0}, ab[COL_BLOCK] = {0};
    for (int64_t r = 0; r < rows; r++) {
      const float *xr = px + r * c + c0, *dyr = pdy + r * c + c0;
      const double m = pm[r], rs = pr[r];
      for (int i = 0; i < width; i++) {
        ag[i] += (double)dyr[i] * ((xr[i] - m) * rs);
        ab[i] += dyr[i];
      }
    }
    for (int i = 0; i < width; i++) {
      dg[c0 + i] += (float)ag[i];
      dbt[c0 + i] += (float)ab[i];
    }
  }
  return cluda_ok();
}

/* BatchNorm2d on NHWC: per-channel statistics over N, H and W. Training normalises with the
 * batch mean and biased variance and moves the running statistics towards the batch mean
 * and the unbiased variance; inference normalises with the running statistics. */
#include <math.h>

#include "op_common.h"
#include "reduce.h"

#define DESC(t, buf) cluda_tensor_describe((t), (buf), sizeof(buf))

static cluda_status check_params(const char *op, const cluda_batchnorm_params *p) {
  CLUDA_REQUIRE(p != NULL, CLUDA_ERR_ARG, "%s: params p is NULL", op);
  CLUDA_REQUIRE(p->eps > 0.0f && isfinite(p->eps), CLUDA_ERR_ARG,
                "%s: eps %g must be positive and finite", op, (double)p->eps);
  CLUDA_REQUIRE(p->momentum >= 0.0f && p->momentum <= 1.0f, CLUDA_ERR_ARG,
                "%s: momentum %g must be in [0, 1]", op, (double)p->momentum);
  CLUDA_REQUIRE(p->training == 0 || p->training == 1, CLUDA_ERR_ARG,
                "%s: training %d must be 0 or 1", op, p->training);
  return cluda_ok();
}

/* Fails unless t is an f32 vector of x's C elements. */
static cluda_status check_channels(const char *op, const char *name, const cluda_tensor *t,
                                   const cluda_tensor *x) {
  char d[64], dx[64];
  CLUDA_TRY(cluda_check_tensor(op, name, t, CLUDA_F32, 1));
  CLUDA_REQUIRE(t->shape[0] == x->shape[3], CLUDA_ERR_SHAPE,
                "%s: %s %s must be [%d] (the channels of x %s)", op, name, DESC(t, d), x->shape[3],
                DESC(x, dx));
  return cluda_ok();
}

/* PyTorch refuses batch statistics of a single value per channel (the unbiased variance
 * would divide by zero). */
static cluda_status check_count(const char *op, const cluda_batchnorm_params *p,
                                const cluda_tensor *x) {
  char d[64];
  int64_t n = cluda_tensor_rows(x);
  CLUDA_REQUIRE(!p->training || n > 1, CLUDA_ERR_SHAPE,
                "%s: training needs more than 1 value per channel, but x %s has N*H*W = %lld", op,
                DESC(x, d), (long long)n);
  return cluda_ok();
}

cluda_status cluda_batchnorm_forward(cluda_ctx *ctx, const cluda_batchnorm_params *p,
                                     const cluda_tensor *x, const cluda_tensor *gamma,
                                     const cluda_tensor *beta, cluda_tensor *running_mean,
                                     cluda_tensor *running_var, cluda_tensor *y,
                                     cluda_tensor *save_mean, cluda_tensor *save_rstd) {
  const char *op = "batchnorm_forward";
  CLUDA_TRY(check_params(op, p));
  CLUDA_TRY(cluda_check_tensor(op, "x", x, CLUDA_F32, 4));
  CLUDA_TRY(check_channels(op, "gamma", gamma, x));
  CLUDA_TRY(check_channels(op, "beta", beta, x));
  CLUDA_TRY(check_channels(op, "running_mean", running_mean, x));
  CLUDA_TRY(check_channels(op, "running_var", running_var, x));
  CLUDA_TRY(cluda_check_tensor(op, "y", y, CLUDA_F32, 4));
  CLUDA_REQUIRE_SAME_SHAPE(op, "y", y, "x", x);
  CLUDA_TRY(check_channels(op, "save_mean", save_mean, x));
  CLUDA_TRY(check_channels(op, "save_rstd", save_rstd, x));
  CLUDA_TRY(check_count(op, p, x));
  CLUDA_DISPATCH(ctx, batchnorm_forward, p, x, gamma, beta, running_mean, running_var, y, save_mean,
                 save_rstd);
}

cluda_status cluda_batchnorm_backward(cluda_ctx *ctx, const cluda_batchnorm_params *p,
                                      const cluda_tensor *x, const cluda_tensor *gamma,
                                      const cluda_tensor *save_mean, const cluda_tensor *save_rstd,
                                      const cluda_tensor *dy, cluda_tensor *dx,
                                      cluda_tensor *dgamma, cluda_tensor *dbeta) {
  const char *op = "batchnorm_backward";
  CLUDA_TRY(check_params(op, p));
  CLUDA_TRY(cluda_check_tensor(op, "x", x, CLUDA_F32, 4));
  CLUDA_TRY(check_channels(op, "gamma", gamma, x));
  CLUDA_TRY(check_channels(op, "save_mean", save_mean, x));
  CLUDA_TRY(check_channels(op, "save_rstd", save_rstd, x));
  CLUDA_TRY(cluda_check_tensor(op, "dy", dy, CLUDA_F32, 4));
  CLUDA_REQUIRE_SAME_SHAPE(op, "dy", dy, "x", x);
  CLUDA_TRY(cluda_check_tensor(op, "dx", dx, CLUDA_F32, 4));
  CLUDA_REQUIRE_SAME_SHAPE(op, "dx", dx, "x", x);
  CLUDA_TRY(check_channels(op, "dgamma", dgamma, x));
  CLUDA_TRY(check_channels(op, "dbeta", dbeta, x));
  CLUDA_TRY(check_count(op, p, x));
  CLUDA_DISPATCH(ctx, batchnorm_backward, p, x, gamma, save_mean, save_rstd, dy, dx, dgamma, dbeta);
}

/* ---- CPU implementations ----
 * Channel reductions: each thread owns a block of COL_BLOCK channels and walks all N*H*W
 * rows serially, accumulating in double, so results do not depend on the thread count. */

static int block_width(int c, int c0) { return c - c0 < COL_BLOCK ? c - c0 : COL_BLOCK; }

cluda_status cluda_cpu_batchnorm_forward(cluda_ctx *ctx, const cluda_batchnorm_params *p,
                                         const cluda_tensor *x, const cluda_tensor *gamma,
                                         const cluda_tensor *beta, cluda_tensor *running_mean,
                                         cluda_tensor *running_var, cluda_tensor *y,
                                         cluda_tensor *save_mean, cluda_tensor *save_rstd) {
  (void)ctx;
  const int c = x->shape[3];
  const int64_t n = cluda_tensor_rows(x);
  const float *px = cluda_f32(x), *g = cluda_f32(gamma), *b = cluda_f32(beta);
  float *py = cluda_f32(y), *rm = cluda_f32(running_mean), *rv = cluda_f32(running_var);
  float *sm = cluda_f32(save_mean), *sr = cluda_f32(save_rstd);
  const double eps = p->eps, mom = p->momentum;

  if (!p->training) {
    for (int i = 0; i < c; i++) {
      sm[i] = rm[i];
      sr[i] = (float)(1.0 / sqrt((double)rv[i] + eps));
    }
#pragma omp parallel for schedule(static) if (n * c > 32768)
    for (int64_t r = 0; r < n; r++) {
      const float *xr = px + r * c;
      float *yr = py + r * c;
      for (int i = 0; i < c; i++)
        yr[i] = (float)(((double)xr[i] - sm[i]) * sr[i] * g[i] + b[i]);
    }
    return cluda_ok();
  }

  const int nblocks = (c + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if (nblocks > 1 && n * c > 32768)
  for (int blk = 0; blk < nblocks; blk++) {
    const int c0 = blk * COL_BLOCK, width = block_width(c, c0);
    double mean[COL_BLOCK] = {0}, var[COL_BLOCK] = {0}, scale[COL_BLOCK];
    /* two passes (mean, then squared deviations) rather than E[x^2] - E[x]^2, which
     * cancels catastrophically when the mean is large */
    for (int64_t r = 0; r < n; r++) {
      const float *xr = px + r * c + c0;
      for (int i = 0; i < width; i++)
        mean[i] += xr[i];
    }
    for (int i = 0; i < width; i++)
      mean[i] /= (double)n;
    for (int64_t r = 0; r < n; r++) {
      const float *xr = px + r * c + c0;
      for (int i = 0; i < width; i++) {
        double d = xr[i] - mean[i];
        var[i] += d * d;
      }
    }
    for (int i = 0; i < width; i++) {
      const int ch = c0 + i;
      const double biased = var[i] / (double)n, unbiased = var[i] / (double)(n - 1);
      const double rs = 1.0 / sqrt(biased + eps);
      sm[ch] = (float)mean[i];
      sr[ch] = (float)rs;
      rm[ch] = (float)((1.0 - mom) * rm[ch] + mom * mean[i]);
      rv[ch] = (float)((1.0 - mom) * rv[ch] + mom * unbiased);
      scale[i] = rs * g[ch];
    }
    /* normalise with the double statistics; the saved floats may lose digits of a large mean */
    for (int64_t r = 0; r < n; r++) {
      const float *xr = px + r * c + c0;
      float *yr = py + r * c + c0;
      for (int i = 0; i < width; i++)
        yr[i] = (float)((xr[i] - mean[i]) * scale[i] + b[c0 + i]);
    }
  }
  return cluda_ok();
}

cluda_status cluda_cpu_batchnorm_backward(cluda_ctx *ctx, const cluda_batchnorm_params *p,
                                          const cluda_tensor *x, const cluda_tensor *gamma,
                                          const cluda_tensor *save_mean,
                                          const cluda_tensor *save_rstd, const cluda_tensor *dy,
                                          cluda_tensor *dx, cluda_tensor *dgamma,
                                          cluda_tensor *dbeta) {
  (void)ctx;
  const int c = x->shape[3];
  const int64_t n = cluda_tensor_rows(x);
  const float *px = cluda_f32(x), *g = cluda_f32(gamma), *sm = cluda_f32(save_mean),
              *sr = cluda_f32(save_rstd), *pdy = cluda_f32(dy);
  float *pdx = cluda_f32(dx), *dg = cluda_f32(dgamma), *dbt = cluda_f32(dbeta);
  const int training = p->training;

  const int nblocks = (c + COL_BLOCK - 1) / COL_BLOCK;
#pragma omp parallel for schedule(static) if (nblocks > 1 && n * c > 32768)
  for (int blk = 0; blk < nblocks; blk++) {
    const int c0 = blk * COL_BLOCK, width = block_width(c, c0);
    double m[COL_BLOCK], rs[COL_BLOCK], sdy[COL_BLOCK] = {0}, sdyx[COL_BLOCK] = {0};
    for (int i = 0; i < width; i++) {
      m[i] = sm[c0 + i];
      rs[i] = sr[c0 + i];
    }
    for (int64_t r = 0; r < n; r++) {
      const float *xr = px + r * c + c0, *dyr = pdy + r * c + c0;
      for (int i = 0; i < width; i++) {
        sdy[i] += dyr[i];
        sdyx[i] += (double)dyr[i] * ((xr[i] - m[i]) * rs[i]);
      }
    }
    double k[COL_BLOCK], a[COL_BLOCK], bcoef[COL_BLOCK];
    for (int i = 0; i < width; i++) {
      dg[c0 + i] += (float)sdyx[i];
      dbt[c0 + i] += (float)sdy[i];
      /* training: dx = gamma rstd (dy - mean(dy) - xhat mean(dy xhat)), the mean and
       * variance depending on x; inference: dx = gamma rstd dy with fixed statistics */
      k[i] = (double)g[c0 + i] * rs[i];
      a[i] = training ? sdy[i] / (double)n : 0.0;
      bcoef[i] = training ? sdyx[i] / (double)n : 0.0;
    }
    for (int64_t r = 0; r < n; r++) {
      const float *xr = px + r * c + c0, *dyr = pdy + r * c + c0;
      float *dxr = pdx + r * c + c0;
      for (int i = 0; i < width; i++)
        dxr[i] = (float)(k[i] * (dyr[i] - a[i] - (xr[i] - m[i]) * rs[i] * bcoef[i]));
    }
  }
  return cluda_ok();
}

/* BatchNorm2d on NHWC: per-channel statistics over N, H and W. Training normalises with the
 * batch mean and biased variance and moves the running statistics towards the batch mean
 * and the unbiased variance; inference normalises with the running statistics. With
 * ctx->bn_sync (SyncBatchNorm) the batch is every rank's x together. */
#include <math.h>

#include "cluda/comm.h"
#include "op_common.h"

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

/* The communicator whose ranks' batches form one batch, or NULL for per-rank statistics
 * (also in inference, which uses the running statistics: nothing to synchronise). */
static cluda_comm *sync_comm(const cluda_ctx *ctx, const cluda_batchnorm_params *p) {
  return p->training && ctx && ctx->bn_sync && ctx->bn_sync->size > 1 ? ctx->bn_sync : NULL;
}

/* PyTorch refuses batch statistics of a single value per channel (the unbiased variance
 * would divide by zero). Synchronised statistics need more than one value over all ranks,
 * which only the backend can count (global_rows). */
static cluda_status check_count(const char *op, const cluda_ctx *ctx,
                                const cluda_batchnorm_params *p, const cluda_tensor *x) {
  char d[64];
  int64_t n = cluda_tensor_rows(x);
  if (sync_comm(ctx, p)) return cluda_ok();
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
  CLUDA_TRY(check_count(op, ctx, p, x));
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
  CLUDA_TRY(check_count(op, ctx, p, x));
  CLUDA_DISPATCH(ctx, batchnorm_backward, p, x, gamma, save_mean, save_rstd, dy, dx, dgamma, dbeta);
}

/* ---- CPU implementations ----
 * Channel reductions run over fixed row chunks: chunk k covers rows [n k / K, n (k+1) / K)
 * with K from the shape alone, each chunk sums its rows in order into per-channel double
 * partials (inner loop over contiguous channels), and the partials are added in chunk order.
 * So results are bit-identical for any thread count, and the walk streams whole row
 * segments instead of one cache line per row.
 * Scratch: batchnorm declares none, so callers' plans need not change. The partials of a
 * whole panel (nchunks x PANEL x sums doubles, <= 512 KiB) are taken from ctx->scratch when
 * it happens to have that much free, else from a fixed stack buffer (PART_DOUBLES, 32 KiB)
 * with the panel reduced in narrower sub-panels (>= 128 channels). Either way each
 * channel's chunk sums are the same, so the results do not depend on which was used.
 * The elementwise passes stream rows of PANEL channels (whole rows up to C = 2048) with
 * per-channel double coefficients on the stack (<= 48 KiB).
 * Synchronised statistics: each panel's per-channel sums are all-reduced (f64 sum, the same
 * bits on every rank) between the passes, outside the parallel regions and in the same
 * order on every rank; without a communicator that step is the identity, so one code path
 * serves both. The row count is all-reduced first, so a refused call writes nothing. */

enum {
  MAX_CHUNKS = 16,     /* enough parallel work for 16 threads */
  CHUNK_ROWS = 256,    /* fewer, larger chunks for small maps */
  PART_DOUBLES = 4096, /* chunk partials buffer */
  PANEL = 2048,        /* channels per elementwise pass */
  PAR_ELEMS = 32768    /* run threaded above this many elements */
};

static int num_chunks(int64_t n) {
  int64_t k = n / CHUNK_ROWS;
  return k < 1 ? 1 : k > MAX_CHUNKS ? MAX_CHUNKS : (int)k;
}

static int64_t chunk_start(int64_t n, int k, int nchunks) { return n * k / nchunks; }

/* Widest sub-panel (a multiple of 8 channels) whose nsums x nchunks partials fit the buffer. */
static int sub_width(size_t cap, int pw, int nchunks, int nsums) {
  int64_t w = (int64_t)(cap / ((size_t)nchunks * nsums)) / 8 * 8;
  return w < pw ? (int)w : pw;
}

static int min_int(int a, int b) { return a < b ? a : b; }

/* The partials buffer: full panels from ctx->scratch if it has room (*mark to release),
 * else the caller's stack buffer. *cap receives its size in doubles. */
static double *partials(cluda_ctx *ctx, int nchunks, int c, int nsums, double *stack, size_t *cap,
                        size_t *mark) {
  const size_t want = (size_t)nchunks * (size_t)min_int(c, PANEL) * (size_t)nsums;
  cluda_arena *a = ctx->scratch;
  void *buf = NULL;
  *mark = a ? cluda_arena_mark(a) : 0;
  if (want > PART_DOUBLES && a && a->capacity - a->used >= cluda_arena_align(want * 8) + 64 &&
      cluda_arena_alloc(a, want * sizeof(double), "batchnorm partials", &buf).code == CLUDA_OK) {
    *cap = want;
    return buf;
  }
  *cap = PART_DOUBLES;
  return stack;
}

/* *rows = N*H*W of the batch the statistics cover: x's, summed over comm's ranks when set
 * (training; the entry points checked the unsynchronised count). */
static cluda_status global_rows(const char *op, cluda_comm *comm, const cluda_tensor *x,
                                int64_t *rows) {
  int64_t mine = cluda_tensor_rows(x);
  *rows = mine;
  if (!comm) return cluda_ok();
  CLUDA_TRY(cluda_comm_allreduce(comm, &mine, rows, 1, CLUDA_COMM_I64, CLUDA_COMM_SUM));
  CLUDA_REQUIRE(*rows > 1, CLUDA_ERR_SHAPE,
                "%s: training needs more than 1 value per channel, but N*H*W summed over the %d "
                "synchronised ranks is %lld",
                op, comm->size, (long long)*rows);
  return cluda_ok();
}

/* Adds the ranks' per-channel sums in place; the identity without a communicator. */
static cluda_status sum_over_ranks(cluda_comm *comm, double *sums, int count) {
  if (!comm) return cluda_ok();
  return cluda_comm_allreduce(comm, sums, sums, (size_t)count, CLUDA_COMM_F64, CLUDA_COMM_SUM);
}

/* out[i] = sum over the rows of x[., p0 + i] (center NULL) or of (x[., p0 + i] - center[i])^2,
 * for the pw channels of the panel at p0, in chunk order (see above). */
static void channel_sums(const float *px, int64_t n, int c, int p0, int pw, double *part,
                         size_t cap, const double *center, double *out) {
  const int nchunks = num_chunks(n), sw = sub_width(cap, pw, nchunks, 1);
#pragma omp parallel if (n * c > PAR_ELEMS)
  for (int s0 = p0; s0 < p0 + pw; s0 += sw) {
    const int w = min_int(sw, p0 + pw - s0);
    const double *m = center ? center + (s0 - p0) : NULL;
#pragma omp for schedule(static)
    for (int k = 0; k < nchunks; k++) {
      double *acc = part + (size_t)k * w;
      for (int i = 0; i < w; i++)
        acc[i] = 0.0;
      for (int64_t r = chunk_start(n, k, nchunks); r < chunk_start(n, k + 1, nchunks); r++) {
        const float *xr = px + r * c + s0;
        if (m) {
          for (int i = 0; i < w; i++) {
            double d = xr[i] - m[i];
            acc[i] += d * d;
          }
        } else {
          for (int i = 0; i < w; i++)
            acc[i] += xr[i];
        }
      }
    }
#pragma omp for schedule(static)
    for (int i = 0; i < w; i++) {
      double t = 0.0;
      for (int k = 0; k < nchunks; k++)
        t += part[(size_t)k * w + i];
      out[s0 - p0 + i] = t;
    }
  }
}

cluda_status cluda_cpu_batchnorm_forward(cluda_ctx *ctx, const cluda_batchnorm_params *p,
                                         const cluda_tensor *x, const cluda_tensor *gamma,
                                         const cluda_tensor *beta, cluda_tensor *running_mean,
                                         cluda_tensor *running_var, cluda_tensor *y,
                                         cluda_tensor *save_mean, cluda_tensor *save_rstd) {
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
#pragma omp parallel for schedule(static) if (n * c > PAR_ELEMS)
    for (int64_t r = 0; r < n; r++) {
      const float *xr = px + r * c;
      float *yr = py + r * c;
      for (int i = 0; i < c; i++)
        yr[i] = (float)(((double)xr[i] - sm[i]) * sr[i] * g[i] + b[i]);
    }
    return cluda_ok();
  }

  cluda_comm *comm = sync_comm(ctx, p);
  int64_t ng;
  CLUDA_TRY(global_rows("batchnorm_forward", comm, x, &ng));
  double stack[PART_DOUBLES], mean[PANEL], scale[PANEL];
  size_t cap, mark;
  double *part = partials(ctx, num_chunks(n), c, 1, stack, &cap, &mark);
  cluda_status s = cluda_ok();
  for (int p0 = 0; p0 < c; p0 += PANEL) {
    const int pw = min_int(PANEL, c - p0);
    /* two passes (mean, then squared deviations about the global mean) rather than
     * E[x^2] - E[x]^2, which cancels catastrophically when the mean is large */
    channel_sums(px, n, c, p0, pw, part, cap, NULL, mean);
    if ((s = sum_over_ranks(comm, mean, pw)).code != CLUDA_OK) break;
    for (int i = 0; i < pw; i++)
      mean[i] /= (double)ng;
    channel_sums(px, n, c, p0, pw, part, cap, mean, scale);
    if ((s = sum_over_ranks(comm, scale, pw)).code != CLUDA_OK) break;
#pragma omp parallel if (n * c > PAR_ELEMS)
    {
#pragma omp for schedule(static)
      for (int i = 0; i < pw; i++) {
        const int ch = p0 + i;
        const double biased = scale[i] / (double)ng, unbiased = scale[i] / (double)(ng - 1);
        const double rs = 1.0 / sqrt(biased + eps);
        sm[ch] = (float)mean[i];
        sr[ch] = (float)rs;
        rm[ch] = (float)((1.0 - mom) * rm[ch] + mom * mean[i]);
        rv[ch] = (float)((1.0 - mom) * rv[ch] + mom * unbiased);
        scale[i] = rs * g[ch];
      }
      /* normalise with the double statistics; the saved floats may lose digits of a large
       * mean */
#pragma omp for schedule(static)
      for (int64_t r = 0; r < n; r++) {
        const float *xr = px + r * c + p0, *br = b + p0;
        float *yr = py + r * c + p0;
        for (int i = 0; i < pw; i++)
          yr[i] = (float)((xr[i] - mean[i]) * scale[i] + br[i]);
      }
    }
  }
  if (part != stack) cluda_arena_release(ctx->scratch, mark);
  return s;
}

cluda_status cluda_cpu_batchnorm_backward(cluda_ctx *ctx, const cluda_batchnorm_params *p,
                                          const cluda_tensor *x, const cluda_tensor *gamma,
                                          const cluda_tensor *save_mean,
                                          const cluda_tensor *save_rstd, const cluda_tensor *dy,
                                          cluda_tensor *dx, cluda_tensor *dgamma,
                                          cluda_tensor *dbeta) {
  const int c = x->shape[3];
  const int64_t n = cluda_tensor_rows(x);
  const float *px = cluda_f32(x), *g = cluda_f32(gamma), *sm = cluda_f32(save_mean),
              *sr = cluda_f32(save_rstd), *pdy = cluda_f32(dy);
  float *pdx = cluda_f32(dx), *dg = cluda_f32(dgamma), *dbt = cluda_f32(dbeta);
  const int training = p->training;

  cluda_comm *comm = sync_comm(ctx, p);
  int64_t ng;
  CLUDA_TRY(global_rows("batchnorm_backward", comm, x, &ng));
  const int nchunks = num_chunks(n);
  /* sums: per panel sum(dy) for its pw channels, then sum(dy xhat), so that one all-reduce
   * covers both */
  double stack[PART_DOUBLES], kc[PANEL], sums[2 * PANEL];
  size_t cap, mark;
  double *part = partials(ctx, nchunks, c, 2, stack, &cap, &mark);
  cluda_status s = cluda_ok();
  for (int p0 = 0; p0 < c; p0 += PANEL) {
    const int pw = min_int(PANEL, c - p0), sw = sub_width(cap, pw, nchunks, 2);
    double *ac = sums, *bc = sums + pw;
#pragma omp parallel if (n * c > PAR_ELEMS)
    for (int s0 = p0; s0 < p0 + pw; s0 += sw) {
      const int w = min_int(sw, p0 + pw - s0);
      const float *m = sm + s0, *rs = sr + s0;
      double *sdy_part = part, *sdyx_part = part + (size_t)nchunks * w;
#pragma omp for schedule(static)
      for (int k = 0; k < nchunks; k++) {
        double *sdy = sdy_part + (size_t)k * w, *sdyx = sdyx_part + (size_t)k * w;
        for (int i = 0; i < w; i++)
          sdy[i] = 0.0, sdyx[i] = 0.0;
        for (int64_t r = chunk_start(n, k, nchunks); r < chunk_start(n, k + 1, nchunks); r++) {
          const float *xr = px + r * c + s0, *dyr = pdy + r * c + s0;
          for (int i = 0; i < w; i++) {
            sdy[i] += dyr[i];
            sdyx[i] += (double)dyr[i] * (((double)xr[i] - m[i]) * rs[i]);
          }
        }
      }
#pragma omp for schedule(static)
      for (int i = 0; i < w; i++) {
        double sdy = 0.0, sdyx = 0.0;
        for (int k = 0; k < nchunks; k++) {
          sdy += sdy_part[(size_t)k * w + i];
          sdyx += sdyx_part[(size_t)k * w + i];
        }
        const int ch = s0 + i, j = s0 - p0 + i;
        /* this rank's share: the trainer sums parameter gradients over the ranks */
        dg[ch] += (float)sdyx;
        dbt[ch] += (float)sdy;
        ac[j] = sdy;
        bc[j] = sdyx;
      }
    }
    if ((s = sum_over_ranks(comm, sums, 2 * pw)).code != CLUDA_OK) break;
#pragma omp parallel if (n * c > PAR_ELEMS)
    {
      /* training: dx = gamma rstd (dy - mean(dy) - xhat mean(dy xhat)), the means over the
       * (global) batch whose statistics depend on x; inference: dx = gamma rstd dy with
       * fixed statistics */
#pragma omp for schedule(static)
      for (int i = 0; i < pw; i++) {
        kc[i] = (double)g[p0 + i] * sr[p0 + i];
        ac[i] = training ? ac[i] / (double)ng : 0.0;
        bc[i] = training ? bc[i] / (double)ng : 0.0;
      }
      const float *m = sm + p0, *rs = sr + p0;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < n; r++) {
        const float *xr = px + r * c + p0, *dyr = pdy + r * c + p0;
        float *dxr = pdx + r * c + p0;
        for (int i = 0; i < pw; i++)
          dxr[i] =
              (float)(kc[i] * (dyr[i] - ac[i] - ((double)xr[i] - m[i]) * (double)rs[i] * bc[i]));
      }
    }
  }
  if (part != stack) cluda_arena_release(ctx->scratch, mark);
  return s;
}

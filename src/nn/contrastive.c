/* The CLUDA pixel-contrastive loss, streamed over column tiles (include/cluda/contrastive.h
 * has the semantics and the gradient; shared/spec/systems.md 2.5 the scheme). */
#include <cblas.h>
#include <math.h>
#include <string.h>

#include "cluda/arena.h"
#include "cluda/backend.h"
#include "cluda/contrastive.h"

#define DESC(t, buf) cluda_tensor_describe((t), (buf), sizeof(buf))

/* Cityscapes train ids of the thing classes (decision 7) */
static const int cityscapes_things[] = {6, 7, 11, 12, 13, 14, 15, 16, 17, 18};

void cluda_contrastive_default_params(cluda_contrastive_params *p) {
  memset(p, 0, sizeof *p);
  p->tau = 1.0f;
  p->loss_weight = 1.0f;
  p->pairs = CLUDA_CL_PAIRS_SEPARATE;
  p->num_classes = 19;
  p->ignore_index = 255;
  p->mean_count = 0;
  p->self_offset = 0;
  p->tile_cols = 0;
  for (size_t i = 0; i < sizeof cityscapes_things / sizeof cityscapes_things[0]; i++)
    p->thing[cityscapes_things[i]] = 1;
}

cluda_status cluda_contrastive_set_things(cluda_contrastive_params *p, const int *classes, int n) {
  CLUDA_REQUIRE(p != NULL, CLUDA_ERR_ARG, "contrastive_set_things: p is NULL");
  CLUDA_REQUIRE(n >= 0 && (n == 0 || classes != NULL), CLUDA_ERR_ARG,
                "contrastive_set_things: %d classes from %s", n, classes ? "a list" : "NULL");
  for (int i = 0; i < n; i++)
    CLUDA_REQUIRE(classes[i] >= 0 && classes[i] <= 255, CLUDA_ERR_ARG,
                  "contrastive_set_things: class %d (entry %d) is not in 0..255", classes[i], i);
  memset(p->thing, 0, sizeof p->thing);
  for (int i = 0; i < n; i++)
    p->thing[classes[i]] = 1;
  return cluda_ok();
}

static int tile_cols_of(const cluda_contrastive_params *p, int64_t mc) {
  int64_t t = p->tile_cols > 0 ? p->tile_cols : CLUDA_CL_DEFAULT_TILE_COLS;
  if (t > mc) t = mc;
  return t < 1 ? 1 : (int)t;
}

size_t cluda_contrastive_scratch_bytes(const cluda_contrastive_params *p, int64_t num_anchors,
                                       int64_t num_contrast) {
  if (!p || num_anchors < 0 || num_contrast < 0) return 0;
  const size_t t = (size_t)tile_cols_of(p, num_contrast), ma = (size_t)num_anchors;
  size_t bytes = cluda_arena_align(ma * t * sizeof(float));                   /* tile */
  if (p->ref_pair_weight) bytes += cluda_arena_align(ma * t * sizeof(float)); /* l_ip */
  bytes += cluda_arena_align((size_t)num_contrast * sizeof(int16_t));         /* keys */
  bytes += cluda_arena_align(ma * sizeof(int16_t));                           /* keys */
  bytes += cluda_arena_align(ma * 5 * sizeof(double));                        /* rows */
  if (p->ref_pair_weight) bytes += cluda_arena_align(t * sizeof(double));     /* cols */
  return bytes;
}

/* ---- validation ---- */

static cluda_status check_rows(const char *op, const char *name, const cluda_tensor *t,
                               cluda_dtype dtype, int64_t rows, const char *rows_of,
                               const cluda_tensor *of) {
  char dt[64], dof[64];
  CLUDA_TRY(cluda_check_tensor(op, name, t, dtype, 1));
  CLUDA_REQUIRE(t->shape[0] == rows, CLUDA_ERR_SHAPE,
                "%s: %s %s must be [%lld] (the rows of %s %s)", op, name, DESC(t, dt),
                (long long)rows, rows_of, DESC(of, dof));
  return cluda_ok();
}

static cluda_status check_scalar(const char *op, const char *name, const cluda_tensor *t) {
  char d[64];
  CLUDA_TRY(cluda_check_tensor(op, name, t, CLUDA_F32, -1));
  CLUDA_REQUIRE(cluda_tensor_numel(t) == 1, CLUDA_ERR_SHAPE,
                "%s: %s %s must have exactly one element", op, name, DESC(t, d));
  return cluda_ok();
}

/* Labels are data: each must be a class (< num_classes) or ignore_index. Reports the first
 * offending row. */
static cluda_status check_label_values(const char *op, const char *name, const cluda_tensor *t,
                                       const cluda_contrastive_params *p) {
  const uint8_t *lab = cluda_u8(t);
  for (int64_t i = 0; i < t->shape[0]; i++)
    CLUDA_REQUIRE(lab[i] < p->num_classes || lab[i] == p->ignore_index, CLUDA_ERR_ARG,
                  "%s: %s[%lld] = %d is neither a class (< num_classes = %d) nor ignore_index %d",
                  op, name, (long long)i, lab[i], p->num_classes, p->ignore_index);
  return cluda_ok();
}

static cluda_status check_inputs(const char *op, cluda_ctx *ctx, const cluda_contrastive_params *p,
                                 const cluda_tensor *a, const cluda_tensor *al,
                                 const cluda_tensor *aw, const cluda_tensor *c,
                                 const cluda_tensor *cl, const cluda_tensor *cw) {
  char da[64], dc[64];
  CLUDA_REQUIRE(ctx != NULL && ctx->backend != NULL, CLUDA_ERR_ARG,
                "%s: ctx or ctx->backend is NULL", op);
  /* the CPU computes below; another backend through its table entries (after validation) */
  CLUDA_REQUIRE(ctx->backend == cluda_backend_cpu() ||
                    (ctx->backend->contrastive_forward && ctx->backend->contrastive_backward),
                CLUDA_ERR_UNSUPPORTED, "%s: not implemented by the %s backend", op,
                ctx->backend->name);
  CLUDA_REQUIRE(p != NULL, CLUDA_ERR_ARG, "%s: params is NULL", op);
  CLUDA_REQUIRE(p->tau > 0.0f && isfinite(p->tau), CLUDA_ERR_ARG,
                "%s: tau %g must be a finite number > 0", op, (double)p->tau);
  CLUDA_REQUIRE(isfinite(p->loss_weight), CLUDA_ERR_ARG, "%s: loss_weight %g must be finite", op,
                (double)p->loss_weight);
  CLUDA_REQUIRE(p->pairs == CLUDA_CL_PAIRS_SEPARATE || p->pairs == CLUDA_CL_PAIRS_ALL ||
                    p->pairs == CLUDA_CL_PAIRS_STUFF_ONLY,
                CLUDA_ERR_ARG, "%s: pairs %d is not separate (0), all (1) or stuff_only (2)", op,
                (int)p->pairs);
  CLUDA_REQUIRE(p->num_classes >= 1 && p->num_classes <= 256, CLUDA_ERR_ARG,
                "%s: num_classes %d must be in 1..256", op, p->num_classes);
  CLUDA_REQUIRE(p->ignore_index >= 0 && p->ignore_index <= 255, CLUDA_ERR_ARG,
                "%s: ignore_index %d must be in 0..255 (labels are u8)", op, p->ignore_index);
  CLUDA_REQUIRE(p->tile_cols >= 0, CLUDA_ERR_ARG, "%s: tile_cols %d must be >= 0", op,
                p->tile_cols);
  CLUDA_TRY(cluda_check_tensor(op, "anchors", a, CLUDA_F32, 2));
  CLUDA_TRY(cluda_check_tensor(op, "contrast", c, CLUDA_F32, 2));
  CLUDA_REQUIRE(a->shape[1] >= 1 && a->shape[1] == c->shape[1], CLUDA_ERR_SHAPE,
                "%s: anchors %s and contrast %s must have the same feature width D >= 1", op,
                DESC(a, da), DESC(c, dc));
  const int64_t ma = a->shape[0], mc = c->shape[0];
  CLUDA_TRY(check_rows(op, "anchor_labels", al, CLUDA_U8, ma, "anchors", a));
  CLUDA_TRY(check_rows(op, "contrast_labels", cl, CLUDA_U8, mc, "contrast", c));
  if (aw) CLUDA_TRY(check_rows(op, "anchor_weights", aw, CLUDA_F32, ma, "anchors", a));
  if (cw) {
    CLUDA_REQUIRE(p->ref_pair_weight, CLUDA_ERR_ARG,
                  "%s: contrast_weights is only used with ref_pair_weight; pass NULL", op);
    CLUDA_TRY(check_rows(op, "contrast_weights", cw, CLUDA_F32, mc, "contrast", c));
  }
  CLUDA_REQUIRE(p->self_offset == -1 || (p->self_offset >= 0 && p->self_offset + ma <= mc),
                CLUDA_ERR_ARG,
                "%s: self_offset %lld must be -1 or place the anchors' %lld rows inside contrast "
                "%s",
                op, (long long)p->self_offset, (long long)ma, DESC(c, dc));
  CLUDA_REQUIRE(p->mean_count == 0 || p->mean_count >= ma, CLUDA_ERR_ARG,
                "%s: mean_count %lld must be 0 (local rows) or >= the %lld anchor rows", op,
                (long long)p->mean_count, (long long)ma);
  return cluda_ok();
}

static cluda_status check_stats(const char *op, const cluda_tensor *stats, const cluda_tensor *a) {
  char ds[64], da[64];
  CLUDA_TRY(cluda_check_tensor(op, "stats", stats, CLUDA_F32, 2));
  CLUDA_REQUIRE(stats->shape[0] == a->shape[0] && stats->shape[1] == CLUDA_CL_STATS_COLS,
                CLUDA_ERR_SHAPE, "%s: stats %s must be [%d, %d] for anchors %s", op,
                DESC(stats, ds), a->shape[0], CLUDA_CL_STATS_COLS, DESC(a, da));
  return cluda_ok();
}

static cluda_status check_scratch(const char *op, cluda_ctx *ctx, const cluda_contrastive_params *p,
                                  const cluda_tensor *a, const cluda_tensor *c) {
  CLUDA_REQUIRE(ctx->scratch != NULL, CLUDA_ERR_ALLOC,
                "%s: ctx->scratch is NULL; %zu bytes are needed (cluda_contrastive_scratch_bytes)",
                op, cluda_contrastive_scratch_bytes(p, a->shape[0], c->shape[0]));
  return cluda_ok();
}

/* ---- the streamed computation ---- */

/* A row's key: -1 for a label that is not valid (ignored), else label | group << 8. Two
 * valid rows are positives when their keys are equal; a negative of anchor key ka has a
 * different valid key (and, unless pairs == ALL, the same group). */
static inline int16_t key_of(const cluda_contrastive_params *p, int label) {
  if (label == p->ignore_index && !p->ref_ignore_as_class) return -1;
  return (int16_t)(label | (p->thing[label] ? 256 : 0));
}

typedef struct cl_plan {
  int64_t ma, mc;
  int d, tc; /* feature width, tile columns */
  int all;   /* pairs == ALL */
  float inv_tau;
  double scale; /* loss_weight (x 0.5) / mean_count */
  const float *a, *c, *aw, *cw;
  int64_t self_offset;
  float *tile, *tile2;
  int16_t *ckey, *akey;
  double *rows; /* [ma, 5]: m, S, npos, C, T */
  double *cols;
} cl_plan;

static cluda_status plan_make(cluda_ctx *ctx, const cluda_contrastive_params *p,
                              const cluda_tensor *a, const cluda_tensor *al, const cluda_tensor *aw,
                              const cluda_tensor *c, const cluda_tensor *cl, const cluda_tensor *cw,
                              int need_tile2, cl_plan *pl) {
  memset(pl, 0, sizeof *pl);
  pl->ma = a->shape[0];
  pl->mc = c->shape[0];
  pl->d = a->shape[1];
  pl->tc = tile_cols_of(p, pl->mc);
  pl->all = p->pairs == CLUDA_CL_PAIRS_ALL;
  pl->inv_tau = 1.0f / p->tau;
  pl->scale = (double)p->loss_weight * (p->ref_half ? 0.5 : 1.0) /
              (double)(p->mean_count > 0 ? p->mean_count : (pl->ma > 0 ? pl->ma : 1));
  pl->a = cluda_f32(a);
  pl->c = cluda_f32(c);
  pl->aw = aw ? cluda_f32(aw) : NULL;
  pl->cw = cw ? cluda_f32(cw) : NULL;
  pl->self_offset = p->self_offset;
  cluda_arena *ar = ctx->scratch;
  const size_t tile_bytes = (size_t)pl->ma * (size_t)pl->tc * sizeof(float);
  void *q;
  CLUDA_TRY(cluda_arena_alloc(ar, tile_bytes, "contrastive similarity tile", &q));
  pl->tile = q;
  if (need_tile2) {
    CLUDA_TRY(cluda_arena_alloc(ar, tile_bytes, "contrastive positive-term tile", &q));
    pl->tile2 = q;
    CLUDA_TRY(cluda_arena_alloc(ar, (size_t)pl->tc * sizeof(double), "contrastive columns", &q));
    pl->cols = q;
  }
  CLUDA_TRY(cluda_arena_alloc(ar, (size_t)pl->mc * sizeof(int16_t), "contrastive keys", &q));
  pl->ckey = q;
  CLUDA_TRY(cluda_arena_alloc(ar, (size_t)pl->ma * sizeof(int16_t), "contrastive keys", &q));
  pl->akey = q;
  CLUDA_TRY(cluda_arena_alloc(ar, (size_t)pl->ma * 5 * sizeof(double), "contrastive rows", &q));
  pl->rows = q;
  const uint8_t *la = cluda_u8(al), *lc = cluda_u8(cl);
  for (int64_t j = 0; j < pl->mc; j++)
    pl->ckey[j] = key_of(p, lc[j]);
  for (int64_t i = 0; i < pl->ma; i++) {
    int16_t k = key_of(p, la[i]);
    /* STUFF_ONLY: thing anchors do not contribute (their key stays for nothing else) */
    if (k >= 0 && p->pairs == CLUDA_CL_PAIRS_STUFF_ONLY && (k & 256)) k = -1;
    pl->akey[i] = k;
  }
  return cluda_ok();
}

/* tile[i, j] = <a_i, c_{c0 + j}> / tau for all anchors, j < nt */
static void tile_product(const cl_plan *pl, int64_t c0, int nt) {
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)pl->ma, nt, pl->d, pl->inv_tau, pl->a,
              pl->d, pl->c + c0 * pl->d, pl->d, 0.0f, pl->tile, nt);
}

static inline int is_negative(const cl_plan *pl, int16_t ka, int16_t kc) {
  return kc >= 0 && kc != ka && (pl->all || ((kc ^ ka) & 256) == 0);
}

/* the anchor's own column inside the tile starting at c0, or -1 */
static inline int64_t self_in_tile(const cl_plan *pl, int64_t i, int64_t c0) {
  return pl->self_offset >= 0 ? pl->self_offset + i - c0 : -1;
}

/* x = log S - s: softplus(x) and sigmoid(x) from one exp */
static inline void softplus_sigmoid(double x, double *sp, double *sig) {
  const double e = exp(-fabs(x));
  *sp = (x > 0.0 ? x : 0.0) + log1p(e);
  *sig = x >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

/* Pass 1: running max m_i and S_i = sum_{k in N_i} e^{s_ik - m_i} (rescaled when m grows). */
static void pass_negatives(const cl_plan *pl, int64_t c0, int nt) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < pl->ma; i++) {
    const int16_t ka = pl->akey[i];
    if (ka < 0) continue;
    const float *s = pl->tile + i * nt;
    const int16_t *kc = pl->ckey + c0;
    const int64_t js = self_in_tile(pl, i, c0);
    float tmax = -INFINITY;
    for (int j = 0; j < nt; j++)
      if (j != js && is_negative(pl, ka, kc[j]) && s[j] > tmax) tmax = s[j];
    if (tmax == -INFINITY) continue;
    double *r = pl->rows + i * 5;
    if ((double)tmax > r[0]) {
      r[1] *= exp(r[0] - (double)tmax); /* m = -inf on the first tile: S = 0 stays 0 */
      r[0] = tmax;
    }
    const float m = (float)r[0];
    double sum = 0.0;
    for (int j = 0; j < nt; j++)
      if (j != js && is_negative(pl, ka, kc[j])) sum += (double)expf(s[j] - m);
    r[1] += sum;
  }
}

/* After pass 1: r[0] = log S_i (-inf without negatives). */
static void finish_negatives(const cl_plan *pl) {
  for (int64_t i = 0; i < pl->ma; i++) {
    double *r = pl->rows + i * 5;
    r[0] = r[1] > 0.0 ? r[0] + log(r[1]) : -INFINITY;
  }
}

/* Pass 2: |P_i|, C_i = sum_p v_p sigmoid(log S_i - s_ip), T_i = sum_p v_p softplus(...). */
static void pass_positives(const cl_plan *pl, int64_t c0, int nt) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < pl->ma; i++) {
    const int16_t ka = pl->akey[i];
    if (ka < 0) continue;
    const float *s = pl->tile + i * nt;
    const int16_t *kc = pl->ckey + c0;
    const int64_t js = self_in_tile(pl, i, c0);
    double *r = pl->rows + i * 5;
    const double logs = r[0];
    double npos = 0.0, csum = 0.0, tsum = 0.0;
    for (int j = 0; j < nt; j++) {
      if (kc[j] != ka || j == js) continue;
      double sp, sig;
      softplus_sigmoid(logs - (double)s[j], &sp, &sig);
      const double v = pl->cw ? (double)pl->cw[c0 + j] : 1.0;
      npos += 1.0;
      csum += v * sig;
      tsum += v * sp;
    }
    r[2] += npos;
    r[3] += csum;
    r[4] += tsum;
  }
}

static void for_each_tile(const cl_plan *pl, void (*pass)(const cl_plan *, int64_t, int)) {
  for (int64_t c0 = 0; c0 < pl->mc; c0 += pl->tc) {
    const int nt = (int)(pl->mc - c0 < pl->tc ? pl->mc - c0 : pl->tc);
    tile_product(pl, c0, nt);
    pass(pl, c0, nt);
  }
}

cluda_status
cluda_contrastive_forward(cluda_ctx *ctx, const cluda_contrastive_params *p,
                          const cluda_tensor *anchors, const cluda_tensor *anchor_labels,
                          const cluda_tensor *anchor_weights, const cluda_tensor *contrast,
                          const cluda_tensor *contrast_labels, const cluda_tensor *contrast_weights,
                          cluda_tensor *loss, cluda_tensor *stats) {
  static const char op[] = "contrastive_forward";
  CLUDA_TRY(check_inputs(op, ctx, p, anchors, anchor_labels, anchor_weights, contrast,
                         contrast_labels, contrast_weights));
  CLUDA_TRY(check_scalar(op, "loss", loss));
  CLUDA_TRY(check_stats(op, stats, anchors));
  /* labels and tensors live in device memory there: the backend checks the label values */
  if (ctx->backend != cluda_backend_cpu())
    return ctx->backend->contrastive_forward(ctx, p, anchors, anchor_labels, anchor_weights,
                                             contrast, contrast_labels, contrast_weights, loss,
                                             stats);
  CLUDA_TRY(check_label_values(op, "anchor_labels", anchor_labels, p));
  CLUDA_TRY(check_label_values(op, "contrast_labels", contrast_labels, p));

  CLUDA_TRY(check_scratch(op, ctx, p, anchors, contrast));
  const size_t mark = cluda_arena_mark(ctx->scratch);
  cl_plan pl;
  cluda_status st = plan_make(ctx, p, anchors, anchor_labels, anchor_weights, contrast,
                              contrast_labels, contrast_weights, 0, &pl);
  if (st.code != CLUDA_OK) {
    cluda_arena_release(ctx->scratch, mark);
    return st;
  }
  for (int64_t i = 0; i < pl.ma; i++) {
    double *r = pl.rows + i * 5;
    r[0] = -INFINITY;
    r[1] = r[2] = r[3] = r[4] = 0.0;
  }
  if (pl.ma > 0 && pl.mc > 0) {
    for_each_tile(&pl, pass_negatives);
    finish_negatives(&pl);
    for_each_tile(&pl, pass_positives);
  }
  /* rows in order: the same sum for any thread count */
  double total = 0.0;
  float *out = cluda_f32(stats);
  for (int64_t i = 0; i < pl.ma; i++) {
    const double *r = pl.rows + i * 5;
    if (r[2] > 0.0) total += (pl.aw ? (double)pl.aw[i] : 1.0) * r[4] / r[2];
    out[i * 4 + 0] = (float)r[0];
    out[i * 4 + 1] = (float)r[2];
    out[i * 4 + 2] = (float)r[3];
    out[i * 4 + 3] = (float)r[4];
  }
  cluda_f32(loss)[0] = (float)(pl.scale * total);
  cluda_arena_release(ctx->scratch, mark);
  return cluda_ok();
}

/* Backward of one tile: the tile becomes dL/ds (tile2 gets beta_i u_i l_ip for positives). */
static void tile_grad(const cl_plan *pl, const float *stats, double g, int64_t c0, int nt) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < pl->ma; i++) {
    float *s = pl->tile + i * nt;
    float *t2 = pl->tile2 ? pl->tile2 + i * nt : NULL;
    const float *st = stats + i * 4;
    const int16_t ka = pl->akey[i];
    const double u = pl->aw ? (double)pl->aw[i] : 1.0;
    if (ka < 0 || st[1] <= 0.0f || g == 0.0 || u == 0.0) {
      memset(s, 0, sizeof(float) * (size_t)nt);
      if (t2) memset(t2, 0, sizeof(float) * (size_t)nt);
      continue;
    }
    const double bu = g / (double)st[1] * u, logs = (double)st[0];
    const double cn = bu * (double)st[2];
    const int16_t *kc = pl->ckey + c0;
    const int64_t js = self_in_tile(pl, i, c0);
    for (int j = 0; j < nt; j++) {
      float d = 0.0f, t = 0.0f;
      if (j != js) {
        if (kc[j] == ka) {
          double sp, sig;
          softplus_sigmoid(logs - (double)s[j], &sp, &sig);
          const double v = pl->cw ? (double)pl->cw[c0 + j] : 1.0;
          d = (float)(-bu * v * sig);
          t = (float)(bu * sp);
        } else if (is_negative(pl, ka, kc[j])) {
          d = (float)(cn * exp((double)s[j] - logs));
        }
      }
      s[j] = d;
      if (t2) t2[j] = t;
    }
  }
}

/* dcw[c0 + j] = sum_i tile2[i, j], rows in order for every column (column-parallel). */
static void column_sums(const cl_plan *pl, int64_t c0, int nt, float *dcw) {
  enum { CHUNK = 64 };
  const int chunks = (nt + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < chunks; ch++) {
    const int j0 = ch * CHUNK, j1 = j0 + CHUNK < nt ? j0 + CHUNK : nt;
    double *acc = pl->cols + j0;
    for (int j = j0; j < j1; j++)
      acc[j - j0] = 0.0;
    for (int64_t i = 0; i < pl->ma; i++) {
      const float *t = pl->tile2 + i * nt;
      for (int j = j0; j < j1; j++)
        acc[j - j0] += (double)t[j];
    }
    for (int j = j0; j < j1; j++)
      dcw[c0 + j] = (float)acc[j - j0];
  }
}

cluda_status cluda_contrastive_backward(
    cluda_ctx *ctx, const cluda_contrastive_params *p, const cluda_tensor *anchors,
    const cluda_tensor *anchor_labels, const cluda_tensor *anchor_weights,
    const cluda_tensor *contrast, const cluda_tensor *contrast_labels,
    const cluda_tensor *contrast_weights, const cluda_tensor *stats, const cluda_tensor *dloss,
    cluda_tensor *d_anchors, cluda_tensor *d_contrast, cluda_tensor *d_anchor_weights,
    cluda_tensor *d_contrast_weights) {
  static const char op[] = "contrastive_backward";
  CLUDA_TRY(check_inputs(op, ctx, p, anchors, anchor_labels, anchor_weights, contrast,
                         contrast_labels, contrast_weights));
  CLUDA_TRY(check_stats(op, stats, anchors));
  CLUDA_TRY(check_scalar(op, "dloss", dloss));
  if (d_anchors) {
    CLUDA_TRY(cluda_check_tensor(op, "d_anchors", d_anchors, CLUDA_F32, 2));
    char d1[64], d2[64];
    CLUDA_REQUIRE(cluda_tensor_same_shape(d_anchors, anchors), CLUDA_ERR_SHAPE,
                  "%s: d_anchors %s and anchors %s must have the same shape", op,
                  DESC(d_anchors, d1), DESC(anchors, d2));
  }
  if (d_contrast) {
    CLUDA_TRY(cluda_check_tensor(op, "d_contrast", d_contrast, CLUDA_F32, 2));
    char d1[64], d2[64];
    CLUDA_REQUIRE(cluda_tensor_same_shape(d_contrast, contrast), CLUDA_ERR_SHAPE,
                  "%s: d_contrast %s and contrast %s must have the same shape", op,
                  DESC(d_contrast, d1), DESC(contrast, d2));
  }
  if (d_anchor_weights)
    CLUDA_TRY(check_rows(op, "d_anchor_weights", d_anchor_weights, CLUDA_F32, anchors->shape[0],
                         "anchors", anchors));
  if (d_contrast_weights) {
    CLUDA_REQUIRE(p->ref_pair_weight, CLUDA_ERR_ARG,
                  "%s: d_contrast_weights needs ref_pair_weight (contrast weights are unused "
                  "otherwise); pass NULL",
                  op);
    CLUDA_TRY(check_rows(op, "d_contrast_weights", d_contrast_weights, CLUDA_F32,
                         contrast->shape[0], "contrast", contrast));
  }
  /* labels, dloss and the outputs live in device memory there */
  if (ctx->backend != cluda_backend_cpu())
    return ctx->backend->contrastive_backward(
        ctx, p, anchors, anchor_labels, anchor_weights, contrast, contrast_labels, contrast_weights,
        stats, dloss, d_anchors, d_contrast, d_anchor_weights, d_contrast_weights);
  CLUDA_TRY(check_label_values(op, "anchor_labels", anchor_labels, p));
  CLUDA_TRY(check_label_values(op, "contrast_labels", contrast_labels, p));

  const int need_tiles = d_anchors || d_contrast || d_contrast_weights;
  CLUDA_TRY(check_scratch(op, ctx, p, anchors, contrast));
  const size_t mark = cluda_arena_mark(ctx->scratch);
  cl_plan pl;
  cluda_status st = plan_make(ctx, p, anchors, anchor_labels, anchor_weights, contrast,
                              contrast_labels, contrast_weights, d_contrast_weights != NULL, &pl);
  if (st.code != CLUDA_OK) {
    cluda_arena_release(ctx->scratch, mark);
    return st;
  }
  const float *sv = cluda_f32(stats);
  const double g = (double)cluda_f32(dloss)[0] * pl.scale;
  if (d_anchor_weights) {
    float *dw = cluda_f32(d_anchor_weights);
    for (int64_t i = 0; i < pl.ma; i++) {
      const float *r = sv + i * 4;
      dw[i] = pl.akey[i] >= 0 && r[1] > 0.0f ? (float)(g * (double)r[3] / (double)r[1]) : 0.0f;
    }
  }
  float *da = d_anchors ? cluda_f32(d_anchors) : NULL;
  float *dc = d_contrast ? cluda_f32(d_contrast) : NULL;
  const size_t d = (size_t)pl.d;
  if (da && (pl.mc == 0 || pl.ma == 0)) memset(da, 0, (size_t)pl.ma * d * sizeof(float));
  if (dc && pl.ma == 0) memset(dc, 0, (size_t)pl.mc * d * sizeof(float));
  if (d_contrast_weights && pl.ma == 0)
    memset(cluda_f32(d_contrast_weights), 0, (size_t)pl.mc * sizeof(float));
  if (need_tiles && pl.ma > 0) {
    for (int64_t c0 = 0; c0 < pl.mc; c0 += pl.tc) {
      const int nt = (int)(pl.mc - c0 < pl.tc ? pl.mc - c0 : pl.tc);
      tile_product(&pl, c0, nt);
      tile_grad(&pl, sv, g, c0, nt);
      /* d_anchors += dS C_t / tau; d_contrast[t] = dS^T A / tau */
      if (da)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)pl.ma, pl.d, nt, pl.inv_tau,
                    pl.tile, nt, pl.c + c0 * pl.d, pl.d, c0 == 0 ? 0.0f : 1.0f, da, pl.d);
      if (dc)
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, nt, pl.d, (int)pl.ma, pl.inv_tau,
                    pl.tile, nt, pl.a, pl.d, 0.0f, dc + c0 * pl.d, pl.d);
      if (d_contrast_weights) column_sums(&pl, c0, nt, cluda_f32(d_contrast_weights));
    }
  }
  cluda_arena_release(ctx->scratch, mark);
  return cluda_ok();
}

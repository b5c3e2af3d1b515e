/* AdamW, EMA teacher, gradient utilities and the mmcv poly/warm-up schedule over the flat
 * parameter buffer (see include/cluda/optim.h for the exact semantics). */
#include "cluda/optim.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Below this many floats the OpenMP fork costs more than the pass itself. */
enum { OPTIM_PARALLEL_MIN = 32768 };
/* Fixed reduction chunk (floats of the flat buffer): partial sums do not depend on threads. */
enum { OPTIM_CHUNK = 1 << 16 };

uint64_t cluda_param_table_hash(const cluda_param_table *table) {
  /* FNV-1a over every field that decides where and how an entry is updated. */
  uint64_t h = 14695981039346656037ull;
#define MIX(byte) (h = (h ^ (uint8_t)(byte)) * 1099511628211ull)
#define MIX64(value)                                                                               \
  do {                                                                                             \
    uint64_t mix_v_ = (uint64_t)(value);                                                           \
    for (int mix_i_ = 0; mix_i_ < 8; mix_i_++)                                                     \
      MIX(mix_v_ >> (8 * mix_i_));                                                                 \
  } while (0)
  if (!table) return 0;
  MIX64(table->count);
  MIX64(table->total);
  for (int e = 0; e < table->count; e++) {
    const cluda_param_info *p = &table->items[e];
    for (const char *c = p->name; *c; c++)
      MIX(*c);
    MIX(0);
    MIX64(p->ndim);
    for (int d = 0; d < CLUDA_MAX_DIMS; d++)
      MIX64(p->shape[d]);
    MIX64(p->offset);
    MIX64(p->count);
    MIX64(p->group);
    MIX64(p->no_decay != 0);
  }
#undef MIX64
#undef MIX
  return h;
}

cluda_adamw_config cluda_adamw_default_config(void) {
  cluda_adamw_config c;
  c.lr = 6e-5;
  c.head_lr_mult = 10.0;
  c.beta1 = 0.9;
  c.beta2 = 0.999;
  c.eps = 1e-8;
  c.weight_decay = 0.01;
  return c;
}

static cluda_status check_table(const char *op, const cluda_param_table *table) {
  CLUDA_REQUIRE(table != NULL, CLUDA_ERR_ARG, "%s: table is NULL", op);
  CLUDA_REQUIRE(table->count > 0 && table->items != NULL && table->total > 0, CLUDA_ERR_ARG,
                "%s: the parameter table is empty", op);
  return cluda_ok();
}

static cluda_status check_config(const cluda_adamw_config *c) {
  CLUDA_REQUIRE(isfinite(c->lr) && c->lr >= 0.0, CLUDA_ERR_ARG, "adamw: lr %g must be >= 0", c->lr);
  CLUDA_REQUIRE(isfinite(c->head_lr_mult) && c->head_lr_mult >= 0.0, CLUDA_ERR_ARG,
                "adamw: head_lr_mult %g must be >= 0", c->head_lr_mult);
  CLUDA_REQUIRE(c->beta1 >= 0.0 && c->beta1 < 1.0, CLUDA_ERR_ARG,
                "adamw: beta1 %g must be in [0, 1)", c->beta1);
  CLUDA_REQUIRE(c->beta2 >= 0.0 && c->beta2 < 1.0, CLUDA_ERR_ARG,
                "adamw: beta2 %g must be in [0, 1)", c->beta2);
  CLUDA_REQUIRE(isfinite(c->eps) && c->eps > 0.0, CLUDA_ERR_ARG, "adamw: eps %g must be > 0",
                c->eps);
  CLUDA_REQUIRE(isfinite(c->weight_decay) && c->weight_decay >= 0.0, CLUDA_ERR_ARG,
                "adamw: weight_decay %g must be >= 0", c->weight_decay);
  return cluda_ok();
}

cluda_status cluda_adamw_init(cluda_adamw *opt, const cluda_param_table *table,
                              const cluda_adamw_config *config) {
  CLUDA_REQUIRE(opt != NULL && config != NULL, CLUDA_ERR_ARG, "adamw_init: opt or config is NULL");
  CLUDA_TRY(check_table("adamw_init", table));
  CLUDA_TRY(check_config(config));
  float *m = calloc(table->total, sizeof *m), *v = calloc(table->total, sizeof *v);
  if (!m || !v) {
    free(m);
    free(v);
    return CLUDA_FAIL(CLUDA_ERR_ALLOC, "adamw_init: cannot allocate 2 x %zu floats of state",
                      table->total);
  }
  memset(opt, 0, sizeof *opt);
  opt->config = *config;
  opt->total = table->total;
  opt->entries = table->count;
  opt->table_hash = cluda_param_table_hash(table);
  opt->m = m;
  opt->v = v;
  return cluda_ok();
}

void cluda_adamw_free(cluda_adamw *opt) {
  if (!opt) return;
  free(opt->m);
  free(opt->v);
  opt->m = opt->v = NULL;
}

/* Scalars of one step for one entry, formed in double and rounded to float once, as torch
 * passes Python floats to its float kernels. */
typedef struct adamw_span_args {
  float decay;     /* 1 - lr wd, or exactly 1 (a no-op multiply) when the entry is not decayed */
  float step_size; /* -lr / (1 - beta1^t) */
  float w1, b2, w2, bc2, eps;
} adamw_span_args;

/* Updates n consecutive elements of one entry (see cluda_adamw_step for the formulas). */
static void adamw_span(const adamw_span_args *a, float *restrict p, float *restrict m,
                       float *restrict v, const float *restrict g, int64_t n) {
  const float decay = a->decay, step_size = a->step_size, w1 = a->w1, b2 = a->b2, w2 = a->w2;
  const float bc2 = a->bc2, eps = a->eps;
  for (int64_t i = 0; i < n; i++) {
    const float gi = g[i];
    const float pi = p[i] * decay; /* param.mul_(1 - lr * weight_decay) */
    /* exp_avg.lerp_(grad, 1 - beta1): torch's vector kernels use one fused multiply-add; the
     * product of two floats is exact in double, so this rounds once like the fma. */
    const float diff = gi - m[i];
    const float mi = (float)((double)w1 * (double)diff + (double)m[i]);
    /* exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2), also fused */
    const float vb = v[i] * b2;
    const float wg = w2 * gi;
    const float vi = (float)((double)wg * (double)gi + (double)vb);
    /* denom = sqrt(v) / sqrt(bc2) + eps; param.addcdiv_(m, denom, value=-lr/bc1) */
    const float root = sqrtf(vi);
    const float denom = root / bc2 + eps;
    const float num = step_size * mi;
    p[i] = pi + num / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

/* Elements per work item of the update: small enough to balance, large enough to vectorise. */
enum { OPTIM_SPAN = 4096 };

cluda_status cluda_adamw_step(cluda_adamw *opt, const cluda_param_table *table, float *params,
                              const float *grads, const double group_lr[CLUDA_OPTIM_GROUPS]) {
  CLUDA_REQUIRE(opt != NULL && params != NULL && grads != NULL && group_lr != NULL, CLUDA_ERR_ARG,
                "adamw_step: opt, params, grads or group_lr is NULL");
  CLUDA_TRY(check_table("adamw_step", table));
  CLUDA_REQUIRE(params != grads, CLUDA_ERR_ARG, "adamw_step: params and grads alias");
  CLUDA_REQUIRE(opt->m != NULL && opt->v != NULL, CLUDA_ERR_ARG,
                "adamw_step: optimizer state not initialised (m/v NULL)");
  CLUDA_REQUIRE(table->total == opt->total && table->count == opt->entries &&
                    cluda_param_table_hash(table) == opt->table_hash,
                CLUDA_ERR_ARG,
                "adamw_step: the parameter table (%d entries, %zu floats) is not the one the "
                "optimizer was initialised with (%d entries, %zu floats; names, shapes, groups "
                "and no_decay flags must match too)",
                table->count, table->total, opt->entries, opt->total);
  for (int g = 0; g < CLUDA_OPTIM_GROUPS; g++)
    CLUDA_REQUIRE(isfinite(group_lr[g]) && group_lr[g] >= 0.0, CLUDA_ERR_ARG,
                  "adamw_step: lr of group %s is %g (must be finite and >= 0)",
                  g == CLUDA_GROUP_HEAD ? "head" : "encoder", group_lr[g]);
  CLUDA_TRY(check_config(&opt->config));

  const cluda_adamw_config *c = &opt->config;
  const int64_t t = opt->step + 1;
  /* torch: bias_correction1 = 1 - beta1**step, bias_correction2 = (1 - beta2**step)**0.5 */
  const double bc1 = 1.0 - pow(c->beta1, (double)t);
  const double bc2_sqrt = pow(1.0 - pow(c->beta2, (double)t), 0.5);
  double decay[CLUDA_OPTIM_GROUPS], step_size[CLUDA_OPTIM_GROUPS];
  for (int g = 0; g < CLUDA_OPTIM_GROUPS; g++) {
    decay[g] = 1.0 - group_lr[g] * c->weight_decay;
    step_size[g] = -(group_lr[g] / bc1);
  }
  float *m = opt->m, *v = opt->v;

#pragma omp parallel if (table->total > OPTIM_PARALLEL_MIN)
  for (int e = 0; e < table->count; e++) {
    const cluda_param_info *info = &table->items[e];
    const int g = info->group == CLUDA_GROUP_HEAD ? 1 : 0;
    /* torch skips the multiply when weight_decay == 0; multiplying by 1.0f is the same */
    const int decay_on = c->weight_decay != 0.0 && !info->no_decay;
    const adamw_span_args a = {decay_on ? (float)decay[g] : 1.0f,
                               (float)step_size[g],
                               (float)(1.0 - c->beta1),
                               (float)c->beta2,
                               (float)(1.0 - c->beta2),
                               (float)bc2_sqrt,
                               (float)c->eps};
    const int64_t n = (int64_t)info->count, spans = (n + OPTIM_SPAN - 1) / OPTIM_SPAN;
#pragma omp for schedule(static) nowait
    for (int64_t k = 0; k < spans; k++) {
      const size_t at = info->offset + (size_t)k * OPTIM_SPAN;
      const int64_t len = n - k * OPTIM_SPAN < OPTIM_SPAN ? n - k * OPTIM_SPAN : OPTIM_SPAN;
      adamw_span(&a, params + at, m + at, v + at, grads + at, len);
    }
  }
  opt->step = t;
  return cluda_ok();
}

/* ---------------------------------------------------------------------------------------- */

cluda_status cluda_grad_zero(const cluda_param_table *table, float *grads) {
  CLUDA_TRY(check_table("grad_zero", table));
  CLUDA_REQUIRE(grads != NULL, CLUDA_ERR_ARG, "grad_zero: grads is NULL");
  const int64_t chunks = (int64_t)((table->total + OPTIM_CHUNK - 1) / OPTIM_CHUNK);
#pragma omp parallel for schedule(static) if (table->total > OPTIM_PARALLEL_MIN)
  for (int64_t c = 0; c < chunks; c++) {
    size_t start = (size_t)c * OPTIM_CHUNK;
    size_t end = start + OPTIM_CHUNK < table->total ? start + OPTIM_CHUNK : table->total;
    memset(grads + start, 0, (end - start) * sizeof *grads);
  }
  return cluda_ok();
}

/* Index of the first entry whose elements reach beyond flat offset `pos` (entries are in
 * increasing offset order), or table->count. */
static int first_entry_after(const cluda_param_table *table, size_t pos) {
  int lo = 0, hi = table->count;
  while (lo < hi) {
    int mid = lo + (hi - lo) / 2;
    const cluda_param_info *p = &table->items[mid];
    if (p->offset + p->count <= pos)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

/* Per fixed chunk of the flat buffer: the double sum of squares of its entry elements and
 * the first non-finite flat index (SIZE_MAX if none). */
static void chunk_stats(const cluda_param_table *table, const float *grads, int64_t c, double *sum,
                        size_t *first_bad) {
  const size_t start = (size_t)c * OPTIM_CHUNK;
  const size_t end = start + OPTIM_CHUNK < table->total ? start + OPTIM_CHUNK : table->total;
  double s = 0.0;
  size_t bad = SIZE_MAX;
  for (int e = first_entry_after(table, start); e < table->count; e++) {
    const cluda_param_info *p = &table->items[e];
    if (p->offset >= end) break;
    const size_t lo = p->offset > start ? p->offset : start;
    const size_t hi = p->offset + p->count < end ? p->offset + p->count : end;
    for (size_t i = lo; i < hi; i++) {
      const double x = grads[i];
      s += x * x;
    }
    if (bad == SIZE_MAX && !isfinite(s))
      for (size_t i = lo; i < hi; i++)
        if (!isfinite(grads[i])) {
          bad = i;
          break;
        }
  }
  *sum = s;
  *first_bad = bad;
}

/* Runs chunk_stats over the table; sum of squares in chunk order, min bad index. */
static cluda_status grad_stats(const char *op, const cluda_param_table *table, const float *grads,
                               double *sum_sq, size_t *first_bad) {
  CLUDA_TRY(check_table(op, table));
  CLUDA_REQUIRE(grads != NULL, CLUDA_ERR_ARG, "%s: grads is NULL", op);
  const int64_t chunks = (int64_t)((table->total + OPTIM_CHUNK - 1) / OPTIM_CHUNK);
  double *sums = malloc((size_t)chunks * sizeof *sums);
  size_t *bads = malloc((size_t)chunks * sizeof *bads);
  if (!sums || !bads) {
    free(sums);
    free(bads);
    return CLUDA_FAIL(CLUDA_ERR_ALLOC, "%s: cannot allocate %lld partial sums", op,
                      (long long)chunks);
  }
#pragma omp parallel for schedule(static) if (table->total > OPTIM_PARALLEL_MIN)
  for (int64_t c = 0; c < chunks; c++)
    chunk_stats(table, grads, c, &sums[c], &bads[c]);
  double s = 0.0;
  size_t bad = SIZE_MAX;
  for (int64_t c = 0; c < chunks; c++) {
    s += sums[c];
    if (bads[c] < bad) bad = bads[c];
  }
  free(sums);
  free(bads);
  *sum_sq = s;
  *first_bad = bad;
  return cluda_ok();
}

cluda_status cluda_grad_norm(const cluda_param_table *table, const float *grads, double *norm) {
  CLUDA_REQUIRE(norm != NULL, CLUDA_ERR_ARG, "grad_norm: norm is NULL");
  double sum_sq = 0.0;
  size_t bad = SIZE_MAX;
  CLUDA_TRY(grad_stats("grad_norm", table, grads, &sum_sq, &bad));
  *norm = sqrt(sum_sq);
  return cluda_ok();
}

cluda_status cluda_grad_clip(const cluda_param_table *table, float *grads, double max_norm,
                             double *norm) {
  CLUDA_REQUIRE(isfinite(max_norm) && max_norm > 0.0, CLUDA_ERR_ARG,
                "grad_clip: max_norm %g must be > 0", max_norm);
  double n;
  CLUDA_TRY(cluda_grad_norm(table, grads, &n));
  if (norm) *norm = n;
  const double coef = max_norm / (n + 1e-6);
  if (!(coef < 1.0)) return cluda_ok(); /* torch multiplies by the clamped 1.0: a no-op */
  const float scale = (float)coef;
#pragma omp parallel if (table->total > OPTIM_PARALLEL_MIN)
  for (int e = 0; e < table->count; e++) {
    float *ge = grads + table->items[e].offset;
    const int64_t cnt = (int64_t)table->items[e].count;
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < cnt; i++)
      ge[i] *= scale;
  }
  return cluda_ok();
}

cluda_status cluda_grad_check_finite(const cluda_param_table *table, const float *grads,
                                     int *bad_entry, int64_t *bad_element) {
  if (bad_entry) *bad_entry = -1;
  if (bad_element) *bad_element = -1;
  double sum_sq = 0.0;
  size_t bad = SIZE_MAX;
  CLUDA_TRY(grad_stats("grad_check_finite", table, grads, &sum_sq, &bad));
  if (bad == SIZE_MAX) return cluda_ok();
  const int e = first_entry_after(table, bad);
  const cluda_param_info *p = &table->items[e];
  const int64_t element = (int64_t)(bad - p->offset);
  if (bad_entry) *bad_entry = e;
  if (bad_element) *bad_element = element;
  return CLUDA_FAIL(CLUDA_ERR_ARG, "non-finite gradient in %s (element %lld of %zu is %g)", p->name,
                    (long long)element, p->count, (double)grads[bad]);
}

/* ---------------------------------------------------------------------------------------- */

double cluda_ema_alpha(int64_t t, double alpha) {
  const double warm = 1.0 - 1.0 / ((double)t + 1.0);
  return warm < alpha ? warm : alpha;
}

cluda_status cluda_ema_update(const cluda_param_table *table, float *teacher, const float *student,
                              int64_t t, double alpha) {
  CLUDA_TRY(check_table("ema_update", table));
  CLUDA_REQUIRE(teacher != NULL && student != NULL, CLUDA_ERR_ARG,
                "ema_update: teacher or student is NULL");
  CLUDA_REQUIRE(t >= 0, CLUDA_ERR_ARG, "ema_update: iteration %lld must be >= 0", (long long)t);
  CLUDA_REQUIRE(alpha >= 0.0 && alpha <= 1.0, CLUDA_ERR_ARG,
                "ema_update: alpha %g must be in [0, 1]", alpha);
  CLUDA_REQUIRE(teacher != student, CLUDA_ERR_ARG, "ema_update: teacher and student alias");
  const double a = cluda_ema_alpha(t, alpha);
  /* Python: alpha_teacher * ema + (1 - alpha_teacher) * param, two float products and a sum */
  const float fa = (float)a, fb = (float)(1.0 - a);
  const int copy = t == 0;
#pragma omp parallel if (table->total > OPTIM_PARALLEL_MIN)
  for (int e = 0; e < table->count; e++) {
    const cluda_param_info *p = &table->items[e];
    float *te = teacher + p->offset;
    const float *se = student + p->offset;
    const int64_t n = (int64_t)p->count;
    if (copy) {
#pragma omp for schedule(static) nowait
      for (int64_t i = 0; i < n; i++)
        te[i] = se[i];
    } else {
#pragma omp for schedule(static) nowait
      for (int64_t i = 0; i < n; i++) {
        const float x = fa * te[i];
        const float y = fb * se[i];
        te[i] = x + y;
      }
    }
  }
  return cluda_ok();
}

/* ---------------------------------------------------------------------------------------- */

cluda_lr_schedule cluda_lr_schedule_default(void) {
  cluda_lr_schedule s;
  s.max_iters = 40000;
  s.power = 1.0;
  s.min_lr = 0.0;
  s.warmup = CLUDA_WARMUP_LINEAR;
  s.warmup_iters = 1500;
  s.warmup_ratio = 1e-6;
  return s;
}

cluda_status cluda_lr_at(const cluda_lr_schedule *s, double base_lr, int64_t t, double *lr) {
  CLUDA_REQUIRE(s != NULL && lr != NULL, CLUDA_ERR_ARG, "lr_at: schedule or lr is NULL");
  CLUDA_REQUIRE(s->max_iters >= 1, CLUDA_ERR_ARG, "lr_at: max_iters %lld must be >= 1",
                (long long)s->max_iters);
  CLUDA_REQUIRE(isfinite(s->power) && s->power >= 0.0, CLUDA_ERR_ARG,
                "lr_at: power %g must be >= 0", s->power);
  CLUDA_REQUIRE(isfinite(s->min_lr) && s->min_lr >= 0.0, CLUDA_ERR_ARG,
                "lr_at: min_lr %g must be >= 0", s->min_lr);
  CLUDA_REQUIRE(s->warmup >= CLUDA_WARMUP_NONE && s->warmup <= CLUDA_WARMUP_EXP, CLUDA_ERR_ARG,
                "lr_at: unknown warmup %d", (int)s->warmup);
  /* mmcv asserts warmup_iters > 0 and 0 < warmup_ratio <= 1 when a warm-up is set */
  CLUDA_REQUIRE(s->warmup == CLUDA_WARMUP_NONE || s->warmup_iters >= 1, CLUDA_ERR_ARG,
                "lr_at: warmup_iters %lld must be >= 1", (long long)s->warmup_iters);
  CLUDA_REQUIRE(s->warmup == CLUDA_WARMUP_NONE || (s->warmup_ratio > 0.0 && s->warmup_ratio <= 1.0),
                CLUDA_ERR_ARG, "lr_at: warmup_ratio %g must be in (0, 1]", s->warmup_ratio);
  CLUDA_REQUIRE(isfinite(base_lr) && base_lr >= 0.0, CLUDA_ERR_ARG,
                "lr_at: base lr %g must be finite and >= 0", base_lr);
  CLUDA_REQUIRE(t >= 0 && t <= s->max_iters, CLUDA_ERR_ARG,
                "lr_at: iteration %lld outside [0, max_iters = %lld]", (long long)t,
                (long long)s->max_iters);
  /* PolyLrUpdaterHook.get_lr: coeff = (1 - progress / max_progress) ** power */
  const double coeff = pow(1.0 - (double)t / (double)s->max_iters, s->power);
  const double regular = (base_lr - s->min_lr) * coeff + s->min_lr;
  if (s->warmup == CLUDA_WARMUP_NONE || t >= s->warmup_iters) {
    *lr = regular;
    return cluda_ok();
  }
  /* LrUpdaterHook.get_warmup_lr, applied to the regular lr of this iteration */
  const double progress = (double)t / (double)s->warmup_iters;
  switch (s->warmup) {
  case CLUDA_WARMUP_CONSTANT: *lr = regular * s->warmup_ratio; break;
  case CLUDA_WARMUP_LINEAR: {
    const double k = (1.0 - progress) * (1.0 - s->warmup_ratio);
    *lr = regular * (1.0 - k);
    break;
  }
  default: *lr = regular * pow(s->warmup_ratio, 1.0 - progress); break;
  }
  return cluda_ok();
}

cluda_status cluda_lr_group_lrs(const cluda_lr_schedule *schedule, const cluda_adamw_config *config,
                                int64_t t, double group_lr[CLUDA_OPTIM_GROUPS]) {
  CLUDA_REQUIRE(config != NULL && group_lr != NULL, CLUDA_ERR_ARG,
                "lr_group_lrs: config or group_lr is NULL");
  CLUDA_TRY(check_config(config));
  /* mmcv DefaultOptimizerConstructor: group lr = base_lr * lr_mult, then scheduled per group */
  CLUDA_TRY(cluda_lr_at(schedule, config->lr, t, &group_lr[CLUDA_GROUP_ENCODER]));
  CLUDA_TRY(
      cluda_lr_at(schedule, config->lr * config->head_lr_mult, t, &group_lr[CLUDA_GROUP_HEAD]));
  return cluda_ok();
}

cluda_status cluda_lr_scaling_parse(const char *text, cluda_lr_scaling *mode) {
  CLUDA_REQUIRE(text != NULL && mode != NULL, CLUDA_ERR_ARG, "lr_scaling: NULL argument");
  if (strcmp(text, "none") == 0)
    *mode = CLUDA_LR_SCALING_NONE;
  else if (strcmp(text, "linear") == 0)
    *mode = CLUDA_LR_SCALING_LINEAR;
  else if (strcmp(text, "sqrt") == 0)
    *mode = CLUDA_LR_SCALING_SQRT;
  else
    return CLUDA_FAIL(CLUDA_ERR_ARG, "lr_scaling: '%s' is not none, linear or sqrt", text);
  return cluda_ok();
}

const char *cluda_lr_scaling_name(cluda_lr_scaling mode) {
  switch (mode) {
  case CLUDA_LR_SCALING_NONE: return "none";
  case CLUDA_LR_SCALING_LINEAR: return "linear";
  case CLUDA_LR_SCALING_SQRT: return "sqrt";
  }
  return "unknown";
}

cluda_status cluda_lr_scale_factor(cluda_lr_scaling mode, int global_batch, int reference_batch,
                                   double *factor) {
  CLUDA_REQUIRE(factor != NULL, CLUDA_ERR_ARG, "lr_scale_factor: factor is NULL");
  CLUDA_REQUIRE(global_batch >= 1 && reference_batch >= 1, CLUDA_ERR_ARG,
                "lr_scale_factor: batches %d and %d must be >= 1", global_batch, reference_batch);
  const double ratio = (double)global_batch / (double)reference_batch;
  switch (mode) {
  case CLUDA_LR_SCALING_NONE: *factor = 1.0; return cluda_ok();
  case CLUDA_LR_SCALING_LINEAR: *factor = ratio; return cluda_ok();
  case CLUDA_LR_SCALING_SQRT: *factor = sqrt(ratio); return cluda_ok();
  }
  return CLUDA_FAIL(CLUDA_ERR_ARG, "lr_scale_factor: unknown mode %d", (int)mode);
}

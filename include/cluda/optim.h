/* Optimizer, EMA teacher and learning-rate schedule over the flat parameter buffer of a
 * cluda_param_table (see params.h). Everything is a single pass over the entries of the table;
 * the padding floats between entries are never read or written (m and v keep zero padding).
 * All updates are elementwise, so results do not depend on the OpenMP thread count; the
 * gradient norm uses fixed chunks and an ordered double reduction for the same reason.
 *
 * Reference semantics (algorithm.md sections 1.2, 1.3, 4.1, 4.2; decisions.md):
 *   - AdamW is torch.optim.AdamW (decoupled decay, bias corrections, eps outside the sqrt);
 *     parameter groups come from each entry's `group` (HEAD: lr x head_lr_mult) and
 *     `no_decay` (weight decay 0), as mmcv's DefaultOptimizerConstructor custom_keys do.
 *   - The EMA teacher averages trainable parameters only, never BN buffers.
 *   - The learning rate follows mmcv's PolyLrUpdaterHook with iteration-based warm-up. */
#ifndef CLUDA_OPTIM_H
#define CLUDA_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "cluda/params.h"
#include "cluda/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of optimizer groups (cluda_param_group values index arrays of this size). */
enum { CLUDA_OPTIM_GROUPS = 2 };

/* ---------------------------------------------------------------------------------------
 * AdamW
 * --------------------------------------------------------------------------------------- */

typedef struct cluda_adamw_config {
  double lr;           /* base lr of the ENCODER group before scheduling (6e-5) */
  double head_lr_mult; /* lr multiplier of the HEAD group (10) */
  double beta1;        /* 0.9 */
  double beta2;        /* 0.999 */
  double eps;          /* 1e-8, added to sqrt(v_hat) */
  double weight_decay; /* 0.01; entries with no_decay use 0 */
} cluda_adamw_config;

/* The reference numbers (decisions.md "Fixed numbers"). */
cluda_adamw_config cluda_adamw_default_config(void);

/* The optimizer state. A plain struct: a checkpoint saves config, step, table_hash and the
 * `total` floats of m and v, and restores them into a state made by cluda_adamw_init for the
 * same table (copy step and the m/v contents; keep the pointers). */
typedef struct cluda_adamw {
  cluda_adamw_config config;
  int64_t step;        /* completed steps; the next step uses t = step + 1 */
  size_t total;        /* floats in m and v: the table's total, padding included */
  int entries;         /* table->count at init */
  uint64_t table_hash; /* hash of names, shapes, offsets, groups and no_decay flags */
  float *m;            /* first moment (exp_avg), parameter layout, padding 0 */
  float *v;            /* second moment (exp_avg_sq), parameter layout, padding 0 */
} cluda_adamw;

/* Allocates zeroed m and v for `table` (step 0). Fails on NULL arguments, an empty table or
 * a config with lr < 0, head_lr_mult < 0, betas outside [0, 1), eps <= 0 or decay < 0. */
cluda_status cluda_adamw_init(cluda_adamw *opt, const cluda_param_table *table,
                              const cluda_adamw_config *config);
/* Frees m and v; safe on a zeroed or already freed struct. */
void cluda_adamw_free(cluda_adamw *opt);

/* Fingerprint of a table's layout (what cluda_adamw_init stores in table_hash). */
uint64_t cluda_param_table_hash(const cluda_param_table *table);

/* One AdamW step with t = ++opt->step, for every entry e of `table`:
 *   lr  = group_lr[e.group]  (already scheduled; see cluda_lr_group_lrs)
 *   wd  = e.no_decay ? 0 : config.weight_decay
 *   p  *= 1 - lr wd
 *   m   = m + (1 - b1) (g - m)                 (torch lerp_)
 *   v   = b2 v + (1 - b2) g g                  (torch mul_ + addcmul_)
 *   p  += (-lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * Scalars are formed in double and rounded to float as torch does for Python scalars; the
 * elementwise arithmetic is float in torch's operation order, with the m and v updates
 * rounded once (fused multiply-add) as torch's vectorised CPU kernels do. Gradients of padding are
 * ignored. Fails, with nothing updated, on NULL or aliased buffers, a table that differs from the
 * one given to init, or a group lr that is negative or not finite. Non-finite gradients are not
 * checked here (see cluda_grad_check_finite). */
cluda_status cluda_adamw_step(cluda_adamw *opt, const cluda_param_table *table, float *params,
                              const float *grads, const double group_lr[CLUDA_OPTIM_GROUPS]);

/* ---------------------------------------------------------------------------------------
 * Gradients
 * --------------------------------------------------------------------------------------- */

/* Sets all table->total floats of grads (padding included) to 0. */
cluda_status cluda_grad_zero(const cluda_param_table *table, float *grads);

/* Global L2 norm of the gradients of all entries (padding excluded), accumulated in double
 * over fixed chunks of the flat buffer and summed in chunk order: the same bits for any
 * thread count. Non-finite gradients give a non-finite norm. */
cluda_status cluda_grad_norm(const cluda_param_table *table, const float *grads, double *norm);

/* torch.nn.utils.clip_grad_norm_: with n the global norm, scales every gradient by
 * max_norm / (n + 1e-6) when that is below 1. *norm (may be NULL) receives n. Clipping is
 * off in the reference; the trainer calls this only when configured. */
cluda_status cluda_grad_clip(const cluda_param_table *table, float *grads, double max_norm,
                             double *norm);

/* Finds the first non-finite gradient in table order (padding excluded). Returns OK with
 * *bad_entry = -1 when all are finite; otherwise CLUDA_ERR_ARG whose message names the
 * parameter, the element and the value, with *bad_entry / *bad_element (each may be NULL)
 * set. The trainer adds the iteration and the loss term. */
cluda_status cluda_grad_check_finite(const cluda_param_table *table, const float *grads,
                                     int *bad_entry, int64_t *bad_element);

/* ---------------------------------------------------------------------------------------
 * EMA teacher (algorithm.md 1.2-1.3)
 * --------------------------------------------------------------------------------------- */

/* alpha_t = min(1 - 1/(t + 1), alpha) for the 0-based iteration t: 0 at t = 0, 0.5 at
 * t = 1, 0.9 at t = 9, alpha (0.999) from t = 999 on. */
double cluda_ema_alpha(int64_t t, double alpha);

/* The teacher update at the START of iteration t (0-based), before any forward of that
 * iteration, so `student` holds the weights after optimizer step t - 1 (the (t)th step):
 *   t == 0: teacher = student (copy);
 *   t  > 0: teacher = a teacher + (1 - a) student, a = cluda_ema_alpha(t, alpha), with a
 *           and 1 - a rounded to float as torch does.
 * Only the trainable parameters (this flat buffer) are averaged; the teacher's BN running
 * statistics evolve from its own forwards and are never copied. Padding is untouched.
 * Fails on NULL buffers, t < 0, or alpha outside [0, 1]. */
cluda_status cluda_ema_update(const cluda_param_table *table, float *teacher, const float *student,
                              int64_t t, double alpha);

/* ---------------------------------------------------------------------------------------
 * Learning-rate schedule: mmcv PolyLrUpdaterHook, by_epoch=False
 * --------------------------------------------------------------------------------------- */

typedef enum cluda_warmup {
  CLUDA_WARMUP_NONE = 0,
  CLUDA_WARMUP_CONSTANT = 1, /* lr = regular ratio */
  CLUDA_WARMUP_LINEAR = 2,   /* lr = regular (1 - (1 - t/W)(1 - ratio)) */
  CLUDA_WARMUP_EXP = 3       /* lr = regular ratio^(1 - t/W) */
} cluda_warmup;

typedef struct cluda_lr_schedule {
  int64_t max_iters;    /* 40000 */
  double power;         /* 1.0 */
  double min_lr;        /* 0; an absolute lr, the same for every group (as mmcv) */
  cluda_warmup warmup;  /* linear */
  int64_t warmup_iters; /* 1500 */
  double warmup_ratio;  /* 1e-6 */
} cluda_lr_schedule;

/* The reference schedule (algorithm.md 4.2). */
cluda_lr_schedule cluda_lr_schedule_default(void);

/* The lr of a group whose initial lr is base_lr, set before 0-based iteration t:
 *   regular = (base_lr - min_lr) (1 - t/max_iters)^power + min_lr
 *   t < warmup_iters (and warmup != NONE): mmcv get_warmup_lr applied to `regular`
 *   otherwise: regular
 * Evaluated in double in mmcv's operation order (bit-identical to the Python). Fails on
 * NULL, t < 0, t > max_iters, base_lr < 0 or an invalid schedule. */
cluda_status cluda_lr_at(const cluda_lr_schedule *schedule, double base_lr, int64_t t, double *lr);

/* Both groups' lrs at iteration t: base lrs config->lr and config->lr * head_lr_mult (as
 * mmcv's optimizer constructor), each through cluda_lr_at. The result feeds
 * cluda_adamw_step. */
cluda_status cluda_lr_group_lrs(const cluda_lr_schedule *schedule, const cluda_adamw_config *config,
                                int64_t t, double group_lr[CLUDA_OPTIM_GROUPS]);

/* optim.lr_scaling (decisions.md 21): how the base lr follows the global batch. */
typedef enum cluda_lr_scaling {
  CLUDA_LR_SCALING_NONE = 0,   /* keep the lr (default) */
  CLUDA_LR_SCALING_LINEAR = 1, /* lr x batch / reference_batch */
  CLUDA_LR_SCALING_SQRT = 2    /* lr x sqrt(batch / reference_batch) */
} cluda_lr_scaling;

/* Parses "none" | "linear" | "sqrt". */
cluda_status cluda_lr_scaling_parse(const char *text, cluda_lr_scaling *mode);
const char *cluda_lr_scaling_name(cluda_lr_scaling mode);

/* The factor for the base lr when the global batch (images per domain, all ranks) is
 * `global_batch` and the defaults were tuned for `reference_batch` (2). Fails on NULL,
 * non-positive batches or an unknown mode. */
cluda_status cluda_lr_scale_factor(cluda_lr_scaling mode, int global_batch, int reference_batch,
                                   double *factor);

#ifdef __cplusplus
}
#endif
#endif

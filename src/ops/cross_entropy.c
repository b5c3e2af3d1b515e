/* Per-pixel cross-entropy over the class axis of NHWC logits, with an ignore label and
 * optional per-pixel weights, averaged over ALL pixels (mmseg 0.16: ignored and zero-weight
 * pixels stay in the denominator). log-softmax uses the max-subtracted log-sum-exp. */
#include <math.h>
#include <string.h>

#include "op_common.h"

/* The loss is summed in this many fixed pixel ranges, each in double, and the partials are
 * added in order: the result is the same for any thread count. */
enum { CE_CHUNKS = 256 };

static cluda_status check_scalar(const char *op, const char *name, const cluda_tensor *t) {
  char d[64];
  CLUDA_TRY(cluda_check_tensor(op, name, t, CLUDA_F32, -1));
  CLUDA_REQUIRE(cluda_tensor_numel(t) == 1, CLUDA_ERR_SHAPE,
                "%s: %s %s must have exactly one element", op, name,
                cluda_tensor_describe(t, d, sizeof d));
  return cluda_ok();
}

static cluda_status check_inputs(const char *op, const cluda_tensor *logits,
                                 const cluda_tensor *labels, const cluda_tensor *weights,
                                 int ignore_index) {
  char dl[64], dt[64];
  CLUDA_TRY(cluda_check_tensor(op, "logits", logits, CLUDA_F32, 4));
  CLUDA_REQUIRE(logits->shape[3] >= 1, CLUDA_ERR_SHAPE,
                "%s: logits %s must have at least one class", op,
                cluda_tensor_describe(logits, dl, sizeof dl));
  CLUDA_TRY(cluda_check_tensor(op, "labels", labels, CLUDA_U8, 3));
  CLUDA_REQUIRE(labels->shape[0] == logits->shape[0] && labels->shape[1] == logits->shape[1] &&
                    labels->shape[2] == logits->shape[2],
                CLUDA_ERR_SHAPE, "%s: labels %s must be [N,H,W] of logits %s", op,
                cluda_tensor_describe(labels, dt, sizeof dt),
                cluda_tensor_describe(logits, dl, sizeof dl));
  if (weights) {
    CLUDA_TRY(cluda_check_tensor(op, "weights", weights, CLUDA_F32, 3));
    CLUDA_REQUIRE_SAME_SHAPE(op, "weights", weights, "labels", labels);
  }
  CLUDA_REQUIRE(ignore_index >= 0 && ignore_index <= 255, CLUDA_ERR_ARG,
                "%s: ignore_index %d must be in 0..255 (labels are u8)", op, ignore_index);
  return cluda_ok();
}

cluda_status cluda_cross_entropy_forward(cluda_ctx *ctx, const cluda_tensor *logits,
                                         const cluda_tensor *labels, const cluda_tensor *weights,
                                         int ignore_index, cluda_tensor *loss) {
  static const char op[] = "cross_entropy_forward";
  CLUDA_TRY(check_inputs(op, logits, labels, weights, ignore_index));
  CLUDA_TRY(check_scalar(op, "loss", loss));
  CLUDA_DISPATCH(ctx, cross_entropy_forward, logits, labels, weights, ignore_index, loss);
}

cluda_status cluda_cross_entropy_backward(cluda_ctx *ctx, const cluda_tensor *logits,
                                          const cluda_tensor *labels, const cluda_tensor *weights,
                                          int ignore_index, const cluda_tensor *dloss,
                                          cluda_tensor *dlogits) {
  static const char op[] = "cross_entropy_backward";
  CLUDA_TRY(check_inputs(op, logits, labels, weights, ignore_index));
  CLUDA_TRY(check_scalar(op, "dloss", dloss));
  CLUDA_TRY(cluda_check_tensor(op, "dlogits", dlogits, CLUDA_F32, 4));
  CLUDA_REQUIRE_SAME_SHAPE(op, "dlogits", dlogits, "logits", logits);
  CLUDA_DISPATCH(ctx, cross_entropy_backward, logits, labels, weights, ignore_index, dloss,
                 dlogits);
}

/* ---- CPU implementations ---- */

/* Labels live in memory the op reads, so this check belongs to the backend: every label
 * must be a class (< K) or ignore_index. Reports the first offending pixel (a min
 * reduction, so the same pixel for any thread count) before any output is written. */
static cluda_status check_label_values(const char *op, const cluda_tensor *labels, int k,
                                       int ignore_index) {
  const uint8_t *lab = cluda_u8(labels);
  const int64_t p = cluda_tensor_numel(labels);
  int64_t first = p;
#pragma omp parallel for schedule(static) reduction(min : first) if (p > 262144)
  for (int64_t i = 0; i < p; i++)
    if (lab[i] >= k && lab[i] != ignore_index && i < first) first = i;
  if (first < p) {
    const int h = labels->shape[1], w = labels->shape[2];
    return CLUDA_FAIL(CLUDA_ERR_ARG,
                      "%s: label %d at pixel (n=%d, h=%d, w=%d) is neither a class (< K = %d) "
                      "nor ignore_index %d",
                      op, lab[first], (int)(first / ((int64_t)h * w)), (int)(first / w % h),
                      (int)(first % w), k, ignore_index);
  }
  return cluda_ok();
}

/* max of a row, for the max-subtracted log-sum-exp */
static inline float row_max(const float *z, int k) {
  float m = z[0];
  for (int j = 1; j < k; j++)
    m = z[j] > m ? z[j] : m;
  return m;
}

cluda_status cluda_cpu_cross_entropy_forward(cluda_ctx *ctx, const cluda_tensor *logits,
                                             const cluda_tensor *labels,
                                             const cluda_tensor *weights, int ignore_index,
                                             cluda_tensor *loss) {
  (void)ctx;
  const int k = logits->shape[3];
  CLUDA_TRY(check_label_values("cross_entropy_forward", labels, k, ignore_index));
  const int64_t p = cluda_tensor_numel(labels);
  const float *z = cluda_f32(logits);
  const uint8_t *lab = cluda_u8(labels);
  const float *w = weights ? cluda_f32(weights) : NULL;
  if (p == 0) { /* no pixels: nothing to average */
    cluda_f32(loss)[0] = 0.0f;
    return cluda_ok();
  }
  const int64_t chunk = (p + CE_CHUNKS - 1) / CE_CHUNKS;
  const int chunks = (int)((p + chunk - 1) / chunk);
  double partial[CE_CHUNKS];
#pragma omp parallel for schedule(static) if (p * k > 16384)
  for (int ci = 0; ci < chunks; ci++) {
    const int64_t begin = ci * chunk, end = begin + chunk < p ? begin + chunk : p;
    double sum = 0.0;
    for (int64_t i = begin; i < end; i++) {
      const int l = lab[i];
      if (l == ignore_index) continue;
      const double wi = w ? (double)w[i] : 1.0;
      if (wi == 0.0) continue;
      const float *zi = z + i * k;
      const float m = row_max(zi, k);
      double s = 0.0;
      for (int j = 0; j < k; j++)
        s += (double)expf(zi[j] - m);
      /* -log softmax[l] = log sum exp(z - m) + m - z[l] */
      sum += wi * (log(s) + (double)m - (double)zi[l]);
    }
    partial[ci] = sum;
  }
  double total = 0.0;
  for (int ci = 0; ci < chunks; ci++)
    total += partial[ci];
  cluda_f32(loss)[0] = (float)(total / (double)p);
  return cluda_ok();
}

cluda_status cluda_cpu_cross_entropy_backward(cluda_ctx *ctx, const cluda_tensor *logits,
                                              const cluda_tensor *labels,
                                              const cluda_tensor *weights, int ignore_index,
                                              const cluda_tensor *dloss, cluda_tensor *dlogits) {
  (void)ctx;
  const int k = logits->shape[3];
  CLUDA_TRY(check_label_values("cross_entropy_backward", labels, k, ignore_index));
  const int64_t p = cluda_tensor_numel(labels);
  const float *z = cluda_f32(logits);
  const uint8_t *lab = cluda_u8(labels);
  const float *w = weights ? cluda_f32(weights) : NULL;
  float *d = cluda_f32(dlogits);
  const double g = p > 0 ? (double)cluda_f32(dloss)[0] / (double)p : 0.0;
  /* one pixel per iteration: rows of dlogits are independent */
#pragma omp parallel for schedule(static) if (p * k > 16384)
  for (int64_t i = 0; i < p; i++) {
    float *di = d + i * k;
    const int l = lab[i];
    const float scale = l == ignore_index ? 0.0f : (float)(g * (w ? (double)w[i] : 1.0));
    if (scale == 0.0f) { /* ignored, zero weight or zero dloss: a zero row */
      memset(di, 0, sizeof(float) * (size_t)k);
      continue;
    }
    const float *zi = z + i * k;
    const float m = row_max(zi, k);
    double s = 0.0;
    for (int j = 0; j < k; j++) {
      di[j] = expf(zi[j] - m);
      s += (double)di[j];
    }
    const float inv = (float)(1.0 / s);
    /* p - 1 is exact for p >= 1/2, so subtract before scaling */
    const float pl = di[l] * inv - 1.0f;
    for (int j = 0; j < k; j++)
      di[j] = di[j] * inv * scale;
    di[l] = pl * scale;
  }
  return cluda_ok();
}

/* Dropout (per element), Dropout2d (per (sample, channel) of NHWC) and DropPath (per
 * sample). Mask element i is kept iff cluda_rng_uniform(key, i) >= p: a pure function of
 * the key and the index, so the mask does not depend on threads, call order or backend.
 * Kept values are multiplied by 1 / (1 - p) and dropped ones by 0, as PyTorch multiplies by
 * its scaled noise tensor. */
#include <string.h>

#include "op_common.h"

static cluda_status check_params(const char *op, const cluda_dropout_params *p) {
  CLUDA_REQUIRE(p != NULL, CLUDA_ERR_ARG, "%s: p is NULL", op);
  /* written so that NaN fails too */
  CLUDA_REQUIRE(p->p >= 0.0f && p->p < 1.0f, CLUDA_ERR_ARG, "%s: p->p = %g must be in [0, 1)", op,
                (double)p->p);
  CLUDA_REQUIRE(p->mode == CLUDA_DROPOUT_ELEMENT || p->mode == CLUDA_DROPOUT_CHANNEL ||
                    p->mode == CLUDA_DROPOUT_SAMPLE,
                CLUDA_ERR_ARG, "%s: p->mode = %d is not a cluda_dropout_mode", op, (int)p->mode);
  return cluda_ok();
}

/* The mask's shape for data tensor t (named t_name) under the mode. */
static cluda_status check_mask(const char *op, const cluda_dropout_params *p, const char *t_name,
                               const cluda_tensor *t, const cluda_tensor *mask) {
  char dt[64], dm[64];
  CLUDA_TRY(cluda_check_tensor(op, "mask", mask, CLUDA_U8, -1));
  cluda_tensor_describe(t, dt, sizeof dt);
  cluda_tensor_describe(mask, dm, sizeof dm);
  switch (p->mode) {
  case CLUDA_DROPOUT_ELEMENT:
    CLUDA_REQUIRE(cluda_tensor_numel(mask) == cluda_tensor_numel(t), CLUDA_ERR_SHAPE,
                  "%s: mode ELEMENT needs a mask with the %lld elements of %s %s, got mask %s", op,
                  (long long)cluda_tensor_numel(t), t_name, dt, dm);
    break;
  case CLUDA_DROPOUT_CHANNEL:
    CLUDA_REQUIRE(t->ndim == 4, CLUDA_ERR_SHAPE, "%s: mode CHANNEL needs NHWC %s, got %s", op,
                  t_name, dt);
    CLUDA_REQUIRE(mask->ndim == 2 && mask->shape[0] == t->shape[0] && mask->shape[1] == t->shape[3],
                  CLUDA_ERR_SHAPE,
                  "%s: mode CHANNEL needs mask [N, C] = [%d, %d] for %s %s, got %s", op,
                  t->shape[0], t->shape[3], t_name, dt, dm);
    break;
  case CLUDA_DROPOUT_SAMPLE:
    CLUDA_REQUIRE(mask->ndim == 1 && mask->shape[0] == t->shape[0], CLUDA_ERR_SHAPE,
                  "%s: mode SAMPLE needs mask [N] = [%d] for %s %s, got %s", op, t->shape[0],
                  t_name, dt, dm);
    break;
  }
  return cluda_ok();
}

cluda_status cluda_dropout_forward(cluda_ctx *ctx, const cluda_dropout_params *p,
                                   const cluda_tensor *x, cluda_tensor *y, cluda_tensor *mask) {
  const char *op = "dropout_forward";
  CLUDA_TRY(check_params(op, p));
  CLUDA_TRY(cluda_check_tensor(op, "x", x, CLUDA_F32, -1));
  CLUDA_TRY(cluda_check_tensor(op, "y", y, CLUDA_F32, -1));
  CLUDA_REQUIRE_SAME_SHAPE(op, "x", x, "y", y);
  CLUDA_TRY(check_mask(op, p, "x", x, mask));
  CLUDA_DISPATCH(ctx, dropout_forward, p, x, y, mask);
}

cluda_status cluda_dropout_backward(cluda_ctx *ctx, const cluda_dropout_params *p,
                                    const cluda_tensor *mask, const cluda_tensor *dy,
                                    cluda_tensor *dx) {
  const char *op = "dropout_backward";
  CLUDA_TRY(check_params(op, p));
  CLUDA_TRY(cluda_check_tensor(op, "dy", dy, CLUDA_F32, -1));
  CLUDA_TRY(cluda_check_tensor(op, "dx", dx, CLUDA_F32, -1));
  CLUDA_REQUIRE_SAME_SHAPE(op, "dy", dy, "dx", dx);
  CLUDA_TRY(check_mask(op, p, "dy", dy, mask));
  CLUDA_DISPATCH(ctx, dropout_backward, p, mask, dy, dx);
}

/* ---- CPU implementations ---- */

/* Philox draws cost far more than the multiply, so threads pay off early. */
enum { kParallelDraws = 4096, kParallelElems = 1 << 16 };

/* The factor kept / dropped elements are multiplied by. */
static float keep_scale(float p) { return (float)(1.0 / (1.0 - (double)p)); }

/* Draws the mask (count elements over n samples) from the key, starting at the draw of
 * sample p->first_sample; p = 0 keeps everything without drawing. */
static void draw_mask(const cluda_dropout_params *p, uint8_t *m, int64_t count, int64_t n) {
  if (p->p == 0.0f) {
    memset(m, 1, (size_t)count);
    return;
  }
  const float rate = p->p;
  const cluda_rng_key key = p->key;
  const uint64_t first = p->first_sample * (uint64_t)(count / n);
#pragma omp parallel for schedule(static) if (count > kParallelDraws)
  for (int64_t i = 0; i < count; i++)
    m[i] = cluda_rng_uniform(key, first + (uint64_t)i) >= rate;
}

/* out = in * (mask != 0 ? scale : 0) with the mask broadcast per mode: element i of the data
 * uses mask element i (ELEMENT), (n, c) (CHANNEL) or n (SAMPLE). */
static void apply_mask(cluda_dropout_mode mode, float scale, const uint8_t *m,
                       const cluda_tensor *t, const float *in, float *out) {
  const int64_t total = cluda_tensor_numel(t);
  if (total == 0) return;
  const float f[2] = {0.0f, scale};
  if (mode == CLUDA_DROPOUT_ELEMENT) {
#pragma omp parallel for schedule(static) if (total > kParallelElems)
    for (int64_t i = 0; i < total; i++)
      out[i] = in[i] * f[m[i] != 0];
  } else if (mode == CLUDA_DROPOUT_CHANNEL) {
    const int64_t n = t->shape[0], hw = (int64_t)t->shape[1] * t->shape[2];
    const int c = t->shape[3];
    const int64_t rows = n * hw;
#pragma omp parallel for schedule(static) if (total > kParallelElems)
    for (int64_t r = 0; r < rows; r++) {
      const uint8_t *mr = m + (r / hw) * c;
      for (int j = 0; j < c; j++)
        out[r * c + j] = in[r * c + j] * f[mr[j] != 0];
    }
  } else {
    const int64_t n = t->shape[0], per = total / n;
#pragma omp parallel for schedule(static) if (total > kParallelElems)
    for (int64_t i = 0; i < total; i++)
      out[i] = in[i] * f[m[i / per] != 0];
  }
}

static int64_t mask_count(const cluda_tensor *mask) { return cluda_tensor_numel(mask); }

cluda_status cluda_cpu_dropout_forward(cluda_ctx *ctx, const cluda_dropout_params *p,
                                       const cluda_tensor *x, cluda_tensor *y, cluda_tensor *mask) {
  (void)ctx;
  const int64_t count = mask_count(mask);
  if (count > 0) draw_mask(p, cluda_u8(mask), count, x->shape[0]);
  apply_mask(p->mode, keep_scale(p->p), cluda_u8(mask), x, cluda_f32(x), cluda_f32(y));
  return cluda_ok();
}

cluda_status cluda_cpu_dropout_backward(cluda_ctx *ctx, const cluda_dropout_params *p,
                                        const cluda_tensor *mask, const cluda_tensor *dy,
                                        cluda_tensor *dx) {
  (void)ctx;
  apply_mask(p->mode, keep_scale(p->p), cluda_u8(mask), dy, cluda_f32(dy), cluda_f32(dx));
  return cluda_ok();
}

/* DACS / DAFormer data transforms (see include/cluda/dacs.h). Per-pixel work is split over
 * OpenMP threads with no reductions other than integer sums, so results do not depend on the
 * thread count. The colour ops follow kornia 0.5.x in float, op by op, so the rounding is the
 * reference's (each HSV op converts to HSV and back, as kornia does). */
#include "cluda/dacs.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { DACS_PAR_MIN = 1 << 14 };

const float cluda_dacs_image_mean[3] = {123.675f, 116.28f, 103.53f};
const float cluda_dacs_image_std[3] = {58.395f, 57.12f, 57.375f};
const int cluda_fd_thing_classes[CLUDA_FD_NUM_THING_CLASSES] = {6,  7,  11, 12, 13,
                                                                14, 15, 16, 17, 18};

/* (float)(2 pi) and kornia.constants.pi (a float32 tensor) */
#define TWO_PI_F 6.2831855f
#define PI_F 3.14159265f

/* An integer in [0, m) from 32 random bits (multiply-shift; bias below m / 2^32). */
static inline int uniform_int(uint32_t word, int m) {
  return (int)(((uint64_t)word * (uint64_t)m) >> 32);
}

static inline float word_uniform(uint32_t word) {
  return (float)(word >> 8) * (1.0f / 16777216.0f);
}

/* Checks a label-like u8 [B,H,W] tensor. */
static cluda_status check_map(const char *op, const char *arg, const cluda_tensor *t,
                              cluda_dtype dtype) {
  return cluda_check_tensor(op, arg, t, dtype, 3);
}

/* Fails unless t has the batch and spatial shape of ref (the first three dimensions). */
static cluda_status check_bhw(const char *op, const char *arg, const cluda_tensor *t,
                              const char *ref_name, const cluda_tensor *ref) {
  char d1[64], d2[64];
  CLUDA_REQUIRE(
      t->shape[0] == ref->shape[0] && t->shape[1] == ref->shape[1] && t->shape[2] == ref->shape[2],
      CLUDA_ERR_SHAPE, "%s: %s %s must match %s %s in [B,H,W]", op, arg,
      cluda_tensor_describe(t, d1, sizeof d1), ref_name, cluda_tensor_describe(ref, d2, sizeof d2));
  return cluda_ok();
}

/* ---------------------------------------------------------------- pseudo-labels */

cluda_status cluda_dacs_pseudo_label(const cluda_tensor *logits, float threshold,
                                     cluda_tensor *label, cluda_tensor *prob, int64_t *confident,
                                     int64_t *total) {
  const char *op = "dacs_pseudo_label";
  char d[64];
  CLUDA_TRY(cluda_check_tensor(op, "logits", logits, CLUDA_F32, 4));
  const int k = logits->shape[3];
  CLUDA_REQUIRE(k >= 1 && k <= 255, CLUDA_ERR_SHAPE,
                "%s: logits %s must have 1..255 classes (u8 labels, 255 = ignore)", op,
                cluda_tensor_describe(logits, d, sizeof d));
  CLUDA_TRY(check_map(op, "label", label, CLUDA_U8));
  CLUDA_TRY(check_bhw(op, "label", label, "logits", logits));
  if (prob != NULL) {
    CLUDA_TRY(check_map(op, "prob", prob, CLUDA_F32));
    CLUDA_TRY(check_bhw(op, "prob", prob, "logits", logits));
  }
  CLUDA_REQUIRE(confident != NULL && total != NULL, CLUDA_ERR_ARG,
                "%s: confident and total must not be NULL", op);
  CLUDA_REQUIRE(isfinite(threshold), CLUDA_ERR_ARG, "%s: threshold %g is not finite", op,
                (double)threshold);
  const int64_t n = (int64_t)logits->shape[0] * logits->shape[1] * logits->shape[2];
  const float *x = cluda_f32(logits);
  uint8_t *lab = cluda_u8(label);
  float *pr = prob != NULL ? cluda_f32(prob) : NULL;
  int64_t count = 0;
#pragma omp parallel for schedule(static) reduction(+ : count) if (n * k > DACS_PAR_MIN)
  for (int64_t i = 0; i < n; i++) {
    const float *r = x + i * k;
    int arg = 0;
    float mx = r[0];
    for (int c = 1; c < k; c++)
      if (r[c] > mx) {
        mx = r[c];
        arg = c;
      }
    /* max softmax probability = 1 / sum exp(l - max) */
    double s = 0.0;
    for (int c = 0; c < k; c++)
      s += exp((double)r[c] - (double)mx);
    const float p = (float)(1.0 / s);
    lab[i] = (uint8_t)arg;
    if (pr != NULL) pr[i] = p;
    count += p >= threshold;
  }
  *confident = count;
  *total = n;
  return cluda_ok();
}

double cluda_dacs_gamma(int64_t confident, int64_t total) {
  return total > 0 ? (double)confident / (double)total : 0.0;
}

cluda_status cluda_dacs_margin_mask(int top, int bottom, cluda_tensor *valid) {
  const char *op = "dacs_margin_mask";
  CLUDA_REQUIRE(top >= 0 && bottom >= 0, CLUDA_ERR_ARG, "%s: top %d and bottom %d must be >= 0", op,
                top, bottom);
  CLUDA_TRY(check_map(op, "valid", valid, CLUDA_U8));
  const int b = valid->shape[0], h = valid->shape[1], w = valid->shape[2];
  uint8_t *v = cluda_u8(valid);
  for (int n = 0; n < b; n++)
    for (int y = 0; y < h; y++) {
      const uint8_t keep = y >= top && y < h - bottom;
      memset(v + ((int64_t)n * h + y) * w, keep, (size_t)w);
    }
  return cluda_ok();
}

cluda_status cluda_dacs_pseudo_weight(float gamma, const cluda_tensor *valid,
                                      cluda_tensor *weight) {
  const char *op = "dacs_pseudo_weight";
  CLUDA_REQUIRE(isfinite(gamma), CLUDA_ERR_ARG, "%s: gamma %g is not finite", op, (double)gamma);
  CLUDA_TRY(check_map(op, "weight", weight, CLUDA_F32));
  if (valid != NULL) {
    CLUDA_TRY(check_map(op, "valid", valid, CLUDA_U8));
    CLUDA_TRY(check_bhw(op, "valid", valid, "weight", weight));
  }
  const int64_t n = cluda_tensor_numel(weight);
  float *w = cluda_f32(weight);
  const uint8_t *v = valid != NULL ? cluda_u8(valid) : NULL;
  for (int64_t i = 0; i < n; i++)
    w[i] = (v == NULL || v[i]) ? gamma : 0.0f;
  return cluda_ok();
}

/* ---------------------------------------------------------------- ClassMix */

cluda_status cluda_dacs_batch_classes(const cluda_tensor *labels, uint8_t present[256],
                                      int *count) {
  const char *op = "dacs_batch_classes";
  CLUDA_TRY(check_map(op, "labels", labels, CLUDA_U8));
  CLUDA_REQUIRE(present != NULL && count != NULL, CLUDA_ERR_ARG,
                "%s: present and count must not be NULL", op);
  const int64_t n = cluda_tensor_numel(labels);
  const uint8_t *l = cluda_u8(labels);
  int64_t hist[256] = {0};
  for (int64_t i = 0; i < n; i++)
    hist[l[i]]++;
  int c = 0;
  for (int v = 0; v < 256; v++) {
    present[v] = hist[v] > 0;
    c += present[v];
  }
  *count = c;
  return cluda_ok();
}

cluda_status cluda_dacs_classmix_masks(const cluda_tensor *src_labels, const uint8_t *batch_classes,
                                       cluda_rng_key key, uint64_t first_sample, cluda_tensor *mask,
                                       cluda_tensor *chosen) {
  const char *op = "dacs_classmix_masks";
  char d[64];
  CLUDA_TRY(check_map(op, "src_labels", src_labels, CLUDA_U8));
  CLUDA_TRY(check_map(op, "mask", mask, CLUDA_U8));
  CLUDA_TRY(check_bhw(op, "mask", mask, "src_labels", src_labels));
  const int b = src_labels->shape[0];
  if (chosen != NULL) {
    CLUDA_TRY(cluda_check_tensor(op, "chosen", chosen, CLUDA_U8, 2));
    CLUDA_REQUIRE(chosen->shape[0] == b && chosen->shape[1] == 256, CLUDA_ERR_SHAPE,
                  "%s: chosen %s must be [%d,256]", op, cluda_tensor_describe(chosen, d, sizeof d),
                  b);
  }
  uint8_t present[256];
  int n = 0;
  if (batch_classes) {
    memcpy(present, batch_classes, sizeof present);
  } else {
    CLUDA_TRY(cluda_dacs_batch_classes(src_labels, present, &n));
  }
  int classes[256];
  n = 0;
  for (int v = 0; v < 256; v++)
    if (present[v]) classes[n++] = v;
  const int take = (n + n % 2) / 2;
  const int64_t hw = (int64_t)src_labels->shape[1] * src_labels->shape[2];
  for (int i = 0; i < b; i++) {
    /* partial Fisher-Yates: the first `take` entries are a uniform draw without replacement */
    int perm[256];
    memcpy(perm, classes, sizeof(int) * (size_t)n);
    uint32_t words[4];
    for (int j = 0; j < take; j++) {
      if (j % 4 == 0)
        cluda_rng_bits(key, (first_sample + (uint64_t)i) * 64 + (uint64_t)(j / 4), words);
      const int r = j + uniform_int(words[j % 4], n - j);
      const int t = perm[j];
      perm[j] = perm[r];
      perm[r] = t;
    }
    uint8_t table[256] = {0};
    for (int j = 0; j < take; j++)
      table[perm[j]] = 1;
    if (chosen != NULL) memcpy(cluda_u8(chosen) + (int64_t)i * 256, table, 256);
    const uint8_t *l = cluda_u8(src_labels) + i * hw;
    uint8_t *mk = cluda_u8(mask) + i * hw;
#pragma omp parallel for schedule(static) if (hw > DACS_PAR_MIN)
    for (int64_t p = 0; p < hw; p++)
      mk[p] = table[l[p]];
  }
  return cluda_ok();
}

cluda_status cluda_dacs_classmix_apply(const cluda_tensor *mask, const cluda_tensor *src_img,
                                       const cluda_tensor *tgt_img, cluda_tensor *mix_img,
                                       const cluda_tensor *src_label, const cluda_tensor *tgt_label,
                                       cluda_tensor *mix_label, const cluda_tensor *tgt_weight,
                                       cluda_tensor *mix_weight) {
  const char *op = "dacs_classmix_apply";
  char d1[64], d2[64], d3[64];
  CLUDA_TRY(check_map(op, "mask", mask, CLUDA_U8));
  const int64_t n = cluda_tensor_numel(mask);
  const uint8_t *m = cluda_u8(mask);
  if (mix_img != NULL) {
    CLUDA_TRY(cluda_check_tensor(op, "src_img", src_img, CLUDA_F32, 4));
    CLUDA_TRY(cluda_check_tensor(op, "tgt_img", tgt_img, CLUDA_F32, 4));
    CLUDA_TRY(cluda_check_tensor(op, "mix_img", mix_img, CLUDA_F32, 4));
    CLUDA_TRY(check_bhw(op, "src_img", src_img, "mask", mask));
    CLUDA_REQUIRE(cluda_tensor_same_shape(src_img, tgt_img) &&
                      cluda_tensor_same_shape(src_img, mix_img),
                  CLUDA_ERR_SHAPE, "%s: src_img %s, tgt_img %s and mix_img %s must have one shape",
                  op, cluda_tensor_describe(src_img, d1, sizeof d1),
                  cluda_tensor_describe(tgt_img, d2, sizeof d2),
                  cluda_tensor_describe(mix_img, d3, sizeof d3));
    const int c = src_img->shape[3];
    const float *s = cluda_f32(src_img), *t = cluda_f32(tgt_img);
    float *o = cluda_f32(mix_img);
#pragma omp parallel for schedule(static) if (n * c > DACS_PAR_MIN)
    for (int64_t p = 0; p < n; p++)
      for (int ch = 0; ch < c; ch++)
        o[p * c + ch] = m[p] ? s[p * c + ch] : t[p * c + ch];
  }
  if (mix_label != NULL) {
    CLUDA_TRY(check_map(op, "src_label", src_label, CLUDA_U8));
    CLUDA_TRY(check_map(op, "tgt_label", tgt_label, CLUDA_U8));
    CLUDA_TRY(check_map(op, "mix_label", mix_label, CLUDA_U8));
    CLUDA_TRY(check_bhw(op, "src_label", src_label, "mask", mask));
    CLUDA_TRY(check_bhw(op, "tgt_label", tgt_label, "mask", mask));
    CLUDA_TRY(check_bhw(op, "mix_label", mix_label, "mask", mask));
    const uint8_t *s = cluda_u8(src_label), *t = cluda_u8(tgt_label);
    uint8_t *o = cluda_u8(mix_label);
    for (int64_t p = 0; p < n; p++)
      o[p] = m[p] ? s[p] : t[p];
  }
  if (mix_weight != NULL) {
    CLUDA_TRY(check_map(op, "tgt_weight", tgt_weight, CLUDA_F32));
    CLUDA_TRY(check_map(op, "mix_weight", mix_weight, CLUDA_F32));
    CLUDA_TRY(check_bhw(op, "tgt_weight", tgt_weight, "mask", mask));
    CLUDA_TRY(check_bhw(op, "mix_weight", mix_weight, "mask", mask));
    const float *t = cluda_f32(tgt_weight);
    float *o = cluda_f32(mix_weight);
    for (int64_t p = 0; p < n; p++)
      o[p] = m[p] ? 1.0f : t[p];
  }
  return cluda_ok();
}

/* ---------------------------------------------------------------- colour jitter */

/* torch.remainder on floats: the result takes the divisor's sign */
static inline float remainder_f(float a, float b) {
  float m = fmodf(a, b);
  if (m != 0.0f && ((m < 0.0f) != (b < 0.0f))) m += b;
  return m;
}

void cluda_rgb_to_hsv(const float rgb[3], float hsv[3]) {
  const float r = rgb[0], g = rgb[1], b = rgb[2];
  float maxc = r;
  int idx = 0; /* first channel holding the maximum, as kornia's cumsum trick */
  if (g > maxc) {
    maxc = g;
    idx = 1;
  }
  if (b > maxc) {
    maxc = b;
    idx = 2;
  }
  float minc = r < g ? r : g;
  minc = b < minc ? b : minc;
  const float v = maxc;
  float delta = maxc - minc;
  const float s = delta / (v + 1e-6f);
  if (delta == 0.0f) delta = 1.0f;
  const float rc = maxc - r, gc = maxc - g, bc = maxc - b;
  float h;
  if (idx == 0)
    h = bc - gc;
  else if (idx == 1)
    h = 2.0f * delta + rc - bc;
  else
    h = 4.0f * delta + gc - rc;
  h = h / delta;
  h = remainder_f(h / 6.0f, 1.0f);
  hsv[0] = TWO_PI_F * h;
  hsv[1] = s;
  hsv[2] = v;
}

void cluda_hsv_to_rgb(const float hsv[3], float rgb[3]) {
  const float h = hsv[0] / TWO_PI_F, s = hsv[1], v = hsv[2];
  const float hi = remainder_f(floorf(h * 6.0f), 6.0f);
  const float f = remainder_f(h * 6.0f, 6.0f) - hi;
  const float p = v * (1.0f - s);
  const float q = v * (1.0f - f * s);
  const float t = v * (1.0f - (1.0f - f) * s);
  switch ((int)hi) {
  case 0: rgb[0] = v, rgb[1] = t, rgb[2] = p; break;
  case 1: rgb[0] = q, rgb[1] = v, rgb[2] = p; break;
  case 2: rgb[0] = p, rgb[1] = v, rgb[2] = t; break;
  case 3: rgb[0] = p, rgb[1] = q, rgb[2] = v; break;
  case 4: rgb[0] = t, rgb[1] = p, rgb[2] = v; break;
  default: rgb[0] = v, rgb[1] = p, rgb[2] = q; break;
  }
}

static inline float clamp01(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

void cluda_jitter_pixel_op(cluda_jitter_op op, float factor, float rgb[3]) {
  float hsv[3];
  switch (op) {
  case CLUDA_JITTER_BRIGHTNESS:
    for (int c = 0; c < 3; c++)
      rgb[c] = clamp01(rgb[c] + factor);
    break;
  case CLUDA_JITTER_CONTRAST:
    for (int c = 0; c < 3; c++)
      rgb[c] = clamp01(rgb[c] * factor);
    break;
  case CLUDA_JITTER_SATURATION:
    cluda_rgb_to_hsv(rgb, hsv);
    hsv[1] = clamp01(hsv[1] * factor);
    cluda_hsv_to_rgb(hsv, rgb);
    break;
  case CLUDA_JITTER_HUE:
    cluda_rgb_to_hsv(rgb, hsv);
    hsv[0] = fmodf(hsv[0] + factor, TWO_PI_F); /* torch.fmod: may stay negative */
    cluda_hsv_to_rgb(hsv, rgb);
    break;
  }
}

void cluda_dacs_draw_coins(cluda_rng_key key, float *jitter_u, float *blur_u) {
  if (jitter_u != NULL) *jitter_u = cluda_rng_uniform(key, 0);
  if (blur_u != NULL) *blur_u = cluda_rng_uniform(key, 1);
}

cluda_status cluda_dacs_jitter_draw(cluda_rng_key key, int sample, float strength,
                                    cluda_jitter_params *params) {
  const char *op = "dacs_jitter_draw";
  CLUDA_REQUIRE(params != NULL, CLUDA_ERR_ARG, "%s: params is NULL", op);
  CLUDA_REQUIRE(sample >= 0, CLUDA_ERR_ARG, "%s: sample %d must be >= 0", op, sample);
  /* kornia bounds the hue range to [-0.5, 0.5] */
  CLUDA_REQUIRE(strength >= 0.0f && strength <= 0.5f, CLUDA_ERR_ARG,
                "%s: strength %g must be in [0, 0.5]", op, (double)strength);
  uint32_t w[4];
  cluda_rng_bits(key, 2 * (uint64_t)sample, w);
  const float lo = 1.0f - strength > 0.0f ? 1.0f - strength : 0.0f, hi = 1.0f + strength;
  params->brightness = lo + word_uniform(w[0]) * (hi - lo);
  params->contrast = lo + word_uniform(w[1]) * (hi - lo);
  params->saturation = lo + word_uniform(w[2]) * (hi - lo);
  params->hue = -strength + word_uniform(w[3]) * (2.0f * strength);
  /* torch.randperm(4): Fisher-Yates from the second draw */
  cluda_rng_bits(key, 2 * (uint64_t)sample + 1, w);
  int perm[4] = {0, 1, 2, 3};
  for (int j = 3; j >= 1; j--) {
    const int r = uniform_int(w[3 - j], j + 1);
    const int t = perm[j];
    perm[j] = perm[r];
    perm[r] = t;
  }
  memcpy(params->order, perm, sizeof perm);
  return cluda_ok();
}

cluda_status cluda_dacs_color_jitter(const cluda_jitter_params *params, const float mean[3],
                                     const float std[3], cluda_tensor *img) {
  const char *op = "dacs_color_jitter";
  char d[64];
  CLUDA_TRY(cluda_check_tensor(op, "img", img, CLUDA_F32, 4));
  CLUDA_REQUIRE(img->shape[3] == 3, CLUDA_ERR_SHAPE, "%s: img %s must have 3 (RGB) channels", op,
                cluda_tensor_describe(img, d, sizeof d));
  CLUDA_REQUIRE(params != NULL && mean != NULL && std != NULL, CLUDA_ERR_ARG,
                "%s: params, mean and std must not be NULL", op);
  for (int c = 0; c < 3; c++)
    CLUDA_REQUIRE(std[c] > 0.0f, CLUDA_ERR_ARG, "%s: std[%d] = %g must be > 0", op, c,
                  (double)std[c]);
  const int b = img->shape[0];
  for (int i = 0; i < b; i++) {
    const cluda_jitter_params *p = &params[i];
    int seen = 0;
    for (int j = 0; j < 4; j++) {
      CLUDA_REQUIRE(p->order[j] >= 0 && p->order[j] < 4 && !(seen & (1 << p->order[j])),
                    CLUDA_ERR_ARG, "%s: params[%d].order is not a permutation of 0..3", op, i);
      seen |= 1 << p->order[j];
    }
    CLUDA_REQUIRE(p->contrast >= 0.0f && p->saturation >= 0.0f, CLUDA_ERR_ARG,
                  "%s: params[%d] contrast %g and saturation %g must be >= 0", op, i,
                  (double)p->contrast, (double)p->saturation);
    CLUDA_REQUIRE(p->hue >= -0.5f && p->hue <= 0.5f, CLUDA_ERR_ARG,
                  "%s: params[%d].hue %g must be in [-0.5, 0.5]", op, i, (double)p->hue);
  }
  const int64_t hw = (int64_t)img->shape[1] * img->shape[2];
  for (int i = 0; i < b; i++) {
    const cluda_jitter_params *p = &params[i];
    /* the factors as kornia passes them: b - 1, c, s, h * 2 * pi (all float32) */
    float factor[4];
    factor[CLUDA_JITTER_BRIGHTNESS] = p->brightness - 1.0f;
    factor[CLUDA_JITTER_CONTRAST] = p->contrast;
    factor[CLUDA_JITTER_SATURATION] = p->saturation;
    factor[CLUDA_JITTER_HUE] = p->hue * 2.0f * PI_F;
    float *x = cluda_f32(img) + (int64_t)i * hw * 3;
#pragma omp parallel for schedule(static) if (hw > 4096)
    for (int64_t q = 0; q < hw; q++) {
      float rgb[3];
      for (int c = 0; c < 3; c++)
        rgb[c] = (x[q * 3 + c] * std[c] + mean[c]) / 255.0f;
      for (int j = 0; j < 4; j++)
        cluda_jitter_pixel_op((cluda_jitter_op)p->order[j], factor[p->order[j]], rgb);
      for (int c = 0; c < 3; c++)
        x[q * 3 + c] = (rgb[c] * 255.0f - mean[c]) / std[c];
    }
  }
  return cluda_ok();
}

/* ---------------------------------------------------------------- Gaussian blur */

int cluda_dacs_blur_kernel_size(int length) {
  if (length <= 0) return 1;
  const int c = (int)ceil(0.1 * length);
  return c % 2 == 0 ? c - 1 : c;
}

cluda_status cluda_gaussian_kernel1d(int size, double sigma, float *kernel) {
  const char *op = "gaussian_kernel1d";
  CLUDA_REQUIRE(size >= 1, CLUDA_ERR_ARG, "%s: size %d must be >= 1", op, size);
  CLUDA_REQUIRE(sigma > 0.0 && isfinite(sigma), CLUDA_ERR_ARG, "%s: sigma %g must be > 0", op,
                sigma);
  CLUDA_REQUIRE(kernel != NULL, CLUDA_ERR_ARG, "%s: kernel is NULL", op);
  double sum = 0.0;
  for (int i = 0; i < size; i++) {
    const double x = (double)(i - size / 2) + (size % 2 == 0 ? 0.5 : 0.0);
    sum += exp(-x * x / (2.0 * sigma * sigma));
  }
  for (int i = 0; i < size; i++) {
    const double x = (double)(i - size / 2) + (size % 2 == 0 ? 0.5 : 0.0);
    kernel[i] = (float)(exp(-x * x / (2.0 * sigma * sigma)) / sum);
  }
  return cluda_ok();
}

float cluda_dacs_blur_sigma_draw(cluda_rng_key key, int sample, float lo, float hi) {
  return lo + cluda_rng_uniform(key, (uint64_t)(sample < 0 ? 0 : sample)) * (hi - lo);
}

/* PyTorch 'reflect' (mirror, the edge not repeated), folded as often as needed. */
static int reflect_index(int i, int n) {
  if (n == 1) return 0;
  const int period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - i;
}

size_t cluda_dacs_blur_scratch_bytes(int h, int w, int c) {
  const int kh = cluda_dacs_blur_kernel_size(h), kw = cluda_dacs_blur_kernel_size(w);
  return cluda_arena_align((size_t)h * w * c * sizeof(float)) +
         cluda_arena_align((size_t)(kh + kw) * sizeof(float)) +
         cluda_arena_align((size_t)(h + kh + w + kw) * sizeof(int));
}

cluda_status cluda_dacs_gaussian_blur(const float *sigma, cluda_arena *scratch, cluda_tensor *img) {
  const char *op = "dacs_gaussian_blur";
  CLUDA_TRY(cluda_check_tensor(op, "img", img, CLUDA_F32, 4));
  CLUDA_REQUIRE(sigma != NULL, CLUDA_ERR_ARG, "%s: sigma is NULL", op);
  const int b = img->shape[0], h = img->shape[1], w = img->shape[2], c = img->shape[3];
  for (int i = 0; i < b; i++)
    CLUDA_REQUIRE(sigma[i] > 0.0f && isfinite(sigma[i]), CLUDA_ERR_ARG,
                  "%s: sigma[%d] = %g must be > 0", op, i, (double)sigma[i]);
  if (cluda_tensor_numel(img) == 0) return cluda_ok();
  const int kh = cluda_dacs_blur_kernel_size(h), kw = cluda_dacs_blur_kernel_size(w);
  const int rh = kh / 2, rw = kw / 2;
  const size_t bytes = cluda_dacs_blur_scratch_bytes(h, w, c);
  char *base;
  size_t mark = 0;
  if (scratch != NULL) {
    mark = cluda_arena_mark(scratch);
    void *ptr;
    CLUDA_TRY(cluda_arena_alloc(scratch, bytes, "dacs_gaussian_blur scratch", &ptr));
    base = ptr;
  } else {
    base = malloc(bytes);
    CLUDA_REQUIRE(base != NULL, CLUDA_ERR_ALLOC, "%s: cannot allocate %zu bytes of scratch", op,
                  bytes);
  }
  float *tmp = (float *)base;
  float *ky = (float *)(base + cluda_arena_align((size_t)h * w * c * sizeof(float)));
  float *kx = ky + kh;
  int *iy = (int *)((char *)ky + cluda_arena_align((size_t)(kh + kw) * sizeof(float)));
  int *ix = iy + h + kh;
  /* padded position j maps to input row reflect(j - r) */
  for (int j = 0; j < h + kh - 1; j++)
    iy[j] = reflect_index(j - rh, h);
  for (int j = 0; j < w + kw - 1; j++)
    ix[j] = reflect_index(j - rw, w);
  const int64_t row = (int64_t)w * c;
  for (int i = 0; i < b; i++) {
    /* the kernel is the same on both axes only when H == W */
    cluda_gaussian_kernel1d(kh, sigma[i], ky);
    cluda_gaussian_kernel1d(kw, sigma[i], kx);
    float *x = cluda_f32(img) + (int64_t)i * h * row;
    /* horizontal pass into tmp: contiguous shifted-row updates inside, a reflecting gather
     * near the edges; both add the taps in the same order */
    const int lo = rw < w ? rw : w, hi = w - rw > lo ? w - rw : lo;
#pragma omp parallel for schedule(static) if ((int64_t)h * row * kw > DACS_PAR_MIN)
    for (int y = 0; y < h; y++) {
      const float *src = x + y * row;
      float *dst = tmp + y * row;
      for (int64_t q = (int64_t)lo * c; q < (int64_t)hi * c; q++)
        dst[q] = 0.0f;
      for (int k = 0; k < kw; k++) {
        const float wk = kx[k];
        const float *s = src + (int64_t)(k - rw) * c;
        for (int64_t q = (int64_t)lo * c; q < (int64_t)hi * c; q++)
          dst[q] += wk * s[q];
      }
      for (int xx = 0; xx < w; xx++) {
        if (xx == lo) xx = hi;
        if (xx >= w) break;
        for (int ch = 0; ch < c; ch++) {
          float acc = 0.0f;
          for (int k = 0; k < kw; k++)
            acc += kx[k] * src[(int64_t)ix[xx + k] * c + ch];
          dst[(int64_t)xx * c + ch] = acc;
        }
      }
    }
    /* vertical pass back into the image, accumulated a whole row at a time */
#pragma omp parallel for schedule(static) if ((int64_t)h * row * kh > DACS_PAR_MIN)
    for (int y = 0; y < h; y++) {
      float *dst = x + y * row;
      for (int64_t q = 0; q < row; q++)
        dst[q] = 0.0f;
      for (int k = 0; k < kh; k++) {
        const float wk = ky[k];
        const float *src = tmp + (int64_t)iy[y + k] * row;
        for (int64_t q = 0; q < row; q++)
          dst[q] += wk * src[q];
      }
    }
  }
  if (scratch != NULL)
    cluda_arena_release(scratch, mark);
  else
    free(base);
  return cluda_ok();
}

/* ---------------------------------------------------------------- strong augmentation */

cluda_dacs_aug_config cluda_dacs_aug_config_default(void) {
  cluda_dacs_aug_config c;
  c.jitter_p = 0.2f;
  c.jitter_strength = 0.2f;
  c.blur_p = 0.5f;
  c.sigma_min = 0.15f;
  c.sigma_max = 1.15f;
  memcpy(c.mean, cluda_dacs_image_mean, sizeof c.mean);
  memcpy(c.std, cluda_dacs_image_std, sizeof c.std);
  return c;
}

cluda_status cluda_dacs_strong_augment(const cluda_dacs_aug_config *cfg, uint64_t seed,
                                       uint32_t first_sample, uint32_t iteration,
                                       cluda_arena *scratch, cluda_tensor *img,
                                       cluda_dacs_aug_record *record) {
  const char *op = "dacs_strong_augment";
  CLUDA_REQUIRE(cfg != NULL, CLUDA_ERR_ARG, "%s: cfg is NULL", op);
  CLUDA_TRY(cluda_check_tensor(op, "img", img, CLUDA_F32, 4));
  CLUDA_REQUIRE(cfg->sigma_min > 0.0f && cfg->sigma_max >= cfg->sigma_min, CLUDA_ERR_ARG,
                "%s: sigma range [%g, %g] must be positive and ordered", op, (double)cfg->sigma_min,
                (double)cfg->sigma_max);
  const int b = img->shape[0];
  float ju, bu;
  cluda_dacs_draw_coins(
      cluda_rng_make_key(seed, 0, iteration, CLUDA_RNG_AUGMENT, CLUDA_DACS_SLOT_COINS), &ju, &bu);
  const int jitter = ju > cfg->jitter_p, blur = bu > cfg->blur_p;
  if (record != NULL) {
    record->jitter_u = ju;
    record->blur_u = bu;
    record->jittered = jitter;
    record->blurred = blur;
  }
  if (b == 0) return cluda_ok();
  cluda_status st = cluda_ok();
  if (jitter) {
    cluda_jitter_params *p = malloc(sizeof *p * (size_t)b);
    CLUDA_REQUIRE(p != NULL, CLUDA_ERR_ALLOC, "%s: cannot allocate jitter params", op);
    const cluda_rng_key key =
        cluda_rng_make_key(seed, 0, iteration, CLUDA_RNG_AUGMENT, CLUDA_DACS_SLOT_JITTER);
    for (int i = 0; i < b && st.code == CLUDA_OK; i++)
      st = cluda_dacs_jitter_draw(key, (int)first_sample + i, cfg->jitter_strength, &p[i]);
    if (st.code == CLUDA_OK) st = cluda_dacs_color_jitter(p, cfg->mean, cfg->std, img);
    free(p);
    CLUDA_TRY(st);
  }
  if (blur) {
    float *sg = malloc(sizeof *sg * (size_t)b);
    CLUDA_REQUIRE(sg != NULL, CLUDA_ERR_ALLOC, "%s: cannot allocate sigmas", op);
    const cluda_rng_key key =
        cluda_rng_make_key(seed, 0, iteration, CLUDA_RNG_AUGMENT, CLUDA_DACS_SLOT_BLUR);
    for (int i = 0; i < b; i++)
      sg[i] =
          cluda_dacs_blur_sigma_draw(key, (int)first_sample + i, cfg->sigma_min, cfg->sigma_max);
    st = cluda_dacs_gaussian_blur(sg, scratch, img);
    free(sg);
    CLUDA_TRY(st);
  }
  return cluda_ok();
}

/* ---------------------------------------------------------------- Rare Class Sampling */

void cluda_rcs_free(cluda_rcs *rcs) {
  if (rcs == NULL) return;
  free(rcs->classes);
  free(rcs->class_pixels);
  free(rcs->probs);
  free(rcs->cdf);
  free(rcs->candidate_start);
  free(rcs->candidates);
  memset(rcs, 0, sizeof *rcs);
}

cluda_status cluda_rcs_init(cluda_rcs *rcs, const int64_t *stats, int num_images, int num_labels,
                            double temperature, int64_t min_pixels) {
  const char *op = "rcs_init";
  CLUDA_REQUIRE(rcs != NULL, CLUDA_ERR_ARG, "%s: rcs is NULL", op);
  memset(rcs, 0, sizeof *rcs);
  CLUDA_REQUIRE(stats != NULL, CLUDA_ERR_ARG, "%s: stats is NULL", op);
  CLUDA_REQUIRE(num_images >= 1, CLUDA_ERR_ARG, "%s: num_images %d must be >= 1", op, num_images);
  CLUDA_REQUIRE(num_labels >= 1 && num_labels <= 255, CLUDA_ERR_ARG,
                "%s: num_labels %d must be in 1..255", op, num_labels);
  CLUDA_REQUIRE(temperature > 0.0 && isfinite(temperature), CLUDA_ERR_ARG,
                "%s: temperature %g must be > 0", op, temperature);
  CLUDA_REQUIRE(min_pixels >= 0, CLUDA_ERR_ARG, "%s: min_pixels %lld must be >= 0", op,
                (long long)min_pixels);
  int64_t totals[255] = {0};
  for (int i = 0; i < num_images; i++)
    for (int c = 0; c < num_labels; c++) {
      const int64_t v = stats[(int64_t)i * num_labels + c];
      CLUDA_REQUIRE(v >= 0, CLUDA_ERR_ARG, "%s: stats[image %d][class %d] = %lld is negative", op,
                    i, c, (long long)v);
      totals[c] += v;
    }
  int order[255], m = 0;
  int64_t all = 0;
  for (int c = 0; c < num_labels; c++)
    if (totals[c] > 0) {
      order[m++] = c;
      all += totals[c];
    }
  CLUDA_REQUIRE(m > 0, CLUDA_ERR_ARG, "%s: stats hold no pixel of any class", op);
  /* ascending n_c, ties by class id (insertion sort: at most 255 classes) */
  for (int i = 1; i < m; i++) {
    const int v = order[i];
    int j = i - 1;
    while (j >= 0 && totals[order[j]] > totals[v]) {
      order[j + 1] = order[j];
      j--;
    }
    order[j + 1] = v;
  }
  for (int j = 0; j < m; j++) {
    int n = 0;
    for (int i = 0; i < num_images; i++)
      n += stats[(int64_t)i * num_labels + order[j]] > min_pixels;
    CLUDA_REQUIRE(n > 0, CLUDA_ERR_ARG,
                  "%s: class %d has no image with more than %lld pixels (RCS needs one per class)",
                  op, order[j], (long long)min_pixels);
  }
  rcs->num_classes = m;
  rcs->min_pixels = min_pixels;
  rcs->classes = malloc(sizeof(int) * (size_t)m);
  rcs->class_pixels = malloc(sizeof(int64_t) * (size_t)m);
  rcs->probs = malloc(sizeof(double) * (size_t)m);
  rcs->cdf = malloc(sizeof(double) * (size_t)m);
  rcs->candidate_start = malloc(sizeof(int) * (size_t)(m + 1));
  int64_t ncand = 0;
  for (int j = 0; j < m; j++)
    for (int i = 0; i < num_images; i++)
      ncand += stats[(int64_t)i * num_labels + order[j]] > min_pixels;
  rcs->candidates = malloc(sizeof(int) * (size_t)ncand);
  if (!rcs->classes || !rcs->class_pixels || !rcs->probs || !rcs->cdf || !rcs->candidate_start ||
      !rcs->candidates) {
    cluda_rcs_free(rcs);
    return CLUDA_FAIL(CLUDA_ERR_ALLOC, "%s: cannot allocate the RCS tables", op);
  }
  /* P(c) = softmax((1 - f_c) / T), max-subtracted */
  double mx = -INFINITY;
  for (int j = 0; j < m; j++) {
    rcs->classes[j] = order[j];
    rcs->class_pixels[j] = totals[order[j]];
    const double z = (1.0 - (double)totals[order[j]] / (double)all) / temperature;
    rcs->probs[j] = z;
    mx = z > mx ? z : mx;
  }
  double sum = 0.0;
  for (int j = 0; j < m; j++) {
    rcs->probs[j] = exp(rcs->probs[j] - mx);
    sum += rcs->probs[j];
  }
  double run = 0.0;
  for (int j = 0; j < m; j++) {
    rcs->probs[j] /= sum;
    run += rcs->probs[j];
    rcs->cdf[j] = run;
  }
  rcs->cdf[m - 1] = 1.0;
  int k = 0;
  for (int j = 0; j < m; j++) {
    rcs->candidate_start[j] = k;
    for (int i = 0; i < num_images; i++)
      if (stats[(int64_t)i * num_labels + order[j]] > min_pixels) rcs->candidates[k++] = i;
  }
  rcs->candidate_start[m] = k;
  return cluda_ok();
}

cluda_status cluda_rcs_sample(const cluda_rcs *rcs, cluda_rng_key key, uint64_t index,
                              int *class_id, int *image) {
  const char *op = "rcs_sample";
  CLUDA_REQUIRE(rcs != NULL && rcs->num_classes > 0 && rcs->cdf != NULL, CLUDA_ERR_ARG,
                "%s: rcs is not initialised", op);
  CLUDA_REQUIRE(class_id != NULL && image != NULL, CLUDA_ERR_ARG,
                "%s: class_id and image must not be NULL", op);
  uint32_t w[4];
  cluda_rng_bits(key, index, w);
  /* a 53-bit uniform for the class (rare classes have tiny P), 32 bits for the image */
  const double u = (double)(((uint64_t)w[0] << 21) ^ (w[1] >> 11)) * (1.0 / 9007199254740992.0);
  int j = 0;
  while (j < rcs->num_classes - 1 && !(u < rcs->cdf[j]))
    j++;
  const int start = rcs->candidate_start[j], n = rcs->candidate_start[j + 1] - start;
  *class_id = rcs->classes[j];
  *image = rcs->candidates[start + uniform_int(w[2], n)];
  return cluda_ok();
}

cluda_status cluda_rcs_count_class(const cluda_tensor *label, int class_id, int64_t *count) {
  const char *op = "rcs_count_class";
  CLUDA_TRY(cluda_check_tensor(op, "label", label, CLUDA_U8, -1));
  CLUDA_REQUIRE(count != NULL, CLUDA_ERR_ARG, "%s: count is NULL", op);
  CLUDA_REQUIRE(class_id >= 0 && class_id <= 255, CLUDA_ERR_ARG,
                "%s: class_id %d must be in 0..255", op, class_id);
  const int64_t n = cluda_tensor_numel(label);
  const uint8_t *l = cluda_u8(label);
  int64_t k = 0;
  for (int64_t i = 0; i < n; i++)
    k += l[i] == class_id;
  *count = k;
  return cluda_ok();
}

/* ---------------------------------------------------------------- FD label downscale */

cluda_status cluda_dacs_downscale_label(const cluda_tensor *label, int scale, int num_classes,
                                        float min_ratio, cluda_tensor *out) {
  const char *op = "dacs_downscale_label";
  char d1[64], d2[64];
  CLUDA_TRY(check_map(op, "label", label, CLUDA_U8));
  CLUDA_TRY(check_map(op, "out", out, CLUDA_U8));
  CLUDA_REQUIRE(scale >= 1, CLUDA_ERR_ARG, "%s: scale %d must be >= 1", op, scale);
  CLUDA_REQUIRE(num_classes >= 1 && num_classes <= 255, CLUDA_ERR_ARG,
                "%s: num_classes %d must be in 1..255", op, num_classes);
  CLUDA_REQUIRE(isfinite(min_ratio), CLUDA_ERR_ARG, "%s: min_ratio is not finite", op);
  const int b = label->shape[0], h = label->shape[1], w = label->shape[2];
  const int oh = h / scale, ow = w / scale;
  CLUDA_REQUIRE(out->shape[0] == b && out->shape[1] == oh && out->shape[2] == ow, CLUDA_ERR_SHAPE,
                "%s: out %s must be [%d,%d,%d] for label %s and scale %d", op,
                cluda_tensor_describe(out, d1, sizeof d1), b, oh, ow,
                cluda_tensor_describe(label, d2, sizeof d2), scale);
  const uint8_t *l = cluda_u8(label);
  uint8_t *o = cluda_u8(out);
  const float area = (float)scale * (float)scale;
  int bad = 0;
#pragma omp parallel for schedule(static) reduction(| : bad) if ((int64_t)b * h * w > DACS_PAR_MIN)
  for (int64_t cell_row = 0; cell_row < (int64_t)b * oh; cell_row++) {
    const int n = (int)(cell_row / oh), oy = (int)(cell_row % oh);
    int hist[256];
    for (int ox = 0; ox < ow; ox++) {
      memset(hist, 0, sizeof(int) * (size_t)(num_classes + 1));
      for (int y = oy * scale; y < (oy + 1) * scale; y++) {
        const uint8_t *r = l + ((int64_t)n * h + y) * w + (int64_t)ox * scale;
        for (int x = 0; x < scale; x++) {
          const int v = r[x];
          if (v == CLUDA_IGNORE_LABEL)
            hist[num_classes]++;
          else if (v < num_classes)
            hist[v]++;
          else
            bad = 1;
        }
      }
      int arg = 0;
      for (int c = 1; c <= num_classes; c++)
        if (hist[c] > hist[arg]) arg = c;
      const float ratio = (float)hist[arg] / area;
      o[cell_row * ow + ox] =
          (arg == num_classes || ratio < min_ratio) ? CLUDA_IGNORE_LABEL : (uint8_t)arg;
    }
  }
  CLUDA_REQUIRE(!bad, CLUDA_ERR_ARG, "%s: label has values >= num_classes %d other than 255", op,
                num_classes);
  return cluda_ok();
}

cluda_status cluda_dacs_class_mask(const cluda_tensor *labels, const int *classes, int n,
                                   cluda_tensor *mask) {
  const char *op = "dacs_class_mask";
  CLUDA_TRY(cluda_check_tensor(op, "labels", labels, CLUDA_U8, -1));
  CLUDA_TRY(cluda_check_tensor(op, "mask", mask, CLUDA_U8, -1));
  CLUDA_REQUIRE(cluda_tensor_same_shape(labels, mask), CLUDA_ERR_SHAPE,
                "%s: mask and labels must have the same shape", op);
  CLUDA_REQUIRE(n >= 0 && (n == 0 || classes != NULL), CLUDA_ERR_ARG,
                "%s: classes is NULL or n %d < 0", op, n);
  uint8_t table[256] = {0};
  for (int i = 0; i < n; i++) {
    CLUDA_REQUIRE(classes[i] >= 0 && classes[i] <= 255, CLUDA_ERR_ARG,
                  "%s: classes[%d] = %d must be in 0..255", op, i, classes[i]);
    table[classes[i]] = 1;
  }
  const int64_t k = cluda_tensor_numel(labels);
  const uint8_t *l = cluda_u8(labels);
  uint8_t *m = cluda_u8(mask);
  for (int64_t i = 0; i < k; i++)
    m[i] = table[l[i]];
  return cluda_ok();
}

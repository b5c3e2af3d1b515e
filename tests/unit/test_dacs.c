/* DACS transforms against naive double-precision references written here: pseudo-labels and
 * Γ counts, margins, ClassMix (class counts, batch union, 255, masks, mixing), kornia 0.5 HSV
 * and the four jitter ops (each alone and in a given order), the Gaussian kernel, kernel sizes
 * and the reflect-padded blur, the strong-augmentation coins, RCS probabilities and sampling
 * frequencies, the FD label downscale (0.75 rule, ignore cells) and the thing mask; results
 * are the same for the same key and for 1 and 2 threads; bad arguments are rejected. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/dacs.h"
#include "fixture.h"
#include "testing.h"

static const double PI = 3.14159265358979323846;

/* ---------------------------------------------------------------- references */

/* Textbook hexcone HSV with kornia's S = delta / (V + 1e-6), H in radians [0, 2 pi). */
static void ref_rgb_to_hsv(const double c[3], double o[3]) {
  const double r = c[0], g = c[1], b = c[2];
  const double mx = fmax(r, fmax(g, b)), mn = fmin(r, fmin(g, b)), d = mx - mn;
  double h = 0.0;
  if (d > 0.0) {
    if (r == mx)
      h = (g - b) / d;
    else if (g == mx)
      h = 2.0 + (b - r) / d;
    else
      h = 4.0 + (r - g) / d;
  }
  h = h / 6.0 - floor(h / 6.0);
  o[0] = 2.0 * PI * h;
  o[1] = d / (mx + 1e-6);
  o[2] = mx;
}

static void ref_hsv_to_rgb(const double c[3], double o[3]) {
  double h = c[0] / (PI / 3.0);
  h = h - 6.0 * floor(h / 6.0);
  const double v = c[2], s = c[1], ch = v * s;
  const double x = ch * (1.0 - fabs(fmod(h, 2.0) - 1.0)), m = v - ch;
  double r, g, b;
  if (h < 1)
    r = ch, g = x, b = 0;
  else if (h < 2)
    r = x, g = ch, b = 0;
  else if (h < 3)
    r = 0, g = ch, b = x;
  else if (h < 4)
    r = 0, g = x, b = ch;
  else if (h < 5)
    r = x, g = 0, b = ch;
  else
    r = ch, g = 0, b = x;
  o[0] = r + m;
  o[1] = g + m;
  o[2] = b + m;
}

static double clampd(double x) { return x < 0 ? 0 : (x > 1 ? 1 : x); }

static void ref_jitter_op(int op, const cluda_jitter_params *p, double rgb[3]) {
  double hsv[3];
  switch (op) {
  case 0:
    for (int c = 0; c < 3; c++)
      rgb[c] = clampd(rgb[c] + (p->brightness - 1.0));
    break;
  case 1:
    for (int c = 0; c < 3; c++)
      rgb[c] = clampd(rgb[c] * p->contrast);
    break;
  case 2:
    ref_rgb_to_hsv(rgb, hsv);
    hsv[1] = clampd(hsv[1] * p->saturation);
    ref_hsv_to_rgb(hsv, rgb);
    break;
  default:
    ref_rgb_to_hsv(rgb, hsv);
    hsv[0] += 2.0 * PI * p->hue;
    ref_hsv_to_rgb(hsv, rgb);
    break;
  }
}

/* denormalise, the ops in order, renormalise */
static void ref_jitter(const cluda_jitter_params *p, const float *x, double *y, int64_t hw) {
  const float *mean = cluda_dacs_image_mean, *std = cluda_dacs_image_std;
  for (int64_t q = 0; q < hw; q++) {
    double rgb[3];
    for (int c = 0; c < 3; c++)
      rgb[c] = ((double)x[q * 3 + c] * std[c] + mean[c]) / 255.0;
    for (int j = 0; j < 4; j++)
      ref_jitter_op(p->order[j], p, rgb);
    for (int c = 0; c < 3; c++)
      y[q * 3 + c] = (rgb[c] * 255.0 - mean[c]) / std[c];
  }
}

static int ref_reflect(int i, int n) {
  while (i < 0 || i >= n)
    i = i < 0 ? -i : 2 * (n - 1) - i;
  return i;
}

/* direct 2-D Gaussian blur with reflect padding, in double */
static void ref_blur(const float *x, double *y, int h, int w, int c, double sigma) {
  const int kh = cluda_dacs_blur_kernel_size(h), kw = cluda_dacs_blur_kernel_size(w);
  double *gy = malloc(sizeof(double) * kh), *gx = malloc(sizeof(double) * kw), sy = 0, sx = 0;
  for (int i = 0; i < kh; i++)
    sy += gy[i] = exp(-pow(i - kh / 2, 2) / (2 * sigma * sigma));
  for (int i = 0; i < kw; i++)
    sx += gx[i] = exp(-pow(i - kw / 2, 2) / (2 * sigma * sigma));
  for (int yy = 0; yy < h; yy++)
    for (int xx = 0; xx < w; xx++)
      for (int ch = 0; ch < c; ch++) {
        double acc = 0.0;
        for (int a = 0; a < kh; a++)
          for (int b = 0; b < kw; b++) {
            int sy_ = ref_reflect(yy + a - kh / 2, h), sx_ = ref_reflect(xx + b - kw / 2, w);
            acc += gy[a] / sy * gx[b] / sx * x[((int64_t)sy_ * w + sx_) * c + ch];
          }
        y[((int64_t)yy * w + xx) * c + ch] = acc;
      }
  free(gy);
  free(gx);
}

/* ---------------------------------------------------------------- pseudo-labels */

static void test_pseudo_labels(void) {
  const int b = 2, h = 5, w = 7, k = 19;
  const int64_t n = (int64_t)b * h * w;
  float *logits = test_alloc_f32(n * k);
  test_fill_uniform(logits, n * k, -3.0f, 3.0f, 11, 0);
  /* some confident pixels, a tie (argmax must be the first) */
  for (int64_t i = 0; i < n; i += 3)
    logits[i * k + (i % k)] += 12.0f;
  for (int c = 0; c < k; c++)
    logits[1 * k + c] = 0.5f;
  uint8_t *lab = test_alloc((size_t)n);
  float *prob = test_alloc_f32(n);
  cluda_tensor tl = cluda_tensor_4d(CLUDA_F32, logits, b, h, w, k);
  cluda_tensor tlab = cluda_tensor_3d(CLUDA_U8, lab, b, h, w);
  cluda_tensor tp = cluda_tensor_3d(CLUDA_F32, prob, b, h, w);
  int64_t conf = -1, total = -1;
  const float thr = 0.968f;
  TEST_OK(cluda_dacs_pseudo_label(&tl, thr, &tlab, &tp, &conf, &total));
  int64_t ref_conf = 0, lab_bad = 0;
  double *pref = test_alloc_f64(n);
  for (int64_t i = 0; i < n; i++) {
    const float *r = logits + i * k;
    int arg = 0;
    for (int c = 1; c < k; c++)
      if (r[c] > r[arg]) arg = c;
    double s = 0.0;
    for (int c = 0; c < k; c++)
      s += exp((double)r[c]);
    pref[i] = exp((double)r[arg]) / s;
    ref_conf += (float)pref[i] >= thr;
    lab_bad += lab[i] != arg || lab[i] == 255;
  }
  TEST_CHECK(lab_bad == 0, "pseudo labels: %lld argmax mismatches", (long long)lab_bad);
  TEST_CHECK(lab[1] == 0, "tie -> first class (got %d)", lab[1]);
  test_compare("pseudo max prob", prob, pref, n, 1e-6, 1e-7);
  TEST_CHECK(conf == ref_conf && total == n, "confident %lld/%lld, want %lld/%lld", (long long)conf,
             (long long)total, (long long)ref_conf, (long long)n);
  TEST_CHECK(conf > 0 && conf < n, "the case has both confident and unsure pixels (%lld)",
             (long long)conf);
  /* Γ over the global batch: counts of two "ranks" (one image each) add up to the whole */
  int64_t c0, t0, c1, t1;
  cluda_tensor l0 = cluda_tensor_4d(CLUDA_F32, logits, 1, h, w, k);
  cluda_tensor l1 = cluda_tensor_4d(CLUDA_F32, logits + (int64_t)h * w * k, 1, h, w, k);
  cluda_tensor lab0 = cluda_tensor_3d(CLUDA_U8, lab, 1, h, w);
  TEST_OK(cluda_dacs_pseudo_label(&l0, thr, &lab0, NULL, &c0, &t0));
  TEST_OK(cluda_dacs_pseudo_label(&l1, thr, &lab0, NULL, &c1, &t1));
  TEST_CHECK(c0 + c1 == conf && t0 + t1 == total, "per-rank counts sum to the batch counts");
  TEST_CHECK(fabs(cluda_dacs_gamma(c0 + c1, t0 + t1) - (double)ref_conf / n) < 1e-15,
             "gamma = confident / total");
  TEST_CHECK(cluda_dacs_gamma(0, 0) == 0.0, "gamma of an empty batch is 0");
  /* K = 1: every pixel has p = 1 */
  cluda_tensor one = cluda_tensor_4d(CLUDA_F32, logits, 1, h, w, 1);
  TEST_OK(cluda_dacs_pseudo_label(&one, thr, &lab0, NULL, &c0, &t0));
  TEST_CHECK(c0 == t0 && lab[0] == 0, "K = 1: all confident, label 0");

  /* margins and the weight map */
  const int mh = 10, mw = 4;
  uint8_t *valid = test_alloc(2 * mh * mw);
  float *wt = test_alloc_f32(2 * mh * mw);
  cluda_tensor tv = cluda_tensor_3d(CLUDA_U8, valid, 2, mh, mw);
  cluda_tensor tw = cluda_tensor_3d(CLUDA_F32, wt, 2, mh, mw);
  TEST_OK(cluda_dacs_margin_mask(2, 3, &tv));
  int bad = 0;
  for (int i = 0; i < 2 * mh * mw; i++) {
    int y = (i / mw) % mh;
    bad += valid[i] != (y >= 2 && y < mh - 3);
  }
  TEST_CHECK(bad == 0, "margin mask rows");
  TEST_OK(cluda_dacs_pseudo_weight(0.25f, &tv, &tw));
  bad = 0;
  for (int i = 0; i < 2 * mh * mw; i++)
    bad += wt[i] != (valid[i] ? 0.25f : 0.0f);
  TEST_CHECK(bad == 0, "weight = gamma in the valid area, 0 in the margins");
  TEST_OK(cluda_dacs_margin_mask(0, 0, &tv));
  bad = 0;
  for (int i = 0; i < 2 * mh * mw; i++)
    bad += valid[i] != 1;
  TEST_CHECK(bad == 0, "bottom = 0 keeps every row (no `-0:` slice)");
  TEST_OK(cluda_dacs_margin_mask(6, 5, &tv));
  bad = 0;
  for (int i = 0; i < 2 * mh * mw; i++)
    bad += valid[i] != 0;
  TEST_CHECK(bad == 0, "top + bottom >= H zeroes everything");
  /* a crop-v2 style mask: arbitrary pixels */
  for (int i = 0; i < 2 * mh * mw; i++)
    valid[i] = (uint8_t)((i * 7) % 3 != 0) * (uint8_t)(1 + i % 2);
  TEST_OK(cluda_dacs_pseudo_weight(0.5f, &tv, &tw));
  bad = 0;
  for (int i = 0; i < 2 * mh * mw; i++)
    bad += wt[i] != (valid[i] ? 0.5f : 0.0f);
  TEST_CHECK(bad == 0, "weight times an arbitrary valid mask");
  TEST_OK(cluda_dacs_pseudo_weight(0.5f, NULL, &tw));
  bad = 0;
  for (int i = 0; i < 2 * mh * mw; i++)
    bad += wt[i] != 0.5f;
  TEST_CHECK(bad == 0, "no mask: gamma everywhere");

  /* bad input */
  TEST_FAILS(cluda_dacs_pseudo_label(NULL, thr, &tlab, NULL, &conf, &total), CLUDA_ERR_ARG,
             "logits");
  TEST_FAILS(cluda_dacs_pseudo_label(&tl, thr, &tlab, NULL, NULL, &total), CLUDA_ERR_ARG,
             "confident");
  cluda_tensor big = cluda_tensor_4d(CLUDA_F32, logits, 1, 1, 1, 256);
  cluda_tensor lab1 = cluda_tensor_3d(CLUDA_U8, lab, 1, 1, 1);
  TEST_FAILS(cluda_dacs_pseudo_label(&big, thr, &lab1, NULL, &conf, &total), CLUDA_ERR_SHAPE,
             "1..255 classes");
  cluda_tensor wrong = cluda_tensor_3d(CLUDA_U8, lab, b, h, w - 1);
  TEST_FAILS(cluda_dacs_pseudo_label(&tl, thr, &wrong, NULL, &conf, &total), CLUDA_ERR_SHAPE,
             "label");
  TEST_FAILS(cluda_dacs_pseudo_label(&tl, thr, &tp, NULL, &conf, &total), CLUDA_ERR_DTYPE, "label");
  TEST_FAILS(cluda_dacs_margin_mask(-1, 0, &tv), CLUDA_ERR_ARG, "top");
  TEST_FAILS(cluda_dacs_pseudo_weight(0.5f, &tlab, &tw), CLUDA_ERR_SHAPE, "valid");
  free(logits);
  free(lab);
  free(prob);
  free(pref);
  free(valid);
  free(wt);
}

/* ---------------------------------------------------------------- ClassMix */

static void test_classmix(void) {
  const int b = 2, h = 6, w = 8;
  const int64_t hw = h * w, n = b * hw;
  uint8_t *lab = test_alloc((size_t)n), *mask = test_alloc((size_t)n);
  uint8_t chosen[2 * 256];
  cluda_tensor tl = cluda_tensor_3d(CLUDA_U8, lab, b, h, w);
  cluda_tensor tm = cluda_tensor_3d(CLUDA_U8, mask, b, h, w);
  cluda_tensor tc = cluda_tensor_2d(CLUDA_U8, chosen, b, 256);

  /* sample 0 holds {1, 2}, sample 1 holds {3, 4, 255}: C = {1, 2, 3, 4, 255}, 3 per sample */
  for (int64_t i = 0; i < hw; i++)
    lab[i] = (uint8_t)(1 + i % 2);
  for (int64_t i = 0; i < hw; i++)
    lab[hw + i] = (uint8_t)(i % 3 == 2 ? 255 : 3 + i % 3);
  uint8_t present[256];
  int count;
  TEST_OK(cluda_dacs_batch_classes(&tl, present, &count));
  TEST_CHECK(count == 5 && present[255] && present[1] && present[4] && !present[0],
             "batch classes: union of both samples with 255 (%d)", count);
  int freq[2][256] = {{0}};
  int bad_count = 0, bad_mask = 0, other_sample = 0;
  const int trials = 4000;
  for (int t = 0; t < trials; t++) {
    cluda_rng_key key =
        cluda_rng_make_key(7, 0, (uint32_t)t, CLUDA_RNG_AUGMENT, CLUDA_DACS_SLOT_CLASSMIX);
    bad_count += cluda_dacs_classmix_masks(&tl, NULL, key, 0, &tm, &tc).code != CLUDA_OK;
    for (int i = 0; i < b; i++) {
      int k = 0;
      for (int v = 0; v < 256; v++) {
        k += chosen[i * 256 + v];
        freq[i][v] += chosen[i * 256 + v];
        if (chosen[i * 256 + v] && !present[v]) bad_count++;
      }
      bad_count += k != 3;
      for (int64_t p = 0; p < hw; p++)
        bad_mask += mask[i * hw + p] != chosen[i * 256 + lab[i * hw + p]];
      other_sample += i == 0 && (chosen[3] || chosen[4] || chosen[255]);
    }
  }
  TEST_CHECK(bad_count == 0, "odd |C| = 5: exactly 3 present classes per sample");
  TEST_CHECK(bad_mask == 0, "mask = 1 exactly where the label is a chosen class");
  TEST_CHECK(other_sample > 0, "sample 0 draws from the batch union (classes of sample 1)");
  /* each class is chosen with probability 3/5: binomial bound, 5 sigma */
  int bad_freq = 0;
  const double pc = 0.6, sd = sqrt(trials * pc * (1 - pc));
  for (int i = 0; i < b; i++)
    for (int v = 0; v < 256; v++)
      if (present[v] && fabs(freq[i][v] - trials * pc) > 5 * sd) bad_freq++;
  TEST_CHECK(bad_freq == 0, "class choice is uniform (freq of class 1: %d of %d)", freq[0][1],
             trials);

  /* even |C| = 4 -> 2; |C| = 1 -> 1 */
  for (int64_t i = 0; i < n; i++)
    lab[i] = (uint8_t)((i % 4) * 5);
  cluda_rng_key key = cluda_rng_make_key(7, 1, 3, CLUDA_RNG_AUGMENT, CLUDA_DACS_SLOT_CLASSMIX);
  TEST_OK(cluda_dacs_classmix_masks(&tl, NULL, key, 0, &tm, &tc));
  int k0 = 0, k1 = 0;
  for (int v = 0; v < 256; v++)
    k0 += chosen[v], k1 += chosen[256 + v];
  TEST_CHECK(k0 == 2 && k1 == 2, "even |C| = 4: 2 classes per sample (%d, %d)", k0, k1);
  memset(lab, 255, (size_t)n);
  TEST_OK(cluda_dacs_classmix_masks(&tl, NULL, key, 0, &tm, NULL));
  int ones = 0;
  for (int64_t i = 0; i < n; i++)
    ones += mask[i];
  TEST_CHECK(ones == n, "only 255 present: it is chosen and every pixel mixes from the source");

  /* determinism: same key, same masks; 1 vs 2 threads */
  for (int64_t i = 0; i < n; i++)
    lab[i] = (uint8_t)((i * 2654435761u) % 19);
  uint8_t *m2 = test_alloc((size_t)n);
  cluda_tensor tm2 = cluda_tensor_3d(CLUDA_U8, m2, b, h, w);
  omp_set_num_threads(1);
  TEST_OK(cluda_dacs_classmix_masks(&tl, NULL, key, 0, &tm, NULL));
  omp_set_num_threads(2);
  TEST_OK(cluda_dacs_classmix_masks(&tl, NULL, key, 0, &tm2, NULL));
  TEST_CHECK(memcmp(mask, m2, (size_t)n) == 0, "classmix masks: same key, 1 vs 2 threads");

  /* data parallel: halves of the batch with the whole batch's classes and first_sample give
   * the whole batch's masks */
  if (b % 2 == 0) {
    uint8_t present[256];
    int count = 0;
    TEST_OK(cluda_dacs_batch_classes(&tl, present, &count));
    const int half = b / 2;
    const int64_t half_n = n / 2;
    for (int part = 0; part < 2; part++) {
      cluda_tensor pl = cluda_tensor_3d(CLUDA_U8, lab + part * half_n, half, h, w);
      cluda_tensor pm = cluda_tensor_3d(CLUDA_U8, m2 + part * half_n, half, h, w);
      TEST_OK(cluda_dacs_classmix_masks(&pl, present, key, (uint64_t)(part * half), &pm, NULL));
    }
    TEST_CHECK(memcmp(mask, m2, (size_t)n) == 0,
               "classmix masks: two halves with batch_classes + first_sample = the whole batch");
  }

  /* mixing */
  const int c = 3;
  float *si = test_alloc_f32(n * c), *ti = test_alloc_f32(n * c), *mi = test_alloc_f32(n * c);
  float *tw = test_alloc_f32(n), *mw = test_alloc_f32(n);
  uint8_t *tlab = test_alloc((size_t)n), *mlab = test_alloc((size_t)n);
  test_fill_uniform(si, n * c, -2, 2, 1, 1);
  test_fill_uniform(ti, n * c, -2, 2, 1, 2);
  test_fill_uniform(tw, n, 0, 1, 1, 3);
  for (int64_t i = 0; i < n; i++)
    tlab[i] = (uint8_t)(i % 7);
  cluda_tensor tsi = cluda_tensor_4d(CLUDA_F32, si, b, h, w, c);
  cluda_tensor tti = cluda_tensor_4d(CLUDA_F32, ti, b, h, w, c);
  cluda_tensor tmi = cluda_tensor_4d(CLUDA_F32, mi, b, h, w, c);
  cluda_tensor ttw = cluda_tensor_3d(CLUDA_F32, tw, b, h, w);
  cluda_tensor tmw = cluda_tensor_3d(CLUDA_F32, mw, b, h, w);
  cluda_tensor ttl = cluda_tensor_3d(CLUDA_U8, tlab, b, h, w);
  cluda_tensor tml = cluda_tensor_3d(CLUDA_U8, mlab, b, h, w);
  TEST_OK(cluda_dacs_classmix_apply(&tm, &tsi, &tti, &tmi, &tl, &ttl, &tml, &ttw, &tmw));
  int bad = 0;
  for (int64_t p = 0; p < n; p++) {
    const double mm = mask[p];
    for (int ch = 0; ch < c; ch++)
      bad += mi[p * c + ch] != (float)(mm * si[p * c + ch] + (1 - mm) * ti[p * c + ch]);
    bad += mlab[p] != (mask[p] ? lab[p] : tlab[p]);
    bad += mw[p] != (float)(mm * 1.0 + (1 - mm) * tw[p]);
  }
  TEST_CHECK(bad == 0, "mixed image, label and weight = M src + (1 - M) tgt");
  /* in place into the target buffers */
  TEST_OK(cluda_dacs_classmix_apply(&tm, &tsi, &tti, &tti, &tl, &ttl, &ttl, &ttw, &ttw));
  TEST_CHECK(memcmp(ti, mi, sizeof(float) * n * c) == 0 && memcmp(tlab, mlab, (size_t)n) == 0 &&
                 memcmp(tw, mw, sizeof(float) * n) == 0,
             "outputs may alias the target inputs");
  TEST_OK(cluda_dacs_classmix_apply(&tm, NULL, NULL, NULL, NULL, NULL, NULL, &ttw, &tmw));

  /* bad input */
  TEST_FAILS(cluda_dacs_classmix_masks(NULL, NULL, key, 0, &tm, NULL), CLUDA_ERR_ARG, "src_labels");
  cluda_tensor badc = cluda_tensor_2d(CLUDA_U8, chosen, b, 255);
  TEST_FAILS(cluda_dacs_classmix_masks(&tl, NULL, key, 0, &tm, &badc), CLUDA_ERR_SHAPE, "chosen");
  cluda_tensor badm = cluda_tensor_3d(CLUDA_U8, mask, b, h - 1, w);
  TEST_FAILS(cluda_dacs_classmix_masks(&tl, NULL, key, 0, &badm, NULL), CLUDA_ERR_SHAPE, "mask");
  cluda_tensor badi = cluda_tensor_4d(CLUDA_F32, mi, b, h, w, 2);
  TEST_FAILS(cluda_dacs_classmix_apply(&tm, &tsi, &tti, &badi, NULL, NULL, NULL, NULL, NULL),
             CLUDA_ERR_SHAPE, "mix_img");
  TEST_FAILS(cluda_dacs_classmix_apply(&tm, NULL, NULL, NULL, &tl, NULL, &tml, NULL, NULL),
             CLUDA_ERR_ARG, "tgt_label");
  free(lab);
  free(mask);
  free(m2);
  free(si);
  free(ti);
  free(mi);
  free(tw);
  free(mw);
  free(tlab);
  free(mlab);
}

/* ---------------------------------------------------------------- colour jitter */

static void test_hsv(void) {
  struct {
    float rgb[3];
    double h, s, v;
  } known[] = {
      {{1, 0, 0}, 0, 1, 1},
      {{0, 1, 0}, 2 * PI / 3, 1, 1},
      {{0, 0, 1}, 4 * PI / 3, 1, 1},
      {{1, 1, 0}, PI / 3, 1, 1},
      {{0, 1, 1}, PI, 1, 1},
      {{1, 0, 1}, 5 * PI / 3, 1, 1},
      {{0.5f, 0.5f, 0.5f}, 0, 0, 0.5},
      {{0, 0, 0}, 0, 0, 0},
      {{0.5f, 0.25f, 0.25f}, 0, 0.5, 0.5},
  };
  int bad = 0;
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
    float hsv[3], back[3];
    cluda_rgb_to_hsv(known[i].rgb, hsv);
    bad += fabs(hsv[0] - known[i].h) > 1e-6 || fabs(hsv[1] - known[i].s) > 3e-6 ||
           fabs(hsv[2] - known[i].v) > 0;
    cluda_hsv_to_rgb(hsv, back);
    for (int c = 0; c < 3; c++)
      bad += fabs(back[c] - known[i].rgb[c]) > 3e-6;
  }
  TEST_CHECK(bad == 0, "HSV of known colours and back");
  bad = 0;
  /* random colours: against the double textbook conversion, and the round trip */
  const int n = 20000;
  float *x = test_alloc_f32(3 * n);
  test_fill_uniform(x, 3 * n, 0, 1, 5, 0);
  for (int i = 0; i < 200; i++) /* grays and two-channel ties */
    x[3 * i + 1] = x[3 * i], x[3 * i + 2] = (i % 2) ? x[3 * i] : x[3 * i + 2];
  double worst_h = 0, worst_sv = 0, worst_rt = 0, worst_inv = 0;
  for (int i = 0; i < n; i++) {
    float hsv[3], back[3];
    double xd[3] = {x[3 * i], x[3 * i + 1], x[3 * i + 2]}, r[3], rb[3];
    cluda_rgb_to_hsv(x + 3 * i, hsv);
    ref_rgb_to_hsv(xd, r);
    double dh = fabs(hsv[0] - r[0]);
    dh = fmin(dh, 2 * PI - dh);
    worst_h = fmax(worst_h, r[1] > 1e-3 ? dh : 0);
    worst_sv = fmax(worst_sv, fmax(fabs(hsv[1] - r[1]), fabs(hsv[2] - r[2])));
    cluda_hsv_to_rgb(hsv, back);
    double hd[3] = {hsv[0], hsv[1], hsv[2]};
    ref_hsv_to_rgb(hd, rb);
    for (int c = 0; c < 3; c++) {
      worst_rt = fmax(worst_rt, fabs(back[c] - x[3 * i + c]));
      worst_inv = fmax(worst_inv, fabs(back[c] - rb[c]));
    }
    bad += hsv[0] < 0 || hsv[0] >= 2 * PI + 1e-6;
  }
  TEST_CHECK(bad == 0, "hue in [0, 2 pi)");
  TEST_CHECK(worst_h < 2e-3 && worst_sv < 1e-6, "rgb_to_hsv vs double: hue %.3g, s/v %.3g", worst_h,
             worst_sv);
  TEST_CHECK(worst_inv < 2e-6, "hsv_to_rgb vs double: %.3g", worst_inv);
  TEST_CHECK(worst_rt < 3e-6, "RGB -> HSV -> RGB round trip: %.3g", worst_rt);
  /* negative hue (torch.fmod keeps the sign) converts like its 2 pi complement */
  float neg[3] = {-0.5f, 0.8f, 0.6f}, pos[3] = {(float)(2 * PI - 0.5), 0.8f, 0.6f}, a[3], bb[3];
  cluda_hsv_to_rgb(neg, a);
  cluda_hsv_to_rgb(pos, bb);
  TEST_CHECK(fabs(a[0] - bb[0]) + fabs(a[1] - bb[1]) + fabs(a[2] - bb[2]) < 1e-5,
             "negative hue wraps");
  free(x);
}

static cluda_jitter_params identity_params(void) {
  cluda_jitter_params p = {1.0f, 1.0f, 1.0f, 0.0f, {0, 1, 2, 3}};
  return p;
}

static void test_jitter(void) {
  const int b = 1, h = 16, w = 24;
  const int64_t hw = h * w, n = hw * 3;
  float *x = test_alloc_f32(n), *y = test_alloc_f32(n);
  double *ref = test_alloc_f64(n);
  /* normalised values of [0, 1] images, with some saturated and gray pixels */
  for (int64_t q = 0; q < hw; q++) {
    float rgb[3];
    test_fill_uniform(rgb, 3, 0, 1, 21, (uint32_t)q);
    if (q % 17 == 0) rgb[0] = 1.0f, rgb[1] = 0.0f;
    if (q % 19 == 0) rgb[1] = rgb[2] = rgb[0];
    for (int c = 0; c < 3; c++)
      x[q * 3 + c] = (rgb[c] * 255.0f - cluda_dacs_image_mean[c]) / cluda_dacs_image_std[c];
  }
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y, b, h, w, 3);
  const char *names[4] = {"brightness", "contrast", "saturation", "hue"};
  const float vals[4][2] = {{0.8f, 1.2f}, {0.8f, 1.2f}, {0.8f, 1.2f}, {-0.2f, 0.2f}};
  /* each op alone (the others at identity) */
  for (int op = 0; op < 4; op++)
    for (int v = 0; v < 2; v++) {
      cluda_jitter_params p = identity_params();
      float *f[4] = {&p.brightness, &p.contrast, &p.saturation, &p.hue};
      *f[op] = vals[op][v];
      memcpy(y, x, sizeof(float) * n);
      TEST_OK(cluda_dacs_color_jitter(&p, cluda_dacs_image_mean, cluda_dacs_image_std, &ty));
      ref_jitter(&p, x, ref, hw);
      char what[64];
      snprintf(what, sizeof what, "jitter %s %.1f", names[op], vals[op][v]);
      test_compare(what, y, ref, n, 0, 2e-4);
    }
  /* all four in every order of a few permutations; the order matters */
  const int orders[4][4] = {{0, 1, 2, 3}, {3, 2, 1, 0}, {1, 0, 3, 2}, {2, 3, 0, 1}};
  float *y0 = test_alloc_f32(n);
  for (int o = 0; o < 4; o++) {
    cluda_jitter_params p = {1.15f, 0.85f, 1.18f, -0.13f, {0}};
    memcpy(p.order, orders[o], sizeof p.order);
    memcpy(y, x, sizeof(float) * n);
    TEST_OK(cluda_dacs_color_jitter(&p, cluda_dacs_image_mean, cluda_dacs_image_std, &ty));
    ref_jitter(&p, x, ref, hw);
    char what[64];
    snprintf(what, sizeof what, "jitter order %d%d%d%d", p.order[0], p.order[1], p.order[2],
             p.order[3]);
    test_compare(what, y, ref, n, 0, 2e-4);
    if (o == 0) memcpy(y0, y, sizeof(float) * n);
  }
  double diff = 0;
  for (int64_t i = 0; i < n; i++)
    diff = fmax(diff, fabs(y[i] - y0[i]));
  TEST_CHECK(diff > 0.05, "a different order gives a different image (%.3g)", diff);

  /* draws: ranges, permutations, uniform order, deterministic */
  cluda_rng_key key = cluda_rng_make_key(3, 0, 9, CLUDA_RNG_AUGMENT, CLUDA_DACS_SLOT_JITTER);
  int perm_count[24] = {0}, bad = 0;
  double mean_b = 0, mean_h = 0;
  const int draws = 24000;
  for (int i = 0; i < draws; i++) {
    cluda_jitter_params p, q;
    bad += cluda_dacs_jitter_draw(key, i, 0.2f, &p).code != CLUDA_OK;
    bad += cluda_dacs_jitter_draw(key, i, 0.2f, &q).code != CLUDA_OK;
    bad += memcmp(&p, &q, sizeof p) != 0;
    bad += p.brightness < 0.8f || p.brightness > 1.2f || p.contrast < 0.8f || p.contrast > 1.2f ||
           p.saturation < 0.8f || p.saturation > 1.2f || p.hue < -0.2f || p.hue > 0.2f;
    int seen = 0, code = 0;
    for (int j = 0; j < 4; j++) {
      seen |= 1 << p.order[j];
      code = code * 4 + p.order[j];
    }
    bad += seen != 15;
    /* rank of the permutation among the 24 (Lehmer code) */
    int rank = 0, fact[4] = {6, 2, 1, 1};
    for (int j = 0; j < 4; j++) {
      int smaller = 0;
      for (int l = j + 1; l < 4; l++)
        smaller += p.order[l] < p.order[j];
      rank += smaller * fact[j];
    }
    (void)code;
    perm_count[rank]++;
    mean_b += p.brightness;
    mean_h += p.hue;
  }
  TEST_CHECK(bad == 0, "jitter draws: in range, permutations, deterministic");
  int bad_perm = 0;
  for (int r = 0; r < 24; r++)
    bad_perm += fabs(perm_count[r] - draws / 24.0) > 5 * sqrt(draws / 24.0 * 23 / 24);
  TEST_CHECK(bad_perm == 0, "all 24 orders equally likely");
  TEST_CHECK(fabs(mean_b / draws - 1.0) < 0.005 && fabs(mean_h / draws) < 0.005,
             "factor means (%.4f, %.4f)", mean_b / draws, mean_h / draws);

  /* 1 vs 2 threads on a larger image */
  const int bh = 64, bw = 96;
  const int64_t bn = 2LL * bh * bw * 3;
  float *a1 = test_alloc_f32(bn), *a2 = test_alloc_f32(bn);
  test_fill_uniform(a1, bn, -2, 2, 8, 0);
  memcpy(a2, a1, sizeof(float) * bn);
  cluda_jitter_params pp[2];
  TEST_OK(cluda_dacs_jitter_draw(key, 0, 0.2f, &pp[0]));
  TEST_OK(cluda_dacs_jitter_draw(key, 1, 0.2f, &pp[1]));
  cluda_tensor t1 = cluda_tensor_4d(CLUDA_F32, a1, 2, bh, bw, 3);
  cluda_tensor t2 = cluda_tensor_4d(CLUDA_F32, a2, 2, bh, bw, 3);
  omp_set_num_threads(1);
  TEST_OK(cluda_dacs_color_jitter(pp, cluda_dacs_image_mean, cluda_dacs_image_std, &t1));
  omp_set_num_threads(2);
  TEST_OK(cluda_dacs_color_jitter(pp, cluda_dacs_image_mean, cluda_dacs_image_std, &t2));
  TEST_CHECK(memcmp(a1, a2, sizeof(float) * bn) == 0, "jitter: 1 vs 2 threads identical");

  /* bad input */
  cluda_jitter_params p = identity_params();
  p.order[3] = 2;
  TEST_FAILS(cluda_dacs_color_jitter(&p, cluda_dacs_image_mean, cluda_dacs_image_std, &ty),
             CLUDA_ERR_ARG, "permutation");
  p = identity_params();
  const float zero_std[3] = {1, 0, 1};
  TEST_FAILS(cluda_dacs_color_jitter(&p, cluda_dacs_image_mean, zero_std, &ty), CLUDA_ERR_ARG,
             "std[1]");
  cluda_tensor two = cluda_tensor_4d(CLUDA_F32, y, 1, h, w * 3 / 2, 2);
  TEST_FAILS(cluda_dacs_color_jitter(&p, cluda_dacs_image_mean, cluda_dacs_image_std, &two),
             CLUDA_ERR_SHAPE, "3 (RGB) channels");
  TEST_FAILS(cluda_dacs_jitter_draw(key, 0, 0.6f, &p), CLUDA_ERR_ARG, "strength");
  free(x);
  free(y);
  free(y0);
  free(ref);
  free(a1);
  free(a2);
}

/* ---------------------------------------------------------------- blur */

static void test_blur(void) {
  const int sizes[][2] = {{1, 1},  {10, 1}, {20, 1},   {21, 3},     {40, 3},
                          {45, 5}, {64, 7}, {512, 51}, {1024, 103}, {2048, 205}};
  int bad = 0;
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
    bad += cluda_dacs_blur_kernel_size(sizes[i][0]) != sizes[i][1];
  TEST_CHECK(bad == 0, "kernel sizes (51 for 512, 103 for 1024)");
  /* the kernel: sums to 1, closed form, odd and even sizes */
  const double sigmas[3] = {0.15, 0.6, 1.15};
  const int ks[10] = {1, 2, 3, 4, 5, 6, 7, 8, 51, 103};
  for (int s = 0; s < 3; s++)
    for (int ki = 0; ki < 10; ki++) {
      const int k = ks[ki];
      float g[103];
      TEST_OK(cluda_gaussian_kernel1d(k, sigmas[s], g));
      double sum = 0, ref_sum = 0, worst = 0;
      for (int j = 0; j < k; j++) {
        double xx = j - k / 2 + (k % 2 == 0 ? 0.5 : 0.0);
        ref_sum += exp(-xx * xx / (2 * sigmas[s] * sigmas[s]));
      }
      for (int j = 0; j < k; j++) {
        double xx = j - k / 2 + (k % 2 == 0 ? 0.5 : 0.0);
        worst = fmax(worst, fabs(g[j] - exp(-xx * xx / (2 * sigmas[s] * sigmas[s])) / ref_sum));
        sum += g[j];
      }
      TEST_CHECK(fabs(sum - 1.0) < 1e-6 && worst < 1e-7,
                 "gaussian kernel k=%d sigma=%.2f: sum %.9f, worst %.3g", k, sigmas[s], sum, worst);
    }
  /* blur vs the direct 2-D reflect-padded reference; H != W gives different kernels */
  const int shapes[][3] = {{30, 47, 3}, {64, 64, 3}, {41, 23, 2}};
  for (int s = 0; s < 3; s++) {
    const int h = shapes[s][0], w = shapes[s][1], c = shapes[s][2], b = 2;
    const int64_t per = (int64_t)h * w * c;
    float *x = test_alloc_f32(b * per), *orig = test_alloc_f32(b * per);
    double *ref = test_alloc_f64(b * per);
    test_fill_uniform(x, b * per, -2, 2, 31, (uint32_t)s);
    /* impulses at the corners and edges exercise the reflection */
    x[0] = 40.0f;
    x[(int64_t)(w - 1) * c] = -30.0f;
    x[per - 1] = 25.0f;
    x[per + (int64_t)(h / 2) * w * c] = 50.0f;
    memcpy(orig, x, sizeof(float) * b * per);
    const float sg[2] = {1.15f, 0.4f};
    cluda_tensor t = cluda_tensor_4d(CLUDA_F32, x, b, h, w, c);
    cluda_arena arena;
    TEST_OK(cluda_arena_create(&arena, cluda_dacs_blur_scratch_bytes(h, w, c)));
    TEST_OK(cluda_dacs_gaussian_blur(sg, &arena, &t));
    TEST_CHECK(arena.used == 0, "blur releases its scratch");
    for (int i = 0; i < b; i++)
      ref_blur(orig + i * per, ref + i * per, h, w, c, sg[i]);
    char what[64];
    snprintf(what, sizeof what, "blur %dx%dx%d (k %dx%d)", h, w, c, cluda_dacs_blur_kernel_size(h),
             cluda_dacs_blur_kernel_size(w));
    test_compare(what, x, ref, b * per, 1e-5, 1e-5);
    /* malloc path and 1 vs 2 threads */
    float *x2 = test_alloc_f32(b * per);
    memcpy(x2, orig, sizeof(float) * b * per);
    cluda_tensor t2 = cluda_tensor_4d(CLUDA_F32, x2, b, h, w, c);
    omp_set_num_threads(1);
    TEST_OK(cluda_dacs_gaussian_blur(sg, NULL, &t2));
    omp_set_num_threads(2);
    TEST_CHECK(memcmp(x, x2, sizeof(float) * b * per) == 0,
               "blur: arena vs malloc and 1 vs 2 threads identical");
    cluda_arena tiny;
    TEST_OK(cluda_arena_create(&tiny, 64));
    memcpy(x2, orig, sizeof(float) * b * per);
    TEST_FAILS(cluda_dacs_gaussian_blur(sg, &tiny, &t2), CLUDA_ERR_ALLOC, "blur");
    cluda_arena_destroy(&tiny);
    cluda_arena_destroy(&arena);
    free(x);
    free(x2);
    free(orig);
    free(ref);
  }
  float x[4] = {0};
  cluda_tensor t = cluda_tensor_4d(CLUDA_F32, x, 1, 2, 2, 1);
  const float zero = 0.0f;
  TEST_FAILS(cluda_dacs_gaussian_blur(&zero, NULL, &t), CLUDA_ERR_ARG, "sigma[0]");
  TEST_FAILS(cluda_dacs_gaussian_blur(NULL, NULL, &t), CLUDA_ERR_ARG, "sigma");
  TEST_FAILS(cluda_gaussian_kernel1d(0, 1.0, x), CLUDA_ERR_ARG, "size");
}

/* ---------------------------------------------------------------- strong augmentation */

static void test_strong_augment(void) {
  cluda_dacs_aug_config cfg = cluda_dacs_aug_config_default();
  const int b = 2, h = 24, w = 20;
  const int64_t n = (int64_t)b * h * w * 3;
  float *x = test_alloc_f32(n), *y = test_alloc_f32(n), *z = test_alloc_f32(n);
  test_fill_uniform(x, n, -1.5f, 1.5f, 41, 0);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y, b, h, w, 3);
  cluda_tensor tz = cluda_tensor_4d(CLUDA_F32, z, b, h, w, 3);
  int jit = 0, blr = 0, both_seen = 0, none_seen = 0, bad = 0;
  const int iters = 400;
  for (int it = 0; it < iters; it++) {
    cluda_dacs_aug_record rec;
    memcpy(y, x, sizeof(float) * n);
    TEST_OK(cluda_dacs_strong_augment(&cfg, 5, 1, (uint32_t)it, NULL, &ty, &rec));
    jit += rec.jittered;
    blr += rec.blurred;
    bad += rec.jittered != (rec.jitter_u > 0.2f) || rec.blurred != (rec.blur_u > 0.5f);
    /* the same result by hand from the documented keys */
    memcpy(z, x, sizeof(float) * n);
    if (rec.jittered) {
      cluda_jitter_params p[2];
      cluda_rng_key k =
          cluda_rng_make_key(5, 0, (uint32_t)it, CLUDA_RNG_AUGMENT, CLUDA_DACS_SLOT_JITTER);
      cluda_dacs_jitter_draw(k, 1, 0.2f, &p[0]); /* first_sample 1: samples 1 and 2 */
      cluda_dacs_jitter_draw(k, 2, 0.2f, &p[1]);
      TEST_OK(cluda_dacs_color_jitter(p, cfg.mean, cfg.std, &tz));
    }
    if (rec.blurred) {
      cluda_rng_key k =
          cluda_rng_make_key(5, 0, (uint32_t)it, CLUDA_RNG_AUGMENT, CLUDA_DACS_SLOT_BLUR);
      float sg[2] = {cluda_dacs_blur_sigma_draw(k, 1, 0.15f, 1.15f),
                     cluda_dacs_blur_sigma_draw(k, 2, 0.15f, 1.15f)};
      bad += sg[0] < 0.15f || sg[0] > 1.15f || sg[0] == sg[1];
      TEST_OK(cluda_dacs_gaussian_blur(sg, NULL, &tz));
    }
    bad += memcmp(y, z, sizeof(float) * n) != 0;
    if (rec.jittered && rec.blurred) both_seen++;
    if (!rec.jittered && !rec.blurred) {
      none_seen++;
      bad += memcmp(y, x, sizeof(float) * n) != 0;
    }
  }
  TEST_CHECK(bad == 0, "strong augment = coins, then jitter and blur from the documented keys");
  TEST_CHECK(fabs(jit - 0.8 * iters) < 5 * sqrt(iters * 0.16) &&
                 fabs(blr - 0.5 * iters) < 5 * sqrt(iters * 0.25),
             "jitter on %d, blur on %d of %d iterations", jit, blr, iters);
  TEST_CHECK(both_seen > 0 && none_seen > 0, "coins are independent");
  TEST_FAILS(cluda_dacs_strong_augment(NULL, 5, 1, 0, NULL, &ty, NULL), CLUDA_ERR_ARG, "cfg");
  free(x);
  free(y);
  free(z);
}

/* ---------------------------------------------------------------- RCS */

static void test_rcs(void) {
  /* 6 images x 5 labels; class 3 never occurs */
  enum { NI = 6, NL = 5 };
  const int64_t stats[NI][NL] = {
      {90000, 4000, 0, 0, 2000}, {80000, 0, 3500, 0, 0}, {70000, 100, 200, 0, 3100},
      {60000, 5000, 0, 0, 3001}, {50000, 0, 9000, 0, 0}, {40000, 3000, 0, 0, 5000},
  };
  cluda_rcs rcs;
  TEST_OK(cluda_rcs_init(&rcs, &stats[0][0], NI, NL, 0.01, 3000));
  TEST_CHECK(rcs.num_classes == 4, "occurring classes only (%d)", rcs.num_classes);
  int64_t tot[NL] = {0}, all = 0;
  for (int i = 0; i < NI; i++)
    for (int c = 0; c < NL; c++)
      tot[c] += stats[i][c], all += stats[i][c];
  double z[NL], mx = -1e300, s = 0;
  for (int c = 0; c < NL; c++)
    if (tot[c] > 0) mx = fmax(mx, z[c] = (1.0 - (double)tot[c] / all) / 0.01);
  for (int c = 0; c < NL; c++)
    if (tot[c] > 0) s += exp(z[c] - mx);
  int bad = 0;
  for (int j = 0; j < rcs.num_classes; j++) {
    const int c = rcs.classes[j];
    bad += fabs(rcs.probs[j] - exp(z[c] - mx) / s) > 1e-12;
    bad += rcs.class_pixels[j] != tot[c];
    if (j > 0) bad += rcs.class_pixels[j] < rcs.class_pixels[j - 1];
    /* candidates: images with count > 3000, ascending */
    int k = rcs.candidate_start[j];
    for (int i = 0; i < NI; i++)
      if (stats[i][c] > 3000) bad += k >= rcs.candidate_start[j + 1] || rcs.candidates[k++] != i;
    bad += k != rcs.candidate_start[j + 1];
  }
  TEST_CHECK(bad == 0, "RCS: P(c) = softmax((1 - f_c) / T), ascending n_c, candidates > 3000");
  cluda_rcs_free(&rcs);

  /* sampling frequencies with a temperature that gives moderate probabilities */
  TEST_OK(cluda_rcs_init(&rcs, &stats[0][0], NI, NL, 0.2, 3000));
  const int draws = 100000;
  int cls_count[NL] = {0}, img_count[NL][NI];
  memset(img_count, 0, sizeof img_count);
  cluda_rng_key key = cluda_rng_make_key(9, 0, 0, CLUDA_RNG_DATA, 4);
  bad = 0;
  for (int d = 0; d < draws; d++) {
    int c, im, c2, im2;
    bad += cluda_rcs_sample(&rcs, key, (uint64_t)d, &c, &im).code != CLUDA_OK;
    bad += cluda_rcs_sample(&rcs, key, (uint64_t)d, &c2, &im2).code != CLUDA_OK;
    bad += c != c2 || im != im2 || stats[im][c] <= 3000;
    cls_count[c]++;
    img_count[c][im]++;
  }
  TEST_CHECK(bad == 0, "RCS samples: deterministic, the image holds > 3000 pixels of the class");
  int bad_freq = 0;
  for (int j = 0; j < rcs.num_classes; j++) {
    const int c = rcs.classes[j];
    const double p = rcs.probs[j], sd = sqrt(draws * p * (1 - p));
    bad_freq += fabs(cls_count[c] - draws * p) > 5 * sd;
    const int nc = rcs.candidate_start[j + 1] - rcs.candidate_start[j];
    for (int k = rcs.candidate_start[j]; k < rcs.candidate_start[j + 1]; k++) {
      const double q = 1.0 / nc, sdi = sqrt(cls_count[c] * q * (1 - q));
      bad_freq += fabs(img_count[c][rcs.candidates[k]] - cls_count[c] * q) > 5 * sdi + 1;
    }
  }
  TEST_CHECK(bad_freq == 0, "RCS frequencies within 5 sigma of P(c) and uniform candidates");
  cluda_rcs_free(&rcs);

  /* crop counting */
  uint8_t lab[12] = {1, 2, 2, 255, 2, 0, 0, 2, 1, 1, 2, 3};
  cluda_tensor tl = cluda_tensor_3d(CLUDA_U8, lab, 1, 3, 4);
  int64_t cnt;
  TEST_OK(cluda_rcs_count_class(&tl, 2, &cnt));
  TEST_CHECK(cnt == 5, "count of class 2 in a crop (%lld)", (long long)cnt);

  /* bad input: a class with no candidate (HRDA #41), negative counts, bad temperature */
  int64_t few[2][3] = {{5000, 100, 0}, {4000, 2000, 0}};
  TEST_FAILS(cluda_rcs_init(&rcs, &few[0][0], 2, 3, 0.01, 3000), CLUDA_ERR_ARG, "class 1");
  few[1][1] = -1;
  TEST_FAILS(cluda_rcs_init(&rcs, &few[0][0], 2, 3, 0.01, 3000), CLUDA_ERR_ARG, "negative");
  TEST_FAILS(cluda_rcs_init(&rcs, &few[0][0], 2, 3, 0.0, 3000), CLUDA_ERR_ARG, "temperature");
  int64_t none[3] = {0, 0, 0};
  TEST_FAILS(cluda_rcs_init(&rcs, none, 1, 3, 0.01, 3000), CLUDA_ERR_ARG, "no pixel");
  int c, im;
  TEST_FAILS(cluda_rcs_sample(&rcs, key, 0, &c, &im), CLUDA_ERR_ARG, "not initialised");
  TEST_FAILS(cluda_rcs_count_class(&tl, 256, &cnt), CLUDA_ERR_ARG, "class_id");
}

/* ---------------------------------------------------------------- FD downscale */

static void ref_downscale(const uint8_t *l, int b, int h, int w, int s, int k, double min_ratio,
                          uint8_t *o) {
  const int oh = h / s, ow = w / s;
  for (int n = 0; n < b; n++)
    for (int oy = 0; oy < oh; oy++)
      for (int ox = 0; ox < ow; ox++) {
        double frac[256] = {0};
        for (int y = 0; y < s; y++)
          for (int x = 0; x < s; x++) {
            int v = l[((int64_t)n * h + oy * s + y) * w + ox * s + x];
            frac[v == 255 ? k : v] += 1.0 / (s * s);
          }
        int arg = 0;
        for (int c = 1; c <= k; c++)
          if (frac[c] > frac[arg]) arg = c;
        o[((int64_t)n * oh + oy) * ow + ox] =
            (arg == k || frac[arg] < min_ratio) ? 255 : (uint8_t)arg;
      }
}

static void test_downscale(void) {
  const int b = 2, s = 4, h = 8 * s + 3, w = 6 * s + 1, k = 19; /* floor drops the remainder */
  const int oh = h / s, ow = w / s;
  uint8_t *lab = test_alloc((size_t)b * h * w), *out = test_alloc((size_t)b * oh * ow);
  uint8_t *ref = test_alloc((size_t)b * oh * ow);
  /* mostly-one-class cells with a varying number of intruders and some ignore */
  for (int n = 0; n < b; n++)
    for (int y = 0; y < h; y++)
      for (int x = 0; x < w; x++) {
        const int cell = (y / s) * 7 + x / s + n * 3;
        const int in = (y % s) * s + x % s;
        const int intruders = cell % 9; /* 0..8 of 16: ratios 1 .. 0.5 */
        int v = cell % k;
        if (in < intruders) v = (cell % 5 == 0) ? 255 : (v + 1 + in % 2) % k;
        if (cell % 11 == 0 && in < 13) v = 255; /* ignore majority */
        lab[((int64_t)n * h + y) * w + x] = (uint8_t)v;
      }
  cluda_tensor tl = cluda_tensor_3d(CLUDA_U8, lab, b, h, w);
  cluda_tensor to = cluda_tensor_3d(CLUDA_U8, out, b, oh, ow);
  TEST_OK(cluda_dacs_downscale_label(&tl, s, k, 0.75f, &to));
  ref_downscale(lab, b, h, w, s, k, 0.75, ref);
  int bad = 0, kept = 0, ignored = 0;
  for (int i = 0; i < b * oh * ow; i++) {
    bad += out[i] != ref[i];
    kept += out[i] != 255;
    ignored += out[i] == 255;
  }
  TEST_CHECK(bad == 0 && kept > 0 && ignored > 0, "downscale vs reference (%d kept, %d ignored)",
             kept, ignored);
  /* the 0.75 edge: 12 of 16 stays, 11 of 16 is ignored; 3 of 4 at scale 2 stays */
  uint8_t cell[16];
  cluda_tensor tc = cluda_tensor_3d(CLUDA_U8, cell, 1, 4, 4);
  uint8_t one;
  cluda_tensor t1 = cluda_tensor_3d(CLUDA_U8, &one, 1, 1, 1);
  for (int i = 0; i < 16; i++)
    cell[i] = i < 12 ? 7 : 3;
  TEST_OK(cluda_dacs_downscale_label(&tc, 4, k, 0.75f, &t1));
  TEST_CHECK(one == 7, "12/16 = 0.75 is kept");
  cell[11] = 4;
  TEST_OK(cluda_dacs_downscale_label(&tc, 4, k, 0.75f, &t1));
  TEST_CHECK(one == 255, "11/16 < 0.75 is ignored");
  for (int i = 0; i < 16; i++)
    cell[i] = i < 13 ? 255 : 2;
  TEST_OK(cluda_dacs_downscale_label(&tc, 4, k, 0.75f, &t1));
  TEST_CHECK(one == 255, "ignore-class majority is ignored");
  for (int i = 0; i < 16; i++)
    cell[i] = i < 8 ? 5 : 6;
  TEST_OK(cluda_dacs_downscale_label(&tc, 4, k, 0.4f, &t1));
  TEST_CHECK(one == 5, "a tie takes the first class");
  /* thing mask */
  uint8_t *mask = test_alloc((size_t)b * oh * ow);
  cluda_tensor tm = cluda_tensor_3d(CLUDA_U8, mask, b, oh, ow);
  TEST_OK(cluda_dacs_class_mask(&to, cluda_fd_thing_classes, CLUDA_FD_NUM_THING_CLASSES, &tm));
  bad = 0;
  for (int i = 0; i < b * oh * ow; i++) {
    const int v = out[i];
    bad += mask[i] != (v == 6 || v == 7 || (v >= 11 && v <= 18));
  }
  TEST_CHECK(bad == 0, "thing mask: classes 6, 7, 11..18 (not 5, not 255)");
  /* 1 vs 2 threads on a larger map */
  const int bh = 512, bw = 256;
  uint8_t *big = test_alloc((size_t)bh * bw), *o1 = test_alloc(16 * 8), *o2 = test_alloc(16 * 8);
  uint8_t *o3 = test_alloc(16 * 8);
  for (int i = 0; i < bh * bw; i++)
    big[i] = (uint8_t)(((i / bw) / 24 + (i % bw) / 40 + (i * 7919) % 3) % 20 == 19
                           ? 255
                           : ((i / bw) / 24 + (i % bw) / 40) % 19);
  cluda_tensor tb = cluda_tensor_3d(CLUDA_U8, big, 1, bh, bw);
  cluda_tensor tb1 = cluda_tensor_3d(CLUDA_U8, o1, 1, 16, 8);
  cluda_tensor tb2 = cluda_tensor_3d(CLUDA_U8, o2, 1, 16, 8);
  omp_set_num_threads(1);
  TEST_OK(cluda_dacs_downscale_label(&tb, 32, k, 0.75f, &tb1));
  omp_set_num_threads(2);
  TEST_OK(cluda_dacs_downscale_label(&tb, 32, k, 0.75f, &tb2));
  ref_downscale(big, 1, bh, bw, 32, k, 0.75, o3);
  TEST_CHECK(memcmp(o1, o2, 16 * 8) == 0 && memcmp(o1, o3, 16 * 8) == 0,
             "downscale 512x256 / 32: reference, 1 vs 2 threads");
  /* bad input */
  lab[5] = 19;
  TEST_FAILS(cluda_dacs_downscale_label(&tl, s, k, 0.75f, &to), CLUDA_ERR_ARG, "num_classes");
  cluda_tensor wrong = cluda_tensor_3d(CLUDA_U8, out, b, oh + 1, ow);
  TEST_FAILS(cluda_dacs_downscale_label(&tl, s, k, 0.75f, &wrong), CLUDA_ERR_SHAPE, "out");
  TEST_FAILS(cluda_dacs_downscale_label(&tl, 0, k, 0.75f, &to), CLUDA_ERR_ARG, "scale");
  TEST_FAILS(cluda_dacs_class_mask(&to, NULL, 3, &tm), CLUDA_ERR_ARG, "classes");
  free(lab);
  free(out);
  free(ref);
  free(mask);
  free(big);
  free(o1);
  free(o2);
  free(o3);
}

/* ---------------------------------------------------------------- kornia 0.5.8 fixtures */

static void test_kornia_fixtures(void) {
  fixture f;
  if (!TEST_OK(fixture_open("dacs", &f))) return;
  const char *jit[] = {"jitter_brightness", "jitter_contrast", "jitter_saturation",
                       "jitter_hue_neg",    "jitter_hue_pos",  "jitter_all_a",
                       "jitter_all_b",      "jitter_identity"};
  char name[96];
  for (size_t i = 0; i < sizeof jit / sizeof jit[0]; i++) {
    cluda_tensor x, y, p, o;
    snprintf(name, sizeof name, "%s/x", jit[i]);
    TEST_OK(fixture_read(&f, name, CLUDA_F32, &x));
    snprintf(name, sizeof name, "%s/y", jit[i]);
    TEST_OK(fixture_read(&f, name, CLUDA_F32, &y));
    snprintf(name, sizeof name, "%s/params", jit[i]);
    TEST_OK(fixture_read(&f, name, CLUDA_F32, &p));
    snprintf(name, sizeof name, "%s/order", jit[i]);
    TEST_OK(fixture_read(&f, name, CLUDA_U8, &o));
    cluda_jitter_params jp;
    const float *pv = cluda_f32(&p);
    jp.brightness = pv[0], jp.contrast = pv[1], jp.saturation = pv[2], jp.hue = pv[3];
    for (int j = 0; j < 4; j++)
      jp.order[j] = cluda_u8(&o)[j];
    TEST_OK(cluda_dacs_color_jitter(&jp, cluda_dacs_image_mean, cluda_dacs_image_std, &x));
    snprintf(name, sizeof name, "kornia %s", jit[i]);
    test_compare_f32(name, cluda_f32(&x), cluda_f32(&y), cluda_tensor_numel(&x), 0, 1e-5);
    free(x.data);
    free(y.data);
    free(p.data);
    free(o.data);
  }
  const char *blur[] = {"blur_30x47", "blur_64x23"};
  for (size_t i = 0; i < 2; i++) {
    cluda_tensor x, y;
    double sigma;
    int kh, kw;
    snprintf(name, sizeof name, "%s/x", blur[i]);
    TEST_OK(fixture_read(&f, name, CLUDA_F32, &x));
    snprintf(name, sizeof name, "%s/y", blur[i]);
    TEST_OK(fixture_read(&f, name, CLUDA_F32, &y));
    TEST_OK(fixture_attr_double(&f, blur[i], "sigma", &sigma));
    TEST_OK(fixture_attr_int(&f, blur[i], "kernel_h", &kh));
    TEST_OK(fixture_attr_int(&f, blur[i], "kernel_w", &kw));
    TEST_CHECK(kh == cluda_dacs_blur_kernel_size(x.shape[1]) &&
                   kw == cluda_dacs_blur_kernel_size(x.shape[2]),
               "%s: kernel size rule %dx%d", blur[i], kh, kw);
    const float sg = (float)sigma;
    TEST_OK(cluda_dacs_gaussian_blur(&sg, NULL, &x));
    snprintf(name, sizeof name, "kornia %s", blur[i]);
    test_compare_f32(name, cluda_f32(&x), cluda_f32(&y), cluda_tensor_numel(&x), 1e-5, 2e-6);
    free(x.data);
    free(y.data);
  }
  fixture_close(&f);
}

int main(void) {
  omp_set_num_threads(2);
  test_pseudo_labels();
  test_classmix();
  test_hsv();
  test_jitter();
  test_blur();
  test_strong_augment();
  test_rcs();
  test_downscale();
  test_kornia_fixtures();
  return test_finish("test_dacs");
}

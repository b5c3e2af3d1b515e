/* DACS / DAFormer data transforms of the self-training step (shared/spec/algorithm.md 1.4-1.7,
 * 2, 3): pseudo-labels and the confidence weight, ClassMix, the strong augmentation (kornia
 * 0.5.x colour jitter and Gaussian blur), Rare Class Sampling and the FD label downscale.
 *
 * All of it runs on the host, is deterministic (independent of the thread count) and keeps no
 * global state. Every random choice is a pure function of a cluda_rng_key (rng.h) and a draw
 * index, so a rank can recompute any sample's draws. Keys: build them with
 * cluda_rng_make_key(seed, rank, iteration, CLUDA_RNG_AUGMENT, CLUDA_DACS_SLOT_*) for the
 * augmentation and with CLUDA_RNG_DATA for RCS; "sample" below is the index of the image in
 * the rank's local batch, which plays the role of the reference's (single-GPU) batch.
 *
 * Layouts: images NHWC f32 [B,H,W,3] (normalised RGB); labels, masks u8 [B,H,W]; pixel
 * weights f32 [B,H,W]; logits f32 [B,H,W,K]. */
#ifndef CLUDA_DACS_H
#define CLUDA_DACS_H

#include <stdint.h>

#include "cluda/arena.h"
#include "cluda/labels.h"
#include "cluda/rng.h"
#include "cluda/status.h"
#include "cluda/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Slots of the CLUDA_RNG_AUGMENT stream of one iteration: one per kind of draw, so the draws
 * of different transforms never share counters. */
enum {
  CLUDA_DACS_SLOT_COINS = 0,    /* draw 0: jitter coin, draw 1: blur coin */
  CLUDA_DACS_SLOT_CLASSMIX = 1, /* draws 64 i .. 64 i + 63: class choice of sample i */
  CLUDA_DACS_SLOT_JITTER = 2,   /* draws 2 i, 2 i + 1: factors and order of sample i */
  CLUDA_DACS_SLOT_BLUR = 3      /* draw i: sigma of sample i */
};

/* ---- pseudo-labels and the confidence weight (1.4, 1.5) ---- */

/* From teacher logits [B,H,W,K] (already at label resolution, 1 <= K <= 255): label u8
 * [B,H,W] = argmax (the first maximum; never 255), prob f32 [B,H,W] (may be NULL) = max
 * softmax probability p̂. *confident receives the number of pixels with p̂ >= threshold (in
 * float, as PyTorch compares a float tensor with a scalar) and *total = B H W, so
 * Γ = sum(confident) / sum(total) can be taken over the global batch (decision 10). */
cluda_status cluda_dacs_pseudo_label(const cluda_tensor *logits, float threshold,
                                     cluda_tensor *label, cluda_tensor *prob, int64_t *confident,
                                     int64_t *total);

/* Γ = confident / total (0 when total is 0). */
double cluda_dacs_gamma(int64_t confident, int64_t total);

/* DAFormer margins (pseudo_weight_ignore_top / _bottom): valid u8 [B,H,W] = 0 in the first
 * `top` and the last `bottom` rows, 1 elsewhere. 0 disables a side (the reference guards
 * the `-0:` slice); top + bottom >= H zeroes everything. */
cluda_status cluda_dacs_margin_mask(int top, int bottom, cluda_tensor *valid);

/* Target pixel weights f32 [B,H,W] = gamma, times (valid != 0) when valid (u8 [B,H,W]) is
 * given: either the margin mask above or HRDA's "crop v2" valid_pseudo_mask after the crop. */
cluda_status cluda_dacs_pseudo_weight(float gamma, const cluda_tensor *valid, cluda_tensor *weight);

/* ---- ClassMix (1.6) ---- */

/* Marks in present[256] (0/1) the values occurring in the whole batch of labels u8 [B,H,W]
 * (255 included) and returns their number in *count. */
cluda_status cluda_dacs_batch_classes(const cluda_tensor *labels, uint8_t present[256], int *count);

/* ClassMix masks: C = the classes of the WHOLE batch of source labels (the DACS quirk; 255
 * counts when present); for each sample i, (n + n mod 2) / 2 of the n classes are drawn
 * uniformly without replacement (draws of slot CLUDA_DACS_SLOT_CLASSMIX, at the draw indices
 * of sample first_sample + i) and mask u8 [B,H,W] = 1 where src_labels[i] is a chosen class,
 * else 0. batch_classes (256 flags, may be NULL) replaces the classes of src_labels: data
 * parallel training passes the classes of the GLOBAL batch (the flags all-reduced with max)
 * and first_sample = rank * B, so the masks do not depend on how ranks split the batch.
 * chosen u8 [B,256] (may be NULL) receives 1 for the classes chosen for each sample. */
cluda_status cluda_dacs_classmix_masks(const cluda_tensor *src_labels, const uint8_t *batch_classes,
                                       cluda_rng_key key, uint64_t first_sample, cluda_tensor *mask,
                                       cluda_tensor *chosen);

/* Mixes by mask u8 [B,H,W] (nonzero = source): each output is M src + (1 - M) tgt.
 * Images f32 [B,H,W,C] (normalised, before jitter), labels u8 [B,H,W] (target = pseudo
 * labels), weights f32 [B,H,W] (source weight 1, target weight tgt_weight). Each of the three
 * groups is skipped when its output is NULL; outputs may alias their inputs. */
cluda_status cluda_dacs_classmix_apply(const cluda_tensor *mask, const cluda_tensor *src_img,
                                       const cluda_tensor *tgt_img, cluda_tensor *mix_img,
                                       const cluda_tensor *src_label, const cluda_tensor *tgt_label,
                                       cluda_tensor *mix_label, const cluda_tensor *tgt_weight,
                                       cluda_tensor *mix_weight);

/* ---- strong augmentation (1.7) ---- */

/* The image normalisation of every pipeline: RGB on 0..255. */
extern const float cluda_dacs_image_mean[3]; /* 123.675, 116.28, 103.53 */
extern const float cluda_dacs_image_std[3];  /* 58.395, 57.12, 57.375 */

/* kornia 0.5.x ColorJitter parameters of one sample. */
typedef enum cluda_jitter_op {
  CLUDA_JITTER_BRIGHTNESS = 0, /* x + (b - 1), clamped to [0, 1] */
  CLUDA_JITTER_CONTRAST = 1,   /* x c, clamped to [0, 1] */
  CLUDA_JITTER_SATURATION = 2, /* HSV: S = clamp(S s, 0, 1) */
  CLUDA_JITTER_HUE = 3         /* HSV: H = fmod(H + 2 pi h, 2 pi) */
} cluda_jitter_op;

typedef struct cluda_jitter_params {
  float brightness; /* b ~ U(1 - s, 1 + s) */
  float contrast;   /* c ~ U(max(0, 1 - s), 1 + s) */
  float saturation; /* s' ~ U(max(0, 1 - s), 1 + s) */
  float hue;        /* h ~ U(-s, s), a fraction of the full turn */
  int order[4];     /* the ops in application order: a permutation of cluda_jitter_op */
} cluda_jitter_params;

/* The per-iteration coins (slot CLUDA_DACS_SLOT_COINS): jitter when *jitter_u > 0.2 and blur
 * when *blur_u > 0.5 (the reference's `color_jitter` and `blur` draws). */
void cluda_dacs_draw_coins(cluda_rng_key key, float *jitter_u, float *blur_u);

/* Draws the jitter parameters of one sample for strength s in [0, 0.5] (slot
 * CLUDA_DACS_SLOT_JITTER; uniform factors, uniformly random order). */
cluda_status cluda_dacs_jitter_draw(cluda_rng_key key, int sample, float strength,
                                    cluda_jitter_params *params);

/* kornia 0.5 colour conversions, in float as kornia computes them: H in radians [0, 2 pi),
 * S = (max - min) / (max + 1e-6), V = max; the hue comes from the first channel (R, G, B)
 * holding the maximum. Inputs in [0, 1]. */
void cluda_rgb_to_hsv(const float rgb[3], float hsv[3]);
void cluda_hsv_to_rgb(const float hsv[3], float rgb[3]);

/* Applies one jitter op with factor `factor` (b - 1 for brightness, c, s', or 2 pi h for hue)
 * to one RGB pixel in [0, 1]. */
void cluda_jitter_pixel_op(cluda_jitter_op op, float factor, float rgb[3]);

/* Colour jitter of normalised images img f32 [B,H,W,3], in place: per sample i, denormalise
 * to [0, 1] ((x std + mean) / 255), apply the four ops of params[i] in params[i].order,
 * renormalise ((y 255 - mean) / std). mean and std are per RGB channel on 0..255. */
cluda_status cluda_dacs_color_jitter(const cluda_jitter_params *params, const float mean[3],
                                     const float std[3], cluda_tensor *img);

/* The reference's kernel size for an axis of length L: c = ceil(0.1 L), c - 1 when c is even,
 * else c (51 for 512, 103 for 1024). */
int cluda_dacs_blur_kernel_size(int length);

/* kornia get_gaussian_kernel1d: x = i - k / 2 (+ 0.5 when k is even), w = exp(-x^2 / (2
 * sigma^2)), normalised to sum 1 (computed in double, stored as float). */
cluda_status cluda_gaussian_kernel1d(int size, double sigma, float *kernel);

/* Draws the blur sigma of one sample, U(lo, hi) (slot CLUDA_DACS_SLOT_BLUR). */
float cluda_dacs_blur_sigma_draw(cluda_rng_key key, int sample, float lo, float hi);

/* Scratch bytes cluda_dacs_gaussian_blur takes for images of H x W x C. */
size_t cluda_dacs_blur_scratch_bytes(int h, int w, int c);

/* Gaussian blur of img f32 [B,H,W,C] in place, sample i with isotropic sigma[i] > 0, kernel
 * sizes from cluda_dacs_blur_kernel_size(H) and (W), separable, PyTorch 'reflect' border
 * (mirror without repeating the edge). Scratch comes from `scratch` (released before
 * returning), or from malloc when scratch is NULL. */
cluda_status cluda_dacs_gaussian_blur(const float *sigma, cluda_arena *scratch, cluda_tensor *img);

/* The DACS strong augmentation settings. */
typedef struct cluda_dacs_aug_config {
  float jitter_p;        /* 0.2: jitter when the jitter coin > jitter_p */
  float jitter_strength; /* 0.2 */
  float blur_p;          /* 0.5: blur when the blur coin > blur_p */
  float sigma_min;       /* 0.15 */
  float sigma_max;       /* 1.15 */
  float mean[3], std[3]; /* cluda_dacs_image_mean / _std */
} cluda_dacs_aug_config;

cluda_dacs_aug_config cluda_dacs_aug_config_default(void);

/* What cluda_dacs_strong_augment drew (for logs and tests). */
typedef struct cluda_dacs_aug_record {
  float jitter_u, blur_u;
  int jittered, blurred;
} cluda_dacs_aug_record;

/* Colour jitter then blur of mixed images img f32 [B,H,W,3] in place, with the coins and
 * per-sample draws of the CLUDA_RNG_AUGMENT stream of (seed, iteration) (key rank word 0):
 * the coins are one per iteration for the whole global batch, and sample i uses the draws of
 * sample first_sample + i (data parallel: rank * B), so the result does not depend on how
 * ranks split the batch. record may be NULL. */
cluda_status cluda_dacs_strong_augment(const cluda_dacs_aug_config *cfg, uint64_t seed,
                                       uint32_t first_sample, uint32_t iteration,
                                       cluda_arena *scratch, cluda_tensor *img,
                                       cluda_dacs_aug_record *record);

/* ---- Rare Class Sampling (2) ---- */

/* The RCS tables of a source dataset. */
typedef struct cluda_rcs {
  int num_classes;       /* classes that occur in the statistics */
  int *classes;          /* [num_classes] train ids, ascending n_c (ties: ascending id) */
  int64_t *class_pixels; /* [num_classes] n_c */
  double *probs;         /* [num_classes] P(c) = softmax((1 - f_c) / T) */
  double *cdf;           /* [num_classes] running sum of probs, the last forced to 1 */
  int *candidate_start;  /* [num_classes + 1] */
  int *candidates;       /* images with count of class > min_pixels, ascending per class */
  int64_t min_pixels;    /* 3000 */
} cluda_rcs;

/* Builds the tables from the per-image class pixel counts of sample_class_stats.json as a
 * dense matrix stats[num_images][num_labels] (0 where a class is not listed; counts at the
 * original label resolution). Fails, naming the class, when an occurring class has no
 * candidate image (the reference asserts; HRDA #41). Free with cluda_rcs_free. */
cluda_status cluda_rcs_init(cluda_rcs *rcs, const int64_t *stats, int num_images, int num_labels,
                            double temperature, int64_t min_pixels);
void cluda_rcs_free(cluda_rcs *rcs);

/* Draw `index` of key (CLUDA_RNG_DATA): a class c ~ P, then one of its candidate images
 * uniformly. The loader then crops the image and, up to 10 times, re-crops the SAME image
 * while cluda_rcs_count_class(crop, c) <= min_pixels * min_crop_ratio (0.5 DAFormer, 2.0
 * HRDA), keeping the last crop. */
cluda_status cluda_rcs_sample(const cluda_rcs *rcs, cluda_rng_key key, uint64_t index,
                              int *class_id, int *image);

/* Number of pixels of class_id in a label map u8 (any shape). */
cluda_status cluda_rcs_count_class(const cluda_tensor *label, int class_id, int64_t *count);

/* ---- FD label downscale (3) ---- */

/* downscale_label_ratio: label u8 [B,H,W] with values in [0, num_classes) or 255; out u8
 * [B, H / s, W / s] (floor). Per s x s cell: one-hot with 255 as class num_classes, the
 * argmax class (first maximum) and its fraction r; the cell is 255 when the argmax is the
 * ignore class or r < min_ratio (0.75). */
cluda_status cluda_dacs_downscale_label(const cluda_tensor *label, int scale, int num_classes,
                                        float min_ratio, cluda_tensor *out);

/* The FD thing classes (imnet_feature_dist_classes): 6, 7, 11..18. */
enum { CLUDA_FD_NUM_THING_CLASSES = 10 };
extern const int cluda_fd_thing_classes[CLUDA_FD_NUM_THING_CLASSES];

/* mask u8 (same shape as labels) = 1 where labels is one of classes[0..n), else 0 (255
 * never matches unless listed). */
cluda_status cluda_dacs_class_mask(const cluda_tensor *labels, const int *classes, int n,
                                   cluda_tensor *mask);

#ifdef __cplusplus
}
#endif
#endif

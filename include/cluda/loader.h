/* The training input pipeline for datasets on disk (shared/spec/algorithm.md 4.3 and 2.3):
 * keep-ratio resize (half-pixel bilinear for images, nearest for labels), random crop with
 * cat_max_ratio (10 retries), Rare Class Sampling with the re-crop rule, horizontal flip,
 * normalisation and padding; and a loader that prefetches whole iterations on background
 * threads so decoding overlaps compute.
 *
 * Determinism: sample `slot` of iteration `it` is a pure function of (seed, slot, it, domain)
 * through the CLUDA_RNG_DATA stream keyed cluda_rng_make_key(seed, slot, it, CLUDA_RNG_DATA,
 * domain). `slot` is the sample's GLOBAL index in the global batch (rank * batch + b), so the
 * global batch does not depend on how it is split over ranks, nor on the thread count, the
 * number of workers or the prefetch depth.
 *
 * Draw indices of one sample's key (cluda_rng_bits words; integers in [0, m) by the
 * multiply-shift word * m >> 32):
 *   256 r + k  (k = 0..10)  crop try k of pipeline run r: word 0 -> y offset, word 1 -> x offset
 *   256 r + 255             flip of run r: flipped when the uniform of word 0 is < 0.5
 *   2^20 + a                the image of attempt a (a > 0 only after bad samples with
 *                           skip_bad): cluda_rcs_sample, or word 0 -> uniform dataset index
 * Run r > 0 only happens for RCS re-crops (r = 0..10). A replacement for a bad sample reuses the
 * crop and flip draws: the bad sample produced nothing, so nothing is correlated. */
#ifndef CLUDA_LOADER_H
#define CLUDA_LOADER_H

#include <stdint.h>

#include "cluda/dacs.h"
#include "cluda/dataset.h"
#include "cluda/image.h"
#include "cluda/rng.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- one sample (algorithm.md 4.3) ---- */

typedef struct cluda_pipeline_config {
  int scale_long, scale_short; /* mmcv imrescale target, e.g. 1280 x 720; 0 x 0: no resize */
  int crop_h, crop_w;          /* random crop (padded with image 0 / label 255 if larger) */
  float cat_max_ratio;         /* 0.75 for the source; >= 1 disables the check */
  int flip;                    /* horizontal flip with p = 0.5 */
  float mean[3], std[3];       /* normalisation, RGB on the 0..255 scale */
} cluda_pipeline_config;

/* What one sample drew (for tests and logs). */
typedef struct cluda_pipeline_record {
  int resized_h, resized_w;
  int crop_y, crop_x; /* offset of the final crop in the resized image */
  int crop_tries;     /* crops drawn in all runs (cat_max_ratio and RCS re-crops) */
  int runs;           /* pipeline runs (1 + RCS re-crops) */
  int flipped;
  int64_t rare_pixels; /* pixels of the rare class in the final crop (-1 without RCS) */
} cluda_pipeline_record;

/* Most crops one run draws: the first and 10 cat_max_ratio retries (mmseg RandomCrop); most
 * runs with RCS: the first and 10 re-crops (DAFormer get_rare_class_sample checks 10 times and
 * re-crops after each failed check, so the 11th crop is kept unchecked). */
enum { CLUDA_CROP_MAX_DRAWS = 11, CLUDA_RCS_MAX_RUNS = 11 };

/* resize -> crop -> flip -> normalise -> pad of one decoded image (8-bit RGB) and its train-id
 * labels (same size; a mismatch is an error naming both sizes). The image resize matches
 * OpenCV's cv2.resize INTER_LINEAR on uint8 bit for bit (11-bit fixed-point weights, its
 * rounding and border rules); labels match INTER_NEAREST. Only the final crop of the image is
 * resized. Draws from key as listed at the top of this file. rare_class >= 0 (RCS): the crop
 * and flip are redrawn on the same image until the crop holds more than
 * rare_min_crop_pixels pixels of the class, checked at most 10 times (the last crop is kept).
 * Outputs: image [crop_h, crop_w, 3] f32 normalised (padding 0), labels [crop_h, crop_w] u8
 * (padding 255). record may be NULL. */
cluda_status cluda_pipeline_apply(const cluda_pipeline_config *cfg, const cluda_image *rgb,
                                  const cluda_image *labels, cluda_rng_key key, int rare_class,
                                  double rare_min_crop_pixels, float *image_out,
                                  uint8_t *labels_out, cluda_pipeline_record *record);

/* ---- the loader ---- */

typedef struct cluda_loader_config {
  const cluda_dataset *dataset; /* borrowed; outlives the loader */
  cluda_pipeline_config pipeline;
  const cluda_rcs *rcs;      /* NULL: images drawn uniformly */
  double rcs_min_crop_ratio; /* re-crop threshold = rcs min_pixels x this (0.5) */
  uint64_t seed;
  uint32_t domain;         /* key slot: 0 source, 1 target */
  int first_slot, slots;   /* global sample slots loaded each iteration */
  int workers;             /* background threads; 0: load in the calling thread */
  int prefetch;            /* iterations kept ready ahead (>= 1 with workers) */
  int skip_bad;            /* data.on_error = skip: warn, draw another image, count */
  int64_t first_iteration; /* where the workers start (the resume point; default 0) */
} cluda_loader_config;

/* Bad samples in a row (skip_bad) after which a slot gives up with an error. */
enum { CLUDA_LOADER_MAX_ATTEMPTS = 64 };

typedef struct cluda_loader cluda_loader;

cluda_status cluda_loader_create(cluda_loader **out, const cluda_loader_config *cfg);

/* The samples of `iteration`: images [slots, crop_h, crop_w, 3] f32, labels [slots, crop_h,
 * crop_w] u8. Blocks until ready. Any iteration may be asked (a resume jumps); the loader then
 * prefetches iteration + 1, + 2, ... An unreadable sample (missing or corrupt file, image and
 * labels of different sizes) is an error naming the file (the lowest failing slot's), or with
 * skip_bad a warning on stderr and another image. Call from one thread at a time. */
cluda_status cluda_loader_get(cluda_loader *l, int64_t iteration, float *images, uint8_t *labels);

/* Samples skipped (skip_bad) in the iterations returned by get so far; same thread as get. */
int64_t cluda_loader_skipped(const cluda_loader *l);

/* Stops the workers and frees everything; safe on NULL. */
void cluda_loader_destroy(cluda_loader *l);

#ifdef __cplusplus
}
#endif
#endif

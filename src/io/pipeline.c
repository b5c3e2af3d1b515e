/* One training sample's augmentation as mmseg / DAFormer do it (algorithm.md 4.3, 2.3):
 * imrescale (cv2 INTER_LINEAR for the image, INTER_NEAREST for the labels), RandomCrop with
 * cat_max_ratio, RCS re-crops, RandomFlip, Normalize and Pad. Draw indices: loader.h. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/loader.h"

enum { DRAWS_PER_RUN = 256, FLIP_DRAW = 255 };

/* An integer in [0, m) from 32 random bits (multiply-shift; bias below m / 2^32). */
static int uniform_int(uint32_t word, int m) { return (int)(((uint64_t)word * (uint64_t)m) >> 32); }

/* ---------------------------------------------------------------- resize */

/* cv2.resize(labels, (out_w, out_h), INTER_NEAREST): source index floor(d * in / out) with
 * cv2's double ratio, clamped. */
static cluda_status resize_nearest(const cluda_image *src, int out_w, int out_h, uint8_t *dst) {
  int *column = malloc((size_t)out_w * sizeof *column);
  CLUDA_REQUIRE(column != NULL, CLUDA_ERR_ALLOC, "pipeline: cannot allocate %d columns", out_w);
  const double x_step = 1.0 / ((double)out_w / src->width);
  const double y_step = 1.0 / ((double)out_h / src->height);
  for (int x = 0; x < out_w; x++) {
    const int s = (int)floor(x * x_step);
    column[x] = s < src->width - 1 ? s : src->width - 1;
  }
  for (int y = 0; y < out_h; y++) {
    int sy = (int)floor(y * y_step);
    if (sy > src->height - 1) sy = src->height - 1;
    const uint8_t *line = src->pixels + (size_t)sy * (size_t)src->width;
    uint8_t *out = dst + (size_t)y * (size_t)out_w;
    for (int x = 0; x < out_w; x++)
      out[x] = line[column[x]];
  }
  free(column);
  return cluda_ok();
}

/* ---------------------------------------------------------------- crop */

typedef struct crop_window {
  int y, x, h, w;
} crop_window;

/* mmseg RandomCrop.get_crop_bbox: offset = randint(0, max(size - crop, 0) + 1) per axis. */
static crop_window draw_crop(cluda_rng_key key, uint64_t index, int height, int width, int crop_h,
                             int crop_w) {
  uint32_t words[4];
  cluda_rng_bits(key, index, words);
  const int margin_h = height > crop_h ? height - crop_h : 0;
  const int margin_w = width > crop_w ? width - crop_w : 0;
  crop_window c;
  c.y = uniform_int(words[0], margin_h + 1);
  c.x = uniform_int(words[1], margin_w + 1);
  c.h = height < crop_h ? height : crop_h;
  c.w = width < crop_w ? width : crop_w;
  return c;
}

/* mmseg's cat_max_ratio test: more than one non-ignore class and the most frequent one below
 * ratio of the labelled pixels. */
static int crop_is_mixed(const uint8_t *labels, int width, crop_window c, float ratio) {
  int64_t counts[256] = {0};
  for (int y = 0; y < c.h; y++) {
    const uint8_t *line = labels + (size_t)(c.y + y) * (size_t)width + c.x;
    for (int x = 0; x < c.w; x++)
      counts[line[x]]++;
  }
  int64_t total = 0, largest = 0;
  int classes = 0;
  for (int v = 0; v < 256; v++) {
    if (v == CLUDA_IGNORE_LABEL || counts[v] == 0) continue;
    classes++;
    total += counts[v];
    if (counts[v] > largest) largest = counts[v];
  }
  return classes > 1 && (double)largest / (double)total < (double)ratio;
}

static int64_t count_class(const uint8_t *labels, int width, crop_window c, int class_id) {
  int64_t n = 0;
  for (int y = 0; y < c.h; y++) {
    const uint8_t *line = labels + (size_t)(c.y + y) * (size_t)width + c.x;
    for (int x = 0; x < c.w; x++)
      n += line[x] == class_id;
  }
  return n;
}

/* ---------------------------------------------------------------- the pipeline */

static cluda_status check_arguments(const cluda_pipeline_config *cfg, const cluda_image *rgb,
                                    const cluda_image *labels, float *image_out,
                                    uint8_t *labels_out) {
  const char *op = "pipeline";
  CLUDA_REQUIRE(cfg && rgb && labels && image_out && labels_out, CLUDA_ERR_ARG, "%s: NULL argument",
                op);
  CLUDA_REQUIRE(rgb->pixels && rgb->channels == 3, CLUDA_ERR_ARG,
                "%s: the image must be 8-bit RGB (3 channels), got %d", op, rgb->channels);
  CLUDA_REQUIRE(labels->pixels && labels->channels == 1, CLUDA_ERR_ARG,
                "%s: the labels must have 1 channel, got %d", op, labels->channels);
  CLUDA_REQUIRE(rgb->width == labels->width && rgb->height == labels->height, CLUDA_ERR_SHAPE,
                "%s: image %dx%d and labels %dx%d differ in size", op, rgb->width, rgb->height,
                labels->width, labels->height);
  CLUDA_REQUIRE(cfg->crop_h >= 1 && cfg->crop_w >= 1, CLUDA_ERR_ARG,
                "%s: crop %dx%d must be positive", op, cfg->crop_w, cfg->crop_h);
  CLUDA_REQUIRE((cfg->scale_long == 0 && cfg->scale_short == 0) ||
                    (cfg->scale_long >= 1 && cfg->scale_short >= 1),
                CLUDA_ERR_ARG, "%s: resize scale (%d, %d) must be both positive or both 0", op,
                cfg->scale_long, cfg->scale_short);
  for (int c = 0; c < 3; c++)
    CLUDA_REQUIRE(cfg->std[c] > 0.0f, CLUDA_ERR_ARG, "%s: std[%d] = %g must be positive", op, c,
                  (double)cfg->std[c]);
  return cluda_ok();
}

/* Crops, flips, normalises and pads the final window into the outputs. */
static void write_sample(const cluda_pipeline_config *cfg, const uint8_t *window_rgb,
                         const uint8_t *labels, int label_width, crop_window c, int flipped,
                         float *image_out, uint8_t *labels_out) {
  float table[3][256]; /* (v - mean) / std for every byte value: same floats, no division */
  for (int ch = 0; ch < 3; ch++)
    for (int v = 0; v < 256; v++)
      table[ch][v] = ((float)v - cfg->mean[ch]) / cfg->std[ch];
  for (int y = 0; y < cfg->crop_h; y++) {
    float *image_row = image_out + (size_t)y * (size_t)cfg->crop_w * 3;
    uint8_t *label_row = labels_out + (size_t)y * (size_t)cfg->crop_w;
    if (y >= c.h) {
      memset(image_row, 0, (size_t)cfg->crop_w * 3 * sizeof *image_row);
      memset(label_row, CLUDA_IGNORE_LABEL, (size_t)cfg->crop_w);
      continue;
    }
    const uint8_t *rgb_line = window_rgb + (size_t)y * (size_t)c.w * 3;
    const uint8_t *label_line = labels + (size_t)(c.y + y) * (size_t)label_width + c.x;
    for (int x = 0; x < c.w; x++) {
      const int from = flipped ? c.w - 1 - x : x;
      for (int ch = 0; ch < 3; ch++)
        image_row[3 * x + ch] = table[ch][rgb_line[3 * from + ch]];
      label_row[x] = label_line[from];
    }
    if (c.w < cfg->crop_w) {
      memset(image_row + 3 * c.w, 0, (size_t)(cfg->crop_w - c.w) * 3 * sizeof *image_row);
      memset(label_row + c.w, CLUDA_IGNORE_LABEL, (size_t)(cfg->crop_w - c.w));
    }
  }
}

cluda_status cluda_pipeline_apply(const cluda_pipeline_config *cfg, const cluda_image *rgb,
                                  const cluda_image *labels, cluda_rng_key key, int rare_class,
                                  double rare_min_crop_pixels, float *image_out,
                                  uint8_t *labels_out, cluda_pipeline_record *record) {
  CLUDA_TRY(check_arguments(cfg, rgb, labels, image_out, labels_out));
  CLUDA_REQUIRE(rare_class < 256, CLUDA_ERR_ARG, "pipeline: rare class %d is not a label value",
                rare_class);
  int width = rgb->width, height = rgb->height;
  if (cfg->scale_long > 0)
    CLUDA_TRY(cluda_image_rescale_size(rgb->width, rgb->height, cfg->scale_long, cfg->scale_short,
                                       &width, &height));
  /* cv2.resize to the same size is a copy (and so is our arithmetic then). */
  const int resize = width != rgb->width || height != rgb->height;
  CLUDA_REQUIRE(width >= 1 && height >= 1 && width <= CLUDA_IMAGE_MAX_SIDE &&
                    height <= CLUDA_IMAGE_MAX_SIDE,
                CLUDA_ERR_ARG, "pipeline: %dx%d rescaled to (%d, %d) gives %dx%d", rgb->width,
                rgb->height, cfg->scale_long, cfg->scale_short, width, height);
  uint8_t *resized_labels = labels->pixels;
  if (resize) {
    resized_labels = malloc((size_t)width * (size_t)height);
    CLUDA_REQUIRE(resized_labels != NULL, CLUDA_ERR_ALLOC, "pipeline: cannot allocate %dx%d labels",
                  width, height);
    cluda_status s = resize_nearest(labels, width, height, resized_labels);
    if (s.code != CLUDA_OK) {
      free(resized_labels);
      return s;
    }
  }

  /* Every run is a fresh RandomCrop + RandomFlip of the same resized image (DAFormer reloads
   * the sample through the pipeline); only RCS repeats runs. */
  crop_window c = {0, 0, 0, 0};
  int flipped = 0, tries = 0, run = 0;
  int64_t rare_pixels = -1;
  for (;; run++) {
    const uint64_t base = (uint64_t)run * DRAWS_PER_RUN;
    c = draw_crop(key, base, height, width, cfg->crop_h, cfg->crop_w);
    tries++;
    for (int k = 1; k < CLUDA_CROP_MAX_DRAWS && cfg->cat_max_ratio < 1.0f; k++) {
      if (crop_is_mixed(resized_labels, width, c, cfg->cat_max_ratio)) break;
      c = draw_crop(key, base + (uint64_t)k, height, width, cfg->crop_h, cfg->crop_w);
      tries++;
    }
    flipped = cfg->flip && cluda_rng_uniform(key, base + FLIP_DRAW) < 0.5f;
    if (rare_class < 0) break;
    rare_pixels = count_class(resized_labels, width, c, rare_class);
    if ((double)rare_pixels > rare_min_crop_pixels || run == CLUDA_RCS_MAX_RUNS - 1) break;
  }

  cluda_status s = cluda_ok();
  uint8_t *window_rgb = malloc((size_t)c.w * (size_t)c.h * 3);
  if (!window_rgb)
    s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "pipeline: cannot allocate a %dx%d crop", c.w, c.h);
  else if (resize)
    s = cluda_image_resize_linear_region(rgb, width, height, c.y, c.x, c.h, c.w, window_rgb);
  else
    for (int y = 0; y < c.h; y++)
      memcpy(window_rgb + (size_t)y * (size_t)c.w * 3,
             rgb->pixels + ((size_t)(c.y + y) * (size_t)width + (size_t)c.x) * 3, (size_t)c.w * 3);
  if (s.code == CLUDA_OK)
    write_sample(cfg, window_rgb, resized_labels, width, c, flipped, image_out, labels_out);
  free(window_rgb);
  if (resize) free(resized_labels);
  if (s.code == CLUDA_OK && record) {
    record->resized_h = height;
    record->resized_w = width;
    record->crop_y = c.y;
    record->crop_x = c.x;
    record->crop_tries = tries;
    record->runs = run + 1;
    record->flipped = flipped;
    record->rare_pixels = rare_pixels;
  }
  return s;
}

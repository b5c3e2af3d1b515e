/* Keep-ratio rescale sizes (mmcv imrescale) and cv2.resize INTER_LINEAR on 8-bit images, shared
 * by the training pipeline (loader.h) and the test protocol (eval.h). */
#include <math.h>
#include <stdlib.h>

#include "cluda/image.h"

cluda_status cluda_image_rescale_size(int width, int height, int scale_long, int scale_short,
                                      int *out_width, int *out_height) {
  CLUDA_REQUIRE(out_width && out_height, CLUDA_ERR_ARG, "rescale_size: NULL argument");
  CLUDA_REQUIRE(width > 0 && height > 0 && scale_long > 0 && scale_short > 0, CLUDA_ERR_ARG,
                "rescale_size: image %dx%d and scale (%d, %d) must be positive", width, height,
                scale_long, scale_short);
  double target_long = scale_long > scale_short ? scale_long : scale_short;
  double target_short = scale_long > scale_short ? scale_short : scale_long;
  double long_side = width > height ? width : height, short_side = width > height ? height : width;
  double a = target_long / long_side, b = target_short / short_side;
  double factor = a < b ? a : b;
  /* mmcv _scale_size: int(side * factor + 0.5), truncation of a positive number. */
  *out_width = (int)((double)width * factor + 0.5);
  *out_height = (int)((double)height * factor + 0.5);
  CLUDA_REQUIRE(*out_width >= 1 && *out_height >= 1 && *out_width <= CLUDA_IMAGE_MAX_SIDE &&
                    *out_height <= CLUDA_IMAGE_MAX_SIDE,
                CLUDA_ERR_ARG, "rescale_size: image %dx%d at scale (%d, %d) becomes %dx%d", width,
                height, scale_long, scale_short, *out_width, *out_height);
  return cluda_ok();
}

/* cv2 (resize.cpp, INTER_LINEAR on 8-bit data) weighs the two source samples with
 * coefficients scaled by 2^11, sums rows in integers and rounds in a fixed way; the float
 * formula would differ by one grey level on some pixels. */
enum { RESIZE_COEF_BITS = 11, RESIZE_COEF_SCALE = 1 << RESIZE_COEF_BITS };

typedef struct resize_tap {
  int first, second; /* source indices (equal at a clamped border) */
  int16_t weight_first, weight_second;
} resize_tap;

/* Destination indices first .. first + count - 1 of one axis of cv2's coefficient tables: the
 * source centre is (d + 0.5) * scale - 0.5 in float, weights rounded with cvRound (to nearest,
 * ties to even). At a border cv2 zeroes the fraction horizontally but clips the row indices
 * vertically and keeps the weights, so the two axes differ when weights do not sum to exactly
 * 2^11. */
static void resize_taps(int src_size, int dst_size, int first_index, int count, int horizontal,
                        resize_tap *taps) {
  double scale = 1.0 / ((double)dst_size / (double)src_size);
  for (int i = 0; i < count; i++) {
    int d = first_index + i;
    float position = (float)((d + 0.5) * scale - 0.5);
    int first = (int)floorf(position);
    float fraction = position - (float)first;
    int second = first + 1;
    if (horizontal && (first < 0 || first >= src_size - 1)) {
      fraction = 0.f;
      first = second = first < 0 ? 0 : src_size - 1;
    }
    taps[i].first = first < 0 ? 0 : first > src_size - 1 ? src_size - 1 : first;
    taps[i].second = second < 0 ? 0 : second > src_size - 1 ? src_size - 1 : second;
    taps[i].weight_first = (int16_t)lrintf((1.f - fraction) * (float)RESIZE_COEF_SCALE);
    taps[i].weight_second = (int16_t)lrintf(fraction * (float)RESIZE_COEF_SCALE);
  }
}

/* One source row interpolated horizontally at the region's columns: sums scaled by 2^11. */
static void horizontal_pass(const uint8_t *in, const resize_tap *xs, int w, int channels,
                            int32_t *out) {
  for (int x = 0; x < w; x++)
    for (int c = 0; c < channels; c++)
      out[(size_t)x * channels + c] = in[(size_t)xs[x].first * channels + c] * xs[x].weight_first +
                                      in[(size_t)xs[x].second * channels + c] * xs[x].weight_second;
}

cluda_status cluda_image_resize_linear_region(const cluda_image *src, int out_width, int out_height,
                                              int y0, int x0, int h, int w, uint8_t *dst) {
  CLUDA_REQUIRE(src && src->pixels && dst, CLUDA_ERR_ARG, "resize_linear: NULL argument");
  CLUDA_REQUIRE(out_width > 0 && out_height > 0 && out_width <= CLUDA_IMAGE_MAX_SIDE &&
                    out_height <= CLUDA_IMAGE_MAX_SIDE,
                CLUDA_ERR_ARG, "resize_linear: bad target size %dx%d", out_width, out_height);
  CLUDA_REQUIRE(y0 >= 0 && x0 >= 0 && h > 0 && w > 0 && y0 + h <= out_height && x0 + w <= out_width,
                CLUDA_ERR_ARG, "resize_linear: region %dx%d at (%d, %d) is outside %dx%d", w, h, x0,
                y0, out_width, out_height);
  const int channels = src->channels;
  resize_tap *xs = malloc(sizeof *xs * (size_t)w), *ys = malloc(sizeof *ys * (size_t)h);
  const size_t row_values = (size_t)w * (size_t)channels;
  int32_t *rows = malloc(sizeof *rows * row_values * 2);
  if (!xs || !ys || !rows) {
    free(xs);
    free(ys);
    free(rows);
    return CLUDA_FAIL(CLUDA_ERR_ALLOC, "resize_linear: out of memory for a %dx%d region", w, h);
  }
  resize_taps(src->width, out_width, x0, w, 1, xs);
  resize_taps(src->height, out_height, y0, h, 0, ys);
  /* The two horizontally interpolated source rows in use; consecutive output rows mostly
   * share them. */
  int32_t *cached[2] = {rows, rows + row_values};
  int cached_row[2] = {-1, -1};
  for (int y = 0; y < h; y++) {
    const int need[2] = {ys[y].first, ys[y].second};
    int slot[2];
    for (int k = 0; k < 2; k++) {
      slot[k] = cached_row[0] == need[k] ? 0 : (cached_row[1] == need[k] ? 1 : -1);
      if (slot[k] >= 0) continue;
      /* overwrite the buffer the other row does not need */
      slot[k] = k == 0 ? (cached_row[0] == need[1]) : 1 - slot[0];
      horizontal_pass(src->pixels + (size_t)need[k] * (size_t)src->width * channels, xs, w,
                      channels, cached[slot[k]]);
      cached_row[slot[k]] = need[k];
    }
    /* Vertical pass: cv2's VResizeLinear for uchar, the 2^22 scale removed in three shifts. */
    const int32_t *upper = cached[slot[0]], *lower = cached[slot[1]];
    const int32_t b0 = ys[y].weight_first, b1 = ys[y].weight_second;
    uint8_t *out = dst + (size_t)y * row_values;
    for (size_t i = 0; i < row_values; i++) {
      const int v = (((b0 * (upper[i] >> 4)) >> 16) + ((b1 * (lower[i] >> 4)) >> 16) + 2) >> 2;
      out[i] = (uint8_t)(v < 0 ? 0 : (v > 255 ? 255 : v));
    }
  }
  free(xs);
  free(ys);
  free(rows);
  return cluda_ok();
}

cluda_status cluda_image_resize_linear(const cluda_image *src, int width, int height,
                                       cluda_image *dst) {
  CLUDA_REQUIRE(src && src->pixels && dst && src != dst, CLUDA_ERR_ARG,
                "resize_linear: NULL or aliased argument");
  CLUDA_REQUIRE(width > 0 && height > 0 && width <= CLUDA_IMAGE_MAX_SIDE &&
                    height <= CLUDA_IMAGE_MAX_SIDE,
                CLUDA_ERR_ARG, "resize_linear: bad target size %dx%d", width, height);
  CLUDA_TRY(cluda_image_create(dst, width, height, src->channels));
  cluda_status s =
      cluda_image_resize_linear_region(src, width, height, 0, 0, height, width, dst->pixels);
  if (s.code != CLUDA_OK) cluda_image_free(dst);
  return s;
}

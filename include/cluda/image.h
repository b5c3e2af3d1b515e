/* Images and label maps: PNG in and out (libpng), the Cityscapes palette and the network's
 * input normalisation.
 *
 * Reading an image (cluda_png_read_rgb) always yields 8-bit RGB:
 *  - RGB is taken as is; gray is replicated into R, G and B; a palette is expanded through
 *    its colours; 1/2/4-bit depths are expanded to 8 bits;
 *  - an alpha channel (RGBA, gray+alpha, palette tRNS) is dropped, not composited: dataset
 *    images are opaque, and a transparent pixel keeps its stored colour;
 *  - 16-bit samples are scaled to 8 bits with rounding (v * 255 / 65535);
 *  - interlaced files are de-interlaced.
 * Label maps (cluda_png_read_labels) must be 8-bit gray or palette (the stored index is the
 * label, as in GTA's palettised labels); anything else is rejected, because converting a
 * label map's colours would silently change its classes. SYNTHIA's 16-bit RGB labels, whose
 * class id sits in R, are read with cluda_png_read_first_channel.
 *
 * Every error names the file and the problem (missing, not a PNG, truncated, corrupt,
 * unsupported, too large). */
#ifndef CLUDA_IMAGE_H
#define CLUDA_IMAGE_H

#include <stdint.h>

#include "cluda/labels.h"
#include "cluda/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Largest accepted width or height: bounds memory for a corrupt or hostile header. */
enum { CLUDA_IMAGE_MAX_SIDE = 16384 };

/* An 8-bit image, rows top to bottom, channels interleaved (HWC). channels: 1 (gray or
 * label map) or 3 (RGB). */
typedef struct cluda_image {
  int width, height, channels;
  uint8_t *pixels; /* width * height * channels bytes, owned (cluda_image_free) */
} cluda_image;

/* Allocates a zeroed image. */
cluda_status cluda_image_create(cluda_image *img, int width, int height, int channels);
/* Frees pixels and zeroes the struct; safe on a zeroed or freed image. */
void cluda_image_free(cluda_image *img);

/* Reads any 8- or 16-bit PNG as RGB (see the conversion rules above). */
cluda_status cluda_png_read_rgb(const char *path, cluda_image *img);
/* Reads an 8-bit gray or palette PNG as a 1-channel label map (raw values / indices). */
cluda_status cluda_png_read_labels(const char *path, cluda_image *img);
/* Reads the first sample of every pixel (the gray value, or R) of an 8- or 16-bit gray or RGB
 * PNG, unscaled, as a 1-channel label map. A value above 255 is an error naming it and its
 * pixel. Alpha and palette PNGs are rejected: which channel holds the label would be a
 * guess. */
cluda_status cluda_png_read_first_channel(const char *path, cluda_image *img);
/* Reads only the header: the image's width and height. */
cluda_status cluda_png_read_size(const char *path, int *width, int *height);

/* Writes an 8-bit gray (1 channel) or RGB (3 channels) PNG atomically: a temporary file is
 * written, synced and renamed onto path. */
cluda_status cluda_png_write(const char *path, const cluda_image *img);
/* Writes a 1-channel image as an 8-bit palette PNG whose stored indices are the pixel values
 * (GTA's label format), colours[0..num_colors) being the palette (1..256 entries; a value
 * without a colour is an error). Atomic like cluda_png_write. */
cluda_status cluda_png_write_palette(const char *path, const cluda_image *indices,
                                     const uint8_t (*colors)[3], int num_colors);
/* Writes width x height RGB pixels of 16-bit samples (HWC, host byte order) as a 16-bit RGB
 * PNG (SYNTHIA's label format), atomically. */
cluda_status cluda_png_write_rgb16(const char *path, int width, int height,
                                   const uint16_t *samples);

/* ---- resizing (algorithm.md 4.3 and 7) ---- */

/* mmcv imrescale's keep-ratio size of a width x height image for the scale (long, short) (order
 * does not matter): factor = min(long / long side, short / short side), side = int(side *
 * factor + 0.5), in double precision as mmcv. 2048x1024 at (1024, 512) -> 1024x512; GTA
 * 1914x1052 at (1280, 720) -> 1280x704. */
cluda_status cluda_image_rescale_size(int width, int height, int scale_long, int scale_short,
                                      int *out_width, int *out_height);

/* dst (created here, src's channels) = src resized to width x height as cv2.resize with
 * INTER_LINEAR on 8-bit images: half-pixel centres, clamped borders, no antialias, 11-bit
 * fixed-point weights and cv2's rounding, so the result matches OpenCV's to the byte. */
cluda_status cluda_image_resize_linear(const cluda_image *src, int width, int height,
                                       cluda_image *dst);

/* Rows [y0, y0 + h) x columns [x0, x0 + w) of that resize to out_width x out_height, into dst
 * [h, w, channels] (the same bytes as the whole resize there; a crop costs only its area). */
cluda_status cluda_image_resize_linear_region(const cluda_image *src, int out_width, int out_height,
                                              int y0, int x0, int h, int w, uint8_t *dst);

/* ---- Cityscapes classes (algorithm.md 8.2) ---- */
enum { CLUDA_CITYSCAPES_CLASSES = 19 };

/* The standard Cityscapes colours of train ids 0..18 (cityscapesscripts labels.py). */
extern const uint8_t cluda_cityscapes_palette[CLUDA_CITYSCAPES_CLASSES][3];
extern const char *const cluda_cityscapes_class_names[CLUDA_CITYSCAPES_CLASSES];

/* The colour of a train id: the palette for 0..18, black for 255 (ignore) and any other
 * value. */
void cluda_label_color(int label, uint8_t rgb[3]);

/* rgb (created here, 3 channels, the labels' size) = the colours of a 1-channel label map. */
cluda_status cluda_colorize_labels(const cluda_image *labels, cluda_image *rgb);

/* ---- network input ---- */
/* ImageNet statistics in RGB order, on the 0..255 scale (mmseg img_norm_cfg). */
extern const float cluda_image_mean[3];
extern const float cluda_image_std[3];

/* out[(y * width + x) * 3 + c] = (pixel - mean[c]) / std[c]: one NHWC image [1, H, W, 3]. */
cluda_status cluda_image_normalize(const cluda_image *rgb, float *out);

#ifdef __cplusplus
}
#endif
#endif

/* PNG reading and writing through libpng, the Cityscapes palette and input normalisation.
 * libpng reports errors by longjmp: all state that must survive the jump (file, structs,
 * buffers) lives in a struct reached through a pointer, never in modified locals. */
#include "cluda/image.h"

#include <errno.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/fileio.h"

const uint8_t cluda_cityscapes_palette[CLUDA_CITYSCAPES_CLASSES][3] = {
    {128, 64, 128},  /* road */
    {244, 35, 232},  /* sidewalk */
    {70, 70, 70},    /* building */
    {102, 102, 156}, /* wall */
    {190, 153, 153}, /* fence */
    {153, 153, 153}, /* pole */
    {250, 170, 30},  /* traffic light */
    {220, 220, 0},   /* traffic sign */
    {107, 142, 35},  /* vegetation */
    {152, 251, 152}, /* terrain */
    {70, 130, 180},  /* sky */
    {220, 20, 60},   /* person */
    {255, 0, 0},     /* rider */
    {0, 0, 142},     /* car */
    {0, 0, 70},      /* truck */
    {0, 60, 100},    /* bus */
    {0, 80, 100},    /* train */
    {0, 0, 230},     /* motorcycle */
    {119, 11, 32},   /* bicycle */
};

const char *const cluda_cityscapes_class_names[CLUDA_CITYSCAPES_CLASSES] = {
    "road",         "sidewalk",   "building", "wall",       "fence",  "pole",  "traffic light",
    "traffic sign", "vegetation", "terrain",  "sky",        "person", "rider", "car",
    "truck",        "bus",        "train",    "motorcycle", "bicycle"};

const float cluda_image_mean[3] = {123.675f, 116.28f, 103.53f};
const float cluda_image_std[3] = {58.395f, 57.12f, 57.375f};

cluda_status cluda_image_create(cluda_image *img, int width, int height, int channels) {
  CLUDA_REQUIRE(img != NULL, CLUDA_ERR_ARG, "image_create: img is NULL");
  memset(img, 0, sizeof *img);
  CLUDA_REQUIRE(
      width >= 1 && height >= 1 && width <= CLUDA_IMAGE_MAX_SIDE && height <= CLUDA_IMAGE_MAX_SIDE,
      CLUDA_ERR_ARG, "image_create: size %dx%d outside 1..%d", width, height, CLUDA_IMAGE_MAX_SIDE);
  CLUDA_REQUIRE(channels == 1 || channels == 3, CLUDA_ERR_ARG,
                "image_create: channels must be 1 or 3, got %d", channels);
  img->pixels = calloc((size_t)width * (size_t)height * (size_t)channels, 1);
  CLUDA_REQUIRE(img->pixels != NULL, CLUDA_ERR_ALLOC, "image_create: cannot allocate %dx%dx%d",
                width, height, channels);
  img->width = width;
  img->height = height;
  img->channels = channels;
  return cluda_ok();
}

void cluda_image_free(cluda_image *img) {
  if (!img) return;
  free(img->pixels);
  memset(img, 0, sizeof *img);
}

/* ---- libpng plumbing ---- */

typedef struct png_job {
  FILE *file;
  png_structp png;
  png_infop info;
  png_bytep *rows;
  uint8_t *samples; /* undecoded rows of the first-channel reader */
  cluda_image image;
  char libpng_message[128]; /* what libpng reported before jumping */
  char problem[160];        /* our own diagnosis when we refuse a valid file */
} png_job;

static void on_png_error(png_structp png, png_const_charp message) {
  png_job *job = png_get_error_ptr(png);
  snprintf(job->libpng_message, sizeof job->libpng_message, "%s", message);
  png_longjmp(png, 1);
}

/* Warnings (e.g. an odd sRGB profile) do not affect the pixels; keep stderr clean. */
static void on_png_warning(png_structp png, png_const_charp message) {
  (void)png;
  (void)message;
}

enum read_mode { READ_RGB, READ_LABELS, READ_FIRST_CHANNEL, READ_HEADER };

/* decode_png's outcomes. */
enum { DECODED = 0, LIBPNG_FAILED = 1, REFUSED = 2, BAD_VALUE = 3 };

static const char *color_type_name(int color_type) {
  switch (color_type) {
  case PNG_COLOR_TYPE_GRAY: return "gray";
  case PNG_COLOR_TYPE_GRAY_ALPHA: return "gray+alpha";
  case PNG_COLOR_TYPE_PALETTE: return "palette";
  case PNG_COLOR_TYPE_RGB: return "RGB";
  case PNG_COLOR_TYPE_RGB_ALPHA: return "RGBA";
  default: return "unknown";
  }
}

/* Reads the rows of an 8/16-bit gray or RGB file and keeps the first sample of each pixel
 * (gray or R) without scaling. Returns DECODED, REFUSED (problem) or BAD_VALUE (problem) for
 * a value above 255. */
static int decode_first_channel(png_job *job, int bit_depth, int color_type) {
  png_uint_32 width = png_get_image_width(job->png, job->info);
  png_uint_32 height = png_get_image_height(job->png, job->info);
  if (color_type != PNG_COLOR_TYPE_GRAY && color_type != PNG_COLOR_TYPE_RGB) {
    snprintf(job->problem, sizeof job->problem,
             "a label map with the class in its first channel must be a gray or RGB PNG, this "
             "one is %d-bit %s",
             bit_depth, color_type_name(color_type));
    return REFUSED;
  }
  if (bit_depth < 8) png_set_packing(job->png); /* one byte per value, not rescaled */
  png_set_interlace_handling(job->png);
  png_read_update_info(job->png, job->info);
  size_t row_bytes = png_get_rowbytes(job->png, job->info);
  size_t sample_bytes = bit_depth == 16 ? 2 : 1;
  size_t pixel_bytes = sample_bytes * (color_type == PNG_COLOR_TYPE_RGB ? 3 : 1);
  job->samples = malloc(row_bytes * height);
  job->rows = malloc(sizeof(png_bytep) * height);
  job->image.pixels = malloc((size_t)width * height);
  if (!job->samples || !job->rows || !job->image.pixels) {
    snprintf(job->problem, sizeof job->problem, "cannot allocate %ux%u pixels", (unsigned)width,
             (unsigned)height);
    return REFUSED;
  }
  for (png_uint_32 y = 0; y < height; y++)
    job->rows[y] = job->samples + y * row_bytes;
  png_read_image(job->png, job->rows);
  png_read_end(job->png, NULL);
  job->image.width = (int)width;
  job->image.height = (int)height;
  job->image.channels = 1;
  for (png_uint_32 y = 0; y < height; y++)
    for (png_uint_32 x = 0; x < width; x++) {
      const uint8_t *sample = job->rows[y] + x * pixel_bytes;
      unsigned value = sample_bytes == 2 ? (unsigned)sample[0] << 8 | sample[1] : sample[0];
      if (value > 255) {
        snprintf(job->problem, sizeof job->problem,
                 "value %u at pixel (x %u, y %u) is above 255, not a label id", value, (unsigned)x,
                 (unsigned)y);
        return BAD_VALUE;
      }
      job->image.pixels[(size_t)y * width + x] = (uint8_t)value;
    }
  return DECODED;
}

/* Returns DECODED, LIBPNG_FAILED (libpng_message), REFUSED when we refuse the file
 * (problem) or BAD_VALUE (problem). Decoded pixels end up in job->image; READ_HEADER only
 * fills its width and height. */
static int decode_png(png_job *job, enum read_mode mode) {
  job->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, job, on_png_error, on_png_warning);
  if (!job->png) {
    snprintf(job->libpng_message, sizeof job->libpng_message, "out of memory");
    return LIBPNG_FAILED;
  }
  job->info = png_create_info_struct(job->png);
  if (!job->info) {
    snprintf(job->libpng_message, sizeof job->libpng_message, "out of memory");
    return LIBPNG_FAILED;
  }
  if (setjmp(png_jmpbuf(job->png))) return LIBPNG_FAILED;
  png_init_io(job->png, job->file);
  png_set_sig_bytes(job->png, 8);
  png_read_info(job->png, job->info);

  png_uint_32 width = 0, height = 0;
  int bit_depth = 0, color_type = 0;
  png_get_IHDR(job->png, job->info, &width, &height, &bit_depth, &color_type, NULL, NULL, NULL);
  if (width > CLUDA_IMAGE_MAX_SIDE || height > CLUDA_IMAGE_MAX_SIDE) {
    snprintf(job->problem, sizeof job->problem,
             "image is %ux%u pixels; the largest supported side is %d", (unsigned)width,
             (unsigned)height, CLUDA_IMAGE_MAX_SIDE);
    return REFUSED;
  }
  if (mode == READ_HEADER) {
    job->image.width = (int)width;
    job->image.height = (int)height;
    return DECODED;
  }
  if (mode == READ_FIRST_CHANNEL) return decode_first_channel(job, bit_depth, color_type);
  int channels = 3;
  if (mode == READ_RGB) {
    if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(job->png);
    if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8)
      png_set_expand_gray_1_2_4_to_8(job->png);
    if (bit_depth == 16) png_set_scale_16(job->png);
    /* Palette expansion turns a tRNS chunk into an alpha channel: strip that too. */
    if ((color_type & PNG_COLOR_MASK_ALPHA) || png_get_valid(job->png, job->info, PNG_INFO_tRNS))
      png_set_strip_alpha(job->png);
    if (color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_GRAY_ALPHA)
      png_set_gray_to_rgb(job->png);
  } else {
    if ((color_type != PNG_COLOR_TYPE_GRAY && color_type != PNG_COLOR_TYPE_PALETTE) ||
        bit_depth > 8) {
      snprintf(job->problem, sizeof job->problem,
               "a label map must be an 8-bit gray or palette PNG, this one is %d-bit %s", bit_depth,
               color_type_name(color_type));
      return REFUSED;
    }
    channels = 1;
    if (bit_depth < 8) png_set_packing(job->png); /* one byte per value, not rescaled */
  }
  png_set_interlace_handling(job->png);
  png_read_update_info(job->png, job->info);
  size_t row_bytes = png_get_rowbytes(job->png, job->info);
  if (row_bytes != (size_t)width * (size_t)channels) {
    snprintf(job->problem, sizeof job->problem,
             "unexpected row size %zu after conversion of a %d-bit %s image", row_bytes, bit_depth,
             color_type_name(color_type));
    return REFUSED;
  }
  job->image.pixels = malloc(row_bytes * height);
  job->rows = malloc(sizeof(png_bytep) * height);
  if (!job->image.pixels || !job->rows) {
    snprintf(job->problem, sizeof job->problem, "cannot allocate %ux%u pixels", (unsigned)width,
             (unsigned)height);
    return REFUSED;
  }
  job->image.width = (int)width;
  job->image.height = (int)height;
  job->image.channels = channels;
  for (png_uint_32 y = 0; y < height; y++)
    job->rows[y] = job->image.pixels + y * row_bytes;
  png_read_image(job->png, job->rows);
  png_read_end(job->png, NULL);
  return DECODED;
}

static const char *read_function_name(enum read_mode mode) {
  switch (mode) {
  case READ_RGB: return "png_read_rgb";
  case READ_LABELS: return "png_read_labels";
  case READ_FIRST_CHANNEL: return "png_read_first_channel";
  case READ_HEADER: return "png_read_size";
  }
  return "png_read";
}

static cluda_status read_png(const char *path, enum read_mode mode, cluda_image *img) {
  const char *fn = read_function_name(mode);
  CLUDA_REQUIRE(path != NULL && img != NULL, CLUDA_ERR_ARG, "%s: NULL argument", fn);
  memset(img, 0, sizeof *img);
  png_job *job = calloc(1, sizeof *job);
  CLUDA_REQUIRE(job != NULL, CLUDA_ERR_ALLOC, "%s: out of memory", fn);
  cluda_status s = cluda_ok();
  job->file = fopen(path, "rb");
  if (!job->file) {
    s = CLUDA_FAIL(CLUDA_ERR_IO, "%s: cannot open %s: %s", fn, path, strerror(errno));
  } else {
    unsigned char signature[8];
    size_t got = fread(signature, 1, sizeof signature, job->file);
    if (got < sizeof signature || png_sig_cmp(signature, 0, sizeof signature) != 0) {
      s = CLUDA_FAIL(CLUDA_ERR_IO, "%s: %s is not a PNG file (%s)", fn, path,
                     got < sizeof signature ? "shorter than the 8-byte PNG signature"
                                            : "no PNG signature");
    } else {
      int rc = decode_png(job, mode);
      if (rc == LIBPNG_FAILED)
        s = CLUDA_FAIL(CLUDA_ERR_IO, "%s: %s is truncated or corrupt (libpng: %s)", fn, path,
                       job->libpng_message);
      else if (rc == REFUSED)
        s = CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "%s: unsupported PNG %s: %s", fn, path, job->problem);
      else if (rc == BAD_VALUE)
        s = CLUDA_FAIL(CLUDA_ERR_IO, "%s: %s: %s", fn, path, job->problem);
    }
  }
  if (job->png) png_destroy_read_struct(&job->png, job->info ? &job->info : NULL, NULL);
  if (job->file) fclose(job->file);
  free(job->rows);
  free(job->samples);
  if (s.code == CLUDA_OK)
    *img = job->image;
  else
    free(job->image.pixels);
  free(job);
  return s;
}

cluda_status cluda_png_read_rgb(const char *path, cluda_image *img) {
  return read_png(path, READ_RGB, img);
}

cluda_status cluda_png_read_labels(const char *path, cluda_image *img) {
  return read_png(path, READ_LABELS, img);
}

cluda_status cluda_png_read_first_channel(const char *path, cluda_image *img) {
  return read_png(path, READ_FIRST_CHANNEL, img);
}

cluda_status cluda_png_read_size(const char *path, int *width, int *height) {
  CLUDA_REQUIRE(width != NULL && height != NULL, CLUDA_ERR_ARG, "png_read_size: NULL argument");
  cluda_image header;
  CLUDA_TRY(read_png(path, READ_HEADER, &header));
  *width = header.width;
  *height = header.height;
  return cluda_ok();
}

/* What one PNG file holds, for the writers: rows of packed big-endian samples. */
typedef struct png_spec {
  int width, height, bit_depth, color_type;
  const uint8_t *rows;
  size_t row_bytes;
  const uint8_t (*palette)[3];
  int palette_size;
} png_spec;

static int encode_png(png_job *job, const png_spec *spec) {
  job->png = png_create_write_struct(PNG_LIBPNG_VER_STRING, job, on_png_error, on_png_warning);
  if (!job->png) {
    snprintf(job->libpng_message, sizeof job->libpng_message, "out of memory");
    return LIBPNG_FAILED;
  }
  job->info = png_create_info_struct(job->png);
  if (!job->info) {
    snprintf(job->libpng_message, sizeof job->libpng_message, "out of memory");
    return LIBPNG_FAILED;
  }
  if (setjmp(png_jmpbuf(job->png))) return LIBPNG_FAILED;
  png_init_io(job->png, job->file);
  png_set_IHDR(job->png, job->info, (png_uint_32)spec->width, (png_uint_32)spec->height,
               spec->bit_depth, spec->color_type, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (spec->palette) {
    png_color colors[256];
    for (int i = 0; i < spec->palette_size; i++) {
      colors[i].red = spec->palette[i][0];
      colors[i].green = spec->palette[i][1];
      colors[i].blue = spec->palette[i][2];
    }
    png_set_PLTE(job->png, job->info, colors, spec->palette_size);
  }
  png_write_info(job->png, job->info);
  for (int y = 0; y < spec->height; y++)
    png_write_row(job->png, spec->rows + (size_t)y * spec->row_bytes);
  png_write_end(job->png, NULL);
  return DECODED;
}

/* Encodes spec into a temporary file and renames it onto path. */
static cluda_status write_png(const char *fn, const char *path, const png_spec *spec) {
  char tmp[4096];
  CLUDA_TRY(cluda_temp_path(path, tmp, sizeof tmp));
  png_job *job = calloc(1, sizeof *job);
  CLUDA_REQUIRE(job != NULL, CLUDA_ERR_ALLOC, "%s: out of memory", fn);
  cluda_status s = cluda_ok();
  job->file = fopen(tmp, "wb");
  if (!job->file) {
    s = CLUDA_FAIL(CLUDA_ERR_IO, "%s: cannot create %s: %s", fn, path, strerror(errno));
  } else {
    if (encode_png(job, spec) != DECODED)
      s = CLUDA_FAIL(CLUDA_ERR_IO, "%s: %s: libpng: %s", fn, path, job->libpng_message);
    png_destroy_write_struct(&job->png, job->info ? &job->info : NULL);
    int close_failed = fclose(job->file) != 0;
    if (s.code == CLUDA_OK && close_failed)
      s = CLUDA_FAIL(CLUDA_ERR_IO, "%s: writing %s: %s", fn, path, strerror(errno));
    if (s.code == CLUDA_OK)
      s = cluda_publish_file(tmp, path); /* removes tmp on failure */
    else
      remove(tmp);
  }
  free(job);
  return s;
}

cluda_status cluda_png_write(const char *path, const cluda_image *img) {
  CLUDA_REQUIRE(path != NULL && img != NULL && img->pixels != NULL, CLUDA_ERR_ARG,
                "png_write: NULL argument");
  CLUDA_REQUIRE(img->channels == 1 || img->channels == 3, CLUDA_ERR_ARG,
                "png_write: %s: channels must be 1 or 3, got %d", path, img->channels);
  CLUDA_REQUIRE(img->width >= 1 && img->height >= 1, CLUDA_ERR_ARG,
                "png_write: %s: empty image %dx%d", path, img->width, img->height);
  png_spec spec = {.width = img->width,
                   .height = img->height,
                   .bit_depth = 8,
                   .color_type = img->channels == 3 ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_GRAY,
                   .rows = img->pixels,
                   .row_bytes = (size_t)img->width * (size_t)img->channels};
  return write_png("png_write", path, &spec);
}

cluda_status cluda_png_write_palette(const char *path, const cluda_image *indices,
                                     const uint8_t (*colors)[3], int num_colors) {
  CLUDA_REQUIRE(path != NULL && indices != NULL && indices->pixels != NULL && colors != NULL,
                CLUDA_ERR_ARG, "png_write_palette: NULL argument");
  CLUDA_REQUIRE(indices->channels == 1 && indices->width >= 1 && indices->height >= 1,
                CLUDA_ERR_ARG, "png_write_palette: %s: needs a non-empty 1-channel image", path);
  CLUDA_REQUIRE(num_colors >= 1 && num_colors <= 256, CLUDA_ERR_ARG,
                "png_write_palette: %s: %d colours, expected 1..256", path, num_colors);
  size_t n = (size_t)indices->width * (size_t)indices->height;
  for (size_t i = 0; i < n; i++)
    CLUDA_REQUIRE(indices->pixels[i] < num_colors, CLUDA_ERR_ARG,
                  "png_write_palette: %s: index %d at pixel %zu has no colour (%d colours)", path,
                  indices->pixels[i], i, num_colors);
  png_spec spec = {.width = indices->width,
                   .height = indices->height,
                   .bit_depth = 8,
                   .color_type = PNG_COLOR_TYPE_PALETTE,
                   .rows = indices->pixels,
                   .row_bytes = (size_t)indices->width,
                   .palette = colors,
                   .palette_size = num_colors};
  return write_png("png_write_palette", path, &spec);
}

cluda_status cluda_png_write_rgb16(const char *path, int width, int height,
                                   const uint16_t *samples) {
  CLUDA_REQUIRE(path != NULL && samples != NULL, CLUDA_ERR_ARG, "png_write_rgb16: NULL argument");
  CLUDA_REQUIRE(width >= 1 && height >= 1 && width <= CLUDA_IMAGE_MAX_SIDE &&
                    height <= CLUDA_IMAGE_MAX_SIDE,
                CLUDA_ERR_ARG, "png_write_rgb16: %s: size %dx%d outside 1..%d", path, width, height,
                CLUDA_IMAGE_MAX_SIDE);
  size_t n = (size_t)width * (size_t)height * 3;
  uint8_t *big_endian = malloc(2 * n); /* PNG stores 16-bit samples most significant byte first */
  CLUDA_REQUIRE(big_endian != NULL, CLUDA_ERR_ALLOC, "png_write_rgb16: %s: out of memory", path);
  for (size_t i = 0; i < n; i++) {
    big_endian[2 * i] = (uint8_t)(samples[i] >> 8);
    big_endian[2 * i + 1] = (uint8_t)(samples[i] & 0xff);
  }
  png_spec spec = {.width = width,
                   .height = height,
                   .bit_depth = 16,
                   .color_type = PNG_COLOR_TYPE_RGB,
                   .rows = big_endian,
                   .row_bytes = (size_t)width * 6};
  cluda_status s = write_png("png_write_rgb16", path, &spec);
  free(big_endian);
  return s;
}

/* ---- palette and normalisation ---- */

void cluda_label_color(int label, uint8_t rgb[3]) {
  if (label >= 0 && label < CLUDA_CITYSCAPES_CLASSES) {
    memcpy(rgb, cluda_cityscapes_palette[label], 3);
  } else {
    rgb[0] = rgb[1] = rgb[2] = 0;
  }
}

cluda_status cluda_colorize_labels(const cluda_image *labels, cluda_image *rgb) {
  CLUDA_REQUIRE(labels != NULL && rgb != NULL && labels->pixels != NULL, CLUDA_ERR_ARG,
                "colorize_labels: NULL argument");
  CLUDA_REQUIRE(labels->channels == 1, CLUDA_ERR_ARG,
                "colorize_labels: labels must have 1 channel, got %d", labels->channels);
  CLUDA_TRY(cluda_image_create(rgb, labels->width, labels->height, 3));
  size_t n = (size_t)labels->width * (size_t)labels->height;
  for (size_t i = 0; i < n; i++)
    cluda_label_color(labels->pixels[i], rgb->pixels + 3 * i);
  return cluda_ok();
}

cluda_status cluda_image_normalize(const cluda_image *rgb, float *out) {
  CLUDA_REQUIRE(rgb != NULL && out != NULL && rgb->pixels != NULL, CLUDA_ERR_ARG,
                "image_normalize: NULL argument");
  CLUDA_REQUIRE(rgb->channels == 3, CLUDA_ERR_ARG,
                "image_normalize: image must be RGB (3 channels), got %d", rgb->channels);
  size_t n = (size_t)rgb->width * (size_t)rgb->height;
  for (size_t i = 0; i < n; i++)
    for (int c = 0; c < 3; c++)
      out[3 * i + c] = ((float)rgb->pixels[3 * i + c] - cluda_image_mean[c]) / cluda_image_std[c];
  return cluda_ok();
}

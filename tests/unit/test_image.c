/* PNG input/output, the Cityscapes palette and input normalisation. The PNG variants
 * (gray, gray+alpha, RGBA, palette with and without transparency, 1/4/16-bit, interlaced)
 * are written here with libpng directly, so the reader is tested against files it did not
 * write itself. */
#include <math.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluda/image.h"
#include "raw_png.h"
#include "testing.h"

/* A palette-free PNG description. */
#define PLAIN(w_, h_, depth_, type_, interlace_, pixels_)                                          \
  &(raw_png) {                                                                                     \
    .width = (w_), .height = (h_), .bit_depth = (depth_), .color_type = (type_),                   \
    .interlace = (interlace_), .data = (pixels_)                                                   \
  }

static char tmpdir[256];

static const char *tmp_path(char *buf, size_t size, const char *name) {
  snprintf(buf, size, "%s/%s", tmpdir, name);
  return buf;
}

static void write_bytes(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (f) {
    fwrite(data, 1, n, f);
    fclose(f);
  }
}

static size_t read_bytes(const char *path, uint8_t *buf, size_t cap) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  size_t n = fread(buf, 1, cap, f);
  fclose(f);
  return n;
}

static int pixel_is(const cluda_image *img, int x, int y, int r, int g, int b) {
  const uint8_t *p = img->pixels + ((size_t)y * img->width + x) * 3;
  return p[0] == r && p[1] == g && p[2] == b;
}

static void test_round_trip(void) {
  char path[512];
  cluda_image rgb, back;
  TEST_OK(cluda_image_create(&rgb, 7, 5, 3));
  for (int i = 0; i < 7 * 5 * 3; i++)
    rgb.pixels[i] = (uint8_t)(i * 37 + 11);
  TEST_OK(cluda_png_write(tmp_path(path, sizeof path, "rgb.png"), &rgb));
  if (TEST_OK(cluda_png_read_rgb(path, &back))) {
    TEST_CHECK(back.width == 7 && back.height == 5 && back.channels == 3, "rgb size %dx%dx%d",
               back.width, back.height, back.channels);
    TEST_CHECK(memcmp(back.pixels, rgb.pixels, 7 * 5 * 3) == 0, "rgb pixels survive a round trip");
    cluda_image_free(&back);
  }
  /* No temporary file is left behind by the atomic write. */
  char tmp[600];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  TEST_CHECK(access(tmp, F_OK) != 0, "temporary file removed after publishing");

  cluda_image gray;
  TEST_OK(cluda_image_create(&gray, 4, 3, 1));
  for (int i = 0; i < 12; i++)
    gray.pixels[i] = (uint8_t)(i == 11 ? 255 : i);
  TEST_OK(cluda_png_write(tmp_path(path, sizeof path, "gray.png"), &gray));
  if (TEST_OK(cluda_png_read_labels(path, &back))) {
    TEST_CHECK(back.channels == 1 && memcmp(back.pixels, gray.pixels, 12) == 0,
               "label map (incl. 255) survives a round trip");
    cluda_image_free(&back);
  }
  if (TEST_OK(cluda_png_read_rgb(path, &back))) {
    TEST_CHECK(back.channels == 3 && pixel_is(&back, 1, 0, 1, 1, 1) &&
                   pixel_is(&back, 3, 2, 255, 255, 255),
               "gray read as RGB is replicated into R, G and B");
    cluda_image_free(&back);
  }
  /* Overwriting an existing file replaces it. */
  rgb.pixels[0] = 1;
  TEST_OK(cluda_png_write(tmp_path(path, sizeof path, "rgb.png"), &rgb));
  if (TEST_OK(cluda_png_read_rgb(path, &back))) {
    TEST_CHECK(back.pixels[0] == 1, "overwrite publishes the new contents");
    cluda_image_free(&back);
  }
  cluda_image_free(&rgb);
  cluda_image_free(&gray);
}

static void test_palette(void) {
  TEST_CHECK(memcmp(cluda_cityscapes_palette[0], (uint8_t[]){128, 64, 128}, 3) == 0, "road");
  TEST_CHECK(memcmp(cluda_cityscapes_palette[2], (uint8_t[]){70, 70, 70}, 3) == 0, "building");
  TEST_CHECK(memcmp(cluda_cityscapes_palette[8], (uint8_t[]){107, 142, 35}, 3) == 0, "vegetation");
  TEST_CHECK(memcmp(cluda_cityscapes_palette[10], (uint8_t[]){70, 130, 180}, 3) == 0, "sky");
  TEST_CHECK(memcmp(cluda_cityscapes_palette[11], (uint8_t[]){220, 20, 60}, 3) == 0, "person");
  TEST_CHECK(memcmp(cluda_cityscapes_palette[13], (uint8_t[]){0, 0, 142}, 3) == 0, "car");
  TEST_CHECK(memcmp(cluda_cityscapes_palette[18], (uint8_t[]){119, 11, 32}, 3) == 0, "bicycle");
  TEST_CHECK(strcmp(cluda_cityscapes_class_names[6], "traffic light") == 0 &&
                 strcmp(cluda_cityscapes_class_names[18], "bicycle") == 0,
             "class names in train id order");
  /* All 19 colours are distinct, so a colour map can be read back unambiguously. */
  int distinct = 1;
  for (int a = 0; a < CLUDA_CITYSCAPES_CLASSES; a++)
    for (int b = a + 1; b < CLUDA_CITYSCAPES_CLASSES; b++)
      if (memcmp(cluda_cityscapes_palette[a], cluda_cityscapes_palette[b], 3) == 0) distinct = 0;
  TEST_CHECK(distinct, "palette colours are distinct");

  cluda_image labels, color;
  TEST_OK(cluda_image_create(&labels, 21, 1, 1));
  for (int i = 0; i < 19; i++)
    labels.pixels[i] = (uint8_t)i;
  labels.pixels[19] = 255;
  labels.pixels[20] = 19;
  if (TEST_OK(cluda_colorize_labels(&labels, &color))) {
    int ok = color.width == 21 && color.height == 1 && color.channels == 3;
    for (int i = 0; ok && i < 19; i++)
      ok = memcmp(color.pixels + 3 * i, cluda_cityscapes_palette[i], 3) == 0;
    TEST_CHECK(ok, "colorize maps train ids to the palette");
    TEST_CHECK(pixel_is(&color, 19, 0, 0, 0, 0) && pixel_is(&color, 20, 0, 0, 0, 0),
               "ignore (255) and out-of-range ids are black");
    cluda_image_free(&color);
  }
  cluda_image rgb;
  TEST_OK(cluda_image_create(&rgb, 2, 2, 3));
  TEST_FAILS(cluda_colorize_labels(&rgb, &color), CLUDA_ERR_ARG, "1 channel");
  cluda_image_free(&rgb);
  cluda_image_free(&labels);
}

static void test_formats(void) {
  char path[512];
  cluda_image img;

  /* gray + alpha: alpha dropped, gray replicated */
  const uint8_t ga[] = {10, 0, 200, 255, 30, 128, 40, 7};
  write_raw_png(tmp_path(path, sizeof path, "ga.png"),
                PLAIN(2, 2, 8, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_INTERLACE_NONE, ga));
  if (TEST_OK(cluda_png_read_rgb(path, &img))) {
    TEST_CHECK(img.channels == 3 && pixel_is(&img, 0, 0, 10, 10, 10) &&
                   pixel_is(&img, 1, 0, 200, 200, 200) && pixel_is(&img, 1, 1, 40, 40, 40),
               "gray+alpha -> RGB, alpha dropped");
    cluda_image_free(&img);
  }
  TEST_FAILS(cluda_png_read_labels(path, &img), CLUDA_ERR_UNSUPPORTED, "gray+alpha");

  /* RGBA: colour kept even where fully transparent */
  const uint8_t rgba[] = {1, 2, 3, 0, 250, 251, 252, 255};
  write_raw_png(tmp_path(path, sizeof path, "rgba.png"),
                PLAIN(2, 1, 8, PNG_COLOR_TYPE_RGB_ALPHA, PNG_INTERLACE_NONE, rgba));
  if (TEST_OK(cluda_png_read_rgb(path, &img))) {
    TEST_CHECK(img.width == 2 && img.height == 1 && pixel_is(&img, 0, 0, 1, 2, 3) &&
                   pixel_is(&img, 1, 0, 250, 251, 252),
               "RGBA -> RGB, alpha dropped, not composited");
    cluda_image_free(&img);
  }
  TEST_FAILS(cluda_png_read_labels(path, &img), CLUDA_ERR_UNSUPPORTED, "RGBA");

  /* 8-bit palette with transparency: RGB through the palette; labels are the indices */
  const png_color pal[4] = {{0, 0, 0}, {128, 64, 128}, {70, 130, 180}, {9, 8, 7}};
  const uint8_t trans[4] = {255, 0, 128, 255};
  const uint8_t idx[] = {0, 1, 2, 3, 3, 2};
  write_raw_png(tmp_path(path, sizeof path, "pal8.png"),
                &(raw_png){.width = 3,
                           .height = 2,
                           .bit_depth = 8,
                           .color_type = PNG_COLOR_TYPE_PALETTE,
                           .data = idx,
                           .palette = pal,
                           .palette_size = 4,
                           .trans = trans,
                           .trans_size = 4});
  if (TEST_OK(cluda_png_read_rgb(path, &img))) {
    TEST_CHECK(img.channels == 3 && pixel_is(&img, 1, 0, 128, 64, 128) &&
                   pixel_is(&img, 2, 0, 70, 130, 180) && pixel_is(&img, 0, 1, 9, 8, 7),
               "palette -> RGB through the palette, tRNS ignored");
    cluda_image_free(&img);
  }
  if (TEST_OK(cluda_png_read_labels(path, &img))) {
    TEST_CHECK(img.channels == 1 && memcmp(img.pixels, idx, 6) == 0,
               "palette label map -> the indices");
    cluda_image_free(&img);
  }

  /* 4-bit palette and 4-bit gray (two values per byte) */
  const uint8_t packed[] = {0x12, 0x30, 0x21, 0x00}; /* rows of 3 values: 1 2 3 / 2 1 0 */
  write_raw_png(tmp_path(path, sizeof path, "pal4.png"),
                &(raw_png){.width = 3,
                           .height = 2,
                           .bit_depth = 4,
                           .color_type = PNG_COLOR_TYPE_PALETTE,
                           .data = packed,
                           .palette = pal,
                           .palette_size = 4});
  if (TEST_OK(cluda_png_read_labels(path, &img))) {
    TEST_CHECK(memcmp(img.pixels, (uint8_t[]){1, 2, 3, 2, 1, 0}, 6) == 0,
               "4-bit palette labels unpacked");
    cluda_image_free(&img);
  }
  if (TEST_OK(cluda_png_read_rgb(path, &img))) {
    TEST_CHECK(pixel_is(&img, 2, 0, 9, 8, 7) && pixel_is(&img, 0, 1, 70, 130, 180),
               "4-bit palette -> RGB");
    cluda_image_free(&img);
  }
  write_raw_png(tmp_path(path, sizeof path, "gray4.png"),
                PLAIN(3, 2, 4, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, packed));
  if (TEST_OK(cluda_png_read_labels(path, &img))) {
    TEST_CHECK(memcmp(img.pixels, (uint8_t[]){1, 2, 3, 2, 1, 0}, 6) == 0,
               "4-bit gray labels keep their raw values");
    cluda_image_free(&img);
  }
  if (TEST_OK(cluda_png_read_rgb(path, &img))) {
    TEST_CHECK(pixel_is(&img, 2, 0, 51, 51, 51), "4-bit gray -> RGB scaled to 8 bits (3*17)");
    cluda_image_free(&img);
  }
  const uint8_t bits[] = {0xA0}; /* 1-bit gray: 1 0 1 */
  write_raw_png(tmp_path(path, sizeof path, "gray1.png"),
                PLAIN(3, 1, 1, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, bits));
  if (TEST_OK(cluda_png_read_rgb(path, &img))) {
    TEST_CHECK(pixel_is(&img, 0, 0, 255, 255, 255) && pixel_is(&img, 1, 0, 0, 0, 0),
               "1-bit gray -> black/white");
    cluda_image_free(&img);
  }

  /* 16-bit RGB: scaled to 8 bits (257 k -> k); rejected as a label map */
  const uint8_t rgb16[] = {0x00, 0x00, 0x80, 0x80, 0xFF, 0xFF, /* 0, 128, 255 */
                           0x0A, 0x0A, 0x14, 0x14, 0x1E, 0x1E};
  write_raw_png(tmp_path(path, sizeof path, "rgb16.png"),
                PLAIN(2, 1, 16, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, rgb16));
  if (TEST_OK(cluda_png_read_rgb(path, &img))) {
    TEST_CHECK(pixel_is(&img, 0, 0, 0, 128, 255) && pixel_is(&img, 1, 0, 10, 20, 30),
               "16-bit RGB scaled to 8 bits");
    cluda_image_free(&img);
  }
  TEST_FAILS(cluda_png_read_labels(path, &img), CLUDA_ERR_UNSUPPORTED, "16-bit RGB");
  const uint8_t gray16[] = {0x12, 0x34, 0xFF, 0xFF};
  write_raw_png(tmp_path(path, sizeof path, "gray16.png"),
                PLAIN(2, 1, 16, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, gray16));
  TEST_FAILS(cluda_png_read_labels(path, &img), CLUDA_ERR_UNSUPPORTED, "16-bit gray");
  TEST_FAILS(cluda_png_read_labels(path, &img), CLUDA_ERR_UNSUPPORTED, "gray16.png");
  if (TEST_OK(cluda_png_read_rgb(path, &img))) {
    /* 0x1234 = 4660; 4660 * 255 / 65535 = 18.13 -> 18 */
    TEST_CHECK(pixel_is(&img, 0, 0, 18, 18, 18) && pixel_is(&img, 1, 0, 255, 255, 255),
               "16-bit gray scaled with rounding");
    cluda_image_free(&img);
  }

  /* RGB as a label map is refused (its colours are not class ids) */
  TEST_FAILS(cluda_png_read_labels(tmp_path(path, sizeof path, "rgb.png"), &img),
             CLUDA_ERR_UNSUPPORTED, "8-bit gray or palette");

  /* Interlaced (Adam7) RGB */
  uint8_t inter[9 * 10 * 3];
  for (int i = 0; i < (int)sizeof inter; i++)
    inter[i] = (uint8_t)(i * 7);
  write_raw_png(tmp_path(path, sizeof path, "adam7.png"),
                PLAIN(9, 10, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_ADAM7, inter));
  if (TEST_OK(cluda_png_read_rgb(path, &img))) {
    TEST_CHECK(img.width == 9 && img.height == 10 && memcmp(img.pixels, inter, sizeof inter) == 0,
               "interlaced PNG de-interlaced");
    cluda_image_free(&img);
  }

  /* Larger than the supported side: refused before allocating */
  uint8_t *wide = calloc(20000, 1);
  write_raw_png(tmp_path(path, sizeof path, "wide.png"),
                PLAIN(20000, 1, 8, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, wide));
  free(wide);
  TEST_FAILS(cluda_png_read_rgb(path, &img), CLUDA_ERR_UNSUPPORTED, "largest supported side");
}

static void test_bad_files(void) {
  char path[512], good[512];
  cluda_image img, rgb;
  memset(&img, 0x5a, sizeof img);

  TEST_FAILS(cluda_png_read_rgb(tmp_path(path, sizeof path, "missing.png"), &img), CLUDA_ERR_IO,
             "No such file");
  TEST_FAILS(cluda_png_read_rgb(path, &img), CLUDA_ERR_IO, "missing.png");
  TEST_CHECK(img.pixels == NULL, "a failed read leaves an empty image");

  write_bytes(tmp_path(path, sizeof path, "text.png"), "hello, not an image\n", 20);
  TEST_FAILS(cluda_png_read_rgb(path, &img), CLUDA_ERR_IO, "not a PNG file");
  TEST_FAILS(cluda_png_read_labels(path, &img), CLUDA_ERR_IO, "text.png");
  write_bytes(tmp_path(path, sizeof path, "empty.png"), "", 0);
  TEST_FAILS(cluda_png_read_rgb(path, &img), CLUDA_ERR_IO, "shorter than the 8-byte");
  write_bytes(tmp_path(path, sizeof path, "jpeg.png"), "\xff\xd8\xff\xe0\0\x10JFIF", 10);
  TEST_FAILS(cluda_png_read_rgb(path, &img), CLUDA_ERR_IO, "no PNG signature");

  /* A real PNG cut at several points: every cut is an error, never a crash. */
  TEST_OK(cluda_image_create(&rgb, 40, 30, 3));
  for (size_t i = 0; i < 40 * 30 * 3; i++)
    rgb.pixels[i] = (uint8_t)((i * 2654435761u) >> 13);
  TEST_OK(cluda_png_write(tmp_path(good, sizeof good, "full.png"), &rgb));
  cluda_image_free(&rgb);
  static uint8_t bytes[16384];
  size_t n = read_bytes(good, bytes, sizeof bytes);
  TEST_CHECK(n > 100 && n < sizeof bytes, "full.png has %zu bytes", n);
  int all_fail = 1;
  for (size_t cut = 9; cut < n; cut += (cut < 64 ? 7 : n / 9)) {
    write_bytes(tmp_path(path, sizeof path, "cut.png"), bytes, cut);
    cluda_status s = cluda_png_read_rgb(path, &img);
    if (s.code != CLUDA_ERR_IO || !strstr(s.message, "truncated or corrupt") ||
        !strstr(s.message, "cut.png")) {
      all_fail = 0;
      printf("  cut at %zu: %s\n", cut, s.code == CLUDA_OK ? "accepted" : s.message);
    }
    if (s.code == CLUDA_OK) cluda_image_free(&img);
  }
  TEST_CHECK(all_fail, "every truncation is reported as truncated or corrupt");
  write_bytes(tmp_path(path, sizeof path, "cut.png"), bytes, n - 6);
  TEST_FAILS(cluda_png_read_rgb(path, &img), CLUDA_ERR_IO, "truncated or corrupt");

  /* A flipped byte inside the image data breaks its CRC. */
  bytes[n / 2] ^= 0x55;
  write_bytes(tmp_path(path, sizeof path, "flipped.png"), bytes, n);
  TEST_FAILS(cluda_png_read_rgb(path, &img), CLUDA_ERR_IO, "flipped.png");

  /* Writing into a missing directory names the destination; bad channel counts refused. */
  TEST_OK(cluda_image_create(&rgb, 2, 2, 3));
  TEST_FAILS(cluda_png_write(tmp_path(path, sizeof path, "no/such/dir/x.png"), &rgb), CLUDA_ERR_IO,
             "no/such/dir/x.png");
  rgb.channels = 2;
  TEST_FAILS(cluda_png_write(tmp_path(path, sizeof path, "two.png"), &rgb), CLUDA_ERR_ARG,
             "channels");
  rgb.channels = 3;
  cluda_image_free(&rgb);
  TEST_FAILS(cluda_image_create(&rgb, 0, 5, 3), CLUDA_ERR_ARG, "size");
  TEST_FAILS(cluda_image_create(&rgb, 5, 5, 4), CLUDA_ERR_ARG, "channels");
}

static void test_normalize(void) {
  cluda_image rgb;
  TEST_OK(cluda_image_create(&rgb, 2, 1, 3));
  const uint8_t px[6] = {0, 128, 255, 124, 116, 104};
  memcpy(rgb.pixels, px, 6);
  float out[6];
  TEST_OK(cluda_image_normalize(&rgb, out));
  const double mean[3] = {123.675, 116.28, 103.53}, std[3] = {58.395, 57.12, 57.375};
  double want[6];
  for (int i = 0; i < 6; i++)
    want[i] = (px[i] - mean[i % 3]) / std[i % 3];
  test_compare("normalised pixels (RGB order, mmseg mean/std)", out, want, 6, 1e-6, 1e-6);
  cluda_image gray;
  TEST_OK(cluda_image_create(&gray, 2, 1, 1));
  TEST_FAILS(cluda_image_normalize(&gray, out), CLUDA_ERR_ARG, "RGB");
  cluda_image_free(&gray);
  cluda_image_free(&rgb);
}

static void remove_tmpdir(void) {
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) printf("could not remove %s\n", tmpdir);
}

int main(void) {
  const char *base = getenv("TMPDIR");
  snprintf(tmpdir, sizeof tmpdir, "%s/cluda_test_image_XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  test_round_trip();
  test_palette();
  test_formats();
  test_bad_files();
  test_normalize();
  remove_tmpdir();
  return test_finish("test_image");
}

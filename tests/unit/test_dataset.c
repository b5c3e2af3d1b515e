/* The dataset readers and the converter (include/cluda/dataset.h) and `cluda_data convert` /
 * `cluda_data synth --layout`:
 *  - the id tables against algorithm.md 8.2 and 8.3 (typed in here from the spec);
 *  - the PNG functions the layouts need (16-bit first channel, palette and 16-bit writers);
 *  - each reader on GTA / SYNTHIA / Cityscapes files written here with libpng directly, with
 *    hand-computed train ids; labels read from raw ids equal those read after conversion;
 *  - the converter on the committed roots of tests/fixtures/convert against what the
 *    reference logic (tools/make_convert_fixture.py, numpy + PIL) wrote: JSON byte for byte,
 *    train ids pixel for pixel; idempotency, --force, 1 vs 3 threads, the JSON escapes;
 *  - synth --layout X, then convert, then open + read, against cluda_synth_render;
 *  - every bad input (missing label, truncated PNG, size mismatch, value outside the table,
 *    polygons only), in the library and through the program, and --on-error skip. */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "cluda/dataset.h"
#include "cluda/image.h"
#include "cluda/synthetic.h"
#include "raw_png.h"
#include "testing.h"

#define CONVERT_FIXTURES CLUDA_FIXTURE_DIR "/convert"

/* ---- files ---- */

static void make_dirs(const char *path) {
  char buf[1024];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      mkdir(buf, 0755);
      *p = '/';
    }
  mkdir(buf, 0755);
}

/* Creates the directory of a file path. */
static void make_parent(const char *path) {
  char dir[1024];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash) {
    *slash = '\0';
    make_dirs(dir);
  }
}

static uint8_t *read_bytes(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 1 << 20;
  uint8_t *buf = test_alloc(cap);
  *n = fread(buf, 1, cap, f);
  fclose(f);
  return buf;
}

static int same_bytes(const char *a, const char *b) {
  size_t na = 0, nb = 0;
  uint8_t *x = read_bytes(a, &na), *y = read_bytes(b, &nb);
  int same = x && y && na == nb && memcmp(x, y, na) == 0;
  free(x);
  free(y);
  return same;
}

static void copy_file(const char *from, const char *to) {
  size_t n = 0;
  uint8_t *data = read_bytes(from, &n);
  make_parent(to);
  if (!TEST_CHECK(data && cli_write_bytes(to, data, n), "copy %s -> %s", from, to)) return;
  free(data);
}

/* cp -r from/. to/ */
static void copy_tree(const char *from, const char *to) {
  DIR *d = opendir(from);
  if (!TEST_CHECK(d != NULL, "open %s", from)) return;
  make_dirs(to);
  for (struct dirent *e = readdir(d); e; e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char a[1024], b[1024];
    snprintf(a, sizeof a, "%s/%s", from, e->d_name);
    snprintf(b, sizeof b, "%s/%s", to, e->d_name);
    struct stat st;
    if (stat(a, &st) != 0) continue;
    if (S_ISDIR(st.st_mode))
      copy_tree(a, b);
    else
      copy_file(a, b);
  }
  closedir(d);
}

/* ---- PNG files written with libpng directly (not through the code under test) ---- */

/* A grey ramp (255 - i): palette indices, not colours, carry the labels. */
static const png_color *grey_palette(void) {
  static png_color palette[256];
  for (int i = 0; i < 256; i++)
    palette[i].red = palette[i].green = palette[i].blue = (png_byte)(255 - i);
  return palette;
}

/* A PNG written by libpng directly (raw_png.h); `palette` entries of the grey ramp. */
static int write_png_of(const char *path, int width, int height, int depth, int type,
                        const uint8_t *data, int palette) {
  make_parent(path);
  return write_raw_png(path, &(raw_png){.width = width,
                                        .height = height,
                                        .bit_depth = depth,
                                        .color_type = type,
                                        .data = data,
                                        .palette = palette ? grey_palette() : NULL,
                                        .palette_size = palette});
}

/* An 8-bit RGB image with a position pattern; *pixels (if not NULL) gets a copy. */
static void write_rgb(const char *path, int width, int height, uint8_t *pixels) {
  uint8_t *data = test_alloc((size_t)width * height * 3);
  for (int i = 0; i < width * height * 3; i++)
    data[i] = (uint8_t)(i * 29 + 7);
  TEST_CHECK(write_png_of(path, width, height, 8, PNG_COLOR_TYPE_RGB, data, 0) == 0, "write %s",
             path);
  if (pixels) memcpy(pixels, data, (size_t)width * height * 3);
  free(data);
}

static void write_gray(const char *path, int width, int height, const uint8_t *values) {
  TEST_CHECK(write_png_of(path, width, height, 8, PNG_COLOR_TYPE_GRAY, values, 0) == 0, "write %s",
             path);
}

static void write_palette_label(const char *path, int width, int height, const uint8_t *ids) {
  TEST_CHECK(write_png_of(path, width, height, 8, PNG_COLOR_TYPE_PALETTE, ids, 256) == 0,
             "write %s", path);
}

/* A 16-bit RGB label: R = ids[i], G = 1000 + i, B = 65535. */
static void write_rgb16_label(const char *path, int width, int height, const uint16_t *ids) {
  int n = width * height;
  uint8_t *data = test_alloc((size_t)n * 6);
  for (int i = 0; i < n; i++) {
    uint16_t v[3] = {ids[i], (uint16_t)(1000 + i), 65535};
    for (int c = 0; c < 3; c++) {
      data[6 * i + 2 * c] = (uint8_t)(v[c] >> 8);
      data[6 * i + 2 * c + 1] = (uint8_t)(v[c] & 0xff);
    }
  }
  TEST_CHECK(write_png_of(path, width, height, 16, PNG_COLOR_TYPE_RGB, data, 0) == 0, "write %s",
             path);
  free(data);
}

/* The header of a PNG as libpng reads it: bit depth and colour type. */
static int png_kind(const char *path, int *bit_depth, int *color_type) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_read_struct(&png, &info, NULL);
    fclose(f);
    return -1;
  }
  png_init_io(png, f);
  png_read_info(png, info);
  *bit_depth = png_get_bit_depth(png, info);
  *color_type = png_get_color_type(png, info);
  png_destroy_read_struct(&png, &info, NULL);
  fclose(f);
  return 0;
}

/* Fails with `code` and a message naming both needles. */
static int fails_naming(cluda_status s, cluda_code code, const char *a, const char *b,
                        const char *what) {
  if (s.code != CLUDA_OK) printf("  expected error: %s\n", s.message);
  return TEST_CHECK(s.code == code && strstr(s.message, a) && (!b || strstr(s.message, b)),
                    "%s: got %s \"%s\", expected %s naming \"%s\" and \"%s\"", what,
                    cluda_code_name(s.code), s.message, cluda_code_name(code), a, b ? b : "");
}

static int labels_equal(const cluda_image *img, int width, int height, const uint8_t *want) {
  return img->width == width && img->height == height && img->channels == 1 &&
         memcmp(img->pixels, want, (size_t)width * height) == 0;
}

/* ---- the id tables (typed in from algorithm.md 8.2 and 8.3) ---- */

static void test_id_tables(void) {
  static const int cityscapes[][2] = {{7, 0},   {8, 1},   {11, 2},  {12, 3},  {13, 4},
                                      {17, 5},  {19, 6},  {20, 7},  {21, 8},  {22, 9},
                                      {23, 10}, {24, 11}, {25, 12}, {26, 13}, {27, 14},
                                      {28, 15}, {31, 16}, {32, 17}, {33, 18}};
  static const int synthia[][2] = {{3, 0},   {4, 1},   {2, 2},   {21, 3}, {5, 4},
                                   {7, 5},   {15, 6},  {9, 7},   {6, 8},  {16, 9},
                                   {1, 10},  {10, 11}, {17, 12}, {8, 13}, {18, 14},
                                   {19, 15}, {20, 16}, {12, 17}, {11, 18}};
  for (int k = 0; k < CLUDA_DATASET_KINDS; k++) {
    const int(*spec)[2] = k == CLUDA_DATASET_SYNTHIA ? synthia : cityscapes;
    int want[256];
    for (int id = 0; id < 256; id++)
      want[id] = 255;
    for (int c = 0; c < 19; c++)
      want[spec[c][0]] = spec[c][1];
    uint8_t table[256], known[256];
    cluda_dataset_id_table((cluda_dataset_kind)k, table, known);
    int ok = 1, known_ok = 1;
    for (int id = 0; id < 256; id++) {
      ok &= table[id] == want[id];
      int max_id = k == CLUDA_DATASET_SYNTHIA ? 22 : 33;
      known_ok &= known[id] == (id <= max_id || (k != CLUDA_DATASET_SYNTHIA && id == 255));
    }
    const char *name = cluda_dataset_kind_name((cluda_dataset_kind)k);
    TEST_CHECK(ok, "%s id -> train id table matches algorithm.md", name);
    TEST_CHECK(known_ok, "%s known ids: 0..%s", name,
               k == CLUDA_DATASET_SYNTHIA ? "22" : "33 and 255 (license plate)");
    cluda_dataset_kind parsed;
    TEST_CHECK(TEST_OK(cluda_dataset_kind_parse(name, &parsed)) && (int)parsed == k, "parse %s",
               name);
  }
  cluda_dataset_kind parsed;
  TEST_FAILS(cluda_dataset_kind_parse("kitti", &parsed), CLUDA_ERR_ARG, "kitti");
}

/* ---- PNG functions of the layouts ---- */

static void test_png_layout_formats(const char *dir) {
  char path[1024];
  cluda_image img;
  /* 16-bit RGB: R is the label, G/B above 255 are ignored. */
  const uint16_t ids[6] = {3, 11, 0, 22, 16, 255};
  snprintf(path, sizeof path, "%s/png/rgb16.png", dir);
  write_rgb16_label(path, 3, 2, ids);
  if (TEST_OK(cluda_png_read_first_channel(path, &img))) {
    TEST_CHECK(labels_equal(&img, 3, 2, (const uint8_t[]){3, 11, 0, 22, 16, 255}),
               "16-bit RGB: first channel, unscaled");
    cluda_image_free(&img);
  }
  int width = 0, height = 0;
  TEST_CHECK(TEST_OK(cluda_png_read_size(path, &width, &height)) && width == 3 && height == 2,
             "read_size 3x2, got %dx%d", width, height);
  const uint16_t big[6] = {1, 2, 3, 4, 300, 6};
  snprintf(path, sizeof path, "%s/png/rgb16_big.png", dir);
  write_rgb16_label(path, 3, 2, big);
  fails_naming(cluda_png_read_first_channel(path, &img), CLUDA_ERR_IO, "rgb16_big.png", "300",
               "a 16-bit label above 255");
  /* 8-bit gray and RGB work too; palette and alpha are refused. */
  snprintf(path, sizeof path, "%s/png/gray.png", dir);
  write_gray(path, 2, 1, (const uint8_t[]){9, 250});
  if (TEST_OK(cluda_png_read_first_channel(path, &img))) {
    TEST_CHECK(labels_equal(&img, 2, 1, (const uint8_t[]){9, 250}), "8-bit gray first channel");
    cluda_image_free(&img);
  }
  snprintf(path, sizeof path, "%s/png/rgb8.png", dir);
  TEST_CHECK(
      write_png_of(path, 2, 1, 8, PNG_COLOR_TYPE_RGB, (const uint8_t[]){5, 1, 2, 6, 3, 4}, 0) == 0,
      "write rgb8");
  if (TEST_OK(cluda_png_read_first_channel(path, &img))) {
    TEST_CHECK(labels_equal(&img, 2, 1, (const uint8_t[]){5, 6}), "8-bit RGB first channel");
    cluda_image_free(&img);
  }
  snprintf(path, sizeof path, "%s/png/pal.png", dir);
  write_palette_label(path, 2, 1, (const uint8_t[]){1, 2});
  TEST_FAILS(cluda_png_read_first_channel(path, &img), CLUDA_ERR_UNSUPPORTED, "palette");
  snprintf(path, sizeof path, "%s/png/rgba.png", dir);
  TEST_CHECK(
      write_png_of(path, 1, 1, 8, PNG_COLOR_TYPE_RGB_ALPHA, (const uint8_t[]){1, 2, 3, 4}, 0) == 0,
      "write rgba");
  TEST_FAILS(cluda_png_read_first_channel(path, &img), CLUDA_ERR_UNSUPPORTED, "RGBA");

  /* The writers: a palette PNG keeps its indices, a 16-bit PNG its samples. */
  cluda_image indices;
  TEST_OK(cluda_image_create(&indices, 3, 1, 1));
  memcpy(indices.pixels, (const uint8_t[]){0, 33, 255}, 3);
  uint8_t colors[256][3] = {{0}};
  colors[33][0] = 200;
  snprintf(path, sizeof path, "%s/png/written_pal.png", dir);
  TEST_OK(cluda_png_write_palette(path, &indices, (const uint8_t(*)[3])colors, 256));
  int depth = 0, type = 0;
  TEST_CHECK(png_kind(path, &depth, &type) == 0 && depth == 8 && type == PNG_COLOR_TYPE_PALETTE,
             "palette writer: 8-bit palette PNG (%d-bit, type %d)", depth, type);
  if (TEST_OK(cluda_png_read_labels(path, &img))) {
    TEST_CHECK(labels_equal(&img, 3, 1, (const uint8_t[]){0, 33, 255}), "palette indices kept");
    cluda_image_free(&img);
  }
  if (TEST_OK(cluda_png_read_rgb(path, &img))) {
    TEST_CHECK(img.pixels[3] == 200 && img.pixels[0] == 0, "palette colours written");
    cluda_image_free(&img);
  }
  TEST_FAILS(cluda_png_write_palette(path, &indices, (const uint8_t(*)[3])colors, 34),
             CLUDA_ERR_ARG, "255");
  cluda_image_free(&indices);
  const uint16_t samples[6] = {7, 65535, 256, 0, 1, 2};
  snprintf(path, sizeof path, "%s/png/written16.png", dir);
  TEST_OK(cluda_png_write_rgb16(path, 2, 1, samples));
  TEST_CHECK(png_kind(path, &depth, &type) == 0 && depth == 16 && type == PNG_COLOR_TYPE_RGB,
             "rgb16 writer: 16-bit RGB PNG");
  if (TEST_OK(cluda_png_read_first_channel(path, &img))) {
    TEST_CHECK(labels_equal(&img, 2, 1, (const uint8_t[]){7, 0}), "rgb16 R samples");
    cluda_image_free(&img);
  }
  if (TEST_OK(cluda_png_read_rgb(path, &img))) {
    /* scaled to 8 bits with rounding: 65535 -> 255, 256 -> 1 */
    TEST_CHECK(img.pixels[1] == 255 && img.pixels[2] == 1, "rgb16 G/B samples");
    cluda_image_free(&img);
  }
}

/* ---- the readers on hand-written files ---- */

static void test_readers(const char *dir) {
  char root[512], path[1024];
  cluda_dataset ds;
  cluda_image img;
  uint8_t rgb[3 * 2 * 3];

  /* GTA: palette labels holding Cityscapes ids; 255 (license plate) and 0 are ignored. */
  snprintf(root, sizeof root, "%s/readers/gta", dir);
  const uint8_t gta_ids[6] = {7, 8, 0, 33, 255, 26}, gta_train[6] = {0, 1, 255, 18, 255, 13};
  for (int i = 1; i >= 0; i--) { /* written out of order: items come back sorted */
    snprintf(path, sizeof path, "%s/images/0000%d.png", root, i);
    write_rgb(path, 3, 2, rgb);
    snprintf(path, sizeof path, "%s/labels/0000%d.png", root, i);
    write_palette_label(path, 3, 2, gta_ids);
  }
  snprintf(path, sizeof path, "%s/labels/00009.png", root); /* a label without an image */
  write_palette_label(path, 3, 2, gta_ids);
  if (TEST_OK(cluda_dataset_open(&ds, CLUDA_DATASET_GTA, root, NULL))) {
    snprintf(path, sizeof path, "%s/labels/00000_labelTrainIds.png", root);
    TEST_CHECK(ds.count == 2 && !strcmp(ds.split, "all") && strstr(ds.items[0].image, "00000") &&
                   strstr(ds.items[1].image, "00001") && ds.items[0].label_raw &&
                   !strcmp(ds.items[0].label_train, path) && !strcmp(ds.items[0].stats_name, path),
               "gta: 2 sorted items with their label paths");
    if (TEST_OK(cluda_dataset_read_image(&ds, 0, &img))) {
      TEST_CHECK(img.channels == 3 && img.width == 3 && img.height == 2 &&
                     !memcmp(img.pixels, rgb, sizeof rgb),
                 "gta image");
      cluda_image_free(&img);
    }
    cluda_image raw = {0}, converted = {0};
    if (TEST_OK(cluda_dataset_read_labels(&ds, 0, &raw)))
      TEST_CHECK(labels_equal(&raw, 3, 2, gta_train), "gta labels from raw ids");
    cluda_convert_options opt = {.threads = 1};
    cluda_convert_report report;
    TEST_OK(cluda_dataset_convert(&ds, &opt, &report));
    snprintf(path, sizeof path, "%s/labels/00000_labelTrainIds.png", root);
    TEST_CHECK(access(path, F_OK) == 0, "converted file %s exists", path);
    /* Now read from the converted file: overwrite the raw label to prove it is not read. */
    snprintf(path, sizeof path, "%s/labels/00000.png", root);
    write_palette_label(path, 3, 2, (const uint8_t[]){40, 40, 40, 40, 40, 40});
    if (TEST_OK(cluda_dataset_read_labels(&ds, 0, &converted)))
      TEST_CHECK(labels_equal(&converted, 3, 2, raw.pixels),
                 "gta labels from the converted file equal those from raw ids");
    cluda_image_free(&raw);
    cluda_image_free(&converted);
    cluda_image pair_rgb, pair_labels;
    if (TEST_OK(cluda_dataset_read_pair(&ds, 1, &pair_rgb, &pair_labels))) {
      TEST_CHECK(labels_equal(&pair_labels, 3, 2, gta_train) && pair_rgb.width == 3,
                 "gta read_pair");
      cluda_image_free(&pair_rgb);
      cluda_image_free(&pair_labels);
    }
    TEST_FAILS(cluda_dataset_read_labels(&ds, 2, &img), CLUDA_ERR_ARG, "item 2");
    cluda_dataset_free(&ds);
  }
  TEST_FAILS(cluda_dataset_open(&ds, CLUDA_DATASET_GTA, root, "train"), CLUDA_ERR_ARG, "split");

  /* SYNTHIA: 16-bit RGB labels, the class id in R. */
  snprintf(root, sizeof root, "%s/readers/synthia", dir);
  const uint16_t synthia_ids[6] = {3, 11, 0, 22, 16, 1};
  const uint8_t synthia_train[6] = {0, 18, 255, 255, 9, 10};
  snprintf(path, sizeof path, "%s/RGB/0000000.png", root);
  write_rgb(path, 3, 2, rgb);
  snprintf(path, sizeof path, "%s/GT/LABELS/0000000.png", root);
  write_rgb16_label(path, 3, 2, synthia_ids);
  if (TEST_OK(cluda_dataset_open(&ds, CLUDA_DATASET_SYNTHIA, root, "all"))) {
    TEST_CHECK(ds.count == 1 && strstr(ds.items[0].label_train, "GT/LABELS/0000000_labelTrainIds"),
               "synthia: one item");
    cluda_image raw = {0}, converted = {0};
    if (TEST_OK(cluda_dataset_read_labels(&ds, 0, &raw)))
      TEST_CHECK(labels_equal(&raw, 3, 2, synthia_train), "synthia labels from raw ids");
    cluda_convert_options opt = {.threads = 2};
    cluda_convert_report report;
    TEST_CHECK(TEST_OK(cluda_dataset_convert(&ds, &opt, &report)) && report.converted == 1,
               "synthia converted");
    if (TEST_OK(cluda_png_read_labels(ds.items[0].label_train, &converted)))
      TEST_CHECK(labels_equal(&converted, 3, 2, synthia_train), "synthia converted file");
    cluda_image_free(&raw);
    cluda_image_free(&converted);
    cluda_dataset_free(&ds);
  }

  /* Cityscapes: labelIds in train, only labelTrainIds in val. */
  snprintf(root, sizeof root, "%s/readers/cityscapes", dir);
  const uint8_t cs_ids[6] = {7, 24, 255, 1, 33, 12}, cs_train[6] = {0, 11, 255, 255, 18, 3};
  const uint8_t val_train[6] = {5, 6, 255, 18, 0, 0};
  snprintf(path, sizeof path, "%s/leftImg8bit/train/ulm/ulm_000000_000001_leftImg8bit.png", root);
  write_rgb(path, 3, 2, rgb);
  snprintf(path, sizeof path, "%s/gtFine/train/ulm/ulm_000000_000001_gtFine_labelIds.png", root);
  write_gray(path, 3, 2, cs_ids);
  snprintf(path, sizeof path, "%s/leftImg8bit/val/lindau/lindau_000000_000002_leftImg8bit.png",
           root);
  write_rgb(path, 3, 2, rgb);
  snprintf(path, sizeof path, "%s/gtFine/val/lindau/lindau_000000_000002_gtFine_labelTrainIds.png",
           root);
  write_gray(path, 3, 2, val_train);
  if (TEST_OK(cluda_dataset_open(&ds, CLUDA_DATASET_CITYSCAPES, root, "train"))) {
    TEST_CHECK(ds.count == 1 && !strcmp(ds.split, "train"), "cityscapes train: one item");
    if (TEST_OK(cluda_dataset_read_labels(&ds, 0, &img))) {
      TEST_CHECK(labels_equal(&img, 3, 2, cs_train), "cityscapes labels from labelIds");
      cluda_image_free(&img);
    }
    cluda_dataset_free(&ds);
  }
  if (TEST_OK(cluda_dataset_open(&ds, CLUDA_DATASET_CITYSCAPES, root, "val"))) {
    TEST_CHECK(ds.count == 1 && ds.items[0].label_raw == NULL, "cityscapes val: converted only");
    if (TEST_OK(cluda_dataset_read_labels(&ds, 0, &img))) {
      TEST_CHECK(labels_equal(&img, 3, 2, val_train), "cityscapes labels from labelTrainIds");
      cluda_image_free(&img);
    }
    /* val gets no statistics */
    cluda_convert_options opt = {.threads = 1};
    cluda_convert_report report;
    TEST_CHECK(TEST_OK(cluda_dataset_convert(&ds, &opt, &report)) && report.kept == 1,
               "cityscapes val: kept");
    snprintf(path, sizeof path, "%s/%s", root, CLUDA_DATASET_STATS_LIST);
    TEST_CHECK(access(path, F_OK) != 0, "no statistics for the val split");
    cluda_dataset_free(&ds);
  }
  TEST_FAILS(cluda_dataset_open(&ds, CLUDA_DATASET_CITYSCAPES, root, NULL), CLUDA_ERR_ARG, "split");
  fails_naming(cluda_dataset_open(&ds, CLUDA_DATASET_CITYSCAPES, root, "test"), CLUDA_ERR_IO,
               "leftImg8bit/test", NULL, "cityscapes without the split");
}

/* ---- the converter against the reference (tests/fixtures/convert) ---- */

typedef struct fixture_root {
  cluda_dataset_kind kind;
  const char *name, *root; /* root: as the reference tool was given it */
} fixture_root;

static const fixture_root fixture_roots[] = {
    {CLUDA_DATASET_GTA, "gta", "data/gta"},
    {CLUDA_DATASET_SYNTHIA, "synthia", "data/synthia/"},
    {CLUDA_DATASET_CITYSCAPES, "cityscapes", "data/cityscapes"}};
static const char *const stats_files[3] = {CLUDA_DATASET_STATS_LIST, CLUDA_DATASET_STATS_DICT,
                                           CLUDA_DATASET_STATS_BY_CLASS};

/* Converts a copy of fixture f in work/ (the process is inside work/); returns the sum of the
 * reports of the splits. */
static cluda_convert_report convert_fixture(const fixture_root *f, int threads, int force) {
  cluda_convert_report total = {0};
  const char *splits[2] = {f->kind == CLUDA_DATASET_CITYSCAPES ? "train" : NULL, "val"};
  int n_splits = f->kind == CLUDA_DATASET_CITYSCAPES ? 2 : 1;
  for (int s = 0; s < n_splits; s++) {
    cluda_dataset ds;
    if (!TEST_OK(cluda_dataset_open(&ds, f->kind, f->root, splits[s]))) continue;
    cluda_convert_options opt = {.threads = threads, .force = force};
    cluda_convert_report report;
    if (TEST_OK(cluda_dataset_convert(&ds, &opt, &report))) {
      total.converted += report.converted;
      total.kept += report.kept;
      total.skipped += report.skipped;
    }
    cluda_dataset_free(&ds);
  }
  return total;
}

/* The reference's file for a path under f's root. */
static void expected_path(const fixture_root *f, const char *path, char *out, size_t size) {
  const char *rel = path + strlen(f->root);
  snprintf(out, size, "%s/expected/%s/%s", CONVERT_FIXTURES, f->name,
           rel[0] == '/' ? rel + 1 : rel);
}

/* Every expected file of f (JSON byte for byte, train-id PNGs pixel for pixel) against the
 * converted root in the current directory. */
static void compare_with_reference(const fixture_root *f, const char *what) {
  char want[1024], got[1024];
  for (int k = 0; k < 3; k++) {
    snprintf(want, sizeof want, "%s/expected/%s/%s", CONVERT_FIXTURES, f->name, stats_files[k]);
    snprintf(got, sizeof got, "data/%s/%s", f->name, stats_files[k]);
    TEST_CHECK(same_bytes(want, got), "%s %s: %s is byte-identical to the reference", f->name, what,
               stats_files[k]);
  }
  /* The train-id PNG of every item of every split. */
  int pngs = 0, same = 0;
  for (int split = 0; split < (f->kind == CLUDA_DATASET_CITYSCAPES ? 2 : 1); split++) {
    cluda_dataset ds;
    const char *name = f->kind != CLUDA_DATASET_CITYSCAPES ? NULL : split ? "val" : "train";
    if (!TEST_OK(cluda_dataset_open(&ds, f->kind, f->root, name))) continue;
    for (int i = 0; i < ds.count; i++) {
      expected_path(f, ds.items[i].label_train, want, sizeof want);
      cluda_image a = {0}, b = {0};
      pngs++;
      if (TEST_OK(cluda_png_read_labels(want, &a)) &&
          TEST_OK(cluda_png_read_labels(ds.items[i].label_train, &b)))
        same += a.width == b.width && a.height == b.height &&
                !memcmp(a.pixels, b.pixels, (size_t)a.width * a.height);
      cluda_image_free(&a);
      cluda_image_free(&b);
    }
    cluda_dataset_free(&ds);
  }
  TEST_CHECK(pngs >= 3 && same == pngs, "%s %s: %d of %d train-id PNGs equal the reference",
             f->name, what, same, pngs);
}

/* load_class_stats against counts taken here from the reference's train-id PNGs. */
static void check_loaded_stats(const fixture_root *f) {
  cluda_dataset ds;
  const char *split = f->kind == CLUDA_DATASET_CITYSCAPES ? "train" : NULL;
  if (!TEST_OK(cluda_dataset_open(&ds, f->kind, f->root, split))) return;
  int64_t *stats = NULL;
  if (TEST_OK(cluda_dataset_load_class_stats(&ds, 19, &stats))) {
    int ok = 1;
    for (int i = 0; i < ds.count; i++) {
      char want[1024];
      expected_path(f, ds.items[i].label_train, want, sizeof want);
      cluda_image labels;
      if (!TEST_OK(cluda_png_read_labels(want, &labels))) {
        ok = 0;
        continue;
      }
      int64_t counts[19] = {0};
      for (int p = 0; p < labels.width * labels.height; p++)
        if (labels.pixels[p] < 19) counts[labels.pixels[p]]++;
      ok &= !memcmp(counts, stats + (size_t)i * 19, sizeof counts);
      cluda_image_free(&labels);
    }
    TEST_CHECK(ok, "%s: load_class_stats equals the counts of the reference train ids", f->name);
    free(stats);
  }
  cluda_dataset_free(&ds);
}

static void test_fixture_conversion(const char *dir) {
  char cwd[PATH_MAX / 2], work[2][PATH_MAX];
  if (!TEST_CHECK(getcwd(cwd, sizeof cwd) != NULL, "getcwd")) return;
  const int threads[2] = {1, 3};
  for (int t = 0; t < 2; t++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/fixture_threads%d", dir, threads[t]);
    make_dirs(path);
    /* Absolute: the conversions run inside it. */
    int len = path[0] == '/' ? snprintf(work[t], sizeof work[t], "%s", path)
                             : snprintf(work[t], sizeof work[t], "%s/%s", cwd, path);
    if (!TEST_CHECK(len > 0 && len < PATH_MAX, "path of %s", path)) return;
    for (int k = 0; k < 3; k++) {
      const fixture_root *f = &fixture_roots[k];
      char from[1024], to[PATH_MAX + 64];
      snprintf(from, sizeof from, "%s/%s", CONVERT_FIXTURES, f->name);
      snprintf(to, sizeof to, "%s/data/%s", work[t], f->name);
      copy_tree(from, to);
    }
    if (!TEST_CHECK(chdir(work[t]) == 0, "chdir %s", work[t])) return;
    for (int k = 0; k < 3; k++) {
      const fixture_root *f = &fixture_roots[k];
      int items = f->kind == CLUDA_DATASET_GTA ? 4 : f->kind == CLUDA_DATASET_SYNTHIA ? 3 : 4;
      int given_train_ids = f->kind == CLUDA_DATASET_CITYSCAPES; /* bochum: labelTrainIds only */
      char what[64];
      snprintf(what, sizeof what, "(%d threads)", threads[t]);
      cluda_convert_report r = convert_fixture(f, threads[t], 0);
      TEST_CHECK(r.converted == items - given_train_ids && r.kept == given_train_ids &&
                     r.skipped == 0,
                 "%s %s: %d converted, %d kept", f->name, what, r.converted, r.kept);
      compare_with_reference(f, what);
      if (t == 1) continue;
      /* Idempotent: kept files untouched, the same statistics. */
      char label[1024], saved[1024];
      snprintf(label, sizeof label, "data/%s/%s", f->name,
               f->kind == CLUDA_DATASET_GTA ? "labels/00000_labelTrainIds.png"
               : f->kind == CLUDA_DATASET_SYNTHIA
                   ? "GT/LABELS/0000000_labelTrainIds.png"
                   : "gtFine/train/aachen/"
                     "aachen_000000_000019_gtFine_labelTrainIds.png");
      snprintf(saved, sizeof saved, "saved_%s.png", f->name);
      copy_file(label, saved);
      for (int k2 = 0; k2 < 3; k2++) { /* stale statistics are replaced, not trusted */
        char json[1024];
        snprintf(json, sizeof json, "data/%s/%s", f->name, stats_files[k2]);
        cli_write_bytes(json, "[]", 2);
      }
      r = convert_fixture(f, threads[t], 0);
      TEST_CHECK(r.converted == 0 && r.kept == items, "%s rerun: everything kept (%d kept)",
                 f->name, r.kept);
      TEST_CHECK(same_bytes(label, saved), "%s rerun: %s untouched", f->name, label);
      compare_with_reference(f, "rerun");
      r = convert_fixture(f, threads[t], 1);
      TEST_CHECK(r.converted == items - given_train_ids && r.kept == given_train_ids,
                 "%s --force: %d rebuilt", f->name, r.converted);
      compare_with_reference(f, "--force");
      check_loaded_stats(f);
    }
    TEST_CHECK(chdir(cwd) == 0, "chdir back");
  }
  /* 1 and 3 threads: the same bytes everywhere (PNGs included). */
  const char *files[] = {"data/gta/sample_class_stats.json",
                         "data/gta/samples_with_class.json",
                         "data/gta/labels/00001_labelTrainIds.png",
                         "data/synthia/sample_class_stats_dict.json",
                         "data/synthia/GT/LABELS/0000002_labelTrainIds.png",
                         "data/cityscapes/samples_with_class.json",
                         "data/cityscapes/gtFine/val/frankfurt/"
                         "frankfurt_000000_000005_gtFine_labelTrainIds.png"};
  int same = 1;
  for (size_t k = 0; k < sizeof files / sizeof files[0]; k++) {
    char a[PATH_MAX + 128], b[PATH_MAX + 128];
    snprintf(a, sizeof a, "%s/%s", work[0], files[k]);
    snprintf(b, sizeof b, "%s/%s", work[1], files[k]);
    same &= same_bytes(a, b);
  }
  TEST_CHECK(same, "1 and 3 threads write identical files");
}

/* Keep identical to ESCAPE_NAMES / ESCAPE_COUNTS in tools/make_convert_fixture.py. */
static void test_json_escapes(const char *dir) {
  const char *names[6] = {"data/x/plain_labelTrainIds.png",
                          "data/q\"uote\\back/slash.png",
                          "data/ctl\t\n\r\b\f\x01\x1f\x7f.png",
                          "data/caf\xc3\xa9/\xe6\x97\xa5\xe6\x9c\xac.png",
                          "data/emoji/\xf0\x9f\x98\x80.png",
                          "data/raw/bad\xff"
                          "byte.png"};
  int64_t counts[6][19] = {{0}};
  counts[0][2] = 5, counts[0][18] = 7;
  counts[1][0] = 3;
  counts[3][1] = 1, counts[3][2] = 2, counts[3][18] = 4;
  counts[4][18] = 1234567890123;
  counts[5][0] = 9;
  char out[512], want[1024], got[1024];
  snprintf(out, sizeof out, "%s/escapes", dir);
  make_dirs(out);
  TEST_OK(cluda_dataset_write_class_stats(out, 6, names, &counts[0][0], 19));
  for (int k = 0; k < 3; k++) {
    snprintf(want, sizeof want, "%s/expected/escapes/%s", CONVERT_FIXTURES, stats_files[k]);
    snprintf(got, sizeof got, "%s/%s", out, stats_files[k]);
    TEST_CHECK(same_bytes(want, got), "escapes: %s equals Python's json.dump", stats_files[k]);
  }
  /* No entries: the empty list and objects. */
  TEST_OK(cluda_dataset_write_class_stats(out, 0, NULL, NULL, 19));
  size_t n = 0;
  snprintf(got, sizeof got, "%s/%s", out, CLUDA_DATASET_STATS_LIST);
  uint8_t *text = read_bytes(got, &n);
  TEST_CHECK(text && n == 2 && !memcmp(text, "[]", 2), "no entries: []");
  free(text);
  snprintf(got, sizeof got, "%s/%s", out, CLUDA_DATASET_STATS_BY_CLASS);
  text = read_bytes(got, &n);
  TEST_CHECK(text && n == 2 && !memcmp(text, "{}", 2), "no entries: {}");
  free(text);
}

/* ---- synth --layout, convert, read ---- */

static void test_synth_layouts(cli_runner *cr) {
  for (int k = 0; k < CLUDA_DATASET_KINDS; k++) {
    const char *name = cluda_dataset_kind_name((cluda_dataset_kind)k);
    char sub[64];
    snprintf(sub, sizeof sub, "layout_%s", name);
    const char *out = cli_path(cr, sub);
    cli_result r;
    int is_cs = k == CLUDA_DATASET_CITYSCAPES;
    if (is_cs)
      cli_run(cr, &r, "synth", "--layout", name, "--count", "3", "--val-count", "2", "--size",
              "24x40", "--seed", "3", "--out", out, NULL);
    else
      cli_run(cr, &r, "synth", "--layout", name, "--count", "5", "--size", "24x40", "--seed", "3",
              "--out", out, NULL);
    if (!TEST_CHECK(r.exit_code == 0, "synth --layout %s: %s%s", name, r.out, r.err)) continue;
    cli_run(cr, &r, "convert", "--dataset", name, out, "--threads", "2", NULL);
    if (!TEST_CHECK(r.exit_code == 0 && strstr(r.out, "converted"), "convert %s: %s%s", name, r.out,
                    r.err))
      continue;
    TEST_CHECK(strstr(r.err, "convert") == NULL, "no progress bar when stderr is not a terminal");
    cluda_synth_config cfg;
    cluda_synth_config_init(&cfg);
    cfg.seed = 3;
    cfg.domain = is_cs ? CLUDA_SYNTH_TARGET : CLUDA_SYNTH_SOURCE;
    for (int split = 0; split < (is_cs ? 2 : 1); split++) {
      cluda_dataset ds;
      if (!TEST_OK(cluda_dataset_open(&ds, (cluda_dataset_kind)k, out,
                                      is_cs ? (split ? "val" : "train") : NULL)))
        continue;
      int want_count = is_cs ? (split ? 2 : 3) : 5;
      TEST_CHECK(ds.count == want_count, "%s: %d items", name, ds.count);
      int64_t *stats = NULL;
      if (!split) TEST_OK(cluda_dataset_load_class_stats(&ds, 19, &stats));
      int images_ok = 1, labels_ok = 1, stats_ok = 1, odd = 0;
      for (int i = 0; i < ds.count; i++) {
        /* The frame index is the last number in the file name. */
        const char *base = strrchr(ds.items[i].image, '/') + 1;
        const char *digits = is_cs ? base + strlen(base) - strlen("_leftImg8bit.png") - 6 : base;
        int index = atoi(digits);
        cfg.height = 24;
        cfg.width = 40;
        if (k == CLUDA_DATASET_GTA && index % 4 == 3) cfg.height = 22, odd++;
        size_t n = (size_t)cfg.height * cfg.width;
        uint8_t *rgb = test_alloc(n * 3), *labels = test_alloc(n);
        TEST_OK(cluda_synth_render(&cfg, split ? CLUDA_SYNTH_VAL : CLUDA_SYNTH_TRAIN,
                                   (uint64_t)index, rgb, labels));
        cluda_image got_rgb, got_labels;
        if (TEST_OK(cluda_dataset_read_pair(&ds, i, &got_rgb, &got_labels))) {
          images_ok &= got_rgb.height == cfg.height && !memcmp(got_rgb.pixels, rgb, n * 3);
          labels_ok &= got_labels.height == cfg.height && !memcmp(got_labels.pixels, labels, n);
          cluda_image_free(&got_rgb);
          cluda_image_free(&got_labels);
        }
        if (stats) {
          int64_t counts[19];
          TEST_OK(cluda_synth_class_counts(&cfg, CLUDA_SYNTH_TRAIN, (uint64_t)index, counts));
          stats_ok &= !memcmp(counts, stats + (size_t)i * 19, sizeof counts);
        }
        free(rgb);
        free(labels);
      }
      TEST_CHECK(images_ok && labels_ok, "%s %s: images and labels are the rendered scenes", name,
                 ds.split);
      if (!split) TEST_CHECK(stats && stats_ok, "%s: statistics are the rendered counts", name);
      if (k == CLUDA_DATASET_GTA) TEST_CHECK(odd == 1, "gta: one odd-sized frame of 5");
      /* The raw label formats of each dataset. */
      int depth = 0, type = 0;
      const char *raw = ds.items[0].label_raw;
      int kind_ok = raw && png_kind(raw, &depth, &type) == 0;
      if (k == CLUDA_DATASET_GTA)
        kind_ok &= depth == 8 && type == PNG_COLOR_TYPE_PALETTE;
      else if (k == CLUDA_DATASET_SYNTHIA)
        kind_ok &= depth == 16 && type == PNG_COLOR_TYPE_RGB;
      else
        kind_ok &= depth == 8 && type == PNG_COLOR_TYPE_GRAY;
      TEST_CHECK(kind_ok, "%s raw labels: %d-bit type %d", name, depth, type);
      if (k == CLUDA_DATASET_SYNTHIA && raw) {
        cluda_image g;
        if (TEST_OK(cluda_png_read_rgb(raw, &g))) { /* G, B scaled to 8 bits: non-zero */
          TEST_CHECK(g.pixels[1] != 0 || g.pixels[2] != 0, "synthia labels: G/B non-zero");
          cluda_image_free(&g);
        }
      }
      free(stats);
      cluda_dataset_free(&ds);
    }
  }
}

/* ---- bad inputs ---- */

/* A GTA root with n good 4x3 frames 00000.. and its path. */
static const char *good_gta(cli_runner *cr, const char *name, int n) {
  const char *root = cli_path(cr, name);
  const uint8_t ids[12] = {7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 0};
  for (int i = 0; i < n; i++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/images/%05d.png", root, i);
    write_rgb(path, 4, 3, NULL);
    snprintf(path, sizeof path, "%s/labels/%05d.png", root, i);
    write_palette_label(path, 4, 3, ids);
  }
  return root;
}

static void truncate_file(const char *path) {
  size_t n = 0;
  uint8_t *data = read_bytes(path, &n);
  if (TEST_CHECK(data && n > 40, "read %s", path)) cli_write_bytes(path, data, n / 2);
  free(data);
}

/* Converts root (GTA) in the library; returns the status. */
static cluda_status convert_gta(const char *root, int threads, int skip,
                                cluda_convert_report *report) {
  cluda_dataset ds;
  cluda_status s = skip ? cluda_dataset_open_lenient(&ds, CLUDA_DATASET_GTA, root, NULL, NULL)
                        : cluda_dataset_open(&ds, CLUDA_DATASET_GTA, root, NULL);
  if (s.code != CLUDA_OK) return s;
  cluda_convert_options opt = {.threads = threads, .skip_bad = skip};
  s = cluda_dataset_convert(&ds, &opt, report);
  cluda_dataset_free(&ds);
  return s;
}

static void test_bad_inputs(cli_runner *cr) {
  char path[1024];
  cluda_convert_report report;
  cluda_dataset ds;

  /* Missing label: open fails naming the image; lenient open keeps it for skipping. */
  const char *root = good_gta(cr, "bad/missing", 2);
  snprintf(path, sizeof path, "%s/images/00005.png", root);
  write_rgb(path, 4, 3, NULL);
  fails_naming(cluda_dataset_open(&ds, CLUDA_DATASET_GTA, root, NULL), CLUDA_ERR_IO,
               "images/00005.png", "missing label", "image without a label");
  int unlabelled = -1;
  if (TEST_OK(cluda_dataset_open_lenient(&ds, CLUDA_DATASET_GTA, root, NULL, &unlabelled))) {
    TEST_CHECK(ds.count == 3 && unlabelled == 1, "lenient open: 3 items, 1 unlabelled");
    cluda_image img;
    fails_naming(cluda_dataset_read_labels(&ds, 2, &img), CLUDA_ERR_IO, "00005.png",
                 "missing label", "reading the unlabelled item");
    cluda_dataset_free(&ds);
  }
  fails_naming(convert_gta(root, 2, 0, &report), CLUDA_ERR_IO, "00005.png", "missing label",
               "convert stops at the missing label");
  if (TEST_OK(convert_gta(root, 2, 1, &report)))
    TEST_CHECK(report.converted == 2 && report.skipped == 1, "skip: 2 converted, 1 skipped");
  if (TEST_OK(cluda_dataset_open_lenient(&ds, CLUDA_DATASET_GTA, root, NULL, NULL))) {
    int64_t *stats = NULL;
    fails_naming(cluda_dataset_load_class_stats(&ds, 19, &stats), CLUDA_ERR_IO,
                 "00005_labelTrainIds.png", "sample_class_stats.json",
                 "statistics without a skipped item");
    cluda_dataset_free(&ds);
  }

  /* Truncated and non-PNG files. */
  root = good_gta(cr, "bad/truncated", 3);
  snprintf(path, sizeof path, "%s/labels/00001.png", root);
  truncate_file(path);
  fails_naming(convert_gta(root, 1, 0, &report), CLUDA_ERR_IO, "labels/00001.png", "truncated",
               "truncated label");
  root = good_gta(cr, "bad/notpng", 2);
  snprintf(path, sizeof path, "%s/images/00001.png", root);
  cli_write_bytes(path, "GIF89a not a png", 16);
  fails_naming(convert_gta(root, 1, 0, &report), CLUDA_ERR_IO, "images/00001.png", "not a PNG",
               "image that is not a PNG");

  /* Size mismatch: the converter (headers) and read_pair (decoded images). */
  root = good_gta(cr, "bad/size", 2);
  snprintf(path, sizeof path, "%s/images/00001.png", root);
  write_rgb(path, 4, 2, NULL);
  fails_naming(convert_gta(root, 1, 0, &report), CLUDA_ERR_SHAPE, "images/00001.png", "4x2",
               "convert: image/label size mismatch");
  if (TEST_OK(cluda_dataset_open(&ds, CLUDA_DATASET_GTA, root, NULL))) {
    cluda_image rgb, labels;
    fails_naming(cluda_dataset_read_pair(&ds, 1, &rgb, &labels), CLUDA_ERR_SHAPE, "labels/00001",
                 "4x3", "read_pair: size mismatch");
    cluda_dataset_free(&ds);
  }

  /* Values outside the id table: GTA 40, SYNTHIA 23 and 300, a kept train-id file with 19. */
  root = good_gta(cr, "bad/value", 2);
  snprintf(path, sizeof path, "%s/labels/00000.png", root);
  write_palette_label(path, 4, 3, (const uint8_t[]){7, 7, 7, 7, 7, 40, 7, 7, 7, 7, 7, 7});
  fails_naming(convert_gta(root, 1, 0, &report), CLUDA_ERR_IO, "labels/00000.png", "value 40",
               "gta id outside the table");
  if (TEST_OK(cluda_dataset_open(&ds, CLUDA_DATASET_GTA, root, NULL))) {
    cluda_image img;
    fails_naming(cluda_dataset_read_labels(&ds, 0, &img), CLUDA_ERR_IO, "(x 1, y 1)", "40",
                 "read_labels names the pixel");
    cluda_dataset_free(&ds);
  }
  const char *synthia = cli_path(cr, "bad/synthia");
  for (int v = 0; v < 2; v++) {
    uint16_t ids[4] = {3, 4, v ? 300 : 23, 5};
    snprintf(path, sizeof path, "%s/RGB/000000%d.png", synthia, v);
    write_rgb(path, 2, 2, NULL);
    snprintf(path, sizeof path, "%s/GT/LABELS/000000%d.png", synthia, v);
    write_rgb16_label(path, 2, 2, ids);
  }
  if (TEST_OK(cluda_dataset_open(&ds, CLUDA_DATASET_SYNTHIA, synthia, NULL))) {
    cluda_image img;
    fails_naming(cluda_dataset_read_labels(&ds, 0, &img), CLUDA_ERR_IO, "0000000.png", "value 23",
                 "synthia id outside the table");
    fails_naming(cluda_dataset_read_labels(&ds, 1, &img), CLUDA_ERR_IO, "0000001.png", "300",
                 "synthia id above 255");
    cluda_convert_options opt = {.threads = 3, .skip_bad = 1};
    if (TEST_OK(cluda_dataset_convert(&ds, &opt, &report)))
      TEST_CHECK(report.skipped == 2 && report.converted == 0, "synthia: both skipped");
    cluda_dataset_free(&ds);
  }
  root = good_gta(cr, "bad/kept", 2);
  snprintf(path, sizeof path, "%s/labels/00001_labelTrainIds.png", root);
  write_gray(path, 4, 3, (const uint8_t[]){0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 19, 255});
  fails_naming(convert_gta(root, 1, 0, &report), CLUDA_ERR_IO, "00001_labelTrainIds.png",
               "value 19", "kept train-id file with a value that is no train id");

  /* The first bad item in item order is reported, whatever the thread count. */
  root = good_gta(cr, "bad/first", 9);
  snprintf(path, sizeof path, "%s/labels/00003.png", root);
  truncate_file(path);
  snprintf(path, sizeof path, "%s/labels/00007.png", root);
  truncate_file(path);
  fails_naming(convert_gta(root, 3, 0, &report), CLUDA_ERR_IO, "labels/00003.png", "truncated",
               "the first bad item is reported (3 threads)");

  /* Cityscapes with polygons only. */
  const char *cs = cli_path(cr, "bad/polygons");
  snprintf(path, sizeof path, "%s/leftImg8bit/train/ulm/ulm_000000_000001_leftImg8bit.png", cs);
  write_rgb(path, 4, 3, NULL);
  snprintf(path, sizeof path, "%s/gtFine/train/ulm/ulm_000000_000001_gtFine_polygons.json", cs);
  make_parent(path);
  cli_write_bytes(path, "{}", 2);
  fails_naming(cluda_dataset_open(&ds, CLUDA_DATASET_CITYSCAPES, cs, "train"), CLUDA_ERR_IO,
               "cityscapesscripts", "ulm_000000_000001_leftImg8bit.png", "polygons only");

  /* Statistics: missing file, malformed file. */
  root = good_gta(cr, "bad/stats", 1);
  if (TEST_OK(cluda_dataset_open(&ds, CLUDA_DATASET_GTA, root, NULL))) {
    int64_t *stats = NULL;
    fails_naming(cluda_dataset_load_class_stats(&ds, 19, &stats), CLUDA_ERR_IO,
                 "sample_class_stats.json", "cluda_data convert", "no statistics");
    snprintf(path, sizeof path, "%s/%s", root, CLUDA_DATASET_STATS_LIST);
    const char *bad_json =
        "[\n  {\n    \"0\": 1.5,\n    \"file\": \"x/00000_labelTrainIds.png\"\n  }\n]";
    cli_write_bytes(path, bad_json, strlen(bad_json));
    fails_naming(cluda_dataset_load_class_stats(&ds, 19, &stats), CLUDA_ERR_IO,
                 "sample_class_stats.json:3", "integer", "a fractional count");
    const char *wrong_class = "[{\"19\": 2, \"file\": \"x/00000_labelTrainIds.png\"}]";
    cli_write_bytes(path, wrong_class, strlen(wrong_class));
    fails_naming(cluda_dataset_load_class_stats(&ds, 19, &stats), CLUDA_ERR_IO, "\"19\"",
                 "19 classes", "a class outside the classes");
    const char *good = "[{\"file\": \"elsewhere/00000_labelTrainIds.png\", \"4\": 12}, "
                       "{\"file\": \"not/in/the/dataset.png\"}]";
    cli_write_bytes(path, good, strlen(good));
    if (TEST_OK(cluda_dataset_load_class_stats(&ds, 19, &stats))) {
      TEST_CHECK(stats[4] == 12 && stats[0] == 0, "stats matched by base name, any key order");
      free(stats);
    }
    cluda_dataset_free(&ds);
  }
}

/* ---- the program ---- */

static void test_cli(cli_runner *cr) {
  cli_result r;
  cli_run(cr, &r, "--help", NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "cluda_data convert --dataset") &&
                 strstr(r.out, "--layout gta|synthia|cityscapes") && strstr(r.out, "--on-error"),
             "--help documents convert and --layout");
  cli_run(cr, &r, "convert", "--help", NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "--threads"), "convert --help");

  /* Bad command lines: exit 2. */
  cli_run(cr, &r, "convert", cli_path(cr, "nowhere"), NULL);
  cli_expect_error_code(cr, &r, 2, "no --dataset", "--dataset is required", NULL);
  cli_run(cr, &r, "convert", "--dataset", "kitti", cli_path(cr, "nowhere"), NULL);
  cli_expect_error_code(cr, &r, 2, "bad --dataset", "kitti", NULL);
  cli_run(cr, &r, "convert", "--dataset", "gta", NULL);
  cli_expect_error_code(cr, &r, 2, "no root", "root", NULL);
  cli_run(cr, &r, "convert", "--dataset", "gta", "a", "b", NULL);
  cli_expect_error_code(cr, &r, 2, "two roots", "more than one root", NULL);
  cli_run(cr, &r, "convert", "--dataset", "gta", "a", "--on-error", "ignore", NULL);
  cli_expect_error_code(cr, &r, 2, "bad --on-error", "ignore", NULL);
  cli_run(cr, &r, "convert", "--dataset", "gta", "a", "--threads", "0", NULL);
  cli_expect_error_code(cr, &r, 2, "zero threads", "--threads", NULL);
  cli_run(cr, &r, "synth", "--layout", "kitti", "--count", "1", "--out", "x", NULL);
  cli_expect_error_code(cr, &r, 2, "bad --layout", "kitti", NULL);
  cli_run(cr, &r, "synth", "--layout", "gta", "--count", "1", "--out", "x", "--split", "val", NULL);
  cli_expect_error_code(cr, &r, 2, "--split with --layout", "--split", NULL);
  cli_run(cr, &r, "synth", "--layout", "gta", "--count", "1", "--out", "x", "--val-count", "1",
          NULL);
  cli_expect_error_code(cr, &r, 2, "--val-count for gta", "--val-count", NULL);
  cli_run(cr, &r, "synth", "--layout", "gta", "--out", "x", NULL);
  cli_expect_error_code(cr, &r, 2, "--layout without --count", "--count is required", NULL);

  /* Missing root, bad items: exit 1, one line naming the file. */
  const char *nowhere = cli_path(cr, "nowhere");
  cli_run(cr, &r, "convert", "--dataset", "gta", nowhere, NULL);
  cli_expect_error(cr, &r, "missing root", nowhere, "not a directory");
  const char *root = good_gta(cr, "cli/bad", 4);
  char path[1024];
  snprintf(path, sizeof path, "%s/labels/00001.png", root);
  truncate_file(path);
  snprintf(path, sizeof path, "%s/images/00009.png", root);
  write_rgb(path, 4, 3, NULL);
  cli_run(cr, &r, "convert", "--dataset", "gta", root, "--threads", "3", NULL);
  cli_expect_error(cr, &r, "truncated label", "labels/00001.png", "truncated");
  cli_run(cr, &r, "convert", "--dataset", "gta", root, "--on-error", "skip", NULL);
  /* The stopped run above converted some labels already: converted + kept = 3. */
  int converted = -1, kept = -1;
  const char *line = strstr(r.out, "5 images: ");
  if (line) sscanf(line, "5 images: %d labels converted, %d kept", &converted, &kept);
  TEST_CHECK(r.exit_code == 0 && converted + kept == 3 && strstr(r.out, "2 skipped") &&
                 strstr(r.err, "labels/00001.png") && strstr(r.err, "images/00009.png") &&
                 strstr(r.err, "warning"),
             "--on-error skip: warns per bad item, converts the rest, counts (exit %d)\n%s%s",
             r.exit_code, r.out, r.err);
  cli_run(cr, &r, "convert", "--dataset", "gta", root, "--on-error", "skip", "--progress", NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.err, "convert gta all [") && strstr(r.err, "5/5"),
             "--progress draws a bar on stderr:\n%s", r.err);
  cli_run(cr, &r, "convert", "--dataset", "cityscapes", cli_path(cr, "bad/polygons"), NULL);
  cli_expect_error(cr, &r, "polygons only", "cityscapesscripts", NULL);
}

int main(int argc, char **argv) {
  (void)argc;
  test_id_tables();
  cli_runner cr;
  if (!cli_runner_init(&cr, argv[0], "cluda_data")) return test_finish("test_dataset");
  const char *dir = cli_path(&cr, "lib");
  make_dirs(dir);
  test_png_layout_formats(dir);
  test_readers(dir);
  test_fixture_conversion(dir);
  test_json_escapes(dir);
  test_synth_layouts(&cr);
  test_bad_inputs(&cr);
  test_cli(&cr);
  cli_runner_cleanup(&cr);
  return test_finish("test_dataset");
}

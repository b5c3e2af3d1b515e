/* cluda_data: writes and prepares data sets on disk.
 *  - `cluda_data synth` renders the synthetic two-domain street scenes
 *    (include/cluda/synthetic.h) as PNGs: in a flat layout with train ids and the Rare Class
 *    Sampling statistics of algorithm.md 2.1, or (--layout) in the GTA, SYNTHIA or Cityscapes
 *    layout with the dataset's raw label ids, ready for `cluda_data convert`.
 *  - `cluda_data convert` prepares a GTA, SYNTHIA or Cityscapes root (include/cluda/dataset.h):
 *    *_labelTrainIds.png and the statistics, as DAFormer's tools/convert_datasets do. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cluda/dataset.h"
#include "cluda/image.h"
#include "cluda/synthetic.h"

_Static_assert((int)CLUDA_SYNTH_CLASSES == (int)CLUDA_CITYSCAPES_CLASSES,
               "synthetic classes are Cityscapes");

static const char usage[] =
    "usage: cluda_data synth --domain source|target --split train|val --count N\n"
    "                        --size HxW --seed S --out DIR [options]\n"
    "       cluda_data synth --layout gta|synthia|cityscapes --count N --out DIR [options]\n"
    "       cluda_data convert --dataset gta|synthia|cityscapes ROOT [options]\n"
    "\n"
    "synth renders N synthetic street scenes (19 Cityscapes classes; docs/synthetic-data.md).\n"
    "Without --layout it writes, for each index i (zero-padded to 5 digits):\n"
    "  <out>/<i>_rgb.png             the image (8-bit RGB)\n"
    "  <out>/<i>_labelTrainIds.png   train ids 0..18 (8-bit gray)\n"
    "  <out>/<i>_color.png           the labels in Cityscapes colours\n"
    "and the Rare Class Sampling statistics (pixel counts per class and image):\n"
    "  <out>/sample_class_stats.json       [{\"<class>\": count, ..., \"file\": ...}, ...]\n"
    "  <out>/sample_class_stats_dict.json  {file: {\"<class>\": count, ...}, ...}\n"
    "  <out>/samples_with_class.json       {\"<class>\": [[file, count], ...], ...}\n"
    "With --layout it writes a dataset root with raw label ids (docs/datasets.md), to be\n"
    "prepared with `cluda_data convert` like the real data:\n"
    "  gta         images/NNNNN.png, labels/NNNNN.png (palette PNG of Cityscapes ids); every\n"
    "              4th frame is 2 rows shorter, like GTA's odd-sized frames\n"
    "  synthia     RGB/NNNNNNN.png, GT/LABELS/NNNNNNN.png (16-bit RGB, class id in R)\n"
    "  cityscapes  leftImg8bit/{train,val}/<city>/<city>_000000_NNNNNN_leftImg8bit.png,\n"
    "              gtFine/{train,val}/<city>/<city>_000000_NNNNNN_gtFine_labelIds.png\n"
    "\n"
    "  --domain source|target  rendering style: source is flat, saturated and sunlit;\n"
    "                          target has another palette, overcast light, haze, blur, noise\n"
    "                          (with --layout: source for gta and synthia, target for\n"
    "                          cityscapes unless given)\n"
    "  --split train|val       which split's scenes (disjoint random streams); not with\n"
    "                          --layout (gta and synthia are train, cityscapes writes both)\n"
    "  --count N               number of images (N >= 1); cityscapes: per split\n"
    "  --val-count M           cityscapes: number of val images (default: N)\n"
    "  --size HxW              image height x width, e.g. 128x128 (1..16384 each);\n"
    "                          default 128x256 with --layout\n"
    "  --seed S                data seed (unsigned 64-bit; default 0 with --layout); same\n"
    "                          arguments, same bytes\n"
    "  --out DIR               output directory (created if missing)\n"
    "  --start I               first index (default 0): images I .. I+N-1\n"
    "  --gap G                 target style strength in [0, 1] (default 1)\n"
    "  --shared-layout         the same scenes for both domains (paired figures)\n"
    "\n"
    "convert prepares a dataset root as DAFormer's tools/convert_datasets/*.py do: writes\n"
    "each label's *_labelTrainIds.png (8-bit, 255 = ignore) and, for the training images\n"
    "(gta and synthia: all; cityscapes: train; val is converted too), the three statistics\n"
    "files above into ROOT, byte for byte in the reference tools' format. It checks every\n"
    "pair: a missing label, an unreadable PNG, an image/label size mismatch or a label value\n"
    "outside the id table is an error naming the file.\n"
    "  --dataset gta|synthia|cityscapes  the layout of ROOT\n"
    "  --threads N             worker threads (default: the number of CPUs)\n"
    "  --force                 rebuild existing *_labelTrainIds.png (default: keep them;\n"
    "                          the statistics are recomputed either way)\n"
    "  --on-error error|skip   error (default): stop at the first bad item; skip: warn,\n"
    "                          leave it out and report the count\n"
    "  --progress, --no-progress  draw a progress bar on stderr (default: when a terminal)\n"
    "\n"
    "  --help                  this text\n"
    "\n"
    "Errors print one line; the exit status is then 1 (2 for a bad command line).\n";

/* ---- command line ---- */

/* Reports a bad command line; returns the exit status 2. */
static int bad(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int bad(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "cluda_data: error: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "; see --help\n");
  va_end(ap);
  return 2;
}

/* Strict unsigned decimal: digits only, no sign, no overflow. */
static int parse_u64(const char *text, uint64_t *v) {
  if (!text || !*text) return -1;
  uint64_t r = 0;
  for (const char *p = text; *p; p++) {
    if (*p < '0' || *p > '9') return -1;
    uint64_t d = (uint64_t)(*p - '0');
    if (r > (UINT64_MAX - d) / 10) return -1;
    r = r * 10 + d;
  }
  *v = r;
  return 0;
}

static int parse_size(const char *text, int *h, int *w) {
  const char *x = text ? strchr(text, 'x') : NULL;
  if (!x || x == text) return -1;
  char hs[32];
  size_t n = (size_t)(x - text);
  if (n >= sizeof hs) return -1;
  memcpy(hs, text, n);
  hs[n] = '\0';
  uint64_t hv, wv;
  if (parse_u64(hs, &hv) || parse_u64(x + 1, &wv)) return -1;
  if (hv < 1 || wv < 1 || hv > CLUDA_SYNTH_MAX_SIDE || wv > CLUDA_SYNTH_MAX_SIDE) return -1;
  *h = (int)hv, *w = (int)wv;
  return 0;
}

/* Matches argv[*i] against the value flags `names` ("--flag VALUE" or "--flag=VALUE").
 * Returns the flag's index (values[index] set, *i advanced past a separate value), -1 when
 * argv[*i] is none of them, or 2 after reporting a bad command line. */
static int value_flag(int argc, char **argv, int *i, const char *const *names, int count,
                      const char **values) {
  const char *arg = argv[*i];
  for (int n = 0; n < count; n++) {
    size_t len = strlen(names[n]);
    if (strncmp(arg, names[n], len) != 0 || (arg[len] != '\0' && arg[len] != '=')) continue;
    if (values[n]) return -bad("%s given twice", names[n]);
    if (arg[len] == '=')
      values[n] = arg + len + 1;
    else if (*i + 1 < argc)
      values[n] = argv[++*i];
    else
      return -bad("%s needs a value", names[n]);
    return n;
  }
  return -1;
}

/* ---- synth ---- */

typedef enum synth_layout {
  LAYOUT_FLAT = -1,
  LAYOUT_GTA = CLUDA_DATASET_GTA,
  LAYOUT_SYNTHIA = CLUDA_DATASET_SYNTHIA,
  LAYOUT_CITYSCAPES = CLUDA_DATASET_CITYSCAPES
} synth_layout;

typedef struct synth_options {
  cluda_synth_config cfg;
  cluda_synth_split split;
  uint64_t count, start;
  uint64_t val_count; /* cityscapes layout */
  synth_layout layout;
  const char *out;
} synth_options;

enum {
  OPT_DOMAIN,
  OPT_SPLIT,
  OPT_COUNT,
  OPT_SIZE,
  OPT_SEED,
  OPT_OUT,
  OPT_START,
  OPT_GAP,
  OPT_LAYOUT,
  OPT_VAL_COUNT,
  SYNTH_VALUE_FLAGS
};

/* Returns 0, 1 for --help, or 2 after printing what is wrong. */
static int parse_synth(int argc, char **argv, synth_options *o) {
  memset(o, 0, sizeof *o);
  cluda_synth_config_init(&o->cfg);
  static const char *const names[SYNTH_VALUE_FLAGS] = {
      "--domain", "--split", "--count", "--size",   "--seed",
      "--out",    "--start", "--gap",   "--layout", "--val-count"};
  const char *values[SYNTH_VALUE_FLAGS] = {0};
  int shared = 0;
  for (int i = 2; i < argc; i++) {
    const char *arg = argv[i];
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) return 1;
    if (!strcmp(arg, "--shared-layout")) {
      shared = 1;
      continue;
    }
    int which = value_flag(argc, argv, &i, names, SYNTH_VALUE_FLAGS, values);
    if (which < -1) return -which;
    if (which < 0) return bad("unknown option '%s'", arg);
  }
  o->layout = LAYOUT_FLAT;
  if (values[OPT_LAYOUT]) {
    cluda_dataset_kind kind;
    if (cluda_dataset_kind_parse(values[OPT_LAYOUT], &kind).code != CLUDA_OK)
      return bad("--layout '%s' is not gta, synthia or cityscapes", values[OPT_LAYOUT]);
    o->layout = (synth_layout)kind;
    if (values[OPT_SPLIT])
      return bad("--split does not apply with --layout (gta and synthia are train; cityscapes "
                 "writes train and val)");
    if (values[OPT_VAL_COUNT] && o->layout != LAYOUT_CITYSCAPES)
      return bad("--val-count applies to --layout cityscapes only");
    static const int required[] = {OPT_COUNT, OPT_OUT};
    for (int k = 0; k < 2; k++)
      if (!values[required[k]]) return bad("%s is required", names[required[k]]);
    o->cfg.domain = o->layout == LAYOUT_CITYSCAPES ? CLUDA_SYNTH_TARGET : CLUDA_SYNTH_SOURCE;
    o->cfg.height = 128;
    o->cfg.width = 256;
  } else {
    if (values[OPT_VAL_COUNT]) return bad("--val-count needs --layout cityscapes");
    for (int n = OPT_DOMAIN; n <= OPT_OUT; n++)
      if (!values[n]) return bad("%s is required", names[n]);
  }
  if (values[OPT_DOMAIN] && cluda_synth_parse_domain(values[OPT_DOMAIN], &o->cfg.domain))
    return bad("--domain '%s' is not source or target", values[OPT_DOMAIN]);
  if (values[OPT_SPLIT] && cluda_synth_parse_split(values[OPT_SPLIT], &o->split))
    return bad("--split '%s' is not train or val", values[OPT_SPLIT]);
  if (parse_u64(values[OPT_COUNT], &o->count) || o->count < 1)
    return bad("--count '%s' is not a positive integer", values[OPT_COUNT]);
  o->val_count = o->count;
  if (values[OPT_VAL_COUNT] && parse_u64(values[OPT_VAL_COUNT], &o->val_count))
    return bad("--val-count '%s' is not a non-negative integer", values[OPT_VAL_COUNT]);
  if (values[OPT_SIZE] && parse_size(values[OPT_SIZE], &o->cfg.height, &o->cfg.width))
    return bad("--size '%s' is not HxW with sides 1..16384 (e.g. 128x128)", values[OPT_SIZE]);
  if (values[OPT_SEED] && parse_u64(values[OPT_SEED], &o->cfg.seed))
    return bad("--seed '%s' is not an unsigned 64-bit integer", values[OPT_SEED]);
  o->out = values[OPT_OUT];
  if (!*o->out) return bad("--out is empty");
  if (values[OPT_START] && parse_u64(values[OPT_START], &o->start))
    return bad("--start '%s' is not a non-negative integer", values[OPT_START]);
  uint64_t most = o->count > o->val_count ? o->count : o->val_count;
  if (o->start > 0xffffffffu || most > 0x100000000u - o->start)
    return bad("--start + --count exceeds 2^32 images");
  if (most > 0x7fffffff) return bad("--count above 2^31 - 1 images");
  if (values[OPT_GAP]) {
    char *end = NULL;
    errno = 0;
    double g = strtod(values[OPT_GAP], &end);
    if (errno || end == values[OPT_GAP] || *end || !(g >= 0.0 && g <= 1.0))
      return bad("--gap '%s' is not a number in [0, 1]", values[OPT_GAP]);
    o->cfg.gap = (float)g;
  }
  o->cfg.shared_layout = shared;
  return 0;
}

/* mkdir -p */
static cluda_status make_dirs(const char *path) {
  char buf[4096];
  CLUDA_REQUIRE(strlen(path) < sizeof buf, CLUDA_ERR_ARG, "out: path too long: %s", path);
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || *p == '\0') {
      char saved = *p;
      *p = '\0';
      if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return CLUDA_FAIL(CLUDA_ERR_IO, "out: cannot create directory %s: %s", buf,
                          strerror(errno));
      *p = saved;
      if (saved == '\0') break;
    }
  }
  struct stat st;
  CLUDA_REQUIRE(stat(path, &st) == 0 && S_ISDIR(st.st_mode), CLUDA_ERR_IO,
                "out: %s is not a directory", path);
  return cluda_ok();
}

static void flat_path(char *buf, size_t size, const char *dir, uint64_t index, const char *suffix) {
  snprintf(buf, size, "%s/%05" PRIu64 "_%s.png", dir, index, suffix);
}

/* One image of the flat layout; its class counts go to counts[0..18]. */
static cluda_status write_flat(const synth_options *o, uint64_t index, int64_t *counts) {
  cluda_image rgb = {0}, labels = {0}, color = {0};
  char path[4200];
  cluda_status s = cluda_image_create(&rgb, o->cfg.width, o->cfg.height, 3);
  if (s.code == CLUDA_OK) s = cluda_image_create(&labels, o->cfg.width, o->cfg.height, 1);
  if (s.code == CLUDA_OK)
    s = cluda_synth_render(&o->cfg, o->split, index, rgb.pixels, labels.pixels);
  if (s.code == CLUDA_OK) {
    size_t n = (size_t)o->cfg.width * (size_t)o->cfg.height;
    for (size_t i = 0; i < n; i++)
      counts[labels.pixels[i]]++;
    flat_path(path, sizeof path, o->out, index, "rgb");
    s = cluda_png_write(path, &rgb);
  }
  if (s.code == CLUDA_OK) {
    flat_path(path, sizeof path, o->out, index, "labelTrainIds");
    s = cluda_png_write(path, &labels);
  }
  if (s.code == CLUDA_OK) s = cluda_colorize_labels(&labels, &color);
  if (s.code == CLUDA_OK) {
    flat_path(path, sizeof path, o->out, index, "color");
    s = cluda_png_write(path, &color);
  }
  cluda_image_free(&rgb);
  cluda_image_free(&labels);
  cluda_image_free(&color);
  return s;
}

/* Cities of the synthetic Cityscapes layout: frames alternate between two per split. */
static const char *const synth_cities[2][2] = {{"aachen", "bremen"}, {"frankfurt", "lindau"}};

/* The raw label id that the dataset's id table maps to each train id (and to ignore). */
static void raw_ids_of_train_ids(cluda_dataset_kind kind, uint8_t raw_of[256]) {
  uint8_t table[256];
  cluda_dataset_id_table(kind, table, NULL);
  memset(raw_of, 0, 256); /* id 0 (unlabeled / void) maps to ignore in every table */
  for (int id = 255; id >= 1; id--)
    if (table[id] < CLUDA_CITYSCAPES_CLASSES) raw_of[table[id]] = (uint8_t)id;
}

/* One frame of a dataset layout with raw label ids. */
static cluda_status write_layout_frame(const synth_options *o, cluda_synth_split split,
                                       uint64_t index) {
  cluda_dataset_kind kind = (cluda_dataset_kind)o->layout;
  char image_dir[4200], label_dir[4200], image_path[4400], label_path[4400];
  cluda_synth_config cfg = o->cfg;
  if (kind == CLUDA_DATASET_GTA) {
    snprintf(image_dir, sizeof image_dir, "%s/images", o->out);
    snprintf(label_dir, sizeof label_dir, "%s/labels", o->out);
    snprintf(image_path, sizeof image_path, "%s/%05" PRIu64 ".png", image_dir, index);
    snprintf(label_path, sizeof label_path, "%s/%05" PRIu64 ".png", label_dir, index);
    if (index % 4 == 3 && cfg.height > 2) cfg.height -= 2;
  } else if (kind == CLUDA_DATASET_SYNTHIA) {
    snprintf(image_dir, sizeof image_dir, "%s/RGB", o->out);
    snprintf(label_dir, sizeof label_dir, "%s/GT/LABELS", o->out);
    snprintf(image_path, sizeof image_path, "%s/%07" PRIu64 ".png", image_dir, index);
    snprintf(label_path, sizeof label_path, "%s/%07" PRIu64 ".png", label_dir, index);
  } else {
    const char *split_name = cluda_synth_split_name(split);
    const char *city = synth_cities[split][index % 2];
    snprintf(image_dir, sizeof image_dir, "%s/leftImg8bit/%s/%s", o->out, split_name, city);
    snprintf(label_dir, sizeof label_dir, "%s/gtFine/%s/%s", o->out, split_name, city);
    snprintf(image_path, sizeof image_path, "%s/%s_000000_%06" PRIu64 "_leftImg8bit.png", image_dir,
             city, index);
    snprintf(label_path, sizeof label_path, "%s/%s_000000_%06" PRIu64 "_gtFine_labelIds.png",
             label_dir, city, index);
  }
  CLUDA_TRY(make_dirs(image_dir));
  CLUDA_TRY(make_dirs(label_dir));
  uint8_t raw_of[256];
  raw_ids_of_train_ids(kind, raw_of);
  cluda_image rgb = {0}, labels = {0};
  uint16_t *samples = NULL;
  cluda_status s = cluda_image_create(&rgb, cfg.width, cfg.height, 3);
  if (s.code == CLUDA_OK) s = cluda_image_create(&labels, cfg.width, cfg.height, 1);
  if (s.code == CLUDA_OK) s = cluda_synth_render(&cfg, split, index, rgb.pixels, labels.pixels);
  if (s.code == CLUDA_OK) s = cluda_png_write(image_path, &rgb);
  size_t n = (size_t)cfg.width * (size_t)cfg.height;
  for (size_t p = 0; s.code == CLUDA_OK && p < n; p++)
    labels.pixels[p] = raw_of[labels.pixels[p]];
  if (s.code == CLUDA_OK && kind == CLUDA_DATASET_GTA) {
    uint8_t palette[256][3];
    uint8_t table[256];
    cluda_dataset_id_table(kind, table, NULL);
    for (int id = 0; id < 256; id++)
      cluda_label_color(table[id], palette[id]);
    s = cluda_png_write_palette(label_path, &labels, (const uint8_t(*)[3])palette, 256);
  } else if (s.code == CLUDA_OK && kind == CLUDA_DATASET_SYNTHIA) {
    /* R: the class id; G and B as in SYNTHIA, non-zero and above 255, which the reader
     * must ignore. */
    samples = malloc(n * 3 * sizeof *samples);
    if (!samples) s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "out of memory for %s", label_path);
    for (size_t p = 0; samples && p < n; p++) {
      samples[3 * p] = labels.pixels[p];
      samples[3 * p + 1] = (uint16_t)(1 + index % 1000);
      samples[3 * p + 2] = (uint16_t)(0x8000u | labels.pixels[p]);
    }
    if (samples) s = cluda_png_write_rgb16(label_path, cfg.width, cfg.height, samples);
  } else if (s.code == CLUDA_OK) {
    s = cluda_png_write(label_path, &labels);
  }
  free(samples);
  cluda_image_free(&rgb);
  cluda_image_free(&labels);
  return s;
}

/* Runs fn(o, split, start + k, k) for k < count on all threads; returns the first error.
 * Images are independent (pure functions of their index), so any order gives the same
 * files. */
typedef cluda_status (*frame_fn)(const synth_options *o, cluda_synth_split split, uint64_t index,
                                 int64_t *counts);

static cluda_status for_each_frame(const synth_options *o, cluda_synth_split split, uint64_t count,
                                   frame_fn fn, int64_t *counts) {
  cluda_status first = cluda_ok();
  int failed = 0;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t k = 0; k < (int64_t)count; k++) {
    int stop;
#pragma omp atomic read
    stop = failed;
    if (stop) continue;
    cluda_status s =
        fn(o, split, o->start + (uint64_t)k, counts ? counts + k * CLUDA_SYNTH_CLASSES : NULL);
    if (s.code != CLUDA_OK) {
#pragma omp critical(cluda_data_error)
      {
        if (!failed) first = s;
        failed = 1;
      }
    }
  }
  return first;
}

static cluda_status flat_frame(const synth_options *o, cluda_synth_split split, uint64_t index,
                               int64_t *counts) {
  (void)split;
  return write_flat(o, index, counts);
}

static cluda_status layout_frame(const synth_options *o, cluda_synth_split split, uint64_t index,
                                 int64_t *counts) {
  (void)counts;
  return write_layout_frame(o, split, index);
}

static cluda_status run_flat(const synth_options *o) {
  int count = (int)o->count;
  int64_t *counts = calloc((size_t)count * CLUDA_SYNTH_CLASSES, sizeof(int64_t));
  char **files = calloc((size_t)count, sizeof *files);
  cluda_status s = cluda_ok();
  if (!counts || !files)
    s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "count: no memory for the statistics of %d images", count);
  if (s.code == CLUDA_OK) s = for_each_frame(o, o->split, o->count, flat_frame, counts);
  for (int i = 0; s.code == CLUDA_OK && i < count; i++) {
    files[i] = malloc(4200);
    if (!files[i])
      s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "out of memory");
    else
      flat_path(files[i], 4200, o->out, o->start + (uint64_t)i, "labelTrainIds");
  }
  if (s.code == CLUDA_OK)
    s = cluda_dataset_write_class_stats(o->out, count, (const char *const *)files, counts,
                                        CLUDA_SYNTH_CLASSES);
  if (s.code == CLUDA_OK) {
    int64_t total[CLUDA_SYNTH_CLASSES] = {0}, all = 0;
    for (int i = 0; i < count; i++)
      for (int c = 0; c < CLUDA_SYNTH_CLASSES; c++)
        total[c] += counts[(size_t)i * CLUDA_SYNTH_CLASSES + (size_t)c];
    for (int c = 0; c < CLUDA_SYNTH_CLASSES; c++)
      all += total[c];
    printf("cluda_data: wrote %d %s %s images (%dx%d, seed %" PRIu64 ") to %s\n", count,
           cluda_synth_domain_name(o->cfg.domain), cluda_synth_split_name(o->split), o->cfg.height,
           o->cfg.width, o->cfg.seed, o->out);
    printf("class pixel shares:\n");
    for (int c = 0; c < CLUDA_SYNTH_CLASSES; c++)
      printf("  %2d %-14s %7.3f%%\n", c, cluda_cityscapes_class_names[c],
             100.0 * (double)total[c] / (double)all);
  }
  for (int i = 0; files && i < count; i++)
    free(files[i]);
  free(files);
  free(counts);
  return s;
}

static cluda_status run_synth(const synth_options *o) {
  CLUDA_TRY(cluda_synth_check(&o->cfg));
  CLUDA_TRY(make_dirs(o->out));
  if (o->layout == LAYOUT_FLAT) return run_flat(o);
  const char *name = cluda_dataset_kind_name((cluda_dataset_kind)o->layout);
  if (o->layout != LAYOUT_CITYSCAPES) {
    CLUDA_TRY(for_each_frame(o, CLUDA_SYNTH_TRAIN, o->count, layout_frame, NULL));
    printf("cluda_data: wrote %" PRIu64 " %s frames (%s, %dx%d, seed %" PRIu64 ") to %s\n",
           o->count, name, cluda_synth_domain_name(o->cfg.domain), o->cfg.height, o->cfg.width,
           o->cfg.seed, o->out);
  } else {
    CLUDA_TRY(for_each_frame(o, CLUDA_SYNTH_TRAIN, o->count, layout_frame, NULL));
    CLUDA_TRY(for_each_frame(o, CLUDA_SYNTH_VAL, o->val_count, layout_frame, NULL));
    printf("cluda_data: wrote %" PRIu64 " train and %" PRIu64
           " val cityscapes frames (%s, %dx%d, seed %" PRIu64 ") to %s\n",
           o->count, o->val_count, cluda_synth_domain_name(o->cfg.domain), o->cfg.height,
           o->cfg.width, o->cfg.seed, o->out);
  }
  printf("next: cluda_data convert --dataset %s %s\n", name, o->out);
  return cluda_ok();
}

/* ---- convert ---- */

typedef struct convert_options {
  cluda_dataset_kind kind;
  const char *root;
  cluda_convert_options convert;
} convert_options;

enum { OPT_DATASET, OPT_THREADS, OPT_ON_ERROR, CONVERT_VALUE_FLAGS };

/* Returns 0, 1 for --help, or 2 after printing what is wrong. */
static int parse_convert(int argc, char **argv, convert_options *o) {
  memset(o, 0, sizeof *o);
  static const char *const names[CONVERT_VALUE_FLAGS] = {"--dataset", "--threads", "--on-error"};
  const char *values[CONVERT_VALUE_FLAGS] = {0};
  int progress = isatty(STDERR_FILENO), force = 0;
  for (int i = 2; i < argc; i++) {
    const char *arg = argv[i];
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) return 1;
    if (!strcmp(arg, "--force") || !strcmp(arg, "--progress") || !strcmp(arg, "--no-progress")) {
      if (!strcmp(arg, "--force"))
        force = 1;
      else
        progress = !strcmp(arg, "--progress");
      continue;
    }
    int which = value_flag(argc, argv, &i, names, CONVERT_VALUE_FLAGS, values);
    if (which < -1) return -which;
    if (which >= 0) continue;
    if (arg[0] == '-' && arg[1]) return bad("unknown option '%s'", arg);
    if (o->root) return bad("more than one root given ('%s' and '%s')", o->root, arg);
    o->root = arg;
  }
  if (!values[OPT_DATASET]) return bad("--dataset is required");
  if (cluda_dataset_kind_parse(values[OPT_DATASET], &o->kind).code != CLUDA_OK)
    return bad("--dataset '%s' is not gta, synthia or cityscapes", values[OPT_DATASET]);
  if (!o->root || !*o->root) return bad("no dataset root given");
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  uint64_t threads = cpus > 0 ? (uint64_t)cpus : 1;
  if (values[OPT_THREADS] &&
      (parse_u64(values[OPT_THREADS], &threads) || threads < 1 || threads > 1024))
    return bad("--threads '%s' is not an integer in 1..1024", values[OPT_THREADS]);
  int skip = 0;
  if (values[OPT_ON_ERROR]) {
    if (strcmp(values[OPT_ON_ERROR], "error") && strcmp(values[OPT_ON_ERROR], "skip"))
      return bad("--on-error '%s' is not error or skip", values[OPT_ON_ERROR]);
    skip = !strcmp(values[OPT_ON_ERROR], "skip");
  }
  o->convert = (cluda_convert_options){
      .threads = (int)threads, .force = force, .progress = progress, .skip_bad = skip};
  return 0;
}

/* Converts one split; adds its report to *total. */
static cluda_status convert_split(const convert_options *o, const char *split,
                                  cluda_convert_report *total) {
  /* Lenient: an image without a label is one more bad item, reported (or skipped) in item
   * order like the others. */
  cluda_dataset ds;
  CLUDA_TRY(cluda_dataset_open_lenient(&ds, o->kind, o->root, split, NULL));
  cluda_convert_report report;
  cluda_status s = cluda_dataset_convert(&ds, &o->convert, &report);
  if (s.code == CLUDA_OK) {
    printf("cluda_data: %s %s: %d images: %d labels converted, %d kept, %d skipped\n",
           cluda_dataset_kind_name(o->kind), ds.split, ds.count, report.converted, report.kept,
           report.skipped);
    total->converted += report.converted;
    total->kept += report.kept;
    total->skipped += report.skipped;
  }
  cluda_dataset_free(&ds);
  return s;
}

static cluda_status run_convert(const convert_options *o) {
  cluda_convert_report total = {0};
  if (o->kind == CLUDA_DATASET_CITYSCAPES) {
    CLUDA_TRY(convert_split(o, "train", &total));
    /* val is evaluated, never sampled: its labels are converted, it gets no statistics. */
    char val_dir[4200];
    struct stat st;
    snprintf(val_dir, sizeof val_dir, "%s/leftImg8bit/val", o->root);
    if (stat(val_dir, &st) == 0) CLUDA_TRY(convert_split(o, "val", &total));
  } else {
    CLUDA_TRY(convert_split(o, NULL, &total));
  }
  printf("cluda_data: statistics written to %s/{%s,%s,%s}\n", o->root, CLUDA_DATASET_STATS_LIST,
         CLUDA_DATASET_STATS_DICT, CLUDA_DATASET_STATS_BY_CLASS);
  if (total.skipped)
    printf("cluda_data: %d bad items skipped (see the warnings above)\n", total.skipped);
  return cluda_ok();
}

int main(int argc, char **argv) {
  if (argc < 2) return bad("no command given (expected 'synth' or 'convert')");
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    fputs(usage, stdout);
    return 0;
  }
  int is_synth = !strcmp(argv[1], "synth"), is_convert = !strcmp(argv[1], "convert");
  if (!is_synth && !is_convert)
    return bad("unknown command '%s' (expected 'synth' or 'convert')", argv[1]);
  synth_options synth;
  convert_options convert;
  int rc = is_synth ? parse_synth(argc, argv, &synth) : parse_convert(argc, argv, &convert);
  if (rc == 1) {
    fputs(usage, stdout);
    return 0;
  }
  if (rc != 0) return rc;
  cluda_status s = is_synth ? run_synth(&synth) : run_convert(&convert);
  if (s.code != CLUDA_OK) {
    fflush(stdout);
    fprintf(stderr, "cluda_data: error: %s\n", s.message);
    return 1;
  }
  return 0;
}

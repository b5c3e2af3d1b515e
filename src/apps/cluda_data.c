/* cluda_data: writes data sets to disk. `cluda_data synth` renders the synthetic
 * two-domain street scenes (include/cluda/synthetic.h) as PNGs in the layout the training
 * pipeline reads, with the Rare Class Sampling statistics of algorithm.md 2.1. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cluda/fileio.h"
#include "cluda/image.h"
#include "cluda/synthetic.h"

_Static_assert((int)CLUDA_SYNTH_CLASSES == (int)CLUDA_CITYSCAPES_CLASSES,
               "synthetic classes are Cityscapes");

static const char usage[] =
    "usage: cluda_data synth --domain source|target --split train|val --count N\n"
    "                        --size HxW --seed S --out DIR [options]\n"
    "\n"
    "Renders N synthetic street scenes (19 Cityscapes classes; docs/synthetic-data.md) and\n"
    "writes, for each index i (zero-padded to 5 digits):\n"
    "  <out>/<i>_rgb.png             the image (8-bit RGB)\n"
    "  <out>/<i>_labelTrainIds.png   train ids 0..18 (8-bit gray)\n"
    "  <out>/<i>_color.png           the labels in Cityscapes colours\n"
    "and the Rare Class Sampling statistics (pixel counts per class and image):\n"
    "  <out>/sample_class_stats.json       [{\"file\": ..., \"<class>\": count, ...}, ...]\n"
    "  <out>/sample_class_stats_dict.json  {file: {\"<class>\": count, ...}, ...}\n"
    "  <out>/samples_with_class.json       {\"<class>\": [[file, count], ...], ...}\n"
    "\n"
    "  --domain source|target  rendering style: source is flat, saturated and sunlit;\n"
    "                          target has another palette, overcast light, haze, blur, noise\n"
    "  --split train|val       which split's scenes (disjoint random streams)\n"
    "  --count N               number of images (N >= 1)\n"
    "  --size HxW              image height x width, e.g. 128x128 (1..16384 each)\n"
    "  --seed S                data seed (unsigned 64-bit); same arguments, same bytes\n"
    "  --out DIR               output directory (created if missing)\n"
    "  --start I               first index (default 0): images I .. I+N-1\n"
    "  --gap G                 target style strength in [0, 1] (default 1)\n"
    "  --shared-layout         the same scenes for both domains (paired figures)\n"
    "  --help                  this text\n"
    "\n"
    "Errors print one line; the exit status is then 1 (2 for a bad command line).\n";

typedef struct options {
  cluda_synth_config cfg;
  cluda_synth_split split;
  uint64_t count, start;
  const char *out;
} options;

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

/* Returns 0, 1 for --help, or 2 after printing what is wrong. */
static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof *o);
  cluda_synth_config_init(&o->cfg);
  if (argc < 2) return bad("no command given (expected 'synth')");
  if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) return 1;
  if (strcmp(argv[1], "synth")) return bad("unknown command '%s' (expected 'synth')", argv[1]);
  static const char *const names[] = {"--domain", "--split", "--count", "--size",
                                      "--seed",   "--out",   "--start", "--gap"};
  enum { NNAMES = sizeof names / sizeof names[0] };
  const char *values[NNAMES] = {0};
  int shared = 0;
  for (int i = 2; i < argc; i++) {
    const char *arg = argv[i];
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) return 1;
    if (!strcmp(arg, "--shared-layout")) {
      shared = 1;
      continue;
    }
    int which = -1;
    const char *value = NULL;
    for (int n = 0; n < NNAMES; n++) {
      size_t len = strlen(names[n]);
      if (!strncmp(arg, names[n], len) && (arg[len] == '\0' || arg[len] == '=')) {
        which = n;
        if (arg[len] == '=')
          value = arg + len + 1;
        else if (i + 1 < argc)
          value = argv[++i];
        else
          return bad("%s needs a value", names[n]);
      }
    }
    if (which < 0) return bad("unknown option '%s'", arg);
    if (values[which]) return bad("%s given twice", names[which]);
    values[which] = value;
  }
  for (int n = 0; n < 6; n++)
    if (!values[n]) return bad("%s is required", names[n]);
  if (cluda_synth_parse_domain(values[0], &o->cfg.domain))
    return bad("--domain '%s' is not source or target", values[0]);
  if (cluda_synth_parse_split(values[1], &o->split))
    return bad("--split '%s' is not train or val", values[1]);
  if (parse_u64(values[2], &o->count) || o->count < 1)
    return bad("--count '%s' is not a positive integer", values[2]);
  if (parse_size(values[3], &o->cfg.height, &o->cfg.width))
    return bad("--size '%s' is not HxW with sides 1..16384 (e.g. 128x128)", values[3]);
  if (parse_u64(values[4], &o->cfg.seed))
    return bad("--seed '%s' is not an unsigned 64-bit integer", values[4]);
  o->out = values[5];
  if (!*o->out) return bad("--out is empty");
  if (values[6] && parse_u64(values[6], &o->start))
    return bad("--start '%s' is not a non-negative integer", values[6]);
  if (o->start > 0xffffffffu || o->count > 0x100000000u - o->start)
    return bad("--start + --count exceeds 2^32 images");
  if (values[7]) {
    char *end = NULL;
    errno = 0;
    double g = strtod(values[7], &end);
    if (errno || end == values[7] || *end || !(g >= 0.0 && g <= 1.0))
      return bad("--gap '%s' is not a number in [0, 1]", values[7]);
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

static void file_path(char *buf, size_t size, const char *dir, uint64_t index, const char *suffix) {
  snprintf(buf, size, "%s/%05" PRIu64 "_%s.png", dir, index, suffix);
}

/* Writes a JSON string literal (paths may hold quotes or backslashes). */
static void json_string(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      fprintf(f, "\\%c", c);
    else if (c < 0x20)
      fprintf(f, "\\u%04x", c);
    else
      fputc(c, f);
  }
  fputc('"', f);
}

enum { STATS_LIST, STATS_DICT, STATS_BY_CLASS };

static void write_stats(FILE *f, int kind, const options *o, const int64_t *counts) {
  char path[4200];
  if (kind == STATS_BY_CLASS) {
    fputs("{", f);
    int first_class = 1;
    for (int c = 0; c < CLUDA_SYNTH_CLASSES; c++) {
      int first = 1;
      for (uint64_t i = 0; i < o->count; i++) {
        int64_t n = counts[i * CLUDA_SYNTH_CLASSES + (uint64_t)c];
        if (n <= 0) continue;
        if (first) fprintf(f, "%s\n  \"%d\": [", first_class ? "" : ",", c);
        file_path(path, sizeof path, o->out, o->start + i, "labelTrainIds");
        fputs(first ? "\n    [" : ",\n    [", f);
        json_string(f, path);
        fprintf(f, ", %" PRId64 "]", n);
        first = 0, first_class = 0;
      }
      if (!first) fputs("\n  ]", f);
    }
    fputs("\n}\n", f);
    return;
  }
  fputs(kind == STATS_LIST ? "[" : "{", f);
  for (uint64_t i = 0; i < o->count; i++) {
    file_path(path, sizeof path, o->out, o->start + i, "labelTrainIds");
    fputs(i ? ",\n  " : "\n  ", f);
    if (kind == STATS_LIST) {
      fputs("{\"file\": ", f);
      json_string(f, path);
    } else {
      json_string(f, path);
      fputs(": {", f);
    }
    int first = kind == STATS_DICT;
    for (int c = 0; c < CLUDA_SYNTH_CLASSES; c++) {
      int64_t n = counts[i * CLUDA_SYNTH_CLASSES + (uint64_t)c];
      if (n <= 0) continue;
      fprintf(f, "%s\"%d\": %" PRId64, first ? "" : ", ", c, n);
      first = 0;
    }
    fputs("}", f);
  }
  fputs(kind == STATS_LIST ? "\n]\n" : "\n}\n", f);
}

static cluda_status write_json(const options *o, const char *name, int kind,
                               const int64_t *counts) {
  char path[4200], tmp[4300];
  snprintf(path, sizeof path, "%s/%s", o->out, name);
  CLUDA_TRY(cluda_temp_path(path, tmp, sizeof tmp));
  FILE *f = fopen(tmp, "w");
  CLUDA_REQUIRE(f, CLUDA_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
  write_stats(f, kind, o, counts);
  int failed = ferror(f);
  if (fclose(f) != 0 || failed) {
    remove(tmp);
    return CLUDA_FAIL(CLUDA_ERR_IO, "cannot write %s", path);
  }
  return cluda_publish_file(tmp, path);
}

/* Renders and writes one image; its class counts go to counts[0..18]. */
static cluda_status write_one(const options *o, uint64_t index, int64_t *counts) {
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
    file_path(path, sizeof path, o->out, index, "rgb");
    s = cluda_png_write(path, &rgb);
  }
  if (s.code == CLUDA_OK) {
    file_path(path, sizeof path, o->out, index, "labelTrainIds");
    s = cluda_png_write(path, &labels);
  }
  if (s.code == CLUDA_OK) s = cluda_colorize_labels(&labels, &color);
  if (s.code == CLUDA_OK) {
    file_path(path, sizeof path, o->out, index, "color");
    s = cluda_png_write(path, &color);
  }
  cluda_image_free(&rgb);
  cluda_image_free(&labels);
  cluda_image_free(&color);
  return s;
}

static cluda_status run(const options *o) {
  CLUDA_TRY(cluda_synth_check(&o->cfg));
  CLUDA_TRY(make_dirs(o->out));
  CLUDA_REQUIRE(o->count <= (uint64_t)(SIZE_MAX / sizeof(int64_t) / CLUDA_SYNTH_CLASSES),
                CLUDA_ERR_ARG, "count: %" PRIu64 " is too many images", o->count);
  int64_t *counts = calloc((size_t)o->count * CLUDA_SYNTH_CLASSES, sizeof(int64_t));
  CLUDA_REQUIRE(counts, CLUDA_ERR_ALLOC,
                "count: no memory for the statistics of %" PRIu64 " images", o->count);
  cluda_status first = cluda_ok();
  int failed = 0;
  /* Images are independent (a pure function of their index), so any order gives the
   * same files. */
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t i = 0; i < (int64_t)o->count; i++) {
    int stop;
#pragma omp atomic read
    stop = failed;
    if (stop) continue;
    cluda_status s = write_one(o, o->start + (uint64_t)i, counts + i * CLUDA_SYNTH_CLASSES);
    if (s.code != CLUDA_OK) {
#pragma omp critical(cluda_data_error)
      {
        if (!failed) first = s;
        failed = 1;
      }
    }
  }
  cluda_status s = first;
  if (s.code == CLUDA_OK) s = write_json(o, "sample_class_stats.json", STATS_LIST, counts);
  if (s.code == CLUDA_OK) s = write_json(o, "sample_class_stats_dict.json", STATS_DICT, counts);
  if (s.code == CLUDA_OK) s = write_json(o, "samples_with_class.json", STATS_BY_CLASS, counts);
  if (s.code == CLUDA_OK) {
    int64_t total[CLUDA_SYNTH_CLASSES] = {0}, all = 0;
    for (uint64_t i = 0; i < o->count; i++)
      for (int c = 0; c < CLUDA_SYNTH_CLASSES; c++)
        total[c] += counts[i * CLUDA_SYNTH_CLASSES + (uint64_t)c];
    for (int c = 0; c < CLUDA_SYNTH_CLASSES; c++)
      all += total[c];
    printf("cluda_data: wrote %" PRIu64 " %s %s images (%dx%d, seed %" PRIu64 ") to %s\n", o->count,
           cluda_synth_domain_name(o->cfg.domain), cluda_synth_split_name(o->split), o->cfg.height,
           o->cfg.width, o->cfg.seed, o->out);
    printf("class pixel shares:\n");
    for (int c = 0; c < CLUDA_SYNTH_CLASSES; c++)
      printf("  %2d %-14s %7.3f%%\n", c, cluda_cityscapes_class_names[c],
             100.0 * (double)total[c] / (double)all);
  }
  free(counts);
  return s;
}

int main(int argc, char **argv) {
  options o;
  int rc = parse_args(argc, argv, &o);
  if (rc == 1) {
    fputs(usage, stdout);
    return 0;
  }
  if (rc != 0) return rc;
  cluda_status s = run(&o);
  if (s.code != CLUDA_OK) {
    fflush(stdout);
    fprintf(stderr, "cluda_data: error: %s\n", s.message);
    return 1;
  }
  return 0;
}

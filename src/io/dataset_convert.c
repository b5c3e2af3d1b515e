/* `cluda_data convert`: raw labels -> *_labelTrainIds.png and the Rare Class Sampling
 * statistics in the reference tools' JSON formats (DAFormer
 * tools/convert_datasets/{gta,synthia,cityscapes}.py, algorithm.md 2.1 and 8). Items are converted
 * on worker threads that claim them in index order; every result is kept per item and the files are
 * written from those in item order, so the output does not depend on the thread count. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluda/dataset.h"
#include "cluda/fileio.h"
#include "dataset_internal.h"

/* ---- the statistics files ---- */

/* Writes s as a JSON string the way Python's json.dump (ensure_ascii) writes the str that
 * os.fsdecode made of it: non-ASCII as \uXXXX (UTF-16 pairs above U+FFFF), bytes that are
 * not UTF-8 as the surrogate-escapes \udc80..\udcff. */
static void write_json_string(FILE *f, const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  fputc('"', f);
  while (*p) {
    unsigned c = *p;
    if (c < 0x80) {
      const char *escape = c == '"'    ? "\\\""
                           : c == '\\' ? "\\\\"
                           : c == '\n' ? "\\n"
                           : c == '\r' ? "\\r"
                           : c == '\t' ? "\\t"
                           : c == '\b' ? "\\b"
                           : c == '\f' ? "\\f"
                                       : NULL;
      if (escape)
        fputs(escape, f);
      else if (c < 0x20 || c == 0x7f) /* Python escapes everything outside ' '..'~' */
        fprintf(f, "\\u%04x", c);
      else
        fputc((int)c, f);
      p++;
      continue;
    }
    /* A UTF-8 sequence: lead byte, continuation bytes, shortest form, no surrogates. */
    int extra = c >= 0xC2 && c <= 0xDF   ? 1
                : c >= 0xE0 && c <= 0xEF ? 2
                : c >= 0xF0 && c <= 0xF4 ? 3
                                         : 0;
    unsigned cp = extra == 1 ? c & 0x1F : extra == 2 ? c & 0x0F : c & 0x07;
    int valid = extra > 0;
    for (int k = 1; valid && k <= extra; k++) {
      if ((p[k] & 0xC0) != 0x80) valid = 0;
      cp = cp << 6 | (p[k] & 0x3Fu);
    }
    if (valid) {
      static const unsigned min_code[4] = {0, 0x80, 0x800, 0x10000};
      valid = cp >= min_code[extra] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
    }
    if (!valid) {
      fprintf(f, "\\u%04x", 0xDC00 + c);
      p++;
    } else if (cp > 0xFFFF) {
      cp -= 0x10000;
      fprintf(f, "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
      p += 1 + extra;
    } else {
      fprintf(f, "\\u%04x", cp);
      p += 1 + extra;
    }
  }
  fputc('"', f);
}

typedef struct stats_table {
  int count, num_classes;
  const char *const *files;
  const int64_t *counts;
} stats_table;

static int64_t stats_count(const stats_table *t, int e, int c) {
  return t->counts[(size_t)e * (size_t)t->num_classes + (size_t)c];
}

/* Members of one image's statistics object: `"c": n` for the classes present, in class
 * order (the reference inserts them in its id table's order, which is train-id order). */
static void write_class_members(FILE *f, const stats_table *t, int e, const char *indent,
                                int *members) {
  for (int c = 0; c < t->num_classes; c++) {
    int64_t n = stats_count(t, e, c);
    if (n <= 0) continue;
    fprintf(f, "%s\n%s\"%d\": %" PRId64, *members ? "," : "", indent, c, n);
    (*members)++;
  }
}

/* sample_class_stats.json: [{"<class>": n, ..., "file": path}, ...] */
static void write_stats_list(FILE *f, const stats_table *t) {
  if (t->count == 0) {
    fputs("[]", f);
    return;
  }
  fputs("[", f);
  for (int e = 0; e < t->count; e++) {
    fputs(e ? ",\n  {" : "\n  {", f);
    int members = 0;
    write_class_members(f, t, e, "    ", &members);
    fputs(members ? ",\n    \"file\": " : "\n    \"file\": ", f);
    write_json_string(f, t->files[e]);
    fputs("\n  }", f);
  }
  fputs("\n]", f);
}

/* sample_class_stats_dict.json: {path: {"<class>": n, ...}, ...} */
static void write_stats_dict(FILE *f, const stats_table *t) {
  if (t->count == 0) {
    fputs("{}", f);
    return;
  }
  fputs("{", f);
  for (int e = 0; e < t->count; e++) {
    fputs(e ? ",\n  " : "\n  ", f);
    write_json_string(f, t->files[e]);
    fputs(": {", f);
    int members = 0;
    write_class_members(f, t, e, "    ", &members);
    fputs(members ? "\n  }" : "}", f);
  }
  fputs("\n}", f);
}

/* samples_with_class.json: {"<class>": [[path, n], ...], ...}, the classes in the order the
 * reference meets them walking the images (each image's classes in class order). */
static cluda_status write_samples_with_class(FILE *f, const stats_table *t) {
  int *order = malloc((size_t)t->num_classes * sizeof *order);
  uint8_t *seen = calloc((size_t)t->num_classes, 1);
  if (!order || !seen) {
    free(order);
    free(seen);
    return CLUDA_FAIL(CLUDA_ERR_ALLOC, "write_class_stats: out of memory");
  }
  int classes = 0;
  for (int e = 0; e < t->count; e++)
    for (int c = 0; c < t->num_classes; c++)
      if (stats_count(t, e, c) > 0 && !seen[c]) {
        seen[c] = 1;
        order[classes++] = c;
      }
  if (classes == 0) fputs("{}", f);
  for (int k = 0; k < classes; k++) {
    int c = order[k];
    fprintf(f, "%s\n  \"%d\": [", k ? "," : "{", c);
    int first = 1;
    for (int e = 0; e < t->count; e++) {
      int64_t n = stats_count(t, e, c);
      if (n <= 0) continue;
      fputs(first ? "\n    [\n      " : ",\n    [\n      ", f);
      write_json_string(f, t->files[e]);
      fprintf(f, ",\n      %" PRId64 "\n    ]", n);
      first = 0;
    }
    fputs("\n  ]", f);
  }
  if (classes > 0) fputs("\n}", f);
  free(order);
  free(seen);
  return cluda_ok();
}

enum { STATS_LIST, STATS_DICT, STATS_BY_CLASS };

static cluda_status write_stats_file(const char *dir, const char *name, int kind,
                                     const stats_table *t) {
  char *path = cluda_dataset_path_join(dir, name);
  CLUDA_REQUIRE(path != NULL, CLUDA_ERR_ALLOC, "write_class_stats: out of memory");
  char tmp[4200];
  cluda_status s = cluda_temp_path(path, tmp, sizeof tmp);
  FILE *f = NULL;
  if (s.code == CLUDA_OK) {
    f = fopen(tmp, "w");
    if (!f) s = CLUDA_FAIL(CLUDA_ERR_IO, "cannot write %s: %s", path, strerror(errno));
  }
  if (f) {
    if (kind == STATS_LIST)
      write_stats_list(f, t);
    else if (kind == STATS_DICT)
      write_stats_dict(f, t);
    else
      s = write_samples_with_class(f, t);
    int failed = ferror(f);
    if (fclose(f) != 0 || failed) {
      if (s.code == CLUDA_OK) s = CLUDA_FAIL(CLUDA_ERR_IO, "cannot write %s", path);
    }
    if (s.code == CLUDA_OK)
      s = cluda_publish_file(tmp, path);
    else
      remove(tmp);
  }
  free(path);
  return s;
}

cluda_status cluda_dataset_write_class_stats(const char *dir, int count, const char *const *files,
                                             const int64_t *counts, int num_classes) {
  CLUDA_REQUIRE(dir != NULL && count >= 0 && (count == 0 || (files != NULL && counts != NULL)),
                CLUDA_ERR_ARG, "write_class_stats: bad arguments");
  CLUDA_REQUIRE(num_classes >= 1, CLUDA_ERR_ARG, "write_class_stats: num_classes %d < 1",
                num_classes);
  stats_table t = {count, num_classes, files, counts};
  CLUDA_TRY(write_stats_file(dir, CLUDA_DATASET_STATS_LIST, STATS_LIST, &t));
  CLUDA_TRY(write_stats_file(dir, CLUDA_DATASET_STATS_DICT, STATS_DICT, &t));
  return write_stats_file(dir, CLUDA_DATASET_STATS_BY_CLASS, STATS_BY_CLASS, &t);
}

/* ---- converting one item ---- */

/* ITEM_PENDING: not reached because an earlier item stopped the conversion. */
typedef enum item_outcome { ITEM_PENDING = 0, ITEM_CONVERTED, ITEM_KEPT, ITEM_BAD } item_outcome;

typedef struct item_result {
  item_outcome outcome;
  cluda_status status; /* why the item is bad */
  int64_t counts[CLUDA_CITYSCAPES_CLASSES];
} item_result;

static void convert_item(const cluda_dataset *ds, int i, int force, item_result *result) {
  const cluda_dataset_item *item = &ds->items[i];
  cluda_image labels = {0};
  int keep = cluda_dataset_file_exists(item->label_train) && (!force || !item->label_raw);
  const char *label_path = keep ? item->label_train : item->label_raw;
  cluda_status s;
  if (keep) {
    s = cluda_png_read_labels(item->label_train, &labels);
    if (s.code == CLUDA_OK) s = cluda_dataset_check_train_ids(&labels, item->label_train);
  } else if (item->label_raw) {
    s = cluda_dataset_read_raw_labels(ds, i, &labels);
  } else {
    s = cluda_dataset_missing_label(ds, i);
  }
  /* The pair must match before a train-id file is written for it. Only the image header is
   * read: decoding every image would multiply the conversion time. */
  int width = 0, height = 0;
  if (s.code == CLUDA_OK) s = cluda_png_read_size(item->image, &width, &height);
  if (s.code == CLUDA_OK && (width != labels.width || height != labels.height))
    s = CLUDA_FAIL(CLUDA_ERR_SHAPE, "%s: image %s is %dx%d but its label %s is %dx%d",
                   cluda_dataset_kind_name(ds->kind), item->image, width, height, label_path,
                   labels.width, labels.height);
  if (s.code == CLUDA_OK && !keep) s = cluda_png_write(item->label_train, &labels);
  memset(result->counts, 0, sizeof result->counts);
  if (s.code == CLUDA_OK) {
    size_t n = (size_t)labels.width * (size_t)labels.height;
    for (size_t p = 0; p < n; p++)
      if (labels.pixels[p] < CLUDA_CITYSCAPES_CLASSES) result->counts[labels.pixels[p]]++;
  }
  cluda_image_free(&labels);
  result->outcome = s.code != CLUDA_OK ? ITEM_BAD : keep ? ITEM_KEPT : ITEM_CONVERTED;
  result->status = s;
}

/* ---- progress bar ---- */

typedef struct progress_bar {
  int enabled, total;
  char title[64];
  double start, last_draw;
} progress_bar;

static double seconds_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Redraws at most 10 times a second, and always for the last item. */
static void progress_draw(progress_bar *bar, int done) {
  double now = seconds_now();
  if (done < bar->total && now - bar->last_draw < 0.1) return;
  bar->last_draw = now;
  enum { WIDTH = 30 };
  char cells[WIDTH + 1];
  int filled = (int)((int64_t)WIDTH * done / bar->total);
  for (int k = 0; k < WIDTH; k++)
    cells[k] = k < filled ? '#' : '-';
  cells[WIDTH] = '\0';
  double elapsed = now - bar->start;
  fprintf(stderr, "\r%s [%s] %d/%d %3d%% %.1f/s", bar->title, cells, done, bar->total,
          (int)(100 * (int64_t)done / bar->total), elapsed > 0 ? done / elapsed : 0.0);
  if (done == bar->total) fputc('\n', stderr);
  fflush(stderr);
}

/* ---- the converter ---- */

static cluda_status write_statistics(const cluda_dataset *ds, const item_result *results) {
  const char **files = malloc((size_t)ds->count * sizeof *files);
  int64_t *counts = malloc((size_t)ds->count * CLUDA_CITYSCAPES_CLASSES * sizeof *counts);
  if (!files || !counts) {
    free(files);
    free(counts);
    return CLUDA_FAIL(CLUDA_ERR_ALLOC, "convert: out of memory for the statistics of %s", ds->root);
  }
  int entries = 0;
  for (int i = 0; i < ds->count; i++) {
    if (results[i].outcome != ITEM_CONVERTED && results[i].outcome != ITEM_KEPT) continue;
    files[entries] = ds->items[i].stats_name;
    memcpy(counts + (size_t)entries * CLUDA_CITYSCAPES_CLASSES, results[i].counts,
           sizeof results[i].counts);
    entries++;
  }
  cluda_status s =
      cluda_dataset_write_class_stats(ds->root, entries, files, counts, CLUDA_CITYSCAPES_CLASSES);
  free(files);
  free(counts);
  return s;
}

cluda_status cluda_dataset_convert(const cluda_dataset *ds, const cluda_convert_options *opt,
                                   cluda_convert_report *report) {
  CLUDA_REQUIRE(ds != NULL && ds->items != NULL && opt != NULL && report != NULL, CLUDA_ERR_ARG,
                "dataset_convert: NULL argument");
  CLUDA_REQUIRE(opt->threads >= 1, CLUDA_ERR_ARG, "dataset_convert: threads must be >= 1, got %d",
                opt->threads);
  memset(report, 0, sizeof *report);
  item_result *results = calloc((size_t)ds->count, sizeof *results);
  CLUDA_REQUIRE(results != NULL, CLUDA_ERR_ALLOC, "convert: out of memory for %d items", ds->count);
  progress_bar bar = {.enabled = opt->progress, .total = ds->count};
  snprintf(bar.title, sizeof bar.title, "convert %s %s", cluda_dataset_kind_name(ds->kind),
           ds->split);
  bar.start = seconds_now();
  int threads = opt->threads < ds->count ? opt->threads : ds->count;
  int next = 0, done = 0, stop = 0;
#pragma omp parallel num_threads(threads)
  for (;;) {
    int stopping, i;
#pragma omp atomic read
    stopping = stop;
    if (stopping) break;
#pragma omp atomic capture
    i = next++;
    if (i >= ds->count) break;
    convert_item(ds, i, opt->force, &results[i]);
    /* Items are claimed in index order, so every item before the first bad one has been
     * claimed by then and finishes: the error reported is always the first bad item's. */
    if (results[i].outcome == ITEM_BAD && !opt->skip_bad) {
#pragma omp atomic write
      stop = 1;
    }
    if (bar.enabled) {
#pragma omp critical(cluda_convert_progress)
      progress_draw(&bar, ++done);
    }
  }
  if (bar.enabled && done < ds->count) fputc('\n', stderr); /* stopped early */

  cluda_status s = cluda_ok();
  for (int i = 0; i < ds->count && s.code == CLUDA_OK; i++) {
    if (results[i].outcome != ITEM_BAD) continue;
    if (!opt->skip_bad) {
      s = results[i].status;
      break;
    }
    fprintf(stderr, "warning: skipped %s: %s\n", ds->items[i].image, results[i].status.message);
  }
  for (int i = 0; i < ds->count; i++) {
    report->converted += results[i].outcome == ITEM_CONVERTED;
    report->kept += results[i].outcome == ITEM_KEPT;
    report->skipped += results[i].outcome == ITEM_BAD;
  }
  int training = ds->kind != CLUDA_DATASET_CITYSCAPES || !strcmp(ds->split, "train");
  if (s.code == CLUDA_OK && training) s = write_statistics(ds, results);
  free(results);
  return s;
}

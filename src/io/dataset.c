/* The dataset layouts on disk (algorithm.md 8): scanning a root into image/label items,
 * reading images and labels (raw ids through the id table, or converted train ids) and the
 * per-image class counts of sample_class_stats.json. The converter is in
 * dataset_convert.c. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cluda/dataset.h"
#include "dataset_internal.h"

/* ---- paths ---- */

char *cluda_dataset_path_join(const char *dir, const char *name) {
  size_t n = strlen(dir);
  int slash = n > 0 && dir[n - 1] != '/'; /* os.path.join: no second slash */
  size_t size = n + (size_t)slash + strlen(name) + 1;
  char *path = malloc(size);
  if (path) snprintf(path, size, "%s%s%s", dir, slash ? "/" : "", name);
  return path;
}

int cluda_dataset_file_exists(const char *path) {
  struct stat st;
  return path && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int is_directory(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n > m && strcmp(s + n - m, suffix) == 0;
}

static int compare_strings(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

typedef struct name_list {
  char **names;
  int count, cap;
} name_list;

static void name_list_free(name_list *list) {
  for (int i = 0; i < list->count; i++)
    free(list->names[i]);
  free(list->names);
  memset(list, 0, sizeof *list);
}

/* The sorted names in dir that are regular files ending in suffix (want_dirs = 0) or
 * subdirectories (want_dirs = 1); hidden entries are skipped. */
static cluda_status list_directory(const char *dir, const char *suffix, int want_dirs,
                                   name_list *list) {
  memset(list, 0, sizeof *list);
  DIR *d = opendir(dir);
  CLUDA_REQUIRE(d != NULL, CLUDA_ERR_IO, "dataset: cannot open directory %s: %s", dir,
                strerror(errno));
  cluda_status s = cluda_ok();
  for (struct dirent *e = readdir(d); e && s.code == CLUDA_OK; e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    if (!want_dirs && !ends_with(e->d_name, suffix)) continue;
    char *path = cluda_dataset_path_join(dir, e->d_name);
    if (!path) {
      s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "dataset: out of memory listing %s", dir);
      break;
    }
    int keep = want_dirs ? is_directory(path) : cluda_dataset_file_exists(path);
    free(path);
    if (!keep) continue;
    if (list->count == list->cap) {
      int cap = list->cap ? 2 * list->cap : 256;
      char **grown = realloc(list->names, (size_t)cap * sizeof *grown);
      if (!grown) {
        s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "dataset: out of memory listing %s", dir);
        break;
      }
      list->names = grown;
      list->cap = cap;
    }
    list->names[list->count] = strdup(e->d_name);
    if (!list->names[list->count]) {
      s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "dataset: out of memory listing %s", dir);
      break;
    }
    list->count++;
  }
  closedir(d);
  if (s.code != CLUDA_OK) {
    name_list_free(list);
    return s;
  }
  if (list->count > 1)
    qsort(list->names, (size_t)list->count, sizeof *list->names, compare_strings);
  return cluda_ok();
}

/* ---- layouts ---- */

/* Where one layout keeps its files, relative to the root (algorithm.md 8.1). Cityscapes
 * adds <split>/<city>/ below both directories. */
typedef struct layout {
  const char *image_dir, *label_dir;
  const char *image_suffix;       /* an image is <stem><image_suffix> */
  const char *raw_label_suffix;   /* its raw label <stem><raw_label_suffix> */
  const char *train_label_suffix; /* its converted label */
  const char *hint;               /* what the layout looks like, for errors */
} layout;

static const layout layouts[CLUDA_DATASET_KINDS] = {
    [CLUDA_DATASET_GTA] = {"images", "labels", ".png", ".png", "_labelTrainIds.png",
                           "images/NNNNN.png + labels/NNNNN.png"},
    [CLUDA_DATASET_SYNTHIA] = {"RGB", "GT/LABELS", ".png", ".png", "_labelTrainIds.png",
                               "RGB/NNNNNNN.png + GT/LABELS/NNNNNNN.png"},
    [CLUDA_DATASET_CITYSCAPES] = {"leftImg8bit", "gtFine", "_leftImg8bit.png",
                                  "_gtFine_labelIds.png", "_gtFine_labelTrainIds.png",
                                  "leftImg8bit/<split>/<city>/ + gtFine/<split>/<city>/"},
};

static const char cityscapes_polygons_suffix[] = "_gtFine_polygons.json";

/* The polygons file of a Cityscapes label path (the caller frees), or NULL. */
static char *polygons_path(const char *train_label_path) {
  const char *suffix = layouts[CLUDA_DATASET_CITYSCAPES].train_label_suffix;
  size_t stem = strlen(train_label_path) - strlen(suffix);
  size_t size = stem + sizeof cityscapes_polygons_suffix;
  char *path = malloc(size);
  if (path) snprintf(path, size, "%.*s%s", (int)stem, train_label_path, cityscapes_polygons_suffix);
  return path;
}

/* Appends the item of image `name` in image_dir / label_dir. */
static cluda_status add_item(cluda_dataset *ds, int *cap, const char *image_dir,
                             const char *label_dir, const char *name) {
  const layout *l = &layouts[ds->kind];
  if (ds->count == *cap) {
    int grown_cap = *cap ? 2 * *cap : 256;
    cluda_dataset_item *grown = realloc(ds->items, (size_t)grown_cap * sizeof *grown);
    CLUDA_REQUIRE(grown != NULL, CLUDA_ERR_ALLOC, "dataset: out of memory scanning %s", ds->root);
    ds->items = grown;
    *cap = grown_cap;
  }
  cluda_dataset_item *item = &ds->items[ds->count];
  memset(item, 0, sizeof *item);
  ds->count++; /* counted now so cluda_dataset_free releases a half-built item */
  size_t stem = strlen(name) - strlen(l->image_suffix);
  size_t size = stem + strlen(l->train_label_suffix) + 1;
  char *raw_name = malloc(size), *train_name = malloc(size);
  if (raw_name && train_name) {
    snprintf(raw_name, size, "%.*s%s", (int)stem, name, l->raw_label_suffix);
    snprintf(train_name, size, "%.*s%s", (int)stem, name, l->train_label_suffix);
    item->image = cluda_dataset_path_join(image_dir, name);
    item->label_raw = cluda_dataset_path_join(label_dir, raw_name);
    item->label_train = cluda_dataset_path_join(label_dir, train_name);
    item->stats_name = item->label_train ? strdup(item->label_train) : NULL;
  }
  free(raw_name);
  free(train_name);
  CLUDA_REQUIRE(item->image && item->label_raw && item->label_train && item->stats_name,
                CLUDA_ERR_ALLOC, "dataset: out of memory scanning %s", ds->root);
  if (!cluda_dataset_file_exists(item->label_raw)) {
    free(item->label_raw);
    item->label_raw = NULL;
  }
  return cluda_ok();
}

/* Adds every image of one image directory. */
static cluda_status scan_directory(cluda_dataset *ds, int *cap, const char *image_dir,
                                   const char *label_dir) {
  name_list names;
  CLUDA_TRY(list_directory(image_dir, layouts[ds->kind].image_suffix, 0, &names));
  cluda_status s = cluda_ok();
  for (int i = 0; i < names.count && s.code == CLUDA_OK; i++)
    s = add_item(ds, cap, image_dir, label_dir, names.names[i]);
  name_list_free(&names);
  return s;
}

static cluda_status scan_cityscapes(cluda_dataset *ds, int *cap, const char *image_root,
                                    const char *label_root) {
  name_list cities;
  CLUDA_TRY(list_directory(image_root, NULL, 1, &cities));
  cluda_status s = cluda_ok();
  for (int c = 0; c < cities.count && s.code == CLUDA_OK; c++) {
    char *image_dir = cluda_dataset_path_join(image_root, cities.names[c]);
    char *label_dir = cluda_dataset_path_join(label_root, cities.names[c]);
    if (image_dir && label_dir)
      s = scan_directory(ds, cap, image_dir, label_dir);
    else
      s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "dataset: out of memory scanning %s", image_root);
    free(image_dir);
    free(label_dir);
  }
  name_list_free(&cities);
  return s;
}

static int compare_items(const void *a, const void *b) {
  return strcmp(((const cluda_dataset_item *)a)->image, ((const cluda_dataset_item *)b)->image);
}

cluda_status cluda_dataset_missing_label(const cluda_dataset *ds, int i) {
  const cluda_dataset_item *item = &ds->items[i];
  const layout *l = &layouts[ds->kind];
  const char *name = cluda_dataset_kind_name(ds->kind);
  if (ds->kind == CLUDA_DATASET_CITYSCAPES) {
    char *polygons = polygons_path(item->label_train);
    int only_polygons = cluda_dataset_file_exists(polygons);
    free(polygons);
    if (only_polygons)
      return CLUDA_FAIL(CLUDA_ERR_IO,
                        "%s: the label of %s is only *%s: create the PNGs with "
                        "cityscapesscripts (docs/datasets.md)",
                        name, item->image, cityscapes_polygons_suffix);
  }
  int stem = (int)(strlen(item->label_train) - strlen(l->train_label_suffix));
  return CLUDA_FAIL(CLUDA_ERR_IO, "%s: missing label for image %s (expected %.*s%s)", name,
                    item->image, stem, item->label_train, l->raw_label_suffix);
}

static cluda_status open_dataset(cluda_dataset *ds, cluda_dataset_kind kind, const char *root,
                                 const char *split, int keep_unlabelled, int *unlabelled) {
  CLUDA_REQUIRE(ds != NULL && root != NULL, CLUDA_ERR_ARG, "dataset_open: NULL argument");
  memset(ds, 0, sizeof *ds);
  CLUDA_REQUIRE((unsigned)kind < CLUDA_DATASET_KINDS, CLUDA_ERR_ARG,
                "dataset_open: unknown dataset kind %d", (int)kind);
  const char *name = cluda_dataset_kind_name(kind);
  if (kind == CLUDA_DATASET_CITYSCAPES) {
    CLUDA_REQUIRE(split && *split && !strchr(split, '/') && strcmp(split, "all"), CLUDA_ERR_ARG,
                  "cityscapes: split must name a directory such as train or val, got '%s'",
                  split ? split : "(null)");
  } else {
    CLUDA_REQUIRE(!split || !strcmp(split, "all"), CLUDA_ERR_ARG,
                  "%s: has no splits (every image is train), got split '%s'", name, split);
  }
  CLUDA_REQUIRE(is_directory(root), CLUDA_ERR_IO, "%s: dataset root %s is not a directory", name,
                root);
  const layout *l = &layouts[kind];
  ds->kind = kind;
  ds->root = strdup(root);
  ds->split = strdup(split ? split : "all");
  char *image_dir = cluda_dataset_path_join(root, l->image_dir);
  char *label_dir = cluda_dataset_path_join(root, l->label_dir);
  if (kind == CLUDA_DATASET_CITYSCAPES && image_dir && label_dir) {
    char *image_split = cluda_dataset_path_join(image_dir, split);
    char *label_split = cluda_dataset_path_join(label_dir, split);
    free(image_dir);
    free(label_dir);
    image_dir = image_split;
    label_dir = label_split;
  }
  cluda_status s = cluda_ok();
  if (!ds->root || !ds->split || !image_dir || !label_dir)
    s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "%s: out of memory opening %s", name, root);
  else if (!is_directory(image_dir))
    s = CLUDA_FAIL(CLUDA_ERR_IO, "%s: no image directory %s (layout: %s; docs/datasets.md)", name,
                   image_dir, l->hint);
  int cap = 0;
  if (s.code == CLUDA_OK)
    s = kind == CLUDA_DATASET_CITYSCAPES ? scan_cityscapes(ds, &cap, image_dir, label_dir)
                                         : scan_directory(ds, &cap, image_dir, label_dir);
  if (s.code == CLUDA_OK && ds->count == 0)
    s = CLUDA_FAIL(CLUDA_ERR_IO, "%s: no *%s images in %s (layout: %s)", name, l->image_suffix,
                   image_dir, l->hint);
  free(image_dir);
  free(label_dir);
  if (s.code == CLUDA_OK) {
    qsort(ds->items, (size_t)ds->count, sizeof *ds->items, compare_items);
    int missing = 0;
    for (int i = 0; i < ds->count && s.code == CLUDA_OK; i++) {
      if (ds->items[i].label_raw || cluda_dataset_file_exists(ds->items[i].label_train)) continue;
      missing++;
      if (!keep_unlabelled) s = cluda_dataset_missing_label(ds, i);
    }
    if (unlabelled) *unlabelled = missing;
  }
  if (s.code != CLUDA_OK) cluda_dataset_free(ds);
  return s;
}

cluda_status cluda_dataset_open(cluda_dataset *ds, cluda_dataset_kind kind, const char *root,
                                const char *split) {
  return open_dataset(ds, kind, root, split, 0, NULL);
}

cluda_status cluda_dataset_open_lenient(cluda_dataset *ds, cluda_dataset_kind kind,
                                        const char *root, const char *split, int *unlabelled) {
  return open_dataset(ds, kind, root, split, 1, unlabelled);
}

void cluda_dataset_free(cluda_dataset *ds) {
  if (!ds) return;
  for (int i = 0; i < ds->count; i++) {
    free(ds->items[i].image);
    free(ds->items[i].label_raw);
    free(ds->items[i].label_train);
    free(ds->items[i].stats_name);
  }
  free(ds->items);
  free(ds->root);
  free(ds->split);
  memset(ds, 0, sizeof *ds);
}

static cluda_status check_index(const cluda_dataset *ds, int i, const char *fn) {
  CLUDA_REQUIRE(ds != NULL && ds->items != NULL, CLUDA_ERR_ARG, "%s: dataset not open", fn);
  CLUDA_REQUIRE(i >= 0 && i < ds->count, CLUDA_ERR_ARG, "%s: item %d outside 0..%d", fn, i,
                ds->count - 1);
  return cluda_ok();
}

cluda_status cluda_dataset_read_image(const cluda_dataset *ds, int i, cluda_image *rgb) {
  CLUDA_TRY(check_index(ds, i, "dataset_read_image"));
  return cluda_png_read_rgb(ds->items[i].image, rgb);
}

/* ---- labels ---- */

cluda_status cluda_dataset_check_train_ids(const cluda_image *labels, const char *path) {
  size_t n = (size_t)labels->width * (size_t)labels->height;
  for (size_t p = 0; p < n; p++) {
    int v = labels->pixels[p];
    if (v >= CLUDA_CITYSCAPES_CLASSES && v != CLUDA_IGNORE_LABEL)
      return CLUDA_FAIL(CLUDA_ERR_IO,
                        "%s: value %d at pixel (x %zu, y %zu) is not a train id (0..18 or 255)",
                        path, v, p % (size_t)labels->width, p / (size_t)labels->width);
  }
  return cluda_ok();
}

cluda_status cluda_dataset_read_raw_labels(const cluda_dataset *ds, int i, cluda_image *train_ids) {
  const char *path = ds->items[i].label_raw;
  CLUDA_TRY(ds->kind == CLUDA_DATASET_SYNTHIA ? cluda_png_read_first_channel(path, train_ids)
                                              : cluda_png_read_labels(path, train_ids));
  uint8_t table[256], known[256];
  cluda_dataset_id_table(ds->kind, table, known);
  size_t n = (size_t)train_ids->width * (size_t)train_ids->height;
  for (size_t p = 0; p < n; p++) {
    uint8_t v = train_ids->pixels[p];
    if (!known[v]) {
      size_t width = (size_t)train_ids->width;
      cluda_image_free(train_ids);
      return CLUDA_FAIL(CLUDA_ERR_IO,
                        "%s: label value %d at pixel (x %zu, y %zu) is outside the %s id table "
                        "(%s)",
                        path, v, p % width, p / width,
                        ds->kind == CLUDA_DATASET_SYNTHIA ? "SYNTHIA" : "Cityscapes",
                        ds->kind == CLUDA_DATASET_SYNTHIA ? "0..22" : "0..33, 255");
    }
    train_ids->pixels[p] = table[v];
  }
  return cluda_ok();
}

/* Reads item i's train ids (see cluda_dataset_read_labels); *path = the file read. */
static cluda_status read_labels(const cluda_dataset *ds, int i, cluda_image *train_ids,
                                const char **path) {
  const cluda_dataset_item *item = &ds->items[i];
  if (cluda_dataset_file_exists(item->label_train)) {
    *path = item->label_train;
    CLUDA_TRY(cluda_png_read_labels(item->label_train, train_ids));
    cluda_status s = cluda_dataset_check_train_ids(train_ids, item->label_train);
    if (s.code != CLUDA_OK) cluda_image_free(train_ids);
    return s;
  }
  *path = item->label_raw;
  if (!item->label_raw) return cluda_dataset_missing_label(ds, i);
  return cluda_dataset_read_raw_labels(ds, i, train_ids);
}

cluda_status cluda_dataset_read_labels(const cluda_dataset *ds, int i, cluda_image *train_ids) {
  CLUDA_TRY(check_index(ds, i, "dataset_read_labels"));
  CLUDA_REQUIRE(train_ids != NULL, CLUDA_ERR_ARG, "dataset_read_labels: NULL argument");
  const char *path = NULL;
  return read_labels(ds, i, train_ids, &path);
}

cluda_status cluda_dataset_read_pair(const cluda_dataset *ds, int i, cluda_image *rgb,
                                     cluda_image *train_ids) {
  CLUDA_TRY(check_index(ds, i, "dataset_read_pair"));
  CLUDA_REQUIRE(rgb != NULL && train_ids != NULL, CLUDA_ERR_ARG,
                "dataset_read_pair: NULL argument");
  const char *label_path = NULL;
  CLUDA_TRY(read_labels(ds, i, train_ids, &label_path));
  cluda_status s = cluda_png_read_rgb(ds->items[i].image, rgb);
  if (s.code == CLUDA_OK && (rgb->width != train_ids->width || rgb->height != train_ids->height)) {
    s = CLUDA_FAIL(CLUDA_ERR_SHAPE, "%s: image %s is %dx%d but its label %s is %dx%d",
                   cluda_dataset_kind_name(ds->kind), ds->items[i].image, rgb->width, rgb->height,
                   label_path, train_ids->width, train_ids->height);
    cluda_image_free(rgb);
  }
  if (s.code != CLUDA_OK) cluda_image_free(train_ids);
  return s;
}

/* ---- sample_class_stats.json ---- */

/* A strict reader of the one JSON shape the statistics list has: [ {"<class>": int, ...,
 * "file": "..."}, ... ] in any key order and whitespace. */
typedef struct stats_parser {
  const char *text, *path;
  size_t len, pos;
} stats_parser;

static cluda_status parse_error(const stats_parser *p, const char *what) {
  size_t line = 1;
  for (size_t k = 0; k < p->pos && k < p->len; k++)
    line += p->text[k] == '\n';
  return CLUDA_FAIL(CLUDA_ERR_IO, "%s:%zu: %s", p->path, line, what);
}

static void skip_space(stats_parser *p) {
  while (p->pos < p->len && (p->text[p->pos] == ' ' || p->text[p->pos] == '\n' ||
                             p->text[p->pos] == '\r' || p->text[p->pos] == '\t'))
    p->pos++;
}

static int accept(stats_parser *p, char ch) {
  skip_space(p);
  if (p->pos < p->len && p->text[p->pos] == ch) {
    p->pos++;
    return 1;
  }
  return 0;
}

static int hex4(stats_parser *p, unsigned *code) {
  if (p->pos + 4 > p->len) return 0;
  unsigned v = 0;
  for (int k = 0; k < 4; k++) {
    char ch = p->text[p->pos + (size_t)k];
    int d = ch >= '0' && ch <= '9'   ? ch - '0'
            : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10
            : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10
                                     : -1;
    if (d < 0) return 0;
    v = v * 16 + (unsigned)d;
  }
  p->pos += 4;
  *code = v;
  return 1;
}

static void put_utf8(char *out, size_t *n, unsigned cp) {
  if (cp < 0x80) {
    out[(*n)++] = (char)cp;
  } else if (cp < 0x800) {
    out[(*n)++] = (char)(0xC0 | cp >> 6);
    out[(*n)++] = (char)(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out[(*n)++] = (char)(0xE0 | cp >> 12);
    out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[(*n)++] = (char)(0x80 | (cp & 0x3F));
  } else {
    out[(*n)++] = (char)(0xF0 | cp >> 18);
    out[(*n)++] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[(*n)++] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[(*n)++] = (char)(0x80 | (cp & 0x3F));
  }
}

/* Reads a string into out (cap bytes). Escapes \uDC80..\uDCFF decode to the single byte
 * 0x80..0xFF: Python writes file names that are not UTF-8 that way (surrogateescape). */
static cluda_status parse_string(stats_parser *p, char *out, size_t cap) {
  if (!accept(p, '"')) return parse_error(p, "expected a string");
  size_t n = 0;
  for (;;) {
    if (p->pos >= p->len) return parse_error(p, "unterminated string");
    if (n + 4 >= cap) return parse_error(p, "string too long");
    unsigned char ch = (unsigned char)p->text[p->pos++];
    if (ch == '"') break;
    if (ch < 0x20) return parse_error(p, "control character inside a string");
    if (ch != '\\') {
      out[n++] = (char)ch;
      continue;
    }
    if (p->pos >= p->len) return parse_error(p, "unterminated escape");
    char esc = p->text[p->pos++];
    const char *simple = strchr("\"\\/bfnrt", esc);
    if (esc && simple) {
      out[n++] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
      continue;
    }
    unsigned cp;
    if (esc != 'u' || !hex4(p, &cp)) return parse_error(p, "bad escape in a string");
    if (cp >= 0xD800 && cp <= 0xDBFF) {
      unsigned low;
      if (p->pos + 2 > p->len || p->text[p->pos] != '\\' || p->text[p->pos + 1] != 'u')
        return parse_error(p, "unpaired UTF-16 surrogate");
      p->pos += 2;
      if (!hex4(p, &low) || low < 0xDC00 || low > 0xDFFF)
        return parse_error(p, "unpaired UTF-16 surrogate");
      cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    } else if (cp >= 0xDC80 && cp <= 0xDCFF) {
      out[n++] = (char)(cp - 0xDC00);
      continue;
    }
    if (cp == 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
      return parse_error(p, "unsupported character in a string");
    put_utf8(out, &n, cp);
  }
  out[n] = '\0';
  return cluda_ok();
}

static cluda_status parse_count(stats_parser *p, int64_t *value) {
  skip_space(p);
  size_t start = p->pos;
  int64_t v = 0;
  while (p->pos < p->len && p->text[p->pos] >= '0' && p->text[p->pos] <= '9') {
    int d = p->text[p->pos++] - '0';
    if (v > (INT64_MAX - d) / 10) return parse_error(p, "pixel count too large");
    v = v * 10 + d;
  }
  if (p->pos == start) return parse_error(p, "expected a non-negative integer pixel count");
  if (p->pos < p->len &&
      (p->text[p->pos] == '.' || p->text[p->pos] == 'e' || p->text[p->pos] == 'E'))
    return parse_error(p, "a pixel count must be an integer");
  *value = v;
  return cluda_ok();
}

static int class_key(const char *key, int *class_id) {
  if (!*key || strlen(key) > 3) return 0;
  int v = 0;
  for (const char *c = key; *c; c++) {
    if (*c < '0' || *c > '9') return 0;
    v = v * 10 + (*c - '0');
  }
  if (key[0] == '0' && key[1]) return 0;
  *class_id = v;
  return 1;
}

static const char *base_name(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

/* Items ordered by the base name of their statistics file, for lookups by name. */
typedef struct named_item {
  const char *name;
  int index;
} named_item;

static int compare_named(const void *a, const void *b) {
  return strcmp(((const named_item *)a)->name, ((const named_item *)b)->name);
}

static cluda_status parse_stats(stats_parser *p, const cluda_dataset *ds, int num_classes,
                                const named_item *by_name, int64_t *stats, uint8_t *seen) {
  enum { MAX_NAME = 4096 };
  char *file = malloc(MAX_NAME), *key = malloc(MAX_NAME);
  int64_t *row = malloc((size_t)num_classes * sizeof *row);
  cluda_status s = cluda_ok();
  if (!file || !key || !row) s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "%s: out of memory", p->path);
  if (s.code == CLUDA_OK && !accept(p, '['))
    s = parse_error(p, "expected '[': sample_class_stats.json is a list");
  int empty = s.code == CLUDA_OK && accept(p, ']');
  while (s.code == CLUDA_OK && !empty) {
    memset(row, 0, (size_t)num_classes * sizeof *row);
    file[0] = '\0';
    int has_file = 0;
    if (!accept(p, '{')) {
      s = parse_error(p, "expected '{' (one object per image)");
      break;
    }
    int empty_object = accept(p, '}');
    while (s.code == CLUDA_OK && !empty_object) {
      s = parse_string(p, key, MAX_NAME);
      if (s.code == CLUDA_OK && !accept(p, ':')) s = parse_error(p, "expected ':'");
      if (s.code != CLUDA_OK) break;
      int class_id;
      if (!strcmp(key, "file")) {
        s = parse_string(p, file, MAX_NAME);
        has_file = 1;
      } else if (class_key(key, &class_id)) {
        if (class_id >= num_classes) {
          s = CLUDA_FAIL(CLUDA_ERR_IO, "%s: class \"%s\" is outside the %d classes", p->path, key,
                         num_classes);
          break;
        }
        s = parse_count(p, &row[class_id]);
      } else {
        s = parse_error(p, "unknown key (expected a class id or \"file\")");
      }
      if (s.code != CLUDA_OK || accept(p, ',')) continue;
      if (!accept(p, '}')) s = parse_error(p, "expected ',' or '}'");
      break;
    }
    if (s.code != CLUDA_OK) break;
    if (!has_file) {
      s = parse_error(p, "an entry has no \"file\"");
      break;
    }
    named_item want = {base_name(file), -1};
    const named_item *hit =
        bsearch(&want, by_name, (size_t)ds->count, sizeof *by_name, compare_named);
    if (hit) {
      if (seen[hit->index]) {
        s = CLUDA_FAIL(CLUDA_ERR_IO, "%s: %s is listed twice", p->path, want.name);
        break;
      }
      seen[hit->index] = 1;
      memcpy(stats + (size_t)hit->index * (size_t)num_classes, row,
             (size_t)num_classes * sizeof *row);
    }
    if (accept(p, ',')) continue;
    if (!accept(p, ']')) s = parse_error(p, "expected ',' or ']'");
    break;
  }
  if (s.code == CLUDA_OK) {
    skip_space(p);
    if (p->pos != p->len) s = parse_error(p, "unexpected text after the list");
  }
  free(file);
  free(key);
  free(row);
  return s;
}

static cluda_status read_whole_file(const char *path, char **text, size_t *len) {
  FILE *f = fopen(path, "rb");
  CLUDA_REQUIRE(f != NULL, CLUDA_ERR_IO, "cannot open %s: %s", path, strerror(errno));
  size_t cap = 1 << 16, n = 0;
  char *buf = malloc(cap);
  cluda_status s = cluda_ok();
  while (buf) {
    n += fread(buf + n, 1, cap - n, f);
    if (n < cap) break;
    char *grown = realloc(buf, 2 * cap);
    if (!grown) {
      free(buf);
      buf = NULL;
      break;
    }
    buf = grown;
    cap *= 2;
  }
  if (!buf)
    s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "out of memory reading %s", path);
  else if (ferror(f))
    s = CLUDA_FAIL(CLUDA_ERR_IO, "cannot read %s", path);
  fclose(f);
  if (s.code != CLUDA_OK) {
    free(buf);
    return s;
  }
  *text = buf;
  *len = n;
  return cluda_ok();
}

cluda_status cluda_dataset_load_class_stats(const cluda_dataset *ds, int num_classes,
                                            int64_t **stats) {
  CLUDA_REQUIRE(ds != NULL && ds->items != NULL && stats != NULL, CLUDA_ERR_ARG,
                "dataset_load_class_stats: NULL argument");
  CLUDA_REQUIRE(num_classes >= 1 && num_classes <= 256, CLUDA_ERR_ARG,
                "dataset_load_class_stats: num_classes %d outside 1..256", num_classes);
  *stats = NULL;
  char *path = cluda_dataset_path_join(ds->root, CLUDA_DATASET_STATS_LIST);
  CLUDA_REQUIRE(path != NULL, CLUDA_ERR_ALLOC, "dataset_load_class_stats: out of memory");
  if (!cluda_dataset_file_exists(path)) {
    cluda_status s =
        CLUDA_FAIL(CLUDA_ERR_IO, "%s: no such file; run `cluda_data convert --dataset %s %s`", path,
                   cluda_dataset_kind_name(ds->kind), ds->root);
    free(path);
    return s;
  }
  char *text = NULL;
  size_t len = 0;
  cluda_status s = read_whole_file(path, &text, &len);
  int64_t *table = NULL;
  named_item *by_name = NULL;
  uint8_t *seen = NULL;
  if (s.code == CLUDA_OK) {
    table = calloc((size_t)ds->count * (size_t)num_classes, sizeof *table);
    by_name = malloc((size_t)ds->count * sizeof *by_name);
    seen = calloc((size_t)ds->count, 1);
    if (!table || !by_name || !seen)
      s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "%s: out of memory for %d images", path, ds->count);
  }
  if (s.code == CLUDA_OK) {
    for (int i = 0; i < ds->count; i++)
      by_name[i] = (named_item){base_name(ds->items[i].stats_name), i};
    qsort(by_name, (size_t)ds->count, sizeof *by_name, compare_named);
    stats_parser p = {text, path, len, 0};
    s = parse_stats(&p, ds, num_classes, by_name, table, seen);
  }
  for (int i = 0; s.code == CLUDA_OK && i < ds->count; i++)
    if (!seen[i])
      s = CLUDA_FAIL(CLUDA_ERR_IO, "%s has no entry for %s; run `cluda_data convert` again", path,
                     base_name(ds->items[i].stats_name));
  free(text);
  free(by_name);
  free(seen);
  free(path);
  if (s.code != CLUDA_OK) {
    free(table);
    return s;
  }
  *stats = table;
  return cluda_ok();
}

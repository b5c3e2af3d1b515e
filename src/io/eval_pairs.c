/* Directories of image/label pairs for evaluation, and prediction files matched with
 * Cityscapes ground truth. For the pairs, the label file names the pair: each rule maps a
 * label suffix to the image suffixes tried in order, so dataset layouts (Cityscapes'
 * leftImg8bit / gtFine names) are one table row each. */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cluda/dataset.h"
#include "cluda/eval.h"
#include "cluda/image.h"

typedef struct pair_rule {
  const char *label_suffix;
  const char *image_suffixes[3]; /* NULL-terminated */
} pair_rule;

/* The longer, more specific label suffix first: "_gtFine_labelTrainIds.png" also ends in
 * "_labelTrainIds.png". */
static const pair_rule rules[] = {
    {"_gtFine_labelTrainIds.png", {"_leftImg8bit.png", NULL}},
    {"_labelTrainIds.png", {"_rgb.png", ".png", NULL}},
};

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n > m && strcmp(s + n - m, suffix) == 0;
}

static int compare_strings(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int find_name(char **names, int count, const char *name) {
  return bsearch(&name, names, (size_t)count, sizeof(char *), compare_strings) != NULL;
}

static char *join(const char *dir, const char *name) {
  size_t size = strlen(dir) + strlen(name) + 2;
  char *path = malloc(size);
  if (path) snprintf(path, size, "%s/%s", dir, name);
  return path;
}

static char *copy_prefix(const char *s, size_t n) {
  char *out = malloc(n + 1);
  if (out) {
    memcpy(out, s, n);
    out[n] = '\0';
  }
  return out;
}

void cluda_eval_pairs_free(cluda_eval_pairs *pairs) {
  if (!pairs) return;
  for (int i = 0; i < pairs->count; i++) {
    free(pairs->items[i].name);
    free(pairs->items[i].image);
    free(pairs->items[i].label);
  }
  free(pairs->items);
  memset(pairs, 0, sizeof *pairs);
}

/* The regular *.png files of dir, sorted by name. */
static cluda_status list_pngs(const char *dir, char ***names_out, int *count_out) {
  DIR *d = opendir(dir);
  CLUDA_REQUIRE(d != NULL, CLUDA_ERR_IO, "data: cannot read directory %s: %s", dir,
                strerror(errno));
  char **names = NULL;
  int count = 0;
  cluda_status s = cluda_ok();
  for (struct dirent *e = readdir(d); e && s.code == CLUDA_OK; e = readdir(d)) {
    if (!ends_with(e->d_name, ".png")) continue;
    char *path = join(dir, e->d_name);
    struct stat st;
    int regular = path && stat(path, &st) == 0 && S_ISREG(st.st_mode);
    free(path);
    if (!regular) continue;
    char **grown = realloc(names, sizeof(char *) * (size_t)(count + 1));
    char *copy = grown ? strdup(e->d_name) : NULL;
    if (grown) names = grown;
    if (!copy) {
      s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "data: out of memory listing %s", dir);
      break;
    }
    names[count++] = copy;
  }
  closedir(d);
  if (s.code == CLUDA_OK && count) qsort(names, (size_t)count, sizeof(char *), compare_strings);
  *names_out = names;
  *count_out = count;
  return s;
}

cluda_status cluda_eval_list_pairs(const char *dir, cluda_eval_pairs *pairs) {
  CLUDA_REQUIRE(dir && pairs, CLUDA_ERR_ARG, "eval_list_pairs: NULL argument");
  memset(pairs, 0, sizeof *pairs);
  struct stat st;
  CLUDA_REQUIRE(stat(dir, &st) == 0, CLUDA_ERR_IO, "data: cannot access %s: %s", dir,
                strerror(errno));
  CLUDA_REQUIRE(S_ISDIR(st.st_mode), CLUDA_ERR_IO, "data: %s is not a directory", dir);
  char **names = NULL;
  int count = 0;
  cluda_status s = list_pngs(dir, &names, &count);
  /* Which files a pair uses, to count the images left without a label. */
  char *used = s.code == CLUDA_OK ? calloc((size_t)count + 1, 1) : NULL;
  if (s.code == CLUDA_OK && !used) s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "data: out of memory");
  for (int i = 0; i < count && s.code == CLUDA_OK; i++) {
    const pair_rule *rule = NULL;
    for (size_t r = 0; r < sizeof rules / sizeof rules[0] && !rule; r++)
      if (ends_with(names[i], rules[r].label_suffix)) rule = &rules[r];
    if (!rule) continue;
    used[i] = 1;
    size_t stem_len = strlen(names[i]) - strlen(rule->label_suffix);
    const char *image = NULL;
    char candidate[1024];
    for (int j = 0; rule->image_suffixes[j] && !image; j++) {
      snprintf(candidate, sizeof candidate, "%.*s%s", (int)stem_len, names[i],
               rule->image_suffixes[j]);
      if (find_name(names, count, candidate)) image = candidate;
    }
    if (!image) {
      char tried[512];
      size_t n = 0;
      tried[0] = '\0';
      for (int j = 0; rule->image_suffixes[j] && n < sizeof tried; j++)
        n += (size_t)snprintf(tried + n, sizeof tried - n, "%s%.*s%s", j ? " or " : "",
                              (int)stem_len, names[i], rule->image_suffixes[j]);
      s = CLUDA_FAIL(CLUDA_ERR_IO, "data: label %s/%s has no image (looked for %s)", dir, names[i],
                     tried);
      break;
    }
    for (int j = 0; j < count; j++)
      if (!strcmp(names[j], image)) used[j] = 1;
    cluda_eval_pair *grown =
        realloc(pairs->items, sizeof(cluda_eval_pair) * (size_t)(pairs->count + 1));
    if (!grown) {
      s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "data: out of memory");
      break;
    }
    pairs->items = grown;
    cluda_eval_pair *p = &pairs->items[pairs->count++];
    p->name = copy_prefix(names[i], stem_len);
    p->image = join(dir, image);
    p->label = join(dir, names[i]);
    if (!p->name || !p->image || !p->label) s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "data: out of memory");
  }
  if (s.code == CLUDA_OK && pairs->count == 0)
    s = CLUDA_FAIL(CLUDA_ERR_IO,
                   "data: no image/label pairs in %s (no *_labelTrainIds.png; see --help)", dir);
  for (int i = 0; i < count && s.code == CLUDA_OK; i++)
    if (!used[i] && !ends_with(names[i], "_color.png")) pairs->unlabelled++; /* label colours */
  for (int i = 0; i < count; i++)
    free(names[i]);
  free(names);
  free(used);
  if (s.code != CLUDA_OK) cluda_eval_pairs_free(pairs);
  return s;
}

/* ---- prediction files against Cityscapes ground truth ---- */

enum { CITYSCAPES_MAX_LABEL_ID = 33, WALK_MAX_DEPTH = 64 };

static const char gt_ids_suffix[] = "_gtFine_labelIds.png";
static const char gt_train_suffix[] = "_labelTrainIds.png";

const char *cluda_label_format_name(cluda_label_format format) {
  switch (format) {
  case CLUDA_LABELS_AUTO: return "auto";
  case CLUDA_LABELS_IDS: return "id";
  case CLUDA_LABELS_TRAIN: return "trainid";
  }
  return "?";
}

cluda_status cluda_label_format_parse(const char *text, cluda_label_format *format) {
  CLUDA_REQUIRE(text && format, CLUDA_ERR_ARG, "label_format_parse: NULL argument");
  const cluda_label_format all[3] = {CLUDA_LABELS_AUTO, CLUDA_LABELS_IDS, CLUDA_LABELS_TRAIN};
  for (int i = 0; i < 3; i++)
    if (!strcmp(text, cluda_label_format_name(all[i]))) {
      *format = all[i];
      return cluda_ok();
    }
  return CLUDA_FAIL(CLUDA_ERR_ARG, "label format '%s' is not one of auto, id, trainid", text);
}

typedef struct path_list {
  char **paths;
  int count, capacity;
} path_list;

static void path_list_free(path_list *list) {
  for (int i = 0; i < list->count; i++)
    free(list->paths[i]);
  free(list->paths);
  memset(list, 0, sizeof *list);
}

/* Takes ownership of path (freed on failure). */
static cluda_status path_list_take(path_list *list, char *path) {
  if (path && list->count == list->capacity) {
    int capacity = list->capacity ? 2 * list->capacity : 64;
    char **grown = realloc(list->paths, sizeof(char *) * (size_t)capacity);
    if (grown) {
      list->paths = grown;
      list->capacity = capacity;
    }
  }
  if (!path || list->count == list->capacity) {
    free(path);
    return CLUDA_FAIL(CLUDA_ERR_ALLOC, "eval: out of memory listing files");
  }
  list->paths[list->count++] = path;
  return cluda_ok();
}

/* Every regular *.png file under dir. Subdirectories that are symbolic links are entered only
 * with follow_links: the official script globs the ground truth (which follows links) but
 * os.walks the predictions (which does not). */
static cluda_status walk_pngs(const char *dir, int follow_links, int depth, path_list *out) {
  CLUDA_REQUIRE(depth <= WALK_MAX_DEPTH, CLUDA_ERR_IO,
                "eval: %s is nested more than %d levels deep (a symbolic link loop?)", dir,
                WALK_MAX_DEPTH);
  DIR *d = opendir(dir);
  CLUDA_REQUIRE(d != NULL, CLUDA_ERR_IO, "eval: cannot read directory %s: %s", dir,
                strerror(errno));
  cluda_status s = cluda_ok();
  for (struct dirent *e = readdir(d); e && s.code == CLUDA_OK; e = readdir(d)) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char *path = join(dir, e->d_name);
    struct stat dir_st, st;
    if (!path) {
      s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "eval: out of memory listing %s", dir);
    } else if ((follow_links ? stat(path, &dir_st) : lstat(path, &dir_st)) == 0 &&
               S_ISDIR(dir_st.st_mode)) {
      s = walk_pngs(path, follow_links, depth + 1, out);
      free(path);
    } else if (ends_with(e->d_name, ".png") && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
      s = path_list_take(out, path);
    } else {
      free(path);
    }
  }
  closedir(d);
  return s;
}

static const char *base_name(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

/* cityscapesscripts getCsFileInfo: the name is split at every '_' and its last '_'-part also
 * at '.'; it must give 5 or 6 parts, and the key is the first three joined by '_'. */
static cluda_status cityscapes_key(const char *path, char *key, size_t size) {
  const char *name = base_name(path);
  const char *last_part = strrchr(name, '_');
  last_part = last_part ? last_part + 1 : name;
  int parts = 1;
  size_t key_end = 0;
  for (const char *c = name; *c; c++)
    if (*c == '_' || (*c == '.' && c >= last_part))
      if (++parts == 4) key_end = (size_t)(c - name);
  CLUDA_REQUIRE(parts == 5 || parts == 6, CLUDA_ERR_IO,
                "eval: cannot parse ground-truth name %s: %d part(s), expected "
                "<city>_<seq>_<frame>_<type>[_<type2>].png",
                path, parts);
  CLUDA_REQUIRE(key_end < size, CLUDA_ERR_ARG, "eval: ground-truth name too long: %s", path);
  for (size_t i = 0; i < key_end; i++)
    key[i] = name[i] == '.' && name + i >= last_part ? '_' : name[i];
  key[key_end] = '\0';
  return cluda_ok();
}

void cluda_eval_matches_free(cluda_eval_matches *matches) {
  if (!matches) return;
  for (int i = 0; i < matches->count; i++) {
    free(matches->items[i].name);
    free(matches->items[i].ground_truth);
    free(matches->items[i].prediction);
  }
  free(matches->items);
  memset(matches, 0, sizeof *matches);
}

static cluda_status require_directory(const char *dir, const char *what) {
  struct stat st;
  CLUDA_REQUIRE(stat(dir, &st) == 0, CLUDA_ERR_IO, "eval: cannot access %s directory %s: %s", what,
                dir, strerror(errno));
  CLUDA_REQUIRE(S_ISDIR(st.st_mode), CLUDA_ERR_IO, "eval: %s %s is not a directory", what, dir);
  return cluda_ok();
}

/* The one prediction named "<key>*.png" (fnmatch of getPrediction). */
static cluda_status find_prediction(const path_list *predictions, const char *key,
                                    const char *ground_truth, const char *pred_dir,
                                    const char **found) {
  size_t key_len = strlen(key);
  *found = NULL;
  for (int i = 0; i < predictions->count; i++) {
    const char *name = base_name(predictions->paths[i]);
    if (strncmp(name, key, key_len) != 0 || strlen(name) < key_len + 4) continue;
    /* Prediction paths relative to pred_dir keep the message short enough for both. */
    size_t skip = strlen(pred_dir) + 1;
    CLUDA_REQUIRE(*found == NULL, CLUDA_ERR_IO,
                  "eval: several predictions for ground truth %s: %s and %s (in %s)", ground_truth,
                  *found + skip, predictions->paths[i] + skip, pred_dir);
    *found = predictions->paths[i];
  }
  CLUDA_REQUIRE(*found != NULL, CLUDA_ERR_IO,
                "eval: no prediction for ground truth %s (no %s*.png under %s)", ground_truth, key,
                pred_dir);
  return cluda_ok();
}

static cluda_status match_all(const path_list *ground_truth, const path_list *predictions,
                              const char *pred_dir, cluda_eval_matches *matches) {
  matches->items = calloc((size_t)ground_truth->count, sizeof(cluda_eval_match));
  CLUDA_REQUIRE(matches->items != NULL, CLUDA_ERR_ALLOC, "eval: out of memory");
  for (int i = 0; i < ground_truth->count; i++) {
    char key[1024];
    const char *prediction = NULL;
    CLUDA_TRY(cityscapes_key(ground_truth->paths[i], key, sizeof key));
    CLUDA_TRY(find_prediction(predictions, key, ground_truth->paths[i], pred_dir, &prediction));
    cluda_eval_match *m = &matches->items[matches->count++];
    m->name = strdup(key);
    m->ground_truth = strdup(ground_truth->paths[i]);
    m->prediction = strdup(prediction);
    CLUDA_REQUIRE(m->name && m->ground_truth && m->prediction, CLUDA_ERR_ALLOC,
                  "eval: out of memory");
  }
  return cluda_ok();
}

cluda_status cluda_eval_match_predictions(const char *gt_dir, const char *pred_dir,
                                          cluda_label_format gt_format,
                                          cluda_eval_matches *matches) {
  CLUDA_REQUIRE(gt_dir && pred_dir && matches, CLUDA_ERR_ARG, "eval_match: NULL argument");
  memset(matches, 0, sizeof *matches);
  CLUDA_TRY(require_directory(gt_dir, "ground-truth"));
  CLUDA_TRY(require_directory(pred_dir, "predictions"));
  path_list all = {0}, ids = {0}, train = {0}, predictions = {0};
  cluda_status s = walk_pngs(gt_dir, 1, 0, &all);
  for (int i = 0; i < all.count && s.code == CLUDA_OK; i++) {
    path_list *kind = ends_with(all.paths[i], gt_ids_suffix)     ? &ids
                      : ends_with(all.paths[i], gt_train_suffix) ? &train
                                                                 : NULL;
    if (kind) {
      s = path_list_take(kind, all.paths[i]);
      all.paths[i] = NULL; /* now owned by kind (or freed) */
    }
  }
  if (gt_format == CLUDA_LABELS_AUTO) gt_format = ids.count ? CLUDA_LABELS_IDS : CLUDA_LABELS_TRAIN;
  path_list *chosen = gt_format == CLUDA_LABELS_IDS ? &ids : &train;
  if (s.code == CLUDA_OK && chosen->count == 0)
    s = CLUDA_FAIL(CLUDA_ERR_IO, "eval: no ground truth under %s (no *%s%s)", gt_dir,
                   gt_format == CLUDA_LABELS_IDS ? gt_ids_suffix : gt_train_suffix,
                   gt_format == CLUDA_LABELS_IDS ? "" : " nor *_gtFine_labelIds.png");
  if (s.code == CLUDA_OK) {
    qsort(chosen->paths, (size_t)chosen->count, sizeof(char *), compare_strings);
    s = walk_pngs(pred_dir, 0, 0, &predictions);
  }
  matches->gt_format = gt_format;
  if (s.code == CLUDA_OK) s = match_all(chosen, &predictions, pred_dir, matches);
  path_list_free(&all);
  path_list_free(&ids);
  path_list_free(&train);
  path_list_free(&predictions);
  if (s.code != CLUDA_OK) cluda_eval_matches_free(matches);
  return s;
}

cluda_status cluda_eval_read_train_ids(const char *path, cluda_label_format format,
                                       cluda_image *train_ids) {
  CLUDA_REQUIRE(path && train_ids, CLUDA_ERR_ARG, "eval_read_train_ids: NULL argument");
  CLUDA_REQUIRE(format == CLUDA_LABELS_IDS || format == CLUDA_LABELS_TRAIN, CLUDA_ERR_ARG,
                "eval_read_train_ids: %s: the format must be id or trainid", path);
  CLUDA_TRY(cluda_png_read_labels(path, train_ids));
  uint8_t table[256];
  cluda_dataset_id_table(CLUDA_DATASET_CITYSCAPES, table, NULL);
  size_t n = (size_t)train_ids->width * (size_t)train_ids->height;
  cluda_status s = cluda_ok();
  for (size_t i = 0; i < n && s.code == CLUDA_OK; i++) {
    uint8_t v = train_ids->pixels[i];
    int x = (int)(i % (size_t)train_ids->width), y = (int)(i / (size_t)train_ids->width);
    if (format == CLUDA_LABELS_IDS) {
      if (v <= CITYSCAPES_MAX_LABEL_ID)
        train_ids->pixels[i] = table[v];
      else
        s = CLUDA_FAIL(CLUDA_ERR_IO,
                       "eval: %s: value %d at pixel (x %d, y %d) is not a Cityscapes label id "
                       "(0..33)",
                       path, v, x, y);
    } else if (v >= CLUDA_CITYSCAPES_CLASSES && v != CLUDA_IGNORE_LABEL) {
      s = CLUDA_FAIL(CLUDA_ERR_IO,
                     "eval: %s: value %d at pixel (x %d, y %d) is not a train id (0..18, or 255)",
                     path, v, x, y);
    }
  }
  if (s.code != CLUDA_OK) cluda_image_free(train_ids);
  return s;
}

cluda_status cluda_eval_add_match(cluda_confusion *cm, const cluda_eval_match *match,
                                  cluda_label_format gt_format, cluda_label_format pred_format) {
  CLUDA_REQUIRE(cm && match, CLUDA_ERR_ARG, "eval_add_match: NULL argument");
  CLUDA_REQUIRE(cm->num_classes == CLUDA_CITYSCAPES_CLASSES, CLUDA_ERR_ARG,
                "eval_add_match: the matrix has %d classes, Cityscapes 19", cm->num_classes);
  cluda_image gt, pred;
  memset(&pred, 0, sizeof pred);
  CLUDA_TRY(cluda_eval_read_train_ids(match->ground_truth, gt_format, &gt));
  cluda_status s = cluda_eval_read_train_ids(match->prediction, pred_format, &pred);
  if (s.code == CLUDA_OK && (pred.width != gt.width || pred.height != gt.height))
    s = CLUDA_FAIL(CLUDA_ERR_SHAPE, "eval: prediction %s is %dx%d but its ground truth %s is %dx%d",
                   match->prediction, pred.width, pred.height, base_name(match->ground_truth),
                   gt.width, gt.height);
  if (s.code == CLUDA_OK)
    s = cluda_confusion_add(cm, pred.pixels, gt.pixels, (size_t)gt.width * (size_t)gt.height);
  cluda_image_free(&gt);
  cluda_image_free(&pred);
  return s;
}

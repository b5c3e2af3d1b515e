/* Directories of image/label pairs for evaluation. The label file names the pair: each rule
 * maps a label suffix to the image suffixes tried in order, so dataset layouts (Cityscapes'
 * leftImg8bit / gtFine names) are one table row each. */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cluda/eval.h"

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

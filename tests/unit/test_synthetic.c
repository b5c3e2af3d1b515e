/* The synthetic two-domain street scenes: determinism (a pure function of its arguments,
 * also under threads), any resolution showing the same scene, labels in 0..18, every class
 * present with a long-tailed histogram, matching label statistics but clearly different
 * colours between domains, and the cluda_data program (--help, a small run whose PNGs and
 * RCS statistics files agree with the library, bad arguments). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "cluda/image.h"
#include "cluda/synthetic.h"
#include "testing.h"

static cluda_synth_config config(int h, int w, int domain, uint64_t seed) {
  cluda_synth_config c;
  cluda_synth_config_init(&c);
  c.height = h, c.width = w, c.domain = (cluda_synth_domain)domain, c.seed = seed;
  return c;
}

typedef struct rendered {
  uint8_t *rgb, *labels;
  size_t n;
} rendered;

static rendered render(cluda_synth_config c, cluda_synth_split split, uint64_t index) {
  rendered r;
  r.n = (size_t)c.height * c.width;
  r.rgb = test_alloc(r.n * 3);
  r.labels = test_alloc(r.n);
  TEST_OK(cluda_synth_render(&c, split, index, r.rgb, r.labels));
  return r;
}

static void release(rendered *r) {
  free(r->rgb);
  free(r->labels);
}

static int same(const rendered *a, const rendered *b) {
  return memcmp(a->rgb, b->rgb, a->n * 3) == 0 && memcmp(a->labels, b->labels, a->n) == 0;
}

static void test_determinism(void) {
  cluda_synth_config c = config(48, 80, CLUDA_SYNTH_TARGET, 11);
  rendered a = render(c, CLUDA_SYNTH_TRAIN, 5), b = render(c, CLUDA_SYNTH_TRAIN, 5);
  TEST_CHECK(same(&a, &b), "same arguments give identical bytes");
  rendered i = render(c, CLUDA_SYNTH_TRAIN, 6), v = render(c, CLUDA_SYNTH_VAL, 5);
  TEST_CHECK(memcmp(a.labels, i.labels, a.n) && memcmp(a.rgb, i.rgb, a.n * 3),
             "another index is another scene");
  TEST_CHECK(memcmp(a.labels, v.labels, a.n) != 0, "the val split has other scenes");
  cluda_synth_config c2 = c;
  c2.seed = 12;
  rendered s = render(c2, CLUDA_SYNTH_TRAIN, 5);
  TEST_CHECK(memcmp(a.labels, s.labels, a.n) != 0, "another seed is another scene");
  c2 = c;
  c2.domain = CLUDA_SYNTH_SOURCE;
  rendered d = render(c2, CLUDA_SYNTH_TRAIN, 5);
  TEST_CHECK(memcmp(a.labels, d.labels, a.n) != 0, "domains draw their own layouts");
  /* Shared layouts: same labels, other colours; at gap 0 the target is the source. */
  c.shared_layout = c2.shared_layout = 1;
  rendered ts = render(c, CLUDA_SYNTH_TRAIN, 5), ss = render(c2, CLUDA_SYNTH_TRAIN, 5);
  TEST_CHECK(memcmp(ts.labels, ss.labels, a.n) == 0 && memcmp(ts.rgb, ss.rgb, a.n * 3) != 0,
             "shared layout: same labels, different styles");
  c.gap = 0.0f;
  rendered t0 = render(c, CLUDA_SYNTH_TRAIN, 5);
  TEST_CHECK(same(&t0, &ss), "shared layout at gap 0: the target equals the source");
  /* Labels-only and counts agree with a full render. */
  uint8_t *labels = test_alloc(a.n);
  c.gap = 1.0f, c.shared_layout = 0;
  TEST_OK(cluda_synth_render(&c, CLUDA_SYNTH_TRAIN, 5, NULL, labels));
  TEST_CHECK(memcmp(labels, a.labels, a.n) == 0, "labels without rgb are the same labels");
  int64_t counts[CLUDA_SYNTH_CLASSES], want[CLUDA_SYNTH_CLASSES] = {0};
  TEST_OK(cluda_synth_class_counts(&c, CLUDA_SYNTH_TRAIN, 5, counts));
  for (size_t k = 0; k < a.n; k++)
    want[a.labels[k]]++;
  TEST_CHECK(memcmp(counts, want, sizeof counts) == 0, "class counts = histogram of labels");
  free(labels);
  rendered *all[] = {&a, &b, &i, &v, &s, &d, &ts, &ss, &t0};
  for (size_t k = 0; k < sizeof all / sizeof all[0]; k++)
    release(all[k]);
}

/* Many images rendered concurrently equal the serial ones (no hidden state). */
static void test_threads(void) {
  enum { N = 8, H = 40, W = 56 };
  cluda_synth_config c = config(H, W, CLUDA_SYNTH_TARGET, 3);
  static uint8_t serial[N][H * W * 3], parallel[N][H * W * 3];
  for (int i = 0; i < N; i++)
    TEST_OK(cluda_synth_render(&c, CLUDA_SYNTH_TRAIN, (uint64_t)i, serial[i], NULL));
  int failures = 0;
#pragma omp parallel for schedule(dynamic, 1) reduction(+ : failures)
  for (int i = 0; i < N; i++)
    failures += cluda_synth_render(&c, CLUDA_SYNTH_TRAIN, (uint64_t)i, parallel[i], NULL).code != 0;
  TEST_CHECK(failures == 0 && memcmp(serial, parallel, sizeof serial) == 0,
             "parallel rendering gives the serial bytes");
}

static void test_sizes(void) {
  static const int sizes[][2] = {{1, 1}, {2, 3}, {33, 47}, {47, 33}, {64, 128}, {256, 512}};
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    for (int dom = 0; dom < 2; dom++) {
      cluda_synth_config c = config(sizes[k][0], sizes[k][1], dom, 1);
      rendered r = render(c, CLUDA_SYNTH_VAL, 2);
      int ok = 1;
      for (size_t i = 0; i < r.n; i++)
        ok &= r.labels[i] < CLUDA_SYNTH_CLASSES;
      TEST_CHECK(ok, "%dx%d %s: labels in 0..18", sizes[k][0], sizes[k][1],
                 cluda_synth_domain_name(c.domain));
      release(&r);
    }
  }
  /* The scene lives in world space: at twice the resolution, the labels at the centres of
   * 2x2 blocks are nearly the labels of the small image. */
  int agree = 0, total = 0;
  for (uint64_t idx = 0; idx < 4; idx++) {
    rendered lo = render(config(48, 96, 0, 9), CLUDA_SYNTH_TRAIN, idx);
    rendered hi = render(config(96, 192, 0, 9), CLUDA_SYNTH_TRAIN, idx);
    for (int y = 0; y < 48; y++)
      for (int x = 0; x < 96; x++) {
        const uint8_t *q = hi.labels + (size_t)(2 * y) * 192 + 2 * x;
        int l = lo.labels[y * 96 + x];
        agree += q[0] == l || q[1] == l || q[192] == l || q[193] == l;
        total++;
      }
    release(&lo);
    release(&hi);
  }
  printf("  resolution consistency: %.1f%% of pixels agree at 48x96 vs 96x192\n",
         100.0 * agree / total);
  TEST_CHECK(agree > 0.97 * total, "the same scene at any resolution (%d of %d agree)", agree,
             total);
}

enum { NIMG = 200, HH = 64, WW = 128 };

static void histogram(int domain, int64_t total[CLUDA_SYNTH_CLASSES], int *images_with) {
  cluda_synth_config c = config(HH, WW, domain, 1);
  memset(total, 0, sizeof(int64_t) * CLUDA_SYNTH_CLASSES);
  memset(images_with, 0, sizeof(int) * CLUDA_SYNTH_CLASSES);
  for (int i = 0; i < NIMG; i++) {
    int64_t counts[CLUDA_SYNTH_CLASSES];
    TEST_OK(cluda_synth_class_counts(&c, CLUDA_SYNTH_TRAIN, (uint64_t)i, counts));
    for (int k = 0; k < CLUDA_SYNTH_CLASSES; k++) {
      total[k] += counts[k];
      images_with[k] += counts[k] > 0;
    }
  }
}

static void test_class_statistics(void) {
  int64_t src[CLUDA_SYNTH_CLASSES], tgt[CLUDA_SYNTH_CLASSES];
  int src_with[CLUDA_SYNTH_CLASSES], tgt_with[CLUDA_SYNTH_CLASSES];
  histogram(CLUDA_SYNTH_SOURCE, src, src_with);
  histogram(CLUDA_SYNTH_TARGET, tgt, tgt_with);
  double all = (double)NIMG * HH * WW, share[CLUDA_SYNTH_CLASSES];
  printf("  class histogram, %d images of %dx%d (source | target):\n", NIMG, HH, WW);
  int present = 1, match = 1;
  for (int k = 0; k < CLUDA_SYNTH_CLASSES; k++) {
    share[k] = src[k] / all;
    double ts = tgt[k] / all;
    printf("    %2d %-14s %7.3f%% in %3d images | %7.3f%% in %3d images\n", k,
           cluda_cityscapes_class_names[k], 100 * share[k], src_with[k], 100 * ts, tgt_with[k]);
    present &= src[k] > 0 && tgt[k] > 0;
    /* Independent draws of one layout distribution: frequent classes agree up to sampling
     * noise (a few near cars move the car share by a fifth over 200 images). */
    if (share[k] > 0.02) match &= fabs(ts - share[k]) < 0.3 * share[k];
  }
  TEST_CHECK(present, "every class appears in both domains");
  TEST_CHECK(match, "the domains' label statistics match (within 30%% for classes > 2%%)");
  TEST_CHECK(share[0] + share[2] + share[8] > 0.6, "road, building and vegetation dominate");
  TEST_CHECK(share[0] > share[1] && share[2] > share[3] && share[13] > share[14],
             "road > sidewalk, building > wall, car > truck");
  int rare = 1;
  for (int k = 11; k < CLUDA_SYNTH_CLASSES; k++)
    if (k != 13) rare &= share[k] < 0.012;
  TEST_CHECK(rare && share[12] < 0.005 && share[16] < 0.005 && share[17] < 0.005,
             "people, riders, heavy vehicles and two-wheelers are rare (long tail)");
}

/* Mean colour of each class over paired scenes: the styles differ for most classes. */
static void test_domain_gap(void) {
  enum { N = 40 };
  double sum[2][CLUDA_SYNTH_CLASSES][3] = {{{0}}};
  int64_t cnt[CLUDA_SYNTH_CLASSES] = {0};
  for (int i = 0; i < N; i++)
    for (int dom = 0; dom < 2; dom++) {
      cluda_synth_config c = config(HH, WW, dom, 4);
      c.shared_layout = 1;
      rendered r = render(c, CLUDA_SYNTH_TRAIN, (uint64_t)i);
      for (size_t p = 0; p < r.n; p++) {
        for (int a = 0; a < 3; a++)
          sum[dom][r.labels[p]][a] += r.rgb[3 * p + a];
        if (dom == 0) cnt[r.labels[p]]++;
      }
      release(&r);
    }
  int far = 0;
  printf("  mean colour per class (source -> target, distance):\n");
  for (int k = 0; k < CLUDA_SYNTH_CLASSES; k++) {
    if (!cnt[k]) continue;
    double m[2][3], d2 = 0;
    for (int dom = 0; dom < 2; dom++)
      for (int a = 0; a < 3; a++)
        m[dom][a] = sum[dom][k][a] / cnt[k];
    for (int a = 0; a < 3; a++)
      d2 += (m[0][a] - m[1][a]) * (m[0][a] - m[1][a]);
    printf("    %-14s (%3.0f %3.0f %3.0f) -> (%3.0f %3.0f %3.0f)  %5.1f\n",
           cluda_cityscapes_class_names[k], m[0][0], m[0][1], m[0][2], m[1][0], m[1][1], m[1][2],
           sqrt(d2));
    far += sqrt(d2) > 25.0;
  }
  TEST_CHECK(far >= 14, "%d of 19 classes change mean colour by more than 25/255", far);
}

static void test_errors(void) {
  cluda_synth_config c = config(0, 10, 0, 0);
  uint8_t buf[300];
  int64_t counts[CLUDA_SYNTH_CLASSES];
  TEST_FAILS(cluda_synth_render(&c, CLUDA_SYNTH_TRAIN, 0, buf, buf), CLUDA_ERR_ARG, "size");
  c = config(10, 10, 7, 0);
  TEST_FAILS(cluda_synth_render(&c, CLUDA_SYNTH_TRAIN, 0, buf, buf), CLUDA_ERR_ARG, "domain");
  c = config(10, 10, 1, 0);
  c.gap = 1.5f;
  TEST_FAILS(cluda_synth_check(&c), CLUDA_ERR_ARG, "gap");
  c.gap = NAN;
  TEST_FAILS(cluda_synth_check(&c), CLUDA_ERR_ARG, "gap");
  c.gap = 1.0f;
  TEST_FAILS(cluda_synth_render(&c, (cluda_synth_split)5, 0, buf, buf), CLUDA_ERR_ARG, "split");
  TEST_FAILS(cluda_synth_render(&c, CLUDA_SYNTH_VAL, 1ull << 32, buf, buf), CLUDA_ERR_ARG, "index");
  TEST_FAILS(cluda_synth_class_counts(&c, CLUDA_SYNTH_VAL, 0, NULL), CLUDA_ERR_ARG, "counts");
  TEST_FAILS(cluda_synth_render(NULL, CLUDA_SYNTH_VAL, 0, buf, buf), CLUDA_ERR_ARG, "NULL");
  TEST_OK(cluda_synth_class_counts(&c, CLUDA_SYNTH_VAL, 0xffffffffu, counts));
  cluda_synth_domain d;
  cluda_synth_split s;
  TEST_CHECK(!cluda_synth_parse_domain("target", &d) && d == CLUDA_SYNTH_TARGET &&
                 cluda_synth_parse_domain("Target", &d) && !cluda_synth_parse_split("val", &s) &&
                 s == CLUDA_SYNTH_VAL && cluda_synth_parse_split("test", &s),
             "domain and split names");
}

/* ---- a minimal JSON reader for the statistics files ---- */

typedef struct json {
  int type; /* 'n' number, 's' string, 'a' array, 'o' object */
  double num;
  char *str;
  int n;
  struct json *items;
  char **keys;
} json;

static void json_free(json *v) {
  for (int i = 0; i < v->n; i++) {
    json_free(&v->items[i]);
    if (v->keys) free(v->keys[i]);
  }
  free(v->items);
  free(v->keys);
  free(v->str);
}

static void skip_ws(const char **p) {
  while (**p == ' ' || **p == '\n' || **p == '\t' || **p == '\r')
    (*p)++;
}

static char *parse_str(const char **p) {
  if (**p != '"') return NULL;
  const char *s = ++*p;
  while (**p && **p != '"')
    *p += **p == '\\' ? 2 : 1;
  if (**p != '"') return NULL;
  size_t n = (size_t)(*p - s);
  char *out = test_alloc(n + 1);
  memcpy(out, s, n);
  out[n] = '\0';
  (*p)++;
  return out;
}

static int parse_value(const char **p, json *v) {
  memset(v, 0, sizeof *v);
  skip_ws(p);
  if (**p == '"') {
    v->type = 's';
    return (v->str = parse_str(p)) != NULL;
  }
  if (**p == '[' || **p == '{') {
    int obj = **p == '{';
    v->type = obj ? 'o' : 'a';
    (*p)++;
    skip_ws(p);
    if (**p == (obj ? '}' : ']')) return (*p)++, 1;
    for (;;) {
      v->items = realloc(v->items, sizeof(json) * (size_t)(v->n + 1));
      if (obj) v->keys = realloc(v->keys, sizeof(char *) * (size_t)(v->n + 1));
      if (obj) {
        skip_ws(p);
        v->keys[v->n] = parse_str(p);
        skip_ws(p);
        if (!v->keys[v->n] || **p != ':') return v->items[v->n++] = (json){0}, 0;
        (*p)++;
      }
      int ok = parse_value(p, &v->items[v->n]);
      v->n++;
      if (!ok) return 0;
      skip_ws(p);
      if (**p == ',') {
        (*p)++;
        continue;
      }
      if (**p != (obj ? '}' : ']')) return 0;
      (*p)++;
      return 1;
    }
  }
  char *end;
  v->type = 'n';
  v->num = strtod(*p, &end);
  if (end == *p) return 0;
  *p = end;
  return 1;
}

static int json_load(const char *path, json *v) {
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  static char buf[1 << 20];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  const char *p = buf;
  int ok = parse_value(&p, v);
  skip_ws(&p);
  return ok && *p == '\0';
}

static const json *json_get(const json *o, const char *key) {
  for (int i = 0; o->type == 'o' && i < o->n; i++)
    if (!strcmp(o->keys[i], key)) return &o->items[i];
  return NULL;
}

/* ---- cluda_data ---- */

static void test_cli(cli_runner *cr) {
  cli_result r;
  cli_run(cr, &r, "--help", NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "usage: cluda_data synth") &&
                 strstr(r.out, "samples_with_class.json"),
             "--help prints the usage (exit %d)", r.exit_code);
  cli_run(cr, &r, "synth", "--help", NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "--shared-layout"), "synth --help");

  const char *out = cli_path(cr, "run/a");
  cli_run(cr, &r, "synth", "--domain", "target", "--split", "val", "--count", "3", "--size",
          "40x60", "--seed", "17", "--out", out, "--start", "4", NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "wrote 3 target val images"), "small run: %s%s",
             r.out, r.err);
  cluda_synth_config c = config(40, 60, CLUDA_SYNTH_TARGET, 17);
  int64_t counts[3][CLUDA_SYNTH_CLASSES];
  for (int i = 0; i < 3; i++) {
    char path[800];
    rendered want = render(c, CLUDA_SYNTH_VAL, (uint64_t)(4 + i));
    cluda_image img;
    snprintf(path, sizeof path, "%s/%05d_rgb.png", out, 4 + i);
    if (TEST_OK(cluda_png_read_rgb(path, &img))) {
      TEST_CHECK(img.width == 60 && img.height == 40 && !memcmp(img.pixels, want.rgb, want.n * 3),
                 "%s is the rendered image", path);
      cluda_image_free(&img);
    }
    snprintf(path, sizeof path, "%s/%05d_labelTrainIds.png", out, 4 + i);
    if (TEST_OK(cluda_png_read_labels(path, &img))) {
      TEST_CHECK(!memcmp(img.pixels, want.labels, want.n), "%s holds the labels", path);
      cluda_image_free(&img);
    }
    snprintf(path, sizeof path, "%s/%05d_color.png", out, 4 + i);
    if (TEST_OK(cluda_png_read_rgb(path, &img))) {
      uint8_t col[3];
      cluda_label_color(want.labels[0], col);
      TEST_CHECK(!memcmp(img.pixels, col, 3), "%s is in Cityscapes colours", path);
      cluda_image_free(&img);
    }
    TEST_OK(cluda_synth_class_counts(&c, CLUDA_SYNTH_VAL, (uint64_t)(4 + i), counts[i]));
    release(&want);
  }

  /* sample_class_stats.json: one object per image, counts sum to the pixels. */
  char path[800], file[3][800];
  for (int i = 0; i < 3; i++)
    snprintf(file[i], sizeof file[i], "%s/%05d_labelTrainIds.png", out, 4 + i);
  json list, dict, by_class;
  snprintf(path, sizeof path, "%s/sample_class_stats.json", out);
  if (TEST_CHECK(json_load(path, &list) && list.type == 'a' && list.n == 3, "%s parses", path)) {
    int ok = 1;
    for (int i = 0; i < 3; i++) {
      const json *o = &list.items[i], *f = json_get(o, "file");
      ok &= o->type == 'o' && f && f->type == 's' && !strcmp(f->str, file[i]);
      double sum = 0;
      for (int k = 0; k < CLUDA_SYNTH_CLASSES; k++) {
        char key[8];
        snprintf(key, sizeof key, "%d", k);
        const json *v = json_get(o, key);
        ok &= counts[i][k] ? v && v->num == (double)counts[i][k] : v == NULL;
        sum += v ? v->num : 0;
      }
      ok &= sum == 40 * 60;
    }
    TEST_CHECK(ok, "sample_class_stats.json: files, per-class counts, sums = 2400");
  }
  json_free(&list);
  snprintf(path, sizeof path, "%s/sample_class_stats_dict.json", out);
  if (TEST_CHECK(json_load(path, &dict) && dict.type == 'o' && dict.n == 3, "%s parses", path)) {
    int ok = 1;
    for (int i = 0; i < 3; i++) {
      const json *o = json_get(&dict, file[i]);
      double sum = 0;
      for (int k = 0; o && k < o->n; k++)
        sum += o->items[k].num;
      ok &= o && sum == 40 * 60;
    }
    TEST_CHECK(ok, "sample_class_stats_dict.json: per-file counts sum to 2400");
  }
  json_free(&dict);
  snprintf(path, sizeof path, "%s/samples_with_class.json", out);
  if (TEST_CHECK(json_load(path, &by_class) && by_class.type == 'o', "%s parses", path)) {
    int ok = 1;
    for (int k = 0; k < CLUDA_SYNTH_CLASSES; k++) {
      char key[8];
      snprintf(key, sizeof key, "%d", k);
      const json *v = json_get(&by_class, key);
      int expect = 0;
      for (int i = 0; i < 3; i++)
        expect += counts[i][k] > 0;
      ok &= expect ? v && v->type == 'a' && v->n == expect : v == NULL;
      for (int j = 0; v && j < v->n; j++) {
        const json *pair = &v->items[j];
        int found = 0;
        for (int i = 0; i < 3; i++)
          found |= pair->type == 'a' && pair->n == 2 && !strcmp(pair->items[0].str, file[i]) &&
                   pair->items[1].num == (double)counts[i][k];
        ok &= found;
      }
    }
    TEST_CHECK(ok, "samples_with_class.json: [file, count] for every image holding the class");
  }
  json_free(&by_class);

  /* Bad command lines: exit 2, one line naming the problem. */
  cli_run(cr, &r, NULL);
  cli_expect_error_code(cr, &r, 2, "no command", "no command", NULL);
  cli_run(cr, &r, "render", NULL);
  cli_expect_error_code(cr, &r, 2, "unknown command", "render", NULL);
  const char *base[] = {"synth", "--domain", "source", "--split", "train", "--count",
                        "1",     "--size",   "8x8",    "--seed",  "1",     "--out"};
#define BASE                                                                                       \
  base[0], base[1], base[2], base[3], base[4], base[5], base[6], base[7], base[8], base[9],        \
      base[10], base[11]
  cli_run(cr, &r, BASE, out, "--bogus", NULL);
  cli_expect_error_code(cr, &r, 2, "unknown option", "--bogus", NULL);
  cli_run(cr, &r, "synth", "--domain", "source", "--split", "train", "--count", "1", "--seed", "1",
          "--out", out, NULL);
  cli_expect_error_code(cr, &r, 2, "missing --size", "--size is required", NULL);
  cli_run(cr, &r, BASE, out, "--size", "8x8", NULL);
  cli_expect_error_code(cr, &r, 2, "duplicate", "given twice", NULL);
  cli_run(cr, &r, "synth", "--domain", "real", "--split", "train", "--count", "1", "--size", "8x8",
          "--seed", "1", "--out", out, NULL);
  cli_expect_error_code(cr, &r, 2, "bad domain", "'real'", NULL);
  cli_run(cr, &r, "synth", "--domain", "source", "--split", "train", "--count", "0", "--size",
          "8x8", "--seed", "1", "--out", out, NULL);
  cli_expect_error_code(cr, &r, 2, "zero count", "--count", NULL);
  cli_run(cr, &r, "synth", "--domain", "source", "--split", "train", "--count", "1", "--size",
          "128", "--seed", "1", "--out", out, NULL);
  cli_expect_error_code(cr, &r, 2, "bad size", "HxW", NULL);
  cli_run(cr, &r, "synth", "--domain", "source", "--split", "train", "--count", "1", "--size",
          "8x8", "--seed", "-1", "--out", out, NULL);
  cli_expect_error_code(cr, &r, 2, "negative seed", "--seed", NULL);
  cli_run(cr, &r, BASE, out, "--gap", "2", NULL);
  cli_expect_error_code(cr, &r, 2, "gap out of range", "--gap", NULL);
  cli_run(cr, &r, BASE, out, "--start", "4294967296", NULL);
  cli_expect_error_code(cr, &r, 2, "start too large", "2^32", NULL);
  cli_run(cr, &r, BASE, NULL);
  cli_expect_error_code(cr, &r, 2, "--out without value", "needs a value", NULL);
  /* An output path under a regular file cannot be created: exit 1. */
  cli_run(cr, &r, BASE, cli_path(cr, "stdout.txt/sub"), NULL);
  cli_expect_error_code(cr, &r, 1, "unwritable --out", "stdout.txt", NULL);
#undef BASE
}

int main(int argc, char **argv) {
  (void)argc;
  test_determinism();
  test_threads();
  test_sizes();
  test_class_statistics();
  test_domain_gap();
  test_errors();
  cli_runner cr;
  if (!cli_runner_init(&cr, argv[0], "cluda_data")) return test_finish("test_synthetic");
  test_cli(&cr);
  cli_runner_cleanup(&cr);
  return test_finish("test_synthetic");
}

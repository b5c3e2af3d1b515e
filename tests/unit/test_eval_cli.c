/* cluda_eval end to end: the test runs the built program (build/bin/cluda_eval, found from
 * this test's own path build/tests/test_eval_cli) on image/label PNG pairs it writes, and
 * checks exit codes, messages and outputs: --help, a tiny random-init run (the table, the
 * JSON's structure and its mIoU equal to an in-process evaluation with the same weights,
 * saved predictions), slide = whole when the window covers the image, the 16/13 protocols,
 * and every bad input (non-zero exit and one line naming the problem). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "cluda/config.h"
#include "cluda/eval.h"
#include "cluda/image.h"
#include "cluda/segmentor.h"
#include "cluda/weights.h"
#include "testing.h"
#include "tiny_model.h"

/* A smooth colour pattern, and labels in bands with some 255 and a seed-dependent shift. */
static void write_pair(const char *dir, const char *name, int width, int height, int seed) {
  char path[1024];
  cluda_image img, lab;
  if (!TEST_OK(cluda_image_create(&img, width, height, 3)) ||
      !TEST_OK(cluda_image_create(&lab, width, height, 1)))
    return;
  for (int y = 0; y < height; y++)
    for (int x = 0; x < width; x++) {
      for (int c = 0; c < 3; c++)
        img.pixels[((size_t)y * width + x) * 3 + c] =
            (uint8_t)(127 + 120 * sin(0.21 * x * (c + 1) + 0.13 * y * (3 - c) + seed));
      int band = (x / 9 + y / 7 + seed) % 21;
      lab.pixels[(size_t)y * width + x] = band >= 19 ? 255 : (uint8_t)band;
    }
  snprintf(path, sizeof path, "%s/%s_rgb.png", dir, name);
  TEST_OK(cluda_png_write(path, &img));
  snprintf(path, sizeof path, "%s/%s_labelTrainIds.png", dir, name);
  TEST_OK(cluda_png_write(path, &lab));
  cluda_image_free(&img);
  cluda_image_free(&lab);
}

static void make_dataset(const char *dir) {
  mkdir(dir, 0755);
  write_pair(dir, "00000", 64, 48, 0);
  write_pair(dir, "00001", 64, 48, 1);
  write_pair(dir, "00002", 40, 56, 2); /* another size: the buffers are re-planned */
}

/* ---- the in-process reference ---- */

/* The confusion matrix of the dataset under the tiny network of `seed`, whole images. */
static int reference_confusion(const char *dir, uint64_t seed, cluda_confusion *cm) {
  model m;
  if (!make_model(&m, NULL, seed)) return 0;
  cluda_eval_pairs pairs;
  cluda_predictor p;
  cluda_infer_settings st = {CLUDA_INFER_WHOLE, 0, 0, 0, 0};
  int ok = TEST_OK(cluda_confusion_create(cm, 19)) && TEST_OK(cluda_eval_list_pairs(dir, &pairs));
  if (ok && TEST_OK(cluda_predictor_init(&p, &m.seg, m.params, m.state, &st))) {
    for (int i = 0; i < pairs.count && ok; i++) {
      cluda_image rgb, lab;
      ok = TEST_OK(cluda_png_read_rgb(pairs.items[i].image, &rgb)) &&
           TEST_OK(cluda_png_read_labels(pairs.items[i].label, &lab));
      if (!ok) break;
      size_t n = (size_t)rgb.width * rgb.height;
      float *x = test_alloc_f32((int64_t)n * 3);
      uint8_t *pred = test_alloc(n);
      ok = TEST_OK(cluda_image_normalize(&rgb, x)) &&
           TEST_OK(cluda_predictor_run(&p, x, rgb.height, rgb.width, pred)) &&
           TEST_OK(cluda_confusion_add(cm, pred, lab.pixels, n));
      free(x);
      free(pred);
      cluda_image_free(&rgb);
      cluda_image_free(&lab);
    }
    cluda_predictor_free(&p);
    cluda_eval_pairs_free(&pairs);
  }
  free_model(&m);
  return ok;
}

/* ---- tests ---- */

static void test_help_and_usage(cli_runner *cr) {
  cli_result r;
  cli_run(cr, &r, "--help", NULL);
  const char *flags[] = {"--config",
                         "--set",
                         "--weights",
                         "--seed",
                         "--data",
                         "--mode",
                         "--protocol",
                         "--save-pred",
                         "--json",
                         "--print-config",
                         "--print-config-reference",
                         "--help",
                         "_labelTrainIds.png",
                         "_rgb.png",
                         "_leftImg8bit.png",
                         "--dataset",
                         "--data-root",
                         "--split",
                         "--predictions",
                         "--ground-truth",
                         "--pred-format",
                         "--gt-format",
                         "eval.scale"};
  int all = r.exit_code == 0;
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
    if (!strstr(r.out, flags[i])) {
      all = 0;
      printf("  --help does not mention %s\n", flags[i]);
    }
  TEST_CHECK(all, "--help exits 0 and documents every flag");
  cli_run(cr, &r, NULL);
  TEST_CHECK(r.exit_code == 2 && strstr(r.err, "--config is required"), "no arguments: %s", r.err);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--bogus", NULL);
  TEST_CHECK(r.exit_code == 2 && strstr(r.err, "unknown option '--bogus'"), "unknown option: %s",
             r.err);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--data", NULL);
  TEST_CHECK(r.exit_code == 2 && strstr(r.err, "--data needs a value"), "missing value: %s", r.err);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--json", "a", "--json", "b", NULL);
  TEST_CHECK(r.exit_code == 2 && strstr(r.err, "--json given twice"), "twice: %s", r.err);
  cli_run(cr, &r, "--print-config-reference", NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "| `eval.mode` | enum | `whole` |"),
             "--print-config-reference lists the eval keys");
  cli_run(cr, &r, "--config", TINY_CONFIG, "--print-config", "--mode", "slide", "--protocol=16",
          NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "eval:\n") &&
                 strstr(r.out, "  mode: slide  # --set 'eval.mode=slide'") &&
                 strstr(r.out, "  num_classes_protocol: 16  # --set"),
             "--mode and --protocol are config overrides:\n%s%s", r.out, r.err);
}

static void test_tiny_run(cli_runner *cr, const char *data) {
  cli_result r;
  const char *json = cli_path(cr, "m.json");
  const char *pred_dir = cli_path(cr, "pred/nested");
  /* At the images' own size: the reference below segments them unresized. */
  cli_run(cr, &r, "--config", TINY_CONFIG, "--seed", "3", "--data", data, "--json", json,
          "--save-pred", pred_dir, "--set", "eval.scale=[0, 0]", NULL);
  printf("%s", r.out);
  TEST_CHECK(r.exit_code == 0, "tiny random-init run exits 0 (stderr: %s)", r.err);
  TEST_CHECK(strstr(r.out, "3 image/label pairs") && strstr(r.out, "[3/3] 00002: 40x56") &&
                 strstr(r.out, "inference: whole image") &&
                 strstr(r.out, "test resize: none (eval.scale [0, 0])"),
             "lists the pairs and the images");
  TEST_CHECK(strstr(r.out, "\nroad ") && strstr(r.out, "\nbicycle ") &&
                 strstr(r.out, "\nmIoU19 ") && strstr(r.out, "\naAcc ") && !strstr(r.out, "mIoU16"),
             "prints the per-class table and mIoU19 only");

  char *text = test_read_text(json);
  TEST_CHECK(text != NULL, "--json wrote %s", json);
  cluda_confusion ref;
  if (text && reference_confusion(data, 3, &ref)) {
    const char *fields[] = {"\"num_classes\": 19", "\"protocol\": 19", "\"images\": 3",
                            "\"miou\": ",          "\"miou16\": ",     "\"miou13\": ",
                            "\"aacc\": ",          "\"classes\": [",   "\"name\": \"bicycle\""};
    int all = 1;
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
      all &= strstr(text, fields[i]) != NULL;
    TEST_CHECK(all, "JSON structure:\n%.400s", text);
    int ids = 0;
    for (const char *p = strstr(text, "{\"id\": "); p; p = strstr(p + 1, "{\"id\": "))
      ids++;
    TEST_CHECK(ids == 19, "JSON: 19 class entries (%d)", ids);
    cluda_seg_metrics m;
    if (TEST_OK(cluda_seg_metrics_compute(&ref, CLUDA_PROTOCOL_ALL, &m))) {
      char want[80];
      snprintf(want, sizeof want, "\"miou19\": %.17g,", m.miou);
      TEST_CHECK(strstr(text, want) != NULL, "mIoU = in-process evaluation (%s)", want);
      snprintf(want, sizeof want, "\"labelled_pixels\": %lld,", (long long)m.labelled);
      TEST_CHECK(strstr(text, want) != NULL, "labelled pixels (%s)", want);
    }
    cluda_confusion_free(&ref);
  }

  /* Saved predictions: the image size, the palette of train ids below 19. */
  char path[1024];
  cluda_image color, labels;
  snprintf(path, sizeof path, "%s/00002_color.png", pred_dir);
  int have_color = TEST_OK(cluda_png_read_rgb(path, &color));
  snprintf(path, sizeof path, "%s/00002_labelTrainIds.png", pred_dir);
  int have_labels = TEST_OK(cluda_png_read_labels(path, &labels));
  if (have_color && have_labels) {
    int ok = color.width == 40 && color.height == 56 && labels.width == 40 && labels.height == 56;
    for (int p = 0; ok && p < 40 * 56; p++) {
      uint8_t rgb[3];
      cluda_label_color(labels.pixels[p], rgb);
      ok = labels.pixels[p] < 19 && memcmp(rgb, color.pixels + 3 * p, 3) == 0;
    }
    TEST_CHECK(ok, "--save-pred: colour and train-id PNGs of the image size");
  }
  if (have_color) cluda_image_free(&color);
  if (have_labels) cluda_image_free(&labels);

  /* Slide with a window covering every image = whole, to the byte. */
  const char *json_slide = cli_path(cr, "slide.json");
  cli_run(cr, &r, "--config", TINY_CONFIG, "--seed", "3", "--data", data, "--json", json_slide,
          "--mode", "slide", "--set", "eval.crop=[64, 64]", "--set", "eval.scale=[0, 0]", NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "inference: slide, crop 64x64, stride 512x512"),
             "slide run (stderr: %s)", r.err);
  char *slide_text = test_read_text(json_slide);
  TEST_CHECK(text && slide_text && strcmp(text, slide_text) == 0,
             "slide with crop >= image gives the whole-image metrics");
  free(slide_text);
  /* Overlapping windows run and report the window count. */
  cli_run(cr, &r, "--config", TINY_CONFIG, "--seed", "3", "--data", data, "--mode", "slide",
          "--set", "eval.scale=[0, 0]", "--set", "eval.crop=[32, 48]", "--set",
          "eval.stride=[16, 16]", "--protocol", "13", "--json", cli_path(cr, "p13.json"), NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "[1/3] 00000: 64x48, 4 windows") &&
                 strstr(r.out, "\nmIoU16 ") && strstr(r.out, "\nmIoU13 "),
             "slide 32x48 / 16: 2x2 windows, 16 and 13-class summaries (stderr: %s)", r.err);
  char *p13 = test_read_text(cli_path(cr, "p13.json"));
  TEST_CHECK(p13 && strstr(p13, "\"protocol\": 13"), "JSON names the protocol");
  free(p13);
  free(text);
}

static void test_bad_inputs(cli_runner *cr, const char *data) {
  cli_result r;
  cli_run(cr, &r, "--config", TINY_CONFIG, "--data", cli_path(cr, "nowhere"), NULL);
  cli_expect_error(cr, &r, "missing data directory", "nowhere", "No such file");
  const char *empty = cli_path(cr, "empty");
  mkdir(empty, 0755);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--data", empty, NULL);
  cli_expect_error(cr, &r, "no pairs", "no image/label pairs", empty);
  cli_run(cr, &r, "--config", TINY_CONFIG, NULL);
  cli_expect_error(cr, &r, "no data given", "--data", "eval.data_dir");

  /* Label of another size than its image. */
  const char *mismatch = cli_path(cr, "mismatch");
  mkdir(mismatch, 0755);
  write_pair(mismatch, "a", 64, 48, 0);
  cluda_image lab;
  char path[1024];
  if (TEST_OK(cluda_image_create(&lab, 48, 64, 1))) {
    snprintf(path, sizeof path, "%s/a_labelTrainIds.png", mismatch);
    TEST_OK(cluda_png_write(path, &lab));
    cluda_image_free(&lab);
  }
  cli_run(cr, &r, "--config", TINY_CONFIG, "--data", mismatch, NULL);
  cli_expect_error(cr, &r, "label size", "a_labelTrainIds.png is 48x64", "64x48");
  /* A label value that is neither a class nor 255. */
  const char *badlabel = cli_path(cr, "badlabel");
  mkdir(badlabel, 0755);
  write_pair(badlabel, "b", 64, 48, 0);
  if (TEST_OK(cluda_image_create(&lab, 64, 48, 1))) {
    lab.pixels[100] = 30;
    snprintf(path, sizeof path, "%s/b_labelTrainIds.png", badlabel);
    TEST_OK(cluda_png_write(path, &lab));
    cluda_image_free(&lab);
  }
  cli_run(cr, &r, "--config", TINY_CONFIG, "--data", badlabel, NULL);
  cli_expect_error(cr, &r, "label out of range", "b_labelTrainIds.png", "label 30");
  /* A label without its image. */
  const char *orphan = cli_path(cr, "orphan");
  mkdir(orphan, 0755);
  write_pair(orphan, "c", 64, 48, 0);
  snprintf(path, sizeof path, "%s/c_rgb.png", orphan);
  remove(path);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--data", orphan, NULL);
  cli_expect_error(cr, &r, "label without image", "c_labelTrainIds.png has no image", "c_rgb.png");

  /* Weights of another architecture. */
  model other;
  if (make_model(&other, "model.num_classes=5", 1)) {
    const char *other_h5 = cli_path(cr, "other.h5");
    TEST_OK(cluda_weights_save_h5(other_h5, &other.seg, other.params, other.state));
    cli_run(cr, &r, "--config", TINY_CONFIG, "--weights", other_h5, "--data", data, NULL);
    cli_expect_error(cr, &r, "weights of another architecture", "other.h5", NULL);
    free_model(&other);
  }
  cli_run(cr, &r, "--config", TINY_CONFIG, "--weights", cli_path(cr, "none.h5"), "--data", data,
          NULL);
  cli_expect_error(cr, &r, "missing weights", "none.h5", "No such file");

  cli_run(cr, &r, "--config", TINY_CONFIG, "--data", data, "--save-pred", data, NULL);
  cli_expect_error(cr, &r, "--save-pred into the data", "is the data directory", NULL);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--data", data, "--mode", "tiles", NULL);
  cli_expect_error(cr, &r, "bad --mode", "eval.mode", "tiles");
  cli_run(cr, &r, "--config", TINY_CONFIG, "--data", data, "--protocol", "17", NULL);
  cli_expect_error(cr, &r, "bad --protocol", "eval.num_classes_protocol", "17");
  cli_run(cr, &r, "--config", TINY_CONFIG, "--data", data, "--protocol", "16", "--set",
          "model.num_classes=5", NULL);
  cli_expect_error(cr, &r, "protocol 16 with 5 classes", "needs model.num_classes 19", NULL);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--data", data, "--mode", "slide", "--set",
          "eval.crop=[16, 64]", NULL);
  cli_expect_error(cr, &r, "crop below the minimum", "eval.crop", NULL);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--data", data, "--json", cli_path(cr, "no/dir/m.json"),
          NULL);
  cli_expect_error(cr, &r, "json into a missing directory", "no/dir/m.json", NULL);
}

int main(int argc, char **argv) {
  (void)argc;
  cli_runner cr;
  if (!cli_runner_init(&cr, argv[0], "cluda_eval")) return test_finish("test_eval_cli");
  const char *data = cli_path(&cr, "data");
  make_dataset(data);
  test_help_and_usage(&cr);
  test_tiny_run(&cr, data);
  test_bad_inputs(&cr, data);
  cli_runner_cleanup(&cr);
  return test_finish("test_eval_cli");
}

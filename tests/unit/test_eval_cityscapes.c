/* cluda_eval against the official Cityscapes evaluation: the program scores the committed
 * fixture (tests/fixtures/cityscapes_eval, written by tools/make_cityscapes_eval_fixture.py)
 * and every per-class IoU and the mIoU must equal cityscapesscripts'
 * evalPixelLevelSemanticLabeling on the same files, for label-id and train-id predictions and
 * ground truth. Then the matching rule of getPrediction (prefix "<city>_<seq>_<frame>", any
 * depth, exactly one), every bad input (one line naming the files), and the model path on a
 * Cityscapes dataset root (--dataset cityscapes) with the test resize, against an in-process
 * evaluation. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "cluda/config.h"
#include "cluda/eval.h"
#include "cluda/image.h"
#include "cluda/segmentor.h"
#include "testing.h"
#include "tiny_model.h"

#define FIXTURE CLUDA_FIXTURE_DIR "/cityscapes_eval"

enum { CLASSES = 19 };

/* The number (NAN for null) after `"key": ` at or after `from`; 0 when the key is absent. */
static int json_number_after(const char *from, const char *key, double *value) {
  char needle[64];
  snprintf(needle, sizeof needle, "\"%s\": ", key);
  const char *p = from ? strstr(from, needle) : NULL;
  if (!p) return 0;
  p += strlen(needle);
  if (!strncmp(p, "null", 4)) {
    *value = NAN;
    return 1;
  }
  char *end = NULL;
  *value = strtod(p, &end);
  return end != p;
}

/* The official numbers: per train id (the fixture lists the classes in train-id order). */
typedef struct reference {
  double iou[CLASSES], miou;
} reference;

static int load_reference(reference *ref) {
  char *text = test_read_text(FIXTURE "/official.json");
  int ok = text != NULL;
  const char *p = text;
  for (int c = 0; ok && c < CLASSES; c++) {
    char entry[32];
    snprintf(entry, sizeof entry, "\"train_id\": %d,", c);
    p = strstr(p, entry);
    ok = p && json_number_after(p, "iou", &ref->iou[c]);
  }
  ok = ok && json_number_after(text, "miou", &ref->miou);
  free(text);
  TEST_CHECK(ok, "read %s", FIXTURE "/official.json");
  return ok;
}

static int same(double a, double b) { return (isnan(a) && isnan(b)) || fabs(a - b) <= 1e-9; }

/* cluda_eval's JSON against the official numbers. */
static void compare_json(const char *path, const reference *ref, const char *what) {
  char *text = test_read_text(path);
  if (!TEST_CHECK(text != NULL, "%s: JSON written", what)) return;
  int ok = 1;
  for (int c = 0; c < CLASSES; c++) {
    char entry[32];
    double iou = 0;
    snprintf(entry, sizeof entry, "{\"id\": %d, ", c);
    if (!json_number_after(strstr(text, entry), "iou", &iou) || !same(iou, ref->iou[c])) {
      printf("  %s: class %d IoU %.17g, official %.17g\n", what, c, iou, ref->iou[c]);
      ok = 0;
    }
  }
  TEST_CHECK(ok, "%s: every class IoU = cityscapesscripts (1e-9)", what);
  double miou = 0;
  TEST_CHECK(json_number_after(text, "miou19", &miou) && same(miou, ref->miou) &&
                 strstr(text, "\"images\": 4"),
             "%s: mIoU %.17g = cityscapesscripts %.17g", what, miou, ref->miou);
  free(text);
}

static void test_official_numbers(cli_runner *cr) {
  reference ref;
  if (!load_reference(&ref)) return;
  printf("official mIoU %.6f\n", ref.miou);
  const char *json = cli_path(cr, "ids.json");
  cli_result r;
  cli_run(cr, &r, "--predictions", FIXTURE "/pred_ids", "--ground-truth", FIXTURE "/gtFine",
          "--json", json, NULL);
  printf("%s", r.out);
  TEST_CHECK(r.exit_code == 0, "label-id predictions: exit 0 (stderr: %s)", r.err);
  TEST_CHECK(strstr(r.out, "4 files of label ids") && strstr(r.out, "\nmIoU19 ") &&
                 strstr(r.out, "\ntruck "),
             "prints the files found and the per-class table");
  compare_json(json, &ref, "label ids / gtFine_labelIds");

  const char *json_train = cli_path(cr, "train.json");
  cli_run(cr, &r, "--predictions", FIXTURE "/pred_trainids", "--ground-truth", FIXTURE,
          "--pred-format", "trainid", "--json", json_train, NULL);
  TEST_CHECK(r.exit_code == 0, "train-id predictions: exit 0 (stderr: %s)", r.err);
  compare_json(json_train, &ref, "train ids / gtFine_labelIds");

  const char *json_gt_train = cli_path(cr, "gt_train.json");
  cli_run(cr, &r, "--predictions", FIXTURE "/pred_trainids", "--ground-truth",
          FIXTURE "/gtFine/val", "--pred-format=trainid", "--gt-format=trainid", "--json",
          json_gt_train, NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "4 files of train ids"),
             "train-id ground truth: exit 0 (stderr: %s)", r.err);
  compare_json(json_gt_train, &ref, "train ids / gtFine_labelTrainIds");

  /* SYNTHIA protocols from the same matrix: the mean of the official IoUs of the kept
   * classes (terrain 9, truck 14, train 16 out; then wall 3, fence 4, pole 5). */
  const char *json16 = cli_path(cr, "p13.json");
  cli_run(cr, &r, "--predictions", FIXTURE "/pred_ids", "--ground-truth", FIXTURE "/gtFine",
          "--protocol", "13", "--json", json16, NULL);
  double want16 = 0, want13 = 0;
  int n16 = 0, n13 = 0;
  for (int c = 0; c < CLASSES; c++) {
    if (c == 9 || c == 14 || c == 16 || isnan(ref.iou[c])) continue;
    want16 += ref.iou[c];
    n16++;
    if (c >= 3 && c <= 5) continue;
    want13 += ref.iou[c];
    n13++;
  }
  char *text = test_read_text(json16);
  double got16 = 0, got13 = 0;
  TEST_CHECK(r.exit_code == 0 && text && json_number_after(text, "miou16", &got16) &&
                 json_number_after(text, "miou13", &got13) && fabs(got16 - want16 / n16) < 1e-12 &&
                 fabs(got13 - want13 / n13) < 1e-12 && strstr(r.out, "\nmIoU13 "),
             "protocol 13: mIoU16 %.6f and mIoU13 %.6f from the official class IoUs", got16, got13);
  free(text);
}

/* ---- the matching rule and bad inputs, on copies in the scratch directory ---- */

static int copy_file(const char *from, const char *to) {
  cluda_image img;
  if (!TEST_OK(cluda_png_read_labels(from, &img))) return 0;
  int ok = TEST_OK(cluda_png_write(to, &img));
  cluda_image_free(&img);
  return ok;
}

static void write_labels(const char *path, int width, int height, uint8_t value) {
  cluda_image img;
  if (!TEST_OK(cluda_image_create(&img, width, height, 1))) return;
  memset(img.pixels, value, (size_t)width * height);
  TEST_OK(cluda_png_write(path, &img));
  cluda_image_free(&img);
}

#define GT_A "aachen_000000_000019_gtFine_labelIds.png"
#define GT_B "bochum_000000_000313_gtFine_labelIds.png"

static void test_matching_and_errors(cli_runner *cr) {
  const char *gt = cli_path(cr, "gt");
  const char *pred = cli_path(cr, "pred");
  mkdir(gt, 0755);
  mkdir(cli_path(cr, "gt/city"), 0755);
  mkdir(pred, 0755);
  mkdir(cli_path(cr, "pred/deep"), 0755);
  mkdir(cli_path(cr, "pred/deep/er"), 0755);
  copy_file(FIXTURE "/gtFine/val/aachen/" GT_A, cli_path(cr, "gt/city/" GT_A));
  /* Symbolic links to directories: followed for the ground truth (the official glob does),
   * not for the predictions (its os.walk does not), where this one would add a second
   * aachen prediction. */
  mkdir(cli_path(cr, "elsewhere"), 0755);
  copy_file(FIXTURE "/gtFine/val/bochum/" GT_B, cli_path(cr, "elsewhere/" GT_B));
  write_labels(cli_path(cr, "elsewhere/aachen_000000_000019_x.png"), 64, 32, 7);
  TEST_CHECK(symlink("../elsewhere", cli_path(cr, "gt/linked")) == 0 &&
                 symlink("../elsewhere", cli_path(cr, "pred/linked")) == 0,
             "symbolic links");
  /* Any name that starts with the key and ends in .png, at any depth. */
  copy_file(FIXTURE "/pred_ids/aachen/aachen_000000_000019_leftImg8bit.png",
            cli_path(cr, "pred/aachen_000000_000019.png"));
  copy_file(FIXTURE "/pred_ids/bochum/bochum_000000_000313_leftImg8bit.png",
            cli_path(cr, "pred/deep/er/bochum_000000_000313_anything.png"));
  /* Not matches: the key in the middle of the name, another extension. */
  write_labels(cli_path(cr, "pred/x_aachen_000000_000019.png"), 3, 3, 0);
  cli_write_bytes(cli_path(cr, "pred/aachen_000000_000019.txt"), "x", 1);
  cli_result r;
  cli_run(cr, &r, "--predictions", pred, "--ground-truth", gt, NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "2 files of label ids"),
             "getPrediction's rule: prefix, any depth; links (stderr: %s)", r.err);

  /* Several matches. */
  const char *extra = cli_path(cr, "pred/deep/aachen_000000_000019_color.png");
  write_labels(extra, 64, 32, 7);
  cli_run(cr, &r, "--predictions", pred, "--ground-truth", gt, NULL);
  cli_expect_error(cr, &r, "two predictions", "several predictions for ground truth", GT_A);
  remove(extra);
  /* Size mismatch. */
  const char *small = cli_path(cr, "pred/aachen_000000_000019.png");
  write_labels(small, 10, 12, 7);
  cli_run(cr, &r, "--predictions", pred, "--ground-truth", gt, NULL);
  cli_expect_error(cr, &r, "size mismatch", "aachen_000000_000019.png is 10x12", GT_A " is 64x32");
  /* A label id beyond 33, a train id beyond 18. */
  write_labels(small, 64, 32, 34);
  cli_run(cr, &r, "--predictions", pred, "--ground-truth", gt, NULL);
  cli_expect_error(cr, &r, "prediction 34", "aachen_000000_000019.png: value 34 at pixel",
                   "not a Cityscapes label id");
  write_labels(small, 64, 32, 19);
  cli_run(cr, &r, "--predictions", pred, "--ground-truth", gt, "--pred-format", "trainid", NULL);
  cli_expect_error(cr, &r, "train id 19", "value 19 at pixel", "not a train id");
  /* Not a PNG. */
  cli_write_bytes(small, "not a png", 9);
  cli_run(cr, &r, "--predictions", pred, "--ground-truth", gt, NULL);
  cli_expect_error(cr, &r, "unreadable prediction", "aachen_000000_000019.png", NULL);
  /* Missing. */
  remove(small);
  cli_run(cr, &r, "--predictions", pred, "--ground-truth", gt, NULL);
  cli_expect_error(cr, &r, "missing prediction", "no prediction for ground truth",
                   "aachen_000000_000019*.png");
  /* Bad ground truth: a value beyond 33, a name that does not parse, none at all. */
  copy_file(FIXTURE "/pred_ids/aachen/aachen_000000_000019_leftImg8bit.png", small);
  write_labels(cli_path(cr, "gt/city/" GT_A), 64, 32, 200);
  cli_run(cr, &r, "--predictions", pred, "--ground-truth", gt, NULL);
  cli_expect_error(cr, &r, "ground truth 200", GT_A ": value 200", NULL);
  remove(cli_path(cr, "gt/city/" GT_A));
  write_labels(cli_path(cr, "gt/city/aachen_gtFine_labelIds.png"), 64, 32, 7);
  cli_run(cr, &r, "--predictions", pred, "--ground-truth", gt, NULL);
  cli_expect_error(cr, &r, "unparsable name", "aachen_gtFine_labelIds.png", "4 part(s)");
  const char *empty = cli_path(cr, "empty");
  mkdir(empty, 0755);
  cli_run(cr, &r, "--predictions", pred, "--ground-truth", empty, NULL);
  cli_expect_error(cr, &r, "no ground truth", "no ground truth under", empty);
  cli_run(cr, &r, "--predictions", cli_path(cr, "nowhere"), "--ground-truth", gt, NULL);
  cli_expect_error(cr, &r, "missing predictions directory", "nowhere", "No such file");

  /* The command line: usage errors exit 2. */
  cli_run(cr, &r, "--predictions", pred, NULL);
  TEST_CHECK(r.exit_code == 2 && strstr(r.err, "go together"), "%s: %s", "--predictions alone",
             r.err);
  cli_run(cr, &r, "--predictions", pred, "--ground-truth", gt, "--config", TINY_CONFIG, NULL);
  TEST_CHECK(r.exit_code == 2 && strstr(r.err, "--config does not go"), "%s: %s",
             "--predictions with --config", r.err);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--pred-format", "trainid", NULL);
  TEST_CHECK(r.exit_code == 2 && strstr(r.err, "--pred-format needs --predictions"), "%s: %s",
             "--pred-format alone", r.err);
  cli_run(cr, &r, "--predictions", pred, "--ground-truth", gt, "--pred-format", "auto", NULL);
  cli_expect_error(cr, &r, "--pred-format auto", "--pred-format must be id or trainid", NULL);
  cli_run(cr, &r, "--predictions", pred, "--ground-truth", gt, "--gt-format", "ids", NULL);
  cli_expect_error(cr, &r, "bad --gt-format", "'ids'", "auto, id, trainid");
  cli_run(cr, &r, "--predictions", pred, "--ground-truth", gt, "--protocol", "17", NULL);
  cli_expect_error(cr, &r, "bad --protocol", "eval.num_classes_protocol", "17");
  cli_run(cr, &r, "--config", TINY_CONFIG, "--dataset", "cityscapes", NULL);
  TEST_CHECK(r.exit_code == 2 && strstr(r.err, "--dataset needs --data-root"), "%s: %s",
             "--dataset without root", r.err);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--dataset", "cityscapes", "--data-root", gt, "--data",
          gt, NULL);
  TEST_CHECK(r.exit_code == 2 && strstr(r.err, "exclude each other"), "%s: %s",
             "--data and --dataset", r.err);
}

/* ---- the model on a Cityscapes root ---- */

/* Cityscapes label ids of train ids 0..18 (algorithm.md 8.2). */
static const uint8_t label_ids[CLASSES] = {7,  8,  11, 12, 13, 17, 19, 20, 21, 22,
                                           23, 24, 25, 26, 27, 28, 31, 32, 33};

/* 128x64 images with gtFine_labelIds in bands (some ignored ids), two cities. */
static void make_cityscapes_root(cli_runner *cr, const char *root) {
  const char *dirs[] = {"",
                        "/leftImg8bit",
                        "/leftImg8bit/val",
                        "/leftImg8bit/val/aachen",
                        "/leftImg8bit/val/bremen",
                        "/gtFine",
                        "/gtFine/val",
                        "/gtFine/val/aachen",
                        "/gtFine/val/bremen"};
  char path[1024];
  for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
    snprintf(path, sizeof path, "%s%s", root, dirs[i]);
    mkdir(path, 0755);
  }
  const char *names[2] = {"aachen/aachen_000000_000019", "bremen/bremen_000001_000019"};
  for (int n = 0; n < 2; n++) {
    cluda_image img, lab;
    if (!TEST_OK(cluda_image_create(&img, 128, 64, 3)) ||
        !TEST_OK(cluda_image_create(&lab, 128, 64, 1)))
      return;
    for (int y = 0; y < 64; y++)
      for (int x = 0; x < 128; x++) {
        for (int c = 0; c < 3; c++)
          img.pixels[(y * 128 + x) * 3 + c] =
              (uint8_t)(127 + 120 * sin(0.11 * x * (c + 1) + 0.17 * y * (3 - c) + n));
        int band = (x / 11 + y / 9 + n) % 21;
        lab.pixels[y * 128 + x] = band >= 19 ? (uint8_t)(band == 19 ? 0 : 4) : label_ids[band];
      }
    snprintf(path, sizeof path, "%s/leftImg8bit/val/%s_leftImg8bit.png", root, names[n]);
    TEST_OK(cluda_png_write(path, &img));
    snprintf(path, sizeof path, "%s/gtFine/val/%s_gtFine_labelIds.png", root, names[n]);
    TEST_OK(cluda_png_write(path, &lab));
    cluda_image_free(&img);
    cluda_image_free(&lab);
  }
  (void)cr;
}

/* The same evaluation in process: resize 128x64 -> 64x32, whole image, scores upsampled to
 * 128x64, labels mapped from ids. */
static int reference_miou(const char *root, uint64_t seed, double *miou) {
  cluda_config cfg;
  cluda_segmentor_config sc;
  cluda_segmentor seg;
  if (!TEST_OK(cluda_config_init(&cfg))) return 0;
  int ok = TEST_OK(cluda_config_load_file(&cfg, TINY_CONFIG)) &&
           TEST_OK(cluda_config_to_segmentor_config(&cfg, &sc));
  cluda_config_free(&cfg);
  if (!ok || !TEST_OK(cluda_segmentor_create(&seg, &sc))) return 0;
  float *params = test_alloc_f32((int64_t)seg.params.total);
  float *state = test_alloc_f32((int64_t)(seg.state.total ? seg.state.total : 1));
  memset(state, 0, sizeof(float) * seg.state.total);
  cluda_predictor p;
  cluda_confusion cm;
  cluda_infer_settings st = {CLUDA_INFER_WHOLE, 0, 0, 0, 0};
  ok = TEST_OK(cluda_segmentor_init(&seg, params, state, seed)) &&
       TEST_OK(cluda_confusion_create(&cm, CLASSES)) &&
       TEST_OK(cluda_predictor_init(&p, &seg, params, state, &st));
  const char *names[2] = {"aachen/aachen_000000_000019", "bremen/bremen_000001_000019"};
  for (int n = 0; n < 2 && ok; n++) {
    char path[1024];
    cluda_image rgb, small, lab;
    snprintf(path, sizeof path, "%s/leftImg8bit/val/%s_leftImg8bit.png", root, names[n]);
    ok = TEST_OK(cluda_png_read_rgb(path, &rgb));
    snprintf(path, sizeof path, "%s/gtFine/val/%s_gtFine_labelIds.png", root, names[n]);
    ok = ok && TEST_OK(cluda_png_read_labels(path, &lab)) &&
         TEST_OK(cluda_image_resize_linear(&rgb, 64, 32, &small));
    if (!ok) break;
    for (int q = 0; q < 128 * 64; q++) {
      uint8_t train = 255;
      for (int c = 0; c < CLASSES; c++)
        if (lab.pixels[q] == label_ids[c]) train = (uint8_t)c;
      lab.pixels[q] = train;
    }
    float *x = test_alloc_f32(64 * 32 * 3);
    uint8_t *pred = test_alloc(128 * 64);
    ok = TEST_OK(cluda_image_normalize(&small, x)) &&
         TEST_OK(cluda_predictor_run_to(&p, x, 32, 64, 64, 128, pred)) &&
         TEST_OK(cluda_confusion_add(&cm, pred, lab.pixels, 128 * 64));
    free(x);
    free(pred);
    cluda_image_free(&rgb);
    cluda_image_free(&small);
    cluda_image_free(&lab);
  }
  cluda_seg_metrics m;
  ok = ok && TEST_OK(cluda_seg_metrics_compute(&cm, CLUDA_PROTOCOL_ALL, &m));
  if (ok) *miou = m.miou;
  cluda_predictor_free(&p);
  cluda_confusion_free(&cm);
  cluda_segmentor_free(&seg);
  free(params);
  free(state);
  return ok;
}

static void test_dataset_root(cli_runner *cr) {
  const char *root = cli_path(cr, "cityscapes");
  make_cityscapes_root(cr, root);
  const char *json = cli_path(cr, "dataset.json");
  cli_result r;
  cli_run(cr, &r, "--config", TINY_CONFIG, "--seed", "4", "--dataset", "cityscapes", "--data-root",
          root, "--set", "eval.scale=[64, 32]", "--json", json, NULL);
  printf("%s", r.out);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "2 images") &&
                 strstr(r.out, "aachen_000000_000019: 128x64 at 64x32, 1 window") &&
                 strstr(r.out, "keep ratio to fit [64, 32]"),
             "--dataset cityscapes: resized to 64x32 (stderr: %s)", r.err);
  char *text = test_read_text(json);
  double got = 0, want = 0;
  if (TEST_CHECK(text && json_number_after(text, "miou19", &got), "dataset JSON") &&
      reference_miou(root, 4, &want))
    TEST_CHECK(fabs(got - want) < 1e-12, "dataset mIoU %.17g = in-process %.17g", got, want);
  free(text);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--dataset", "cityscapes", "--data-root", root,
          "--split", "train", NULL);
  cli_expect_error(cr, &r, "missing split", "train", NULL);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--dataset", "kitti", "--data-root", root, NULL);
  cli_expect_error(cr, &r, "unknown dataset", "kitti", NULL);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--dataset", "cityscapes", "--data-root", root, "--set",
          "eval.scale=[0, 512]", NULL);
  cli_expect_error(cr, &r, "half a scale", "eval.scale [0, 512]", NULL);
}

int main(int argc, char **argv) {
  (void)argc;
  cli_runner cr;
  if (!cli_runner_init(&cr, argv[0], "cluda_eval")) return test_finish("test_eval_cityscapes");
  test_official_numbers(&cr);
  test_matching_and_errors(&cr);
  test_dataset_root(&cr);
  cli_runner_cleanup(&cr);
  return test_finish("test_eval_cityscapes");
}

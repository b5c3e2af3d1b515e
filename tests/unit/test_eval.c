/* Evaluation library: the confusion matrix and mIoU against a hand-computed example and a
 * naive per-class reference on random maps (nanmean rule, 255 ignored, merge = sum), "no
 * class" predictions (cityscapesscripts' false negatives), the 16/13-class protocols,
 * reports, the test resize (mmcv sizes from the spec, pixels against cv2's own output), the
 * sliding-window grid against mmseg's loop (count map), slide = whole when one window covers
 * the image, scores upsampled to the label size, directory pairing and Cityscapes prediction
 * matching. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cluda/config.h"
#include "cluda/eval.h"
#include "cluda/image.h"
#include "cluda/rng.h"
#include "testing.h"
#include "tiny_model.h"

static int near(double a, double b) { return (isnan(a) && isnan(b)) || fabs(a - b) < 1e-12; }

/* 3 classes, 8 pixels (one ignored):
 *   label: 0 0 0 1 1 255 0 1      pred: 0 1 0 1 0 2 0 1
 * class 0: I = 3 (px 0, 2, 6), label 4, pred 4 -> U = 5, IoU 0.6, Acc 0.75
 * class 1: I = 2 (px 3, 7), label 3, pred 3 -> U = 4, IoU 0.5, Acc 2/3
 * class 2: nothing (its only prediction sits on the ignored pixel) -> NaN
 * mIoU = (0.6 + 0.5) / 2 = 0.55; aAcc = 5 / 7. */
static void test_hand_example(void) {
  const uint8_t label[8] = {0, 0, 0, 1, 1, 255, 0, 1};
  const uint8_t pred[8] = {0, 1, 0, 1, 0, 2, 0, 1};
  cluda_confusion cm;
  if (!TEST_OK(cluda_confusion_create(&cm, 3))) return;
  TEST_OK(cluda_confusion_add(&cm, pred, label, 8));
  cluda_seg_metrics m;
  if (TEST_OK(cluda_seg_metrics_compute(&cm, CLUDA_PROTOCOL_ALL, &m))) {
    TEST_CHECK(m.count == 3 && m.intersection[0] == 3 && m.union_[0] == 5 &&
                   m.intersection[1] == 2 && m.union_[1] == 4 && m.union_[2] == 0,
               "hand example: intersections and unions");
    TEST_CHECK(near(m.iou[0], 0.6) && near(m.iou[1], 0.5) && isnan(m.iou[2]),
               "hand example: IoU 0.6, 0.5, NaN (got %g %g %g)", m.iou[0], m.iou[1], m.iou[2]);
    TEST_CHECK(near(m.miou, 0.55), "hand example: mIoU = nanmean = 0.55 (got %.17g)", m.miou);
    TEST_CHECK(near(m.acc[0], 0.75) && near(m.acc[1], 2.0 / 3) && isnan(m.acc[2]),
               "hand example: per-class Acc");
    TEST_CHECK(near(m.aacc, 5.0 / 7) && m.labelled == 7, "hand example: aAcc 5/7 over 7 pixels");
  }
  /* A class predicted but never labelled is IoU 0 (counted), not NaN. */
  const uint8_t label2[2] = {0, 0}, pred2[2] = {0, 2};
  cluda_confusion_reset(&cm);
  TEST_OK(cluda_confusion_add(&cm, pred2, label2, 2));
  if (TEST_OK(cluda_seg_metrics_compute(&cm, CLUDA_PROTOCOL_ALL, &m)))
    TEST_CHECK(near(m.iou[0], 0.5) && isnan(m.iou[1]) && near(m.iou[2], 0) && near(m.miou, 0.25),
               "false positives only: IoU 0 enters the mean (mIoU %g)", m.miou);
  /* Empty matrix: everything NaN. */
  cluda_confusion_reset(&cm);
  if (TEST_OK(cluda_seg_metrics_compute(&cm, CLUDA_PROTOCOL_ALL, &m)))
    TEST_CHECK(isnan(m.miou) && isnan(m.aacc) && m.labelled == 0, "empty matrix: NaN mIoU");

  /* Bad maps: rejected, nothing counted. */
  const uint8_t bad_label[2] = {0, 7}, bad_pred[2] = {0, 3};
  TEST_FAILS(cluda_confusion_add(&cm, pred, bad_label, 2), CLUDA_ERR_ARG, "label 7 at pixel 1");
  TEST_FAILS(cluda_confusion_add(&cm, bad_pred, label2, 2), CLUDA_ERR_ARG, "prediction 3");
  int64_t total = 0;
  for (int i = 0; i < 9; i++)
    total += cm.counts[i];
  TEST_CHECK(total == 0, "a rejected map leaves the matrix untouched");
  TEST_FAILS(cluda_seg_metrics_compute(&cm, CLUDA_PROTOCOL_16, &m), CLUDA_ERR_ARG, "19");
  cluda_confusion other;
  if (TEST_OK(cluda_confusion_create(&other, 4))) {
    TEST_FAILS(cluda_confusion_merge(&cm, &other), CLUDA_ERR_SHAPE, "4-class");
    cluda_confusion_free(&other);
  }
  TEST_FAILS(cluda_confusion_create(&other, 0), CLUDA_ERR_ARG, "num_classes");
  cluda_confusion_free(&cm);
}

/* Predictions of no class (255), by hand, 3 classes:
 *   label: 0 0 1 255 2 2      pred: 0 255 255 1 2 0
 * class 0: I 1; labelled 2 (one predicted no class), predicted 2 (px 0, 5) -> U 3, IoU 1/3
 * class 1: I 0; labelled 1 (predicted no class); its prediction sits on the ignored pixel and
 *          is no false positive -> U 1, IoU 0 (cityscapesscripts: TP 0, FN 1, FP 0)
 * class 2: I 1; labelled 2, predicted 1 -> U 2, IoU 0.5
 * mIoU = (1/3 + 0 + 0.5) / 3; aAcc = 2 / 5 (no-class pixels are labelled and wrong). */
static void test_no_class(void) {
  const uint8_t label[6] = {0, 0, 1, 255, 2, 2}, pred[6] = {0, 255, 255, 1, 2, 0};
  cluda_confusion cm, other;
  if (!TEST_OK(cluda_confusion_create(&cm, 3))) return;
  TEST_OK(cluda_confusion_add(&cm, pred, label, 6));
  cluda_seg_metrics m;
  if (TEST_OK(cluda_seg_metrics_compute(&cm, CLUDA_PROTOCOL_ALL, &m))) {
    TEST_CHECK(m.no_class[0] == 1 && m.no_class[1] == 1 && m.no_class[2] == 0 &&
                   m.label_area[0] == 2 && m.label_area[1] == 1 && m.pred_area[1] == 0,
               "no class: counted in the label areas only");
    TEST_CHECK(near(m.iou[0], 1.0 / 3) && near(m.iou[1], 0) && near(m.iou[2], 0.5),
               "no class: IoU 1/3, 0, 0.5 (got %g %g %g)", m.iou[0], m.iou[1], m.iou[2]);
    TEST_CHECK(near(m.miou, (1.0 / 3 + 0.5) / 3) && near(m.aacc, 0.4) && m.labelled == 5,
               "no class: mIoU and aAcc 2/5");
  }
  if (TEST_OK(cluda_confusion_create(&other, 3))) {
    TEST_OK(cluda_confusion_add(&other, pred, label, 6));
    TEST_OK(cluda_confusion_merge(&other, &cm));
    TEST_CHECK(other.no_class[0] == 2 && other.no_class[1] == 2, "no class: merged");
    cluda_confusion_reset(&other);
    TEST_CHECK(other.no_class[0] == 0 && other.no_class[1] == 0, "no class: reset");
    cluda_confusion_free(&other);
  }
  const uint8_t bad_pred[1] = {254}, one_label[1] = {0};
  TEST_FAILS(cluda_confusion_add(&cm, bad_pred, one_label, 1), CLUDA_ERR_ARG, "prediction 254");
  cluda_confusion_free(&cm);
}

/* Naive reference: per class, count I and U pixel by pixel, mmseg style (histc over the
 * non-ignored pixels), then nanmean. */
static double naive_miou(const uint8_t *pred, const uint8_t *label, size_t n, int k,
                         const int *keep, double *iou_out) {
  double sum = 0;
  int used = 0;
  for (int c = 0; c < k; c++) {
    int64_t inter = 0, area_pred = 0, area_label = 0;
    for (size_t i = 0; i < n; i++) {
      if (label[i] == 255) continue;
      inter += pred[i] == c && label[i] == c;
      area_pred += pred[i] == c;
      area_label += label[i] == c;
    }
    int64_t uni = area_pred + area_label - inter;
    iou_out[c] = uni ? (double)inter / (double)uni : NAN;
    if (keep[c] && uni) {
      sum += iou_out[c];
      used++;
    }
  }
  return used ? sum / used : NAN;
}

static void random_maps(uint8_t *pred, uint8_t *label, size_t n, int k, int absent_class,
                        uint64_t seed) {
  cluda_rng_key key = cluda_rng_make_key(seed, 0, 0, CLUDA_RNG_TEST, 0);
  for (size_t i = 0; i < n; i++) {
    uint32_t bits[4];
    cluda_rng_bits(key, i, bits);
    uint32_t a = bits[0], b = bits[1];
    label[i] = a % 10 == 0 ? 255 : (uint8_t)(a % (uint32_t)k);
    /* predictions agree 40 % of the time, so IoUs are far from 0 and 1 */
    pred[i] = b % 5 < 2 && label[i] != 255 ? label[i] : (uint8_t)(b % (uint32_t)k);
    if (label[i] == absent_class) label[i] = 255;
    if (pred[i] == absent_class) pred[i] = (uint8_t)((absent_class + 1) % k);
  }
}

static void test_random_vs_naive(void) {
  enum { N = 5000, K = 19 };
  uint8_t *pred = test_alloc(N), *label = test_alloc(N);
  random_maps(pred, label, N, K, 12, 7); /* class 12 (rider) never occurs: NaN */
  cluda_confusion whole, a, b;
  TEST_OK(cluda_confusion_create(&whole, K));
  TEST_OK(cluda_confusion_create(&a, K));
  TEST_OK(cluda_confusion_create(&b, K));
  TEST_OK(cluda_confusion_add(&whole, pred, label, N));
  /* Split in two "ranks" (and the first in two images): merge = sum. */
  TEST_OK(cluda_confusion_add(&a, pred, label, 1000));
  TEST_OK(cluda_confusion_add(&a, pred + 1000, label + 1000, 1500));
  TEST_OK(cluda_confusion_add(&b, pred + 2500, label + 2500, N - 2500));
  TEST_OK(cluda_confusion_merge(&a, &b));
  TEST_CHECK(memcmp(a.counts, whole.counts, sizeof(int64_t) * K * K) == 0,
             "merge of per-rank matrices = the matrix of all pixels");

  int keep[3][K];
  const cluda_eval_protocol protocols[3] = {CLUDA_PROTOCOL_ALL, CLUDA_PROTOCOL_16,
                                            CLUDA_PROTOCOL_13};
  const int counts[3] = {19, 16, 13};
  for (int c = 0; c < K; c++) {
    keep[0][c] = 1;
    keep[1][c] = c != 9 && c != 14 && c != 16;
    keep[2][c] = keep[1][c] && c != 3 && c != 4 && c != 5;
  }
  for (int p = 0; p < 3; p++) {
    double iou[K];
    double want = naive_miou(pred, label, N, K, keep[p], iou);
    cluda_seg_metrics m;
    if (!TEST_OK(cluda_seg_metrics_compute(&a, protocols[p], &m))) continue;
    int ok = m.count == counts[p];
    for (int i = 0; i < m.count && ok; i++)
      ok = keep[p][m.classes[i]] && near(m.iou[i], iou[m.classes[i]]) &&
           (i == 0 || m.classes[i] > m.classes[i - 1]);
    TEST_CHECK(ok, "protocol %d: the right classes with the naive per-class IoUs", counts[p]);
    TEST_CHECK(fabs(m.miou - want) < 1e-12, "protocol %d: mIoU %.15f = naive %.15f", counts[p],
               m.miou, want);
    printf("  protocol %d: mIoU %.4f\n", counts[p], m.miou);
  }
  cluda_seg_metrics m;
  if (TEST_OK(cluda_seg_metrics_compute(&a, CLUDA_PROTOCOL_ALL, &m)))
    TEST_CHECK(isnan(m.iou[12]), "an absent class is NaN and left out of the mean");

  /* SYNTHIA: classes 9, 14, 16 never labelled nor predicted would be NaN; with IoU 0 (as
   * when Cityscapes labels them but the model never predicts them), mIoU16 = mIoU19 * 19/16. */
  cluda_confusion s;
  TEST_OK(cluda_confusion_create(&s, K));
  for (size_t i = 0; i < N; i++) {
    if (label[i] == 9 || label[i] == 14 || label[i] == 16) continue;
    uint8_t pr = pred[i] == 9 || pred[i] == 14 || pred[i] == 16 ? 0 : pred[i];
    TEST_OK(cluda_confusion_add(&s, &pr, &label[i], 1));
  }
  const uint8_t l9 = 9, p0 = 0;
  TEST_OK(cluda_confusion_add(&s, &p0, &l9, 1)); /* terrain labelled once, never predicted */
  const uint8_t l14 = 14, l16 = 16;
  TEST_OK(cluda_confusion_add(&s, &p0, &l14, 1));
  TEST_OK(cluda_confusion_add(&s, &p0, &l16, 1));
  cluda_seg_metrics m19, m16;
  if (TEST_OK(cluda_seg_metrics_compute(&s, CLUDA_PROTOCOL_ALL, &m19)) &&
      TEST_OK(cluda_seg_metrics_compute(&s, CLUDA_PROTOCOL_16, &m16))) {
    /* class 12 is NaN in both: 18 vs 15 classes enter the means */
    TEST_CHECK(fabs(m16.miou - m19.miou * 18.0 / 15.0) < 1e-12,
               "mIoU16 = mIoU19 * 18/15 when terrain, truck, train score 0 (and rider is absent)");
  }
  cluda_confusion_free(&s);
  cluda_confusion_free(&whole);
  cluda_confusion_free(&a);
  cluda_confusion_free(&b);
  free(pred);
  free(label);
}

/* The line of text starting with prefix, without its newline. */
static void line_of(const char *text, const char *prefix, char *out, size_t size) {
  for (const char *line = text; line && *line;
       line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL)
    if (!strncmp(line, prefix, strlen(prefix))) {
      size_t n = strcspn(line, "\n");
      snprintf(out, size, "%.*s", (int)(n < size ? n : size - 1), line);
      return;
    }
}

static char *report_text(const cluda_confusion *cm, cluda_eval_protocol protocol, int json) {
  char *buf = NULL;
  size_t size = 0;
  FILE *f = open_memstream(&buf, &size);
  if (!f) return NULL;
  if (json)
    TEST_OK(cluda_eval_write_json(cm, protocol, 4, f));
  else
    TEST_OK(cluda_eval_write_table(cm, protocol, f));
  fclose(f);
  return buf;
}

static void test_reports(void) {
  cluda_confusion cm;
  if (!TEST_OK(cluda_confusion_create(&cm, 19))) return;
  const uint8_t label[6] = {0, 0, 3, 9, 255, 18}, pred[6] = {0, 1, 3, 9, 5, 18};
  TEST_OK(cluda_confusion_add(&cm, pred, label, 6));
  char *table = report_text(&cm, CLUDA_PROTOCOL_13, 0);
  if (table) {
    printf("%s", table);
    TEST_CHECK(strstr(table, "road") && strstr(table, "bicycle") && strstr(table, "mIoU19") &&
                   strstr(table, "mIoU16") && strstr(table, "mIoU13") && strstr(table, "aAcc"),
               "table: class names and the three summaries");
    char terrain[128] = "", rider[128] = "";
    line_of(table, "terrain ", terrain, sizeof terrain);
    line_of(table, "rider ", rider, sizeof rider);
    TEST_CHECK(strstr(terrain, " 100.00 ") && strstr(terrain, " 1 19") && !strstr(terrain, "19,16"),
               "table row: terrain only in the 19-class protocol: %s", terrain);
    TEST_CHECK(!strstr(rider, ".") && strstr(rider, " - ") && strstr(rider, " 0 19,16,13"),
               "table row: NaN printed as -: %s", rider);
  }
  char *table19 = report_text(&cm, CLUDA_PROTOCOL_ALL, 0);
  if (table19)
    TEST_CHECK(strstr(table19, "mIoU19") && !strstr(table19, "mIoU16"),
               "protocol 19: no SYNTHIA summaries");
  char *json = report_text(&cm, CLUDA_PROTOCOL_16, 1);
  if (json) {
    printf("%.300s...\n", json);
    /* road: I 1, U 2; sidewalk: U 1, I 0; wall, terrain, bicycle: 1; others NaN */
    TEST_CHECK(strstr(json, "\"num_classes\": 19, \"protocol\": 16, \"images\": 4, \"miou\": ") &&
                   strstr(json, "\"miou19\": ") && strstr(json, "\"miou16\": ") &&
                   strstr(json, "\"miou13\": ") && strstr(json, "\"labelled_pixels\": 5"),
               "json: header fields");
    TEST_CHECK(strstr(json, "{\"id\": 0, \"name\": \"road\", \"iou\": 0.5, \"acc\": 0.5, "
                            "\"intersection\": 1, \"union\": 2, \"label_pixels\": 2, "
                            "\"pred_pixels\": 1, \"no_class_pixels\": 0}") != NULL,
               "json: the road entry");
    TEST_CHECK(strstr(json, "\"name\": \"rider\", \"iou\": null, \"acc\": null") != NULL,
               "json: NaN as null");
    /* 19: (0.5 + 0 + 1 + 1 + 1) / 5 = 0.7; 16 drops terrain: 2.5 / 4 */
    TEST_CHECK(strstr(json, "\"miou\": 0.625, \"miou19\": 0.69999999999999996, \"miou16\": "
                            "0.625, \"miou13\": 0.5") != NULL,
               "json: the mIoU values");
  }
  free(table);
  free(table19);
  free(json);
  cluda_confusion small;
  if (TEST_OK(cluda_confusion_create(&small, 4))) {
    char *t = report_text(&small, CLUDA_PROTOCOL_ALL, 0);
    if (t) TEST_CHECK(strstr(t, "class 3") && strstr(t, "mIoU4"), "K = 4: generic class names");
    free(t);
    cluda_confusion_free(&small);
  }
  cluda_confusion_free(&cm);
}

/* ---- the test resize ---- */

static void test_rescale_size(void) {
  /* Spec (algorithm.md 4.3 and 7) and hand-computed sizes: width, height, scale -> size. */
  const int cases[][6] = {
      {2048, 1024, 1024, 512, 1024, 512},   /* DAFormer test: Cityscapes */
      {2048, 1024, 2048, 1024, 2048, 1024}, /* HRDA test: unchanged */
      {1914, 1052, 1280, 720, 1280, 704},   /* GTA source resize */
      {1914, 1052, 2560, 1440, 2560, 1407}, /* HRDA GTA */
      {1280, 760, 1280, 760, 1280, 760},    /* SYNTHIA */
      {64, 48, 1024, 512, 683, 512},        /* 48 -> 512: x 10.667, 64 * 10.667 = 682.67 */
      {48, 64, 512, 1024, 512, 683},        /* portrait: the long side is the height */
      {100, 10, 50, 40, 50, 5},             /* the long side limits */
  };
  int ok = 1;
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    int w = 0, h = 0;
    cluda_status s =
        cluda_image_rescale_size(cases[i][0], cases[i][1], cases[i][2], cases[i][3], &w, &h);
    int w2 = 0, h2 = 0; /* the scale's order does not matter */
    cluda_status s2 =
        cluda_image_rescale_size(cases[i][0], cases[i][1], cases[i][3], cases[i][2], &w2, &h2);
    if (s.code || s2.code || w != cases[i][4] || h != cases[i][5] || w2 != w || h2 != h) {
      printf("  %dx%d at (%d, %d): got %dx%d / %dx%d, want %dx%d\n", cases[i][0], cases[i][1],
             cases[i][2], cases[i][3], w, h, w2, h2, cases[i][4], cases[i][5]);
      ok = 0;
    }
  }
  TEST_CHECK(ok, "rescale sizes: mmcv imrescale");
  int w, h;
  TEST_FAILS(cluda_image_rescale_size(64, 48, 0, 512, &w, &h), CLUDA_ERR_ARG, "positive");
}

static void test_resize_against_cv2(void) {
  static const int sizes[][2] = {{15, 9}, {64, 38}, {11, 7}, {30, 18}, {1, 1}, {45, 13}};
  char path[1024];
  cluda_image input;
  snprintf(path, sizeof path, "%s/cityscapes_eval/resize/input.png", CLUDA_FIXTURE_DIR);
  if (!TEST_OK(cluda_png_read_rgb(path, &input))) return;
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    cluda_image want, got;
    snprintf(path, sizeof path, "%s/cityscapes_eval/resize/cv2_%dx%d.png", CLUDA_FIXTURE_DIR,
             sizes[i][0], sizes[i][1]);
    if (!TEST_OK(cluda_png_read_rgb(path, &want))) continue;
    if (TEST_OK(cluda_image_resize_linear(&input, sizes[i][0], sizes[i][1], &got))) {
      size_t n = (size_t)sizes[i][0] * sizes[i][1] * 3, differ = 0;
      for (size_t q = 0; q < n; q++)
        differ += got.pixels[q] != want.pixels[q];
      TEST_CHECK(got.width == want.width && got.height == want.height && differ == 0,
                 "resize 30x18 -> %dx%d = cv2.resize INTER_LINEAR (%zu of %zu bytes differ)",
                 sizes[i][0], sizes[i][1], differ, n);
      cluda_image_free(&got);
    }
    cluda_image_free(&want);
  }
  /* Gray images: the 2x2 mean rounded half up at an exact half (cv2's area path), by hand. */
  cluda_image gray, half;
  if (TEST_OK(cluda_image_create(&gray, 4, 2, 1))) {
    const uint8_t values[8] = {0, 1, 10, 20, 0, 2, 30, 41};
    memcpy(gray.pixels, values, 8);
    if (TEST_OK(cluda_image_resize_linear(&gray, 2, 1, &half))) {
      /* (0 + 1 + 0 + 2 + 2) >> 2 = 1 (0.75 rounds to 1); (10 + 20 + 30 + 41 + 2) >> 2 = 25 */
      TEST_CHECK(half.pixels[0] == 1 && half.pixels[1] == 25, "gray half: 1, 25 (got %d, %d)",
                 half.pixels[0], half.pixels[1]);
      cluda_image_free(&half);
    }
    TEST_FAILS(cluda_image_resize_linear(&gray, 0, 3, &half), CLUDA_ERR_ARG, "target size");
    cluda_image_free(&gray);
  }
  cluda_image_free(&input);
}

/* mmseg slide_inference's loop, literally. */
static void mmseg_windows(int h_img, int w_img, int h_crop, int w_crop, int h_stride, int w_stride,
                          int *rows, int *cols, int (*corners)[4], int max) {
  int h_grids =
      (h_img - h_crop + h_stride - 1 > 0 ? h_img - h_crop + h_stride - 1 : 0) / h_stride + 1;
  int w_grids =
      (w_img - w_crop + w_stride - 1 > 0 ? w_img - w_crop + w_stride - 1 : 0) / w_stride + 1;
  int n = 0;
  for (int h_idx = 0; h_idx < h_grids; h_idx++)
    for (int w_idx = 0; w_idx < w_grids; w_idx++) {
      int y1 = h_idx * h_stride, x1 = w_idx * w_stride;
      int y2 = y1 + h_crop < h_img ? y1 + h_crop : h_img;
      int x2 = x1 + w_crop < w_img ? x1 + w_crop : w_img;
      y1 = y2 - h_crop > 0 ? y2 - h_crop : 0;
      x1 = x2 - w_crop > 0 ? x2 - w_crop : 0;
      if (n < max) {
        corners[n][0] = y1;
        corners[n][1] = x1;
        corners[n][2] = y2;
        corners[n][3] = x2;
      }
      n++;
    }
  *rows = h_grids;
  *cols = w_grids;
}

static void test_slide_grid(void) {
  /* HRDA test: 1024x2048 image, crop 1024, stride 512 -> 1 x 3 windows at x 0, 512, 1024. */
  cluda_slide_grid g;
  if (TEST_OK(cluda_slide_grid_for(1024, 2048, 1024, 1024, 512, 512, &g))) {
    int y, x0, x1, x2;
    cluda_slide_window(&g, 0, 0, &y, &x0);
    cluda_slide_window(&g, 0, 1, &y, &x1);
    cluda_slide_window(&g, 0, 2, &y, &x2);
    TEST_CHECK(g.rows == 1 && g.cols == 3 && x0 == 0 && x1 == 512 && x2 == 1024 && y == 0,
               "Cityscapes: 1x3 windows at x = 0, 512, 1024 (%dx%d)", g.rows, g.cols);
  }
  const int cases[][6] = {
      {100, 150, 64, 64, 32, 48}, {64, 64, 64, 64, 32, 32},   {50, 70, 64, 64, 16, 16},
      {97, 203, 40, 33, 7, 11},   {33, 33, 32, 32, 100, 100}, {128, 96, 64, 64, 64, 64},
      {300, 41, 100, 41, 99, 1},
  };
  int all_ok = 1;
  for (size_t t = 0; t < sizeof cases / sizeof cases[0]; t++) {
    const int *c = cases[t];
    int rows, cols, corners[4096][4];
    mmseg_windows(c[0], c[1], c[2], c[3], c[4], c[5], &rows, &cols, corners, 4096);
    if (!TEST_OK(cluda_slide_grid_for(c[0], c[1], c[2], c[3], c[4], c[5], &g))) continue;
    int ok = g.rows == rows && g.cols == cols;
    /* The count map of both window lists. */
    int *count_ref = calloc((size_t)c[0] * c[1], sizeof(int));
    int *count = calloc((size_t)c[0] * c[1], sizeof(int));
    for (int r = 0; r < rows && ok; r++)
      for (int q = 0; q < cols && ok; q++) {
        const int *w = corners[r * cols + q];
        int y1, x1;
        cluda_slide_window(&g, r, q, &y1, &x1);
        ok = y1 == w[0] && x1 == w[1] && y1 + g.win_h == w[2] && x1 + g.win_w == w[3];
        for (int y = w[0]; y < w[2]; y++)
          for (int x = w[1]; x < w[3]; x++)
            count_ref[y * c[1] + x]++;
        for (int y = y1; y < y1 + g.win_h; y++)
          for (int x = x1; x < x1 + g.win_w; x++)
            count[y * c[1] + x]++;
      }
    int covered = 1;
    for (int i = 0; i < c[0] * c[1]; i++)
      covered &= count[i] >= 1;
    ok = ok && covered && memcmp(count, count_ref, sizeof(int) * (size_t)c[0] * c[1]) == 0;
    if (!ok)
      printf("  grid mismatch for image %dx%d crop %dx%d stride %dx%d\n", c[0], c[1], c[2], c[3],
             c[4], c[5]);
    all_ok &= ok;
    free(count_ref);
    free(count);
  }
  TEST_CHECK(all_ok, "window grid, corners and count map = mmseg slide_inference");
  TEST_FAILS(cluda_slide_grid_for(10, 10, 0, 4, 1, 1, &g), CLUDA_ERR_ARG, "positive");
}

/* ---- prediction with the tiny network ---- */

typedef struct tiny {
  cluda_segmentor seg;
  float *params, *state;
} tiny;

static int make_tiny(tiny *m) {
  cluda_config cfg;
  cluda_segmentor_config sc;
  memset(m, 0, sizeof *m);
  if (!TEST_OK(cluda_config_init(&cfg))) return 0;
  int ok = TEST_OK(cluda_config_load_file(&cfg, TINY_CONFIG)) &&
           TEST_OK(cluda_config_to_segmentor_config(&cfg, &sc));
  cluda_config_free(&cfg);
  if (!ok || !TEST_OK(cluda_segmentor_create(&m->seg, &sc))) return 0;
  m->params = test_alloc_f32((int64_t)m->seg.params.total);
  m->state = test_alloc_f32((int64_t)(m->seg.state.total ? m->seg.state.total : 1));
  memset(m->state, 0, sizeof(float) * m->seg.state.total);
  return TEST_OK(cluda_segmentor_init(&m->seg, m->params, m->state, 5));
}

static void free_tiny(tiny *m) {
  cluda_segmentor_free(&m->seg);
  free(m->params);
  free(m->state);
}

static void test_predictor(void) {
  tiny m;
  if (!make_tiny(&m)) return;
  enum { H = 40, W = 72, K = 19 };
  float *x = test_alloc_f32(H * W * 3);
  test_fill_uniform(x, H * W * 3, -2, 2, 3, 0);
  uint8_t whole_labels[H * W], slide_labels[H * W];
  float *whole_scores = test_alloc_f32(H * W * K);
  cluda_predictor p;
  cluda_infer_settings st = {CLUDA_INFER_WHOLE, 0, 0, 0, 0};
  if (TEST_OK(cluda_predictor_init(&p, &m.seg, m.params, m.state, &st))) {
    TEST_OK(cluda_predictor_run(&p, x, H, W, whole_labels));
    memcpy(whole_scores, p.canvas, sizeof(float) * H * W * K);
    int argmax_ok = 1;
    for (int q = 0; q < H * W; q++)
      for (int k = 0; k < K; k++)
        argmax_ok &= whole_scores[q * K + k] <= whole_scores[q * K + whole_labels[q]];
    TEST_CHECK(argmax_ok, "whole: labels = argmax of the scores");
    /* Buffers are reused across images and grown for a larger one. */
    uint8_t again[H * W];
    TEST_OK(cluda_predictor_run(&p, x, H, W, again));
    TEST_CHECK(memcmp(again, whole_labels, sizeof again) == 0, "whole: deterministic");
    TEST_FAILS(cluda_predictor_run(&p, x, 20, 72, again), CLUDA_ERR_UNSUPPORTED, "at least 32");
    cluda_predictor_free(&p);
  }
  /* One window covering the image (crop >= image): bit-identical to whole. */
  cluda_infer_settings big = {CLUDA_INFER_SLIDE, 64, 128, 16, 16};
  if (TEST_OK(cluda_predictor_init(&p, &m.seg, m.params, m.state, &big))) {
    TEST_OK(cluda_predictor_run(&p, x, H, W, slide_labels));
    TEST_CHECK(memcmp(slide_labels, whole_labels, sizeof slide_labels) == 0 &&
                   memcmp(p.canvas, whole_scores, sizeof(float) * H * W * K) == 0,
               "slide with crop >= image = whole, scores bit-identical");
    cluda_predictor_free(&p);
  }
  /* Overlapping windows: the scores are the count-normalised sum of per-window whole-image
   * predictions of the crops. */
  cluda_infer_settings slide = {CLUDA_INFER_SLIDE, 32, 48, 8, 16};
  cluda_predictor ref;
  cluda_infer_settings whole_st = {CLUDA_INFER_WHOLE, 0, 0, 0, 0};
  if (TEST_OK(cluda_predictor_init(&p, &m.seg, m.params, m.state, &slide)) &&
      TEST_OK(cluda_predictor_init(&ref, &m.seg, m.params, m.state, &whole_st))) {
    TEST_OK(cluda_predictor_run(&p, x, H, W, slide_labels));
    cluda_slide_grid g;
    TEST_OK(cluda_slide_grid_for(H, W, 32, 48, 8, 16, &g));
    double *sum = test_alloc_f64(H * W * K);
    int *count = calloc(H * W, sizeof(int));
    memset(sum, 0, sizeof(double) * H * W * K);
    float *crop = test_alloc_f32(32 * 48 * 3);
    uint8_t crop_labels[32 * 48];
    for (int r = 0; r < g.rows; r++)
      for (int c = 0; c < g.cols; c++) {
        int y1, x1;
        cluda_slide_window(&g, r, c, &y1, &x1);
        for (int y = 0; y < 32; y++)
          memcpy(crop + y * 48 * 3, x + ((y1 + y) * W + x1) * 3, sizeof(float) * 48 * 3);
        TEST_OK(cluda_predictor_run(&ref, crop, 32, 48, crop_labels));
        for (int y = 0; y < 32; y++)
          for (int xx = 0; xx < 48; xx++) {
            count[(y1 + y) * W + x1 + xx]++;
            for (int k = 0; k < K; k++)
              sum[((y1 + y) * W + x1 + xx) * K + k] += ref.canvas[(y * 48 + xx) * K + k];
          }
      }
    for (int q = 0; q < H * W; q++)
      for (int k = 0; k < K; k++)
        sum[q * K + k] /= count[q];
    printf("  slide 32x48 / 8x16 on 40x72: %dx%d windows\n", g.rows, g.cols);
    test_compare("slide scores = count-normalised window sums", p.canvas, sum, H * W * K, 1e-5,
                 1e-5);
    int same = 0;
    for (int q = 0; q < H * W; q++)
      same += slide_labels[q] == whole_labels[q];
    printf("  slide and whole agree on %d of %d pixels\n", same, H * W);
    free(sum);
    free(count);
    free(crop);
    cluda_predictor_free(&ref);
    cluda_predictor_free(&p);
  }
  /* Scores of the 40x72 input upsampled to a 60x100 label map (mmseg rescale): bilinear,
   * align_corners False, by the formula; labels their argmax. */
  if (TEST_OK(cluda_predictor_init(&p, &m.seg, m.params, m.state, &whole_st))) {
    enum { OH = 60, OW = 100 };
    uint8_t *big_labels = test_alloc(OH * OW);
    if (TEST_OK(cluda_predictor_run_to(&p, x, H, W, OH, OW, big_labels))) {
      double *want = test_alloc_f64(OH * OW * K);
      for (int y = 0; y < OH; y++)
        for (int xx = 0; xx < OW; xx++) {
          double sy = fmax(0, (y + 0.5) * H / OH - 0.5), sx = fmax(0, (xx + 0.5) * W / OW - 0.5);
          int y0 = (int)sy, x0 = (int)sx;
          int y1 = y0 + 1 < H ? y0 + 1 : H - 1, x1 = x0 + 1 < W ? x0 + 1 : W - 1;
          double fy = sy - y0, fx = sx - x0;
          for (int k = 0; k < K; k++)
            want[(y * OW + xx) * K + k] =
                (1 - fy) * ((1 - fx) * whole_scores[(y0 * W + x0) * K + k] +
                            fx * whole_scores[(y0 * W + x1) * K + k]) +
                fy * ((1 - fx) * whole_scores[(y1 * W + x0) * K + k] +
                      fx * whole_scores[(y1 * W + x1) * K + k]);
        }
      test_compare("run_to: scores upsampled to the label size", p.output, want, OH * OW * K, 1e-5,
                   1e-5);
      int argmax_ok = 1;
      for (int q = 0; q < OH * OW; q++)
        for (int k = 0; k < K; k++)
          argmax_ok &= p.output[q * K + k] <= p.output[q * K + big_labels[q]];
      TEST_CHECK(argmax_ok, "run_to: labels = argmax of the upsampled scores");
      free(want);
    }
    uint8_t same_size[H * W];
    TEST_OK(cluda_predictor_run_to(&p, x, H, W, H, W, same_size));
    TEST_CHECK(memcmp(same_size, whole_labels, sizeof same_size) == 0,
               "run_to at the input size = run");
    free(big_labels);
    cluda_predictor_free(&p);
  }
  cluda_infer_settings bad = {CLUDA_INFER_SLIDE, 16, 64, 8, 8};
  TEST_FAILS(cluda_predictor_init(&p, &m.seg, m.params, m.state, &bad), CLUDA_ERR_ARG, "crop");
  free(whole_scores);
  free(x);
  free_tiny(&m);
}

/* ---- directory pairing ---- */

static void touch_png(const char *dir, const char *name) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  cluda_image img;
  if (TEST_OK(cluda_image_create(&img, 2, 2, 1))) {
    TEST_OK(cluda_png_write(path, &img));
    cluda_image_free(&img);
  }
}

static void test_pairs(const char *base) {
  char dir[600];
  snprintf(dir, sizeof dir, "%s/pairs", base);
  mkdir(dir, 0755);
  touch_png(dir, "00001_rgb.png");
  touch_png(dir, "00001_labelTrainIds.png");
  touch_png(dir, "00001_color.png");
  touch_png(dir, "00000_labelTrainIds.png");
  touch_png(dir, "00000.png"); /* GTA-style image name */
  touch_png(dir, "aachen_000000_000019_leftImg8bit.png");
  touch_png(dir, "aachen_000000_000019_gtFine_labelTrainIds.png");
  touch_png(dir, "stray.png");
  cluda_eval_pairs pairs;
  if (TEST_OK(cluda_eval_list_pairs(dir, &pairs))) {
    int ok = pairs.count == 3;
    const char *names[3] = {"00000", "00001", "aachen_000000_000019"};
    const char *images[3] = {"00000.png", "00001_rgb.png", "aachen_000000_000019_leftImg8bit.png"};
    for (int i = 0; i < 3 && ok; i++) {
      const char *img = strrchr(pairs.items[i].image, '/');
      ok = !strcmp(pairs.items[i].name, names[i]) && img && !strcmp(img + 1, images[i]);
    }
    TEST_CHECK(ok, "pairs: GTA, synthetic and Cityscapes names, sorted");
    TEST_CHECK(pairs.unlabelled == 1, "pairs: one stray image (colour files not counted), got %d",
               pairs.unlabelled);
    cluda_eval_pairs_free(&pairs);
  }
  touch_png(dir, "00002_labelTrainIds.png");
  TEST_FAILS(cluda_eval_list_pairs(dir, &pairs), CLUDA_ERR_IO, "00002_rgb.png or 00002.png");
  char empty[640];
  snprintf(empty, sizeof empty, "%s/empty", base);
  mkdir(empty, 0755);
  touch_png(empty, "a.png");
  TEST_FAILS(cluda_eval_list_pairs(empty, &pairs), CLUDA_ERR_IO, "no image/label pairs");
  snprintf(empty, sizeof empty, "%s/missing", base);
  TEST_FAILS(cluda_eval_list_pairs(empty, &pairs), CLUDA_ERR_IO, "cannot access");
  snprintf(empty, sizeof empty, "%s/pairs/stray.png", base);
  TEST_FAILS(cluda_eval_list_pairs(empty, &pairs), CLUDA_ERR_IO, "not a directory");
}

int main(void) {
  char base[] = "/tmp/cluda_test_eval_XXXXXX";
  test_hand_example();
  test_no_class();
  test_random_vs_naive();
  test_reports();
  test_rescale_size();
  test_resize_against_cv2();
  test_slide_grid();
  test_predictor();
  if (mkdtemp(base)) {
    test_pairs(base);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", base);
    if (system(cmd) != 0) printf("could not remove %s\n", base);
  } else {
    TEST_CHECK(0, "mkdtemp");
  }
  return test_finish("test_eval");
}

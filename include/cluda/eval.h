/* Evaluation (algorithm.md 7): the confusion matrix and mIoU of mmseg, the 19/16/13-class
 * protocols, whole-image and sliding-window inference, and directories of image/label
 * pairs.
 *
 * Metric semantics (mmseg `mean_iou`): pixels whose label is 255 are skipped; per class c,
 * I_c = pixels labelled c and predicted c, U_c = pixels labelled c or predicted c, both
 * accumulated over the whole split; IoU_c = I_c / U_c, NaN when U_c = 0 (the class is in
 * neither the labels nor the predictions); mIoU = the mean of the IoUs that are not NaN.
 * The 16- and 13-class protocols select classes of the same 19-class matrix: a pixel of a
 * dropped class predicted as a kept class still counts against the kept class. */
#ifndef CLUDA_EVAL_H
#define CLUDA_EVAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "cluda/arena.h"
#include "cluda/segmentor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The classifier allows up to 254 classes (255 is the ignore label). */
enum { CLUDA_EVAL_MAX_CLASSES = 254 };

/* ---- confusion matrix ---- */
typedef struct cluda_confusion {
  int num_classes;
  int64_t *counts; /* [label * num_classes + prediction], owned */
} cluda_confusion;

cluda_status cluda_confusion_create(cluda_confusion *cm, int num_classes);
void cluda_confusion_free(cluda_confusion *cm);
void cluda_confusion_reset(cluda_confusion *cm);
/* Counts n pixels. Labels 255 are skipped; any other label >= num_classes, or a prediction
 * >= num_classes, is an error (nothing is counted then), since mmseg would silently drop
 * such a label from the class areas but not the prediction. */
cluda_status cluda_confusion_add(cluda_confusion *cm, const uint8_t *pred, const uint8_t *label,
                                 size_t n);
/* dst += src (per-rank matrices combine by element-wise sums). */
cluda_status cluda_confusion_merge(cluda_confusion *dst, const cluda_confusion *src);

/* ---- metrics of one protocol ---- */
typedef enum cluda_eval_protocol {
  CLUDA_PROTOCOL_ALL = 0, /* every class of the matrix (19 for Cityscapes) */
  CLUDA_PROTOCOL_16 = 16, /* SYNTHIA: without terrain (9), truck (14), train (16) */
  CLUDA_PROTOCOL_13 = 13  /* also without wall (3), fence (4), pole (5) */
} cluda_eval_protocol;

typedef struct cluda_seg_metrics {
  int count;                           /* classes in the protocol */
  int classes[CLUDA_EVAL_MAX_CLASSES]; /* their train ids */
  int64_t intersection[CLUDA_EVAL_MAX_CLASSES], union_[CLUDA_EVAL_MAX_CLASSES];
  int64_t label_area[CLUDA_EVAL_MAX_CLASSES], pred_area[CLUDA_EVAL_MAX_CLASSES];
  double iou[CLUDA_EVAL_MAX_CLASSES]; /* I / U; NaN when U = 0 */
  double acc[CLUDA_EVAL_MAX_CLASSES]; /* I / label area (mmseg "Acc"); NaN when no label */
  double miou, macc;                  /* nanmeans over the protocol's classes (NaN if none) */
  double aacc;                        /* all classes of the matrix: sum I / labelled pixels */
  int64_t labelled;                   /* pixels with a label other than 255 */
} cluda_seg_metrics;

/* The 16 and 13 protocols need a 19-class matrix. Values are fractions (not x100). */
cluda_status cluda_seg_metrics_compute(const cluda_confusion *cm, cluda_eval_protocol protocol,
                                       cluda_seg_metrics *out);
/* "road", ... for 19 classes, else "class 7" (buf holds at least 16 bytes). */
const char *cluda_eval_class_name(int num_classes, int class_id, char *buf, size_t size);

/* Prints the per-class table (IoU, Acc, labelled pixels; "-" for NaN) and the summary lines:
 * mIoU over all classes, and mIoU16 / mIoU13 for those protocols (13 also prints 16). */
cluda_status cluda_eval_write_table(const cluda_confusion *cm, cluda_eval_protocol protocol,
                                    FILE *out);
/* The same as one JSON object: {"num_classes", "protocol", "miou" (the protocol's), "miou19"
 * / "miou16" / "miou13" (those that apply), "macc", "aacc", "labelled_pixels", "images",
 * "classes": [{"id", "name", "iou", "acc", "intersection", "union", "label_pixels",
 * "pred_pixels"}]}; NaN is written as null. */
cluda_status cluda_eval_write_json(const cluda_confusion *cm, cluda_eval_protocol protocol,
                                   int images, FILE *out);

/* ---- sliding windows (mmseg slide_inference) ---- */
typedef struct cluda_slide_grid {
  int rows, cols;   /* h_grids = max(H - crop_h + stride_h - 1, 0) / stride_h + 1 */
  int win_h, win_w; /* every window: min(crop, image side) */
  int stride_h, stride_w, height, width;
} cluda_slide_grid;

cluda_status cluda_slide_grid_for(int height, int width, int crop_h, int crop_w, int stride_h,
                                  int stride_w, cluda_slide_grid *grid);
/* Top-left corner of window (row, col): y1 = row * stride, y2 = min(y1 + crop, H), y1 =
 * max(y2 - crop, 0); likewise x. */
void cluda_slide_window(const cluda_slide_grid *grid, int row, int col, int *y1, int *x1);

/* ---- prediction of one image (CPU) ---- */
typedef enum cluda_infer_mode { CLUDA_INFER_WHOLE = 0, CLUDA_INFER_SLIDE = 1 } cluda_infer_mode;

typedef struct cluda_infer_settings {
  cluda_infer_mode mode;
  int crop_h, crop_w, stride_h, stride_w; /* slide only */
} cluda_infer_settings;

/* The network's buffers, planned per window size and reused across images of one size. */
typedef struct cluda_predictor {
  const cluda_segmentor *model;
  const float *params;
  float *state; /* read only in inference mode; the forward's signature is shared */
  cluda_infer_settings settings;
  int plan_h, plan_w;
  cluda_segmentor_plan plan;
  void *acts;
  cluda_arena scratch;
  int scratch_created;
  float *window_x, *window_logits; /* window input; its logits upsampled to the window */
  size_t canvas_pixels;
  float *canvas, *count; /* [H, W, K] summed logits; [H, W] windows per pixel */
} cluda_predictor;

/* Smallest window side the encoder accepts (its total stride, and the stage-1 SR conv). */
enum { CLUDA_MIN_IMAGE_SIDE = 32 };

cluda_status cluda_predictor_init(cluda_predictor *p, const cluda_segmentor *model,
                                  const float *params, float *state,
                                  const cluda_infer_settings *settings);
void cluda_predictor_free(cluda_predictor *p);
/* x: the normalised image [H, W, 3]. Inference mode (no dropout, BatchNorm running
 * statistics). Whole: logits upsampled bilinearly (align_corners False) to H x W. Slide:
 * each window's logits upsampled to the window, summed into the canvas and divided by the
 * window count. labels[H * W] = argmax (ties to the lower class); afterwards p->canvas
 * holds the [H, W, K] scores. With one window covering the image, slide = whole exactly. */
cluda_status cluda_predictor_run(cluda_predictor *p, const float *x, int height, int width,
                                 uint8_t *labels);

/* ---- directories of image/label pairs ---- */
typedef struct cluda_eval_pair {
  char *name; /* the shared stem ("00012", "aachen_000000_000019") */
  char *image, *label;
} cluda_eval_pair;

typedef struct cluda_eval_pairs {
  cluda_eval_pair *items;
  int count;
  int unlabelled; /* other *.png files, not counting *_color.png (skipped) */
} cluda_eval_pairs;

/* Every label file in dir (not recursive), by name, with its image. Rules, first match:
 *   <x>_gtFine_labelTrainIds.png  <-  <x>_leftImg8bit.png   (Cityscapes)
 *   <x>_labelTrainIds.png         <-  <x>_rgb.png, else <x>.png (synthetic data, GTA)
 * A label without its image, or a directory without labels, is an error. */
cluda_status cluda_eval_list_pairs(const char *dir, cluda_eval_pairs *pairs);
void cluda_eval_pairs_free(cluda_eval_pairs *pairs);

#ifdef __cplusplus
}
#endif
#endif

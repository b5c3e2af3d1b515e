/* Evaluation (algorithm.md 7): the confusion matrix and mIoU of mmseg, the 19/16/13-class
 * protocols, the test-time resize, whole-image and sliding-window inference, directories of
 * image/label pairs, and prediction files scored against Cityscapes ground truth exactly as
 * cityscapesscripts' evalPixelLevelSemanticLabeling does.
 *
 * Metric semantics (mmseg `mean_iou`): pixels whose label is 255 are skipped; per class c,
 * I_c = pixels labelled c and predicted c, U_c = pixels labelled c or predicted c, both
 * accumulated over the whole split; IoU_c = I_c / U_c, NaN when U_c = 0 (the class is in
 * neither the labels nor the predictions); mIoU = the mean of the IoUs that are not NaN.
 * The 16- and 13-class protocols select classes of the same 19-class matrix: a pixel of a
 * dropped class predicted as a kept class still counts against the kept class.
 * A prediction of 255 means "no class" (a Cityscapes label id that is not evaluated): it is
 * a miss of the pixel's labelled class and no class's false positive. This is the official
 * script's TP / (TP + FP + FN) with FP counted only on evaluated labels, so both agree. */
#ifndef CLUDA_EVAL_H
#define CLUDA_EVAL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "cluda/arena.h"
#include "cluda/image.h"
#include "cluda/segmentor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The classifier allows up to 254 classes (255 is the ignore label). */
enum { CLUDA_EVAL_MAX_CLASSES = 254 };

/* ---- confusion matrix ---- */
typedef struct cluda_confusion {
  int num_classes;
  int64_t *counts;   /* [label * num_classes + prediction], owned */
  int64_t *no_class; /* [label]: pixels predicted 255 (no class), owned */
} cluda_confusion;

/* The prediction value that stands for "no evaluated class". */
enum { CLUDA_NO_CLASS = 255 };

cluda_status cluda_confusion_create(cluda_confusion *cm, int num_classes);
void cluda_confusion_free(cluda_confusion *cm);
void cluda_confusion_reset(cluda_confusion *cm);
/* Counts n pixels. Labels 255 are skipped; predictions 255 count as no class. Any other
 * label >= num_classes, or prediction >= num_classes, is an error (nothing is counted then),
 * since mmseg would silently drop such a label from the class areas but not the
 * prediction. */
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
  int64_t no_class[CLUDA_EVAL_MAX_CLASSES]; /* labelled pixels predicted as no class */
  double iou[CLUDA_EVAL_MAX_CLASSES];       /* I / U; NaN when U = 0 */
  double acc[CLUDA_EVAL_MAX_CLASSES];       /* I / label area (mmseg "Acc"); NaN when no label */
  double miou, macc;                        /* nanmeans over the protocol's classes (NaN if none) */
  double aacc;                              /* all classes of the matrix: sum I / labelled pixels */
  int64_t labelled;                         /* pixels with a label other than 255 */
  /* Union = label area + prediction area - intersection; the label area includes the pixels
   * predicted as no class, the prediction area only pixels with a label. */
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
 * "pred_pixels", "no_class_pixels"}]}; NaN is written as null. */
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
  size_t output_pixels;
  float *output; /* [out_H, out_W, K] the scores resized to the label size */
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
/* The same for an image resized for the test (mmseg's `rescale`): the scores of the
 * height x width input are upsampled bilinearly (align_corners False) to out_height x
 * out_width, the size of the labels, and labels[out_height * out_width] is their argmax;
 * p->output then holds those scores. Equal sizes are cluda_predictor_run. */
cluda_status cluda_predictor_run_to(cluda_predictor *p, const float *x, int height, int width,
                                    int out_height, int out_width, uint8_t *labels);

/* Reusable buffers of cluda_predict_image. Zero-initialise; free with cluda_test_input_free. */
typedef struct cluda_test_input {
  cluda_image resized;
  float *x; /* the normalised network input */
  size_t x_pixels;
  int width, height; /* the size the network saw for the last image */
} cluda_test_input;
void cluda_test_input_free(cluda_test_input *in);

/* The test protocol on one 8-bit RGB image (algorithm.md 7): keep-ratio resize to
 * (scale_long, scale_short) (0 x 0: none; cluda_image_rescale_size, cluda_image_resize_linear),
 * normalisation, prediction (the predictor's whole or slide mode) and the scores upsampled to
 * the image's size: labels[height * width] receives the argmax. */
cluda_status cluda_predict_image(cluda_predictor *p, const cluda_image *rgb, int scale_long,
                                 int scale_short, cluda_test_input *in, uint8_t *labels);

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

/* ---- prediction files against Cityscapes ground truth (cityscapesscripts) ---- */

/* What the values of a label file are. */
typedef enum cluda_label_format {
  CLUDA_LABELS_AUTO = 0, /* ground truth: label ids when *_gtFine_labelIds.png exist */
  CLUDA_LABELS_IDS = 1,  /* Cityscapes label ids 0..33 (labels.py) */
  CLUDA_LABELS_TRAIN = 2 /* train ids 0..18; 255 = ignore (labels) or no class (predictions) */
} cluda_label_format;

/* "auto", "id", "trainid"; parse returns CLUDA_ERR_ARG naming the value otherwise. */
const char *cluda_label_format_name(cluda_label_format format);
cluda_status cluda_label_format_parse(const char *text, cluda_label_format *format);

typedef struct cluda_eval_match {
  char *name; /* "<city>_<seq>_<frame>" */
  char *ground_truth, *prediction;
} cluda_eval_match;

typedef struct cluda_eval_matches {
  cluda_eval_match *items; /* sorted by ground-truth path */
  int count;
  cluda_label_format gt_format; /* IDS or TRAIN (AUTO resolved) */
} cluda_eval_matches;

/* The ground truth under gt_dir (searched recursively): *_gtFine_labelIds.png (IDS), or
 * *_labelTrainIds.png (TRAIN); AUTO takes the label ids when there are any, else the train
 * ids. Each is matched with its prediction as cityscapesscripts' getPrediction does: the one
 * file under pred_dir (recursively) named "<city>_<seq>_<frame>*.png", where the three
 * fields are the first three '_'-separated parts of the ground-truth name (which must have 5
 * or 6 parts counting the extension). No prediction, several, an unparsable ground-truth
 * name or no ground truth at all are errors naming the file or directory. Symbolic links to
 * directories are followed for the ground truth (the official glob does) but not for the
 * predictions (its os.walk does not). */
cluda_status cluda_eval_match_predictions(const char *gt_dir, const char *pred_dir,
                                          cluda_label_format gt_format,
                                          cluda_eval_matches *matches);
void cluda_eval_matches_free(cluda_eval_matches *matches);

/* Reads an 8-bit label PNG of the given format (IDS or TRAIN) as train ids: label ids go
 * through the table of algorithm.md 8.2, non-evaluated ids becoming 255. A value outside the
 * format (a label id above 33, a train id 19..254) is an error naming the file, the value and
 * the pixel. */
cluda_status cluda_eval_read_train_ids(const char *path, cluda_label_format format,
                                       cluda_image *train_ids);

/* Adds one matched pair to a 19-class matrix: ground truth and prediction read in their
 * formats (train id 255 in a prediction = no class); different sizes are an error naming
 * both files. */
cluda_status cluda_eval_add_match(cluda_confusion *cm, const cluda_eval_match *match,
                                  cluda_label_format gt_format, cluda_label_format pred_format);

#ifdef __cplusplus
}
#endif
#endif

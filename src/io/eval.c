/* Evaluation: confusion matrix, mIoU protocols, reports, the test-time resize, and whole /
 * sliding-window prediction of one image (see cluda/eval.h for the semantics). */
#include "cluda/eval.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/backend.h"
#include "cluda/image.h"
#include "cluda/ops.h"

/* ---- confusion matrix ---- */

cluda_status cluda_confusion_create(cluda_confusion *cm, int num_classes) {
  CLUDA_REQUIRE(cm != NULL, CLUDA_ERR_ARG, "confusion_create: NULL matrix");
  memset(cm, 0, sizeof *cm);
  CLUDA_REQUIRE(num_classes >= 1 && num_classes <= CLUDA_EVAL_MAX_CLASSES, CLUDA_ERR_ARG,
                "confusion_create: num_classes must be in [1, %d], got %d", CLUDA_EVAL_MAX_CLASSES,
                num_classes);
  cm->counts = calloc((size_t)num_classes * (size_t)num_classes, sizeof(int64_t));
  cm->no_class = calloc((size_t)num_classes, sizeof(int64_t));
  if (!cm->counts || !cm->no_class) {
    cluda_confusion_free(cm);
    return CLUDA_FAIL(CLUDA_ERR_ALLOC, "confusion_create: out of memory");
  }
  cm->num_classes = num_classes;
  return cluda_ok();
}

void cluda_confusion_free(cluda_confusion *cm) {
  if (!cm) return;
  free(cm->counts);
  free(cm->no_class);
  memset(cm, 0, sizeof *cm);
}

void cluda_confusion_reset(cluda_confusion *cm) {
  if (!cm || !cm->counts) return;
  memset(cm->counts, 0, sizeof(int64_t) * (size_t)cm->num_classes * (size_t)cm->num_classes);
  memset(cm->no_class, 0, sizeof(int64_t) * (size_t)cm->num_classes);
}

cluda_status cluda_confusion_add(cluda_confusion *cm, const uint8_t *pred, const uint8_t *label,
                                 size_t n) {
  CLUDA_REQUIRE(cm && cm->counts && (n == 0 || (pred && label)), CLUDA_ERR_ARG,
                "confusion_add: NULL argument");
  int k = cm->num_classes;
  /* Validate first so that a bad map leaves the matrix untouched. */
  for (size_t i = 0; i < n; i++) {
    if (label[i] == CLUDA_IGNORE_LABEL) continue;
    CLUDA_REQUIRE(label[i] < k, CLUDA_ERR_ARG,
                  "confusion_add: label %d at pixel %zu is neither a class below %d nor 255 "
                  "(ignore)",
                  label[i], i, k);
    CLUDA_REQUIRE(pred[i] < k || pred[i] == CLUDA_NO_CLASS, CLUDA_ERR_ARG,
                  "confusion_add: prediction %d at pixel %zu is neither a class below %d nor 255 "
                  "(no class)",
                  pred[i], i, k);
  }
  for (size_t i = 0; i < n; i++) {
    if (label[i] == CLUDA_IGNORE_LABEL) continue;
    if (pred[i] == CLUDA_NO_CLASS)
      cm->no_class[label[i]]++;
    else
      cm->counts[(size_t)label[i] * (size_t)k + pred[i]]++;
  }
  return cluda_ok();
}

cluda_status cluda_confusion_merge(cluda_confusion *dst, const cluda_confusion *src) {
  CLUDA_REQUIRE(dst && src && dst->counts && src->counts, CLUDA_ERR_ARG,
                "confusion_merge: NULL argument");
  CLUDA_REQUIRE(dst->num_classes == src->num_classes, CLUDA_ERR_SHAPE,
                "confusion_merge: %d-class and %d-class matrices", dst->num_classes,
                src->num_classes);
  size_t n = (size_t)dst->num_classes * (size_t)dst->num_classes;
  for (size_t i = 0; i < n; i++)
    dst->counts[i] += src->counts[i];
  for (int c = 0; c < dst->num_classes; c++)
    dst->no_class[c] += src->no_class[c];
  return cluda_ok();
}

/* ---- metrics ---- */

enum { CITYSCAPES_TERRAIN = 9, CITYSCAPES_TRUCK = 14, CITYSCAPES_TRAIN = 16 };

static int protocol_keeps(cluda_eval_protocol protocol, int c) {
  if (protocol == CLUDA_PROTOCOL_ALL) return 1;
  if (c == CITYSCAPES_TERRAIN || c == CITYSCAPES_TRUCK || c == CITYSCAPES_TRAIN) return 0;
  if (protocol == CLUDA_PROTOCOL_13 && (c == 3 || c == 4 || c == 5)) return 0; /* wall..pole */
  return 1;
}

static double nanmean(const double *v, int n) {
  double sum = 0;
  int used = 0;
  for (int i = 0; i < n; i++)
    if (!isnan(v[i])) {
      sum += v[i];
      used++;
    }
  return used ? sum / used : NAN;
}

cluda_status cluda_seg_metrics_compute(const cluda_confusion *cm, cluda_eval_protocol protocol,
                                       cluda_seg_metrics *out) {
  CLUDA_REQUIRE(cm && cm->counts && out, CLUDA_ERR_ARG, "seg_metrics: NULL argument");
  CLUDA_REQUIRE(protocol == CLUDA_PROTOCOL_ALL || protocol == CLUDA_PROTOCOL_16 ||
                    protocol == CLUDA_PROTOCOL_13,
                CLUDA_ERR_ARG, "seg_metrics: unknown protocol %d", (int)protocol);
  int k = cm->num_classes;
  CLUDA_REQUIRE(protocol == CLUDA_PROTOCOL_ALL || k == CLUDA_CITYSCAPES_CLASSES, CLUDA_ERR_ARG,
                "seg_metrics: the %d-class protocol needs the 19 Cityscapes classes, the matrix "
                "has %d",
                (int)protocol, k);
  memset(out, 0, sizeof *out);
  int64_t correct = 0;
  for (int c = 0; c < k; c++) {
    int64_t tp = cm->counts[(size_t)c * k + c], label_area = cm->no_class[c], pred_area = 0;
    for (int j = 0; j < k; j++) {
      label_area += cm->counts[(size_t)c * k + j];
      pred_area += cm->counts[(size_t)j * k + c];
    }
    correct += tp;
    out->labelled += label_area;
    if (!protocol_keeps(protocol, c)) continue;
    int i = out->count++;
    out->classes[i] = c;
    out->intersection[i] = tp;
    out->label_area[i] = label_area;
    out->pred_area[i] = pred_area;
    out->no_class[i] = cm->no_class[c];
    out->union_[i] = label_area + pred_area - tp;
    out->iou[i] = out->union_[i] ? (double)tp / (double)out->union_[i] : NAN;
    out->acc[i] = label_area ? (double)tp / (double)label_area : NAN;
  }
  out->miou = nanmean(out->iou, out->count);
  out->macc = nanmean(out->acc, out->count);
  out->aacc = out->labelled ? (double)correct / (double)out->labelled : NAN;
  return cluda_ok();
}

const char *cluda_eval_class_name(int num_classes, int class_id, char *buf, size_t size) {
  if (num_classes == CLUDA_CITYSCAPES_CLASSES && class_id >= 0 &&
      class_id < CLUDA_CITYSCAPES_CLASSES)
    return cluda_cityscapes_class_names[class_id];
  snprintf(buf, size, "class %d", class_id);
  return buf;
}

/* ---- reports ---- */

/* Which protocols a report lists: all classes, then 16 (and 13) for those protocols. */
static int report_protocols(const cluda_confusion *cm, cluda_eval_protocol protocol,
                            cluda_eval_protocol list[3]) {
  int n = 0;
  list[n++] = CLUDA_PROTOCOL_ALL;
  if (cm->num_classes == CLUDA_CITYSCAPES_CLASSES && protocol != CLUDA_PROTOCOL_ALL) {
    list[n++] = CLUDA_PROTOCOL_16;
    if (protocol == CLUDA_PROTOCOL_13) list[n++] = CLUDA_PROTOCOL_13;
  }
  return n;
}

static void format_percent(double v, char *buf, size_t size) {
  if (isnan(v))
    snprintf(buf, size, "-");
  else
    snprintf(buf, size, "%.2f", 100.0 * v);
}

cluda_status cluda_eval_write_table(const cluda_confusion *cm, cluda_eval_protocol protocol,
                                    FILE *out) {
  CLUDA_REQUIRE(cm && out, CLUDA_ERR_ARG, "eval_write_table: NULL argument");
  cluda_seg_metrics *all = malloc(sizeof *all);
  CLUDA_REQUIRE(all != NULL, CLUDA_ERR_ALLOC, "eval_write_table: out of memory");
  cluda_status s = cluda_seg_metrics_compute(cm, CLUDA_PROTOCOL_ALL, all);
  cluda_seg_metrics *sub = s.code == CLUDA_OK ? malloc(sizeof *sub) : NULL;
  if (s.code == CLUDA_OK && !sub)
    s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "eval_write_table: out of memory");
  cluda_eval_protocol list[3];
  int n = s.code == CLUDA_OK ? report_protocols(cm, protocol, list) : 0;
  /* Validate the requested protocol even when the report only lists all classes. */
  if (s.code == CLUDA_OK && protocol != CLUDA_PROTOCOL_ALL)
    s = cluda_seg_metrics_compute(cm, protocol, sub);
  if (s.code == CLUDA_OK) {
    fprintf(out, "%-16s %8s %8s %14s %s\n", "class", "IoU", "Acc", "pixels", "in");
    for (int i = 0; i < all->count; i++) {
      char name_buf[32], iou[16], acc[16], in[16] = "";
      const char *name = cluda_eval_class_name(cm->num_classes, i, name_buf, sizeof name_buf);
      format_percent(all->iou[i], iou, sizeof iou);
      format_percent(all->acc[i], acc, sizeof acc);
      size_t used = 0;
      for (int p = 0; p < n; p++)
        if (protocol_keeps(list[p], i))
          used += (size_t)snprintf(in + used, sizeof in - used, "%s%d", used ? "," : "",
                                   list[p] == CLUDA_PROTOCOL_ALL ? cm->num_classes : (int)list[p]);
      fprintf(out, "%-16s %8s %8s %14lld %s\n", name, iou, acc, (long long)all->label_area[i], in);
    }
    for (int p = 0; p < n && s.code == CLUDA_OK; p++) {
      s = cluda_seg_metrics_compute(cm, list[p], sub);
      if (s.code != CLUDA_OK) break;
      char miou[16], macc[16];
      format_percent(sub->miou, miou, sizeof miou);
      format_percent(sub->macc, macc, sizeof macc);
      int present = 0;
      for (int i = 0; i < sub->count; i++)
        present += !isnan(sub->iou[i]);
      fprintf(out,
              "mIoU%-3d %7s  (mean over the %d of %d classes in labels or predictions; mAcc %s)\n",
              sub->count, miou, present, sub->count, macc);
    }
    char aacc[16];
    format_percent(all->aacc, aacc, sizeof aacc);
    fprintf(out, "aAcc    %7s  (%lld labelled pixels)\n", aacc, (long long)all->labelled);
    if (ferror(out)) s = CLUDA_FAIL(CLUDA_ERR_IO, "eval_write_table: write failed");
  }
  free(all);
  free(sub);
  return s;
}

static void json_number(FILE *out, double v) {
  if (isnan(v))
    fputs("null", out);
  else
    fprintf(out, "%.17g", v);
}

static void json_string(FILE *out, const char *s) {
  fputc('"', out);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      fprintf(out, "\\%c", *s);
    else if ((unsigned char)*s < 0x20)
      fprintf(out, "\\u%04x", *s);
    else
      fputc(*s, out);
  }
  fputc('"', out);
}

cluda_status cluda_eval_write_json(const cluda_confusion *cm, cluda_eval_protocol protocol,
                                   int images, FILE *out) {
  CLUDA_REQUIRE(cm && out, CLUDA_ERR_ARG, "eval_write_json: NULL argument");
  cluda_seg_metrics *all = malloc(sizeof *all), *sub = malloc(sizeof *sub);
  cluda_status s = cluda_ok();
  if (!all || !sub) s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "eval_write_json: out of memory");
  if (s.code == CLUDA_OK) s = cluda_seg_metrics_compute(cm, CLUDA_PROTOCOL_ALL, all);
  if (s.code == CLUDA_OK) s = cluda_seg_metrics_compute(cm, protocol, sub);
  if (s.code == CLUDA_OK) {
    int k = cm->num_classes;
    fprintf(out, "{\"num_classes\": %d, \"protocol\": %d, \"images\": %d, \"miou\": ", k,
            protocol == CLUDA_PROTOCOL_ALL ? k : (int)protocol, images);
    json_number(out, sub->miou);
    fprintf(out, ", \"miou%d\": ", k);
    json_number(out, all->miou);
    /* The SYNTHIA numbers come free with a 19-class matrix; listing them always lets a
     * script read any of them without rerunning. */
    if (k == CLUDA_CITYSCAPES_CLASSES) {
      cluda_eval_protocol extra[2] = {CLUDA_PROTOCOL_16, CLUDA_PROTOCOL_13};
      for (int p = 0; p < 2 && s.code == CLUDA_OK; p++) {
        s = cluda_seg_metrics_compute(cm, extra[p], sub);
        fprintf(out, ", \"miou%d\": ", (int)extra[p]);
        json_number(out, sub->miou);
      }
    }
    fputs(", \"macc\": ", out);
    json_number(out, all->macc);
    fputs(", \"aacc\": ", out);
    json_number(out, all->aacc);
    fprintf(out, ", \"labelled_pixels\": %lld, \"classes\": [", (long long)all->labelled);
    for (int i = 0; i < all->count; i++) {
      char name_buf[32];
      fprintf(out, "%s\n  {\"id\": %d, \"name\": ", i ? "," : "", i);
      json_string(out, cluda_eval_class_name(k, i, name_buf, sizeof name_buf));
      fputs(", \"iou\": ", out);
      json_number(out, all->iou[i]);
      fputs(", \"acc\": ", out);
      json_number(out, all->acc[i]);
      fprintf(out,
              ", \"intersection\": %lld, \"union\": %lld, \"label_pixels\": %lld, "
              "\"pred_pixels\": %lld, \"no_class_pixels\": %lld}",
              (long long)all->intersection[i], (long long)all->union_[i],
              (long long)all->label_area[i], (long long)all->pred_area[i],
              (long long)all->no_class[i]);
    }
    fputs("]}\n", out);
    if (ferror(out)) s = CLUDA_FAIL(CLUDA_ERR_IO, "eval_write_json: write failed");
  }
  free(all);
  free(sub);
  return s;
}

/* ---- sliding windows ---- */

cluda_status cluda_slide_grid_for(int height, int width, int crop_h, int crop_w, int stride_h,
                                  int stride_w, cluda_slide_grid *grid) {
  CLUDA_REQUIRE(grid != NULL, CLUDA_ERR_ARG, "slide_grid: NULL grid");
  CLUDA_REQUIRE(height > 0 && width > 0 && crop_h > 0 && crop_w > 0 && stride_h > 0 && stride_w > 0,
                CLUDA_ERR_ARG,
                "slide_grid: image %dx%d, crop %dx%d and stride %dx%d must be positive", width,
                height, crop_w, crop_h, stride_w, stride_h);
  int rest_h = height - crop_h + stride_h - 1, rest_w = width - crop_w + stride_w - 1;
  grid->rows = (rest_h > 0 ? rest_h : 0) / stride_h + 1;
  grid->cols = (rest_w > 0 ? rest_w : 0) / stride_w + 1;
  grid->win_h = crop_h < height ? crop_h : height;
  grid->win_w = crop_w < width ? crop_w : width;
  grid->stride_h = stride_h;
  grid->stride_w = stride_w;
  grid->height = height;
  grid->width = width;
  return cluda_ok();
}

static int window_start(int index, int stride, int crop, int size) {
  int a = index * stride;
  int b = a + crop < size ? a + crop : size;
  a = b - crop;
  return a > 0 ? a : 0;
}

void cluda_slide_window(const cluda_slide_grid *grid, int row, int col, int *y1, int *x1) {
  /* win_* = min(crop, side) gives the same corners as mmseg's clamping with the crop. */
  *y1 = window_start(row, grid->stride_h, grid->win_h, grid->height);
  *x1 = window_start(col, grid->stride_w, grid->win_w, grid->width);
}

/* ---- prediction ---- */

static void *alloc_aligned(size_t bytes) {
  return aligned_alloc(CLUDA_ARENA_ALIGN, cluda_arena_align(bytes ? bytes : 1));
}

cluda_status cluda_predictor_init(cluda_predictor *p, const cluda_segmentor *model,
                                  const float *params, float *state,
                                  const cluda_infer_settings *settings) {
  CLUDA_REQUIRE(p && model && params && settings, CLUDA_ERR_ARG, "predictor_init: NULL argument");
  memset(p, 0, sizeof *p);
  CLUDA_REQUIRE(settings->mode == CLUDA_INFER_WHOLE || settings->mode == CLUDA_INFER_SLIDE,
                CLUDA_ERR_ARG, "predictor_init: unknown inference mode %d", (int)settings->mode);
  if (settings->mode == CLUDA_INFER_SLIDE)
    CLUDA_REQUIRE(settings->crop_h >= CLUDA_MIN_IMAGE_SIDE &&
                      settings->crop_w >= CLUDA_MIN_IMAGE_SIDE && settings->stride_h > 0 &&
                      settings->stride_w > 0,
                  CLUDA_ERR_ARG,
                  "predictor_init: slide crop %dx%d must be at least %d per side and stride "
                  "%dx%d positive",
                  settings->crop_h, settings->crop_w, CLUDA_MIN_IMAGE_SIDE, settings->stride_h,
                  settings->stride_w);
  p->model = model;
  p->params = params;
  p->state = state;
  p->settings = *settings;
  return cluda_ok();
}

static void release_window(cluda_predictor *p) {
  free(p->acts);
  free(p->window_x);
  free(p->window_logits);
  if (p->scratch_created) cluda_arena_destroy(&p->scratch);
  p->acts = NULL;
  p->window_x = p->window_logits = NULL;
  p->scratch_created = 0;
  p->plan_h = p->plan_w = 0;
}

void cluda_predictor_free(cluda_predictor *p) {
  if (!p) return;
  release_window(p);
  free(p->canvas);
  free(p->count);
  free(p->output);
  memset(p, 0, sizeof *p);
}

/* Plans and allocates the buffers of one window size (a no-op when it is the current one). */
static cluda_status plan_window(cluda_predictor *p, int height, int width) {
  if (p->plan_h == height && p->plan_w == width) return cluda_ok();
  release_window(p);
  CLUDA_TRY(cluda_segmentor_plan_for(p->model, 1, height, width, &p->plan));
  size_t pixels = (size_t)height * (size_t)width;
  int classes = p->model->cfg.head.num_classes;
  p->acts = alloc_aligned(p->plan.activation_bytes);
  p->window_x = alloc_aligned(pixels * 3 * sizeof(float));
  /* Whole mode upsamples straight into the canvas. */
  if (p->settings.mode == CLUDA_INFER_SLIDE)
    p->window_logits = alloc_aligned(pixels * (size_t)classes * sizeof(float));
  CLUDA_REQUIRE(p->acts && p->window_x &&
                    (p->window_logits || p->settings.mode == CLUDA_INFER_WHOLE),
                CLUDA_ERR_ALLOC,
                "predict: cannot allocate buffers for a %dx%d window (%zu bytes of activations)",
                width, height, p->plan.activation_bytes);
  CLUDA_TRY(cluda_arena_create(&p->scratch, p->plan.scratch_bytes ? p->plan.scratch_bytes : 64));
  p->scratch_created = 1;
  p->plan_h = height;
  p->plan_w = width;
  return cluda_ok();
}

static cluda_status ensure_canvas(cluda_predictor *p, size_t pixels) {
  if (pixels <= p->canvas_pixels) return cluda_ok();
  free(p->canvas);
  free(p->count);
  p->canvas_pixels = 0;
  int classes = p->model->cfg.head.num_classes;
  p->canvas = alloc_aligned(pixels * (size_t)classes * sizeof(float));
  p->count = alloc_aligned(pixels * sizeof(float));
  CLUDA_REQUIRE(p->canvas && p->count, CLUDA_ERR_ALLOC,
                "predict: cannot allocate the %zu-pixel score map", pixels);
  p->canvas_pixels = pixels;
  return cluda_ok();
}

static cluda_status ensure_output(cluda_predictor *p, size_t pixels) {
  if (pixels <= p->output_pixels) return cluda_ok();
  free(p->output);
  p->output_pixels = 0;
  p->output = alloc_aligned(pixels * (size_t)p->model->cfg.head.num_classes * sizeof(float));
  CLUDA_REQUIRE(p->output, CLUDA_ERR_ALLOC, "predict: cannot allocate the %zu-pixel output scores",
                pixels);
  p->output_pixels = pixels;
  return cluda_ok();
}

/* Forward of the window in p->window_x; logits upsampled into `up` [win_h, win_w, K]. */
static cluda_status forward_window(cluda_predictor *p, float *up) {
  int h = p->plan_h, w = p->plan_w, classes = p->model->cfg.head.num_classes;
  cluda_tensor x = cluda_tensor_4d(CLUDA_F32, p->window_x, 1, h, w, 3);
  cluda_run_mode mode;
  memset(&mode, 0, sizeof mode); /* inference: no dropout, BatchNorm running statistics */
  cluda_arena_release(&p->scratch, 0);
  cluda_ctx ctx = cluda_cpu_context(&p->scratch);
  cluda_segmentor_outputs out;
  CLUDA_TRY(cluda_segmentor_forward(&ctx, p->model, &p->plan, p->params, p->state, &mode, &x,
                                    p->acts, &out));
  cluda_tensor upt = cluda_tensor_4d(CLUDA_F32, up, 1, h, w, classes);
  return cluda_resize_bilinear_forward(&ctx, 0, &out.logits, &upt);
}

cluda_status cluda_predictor_run(cluda_predictor *p, const float *x, int height, int width,
                                 uint8_t *labels) {
  return cluda_predictor_run_to(p, x, height, width, height, width, labels);
}

cluda_status cluda_predictor_run_to(cluda_predictor *p, const float *x, int height, int width,
                                    int out_height, int out_width, uint8_t *labels) {
  CLUDA_REQUIRE(p && p->model && x && labels, CLUDA_ERR_ARG, "predict: NULL argument");
  CLUDA_REQUIRE(height > 0 && width > 0 && height <= 65536 && width <= 65536, CLUDA_ERR_ARG,
                "predict: bad image size %dx%d", width, height);
  CLUDA_REQUIRE(out_height > 0 && out_width > 0 && out_height <= 65536 && out_width <= 65536,
                CLUDA_ERR_ARG, "predict: bad output size %dx%d", out_width, out_height);
  const cluda_infer_settings *st = &p->settings;
  cluda_slide_grid grid;
  if (st->mode == CLUDA_INFER_SLIDE)
    CLUDA_TRY(cluda_slide_grid_for(height, width, st->crop_h, st->crop_w, st->stride_h,
                                   st->stride_w, &grid));
  else
    CLUDA_TRY(cluda_slide_grid_for(height, width, height, width, height, width, &grid));
  CLUDA_REQUIRE(grid.win_h >= CLUDA_MIN_IMAGE_SIDE && grid.win_w >= CLUDA_MIN_IMAGE_SIDE,
                CLUDA_ERR_UNSUPPORTED,
                "predict: a %dx%d image gives %dx%d windows; the network needs at least %dx%d",
                width, height, grid.win_w, grid.win_h, CLUDA_MIN_IMAGE_SIDE, CLUDA_MIN_IMAGE_SIDE);
  size_t pixels = (size_t)height * (size_t)width;
  int classes = p->model->cfg.head.num_classes;
  size_t kk = (size_t)classes;
  CLUDA_TRY(ensure_canvas(p, pixels));
  CLUDA_TRY(plan_window(p, grid.win_h, grid.win_w));

  if (st->mode == CLUDA_INFER_WHOLE) {
    memcpy(p->window_x, x, pixels * 3 * sizeof(float));
    CLUDA_TRY(forward_window(p, p->canvas));
  } else {
    memset(p->canvas, 0, pixels * kk * sizeof(float));
    memset(p->count, 0, pixels * sizeof(float));
    size_t row_in = (size_t)grid.win_w * 3, row_out = (size_t)grid.win_w * kk;
    for (int r = 0; r < grid.rows; r++)
      for (int c = 0; c < grid.cols; c++) {
        int y1, x1;
        cluda_slide_window(&grid, r, c, &y1, &x1);
        for (int y = 0; y < grid.win_h; y++)
          memcpy(p->window_x + (size_t)y * row_in,
                 x + ((size_t)(y1 + y) * (size_t)width + (size_t)x1) * 3, row_in * sizeof(float));
        CLUDA_TRY(forward_window(p, p->window_logits));
        for (int y = 0; y < grid.win_h; y++) {
          float *dst = p->canvas + ((size_t)(y1 + y) * (size_t)width + (size_t)x1) * kk;
          const float *src = p->window_logits + (size_t)y * row_out;
          for (size_t i = 0; i < row_out; i++)
            dst[i] += src[i];
          float *cnt = p->count + (size_t)(y1 + y) * (size_t)width + (size_t)x1;
          for (int i = 0; i < grid.win_w; i++)
            cnt[i] += 1.0f;
        }
      }
    for (size_t q = 0; q < pixels; q++) {
      float n = p->count[q]; /* >= 1: the windows cover the image */
      float *scores = p->canvas + q * kk;
      for (size_t k = 0; k < kk; k++)
        scores[k] /= n;
    }
  }
  /* mmseg resizes the scores of the resized image to the original size before the argmax. */
  const float *all_scores = p->canvas;
  size_t out_pixels = (size_t)out_height * (size_t)out_width;
  if (out_height != height || out_width != width) {
    CLUDA_TRY(ensure_output(p, out_pixels));
    cluda_tensor in = cluda_tensor_4d(CLUDA_F32, p->canvas, 1, height, width, classes);
    cluda_tensor out = cluda_tensor_4d(CLUDA_F32, p->output, 1, out_height, out_width, classes);
    cluda_ctx ctx = cluda_cpu_context(&p->scratch);
    CLUDA_TRY(cluda_resize_bilinear_forward(&ctx, 0, &in, &out));
    all_scores = p->output;
  }
  for (size_t q = 0; q < out_pixels; q++) {
    const float *scores = all_scores + q * kk;
    int best = 0; /* ties go to the lowest class, as torch.argmax */
    for (int k = 1; k < classes; k++)
      if (scores[k] > scores[best]) best = k;
    labels[q] = (uint8_t)best;
  }
  return cluda_ok();
}

void cluda_test_input_free(cluda_test_input *in) {
  if (!in) return;
  cluda_image_free(&in->resized);
  free(in->x);
  memset(in, 0, sizeof *in);
}

cluda_status cluda_predict_image(cluda_predictor *p, const cluda_image *rgb, int scale_long,
                                 int scale_short, cluda_test_input *in, uint8_t *labels) {
  CLUDA_REQUIRE(p != NULL && rgb != NULL && in != NULL && labels != NULL, CLUDA_ERR_ARG,
                "predict_image: NULL argument");
  CLUDA_REQUIRE(rgb->channels == 3, CLUDA_ERR_ARG,
                "predict_image: the image has %d channels, not 3", rgb->channels);
  const int width = rgb->width, height = rgb->height;
  const cluda_image *input = rgb;
  int in_width = width, in_height = height;
  if (scale_long > 0 && scale_short > 0) {
    CLUDA_TRY(
        cluda_image_rescale_size(width, height, scale_long, scale_short, &in_width, &in_height));
    if (in_width != width || in_height != height) {
      cluda_image_free(&in->resized);
      CLUDA_TRY(cluda_image_resize_linear(rgb, in_width, in_height, &in->resized));
      input = &in->resized;
    }
  }
  size_t pixels = (size_t)in_width * (size_t)in_height;
  if (pixels > in->x_pixels) {
    free(in->x);
    in->x_pixels = 0;
    in->x = malloc(pixels * 3 * sizeof(float));
    CLUDA_REQUIRE(in->x != NULL, CLUDA_ERR_ALLOC, "predict_image: cannot allocate a %dx%d input",
                  in_width, in_height);
    in->x_pixels = pixels;
  }
  in->width = in_width;
  in->height = in_height;
  CLUDA_TRY(cluda_image_normalize(input, in->x));
  return cluda_predictor_run_to(p, in->x, in_height, in_width, height, width, labels);
}

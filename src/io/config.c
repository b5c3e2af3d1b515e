/* The configuration registry, the YAML loader (libyaml's document API: every node carries
 * its line), `--set` overrides, the resolved-config writer and the reference generator. */
#include "cluda/config.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#define F_INT CLUDA_CONFIG_INT
#define F_FLOAT CLUDA_CONFIG_FLOAT
#define F_ENUM CLUDA_CONFIG_ENUM
#define F_INT_LIST CLUDA_CONFIG_INT_LIST

/* Every key any cluda program reads. Keep a section's keys together; configs/README.md is
 * generated from this table (test_config fails when it is stale). */
static const cluda_config_key registry[] = {
    {"seed", F_INT, "0", 0, 0, CLUDA_CONFIG_NO_MAX, NULL, 0, 0,
     "Seed of every random draw: parameter initialisation now; sampling, augmentation and "
     "dropout in training. Runs with the same config and seed are bit-identical."},
    {"model.encoder", F_ENUM, "b5", 0, 0, 0, "b0|b1|b2|b3|b4|b5|tiny", 0, 0,
     "MiT encoder preset: widths, depths, heads and SR ratios of model.md 1.1 (CLUDA uses b5); "
     "tiny is the CPU-test encoder of model.md 10."},
    {"model.head", F_ENUM, "daformer", 0, 0, 0, "daformer|segformer", 0, 0,
     "Decode head: daformer = DAFormer's context-aware fusion with the separable ASPP "
     "(model.md 2), segformer = the SegFormer all-MLP head (model.md 3)."},
    {"model.embed_dims", F_INT, "0", 0, 4096, 0, NULL, 0, 0,
     "Head embedding width E of each encoder level (decisions.md 2: 512 in CLUDA, 256 in "
     "DAFormer/HRDA). 0 keeps the preset: DAFormer 512; SegFormer 256 for b0/b1, 768 for "
     "b2-b5; tiny 64."},
    {"model.channels", F_INT, "0", 0, 4096, 0, NULL, 0, 0,
     "Width of the fused feature map, which the contrastive loss uses (decisions.md 1: 256). "
     "0 keeps the preset (DAFormer 256, tiny 64); for the SegFormer head it must equal "
     "model.embed_dims, and 0 follows it."},
    {"model.num_classes", F_INT, "19", 1, 254, 0, NULL, 0, 0,
     "Number of classes K of the classifier (19 Cityscapes train ids; 255 is the ignore "
     "label)."},
    {"model.dropout", F_FLOAT, "0.1", 0, 1, CLUDA_CONFIG_MAX_EXCLUSIVE, NULL, 0, 0,
     "Dropout2d probability before the classifier (training only)."},
    {"model.drop_path_rate", F_FLOAT, "0.1", 0, 1, CLUDA_CONFIG_MAX_EXCLUSIVE, NULL, 0, 0,
     "Stochastic-depth rate of the last encoder block; block k of N gets rate * k / (N - 1) "
     "(training only)."},
    {"model.patch_norm_eps", F_FLOAT, "1e-5", 0, 0.1, CLUDA_CONFIG_MIN_EXCLUSIVE, NULL, 0, 0,
     "LayerNorm epsilon of the patch embeddings and the attention's spatial-reduction norms "
     "(model.md 1.3)."},
    {"model.block_norm_eps", F_FLOAT, "1e-6", 0, 0.1, CLUDA_CONFIG_MIN_EXCLUSIVE, NULL, 0, 0,
     "LayerNorm epsilon of the block norms (norm1, norm2) and stage norms: 1e-6 in "
     "mmseg/DAFormer, 1e-5 in Hugging Face SegFormer (model.md 1.3)."},
    {"model.bn_eps", F_FLOAT, "1e-5", 0, 0.1, CLUDA_CONFIG_MIN_EXCLUSIVE, NULL, 0, 0,
     "BatchNorm epsilon of the decode head."},
    {"model.bn_momentum", F_FLOAT, "0.1", 0, 1, CLUDA_CONFIG_MIN_EXCLUSIVE, NULL, 0, 0,
     "BatchNorm running-statistics momentum of the decode head (PyTorch convention: new = "
     "(1 - m) old + m batch)."},
    {"model.dilations", F_INT_LIST, "[1, 6, 12, 18]", 1, 64, 0, NULL, 4, 4,
     "Dilations of the DAFormer ASPP branches; the first branch is the 1x1 one and must be 1. "
     "Ignored by the SegFormer head."},
    {"model.pretrained", CLUDA_CONFIG_STRING, "\"\"", 0, 0, 0, NULL, 0, 0,
     "Weights a fresh cluda_train run starts from: a safetensors file (ImageNet MiT encoder in "
     "NVlabs or Hugging Face naming, e.g. mit_b5; the decode head keeps its random init, or a "
     "whole mmseg/DAFormer segmentor) or cluda's HDF5 weight file. The teacher and the frozen "
     "FD encoder start from the same weights. Empty: random initialisation from the seed."},
    {"model.sync_bn", CLUDA_CONFIG_BOOL, "false", 0, 0, 0, NULL, 0, 0,
     "BatchNorm batch statistics over the images of all ranks (SyncBN) instead of each rank's "
     "own (decisions.md 22); identical with one process."},
    /* ---- training keys (src/train/trainer.c) ---- */
    {"train.max_iters", F_INT, "40000", 1, 100000000, 0, NULL, 0, 0,
     "Iterations of the run; also the end of the poly learning-rate schedule (algorithm.md 4.2). "
     "cluda_train --max-iters stops earlier without changing the schedule."},
    {"train.batch", F_INT, "2", 1, 64, 0, NULL, 0, 0,
     "Images per domain in one iteration of one process: B source + B target (reference: 2)."},
    {"train.crop", F_INT_LIST, "[512, 512]", 32, 16384, 0, NULL, 2, 2,
     "Training crop [height, width] of source and target images; both must be multiples of 32 "
     "(the FD label downscale needs H / 32 cells). Images smaller than the crop are rejected."},
    {"train.flip", CLUDA_CONFIG_BOOL, "true", 0, 0, 0, NULL, 0, 0,
     "Random horizontal flip (p = 0.5) of source and target crops, drawn independently."},
    {"train.eval_interval", F_INT, "4000", 0, 0, CLUDA_CONFIG_NO_MAX, NULL, 0, 0,
     "Evaluate the student on the target validation split every N iterations and at the end "
     "(0: only at the end)."},
    {"train.source_ce", CLUDA_CONFIG_BOOL, "true", 0, 0, 0, NULL, 0, 0,
     "Supervised cross-entropy on the source crop (turn off only for ablations and tests)."},
    {"train.replica_check_interval", F_INT, "100", 0, 1000000000, 0, NULL, 0, 0,
     "Every this many iterations the ranks compare fingerprints of their parameters and stop "
     "if they differ (0: never); free with one process."},
    {"uda.enabled", CLUDA_CONFIG_BOOL, "true", 0, 0, 0, NULL, 0, 0,
     "Self-training on the target domain: EMA teacher, pseudo-labels, ClassMix and the mixed "
     "cross-entropy (false = source-only training; the mixed CL then needs no switch)."},
    {"uda.ema_alpha", F_FLOAT, "0.999", 0, 1, 0, NULL, 0, 0,
     "EMA teacher momentum alpha; iteration t uses min(1 - 1/(t + 1), alpha) (algorithm.md 1.3)."},
    {"uda.pseudo_threshold", F_FLOAT, "0.968", 0, 1, 0, NULL, 0, 0,
     "Confidence threshold beta of the weight Gamma = fraction of target pixels whose teacher "
     "max-probability is >= beta (paper Eq. 4, decisions.md 10)."},
    {"uda.ignore_top", F_INT, "0", 0, 16384, 0, NULL, 0, 0,
     "Rows at the top of the target crop whose pseudo-label weight is 0 (DAFormer: 15)."},
    {"uda.ignore_bottom", F_INT, "0", 0, 16384, 0, NULL, 0, 0,
     "Rows at the bottom of the target crop whose pseudo-label weight is 0 (DAFormer: 120)."},
    {"uda.teacher_bn", F_ENUM, "batch", 0, 0, 0, "batch|eval", 0, 0,
     "Teacher BatchNorm while pseudo-labelling: batch = batch statistics (train-mode BN, the "
     "reference); eval = running statistics (decisions.md 17)."},
    {"uda.ref_local_gamma", CLUDA_CONFIG_BOOL, "false", 0, 0, 0, NULL, 0, 0,
     "Gamma from this process's pixels only instead of the global batch (decisions.md 10); "
     "identical with one process."},
    {"uda.fd_lambda", F_FLOAT, "0.005", 0, 0, CLUDA_CONFIG_NO_MAX, NULL, 0, 0,
     "Weight of the thing-class ImageNet feature distance (algorithm.md 3); 0 turns FD off."},
    {"uda.fd_min_ratio", F_FLOAT, "0.75", 0, 1, 0, NULL, 0, 0,
     "FD label downscale: a cell counts only when its majority class covers this fraction."},
    {"uda.fd_classes", F_INT_LIST, "[6, 7, 11, 12, 13, 14, 15, 16, 17, 18]", 0, 254, 0, NULL, 1, 32,
     "Classes whose cells enter the FD loss (traffic light, sign, person ... bicycle)."},
    {"uda.jitter_p", F_FLOAT, "0.2", 0, 1, 0, NULL, 0, 0,
     "Colour jitter of the mixed image when the iteration's coin U(0,1) > jitter_p (80 %)."},
    {"uda.jitter_strength", F_FLOAT, "0.2", 0, 0.5, 0, NULL, 0, 0,
     "Colour jitter strength s: brightness, contrast, saturation and hue ranges."},
    {"uda.blur_p", F_FLOAT, "0.5", 0, 1, 0, NULL, 0, 0,
     "Gaussian blur of the mixed image when the iteration's coin U(0,1) > blur_p (50 %)."},
    {"uda.blur_sigma", CLUDA_CONFIG_FLOAT_LIST, "[0.15, 1.15]", 0, 100, CLUDA_CONFIG_MIN_EXCLUSIVE,
     NULL, 2, 2, "Range [lo, hi] of the per-sample blur sigma."},
    {"cl.source", CLUDA_CONFIG_BOOL, "true", 0, 0, 0, NULL, 0, 0,
     "Contrastive loss on the source image with ground-truth labels (paper Eq. 3)."},
    {"cl.mix", CLUDA_CONFIG_BOOL, "true", 0, 0, 0, NULL, 0, 0,
     "Contrastive loss on the mixed image with mixed labels (paper Eq. 5); needs uda.enabled."},
    {"cl.size", F_INT_LIST, "[65, 65]", 1, 4096, 0, NULL, 2, 2,
     "Contrast map [height, width]: fused features resized bilinearly (align_corners True), "
     "labels by legacy nearest (decisions.md 3)."},
    {"cl.tau", F_FLOAT, "1.0", 0, 0, CLUDA_CONFIG_MIN_EXCLUSIVE | CLUDA_CONFIG_NO_MAX, NULL, 0, 0,
     "Temperature: similarity = cosine / tau (decisions.md 4)."},
    {"cl.loss_weight", F_FLOAT, "1.0", 0, 0, CLUDA_CONFIG_NO_MAX, NULL, 0, 0,
     "Weight of each contrastive term (decisions.md 12)."},
    {"cl.pairs", F_ENUM, "separate", 0, 0, 0, "separate|all|stuff_only", 0, 0,
     "Negatives: separate = own group only (S-S + T-T, the paper's best); all = every other "
     "class; stuff_only = separate with stuff anchors only (decisions.md 6)."},
    {"cl.thing_classes", F_INT_LIST, "[6, 7, 11, 12, 13, 14, 15, 16, 17, 18]", 0, 254, 0, NULL, 0,
     32, "Thing classes of the stuff/thing split (decisions.md 7); all others are stuff."},
    {"cl.mix_weighting", F_ENUM, "weighted", 0, 0, 0, "weighted|none", 0, 0,
     "Mixed-image CL: weighted = target anchors x Gamma, margins x 0 (paper Eq. 5, decisions.md "
     "11); none = unweighted (Table 3a)."},
    {"cl.scope", F_ENUM, "global", 0, 0, 0, "global|local", 0, 0,
     "Contrast set: global = the pixels of the whole global batch; local = this process's "
     "images (decisions.md 14); identical with one process."},
    {"cl.ref_ignore_as_class", CLUDA_CONFIG_BOOL, "false", 0, 0, 0, NULL, 0, 0,
     "Reference quirk: label 255 acts as one more class (decisions.md 8)."},
    {"cl.ref_pair_weight", CLUDA_CONFIG_BOOL, "false", 0, 0, 0, NULL, 0, 0,
     "Reference quirk: weight pair (i, j) by g_i g_j instead of the anchor weight (decisions.md "
     "11)."},
    {"cl.ref_half", CLUDA_CONFIG_BOOL, "false", 0, 0, 0, NULL, 0, 0,
     "Reference quirk: an extra factor 0.5 on each contrastive term (decisions.md 12)."},
    {"cl.ref_row_order", CLUDA_CONFIG_BOOL, "false", 0, 0, 0, NULL, 0, 0,
     "Reference quirk: pair pixel-major feature rows with batch-major label/weight rows, so with "
     "batch > 1 a feature takes the label of a remapped pixel (decisions.md 9, algorithm.md "
     "6.3)."},
    {"optim.lr", F_FLOAT, "6e-5", 0, 1, 0, NULL, 0, 0,
     "AdamW base learning rate of the encoder (algorithm.md 4.1)."},
    {"optim.head_lr_mult", F_FLOAT, "10", 0, 1000, 0, NULL, 0, 0,
     "Learning-rate multiplier of the decode head."},
    {"optim.weight_decay", F_FLOAT, "0.01", 0, 1, 0, NULL, 0, 0,
     "AdamW decoupled weight decay (0 for encoder norm parameters)."},
    {"optim.betas", CLUDA_CONFIG_FLOAT_LIST, "[0.9, 0.999]", 0, 1, CLUDA_CONFIG_MAX_EXCLUSIVE, NULL,
     2, 2, "AdamW beta1, beta2."},
    {"optim.eps", F_FLOAT, "1e-8", 0, 1, CLUDA_CONFIG_MIN_EXCLUSIVE, NULL, 0, 0,
     "AdamW epsilon (added to sqrt(v_hat))."},
    {"optim.warmup_iters", F_INT, "1500", 0, 0, CLUDA_CONFIG_NO_MAX, NULL, 0, 0,
     "Linear warm-up iterations (0: none)."},
    {"optim.warmup_ratio", F_FLOAT, "1e-6", 0, 1, 0, NULL, 0, 0,
     "Learning-rate ratio at the start of the warm-up."},
    {"optim.power", F_FLOAT, "1.0", 0, 10, 0, NULL, 0, 0, "Poly schedule power."},
    {"optim.min_lr", F_FLOAT, "0", 0, 1, 0, NULL, 0, 0, "Poly schedule end learning rate."},
    {"optim.lr_scaling", F_ENUM, "none", 0, 0, 0, "none|linear|sqrt", 0, 0,
     "How the base lr follows the global batch relative to 2 (decisions.md 21)."},
    {"optim.grad_clip", F_FLOAT, "0", 0, 0, CLUDA_CONFIG_NO_MAX, NULL, 0, 0,
     "Global gradient-norm clipping (0: off, as the reference)."},
    {"data.source", F_ENUM, "synthetic", 0, 0, 0, "synthetic|gta|synthia", 0, 0,
     "Source data set: synthetic = the built-in procedural street scenes (source style); gta = "
     "GTA5, synthia = SYNTHIA RAND-CITYSCAPES in the layouts of docs/datasets.md (labels "
     "converted with cluda_data convert)."},
    {"data.target", F_ENUM, "synthetic", 0, 0, 0, "synthetic|cityscapes", 0, 0,
     "Target data set: synthetic = the built-in scenes (target style); cityscapes = the "
     "Cityscapes train split for training and its val split for the periodic evaluation."},
    {"data.source_root", CLUDA_CONFIG_STRING, "\"\"", 0, 0, 0, NULL, 0, 0,
     "Root of the source data set; empty: data/gta or data/synthia (as the DAFormer configs)."},
    {"data.target_root", CLUDA_CONFIG_STRING, "\"\"", 0, 0, 0, NULL, 0, 0,
     "Root of the target data set; empty: data/cityscapes."},
    {"data.source_scale", F_INT_LIST, "[0, 0]", 0, 16384, 0, NULL, 2, 2,
     "Keep-ratio resize of source images to fit [long, short] before cropping (mmcv imrescale, "
     "algorithm.md 4.3); [0, 0]: the DAFormer value of the data set (GTA [1280, 720], SYNTHIA "
     "[1280, 760])."},
    {"data.target_scale", F_INT_LIST, "[0, 0]", 0, 16384, 0, NULL, 2, 2,
     "Keep-ratio resize of target images; [0, 0]: the DAFormer value (Cityscapes [1024, 512])."},
    {"data.cat_max_ratio", F_FLOAT, "0.75", 0, 1, CLUDA_CONFIG_MIN_EXCLUSIVE, NULL, 0, 0,
     "Source crops are redrawn (up to 10 times) while one class covers this fraction of the "
     "labelled pixels or only one class is present (mmseg RandomCrop); 1 disables it."},
    {"data.rcs_min_crop_ratio", F_FLOAT, "0.5", 0, 0, CLUDA_CONFIG_NO_MAX, NULL, 0, 0,
     "RCS re-crop threshold on data sets: the crop must hold more than rcs_min_pixels x this "
     "many pixels of the drawn class (DAFormer 0.5, HRDA 2.0; 0: no re-crop)."},
    {"data.workers", F_INT, "2", 0, 64, 0, NULL, 0, 0,
     "Background loader threads per rank decoding and augmenting data sets ahead of the "
     "step; 0: load in the training thread."},
    {"data.prefetch", F_INT, "2", 1, 64, 0, NULL, 0, 0,
     "Iterations the loader keeps ready ahead of the step."},
    {"data.on_error", F_ENUM, "error", 0, 0, 0, "error|skip", 0, 0,
     "A bad sample (unreadable PNG, missing or mismatched label): error = stop naming the "
     "file; skip = warn, draw another image and count it in the log."},
    {"data.seed", F_INT, "0", 0, 0, CLUDA_CONFIG_NO_MAX, NULL, 0, 0,
     "Seed of the synthetic data set (which scenes exist), independent of the run seed."},
    {"data.size", F_INT_LIST, "[512, 512]", 32, 16384, 0, NULL, 2, 2,
     "Rendered size [height, width] of synthetic images; training crops are taken from it."},
    {"data.gap", F_FLOAT, "1.0", 0, 1, 0, NULL, 0, 0,
     "Strength of the synthetic target style (0: like the source, 1: the full domain gap)."},
    {"data.train_images", F_INT, "2975", 1, 100000000, 0, NULL, 0, 0,
     "Number of images of each domain's synthetic train split."},
    {"data.val_images", F_INT, "500", 1, 100000000, 0, NULL, 0, 0,
     "Number of target validation images used by the periodic evaluation."},
    {"data.rcs", CLUDA_CONFIG_BOOL, "true", 0, 0, 0, NULL, 0, 0,
     "Rare-class sampling of source images (algorithm.md 2); false = uniform."},
    {"data.rcs_temperature", F_FLOAT, "0.01", 0, 0,
     CLUDA_CONFIG_MIN_EXCLUSIVE | CLUDA_CONFIG_NO_MAX, NULL, 0, 0,
     "RCS temperature T of P(c) = softmax((1 - f_c) / T)."},
    {"data.rcs_min_pixels", F_INT, "3000", 0, 0, CLUDA_CONFIG_NO_MAX, NULL, 0, 0,
     "RCS: an image is a candidate for class c when it has more than this many pixels of c "
     "(at data.size); crops are redrawn up to 10 times while they hold <= half of that."},
    {"log.interval", F_INT, "50", 1, 0, CLUDA_CONFIG_NO_MAX, NULL, 0, 0,
     "Print the progress line and write metrics.jsonl / TensorBoard every N iterations."},
    {"log.tensorboard", CLUDA_CONFIG_BOOL, "true", 0, 0, 0, NULL, 0, 0,
     "Write TensorBoard scalars under <work-dir>/tb/."},
    {"checkpoint.interval", F_INT, "4000", 0, 0, CLUDA_CONFIG_NO_MAX, NULL, 0, 0,
     "Save latest.h5 and iter_<N>.h5 every N iterations and at the end (0: only at the end)."},
    {"checkpoint.keep", F_INT, "3", 0, 0, CLUDA_CONFIG_NO_MAX, NULL, 0, 0,
     "How many iter_<N>.h5 files to keep (0: all)."},
    {"checkpoint.save_best", CLUDA_CONFIG_BOOL, "true", 0, 0, 0, NULL, 0, 0,
     "Keep best.h5: the state with the best target-validation mIoU (decisions.md 20)."},
    {"eval.data_dir", CLUDA_CONFIG_STRING, "\"\"", 0, 0, 0, NULL, 0, 0,
     "Directory of image/label pairs to evaluate: NAME_labelTrainIds.png with NAME_rgb.png "
     "or NAME.png; X_gtFine_labelTrainIds.png with X_leftImg8bit.png. cluda_eval --data "
     "overrides it."},
    {"eval.mode", F_ENUM, "whole", 0, 0, 0, "whole|slide", 0, 0,
     "Test-time inference (algorithm.md 7): whole = one forward pass per image (DAFormer); "
     "slide = windows of eval.crop every eval.stride, logits summed and divided by the "
     "per-pixel window count (mmseg slide_inference; HRDA/CLUDA)."},
    {"eval.crop", F_INT_LIST, "[1024, 1024]", 32, 16384, 0, NULL, 2, 2,
     "Sliding-window size [height, width] (slide mode); a window never exceeds the image."},
    {"eval.stride", F_INT_LIST, "[512, 512]", 1, 16384, 0, NULL, 2, 2,
     "Sliding-window step [height, width] (slide mode); the last window is shifted back to "
     "end at the image border."},
    {"eval.scale", F_INT_LIST, "[1024, 512]", 0, 16384, 0, NULL, 2, 2,
     "Test resize (mmcv imrescale, cv2 bilinear): each image is scaled keeping its aspect "
     "ratio to fit [long, short] sides (DAFormer: [1024, 512]; HRDA: [2048, 1024]); the "
     "scores are upsampled bilinearly to the label size before the argmax. [0, 0]: no resize."},
    {"eval.num_classes_protocol", F_ENUM, "19", 0, 0, 0, "19|16|13", 0, 0,
     "mIoU protocol: 19 Cityscapes classes; 16 = SYNTHIA without terrain, truck and train; 13 "
     "= also without wall, fence and pole. 16 adds mIoU16 to the report, 13 both; all come "
     "from one 19-class confusion matrix and need model.num_classes 19."},
};

const cluda_config_key *cluda_config_registry(int *count) {
  if (count) *count = (int)(sizeof registry / sizeof registry[0]);
  return registry;
}

/* ---- small helpers ---- */

static const char *type_name(cluda_config_type type) {
  switch (type) {
  case CLUDA_CONFIG_INT: return "int";
  case CLUDA_CONFIG_FLOAT: return "float";
  case CLUDA_CONFIG_BOOL: return "bool";
  case CLUDA_CONFIG_STRING: return "string";
  case CLUDA_CONFIG_ENUM: return "enum";
  case CLUDA_CONFIG_INT_LIST: return "int list";
  case CLUDA_CONFIG_FLOAT_LIST: return "float list";
  }
  return "?";
}

static const char *expectation(cluda_config_type type) {
  switch (type) {
  case CLUDA_CONFIG_INT: return "an integer";
  case CLUDA_CONFIG_FLOAT: return "a number";
  case CLUDA_CONFIG_BOOL: return "true or false";
  case CLUDA_CONFIG_STRING: return "a string";
  case CLUDA_CONFIG_ENUM: return "one of its choices";
  case CLUDA_CONFIG_INT_LIST: return "a list of integers";
  case CLUDA_CONFIG_FLOAT_LIST: return "a list of numbers";
  }
  return "?";
}

static int is_list(cluda_config_type type) {
  return type == CLUDA_CONFIG_INT_LIST || type == CLUDA_CONFIG_FLOAT_LIST;
}

/* Shortest "%g" text that reads back as exactly v. */
static void format_double(double v, char *buf, size_t size) {
  if (v == floor(v) && fabs(v) < 1e15) { /* whole numbers without an exponent: 10, not 1e+01 */
    snprintf(buf, size, "%.0f", v);
    return;
  }
  for (int precision = 1; precision <= 17; precision++) {
    snprintf(buf, size, "%.*g", precision, v);
    if (strtod(buf, NULL) == v) return;
  }
}

/* "[0, 4096]", "(0, 0.1]", "[0, inf)" */
static void format_range(const cluda_config_key *k, char *buf, size_t size) {
  char lo[32] = "-inf", hi[32] = "inf";
  if (!(k->range_flags & CLUDA_CONFIG_NO_MIN)) format_double(k->min, lo, sizeof lo);
  if (!(k->range_flags & CLUDA_CONFIG_NO_MAX)) format_double(k->max, hi, sizeof hi);
  snprintf(buf, size, "%c%s, %s%c",
           (k->range_flags & (CLUDA_CONFIG_MIN_EXCLUSIVE | CLUDA_CONFIG_NO_MIN)) ? '(' : '[', lo,
           hi, (k->range_flags & (CLUDA_CONFIG_MAX_EXCLUSIVE | CLUDA_CONFIG_NO_MAX)) ? ')' : ']');
}

static int in_range(const cluda_config_key *k, double v) {
  if (!(k->range_flags & CLUDA_CONFIG_NO_MIN)) {
    if (k->range_flags & CLUDA_CONFIG_MIN_EXCLUSIVE ? v <= k->min : v < k->min) return 0;
  }
  if (!(k->range_flags & CLUDA_CONFIG_NO_MAX)) {
    if (k->range_flags & CLUDA_CONFIG_MAX_EXCLUSIVE ? v >= k->max : v > k->max) return 0;
  }
  return 1;
}

/* Whether `choice` is one of the '|'-separated choices. */
static int is_choice(const char *choices, const char *value) {
  size_t n = strlen(value);
  for (const char *p = choices; p && *p;) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == n && strncmp(p, value, n) == 0) return 1;
    p = bar ? bar + 1 : NULL;
  }
  return 0;
}

/* "b0, b1, b2" from "b0|b1|b2" */
static void format_choices(const char *choices, char *buf, size_t size) {
  size_t used = 0;
  buf[0] = '\0';
  for (const char *p = choices; *p && used + 3 < size; p++) {
    if (*p == '|') {
      buf[used++] = ',';
      buf[used++] = ' ';
    } else {
      buf[used++] = *p;
    }
  }
  buf[used] = '\0';
}

int cluda_config_find(const cluda_config *cfg, const char *key) {
  if (!cfg || !key) return -1;
  for (int i = 0; i < cfg->count; i++)
    if (strcmp(cfg->keys[i].name, key) == 0) return i;
  return -1;
}

/* Whether some key lies below `section` ("model" for "model.encoder"). */
static int is_section(const cluda_config_key *keys, int count, const char *section) {
  size_t n = strlen(section);
  if (n == 0) return 1;
  for (int i = 0; i < count; i++)
    if (strncmp(keys[i].name, section, n) == 0 && keys[i].name[n] == '.') return 1;
  return 0;
}

static int edit_distance(const char *a, const char *b) {
  int la = (int)strlen(a), lb = (int)strlen(b);
  if (la >= CLUDA_CONFIG_KEY_MAX || lb >= CLUDA_CONFIG_KEY_MAX) return 1 << 20;
  int prev[CLUDA_CONFIG_KEY_MAX + 1], cur[CLUDA_CONFIG_KEY_MAX + 1];
  for (int j = 0; j <= lb; j++)
    prev[j] = j;
  for (int i = 1; i <= la; i++) {
    cur[0] = i;
    for (int j = 1; j <= lb; j++) {
      int best = prev[j - 1] + (a[i - 1] != b[j - 1]);
      if (prev[j] + 1 < best) best = prev[j] + 1;
      if (cur[j - 1] + 1 < best) best = cur[j - 1] + 1;
      cur[j] = best;
    }
    memcpy(prev, cur, sizeof(int) * (size_t)(lb + 1));
  }
  return prev[lb];
}

/* " (did you mean 'model.encoder'?)" for a near miss, else "". */
static void suggest(const cluda_config_key *keys, int count, const char *unknown, char *buf,
                    size_t size) {
  int best = -1, best_distance = 0;
  for (int i = 0; i < count; i++) {
    int d = edit_distance(unknown, keys[i].name);
    if (best < 0 || d < best_distance) {
      best = i;
      best_distance = d;
    }
  }
  int limit = (int)strlen(unknown) / 4;
  if (limit < 2) limit = 2;
  if (best >= 0 && best_distance <= limit)
    snprintf(buf, size, " (did you mean '%s'?)", keys[best].name);
  else
    buf[0] = '\0';
}

/* ---- parsing one value ---- */

typedef struct scalar_text {
  const char *text;
  int quoted; /* a quoted YAML scalar is a string, never a number */
} scalar_text;

static int is_null_scalar(const scalar_text *s) {
  if (s->quoted) return 0;
  return s->text[0] == '\0' || strcmp(s->text, "~") == 0 || strcmp(s->text, "null") == 0 ||
         strcmp(s->text, "Null") == 0 || strcmp(s->text, "NULL") == 0;
}

/* Parses a number for an INT or FLOAT key (or list element); 0 on success, else writes the
 * problem into err. */
static int parse_number(const cluda_config_key *k, int integer, const scalar_text *s,
                        double *as_double, int64_t *as_int, char *err, size_t err_size) {
  const char *what = integer ? "an integer" : "a number";
  if (s->quoted) {
    snprintf(err, err_size, "expects %s, got the quoted string \"%.40s\"", what, s->text);
    return -1;
  }
  char *end = NULL;
  errno = 0;
  if (integer) {
    long long v = strtoll(s->text, &end, 10);
    if (end == s->text || *end != '\0' || errno == ERANGE) {
      snprintf(err, err_size, "expects %s, got '%.40s'", what, s->text);
      return -1;
    }
    *as_int = v;
    *as_double = (double)v;
  } else {
    double v = strtod(s->text, &end);
    if (end == s->text || *end != '\0' || !isfinite(v) || strpbrk(s->text, "xX")) {
      snprintf(err, err_size, "expects %s, got '%.40s'", what, s->text);
      return -1;
    }
    *as_double = v;
    *as_int = 0;
  }
  if (!in_range(k, *as_double)) {
    char range[80];
    format_range(k, range, sizeof range);
    snprintf(err, err_size, "must be in %s, got %.40s", range, s->text);
    return -1;
  }
  return 0;
}

static int parse_scalar_value(const cluda_config_key *k, const scalar_text *s,
                              cluda_config_value *out, char *err, size_t err_size) {
  double d = 0;
  int64_t i = 0;
  switch (k->type) {
  case CLUDA_CONFIG_INT:
    if (parse_number(k, 1, s, &d, &i, err, err_size)) return -1;
    out->i = i;
    return 0;
  case CLUDA_CONFIG_FLOAT:
    if (parse_number(k, 0, s, &d, &i, err, err_size)) return -1;
    out->f = d;
    return 0;
  case CLUDA_CONFIG_BOOL:
    if (!s->quoted &&
        (!strcmp(s->text, "true") || !strcmp(s->text, "True") || !strcmp(s->text, "TRUE"))) {
      out->i = 1;
      return 0;
    }
    if (!s->quoted &&
        (!strcmp(s->text, "false") || !strcmp(s->text, "False") || !strcmp(s->text, "FALSE"))) {
      out->i = 0;
      return 0;
    }
    snprintf(err, err_size, "expects true or false, got '%.40s'", s->text);
    return -1;
  case CLUDA_CONFIG_ENUM:
    if (!is_choice(k->choices, s->text)) {
      char choices[160];
      format_choices(k->choices, choices, sizeof choices);
      snprintf(err, err_size, "expects one of %s; got '%.40s'", choices, s->text);
      return -1;
    }
    snprintf(out->s, sizeof out->s, "%s", s->text);
    return 0;
  case CLUDA_CONFIG_STRING:
    if (strlen(s->text) >= sizeof out->s) {
      snprintf(err, err_size, "string longer than %d characters", CLUDA_CONFIG_STRING_MAX - 1);
      return -1;
    }
    snprintf(out->s, sizeof out->s, "%s", s->text);
    return 0;
  case CLUDA_CONFIG_INT_LIST:
  case CLUDA_CONFIG_FLOAT_LIST:
    snprintf(err, err_size, "expects %s such as [1, 2], got '%.40s'", expectation(k->type),
             s->text);
    return -1;
  }
  snprintf(err, err_size, "has an unknown type");
  return -1;
}

/* ---- loading YAML ---- */

typedef struct load_ctx {
  const cluda_config_key *keys;
  int count;
  cluda_config_value *values; /* working copy, committed on success */
  int *set_line;              /* per key: line where this source set it (0: not yet) */
  const char *source;         /* file name, or the text of a --set assignment */
  int is_override;
  yaml_document_t *doc;
} load_ctx;

static int node_line(const yaml_node_t *node) { return (int)node->start_mark.line + 1; }

/* "bad.yaml:3" or "--set 'model.encoder=b9'" */
static void location(const load_ctx *c, int line, char *buf, size_t size) {
  if (c->is_override)
    snprintf(buf, size, "--set '%s'", c->source);
  else
    snprintf(buf, size, "%s:%d", c->source, line);
}

#define LOAD_FAIL(c, line, ...) load_fail(__FILE__, __LINE__, (c), (line), __VA_ARGS__)

static cluda_status load_fail(const char *file, int src_line, const load_ctx *c, int line,
                              const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static cluda_status load_fail(const char *file, int src_line, const load_ctx *c, int line,
                              const char *fmt, ...) {
  char where[CLUDA_CONFIG_ORIGIN_MAX + 16], what[200];
  location(c, line, where, sizeof where);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  return cluda_status_make(CLUDA_ERR_ARG, file, src_line, "config: %s: %s", where, what);
}

static scalar_text node_scalar(const yaml_node_t *node) {
  scalar_text s;
  s.text = (const char *)node->data.scalar.value;
  s.quoted = node->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
  return s;
}

static cluda_status unknown_key(const load_ctx *c, int line, const char *path) {
  char hint[CLUDA_CONFIG_KEY_MAX + 32];
  suggest(c->keys, c->count, path, hint, sizeof hint);
  return LOAD_FAIL(c, line, "unknown key '%s'%s", path, hint);
}

static cluda_status apply_leaf(load_ctx *c, int index, yaml_node_t *node, int line) {
  const cluda_config_key *k = &c->keys[index];
  cluda_config_value v = c->values[index];
  char err[160];
  if (c->set_line[index])
    return LOAD_FAIL(c, line, "%s is given twice (first at line %d)", k->name, c->set_line[index]);
  if (node->type == YAML_MAPPING_NODE)
    return LOAD_FAIL(c, line, "%s expects %s, got a mapping", k->name, expectation(k->type));
  if (node->type == YAML_SEQUENCE_NODE) {
    if (!is_list(k->type))
      return LOAD_FAIL(c, line, "%s expects %s, got a list", k->name, expectation(k->type));
    int n = (int)(node->data.sequence.items.top - node->data.sequence.items.start);
    if (n < k->list_min_len || n > k->list_max_len) {
      if (k->list_min_len == k->list_max_len)
        return LOAD_FAIL(c, line, "%s expects a list of %d values, got %d", k->name,
                         k->list_min_len, n);
      return LOAD_FAIL(c, line, "%s expects a list of %d to %d values, got %d", k->name,
                       k->list_min_len, k->list_max_len, n);
    }
    for (int j = 0; j < n; j++) {
      yaml_node_t *item = yaml_document_get_node(c->doc, node->data.sequence.items.start[j]);
      if (!item || item->type != YAML_SCALAR_NODE)
        return LOAD_FAIL(c, item ? node_line(item) : line, "%s[%d] expects a number", k->name, j);
      scalar_text s = node_scalar(item);
      int64_t as_int = 0;
      if (parse_number(k, k->type == CLUDA_CONFIG_INT_LIST, &s, &v.list[j], &as_int, err,
                       sizeof err))
        return LOAD_FAIL(c, node_line(item), "%s[%d] %s", k->name, j, err);
    }
    v.list_len = n;
  } else {
    scalar_text s = node_scalar(node);
    if (is_null_scalar(&s)) return LOAD_FAIL(c, line, "%s has no value", k->name);
    if (parse_scalar_value(k, &s, &v, err, sizeof err))
      return LOAD_FAIL(c, line, "%s %s", k->name, err);
  }
  location(c, line, v.origin, sizeof v.origin);
  c->values[index] = v;
  c->set_line[index] = line;
  return cluda_ok();
}

/* Applies `node` at the dotted `path` ("" for the document root). */
static cluda_status apply_node(load_ctx *c, yaml_node_t *node, const char *path, int line) {
  if (path[0] != '\0') {
    int index = -1;
    for (int i = 0; i < c->count; i++)
      if (strcmp(c->keys[i].name, path) == 0) index = i;
    if (index >= 0) return apply_leaf(c, index, node, line);
    if (!is_section(c->keys, c->count, path)) return unknown_key(c, line, path);
  }
  if (node->type != YAML_MAPPING_NODE) {
    if (path[0] == '\0') {
      if (node->type == YAML_SCALAR_NODE) {
        scalar_text s = node_scalar(node);
        if (is_null_scalar(&s)) return cluda_ok(); /* an empty file */
      }
      return LOAD_FAIL(c, node_line(node), "the top level must be a mapping of keys");
    }
    return LOAD_FAIL(c, line, "'%s' is a section; give a mapping of its keys", path);
  }
  for (yaml_node_pair_t *pair = node->data.mapping.pairs.start; pair < node->data.mapping.pairs.top;
       pair++) {
    yaml_node_t *key = yaml_document_get_node(c->doc, pair->key);
    yaml_node_t *value = yaml_document_get_node(c->doc, pair->value);
    if (!key || !value) return LOAD_FAIL(c, line, "malformed mapping");
    int key_line = node_line(key);
    if (key->type != YAML_SCALAR_NODE || key->data.scalar.value[0] == '\0')
      return LOAD_FAIL(c, key_line, "keys must be names");
    char child[CLUDA_CONFIG_KEY_MAX];
    int n = snprintf(child, sizeof child, "%s%s%s", path, path[0] ? "." : "",
                     (const char *)key->data.scalar.value);
    if (n < 0 || (size_t)n >= sizeof child)
      return LOAD_FAIL(c, key_line, "unknown key '%.60s...' (too long)", child);
    CLUDA_TRY(apply_node(c, value, child, key_line));
  }
  return cluda_ok();
}

/* Parses `text` and applies it at `path` ("" for a whole file) to a copy of the values,
 * committed only when everything succeeds. */
static cluda_status load_text(cluda_config *cfg, const char *text, size_t length,
                              const char *source, int is_override, const char *path) {
  load_ctx c = {cfg->keys, cfg->count, NULL, NULL, source, is_override, NULL};
  c.values = malloc(sizeof(cluda_config_value) * (size_t)cfg->count);
  c.set_line = calloc((size_t)cfg->count, sizeof(int));
  if (!c.values || !c.set_line) {
    free(c.values);
    free(c.set_line);
    return CLUDA_FAIL(CLUDA_ERR_ALLOC, "config: out of memory");
  }
  memcpy(c.values, cfg->values, sizeof(cluda_config_value) * (size_t)cfg->count);

  cluda_status s = cluda_ok();
  yaml_parser_t parser;
  yaml_document_t doc, extra;
  int have_doc = 0;
  if (!yaml_parser_initialize(&parser)) {
    s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "config: cannot initialise the YAML parser");
  } else {
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, length);
    if (!yaml_parser_load(&parser, &doc)) {
      char where[CLUDA_CONFIG_ORIGIN_MAX + 16];
      location(&c, (int)parser.problem_mark.line + 1, where, sizeof where);
      s = CLUDA_FAIL(CLUDA_ERR_ARG, "config: %s:%d: YAML syntax error: %s%s%s", where,
                     (int)parser.problem_mark.column + 1,
                     parser.problem ? parser.problem : "unknown problem", parser.context ? " " : "",
                     parser.context ? parser.context : "");
    } else {
      have_doc = 1;
      c.doc = &doc;
      yaml_node_t *root = yaml_document_get_root_node(&doc);
      if (root) {
        s = apply_node(&c, root, path, 1);
      } else if (is_override) {
        s = LOAD_FAIL(&c, 1, "%s has no value", path);
      }
      if (s.code == CLUDA_OK) {
        /* A second document would be silently ignored otherwise. */
        if (!yaml_parser_load(&parser, &extra)) {
          s = CLUDA_FAIL(CLUDA_ERR_ARG, "config: %s: YAML syntax error after the first document",
                         source);
        } else {
          yaml_node_t *more = yaml_document_get_root_node(&extra);
          if (more)
            s = LOAD_FAIL(&c, node_line(more), "more than one YAML document; use one mapping");
          yaml_document_delete(&extra);
        }
      }
    }
    yaml_parser_delete(&parser);
  }
  if (have_doc) yaml_document_delete(&doc);
  if (s.code == CLUDA_OK)
    memcpy(cfg->values, c.values, sizeof(cluda_config_value) * (size_t)cfg->count);
  free(c.values);
  free(c.set_line);
  return s;
}

cluda_status cluda_config_load_string(cluda_config *cfg, const char *text, const char *name) {
  CLUDA_REQUIRE(cfg && cfg->values && text, CLUDA_ERR_ARG, "config_load_string: NULL argument");
  return load_text(cfg, text, strlen(text), name ? name : "<string>", 0, "");
}

cluda_status cluda_config_load_file(cluda_config *cfg, const char *path) {
  CLUDA_REQUIRE(cfg && cfg->values && path, CLUDA_ERR_ARG, "config_load_file: NULL argument");
  FILE *f = fopen(path, "rb");
  CLUDA_REQUIRE(f != NULL, CLUDA_ERR_IO, "config: cannot open config file %s: %s", path,
                strerror(errno));
  enum { MAX_CONFIG_BYTES = 1 << 20 };
  char *text = malloc(MAX_CONFIG_BYTES + 1);
  size_t n = text ? fread(text, 1, MAX_CONFIG_BYTES + 1, f) : 0;
  int read_failed = ferror(f);
  fclose(f);
  if (!text) return CLUDA_FAIL(CLUDA_ERR_ALLOC, "config: out of memory reading %s", path);
  cluda_status s = cluda_ok();
  if (read_failed)
    s = CLUDA_FAIL(CLUDA_ERR_IO, "config: cannot read config file %s", path);
  else if (n > MAX_CONFIG_BYTES)
    s = CLUDA_FAIL(CLUDA_ERR_IO, "config: %s is larger than %d bytes", path, MAX_CONFIG_BYTES);
  else if (memchr(text, '\0', n))
    s = CLUDA_FAIL(CLUDA_ERR_IO, "config: %s is not a text file (contains NUL bytes)", path);
  else
    s = load_text(cfg, text, n, path, 0, "");
  free(text);
  return s;
}

cluda_status cluda_config_set(cluda_config *cfg, const char *assignment) {
  CLUDA_REQUIRE(cfg && cfg->values && assignment, CLUDA_ERR_ARG, "config_set: NULL argument");
  const char *eq = strchr(assignment, '=');
  CLUDA_REQUIRE(eq != NULL && eq != assignment, CLUDA_ERR_ARG,
                "config: --set expects key=value, got '%s'", assignment);
  char key[CLUDA_CONFIG_KEY_MAX];
  size_t key_len = (size_t)(eq - assignment);
  CLUDA_REQUIRE(key_len < sizeof key, CLUDA_ERR_ARG, "config: --set '%.60s...': key too long",
                assignment);
  memcpy(key, assignment, key_len);
  key[key_len] = '\0';
  if (cluda_config_find(cfg, key) < 0 && !is_section(cfg->keys, cfg->count, key)) {
    load_ctx c = {cfg->keys, cfg->count, NULL, NULL, assignment, 1, NULL};
    return unknown_key(&c, 0, key);
  }
  return load_text(cfg, eq + 1, strlen(eq + 1), assignment, 1, key);
}

/* ---- registry checks and defaults ---- */

static int valid_name(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n >= CLUDA_CONFIG_KEY_MAX || name[0] == '.' || name[n - 1] == '.') return 0;
  for (size_t i = 0; i < n; i++) {
    char ch = name[i];
    if (ch == '.' && name[i + 1] == '.') return 0;
    if (!(ch == '.' || ch == '_' || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9'))) return 0;
  }
  return 1;
}

static int plain_choices(const char *choices) {
  if (!choices || !*choices || choices[0] == '|' || strstr(choices, "||")) return 0;
  for (const char *p = choices; *p; p++)
    if (!(*p == '|' || *p == '_' || *p == '-' || (*p >= 'a' && *p <= 'z') ||
          (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9')))
      return 0;
  return choices[strlen(choices) - 1] != '|';
}

static cluda_status apply_defaults(const cluda_config_key *keys, int count,
                                   cluda_config_value *values) {
  cluda_config tmp = {keys, count, values};
  for (int i = 0; i < count; i++) {
    char assignment[CLUDA_CONFIG_KEY_MAX + 128];
    snprintf(assignment, sizeof assignment, "%s=%s", keys[i].name, keys[i].default_text);
    cluda_status s = cluda_config_set(&tmp, assignment);
    if (s.code != CLUDA_OK)
      return CLUDA_FAIL(CLUDA_ERR_ARG, "config registry: default of %s: %s", keys[i].name,
                        s.message);
    values[i].origin[0] = '\0';
  }
  return cluda_ok();
}

cluda_status cluda_config_check_registry(const cluda_config_key *keys, int count) {
  CLUDA_REQUIRE(keys != NULL && count > 0, CLUDA_ERR_ARG, "config registry: empty");
  for (int i = 0; i < count; i++) {
    const cluda_config_key *k = &keys[i];
    CLUDA_REQUIRE(k->name && valid_name(k->name), CLUDA_ERR_ARG,
                  "config registry: row %d: bad key name '%s' (lower-case words joined by dots)", i,
                  k->name ? k->name : "(null)");
    CLUDA_REQUIRE(k->doc && *k->doc && !strchr(k->doc, '|') && !strchr(k->doc, '\n'), CLUDA_ERR_ARG,
                  "config registry: %s: the doc string must be one line without '|'", k->name);
    CLUDA_REQUIRE(k->default_text != NULL, CLUDA_ERR_ARG, "config registry: %s has no default",
                  k->name);
    CLUDA_REQUIRE(k->type >= CLUDA_CONFIG_INT && k->type <= CLUDA_CONFIG_FLOAT_LIST, CLUDA_ERR_ARG,
                  "config registry: %s has an unknown type", k->name);
    CLUDA_REQUIRE(k->type != CLUDA_CONFIG_ENUM || plain_choices(k->choices), CLUDA_ERR_ARG,
                  "config registry: %s: choices must be plain words separated by '|'", k->name);
    CLUDA_REQUIRE(!is_list(k->type) ||
                      (k->list_min_len >= 0 && k->list_min_len <= k->list_max_len &&
                       k->list_max_len <= CLUDA_CONFIG_LIST_MAX),
                  CLUDA_ERR_ARG, "config registry: %s: list lengths %d..%d outside 0..%d", k->name,
                  k->list_min_len, k->list_max_len, CLUDA_CONFIG_LIST_MAX);
    CLUDA_REQUIRE(
        (k->range_flags & (CLUDA_CONFIG_NO_MIN | CLUDA_CONFIG_NO_MAX)) || k->min <= k->max,
        CLUDA_ERR_ARG, "config registry: %s: min %g above max %g", k->name, k->min, k->max);
    for (int j = 0; j < i; j++)
      CLUDA_REQUIRE(strcmp(keys[j].name, k->name) != 0, CLUDA_ERR_ARG,
                    "config registry: %s declared twice", k->name);
    CLUDA_REQUIRE(!is_section(keys, count, k->name), CLUDA_ERR_ARG,
                  "config registry: %s is both a key and a section", k->name);
    /* Each section of this key must continue the previous row or be new, so the YAML
     * writer opens every section once. */
    char section[CLUDA_CONFIG_KEY_MAX];
    snprintf(section, sizeof section, "%s", k->name);
    for (char *dot = strrchr(section, '.'); dot; dot = strrchr(section, '.')) {
      *dot = '\0';
      size_t n = strlen(section);
      int continues =
          i > 0 && strncmp(keys[i - 1].name, section, n) == 0 && keys[i - 1].name[n] == '.';
      if (continues) continue;
      for (int j = 0; j < i; j++)
        CLUDA_REQUIRE(
            !(strncmp(keys[j].name, section, n) == 0 && keys[j].name[n] == '.'), CLUDA_ERR_ARG,
            "config registry: %s: section '%s' is split; keep its keys together", k->name, section);
    }
  }
  cluda_config_value *values = calloc((size_t)count, sizeof *values);
  CLUDA_REQUIRE(values != NULL, CLUDA_ERR_ALLOC, "config registry: out of memory");
  cluda_status s = apply_defaults(keys, count, values);
  free(values);
  return s;
}

cluda_status cluda_config_init_with(cluda_config *cfg, const cluda_config_key *keys, int count) {
  CLUDA_REQUIRE(cfg != NULL, CLUDA_ERR_ARG, "config_init: cfg is NULL");
  memset(cfg, 0, sizeof *cfg);
  CLUDA_TRY(cluda_config_check_registry(keys, count));
  cluda_config_value *values = calloc((size_t)count, sizeof *values);
  CLUDA_REQUIRE(values != NULL, CLUDA_ERR_ALLOC, "config_init: out of memory");
  cluda_status s = apply_defaults(keys, count, values);
  if (s.code != CLUDA_OK) {
    free(values);
    return s;
  }
  cfg->keys = keys;
  cfg->count = count;
  cfg->values = values;
  return cluda_ok();
}

cluda_status cluda_config_init(cluda_config *cfg) {
  int count = 0;
  const cluda_config_key *keys = cluda_config_registry(&count);
  return cluda_config_init_with(cfg, keys, count);
}

void cluda_config_free(cluda_config *cfg) {
  if (!cfg) return;
  free(cfg->values);
  memset(cfg, 0, sizeof *cfg);
}

/* ---- getters ---- */

static cluda_status lookup(const cluda_config *cfg, const char *key, cluda_config_type type,
                           const char *getter, int *index) {
  CLUDA_REQUIRE(cfg && cfg->values && key, CLUDA_ERR_ARG, "%s: NULL argument", getter);
  *index = cluda_config_find(cfg, key);
  CLUDA_REQUIRE(*index >= 0, CLUDA_ERR_ARG, "%s: unknown key '%s'", getter, key);
  cluda_config_type actual = cfg->keys[*index].type;
  int ok = actual == type || (type == CLUDA_CONFIG_STRING && actual == CLUDA_CONFIG_ENUM);
  CLUDA_REQUIRE(ok, CLUDA_ERR_ARG, "%s: %s is of type %s", getter, key, type_name(actual));
  return cluda_ok();
}

cluda_status cluda_config_get_int(const cluda_config *cfg, const char *key, int64_t *out) {
  int i = 0;
  CLUDA_TRY(lookup(cfg, key, CLUDA_CONFIG_INT, "config_get_int", &i));
  *out = cfg->values[i].i;
  return cluda_ok();
}

cluda_status cluda_config_get_float(const cluda_config *cfg, const char *key, double *out) {
  int i = 0;
  CLUDA_TRY(lookup(cfg, key, CLUDA_CONFIG_FLOAT, "config_get_float", &i));
  *out = cfg->values[i].f;
  return cluda_ok();
}

cluda_status cluda_config_get_bool(const cluda_config *cfg, const char *key, int *out) {
  int i = 0;
  CLUDA_TRY(lookup(cfg, key, CLUDA_CONFIG_BOOL, "config_get_bool", &i));
  *out = (int)cfg->values[i].i;
  return cluda_ok();
}

cluda_status cluda_config_get_string(const cluda_config *cfg, const char *key, const char **out) {
  int i = 0;
  CLUDA_TRY(lookup(cfg, key, CLUDA_CONFIG_STRING, "config_get_string", &i));
  *out = cfg->values[i].s;
  return cluda_ok();
}

static cluda_status get_list(const cluda_config *cfg, const char *key, cluda_config_type type,
                             const char *getter, int capacity, int *count, int *index) {
  CLUDA_TRY(lookup(cfg, key, type, getter, index));
  int n = cfg->values[*index].list_len;
  CLUDA_REQUIRE(n <= capacity, CLUDA_ERR_ARG, "%s: %s has %d values, room for %d", getter, key, n,
                capacity);
  if (count) *count = n;
  return cluda_ok();
}

cluda_status cluda_config_get_int_list(const cluda_config *cfg, const char *key, int *out,
                                       int capacity, int *count) {
  int i = 0, n = 0;
  CLUDA_TRY(get_list(cfg, key, CLUDA_CONFIG_INT_LIST, "config_get_int_list", capacity, &n, &i));
  for (int j = 0; j < n; j++) {
    double v = cfg->values[i].list[j];
    CLUDA_REQUIRE(v >= -2147483648.0 && v <= 2147483647.0, CLUDA_ERR_ARG,
                  "config_get_int_list: %s[%d] = %.0f does not fit an int", key, j, v);
    out[j] = (int)v;
  }
  if (count) *count = n;
  return cluda_ok();
}

cluda_status cluda_config_get_float_list(const cluda_config *cfg, const char *key, double *out,
                                         int capacity, int *count) {
  int i = 0, n = 0;
  CLUDA_TRY(get_list(cfg, key, CLUDA_CONFIG_FLOAT_LIST, "config_get_float_list", capacity, &n, &i));
  for (int j = 0; j < n; j++)
    out[j] = cfg->values[i].list[j];
  if (count) *count = n;
  return cluda_ok();
}

/* ---- writing ---- */

/* The value as YAML text (what default_text would be to produce it). */
static void format_value(const cluda_config_key *k, const cluda_config_value *v, char *buf,
                         size_t size) {
  char num[40];
  switch (k->type) {
  case CLUDA_CONFIG_INT: snprintf(buf, size, "%lld", (long long)v->i); return;
  case CLUDA_CONFIG_FLOAT:
    format_double(v->f, num, sizeof num);
    snprintf(buf, size, "%s", num);
    return;
  case CLUDA_CONFIG_BOOL: snprintf(buf, size, "%s", v->i ? "true" : "false"); return;
  case CLUDA_CONFIG_ENUM: snprintf(buf, size, "%s", v->s); return;
  case CLUDA_CONFIG_STRING: {
    size_t used = 0;
    buf[used++] = '"';
    for (const char *p = v->s; *p && used + 4 < size; p++) {
      if (*p == '"' || *p == '\\') buf[used++] = '\\';
      buf[used++] = *p;
    }
    buf[used++] = '"';
    buf[used] = '\0';
    return;
  }
  case CLUDA_CONFIG_INT_LIST:
  case CLUDA_CONFIG_FLOAT_LIST: {
    size_t used = (size_t)snprintf(buf, size, "[");
    for (int j = 0; j < v->list_len && used < size; j++) {
      if (k->type == CLUDA_CONFIG_INT_LIST)
        snprintf(num, sizeof num, "%.0f", v->list[j]);
      else
        format_double(v->list[j], num, sizeof num);
      used += (size_t)snprintf(buf + used, size - used, "%s%s", j ? ", " : "", num);
    }
    if (used < size) snprintf(buf + used, size - used, "]");
    return;
  }
  }
  buf[0] = '\0';
}

cluda_status cluda_config_write_yaml(const cluda_config *cfg, FILE *out) {
  CLUDA_REQUIRE(cfg && cfg->values && out, CLUDA_ERR_ARG, "config_write_yaml: NULL argument");
  const char *previous = "";
  for (int i = 0; i < cfg->count; i++) {
    const char *name = cfg->keys[i].name;
    /* Components shared with the previous key are already open. */
    int depth = 0;
    size_t common = 0;
    for (size_t p = 0; name[p] && name[p] == previous[p]; p++)
      if (name[p] == '.') {
        common = p + 1;
        depth++;
      }
    const char *rest = name + common;
    for (const char *dot = strchr(rest, '.'); dot; dot = strchr(rest, '.')) {
      fprintf(out, "%*s%.*s:\n", 2 * depth, "", (int)(dot - rest), rest);
      depth++;
      rest = dot + 1;
    }
    char value[CLUDA_CONFIG_STRING_MAX + 64];
    format_value(&cfg->keys[i], &cfg->values[i], value, sizeof value);
    fprintf(out, "%*s%s: %s", 2 * depth, "", rest, value);
    if (cfg->values[i].origin[0]) fprintf(out, "  # %s", cfg->values[i].origin);
    fputc('\n', out);
    previous = name;
  }
  CLUDA_REQUIRE(!ferror(out), CLUDA_ERR_IO, "config_write_yaml: write failed");
  return cluda_ok();
}

cluda_status cluda_config_write_reference(const cluda_config_key *keys, int count, FILE *out) {
  CLUDA_REQUIRE(keys && out, CLUDA_ERR_ARG, "config_write_reference: NULL argument");
  fprintf(out, "| Key | Type | Default | Allowed values | Meaning |\n");
  fprintf(out, "|---|---|---|---|---|\n");
  for (int i = 0; i < count; i++) {
    const cluda_config_key *k = &keys[i];
    char allowed[200], range[80];
    switch (k->type) {
    case CLUDA_CONFIG_INT:
    case CLUDA_CONFIG_FLOAT: format_range(k, allowed, sizeof allowed); break;
    case CLUDA_CONFIG_BOOL: snprintf(allowed, sizeof allowed, "true, false"); break;
    case CLUDA_CONFIG_STRING: snprintf(allowed, sizeof allowed, "any text"); break;
    case CLUDA_CONFIG_ENUM: format_choices(k->choices, allowed, sizeof allowed); break;
    case CLUDA_CONFIG_INT_LIST:
    case CLUDA_CONFIG_FLOAT_LIST:
      format_range(k, range, sizeof range);
      if (k->list_min_len == k->list_max_len)
        snprintf(allowed, sizeof allowed, "%d values, each in %s", k->list_min_len, range);
      else
        snprintf(allowed, sizeof allowed, "%d to %d values, each in %s", k->list_min_len,
                 k->list_max_len, range);
      break;
    }
    fprintf(out, "| `%s` | %s | `%s` | %s | %s |\n", k->name, type_name(k->type), k->default_text,
            allowed, k->doc);
  }
  CLUDA_REQUIRE(!ferror(out), CLUDA_ERR_IO, "config_write_reference: write failed");
  return cluda_ok();
}

/* ---- the network ---- */

static cluda_status get_int32(const cluda_config *cfg, const char *key, int *out) {
  int64_t v = 0;
  CLUDA_TRY(cluda_config_get_int(cfg, key, &v));
  CLUDA_REQUIRE(v >= -2147483647 - 1 && v <= 2147483647, CLUDA_ERR_ARG,
                "config: %s = %lld does not fit an int", key, (long long)v);
  *out = (int)v;
  return cluda_ok();
}

static cluda_status get_float32(const cluda_config *cfg, const char *key, float *out) {
  double v = 0;
  CLUDA_TRY(cluda_config_get_float(cfg, key, &v));
  *out = (float)v;
  return cluda_ok();
}

cluda_status cluda_config_to_segmentor_config(const cluda_config *cfg,
                                              cluda_segmentor_config *out) {
  CLUDA_REQUIRE(cfg && out, CLUDA_ERR_ARG, "config_to_segmentor_config: NULL argument");
  const char *encoder = NULL, *head = NULL;
  CLUDA_TRY(cluda_config_get_string(cfg, "model.encoder", &encoder));
  CLUDA_TRY(cluda_config_get_string(cfg, "model.head", &head));
  cluda_head_kind kind =
      strcmp(head, "segformer") == 0 ? CLUDA_HEAD_SEGFORMER : CLUDA_HEAD_DAFORMER;
  CLUDA_TRY(cluda_segmentor_default_config(encoder, kind, out));

  int embed_dims = 0, channels = 0, dilations[4];
  CLUDA_TRY(get_int32(cfg, "model.embed_dims", &embed_dims));
  CLUDA_TRY(get_int32(cfg, "model.channels", &channels));
  if (embed_dims > 0) out->head.embed_dims = embed_dims;
  if (kind == CLUDA_HEAD_SEGFORMER) {
    CLUDA_REQUIRE(channels == 0 || channels == out->head.embed_dims, CLUDA_ERR_ARG,
                  "config: model.channels (%d) must equal model.embed_dims (%d) for the SegFormer "
                  "head (or be 0)",
                  channels, out->head.embed_dims);
    out->head.channels = out->head.embed_dims;
  } else if (channels > 0) {
    out->head.channels = channels;
  }
  CLUDA_TRY(get_int32(cfg, "model.num_classes", &out->head.num_classes));
  CLUDA_TRY(get_float32(cfg, "model.dropout", &out->head.dropout));
  CLUDA_TRY(get_float32(cfg, "model.bn_eps", &out->head.bn_eps));
  CLUDA_TRY(get_float32(cfg, "model.bn_momentum", &out->head.bn_momentum));
  CLUDA_TRY(cluda_config_get_int_list(cfg, "model.dilations", dilations, 4, NULL));
  CLUDA_REQUIRE(dilations[0] == 1, CLUDA_ERR_ARG,
                "config: model.dilations[0] must be 1 (the 1x1 ASPP branch), got %d", dilations[0]);
  memcpy(out->head.dilations, dilations, sizeof dilations);
  CLUDA_TRY(get_float32(cfg, "model.drop_path_rate", &out->encoder.drop_path_rate));
  CLUDA_TRY(get_float32(cfg, "model.patch_norm_eps", &out->encoder.patch_norm_eps));
  CLUDA_TRY(get_float32(cfg, "model.block_norm_eps", &out->encoder.block_norm_eps));
  return cluda_ok();
}

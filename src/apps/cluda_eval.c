/* cluda_eval: mIoU of a network over a directory of image/label pairs or a dataset split on
 * disk, on the CPU (algorithm.md 7); or of prediction PNGs against Cityscapes ground truth,
 * with the semantics of cityscapesscripts' evalPixelLevelSemanticLabeling.
 *
 * With a network, each image is resized for the test (eval.scale), normalised and segmented
 * in inference mode, whole or with sliding windows (eval.mode); the scores are upsampled to
 * the label size and their argmax goes into one confusion matrix over the split, from which
 * the per-class IoU, the mIoU (nanmean over classes present in labels or predictions) and
 * the SYNTHIA 16/13-class numbers are computed. */
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cluda/config.h"
#include "cluda/dataset.h"
#include "cluda/eval.h"
#include "cluda/fileio.h"
#include "cluda/image.h"

#include "app_common.h"

enum { MAX_SETS = 256 };

static const char usage[] =
    "usage: cluda_eval --config FILE.yaml [--data DIR | --dataset NAME --data-root ROOT]\n"
    "                  [options]\n"
    "       cluda_eval --predictions DIR --ground-truth DIR [--pred-format id|trainid]\n"
    "                  [--gt-format auto|id|trainid] [--protocol 19|16|13] [--json FILE]\n"
    "\n"
    "The first form segments every image of a directory of image/label pairs, or of a\n"
    "dataset split, with the network of a config file on the CPU; the second scores\n"
    "prediction PNGs already on disk. Both print the per-class IoU and the mIoU accumulated\n"
    "over all images (per class intersection and union summed over the split; mIoU = mean\n"
    "over the classes that occur in the labels or the predictions; label 255 is ignored).\n"
    "\n"
    "Pairs (--data): each <name>_labelTrainIds.png (8-bit train ids, 255 = ignore) with\n"
    "<name>_rgb.png or <name>.png, and each Cityscapes <x>_gtFine_labelTrainIds.png with\n"
    "<x>_leftImg8bit.png. Image and label must have the same size.\n"
    "Test protocol (DAFormer, algorithm.md 7): each image is resized keeping its aspect ratio\n"
    "to fit eval.scale (default [1024, 512]: 2048x1024 becomes 1024x512; cv2 bilinear),\n"
    "segmented, and the scores are upsampled bilinearly to the label size before the argmax.\n"
    "--set 'eval.scale=[0, 0]' segments the images at their own size.\n"
    "\n"
    "  --config FILE        YAML config: model.* describe the network, eval.* the evaluation\n"
    "                       (reference: configs/README.md, or --print-config-reference)\n"
    "  --set KEY=VALUE      override one config key (YAML value), after the file; repeatable\n"
    "  --weights FILE       weights: a safetensors file (mmseg/DAFormer, NVlabs or Hugging\n"
    "                       Face naming, detected) or cluda's HDF5 weight file. Without\n"
    "                       --weights the network is randomly initialised from the seed\n"
    "  --seed S             seed of the random initialisation (same as --set seed=S)\n"
    "  --data DIR           the image/label pairs (overrides eval.data_dir)\n"
    "  --dataset NAME       evaluate a dataset on disk instead: cityscapes (also gta,\n"
    "                       synthia: their whole set); needs --data-root\n"
    "  --data-root ROOT     the dataset's root: for Cityscapes leftImg8bit/<split>/<city>/\n"
    "                       <x>_leftImg8bit.png with gtFine/<split>/<city>/\n"
    "                       <x>_gtFine_labelTrainIds.png (or _gtFine_labelIds.png, mapped\n"
    "                       to train ids)\n"
    "  --split SPLIT        the Cityscapes split: val (default) or train\n"
    "  --mode whole|slide   inference: one pass per image, or windows of eval.crop every\n"
    "                       eval.stride averaged over overlaps (same as --set eval.mode=...)\n"
    "  --protocol 19|16|13  also report the SYNTHIA mIoU16 (without terrain, truck, train) and\n"
    "                       mIoU13 (also without wall, fence, pole); the JSON's \"miou\" is\n"
    "                       this protocol's (same as --set eval.num_classes_protocol=...)\n"
    "  --save-pred DIR      write <DIR>/<name>_color.png (Cityscapes colours) and\n"
    "                       <DIR>/<name>_labelTrainIds.png (predicted train ids); DIR is\n"
    "                       created if missing and must not be the data directory\n"
    "  --json FILE          write the metrics as JSON (per-class IoU, Acc, intersection,\n"
    "                       union; NaN as null), atomically\n"
    "  --print-config       print the resolved config (file + overrides) as YAML and exit\n"
    "  --print-config-reference\n"
    "                       print the Markdown reference of every config key and exit\n"
    "  --help               this text\n"
    "\n"
    "Prediction files (no network, no config), as cityscapesscripts'\n"
    "evalPixelLevelSemanticLabeling:\n"
    "  --ground-truth DIR   searched recursively for <city>_<seq>_<frame>_gtFine_labelIds.png\n"
    "                       (e.g. gtFine/val), or for *_labelTrainIds.png\n"
    "  --predictions DIR    searched recursively; the prediction of each ground-truth file is\n"
    "                       the one file named <city>_<seq>_<frame>*.png (none or several is\n"
    "                       an error); it must have the size of its ground truth\n"
    "  --pred-format F      id (default): Cityscapes label ids 0..33, as the official script;\n"
    "                       an id that is not one of the 19 classes is a miss. trainid: train\n"
    "                       ids 0..18, 255 = no class\n"
    "  --gt-format F        auto (default): label ids when *_gtFine_labelIds.png exist, else\n"
    "                       *_labelTrainIds.png; id; trainid (255 = ignore)\n"
    "Per class, IoU = TP / (TP + FP + FN) with false positives counted only on pixels of the\n"
    "19 evaluated classes; mIoU = mean over the classes with an IoU.\n"
    "\n"
    "Errors print one line naming the file and the problem; the exit status is then 1\n"
    "(2 for a bad command line).\n";

typedef struct eval_options {
  const char *config_path, *weights_path, *seed_text, *data_dir, *save_dir, *mode, *protocol;
  const char *json_path, *dataset, *data_root, *split;
  const char *predictions_dir, *ground_truth_dir, *pred_format, *gt_format;
  const char *sets[MAX_SETS];
  int set_count;
  int print_config, print_reference, help;
} eval_options;

/* The first flag of `flags` that is given, or NULL. */
static const char *first_given(const char *const *values, const char *const *flags, int count) {
  for (int i = 0; i < count; i++)
    if (values[i]) return flags[i];
  return NULL;
}

/* Which flags go together: the prediction-file form takes no network, the network form
 * one source of images. Returns 0, or 2 after printing the conflict. */
static int check_combination(const eval_options *opt) {
  const char *network_flags[] = {"--config",    "--weights",   "--seed",        "--data",
                                 "--dataset",   "--data-root", "--split",       "--mode",
                                 "--save-pred", "--set",       "--print-config"};
  const char *network_values[] = {opt->config_path,
                                  opt->weights_path,
                                  opt->seed_text,
                                  opt->data_dir,
                                  opt->dataset,
                                  opt->data_root,
                                  opt->split,
                                  opt->mode,
                                  opt->save_dir,
                                  opt->set_count ? "" : NULL,
                                  opt->print_config ? "" : NULL};
  int network_count = (int)(sizeof network_flags / sizeof network_flags[0]);
  if (opt->predictions_dir || opt->ground_truth_dir) {
    const char *conflict = first_given(network_values, network_flags, network_count);
    if (conflict) {
      fprintf(stderr, "cluda_eval: %s does not go with --predictions (no network); see --help\n",
              conflict);
      return 2;
    }
    if (!opt->predictions_dir || !opt->ground_truth_dir) {
      fprintf(stderr, "cluda_eval: --predictions and --ground-truth go together; see --help\n");
      return 2;
    }
    return 0;
  }
  if (opt->pred_format || opt->gt_format) {
    fprintf(stderr, "cluda_eval: %s needs --predictions and --ground-truth; see --help\n",
            opt->pred_format ? "--pred-format" : "--gt-format");
    return 2;
  }
  if (!opt->config_path) {
    fprintf(
        stderr,
        "cluda_eval: --config is required (or --predictions with --ground-truth); see --help\n");
    return 2;
  }
  if (opt->dataset && opt->data_dir) {
    fprintf(stderr, "cluda_eval: --data and --dataset exclude each other; see --help\n");
    return 2;
  }
  if (!opt->dataset != !opt->data_root || (opt->split && !opt->dataset)) {
    fprintf(stderr, "cluda_eval: %s needs %s; see --help\n",
            opt->dataset     ? "--dataset"
            : opt->data_root ? "--data-root"
                             : "--split",
            opt->dataset ? "--data-root" : "--dataset");
    return 2;
  }
  return 0;
}

/* Returns 0, or 2 after printing what is wrong with the command line. */
static int parse_args(int argc, char **argv, eval_options *opt) {
  memset(opt, 0, sizeof *opt);
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    const char **target = NULL;
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
      opt->help = 1;
      continue;
    }
    if (!strcmp(arg, "--print-config")) {
      opt->print_config = 1;
      continue;
    }
    if (!strcmp(arg, "--print-config-reference")) {
      opt->print_reference = 1;
      continue;
    }
    /* Flags with a value, as "--flag VALUE" or "--flag=VALUE". */
    static const char *const names[] = {
        "--config",      "--weights",      "--seed",        "--data",     "--save-pred", "--mode",
        "--protocol",    "--json",         "--set",         "--dataset",  "--data-root", "--split",
        "--predictions", "--ground-truth", "--pred-format", "--gt-format"};
    const char *value = NULL;
    const int which = app_value_flag("cluda_eval", argc, argv, &i, names,
                                     (int)(sizeof names / sizeof names[0]), &value);
    if (which == -2) return 2;
    switch (which) {
    case 0: target = &opt->config_path; break;
    case 1: target = &opt->weights_path; break;
    case 2: target = &opt->seed_text; break;
    case 3: target = &opt->data_dir; break;
    case 4: target = &opt->save_dir; break;
    case 5: target = &opt->mode; break;
    case 6: target = &opt->protocol; break;
    case 7: target = &opt->json_path; break;
    case 9: target = &opt->dataset; break;
    case 10: target = &opt->data_root; break;
    case 11: target = &opt->split; break;
    case 12: target = &opt->predictions_dir; break;
    case 13: target = &opt->ground_truth_dir; break;
    case 14: target = &opt->pred_format; break;
    case 15: target = &opt->gt_format; break;
    case 8:
      if (opt->set_count == MAX_SETS) {
        fprintf(stderr, "cluda_eval: more than %d --set options\n", MAX_SETS);
        return 2;
      }
      opt->sets[opt->set_count++] = value;
      continue;
    default: fprintf(stderr, "cluda_eval: unknown option '%s'; see --help\n", arg); return 2;
    }
    if (*target) {
      fprintf(stderr, "cluda_eval: %s given twice; see --help\n", names[which]);
      return 2;
    }
    *target = value;
  }
  if (opt->help || opt->print_reference) return 0;
  return check_combination(opt);
}

/* Everything a run owns; released by release(). */
typedef struct eval_run {
  cluda_config cfg;
  app_model model;
  cluda_eval_pairs pairs; /* --data */
  cluda_dataset dataset;  /* --dataset */
  int dataset_open;
  cluda_eval_matches matches; /* --predictions */
  cluda_predictor predictor;
  cluda_confusion confusion;
  cluda_image rgb, labels, pred;
  cluda_test_input input;
} eval_run;

static void release(eval_run *r) {
  cluda_config_free(&r->cfg);
  app_model_free(&r->model);
  cluda_eval_pairs_free(&r->pairs);
  if (r->dataset_open) cluda_dataset_free(&r->dataset);
  cluda_eval_matches_free(&r->matches);
  cluda_predictor_free(&r->predictor);
  cluda_confusion_free(&r->confusion);
  cluda_image_free(&r->rgb);
  cluda_image_free(&r->labels);
  cluda_image_free(&r->pred);
  cluda_test_input_free(&r->input);
}

/* An enum-valued flag is the same as a --set of its key, so it is checked and shown by
 * --print-config like one. */
static cluda_status set_key(cluda_config *cfg, const char *key, const char *value) {
  char assignment[CLUDA_CONFIG_KEY_MAX + 64];
  CLUDA_REQUIRE(strlen(value) < 64 && !strpbrk(value, "\n#:{}[],&*!|>'\"%@`"), CLUDA_ERR_ARG,
                "config: bad value '%.64s' for %s", value, key);
  snprintf(assignment, sizeof assignment, "%s=%s", key, value);
  return cluda_config_set(cfg, assignment);
}

/* How the network sees the images: the inference settings and the test resize. */
typedef struct test_settings {
  cluda_infer_settings infer;
  int scale_long, scale_short; /* 0, 0: no resize */
} test_settings;

static cluda_status read_settings(const cluda_config *cfg, test_settings *st) {
  const char *mode = NULL;
  int crop[2], stride[2], scale[2];
  CLUDA_TRY(cluda_config_get_string(cfg, "eval.mode", &mode));
  CLUDA_TRY(cluda_config_get_int_list(cfg, "eval.crop", crop, 2, NULL));
  CLUDA_TRY(cluda_config_get_int_list(cfg, "eval.stride", stride, 2, NULL));
  CLUDA_TRY(cluda_config_get_int_list(cfg, "eval.scale", scale, 2, NULL));
  CLUDA_REQUIRE((scale[0] == 0) == (scale[1] == 0), CLUDA_ERR_ARG,
                "config: eval.scale [%d, %d] must be two positive sides, or [0, 0] for no resize",
                scale[0], scale[1]);
  memset(st, 0, sizeof *st);
  st->infer.mode = strcmp(mode, "slide") == 0 ? CLUDA_INFER_SLIDE : CLUDA_INFER_WHOLE;
  st->infer.crop_h = crop[0];
  st->infer.crop_w = crop[1];
  st->infer.stride_h = stride[0];
  st->infer.stride_w = stride[1];
  st->scale_long = scale[0];
  st->scale_short = scale[1];
  return cluda_ok();
}

static int same_directory(const char *a, const char *b) {
  struct stat sa, sb;
  return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

/* s with "<what>: " put before its message, keeping the one "file.c:123: " location. */
static cluda_status with_context(cluda_status s, const char *what) {
  if (s.code == CLUDA_OK) return s;
  const char *text = strstr(s.message, ": ");
  text = text ? text + 2 : s.message;
  return CLUDA_FAIL(s.code, "%s: %s", what, text);
}

static cluda_status save_prediction(eval_run *r, const char *dir, const char *name) {
  char color_path[4096], label_path[4096];
  snprintf(color_path, sizeof color_path, "%s/%s_color.png", dir, name);
  snprintf(label_path, sizeof label_path, "%s/%s_labelTrainIds.png", dir, name);
  cluda_image color;
  CLUDA_TRY(cluda_colorize_labels(&r->pred, &color));
  cluda_status s = cluda_png_write(color_path, &color);
  cluda_image_free(&color);
  CLUDA_TRY(s);
  return cluda_png_write(label_path, &r->pred);
}

static int item_count(const eval_run *r) {
  return r->dataset_open ? r->dataset.count : r->pairs.count;
}

static int file_exists(const char *path) {
  struct stat st;
  return path && stat(path, &st) == 0;
}

/* Item i's image and train-id labels into r->rgb and r->labels; *name: what the item is
 * called in the log and the saved predictions; *image_path, *label_path: its files. */
static cluda_status load_item(eval_run *r, int i, char *name, size_t name_size,
                              const char **image_path, const char **label_path) {
  cluda_image_free(&r->rgb);
  cluda_image_free(&r->labels);
  if (!r->dataset_open) {
    const cluda_eval_pair *pair = &r->pairs.items[i];
    snprintf(name, name_size, "%s", pair->name);
    *image_path = pair->image;
    *label_path = pair->label;
    CLUDA_TRY(cluda_png_read_rgb(pair->image, &r->rgb));
    return cluda_png_read_labels(pair->label, &r->labels);
  }
  const cluda_dataset_item *item = &r->dataset.items[i];
  const char *base = strrchr(item->image, '/');
  base = base ? base + 1 : item->image;
  const char *suffix = strstr(base, "_leftImg8bit.png");
  if (!suffix) suffix = strrchr(base, '.');
  snprintf(name, name_size, "%.*s", suffix ? (int)(suffix - base) : (int)strlen(base), base);
  *image_path = item->image;
  /* The reader takes the converted train ids when they exist. */
  *label_path =
      file_exists(item->label_train) || !item->label_raw ? item->label_train : item->label_raw;
  CLUDA_TRY(cluda_dataset_read_image(&r->dataset, i, &r->rgb));
  return cluda_dataset_read_labels(&r->dataset, i, &r->labels);
}

static cluda_status evaluate_item(eval_run *r, const eval_options *opt, const test_settings *st,
                                  int index) {
  double start = app_seconds_now();
  char name[512];
  const char *image_path = NULL, *label_path = NULL;
  CLUDA_TRY(load_item(r, index, name, sizeof name, &image_path, &label_path));
  int width = r->rgb.width, height = r->rgb.height;
  CLUDA_REQUIRE(r->labels.width == width && r->labels.height == height, CLUDA_ERR_SHAPE,
                "eval: image %s is %dx%d but its label %s is %dx%d", image_path, width, height,
                label_path, r->labels.width, r->labels.height);
  if (r->pred.width != width || r->pred.height != height) {
    cluda_image_free(&r->pred);
    CLUDA_TRY(cluda_image_create(&r->pred, width, height, 1));
  }
  /* The network sees the resized image; the labels keep their size. */
  CLUDA_TRY(with_context(cluda_predict_image(&r->predictor, &r->rgb, st->scale_long,
                                             st->scale_short, &r->input, r->pred.pixels),
                         image_path));
  const int in_width = r->input.width, in_height = r->input.height;
  size_t pixels = (size_t)width * (size_t)height;
  CLUDA_TRY(with_context(
      cluda_confusion_add(&r->confusion, r->pred.pixels, r->labels.pixels, pixels), label_path));
  if (opt->save_dir) CLUDA_TRY(save_prediction(r, opt->save_dir, name));
  int windows = 1;
  if (st->infer.mode == CLUDA_INFER_SLIDE) {
    cluda_slide_grid grid;
    CLUDA_TRY(cluda_slide_grid_for(in_height, in_width, st->infer.crop_h, st->infer.crop_w,
                                   st->infer.stride_h, st->infer.stride_w, &grid));
    windows = grid.rows * grid.cols;
  }
  char resized[64] = "";
  if (in_width != width || in_height != height)
    snprintf(resized, sizeof resized, " at %dx%d", in_width, in_height);
  printf("[%d/%d] %s: %dx%d%s, %d window%s (%.2f s)\n", index + 1, item_count(r), name, width,
         height, resized, windows, windows == 1 ? "" : "s", app_seconds_now() - start);
  fflush(stdout);
  return cluda_ok();
}

static cluda_status write_json(const char *path, const cluda_confusion *cm,
                               cluda_eval_protocol protocol, int images) {
  char tmp[4096];
  CLUDA_TRY(cluda_temp_path(path, tmp, sizeof tmp));
  FILE *f = fopen(tmp, "w");
  CLUDA_REQUIRE(f != NULL, CLUDA_ERR_IO, "json: cannot create %s (is its directory there?)", path);
  cluda_status s = cluda_eval_write_json(cm, protocol, images, f);
  if (fclose(f) != 0 && s.code == CLUDA_OK)
    s = CLUDA_FAIL(CLUDA_ERR_IO, "json: cannot finish %s", path);
  if (s.code != CLUDA_OK) {
    remove(tmp);
    return s;
  }
  return cluda_publish_file(tmp, path);
}

static cluda_status report(const eval_options *opt, const cluda_confusion *cm,
                           cluda_eval_protocol protocol, int images) {
  CLUDA_TRY(cluda_eval_write_table(cm, protocol, stdout));
  if (opt->json_path) {
    CLUDA_TRY(write_json(opt->json_path, cm, protocol, images));
    printf("json: %s\n", opt->json_path);
  }
  return cluda_ok();
}

/* --predictions / --ground-truth: the files on disk, no network. */
static cluda_status run_prediction_files(const eval_options *opt, eval_run *r) {
  CLUDA_TRY(cluda_config_init(&r->cfg));
  if (opt->protocol) CLUDA_TRY(set_key(&r->cfg, "eval.num_classes_protocol", opt->protocol));
  cluda_eval_protocol protocol;
  CLUDA_TRY(app_read_protocol(&r->cfg, &protocol));
  cluda_label_format pred_format = CLUDA_LABELS_IDS, gt_format = CLUDA_LABELS_AUTO;
  if (opt->pred_format) CLUDA_TRY(cluda_label_format_parse(opt->pred_format, &pred_format));
  if (opt->gt_format) CLUDA_TRY(cluda_label_format_parse(opt->gt_format, &gt_format));
  CLUDA_REQUIRE(pred_format != CLUDA_LABELS_AUTO, CLUDA_ERR_ARG,
                "eval: --pred-format must be id or trainid (the values cannot be told apart)");
  CLUDA_TRY(cluda_eval_match_predictions(opt->ground_truth_dir, opt->predictions_dir, gt_format,
                                         &r->matches));
  gt_format = r->matches.gt_format;
  printf("ground truth: %s: %d files of %s\n", opt->ground_truth_dir, r->matches.count,
         gt_format == CLUDA_LABELS_IDS ? "label ids (*_gtFine_labelIds.png)"
                                       : "train ids (*_labelTrainIds.png)");
  printf("predictions: %s: %s\n", opt->predictions_dir,
         pred_format == CLUDA_LABELS_IDS ? "label ids" : "train ids");
  CLUDA_TRY(cluda_confusion_create(&r->confusion, CLUDA_CITYSCAPES_CLASSES));
  double start = app_seconds_now();
  for (int i = 0; i < r->matches.count; i++)
    CLUDA_TRY(cluda_eval_add_match(&r->confusion, &r->matches.items[i], gt_format, pred_format));
  printf("%d images in %.2f s\n\n", r->matches.count, app_seconds_now() - start);
  return report(opt, &r->confusion, protocol, r->matches.count);
}

/* The images to segment: a directory of pairs or a dataset split. Returns the directory
 * that --save-pred must not be. */
static cluda_status open_images(const eval_options *opt, eval_run *r, const char **data_dir) {
  if (opt->dataset) {
    cluda_dataset_kind kind;
    CLUDA_TRY(cluda_dataset_kind_parse(opt->dataset, &kind));
    const char *split = opt->split;
    if (!split && kind == CLUDA_DATASET_CITYSCAPES) split = "val";
    CLUDA_TRY(cluda_dataset_open(&r->dataset, kind, opt->data_root, split));
    r->dataset_open = 1;
    *data_dir = opt->data_root;
    printf("data: %s %s at %s: %d images\n", cluda_dataset_kind_name(kind), r->dataset.split,
           opt->data_root, r->dataset.count);
    return cluda_ok();
  }
  *data_dir = opt->data_dir;
  if (!*data_dir) CLUDA_TRY(cluda_config_get_string(&r->cfg, "eval.data_dir", data_dir));
  CLUDA_REQUIRE((*data_dir)[0] != '\0', CLUDA_ERR_ARG,
                "eval: no data directory; give --data DIR, --dataset with --data-root, or set "
                "eval.data_dir");
  CLUDA_TRY(cluda_eval_list_pairs(*data_dir, &r->pairs));
  printf("data: %s: %d image/label pairs", *data_dir, r->pairs.count);
  if (r->pairs.unlabelled) printf(" (%d images without a label skipped)", r->pairs.unlabelled);
  printf("\n");
  return cluda_ok();
}

static cluda_status run(const eval_options *opt, eval_run *r) {
  if (opt->predictions_dir) return run_prediction_files(opt, r);
  CLUDA_TRY(app_load_config(&r->cfg, opt->config_path, opt->sets, opt->set_count, opt->seed_text));
  if (opt->mode) CLUDA_TRY(set_key(&r->cfg, "eval.mode", opt->mode));
  if (opt->protocol) CLUDA_TRY(set_key(&r->cfg, "eval.num_classes_protocol", opt->protocol));
  if (opt->print_config) return cluda_config_write_yaml(&r->cfg, stdout);

  test_settings settings;
  cluda_eval_protocol protocol;
  CLUDA_TRY(read_settings(&r->cfg, &settings));
  CLUDA_TRY(app_read_protocol(&r->cfg, &protocol));
  int64_t classes = 0;
  CLUDA_TRY(cluda_config_get_int(&r->cfg, "model.num_classes", &classes));
  CLUDA_REQUIRE(protocol == CLUDA_PROTOCOL_ALL || classes == CLUDA_CITYSCAPES_CLASSES,
                CLUDA_ERR_ARG,
                "config: eval.num_classes_protocol %d needs model.num_classes 19, got %lld",
                (int)protocol, (long long)classes);

  /* The data first: a wrong directory should not wait for the weights. */
  const char *data_dir = NULL;
  CLUDA_TRY(open_images(opt, r, &data_dir));
  if (opt->save_dir) {
    CLUDA_TRY(app_make_dirs(opt->save_dir, "save-pred"));
    CLUDA_REQUIRE(!same_directory(opt->save_dir, data_dir), CLUDA_ERR_ARG,
                  "save-pred: %s is the data directory; its label files would be overwritten",
                  opt->save_dir);
  }

  CLUDA_TRY(app_model_create(&r->model, &r->cfg, opt->weights_path, 0, "eval"));
  CLUDA_TRY(cluda_predictor_init(&r->predictor, &r->model.seg, r->model.params, r->model.state,
                                 &settings.infer));
  const cluda_infer_settings *infer = &settings.infer;
  if (infer->mode == CLUDA_INFER_SLIDE)
    printf("inference: slide, crop %dx%d, stride %dx%d (height x width)\n", infer->crop_h,
           infer->crop_w, infer->stride_h, infer->stride_w);
  else
    printf("inference: whole image\n");
  if (settings.scale_long > 0)
    printf("test resize: keep ratio to fit [%d, %d] (eval.scale); scores upsampled to the label "
           "size\n",
           settings.scale_long, settings.scale_short);
  else
    printf("test resize: none (eval.scale [0, 0])\n");
  CLUDA_TRY(cluda_confusion_create(&r->confusion, r->model.seg.cfg.head.num_classes));
  double start = app_seconds_now();
  for (int i = 0; i < item_count(r); i++)
    CLUDA_TRY(evaluate_item(r, opt, &settings, i));
  printf("%d images in %.2f s\n\n", item_count(r), app_seconds_now() - start);
  CLUDA_TRY(report(opt, &r->confusion, protocol, item_count(r)));
  if (opt->save_dir) printf("predictions: %s\n", opt->save_dir);
  return cluda_ok();
}

int main(int argc, char **argv) {
  eval_options opt;
  int rc = parse_args(argc, argv, &opt);
  if (rc != 0) return rc;
  if (opt.help) {
    fputs(usage, stdout);
    return 0;
  }
  if (opt.print_reference) return app_print_config_reference("cluda_eval");
  /* Failures are reported through cluda_status; HDF5's own stack dumps would bury them. */
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  eval_run r;
  memset(&r, 0, sizeof r);
  cluda_status s = run(&opt, &r);
  release(&r);
  if (s.code != CLUDA_OK) {
    fflush(stdout);
    fprintf(stderr, "cluda_eval: error: %s\n", s.message);
    return 1;
  }
  return 0;
}

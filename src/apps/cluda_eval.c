/* cluda_eval: mIoU of a network over a directory of image/label pairs, on the CPU
 * (algorithm.md 7).
 *
 * Each image is normalised and segmented in inference mode, whole or with sliding windows
 * (eval.mode); the predicted train ids go into one confusion matrix over the split, from
 * which the per-class IoU, the mIoU (nanmean over classes present in labels or predictions)
 * and the SYNTHIA 16/13-class numbers are computed. */
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cluda/config.h"
#include "cluda/eval.h"
#include "cluda/fileio.h"
#include "cluda/image.h"

#include "app_common.h"

enum { MAX_SETS = 256 };

static const char usage[] =
    "usage: cluda_eval --config FILE.yaml [--data DIR] [options]\n"
    "\n"
    "Segments every image/label pair of a directory with the network of a config file on the\n"
    "CPU and prints the per-class IoU and the mIoU accumulated over all images (per class\n"
    "intersection and union summed over the split; mIoU = mean over the classes that occur in\n"
    "the labels or the predictions; label 255 is ignored).\n"
    "\n"
    "Pairs: each <name>_labelTrainIds.png (8-bit train ids, 255 = ignore) with\n"
    "<name>_rgb.png or <name>.png, and each Cityscapes <x>_gtFine_labelTrainIds.png with\n"
    "<x>_leftImg8bit.png. Image and label must have the same size.\n"
    "\n"
    "  --config FILE        YAML config: model.* describe the network, eval.* the evaluation\n"
    "                       (reference: configs/README.md, or --print-config-reference)\n"
    "  --set KEY=VALUE      override one config key (YAML value), after the file; repeatable\n"
    "  --weights FILE       weights: a safetensors file (mmseg/DAFormer, NVlabs or Hugging\n"
    "                       Face naming, detected) or cluda's HDF5 weight file. Without\n"
    "                       --weights the network is randomly initialised from the seed\n"
    "  --seed S             seed of the random initialisation (same as --set seed=S)\n"
    "  --data DIR           the image/label pairs (overrides eval.data_dir)\n"
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
    "Errors print one line naming the file and the problem; the exit status is then 1\n"
    "(2 for a bad command line).\n";

typedef struct eval_options {
  const char *config_path, *weights_path, *seed_text, *data_dir, *save_dir, *mode, *protocol;
  const char *json_path;
  const char *sets[MAX_SETS];
  int set_count;
  int print_config, print_reference, help;
} eval_options;

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
    static const char *const names[] = {"--config", "--weights",  "--seed", "--data", "--save-pred",
                                        "--mode",   "--protocol", "--json", "--set"};
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
  if (!opt->config_path) {
    fprintf(stderr, "cluda_eval: --config is required; see --help\n");
    return 2;
  }
  return 0;
}

/* Everything a run owns; released by release(). */
typedef struct eval_run {
  cluda_config cfg;
  app_model model;
  cluda_eval_pairs pairs;
  cluda_predictor predictor;
  cluda_confusion confusion;
  cluda_image rgb, labels, pred;
  float *x;
  size_t x_pixels;
} eval_run;

static void release(eval_run *r) {
  cluda_config_free(&r->cfg);
  app_model_free(&r->model);
  cluda_eval_pairs_free(&r->pairs);
  cluda_predictor_free(&r->predictor);
  cluda_confusion_free(&r->confusion);
  cluda_image_free(&r->rgb);
  cluda_image_free(&r->labels);
  cluda_image_free(&r->pred);
  free(r->x);
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

static cluda_status read_settings(const cluda_config *cfg, cluda_infer_settings *st,
                                  cluda_eval_protocol *protocol) {
  const char *mode = NULL, *proto = NULL;
  int crop[2], stride[2];
  CLUDA_TRY(cluda_config_get_string(cfg, "eval.mode", &mode));
  CLUDA_TRY(cluda_config_get_int_list(cfg, "eval.crop", crop, 2, NULL));
  CLUDA_TRY(cluda_config_get_int_list(cfg, "eval.stride", stride, 2, NULL));
  CLUDA_TRY(cluda_config_get_string(cfg, "eval.num_classes_protocol", &proto));
  memset(st, 0, sizeof *st);
  st->mode = strcmp(mode, "slide") == 0 ? CLUDA_INFER_SLIDE : CLUDA_INFER_WHOLE;
  st->crop_h = crop[0];
  st->crop_w = crop[1];
  st->stride_h = stride[0];
  st->stride_w = stride[1];
  int p = atoi(proto);
  *protocol = p == 16 ? CLUDA_PROTOCOL_16 : p == 13 ? CLUDA_PROTOCOL_13 : CLUDA_PROTOCOL_ALL;
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

static cluda_status evaluate_pair(eval_run *r, const eval_options *opt, int index) {
  const cluda_eval_pair *pair = &r->pairs.items[index];
  double start = app_seconds_now();
  cluda_image_free(&r->rgb);
  cluda_image_free(&r->labels);
  CLUDA_TRY(cluda_png_read_rgb(pair->image, &r->rgb));
  CLUDA_TRY(cluda_png_read_labels(pair->label, &r->labels));
  int width = r->rgb.width, height = r->rgb.height;
  CLUDA_REQUIRE(r->labels.width == width && r->labels.height == height, CLUDA_ERR_SHAPE,
                "eval: image %s is %dx%d but its label %s is %dx%d", pair->image, width, height,
                pair->label, r->labels.width, r->labels.height);
  size_t pixels = (size_t)width * (size_t)height;
  if (pixels > r->x_pixels) {
    free(r->x);
    cluda_image_free(&r->pred);
    r->x_pixels = 0;
    r->x = app_alloc_aligned(pixels * 3 * sizeof(float));
    CLUDA_REQUIRE(r->x != NULL, CLUDA_ERR_ALLOC, "eval: cannot allocate a %dx%d image", width,
                  height);
    r->x_pixels = pixels;
  }
  if (r->pred.width != width || r->pred.height != height) {
    cluda_image_free(&r->pred);
    CLUDA_TRY(cluda_image_create(&r->pred, width, height, 1));
  }
  CLUDA_TRY(cluda_image_normalize(&r->rgb, r->x));
  CLUDA_TRY(with_context(cluda_predictor_run(&r->predictor, r->x, height, width, r->pred.pixels),
                         pair->image));
  CLUDA_TRY(with_context(
      cluda_confusion_add(&r->confusion, r->pred.pixels, r->labels.pixels, pixels), pair->label));
  if (opt->save_dir) CLUDA_TRY(save_prediction(r, opt->save_dir, pair->name));
  int windows = 1;
  if (r->predictor.settings.mode == CLUDA_INFER_SLIDE) {
    const cluda_infer_settings *st = &r->predictor.settings;
    cluda_slide_grid grid;
    CLUDA_TRY(cluda_slide_grid_for(height, width, st->crop_h, st->crop_w, st->stride_h,
                                   st->stride_w, &grid));
    windows = grid.rows * grid.cols;
  }
  printf("[%d/%d] %s: %dx%d, %d window%s (%.2f s)\n", index + 1, r->pairs.count, pair->name, width,
         height, windows, windows == 1 ? "" : "s", app_seconds_now() - start);
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

static cluda_status run(const eval_options *opt, eval_run *r) {
  CLUDA_TRY(app_load_config(&r->cfg, opt->config_path, opt->sets, opt->set_count, opt->seed_text));
  if (opt->mode) CLUDA_TRY(set_key(&r->cfg, "eval.mode", opt->mode));
  if (opt->protocol) CLUDA_TRY(set_key(&r->cfg, "eval.num_classes_protocol", opt->protocol));
  if (opt->print_config) return cluda_config_write_yaml(&r->cfg, stdout);

  const char *data_dir = opt->data_dir;
  if (!data_dir) CLUDA_TRY(cluda_config_get_string(&r->cfg, "eval.data_dir", &data_dir));
  CLUDA_REQUIRE(data_dir[0] != '\0', CLUDA_ERR_ARG,
                "eval: no data directory; give --data DIR or set eval.data_dir");
  cluda_infer_settings settings;
  cluda_eval_protocol protocol;
  CLUDA_TRY(read_settings(&r->cfg, &settings, &protocol));
  int64_t classes = 0;
  CLUDA_TRY(cluda_config_get_int(&r->cfg, "model.num_classes", &classes));
  CLUDA_REQUIRE(protocol == CLUDA_PROTOCOL_ALL || classes == CLUDA_CITYSCAPES_CLASSES,
                CLUDA_ERR_ARG,
                "config: eval.num_classes_protocol %d needs model.num_classes 19, got %lld",
                (int)protocol, (long long)classes);

  /* The data first: a wrong directory should not wait for the weights. */
  CLUDA_TRY(cluda_eval_list_pairs(data_dir, &r->pairs));
  printf("data: %s: %d image/label pairs", data_dir, r->pairs.count);
  if (r->pairs.unlabelled) printf(" (%d images without a label skipped)", r->pairs.unlabelled);
  printf("\n");
  if (opt->save_dir) {
    CLUDA_TRY(app_make_dirs(opt->save_dir, "save-pred"));
    CLUDA_REQUIRE(!same_directory(opt->save_dir, data_dir), CLUDA_ERR_ARG,
                  "save-pred: %s is the data directory; its label files would be overwritten",
                  opt->save_dir);
  }

  CLUDA_TRY(app_model_create(&r->model, &r->cfg, opt->weights_path, 0, "eval"));
  CLUDA_TRY(cluda_predictor_init(&r->predictor, &r->model.seg, r->model.params, r->model.state,
                                 &settings));
  if (settings.mode == CLUDA_INFER_SLIDE)
    printf("inference: slide, crop %dx%d, stride %dx%d (height x width)\n", settings.crop_h,
           settings.crop_w, settings.stride_h, settings.stride_w);
  else
    printf("inference: whole image\n");
  CLUDA_TRY(cluda_confusion_create(&r->confusion, r->model.seg.cfg.head.num_classes));
  double start = app_seconds_now();
  for (int i = 0; i < r->pairs.count; i++)
    CLUDA_TRY(evaluate_pair(r, opt, i));
  printf("%d images in %.2f s\n\n", r->pairs.count, app_seconds_now() - start);
  CLUDA_TRY(cluda_eval_write_table(&r->confusion, protocol, stdout));
  if (opt->json_path) {
    CLUDA_TRY(write_json(opt->json_path, &r->confusion, protocol, r->pairs.count));
    printf("json: %s\n", opt->json_path);
  }
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
  if (opt.print_reference) {
    int count = 0;
    const cluda_config_key *keys = cluda_config_registry(&count);
    cluda_status s = cluda_config_write_reference(keys, count, stdout);
    if (s.code != CLUDA_OK) fprintf(stderr, "cluda_eval: error: %s\n", s.message);
    return s.code == CLUDA_OK ? 0 : 1;
  }
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

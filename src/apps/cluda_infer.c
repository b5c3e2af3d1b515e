/* cluda_infer: segments PNG images with a network described by a config file, on the CPU.
 *
 * For each image: normalise (mmseg mean/std, RGB), one forward pass in inference mode (no
 * dropout or drop path, BatchNorm running statistics), bilinear upsampling of the stride-4
 * logits to the image size (align_corners False, as the DAFormer test pipeline), argmax,
 * and two PNGs: the Cityscapes colours and the raw train ids. Buffers are planned once per
 * image size. --dump writes every intermediate map of one image to HDF5 for comparison
 * against a PyTorch run. */
#include <dirent.h>
#include <errno.h>
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "cluda/arena.h"
#include "cluda/backend.h"
#include "cluda/config.h"
#include "cluda/fileio.h"
#include "cluda/image.h"
#include "cluda/ops.h"
#include "cluda/segmentor.h"
#include "cluda/weights.h"

#include "app_common.h"

/* The encoder's total stride: smaller images leave its last stages (and the stage-1
 * spatial-reduction conv, kernel 8 on a H/4 map) without a single output pixel. */
enum { MIN_IMAGE_SIDE = 32, MAX_SETS = 256 };

static const char usage[] =
    "usage: cluda_infer --config FILE.yaml --input PNG|DIR --out DIR [options]\n"
    "\n"
    "Segments PNG images with the network of a config file on the CPU and writes, for each\n"
    "input <name>.png, <out>/<name>_color.png (Cityscapes colours) and\n"
    "<out>/<name>_labelTrainIds.png (8-bit train ids 0..K-1).\n"
    "\n"
    "  --config FILE        YAML config; the model.* keys describe the network\n"
    "                       (reference: configs/README.md, or --print-config-reference)\n"
    "  --set KEY=VALUE      override one config key (YAML value), after the file; repeatable\n"
    "  --weights FILE       weights: a safetensors file (mmseg/DAFormer, NVlabs or Hugging\n"
    "                       Face naming, detected) or cluda's HDF5 weight file; the format\n"
    "                       is recognised from the file's header. Without --weights the\n"
    "                       network is randomly initialised from the seed\n"
    "  --allow-missing-head accept safetensors weights without the decode head (e.g. ImageNet\n"
    "                       encoder weights); the head keeps its random initialisation\n"
    "  --seed S             seed of the random initialisation (same as --set seed=S)\n"
    "  --input PNG|DIR      one PNG file, or a directory: every *.png in it, sorted by name.\n"
    "                       8/16-bit gray, RGB, RGBA and palette PNGs are read as RGB\n"
    "                       (alpha dropped); each side must be at least 32 pixels\n"
    "  --out DIR            output directory (created if missing)\n"
    "  --dump FILE.h5       (one input image) write float32 NHWC datasets input (the\n"
    "                       normalised image), enc1..enc4, fused and logits (stride 4, before\n"
    "                       upsampling) to FILE.h5, atomically\n"
    "  --print-config       print the resolved config (file + overrides) as YAML and exit\n"
    "  --print-config-reference\n"
    "                       print the Markdown reference of every config key and exit\n"
    "  --help               this text\n"
    "\n"
    "Errors print one line naming the file and the problem; the exit status is then 1\n"
    "(2 for a bad command line).\n";

typedef struct infer_options {
  const char *config_path, *weights_path, *seed_text, *input, *out_dir, *dump_path;
  const char *sets[MAX_SETS];
  int set_count;
  int allow_missing_head, print_config, print_reference, help;
} infer_options;

/* Returns 0, or 2 after printing what is wrong with the command line. */
static int parse_args(int argc, char **argv, infer_options *opt) {
  memset(opt, 0, sizeof *opt);
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    const char **target = NULL;
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
      opt->help = 1;
      continue;
    }
    if (!strcmp(arg, "--allow-missing-head")) {
      opt->allow_missing_head = 1;
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
    static const char *const names[] = {"--config", "--weights", "--seed", "--input",
                                        "--out",    "--dump",    "--set"};
    const char *value = NULL;
    const int which = app_value_flag("cluda_infer", argc, argv, &i, names,
                                     (int)(sizeof names / sizeof names[0]), &value);
    if (which == -2) return 2;
    switch (which) {
    case 0: target = &opt->config_path; break;
    case 1: target = &opt->weights_path; break;
    case 2: target = &opt->seed_text; break;
    case 3: target = &opt->input; break;
    case 4: target = &opt->out_dir; break;
    case 5: target = &opt->dump_path; break;
    case 6:
      if (opt->set_count == MAX_SETS) {
        fprintf(stderr, "cluda_infer: more than %d --set options\n", MAX_SETS);
        return 2;
      }
      opt->sets[opt->set_count++] = value;
      continue;
    default: fprintf(stderr, "cluda_infer: unknown option '%s'; see --help\n", arg); return 2;
    }
    if (*target) {
      fprintf(stderr, "cluda_infer: %s given twice; see --help\n", names[which]);
      return 2;
    }
    *target = value;
  }
  if (opt->help || opt->print_reference) return 0;
  if (!opt->config_path) {
    fprintf(stderr, "cluda_infer: --config is required; see --help\n");
    return 2;
  }
  if (opt->print_config) return 0;
  if (!opt->input || !opt->out_dir) {
    fprintf(stderr, "cluda_infer: --input and --out are required; see --help\n");
    return 2;
  }
  return 0;
}

/* ---- files ---- */

static int ends_with_png(const char *name) {
  size_t n = strlen(name);
  return n > 4 && strcasecmp(name + n - 4, ".png") == 0;
}

static int compare_strings(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

typedef struct path_list {
  char **paths;
  int count;
} path_list;

static void free_path_list(path_list *list) {
  for (int i = 0; i < list->count; i++)
    free(list->paths[i]);
  free(list->paths);
  list->paths = NULL;
  list->count = 0;
}

static cluda_status append_path(path_list *list, const char *dir, const char *name) {
  char **grown = realloc(list->paths, sizeof(char *) * (size_t)(list->count + 1));
  CLUDA_REQUIRE(grown != NULL, CLUDA_ERR_ALLOC, "input: out of memory");
  list->paths = grown;
  size_t size = strlen(name) + (dir ? strlen(dir) + 2 : 1);
  char *path = malloc(size);
  CLUDA_REQUIRE(path != NULL, CLUDA_ERR_ALLOC, "input: out of memory");
  if (dir)
    snprintf(path, size, "%s/%s", dir, name);
  else
    snprintf(path, size, "%s", name);
  list->paths[list->count++] = path;
  return cluda_ok();
}

/* A file, or every regular *.png file of a directory in name order. */
static cluda_status list_inputs(const char *input, path_list *list) {
  struct stat st;
  CLUDA_REQUIRE(stat(input, &st) == 0, CLUDA_ERR_IO, "input: cannot access %s: %s", input,
                strerror(errno));
  if (!S_ISDIR(st.st_mode)) return append_path(list, NULL, input);
  DIR *dir = opendir(input);
  CLUDA_REQUIRE(dir != NULL, CLUDA_ERR_IO, "input: cannot read directory %s: %s", input,
                strerror(errno));
  cluda_status s = cluda_ok();
  for (struct dirent *e = readdir(dir); e && s.code == CLUDA_OK; e = readdir(dir)) {
    if (!ends_with_png(e->d_name)) continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", input, e->d_name);
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) s = append_path(list, input, e->d_name);
  }
  closedir(dir);
  CLUDA_TRY(s);
  CLUDA_REQUIRE(list->count > 0, CLUDA_ERR_IO, "input: no .png files in directory %s", input);
  qsort(list->paths, (size_t)list->count, sizeof(char *), compare_strings);
  return cluda_ok();
}

/* "dir/a.b.png" -> "a.b" */
static void file_stem(const char *path, char *stem, size_t size) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  snprintf(stem, size, "%s", base);
  size_t n = strlen(stem);
  if (n > 4 && strcasecmp(stem + n - 4, ".png") == 0) stem[n - 4] = '\0';
}

/* ---- the dump ---- */

static cluda_status write_dataset(int64_t file, const char *path, const char *name,
                                  const cluda_tensor *t) {
  hsize_t dims[CLUDA_MAX_DIMS];
  for (int d = 0; d < t->ndim; d++)
    dims[d] = (hsize_t)t->shape[d];
  hid_t space = H5Screate_simple(t->ndim, dims, NULL);
  hid_t set = space < 0 ? -1
                        : H5Dcreate2((hid_t)file, name, H5T_IEEE_F32LE, space, H5P_DEFAULT,
                                     H5P_DEFAULT, H5P_DEFAULT);
  herr_t rc =
      set < 0 ? -1 : H5Dwrite(set, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, t->data);
  if (set >= 0) H5Dclose(set);
  if (space >= 0) H5Sclose(space);
  CLUDA_REQUIRE(rc >= 0, CLUDA_ERR_IO, "dump: cannot write dataset %s to %s", name, path);
  return cluda_ok();
}

static cluda_status write_dump(const char *path, const cluda_tensor *input,
                               const cluda_segmentor_outputs *out) {
  char tmp[4096];
  CLUDA_TRY(cluda_temp_path(path, tmp, sizeof tmp));
  hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  CLUDA_REQUIRE(file >= 0, CLUDA_ERR_IO, "dump: cannot create %s (is its directory there?)", path);
  const char *names[7] = {"input", "enc1", "enc2", "enc3", "enc4", "fused", "logits"};
  const cluda_tensor *tensors[7] = {input,        &out->enc[0], &out->enc[1], &out->enc[2],
                                    &out->enc[3], &out->fused,  &out->logits};
  cluda_status s = cluda_ok();
  for (int i = 0; i < 7 && s.code == CLUDA_OK; i++)
    s = write_dataset(file, path, names[i], tensors[i]);
  if (H5Fclose(file) < 0 && s.code == CLUDA_OK)
    s = CLUDA_FAIL(CLUDA_ERR_IO, "dump: cannot finish %s", path);
  if (s.code != CLUDA_OK) {
    remove(tmp);
    return s;
  }
  return cluda_publish_file(tmp, path);
}

/* ---- inference ---- */

/* Everything a run owns; released by release(). */
typedef struct infer_run {
  cluda_config cfg;
  app_model model;
  path_list inputs;
  /* planned per image size */
  int plan_h, plan_w;
  cluda_segmentor_plan plan;
  void *acts;
  cluda_arena scratch;
  int scratch_created;
  float *x, *upsampled;
  cluda_image labels;
} infer_run;

static void release(infer_run *r) {
  cluda_config_free(&r->cfg);
  app_model_free(&r->model);
  free_path_list(&r->inputs);
  free(r->acts);
  if (r->scratch_created) cluda_arena_destroy(&r->scratch);
  free(r->x);
  free(r->upsampled);
  cluda_image_free(&r->labels);
}

/* Plans and allocates the buffers of one image size (a no-op when it is the current one). */
static cluda_status plan_for_size(infer_run *r, int height, int width) {
  if (r->plan_h == height && r->plan_w == width) return cluda_ok();
  r->plan_h = r->plan_w = 0;
  CLUDA_TRY(cluda_segmentor_plan_for(&r->model.seg, 1, height, width, &r->plan));
  free(r->acts);
  free(r->x);
  free(r->upsampled);
  cluda_image_free(&r->labels);
  if (r->scratch_created) cluda_arena_destroy(&r->scratch);
  r->scratch_created = 0;
  size_t pixels = (size_t)height * (size_t)width;
  int classes = r->model.seg.cfg.head.num_classes;
  r->acts = app_alloc_aligned(r->plan.activation_bytes);
  r->x = app_alloc_aligned(pixels * 3 * sizeof(float));
  r->upsampled = app_alloc_aligned(pixels * (size_t)classes * sizeof(float));
  CLUDA_REQUIRE(r->acts && r->x && r->upsampled, CLUDA_ERR_ALLOC,
                "infer: cannot allocate buffers for a %dx%d image (%zu bytes of activations)",
                width, height, r->plan.activation_bytes);
  CLUDA_TRY(cluda_arena_create(&r->scratch, r->plan.scratch_bytes ? r->plan.scratch_bytes : 64));
  r->scratch_created = 1;
  CLUDA_TRY(cluda_image_create(&r->labels, width, height, 1));
  printf("plan %dx%d: %.2f GMACs per image, activations %.1f MiB, scratch %.1f MiB\n", width,
         height, r->plan.macs * 1e-9, (double)r->plan.activation_bytes / (1 << 20),
         (double)r->plan.scratch_bytes / (1 << 20));
  r->plan_h = height;
  r->plan_w = width;
  return cluda_ok();
}

static cluda_status segment_image(infer_run *r, const infer_options *opt, const char *path) {
  double start = app_seconds_now();
  cluda_image rgb;
  CLUDA_TRY(cluda_png_read_rgb(path, &rgb));
  cluda_status s = cluda_ok();
  if (rgb.width < MIN_IMAGE_SIDE || rgb.height < MIN_IMAGE_SIDE)
    s = CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED,
                   "infer: %s is %dx%d pixels; the network needs at least %dx%d", path, rgb.width,
                   rgb.height, MIN_IMAGE_SIDE, MIN_IMAGE_SIDE);
  if (s.code == CLUDA_OK) s = plan_for_size(r, rgb.height, rgb.width);
  if (s.code == CLUDA_OK) s = cluda_image_normalize(&rgb, r->x);
  int height = rgb.height, width = rgb.width;
  cluda_image_free(&rgb);
  CLUDA_TRY(s);

  int classes = r->model.seg.cfg.head.num_classes;
  cluda_tensor x = cluda_tensor_4d(CLUDA_F32, r->x, 1, height, width, 3);
  cluda_run_mode mode;
  memset(&mode, 0, sizeof mode); /* inference: no dropout, BN running statistics */
  cluda_ctx ctx = cluda_cpu_context(&r->scratch);
  cluda_segmentor_outputs out;
  CLUDA_TRY(cluda_segmentor_forward(&ctx, &r->model.seg, &r->plan, r->model.params, r->model.state,
                                    &mode, &x, r->acts, &out));
  cluda_tensor up = cluda_tensor_4d(CLUDA_F32, r->upsampled, 1, height, width, classes);
  CLUDA_TRY(cluda_resize_bilinear_forward(&ctx, 0, &out.logits, &up));
  size_t pixels = (size_t)height * (size_t)width;
  for (size_t p = 0; p < pixels; p++) {
    const float *scores = r->upsampled + p * (size_t)classes;
    int best = 0; /* ties go to the lowest class, as torch.argmax */
    for (int k = 1; k < classes; k++)
      if (scores[k] > scores[best]) best = k;
    r->labels.pixels[p] = (uint8_t)best;
  }

  char stem[1024], color_path[4096], label_path[4096];
  file_stem(path, stem, sizeof stem);
  snprintf(color_path, sizeof color_path, "%s/%s_color.png", opt->out_dir, stem);
  snprintf(label_path, sizeof label_path, "%s/%s_labelTrainIds.png", opt->out_dir, stem);
  cluda_image color;
  CLUDA_TRY(cluda_colorize_labels(&r->labels, &color));
  s = cluda_png_write(color_path, &color);
  cluda_image_free(&color);
  CLUDA_TRY(s);
  CLUDA_TRY(cluda_png_write(label_path, &r->labels));
  if (opt->dump_path) CLUDA_TRY(write_dump(opt->dump_path, &x, &out));
  printf("%s: %dx%d -> %s (%.2f s)\n", path, width, height, color_path, app_seconds_now() - start);
  return cluda_ok();
}

static cluda_status run(const infer_options *opt, infer_run *r) {
  CLUDA_TRY(app_load_config(&r->cfg, opt->config_path, opt->sets, opt->set_count, opt->seed_text));
  if (opt->print_config) return cluda_config_write_yaml(&r->cfg, stdout);
  CLUDA_TRY(
      app_model_create(&r->model, &r->cfg, opt->weights_path, opt->allow_missing_head, "infer"));

  CLUDA_TRY(list_inputs(opt->input, &r->inputs));
  CLUDA_REQUIRE(!opt->dump_path || r->inputs.count == 1, CLUDA_ERR_ARG,
                "infer: --dump needs a single input image; %s holds %d", opt->input,
                r->inputs.count);
  CLUDA_TRY(app_make_dirs(opt->out_dir, "out"));
  for (int i = 0; i < r->inputs.count; i++)
    CLUDA_TRY(segment_image(r, opt, r->inputs.paths[i]));
  if (opt->dump_path) printf("dump: %s\n", opt->dump_path);
  return cluda_ok();
}

int main(int argc, char **argv) {
  infer_options opt;
  int rc = parse_args(argc, argv, &opt);
  if (rc != 0) return rc;
  if (opt.help) {
    fputs(usage, stdout);
    return 0;
  }
  if (opt.print_reference) return app_print_config_reference("cluda_infer");
  /* Failures are reported through cluda_status; HDF5's own stack dumps would bury them. */
  H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
  infer_run r;
  memset(&r, 0, sizeof r);
  cluda_status s = run(&opt, &r);
  release(&r);
  if (s.code != CLUDA_OK) {
    fflush(stdout);
    fprintf(stderr, "cluda_infer: error: %s\n", s.message);
    return 1;
  }
  return 0;
}

/* cluda_train: CLUDA / DAFormer UDA training on the CPU, in one process or data parallel over
 * MPI ranks (mpirun -np N cluda_train ...; docs/distributed.md). Rank 0 writes the resolved
 * config, a progress line, metrics.jsonl, TensorBoard scalars, periodic target-validation mIoU
 * and checkpoints to the work directory; the other ranks print only errors, prefixed with
 * their rank. An error on any rank ends the whole job (MPI_Abort). SIGTERM or SIGUSR1 (Slurm
 * preemption) makes every rank stop at the next step boundary after rank 0 wrote a
 * checkpoint; the exit status is then 75, and --resume auto continues the run. */
#include <cblas.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cluda/checkpoint.h"
#include "cluda/comm_mpi.h"
#include "cluda/config.h"
#include "cluda/dataset.h"
#include "cluda/eval.h"
#include "cluda/fileio.h"
#include "cluda/loader.h"
#include "cluda/logging.h"
#include "cluda/trainer.h"

#include "app_common.h"

enum { MAX_SETS = 256, PATH_BYTES = 4096 };

/* Exit status after a preemption signal: a checkpoint was written, resume with --resume auto
 * (EX_TEMPFAIL; the Slurm scripts in jobs/ requeue on it). */
enum { EXIT_PREEMPTED = 75 };

/* The one piece of global state: a signal handler can only talk to the program through a
 * static flag. The training loop reads it at each step boundary. */
static volatile sig_atomic_t stop_signal = 0;

static void on_stop_signal(int sig) { stop_signal = sig; }

static const char kUsage[] =
    "usage: cluda_train --config FILE --work-dir DIR [--set KEY=VALUE ...]\n"
    "                   [--resume auto|FILE] [--max-iters N]\n"
    "\n"
    "Trains the student of CLUDA (DAFormer self-training + pixel-contrastive losses) on a\n"
    "labelled source domain and adapts it to an unlabelled target domain: GTA5 or SYNTHIA ->\n"
    "Cityscapes from disk (data.source, data.target; docs/datasets.md) or the built-in\n"
    "synthetic scenes (the default). model.pretrained names the ImageNet encoder weights.\n"
    "\n"
    "  --config FILE      YAML run configuration (keys: configs/README.md)\n"
    "  --set KEY=VALUE    override one config key (YAML value), after the file; repeatable\n"
    "  --work-dir DIR     output directory (created): config.yaml, metrics.jsonl, tb/,\n"
    "                     checkpoints/, eval.json\n"
    "  --resume auto|FILE continue from a checkpoint: auto = the newest in DIR/checkpoints\n"
    "                     (a fresh start when there is none), or the given file\n"
    "  --max-iters N      stop after iteration N (the schedule still ends at\n"
    "                     train.max_iters; a later --resume continues)\n"
    "  --help             this text\n"
    "\n"
    "Data parallel: mpirun -np N cluda_train ... runs N ranks, each on train.batch source and\n"
    "target images; the contrastive loss sees the whole global batch (cl.scope) and gradients\n"
    "are averaged. Rank 0 writes every file. Without OMP_NUM_THREADS each rank uses its share\n"
    "of the node's cores. As root, Open MPI also needs OMPI_ALLOW_RUN_AS_ROOT=1 and\n"
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 (docs/distributed.md).\n"
    "\n"
    "Errors print one line naming the problem (prefixed with the rank when several run); the\n"
    "exit status is then 1 (2 for a bad command line), and an error on any rank ends every\n"
    "rank. A non-finite loss stops the run naming the iteration and the term; the last\n"
    "checkpoint stays intact. SIGTERM or SIGUSR1 writes a checkpoint at the next step\n"
    "boundary and exits with status 75 (resume with --resume auto).\n";

typedef struct train_options {
  const char *config_path, *work_dir, *resume, *max_iters_text;
  const char *sets[MAX_SETS];
  int set_count;
  int help;
} train_options;

/* Parses the command line; usage errors are printed by rank 0 only (`report`). */
static int parse_args(int argc, char **argv, train_options *o, int report) {
  memset(o, 0, sizeof *o);
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
      o->help = 1;
      continue;
    }
    static const char *const names[] = {"--config", "--work-dir", "--resume", "--max-iters",
                                        "--set"};
    int matched = 0;
    for (size_t k = 0; k < sizeof names / sizeof names[0] && !matched; k++) {
      size_t n = strlen(names[k]);
      const char *value = NULL;
      if (!strcmp(arg, names[k])) {
        if (i + 1 >= argc) {
          if (report) fprintf(stderr, "cluda_train: error: %s needs a value\n", names[k]);
          return 0;
        }
        value = argv[++i];
      } else if (!strncmp(arg, names[k], n) && arg[n] == '=') {
        value = arg + n + 1;
      } else {
        continue;
      }
      matched = 1;
      if (k == 0) o->config_path = value;
      if (k == 1) o->work_dir = value;
      if (k == 2) o->resume = value;
      if (k == 3) o->max_iters_text = value;
      if (k == 4) {
        if (o->set_count >= MAX_SETS) {
          if (report) fprintf(stderr, "cluda_train: error: more than %d --set options\n", MAX_SETS);
          return 0;
        }
        o->sets[o->set_count++] = value;
      }
    }
    if (!matched) {
      if (report) fprintf(stderr, "cluda_train: error: unknown argument '%s' (see --help)\n", arg);
      return 0;
    }
  }
  if (o->help) return 1;
  if (!o->config_path || !o->work_dir) {
    if (report)
      fprintf(stderr, "cluda_train: error: --config and --work-dir are required (see --help)\n");
    return 0;
  }
  return 1;
}

static double now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double mono_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static cluda_status make_dir(const char *path) {
  CLUDA_REQUIRE(mkdir(path, 0777) == 0 || errno == EEXIST, CLUDA_ERR_IO,
                "cannot create directory %s: %s", path, strerror(errno));
  struct stat st;
  CLUDA_REQUIRE(stat(path, &st) == 0 && S_ISDIR(st.st_mode), CLUDA_ERR_IO,
                "%s exists and is not a directory", path);
  return cluda_ok();
}

/* The resolved config, as text (for config.yaml and every checkpoint). */
static cluda_status config_text(const cluda_config *cfg, char **text) {
  size_t size = 0;
  FILE *mem = open_memstream(text, &size);
  CLUDA_REQUIRE(mem != NULL, CLUDA_ERR_ALLOC, "out of memory for the config text");
  cluda_status s = cluda_config_write_yaml(cfg, mem);
  fclose(mem);
  return s;
}

static cluda_status write_text_atomic(const char *path, const char *text) {
  char tmp[PATH_BYTES];
  CLUDA_TRY(cluda_temp_path(path, tmp, sizeof tmp));
  FILE *f = fopen(tmp, "wb");
  CLUDA_REQUIRE(f != NULL, CLUDA_ERR_IO, "cannot write %s: %s", tmp, strerror(errno));
  size_t n = strlen(text);
  int ok = fwrite(text, 1, n, f) == n;
  ok = (fclose(f) == 0) && ok;
  if (!ok) {
    remove(tmp);
    return CLUDA_FAIL(CLUDA_ERR_IO, "cannot write %s", path);
  }
  return cluda_publish_file(tmp, path);
}

/* mIoU of the student on the first data.val_images images of a target data set's val split,
 * with the test protocol (eval.scale, eval.mode). */
static cluda_status evaluate_dataset(cluda_trainer *t, const cluda_dataset *val, const int scale[2],
                                     cluda_confusion *cm, int *images) {
  cluda_predictor p;
  cluda_infer_settings infer = {CLUDA_INFER_WHOLE, 0, 0, 0, 0};
  CLUDA_TRY(cluda_predictor_init(&p, &t->model, t->student, t->student_state, &infer));
  cluda_image rgb, labels;
  memset(&rgb, 0, sizeof rgb);
  memset(&labels, 0, sizeof labels);
  cluda_test_input input;
  memset(&input, 0, sizeof input);
  uint8_t *pred = NULL;
  size_t pred_pixels = 0;
  cluda_status s = cluda_ok();
  int n = t->s.val_images < val->count ? t->s.val_images : val->count;
  cluda_confusion_reset(cm);
  for (int i = 0; i < n && s.code == CLUDA_OK; i++) {
    cluda_image_free(&rgb); /* the reader fills a fresh image */
    cluda_image_free(&labels);
    s = cluda_dataset_read_pair(val, i, &rgb, &labels);
    size_t pixels = (size_t)rgb.width * (size_t)rgb.height;
    if (s.code == CLUDA_OK && pixels > pred_pixels) {
      free(pred);
      pred = malloc(pixels);
      pred_pixels = pred ? pixels : 0;
      if (!pred) s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "evaluate: out of memory");
    }
    if (s.code == CLUDA_OK) s = cluda_predict_image(&p, &rgb, scale[0], scale[1], &input, pred);
    if (s.code == CLUDA_OK) s = cluda_confusion_add(cm, pred, labels.pixels, pixels);
  }
  free(pred);
  cluda_test_input_free(&input);
  cluda_image_free(&rgb);
  cluda_image_free(&labels);
  cluda_predictor_free(&p);
  *images = n;
  return s;
}

/* The student on the synthetic target validation split (whole-image inference). */
static cluda_status evaluate_synthetic(cluda_trainer *t, cluda_confusion *cm, int *images) {
  const cluda_synth_config *d = &t->s.target_data;
  size_t n = (size_t)d->height * (size_t)d->width;
  float *img = malloc(n * 3 * sizeof(float));
  uint8_t *lbl = malloc(n), *pred = malloc(n);
  cluda_predictor p;
  cluda_infer_settings infer = {CLUDA_INFER_WHOLE, 0, 0, 0, 0};
  cluda_status s =
      img && lbl && pred ? cluda_ok() : CLUDA_FAIL(CLUDA_ERR_ALLOC, "evaluate: out of memory");
  int have_p = 0;
  if (s.code == CLUDA_OK)
    s = cluda_predictor_init(&p, &t->model, t->student, t->student_state, &infer);
  have_p = s.code == CLUDA_OK;
  cluda_confusion_reset(cm);
  for (int i = 0; i < t->s.val_images && s.code == CLUDA_OK; i++) {
    s = cluda_trainer_render(&t->s, CLUDA_SYNTH_TARGET, CLUDA_SYNTH_VAL, (uint64_t)i, img, lbl);
    if (s.code == CLUDA_OK) s = cluda_predictor_run(&p, img, d->height, d->width, pred);
    if (s.code == CLUDA_OK) s = cluda_confusion_add(cm, pred, lbl, n);
  }
  if (have_p) cluda_predictor_free(&p);
  free(img);
  free(lbl);
  free(pred);
  *images = t->s.val_images;
  return s;
}

/* A data set on disk feeding the trainer through the prefetching loader (loader.h). */
typedef struct data_source {
  cluda_dataset dataset;
  int dataset_open;
  cluda_rcs rcs;
  int rcs_open;
  cluda_loader *loader;
} data_source;

static cluda_status loader_get(void *ctx, int64_t iteration, float *images, uint8_t *labels) {
  return cluda_loader_get((cluda_loader *)ctx, iteration, images, labels);
}

static void data_source_free(data_source *d) {
  cluda_loader_destroy(d->loader);
  if (d->rcs_open) cluda_rcs_free(&d->rcs);
  if (d->dataset_open) cluda_dataset_free(&d->dataset);
  memset(d, 0, sizeof *d);
}

/* data.source_root / data.target_root, or the DAFormer layout's default. */
static cluda_status data_root(const cluda_config *cfg, const char *key, const char *kind,
                              char *root, size_t size) {
  const char *given = NULL;
  CLUDA_TRY(cluda_config_get_string(cfg, key, &given));
  snprintf(root, size, "%s", given && given[0] ? given : "");
  if (!root[0]) snprintf(root, size, "data/%s", kind);
  return cluda_ok();
}

/* data.*_scale, or the DAFormer value of the data set (algorithm.md 4.3). */
static cluda_status data_scale(const cluda_config *cfg, const char *key, cluda_dataset_kind kind,
                               int *scale_long, int *scale_short) {
  int v[2] = {0, 0};
  CLUDA_TRY(cluda_config_get_int_list(cfg, key, v, 2, NULL));
  if (v[0] > 0 && v[1] > 0) {
    *scale_long = v[0];
    *scale_short = v[1];
  } else {
    *scale_long = kind == CLUDA_DATASET_CITYSCAPES ? 1024 : 1280;
    *scale_short = kind == CLUDA_DATASET_CITYSCAPES ? 512
                   : kind == CLUDA_DATASET_SYNTHIA  ? 760
                                                    : 720;
  }
  return cluda_ok();
}

/* Opens the source (target = 0) or target data set of the config and starts its loader for
 * this rank's samples. */
static cluda_status open_data_source(const cluda_config *cfg, const cluda_trainer *t, int target,
                                     int verbose, data_source *d) {
  const cluda_train_settings *s = &t->s;
  const char *kind_text = NULL;
  CLUDA_TRY(cluda_config_get_string(cfg, target ? "data.target" : "data.source", &kind_text));
  cluda_dataset_kind kind;
  CLUDA_TRY(cluda_dataset_kind_parse(kind_text, &kind));
  char root[PATH_BYTES];
  CLUDA_TRY(data_root(cfg, target ? "data.target_root" : "data.source_root", kind_text, root,
                      sizeof root));
  CLUDA_TRY(cluda_dataset_open(&d->dataset, kind, root, target ? "train" : NULL));
  d->dataset_open = 1;
  cluda_loader_config lc;
  memset(&lc, 0, sizeof lc);
  lc.dataset = &d->dataset;
  CLUDA_TRY(data_scale(cfg, target ? "data.target_scale" : "data.source_scale", kind,
                       &lc.pipeline.scale_long, &lc.pipeline.scale_short));
  lc.pipeline.crop_h = s->crop_h;
  lc.pipeline.crop_w = s->crop_w;
  double cat_max_ratio = 0.75;
  CLUDA_TRY(cluda_config_get_float(cfg, "data.cat_max_ratio", &cat_max_ratio));
  lc.pipeline.cat_max_ratio = target ? 1.0f : (float)cat_max_ratio; /* plain crop on the target */
  lc.pipeline.flip = s->flip;
  for (int c = 0; c < 3; c++) {
    lc.pipeline.mean[c] = cluda_image_mean[c];
    lc.pipeline.std[c] = cluda_image_std[c];
  }
  if (!target && s->rcs) {
    int64_t *stats = NULL;
    CLUDA_TRY(cluda_dataset_load_class_stats(&d->dataset, t->model.cfg.head.num_classes, &stats));
    cluda_status st =
        cluda_rcs_init(&d->rcs, stats, d->dataset.count, t->model.cfg.head.num_classes,
                       s->rcs_temperature, s->rcs_min_pixels);
    free(stats);
    CLUDA_TRY(st);
    d->rcs_open = 1;
    lc.rcs = &d->rcs;
    CLUDA_TRY(cluda_config_get_float(cfg, "data.rcs_min_crop_ratio", &lc.rcs_min_crop_ratio));
  }
  lc.seed = s->seed;
  lc.domain = (uint32_t)target;
  lc.first_slot = (int)t->first_sample;
  lc.slots = s->batch;
  int64_t workers = 2, prefetch = 2;
  CLUDA_TRY(cluda_config_get_int(cfg, "data.workers", &workers));
  CLUDA_TRY(cluda_config_get_int(cfg, "data.prefetch", &prefetch));
  lc.workers = (int)workers;
  lc.prefetch = (int)prefetch;
  const char *on_error = NULL;
  CLUDA_TRY(cluda_config_get_string(cfg, "data.on_error", &on_error));
  lc.skip_bad = !strcmp(on_error, "skip");
  lc.first_iteration = t->iteration;
  CLUDA_TRY(cluda_loader_create(&d->loader, &lc));
  if (verbose)
    printf("data: %s %s: %d images in %s, resized to fit %dx%d%s\n", target ? "target" : "source",
           kind_text, d->dataset.count, root, lc.pipeline.scale_long, lc.pipeline.scale_short,
           lc.rcs ? ", rare-class sampling" : "");
  return cluda_ok();
}

typedef struct train_run {
  cluda_config cfg;
  int cfg_ready;
  cluda_trainer t;
  int trainer_ready;
  cluda_metrics_log metrics;
  int metrics_open;
  cluda_tfevents tb;
  int tb_open;
  cluda_confusion cm;
  int cm_ready;
  char *config_yaml;
  double best_miou;
  int64_t best_iteration;
  const char *work_dir;
  data_source source, target;
  cluda_dataset val; /* data.target cityscapes: the val split of the periodic evaluation */
  int val_open;
  int eval_scale[2];
  cluda_comm *comm;
  int is_root;                  /* rank 0: the only rank that writes files and progress */
  int preempted;                /* stopped by SIGTERM / SIGUSR1 after writing a checkpoint */
  int64_t skipped_samples;      /* data.on_error = skip: bad samples replaced, all ranks */
  cluda_eval_protocol protocol; /* eval.num_classes_protocol: the mIoU that is logged and kept */
} train_run;

static cluda_status save_checkpoint(train_run *r, int kinds) {
  int64_t stream = r->t.iteration; /* the data of iteration t is a pure function of t */
  cluda_train_state st;
  memset(&st, 0, sizeof st);
  st.model = &r->t.model;
  st.student_params = r->t.student;
  st.student_state = r->t.student_state;
  st.teacher_params = r->t.teacher;
  st.teacher_state = r->t.teacher_state;
  st.optimizer = &r->t.opt;
  st.iteration = r->t.iteration;
  st.seed = r->t.s.seed;
  st.stream = &stream;
  st.stream_count = 1;
  st.config_yaml = r->config_yaml;
  st.best_metric = r->best_miou;
  st.best_iteration = r->best_iteration;
  int64_t keep = 0;
  CLUDA_TRY(cluda_config_get_int(&r->cfg, "checkpoint.keep", &keep));
  char path[PATH_BYTES];
  CLUDA_TRY(cluda_checkpoint_save(r->work_dir, kinds, &st, (int)keep, path, sizeof path));
  printf("checkpoint: %s (iteration %lld)\n", path, (long long)r->t.iteration);
  return cluda_ok();
}

/* model.pretrained into the student; teacher and the frozen FD encoder start from it. */
static cluda_status load_pretrained(train_run *r, const char *path) {
  CLUDA_TRY(
      app_load_weight_file(path, &r->t.model, r->t.student, r->t.student_state, 1, "pretrained"));
  return cluda_trainer_adopt_student(&r->t);
}

/* Rank 0 reads the checkpoint; cluda_trainer_broadcast_state then gives every rank its state
 * (one reader on a shared file system, identical replicas). */
static cluda_status resume(train_run *r, const char *what) {
  if (!r->is_root) return cluda_ok();
  char path[PATH_BYTES];
  if (!strcmp(what, "auto")) {
    cluda_status s = cluda_checkpoint_find_latest(r->work_dir, path, sizeof path);
    if (s.code != CLUDA_OK) {
      printf("resume: no checkpoint in %s/checkpoints; starting at iteration 0\n", r->work_dir);
      return cluda_ok();
    }
  } else {
    snprintf(path, sizeof path, "%s", what);
  }
  int64_t stream = 0;
  cluda_train_state st;
  memset(&st, 0, sizeof st);
  st.model = &r->t.model;
  st.student_params = r->t.student;
  st.student_state = r->t.student_state;
  st.teacher_params = r->t.teacher;
  st.teacher_state = r->t.teacher_state;
  st.optimizer = &r->t.opt;
  st.seed = r->t.s.seed;
  st.stream = &stream;
  st.stream_count = 1;
  CLUDA_TRY(cluda_checkpoint_load(path, &st));
  CLUDA_REQUIRE(stream == st.iteration, CLUDA_ERR_IO,
                "%s: data-stream cursor %lld does not match iteration %lld", path,
                (long long)stream, (long long)st.iteration);
  r->t.iteration = st.iteration;
  r->best_miou = st.best_metric;
  r->best_iteration = st.best_iteration;
  printf("resume: %s (iteration %lld)\n", path, (long long)st.iteration);
  return cluda_ok();
}

/* Progress line, metrics.jsonl and TensorBoard for one step. */
static cluda_status log_step(train_run *r, const cluda_step_stats *st, double its, int64_t stop) {
  cluda_metric m[12];
  int n = 0;
  m[n++] = (cluda_metric){"loss_src", st->loss_src};
  if (r->t.s.fd_lambda > 0) m[n++] = (cluda_metric){"loss_fd", st->loss_fd};
  if (r->t.s.cl_source) m[n++] = (cluda_metric){"loss_cl_src", st->loss_cl_src};
  if (r->t.s.uda) m[n++] = (cluda_metric){"loss_mix", st->loss_mix};
  if (r->t.s.cl_mix) m[n++] = (cluda_metric){"loss_cl_mix", st->loss_cl_mix};
  int shown = n;
  if (r->t.s.uda) m[n++] = (cluda_metric){"gamma", st->gamma};
  m[n++] = (cluda_metric){"lr", st->lr};
  m[n++] = (cluda_metric){"grad_norm", st->grad_norm};
  m[n++] = (cluda_metric){"its_per_sec", its};
  if (r->source.loader || r->target.loader)
    m[n++] = (cluda_metric){"skipped_samples", (double)r->skipped_samples};
  char line[1024];
  struct rusage ru; /* peak resident memory (Linux: kilobytes) */
  double mem = getrusage(RUSAGE_SELF, &ru) == 0 ? 1024.0 * (double)ru.ru_maxrss : -1.0;
  cluda_progress p = {
      st->iteration + 1, stop, its, m, shown, st->lr, r->t.s.uda ? st->gamma : NAN, mem};
  cluda_progress_format(line, sizeof line, &p);
  printf("%s\n", line);
  fflush(stdout);
  double wall = now_seconds();
  CLUDA_TRY(cluda_metrics_write(&r->metrics, st->iteration + 1, wall, m, n));
  if (r->tb_open) {
    char tag[64];
    for (int i = 0; i < n; i++) {
      snprintf(tag, sizeof tag, "train/%s", m[i].name);
      CLUDA_TRY(cluda_tfevents_scalar(&r->tb, tag, st->iteration + 1, (float)m[i].value, wall));
    }
    CLUDA_TRY(cluda_tfevents_flush(&r->tb, 0));
  }
  return cluda_ok();
}

/* Evaluates, logs mIoU and returns whether it is the best so far. */
static cluda_status eval_and_log(train_run *r, int *is_best) {
  double miou = NAN, start = mono_seconds();
  int images = 0;
  if (r->val_open)
    CLUDA_TRY(evaluate_dataset(&r->t, &r->val, r->eval_scale, &r->cm, &images));
  else
    CLUDA_TRY(evaluate_synthetic(&r->t, &r->cm, &images));
  cluda_seg_metrics metrics;
  CLUDA_TRY(cluda_seg_metrics_compute(&r->cm, r->protocol, &metrics));
  miou = metrics.miou;
  int64_t it = r->t.iteration;
  *is_best = isfinite(miou) && (r->best_iteration < 0 || !(miou <= r->best_miou));
  if (*is_best) {
    r->best_miou = miou;
    r->best_iteration = it;
  }
  printf("eval @ %lld: target-val mIoU %.2f over %d images (best %.2f @ %lld; %.1f s)\n",
         (long long)it, 100 * miou, images, 100 * r->best_miou, (long long)r->best_iteration,
         mono_seconds() - start);
  cluda_metric m[1] = {{"val_miou", miou}};
  double wall = now_seconds();
  CLUDA_TRY(cluda_metrics_write(&r->metrics, it, wall, m, 1));
  if (r->tb_open) CLUDA_TRY(cluda_tfevents_scalar(&r->tb, "val/miou", it, (float)miou, wall));
  char path[PATH_BYTES];
  snprintf(path, sizeof path, "%s/eval.json", r->work_dir);
  FILE *f = fopen(path, "w");
  CLUDA_REQUIRE(f != NULL, CLUDA_ERR_IO, "cannot write %s: %s", path, strerror(errno));
  cluda_status s = cluda_eval_write_json(&r->cm, r->protocol, images, f);
  fclose(f);
  return s;
}

static cluda_status run(train_run *r, const train_options *o) {
  r->work_dir = o->work_dir;
  r->best_miou = NAN;
  r->best_iteration = -1;
  CLUDA_TRY(cluda_config_init(&r->cfg));
  r->cfg_ready = 1;
  CLUDA_TRY(cluda_config_load_file(&r->cfg, o->config_path));
  for (int i = 0; i < o->set_count; i++)
    CLUDA_TRY(cluda_config_set(&r->cfg, o->sets[i]));
  cluda_train_settings s;
  cluda_segmentor_config mc;
  CLUDA_TRY(cluda_train_settings_from_config(&r->cfg, &s));
  CLUDA_TRY(cluda_config_to_segmentor_config(&r->cfg, &mc));
  int64_t stop = s.max_iters;
  if (o->max_iters_text) {
    char *end = NULL;
    long long v = strtoll(o->max_iters_text, &end, 10);
    CLUDA_REQUIRE(end && *end == '\0' && v > 0, CLUDA_ERR_ARG,
                  "--max-iters '%s' must be a positive integer", o->max_iters_text);
    if (v < stop) stop = v;
  }
  CLUDA_TRY(config_text(&r->cfg, &r->config_yaml));
  char path[PATH_BYTES];
  if (r->is_root) {
    CLUDA_TRY(make_dir(o->work_dir));
    snprintf(path, sizeof path, "%s/config.yaml", o->work_dir);
    CLUDA_TRY(write_text_atomic(path, r->config_yaml));
    CLUDA_TRY(cluda_checkpoint_remove_stale(o->work_dir, NULL));
  }

  double t0 = mono_seconds();
  CLUDA_TRY(cluda_trainer_init(&r->t, &s, &mc, r->comm));
  r->trainer_ready = 1;
  const int ranks = r->comm->size;
  const char *source = NULL, *target = NULL;
  CLUDA_TRY(cluda_config_get_string(&r->cfg, "data.source", &source));
  CLUDA_TRY(cluda_config_get_string(&r->cfg, "data.target", &target));
  char data[96];
  if (s.source_synthetic && s.target_synthetic)
    snprintf(data, sizeof data, "synthetic data %dx%d", s.source_data.height, s.source_data.width);
  else
    snprintf(data, sizeof data, "%s -> %s", source, s.uda ? target : "(none)");
  if (r->is_root)
    printf("cluda_train: %s encoder, %zu parameters, batch %d+%d x %d rank%s (%s), crop %dx%d, "
           "%s, %s%s%s (setup %.1f s)\n",
           mc.encoder_name, cluda_param_table_elements(&r->t.model.params), s.batch,
           s.uda ? s.batch : 0, ranks, ranks > 1 ? "s" : "", r->comm->ops->name, s.crop_h, s.crop_w,
           data, s.uda ? "UDA" : "source only", s.cl_source || s.cl_mix ? " + CL" : "",
           s.fd_lambda > 0 ? " + FD" : "", mono_seconds() - t0);
  const char *pretrained = NULL;
  CLUDA_TRY(cluda_config_get_string(&r->cfg, "model.pretrained", &pretrained));
  if (pretrained && pretrained[0] && r->is_root) CLUDA_TRY(load_pretrained(r, pretrained));
  if (o->resume) CLUDA_TRY(resume(r, o->resume));
  /* rank 0's weights (initial, pretrained or resumed) on every rank */
  CLUDA_TRY(cluda_trainer_broadcast_state(&r->t));
  CLUDA_TRY(cluda_trainer_check_replicas(&r->t));
  CLUDA_TRY(cluda_confusion_create(&r->cm, mc.head.num_classes));
  r->cm_ready = 1;
  CLUDA_TRY(app_read_protocol(&r->cfg, &r->protocol));
  if (!s.source_synthetic) {
    CLUDA_TRY(open_data_source(&r->cfg, &r->t, 0, r->is_root, &r->source));
    r->t.source = (cluda_sample_source){r->source.loader, loader_get};
  }
  if (s.uda && !s.target_synthetic) {
    CLUDA_TRY(open_data_source(&r->cfg, &r->t, 1, r->is_root, &r->target));
    r->t.target = (cluda_sample_source){r->target.loader, loader_get};
  }
  if (!s.target_synthetic && r->is_root) {
    char root[PATH_BYTES];
    CLUDA_TRY(data_root(&r->cfg, "data.target_root", "cityscapes", root, sizeof root));
    CLUDA_TRY(cluda_dataset_open(&r->val, CLUDA_DATASET_CITYSCAPES, root, "val"));
    r->val_open = 1;
    CLUDA_TRY(cluda_config_get_int_list(&r->cfg, "eval.scale", r->eval_scale, 2, NULL));
  }

  int tensorboard = 0;
  CLUDA_TRY(cluda_config_get_bool(&r->cfg, "log.tensorboard", &tensorboard));
  if (r->is_root) {
    snprintf(path, sizeof path, "%s/metrics.jsonl", o->work_dir);
    CLUDA_TRY(cluda_metrics_open(&r->metrics, path, r->t.iteration > 0));
    r->metrics_open = 1;
  }
  if (tensorboard && r->is_root) {
    snprintf(path, sizeof path, "%s/tb", o->work_dir);
    CLUDA_TRY(make_dir(path));
    CLUDA_TRY(cluda_tfevents_open(&r->tb, path, now_seconds(), NULL));
    r->tb_open = 1;
  }
  int64_t log_every = 1, eval_every = 0, ckpt_every = 0;
  int save_best = 0;
  CLUDA_TRY(cluda_config_get_int(&r->cfg, "log.interval", &log_every));
  CLUDA_TRY(cluda_config_get_int(&r->cfg, "train.eval_interval", &eval_every));
  CLUDA_TRY(cluda_config_get_int(&r->cfg, "checkpoint.interval", &ckpt_every));
  CLUDA_TRY(cluda_config_get_bool(&r->cfg, "checkpoint.save_best", &save_best));

  double window_start = mono_seconds();
  int64_t window_iters = 0;
  while (r->t.iteration < stop) {
    cluda_step_stats st;
    CLUDA_TRY(cluda_trainer_step(&r->t, &st));
    window_iters++;
    int64_t done = r->t.iteration;
    int last = done == stop;
    /* A signal may reach only some ranks first: all stop together at the same step. The
     * same reduction sums the ranks' skipped samples for the log. */
    int64_t flags[2] = {stop_signal != 0, cluda_loader_skipped(r->source.loader) +
                                              cluda_loader_skipped(r->target.loader)};
    CLUDA_TRY(cluda_comm_allreduce(r->comm, flags, flags, 2, CLUDA_COMM_I64, CLUDA_COMM_SUM));
    r->skipped_samples = flags[1];
    if (flags[0]) {
      if (r->is_root) {
        CLUDA_TRY(save_checkpoint(r, CLUDA_CKPT_LATEST | CLUDA_CKPT_ITER));
        printf("cluda_train: stopped by a signal (SIGTERM or SIGUSR1) after iteration %lld; "
               "resume with --resume auto\n",
               (long long)done);
      }
      CLUDA_TRY(cluda_comm_barrier(r->comm));
      r->preempted = 1;
      return cluda_ok();
    }
    if (!r->is_root) continue; /* logs, evaluation and checkpoints are rank 0's */
    if (done % log_every == 0 || last) {
      double its = (double)window_iters / (mono_seconds() - window_start);
      CLUDA_TRY(log_step(r, &st, its, stop));
      window_start = mono_seconds();
      window_iters = 0;
    }
    int is_best = 0, evaluated = 0;
    if ((eval_every > 0 && done % eval_every == 0) || last) {
      CLUDA_TRY(eval_and_log(r, &is_best));
      evaluated = 1;
    }
    int kinds = 0;
    if ((ckpt_every > 0 && done % ckpt_every == 0) || last)
      kinds |= CLUDA_CKPT_LATEST | CLUDA_CKPT_ITER;
    if (evaluated && is_best && save_best) kinds |= CLUDA_CKPT_BEST;
    if (kinds) CLUDA_TRY(save_checkpoint(r, kinds));
    if (evaluated) window_start = mono_seconds(); /* keep eval time out of it/s */
  }
  if (r->is_root && r->cm_ready && r->best_iteration >= 0) {
    printf("\nfinal target-val evaluation (iteration %lld):\n", (long long)r->t.iteration);
    CLUDA_TRY(cluda_eval_write_table(&r->cm, r->protocol, stdout));
  }
  return cluda_ok();
}

static void run_free(train_run *r) {
  data_source_free(&r->source);
  data_source_free(&r->target);
  if (r->val_open) cluda_dataset_free(&r->val);
  if (r->tb_open) cluda_tfevents_close(&r->tb);
  if (r->metrics_open) cluda_metrics_close(&r->metrics);
  if (r->cm_ready) cluda_confusion_free(&r->cm);
  if (r->trainer_ready) cluda_trainer_free(&r->t);
  if (r->cfg_ready) cluda_config_free(&r->cfg);
  free(r->config_yaml);
}

/* Each rank's share of the node's cores, unless the user chose (OMP_NUM_THREADS). */
static void share_cores(const cluda_comm *comm) {
  if (getenv("OMP_NUM_THREADS") || comm->local_size <= 1) return;
  long cores = sysconf(_SC_NPROCESSORS_ONLN);
  int threads = cores > comm->local_size ? (int)(cores / comm->local_size) : 1;
  omp_set_num_threads(threads);
  openblas_set_num_threads(threads);
}

int main(int argc, char **argv) {
  cluda_comm comm;
  if (cluda_comm_mpi_launched()) {
    cluda_status s = cluda_comm_mpi_init(&comm, &argc, &argv);
    if (s.code != CLUDA_OK) {
      fprintf(stderr, "cluda_train: error: %s\n", s.message);
      return 1;
    }
  } else {
    cluda_comm_init_self(&comm);
  }
  train_options o;
  int parsed = parse_args(argc, argv, &o, comm.rank == 0);
  if (!parsed || o.help) {
    if (parsed && comm.rank == 0) fputs(kUsage, stdout);
    cluda_comm_finalize(&comm);
    return parsed ? 0 : 2;
  }
  share_cores(&comm);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGUSR1, &sa, NULL);

  train_run r;
  memset(&r, 0, sizeof r);
  r.comm = &comm;
  r.is_root = comm.rank == 0;
  cluda_status s = run(&r, &o);
  int preempted = r.preempted;
  run_free(&r);
  if (s.code != CLUDA_OK) {
    if (comm.size > 1) {
      fprintf(stderr, "cluda_train: error: rank %d: %s\n", comm.rank, s.message);
      fflush(stderr);
      cluda_comm_abort(&comm, 1); /* the other ranks may wait in a collective: end them */
    }
    fprintf(stderr, "cluda_train: error: %s\n", s.message);
    cluda_comm_finalize(&comm);
    return 1;
  }
  cluda_comm_finalize(&comm);
  return preempted ? EXIT_PREEMPTED : 0;
}

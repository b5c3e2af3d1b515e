/* cluda_train: CLUDA / DAFormer UDA training on the built-in synthetic two-domain data (one
 * process, CPU). Writes the resolved config, a progress line, metrics.jsonl, TensorBoard
 * scalars, periodic target-validation mIoU and checkpoints to the work directory. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "cluda/checkpoint.h"
#include "cluda/config.h"
#include "cluda/eval.h"
#include "cluda/fileio.h"
#include "cluda/logging.h"
#include "cluda/trainer.h"

enum { MAX_SETS = 256, PATH_BYTES = 4096 };

static const char kUsage[] =
    "usage: cluda_train --config FILE --work-dir DIR [--set KEY=VALUE ...]\n"
    "                   [--resume auto|FILE] [--max-iters N]\n"
    "\n"
    "Trains the student of CLUDA (DAFormer self-training + pixel-contrastive losses) on the\n"
    "synthetic source domain and adapts it to the synthetic target domain.\n"
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
    "Errors print one line naming the problem; the exit status is then 1 (2 for a bad\n"
    "command line). A non-finite loss stops the run naming the iteration and the term; the\n"
    "last checkpoint stays intact.\n";

typedef struct train_options {
  const char *config_path, *work_dir, *resume, *max_iters_text;
  const char *sets[MAX_SETS];
  int set_count;
  int help;
} train_options;

static int parse_args(int argc, char **argv, train_options *o) {
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
          fprintf(stderr, "cluda_train: %s needs a value\n", names[k]);
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
          fprintf(stderr, "cluda_train: more than %d --set options\n", MAX_SETS);
          return 0;
        }
        o->sets[o->set_count++] = value;
      }
    }
    if (!matched) {
      fprintf(stderr, "cluda_train: unknown argument '%s' (see --help)\n", arg);
      return 0;
    }
  }
  if (o->help) return 1;
  if (!o->config_path || !o->work_dir) {
    fprintf(stderr, "cluda_train: --config and --work-dir are required (see --help)\n");
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

/* mIoU of the student on the target validation split (whole-image inference). */
static cluda_status evaluate(cluda_trainer *t, cluda_confusion *cm, double *miou) {
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
  CLUDA_TRY(s);
  cluda_seg_metrics m;
  CLUDA_TRY(cluda_seg_metrics_compute(cm, CLUDA_PROTOCOL_ALL, &m));
  *miou = m.miou;
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

static cluda_status resume(train_run *r, const char *what) {
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
  cluda_metric m[10];
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
  CLUDA_TRY(evaluate(&r->t, &r->cm, &miou));
  int64_t it = r->t.iteration;
  *is_best = isfinite(miou) && (r->best_iteration < 0 || !(miou <= r->best_miou));
  if (*is_best) {
    r->best_miou = miou;
    r->best_iteration = it;
  }
  printf("eval @ %lld: target-val mIoU %.2f over %d images (best %.2f @ %lld; %.1f s)\n",
         (long long)it, 100 * miou, r->t.s.val_images, 100 * r->best_miou,
         (long long)r->best_iteration, mono_seconds() - start);
  cluda_metric m[1] = {{"val_miou", miou}};
  double wall = now_seconds();
  CLUDA_TRY(cluda_metrics_write(&r->metrics, it, wall, m, 1));
  if (r->tb_open) CLUDA_TRY(cluda_tfevents_scalar(&r->tb, "val/miou", it, (float)miou, wall));
  char path[PATH_BYTES];
  snprintf(path, sizeof path, "%s/eval.json", r->work_dir);
  FILE *f = fopen(path, "w");
  CLUDA_REQUIRE(f != NULL, CLUDA_ERR_IO, "cannot write %s: %s", path, strerror(errno));
  cluda_status s = cluda_eval_write_json(&r->cm, CLUDA_PROTOCOL_ALL, r->t.s.val_images, f);
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
  CLUDA_TRY(make_dir(o->work_dir));
  CLUDA_TRY(config_text(&r->cfg, &r->config_yaml));
  char path[PATH_BYTES];
  snprintf(path, sizeof path, "%s/config.yaml", o->work_dir);
  CLUDA_TRY(write_text_atomic(path, r->config_yaml));
  CLUDA_TRY(cluda_checkpoint_remove_stale(o->work_dir, NULL));

  double t0 = mono_seconds();
  CLUDA_TRY(cluda_trainer_init(&r->t, &s, &mc));
  r->trainer_ready = 1;
  printf("cluda_train: %s encoder, %zu parameters, batch %d+%d, crop %dx%d, data %dx%d, "
         "%s%s%s (setup %.1f s)\n",
         mc.encoder_name, cluda_param_table_elements(&r->t.model.params), s.batch,
         s.uda ? s.batch : 0, s.crop_h, s.crop_w, s.source_data.height, s.source_data.width,
         s.uda ? "UDA" : "source only", s.cl_source || s.cl_mix ? " + CL" : "",
         s.fd_lambda > 0 ? " + FD" : "", mono_seconds() - t0);
  if (o->resume) CLUDA_TRY(resume(r, o->resume));
  CLUDA_TRY(cluda_confusion_create(&r->cm, mc.head.num_classes));
  r->cm_ready = 1;

  snprintf(path, sizeof path, "%s/metrics.jsonl", o->work_dir);
  CLUDA_TRY(cluda_metrics_open(&r->metrics, path, r->t.iteration > 0));
  r->metrics_open = 1;
  int tensorboard = 0;
  CLUDA_TRY(cluda_config_get_bool(&r->cfg, "log.tensorboard", &tensorboard));
  if (tensorboard) {
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
  if (r->cm_ready && r->best_iteration >= 0) {
    printf("\nfinal target-val evaluation (iteration %lld):\n", (long long)r->t.iteration);
    CLUDA_TRY(cluda_eval_write_table(&r->cm, CLUDA_PROTOCOL_ALL, stdout));
  }
  return cluda_ok();
}

static void run_free(train_run *r) {
  if (r->tb_open) cluda_tfevents_close(&r->tb);
  if (r->metrics_open) cluda_metrics_close(&r->metrics);
  if (r->cm_ready) cluda_confusion_free(&r->cm);
  if (r->trainer_ready) cluda_trainer_free(&r->t);
  if (r->cfg_ready) cluda_config_free(&r->cfg);
  free(r->config_yaml);
}

int main(int argc, char **argv) {
  train_options o;
  if (!parse_args(argc, argv, &o)) return 2;
  if (o.help) {
    fputs(kUsage, stdout);
    return 0;
  }
  train_run r;
  memset(&r, 0, sizeof r);
  cluda_status s = run(&r, &o);
  run_free(&r);
  if (s.code != CLUDA_OK) {
    fprintf(stderr, "cluda_train: %s\n", s.message);
    return 1;
  }
  return 0;
}

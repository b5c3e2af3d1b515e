/* Training checkpoints: every buffer and scalar round-trips bit for bit; a run stopped at
 * iteration k, saved, loaded into fresh buffers and continued equals an uninterrupted run
 * (fake training steps: AdamW on counter-RNG gradients, EMA teacher, BN drift, data cursor);
 * latest / best / iter_<N> naming, hard links, retention and --resume auto discovery; a save
 * that runs out of space (RLIMIT_FSIZE in a forked child, so writes fail with EFBIG as they
 * would with ENOSPC, also as root) leaves the previous checkpoint byte-identical and no temp
 * file; another architecture, another table, another optimizer config or seed, flipped bytes
 * and truncated files are refused with messages naming what differs. */
#include <dirent.h>
#include <hdf5.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluda/checkpoint.h"
#include "cluda/rng.h"
#include "cluda/weights.h"
#include "testing.h"

static char temp_dir[64];

enum { K_STEPS = 3, HIST_CAP = 16, SEED = 1234 };

/* ---- a fake training run ---- */

typedef struct run {
  cluda_segmentor *model;
  float *sp, *ss, *tp, *ts, *grads;
  cluda_adamw opt;
  int64_t iteration;
  int64_t stream[2];
  double hist[HIST_CAP];
  cluda_ckpt_series series[2];
  double best;
  int64_t best_it;
} run;

static float *alloc_table(const cluda_param_table *t) {
  float *x = test_alloc_f32((int64_t)(t->total ? t->total : 1));
  memset(x, 0, (t->total ? t->total : 1) * sizeof(float));
  return x;
}

static void run_init(run *r, cluda_segmentor *model, uint64_t init_seed) {
  memset(r, 0, sizeof *r);
  r->model = model;
  r->sp = alloc_table(&model->params);
  r->tp = alloc_table(&model->params);
  r->grads = alloc_table(&model->params);
  r->ss = alloc_table(&model->state);
  r->ts = alloc_table(&model->state);
  TEST_OK(cluda_segmentor_init(model, r->sp, r->ss, init_seed));
  memcpy(r->ts, r->ss, model->state.total * sizeof(float));
  cluda_adamw_config cfg = cluda_adamw_default_config();
  cfg.lr = 1e-3; /* large enough that every step changes the bits */
  TEST_OK(cluda_adamw_init(&r->opt, &model->params, &cfg));
  r->best = -1.0;
  r->best_it = -1;
  snprintf(r->series[0].name, sizeof r->series[0].name, "miou_history");
  r->series[0].values = r->hist;
  r->series[0].capacity = HIST_CAP;
  snprintf(r->series[1].name, sizeof r->series[1].name, "never_written");
  r->series[1].values = r->hist + HIST_CAP / 2; /* unused: count stays 0 */
  r->series[1].capacity = 0;
}

static void run_free(run *r) {
  free(r->sp), free(r->ss), free(r->tp), free(r->ts), free(r->grads);
  cluda_adamw_free(&r->opt);
}

static cluda_train_state run_state(run *r, const char *config) {
  cluda_train_state st;
  memset(&st, 0, sizeof st);
  st.model = r->model;
  st.student_params = r->sp;
  st.student_state = r->ss;
  st.teacher_params = r->tp;
  st.teacher_state = r->ts;
  st.optimizer = &r->opt;
  st.iteration = r->iteration;
  st.seed = SEED;
  st.stream = r->stream;
  st.stream_count = 2;
  st.config_yaml = config;
  st.best_metric = r->best;
  st.best_iteration = r->best_it;
  st.series = r->series;
  st.series_count = 2;
  return st;
}

/* Copies what a load restored back into the run. */
static void run_adopt(run *r, const cluda_train_state *st) {
  r->iteration = st->iteration;
  r->best = st->best_metric;
  r->best_it = st->best_iteration;
}

/* One deterministic iteration: everything is a function of (SEED, iteration) and the state. */
static void run_step(run *r) {
  const cluda_param_table *pt = &r->model->params, *stt = &r->model->state;
  int64_t t = r->iteration;
  cluda_ema_update(pt, r->tp, r->sp, t, 0.999);
  cluda_rng_key key = cluda_rng_make_key(SEED, 0, (uint32_t)t, CLUDA_RNG_TEST, 0);
  for (size_t i = 0; i < pt->total; i++)
    r->grads[i] = cluda_rng_uniform(key, i) - 0.5f;
  cluda_lr_schedule sched = cluda_lr_schedule_default();
  double lrs[CLUDA_OPTIM_GROUPS];
  cluda_lr_group_lrs(&sched, &r->opt.config, t, lrs);
  cluda_adamw_step(&r->opt, pt, r->sp, r->grads, lrs);
  cluda_rng_key bn = cluda_rng_make_key(SEED, 0, (uint32_t)t, CLUDA_RNG_TEST, 1);
  for (size_t i = 0; i < stt->total; i++) {
    r->ss[i] = 0.9f * r->ss[i] + 0.1f * cluda_rng_uniform(bn, i);
    r->ts[i] = 0.9f * r->ts[i] + 0.1f * cluda_rng_uniform(bn, i + stt->total);
  }
  r->stream[0] += 2;
  r->stream[1] = r->stream[1] * 31 + (int64_t)cluda_rng_uniform(key, pt->total) * 1000;
  if (t % 2 == 1 && r->series[0].count < HIST_CAP) {
    double miou = (double)r->sp[t % 7];
    r->hist[r->series[0].count++] = miou;
    if (miou > r->best) r->best = miou, r->best_it = t;
  }
  r->iteration++;
}

static int same_entries(const cluda_param_table *t, const float *a, const float *b,
                        const char *what) {
  for (int i = 0; i < t->count; i++) {
    const cluda_param_info *p = &t->items[i];
    if (memcmp(a + p->offset, b + p->offset, p->count * sizeof(float)) != 0)
      return TEST_CHECK(0, "%s: %s differs", what, p->name);
  }
  return TEST_CHECK(1, "%s", what);
}

static void same_runs(const run *a, const run *b, const char *what) {
  char label[160];
#define SAME(field, table)                                                                         \
  snprintf(label, sizeof label, "%s: " #field " bit-identical", what);                             \
  same_entries(&a->model->table, a->field, b->field, label)
  SAME(sp, params);
  SAME(ss, state);
  SAME(tp, params);
  SAME(ts, state);
  SAME(opt.m, params);
  SAME(opt.v, params);
#undef SAME
  TEST_CHECK(a->iteration == b->iteration && a->opt.step == b->opt.step,
             "%s: iteration %lld/%lld, step %lld/%lld", what, (long long)a->iteration,
             (long long)b->iteration, (long long)a->opt.step, (long long)b->opt.step);
  TEST_CHECK(a->stream[0] == b->stream[0] && a->stream[1] == b->stream[1], "%s: data stream", what);
  TEST_CHECK(a->series[0].count == b->series[0].count &&
                 memcmp(a->hist, b->hist, (size_t)a->series[0].count * sizeof(double)) == 0 &&
                 b->series[1].count == 0,
             "%s: metric series", what);
  TEST_CHECK(memcmp(&a->best, &b->best, sizeof a->best) == 0 && a->best_it == b->best_it,
             "%s: best metric and iteration", what);
}

/* ---- files ---- */

static void work_path(char *out, size_t cap, const char *work, const char *name) {
  snprintf(out, cap, "%s/checkpoints/%s", work, name);
}

static void make_work_dir(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", temp_dir, name);
  mkdir(out, 0777);
}

static int count_matching(const char *work, const char *needle) {
  char dir[256];
  snprintf(dir, sizeof dir, "%s/checkpoints", work);
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)) != NULL)
    n += strstr(e->d_name, needle) != NULL;
  if (d) closedir(d);
  return n;
}

static unsigned char *read_bytes(const char *path, size_t *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = test_alloc((size_t)n + 1);
  size_t got = fread(buf, 1, (size_t)n, f);
  fclose(f);
  *size = got;
  return buf;
}

static void write_bytes(const char *path, const unsigned char *buf, size_t size) {
  FILE *f = fopen(path, "wb");
  if (f) {
    fwrite(buf, 1, size, f);
    fclose(f);
  }
}

static void remove_tree(const char *work) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", work);
  if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", work);
}

static const char CONFIG[] = "model:\n  encoder: tiny\noptim:\n  lr: 0.001\nseed: 1234\n";

/* ---- tests ---- */

static void test_round_trip_and_resume(cluda_segmentor *m) {
  char work[128], path[320];
  make_work_dir(work, sizeof work, "resume");

  run a, b, c;
  run_init(&a, m, 7);
  for (int i = 0; i < 2 * K_STEPS; i++)
    run_step(&a);

  run_init(&b, m, 7);
  for (int i = 0; i < K_STEPS; i++)
    run_step(&b);
  cluda_train_state sb = run_state(&b, CONFIG);
  char written[320] = "";
  TEST_OK(cluda_checkpoint_save(work, CLUDA_CKPT_LATEST | CLUDA_CKPT_ITER, &sb, 0, written,
                                sizeof written));
  work_path(path, sizeof path, work, "iter_00000003.h5");
  TEST_CHECK(strcmp(written, path) == 0, "path_out names the iter file (%s)", written);
  TEST_CHECK(count_matching(work, ".tmp.") == 0, "no temp file left after saving");
  struct stat s1, s2;
  work_path(path, sizeof path, work, "latest.h5");
  TEST_CHECK(stat(written, &s1) == 0 && stat(path, &s2) == 0 && s1.st_ino == s2.st_ino,
             "latest.h5 is a hard link to iter_00000003.h5 (one write)");

  /* Fresh buffers, other initial values, zeroed optimizer. */
  run_init(&c, m, 99);
  cluda_train_state sc = run_state(&c, NULL);
  sc.iteration = 0;
  char found[320];
  TEST_OK(cluda_checkpoint_find_latest(work, found, sizeof found));
  TEST_CHECK(strcmp(found, path) == 0, "find_latest prefers latest.h5 (%s)", found);
  TEST_OK(cluda_checkpoint_load(found, &sc));
  run_adopt(&c, &sc);
  same_runs(&b, &c, "round trip");
  TEST_CHECK(sc.iteration == K_STEPS && c.opt.step == K_STEPS, "iteration and step restored");

  cluda_ckpt_info info;
  if (TEST_OK(cluda_checkpoint_read_info(found, &info))) {
    TEST_CHECK(info.iteration == K_STEPS && info.optimizer_step == K_STEPS && info.seed == SEED &&
                   info.has_teacher && strcmp(info.encoder_name, "tiny") == 0 &&
                   strcmp(info.config_yaml, CONFIG) == 0,
               "read_info: iteration, step, seed, teacher, encoder and config text");
    cluda_checkpoint_info_free(&info);
  }

  for (int i = 0; i < K_STEPS; i++)
    run_step(&c);
  same_runs(&a, &c, "resume at k + k steps == 2k steps");

  /* The teacher exports as a weight file that cluda_infer reads. */
  char weights[320];
  snprintf(weights, sizeof weights, "%s/teacher_weights.h5", work);
  float *wp = alloc_table(&m->params), *ws = alloc_table(&m->state);
  TEST_OK(cluda_checkpoint_export_weights(found, m, 1, weights));
  TEST_OK(cluda_weights_load_h5(weights, m, wp, ws));
  same_entries(&m->params, b.tp, wp, "exported teacher params");
  same_entries(&m->state, b.ts, ws, "exported teacher BN buffers");
  free(wp), free(ws);

  run_free(&a), run_free(&b), run_free(&c);
  remove_tree(work);
}

static void test_naming_and_retention(cluda_segmentor *m) {
  char work[128], path[320], found[320];
  make_work_dir(work, sizeof work, "retention");
  run r;
  run_init(&r, m, 3);
  for (int it = 1; it <= 5; it++) {
    r.iteration = it;
    cluda_train_state st = run_state(&r, CONFIG);
    int kinds = CLUDA_CKPT_ITER | CLUDA_CKPT_LATEST | (it == 2 ? CLUDA_CKPT_BEST : 0);
    TEST_OK(cluda_checkpoint_save(work, kinds, &st, 2, NULL, 0));
  }
  TEST_CHECK(count_matching(work, "iter_") == 2, "keep_iters 2 keeps two iter_ files");
  work_path(path, sizeof path, work, "iter_00000005.h5");
  TEST_CHECK(access(path, F_OK) == 0, "iter_00000005.h5 kept");
  work_path(path, sizeof path, work, "iter_00000004.h5");
  TEST_CHECK(access(path, F_OK) == 0, "iter_00000004.h5 kept");
  work_path(path, sizeof path, work, "iter_00000002.h5");
  TEST_CHECK(access(path, F_OK) != 0, "iter_00000002.h5 pruned");
  work_path(path, sizeof path, work, "best.h5");
  cluda_ckpt_info info;
  if (TEST_OK(cluda_checkpoint_read_info(path, &info))) {
    TEST_CHECK(info.iteration == 2, "best.h5 survives the pruning of its iter_ twin");
    cluda_checkpoint_info_free(&info);
  }
  TEST_CHECK(count_matching(work, ".tmp.") == 0, "no temp files");

  /* --resume auto: a truncated latest.h5 falls back to the newest readable iter_ file. */
  work_path(path, sizeof path, work, "latest.h5");
  TEST_OK(cluda_checkpoint_find_latest(work, found, sizeof found));
  TEST_CHECK(strcmp(found, path) == 0, "find_latest: latest.h5");
  /* latest.h5 shares its inode with iter_00000005.h5: corrupt a fresh copy, not the link. */
  size_t full = 0;
  unsigned char *bytes = read_bytes(path, &full);
  unlink(path);
  write_bytes(path, bytes, full / 2);
  free(bytes);
  TEST_OK(cluda_checkpoint_find_latest(work, found, sizeof found));
  work_path(path, sizeof path, work, "iter_00000005.h5");
  TEST_CHECK(strcmp(found, path) == 0, "find_latest skips a truncated latest.h5 (%s)", found);
  work_path(path, sizeof path, work, "latest.h5");
  run c;
  run_init(&c, m, 3);
  cluda_train_state sc = run_state(&c, NULL);
  TEST_FAILS(cluda_checkpoint_load(path, &sc), CLUDA_ERR_IO, "truncated or corrupt");
  TEST_FAILS(cluda_checkpoint_read_info(path, &info), CLUDA_ERR_IO, "not a readable HDF5 file");
  run_free(&c);

  /* Stale temps of dead writers go; a live writer's (ours) stays. */
  char stale[320], ours[320];
  work_path(stale, sizeof stale, work, "latest.h5.tmp.2147483646");
  snprintf(ours, sizeof ours, "%s/checkpoints/latest.h5.tmp.%ld", work, (long)getpid());
  write_bytes(stale, (const unsigned char *)"x", 1);
  write_bytes(ours, (const unsigned char *)"x", 1);
  int removed = -1;
  TEST_OK(cluda_checkpoint_remove_stale(work, &removed));
  TEST_CHECK(removed == 1 && access(stale, F_OK) != 0 && access(ours, F_OK) == 0,
             "remove_stale removes only a dead writer's temp (%d)", removed);
  unlink(ours);

  char empty[128];
  make_work_dir(empty, sizeof empty, "empty");
  TEST_FAILS(cluda_checkpoint_find_latest(empty, found, sizeof found), CLUDA_ERR_IO,
             "no checkpoint directory");
  remove_tree(empty);
  run_free(&r);
  remove_tree(work);
}

/* A child process whose writes fail beyond 64 KiB tries to replace latest.h5. */
static void test_no_space(cluda_segmentor *m) {
  char work[128], path[320];
  make_work_dir(work, sizeof work, "nospace");
  run r;
  run_init(&r, m, 5);
  cluda_train_state st = run_state(&r, CONFIG);
  TEST_OK(cluda_checkpoint_save(work, CLUDA_CKPT_LATEST, &st, 0, NULL, 0));
  work_path(path, sizeof path, work, "latest.h5");
  size_t before_size = 0, after_size = 0;
  unsigned char *before = read_bytes(path, &before_size);
  TEST_CHECK(before != NULL && before_size > (1 << 17), "first checkpoint written (%zu bytes)",
             before_size);

  run_step(&r);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    signal(SIGXFSZ, SIG_IGN); /* writes past the limit fail with EFBIG instead of killing */
    struct rlimit lim = {1 << 16, 1 << 16};
    setrlimit(RLIMIT_FSIZE, &lim);
    st = run_state(&r, CONFIG);
    cluda_status s =
        cluda_checkpoint_save(work, CLUDA_CKPT_LATEST | CLUDA_CKPT_ITER, &st, 0, NULL, 0);
    printf("child save: %s\n", s.message);
    fflush(stdout);
    int ok = s.code == CLUDA_ERR_IO && strstr(s.message, "previous checkpoint is kept") != NULL;
    _exit(ok ? 0 : 1); /* skip atexit handlers (leak checks of the parent's allocations) */
  }
  int wstatus = 0;
  TEST_CHECK(pid > 0 && waitpid(pid, &wstatus, 0) == pid && WIFEXITED(wstatus) &&
                 WEXITSTATUS(wstatus) == 0,
             "a save that hits the file size limit fails with a clear message");
  unsigned char *after = read_bytes(path, &after_size);
  TEST_CHECK(after != NULL && after_size == before_size && memcmp(before, after, before_size) == 0,
             "the previous latest.h5 survives byte-identical");
  TEST_CHECK(count_matching(work, ".tmp.") == 0, "the failed save left no temp file");
  TEST_CHECK(count_matching(work, "iter_") == 0, "no iter_ file published by the failed save");
  free(before), free(after);

  /* Unwritable targets. */
  TEST_FAILS(cluda_checkpoint_save(temp_dir, 0, &st, 0, NULL, 0), CLUDA_ERR_ARG, "kinds");
  char nowork[200];
  snprintf(nowork, sizeof nowork, "%s/no/such/dir", temp_dir);
  TEST_FAILS(cluda_checkpoint_save(nowork, CLUDA_CKPT_LATEST, &st, 0, NULL, 0), CLUDA_ERR_IO,
             "cannot create");
  run_free(&r);
  remove_tree(work);
}

static void test_bad_files(cluda_segmentor *m) {
  char work[128], path[320], bad[320];
  make_work_dir(work, sizeof work, "bad");
  run r, c;
  run_init(&r, m, 8);
  run_step(&r);
  run_step(&r); /* the second step appends to the metric series */
  cluda_train_state st = run_state(&r, CONFIG);
  TEST_OK(cluda_checkpoint_save(work, CLUDA_CKPT_LATEST, &st, 0, NULL, 0));
  work_path(path, sizeof path, work, "latest.h5");
  snprintf(bad, sizeof bad, "%s/bad.h5", work);

  run_init(&c, m, 9);
  cluda_train_state sc = run_state(&c, NULL);
  float *snap = alloc_table(&m->params);
  memcpy(snap, c.sp, m->params.total * sizeof(float));

  /* Another architecture, named by its attribute; nothing written. */
  cluda_segmentor_config cfg;
  cluda_segmentor other;
  TEST_OK(cluda_segmentor_default_config("tiny", CLUDA_HEAD_DAFORMER, &cfg));
  cfg.head.num_classes = 7;
  if (TEST_OK(cluda_segmentor_create(&other, &cfg))) {
    run o;
    run_init(&o, &other, 1);
    cluda_train_state so = run_state(&o, NULL);
    TEST_FAILS(cluda_checkpoint_load(path, &so), CLUDA_ERR_SHAPE,
               "another architecture: num_classes is [19] in the file, [7] in the model");
    run_free(&o);
    cluda_segmentor_free(&other);
  }

  /* Another table with the same architecture attributes. */
  cluda_param_info saved = m->params.items[5];
  m->params.items[5].no_decay = !saved.no_decay;
  cluda_adamw_free(&c.opt);
  cluda_adamw_init(&c.opt, &m->params, &r.opt.config);
  TEST_FAILS(cluda_checkpoint_load(path, &sc), CLUDA_ERR_SHAPE, "parameter table");
  m->params.items[5] = saved;
  m->params.items[5].shape[0] += 1;
  TEST_FAILS(cluda_checkpoint_load(path, &sc), CLUDA_ERR_ARG, "another parameter table");
  cluda_adamw_free(&c.opt);
  cluda_adamw_init(&c.opt, &m->params, &r.opt.config);
  TEST_FAILS(cluda_checkpoint_load(path, &sc), CLUDA_ERR_SHAPE, "model expects");
  m->params.items[5] = saved;
  snprintf(m->params.items[5].name, sizeof m->params.items[5].name, "backbone.renamed.weight");
  cluda_adamw_free(&c.opt);
  cluda_adamw_init(&c.opt, &m->params, &r.opt.config);
  TEST_FAILS(cluda_checkpoint_load(path, &sc), CLUDA_ERR_SHAPE, "unexpected /student/params/");
  m->params.items[5] = saved;
  cluda_adamw_free(&c.opt);
  cluda_adamw_init(&c.opt, &m->params, &r.opt.config);

  /* Another optimizer config, seed, stream length, teacher presence. */
  c.opt.config.beta2 = 0.99;
  TEST_FAILS(cluda_checkpoint_load(path, &sc), CLUDA_ERR_ARG,
             "incompatible optimizer config: beta2 is 0.999 in the checkpoint, 0.99 in this run");
  c.opt.config = r.opt.config;
  sc.seed = 77;
  TEST_FAILS(cluda_checkpoint_load(path, &sc), CLUDA_ERR_ARG, "seed 1234, this run has 77");
  sc.seed = SEED;
  sc.stream_count = 1;
  TEST_FAILS(cluda_checkpoint_load(path, &sc), CLUDA_ERR_ARG, "has 2 position(s)");
  sc.stream_count = 2;
  sc.teacher_params = sc.teacher_state = NULL;
  TEST_FAILS(cluda_checkpoint_load(path, &sc), CLUDA_ERR_ARG, "has a teacher, this run has none");
  sc.teacher_params = c.tp;
  sc.teacher_state = c.ts;
  c.series[0].capacity = 0;
  TEST_FAILS(cluda_checkpoint_load(path, &sc), CLUDA_ERR_ARG, "capacity is 0");
  c.series[0].capacity = HIST_CAP;
  TEST_CHECK(memcmp(snap, c.sp, m->params.total * sizeof(float)) == 0 && sc.iteration == 0 &&
                 c.opt.step == 0,
             "refused loads left buffers and scalars untouched");

  /* A weight file is not a checkpoint. */
  TEST_OK(cluda_weights_save_h5(bad, m, r.sp, r.ss));
  TEST_FAILS(cluda_checkpoint_load(bad, &sc), CLUDA_ERR_IO, "not a cluda checkpoint");

  /* A flipped byte inside a tensor's data: found by its checksum. */
  size_t size = 0;
  unsigned char *bytes = read_bytes(path, &size);
  haddr_t offset = HADDR_UNDEF;
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f >= 0) {
    char name[200];
    snprintf(name, sizeof name, "/optimizer/v/%s", m->params.items[3].name);
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    offset = H5Dget_offset(d);
    H5Dclose(d);
    H5Fclose(f);
  }
  if (TEST_CHECK(bytes && offset != HADDR_UNDEF && offset + 2 < size, "locate a dataset")) {
    bytes[offset + 1] ^= 0x10;
    write_bytes(bad, bytes, size);
    TEST_FAILS(cluda_checkpoint_load(bad, &sc), CLUDA_ERR_IO, "fails its checksum");
    bytes[offset + 1] ^= 0x10;
    bytes[0] ^= 0xff; /* the HDF5 signature */
    write_bytes(bad, bytes, size);
    TEST_FAILS(cluda_checkpoint_load(bad, &sc), CLUDA_ERR_IO, "not a readable HDF5 file");
    write_bytes(bad, bytes + 0, size / 2);
    TEST_FAILS(cluda_checkpoint_load(bad, &sc), CLUDA_ERR_IO, "not a readable HDF5 file");
  }
  free(bytes);
  TEST_FAILS(cluda_checkpoint_load("/nonexistent/latest.h5", &sc), CLUDA_ERR_IO, "cannot open");

  /* And the good file still loads. */
  TEST_OK(cluda_checkpoint_load(path, &sc));
  run_adopt(&c, &sc);
  same_runs(&r, &c, "load after refused attempts");
  free(snap);
  run_free(&r), run_free(&c);
  remove_tree(work);
}

int main(int argc, char **argv) {
  (void)argc;
  snprintf(temp_dir, sizeof temp_dir, "/tmp/cluda_test_checkpoint_XXXXXX");
  if (!mkdtemp(temp_dir)) {
    perror("mkdtemp");
    return 1;
  }
  cluda_segmentor_config cfg;
  cluda_segmentor model;
  if (TEST_OK(cluda_segmentor_default_config("tiny", CLUDA_HEAD_DAFORMER, &cfg)) &&
      TEST_OK(cluda_segmentor_create(&model, &cfg))) {
    printf("tiny segmentor: %d params (%zu floats), %d state tensors\n", model.params.count,
           model.params.total, model.state.count);
    test_round_trip_and_resume(&model);
    test_naming_and_retention(&model);
    test_no_space(&model);
    test_bad_files(&model);
    cluda_segmentor_free(&model);
  }
  remove_tree(temp_dir);
  return test_finish(argv[0]);
}

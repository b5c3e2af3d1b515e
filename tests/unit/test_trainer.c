/* The training step end to end on a tiny network and tiny synthetic images: finite losses,
 * the EMA teacher formula, Gamma in range, determinism, each loss term's switch, the
 * non-finite stop, and resume from the saved state. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include "cluda/checkpoint.h"
#include "cluda/config.h"
#include "cluda/trainer.h"
#include "testing.h"

static const char *kTiny = "seed: 3\n"
                           "model: {encoder: tiny, embed_dims: 32, channels: 32}\n"
                           "train: {max_iters: 20, batch: 2, crop: [64, 64]}\n"
                           "optim: {warmup_iters: 2}\n"
                           "cl: {size: [12, 12]}\n"
                           "data: {size: [80, 96], train_images: 24, val_images: 4, "
                           "rcs_min_pixels: 4}\n";

/* A trainer from the tiny config plus `sets` (NULL-terminated). */
static int make_trainer(cluda_trainer *t, const char *const *sets) {
  cluda_config cfg;
  if (!TEST_OK(cluda_config_init(&cfg))) return 0;
  int ok = TEST_OK(cluda_config_load_string(&cfg, kTiny, "tiny"));
  for (int i = 0; ok && sets && sets[i]; i++)
    ok = TEST_OK(cluda_config_set(&cfg, sets[i]));
  cluda_train_settings s;
  cluda_segmentor_config mc;
  ok = ok && TEST_OK(cluda_train_settings_from_config(&cfg, &s)) &&
       TEST_OK(cluda_config_to_segmentor_config(&cfg, &mc)) &&
       TEST_OK(cluda_trainer_init(t, &s, &mc, NULL));
  cluda_config_free(&cfg);
  return ok;
}

static float *dup_f32(const float *x, size_t n) {
  float *y = test_alloc_f32((int64_t)n);
  memcpy(y, x, n * sizeof(float));
  return y;
}

static int finite_stats(const cluda_step_stats *st) {
  return isfinite(st->loss_src) && isfinite(st->loss_fd) && isfinite(st->loss_cl_src) &&
         isfinite(st->loss_mix) && isfinite(st->loss_cl_mix) && isfinite(st->grad_norm);
}

static void test_end_to_end(void) {
  cluda_trainer t;
  if (!make_trainer(&t, NULL)) return;
  size_t np = t.model.params.total;
  float *initial = dup_f32(t.student, np);
  cluda_step_stats st;
  int ok = 1;
  for (int i = 0; i < 2 && ok; i++) {
    ok = TEST_OK(cluda_trainer_step(&t, &st));
    TEST_CHECK(finite_stats(&st) && st.loss_src > 0 && st.loss_cl_src > 0 && st.loss_mix > 0 &&
                   st.loss_cl_mix > 0,
               "iteration %d: finite, positive losses (src %g, cl_src %g, mix %g, cl_mix %g)", i,
               st.loss_src, st.loss_cl_src, st.loss_mix, st.loss_cl_mix);
    TEST_CHECK(st.gamma >= 0 && st.gamma <= 1, "Gamma %g in [0, 1]", st.gamma);
  }
  /* The EMA at the start of iteration 2 uses the student after step 1. */
  float *teacher_before = dup_f32(t.teacher, np), *student_before = dup_f32(t.student, np);
  ok = ok && TEST_OK(cluda_trainer_step(&t, &st));
  double a = cluda_ema_alpha(2, t.s.ema_alpha);
  float fa = (float)a, fb = (float)(1.0 - a);
  double worst = 0;
  for (int e = 0; e < t.model.params.count; e++) {
    const cluda_param_info *p = &t.model.params.items[e];
    for (size_t k = p->offset; k < p->offset + p->count; k++) {
      double want = (double)(fa * teacher_before[k] + fb * student_before[k]);
      double err = fabs(t.teacher[k] - want) / (fabs(want) + 1e-12);
      if (err > worst) worst = err;
    }
  }
  TEST_CHECK(ok && worst < 1e-6,
             "teacher = a teacher + (1 - a) student at t = 2 (a = %g; worst "
             "relative error %g)",
             a, worst);
  int changed = 0;
  for (size_t k = 0; k < np; k++)
    changed |= t.student[k] != initial[k];
  TEST_CHECK(changed, "parameters change");
  TEST_CHECK(t.iteration == 3 && t.opt.step == 3, "iteration and optimizer step advance");
  free(initial);
  free(teacher_before);
  free(student_before);
  cluda_trainer_free(&t);
}

static int same_run(const cluda_trainer *a, const cluda_trainer *b) {
  size_t np = a->model.params.total, ns = a->model.state.total;
  return !memcmp(a->student, b->student, np * 4) && !memcmp(a->teacher, b->teacher, np * 4) &&
         !memcmp(a->student_state, b->student_state, ns * 4) &&
         !memcmp(a->teacher_state, b->teacher_state, ns * 4) &&
         !memcmp(a->opt.m, b->opt.m, np * 4) && !memcmp(a->opt.v, b->opt.v, np * 4);
}

static void test_determinism_and_resume(void) {
  cluda_trainer a, b, c;
  if (!make_trainer(&a, NULL) || !make_trainer(&b, NULL) || !make_trainer(&c, NULL)) return;
  for (int i = 0; i < 4; i++)
    TEST_OK(cluda_trainer_step(&a, NULL));
  for (int i = 0; i < 2; i++)
    TEST_OK(cluda_trainer_step(&b, NULL));
  /* "Resume": a fresh trainer given the state after iteration 2 (what a checkpoint holds). */
  size_t np = b.model.params.total, ns = b.model.state.total;
  memcpy(c.student, b.student, np * 4);
  memcpy(c.teacher, b.teacher, np * 4);
  memcpy(c.student_state, b.student_state, ns * 4);
  memcpy(c.teacher_state, b.teacher_state, ns * 4);
  memcpy(c.opt.m, b.opt.m, np * 4);
  memcpy(c.opt.v, b.opt.v, np * 4);
  c.opt.step = b.opt.step;
  c.iteration = b.iteration;
  for (int i = 0; i < 2; i++)
    TEST_OK(cluda_trainer_step(&b, NULL));
  for (int i = 0; i < 2; i++)
    TEST_OK(cluda_trainer_step(&c, NULL));
  TEST_CHECK(same_run(&a, &b), "two runs of 4 iterations are bit-identical");
  TEST_CHECK(same_run(&a, &c), "a run resumed at 2 equals the uninterrupted run at 4 bit for bit");
  cluda_trainer_free(&a);
  cluda_trainer_free(&b);
  cluda_trainer_free(&c);
}

/* The checkpoint state of a trainer (the data stream is the iteration itself). */
static cluda_train_state state_of(cluda_trainer *t, int64_t *stream) {
  cluda_train_state st;
  memset(&st, 0, sizeof st);
  st.model = &t->model;
  st.student_params = t->student;
  st.student_state = t->student_state;
  st.teacher_params = t->teacher;
  st.teacher_state = t->teacher_state;
  st.optimizer = &t->opt;
  st.iteration = t->iteration;
  st.seed = t->s.seed;
  *stream = t->iteration;
  st.stream = stream;
  st.stream_count = 1;
  st.best_metric = NAN;
  st.best_iteration = -1;
  return st;
}

/* Stop at k, save an HDF5 checkpoint, load it into a fresh trainer, run to 2k: bit-identical
 * to the uninterrupted run (issue 4 item 5). */
static void test_checkpoint_resume(void) {
  char dir[] = "/tmp/test_trainer_XXXXXX";
  if (!TEST_CHECK(mkdtemp(dir) != NULL, "temporary directory")) return;
  cluda_trainer a, b, c;
  if (!make_trainer(&a, NULL) || !make_trainer(&b, NULL) || !make_trainer(&c, NULL)) return;
  for (int i = 0; i < 4; i++)
    TEST_OK(cluda_trainer_step(&a, NULL));
  for (int i = 0; i < 2; i++)
    TEST_OK(cluda_trainer_step(&b, NULL));
  int64_t stream = 0, stream_c = -1;
  cluda_train_state sb = state_of(&b, &stream);
  char path[4096];
  TEST_OK(cluda_checkpoint_save(dir, CLUDA_CKPT_LATEST, &sb, 0, path, sizeof path));
  cluda_train_state sc = state_of(&c, &stream_c);
  TEST_OK(cluda_checkpoint_load(path, &sc));
  c.iteration = sc.iteration;
  TEST_CHECK(c.iteration == 2 && stream_c == 2 && c.opt.step == 2, "resumed at iteration 2");
  for (int i = 0; i < 2; i++)
    TEST_OK(cluda_trainer_step(&c, NULL));
  TEST_CHECK(same_run(&a, &c),
             "stop at 2, checkpoint, resume to 4 == uninterrupted 4, bit for bit");
  remove(path);
  char sub[4200];
  snprintf(sub, sizeof sub, "%s/checkpoints", dir);
  rmdir(sub);
  rmdir(dir);
  cluda_trainer_free(&a);
  cluda_trainer_free(&b);
  cluda_trainer_free(&c);
}

/* The gradient of iteration 0 under a set of switches. */
static float *grads_of(const char *const *sets, cluda_step_stats *st, size_t *np) {
  cluda_trainer t;
  if (!make_trainer(&t, sets)) return NULL;
  float *g = NULL;
  if (TEST_OK(cluda_trainer_step(&t, st))) g = dup_f32(t.grads, t.model.params.total);
  *np = t.model.params.total;
  cluda_trainer_free(&t);
  return g;
}

static void test_term_switches(void) {
  /* FD on every cell whose majority class is road or a thing, so it is surely active. */
  const char *full[] = {"uda.fd_classes=[0, 11, 13]", "uda.fd_min_ratio=0", NULL};
  const char *no_cl_src[] = {"uda.fd_classes=[0, 11, 13]", "uda.fd_min_ratio=0", "cl.source=false",
                             NULL};
  const char *no_cl_mix[] = {"uda.fd_classes=[0, 11, 13]", "uda.fd_min_ratio=0", "cl.mix=false",
                             NULL};
  const char *no_fd[] = {"uda.fd_classes=[0, 11, 13]", "uda.fd_min_ratio=0", "uda.fd_lambda=0",
                         NULL};
  const char *no_uda[] = {"uda.fd_classes=[0, 11, 13]", "uda.fd_min_ratio=0", "uda.enabled=false",
                          NULL};
  /* Linearity of the source terms: grad(CE + CL) = grad(CE) + grad(CL) up to rounding. */
  const char *ce_only[] = {"uda.enabled=false", "uda.fd_lambda=0", "cl.source=false", NULL};
  const char *cl_only[] = {"uda.enabled=false", "uda.fd_lambda=0", "train.source_ce=false", NULL};
  const char *ce_cl[] = {"uda.enabled=false", "uda.fd_lambda=0", NULL};
  cluda_step_stats s_full, s_ncs, s_ncm, s_nfd, s_nuda, s_ce, s_cl, s_cecl;
  size_t np = 0;
  float *g_full = grads_of(full, &s_full, &np), *g_ncs = grads_of(no_cl_src, &s_ncs, &np);
  float *g_ncm = grads_of(no_cl_mix, &s_ncm, &np), *g_nfd = grads_of(no_fd, &s_nfd, &np);
  float *g_nuda = grads_of(no_uda, &s_nuda, &np);
  float *g_ce = grads_of(ce_only, &s_ce, &np), *g_cl = grads_of(cl_only, &s_cl, &np);
  float *g_cecl = grads_of(ce_cl, &s_cecl, &np);
  if (!g_full || !g_ncs || !g_ncm || !g_nfd || !g_nuda || !g_ce || !g_cl || !g_cecl) return;
  TEST_CHECK(s_full.fd_active && s_full.loss_fd > 0, "FD active in the full run (%lld cells)",
             (long long)s_full.fd_cells);
  TEST_CHECK(s_ncs.loss_cl_src == 0 && memcmp(g_full, g_ncs, np * 4) != 0,
             "cl.source=false: no source CL, other gradients");
  TEST_CHECK(s_ncm.loss_cl_mix == 0 && s_ncm.loss_mix == s_full.loss_mix &&
                 memcmp(g_full, g_ncm, np * 4) != 0,
             "cl.mix=false: no mixed CL, same mixed CE, other gradients");
  TEST_CHECK(s_nfd.loss_fd == 0 && !s_nfd.fd_active && memcmp(g_full, g_nfd, np * 4) != 0,
             "uda.fd_lambda=0: no FD, other gradients");
  TEST_CHECK(s_nuda.loss_mix == 0 && s_nuda.loss_cl_mix == 0 && isnan(s_nuda.gamma) &&
                 memcmp(g_full, g_nuda, np * 4) != 0,
             "uda.enabled=false: no mixed terms, other gradients");
  TEST_CHECK(s_full.loss_src == s_ncs.loss_src && s_full.loss_src == s_nuda.loss_src,
             "the source CE does not depend on the other switches");
  TEST_CHECK(s_cl.loss_src == 0 && s_ce.loss_cl_src == 0, "train.source_ce / cl.source off");
  double num = 0, den = 0;
  for (size_t k = 0; k < np; k++) {
    double d = (double)g_cecl[k] - ((double)g_ce[k] + (double)g_cl[k]);
    num += d * d;
    den += (double)g_cecl[k] * g_cecl[k];
  }
  TEST_CHECK(den > 0 && sqrt(num / den) < 1e-4,
             "grad(CE + CL) = grad(CE) + grad(CL) (relative error %g)", sqrt(num / den));
  free(g_full);
  free(g_ncs);
  free(g_ncm);
  free(g_nfd);
  free(g_nuda);
  free(g_ce);
  free(g_cl);
  free(g_cecl);
}

static void test_nonfinite_stop(void) {
  cluda_trainer t;
  if (!make_trainer(&t, NULL)) return;
  t.hooks.nan_iteration = 1;
  t.hooks.nan_term = "loss_cl_mix";
  TEST_OK(cluda_trainer_step(&t, NULL));
  size_t np = t.model.params.total;
  float *before = dup_f32(t.student, np);
  cluda_status s = cluda_trainer_step(&t, NULL);
  TEST_FAILS(s, CLUDA_ERR_ARG, "iteration 1");
  TEST_CHECK(strstr(s.message, "loss_cl_mix") != NULL, "the message names the term: %s", s.message);
  TEST_CHECK(!memcmp(before, t.student, np * 4) && t.iteration == 1,
             "no optimizer step after a non-finite term");
  free(before);
  cluda_trainer_free(&t);
}

static void test_bad_settings(void) {
  cluda_config cfg;
  if (!TEST_OK(cluda_config_init(&cfg))) return;
  TEST_OK(cluda_config_load_string(&cfg, kTiny, "tiny"));
  cluda_train_settings s;
  TEST_OK(cluda_config_set(&cfg, "train.crop=[48, 64]"));
  TEST_FAILS(cluda_train_settings_from_config(&cfg, &s), CLUDA_ERR_ARG, "train.crop");
  TEST_OK(cluda_config_set(&cfg, "train.crop=[128, 128]"));
  TEST_FAILS(cluda_train_settings_from_config(&cfg, &s), CLUDA_ERR_ARG, "data.size");
  cluda_config_free(&cfg);
}

int main(void) {
  test_end_to_end();
  test_determinism_and_resume();
  test_checkpoint_resume();
  test_term_switches();
  test_nonfinite_stop();
  test_bad_settings();
  return test_finish("test_trainer");
}

/* Data-parallel training equals one process on the global batch (issue: "three training
 * iterations with np = R x batch 1 give the same parameters as np = 1 x batch R fed the same
 * samples"). Every rank trains with the MPI communicator on 1 source + 1 target image, and
 * also, alone, a one-process trainer on the R images of the global batch; after three
 * iterations the student, teacher and AdamW moments must agree within 1e-5 of their scale,
 * and the global losses and Gamma of every step too. The samples, augmentation and dropout
 * masks are keyed by global sample index, and model.sync_bn makes BatchNorm see the global
 * batch, so the two runs compute the same function; every loss term is on (UDA, FD with a
 * low thing ratio so it is active, source and mixed CL over the global batch, RCS).
 * Then: model.sync_bn off (per-rank BN, decisions.md 22) must differ, the replicas stay
 * bit-identical (fingerprints), and a resumed state broadcast from rank 0 continues on every
 * rank identically.
 * mpi-ranks: 2 3 */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/config.h"
#include "cluda/trainer.h"
#include "mpi_testing.h"
#include "testing.h"

static const char *kTiny = "seed: 5\n"
                           "model: {encoder: tiny, embed_dims: 16, channels: 16, sync_bn: true}\n"
                           "train: {max_iters: 10, batch: 1, crop: [64, 64]}\n"
                           "optim: {warmup_iters: 1}\n"
                           "uda: {fd_min_ratio: 0.05, pseudo_threshold: 0.1}\n"
                           "cl: {size: [8, 8]}\n"
                           "data: {size: [80, 96], train_images: 12, val_images: 2, "
                           "rcs_min_pixels: 4}\n";

static int make_trainer(cluda_trainer *t, cluda_comm *comm, int batch, int sync_bn) {
  cluda_config cfg;
  if (!TEST_OK(cluda_config_init(&cfg))) return 0;
  char set_batch[64], set_sync[64];
  snprintf(set_batch, sizeof set_batch, "train.batch=%d", batch);
  snprintf(set_sync, sizeof set_sync, "model.sync_bn=%s", sync_bn ? "true" : "false");
  int ok = TEST_OK(cluda_config_load_string(&cfg, kTiny, "tiny")) &&
           TEST_OK(cluda_config_set(&cfg, set_batch)) && TEST_OK(cluda_config_set(&cfg, set_sync));
  cluda_train_settings s;
  cluda_segmentor_config mc;
  ok = ok && TEST_OK(cluda_train_settings_from_config(&cfg, &s)) &&
       TEST_OK(cluda_config_to_segmentor_config(&cfg, &mc)) &&
       TEST_OK(cluda_trainer_init(t, &s, &mc, comm));
  cluda_config_free(&cfg);
  return ok;
}

/* max |a - b| / max(max |b|, floor) over n floats */
static double rel_diff(const float *a, const float *b, size_t n, double floor) {
  double worst = 0.0, scale = floor;
  for (size_t i = 0; i < n; i++) {
    worst = fmax(worst, fabs((double)a[i] - b[i]));
    scale = fmax(scale, fabs((double)b[i]));
  }
  return worst / scale;
}

static int close_stats(const cluda_step_stats *a, const cluda_step_stats *b) {
  const double x[6] = {a->loss_src, a->loss_fd,     a->loss_cl_src,
                       a->loss_mix, a->loss_cl_mix, a->gamma};
  const double y[6] = {b->loss_src, b->loss_fd,     b->loss_cl_src,
                       b->loss_mix, b->loss_cl_mix, b->gamma};
  for (int i = 0; i < 6; i++)
    if (!(fabs(x[i] - y[i]) <= 1e-5 * fabs(y[i]) + 1e-6)) return 0;
  return a->fd_active == b->fd_active;
}

/* Trains `iters` steps of both; returns the worst student difference (relative). */
static void check_equivalence(cluda_comm *comm, int sync_bn) {
  const int R = comm->size;
  cluda_trainer par, one;
  if (!make_trainer(&par, comm, 1, sync_bn)) return;
  if (!make_trainer(&one, NULL, R, sync_bn)) {
    cluda_trainer_free(&par);
    return;
  }
  TEST_OK(cluda_trainer_broadcast_state(&par));
  int stats_ok = 1, fd_seen = 0;
  for (int it = 0; it < 3; it++) {
    cluda_step_stats a, b;
    if (!TEST_OK(cluda_trainer_step(&par, &a)) || !TEST_OK(cluda_trainer_step(&one, &b))) break;
    stats_ok &= close_stats(&a, &b);
    fd_seen |= a.fd_active;
    if (sync_bn && comm->rank == 0 && !close_stats(&a, &b))
      printf("  step %d: src %.7g/%.7g fd %.7g/%.7g cl %.7g/%.7g mix %.7g/%.7g clmix %.7g/%.7g "
             "gamma %.7g/%.7g\n",
             it, a.loss_src, b.loss_src, a.loss_fd, b.loss_fd, a.loss_cl_src, b.loss_cl_src,
             a.loss_mix, b.loss_mix, a.loss_cl_mix, b.loss_cl_mix, a.gamma, b.gamma);
  }
  const size_t np = par.model.params.total;
  double ds = rel_diff(par.student, one.student, np, 1e-3);
  double dt = rel_diff(par.teacher, one.teacher, np, 1e-3);
  double dm = rel_diff(par.opt.m, one.opt.m, np, 1e-12);
  if (sync_bn) {
    TEST_CHECK(stats_ok && fd_seen,
               "%d ranks x 1: the global losses and Gamma of every step equal 1 rank x %d (FD "
               "active: %d)",
               R, R, fd_seen);
    if (comm->rank == 0)
      printf("  %d ranks x 1 vs 1 x %d: student %.3g, teacher %.3g, AdamW m %.3g (relative)\n", R,
             R, ds, dt, dm);
    TEST_CHECK(ds <= 1e-5 && dt <= 1e-5,
               "%d ranks x 1 = 1 rank x %d after 3 iterations: student %.3g, teacher %.3g "
               "(relative to the largest parameter)",
               R, R, ds, dt);
    TEST_CHECK(dm <= 1e-4, "AdamW first moments agree: %.3g", dm);
    TEST_OK(cluda_trainer_check_replicas(&par));
  } else {
    /* per-rank BatchNorm statistics are a different function of the global batch */
    TEST_CHECK(!stats_ok || ds > 1e-5,
               "without sync_bn the %d-rank run differs from one process (student %.3g)", R, ds);
  }
  cluda_trainer_free(&par);
  cluda_trainer_free(&one);
}

/* A state broadcast from rank 0 (what a resume does) makes every rank continue identically,
 * and a rank whose parameters drift is caught by the fingerprints. */
static void check_broadcast_and_divergence(cluda_comm *comm) {
  cluda_trainer t;
  if (!make_trainer(&t, comm, 1, 1)) return;
  const size_t np = t.model.params.total;
  if (comm->rank != 0) {
    t.student[np / 2] += 1.0f; /* a rank with different weights... */
    t.iteration = 7;
  }
  TEST_OK(cluda_trainer_broadcast_state(&t)); /* ...gets rank 0's */
  TEST_CHECK(t.iteration == 0, "the iteration is rank 0's after the broadcast");
  TEST_OK(cluda_trainer_check_replicas(&t));
  cluda_step_stats st;
  TEST_OK(cluda_trainer_step(&t, &st));
  TEST_OK(cluda_trainer_check_replicas(&t));
  if (comm->rank == comm->size - 1) t.teacher[3] *= 2.0f;
  TEST_FAILS(cluda_trainer_check_replicas(&t), CLUDA_ERR_COMM, "teacher parameters diverged");
  cluda_trainer_free(&t);
}

int main(int argc, char **argv) {
  cluda_comm comm;
  mpi_test_init(&comm, &argc, &argv);
  check_equivalence(&comm, 1);
  check_equivalence(&comm, 0);
  check_broadcast_and_divergence(&comm);
  return mpi_test_finish(&comm, argv[0]);
}

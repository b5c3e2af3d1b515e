/* The global-batch contrastive loss over R ranks (decisions.md 14, systems.md 2.2): each of
 * R ranks holds b images' rows; cluda_contrastive_rows_step gathers the contrast set, and the
 * backward reduce-scatters the gradients. The average of the ranks' losses and each rank's row
 * gradients must equal the one-process computation over all R b images (every rank recomputes
 * it locally from the same seed). Also the two wrong gradients of systems.md 2.2 (keeping
 * only the own slice, averaging instead of summing) must NOT match, so the test can tell.
 * mpi-ranks: 1 2 3 4 */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/contrastive.h"
#include "mpi_testing.h"
#include "testing.h"

enum { ROWS_PER_IMAGE = 37, IMAGES = 2, DIMS = 24 };

typedef struct global_data {
  int64_t rows; /* all ranks */
  float *x, *w;
  uint8_t *y;
} global_data;

/* Unit rows, labels in 0..5 plus some ignored pixels, weights in [0, 1): the same on every
 * rank (seeded), so each rank can slice its block and recompute the whole batch. */
static global_data make_global(int ranks, uint64_t seed) {
  global_data g;
  g.rows = (int64_t)ranks * IMAGES * ROWS_PER_IMAGE;
  g.x = test_alloc_f32(g.rows * DIMS);
  g.w = test_alloc_f32(g.rows);
  g.y = test_alloc((size_t)g.rows);
  test_fill_uniform(g.x, g.rows * DIMS, -1.0f, 1.0f, seed, 0);
  test_fill_uniform(g.w, g.rows, 0.0f, 1.0f, seed, 1);
  float *u = test_alloc_f32(g.rows);
  test_fill_uniform(u, g.rows, 0.0f, 1.0f, seed, 2);
  for (int64_t i = 0; i < g.rows; i++) {
    double n = 0;
    for (int d = 0; d < DIMS; d++)
      n += (double)g.x[i * DIMS + d] * g.x[i * DIMS + d];
    for (int d = 0; d < DIMS; d++)
      g.x[i * DIMS + d] = (float)(g.x[i * DIMS + d] / sqrt(n));
    /* labels 6, 7 are things in the default split when thing = {6, 7, 11, ...} */
    g.y[i] = u[i] < 0.08f ? 255 : (uint8_t)((int)(u[i] * 100) % 9);
  }
  free(u);
  return g;
}

static void free_global(global_data *g) {
  free(g->x);
  free(g->w);
  free(g->y);
}

typedef struct step_out {
  double loss;
  float *d; /* [rows, DIMS] */
} step_out;

/* One call of the step on `rows` rows with a self communicator of size 1. */
static step_out one_process(const cluda_contrastive_params *p, const float *x, const uint8_t *y,
                            const float *w, int64_t rows) {
  cluda_comm self;
  cluda_comm_init_self(&self);
  cluda_ctx ctx = test_cpu_context(cluda_contrastive_scratch_bytes(p, rows, rows) + 4096);
  step_out o = {0, test_alloc_f32(rows * DIMS)};
  float *stats = test_alloc_f32(rows * CLUDA_CL_STATS_COLS), *da = test_alloc_f32(rows * DIMS);
  cluda_contrastive_buffers buf = {stats, da, NULL, NULL, NULL, NULL};
  cluda_tensor tx = cluda_tensor_2d(CLUDA_F32, (void *)x, rows, DIMS);
  cluda_tensor ty = cluda_tensor_1d(CLUDA_U8, (void *)y, rows);
  cluda_tensor tw = cluda_tensor_1d(CLUDA_F32, (void *)w, rows);
  cluda_tensor td = cluda_tensor_2d(CLUDA_F32, o.d, rows, DIMS);
  TEST_OK(
      cluda_contrastive_rows_step(&ctx, &self, p, 1, &tx, &ty, w ? &tw : NULL, &buf, &o.loss, &td));
  free(stats);
  free(da);
  test_context_free(&ctx);
  return o;
}

static void check_case(cluda_comm *comm, const char *name, const cluda_contrastive_params *p,
                       int weighted, uint64_t seed) {
  const int R = comm->size, r = comm->rank;
  global_data g = make_global(R, seed);
  const int64_t M = IMAGES * ROWS_PER_IMAGE, off = (int64_t)r * M;

  /* the reference: all R b images in one process */
  step_out ref = one_process(p, g.x, g.y, weighted ? g.w : NULL, g.rows);

  /* this rank's share through the communicator */
  cluda_ctx ctx = test_cpu_context(cluda_contrastive_scratch_bytes(p, M, g.rows) + 4096);
  float *stats = test_alloc_f32(M * CLUDA_CL_STATS_COLS), *da = test_alloc_f32(M * DIMS);
  float *all_rows = test_alloc_f32(g.rows * DIMS), *all_drows = test_alloc_f32(g.rows * DIMS);
  float *all_w = test_alloc_f32(g.rows);
  uint8_t *all_y = test_alloc((size_t)g.rows);
  cluda_contrastive_buffers buf = {stats, da, all_rows, all_drows, all_w, all_y};
  float *d = test_alloc_f32(M * DIMS);
  cluda_tensor tx = cluda_tensor_2d(CLUDA_F32, g.x + off * DIMS, M, DIMS);
  cluda_tensor ty = cluda_tensor_1d(CLUDA_U8, g.y + off, M);
  cluda_tensor tw = cluda_tensor_1d(CLUDA_F32, g.w + off, M);
  cluda_tensor td = cluda_tensor_2d(CLUDA_F32, d, M, DIMS);
  double loss = NAN;
  TEST_OK(cluda_contrastive_rows_step(&ctx, comm, p, 1, &tx, &ty, weighted ? &tw : NULL, &buf,
                                      &loss, &td));
  double mean = 0.0;
  TEST_OK(cluda_comm_allreduce(comm, &loss, &mean, 1, CLUDA_COMM_F64, CLUDA_COMM_AVG));
  TEST_CHECK(fabs(mean - ref.loss) <= 1e-5 * fabs(ref.loss) + 1e-7,
             "%s, %d ranks: mean of the ranks' losses %.9g equals the one-process loss %.9g", name,
             R, mean, ref.loss);
  /* The trainer averages parameter gradients over ranks, so d(sum of the ranks' losses)/d rows
   * must be R x the one-process gradient of the mean loss. */
  float *want = test_alloc_f32(M * DIMS);
  for (int64_t i = 0; i < M * DIMS; i++)
    want[i] = (float)R * ref.d[off * DIMS + i];
  char what[160];
  snprintf(what, sizeof what, "%s, %d ranks, rank %d: row gradients = R x one process", name, R, r);
  test_compare_f32(what, d, want, M * DIMS, 1e-5, 1e-7);

  if (R > 1) {
    /* the two classic mistakes give a different answer: the own slice only, and AVG */
    float *own = test_alloc_f32(M * DIMS);
    for (int64_t i = 0; i < M * DIMS; i++)
      own[i] = all_drows[off * DIMS + i] + da[i];
    double worst_own = 0.0, worst_avg = 0.0, scale = 0.0;
    for (int64_t i = 0; i < M * DIMS; i++) {
      worst_own = fmax(worst_own, fabs((double)own[i] - want[i]));
      double avg = ((double)d[i] - da[i]) / R + da[i];
      worst_avg = fmax(worst_avg, fabs(avg - want[i]));
      scale = fmax(scale, fabs((double)want[i]));
    }
    TEST_CHECK(worst_own > 1e-3 * scale && worst_avg > 1e-3 * scale,
               "%s: own-slice (%.3g) and averaged (%.3g) gradients differ from the exact one", name,
               worst_own, worst_avg);
    free(own);
  }
  free(want);
  free(d);
  free(stats);
  free(da);
  free(all_rows);
  free(all_drows);
  free(all_w);
  free(all_y);
  free(ref.d);
  test_context_free(&ctx);
  free_global(&g);
}

int main(int argc, char **argv) {
  cluda_comm comm;
  mpi_test_init(&comm, &argc, &argv);
  cluda_contrastive_params p;
  cluda_contrastive_default_params(&p);
  p.num_classes = 9;
  p.tile_cols = 29; /* several tiles, a ragged last one */
  check_case(&comm, "paper default (separate, anchor weights)", &p, 1, 11);
  check_case(&comm, "unweighted", &p, 0, 12);
  cluda_contrastive_params q = p;
  q.pairs = CLUDA_CL_PAIRS_ALL;
  q.ref_ignore_as_class = 1;
  q.ref_pair_weight = 1;
  q.ref_half = 1;
  q.tau = 0.1f;
  check_case(&comm, "reference options (all pairs, 255 a class, pair weights, half, tau 0.1)", &q,
             1, 13);
  cluda_contrastive_params st = p;
  st.pairs = CLUDA_CL_PAIRS_STUFF_ONLY;
  check_case(&comm, "stuff only", &st, 1, 14);
  return mpi_test_finish(&comm, argv[0]);
}

/* Synchronised BatchNorm (ctx->bn_sync, SyncBatchNorm): a batch of N images split over the
 * ranks (uneven shares, odd H and W, C = 5 and 40, a one-row-per-rank batch that only the
 * global count allows, and C = 2100, two channel panels) trained with synchronised
 * statistics equals one process's BatchNorm over the whole batch: each rank's y and dx
 * slice, the running and saved statistics, and dgamma / dbeta summed over the ranks; it also
 * matches a double reference of the global batch (forward) and central finite differences of
 * the global loss sum over all ranks (backward). The statistics are bit-identical on every
 * rank and for 1 and 2 threads, and inference ignores bn_sync.
 * mpi-ranks: 2 3 */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "mpi_testing.h"
#include "testing.h"

/* The whole batch, built from the same seed on every rank. */
typedef struct batch {
  int n, h, w, c; /* n images [h, w, c] */
  float *x, *dy, *g, *b, *rm0, *rv0;
} batch;

/* What one training forward + backward produced. */
typedef struct bn_out {
  float *y, *dx, *rm, *rv, *sm, *sr, *dg, *db;
} bn_out;

static const float EPS = 1e-5f, MOMENTUM = 0.1f;

static int64_t image_elems(const batch *B) { return (int64_t)B->h * B->w * B->c; }

static batch batch_make(int n, int h, int w, int c, uint64_t seed) {
  batch B = {n, h, w, c, NULL, NULL, NULL, NULL, NULL, NULL};
  const int64_t e = n * image_elems(&B);
  B.x = test_alloc_f32(e), B.dy = test_alloc_f32(e);
  B.g = test_alloc_f32(c), B.b = test_alloc_f32(c);
  B.rm0 = test_alloc_f32(c), B.rv0 = test_alloc_f32(c);
  test_fill_uniform(B.x, e, 0.5f, 2.5f, seed, 0); /* a mean away from 0 */
  test_fill_uniform(B.dy, e, -1.0f, 1.0f, seed, 1);
  test_fill_uniform(B.g, c, 0.5f, 1.5f, seed, 2);
  test_fill_uniform(B.b, c, -0.5f, 0.5f, seed, 3);
  test_fill_uniform(B.rm0, c, -0.5f, 0.5f, seed, 4);
  test_fill_uniform(B.rv0, c, 0.5f, 1.5f, seed, 5);
  return B;
}

static void batch_free(batch *B) {
  free(B->x), free(B->dy), free(B->g), free(B->b), free(B->rm0), free(B->rv0);
}

/* Training forward then backward over images [i0, i0 + ni) of B; dgamma / dbeta start at 0. */
static bn_out bn_run(cluda_ctx *ctx, const batch *B, int i0, int ni) {
  const int c = B->c;
  const int64_t e = ni * image_elems(B), off = i0 * image_elems(B);
  bn_out o = {test_alloc_f32(e), test_alloc_f32(e), test_alloc_f32(c), test_alloc_f32(c),
              test_alloc_f32(c), test_alloc_f32(c), test_alloc_f32(c), test_alloc_f32(c)};
  memcpy(o.rm, B->rm0, (size_t)c * 4);
  memcpy(o.rv, B->rv0, (size_t)c * 4);
  memset(o.dg, 0, (size_t)c * 4);
  memset(o.db, 0, (size_t)c * 4);
  cluda_batchnorm_params p = {EPS, MOMENTUM, 1};
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, B->x + off, ni, B->h, B->w, c),
               tdy = cluda_tensor_4d(CLUDA_F32, B->dy + off, ni, B->h, B->w, c),
               ty = cluda_tensor_4d(CLUDA_F32, o.y, ni, B->h, B->w, c),
               tdx = cluda_tensor_4d(CLUDA_F32, o.dx, ni, B->h, B->w, c);
  cluda_tensor tg = cluda_tensor_1d(CLUDA_F32, B->g, c), tb = cluda_tensor_1d(CLUDA_F32, B->b, c),
               trm = cluda_tensor_1d(CLUDA_F32, o.rm, c), trv = cluda_tensor_1d(CLUDA_F32, o.rv, c),
               tsm = cluda_tensor_1d(CLUDA_F32, o.sm, c), tsr = cluda_tensor_1d(CLUDA_F32, o.sr, c),
               tdg = cluda_tensor_1d(CLUDA_F32, o.dg, c), tdb = cluda_tensor_1d(CLUDA_F32, o.db, c);
  TEST_OK(cluda_batchnorm_forward(ctx, &p, &tx, &tg, &tb, &trm, &trv, &ty, &tsm, &tsr));
  TEST_OK(cluda_batchnorm_backward(ctx, &p, &tx, &tg, &tsm, &tsr, &tdy, &tdx, &tdg, &tdb));
  return o;
}

static void bn_out_free(bn_out *o) {
  free(o->y), free(o->dx), free(o->rm), free(o->rv), free(o->sm), free(o->sr), free(o->dg),
      free(o->db);
}

/* ---- double reference over the whole batch ---- */

typedef struct ref {
  double *x, *g, *b, *r; /* r: the loss weights (dy), L = sum r y over every rank's rows */
  int64_t rows;
  int c;
} ref;

/* Forward in double; mean / var (biased) receive the statistics when set. Returns sum r y. */
static double ref_run(const ref *p, double *y, double *mean, double *var) {
  double l = 0.0;
  for (int ch = 0; ch < p->c; ch++) {
    double m = 0.0, v = 0.0;
    for (int64_t i = 0; i < p->rows; i++)
      m += p->x[i * p->c + ch];
    m /= (double)p->rows;
    for (int64_t i = 0; i < p->rows; i++) {
      double d = p->x[i * p->c + ch] - m;
      v += d * d;
    }
    v /= (double)p->rows;
    if (mean) mean[ch] = m, var[ch] = v;
    double rs = 1.0 / sqrt(v + EPS);
    for (int64_t i = 0; i < p->rows; i++) {
      double yi = (p->x[i * p->c + ch] - m) * rs * p->g[ch] + p->b[ch];
      if (y) y[i * p->c + ch] = yi;
      l += p->r[i * p->c + ch] * yi;
    }
  }
  return l;
}

static double ref_loss(const double *unused, void *user) {
  (void)unused;
  return ref_run(user, NULL, NULL, NULL);
}

/* This rank's synchronised results against the double reference of the whole batch: y, the
 * statistics, and finite differences of the global loss for its dx slice and (summed over
 * ranks) dgamma / dbeta. */
static void check_reference(const batch *B, const bn_out *o, const float *dg_sum,
                            const float *db_sum, int64_t off, int64_t e, const char *what) {
  const int c = B->c;
  const int64_t rows = (int64_t)B->n * B->h * B->w, all = rows * c;
  double *xd = test_alloc_f64(all), *rd = test_alloc_f64(all), *gd = test_alloc_f64(c),
         *bd = test_alloc_f64(c), *want = test_alloc_f64(all), *wm = test_alloc_f64(c),
         *wv = test_alloc_f64(c);
  test_to_double(B->x, xd, all);
  test_to_double(B->dy, rd, all);
  test_to_double(B->g, gd, c);
  test_to_double(B->b, bd, c);
  ref R = {xd, gd, bd, rd, rows, c};
  char msg[160];

  ref_run(&R, want, wm, wv);
  snprintf(msg, sizeof msg, "%s: y slice vs double reference of the whole batch", what);
  test_compare(msg, o->y, want + off, e, 1e-5, 1e-5);
  snprintf(msg, sizeof msg, "%s: save_mean vs reference", what);
  test_compare(msg, o->sm, wm, c, 1e-6, 1e-6);
  for (int i = 0; i < c; i++)
    want[i] = (1.0 - MOMENTUM) * B->rm0[i] + (double)MOMENTUM * wm[i];
  snprintf(msg, sizeof msg, "%s: running_mean vs reference", what);
  test_compare(msg, o->rm, want, c, 1e-6, 1e-6);
  for (int i = 0; i < c; i++)
    want[i] = (1.0 - MOMENTUM) * B->rv0[i] + (double)MOMENTUM * wv[i] * rows / (rows - 1.0);
  snprintf(msg, sizeof msg, "%s: running_var vs reference (unbiased over the global count)", what);
  test_compare(msg, o->rv, want, c, 1e-6, 1e-6);
  for (int i = 0; i < c; i++)
    want[i] = 1.0 / sqrt(wv[i] + EPS);
  snprintf(msg, sizeof msg, "%s: save_rstd vs reference", what);
  test_compare(msg, o->sr, want, c, 1e-5, 0.0);

  /* perturbing only this rank's elements of the global input */
  test_finite_difference(ref_loss, &R, xd + off, e, 1e-6, want);
  snprintf(msg, sizeof msg, "%s: dx slice vs finite differences of the global loss", what);
  test_compare(msg, o->dx, want, e, 1e-4, 1e-5);
  test_finite_difference(ref_loss, &R, gd, c, 1e-6, want);
  snprintf(msg, sizeof msg, "%s: dgamma summed over ranks vs finite differences", what);
  test_compare(msg, dg_sum, want, c, 1e-4, 1e-5);
  test_finite_difference(ref_loss, &R, bd, c, 1e-6, want);
  snprintf(msg, sizeof msg, "%s: dbeta summed over ranks vs finite differences", what);
  test_compare(msg, db_sum, want, c, 1e-4, 1e-5);
  free(xd), free(rd), free(gd), free(bd), free(want), free(wm), free(wv);
}

/* n images of [h, w, c] split over the ranks: synchronised on each rank's share against one
 * process's BatchNorm of the whole batch; with_reference adds the double reference and finite
 * differences (small shapes). */
static void check_sync(cluda_comm *comm, int n, int h, int w, int c, int with_reference,
                       uint64_t seed) {
  batch B = batch_make(n, h, w, c, seed);
  const int i0 = n * comm->rank / comm->size, i1 = n * (comm->rank + 1) / comm->size;
  const int64_t off = i0 * image_elems(&B), e = (i1 - i0) * image_elems(&B);
  char what[96], msg[160];
  snprintf(what, sizeof what, "sync batchnorm %d ranks, rank %d: images %d..%d of [%d,%d,%d,%d]",
           comm->size, comm->rank, i0, i1 - 1, n, h, w, c);

  cluda_ctx one = cluda_cpu_context(NULL), sync = cluda_cpu_context(NULL);
  sync.bn_sync = comm;
  bn_out full = bn_run(&one, &B, 0, n), mine = bn_run(&sync, &B, i0, i1 - i0);

  snprintf(msg, sizeof msg, "%s: y slice equals the whole-batch forward", what);
  test_compare_f32(msg, mine.y, full.y + off, e, 1e-5, 1e-6);
  snprintf(msg, sizeof msg, "%s: dx slice equals the whole-batch backward", what);
  test_compare_f32(msg, mine.dx, full.dx + off, e, 1e-5, 1e-6);
  snprintf(msg, sizeof msg, "%s: save_mean", what);
  test_compare_f32(msg, mine.sm, full.sm, c, 1e-5, 1e-7);
  snprintf(msg, sizeof msg, "%s: save_rstd", what);
  test_compare_f32(msg, mine.sr, full.sr, c, 1e-5, 0.0);
  snprintf(msg, sizeof msg, "%s: running_mean", what);
  test_compare_f32(msg, mine.rm, full.rm, c, 1e-5, 1e-7);
  snprintf(msg, sizeof msg, "%s: running_var", what);
  test_compare_f32(msg, mine.rv, full.rv, c, 1e-5, 0.0);

  /* dgamma / dbeta are this rank's share; the trainer's gradient all-reduce adds them */
  float *dg_sum = test_alloc_f32(c), *db_sum = test_alloc_f32(c);
  TEST_OK(cluda_comm_allreduce(comm, mine.dg, dg_sum, (size_t)c, CLUDA_COMM_F32, CLUDA_COMM_SUM));
  TEST_OK(cluda_comm_allreduce(comm, mine.db, db_sum, (size_t)c, CLUDA_COMM_F32, CLUDA_COMM_SUM));
  snprintf(msg, sizeof msg, "%s: dgamma summed over ranks", what);
  test_compare_f32(msg, dg_sum, full.dg, c, 1e-5, 1e-5);
  snprintf(msg, sizeof msg, "%s: dbeta summed over ranks", what);
  test_compare_f32(msg, db_sum, full.db, c, 1e-5, 1e-5);

  /* replicated state: the synchronised statistics carry the same bits on every rank */
  snprintf(msg, sizeof msg, "%s: running / saved statistics", what);
  const float *stats[4] = {mine.rm, mine.rv, mine.sm, mine.sr};
  for (int i = 0; i < 4; i++)
    TEST_OK(cluda_comm_check_replicated(comm, stats[i], (size_t)c * 4, msg));

  if (with_reference) check_reference(&B, &mine, dg_sum, db_sum, off, e, what);
  free(dg_sum), free(db_sum);
  bn_out_free(&full), bn_out_free(&mine);
  batch_free(&B);
}

/* A share above the threading threshold: synchronised results bit-identical for 1 and 2
 * threads (local partials in fixed chunks, the all-reduce outside the parallel regions). */
static void check_threads(cluda_comm *comm) {
  batch B = batch_make(4, 33, 31, 40, 23);
  const int i0 = B.n * comm->rank / comm->size, i1 = B.n * (comm->rank + 1) / comm->size;
  const int64_t e = (i1 - i0) * image_elems(&B);
  cluda_ctx sync = cluda_cpu_context(NULL);
  sync.bn_sync = comm;
  bn_out o[2];
  for (int t = 0; t < 2; t++) {
    omp_set_num_threads(t + 1);
    o[t] = bn_run(&sync, &B, i0, i1 - i0);
  }
  omp_set_num_threads(1);
  int same =
      memcmp(o[0].y, o[1].y, (size_t)e * 4) == 0 && memcmp(o[0].dx, o[1].dx, (size_t)e * 4) == 0;
  const float *a[6] = {o[0].rm, o[0].rv, o[0].sm, o[0].sr, o[0].dg, o[0].db},
              *b[6] = {o[1].rm, o[1].rv, o[1].sm, o[1].sr, o[1].dg, o[1].db};
  for (int i = 0; i < 6; i++)
    same = same && memcmp(a[i], b[i], (size_t)B.c * 4) == 0;
  TEST_CHECK(same, "sync batchnorm rank %d, %lld elements: bit-identical for 1 and 2 threads",
             comm->rank, (long long)e);
  bn_out_free(&o[0]), bn_out_free(&o[1]);
  batch_free(&B);
}

/* Inference uses the running statistics: bn_sync changes nothing (test_batchnorm checks
 * that it communicates nothing). */
static void check_inference(cluda_comm *comm) {
  enum { H = 3, W = 5, C = 5, E = H * W * C };
  float x[E], y[2][E], sm[2][C], sr[2][C], g[C], b[C], rm[C], rv[C];
  test_fill_uniform(x, E, -1.0f, 1.0f, 29 + (uint64_t)comm->rank, 0);
  test_fill_uniform(g, C, 0.5f, 1.5f, 29, 1);
  test_fill_uniform(b, C, -0.5f, 0.5f, 29, 2);
  test_fill_uniform(rm, C, -0.5f, 0.5f, 29, 3);
  test_fill_uniform(rv, C, 0.5f, 1.5f, 29, 4);
  cluda_batchnorm_params p = {EPS, MOMENTUM, 0};
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, 1, H, W, C),
               tg = cluda_tensor_1d(CLUDA_F32, g, C), tb = cluda_tensor_1d(CLUDA_F32, b, C),
               trm = cluda_tensor_1d(CLUDA_F32, rm, C), trv = cluda_tensor_1d(CLUDA_F32, rv, C);
  for (int s = 0; s < 2; s++) {
    cluda_ctx ctx = cluda_cpu_context(NULL);
    ctx.bn_sync = s ? comm : NULL;
    cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y[s], 1, H, W, C),
                 tsm = cluda_tensor_1d(CLUDA_F32, sm[s], C),
                 tsr = cluda_tensor_1d(CLUDA_F32, sr[s], C);
    TEST_OK(cluda_batchnorm_forward(&ctx, &p, &tx, &tg, &tb, &trm, &trv, &ty, &tsm, &tsr));
  }
  TEST_CHECK(memcmp(y[0], y[1], sizeof y[0]) == 0 && memcmp(sm[0], sm[1], sizeof sm[0]) == 0 &&
                 memcmp(sr[0], sr[1], sizeof sr[0]) == 0,
             "sync batchnorm rank %d: inference ignores bn_sync", comm->rank);
}

int main(int argc, char **argv) {
  cluda_comm comm;
  mpi_test_init(&comm, &argc, &argv);
  const int size = comm.size;
  check_sync(&comm, 5, 3, 5, 5, 1, 1);             /* uneven shares, odd H and W */
  check_sync(&comm, 2 * size + 1, 7, 5, 40, 1, 2); /* 40 channels */
  check_sync(&comm, size, 1, 1, 5, 1, 3);          /* N*H*W = 1 per rank, > 1 globally */
  check_sync(&comm, size + 1, 3, 5, 2100, 0, 4);   /* two channel panels */
  check_threads(&comm);
  check_inference(&comm);
  return mpi_test_finish(&comm, argv[0]);
}

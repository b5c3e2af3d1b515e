/* Times the streamed contrastive loss at the paper size (M = 8450 rows, D = 256) against the
 * bare similarity sgemm it is built on.
 *   bench_contrastive [M] [D] [tile_cols] [repeats] */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cluda/backend.h"
#include "cluda/contrastive.h"
#include "cluda/rng.h"

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int fail(cluda_status s) {
  if (s.code == CLUDA_OK) return 0;
  fprintf(stderr, "bench_contrastive: %s\n", s.message);
  return 1;
}

int main(int argc, char **argv) {
  const int m = argc > 1 ? atoi(argv[1]) : 8450, d = argc > 2 ? atoi(argv[2]) : 256;
  const int tile = argc > 3 ? atoi(argv[3]) : 0, reps = argc > 4 ? atoi(argv[4]) : 3;
  if (m < 1 || d < 1 || tile < 0 || reps < 1) {
    fprintf(stderr, "usage: bench_contrastive [M] [D] [tile_cols] [repeats]\n");
    return 2;
  }
  float *f = malloc(sizeof(float) * (size_t)m * d), *df = malloc(sizeof(float) * (size_t)m * d);
  float *dc = malloc(sizeof(float) * (size_t)m * d), *st = malloc(sizeof(float) * (size_t)m * 4);
  float *w = malloc(sizeof(float) * (size_t)m);
  uint8_t *lab = malloc((size_t)m);
  if (!f || !df || !dc || !st || !w || !lab) return 1;
  /* a deterministic pseudo-random fill: normalised rows, 7 classes + ignore */
  uint64_t x = 88172645463325252ull;
  for (int i = 0; i < m; i++) {
    double n = 0.0;
    for (int k = 0; k < d; k++) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      f[(size_t)i * d + k] = (float)((double)(x >> 11) / 9007199254740992.0 - 0.5);
      n += (double)f[(size_t)i * d + k] * f[(size_t)i * d + k];
    }
    for (int k = 0; k < d; k++)
      f[(size_t)i * d + k] = (float)(f[(size_t)i * d + k] / sqrt(n));
    static const uint8_t pool[] = {0, 0, 1, 2, 8, 10, 13, 11, 255};
    lab[i] = pool[(x >> 20) % 9];
    w[i] = 1.0f;
  }
  cluda_contrastive_params p;
  cluda_contrastive_default_params(&p);
  p.tile_cols = tile;
  cluda_arena arena;
  if (fail(cluda_arena_create(&arena, cluda_contrastive_scratch_bytes(&p, m, m)))) return 1;
  cluda_ctx ctx = cluda_cpu_context(&arena);
  float loss = 0.0f, one = 1.0f;
  cluda_tensor tf = cluda_tensor_2d(CLUDA_F32, f, m, d), tl = cluda_tensor_1d(CLUDA_U8, lab, m);
  cluda_tensor tw = cluda_tensor_1d(CLUDA_F32, w, m), tloss = cluda_tensor_1d(CLUDA_F32, &loss, 1);
  cluda_tensor tst = cluda_tensor_2d(CLUDA_F32, st, m, 4),
               tone = cluda_tensor_1d(CLUDA_F32, &one, 1);
  cluda_tensor tdf = cluda_tensor_2d(CLUDA_F32, df, m, d),
               tdc = cluda_tensor_2d(CLUDA_F32, dc, m, d);

  /* the bare similarity products: one M x M x D sgemm in tiles */
  const int tc = tile > 0 ? tile : CLUDA_CL_DEFAULT_TILE_COLS;
  float *buf = malloc(sizeof(float) * (size_t)m * tc);
  if (!buf) return 1;
  double best_gemm = 1e30, best_f = 1e30, best_b = 1e30;
  for (int r = 0; r < reps; r++) {
    double t0 = now_s();
    for (int c0 = 0; c0 < m; c0 += tc) {
      int nt = m - c0 < tc ? m - c0 : tc;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, nt, d, 1.0f, f, d, f + (size_t)c0 * d,
                  d, 0.0f, buf, nt);
    }
    double t1 = now_s();
    if (fail(cluda_contrastive_forward(&ctx, &p, &tf, &tl, &tw, &tf, &tl, NULL, &tloss, &tst)))
      return 1;
    double t2 = now_s();
    if (fail(cluda_contrastive_backward(&ctx, &p, &tf, &tl, &tw, &tf, &tl, NULL, &tst, &tone, &tdf,
                                        &tdc, NULL, NULL)))
      return 1;
    double t3 = now_s();
    best_gemm = fmin(best_gemm, t1 - t0);
    best_f = fmin(best_f, t2 - t1);
    best_b = fmin(best_b, t3 - t2);
  }
  const double gf = 2.0 * m * (double)m * d * 1e-9;
  printf("contrastive M=%d D=%d tile=%d: similarity sgemm %.3f s (%.1f GFLOP/s); forward %.3f s "
         "(2 similarity passes); backward %.3f s (1 pass + 2 gradient sgemms); loss %.6f\n",
         m, d, tc, best_gemm, gf / best_gemm, best_f, best_b, (double)loss);
  free(buf);
  cluda_arena_destroy(&arena);
  free(f);
  free(df);
  free(dc);
  free(st);
  free(w);
  free(lab);
  return 0;
}

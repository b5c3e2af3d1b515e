/* Dropout, Dropout2d (CHANNEL) and DropPath (SAMPLE): forward and backward exactly against
 * a reference built from the returned mask (and against finite differences), the mask
 * against the one recomputed from the key, keep rates within a statistical bound, key
 * reproducibility, thread-count independence and argument validation. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

static cluda_rng_key key_for(uint32_t iteration, uint32_t slot) {
  return cluda_rng_make_key(1234, 0, iteration, CLUDA_RNG_DROPOUT, slot);
}

/* Index of the mask element that decides data element i of x. */
static int64_t mask_index(cluda_dropout_mode mode, const cluda_tensor *x, int64_t i) {
  const int64_t numel = cluda_tensor_numel(x);
  switch (mode) {
  case CLUDA_DROPOUT_ELEMENT: return i;
  case CLUDA_DROPOUT_CHANNEL: {
    const int64_t c = x->shape[3], per_sample = numel / x->shape[0];
    return (i / per_sample) * c + i % c;
  }
  case CLUDA_DROPOUT_SAMPLE: return i / (numel / x->shape[0]);
  }
  return -1;
}

/* L(x) = sum r . dropout(x) with the mask fixed: what the finite differences see */
typedef struct fd_user {
  const cluda_tensor *x;
  const cluda_dropout_params *p;
  const uint8_t *mask;
  const double *r;
} fd_user;

static double dropout_loss(const double *x, void *user) {
  fd_user *u = user;
  const double scale = 1.0 / (1.0 - (double)u->p->p);
  double l = 0.0;
  for (int64_t i = 0; i < cluda_tensor_numel(u->x); i++)
    l += u->r[i] * x[i] * (u->mask[mask_index(u->p->mode, u->x, i)] ? scale : 0.0);
  return l;
}

static void check_mode(cluda_dropout_mode mode, float p, cluda_tensor shape, int mask_ndim, int m0,
                       int m1, int with_fd) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int64_t n = cluda_tensor_numel(&shape);
  const int64_t nm = mask_ndim == 1 ? m0 : (int64_t)m0 * m1;
  float *x = test_alloc_f32(n), *y = test_alloc_f32(n), *dy = test_alloc_f32(n),
        *dx = test_alloc_f32(n);
  uint8_t *mask = test_alloc((size_t)nm);
  test_fill_uniform(x, n, -2.0f, 2.0f, 7, (uint32_t)mode);
  test_fill_uniform(dy, n, -1.0f, 1.0f, 8, (uint32_t)mode);
  memset(mask, 0xAB, (size_t)nm);
  cluda_tensor tx = shape, ty = shape, tdy = shape, tdx = shape;
  tx.data = x;
  ty.data = y;
  tdy.data = dy;
  tdx.data = dx;
  cluda_tensor tm = mask_ndim == 1 ? cluda_tensor_1d(CLUDA_U8, mask, m0)
                                   : cluda_tensor_2d(CLUDA_U8, mask, m0, m1);
  cluda_dropout_params par = {p, mode, key_for(3, 1), 0};
  TEST_OK(cluda_dropout_forward(&ctx, &par, &tx, &ty, &tm));

  /* the mask is the one the key defines: keep iff u >= p */
  int from_key = 1;
  int64_t kept = 0;
  for (int64_t i = 0; i < nm; i++) {
    from_key &= mask[i] == (cluda_rng_uniform(par.key, (uint64_t)i) >= p ? 1 : 0);
    kept += mask[i];
  }
  TEST_CHECK(from_key, "dropout mode %d p %g: mask equals the one recomputed from the key",
             (int)mode, (double)p);
  if (p == 0.0f) TEST_CHECK(kept == nm, "dropout mode %d p 0: mask all ones", (int)mode);

  /* forward and backward against the mask: kept * 1/(1-p), dropped 0 */
  double *want = test_alloc_f64(n), *wantd = test_alloc_f64(n);
  const double scale = 1.0 / (1.0 - (double)p);
  for (int64_t i = 0; i < n; i++) {
    const double f = mask[mask_index(mode, &tx, i)] ? scale : 0.0;
    want[i] = (double)x[i] * f;
    wantd[i] = (double)dy[i] * f;
  }
  char what[96];
  snprintf(what, sizeof what, "dropout mode %d p %g forward", (int)mode, (double)p);
  test_compare(what, y, want, n, 2.5e-7, 0.0); /* 1/(1-p) is rounded to float */
  /* and bit-exact against the float formula x * (float)(1 / (1 - p)) */
  const float fscale = (float)(1.0 / (1.0 - (double)p));
  int exact = 1;
  for (int64_t i = 0; i < n; i++)
    exact &= y[i] == x[i] * (mask[mask_index(mode, &tx, i)] ? fscale : 0.0f);
  TEST_CHECK(exact, "dropout mode %d p %g forward is exactly x * float(1/(1-p)) or 0", (int)mode,
             (double)p);
  if (p == 0.0f)
    TEST_CHECK(memcmp(x, y, (size_t)n * 4) == 0, "dropout mode %d p 0 is the identity", (int)mode);
  for (int64_t i = 0; i < n; i++)
    dx[i] = NAN;
  TEST_OK(cluda_dropout_backward(&ctx, &par, &tm, &tdy, &tdx));
  snprintf(what, sizeof what, "dropout mode %d p %g backward", (int)mode, (double)p);
  test_compare(what, dx, wantd, n, 2.5e-7, 0.0);
  exact = 1;
  for (int64_t i = 0; i < n; i++)
    exact &= dx[i] == dy[i] * (mask[mask_index(mode, &tx, i)] ? fscale : 0.0f);
  TEST_CHECK(exact, "dropout mode %d p %g backward is exactly dy * float(1/(1-p)) or 0", (int)mode,
             (double)p);
  if (with_fd) {
    double *xd = test_alloc_f64(n), *r = test_alloc_f64(n), *grad = test_alloc_f64(n);
    test_to_double(x, xd, n);
    test_to_double(dy, r, n);
    fd_user u = {&tx, &par, mask, r};
    test_finite_difference(dropout_loss, &u, xd, n, 1e-6, grad);
    snprintf(what, sizeof what, "dropout mode %d p %g backward vs finite differences", (int)mode,
             (double)p);
    test_compare(what, dx, grad, n, 1e-6, 1e-8);
    free(xd);
    free(r);
    free(grad);
  }
  free(x);
  free(y);
  free(dy);
  free(dx);
  free(mask);
  free(want);
  free(wantd);
}

/* Keep rate of an ELEMENT mask of n draws against 1 - p (5 standard deviations), for two
 * thread counts, with identical masks. */
static void check_rate_and_keys(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int n = 1 << 20;
  const float p = 0.3f;
  float *x = test_alloc_f32(n), *y1 = test_alloc_f32(n), *y2 = test_alloc_f32(n);
  uint8_t *m1 = test_alloc(n), *m2 = test_alloc(n);
  test_fill_uniform(x, n, -1.0f, 1.0f, 9, 0);
  cluda_tensor tx = cluda_tensor_2d(CLUDA_F32, x, 1024, 1024);
  cluda_tensor ty1 = cluda_tensor_2d(CLUDA_F32, y1, 1024, 1024);
  cluda_tensor ty2 = cluda_tensor_2d(CLUDA_F32, y2, 1024, 1024);
  cluda_tensor tm1 = cluda_tensor_1d(CLUDA_U8, m1, n), tm2 = cluda_tensor_1d(CLUDA_U8, m2, n);
  cluda_dropout_params par = {p, CLUDA_DROPOUT_ELEMENT, key_for(5, 2), 0};
  TEST_OK(cluda_dropout_forward(&ctx, &par, &tx, &ty1, &tm1));
  int64_t kept = 0;
  for (int i = 0; i < n; i++)
    kept += m1[i];
  const double rate = (double)kept / n, sigma = sqrt(p * (1.0 - p) / n);
  TEST_CHECK(fabs(rate - (1.0 - p)) < 5.0 * sigma, "ELEMENT keep rate %.5f vs %.5f (sigma %.2g)",
             rate, 1.0 - p, sigma);

  /* same key, other thread count: the same mask and output bits */
  const int threads = omp_get_max_threads();
  omp_set_num_threads(threads > 1 ? 1 : 2);
  TEST_OK(cluda_dropout_forward(&ctx, &par, &tx, &ty2, &tm2));
  omp_set_num_threads(threads);
  TEST_CHECK(memcmp(m1, m2, n) == 0 && memcmp(y1, y2, (size_t)n * 4) == 0,
             "dropout: same key gives the same mask and output for %d and %d threads", threads,
             threads > 1 ? 1 : 2);

  /* another slot or iteration: a different mask (with the same keep rate) */
  cluda_dropout_params other_slot = {p, CLUDA_DROPOUT_ELEMENT, key_for(5, 3), 0};
  TEST_OK(cluda_dropout_forward(&ctx, &other_slot, &tx, &ty2, &tm2));
  int64_t differ = 0;
  for (int i = 0; i < n; i++)
    differ += m1[i] != m2[i];
  /* independent masks differ in 2 p (1 - p) of the places */
  TEST_CHECK(fabs((double)differ / n - 2 * p * (1 - p)) < 0.01,
             "dropout: another slot gives an independent mask (%lld of %d differ)",
             (long long)differ, n);
  cluda_dropout_params other_iter = {p, CLUDA_DROPOUT_ELEMENT, key_for(6, 2), 0};
  TEST_OK(cluda_dropout_forward(&ctx, &other_iter, &tx, &ty2, &tm2));
  differ = 0;
  for (int i = 0; i < n; i++)
    differ += m1[i] != m2[i];
  TEST_CHECK(fabs((double)differ / n - 2 * p * (1 - p)) < 0.01,
             "dropout: another iteration gives an independent mask (%lld of %d differ)",
             (long long)differ, n);

  /* CHANNEL and SAMPLE keep rates over many draws */
  cluda_tensor tx4 = cluda_tensor_4d(CLUDA_F32, x, 64, 4, 4, 1024); /* mask 64 x 1024 */
  cluda_tensor ty4 = cluda_tensor_4d(CLUDA_F32, y1, 64, 4, 4, 1024);
  cluda_tensor tmc = cluda_tensor_2d(CLUDA_U8, m1, 64, 1024);
  cluda_dropout_params chan = {0.1f, CLUDA_DROPOUT_CHANNEL, key_for(1, 0), 0};
  TEST_OK(cluda_dropout_forward(&ctx, &chan, &tx4, &ty4, &tmc));
  kept = 0;
  for (int i = 0; i < 64 * 1024; i++)
    kept += m1[i];
  double s2 = sqrt(0.1 * 0.9 / (64 * 1024));
  TEST_CHECK(fabs((double)kept / (64 * 1024) - 0.9) < 5 * s2, "CHANNEL keep rate %.5f vs 0.9",
             (double)kept / (64 * 1024));
  cluda_tensor txs = cluda_tensor_2d(CLUDA_F32, x, 16384, 64);
  cluda_tensor tys = cluda_tensor_2d(CLUDA_F32, y1, 16384, 64);
  cluda_tensor tms = cluda_tensor_1d(CLUDA_U8, m1, 16384);
  cluda_dropout_params samp = {0.5f, CLUDA_DROPOUT_SAMPLE, key_for(1, 1), 0};
  TEST_OK(cluda_dropout_forward(&ctx, &samp, &txs, &tys, &tms));
  kept = 0;
  for (int i = 0; i < 16384; i++)
    kept += m1[i];
  double s3 = sqrt(0.25 / 16384);
  TEST_CHECK(fabs((double)kept / 16384 - 0.5) < 5 * s3, "SAMPLE keep rate %.5f vs 0.5",
             (double)kept / 16384);
  free(x);
  free(y1);
  free(y2);
  free(m1);
  free(m2);
}

/* Data parallel: the masks of a batch split over ranks (first_sample = rank * local batch)
 * are the slices of the whole batch's masks, for every mode. */
static void check_first_sample_split(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  enum { N = 4, H = 3, W = 5, C = 6, PER = H * W * C };
  static float x[N * PER], y[N * PER];
  static uint8_t whole[N * PER], part[N * PER];
  const cluda_dropout_mode modes[3] = {CLUDA_DROPOUT_ELEMENT, CLUDA_DROPOUT_CHANNEL,
                                       CLUDA_DROPOUT_SAMPLE};
  const int per_sample[3] = {PER, C, 1};
  test_fill_uniform(x, N * PER, -1.0f, 1.0f, 3, 0);
  for (int m = 0; m < 3; m++) {
    const int per = per_sample[m];
    cluda_dropout_params p = {0.5f, modes[m], key_for(2, 3), 0};
    cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, N, H, W, C);
    cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y, N, H, W, C);
    cluda_tensor tm =
        per == 1 ? cluda_tensor_1d(CLUDA_U8, whole, N) : cluda_tensor_2d(CLUDA_U8, whole, N, per);
    TEST_OK(cluda_dropout_forward(&ctx, &p, &tx, &ty, &tm));
    for (int first = 0; first < N; first += 2) { /* two "ranks" of 2 samples */
      p.first_sample = (uint64_t)first;
      cluda_tensor sx = cluda_tensor_4d(CLUDA_F32, x + first * PER, 2, H, W, C);
      cluda_tensor sy = cluda_tensor_4d(CLUDA_F32, y, 2, H, W, C);
      uint8_t *slice = part + first * per;
      cluda_tensor sm =
          per == 1 ? cluda_tensor_1d(CLUDA_U8, slice, 2) : cluda_tensor_2d(CLUDA_U8, slice, 2, per);
      TEST_OK(cluda_dropout_forward(&ctx, &p, &sx, &sy, &sm));
    }
    TEST_CHECK(memcmp(whole, part, (size_t)(N * per)) == 0,
               "mode %d: masks of 2 x 2 samples with first_sample equal the 4-sample masks", m);
  }
}

static void check_validation(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  static float x[2 * 3 * 4 * 5], y[2 * 3 * 4 * 5];
  static uint8_t m[2 * 3 * 4 * 5];
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, 2, 3, 4, 5);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y, 2, 3, 4, 5);
  cluda_tensor me = cluda_tensor_1d(CLUDA_U8, m, 120);
  cluda_tensor mc = cluda_tensor_2d(CLUDA_U8, m, 2, 5);
  cluda_tensor ms = cluda_tensor_1d(CLUDA_U8, m, 2);
  cluda_dropout_params el = {0.2f, CLUDA_DROPOUT_ELEMENT, key_for(0, 0), 0};
  cluda_dropout_params ch = {0.2f, CLUDA_DROPOUT_CHANNEL, key_for(0, 0), 0};
  cluda_dropout_params sa = {0.2f, CLUDA_DROPOUT_SAMPLE, key_for(0, 0), 0};
  TEST_OK(cluda_dropout_forward(&ctx, &el, &tx, &ty, &me));
  TEST_OK(cluda_dropout_forward(&ctx, &ch, &tx, &ty, &mc));
  TEST_OK(cluda_dropout_forward(&ctx, &sa, &tx, &ty, &ms));
  cluda_tensor me4 = cluda_tensor_4d(CLUDA_U8, m, 2, 3, 4, 5); /* x-shaped masks are fine */
  TEST_OK(cluda_dropout_forward(&ctx, &el, &tx, &ty, &me4));

  /* p outside [0, 1), bad mode, NULL params */
  const float bad_p[] = {-0.1f, 1.0f, 1.5f, NAN};
  for (int i = 0; i < 4; i++) {
    cluda_dropout_params bp = {bad_p[i], CLUDA_DROPOUT_ELEMENT, key_for(0, 0), 0};
    TEST_FAILS(cluda_dropout_forward(&ctx, &bp, &tx, &ty, &me), CLUDA_ERR_ARG, "p->p");
    TEST_FAILS(cluda_dropout_backward(&ctx, &bp, &me, &ty, &tx), CLUDA_ERR_ARG, "p->p");
  }
  cluda_dropout_params bm = {0.2f, (cluda_dropout_mode)7, key_for(0, 0), 0};
  TEST_FAILS(cluda_dropout_forward(&ctx, &bm, &tx, &ty, &me), CLUDA_ERR_ARG, "mode");
  TEST_FAILS(cluda_dropout_forward(&ctx, NULL, &tx, &ty, &me), CLUDA_ERR_ARG, "p is NULL");

  /* tensors */
  TEST_FAILS(cluda_dropout_forward(&ctx, &el, NULL, &ty, &me), CLUDA_ERR_ARG, "x is NULL");
  TEST_FAILS(cluda_dropout_forward(&ctx, &el, &tx, &ty, NULL), CLUDA_ERR_ARG, "mask is NULL");
  cluda_tensor ty_bad = cluda_tensor_4d(CLUDA_F32, y, 2, 3, 5, 4);
  TEST_FAILS(cluda_dropout_forward(&ctx, &el, &tx, &ty_bad, &me), CLUDA_ERR_SHAPE, "y");
  cluda_tensor mf = cluda_tensor_1d(CLUDA_F32, m, 30);
  TEST_FAILS(cluda_dropout_forward(&ctx, &el, &tx, &ty, &mf), CLUDA_ERR_DTYPE, "mask");

  /* mask shape per mode */
  cluda_tensor me_short = cluda_tensor_1d(CLUDA_U8, m, 119);
  TEST_FAILS(cluda_dropout_forward(&ctx, &el, &tx, &ty, &me_short), CLUDA_ERR_SHAPE, "mask");
  cluda_tensor mc_bad = cluda_tensor_2d(CLUDA_U8, m, 2, 4);
  TEST_FAILS(cluda_dropout_forward(&ctx, &ch, &tx, &ty, &mc_bad), CLUDA_ERR_SHAPE, "mask");
  cluda_tensor mc_flat = cluda_tensor_1d(CLUDA_U8, m, 10);
  TEST_FAILS(cluda_dropout_forward(&ctx, &ch, &tx, &ty, &mc_flat), CLUDA_ERR_SHAPE, "mask");
  cluda_tensor tx3 = cluda_tensor_3d(CLUDA_F32, x, 2, 12, 5),
               ty3 = cluda_tensor_3d(CLUDA_F32, y, 2, 12, 5);
  TEST_FAILS(cluda_dropout_forward(&ctx, &ch, &tx3, &ty3, &mc), CLUDA_ERR_SHAPE, "NHWC x");
  cluda_tensor ms_bad = cluda_tensor_1d(CLUDA_U8, m, 3);
  TEST_FAILS(cluda_dropout_forward(&ctx, &sa, &tx, &ty, &ms_bad), CLUDA_ERR_SHAPE, "mask");
  TEST_FAILS(cluda_dropout_forward(&ctx, &sa, &tx, &ty, &mc), CLUDA_ERR_SHAPE, "mask");

  /* backward */
  TEST_OK(cluda_dropout_backward(&ctx, &ch, &mc, &ty, &tx));
  TEST_FAILS(cluda_dropout_backward(&ctx, &ch, &mc, &ty, &ty_bad), CLUDA_ERR_SHAPE, "dx");
  TEST_FAILS(cluda_dropout_backward(&ctx, &ch, &mc_bad, &ty, &tx), CLUDA_ERR_SHAPE, "mask");
  TEST_FAILS(cluda_dropout_backward(&ctx, &sa, &ms_bad, &ty, &tx), CLUDA_ERR_SHAPE, "mask");
  TEST_FAILS(cluda_dropout_backward(&ctx, &el, &me, NULL, &tx), CLUDA_ERR_ARG, "dy is NULL");
}

int main(int argc, char **argv) {
  (void)argc;
  check_mode(CLUDA_DROPOUT_ELEMENT, 0.3f, cluda_tensor_4d(CLUDA_F32, NULL, 2, 3, 5, 7), 1, 210, 0,
             1);
  check_mode(CLUDA_DROPOUT_ELEMENT, 0.3f, cluda_tensor_4d(CLUDA_F32, NULL, 2, 3, 5, 7), 2, 30, 7,
             0); /* any mask shape with x's numel */
  check_mode(CLUDA_DROPOUT_CHANNEL, 0.5f, cluda_tensor_4d(CLUDA_F32, NULL, 3, 4, 5, 6), 2, 3, 6, 1);
  check_mode(CLUDA_DROPOUT_SAMPLE, 0.25f, cluda_tensor_4d(CLUDA_F32, NULL, 4, 3, 5, 2), 1, 4, 0, 1);
  check_mode(CLUDA_DROPOUT_SAMPLE, 0.4f, cluda_tensor_3d(CLUDA_F32, NULL, 5, 6, 4), 1, 5, 0, 1);
  check_mode(CLUDA_DROPOUT_CHANNEL, 0.1f, cluda_tensor_4d(CLUDA_F32, NULL, 2, 64, 64, 33), 2, 2, 33,
             0); /* threaded */
  check_mode(CLUDA_DROPOUT_ELEMENT, 0.6f, cluda_tensor_2d(CLUDA_F32, NULL, 300, 301), 1, 90300, 0,
             0); /* threaded */
  /* p = 0: identity, mask all ones, for every mode */
  check_mode(CLUDA_DROPOUT_ELEMENT, 0.0f, cluda_tensor_4d(CLUDA_F32, NULL, 2, 3, 5, 7), 1, 210, 0,
             0);
  check_mode(CLUDA_DROPOUT_CHANNEL, 0.0f, cluda_tensor_4d(CLUDA_F32, NULL, 2, 3, 5, 7), 2, 2, 7, 0);
  check_mode(CLUDA_DROPOUT_SAMPLE, 0.0f, cluda_tensor_4d(CLUDA_F32, NULL, 2, 3, 5, 7), 1, 2, 0, 0);
  check_rate_and_keys();
  check_first_sample_split();
  check_validation();
  return test_finish(argv[0]);
}

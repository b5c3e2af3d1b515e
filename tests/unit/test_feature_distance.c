/* Feature distance (DAFormer FD loss): forward against a double reference of the masked
 * mean of per-cell L2 distances, backward against finite differences of it (for a and b),
 * edge cases (empty mask, a == b cells, C = 1, db NULL), thread-count invariance and
 * argument validation. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

typedef struct fd_case {
  const char *name;
  int n, h, w, c;
  int mask_every;  /* cell i is masked when i % mask_every != 1 (0: empty mask) */
  int equal_every; /* every equal_every-th cell has a == b (0: none) */
} fd_case;

typedef struct ref_args {
  int64_t cells;
  int c;
  const uint8_t *mask;
  const double *other; /* the fixed operand */
  int wrt_b;           /* differentiate with respect to b (x is b, other is a) */
  double r;
} ref_args;

/* r * mean over masked cells of ||a - b||; x is a (or b when wrt_b) */
static double fd_ref(const double *x, void *user) {
  const ref_args *u = user;
  double sum = 0.0;
  int64_t count = 0;
  for (int64_t i = 0; i < u->cells; i++) {
    if (!u->mask[i]) continue;
    double s = 0.0;
    for (int k = 0; k < u->c; k++) {
      double t = x[i * u->c + k] - u->other[i * u->c + k];
      s += t * t;
    }
    sum += sqrt(s);
    count++;
  }
  return count ? u->r * sum / (double)count : 0.0;
}

static void check_case(const fd_case *t, int with_fd) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int64_t cells = (int64_t)t->n * t->h * t->w, ne = cells * t->c;
  float *a = test_alloc_f32(ne), *b = test_alloc_f32(ne), *da = test_alloc_f32(ne),
        *db = test_alloc_f32(ne), *da2 = test_alloc_f32(ne);
  double *ad = test_alloc_f64(ne), *bd = test_alloc_f64(ne), *grad = test_alloc_f64(ne);
  uint8_t *mask = test_alloc((size_t)cells);
  test_fill_uniform(a, ne, -1.0f, 1.0f, 51, 0);
  test_fill_uniform(b, ne, -1.0f, 1.0f, 51, 1);
  int64_t masked = 0;
  for (int64_t i = 0; i < cells; i++) {
    mask[i] = (uint8_t)(t->mask_every && i % t->mask_every != 1 ? 1 + i % 3 : 0); /* any nonzero */
    masked += mask[i] != 0;
    if (t->equal_every && i % t->equal_every == 0)
      memcpy(b + i * t->c, a + i * t->c, sizeof(float) * (size_t)t->c);
  }
  float loss = -1.0f, count = -1.0f, r;
  test_fill_uniform(&r, 1, 0.5f, 2.0f, 51, 2);
  cluda_tensor ta = cluda_tensor_4d(CLUDA_F32, a, t->n, t->h, t->w, t->c);
  cluda_tensor tb = cluda_tensor_4d(CLUDA_F32, b, t->n, t->h, t->w, t->c);
  cluda_tensor tda = cluda_tensor_4d(CLUDA_F32, da, t->n, t->h, t->w, t->c);
  cluda_tensor tdb = cluda_tensor_4d(CLUDA_F32, db, t->n, t->h, t->w, t->c);
  cluda_tensor tda2 = cluda_tensor_4d(CLUDA_F32, da2, t->n, t->h, t->w, t->c);
  cluda_tensor tm = cluda_tensor_3d(CLUDA_U8, mask, t->n, t->h, t->w);
  cluda_tensor tloss = cluda_tensor_1d(CLUDA_F32, &loss, 1);
  cluda_tensor tcount = cluda_tensor_1d(CLUDA_F32, &count, 1);
  cluda_tensor tr = cluda_tensor_1d(CLUDA_F32, &r, 1);
  char msg[160];

  TEST_OK(cluda_feature_distance_forward(&ctx, &ta, &tb, &tm, &tloss, &tcount));
  test_to_double(a, ad, ne);
  test_to_double(b, bd, ne);
  ref_args u = {cells, t->c, mask, bd, 0, 1.0};
  double want = fd_ref(ad, &u);
  snprintf(msg, sizeof msg, "%s: forward", t->name);
  test_compare(msg, &loss, &want, 1, 1e-6, 1e-7);
  TEST_CHECK(count == (float)masked, "%s: count %g, want %lld", t->name, count, (long long)masked);

  for (int64_t i = 0; i < ne; i++)
    da[i] = db[i] = da2[i] = 12345.0f; /* must be overwritten */
  TEST_OK(cluda_feature_distance_backward(&ctx, &ta, &tb, &tm, &tr, &tda, &tdb));
  TEST_OK(cluda_feature_distance_backward(&ctx, &ta, &tb, &tm, &tr, &tda2, NULL));
  TEST_CHECK(memcmp(da, da2, sizeof(float) * (size_t)ne) == 0, "%s: da with db NULL differs",
             t->name);
  int64_t bad = 0, nonzero = 0;
  for (int64_t i = 0; i < ne; i++)
    bad += db[i] != -da[i];
  for (int64_t i = 0; i < cells; i++) {
    int equal = t->equal_every && i % t->equal_every == 0;
    if (!mask[i] || equal)
      for (int k = 0; k < t->c; k++)
        nonzero += da[i * t->c + k] != 0.0f;
  }
  TEST_CHECK(bad == 0, "%s: db != -da at %lld entries", t->name, (long long)bad);
  TEST_CHECK(nonzero == 0, "%s: %lld gradient entries of unmasked or a == b cells are not 0",
             t->name, (long long)nonzero);

  if (with_fd) {
    /* a == b cells are the norm's kink: finite differences there mean nothing, so compare
     * only elsewhere (zero gradient there is checked above) */
    u.r = r;
    test_finite_difference(fd_ref, &u, ad, ne, 1e-6, grad);
    for (int64_t i = 0; i < cells; i++)
      if (t->equal_every && i % t->equal_every == 0)
        for (int k = 0; k < t->c; k++)
          grad[i * t->c + k] = 0.0;
    snprintf(msg, sizeof msg, "%s: da vs finite differences", t->name);
    test_compare(msg, da, grad, ne, 1e-4, 1e-7);
    ref_args ub = {cells, t->c, mask, ad, 1, r};
    test_finite_difference(fd_ref, &ub, bd, ne, 1e-6, grad);
    for (int64_t i = 0; i < cells; i++)
      if (t->equal_every && i % t->equal_every == 0)
        for (int k = 0; k < t->c; k++)
          grad[i * t->c + k] = 0.0;
    snprintf(msg, sizeof msg, "%s: db vs finite differences", t->name);
    test_compare(msg, db, grad, ne, 1e-4, 1e-7);
  }
  free(a);
  free(b);
  free(da);
  free(db);
  free(da2);
  free(ad);
  free(bd);
  free(grad);
  free(mask);
}

static void check_known_values(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  /* cells: (3,4) vs 0 -> 5; (1,0) vs (1,0) -> 0; (0,1) vs (0,-1) -> 2 but unmasked */
  float a[6] = {3, 4, 1, 0, 0, 1}, b[6] = {0, 0, 1, 0, 0, -1}, da[6], db[6];
  uint8_t mask[3] = {1, 1, 0};
  float loss, count, dl = 2.0f;
  cluda_tensor ta = cluda_tensor_4d(CLUDA_F32, a, 1, 1, 3, 2);
  cluda_tensor tb = cluda_tensor_4d(CLUDA_F32, b, 1, 1, 3, 2);
  cluda_tensor tda = cluda_tensor_4d(CLUDA_F32, da, 1, 1, 3, 2);
  cluda_tensor tdb = cluda_tensor_4d(CLUDA_F32, db, 1, 1, 3, 2);
  cluda_tensor tm = cluda_tensor_3d(CLUDA_U8, mask, 1, 1, 3);
  cluda_tensor tloss = cluda_tensor_1d(CLUDA_F32, &loss, 1);
  cluda_tensor tcount = cluda_tensor_1d(CLUDA_F32, &count, 1);
  cluda_tensor tdl = cluda_tensor_1d(CLUDA_F32, &dl, 1);
  TEST_OK(cluda_feature_distance_forward(&ctx, &ta, &tb, &tm, &tloss, &tcount));
  TEST_CHECK(loss == 2.5f && count == 2.0f, "known: loss %g count %g, want 2.5 and 2", loss, count);
  TEST_OK(cluda_feature_distance_backward(&ctx, &ta, &tb, &tm, &tdl, &tda, &tdb));
  /* da = 2 * (3,4) / (5 * 2) */
  const float want_da[6] = {0.6f, 0.8f, 0, 0, 0, 0};
  test_compare_f32("known: da", da, want_da, 6, 1e-6, 0.0);
  /* an empty mask: loss 0, count 0, zero gradients */
  memset(mask, 0, sizeof mask);
  TEST_OK(cluda_feature_distance_forward(&ctx, &ta, &tb, &tm, &tloss, &tcount));
  TEST_CHECK(loss == 0.0f && count == 0.0f, "empty mask: loss %g count %g", loss, count);
  TEST_OK(cluda_feature_distance_backward(&ctx, &ta, &tb, &tm, &tdl, &tda, &tdb));
  const float zeros[6] = {0};
  test_compare_f32("empty mask: da", da, zeros, 6, 0.0, 0.0);
  test_compare_f32("empty mask: db", db, zeros, 6, 0.0, 0.0);
}

static void check_thread_invariance(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int n = 2, h = 33, w = 31, c = 64;
  const int64_t cells = (int64_t)n * h * w, ne = cells * c;
  float *a = test_alloc_f32(ne), *b = test_alloc_f32(ne);
  float *d1 = test_alloc_f32(ne), *d4 = test_alloc_f32(ne);
  uint8_t *mask = test_alloc((size_t)cells);
  test_fill_uniform(a, ne, -1.0f, 1.0f, 52, 0);
  test_fill_uniform(b, ne, -1.0f, 1.0f, 52, 1);
  for (int64_t i = 0; i < cells; i++)
    mask[i] = i % 5 != 2;
  float l1, l4, c1, c4, r = 0.005f;
  cluda_tensor ta = cluda_tensor_4d(CLUDA_F32, a, n, h, w, c);
  cluda_tensor tb = cluda_tensor_4d(CLUDA_F32, b, n, h, w, c);
  cluda_tensor td1 = cluda_tensor_4d(CLUDA_F32, d1, n, h, w, c);
  cluda_tensor td4 = cluda_tensor_4d(CLUDA_F32, d4, n, h, w, c);
  cluda_tensor tm = cluda_tensor_3d(CLUDA_U8, mask, n, h, w);
  cluda_tensor tl1 = cluda_tensor_1d(CLUDA_F32, &l1, 1), tl4 = cluda_tensor_1d(CLUDA_F32, &l4, 1);
  cluda_tensor tc1 = cluda_tensor_1d(CLUDA_F32, &c1, 1), tc4 = cluda_tensor_1d(CLUDA_F32, &c4, 1);
  cluda_tensor tr = cluda_tensor_1d(CLUDA_F32, &r, 1);
  int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  TEST_OK(cluda_feature_distance_forward(&ctx, &ta, &tb, &tm, &tl1, &tc1));
  TEST_OK(cluda_feature_distance_backward(&ctx, &ta, &tb, &tm, &tr, &td1, NULL));
  omp_set_num_threads(4);
  TEST_OK(cluda_feature_distance_forward(&ctx, &ta, &tb, &tm, &tl4, &tc4));
  TEST_OK(cluda_feature_distance_backward(&ctx, &ta, &tb, &tm, &tr, &td4, NULL));
  omp_set_num_threads(saved);
  TEST_CHECK(memcmp(&l1, &l4, sizeof l1) == 0 && c1 == c4,
             "loss differs between 1 and 4 threads: %.9g %.9g", l1, l4);
  TEST_CHECK(memcmp(d1, d4, (size_t)ne * sizeof(float)) == 0, "da differs by threads");
  free(a);
  free(b);
  free(d1);
  free(d4);
  free(mask);
}

static void check_bad_inputs(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  enum { N = 2, H = 3, W = 4, C = 5 };
  float a[N * H * W * C] = {0}, b[N * H * W * C] = {0}, g[N * H * W * C], s[2] = {0}, one = 1.0f;
  uint8_t mask[N * H * W * C] = {0};
  cluda_tensor ta = cluda_tensor_4d(CLUDA_F32, a, N, H, W, C);
  cluda_tensor tb = cluda_tensor_4d(CLUDA_F32, b, N, H, W, C);
  cluda_tensor tg = cluda_tensor_4d(CLUDA_F32, g, N, H, W, C);
  cluda_tensor tm = cluda_tensor_3d(CLUDA_U8, mask, N, H, W);
  cluda_tensor tloss = cluda_tensor_1d(CLUDA_F32, &s[0], 1);
  cluda_tensor tcount = cluda_tensor_1d(CLUDA_F32, &s[1], 1);
  cluda_tensor tdl = cluda_tensor_1d(CLUDA_F32, &one, 1);
  cluda_tensor a_u8 = cluda_tensor_4d(CLUDA_U8, mask, N, H, W, C);
  cluda_tensor a_3d = cluda_tensor_3d(CLUDA_F32, a, N, H, W);
  cluda_tensor b_shape = cluda_tensor_4d(CLUDA_F32, b, N, H, W, C - 1);
  cluda_tensor m_f32 = cluda_tensor_3d(CLUDA_F32, a, N, H, W);
  cluda_tensor m_4d = cluda_tensor_4d(CLUDA_U8, mask, N, H, W, 1);
  cluda_tensor m_shape = cluda_tensor_3d(CLUDA_U8, mask, N, W, H);
  cluda_tensor two = cluda_tensor_1d(CLUDA_F32, s, 2);
  cluda_tensor g_shape = cluda_tensor_4d(CLUDA_F32, g, N, H, W + 1, C);
  TEST_FAILS(cluda_feature_distance_forward(&ctx, NULL, &tb, &tm, &tloss, &tcount), CLUDA_ERR_ARG,
             "feature_distance_forward: a is NULL");
  TEST_FAILS(cluda_feature_distance_forward(&ctx, &a_u8, &tb, &tm, &tloss, &tcount),
             CLUDA_ERR_DTYPE, "a [2,3,4,5] u8 must be f32");
  TEST_FAILS(cluda_feature_distance_forward(&ctx, &a_3d, &tb, &tm, &tloss, &tcount),
             CLUDA_ERR_SHAPE, "a [2,3,4] f32 must have 4 dimensions");
  TEST_FAILS(cluda_feature_distance_forward(&ctx, &ta, NULL, &tm, &tloss, &tcount), CLUDA_ERR_ARG,
             "b is NULL");
  TEST_FAILS(cluda_feature_distance_forward(&ctx, &ta, &b_shape, &tm, &tloss, &tcount),
             CLUDA_ERR_SHAPE, "a [2,3,4,5] f32 and b [2,3,4,4] f32 must have the same shape");
  TEST_FAILS(cluda_feature_distance_forward(&ctx, &ta, &tb, NULL, &tloss, &tcount), CLUDA_ERR_ARG,
             "mask is NULL");
  TEST_FAILS(cluda_feature_distance_forward(&ctx, &ta, &tb, &m_f32, &tloss, &tcount),
             CLUDA_ERR_DTYPE, "mask [2,3,4] f32 must be u8");
  TEST_FAILS(cluda_feature_distance_forward(&ctx, &ta, &tb, &m_4d, &tloss, &tcount),
             CLUDA_ERR_SHAPE, "mask [2,3,4,1] u8 must have 3 dimensions");
  TEST_FAILS(cluda_feature_distance_forward(&ctx, &ta, &tb, &m_shape, &tloss, &tcount),
             CLUDA_ERR_SHAPE, "mask [2,4,3] u8 must be [N,H,W] of a [2,3,4,5] f32");
  TEST_FAILS(cluda_feature_distance_forward(&ctx, &ta, &tb, &tm, NULL, &tcount), CLUDA_ERR_ARG,
             "loss is NULL");
  TEST_FAILS(cluda_feature_distance_forward(&ctx, &ta, &tb, &tm, &two, &tcount), CLUDA_ERR_SHAPE,
             "loss [2] f32 must have exactly one element");
  TEST_FAILS(cluda_feature_distance_forward(&ctx, &ta, &tb, &tm, &tloss, NULL), CLUDA_ERR_ARG,
             "count is NULL");
  TEST_FAILS(cluda_feature_distance_forward(&ctx, &ta, &tb, &tm, &tloss, &two), CLUDA_ERR_SHAPE,
             "count [2] f32 must have exactly one element");
  TEST_FAILS(cluda_feature_distance_forward(NULL, &ta, &tb, &tm, &tloss, &tcount), CLUDA_ERR_ARG,
             "ctx");
  TEST_FAILS(cluda_feature_distance_backward(&ctx, &ta, &b_shape, &tm, &tdl, &tg, NULL),
             CLUDA_ERR_SHAPE, "feature_distance_backward: a [2,3,4,5] f32 and b");
  TEST_FAILS(cluda_feature_distance_backward(&ctx, &ta, &tb, &m_shape, &tdl, &tg, NULL),
             CLUDA_ERR_SHAPE, "feature_distance_backward: mask [2,4,3]");
  TEST_FAILS(cluda_feature_distance_backward(&ctx, &ta, &tb, &tm, NULL, &tg, NULL), CLUDA_ERR_ARG,
             "dloss is NULL");
  TEST_FAILS(cluda_feature_distance_backward(&ctx, &ta, &tb, &tm, &two, &tg, NULL), CLUDA_ERR_SHAPE,
             "dloss [2] f32 must have exactly one element");
  TEST_FAILS(cluda_feature_distance_backward(&ctx, &ta, &tb, &tm, &tdl, NULL, NULL), CLUDA_ERR_ARG,
             "da is NULL");
  TEST_FAILS(cluda_feature_distance_backward(&ctx, &ta, &tb, &tm, &tdl, &g_shape, NULL),
             CLUDA_ERR_SHAPE, "da [2,3,5,5] f32 and a [2,3,4,5] f32");
  TEST_FAILS(cluda_feature_distance_backward(&ctx, &ta, &tb, &tm, &tdl, &tg, &g_shape),
             CLUDA_ERR_SHAPE, "db [2,3,5,5] f32 and a [2,3,4,5] f32");
  TEST_FAILS(cluda_feature_distance_backward(&ctx, &ta, &tb, &tm, &tdl, &tg, &a_u8),
             CLUDA_ERR_DTYPE, "db [2,3,4,5] u8 must be f32");
}

int main(int argc, char **argv) {
  (void)argc;
  const fd_case cases[] = {
      {"random mask", 2, 3, 5, 4, 3, 0},
      {"a == b cells", 2, 3, 3, 6, 4, 5},
      {"all but one masked, C = 1", 1, 3, 5, 1, 1000000, 0},
      {"empty mask", 2, 2, 3, 3, 0, 0},
      {"single cell", 1, 1, 1, 7, 2, 0},
      {"odd sizes", 3, 1, 5, 3, 2, 7},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    check_case(&cases[i], 1);
  const fd_case big = {"threaded 2x16x16x512", 2, 16, 16, 512, 3, 11};
  check_case(&big, 0);
  check_known_values();
  check_thread_invariance();
  check_bad_inputs();
  return test_finish(argv[0]);
}

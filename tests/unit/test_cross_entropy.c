/* Per-pixel cross-entropy with ignore label and pixel weights (mmseg 0.16 mean over all
 * pixels): forward against a double reference, backward against finite differences of it,
 * edge cases (all ignored, zero weights, K = 1, logits of +-100, ignore_index < K),
 * thread-count invariance, and argument and label validation. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

typedef struct ce_case {
  const char *name;
  int n, h, w, k;
  int ignore_index;
  float lo, hi;      /* logit range */
  int use_weights;   /* 0: NULL, 1: random in [0, 1), 2: all zero */
  int ignored_every; /* every ignored_every-th pixel gets ignore_index (0: none; 1: all) */
} ce_case;

typedef struct ce_ref_args {
  int64_t p;
  int k, ignore_index;
  const uint8_t *labels;
  const double *weights; /* NULL: ones */
  double r;              /* L = r * loss */
} ce_ref_args;

static double ce_ref(const double *z, void *user) {
  const ce_ref_args *a = user;
  double sum = 0.0;
  for (int64_t i = 0; i < a->p; i++) {
    int l = a->labels[i];
    if (l == a->ignore_index) continue;
    const double *zi = z + i * a->k;
    double m = zi[0];
    for (int j = 1; j < a->k; j++)
      m = fmax(m, zi[j]);
    double s = 0.0;
    for (int j = 0; j < a->k; j++)
      s += exp(zi[j] - m);
    sum += (a->weights ? a->weights[i] : 1.0) * (m + log(s) - zi[l]);
  }
  return a->r * sum / (double)a->p;
}

static void check_case(const ce_case *c, int with_fd) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int64_t p = (int64_t)c->n * c->h * c->w, nz = p * c->k;
  float *z = test_alloc_f32(nz), *dz = test_alloc_f32(nz), *w = test_alloc_f32(p);
  uint8_t *lab = test_alloc((size_t)p);
  double *zd = test_alloc_f64(nz), *wd = test_alloc_f64(p), *grad = test_alloc_f64(nz);
  float loss = -1.0f, r;
  test_fill_uniform(z, nz, c->lo, c->hi, 41, 0);
  test_fill_uniform(&r, 1, 0.5f, 2.0f, 41, 1);
  float *u = test_alloc_f32(p);
  test_fill_uniform(u, p, 0.0f, 1.0f, 41, 2);
  for (int64_t i = 0; i < p; i++) {
    lab[i] = (uint8_t)(u[i] * c->k);
    if (c->ignored_every && i % c->ignored_every == 0) lab[i] = (uint8_t)c->ignore_index;
  }
  test_fill_uniform(w, p, 0.0f, 1.0f, 41, 3);
  if (c->use_weights == 2) memset(w, 0, sizeof(float) * (size_t)p);
  w[0] = 0.0f; /* one zero-weight pixel in any case */
  cluda_tensor tz = cluda_tensor_4d(CLUDA_F32, z, c->n, c->h, c->w, c->k);
  cluda_tensor tdz = cluda_tensor_4d(CLUDA_F32, dz, c->n, c->h, c->w, c->k);
  cluda_tensor tl = cluda_tensor_3d(CLUDA_U8, lab, c->n, c->h, c->w);
  cluda_tensor tw = cluda_tensor_3d(CLUDA_F32, w, c->n, c->h, c->w);
  cluda_tensor tloss = cluda_tensor_1d(CLUDA_F32, &loss, 1);
  cluda_tensor tr = cluda_tensor_1d(CLUDA_F32, &r, 1);
  const cluda_tensor *weights = c->use_weights ? &tw : NULL;
  char msg[160];

  TEST_OK(cluda_cross_entropy_forward(&ctx, &tz, &tl, weights, c->ignore_index, &tloss));
  test_to_double(z, zd, nz);
  test_to_double(w, wd, p);
  ce_ref_args a = {p, c->k, c->ignore_index, lab, c->use_weights ? wd : NULL, 1.0};
  double want = ce_ref(zd, &a);
  snprintf(msg, sizeof msg, "%s: forward", c->name);
  test_compare(msg, &loss, &want, 1, 1e-6, 1e-7);

  for (int64_t i = 0; i < nz; i++)
    dz[i] = 12345.0f; /* the backward must overwrite */
  TEST_OK(cluda_cross_entropy_backward(&ctx, &tz, &tl, weights, c->ignore_index, &tr, &tdz));
  /* ignored and zero-weight pixels get exactly zero rows */
  int64_t nonzero = 0;
  for (int64_t i = 0; i < p; i++)
    if (lab[i] == c->ignore_index || (c->use_weights && w[i] == 0.0f))
      for (int j = 0; j < c->k; j++)
        nonzero += dz[i * c->k + j] != 0.0f;
  TEST_CHECK(nonzero == 0, "%s: %lld gradient entries of ignored/zero-weight pixels are not 0",
             c->name, (long long)nonzero);
  if (with_fd) {
    a.r = r;
    test_finite_difference(ce_ref, &a, zd, nz, 1e-6, grad);
    snprintf(msg, sizeof msg, "%s: backward vs finite differences", c->name);
    test_compare(msg, dz, grad, nz, 1e-4, 1e-7);
  }
  free(z);
  free(dz);
  free(w);
  free(lab);
  free(zd);
  free(wd);
  free(grad);
  free(u);
}

static void check_thread_invariance(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int n = 2, h = 65, w = 47, k = 19;
  const int64_t p = (int64_t)n * h * w, nz = p * k;
  float *z = test_alloc_f32(nz), *d1 = test_alloc_f32(nz), *d4 = test_alloc_f32(nz);
  float *wt = test_alloc_f32(p), *u = test_alloc_f32(p);
  uint8_t *lab = test_alloc((size_t)p);
  test_fill_uniform(z, nz, -8.0f, 8.0f, 42, 0);
  test_fill_uniform(wt, p, 0.0f, 1.0f, 42, 1);
  test_fill_uniform(u, p, 0.0f, 1.0f, 42, 2);
  for (int64_t i = 0; i < p; i++)
    lab[i] = i % 7 == 3 ? 255 : (uint8_t)(u[i] * k);
  float l1, l4, r = 0.75f;
  cluda_tensor tz = cluda_tensor_4d(CLUDA_F32, z, n, h, w, k);
  cluda_tensor td1 = cluda_tensor_4d(CLUDA_F32, d1, n, h, w, k);
  cluda_tensor td4 = cluda_tensor_4d(CLUDA_F32, d4, n, h, w, k);
  cluda_tensor tl = cluda_tensor_3d(CLUDA_U8, lab, n, h, w);
  cluda_tensor tw = cluda_tensor_3d(CLUDA_F32, wt, n, h, w);
  cluda_tensor tl1 = cluda_tensor_1d(CLUDA_F32, &l1, 1), tl4 = cluda_tensor_1d(CLUDA_F32, &l4, 1);
  cluda_tensor tr = cluda_tensor_1d(CLUDA_F32, &r, 1);
  int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  TEST_OK(cluda_cross_entropy_forward(&ctx, &tz, &tl, &tw, 255, &tl1));
  TEST_OK(cluda_cross_entropy_backward(&ctx, &tz, &tl, &tw, 255, &tr, &td1));
  omp_set_num_threads(4);
  TEST_OK(cluda_cross_entropy_forward(&ctx, &tz, &tl, &tw, 255, &tl4));
  TEST_OK(cluda_cross_entropy_backward(&ctx, &tz, &tl, &tw, 255, &tr, &td4));
  omp_set_num_threads(saved);
  TEST_CHECK(memcmp(&l1, &l4, sizeof l1) == 0, "loss differs between 1 and 4 threads: %.9g %.9g",
             l1, l4);
  TEST_CHECK(memcmp(d1, d4, (size_t)nz * sizeof(float)) == 0, "dlogits differ by threads");
  free(z);
  free(d1);
  free(d4);
  free(wt);
  free(u);
  free(lab);
}

static void check_bad_inputs(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  enum { N = 2, H = 3, W = 5, K = 4 };
  float z[N * H * W * K] = {0}, dz[N * H * W * K], w[N * H * W] = {0}, loss[2] = {0}, one = 1.0f;
  uint8_t lab[N * H * W] = {0};
  cluda_tensor tz = cluda_tensor_4d(CLUDA_F32, z, N, H, W, K);
  cluda_tensor tdz = cluda_tensor_4d(CLUDA_F32, dz, N, H, W, K);
  cluda_tensor tl = cluda_tensor_3d(CLUDA_U8, lab, N, H, W);
  cluda_tensor tw = cluda_tensor_3d(CLUDA_F32, w, N, H, W);
  cluda_tensor tloss = cluda_tensor_1d(CLUDA_F32, loss, 1);
  cluda_tensor tdl = cluda_tensor_1d(CLUDA_F32, &one, 1);
  cluda_tensor z_u8 = cluda_tensor_4d(CLUDA_U8, lab, N, H, W, 1);
  cluda_tensor z_3d = cluda_tensor_3d(CLUDA_F32, z, N, H, W);
  cluda_tensor z_k0 = cluda_tensor_4d(CLUDA_F32, z, N, H, W, 0);
  cluda_tensor l_f32 = cluda_tensor_3d(CLUDA_F32, w, N, H, W);
  cluda_tensor l_4d = cluda_tensor_4d(CLUDA_U8, lab, N, H, W, 1);
  cluda_tensor l_shape = cluda_tensor_3d(CLUDA_U8, lab, N, W, H);
  cluda_tensor w_u8 = cluda_tensor_3d(CLUDA_U8, lab, N, H, W);
  cluda_tensor w_shape = cluda_tensor_3d(CLUDA_F32, w, 1, H, W);
  cluda_tensor loss2 = cluda_tensor_1d(CLUDA_F32, loss, 2);
  cluda_tensor dz_shape = cluda_tensor_4d(CLUDA_F32, dz, N, H, W, K - 1);

  TEST_FAILS(cluda_cross_entropy_forward(&ctx, NULL, &tl, &tw, 255, &tloss), CLUDA_ERR_ARG,
             "cross_entropy_forward: logits is NULL");
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &z_u8, &tl, &tw, 255, &tloss), CLUDA_ERR_DTYPE,
             "logits");
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &z_3d, &tl, &tw, 255, &tloss), CLUDA_ERR_SHAPE,
             "logits [2,3,5] f32 must have 4 dimensions");
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &z_k0, &tl, &tw, 255, &tloss), CLUDA_ERR_SHAPE,
             "logits [2,3,5,0] f32 must have at least one class");
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &tz, NULL, &tw, 255, &tloss), CLUDA_ERR_ARG,
             "labels is NULL");
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &tz, &l_f32, &tw, 255, &tloss), CLUDA_ERR_DTYPE,
             "labels [2,3,5] f32 must be u8");
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &tz, &l_4d, &tw, 255, &tloss), CLUDA_ERR_SHAPE,
             "labels [2,3,5,1] u8 must have 3 dimensions");
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &tz, &l_shape, &tw, 255, &tloss), CLUDA_ERR_SHAPE,
             "labels [2,5,3] u8 must be [N,H,W] of logits [2,3,5,4] f32");
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &tz, &tl, &w_u8, 255, &tloss), CLUDA_ERR_DTYPE,
             "weights [2,3,5] u8 must be f32");
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &tz, &tl, &w_shape, 255, &tloss), CLUDA_ERR_SHAPE,
             "weights [1,3,5] f32 and labels [2,3,5] u8 must have the same shape");
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &tz, &tl, &tw, 256, &tloss), CLUDA_ERR_ARG,
             "ignore_index 256");
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &tz, &tl, &tw, -1, &tloss), CLUDA_ERR_ARG,
             "ignore_index -1");
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &tz, &tl, &tw, 255, NULL), CLUDA_ERR_ARG,
             "loss is NULL");
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &tz, &tl, &tw, 255, &loss2), CLUDA_ERR_SHAPE,
             "loss [2] f32 must have exactly one element");
  TEST_FAILS(cluda_cross_entropy_forward(NULL, &tz, &tl, &tw, 255, &tloss), CLUDA_ERR_ARG, "ctx");

  /* a label that is neither a class nor ignore_index, at pixel (n=1, h=2, w=3) */
  lab[(1 * H + 2) * W + 3] = 7;
  lab[(1 * H + 2) * W + 4] = 9; /* a later one is not the one reported */
  loss[0] = -3.0f;
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &tz, &tl, &tw, 255, &tloss), CLUDA_ERR_ARG,
             "cross_entropy_forward: label 7 at pixel (n=1, h=2, w=3)");
  TEST_CHECK(loss[0] == -3.0f, "a rejected forward must not write the loss");
  for (int i = 0; i < N * H * W * K; i++)
    dz[i] = 5.0f;
  TEST_FAILS(cluda_cross_entropy_backward(&ctx, &tz, &tl, &tw, 255, &tdl, &tdz), CLUDA_ERR_ARG,
             "cross_entropy_backward: label 7 at pixel (n=1, h=2, w=3)");
  int untouched = 1;
  for (int i = 0; i < N * H * W * K; i++)
    untouched &= dz[i] == 5.0f;
  TEST_CHECK(untouched, "a rejected backward must not write dlogits");
  /* 255 is fine as a label only when it is the ignore index; K itself is not a class */
  lab[(1 * H + 2) * W + 3] = 255;
  lab[(1 * H + 2) * W + 4] = 0;
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &tz, &tl, &tw, 0, &tloss), CLUDA_ERR_ARG,
             "label 255 at pixel (n=1, h=2, w=3)");
  TEST_OK(cluda_cross_entropy_forward(&ctx, &tz, &tl, &tw, 255, &tloss));
  lab[0] = K;
  TEST_FAILS(cluda_cross_entropy_backward(&ctx, &tz, &tl, NULL, 255, &tdl, &tdz), CLUDA_ERR_ARG,
             "label 4 at pixel (n=0, h=0, w=0)");
  lab[0] = 0;

  TEST_FAILS(cluda_cross_entropy_backward(&ctx, NULL, &tl, &tw, 255, &tdl, &tdz), CLUDA_ERR_ARG,
             "cross_entropy_backward: logits is NULL");
  TEST_FAILS(cluda_cross_entropy_backward(&ctx, &tz, &l_shape, &tw, 255, &tdl, &tdz),
             CLUDA_ERR_SHAPE, "cross_entropy_backward: labels [2,5,3]");
  TEST_FAILS(cluda_cross_entropy_backward(&ctx, &tz, &tl, &w_shape, 255, &tdl, &tdz),
             CLUDA_ERR_SHAPE, "cross_entropy_backward: weights [1,3,5]");
  TEST_FAILS(cluda_cross_entropy_backward(&ctx, &tz, &tl, &tw, 300, &tdl, &tdz), CLUDA_ERR_ARG,
             "ignore_index 300");
  TEST_FAILS(cluda_cross_entropy_backward(&ctx, &tz, &tl, &tw, 255, NULL, &tdz), CLUDA_ERR_ARG,
             "dloss is NULL");
  TEST_FAILS(cluda_cross_entropy_backward(&ctx, &tz, &tl, &tw, 255, &loss2, &tdz), CLUDA_ERR_SHAPE,
             "dloss [2] f32 must have exactly one element");
  TEST_FAILS(cluda_cross_entropy_backward(&ctx, &tz, &tl, &tw, 255, &tdl, NULL), CLUDA_ERR_ARG,
             "dlogits is NULL");
  TEST_FAILS(cluda_cross_entropy_backward(&ctx, &tz, &tl, &tw, 255, &tdl, &dz_shape),
             CLUDA_ERR_SHAPE, "dlogits [2,3,5,3] f32 and logits [2,3,5,4] f32");
  TEST_FAILS(cluda_cross_entropy_backward(&ctx, &tz, &tl, &tw, 255, &tdl, &z_u8), CLUDA_ERR_DTYPE,
             "dlogits");
}

int main(int argc, char **argv) {
  (void)argc;
  const ce_case cases[] = {
      {"weighted, some ignored", 2, 3, 5, 4, 255, -4.0f, 4.0f, 1, 5},
      {"unweighted, some ignored", 2, 3, 5, 4, 255, -4.0f, 4.0f, 0, 4},
      {"odd sizes, 19 classes", 1, 3, 3, 19, 255, -6.0f, 6.0f, 1, 0},
      {"K = 1", 2, 2, 3, 1, 255, -3.0f, 3.0f, 1, 3},
      {"all ignored", 2, 2, 3, 5, 255, -3.0f, 3.0f, 1, 1},
      {"all zero weights", 2, 2, 3, 5, 255, -3.0f, 3.0f, 2, 0},
      {"logits +-100", 2, 3, 3, 5, 255, -100.0f, 100.0f, 1, 4},
      {"ignore_index 0 < K", 1, 4, 3, 3, 0, -2.0f, 2.0f, 0, 0},
      {"single pixel", 1, 1, 1, 6, 255, -2.0f, 2.0f, 0, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    check_case(&cases[i], 1);
  const ce_case big = {"threaded 2x64x64x19", 2, 64, 64, 19, 255, -8.0f, 8.0f, 1, 9};
  check_case(&big, 0);

  /* all ignored and all zero weights give exactly 0 */
  {
    cluda_ctx ctx = cluda_cpu_context(NULL);
    float z[12], loss = 1.0f;
    uint8_t lab[3] = {255, 255, 255};
    test_fill_uniform(z, 12, -1.0f, 1.0f, 43, 0);
    cluda_tensor tz = cluda_tensor_4d(CLUDA_F32, z, 1, 1, 3, 4);
    cluda_tensor tl = cluda_tensor_3d(CLUDA_U8, lab, 1, 1, 3);
    cluda_tensor tloss = cluda_tensor_1d(CLUDA_F32, &loss, 1);
    TEST_OK(cluda_cross_entropy_forward(&ctx, &tz, &tl, NULL, 255, &tloss));
    TEST_CHECK(loss == 0.0f, "all ignored: loss %g, want 0", loss);
    /* uniform logits: loss = log K exactly as in PyTorch */
    float zu[12] = {0};
    uint8_t lu[3] = {0, 1, 3};
    cluda_tensor tzu = cluda_tensor_4d(CLUDA_F32, zu, 1, 1, 3, 4);
    cluda_tensor tlu = cluda_tensor_3d(CLUDA_U8, lu, 1, 1, 3);
    TEST_OK(cluda_cross_entropy_forward(&ctx, &tzu, &tlu, NULL, 255, &tloss));
    TEST_CHECK(fabs(loss - log(4.0)) < 1e-6, "uniform logits: loss %g, want log 4", loss);
    /* one of three pixels ignored: the mean still divides by 3 (mmseg 0.16) */
    lu[2] = 255;
    TEST_OK(cluda_cross_entropy_forward(&ctx, &tzu, &tlu, NULL, 255, &tloss));
    TEST_CHECK(fabs(loss - 2.0 * log(4.0) / 3.0) < 1e-6,
               "ignored pixels stay in the denominator: loss %g, want 2 log 4 / 3", loss);
  }
  check_thread_invariance();
  check_bad_inputs();
  return test_finish(argv[0]);
}

/* conv2d: forward against a naive double reference; backward against central finite
 * differences of that reference (small shapes) or its analytic gradient (large shapes, which
 * also exercise im2col chunking and threading); dw/db accumulate, dx is overwritten; each
 * gradient may be requested alone; results are bit-identical for 1, 2 and 3 threads; the
 * scratch taken is exactly cluda_conv2d_scratch_bytes; bad arguments are rejected. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

typedef struct conv_case {
  const char *name;
  int n, h, w, cin, cout;
  int kh, kw, sh, sw, ph, pw, dh, dw, groups;
  int bias;
  int fd;      /* 1: finite differences; 0: analytic double gradient (big shapes) */
  int threads; /* 1: also check bit-identity across thread counts */
} conv_case;

typedef struct conv_dims {
  int oh, ow, cig, cog;
  int64_t nx, nw, ny;
} conv_dims;

static conv_dims dims_of(const conv_case *c) {
  conv_dims d;
  d.oh = (c->h + 2 * c->ph - c->dh * (c->kh - 1) - 1) / c->sh + 1;
  d.ow = (c->w + 2 * c->pw - c->dw * (c->kw - 1) - 1) / c->sw + 1;
  d.cig = c->cin / c->groups;
  d.cog = c->cout / c->groups;
  d.nx = (int64_t)c->n * c->h * c->w * c->cin;
  d.nw = (int64_t)c->cout * c->kh * c->kw * d.cig;
  d.ny = (int64_t)c->n * d.oh * d.ow * c->cout;
  return d;
}

static cluda_conv2d_params params_of(const conv_case *c) {
  cluda_conv2d_params p = {c->kh, c->kw, c->sh, c->sw, c->ph, c->pw, c->dh, c->dw, c->groups};
  return p;
}

/* Visits every (output, input, weight) index triple of the convolution, PyTorch semantics. */
#define FOR_EACH_TAP(c, d, BODY)                                                                   \
  for (int n_ = 0; n_ < (c)->n; n_++)                                                              \
    for (int oh_ = 0; oh_ < (d).oh; oh_++)                                                         \
      for (int ow_ = 0; ow_ < (d).ow; ow_++)                                                       \
        for (int co_ = 0; co_ < (c)->cout; co_++) {                                                \
          int64_t yi = (((int64_t)n_ * (d).oh + oh_) * (d).ow + ow_) * (c)->cout + co_;            \
          int g_ = co_ / (d).cog;                                                                  \
          for (int kh_ = 0; kh_ < (c)->kh; kh_++) {                                                \
            int ih_ = oh_ * (c)->sh - (c)->ph + kh_ * (c)->dh;                                     \
            if (ih_ < 0 || ih_ >= (c)->h) continue;                                                \
            for (int kw_ = 0; kw_ < (c)->kw; kw_++) {                                              \
              int iw_ = ow_ * (c)->sw - (c)->pw + kw_ * (c)->dw;                                   \
              if (iw_ < 0 || iw_ >= (c)->w) continue;                                              \
              for (int ci_ = 0; ci_ < (d).cig; ci_++) {                                            \
                int64_t xi = (((int64_t)n_ * (c)->h + ih_) * (c)->w + iw_) * (c)->cin +            \
                             (int64_t)g_ * (d).cig + ci_;                                          \
                int64_t wi = (((int64_t)co_ * (c)->kh + kh_) * (c)->kw + kw_) * (d).cig + ci_;     \
                BODY                                                                               \
              }                                                                                    \
            }                                                                                      \
          }                                                                                        \
        }

static void ref_forward(const conv_case *c, const double *x, const double *w, const double *b,
                        double *y) {
  conv_dims d = dims_of(c);
  for (int64_t i = 0; i < d.ny; i++)
    y[i] = b ? b[i % c->cout] : 0.0;
  FOR_EACH_TAP(c, d, { y[yi] += x[xi] * w[wi]; })
}

/* Analytic gradient of sum(r * y): dx = (overwritten), dw and db are added to. */
static void ref_backward(const conv_case *c, const double *x, const double *w, const double *r,
                         double *dx, double *dw, double *db) {
  conv_dims d = dims_of(c);
  for (int64_t i = 0; i < d.nx; i++)
    dx[i] = 0.0;
  for (int64_t i = 0; i < d.ny; i++)
    db[i % c->cout] += r[i];
  FOR_EACH_TAP(c, d, {
    dx[xi] += r[yi] * w[wi];
    dw[wi] += r[yi] * x[xi];
  })
}

typedef struct loss_ctx {
  const conv_case *c;
  const double *x, *w, *b, *r;
  double *y;
  int which; /* 0: vary x, 1: w, 2: b */
} loss_ctx;

static double loss_fn(const double *v, void *user) {
  loss_ctx *L = user;
  conv_dims d = dims_of(L->c);
  ref_forward(L->c, L->which == 0 ? v : L->x, L->which == 1 ? v : L->w, L->which == 2 ? v : L->b,
              L->y);
  double s = 0.0;
  for (int64_t i = 0; i < d.ny; i++)
    s += L->r[i] * L->y[i];
  return s;
}

static void fill_nan(float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    x[i] = NAN;
}

static int bits_equal(const float *a, const float *b, int64_t n) {
  return memcmp(a, b, (size_t)n * sizeof(float)) == 0;
}

/* The op's outputs for one configuration of inputs. */
typedef struct conv_run {
  float *y, *dx, *dw, *db;
} conv_run;

static void run_op(const conv_case *c, cluda_ctx *ctx, const float *x, const float *w,
                   const float *b, const float *dy, const float *dw0, const float *db0,
                   conv_run *out) {
  conv_dims d = dims_of(c);
  cluda_conv2d_params p = params_of(c);
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, (void *)x, c->n, c->h, c->w, c->cin);
  cluda_tensor tw = cluda_tensor_4d(CLUDA_F32, (void *)w, c->cout, c->kh, c->kw, d.cig);
  cluda_tensor tb = cluda_tensor_1d(CLUDA_F32, (void *)b, c->cout);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, out->y, c->n, d.oh, d.ow, c->cout);
  cluda_tensor tdy = cluda_tensor_4d(CLUDA_F32, (void *)dy, c->n, d.oh, d.ow, c->cout);
  cluda_tensor tdx = cluda_tensor_4d(CLUDA_F32, out->dx, c->n, c->h, c->w, c->cin);
  cluda_tensor tdw = cluda_tensor_4d(CLUDA_F32, out->dw, c->cout, c->kh, c->kw, d.cig);
  cluda_tensor tdb = cluda_tensor_1d(CLUDA_F32, out->db, c->cout);
  fill_nan(out->y, d.ny);
  fill_nan(out->dx, d.nx);
  memcpy(out->dw, dw0, (size_t)d.nw * sizeof(float));
  memcpy(out->db, db0, (size_t)c->cout * sizeof(float));
  TEST_OK(cluda_conv2d_forward(ctx, &p, &tx, &tw, c->bias ? &tb : NULL, &ty));
  TEST_OK(cluda_conv2d_backward(ctx, &p, &tx, &tw, &tdy, &tdx, &tdw, &tdb));
}

static void run_alloc(const conv_case *c, conv_run *r) {
  conv_dims d = dims_of(c);
  r->y = test_alloc_f32(d.ny);
  r->dx = test_alloc_f32(d.nx);
  r->dw = test_alloc_f32(d.nw);
  r->db = test_alloc_f32(c->cout);
}

static void run_free(conv_run *r) {
  free(r->y);
  free(r->dx);
  free(r->dw);
  free(r->db);
}

static void check_case(const conv_case *c) {
  conv_dims d = dims_of(c);
  cluda_conv2d_params p = params_of(c);
  char what[160];
  float *x = test_alloc_f32(d.nx), *w = test_alloc_f32(d.nw), *b = test_alloc_f32(c->cout);
  float *dy = test_alloc_f32(d.ny), *dw0 = test_alloc_f32(d.nw), *db0 = test_alloc_f32(c->cout);
  test_fill_uniform(x, d.nx, -1.0f, 1.0f, 21, 0);
  test_fill_uniform(w, d.nw, -1.0f, 1.0f, 21, 1);
  test_fill_uniform(b, c->cout, -1.0f, 1.0f, 21, 2);
  test_fill_uniform(dy, d.ny, -1.0f, 1.0f, 21, 3);
  test_fill_uniform(dw0, d.nw, -2.0f, 2.0f, 21, 4); /* known pre-fill: dw and db accumulate */
  test_fill_uniform(db0, c->cout, -2.0f, 2.0f, 21, 5);

  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, c->n, c->h, c->w, c->cin);
  cluda_tensor tw = cluda_tensor_4d(CLUDA_F32, w, c->cout, c->kh, c->kw, d.cig);
  conv_run run;
  run_alloc(c, &run);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, run.y, c->n, d.oh, d.ow, c->cout);
  size_t need = cluda_conv2d_scratch_bytes(&p, &tx, &tw, &ty);
  cluda_ctx ctx = test_cpu_context(need);
  run_op(c, &ctx, x, w, b, dy, dw0, db0, &run);
  /* the scratch taken is exactly what cluda_conv2d_scratch_bytes promised, and given back */
  TEST_CHECK(ctx.scratch->peak == need && ctx.scratch->used == 0,
             "%s: scratch peak %zu used %zu, cluda_conv2d_scratch_bytes %zu", c->name,
             ctx.scratch->peak, ctx.scratch->used, need);

  /* forward vs the double reference */
  double *xd = test_alloc_f64(d.nx), *wd = test_alloc_f64(d.nw), *bd = test_alloc_f64(c->cout);
  double *rd = test_alloc_f64(d.ny), *yd = test_alloc_f64(d.ny);
  test_to_double(x, xd, d.nx);
  test_to_double(w, wd, d.nw);
  test_to_double(b, bd, c->cout);
  test_to_double(dy, rd, d.ny);
  ref_forward(c, xd, wd, c->bias ? bd : NULL, yd);
  double k = (double)c->kh * c->kw * d.cig;
  double atol = 1e-6 * sqrt(k) + 1e-6;
  snprintf(what, sizeof what, "%s forward [%d,%d,%d,%d] -> [%d,%d,%d,%d]", c->name, c->n, c->h,
           c->w, c->cin, c->n, d.oh, d.ow, c->cout);
  test_compare(what, run.y, yd, d.ny, 1e-5, atol);

  /* backward: analytic double gradient, and (small shapes) finite differences of the
   * reference, which also validate the analytic one */
  double *gx = test_alloc_f64(d.nx), *gw = test_alloc_f64(d.nw), *gb = test_alloc_f64(c->cout);
  test_to_double(dw0, gw, d.nw);
  test_to_double(db0, gb, c->cout);
  ref_backward(c, xd, wd, rd, gx, gw, gb);
  if (c->fd) {
    loss_ctx L = {c, xd, wd, c->bias ? bd : NULL, rd, yd, 0};
    double *fx = test_alloc_f64(d.nx), *fw = test_alloc_f64(d.nw), *fb = test_alloc_f64(c->cout);
    test_finite_difference(loss_fn, &L, xd, d.nx, 1e-6, fx);
    L.which = 1;
    test_finite_difference(loss_fn, &L, wd, d.nw, 1e-6, fw);
    L.which = 2;
    L.b = bd;
    test_finite_difference(loss_fn, &L, bd, c->cout, 1e-6, fb);
    for (int64_t i = 0; i < d.nw; i++)
      fw[i] += dw0[i];
    for (int i = 0; i < c->cout; i++)
      fb[i] += db0[i];
    snprintf(what, sizeof what, "%s dx vs finite differences", c->name);
    test_compare(what, run.dx, fx, d.nx, 1e-4, 1e-5);
    snprintf(what, sizeof what, "%s dw (pre-filled, +=) vs finite differences", c->name);
    test_compare(what, run.dw, fw, d.nw, 1e-4, 1e-5);
    snprintf(what, sizeof what, "%s db (pre-filled, +=) vs finite differences", c->name);
    test_compare(what, run.db, fb, c->cout, 1e-4, 1e-5);
    float *fx32 = test_alloc_f32(d.nx);
    test_to_float(fx, fx32, d.nx);
    snprintf(what, sizeof what, "%s analytic reference dx vs finite differences", c->name);
    test_compare(what, fx32, gx, d.nx, 1e-5, 1e-6);
    free(fx32);
    free(fx);
    free(fw);
    free(fb);
  }
  double gtol = 1e-5 * sqrt((double)d.ny / c->n) + 1e-5;
  snprintf(what, sizeof what, "%s dx vs analytic reference", c->name);
  test_compare(what, run.dx, gx, d.nx, 1e-4, gtol);
  snprintf(what, sizeof what, "%s dw (pre-filled, +=) vs analytic reference", c->name);
  test_compare(what, run.dw, gw, d.nw, 1e-4, gtol);
  snprintf(what, sizeof what, "%s db (pre-filled, +=) vs analytic reference", c->name);
  test_compare(what, run.db, gb, c->cout, 1e-4, gtol);

  /* each gradient alone gives bit-identical results; the others are not touched */
  {
    conv_run one;
    run_alloc(c, &one);
    fill_nan(one.dx, d.nx);
    memcpy(one.dw, dw0, (size_t)d.nw * sizeof(float));
    memcpy(one.db, db0, (size_t)c->cout * sizeof(float));
    cluda_tensor tdy = cluda_tensor_4d(CLUDA_F32, dy, c->n, d.oh, d.ow, c->cout);
    cluda_tensor tdx = cluda_tensor_4d(CLUDA_F32, one.dx, c->n, c->h, c->w, c->cin);
    cluda_tensor tdw = cluda_tensor_4d(CLUDA_F32, one.dw, c->cout, c->kh, c->kw, d.cig);
    cluda_tensor tdb = cluda_tensor_1d(CLUDA_F32, one.db, c->cout);
    TEST_OK(cluda_conv2d_backward(&ctx, &p, &tx, &tw, &tdy, &tdx, NULL, NULL));
    TEST_CHECK(bits_equal(one.dx, run.dx, d.nx) && bits_equal(one.dw, dw0, d.nw) &&
                   bits_equal(one.db, db0, c->cout),
               "%s: dx alone differs from dx with dw, db", c->name);
    TEST_OK(cluda_conv2d_backward(&ctx, &p, &tx, &tw, &tdy, NULL, &tdw, NULL));
    TEST_CHECK(bits_equal(one.dw, run.dw, d.nw) && bits_equal(one.db, db0, c->cout),
               "%s: dw alone differs from dw with dx, db", c->name);
    TEST_OK(cluda_conv2d_backward(&ctx, &p, &tx, &tw, &tdy, NULL, NULL, &tdb));
    TEST_CHECK(bits_equal(one.db, run.db, c->cout), "%s: db alone differs", c->name);
    TEST_OK(cluda_conv2d_backward(&ctx, &p, &tx, &tw, &tdy, NULL, NULL, NULL));
    run_free(&one);
  }

  /* bit-identical for any OpenMP thread count */
  if (c->threads) {
    int saved = omp_get_max_threads();
    for (int nt = 1; nt <= 3; nt += 2) {
      conv_run other;
      run_alloc(c, &other);
      omp_set_num_threads(nt);
      run_op(c, &ctx, x, w, b, dy, dw0, db0, &other);
      omp_set_num_threads(saved);
      TEST_CHECK(bits_equal(other.y, run.y, d.ny) && bits_equal(other.dx, run.dx, d.nx) &&
                     bits_equal(other.dw, run.dw, d.nw) && bits_equal(other.db, run.db, c->cout),
                 "%s: %d threads differ from %d threads", c->name, nt, saved);
      run_free(&other);
    }
  }

  /* too little or no scratch is a clear error, not a crash */
  if (need > 0) {
    /* the forward may need less than the backward (depthwise), so it gets an empty arena */
    cluda_ctx empty = test_cpu_context(0);
    cluda_tensor tb = cluda_tensor_1d(CLUDA_F32, b, c->cout);
    TEST_FAILS(cluda_conv2d_forward(&empty, &p, &tx, &tw, c->bias ? &tb : NULL, &ty),
               CLUDA_ERR_ALLOC, "bytes of scratch");
    test_context_free(&empty);
    cluda_ctx small = test_cpu_context(need - CLUDA_ARENA_ALIGN);
    cluda_tensor tdy = cluda_tensor_4d(CLUDA_F32, dy, c->n, d.oh, d.ow, c->cout);
    cluda_tensor tdw = cluda_tensor_4d(CLUDA_F32, run.dw, c->cout, c->kh, c->kw, d.cig);
    cluda_tensor tdx = cluda_tensor_4d(CLUDA_F32, run.dx, c->n, c->h, c->w, c->cin);
    TEST_FAILS(cluda_conv2d_backward(&small, &p, &tx, &tw, &tdy, &tdx, &tdw, NULL), CLUDA_ERR_ALLOC,
               "bytes of scratch");
    test_context_free(&small);
    cluda_ctx none = cluda_cpu_context(NULL);
    TEST_FAILS(cluda_conv2d_forward(&none, &p, &tx, &tw, NULL, &ty), CLUDA_ERR_ARG,
               "ctx->scratch is NULL");
  }

  test_context_free(&ctx);
  run_free(&run);
  free(x);
  free(w);
  free(b);
  free(dy);
  free(dw0);
  free(db0);
  free(xd);
  free(wd);
  free(bd);
  free(rd);
  free(yd);
  free(gx);
  free(gw);
  free(gb);
}

static void check_out_size(void) {
  TEST_CHECK(cluda_conv2d_out_size(5, 3, 1, 1, 1) == 5, "3x3 pad 1 keeps the size");
  TEST_CHECK(cluda_conv2d_out_size(512, 7, 4, 3, 1) == 128, "MiT stem 512 -> 128");
  TEST_CHECK(cluda_conv2d_out_size(128, 3, 2, 1, 1) == 64, "3x3 s2 128 -> 64");
  TEST_CHECK(cluda_conv2d_out_size(65, 3, 1, 18, 18) == 65, "ASPP d18 keeps the size");
  TEST_CHECK(cluda_conv2d_out_size(13, 4, 4, 0, 1) == 3, "k = s = 4 floors 13 -> 3");
  TEST_CHECK(cluda_conv2d_out_size(2, 7, 4, 0, 1) <= 0, "kernel larger than input");
  TEST_CHECK(cluda_conv2d_out_size(3, 7, 4, 1, 1) <= 0, "negative span floors, not truncates");
}

static void check_empty_batch(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  cluda_conv2d_params p = {3, 3, 1, 1, 1, 1, 1, 1, 1};
  float w[2 * 9 * 3], b[2] = {0}, db[2] = {5.0f, 6.0f};
  test_fill_uniform(w, 54, -1.0f, 1.0f, 3, 0);
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, NULL, 0, 4, 4, 3);
  cluda_tensor tw = cluda_tensor_4d(CLUDA_F32, w, 2, 3, 3, 3);
  cluda_tensor tb = cluda_tensor_1d(CLUDA_F32, b, 2);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, NULL, 0, 4, 4, 2);
  cluda_tensor tdb = cluda_tensor_1d(CLUDA_F32, db, 2);
  TEST_OK(cluda_conv2d_forward(&ctx, &p, &tx, &tw, &tb, &ty));
  TEST_OK(cluda_conv2d_backward(&ctx, &p, &tx, &tw, &ty, &tx, NULL, &tdb));
  TEST_CHECK(db[0] == 5.0f && db[1] == 6.0f, "empty batch leaves db alone");
  TEST_CHECK(cluda_conv2d_scratch_bytes(&p, &tx, &tw, &ty) == 0, "empty batch needs no scratch");
}

/* Every kind of bad argument is rejected with the op and the argument named. */
static void check_bad_inputs(void) {
  enum { N = 2, H = 6, W = 5, CIN = 4, COUT = 6, G = 2 };
  static float x[N * H * W * CIN], w[COUT * 9 * CIN], y[N * H * W * COUT], b[COUT], big[4096];
  cluda_ctx ctx = test_cpu_context(1 << 20);
  cluda_conv2d_params p = {3, 3, 1, 1, 1, 1, 1, 1, G};
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, N, H, W, CIN);
  cluda_tensor tw = cluda_tensor_4d(CLUDA_F32, w, COUT, 3, 3, CIN / G);
  cluda_tensor tb = cluda_tensor_1d(CLUDA_F32, b, COUT);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y, N, H, W, COUT);
  TEST_OK(cluda_conv2d_forward(&ctx, &p, &tx, &tw, &tb, &ty));

  TEST_FAILS(cluda_conv2d_forward(NULL, &p, &tx, &tw, &tb, &ty), CLUDA_ERR_ARG, "ctx");
  TEST_FAILS(cluda_conv2d_forward(&ctx, NULL, &tx, &tw, &tb, &ty), CLUDA_ERR_ARG, "params p");
  TEST_FAILS(cluda_conv2d_forward(&ctx, &p, NULL, &tw, &tb, &ty), CLUDA_ERR_ARG, "x is NULL");
  TEST_FAILS(cluda_conv2d_forward(&ctx, &p, &tx, NULL, &tb, &ty), CLUDA_ERR_ARG, "w is NULL");
  TEST_FAILS(cluda_conv2d_forward(&ctx, &p, &tx, &tw, &tb, NULL), CLUDA_ERR_ARG, "y is NULL");
  cluda_tensor bad = tx;
  bad.dtype = CLUDA_U8;
  TEST_FAILS(cluda_conv2d_forward(&ctx, &p, &bad, &tw, &tb, &ty), CLUDA_ERR_DTYPE,
             "conv2d_forward: x");
  bad = cluda_tensor_3d(CLUDA_F32, w, COUT, 9, CIN / G);
  TEST_FAILS(cluda_conv2d_forward(&ctx, &p, &tx, &bad, &tb, &ty), CLUDA_ERR_SHAPE,
             "conv2d_forward: w");
  bad = cluda_tensor_1d(CLUDA_F32, b, COUT - 1);
  TEST_FAILS(cluda_conv2d_forward(&ctx, &p, &tx, &tw, &bad, &ty), CLUDA_ERR_SHAPE, "b [5]");
  bad = cluda_tensor_2d(CLUDA_F32, b, 1, COUT);
  TEST_FAILS(cluda_conv2d_forward(&ctx, &p, &tx, &tw, &bad, &ty), CLUDA_ERR_SHAPE, "b");

  /* parameter ranges */
  cluda_conv2d_params q = p;
  q.stride_w = 0;
  TEST_FAILS(cluda_conv2d_forward(&ctx, &q, &tx, &tw, &tb, &ty), CLUDA_ERR_ARG, "stride 1x0");
  q = p;
  q.dilation_h = 0;
  TEST_FAILS(cluda_conv2d_forward(&ctx, &q, &tx, &tw, &tb, &ty), CLUDA_ERR_ARG, "dilation");
  q = p;
  q.pad_h = -1;
  TEST_FAILS(cluda_conv2d_forward(&ctx, &q, &tx, &tw, &tb, &ty), CLUDA_ERR_ARG, "pad -1x1");
  q = p;
  q.groups = 0;
  TEST_FAILS(cluda_conv2d_forward(&ctx, &q, &tx, &tw, &tb, &ty), CLUDA_ERR_ARG, "groups 0");
  q = p;
  q.kernel_h = 0;
  TEST_FAILS(cluda_conv2d_forward(&ctx, &q, &tx, &tw, &tb, &ty), CLUDA_ERR_ARG, "kernel 0x3");

  /* shape relations */
  q = p;
  q.groups = 3; /* C_in 4 is not divisible by 3 */
  TEST_FAILS(cluda_conv2d_forward(&ctx, &q, &tx, &tw, &tb, &ty), CLUDA_ERR_SHAPE,
             "not divisible by groups 3");
  bad = cluda_tensor_4d(CLUDA_F32, w, 5, 3, 3, CIN / G);
  TEST_FAILS(cluda_conv2d_forward(&ctx, &p, &tx, &bad, &tb, &ty), CLUDA_ERR_SHAPE,
             "C_out 5 must be >= 1 and divisible by groups 2");
  bad = cluda_tensor_4d(CLUDA_F32, w, COUT, 3, 3, CIN); /* C_in instead of C_in / groups */
  TEST_FAILS(cluda_conv2d_forward(&ctx, &p, &tx, &bad, &tb, &ty), CLUDA_ERR_SHAPE,
             "w [6,3,3,4] f32 must be [C_out,KH,KW,C_in/groups] = [6,3,3,2]");
  q = p;
  q.kernel_w = 5; /* w still says 3x3 */
  TEST_FAILS(cluda_conv2d_forward(&ctx, &q, &tx, &tw, &tb, &ty), CLUDA_ERR_SHAPE,
             "[C_out,KH,KW,C_in/groups] = [6,3,5,2]");
  q = p;
  q.pad_h = q.pad_w = 0;
  q.kernel_h = q.kernel_w = 7;
  bad = cluda_tensor_4d(CLUDA_F32, big, COUT, 7, 7, CIN / G);
  TEST_FAILS(cluda_conv2d_forward(&ctx, &q, &tx, &bad, &tb, &ty), CLUDA_ERR_SHAPE, "output size");
  bad = cluda_tensor_4d(CLUDA_F32, y, N, H - 1, W, COUT);
  TEST_FAILS(cluda_conv2d_forward(&ctx, &p, &tx, &tw, &tb, &bad), CLUDA_ERR_SHAPE,
             "y [2,5,5,6] f32 must be [N,OH,OW,C_out] = [2,6,5,6]");
  q = p;
  q.stride_h = 2; /* now OH is 3 */
  TEST_FAILS(cluda_conv2d_forward(&ctx, &q, &tx, &tw, &tb, &ty), CLUDA_ERR_SHAPE, "= [2,3,5,6]");

  /* backward arguments */
  static float dx[N * H * W * CIN], dw[COUT * 9 * CIN], db[COUT];
  cluda_tensor tdx = cluda_tensor_4d(CLUDA_F32, dx, N, H, W, CIN);
  cluda_tensor tdw = cluda_tensor_4d(CLUDA_F32, dw, COUT, 3, 3, CIN / G);
  cluda_tensor tdb = cluda_tensor_1d(CLUDA_F32, db, COUT);
  TEST_OK(cluda_conv2d_backward(&ctx, &p, &tx, &tw, &ty, &tdx, &tdw, &tdb));
  bad = cluda_tensor_4d(CLUDA_F32, y, N, H, W, COUT - 2);
  TEST_FAILS(cluda_conv2d_backward(&ctx, &p, &tx, &tw, &bad, &tdx, &tdw, &tdb), CLUDA_ERR_SHAPE,
             "conv2d_backward: dy [2,6,5,4]");
  TEST_FAILS(cluda_conv2d_backward(&ctx, &p, &tx, &tw, NULL, &tdx, &tdw, &tdb), CLUDA_ERR_ARG,
             "dy is NULL");
  bad = cluda_tensor_4d(CLUDA_F32, dx, N, H, W - 1, CIN);
  TEST_FAILS(cluda_conv2d_backward(&ctx, &p, &tx, &tw, &ty, &bad, &tdw, &tdb), CLUDA_ERR_SHAPE,
             "dx [2,6,4,4]");
  bad = tdx;
  bad.dtype = CLUDA_U8;
  TEST_FAILS(cluda_conv2d_backward(&ctx, &p, &tx, &tw, &ty, &bad, &tdw, &tdb), CLUDA_ERR_DTYPE,
             "dx");
  bad = cluda_tensor_4d(CLUDA_F32, dw, COUT, 3, 3, 1);
  TEST_FAILS(cluda_conv2d_backward(&ctx, &p, &tx, &tw, &ty, &tdx, &bad, &tdb), CLUDA_ERR_SHAPE,
             "dw [6,3,3,1]");
  bad = cluda_tensor_1d(CLUDA_F32, db, COUT + 1);
  TEST_FAILS(cluda_conv2d_backward(&ctx, &p, &tx, &tw, &ty, &tdx, &tdw, &bad), CLUDA_ERR_SHAPE,
             "db [7]");
  q = p;
  q.dilation_w = -2;
  TEST_FAILS(cluda_conv2d_backward(&ctx, &q, &tx, &tw, &ty, &tdx, &tdw, &tdb), CLUDA_ERR_ARG,
             "conv2d_backward: dilation 1x-2");
  TEST_CHECK(cluda_conv2d_scratch_bytes(NULL, &tx, &tw, &ty) == 0,
             "scratch_bytes answers 0 for NULL params");
  test_context_free(&ctx);
}

int main(int argc, char **argv) {
  (void)argc;
  /* name, n, h, w, cin, cout, kh, kw, sh, sw, ph, pw, dh, dw, groups, bias, fd, threads */
  const conv_case cases[] = {
      {"stem 7x7 s4 p3", 2, 13, 11, 3, 8, 7, 7, 4, 4, 3, 3, 1, 1, 1, 1, 1, 0},
      {"3x3 s2 p1", 2, 9, 7, 4, 6, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1, 1, 0},
      {"patchify k=s=2", 2, 6, 8, 5, 4, 2, 2, 2, 2, 0, 0, 1, 1, 1, 1, 1, 0},
      {"patchify k=s=4 ragged", 1, 9, 13, 3, 5, 4, 4, 4, 4, 0, 0, 1, 1, 1, 0, 1, 0},
      {"depthwise 3x3 p1", 2, 6, 5, 8, 8, 3, 3, 1, 1, 1, 1, 1, 1, 8, 1, 1, 0},
      {"depthwise 3x3 d2 p2", 2, 7, 6, 6, 6, 3, 3, 1, 1, 2, 2, 2, 2, 6, 0, 1, 0},
      {"depthwise 3x3 d6 p6 on 5x5", 1, 5, 5, 5, 5, 3, 3, 1, 1, 6, 6, 6, 6, 5, 0, 1, 0},
      {"depthwise 5x3 s2 p(2,1)", 2, 7, 6, 3, 3, 5, 3, 2, 2, 2, 1, 1, 1, 3, 1, 1, 0},
      {"depthwise single channel", 2, 5, 4, 1, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0},
      {"1x1", 2, 5, 7, 6, 9, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 0},
      {"1x1 groups 3", 2, 3, 5, 6, 9, 1, 1, 1, 1, 0, 0, 1, 1, 3, 0, 1, 0},
      {"1x1 stride 2", 2, 7, 5, 4, 6, 1, 1, 2, 2, 0, 0, 1, 1, 1, 1, 1, 0},
      {"3x3 groups 2", 2, 7, 6, 6, 4, 3, 3, 1, 1, 1, 1, 1, 1, 2, 1, 1, 0},
      {"depthwise x2 multiplier", 1, 5, 6, 3, 6, 3, 3, 1, 1, 1, 1, 1, 1, 3, 1, 1, 0},
      {"3x5 s(2,1) p(1,2) d(1,2) odd", 1, 9, 11, 4, 3, 3, 5, 2, 1, 1, 2, 1, 2, 1, 0, 1, 0},
      {"3x3 d2 p2", 1, 8, 7, 2, 3, 3, 3, 1, 1, 2, 2, 2, 2, 1, 1, 1, 0},
      {"3x3 pad 4 > input 3x2", 2, 3, 2, 2, 3, 3, 3, 1, 1, 4, 4, 1, 1, 1, 1, 1, 0},
      /* padding wider than the kernel: windows lying wholly left of the input */
      {"3x3 pad (2,4) > kernel, s20, 1x1 input", 4, 1, 1, 4, 3, 3, 3, 20, 20, 2, 4, 1, 1, 1, 1, 1,
       0},
      /* larger: analytic gradient, threaded paths, bit-identity across thread counts */
      {"big stem", 2, 64, 48, 3, 16, 7, 7, 4, 4, 3, 3, 1, 1, 1, 1, 0, 1},
      {"big im2col 2 chunks, groups 2", 2, 47, 41, 1024, 4, 3, 3, 2, 2, 1, 1, 1, 1, 2, 1, 0, 1},
      {"big depthwise 3x3", 2, 24, 20, 96, 96, 3, 3, 1, 1, 1, 1, 1, 1, 96, 1, 0, 1},
      {"big depthwise d6", 2, 13, 11, 64, 64, 3, 3, 1, 1, 6, 6, 6, 6, 64, 0, 0, 1},
      /* depthwise kernels: vector blocks plus a scalar channel tail, strided dx, wide kernels,
       * interior and border columns */
      {"big depthwise 3x3 s2 d2, C 72", 2, 15, 17, 72, 72, 3, 3, 2, 2, 2, 2, 2, 2, 72, 1, 0, 1},
      {"big depthwise 5x5 p2, C 136", 1, 9, 12, 136, 136, 5, 5, 1, 1, 2, 2, 1, 1, 136, 0, 0, 1},
      {"big depthwise d12 p12, C 36", 1, 30, 29, 36, 36, 3, 3, 1, 1, 12, 12, 12, 12, 36, 1, 0, 1},
      {"big 1x1", 2, 16, 16, 64, 32, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1},
      {"big 3x3 s2", 2, 31, 29, 16, 24, 3, 3, 2, 2, 1, 1, 1, 1, 1, 0, 0, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    check_case(&cases[i]);
  check_out_size();
  check_empty_batch();
  check_bad_inputs();
  return test_finish(argv[0]);
}

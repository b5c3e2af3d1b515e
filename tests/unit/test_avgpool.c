/* avgpool (AvgPool2d, count_include_pad = True, floor mode): forward against a naive double
 * reference; backward against central finite differences of that reference (small shapes)
 * or its analytic transpose (large shapes); dx is overwritten (also where no window reaches);
 * results are bit-identical for 1, 2 and 3 threads; bad arguments are rejected. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

typedef struct pool_case {
  const char *name;
  int n, h, w, c;
  int kh, kw, sh, sw, ph, pw;
  int fd; /* 1: finite differences; 0: analytic transpose (large shapes) */
  int onehot;
} pool_case;

static int out_h(const pool_case *c) { return (c->h + 2 * c->ph - c->kh) / c->sh + 1; }
static int out_w(const pool_case *c) { return (c->w + 2 * c->pw - c->kw) / c->sw + 1; }

/* PyTorch: divisor (hend - hstart) (wend - wstart) with the window clipped to the padded
 * input, sum over the window clipped to the input. */
static void ref_forward(const pool_case *c, const double *x, double *y) {
  int oh_n = out_h(c), ow_n = out_w(c);
  for (int n = 0; n < c->n; n++)
    for (int oh = 0; oh < oh_n; oh++)
      for (int ow = 0; ow < ow_n; ow++) {
        int hs = oh * c->sh - c->ph, ws = ow * c->sw - c->pw;
        int he = hs + c->kh < c->h + c->ph ? hs + c->kh : c->h + c->ph;
        int we = ws + c->kw < c->w + c->pw ? ws + c->kw : c->w + c->pw;
        double div = (double)(he - hs) * (we - ws);
        for (int ch = 0; ch < c->c; ch++) {
          double s = 0.0;
          for (int ih = hs; ih < he; ih++)
            for (int iw = ws; iw < we; iw++)
              if (ih >= 0 && ih < c->h && iw >= 0 && iw < c->w)
                s += x[(((int64_t)n * c->h + ih) * c->w + iw) * c->c + ch];
          y[(((int64_t)n * oh_n + oh) * ow_n + ow) * c->c + ch] = s / div;
        }
      }
}

/* dx = transpose of the forward applied to r (scatter in double) */
static void ref_backward(const pool_case *c, const double *r, double *dx) {
  int oh_n = out_h(c), ow_n = out_w(c);
  for (int64_t i = 0; i < (int64_t)c->n * c->h * c->w * c->c; i++)
    dx[i] = 0.0;
  double div = (double)c->kh * c->kw;
  for (int n = 0; n < c->n; n++)
    for (int oh = 0; oh < oh_n; oh++)
      for (int ow = 0; ow < ow_n; ow++)
        for (int kh = 0; kh < c->kh; kh++)
          for (int kw = 0; kw < c->kw; kw++) {
            int ih = oh * c->sh - c->ph + kh, iw = ow * c->sw - c->pw + kw;
            if (ih < 0 || ih >= c->h || iw < 0 || iw >= c->w) continue;
            for (int ch = 0; ch < c->c; ch++)
              dx[(((int64_t)n * c->h + ih) * c->w + iw) * c->c + ch] +=
                  r[(((int64_t)n * oh_n + oh) * ow_n + ow) * c->c + ch] / div;
          }
}

typedef struct loss_ctx {
  const pool_case *c;
  const double *r;
  double *y;
  int64_t ny;
} loss_ctx;

static double loss_fn(const double *x, void *user) {
  loss_ctx *L = user;
  ref_forward(L->c, x, L->y);
  double s = 0.0;
  for (int64_t i = 0; i < L->ny; i++)
    s += L->r[i] * L->y[i];
  return s;
}

static void check_case(const pool_case *c) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  cluda_pool2d_params p = {c->kh, c->kw, c->sh, c->sw, c->ph, c->pw};
  int oh = out_h(c), ow = out_w(c);
  int64_t nx = (int64_t)c->n * c->h * c->w * c->c, ny = (int64_t)c->n * oh * ow * c->c;
  float *x = test_alloc_f32(nx), *y = test_alloc_f32(ny), *dy = test_alloc_f32(ny);
  float *dx = test_alloc_f32(nx);
  double *xd = test_alloc_f64(nx), *yd = test_alloc_f64(ny), *rd = test_alloc_f64(ny);
  double *gx = test_alloc_f64(nx);
  if (c->onehot) { /* label maps: one class per pixel */
    float *u = test_alloc_f32((int64_t)c->n * c->h * c->w);
    test_fill_uniform(u, (int64_t)c->n * c->h * c->w, 0.0f, (float)c->c, 31, 0);
    for (int64_t i = 0; i < nx; i++)
      x[i] = (int64_t)u[i / c->c] == i % c->c ? 1.0f : 0.0f;
    free(u);
  } else {
    test_fill_uniform(x, nx, -1.0f, 1.0f, 31, 0);
  }
  test_fill_uniform(dy, ny, -1.0f, 1.0f, 31, 1);
  for (int64_t i = 0; i < ny; i++)
    y[i] = NAN;
  for (int64_t i = 0; i < nx; i++)
    dx[i] = NAN; /* dx is overwritten everywhere */
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, c->n, c->h, c->w, c->c);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y, c->n, oh, ow, c->c);
  cluda_tensor tdy = cluda_tensor_4d(CLUDA_F32, dy, c->n, oh, ow, c->c);
  cluda_tensor tdx = cluda_tensor_4d(CLUDA_F32, dx, c->n, c->h, c->w, c->c);
  char what[160];

  TEST_OK(cluda_avgpool_forward(&ctx, &p, &tx, &ty));
  test_to_double(x, xd, nx);
  ref_forward(c, xd, yd);
  snprintf(what, sizeof what, "%s forward [%d,%d,%d,%d] -> [%d,%d,%d,%d]", c->name, c->n, c->h,
           c->w, c->c, c->n, oh, ow, c->c);
  test_compare(what, y, yd, ny, 1e-6, 1e-7);

  TEST_OK(cluda_avgpool_backward(&ctx, &p, &tdy, &tdx));
  test_to_double(dy, rd, ny);
  ref_backward(c, rd, gx);
  snprintf(what, sizeof what, "%s backward vs analytic transpose", c->name);
  test_compare(what, dx, gx, nx, 1e-5, 1e-7);
  if (c->fd) {
    double *fx = test_alloc_f64(nx);
    loss_ctx L = {c, rd, yd, ny};
    test_finite_difference(loss_fn, &L, xd, nx, 1e-6, fx);
    snprintf(what, sizeof what, "%s backward vs finite differences", c->name);
    test_compare(what, dx, fx, nx, 1e-4, 1e-6);
    free(fx);
  }

  /* bit-identical for any OpenMP thread count */
  int saved = omp_get_max_threads();
  float *y2 = test_alloc_f32(ny), *dx2 = test_alloc_f32(nx);
  cluda_tensor ty2 = cluda_tensor_4d(CLUDA_F32, y2, c->n, oh, ow, c->c);
  cluda_tensor tdx2 = cluda_tensor_4d(CLUDA_F32, dx2, c->n, c->h, c->w, c->c);
  for (int nt = 1; nt <= 3; nt += 2) {
    omp_set_num_threads(nt);
    TEST_OK(cluda_avgpool_forward(&ctx, &p, &tx, &ty2));
    TEST_OK(cluda_avgpool_backward(&ctx, &p, &tdy, &tdx2));
    omp_set_num_threads(saved);
    TEST_CHECK(memcmp(y, y2, (size_t)ny * sizeof(float)) == 0 &&
                   memcmp(dx, dx2, (size_t)nx * sizeof(float)) == 0,
               "%s: %d threads differ from %d", c->name, nt, saved);
  }
  free(y2);
  free(dx2);
  free(x);
  free(y);
  free(dy);
  free(dx);
  free(xd);
  free(yd);
  free(rd);
  free(gx);
}

static void check_bad_inputs(void) {
  enum { N = 2, H = 7, W = 6, C = 3 };
  static float x[N * H * W * C], y[N * H * W * C];
  cluda_ctx ctx = cluda_cpu_context(NULL);
  cluda_pool2d_params p = {3, 3, 2, 2, 1, 1}; /* 7x6 -> 4x3 */
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, N, H, W, C);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y, N, 4, 3, C);
  TEST_OK(cluda_avgpool_forward(&ctx, &p, &tx, &ty));
  TEST_OK(cluda_avgpool_backward(&ctx, &p, &ty, &tx));

  TEST_FAILS(cluda_avgpool_forward(&ctx, NULL, &tx, &ty), CLUDA_ERR_ARG, "params p");
  TEST_FAILS(cluda_avgpool_forward(&ctx, &p, NULL, &ty), CLUDA_ERR_ARG, "x is NULL");
  TEST_FAILS(cluda_avgpool_forward(&ctx, &p, &tx, NULL), CLUDA_ERR_ARG, "y is NULL");
  TEST_FAILS(cluda_avgpool_forward(NULL, &p, &tx, &ty), CLUDA_ERR_ARG, "ctx");
  cluda_tensor bad = tx;
  bad.dtype = CLUDA_U8;
  TEST_FAILS(cluda_avgpool_forward(&ctx, &p, &bad, &ty), CLUDA_ERR_DTYPE, "avgpool_forward: x");
  bad = cluda_tensor_3d(CLUDA_F32, y, N, 12, C);
  TEST_FAILS(cluda_avgpool_forward(&ctx, &p, &tx, &bad), CLUDA_ERR_SHAPE, "y");

  cluda_pool2d_params q = p;
  q.kernel_w = 0;
  TEST_FAILS(cluda_avgpool_forward(&ctx, &q, &tx, &ty), CLUDA_ERR_ARG, "kernel 3x0");
  q = p;
  q.stride_h = 0;
  TEST_FAILS(cluda_avgpool_forward(&ctx, &q, &tx, &ty), CLUDA_ERR_ARG, "stride 0x2");
  q = p;
  q.pad_w = -1;
  TEST_FAILS(cluda_avgpool_forward(&ctx, &q, &tx, &ty), CLUDA_ERR_ARG, "pad 1x-1");
  q = p;
  q.pad_h = 2; /* more than half of kernel 3 */
  TEST_FAILS(cluda_avgpool_forward(&ctx, &q, &tx, &ty), CLUDA_ERR_ARG, "kernel/2");
  q = p;
  q.kernel_h = q.kernel_w = 8;
  q.pad_h = q.pad_w = 0; /* no 8x8 window fits 7x6 */
  TEST_FAILS(cluda_avgpool_forward(&ctx, &q, &tx, &ty), CLUDA_ERR_SHAPE, "output size < 1");
  bad = cluda_tensor_4d(CLUDA_F32, y, N, 3, 3, C);
  TEST_FAILS(cluda_avgpool_forward(&ctx, &p, &tx, &bad), CLUDA_ERR_SHAPE,
             "y [2,3,3,3] f32 must be [N,OH,OW,C] = [2,4,3,3]");
  bad = cluda_tensor_4d(CLUDA_F32, y, N, 4, 3, C + 1);
  TEST_FAILS(cluda_avgpool_forward(&ctx, &p, &tx, &bad), CLUDA_ERR_SHAPE, "= [2,4,3,3]");
  bad = cluda_tensor_4d(CLUDA_F32, y, 1, 4, 3, C);
  TEST_FAILS(cluda_avgpool_forward(&ctx, &p, &tx, &bad), CLUDA_ERR_SHAPE, "y [1,4,3,3]");
  bad = cluda_tensor_4d(CLUDA_F32, x, N, 0, W, C);
  TEST_FAILS(cluda_avgpool_forward(&ctx, &p, &bad, &ty), CLUDA_ERR_SHAPE, "H, W >= 1");

  /* backward: dy shaped like y, dx like x */
  TEST_FAILS(cluda_avgpool_backward(&ctx, &p, NULL, &tx), CLUDA_ERR_ARG, "dy is NULL");
  TEST_FAILS(cluda_avgpool_backward(&ctx, &p, &ty, NULL), CLUDA_ERR_ARG, "dx is NULL");
  bad = cluda_tensor_4d(CLUDA_F32, y, N, 4, 4, C);
  TEST_FAILS(cluda_avgpool_backward(&ctx, &p, &bad, &tx), CLUDA_ERR_SHAPE,
             "avgpool_backward: dy [2,4,4,3]");
  bad = cluda_tensor_4d(CLUDA_F32, x, N, H + 2, W, C); /* 9x6 -> 5x3 */
  TEST_FAILS(cluda_avgpool_backward(&ctx, &p, &ty, &bad), CLUDA_ERR_SHAPE, "for dx [2,9,6,3]");
  bad = tx;
  bad.dtype = CLUDA_U8;
  TEST_FAILS(cluda_avgpool_backward(&ctx, &p, &ty, &bad), CLUDA_ERR_DTYPE, "dx");
}

int main(int argc, char **argv) {
  (void)argc;
  /* name, n, h, w, c, kh, kw, sh, sw, ph, pw, fd, onehot */
  const pool_case cases[] = {
      {"3x3 s2 p1 odd", 2, 7, 9, 3, 3, 3, 2, 2, 1, 1, 1, 0},
      {"3x3 s1 p1", 2, 5, 6, 4, 3, 3, 1, 1, 1, 1, 1, 0},
      {"2x3 s(1,2) p(1,1)", 1, 6, 7, 2, 2, 3, 1, 2, 1, 1, 1, 0},
      {"4x4 s3 p2 ragged", 2, 9, 10, 3, 4, 4, 3, 3, 2, 2, 1, 0},
      {"k=s=2", 2, 6, 8, 5, 2, 2, 2, 2, 0, 0, 1, 0},
      {"k=s=3 ragged", 1, 8, 7, 2, 3, 3, 3, 3, 0, 0, 1, 0},
      {"1x1 s2", 2, 5, 5, 3, 1, 1, 2, 2, 0, 0, 1, 0},
      {"kernel = input", 2, 4, 5, 3, 4, 5, 1, 1, 0, 0, 1, 0},
      {"k=s=8 one-hot", 1, 16, 24, 3, 8, 8, 8, 8, 0, 0, 1, 1},
      /* DAFormer label down-scaling: kernel = stride = 32 on one-hot maps */
      {"k=s=32 one-hot labels", 2, 64, 96, 19, 32, 32, 32, 32, 0, 0, 0, 1},
      {"k=s=32 ragged 70x33", 1, 70, 33, 5, 32, 32, 32, 32, 0, 0, 0, 1},
      {"big 3x3 s2 p1", 2, 63, 47, 32, 3, 3, 2, 2, 1, 1, 0, 0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    check_case(&cases[i]);
  check_bad_inputs();
  return test_finish(argv[0]);
}

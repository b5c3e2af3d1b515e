/* Bilinear resize: forward against a double reference of PyTorch's formula (both
 * align_corners modes, up/down/non-integer ratios, size-1 edges), backward against finite
 * differences and the adjoint identity, hand-checked PyTorch values, thread-count
 * invariance and argument validation. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

typedef struct shape {
  int n, ih, iw, c, oh, ow, ac;
} shape;

/* One axis of the reference: src = dst (in-1)/(out-1) (0 when out == 1) or
 * max(0, (dst + 1/2) in/out - 1/2); i0 = min(floor(src), in-1), i1 = min(i0+1, in-1). */
static void axis_ref(int dst, int in, int out, int ac, int *i0, int *i1, double *l1) {
  double src;
  if (ac)
    src = out > 1 ? dst * (double)(in - 1) / (double)(out - 1) : 0.0;
  else
    src = fmax(0.0, (dst + 0.5) * (double)in / (double)out - 0.5);
  int f = (int)floor(src);
  if (f > in - 1) f = in - 1;
  *i0 = f;
  *i1 = f + 1 < in ? f + 1 : in - 1;
  *l1 = fmin(fmax(src - f, 0.0), 1.0);
}

static void resize_ref(const shape *s, const double *x, double *y) {
  for (int b = 0; b < s->n; b++)
    for (int yo = 0; yo < s->oh; yo++) {
      int h0, h1;
      double lh;
      axis_ref(yo, s->ih, s->oh, s->ac, &h0, &h1, &lh);
      for (int xo = 0; xo < s->ow; xo++) {
        int w0, w1;
        double lw;
        axis_ref(xo, s->iw, s->ow, s->ac, &w0, &w1, &lw);
        for (int k = 0; k < s->c; k++) {
#define X(h, w) x[(((int64_t)b * s->ih + (h)) * s->iw + (w)) * s->c + k]
          double v = (1 - lh) * ((1 - lw) * X(h0, w0) + lw * X(h0, w1)) +
                     lh * ((1 - lw) * X(h1, w0) + lw * X(h1, w1));
#undef X
          y[(((int64_t)b * s->oh + yo) * s->ow + xo) * s->c + k] = v;
        }
      }
    }
}

typedef struct fd_user {
  const shape *s;
  const double *r;
  double *y;
  int64_t ny;
} fd_user;

static double weighted_output(const double *x, void *user) {
  fd_user *u = user;
  resize_ref(u->s, x, u->y);
  double l = 0.0;
  for (int64_t i = 0; i < u->ny; i++)
    l += u->r[i] * u->y[i];
  return l;
}

static void check_case(const shape *s, int with_fd) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int64_t nx = (int64_t)s->n * s->ih * s->iw * s->c,
                ny = (int64_t)s->n * s->oh * s->ow * s->c;
  float *x = test_alloc_f32(nx), *y = test_alloc_f32(ny), *g = test_alloc_f32(ny),
        *dx = test_alloc_f32(nx);
  double *xd = test_alloc_f64(nx), *want = test_alloc_f64(ny), *gd = test_alloc_f64(ny),
         *grad = test_alloc_f64(nx);
  test_fill_uniform(x, nx, -2.0f, 2.0f, 21, 0);
  test_fill_uniform(g, ny, -1.0f, 1.0f, 21, 1);
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, s->n, s->ih, s->iw, s->c);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y, s->n, s->oh, s->ow, s->c);
  cluda_tensor tg = cluda_tensor_4d(CLUDA_F32, g, s->n, s->oh, s->ow, s->c);
  cluda_tensor tdx = cluda_tensor_4d(CLUDA_F32, dx, s->n, s->ih, s->iw, s->c);
  char what[128];
  snprintf(what, sizeof what, "[%d,%d,%d,%d] -> %dx%d align_corners=%d", s->n, s->ih, s->iw, s->c,
           s->oh, s->ow, s->ac);

  TEST_OK(cluda_resize_bilinear_forward(&ctx, s->ac, &tx, &ty));
  test_to_double(x, xd, nx);
  resize_ref(s, xd, want);
  char msg[160];
  snprintf(msg, sizeof msg, "forward %s", what);
  test_compare(msg, y, want, ny, 1e-6, 1e-6);

  for (int64_t i = 0; i < nx; i++)
    dx[i] = 12345.0f; /* the backward must overwrite */
  TEST_OK(cluda_resize_bilinear_backward(&ctx, s->ac, &tg, &tdx));
  /* adjoint identity <resize(x), g> = <x, resize^T(g)> */
  double lhs = 0.0, rhs = 0.0, mag = 0.0;
  for (int64_t i = 0; i < ny; i++)
    lhs += (double)y[i] * g[i], mag += fabs((double)y[i] * g[i]);
  for (int64_t i = 0; i < nx; i++)
    rhs += (double)x[i] * dx[i];
  TEST_CHECK(fabs(lhs - rhs) <= 1e-5 * mag + 1e-9, "adjoint %s: %.9g vs %.9g", what, lhs, rhs);

  if (with_fd) {
    test_to_double(g, gd, ny);
    double *ybuf = test_alloc_f64(ny);
    fd_user u = {s, gd, ybuf, ny};
    test_finite_difference(weighted_output, &u, xd, nx, 1e-6, grad);
    snprintf(msg, sizeof msg, "backward vs finite differences %s", what);
    test_compare(msg, dx, grad, nx, 1e-5, 1e-6);
    free(ybuf);
  }
  free(x);
  free(y);
  free(g);
  free(dx);
  free(xd);
  free(want);
  free(gd);
  free(grad);
}

/* Values PyTorch gives for F.interpolate(torch.arange(4.).view(1,1,1,4), size=(1,8),
 * mode='bilinear', align_corners=...) and for a 2x2 -> 3x3 align_corners=True. */
static void check_known_values(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  float x[4] = {0, 1, 2, 3}, y[8];
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, 1, 1, 4, 1);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y, 1, 1, 8, 1);
  const float half[8] = {0.0f, 0.25f, 0.75f, 1.25f, 1.75f, 2.25f, 2.75f, 3.0f};
  TEST_OK(cluda_resize_bilinear_forward(&ctx, 0, &tx, &ty));
  test_compare_f32("arange(4) -> 8, align_corners=False", y, half, 8, 0.0, 0.0);
  const float corners[8] = {0.0f,         3.0f / 7.0f,  6.0f / 7.0f,  9.0f / 7.0f,
                            12.0f / 7.0f, 15.0f / 7.0f, 18.0f / 7.0f, 3.0f};
  TEST_OK(cluda_resize_bilinear_forward(&ctx, 1, &tx, &ty));
  test_compare_f32("arange(4) -> 8, align_corners=True", y, corners, 8, 1e-6, 1e-7);

  float q[4] = {1, 2, 3, 4}, r[9];
  cluda_tensor tq = cluda_tensor_4d(CLUDA_F32, q, 1, 2, 2, 1);
  cluda_tensor tr = cluda_tensor_4d(CLUDA_F32, r, 1, 3, 3, 1);
  const float want_r[9] = {1, 1.5f, 2, 2, 2.5f, 3, 3, 3.5f, 4};
  TEST_OK(cluda_resize_bilinear_forward(&ctx, 1, &tq, &tr));
  test_compare_f32("2x2 -> 3x3, align_corners=True", r, want_r, 9, 0.0, 0.0);
  /* x0.5 with half-pixel centres averages 2x2 blocks */
  float z[1];
  cluda_tensor tz = cluda_tensor_4d(CLUDA_F32, z, 1, 1, 1, 1);
  TEST_OK(cluda_resize_bilinear_forward(&ctx, 0, &tq, &tz));
  TEST_CHECK(z[0] == 2.5f, "2x2 -> 1x1 align_corners=False gives %g, want 2.5", z[0]);
  TEST_OK(cluda_resize_bilinear_forward(&ctx, 1, &tq, &tz));
  TEST_CHECK(z[0] == 1.0f, "2x2 -> 1x1 align_corners=True gives %g, want 1", z[0]);
  /* same size copies exactly */
  float id[4];
  cluda_tensor tid = cluda_tensor_4d(CLUDA_F32, id, 1, 2, 2, 1);
  TEST_OK(cluda_resize_bilinear_forward(&ctx, 0, &tq, &tid));
  test_compare_f32("same size is a copy", id, q, 4, 0.0, 0.0);
}

/* Results must be bit-identical for any thread count (sizes above the OpenMP threshold). */
static void check_thread_invariance(int ac) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int n = 2, ih = 33, iw = 47, c = 8, oh = 64, ow = 90;
  const int64_t nx = (int64_t)n * ih * iw * c, ny = (int64_t)n * oh * ow * c;
  float *x = test_alloc_f32(nx), *y1 = test_alloc_f32(ny), *y4 = test_alloc_f32(ny);
  float *g = test_alloc_f32(ny), *d1 = test_alloc_f32(nx), *d4 = test_alloc_f32(nx);
  test_fill_uniform(x, nx, -1.0f, 1.0f, 22, 0);
  test_fill_uniform(g, ny, -1.0f, 1.0f, 22, 1);
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, n, ih, iw, c);
  cluda_tensor tg = cluda_tensor_4d(CLUDA_F32, g, n, oh, ow, c);
  cluda_tensor ty1 = cluda_tensor_4d(CLUDA_F32, y1, n, oh, ow, c);
  cluda_tensor ty4 = cluda_tensor_4d(CLUDA_F32, y4, n, oh, ow, c);
  cluda_tensor td1 = cluda_tensor_4d(CLUDA_F32, d1, n, ih, iw, c);
  cluda_tensor td4 = cluda_tensor_4d(CLUDA_F32, d4, n, ih, iw, c);
  int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  TEST_OK(cluda_resize_bilinear_forward(&ctx, ac, &tx, &ty1));
  TEST_OK(cluda_resize_bilinear_backward(&ctx, ac, &tg, &td1));
  omp_set_num_threads(4);
  TEST_OK(cluda_resize_bilinear_forward(&ctx, ac, &tx, &ty4));
  TEST_OK(cluda_resize_bilinear_backward(&ctx, ac, &tg, &td4));
  omp_set_num_threads(saved);
  TEST_CHECK(memcmp(y1, y4, (size_t)ny * sizeof(float)) == 0,
             "forward differs between 1 and 4 threads (align_corners=%d)", ac);
  TEST_CHECK(memcmp(d1, d4, (size_t)nx * sizeof(float)) == 0,
             "backward differs between 1 and 4 threads (align_corners=%d)", ac);
  /* and the threaded sizes are still right: check the transpose through the adjoint */
  double lhs = 0.0, rhs = 0.0, mag = 0.0;
  for (int64_t i = 0; i < ny; i++)
    lhs += (double)y4[i] * g[i], mag += fabs((double)y4[i] * g[i]);
  for (int64_t i = 0; i < nx; i++)
    rhs += (double)x[i] * d4[i];
  TEST_CHECK(fabs(lhs - rhs) <= 1e-5 * mag, "adjoint (threaded, align_corners=%d)", ac);
  free(x);
  free(y1);
  free(y4);
  free(g);
  free(d1);
  free(d4);
}

static void check_bad_inputs(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  float buf[256];
  uint8_t lab[256];
  cluda_tensor x = cluda_tensor_4d(CLUDA_F32, buf, 2, 4, 5, 3);
  cluda_tensor y = cluda_tensor_4d(CLUDA_F32, buf, 2, 3, 2, 3);
  cluda_tensor y_batch = cluda_tensor_4d(CLUDA_F32, buf, 1, 3, 2, 3);
  cluda_tensor y_chan = cluda_tensor_4d(CLUDA_F32, buf, 2, 3, 2, 4);
  cluda_tensor y_empty = cluda_tensor_4d(CLUDA_F32, buf, 2, 0, 2, 3);
  cluda_tensor x_empty = cluda_tensor_4d(CLUDA_F32, buf, 2, 4, 0, 3);
  cluda_tensor y_u8 = cluda_tensor_4d(CLUDA_U8, lab, 2, 3, 2, 3);
  cluda_tensor x_3d = cluda_tensor_3d(CLUDA_F32, buf, 2, 4, 5);
  cluda_tensor no_data = cluda_tensor_4d(CLUDA_F32, NULL, 2, 3, 2, 3);
  TEST_FAILS(cluda_resize_bilinear_forward(&ctx, 2, &x, &y), CLUDA_ERR_ARG, "align_corners");
  TEST_FAILS(cluda_resize_bilinear_forward(&ctx, -1, &x, &y), CLUDA_ERR_ARG, "align_corners");
  TEST_FAILS(cluda_resize_bilinear_forward(&ctx, 0, NULL, &y), CLUDA_ERR_ARG, "x is NULL");
  TEST_FAILS(cluda_resize_bilinear_forward(&ctx, 0, &x, NULL), CLUDA_ERR_ARG, "y is NULL");
  TEST_FAILS(cluda_resize_bilinear_forward(&ctx, 0, &x, &no_data), CLUDA_ERR_ARG, "y");
  TEST_FAILS(cluda_resize_bilinear_forward(&ctx, 0, &x, &y_u8), CLUDA_ERR_DTYPE,
             "resize_bilinear_forward: y");
  TEST_FAILS(cluda_resize_bilinear_forward(&ctx, 0, &x_3d, &y), CLUDA_ERR_SHAPE,
             "resize_bilinear_forward: x [2,4,5]");
  TEST_FAILS(cluda_resize_bilinear_forward(&ctx, 0, &x, &y_batch), CLUDA_ERR_SHAPE,
             "x [2,4,5,3] f32 and y [1,3,2,3] f32");
  TEST_FAILS(cluda_resize_bilinear_forward(&ctx, 0, &x, &y_chan), CLUDA_ERR_SHAPE,
             "x [2,4,5,3] f32 and y [2,3,2,4] f32");
  TEST_FAILS(cluda_resize_bilinear_forward(&ctx, 0, &x, &y_empty), CLUDA_ERR_SHAPE,
             "y [2,0,2,3] f32 must have a non-empty");
  TEST_FAILS(cluda_resize_bilinear_forward(&ctx, 0, &x_empty, &y), CLUDA_ERR_SHAPE,
             "x [2,4,0,3] f32 must have a non-empty");
  TEST_FAILS(cluda_resize_bilinear_forward(NULL, 0, &x, &y), CLUDA_ERR_ARG, "ctx");
  /* backward: dy has y's shape, dx has x's */
  TEST_FAILS(cluda_resize_bilinear_backward(&ctx, 3, &y, &x), CLUDA_ERR_ARG, "align_corners");
  TEST_FAILS(cluda_resize_bilinear_backward(&ctx, 0, NULL, &x), CLUDA_ERR_ARG, "dy is NULL");
  TEST_FAILS(cluda_resize_bilinear_backward(&ctx, 0, &y, NULL), CLUDA_ERR_ARG, "dx is NULL");
  TEST_FAILS(cluda_resize_bilinear_backward(&ctx, 0, &y_u8, &x), CLUDA_ERR_DTYPE,
             "resize_bilinear_backward: dy");
  TEST_FAILS(cluda_resize_bilinear_backward(&ctx, 0, &y, &x_3d), CLUDA_ERR_SHAPE,
             "resize_bilinear_backward: dx [2,4,5]");
  TEST_FAILS(cluda_resize_bilinear_backward(&ctx, 0, &y_chan, &x), CLUDA_ERR_SHAPE,
             "dx [2,4,5,3] f32 and dy [2,3,2,4] f32");
  TEST_FAILS(cluda_resize_bilinear_backward(&ctx, 0, &y_empty, &x), CLUDA_ERR_SHAPE,
             "dy [2,0,2,3] f32 must have a non-empty");
}

int main(int argc, char **argv) {
  (void)argc;
  const shape cases[] = {
      {2, 4, 5, 3, 8, 10, 0},  /* x2 up */
      {2, 8, 10, 3, 4, 5, 0},  /* x0.5 down */
      {1, 3, 7, 2, 5, 4, 0},   /* non-integer, mixed up/down, odd */
      {2, 3, 4, 1, 12, 16, 0}, /* x4 */
      {1, 1, 1, 3, 3, 4, 0},   /* from a single pixel */
      {2, 5, 6, 2, 1, 1, 0},   /* to a single pixel */
      {1, 1, 5, 2, 1, 3, 0},   /* one row */
      {2, 4, 4, 2, 4, 4, 0},   /* same size */
      {1, 7, 3, 2, 2, 9, 0},   /* strong down in H, up in W */
      {2, 4, 5, 3, 8, 10, 1},  {2, 8, 10, 3, 4, 5, 1}, {1, 3, 7, 2, 5, 4, 1},
      {1, 1, 1, 3, 3, 4, 1},   {2, 5, 6, 2, 1, 1, 1},  {1, 1, 5, 2, 1, 3, 1},
      {2, 4, 4, 2, 4, 4, 1},   {1, 7, 3, 2, 2, 9, 1},  {1, 5, 5, 2, 9, 9, 1}, /* x2 corners */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    check_case(&cases[i], 1);
  /* larger, threaded sizes (forward and adjoint only) */
  const shape big[] = {
      {2, 32, 48, 16, 128, 192, 0}, {2, 65, 65, 16, 33, 17, 1}, {1, 16, 16, 19, 65, 65, 1}};
  for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
    check_case(&big[i], 0);
  check_known_values();
  check_thread_invariance(0);
  check_thread_invariance(1);
  check_bad_inputs();
  return test_finish(argv[0]);
}

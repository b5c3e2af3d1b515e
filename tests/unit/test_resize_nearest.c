/* Nearest resize (PyTorch legacy 'nearest'): forward for f32 maps and u8 labels against a
 * reference of PyTorch's rule, backward against finite differences and the adjoint
 * identity, PyTorch's float-scale quirk, thread-count invariance and argument validation. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

typedef struct shape {
  int n, ih, iw, c, oh, ow;
} shape;

/* PyTorch nearest_idx: copy for equal sizes, dst/2 for exact x2, otherwise
 * min(floor(dst * scale), in - 1) with scale = in / out rounded to float. */
static int src_ref(int dst, int in, int out) {
  if (in == out) return dst;
  if (out == 2 * in) return dst / 2;
  float scale = (float)in / (float)out;
  double s = floor((double)((float)dst * scale));
  return s < in - 1 ? (int)s : in - 1;
}

static int64_t src_offset(const shape *s, int64_t out_index) {
  int64_t k = out_index % s->c, p = out_index / s->c;
  int xo = (int)(p % s->ow), yo = (int)(p / s->ow % s->oh), b = (int)(p / s->ow / s->oh);
  return (((int64_t)b * s->ih + src_ref(yo, s->ih, s->oh)) * s->iw + src_ref(xo, s->iw, s->ow)) *
             s->c +
         k;
}

typedef struct fd_user {
  const shape *s;
  const double *r;
  int64_t ny;
} fd_user;

static double weighted_output(const double *x, void *user) {
  fd_user *u = user;
  double l = 0.0;
  for (int64_t i = 0; i < u->ny; i++)
    l += u->r[i] * x[src_offset(u->s, i)];
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
  uint8_t *lx = test_alloc((size_t)nx), *ly = test_alloc((size_t)ny);
  test_fill_uniform(x, nx, -2.0f, 2.0f, 31, 0);
  test_fill_uniform(g, ny, -1.0f, 1.0f, 31, 1);
  for (int64_t i = 0; i < nx; i++)
    lx[i] = (uint8_t)(i * 37 % 256); /* includes 255 */
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, s->n, s->ih, s->iw, s->c);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y, s->n, s->oh, s->ow, s->c);
  cluda_tensor tg = cluda_tensor_4d(CLUDA_F32, g, s->n, s->oh, s->ow, s->c);
  cluda_tensor tdx = cluda_tensor_4d(CLUDA_F32, dx, s->n, s->ih, s->iw, s->c);
  cluda_tensor tlx = cluda_tensor_4d(CLUDA_U8, lx, s->n, s->ih, s->iw, s->c);
  cluda_tensor tly = cluda_tensor_4d(CLUDA_U8, ly, s->n, s->oh, s->ow, s->c);
  char what[128], msg[192];
  snprintf(what, sizeof what, "[%d,%d,%d,%d] -> %dx%d", s->n, s->ih, s->iw, s->c, s->oh, s->ow);

  TEST_OK(cluda_resize_nearest_forward(&ctx, &tx, &ty));
  test_to_double(x, xd, nx);
  for (int64_t i = 0; i < ny; i++)
    want[i] = xd[src_offset(s, i)];
  snprintf(msg, sizeof msg, "forward f32 %s", what);
  test_compare(msg, y, want, ny, 0.0, 0.0);

  for (int64_t i = 0; i < ny; i++)
    ly[i] = 0xAB; /* the forward must overwrite */
  TEST_OK(cluda_resize_nearest_forward(&ctx, &tlx, &tly));
  int64_t bad = 0;
  for (int64_t i = 0; i < ny; i++)
    bad += ly[i] != lx[src_offset(s, i)];
  TEST_CHECK(bad == 0, "forward u8 %s: %lld labels differ", what, (long long)bad);

  for (int64_t i = 0; i < nx; i++)
    dx[i] = 12345.0f; /* the backward must overwrite */
  TEST_OK(cluda_resize_nearest_backward(&ctx, &tg, &tdx));
  double lhs = 0.0, rhs = 0.0, mag = 0.0;
  for (int64_t i = 0; i < ny; i++)
    lhs += (double)y[i] * g[i], mag += fabs((double)y[i] * g[i]);
  for (int64_t i = 0; i < nx; i++)
    rhs += (double)x[i] * dx[i];
  TEST_CHECK(fabs(lhs - rhs) <= 1e-5 * mag + 1e-9, "adjoint %s: %.9g vs %.9g", what, lhs, rhs);

  if (with_fd) {
    test_to_double(g, gd, ny);
    fd_user u = {s, gd, ny};
    test_finite_difference(weighted_output, &u, xd, nx, 1e-6, grad);
    snprintf(msg, sizeof msg, "backward vs finite differences %s", what);
    test_compare(msg, dx, grad, nx, 1e-5, 1e-6);
  }
  free(x);
  free(y);
  free(g);
  free(dx);
  free(xd);
  free(want);
  free(gd);
  free(grad);
  free(lx);
  free(ly);
}

/* PyTorch computes the scale in float: F.interpolate(torch.arange(6.).view(1,1,1,6),
 * size=(1,74), mode='nearest') picks source 2 for output 37, where exact arithmetic would
 * give floor(37 * 6 / 74) = 3. Also the textbook x2 / x0.5 / x1.5 label cases. */
static void check_known_values(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  float x[6] = {0, 1, 2, 3, 4, 5}, y[74];
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, 1, 1, 6, 1);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y, 1, 1, 74, 1);
  TEST_OK(cluda_resize_nearest_forward(&ctx, &tx, &ty));
  TEST_CHECK(y[37] == 2.0f, "6 -> 74: output 37 reads %g, PyTorch reads 2", y[37]);
  TEST_CHECK(y[36] == 2.0f && y[38] == 3.0f && y[73] == 5.0f, "6 -> 74 neighbours");

  uint8_t lab[4] = {1, 2, 3, 255}, up[16], down[1], odd[9];
  cluda_tensor tl = cluda_tensor_4d(CLUDA_U8, lab, 1, 2, 2, 1);
  cluda_tensor tup = cluda_tensor_4d(CLUDA_U8, up, 1, 4, 4, 1);
  cluda_tensor tdown = cluda_tensor_4d(CLUDA_U8, down, 1, 1, 1, 1);
  cluda_tensor todd = cluda_tensor_4d(CLUDA_U8, odd, 1, 3, 3, 1);
  const uint8_t want_up[16] = {1, 1, 2, 2, 1, 1, 2, 2, 3, 3, 255, 255, 3, 3, 255, 255};
  const uint8_t want_odd[9] = {1, 1, 2, 1, 1, 2, 3, 3, 255}; /* floor(d * 2/3): 0, 0, 1 */
  TEST_OK(cluda_resize_nearest_forward(&ctx, &tl, &tup));
  TEST_CHECK(memcmp(up, want_up, 16) == 0, "2x2 -> 4x4 labels");
  TEST_OK(cluda_resize_nearest_forward(&ctx, &tl, &tdown));
  TEST_CHECK(down[0] == 1, "2x2 -> 1x1 labels take the top-left pixel, got %d", down[0]);
  TEST_OK(cluda_resize_nearest_forward(&ctx, &tl, &todd));
  TEST_CHECK(memcmp(odd, want_odd, 9) == 0, "2x2 -> 3x3 labels");
}

static void check_thread_invariance(void) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int n = 2, ih = 40, iw = 57, c = 8, oh = 97, ow = 75;
  const int64_t nx = (int64_t)n * ih * iw * c, ny = (int64_t)n * oh * ow * c;
  float *x = test_alloc_f32(nx), *y1 = test_alloc_f32(ny), *y4 = test_alloc_f32(ny);
  float *g = test_alloc_f32(ny), *d1 = test_alloc_f32(nx), *d4 = test_alloc_f32(nx);
  test_fill_uniform(x, nx, -1.0f, 1.0f, 32, 0);
  test_fill_uniform(g, ny, -1.0f, 1.0f, 32, 1);
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, n, ih, iw, c);
  cluda_tensor tg = cluda_tensor_4d(CLUDA_F32, g, n, oh, ow, c);
  cluda_tensor ty1 = cluda_tensor_4d(CLUDA_F32, y1, n, oh, ow, c);
  cluda_tensor ty4 = cluda_tensor_4d(CLUDA_F32, y4, n, oh, ow, c);
  cluda_tensor td1 = cluda_tensor_4d(CLUDA_F32, d1, n, ih, iw, c);
  cluda_tensor td4 = cluda_tensor_4d(CLUDA_F32, d4, n, ih, iw, c);
  int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  TEST_OK(cluda_resize_nearest_forward(&ctx, &tx, &ty1));
  TEST_OK(cluda_resize_nearest_backward(&ctx, &tg, &td1));
  omp_set_num_threads(4);
  TEST_OK(cluda_resize_nearest_forward(&ctx, &tx, &ty4));
  TEST_OK(cluda_resize_nearest_backward(&ctx, &tg, &td4));
  omp_set_num_threads(saved);
  TEST_CHECK(memcmp(y1, y4, (size_t)ny * sizeof(float)) == 0, "forward differs by threads");
  TEST_CHECK(memcmp(d1, d4, (size_t)nx * sizeof(float)) == 0, "backward differs by threads");
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
  uint16_t bf[256];
  cluda_tensor x = cluda_tensor_4d(CLUDA_F32, buf, 2, 4, 5, 3);
  cluda_tensor y = cluda_tensor_4d(CLUDA_F32, buf, 2, 3, 2, 3);
  cluda_tensor x_u8 = cluda_tensor_4d(CLUDA_U8, lab, 2, 4, 5, 3);
  cluda_tensor y_u8 = cluda_tensor_4d(CLUDA_U8, lab, 2, 3, 2, 3);
  cluda_tensor x_bf16 = cluda_tensor_4d(CLUDA_BF16, bf, 2, 4, 5, 3);
  cluda_tensor y_batch = cluda_tensor_4d(CLUDA_F32, buf, 3, 3, 2, 3);
  cluda_tensor y_chan = cluda_tensor_4d(CLUDA_F32, buf, 2, 3, 2, 1);
  cluda_tensor y_empty = cluda_tensor_4d(CLUDA_F32, buf, 2, 3, 0, 3);
  cluda_tensor x_3d = cluda_tensor_3d(CLUDA_F32, buf, 2, 4, 5);
  TEST_FAILS(cluda_resize_nearest_forward(&ctx, NULL, &y), CLUDA_ERR_ARG, "x is NULL");
  TEST_FAILS(cluda_resize_nearest_forward(&ctx, &x, NULL), CLUDA_ERR_ARG, "y is NULL");
  TEST_FAILS(cluda_resize_nearest_forward(&ctx, &x_bf16, &y), CLUDA_ERR_DTYPE,
             "resize_nearest_forward: x [2,4,5,3] bf16 must be f32 or u8");
  TEST_FAILS(cluda_resize_nearest_forward(&ctx, &x, &y_u8), CLUDA_ERR_DTYPE,
             "resize_nearest_forward: y");
  TEST_FAILS(cluda_resize_nearest_forward(&ctx, &x_u8, &y), CLUDA_ERR_DTYPE,
             "resize_nearest_forward: y");
  TEST_FAILS(cluda_resize_nearest_forward(&ctx, &x_3d, &y), CLUDA_ERR_SHAPE,
             "resize_nearest_forward: x [2,4,5]");
  TEST_FAILS(cluda_resize_nearest_forward(&ctx, &x, &y_batch), CLUDA_ERR_SHAPE,
             "x [2,4,5,3] f32 and y [3,3,2,3] f32");
  TEST_FAILS(cluda_resize_nearest_forward(&ctx, &x, &y_chan), CLUDA_ERR_SHAPE,
             "x [2,4,5,3] f32 and y [2,3,2,1] f32");
  TEST_FAILS(cluda_resize_nearest_forward(&ctx, &x, &y_empty), CLUDA_ERR_SHAPE,
             "y [2,3,0,3] f32 must have a non-empty");
  TEST_FAILS(cluda_resize_nearest_forward(NULL, &x, &y), CLUDA_ERR_ARG, "ctx");
  TEST_FAILS(cluda_resize_nearest_backward(&ctx, NULL, &x), CLUDA_ERR_ARG, "dy is NULL");
  TEST_FAILS(cluda_resize_nearest_backward(&ctx, &y, NULL), CLUDA_ERR_ARG, "dx is NULL");
  TEST_FAILS(cluda_resize_nearest_backward(&ctx, &y_u8, &x_u8), CLUDA_ERR_DTYPE,
             "resize_nearest_backward: dx");
  TEST_FAILS(cluda_resize_nearest_backward(&ctx, &y_u8, &x), CLUDA_ERR_DTYPE,
             "resize_nearest_backward: dy");
  TEST_FAILS(cluda_resize_nearest_backward(&ctx, &y, &x_3d), CLUDA_ERR_SHAPE,
             "resize_nearest_backward: dx [2,4,5]");
  TEST_FAILS(cluda_resize_nearest_backward(&ctx, &y_chan, &x), CLUDA_ERR_SHAPE,
             "dx [2,4,5,3] f32 and dy [2,3,2,1] f32");
  TEST_FAILS(cluda_resize_nearest_backward(&ctx, &y_empty, &x), CLUDA_ERR_SHAPE,
             "dy [2,3,0,3] f32 must have a non-empty");
}

int main(int argc, char **argv) {
  (void)argc;
  const shape cases[] = {
      {2, 4, 5, 3, 8, 10},  /* x2 up */
      {2, 8, 10, 3, 4, 5},  /* x0.5 down */
      {1, 3, 7, 2, 5, 4},   /* non-integer, mixed */
      {2, 3, 4, 1, 12, 16}, /* x4 */
      {1, 7, 9, 2, 3, 4},   /* non-integer down */
      {1, 1, 1, 3, 3, 4},   /* from a single pixel */
      {2, 5, 6, 2, 1, 1},   /* to a single pixel */
      {2, 4, 4, 2, 4, 4},   /* same size */
      {1, 6, 2, 1, 74, 3},  /* float-scale quirk rows */
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    check_case(&cases[i], 1);
  const shape big[] = {{2, 64, 64, 8, 65, 65}, {2, 128, 96, 3, 32, 24}};
  for (size_t i = 0; i < sizeof big / sizeof big[0]; i++)
    check_case(&big[i], 0);
  check_known_values();
  check_thread_invariance();
  check_bad_inputs();
  return test_finish(argv[0]);
}

/* axpy, average pooling and channel concat / slice: CUDA against the CPU backend on the same
 * random inputs, outputs poisoned before each GPU run, odd sizes (1, 7, 33, 513 channels),
 * in-place axpy, pooling windows that overlap, leave inputs uncovered or hang over the
 * padding, zero-width concat parts and empty slices; bad arguments rejected before the GPU.
 *
 * Tolerances (|gpu - cpu| <= atol + rtol |cpu|):
 *  - axpy: rtol 1e-6, atol 1e-7. The GPU rounds alpha x before the add (no FMA), as the CPU
 *    build does, so the results are expected to be equal; the bound leaves room for one
 *    ulp should a CPU build contract to an FMA (|alpha x| <= 2 here).
 *  - avgpool: rtol 1e-6, atol 1e-7. Both sum each window in the same order in float and
 *    divide once, so equality is expected; the bound is a few ulp of values in [-1, 1].
 *  - concat / slice: copies and zeros, exact (rtol 0, atol 0). */
#include <stdlib.h>
#include <string.h>

#include "gpu_testing.h"

static void check_axpy(cluda_ctx *gpu, int n, int h, int w, int c, float alpha, int in_place) {
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const int64_t count = (int64_t)n * h * w * c;
  const uint64_t seed = 7100 + (uint64_t)count;
  float *x = test_alloc_f32(count + 1), *y = test_alloc_f32(count + 1),
        *got = test_alloc_f32(count + 1);
  test_fill_uniform(x, count, -1.0f, 1.0f, seed, 0);
  test_fill_uniform(y, count, -1.0f, 1.0f, seed, 1);
  cluda_tensor hx = cluda_tensor_4d(CLUDA_F32, x, n, h, w, c);
  cluda_tensor hy = cluda_tensor_4d(CLUDA_F32, y, n, h, w, c);
  cluda_tensor gx = gpu_copy_of(gpu, &hx), gy = gpu_copy_of(gpu, &hy);
  char what[128];
  if (in_place) {
    /* y += alpha y: x and y are the same tensor */
    TEST_OK(cluda_axpy(&cpu, alpha, &hy, &hy));
    TEST_OK(cluda_axpy(gpu, alpha, &gy, &gy));
    snprintf(what, sizeof what, "axpy in place [%d,%d,%d,%d] alpha %g", n, h, w, c, (double)alpha);
  } else {
    TEST_OK(cluda_axpy(&cpu, alpha, &hx, &hy));
    TEST_OK(cluda_axpy(gpu, alpha, &gx, &gy));
    snprintf(what, sizeof what, "axpy [%d,%d,%d,%d] alpha %g", n, h, w, c, (double)alpha);
  }
  gpu_compare(gpu, what, &gy, y, got, 1e-6, 1e-7);

  cluda_tensor other = gx;
  other.shape[3] = c + 1;
  TEST_FAILS(cluda_axpy(gpu, alpha, &other, &gy), CLUDA_ERR_SHAPE, "same shape");
  TEST_OK(cluda_cuda_synchronize(gpu));
  gpu_tensors_free(&gx, &gy, NULL);
  free(x);
  free(y);
  free(got);
}

/* floor((in + 2 pad - kernel) / stride) + 1 */
static int pool_out(int in, int k, int s, int p) { return (in + 2 * p - k) / s + 1; }

static void check_avgpool(cluda_ctx *gpu, int n, int h, int w, int c, int kh, int kw, int sh,
                          int sw, int ph, int pw) {
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const cluda_pool2d_params p = {kh, kw, sh, sw, ph, pw};
  const int oh = pool_out(h, kh, sh, ph), ow = pool_out(w, kw, sw, pw);
  const int64_t nx = (int64_t)n * h * w * c, ny = (int64_t)n * oh * ow * c;
  const uint64_t seed = 7300 + (uint64_t)(nx + ny);
  float *x = test_alloc_f32(nx), *y = test_alloc_f32(ny), *dy = test_alloc_f32(ny),
        *dx = test_alloc_f32(nx), *got = test_alloc_f32(nx > ny ? nx : ny);
  test_fill_uniform(x, nx, -1.0f, 1.0f, seed, 0);
  test_fill_uniform(dy, ny, -1.0f, 1.0f, seed, 1);
  cluda_tensor hx = cluda_tensor_4d(CLUDA_F32, x, n, h, w, c);
  cluda_tensor hy = cluda_tensor_4d(CLUDA_F32, y, n, oh, ow, c);
  cluda_tensor hdy = cluda_tensor_4d(CLUDA_F32, dy, n, oh, ow, c);
  cluda_tensor hdx = cluda_tensor_4d(CLUDA_F32, dx, n, h, w, c);
  TEST_OK(cluda_avgpool_forward(&cpu, &p, &hx, &hy));
  TEST_OK(cluda_avgpool_backward(&cpu, &p, &hdy, &hdx));

  cluda_tensor gx = gpu_copy_of(gpu, &hx), gdy = gpu_copy_of(gpu, &hdy);
  cluda_tensor gy = gpu_tensor_like(&hy), gdx = gpu_tensor_like(&hdx);
  gpu_poison(gpu, &gy);
  gpu_poison(gpu, &gdx);
  TEST_OK(cluda_avgpool_forward(gpu, &p, &gx, &gy));
  TEST_OK(cluda_avgpool_backward(gpu, &p, &gdy, &gdx));
  char what[160];
  snprintf(what, sizeof what, "avgpool y [%d,%d,%d,%d] k %dx%d s %dx%d p %dx%d", n, h, w, c, kh, kw,
           sh, sw, ph, pw);
  gpu_compare(gpu, what, &gy, y, got, 1e-6, 1e-7);
  snprintf(what, sizeof what, "avgpool dx [%d,%d,%d,%d] k %dx%d s %dx%d p %dx%d", n, h, w, c, kh,
           kw, sh, sw, ph, pw);
  gpu_compare(gpu, what, &gdx, dx, got, 1e-6, 1e-7);

  cluda_tensor wrong = gy;
  wrong.shape[1] = oh + 1;
  TEST_FAILS(cluda_avgpool_forward(gpu, &p, &gx, &wrong), CLUDA_ERR_SHAPE, "y");
  TEST_OK(cluda_cuda_synchronize(gpu));
  gpu_tensors_free(&gx, &gdy, &gy, &gdx, NULL);
  free(x);
  free(y);
  free(dy);
  free(dx);
  free(got);
}

enum { MAX_PARTS = 4 };

/* Concatenates `count` [lead..., cs[i]] tensors (lead: 3 dims, or 1 when rows_only). */
static void check_concat(cluda_ctx *gpu, int rows_only, int a, int b, int d, int count,
                         const int *cs) {
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const int64_t rows = rows_only ? a : (int64_t)a * b * d;
  int cy = 0;
  for (int i = 0; i < count; i++)
    cy += cs[i];
  const uint64_t seed = 7500 + (uint64_t)(rows * cy);
  float *hxs[MAX_PARTS], *hdxs[MAX_PARTS];
  cluda_tensor tx[MAX_PARTS], tdx[MAX_PARTS], gx[MAX_PARTS], gdx[MAX_PARTS];
  const cluda_tensor *px[MAX_PARTS], *pgx[MAX_PARTS];
  cluda_tensor *pdx[MAX_PARTS], *pgdx[MAX_PARTS];
  float *y = test_alloc_f32(rows * cy + 1), *dy = test_alloc_f32(rows * cy + 1),
        *got = test_alloc_f32(rows * cy + 1);
  test_fill_uniform(dy, rows * cy, -1.0f, 1.0f, seed, 99);
  for (int i = 0; i < count; i++) {
    hxs[i] = test_alloc_f32(rows * cs[i] + 1);
    hdxs[i] = test_alloc_f32(rows * cs[i] + 1);
    test_fill_uniform(hxs[i], rows * cs[i], -1.0f, 1.0f, seed, (uint32_t)i);
    tx[i] = rows_only ? cluda_tensor_2d(CLUDA_F32, hxs[i], a, cs[i])
                      : cluda_tensor_4d(CLUDA_F32, hxs[i], a, b, d, cs[i]);
    tdx[i] = tx[i];
    tdx[i].data = hdxs[i];
    gx[i] = gpu_copy_of(gpu, &tx[i]);
    gdx[i] = gpu_tensor_like(&tdx[i]);
    px[i] = &tx[i];
    pdx[i] = &tdx[i];
    pgx[i] = &gx[i];
    pgdx[i] = &gdx[i];
  }
  cluda_tensor hy =
      rows_only ? cluda_tensor_2d(CLUDA_F32, y, a, cy) : cluda_tensor_4d(CLUDA_F32, y, a, b, d, cy);
  cluda_tensor hdy = hy;
  hdy.data = dy;
  TEST_OK(cluda_concat_forward(&cpu, count, px, &hy));
  TEST_OK(cluda_concat_backward(&cpu, count, &hdy, pdx));

  cluda_tensor gy = gpu_tensor_like(&hy), gdy = gpu_copy_of(gpu, &hdy);
  gpu_poison(gpu, &gy);
  for (int i = 0; i < count; i++)
    gpu_poison(gpu, &gdx[i]);
  TEST_OK(cluda_concat_forward(gpu, count, pgx, &gy));
  TEST_OK(cluda_concat_backward(gpu, count, &gdy, pgdx));
  char what[128];
  snprintf(what, sizeof what, "concat y: %d parts, %lld rows, %d channels", count, (long long)rows,
           cy);
  gpu_compare(gpu, what, &gy, y, got, 0.0, 0.0);
  for (int i = 0; i < count; i++) {
    snprintf(what, sizeof what, "concat dx[%d] (%d channels)", i, cs[i]);
    gpu_compare(gpu, what, &gdx[i], hdxs[i], got, 0.0, 0.0);
  }

  /* the channels must add up */
  cluda_tensor narrow = gy;
  narrow.shape[narrow.ndim - 1] = cy + 1;
  TEST_FAILS(cluda_concat_forward(gpu, count, pgx, &narrow), CLUDA_ERR_SHAPE, "channels");
  TEST_OK(cluda_cuda_synchronize(gpu));
  for (int i = 0; i < count; i++) {
    gpu_tensor_free(&gx[i]);
    gpu_tensor_free(&gdx[i]);
    free(hxs[i]);
    free(hdxs[i]);
  }
  gpu_tensors_free(&gy, &gdy, NULL);
  free(y);
  free(dy);
  free(got);
}

static void check_slice(cluda_ctx *gpu, int n, int h, int w, int cx, int begin, int cy) {
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const int64_t rows = (int64_t)n * h * w;
  const uint64_t seed = 7700 + (uint64_t)(rows * cx + begin);
  float *x = test_alloc_f32(rows * cx + 1), *dx = test_alloc_f32(rows * cx + 1),
        *y = test_alloc_f32(rows * cy + 1), *dy = test_alloc_f32(rows * cy + 1),
        *got = test_alloc_f32(rows * cx + 1);
  test_fill_uniform(x, rows * cx, -1.0f, 1.0f, seed, 0);
  test_fill_uniform(dy, rows * cy, -1.0f, 1.0f, seed, 1);
  cluda_tensor hx = cluda_tensor_4d(CLUDA_F32, x, n, h, w, cx);
  cluda_tensor hdx = cluda_tensor_4d(CLUDA_F32, dx, n, h, w, cx);
  cluda_tensor hy = cluda_tensor_4d(CLUDA_F32, y, n, h, w, cy);
  cluda_tensor hdy = cluda_tensor_4d(CLUDA_F32, dy, n, h, w, cy);
  TEST_OK(cluda_slice_forward(&cpu, begin, &hx, &hy));
  TEST_OK(cluda_slice_backward(&cpu, begin, &hdy, &hdx));

  cluda_tensor gx = gpu_copy_of(gpu, &hx), gdy = gpu_copy_of(gpu, &hdy);
  cluda_tensor gy = gpu_tensor_like(&hy), gdx = gpu_tensor_like(&hdx);
  gpu_poison(gpu, &gy);
  gpu_poison(gpu, &gdx);
  TEST_OK(cluda_slice_forward(gpu, begin, &gx, &gy));
  TEST_OK(cluda_slice_backward(gpu, begin, &gdy, &gdx));
  char what[128];
  snprintf(what, sizeof what, "slice y [%d,%d,%d,%d][%d:%d]", n, h, w, cx, begin, begin + cy);
  gpu_compare(gpu, what, &gy, y, got, 0.0, 0.0);
  snprintf(what, sizeof what, "slice dx [%d,%d,%d,%d][%d:%d]", n, h, w, cx, begin, begin + cy);
  gpu_compare(gpu, what, &gdx, dx, got, 0.0, 0.0);

  TEST_FAILS(cluda_slice_forward(gpu, cx - cy + 1, &gx, &gy), CLUDA_ERR_ARG, "begin");
  TEST_OK(cluda_cuda_synchronize(gpu));
  gpu_tensors_free(&gx, &gdy, &gy, &gdx, NULL);
  free(x);
  free(dx);
  free(y);
  free(dy);
  free(got);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx gpu;
  gpu_test_init(argv[0], 1 << 20, &gpu);

  check_axpy(&gpu, 1, 1, 1, 1, 0.5f, 0);
  check_axpy(&gpu, 1, 1, 1, 7, -1.75f, 0);
  check_axpy(&gpu, 2, 5, 7, 33, 0.3f, 0);
  check_axpy(&gpu, 3, 17, 19, 513, -2.0f, 0); /* ~500k elements: grid-stride */
  check_axpy(&gpu, 2, 5, 7, 33, 1.5f, 1);     /* in place */

  /* n, h, w, c, kernel, stride, pad */
  check_avgpool(&gpu, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0);     /* the identity */
  check_avgpool(&gpu, 2, 7, 9, 3, 3, 3, 2, 2, 1, 1);     /* windows over the padding */
  check_avgpool(&gpu, 1, 13, 11, 33, 2, 3, 2, 1, 1, 1);  /* rectangular everything */
  check_avgpool(&gpu, 2, 16, 16, 64, 3, 3, 1, 1, 1, 1);  /* overlapping windows */
  check_avgpool(&gpu, 1, 11, 11, 5, 5, 5, 5, 5, 0, 0);   /* last row / column not covered */
  check_avgpool(&gpu, 2, 32, 32, 513, 2, 2, 2, 2, 0, 0); /* ~1M inputs, odd channels */

  const int parts_a[] = {3, 33, 1};
  const int parts_b[] = {17, 0, 64, 5};
  const int parts_c[] = {513};
  check_concat(&gpu, 0, 2, 5, 7, 3, parts_a);
  check_concat(&gpu, 1, 1000, 1, 1, 4, parts_b); /* 2-d, a zero-width part */
  check_concat(&gpu, 0, 1, 3, 3, 1, parts_c);    /* one part: a copy */
  check_concat(&gpu, 0, 2, 64, 64, 2, parts_a);  /* 8192 rows */

  /* n, h, w, cx, begin, cy */
  check_slice(&gpu, 2, 5, 7, 50, 7, 13);
  check_slice(&gpu, 1, 3, 3, 33, 0, 33); /* the whole tensor */
  check_slice(&gpu, 1, 1, 1, 1, 0, 1);
  check_slice(&gpu, 2, 9, 11, 33, 32, 1); /* the last channel */
  check_slice(&gpu, 2, 4, 4, 16, 5, 0);   /* empty: dx = 0 */
  check_slice(&gpu, 2, 64, 64, 96, 32, 64);
  return gpu_test_finish(argv[0], &gpu);
}

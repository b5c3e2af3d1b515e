/* L2 normalisation over the last axis (F.normalize): CUDA against the CPU backend on the same
 * random inputs, forward (y, norms) and backward (dx from the CPU's saved norms); rows of
 * 1, 3, 33, 64 and 513 channels, 1 to 4096 rows, batch > 1; rows of zeros and rows scaled
 * under eps, so both regimes (divide by ||x||, divide by eps) are covered; outputs
 * poisoned; results bitwise reproducible; bad shapes rejected before the GPU.
 *
 * Tolerances (|gpu - cpu| <= atol + rtol |cpu|): both backends form the sums of squares and
 * the dot product in double (exact products, another summation order: ~1e-16 relative) and
 * round to float once, so results agree to an ulp or two:
 *  - y and norms: rtol 1e-6, atol 1e-30 (zeros stay exact zeros);
 *  - dx: rtol 1e-5, atol 1e-9 max|dx| (dx = (dy - y (y . dy)) / ||x|| cancels, but in
 *    double: the cancellation costs ~1e-16 of the row's scale, far under float rounding). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_testing.h"

/* rows = n h w of [n, h, w, c]; every 5th row zero, every 7th scaled by `tiny` */
static void check_shape(cluda_ctx *gpu, int n, int h, int w, int c, float eps, float tiny) {
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const int64_t rows = (int64_t)n * h * w, count = rows * c;
  const uint64_t seed = 8100 + (uint64_t)count;
  float *x = test_alloc_f32(count), *y = test_alloc_f32(count), *dy = test_alloc_f32(count),
        *dx = test_alloc_f32(count), *got = test_alloc_f32(count), *norms = test_alloc_f32(rows),
        *first = test_alloc_f32(count + rows), *second = test_alloc_f32(count + rows);
  test_fill_uniform(x, count, -2.0f, 2.0f, seed, 0);
  test_fill_uniform(dy, count, -1.0f, 1.0f, seed, 1);
  for (int64_t r = 0; r < rows; r++) {
    if (r % 5 == 4) memset(x + r * c, 0, sizeof(float) * (size_t)c);
    if (r % 7 == 6)
      for (int k = 0; k < c; k++)
        x[r * c + k] *= tiny;
  }
  cluda_tensor hx = cluda_tensor_4d(CLUDA_F32, x, n, h, w, c);
  cluda_tensor hy = cluda_tensor_4d(CLUDA_F32, y, n, h, w, c);
  cluda_tensor hdy = cluda_tensor_4d(CLUDA_F32, dy, n, h, w, c);
  cluda_tensor hdx = cluda_tensor_4d(CLUDA_F32, dx, n, h, w, c);
  cluda_tensor hn = cluda_tensor_1d(CLUDA_F32, norms, (int)rows);
  TEST_OK(cluda_l2norm_forward(&cpu, eps, &hx, &hy, &hn));
  TEST_OK(cluda_l2norm_backward(&cpu, eps, &hx, &hn, &hdy, &hdx));
  double dx_max = 0.0;
  for (int64_t i = 0; i < count; i++)
    if (fabs((double)dx[i]) > dx_max) dx_max = fabs((double)dx[i]);

  cluda_tensor gx = gpu_copy_of(gpu, &hx), gdy = gpu_copy_of(gpu, &hdy);
  cluda_tensor gy = gpu_tensor_like(&hy), gdx = gpu_tensor_like(&hdx), gn = gpu_tensor_like(&hn);
  char what[160];
  for (int run = 0; run < 2; run++) {
    gpu_poison(gpu, &gy);
    gpu_poison(gpu, &gn);
    TEST_OK(cluda_l2norm_forward(gpu, eps, &gx, &gy, &gn));
    float *keep = run == 0 ? first : second;
    TEST_OK(cluda_cuda_download(gpu, keep, gy.data, sizeof(float) * (size_t)count));
    TEST_OK(cluda_cuda_download(gpu, keep + count, gn.data, sizeof(float) * (size_t)rows));
  }
  gpu_check_bitwise("l2norm y/norms", first, second, sizeof(float) * (size_t)(count + rows));
  snprintf(what, sizeof what, "l2norm y [%d,%d,%d,%d] eps %g", n, h, w, c, (double)eps);
  gpu_compare(gpu, what, &gy, y, got, 1e-6, 1e-30);
  gpu_compare(gpu, "l2norm norms", &gn, norms, got, 1e-6, 1e-30);

  /* the backward reads the CPU's norms, so both sides see the same inputs */
  gpu_upload(gpu, &gn, &hn);
  for (int run = 0; run < 2; run++) {
    gpu_poison(gpu, &gdx);
    TEST_OK(cluda_l2norm_backward(gpu, eps, &gx, &gn, &gdy, &gdx));
    TEST_OK(cluda_cuda_download(gpu, run == 0 ? first : second, gdx.data,
                                sizeof(float) * (size_t)count));
  }
  gpu_check_bitwise("l2norm dx", first, second, sizeof(float) * (size_t)count);
  snprintf(what, sizeof what, "l2norm dx [%d,%d,%d,%d] eps %g", n, h, w, c, (double)eps);
  gpu_compare(gpu, what, &gdx, dx, got, 1e-5, 1e-9 * dx_max);

  cluda_tensor short_norms = gn;
  short_norms.shape[0] = (int)rows + 1;
  TEST_FAILS(cluda_l2norm_forward(gpu, eps, &gx, &gy, &short_norms), CLUDA_ERR_SHAPE, "norms");
  TEST_FAILS(cluda_l2norm_forward(gpu, 0.0f, &gx, &gy, &gn), CLUDA_ERR_ARG, "eps");
  TEST_OK(cluda_cuda_synchronize(gpu));
  gpu_tensors_free(&gx, &gdy, &gy, &gdx, &gn, NULL);
  float *hosts[] = {x, y, dy, dx, got, norms, first, second};
  for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++)
    free(hosts[i]);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx gpu;
  gpu_test_init(argv[0], 1 << 20, &gpu);
  /* F.normalize's eps 1e-12: zero rows take the eps branch */
  check_shape(&gpu, 1, 1, 1, 1, 1e-12f, 0.5f);
  check_shape(&gpu, 1, 1, 7, 3, 1e-12f, 1e-3f);
  check_shape(&gpu, 2, 5, 7, 33, 1e-12f, 1e-3f);
  check_shape(&gpu, 2, 8, 8, 64, 1e-12f, 1e-20f); /* tiny rows: norm ~1e-19 < eps */
  check_shape(&gpu, 1, 10, 100, 513, 1e-12f, 1e-2f);
  /* a large eps: every 7th row (scaled by 1e-4) falls under it */
  check_shape(&gpu, 2, 5, 7, 33, 1e-3f, 1e-4f);
  check_shape(&gpu, 4, 32, 32, 64, 1e-3f, 1e-4f); /* 4096 rows: grid-stride over warps */
  return gpu_test_finish(argv[0], &gpu);
}

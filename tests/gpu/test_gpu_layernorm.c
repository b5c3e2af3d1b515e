/* LayerNorm: CUDA against the CPU backend on the same random inputs (x with an offset, so
 * the mean matters), forward (y, mean, rstd) and backward (dx, and dgamma/dbeta accumulated
 * onto random initial values); row lengths that are not multiples of 32; dgamma/dbeta
 * bitwise reproducible; bad shapes rejected before the GPU. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_testing.h"

static void check_shape(cluda_ctx *gpu, int n, int h, int w, int c, float eps) {
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const int64_t rows = (int64_t)n * h * w, count = rows * c;
  const uint64_t seed = 500 + (uint64_t)count;
  float *x = test_alloc_f32(count), *y = test_alloc_f32(count), *dy = test_alloc_f32(count),
        *dx = test_alloc_f32(count), *got = test_alloc_f32(count > c ? count : c);
  float *gamma = test_alloc_f32(c), *beta = test_alloc_f32(c), *mean = test_alloc_f32(rows),
        *rstd = test_alloc_f32(rows), *dgamma = test_alloc_f32(c), *dbeta = test_alloc_f32(c),
        *dgamma0 = test_alloc_f32(c), *dbeta0 = test_alloc_f32(c), *first = test_alloc_f32(2 * c),
        *second = test_alloc_f32(2 * c);
  test_fill_uniform(x, count, 2.0f, 4.0f, seed, 0);
  test_fill_uniform(dy, count, -1.0f, 1.0f, seed, 1);
  test_fill_uniform(gamma, c, 0.5f, 1.5f, seed, 2);
  test_fill_uniform(beta, c, -0.5f, 0.5f, seed, 3);
  test_fill_uniform(dgamma0, c, -1.0f, 1.0f, seed, 4);
  test_fill_uniform(dbeta0, c, -1.0f, 1.0f, seed, 5);
  memcpy(dgamma, dgamma0, sizeof(float) * (size_t)c);
  memcpy(dbeta, dbeta0, sizeof(float) * (size_t)c);

  cluda_tensor hx = cluda_tensor_4d(CLUDA_F32, x, n, h, w, c);
  cluda_tensor hy = cluda_tensor_4d(CLUDA_F32, y, n, h, w, c);
  cluda_tensor hdy = cluda_tensor_4d(CLUDA_F32, dy, n, h, w, c);
  cluda_tensor hdx = cluda_tensor_4d(CLUDA_F32, dx, n, h, w, c);
  cluda_tensor hg = cluda_tensor_1d(CLUDA_F32, gamma, c), hb = cluda_tensor_1d(CLUDA_F32, beta, c);
  cluda_tensor hm = cluda_tensor_1d(CLUDA_F32, mean, (int)rows);
  cluda_tensor hr = cluda_tensor_1d(CLUDA_F32, rstd, (int)rows);
  cluda_tensor hdg = cluda_tensor_1d(CLUDA_F32, dgamma, c);
  cluda_tensor hdb = cluda_tensor_1d(CLUDA_F32, dbeta, c);
  TEST_OK(cluda_layernorm_forward(&cpu, &hx, &hg, &hb, eps, &hy, &hm, &hr));
  TEST_OK(cluda_layernorm_backward(&cpu, &hx, &hg, &hm, &hr, &hdy, &hdx, &hdg, &hdb));

  cluda_tensor gx = gpu_copy_of(gpu, &hx), gdy = gpu_copy_of(gpu, &hdy), gg = gpu_copy_of(gpu, &hg),
               gb = gpu_copy_of(gpu, &hb);
  cluda_tensor gy = gpu_tensor_like(&hy), gdx = gpu_tensor_like(&hdx), gm = gpu_tensor_like(&hm),
               gr = gpu_tensor_like(&hr), gdg = gpu_tensor_like(&hdg), gdb = gpu_tensor_like(&hdb);
  gpu_poison(gpu, &gy);
  gpu_poison(gpu, &gm);
  gpu_poison(gpu, &gr);
  char what[128];
  TEST_OK(cluda_layernorm_forward(gpu, &gx, &gg, &gb, eps, &gy, &gm, &gr));
  snprintf(what, sizeof what, "layernorm y [%d,%d,%d,%d]", n, h, w, c);
  gpu_compare(gpu, what, &gy, y, got, 1e-4, 1e-5);
  gpu_compare(gpu, "layernorm mean", &gm, mean, got, 1e-5, 1e-6);
  gpu_compare(gpu, "layernorm rstd", &gr, rstd, got, 1e-4, 1e-6);

  /* the backward reads the CPU's mean and rstd, so both sides see the same inputs */
  gpu_upload(gpu, &gm, &hm);
  gpu_upload(gpu, &gr, &hr);
  for (int run = 0; run < 2; run++) {
    cluda_tensor init_g = cluda_tensor_1d(CLUDA_F32, dgamma0, c);
    cluda_tensor init_b = cluda_tensor_1d(CLUDA_F32, dbeta0, c);
    gpu_upload(gpu, &gdg, &init_g);
    gpu_upload(gpu, &gdb, &init_b);
    gpu_poison(gpu, &gdx);
    TEST_OK(cluda_layernorm_backward(gpu, &gx, &gg, &gm, &gr, &gdy, &gdx, &gdg, &gdb));
    float *keep = run == 0 ? first : second;
    TEST_OK(cluda_cuda_download(gpu, keep, gdg.data, sizeof(float) * (size_t)c));
    TEST_OK(cluda_cuda_download(gpu, keep + c, gdb.data, sizeof(float) * (size_t)c));
  }
  snprintf(what, sizeof what, "layernorm dx [%d,%d,%d,%d]", n, h, w, c);
  gpu_compare(gpu, what, &gdx, dx, got, 1e-4, 1e-5);
  /* sums over all rows in another order: the rounding grows like sqrt(rows) */
  const double param_atol = 1e-5 * sqrt((double)rows) + 1e-5;
  gpu_compare(gpu, "layernorm dgamma (accumulated)", &gdg, dgamma, got, 1e-4, param_atol);
  gpu_compare(gpu, "layernorm dbeta (accumulated)", &gdb, dbeta, got, 1e-4, param_atol);
  gpu_check_bitwise("layernorm dgamma/dbeta", first, second, sizeof(float) * 2 * (size_t)c);

  /* bad shapes never reach the GPU */
  cluda_tensor short_gamma = gg;
  short_gamma.shape[0] = c + 1;
  TEST_FAILS(cluda_layernorm_forward(gpu, &gx, &short_gamma, &gb, eps, &gy, &gm, &gr),
             CLUDA_ERR_SHAPE, "gamma");
  cluda_tensor short_mean = gm;
  short_mean.shape[0] = (int)rows + 1;
  TEST_FAILS(cluda_layernorm_backward(gpu, &gx, &gg, &short_mean, &gr, &gdy, &gdx, &gdg, &gdb),
             CLUDA_ERR_SHAPE, "mean");
  TEST_OK(cluda_cuda_synchronize(gpu));

  gpu_tensors_free(&gx, &gdy, &gg, &gb, &gy, &gdx, &gm, &gr, &gdg, &gdb, NULL);
  float *hosts[] = {x,    y,      dy,    dx,      got,    gamma, beta,  mean,
                    rstd, dgamma, dbeta, dgamma0, dbeta0, first, second};
  for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++)
    free(hosts[i]);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx gpu;
  gpu_test_init(argv[0], 64 << 20, &gpu);
  check_shape(&gpu, 1, 1, 1, 1, 1e-5f);      /* C = 1: y = beta, dx = 0 */
  check_shape(&gpu, 2, 5, 7, 33, 1e-6f);     /* C not a multiple of 32 */
  check_shape(&gpu, 1, 3, 3, 64, 1e-5f);     /* a MiT-B0 stage-1 width */
  check_shape(&gpu, 2, 32, 32, 320, 1e-6f);  /* 2048 rows: many chunks for dgamma */
  check_shape(&gpu, 1, 8, 8, 1000, 1e-6f);   /* long rows */
  check_shape(&gpu, 2, 128, 128, 64, 1e-6f); /* 32768 rows: chunk count capped */
  return gpu_test_finish(argv[0], &gpu);
}

/* Softmax over the last axis: CUDA against the CPU backend on the same random inputs,
 * forward and backward, for row lengths 1, 19 (classes), 256 (attention keys), 1000 and
 * more rows than one grid covers; bad shapes rejected before the GPU. */
#include <stdlib.h>

#include "gpu_testing.h"

static void check_shape(cluda_ctx *gpu, int n, int h, int w, int c) {
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const int64_t count = (int64_t)n * h * w * c;
  const uint64_t seed = 900 + (uint64_t)count;
  float *x = test_alloc_f32(count), *y = test_alloc_f32(count), *dy = test_alloc_f32(count),
        *dx = test_alloc_f32(count), *got = test_alloc_f32(count);
  test_fill_uniform(x, count, -8.0f, 8.0f, seed, 0);
  test_fill_uniform(dy, count, -1.0f, 1.0f, seed, 1);
  cluda_tensor hx = cluda_tensor_4d(CLUDA_F32, x, n, h, w, c);
  cluda_tensor hy = cluda_tensor_4d(CLUDA_F32, y, n, h, w, c);
  cluda_tensor hdy = cluda_tensor_4d(CLUDA_F32, dy, n, h, w, c);
  cluda_tensor hdx = cluda_tensor_4d(CLUDA_F32, dx, n, h, w, c);
  TEST_OK(cluda_softmax_forward(&cpu, &hx, &hy));
  TEST_OK(cluda_softmax_backward(&cpu, &hy, &hdy, &hdx));

  cluda_tensor gx = gpu_copy_of(gpu, &hx), gdy = gpu_copy_of(gpu, &hdy);
  cluda_tensor gy = gpu_tensor_like(&hy), gdx = gpu_tensor_like(&hdx);
  char what[128];
  gpu_poison(gpu, &gy);
  TEST_OK(cluda_softmax_forward(gpu, &gx, &gy));
  snprintf(what, sizeof what, "softmax forward [%d,%d,%d,%d]", n, h, w, c);
  gpu_compare(gpu, what, &gy, y, got, 1e-5, 1e-7);

  gpu_upload(gpu, &gy, &hy); /* the backward reads the CPU's y */
  gpu_poison(gpu, &gdx);
  TEST_OK(cluda_softmax_backward(gpu, &gy, &gdy, &gdx));
  snprintf(what, sizeof what, "softmax backward [%d,%d,%d,%d]", n, h, w, c);
  gpu_compare(gpu, what, &gdx, dx, got, 1e-4, 1e-6);

  cluda_tensor wrong = gdx;
  wrong.shape[2] = w + 1;
  TEST_FAILS(cluda_softmax_forward(gpu, &gx, &wrong), CLUDA_ERR_SHAPE, "softmax_forward");
  TEST_FAILS(cluda_softmax_backward(gpu, &gy, &gdy, &wrong), CLUDA_ERR_SHAPE, "softmax_backward");
  TEST_OK(cluda_cuda_synchronize(gpu));

  gpu_tensors_free(&gx, &gdy, &gy, &gdx, NULL);
  free(x);
  free(y);
  free(dy);
  free(dx);
  free(got);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx gpu;
  gpu_test_init(argv[0], 1 << 20, &gpu);
  check_shape(&gpu, 3, 1, 1, 1);      /* one column: y = 1, dx = 0 */
  check_shape(&gpu, 2, 3, 5, 19);     /* classes */
  check_shape(&gpu, 1, 2, 64, 256);   /* attention rows */
  check_shape(&gpu, 2, 4, 4, 1000);   /* long rows */
  check_shape(&gpu, 2, 256, 256, 19); /* 131072 rows: grid-stride over rows */
  return gpu_test_finish(argv[0], &gpu);
}

/* axpy: y += alpha x against a double reference, its gradient (the op is linear, so the
 * finite difference of L = sum r (y0 + alpha x) in x is alpha r), bad shapes. */
#include <stdlib.h>

#include "testing.h"

static void check_axpy(int n, int h, int w, int c, float alpha) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  int64_t count = (int64_t)n * h * w * c;
  float *x = test_alloc_f32(count), *y = test_alloc_f32(count);
  double *want = test_alloc_f64(count);
  test_fill_uniform(x, count, -2.0f, 2.0f, 3, 0);
  test_fill_uniform(y, count, -2.0f, 2.0f, 3, 1);
  for (int64_t i = 0; i < count; i++)
    want[i] = (double)y[i] + (double)alpha * (double)x[i];
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, n, h, w, c);
  cluda_tensor ty = cluda_tensor_4d(CLUDA_F32, y, n, h, w, c);
  TEST_OK(cluda_axpy(&ctx, alpha, &tx, &ty));
  test_compare("axpy", y, want, count, 1e-6, 1e-7);
  free(x);
  free(y);
  free(want);
}

int main(int argc, char **argv) {
  (void)argc;
  check_axpy(1, 1, 1, 1, 1.0f);
  check_axpy(2, 3, 5, 7, -0.5f);
  check_axpy(2, 64, 33, 17, 2.0f); /* threaded */

  cluda_ctx ctx = cluda_cpu_context(NULL);
  float a[6] = {0}, b[6] = {0};
  cluda_tensor ta = cluda_tensor_2d(CLUDA_F32, a, 2, 3);
  cluda_tensor tb = cluda_tensor_2d(CLUDA_F32, b, 3, 2);
  TEST_FAILS(cluda_axpy(&ctx, 1.0f, &ta, &tb), CLUDA_ERR_SHAPE, "axpy: x [2,3] f32 and y [3,2]");
  TEST_FAILS(cluda_axpy(&ctx, 1.0f, NULL, &tb), CLUDA_ERR_ARG, "x is NULL");
  cluda_tensor tu = cluda_tensor_2d(CLUDA_U8, b, 2, 3);
  TEST_FAILS(cluda_axpy(&ctx, 1.0f, &ta, &tu), CLUDA_ERR_DTYPE, "y");
  return test_finish(argv[0]);
}

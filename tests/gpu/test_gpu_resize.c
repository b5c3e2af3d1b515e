/* Resizes: CUDA against the CPU backend on the same random inputs. Bilinear (align_corners
 * 0 and 1) forward and backward; nearest forward on f32 maps and u8 labels, and backward.
 * Up x2 (nearest's exact shortcut), x4 (logits to labels), x32, down by non-integer factors,
 * mixed up/down, identity, a 1-pixel input and a 1-pixel output (align_corners scale 0),
 * odd sizes such as 13 x 17, channel counts 1..64. Outputs are poisoned with NaN (u8: 0xFF,
 * never a value of the test labels) before every GPU run; the backwards (gathers) run twice
 * and must agree bit for bit.
 *
 * Tolerances: the GPU computes the source coordinates and weights with the CPU's float
 * operations in the CPU's order (explicitly rounded, no FMA contraction) and adds the
 * backward terms in the CPU's order, so results are expected to be bit-identical; the test
 * prints how many elements differ in their bits. It requires: nearest forward exact (a
 * copy: any other value is a wrong source pixel); bilinear forward rtol 1e-6, atol 1e-7 (a
 * few ulp of 4 products of values <= 2 in size); backwards rtol 1e-5, atol 1e-6 (sums of up
 * to (2 x 32)^2 terms of size <= 1 at x32, in float), which still catch any wrong weight or
 * missing term (>= 1e-3 of a term). */
#include <stdlib.h>
#include <string.h>

#include "gpu_testing.h"

/* Prints the number of elements whose bits differ from the CPU's (information only). */
static void report_bits(const char *what, const float *got, const float *want, int64_t n) {
  int64_t diff = 0;
  for (int64_t i = 0; i < n; i++)
    diff += memcmp(&got[i], &want[i], sizeof(float)) != 0;
  printf("  %-48s %lld of %lld elements differ in their bits from the CPU\n", what, (long long)diff,
         (long long)n);
}

static void check_bilinear(cluda_ctx *gpu, int n, int ih, int iw, int oh, int ow, int c,
                           int align_corners) {
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const int64_t nin = (int64_t)n * ih * iw * c, nout = (int64_t)n * oh * ow * c;
  const int64_t most = nin > nout ? nin : nout;
  const uint64_t seed = 4200 + (uint64_t)(nin * 31 + nout) + (uint64_t)align_corners;
  float *x = test_alloc_f32(nin), *y = test_alloc_f32(nout), *dy = test_alloc_f32(nout),
        *dx = test_alloc_f32(nin), *got = test_alloc_f32(most), *run1 = test_alloc_f32(nin);
  test_fill_uniform(x, nin, -2.0f, 2.0f, seed, 0);
  test_fill_uniform(dy, nout, -1.0f, 1.0f, seed, 1);
  cluda_tensor hx = cluda_tensor_4d(CLUDA_F32, x, n, ih, iw, c);
  cluda_tensor hy = cluda_tensor_4d(CLUDA_F32, y, n, oh, ow, c);
  cluda_tensor hdy = cluda_tensor_4d(CLUDA_F32, dy, n, oh, ow, c);
  cluda_tensor hdx = cluda_tensor_4d(CLUDA_F32, dx, n, ih, iw, c);
  TEST_OK(cluda_resize_bilinear_forward(&cpu, align_corners, &hx, &hy));
  TEST_OK(cluda_resize_bilinear_backward(&cpu, align_corners, &hdy, &hdx));

  cluda_tensor gx = gpu_copy_of(gpu, &hx), gdy = gpu_copy_of(gpu, &hdy);
  cluda_tensor gy = gpu_tensor_like(&hy), gdx = gpu_tensor_like(&hdx);
  char what[128];
  gpu_poison(gpu, &gy);
  TEST_OK(cluda_resize_bilinear_forward(gpu, align_corners, &gx, &gy));
  snprintf(what, sizeof what, "bilinear ac%d [%d,%d,%d,%d] -> %dx%d", align_corners, n, ih, iw, c,
           oh, ow);
  gpu_compare(gpu, what, &gy, y, got, 1e-6, 1e-7);
  report_bits(what, got, y, nout);

  for (int run = 0; run < 2; run++) {
    gpu_poison(gpu, &gdx);
    TEST_OK(cluda_resize_bilinear_backward(gpu, align_corners, &gdy, &gdx));
    if (run == 0) TEST_OK(cluda_cuda_download(gpu, run1, gdx.data, sizeof(float) * (size_t)nin));
  }
  snprintf(what, sizeof what, "bilinear ac%d backward [%d,%d,%d,%d] <- %dx%d", align_corners, n, ih,
           iw, c, oh, ow);
  gpu_compare(gpu, what, &gdx, dx, got, 1e-5, 1e-6);
  report_bits(what, got, dx, nin);
  gpu_check_bitwise(what, run1, got, sizeof(float) * (size_t)nin);

  /* bad arguments never reach the GPU */
  TEST_FAILS(cluda_resize_bilinear_forward(gpu, 2, &gx, &gy), CLUDA_ERR_ARG, "align_corners");
  cluda_tensor wrong = gdx;
  wrong.shape[3] = c + 1;
  TEST_FAILS(cluda_resize_bilinear_backward(gpu, align_corners, &gdy, &wrong), CLUDA_ERR_SHAPE,
             "channels");
  TEST_OK(cluda_cuda_synchronize(gpu));

  gpu_tensors_free(&gx, &gdy, &gy, &gdx, NULL);
  free(x);
  free(y);
  free(dy);
  free(dx);
  free(got);
  free(run1);
}

static void check_nearest(cluda_ctx *gpu, int n, int ih, int iw, int oh, int ow, int c) {
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const int64_t nin = (int64_t)n * ih * iw * c, nout = (int64_t)n * oh * ow * c;
  const int64_t most = nin > nout ? nin : nout;
  const uint64_t seed = 5300 + (uint64_t)(nin * 17 + nout);
  float *x = test_alloc_f32(nin), *y = test_alloc_f32(nout), *dy = test_alloc_f32(nout),
        *dx = test_alloc_f32(nin), *got = test_alloc_f32(most), *run1 = test_alloc_f32(nin);
  test_fill_uniform(x, nin, -2.0f, 2.0f, seed, 0);
  test_fill_uniform(dy, nout, -1.0f, 1.0f, seed, 1);
  cluda_tensor hx = cluda_tensor_4d(CLUDA_F32, x, n, ih, iw, c);
  cluda_tensor hy = cluda_tensor_4d(CLUDA_F32, y, n, oh, ow, c);
  cluda_tensor hdy = cluda_tensor_4d(CLUDA_F32, dy, n, oh, ow, c);
  cluda_tensor hdx = cluda_tensor_4d(CLUDA_F32, dx, n, ih, iw, c);
  TEST_OK(cluda_resize_nearest_forward(&cpu, &hx, &hy));
  TEST_OK(cluda_resize_nearest_backward(&cpu, &hdy, &hdx));

  cluda_tensor gx = gpu_copy_of(gpu, &hx), gdy = gpu_copy_of(gpu, &hdy);
  cluda_tensor gy = gpu_tensor_like(&hy), gdx = gpu_tensor_like(&hdx);
  char what[128];
  gpu_poison(gpu, &gy);
  TEST_OK(cluda_resize_nearest_forward(gpu, &gx, &gy));
  snprintf(what, sizeof what, "nearest f32 [%d,%d,%d,%d] -> %dx%d", n, ih, iw, c, oh, ow);
  gpu_compare(gpu, what, &gy, y, got, 0.0, 0.0);
  gpu_check_bitwise(what, got, y, sizeof(float) * (size_t)nout);

  for (int run = 0; run < 2; run++) {
    gpu_poison(gpu, &gdx);
    TEST_OK(cluda_resize_nearest_backward(gpu, &gdy, &gdx));
    if (run == 0) TEST_OK(cluda_cuda_download(gpu, run1, gdx.data, sizeof(float) * (size_t)nin));
  }
  snprintf(what, sizeof what, "nearest backward [%d,%d,%d,%d] <- %dx%d", n, ih, iw, c, oh, ow);
  gpu_compare(gpu, what, &gdx, dx, got, 1e-5, 1e-6);
  report_bits(what, got, dx, nin);
  gpu_check_bitwise(what, run1, got, sizeof(float) * (size_t)nin);

  cluda_tensor wrong = gy;
  wrong.shape[0] = n + 1;
  TEST_FAILS(cluda_resize_nearest_forward(gpu, &gx, &wrong), CLUDA_ERR_SHAPE, "batch");
  TEST_OK(cluda_cuda_synchronize(gpu));

  gpu_tensors_free(&gx, &gdy, &gy, &gdx, NULL);
  free(x);
  free(y);
  free(dy);
  free(dx);
  free(got);
  free(run1);
}

/* u8 labels (classes 0..18, so the 0xFF poison is never a valid output) */
static void check_nearest_labels(cluda_ctx *gpu, int n, int ih, int iw, int oh, int ow, int c) {
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const int64_t nin = (int64_t)n * ih * iw * c, nout = (int64_t)n * oh * ow * c;
  uint8_t *x = test_alloc((size_t)nin), *y = test_alloc((size_t)nout),
          *got = test_alloc((size_t)nout);
  gpu_fill_labels(x, nin, 19, 0, 0, 6400 + (uint64_t)nin);
  cluda_tensor hx = cluda_tensor_4d(CLUDA_U8, x, n, ih, iw, c);
  cluda_tensor hy = cluda_tensor_4d(CLUDA_U8, y, n, oh, ow, c);
  TEST_OK(cluda_resize_nearest_forward(&cpu, &hx, &hy));
  cluda_tensor gx = gpu_copy_of(gpu, &hx), gy = gpu_tensor_like(&hy);
  gpu_poison(gpu, &gy);
  TEST_OK(cluda_resize_nearest_forward(gpu, &gx, &gy));
  TEST_OK(cluda_cuda_download(gpu, got, gy.data, (size_t)nout));
  char what[128];
  snprintf(what, sizeof what, "nearest u8 labels [%d,%d,%d,%d] -> %dx%d", n, ih, iw, c, oh, ow);
  printf("  %s\n", what);
  gpu_check_bitwise(what, got, y, (size_t)nout);
  /* y must be u8 like x */
  cluda_tensor f32_out = gy;
  f32_out.dtype = CLUDA_F32;
  TEST_FAILS(cluda_resize_nearest_forward(gpu, &gx, &f32_out), CLUDA_ERR_DTYPE, "y");
  TEST_OK(cluda_cuda_synchronize(gpu));
  gpu_tensors_free(&gx, &gy, NULL);
  free(x);
  free(y);
  free(got);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx gpu;
  gpu_test_init(argv[0], 1 << 20, &gpu);
  for (int ac = 0; ac <= 1; ac++) {
    /*                    n  ih  iw   oh   ow   c */
    check_bilinear(&gpu, 2, 13, 17, 52, 68, 19, ac);   /* x4: logits to label size */
    check_bilinear(&gpu, 2, 13, 17, 26, 34, 64, ac);   /* x2 */
    check_bilinear(&gpu, 1, 64, 61, 13, 17, 5, ac);    /* down, non-integer */
    check_bilinear(&gpu, 2, 13, 17, 29, 23, 1, ac);    /* up in H, down in W */
    check_bilinear(&gpu, 1, 9, 11, 9, 11, 33, ac);     /* identity */
    check_bilinear(&gpu, 1, 1, 1, 5, 7, 3, ac);        /* 1-pixel input */
    check_bilinear(&gpu, 1, 7, 5, 1, 1, 4, ac);        /* 1-pixel output */
    check_bilinear(&gpu, 1, 3, 4, 96, 128, 2, ac);     /* x32 */
    check_bilinear(&gpu, 2, 64, 64, 256, 256, 19, ac); /* DAFormer-sized x4 */
  }
  check_nearest(&gpu, 2, 13, 17, 26, 34, 8);            /* exact x2 shortcut */
  check_nearest(&gpu, 2, 13, 17, 52, 68, 3);            /* x4 */
  check_nearest(&gpu, 1, 64, 61, 13, 17, 5);            /* down, non-integer */
  check_nearest(&gpu, 2, 13, 17, 29, 23, 1);            /* up in H, down in W */
  check_nearest(&gpu, 1, 9, 11, 9, 11, 33);             /* identity */
  check_nearest(&gpu, 1, 1, 1, 5, 7, 3);                /* 1-pixel input */
  check_nearest(&gpu, 1, 7, 5, 1, 1, 4);                /* 1-pixel output */
  check_nearest(&gpu, 1, 3, 4, 96, 128, 2);             /* x32 */
  check_nearest_labels(&gpu, 2, 64, 64, 16, 16, 1);     /* label downsampling */
  check_nearest_labels(&gpu, 1, 13, 17, 40, 50, 1);     /* label upsampling */
  check_nearest_labels(&gpu, 1, 512, 512, 128, 128, 1); /* full-size crop to 1/4 */
  check_nearest_labels(&gpu, 1, 5, 7, 10, 14, 3);       /* several channels, x2 */
  return gpu_test_finish(argv[0], &gpu);
}

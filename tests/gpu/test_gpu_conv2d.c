/* conv2d: CUDA against the CPU backend on the same random inputs (NHWC x, OHWI w), forward
 * (y, with and without bias) and backward (dx overwritten; dw and db accumulated onto random
 * initial values), for 1x1, 3x3 stride 1 and 2, the DAFormer ASPP dilations 6/12/18, grouped,
 * depthwise 3x3 (the MiT Mix-FFN case; the direct kernels) and other depthwise shapes, a
 * depthwise channel multiplier (cuDNN grouped), the 7x7 stride-4 MiT stem, a non-square
 * kernel with unequal strides, a strided 1x1 and padding wider than the kernel; N = 2 and odd
 * H x W such as 13 x 17. Outputs are poisoned with NaN before every GPU run; every output
 * is computed twice and the two runs must agree bit for bit (cuDNN algorithms are restricted
 * to deterministic ones; db and the depthwise dw use fixed-order partials). The backward is
 * also run with dx alone and with dw alone (NULL gradients). Bad shapes never reach the GPU.
 *
 * Tolerances (|gpu - cpu| <= atol + rtol |cpu|): each output of y is a sum of
 * K = KH KW C_in/groups products, each of dx of about C_out/groups KH KW products, each of dw
 * of N OH OW products, summed in another order than the CPU's (OpenBLAS blocking vs cuDNN
 * tiling). fp32 rounding of such a sum is ~1e-7 sqrt(K) relative to its rms size
 * sqrt(K) rms(a) rms(b), so with rtol 1e-4 and atol = 1e-4 sqrt(K) rms(a) rms(b) (1e-4 of the
 * output's typical size) the margin is >= 100x. TF32 tensor-core math (10-bit mantissas,
 * ~4e-4 of the output's size) would fail these bounds: they check that cuDNN really runs in
 * fp32 (CUDNN_FMA_MATH). db sums N OH OW values of dy in double on both sides: rtol 1e-5,
 * atol 1e-6 (1 + sqrt(N OH OW)). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_testing.h"

typedef struct conv_case {
  const char *name;
  int n, h, w, cin, cout;
  int kh, kw, sh, sw, ph, pw, dh, dw, groups;
  int bias;
} conv_case;

static double rms(const float *a, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; i++)
    s += (double)a[i] * a[i];
  return n > 0 ? sqrt(s / (double)n) : 0.0;
}

/* Downloads a device tensor into host memory (numel floats). */
static void fetch(cluda_ctx *gpu, float *host, const cluda_tensor *dev) {
  TEST_OK(
      cluda_cuda_download(gpu, host, dev->data, sizeof(float) * (size_t)cluda_tensor_numel(dev)));
}

static void check_case(cluda_ctx *gpu, const conv_case *cc) {
  const cluda_conv2d_params p = {cc->kh, cc->kw, cc->sh, cc->sw,    cc->ph,
                                 cc->pw, cc->dh, cc->dw, cc->groups};
  const int oh = cluda_conv2d_out_size(cc->h, cc->kh, cc->sh, cc->ph, cc->dh);
  const int ow = cluda_conv2d_out_size(cc->w, cc->kw, cc->sw, cc->pw, cc->dw);
  const int cig = cc->cin / cc->groups, cog = cc->cout / cc->groups;
  const int64_t nx = (int64_t)cc->n * cc->h * cc->w * cc->cin;
  const int64_t ny = (int64_t)cc->n * oh * ow * cc->cout;
  const int64_t nw = (int64_t)cc->cout * cc->kh * cc->kw * cig;
  const int64_t pixels = (int64_t)cc->n * oh * ow;
  const int64_t most = nx > ny ? (nx > nw ? nx : nw) : (ny > nw ? ny : nw);
  const uint64_t seed = 7000 + (uint64_t)(nx + 3 * ny + 7 * nw);
  printf("%s: x [%d,%d,%d,%d] w [%d,%d,%d,%d] y [%d,%d,%d,%d] stride %dx%d pad %dx%d "
         "dilation %dx%d groups %d%s\n",
         cc->name, cc->n, cc->h, cc->w, cc->cin, cc->cout, cc->kh, cc->kw, cig, cc->n, oh, ow,
         cc->cout, cc->sh, cc->sw, cc->ph, cc->pw, cc->dh, cc->dw, cc->groups,
         cc->bias ? ", bias" : "");

  float *x = test_alloc_f32(nx), *w = test_alloc_f32(nw), *b = test_alloc_f32(cc->cout);
  float *y = test_alloc_f32(ny), *dy = test_alloc_f32(ny), *dx = test_alloc_f32(nx);
  float *dw0 = test_alloc_f32(nw), *dw = test_alloc_f32(nw), *db0 = test_alloc_f32(cc->cout),
        *db = test_alloc_f32(cc->cout), *got = test_alloc_f32(most);
  float *run1 = test_alloc_f32(most), *run2 = test_alloc_f32(most);
  float *dw_run1 = test_alloc_f32(nw), *db_run1 = test_alloc_f32(cc->cout);
  test_fill_uniform(x, nx, -1.0f, 1.0f, seed, 0);
  test_fill_uniform(w, nw, -1.0f, 1.0f, seed, 1);
  test_fill_uniform(b, cc->cout, -1.0f, 1.0f, seed, 2);
  test_fill_uniform(dy, ny, -1.0f, 1.0f, seed, 3);
  test_fill_uniform(dw0, nw, -1.0f, 1.0f, seed, 4);
  test_fill_uniform(db0, cc->cout, -1.0f, 1.0f, seed, 5);
  memcpy(dw, dw0, sizeof(float) * (size_t)nw);
  memcpy(db, db0, sizeof(float) * (size_t)cc->cout);

  cluda_tensor hx = cluda_tensor_4d(CLUDA_F32, x, cc->n, cc->h, cc->w, cc->cin);
  cluda_tensor hw = cluda_tensor_4d(CLUDA_F32, w, cc->cout, cc->kh, cc->kw, cig);
  cluda_tensor hb = cluda_tensor_1d(CLUDA_F32, b, cc->cout);
  cluda_tensor hy = cluda_tensor_4d(CLUDA_F32, y, cc->n, oh, ow, cc->cout);
  cluda_tensor hdy = cluda_tensor_4d(CLUDA_F32, dy, cc->n, oh, ow, cc->cout);
  cluda_tensor hdx = cluda_tensor_4d(CLUDA_F32, dx, cc->n, cc->h, cc->w, cc->cin);
  cluda_tensor hdw = cluda_tensor_4d(CLUDA_F32, dw, cc->cout, cc->kh, cc->kw, cig);
  cluda_tensor hdb = cluda_tensor_1d(CLUDA_F32, db, cc->cout);
  cluda_tensor hdw0 = cluda_tensor_4d(CLUDA_F32, dw0, cc->cout, cc->kh, cc->kw, cig);
  cluda_tensor hdb0 = cluda_tensor_1d(CLUDA_F32, db0, cc->cout);

  cluda_ctx cpu = test_cpu_context(cluda_conv2d_scratch_bytes(&p, &hx, &hw, &hy) + (1 << 20));
  TEST_OK(cluda_conv2d_forward(&cpu, &p, &hx, &hw, cc->bias ? &hb : NULL, &hy));
  TEST_OK(cluda_conv2d_backward(&cpu, &p, &hx, &hw, &hdy, &hdx, &hdw, cc->bias ? &hdb : NULL));
  test_context_free(&cpu);

  const double rx = rms(x, nx), rw = rms(w, nw), rdy = rms(dy, ny);
  const double k_y = (double)cc->kh * cc->kw * cig, k_dx = (double)cc->kh * cc->kw * cog;
  const double atol_y = 1e-4 * sqrt(k_y) * rx * rw;
  const double atol_dx = 1e-4 * sqrt(k_dx) * rdy * rw;
  const double atol_dw = 1e-4 * sqrt((double)pixels) * rdy * rx;
  const double atol_db = 1e-6 * (1.0 + sqrt((double)pixels));

  cluda_tensor gx = gpu_copy_of(gpu, &hx), gw = gpu_copy_of(gpu, &hw), gb = gpu_copy_of(gpu, &hb),
               gdy = gpu_copy_of(gpu, &hdy);
  cluda_tensor gy = gpu_tensor_like(&hy), gdx = gpu_tensor_like(&hdx), gdw = gpu_tensor_like(&hdw),
               gdb = gpu_tensor_like(&hdb);
  const cluda_tensor *gbias = cc->bias ? &gb : NULL;
  char what[160];

  /* forward, twice */
  for (int run = 0; run < 2; run++) {
    gpu_poison(gpu, &gy);
    TEST_OK(cluda_conv2d_forward(gpu, &p, &gx, &gw, gbias, &gy));
    fetch(gpu, run == 0 ? run1 : run2, &gy);
  }
  snprintf(what, sizeof what, "%s: y", cc->name);
  gpu_compare(gpu, what, &gy, y, got, 1e-4, atol_y);
  gpu_check_bitwise(what, run1, run2, sizeof(float) * (size_t)ny);

  /* backward with every gradient, twice (dw, db accumulate onto dw0, db0) */
  for (int run = 0; run < 2; run++) {
    gpu_upload(gpu, &gdw, &hdw0);
    gpu_upload(gpu, &gdb, &hdb0);
    gpu_poison(gpu, &gdx);
    TEST_OK(cluda_conv2d_backward(gpu, &p, &gx, &gw, &gdy, &gdx, &gdw, cc->bias ? &gdb : NULL));
    if (run == 0) {
      fetch(gpu, run1, &gdx);
      fetch(gpu, dw_run1, &gdw);
      fetch(gpu, db_run1, &gdb);
    }
  }
  snprintf(what, sizeof what, "%s: dx", cc->name);
  gpu_compare(gpu, what, &gdx, dx, got, 1e-4, atol_dx);
  fetch(gpu, run2, &gdx);
  gpu_check_bitwise(what, run1, run2, sizeof(float) * (size_t)nx);
  snprintf(what, sizeof what, "%s: dw (accumulated)", cc->name);
  gpu_compare(gpu, what, &gdw, dw, got, 1e-4, atol_dw);
  fetch(gpu, run2, &gdw);
  gpu_check_bitwise(what, dw_run1, run2, sizeof(float) * (size_t)nw);
  if (cc->bias) {
    snprintf(what, sizeof what, "%s: db (accumulated)", cc->name);
    gpu_compare(gpu, what, &gdb, db, got, 1e-5, atol_db);
    fetch(gpu, run2, &gdb);
    gpu_check_bitwise(what, db_run1, run2, sizeof(float) * (size_t)cc->cout);
  } else {
    /* db NULL: the initial values stay */
    snprintf(what, sizeof what, "%s: db untouched when NULL", cc->name);
    gpu_compare(gpu, what, &gdb, db0, got, 0.0, 0.0);
  }

  /* dx alone: dw and db must not move */
  gpu_upload(gpu, &gdw, &hdw0);
  gpu_poison(gpu, &gdx);
  TEST_OK(cluda_conv2d_backward(gpu, &p, &gx, &gw, &gdy, &gdx, NULL, NULL));
  snprintf(what, sizeof what, "%s: dx (dw, db NULL)", cc->name);
  gpu_compare(gpu, what, &gdx, dx, got, 1e-4, atol_dx);
  snprintf(what, sizeof what, "%s: dw untouched when NULL", cc->name);
  gpu_compare(gpu, what, &gdw, dw0, got, 0.0, 0.0);

  /* dw alone (the first conv of a network needs no dx) */
  gpu_upload(gpu, &gdw, &hdw0);
  gpu_poison(gpu, &gdx);
  TEST_OK(cluda_conv2d_backward(gpu, &p, &gx, &gw, &gdy, NULL, &gdw, NULL));
  snprintf(what, sizeof what, "%s: dw (dx, db NULL)", cc->name);
  gpu_compare(gpu, what, &gdw, dw, got, 1e-4, atol_dw);
  fetch(gpu, got, &gdx);
  int64_t written = 0;
  for (int64_t i = 0; i < nx; i++)
    written += !isnan(got[i]);
  TEST_CHECK(written == 0, "%s: dx NULL, yet %lld elements of the poisoned dx buffer changed",
             cc->name, (long long)written);

  /* bad shapes never reach the GPU */
  cluda_tensor bad_w = gw;
  bad_w.shape[1] = cc->kh + 1;
  TEST_FAILS(cluda_conv2d_forward(gpu, &p, &gx, &bad_w, gbias, &gy), CLUDA_ERR_SHAPE, "w");
  cluda_tensor bad_dy = gdy;
  bad_dy.shape[2] = ow + 1;
  TEST_FAILS(cluda_conv2d_backward(gpu, &p, &gx, &gw, &bad_dy, &gdx, &gdw, NULL), CLUDA_ERR_SHAPE,
             "dy");
  TEST_OK(cluda_cuda_synchronize(gpu));

  gpu_tensors_free(&gx, &gw, &gb, &gdy, &gy, &gdx, &gdw, &gdb, NULL);
  float *hosts[] = {x, w, b, y, dy, dx, dw0, dw, db0, db, got, run1, run2, dw_run1, db_run1};
  for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++)
    free(hosts[i]);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx gpu;
  /* the public entry point checks the CPU's scratch need (<= 16 MiB im2col chunks here);
   * the rest holds cuDNN workspaces and the db / depthwise dw partials */
  gpu_test_init(argv[0], (size_t)256 << 20, &gpu);
  static const conv_case cases[] = {
      /* name                     n   h   w  cin cout kh kw sh sw ph pw dh dw  g  bias */
      {"1x1", 2, 13, 17, 16, 24, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1},
      {"3x3 s1 p1", 2, 13, 17, 8, 12, 3, 3, 1, 1, 1, 1, 1, 1, 1, 0},
      {"3x3 s2 p1", 2, 13, 17, 16, 32, 3, 3, 2, 2, 1, 1, 1, 1, 1, 1},
      {"ASPP 3x3 dilation 6", 2, 20, 23, 32, 16, 3, 3, 1, 1, 6, 6, 6, 6, 1, 0},
      {"ASPP 3x3 dilation 12", 1, 20, 23, 32, 16, 3, 3, 1, 1, 12, 12, 12, 12, 1, 0},
      {"ASPP 3x3 dilation 18", 2, 13, 17, 16, 8, 3, 3, 1, 1, 18, 18, 18, 18, 1, 1},
      {"grouped 3x3 (4 groups)", 2, 13, 17, 16, 24, 3, 3, 1, 1, 1, 1, 1, 1, 4, 1},
      {"depthwise 3x3 (Mix-FFN)", 2, 13, 17, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 64, 1},
      {"depthwise 3x3 Mix-FFN 64x64", 2, 64, 64, 128, 128, 3, 3, 1, 1, 1, 1, 1, 1, 128, 1},
      {"depthwise 3x3 s2", 1, 13, 17, 40, 40, 3, 3, 2, 2, 1, 1, 1, 1, 40, 0},
      {"depthwise 5x5 dilation 2", 2, 11, 9, 8, 8, 5, 5, 1, 1, 4, 4, 2, 2, 8, 1},
      {"depthwise x2 multiplier", 2, 13, 17, 8, 16, 3, 3, 1, 1, 1, 1, 1, 1, 8, 1},
      {"7x7 s4 p3 (MiT stem)", 2, 61, 67, 3, 32, 7, 7, 4, 4, 3, 3, 1, 1, 1, 1},
      {"3x1 stride 1x2", 1, 12, 15, 6, 5, 3, 1, 1, 2, 1, 0, 1, 1, 1, 1},
      {"1x1 s2", 2, 13, 17, 8, 8, 1, 1, 2, 2, 0, 0, 1, 1, 1, 0},
      {"1x1 pad 2 (border = bias)", 1, 5, 6, 4, 3, 1, 1, 1, 1, 2, 2, 1, 1, 1, 1},
      {"3x3 64->64 32x32", 2, 32, 32, 64, 64, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    check_case(&gpu, &cases[i]);
  return gpu_test_finish(argv[0], &gpu);
}

/* Dropout, Dropout2d and DropPath: CUDA against the CPU backend for the same key, mode, p
 * and first_sample. The GPU draws with its own Philox4x32-10 (cuda/ops/kernel_common.cuh),
 * which must reproduce src/rng.c bit for bit, so the masks must be EXACTLY equal; y and dx
 * are one float multiply by 0 or the same host-computed 1 / (1 - p), so they must be exactly
 * equal too (rtol 0, atol 0). Cases: every mode; p 0 (no draws), 0.1, 0.5, 0.9; odd shapes;
 * first_sample 0 and large, including draw indices that cross 2^32 (the counter's second
 * word) and a nonzero slot; ~4M elements (grid-stride loops); outputs and masks poisoned;
 * the kept fraction sanity-checked on big masks; bad masks rejected before the GPU. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_testing.h"

static const char *mode_name(cluda_dropout_mode m) {
  return m == CLUDA_DROPOUT_ELEMENT ? "element" : m == CLUDA_DROPOUT_CHANNEL ? "channel" : "sample";
}

static void check_case(cluda_ctx *gpu, cluda_dropout_mode mode, int n, int h, int w, int c, float p,
                       uint64_t first_sample, uint32_t slot) {
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const int64_t count = (int64_t)n * h * w * c;
  const int64_t mcount = mode == CLUDA_DROPOUT_ELEMENT   ? count
                         : mode == CLUDA_DROPOUT_CHANNEL ? (int64_t)n * c
                                                         : n;
  const uint64_t seed = 9900 + (uint64_t)count;
  float *x = test_alloc_f32(count), *y = test_alloc_f32(count), *dy = test_alloc_f32(count),
        *dx = test_alloc_f32(count), *got = test_alloc_f32(count);
  uint8_t *mask = test_alloc((size_t)mcount), *gmask_host = test_alloc((size_t)mcount);
  test_fill_uniform(x, count, -1.0f, 1.0f, seed, 0);
  test_fill_uniform(dy, count, -1.0f, 1.0f, seed, 1);
  cluda_dropout_params params;
  memset(&params, 0, sizeof params);
  params.p = p;
  params.mode = mode;
  params.key = cluda_rng_make_key(1234 + (uint64_t)count, 3, 77, CLUDA_RNG_DROPOUT, slot);
  params.first_sample = first_sample;

  cluda_tensor hx = cluda_tensor_4d(CLUDA_F32, x, n, h, w, c);
  cluda_tensor hy = cluda_tensor_4d(CLUDA_F32, y, n, h, w, c);
  cluda_tensor hdy = cluda_tensor_4d(CLUDA_F32, dy, n, h, w, c);
  cluda_tensor hdx = cluda_tensor_4d(CLUDA_F32, dx, n, h, w, c);
  cluda_tensor hm = mode == CLUDA_DROPOUT_ELEMENT   ? cluda_tensor_4d(CLUDA_U8, mask, n, h, w, c)
                    : mode == CLUDA_DROPOUT_CHANNEL ? cluda_tensor_2d(CLUDA_U8, mask, n, c)
                                                    : cluda_tensor_1d(CLUDA_U8, mask, n);
  TEST_OK(cluda_dropout_forward(&cpu, &params, &hx, &hy, &hm));
  TEST_OK(cluda_dropout_backward(&cpu, &params, &hm, &hdy, &hdx));

  cluda_tensor gx = gpu_copy_of(gpu, &hx), gdy = gpu_copy_of(gpu, &hdy);
  cluda_tensor gy = gpu_tensor_like(&hy), gdx = gpu_tensor_like(&hdx), gm = gpu_tensor_like(&hm);
  gpu_poison(gpu, &gy);
  gpu_poison(gpu, &gm); /* 0xFF: neither 0 nor 1 */
  TEST_OK(cluda_dropout_forward(gpu, &params, &gx, &gy, &gm));
  TEST_OK(cluda_cuda_download(gpu, gmask_host, gm.data, (size_t)mcount));
  char what[192];
  snprintf(what, sizeof what, "dropout %s [%d,%d,%d,%d] p %g first_sample %llu slot %u",
           mode_name(mode), n, h, w, c, (double)p, (unsigned long long)first_sample, slot);
  int64_t first_diff = -1, kept = 0;
  for (int64_t i = 0; i < mcount; i++) {
    if (first_diff < 0 && gmask_host[i] != mask[i]) first_diff = i;
    kept += mask[i] != 0;
  }
  TEST_CHECK(first_diff < 0, "%s: mask differs from the CPU's first at %lld (gpu %d, cpu %d)", what,
             (long long)first_diff, first_diff < 0 ? 0 : gmask_host[first_diff],
             first_diff < 0 ? 0 : mask[first_diff]);
  printf("  %-48s mask %s, kept %lld of %lld\n", what, first_diff < 0 ? "equal" : "DIFFERS",
         (long long)kept, (long long)mcount);
  if (mcount >= 10000) {
    /* the CPU's mask is the reference, but a broken setup (p ignored) would pass silently */
    const double frac = (double)kept / (double)mcount, want = 1.0 - (double)p;
    TEST_CHECK(fabs(frac - want) < 0.02, "%s: kept fraction %.4f, expected about %.4f", what, frac,
               want);
  }
  gpu_compare(gpu, "dropout y (exact)", &gy, y, got, 0.0, 0.0);

  /* the backward reads the GPU's mask (equal to the CPU's when the check above passed) */
  gpu_poison(gpu, &gdx);
  TEST_OK(cluda_dropout_backward(gpu, &params, &gm, &gdy, &gdx));
  gpu_compare(gpu, "dropout dx (exact)", &gdx, dx, got, 0.0, 0.0);

  cluda_tensor wrong = gm;
  if (mode == CLUDA_DROPOUT_ELEMENT)
    wrong.shape[0] = n + 1;
  else if (mode == CLUDA_DROPOUT_CHANNEL)
    wrong.shape[1] = c + 1;
  else
    wrong.shape[0] = n + 1;
  TEST_FAILS(cluda_dropout_forward(gpu, &params, &gx, &gy, &wrong), CLUDA_ERR_SHAPE, "mask");
  TEST_OK(cluda_cuda_synchronize(gpu));
  gpu_tensors_free(&gx, &gdy, &gy, &gdx, &gm, NULL);
  float *hosts[] = {x, y, dy, dx, got};
  for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++)
    free(hosts[i]);
  free(mask);
  free(gmask_host);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx gpu;
  gpu_test_init(argv[0], 1 << 20, &gpu);
  const cluda_dropout_mode E = CLUDA_DROPOUT_ELEMENT, C = CLUDA_DROPOUT_CHANNEL,
                           S = CLUDA_DROPOUT_SAMPLE;
  /* mode, n, h, w, c, p, first_sample, slot */
  check_case(&gpu, E, 1, 1, 1, 1, 0.5f, 0, 0);
  check_case(&gpu, E, 2, 5, 7, 33, 0.1f, 0, 0);
  check_case(&gpu, E, 2, 5, 7, 33, 0.0f, 4, 0); /* p 0: ones, y = x */
  check_case(&gpu, E, 3, 17, 19, 513, 0.5f, 6, 2);
  check_case(&gpu, E, 4, 128, 128, 64, 0.9f, 1, 0); /* 4M draws: grid-stride */
  /* 2^18 draws per sample from sample 2^14 - 1: indices 2^32 - 2^18 .. 2^32 + 2^18 */
  check_case(&gpu, E, 2, 64, 64, 64, 0.5f, (1u << 14) - 1, 1);
  check_case(&gpu, C, 4, 3, 5, 64, 0.5f, 0, 0);
  check_case(&gpu, C, 2, 7, 9, 33, 0.1f, 8, 0);
  check_case(&gpu, C, 3, 1, 1, 1, 0.5f, 0, 0);
  check_case(&gpu, C, 64, 4, 4, 512, 0.5f, 128, 5); /* 32768 draws */
  check_case(&gpu, C, 2, 4, 4, 16, 0.0f, 0, 0);
  check_case(&gpu, S, 8, 7, 7, 16, 0.5f, 0, 0);
  check_case(&gpu, S, 5, 3, 3, 33, 0.1f, 1000, 0);
  check_case(&gpu, S, 1, 1, 1, 1, 0.9f, 0, 0);
  check_case(&gpu, S, 16384, 1, 1, 3, 0.25f, ((uint64_t)1 << 32) - 100, 3); /* across 2^32 */
  return gpu_test_finish(argv[0], &gpu);
}

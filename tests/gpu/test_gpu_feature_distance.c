/* Feature distance (DAFormer FD loss): CUDA against the CPU backend on the same random
 * features and masks: the loss and count, and da / db (db optional) for a random dloss;
 * masks about half set, all set and empty (loss 0, count 0, zero gradients); masked cells
 * with a == b (zero distance: zero gradient); 1 to 65536 cells (more than the 1024-block
 * reduction grid covers), 1, 3, 19, 64 and 512 channels (DAFormer's FD features); outputs
 * poisoned; the loss bitwise reproducible; bad shapes rejected before the GPU.
 *
 * Tolerances (|gpu - cpu| <= atol + rtol |cpu|): both backends accumulate each distance and
 * the loss in double (in another order) and round to float once:
 *  - loss: rtol 1e-6, atol 1e-7; count: exact (an integer below 2^24);
 *  - da, db: (a - b) times a float scale rounded from the same double quotient up to
 *    ~1e-16: rtol 1e-5, atol 1e-12 (zeros are exact on both). */
#include <stdlib.h>
#include <string.h>

#include "gpu_testing.h"

enum { MASK_HALF = 0, MASK_ALL = 1, MASK_NONE = 2 };

static void check_case(cluda_ctx *gpu, int n, int h, int w, int c, int mask_kind, int with_db) {
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const int64_t cells = (int64_t)n * h * w, count = cells * c;
  const uint64_t seed = 9100 + (uint64_t)count + (uint64_t)mask_kind;
  float *a = test_alloc_f32(count), *b = test_alloc_f32(count), *da = test_alloc_f32(count),
        *db = test_alloc_f32(count), *got = test_alloc_f32(count), *u = test_alloc_f32(cells);
  uint8_t *mask = test_alloc((size_t)cells);
  test_fill_uniform(a, count, -1.0f, 1.0f, seed, 0);
  test_fill_uniform(b, count, -1.0f, 1.0f, seed, 1);
  test_fill_uniform(u, cells, 0.0f, 1.0f, seed, 2);
  for (int64_t i = 0; i < cells; i++)
    mask[i] = mask_kind == MASK_ALL ? 1 : mask_kind == MASK_NONE ? 0 : (uint8_t)(u[i] < 0.5f);
  /* nonzero mask values other than 1 count too */
  if (mask_kind == MASK_HALF && cells > 3) mask[3] = 200;
  /* a masked cell with zero distance */
  if (mask_kind != MASK_NONE) {
    mask[cells - 1] = 1;
    memcpy(b + (cells - 1) * c, a + (cells - 1) * c, sizeof(float) * (size_t)c);
  }
  float loss = 0.0f, cnt = 0.0f, dloss = 0.7f;
  cluda_tensor ha = cluda_tensor_4d(CLUDA_F32, a, n, h, w, c);
  cluda_tensor hb = cluda_tensor_4d(CLUDA_F32, b, n, h, w, c);
  cluda_tensor hda = cluda_tensor_4d(CLUDA_F32, da, n, h, w, c);
  cluda_tensor hdb = cluda_tensor_4d(CLUDA_F32, db, n, h, w, c);
  cluda_tensor hm = cluda_tensor_3d(CLUDA_U8, mask, n, h, w);
  cluda_tensor hloss = cluda_tensor_1d(CLUDA_F32, &loss, 1);
  cluda_tensor hcnt = cluda_tensor_1d(CLUDA_F32, &cnt, 1);
  cluda_tensor hdloss = cluda_tensor_1d(CLUDA_F32, &dloss, 1);
  TEST_OK(cluda_feature_distance_forward(&cpu, &ha, &hb, &hm, &hloss, &hcnt));
  TEST_OK(
      cluda_feature_distance_backward(&cpu, &ha, &hb, &hm, &hdloss, &hda, with_db ? &hdb : NULL));

  cluda_tensor ga = gpu_copy_of(gpu, &ha), gb = gpu_copy_of(gpu, &hb), gm = gpu_copy_of(gpu, &hm),
               gdloss = gpu_copy_of(gpu, &hdloss);
  cluda_tensor gloss = gpu_tensor_like(&hloss), gcnt = gpu_tensor_like(&hcnt),
               gda = gpu_tensor_like(&hda), gdb = gpu_tensor_like(&hdb);
  float runs[2][2];
  for (int run = 0; run < 2; run++) {
    gpu_poison(gpu, &gloss);
    gpu_poison(gpu, &gcnt);
    TEST_OK(cluda_feature_distance_forward(gpu, &ga, &gb, &gm, &gloss, &gcnt));
    TEST_OK(cluda_cuda_download(gpu, &runs[run][0], gloss.data, sizeof(float)));
    TEST_OK(cluda_cuda_download(gpu, &runs[run][1], gcnt.data, sizeof(float)));
  }
  char what[160];
  static const char *kinds[] = {"half", "all", "none"};
  snprintf(what, sizeof what, "feature_distance loss [%d,%d,%d,%d] mask %s", n, h, w, c,
           kinds[mask_kind]);
  gpu_compare(gpu, what, &gloss, &loss, got, 1e-6, 1e-7);
  gpu_compare(gpu, "feature_distance count", &gcnt, &cnt, got, 0.0, 0.0);
  gpu_check_bitwise("feature_distance loss/count", runs[0], runs[1], sizeof runs[0]);

  gpu_poison(gpu, &gda);
  gpu_poison(gpu, &gdb);
  TEST_OK(
      cluda_feature_distance_backward(gpu, &ga, &gb, &gm, &gdloss, &gda, with_db ? &gdb : NULL));
  snprintf(what, sizeof what, "feature_distance da [%d,%d,%d,%d] mask %s", n, h, w, c,
           kinds[mask_kind]);
  gpu_compare(gpu, what, &gda, da, got, 1e-5, 1e-12);
  if (with_db) gpu_compare(gpu, "feature_distance db", &gdb, db, got, 1e-5, 1e-12);

  cluda_tensor short_mask = gm;
  short_mask.shape[2] = w + 1;
  TEST_FAILS(cluda_feature_distance_forward(gpu, &ga, &gb, &short_mask, &gloss, &gcnt),
             CLUDA_ERR_SHAPE, "mask");
  TEST_OK(cluda_cuda_synchronize(gpu));
  gpu_tensors_free(&ga, &gb, &gm, &gdloss, &gloss, &gcnt, &gda, &gdb, NULL);
  float *hosts[] = {a, b, da, db, got, u};
  for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++)
    free(hosts[i]);
  free(mask);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx gpu;
  gpu_test_init(argv[0], 1 << 20, &gpu);
  check_case(&gpu, 1, 1, 1, 1, MASK_ALL, 1);
  check_case(&gpu, 2, 5, 7, 3, MASK_HALF, 1);
  check_case(&gpu, 2, 5, 7, 3, MASK_NONE, 1); /* empty mask: loss 0, count 0, zeros */
  check_case(&gpu, 2, 16, 16, 64, MASK_HALF, 0);
  check_case(&gpu, 2, 16, 16, 64, MASK_ALL, 1);
  check_case(&gpu, 2, 33, 65, 512, MASK_HALF, 1);  /* DAFormer's FD width, odd map */
  check_case(&gpu, 4, 128, 128, 19, MASK_HALF, 1); /* 65536 cells: grid-stride reduction */
  return gpu_test_finish(argv[0], &gpu);
}

/* Per-pixel cross-entropy: CUDA against the CPU backend on the same random logits, labels
 * (with ignored pixels) and weights (with zeros), for K = 1, 19 and 150, more pixels than
 * one reduction grid covers, a non-default ignore_index; the loss must be bitwise
 * reproducible; out-of-range labels are reported; bad shapes rejected before the GPU. */
#include <stdlib.h>
#include <string.h>

#include "gpu_testing.h"

static void check_case(cluda_ctx *gpu, int n, int h, int w, int k, int ignore_index,
                       int use_weights) {
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const int64_t rows = (int64_t)n * h * w, count = rows * k;
  const uint64_t seed = 1300 + (uint64_t)count + (uint64_t)use_weights;
  float *logits = test_alloc_f32(count), *dlogits = test_alloc_f32(count),
        *got = test_alloc_f32(count), *weights = test_alloc_f32(rows);
  uint8_t *labels = test_alloc((size_t)rows);
  test_fill_uniform(logits, count, -5.0f, 5.0f, seed, 0);
  test_fill_uniform(weights, rows, 0.0f, 1.0f, seed, 1);
  for (int64_t i = 0; i < rows; i += 13)
    weights[i] = 0.0f; /* some zero weights */
  gpu_fill_labels(labels, rows, k, ignore_index, 100, seed);
  float loss = 0.0f, dloss = 0.7f;

  cluda_tensor hl = cluda_tensor_4d(CLUDA_F32, logits, n, h, w, k);
  cluda_tensor hdl = cluda_tensor_4d(CLUDA_F32, dlogits, n, h, w, k);
  cluda_tensor hlab = cluda_tensor_3d(CLUDA_U8, labels, n, h, w);
  cluda_tensor hw = cluda_tensor_3d(CLUDA_F32, weights, n, h, w);
  cluda_tensor hloss = cluda_tensor_1d(CLUDA_F32, &loss, 1);
  cluda_tensor hdloss = cluda_tensor_1d(CLUDA_F32, &dloss, 1);
  const cluda_tensor *hwp = use_weights ? &hw : NULL;
  TEST_OK(cluda_cross_entropy_forward(&cpu, &hl, &hlab, hwp, ignore_index, &hloss));
  TEST_OK(cluda_cross_entropy_backward(&cpu, &hl, &hlab, hwp, ignore_index, &hdloss, &hdl));

  cluda_tensor gl = gpu_copy_of(gpu, &hl), glab = gpu_copy_of(gpu, &hlab),
               gw = gpu_copy_of(gpu, &hw), gdloss = gpu_copy_of(gpu, &hdloss);
  cluda_tensor gloss = gpu_tensor_like(&hloss), gdl = gpu_tensor_like(&hdl);
  const cluda_tensor *gwp = use_weights ? &gw : NULL;
  char what[160];
  float runs[2];
  for (int run = 0; run < 2; run++) {
    gpu_poison(gpu, &gloss);
    TEST_OK(cluda_cross_entropy_forward(gpu, &gl, &glab, gwp, ignore_index, &gloss));
    TEST_OK(cluda_cuda_download(gpu, &runs[run], gloss.data, sizeof(float)));
  }
  snprintf(what, sizeof what, "cross_entropy loss [%d,%d,%d,%d] ignore %d%s", n, h, w, k,
           ignore_index, use_weights ? " weighted" : "");
  gpu_compare(gpu, what, &gloss, &loss, got, 1e-5, 1e-7);
  gpu_check_bitwise("cross_entropy loss", &runs[0], &runs[1], sizeof(float));

  gpu_poison(gpu, &gdl);
  TEST_OK(cluda_cross_entropy_backward(gpu, &gl, &glab, gwp, ignore_index, &gdloss, &gdl));
  snprintf(what, sizeof what, "cross_entropy dlogits [%d,%d,%d,%d]", n, h, w, k);
  gpu_compare(gpu, what, &gdl, dlogits, got, 1e-4, 1e-6 / (double)rows);

  /* an out-of-range label (not ignore_index) is reported by both directions */
  if (k < 255 && ignore_index != k) {
    uint8_t saved = labels[rows / 2];
    labels[rows / 2] = (uint8_t)k;
    gpu_upload(gpu, &glab, &hlab);
    TEST_FAILS(cluda_cross_entropy_forward(gpu, &gl, &glab, gwp, ignore_index, &gloss),
               CLUDA_ERR_ARG, "neither a class");
    TEST_FAILS(cluda_cross_entropy_backward(gpu, &gl, &glab, gwp, ignore_index, &gdloss, &gdl),
               CLUDA_ERR_ARG, "neither a class");
    labels[rows / 2] = saved;
    gpu_upload(gpu, &glab, &hlab);
    /* the context is still usable */
    TEST_OK(cluda_cross_entropy_forward(gpu, &gl, &glab, gwp, ignore_index, &gloss));
    gpu_compare(gpu, "cross_entropy loss after a reported bad label", &gloss, &loss, got, 1e-5,
                1e-7);
  }

  /* bad shapes never reach the GPU */
  cluda_tensor short_labels = glab;
  short_labels.shape[2] = w + 1;
  TEST_FAILS(cluda_cross_entropy_forward(gpu, &gl, &short_labels, gwp, ignore_index, &gloss),
             CLUDA_ERR_SHAPE, "labels");
  cluda_tensor wide_loss = gloss;
  wide_loss.shape[0] = 2;
  TEST_FAILS(cluda_cross_entropy_forward(gpu, &gl, &glab, gwp, ignore_index, &wide_loss),
             CLUDA_ERR_SHAPE, "loss");
  TEST_OK(cluda_cuda_synchronize(gpu));

  gpu_tensors_free(&gl, &glab, &gw, &gdloss, &gloss, &gdl, NULL);
  free(logits);
  free(dlogits);
  free(got);
  free(weights);
  free(labels);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx gpu;
  gpu_test_init(argv[0], 1 << 20, &gpu);
  check_case(&gpu, 2, 9, 11, 19, 255, 1);
  check_case(&gpu, 2, 9, 11, 19, 255, 0);
  check_case(&gpu, 1, 8, 8, 150, 255, 1);    /* ADE20K classes: rows longer than a warp */
  check_case(&gpu, 3, 5, 7, 1, 255, 0);      /* one class */
  check_case(&gpu, 2, 6, 6, 19, 0, 1);       /* class 0 is the ignore label */
  check_case(&gpu, 2, 128, 128, 19, 255, 1); /* 32768 pixels: grid-stride loss reduction */
  return gpu_test_finish(argv[0], &gpu);
}

/* BatchNorm2d: CUDA against the CPU backend on the same random inputs, training (batch
 * statistics, running update, saved mean / rstd) and inference (running statistics),
 * forward and backward (dx overwritten; dgamma / dbeta accumulated onto random initial
 * values). Channel counts that are not multiples of 32, the smallest trainable batch (2
 * values per channel), a large mean (|mean| >> spread, where a one-pass variance would
 * cancel), more rows than the reduction's chunk cap. Outputs are poisoned with NaN before
 * every GPU run, and every output is computed twice and must agree bit for bit (the channel
 * reductions are fixed-order partials). SyncBatchNorm (ctx->bn_sync over > 1 rank) must be
 * refused in training with CLUDA_ERR_UNSUPPORTED and ignored in inference, as on the CPU.
 *
 * Tolerances: both sides sum in double (in another order) and round the results to float
 * once, so outputs differ by at most about one float ulp (6e-8 relative) wherever the double
 * values differ in their last bits: rtol 1e-5 everywhere, atol 1e-6 (y, dx, the statistics)
 * with 10-100x margin. dgamma / dbeta: a float add of the double sum onto the initial value,
 * the same on both sides: rtol 1e-5, atol 1e-6 (1 + sqrt(rows) / 100). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/comm.h"
#include "gpu_testing.h"

static void fetch(cluda_ctx *gpu, float *host, const cluda_tensor *dev) {
  TEST_OK(
      cluda_cuda_download(gpu, host, dev->data, sizeof(float) * (size_t)cluda_tensor_numel(dev)));
}

static void check_shape(cluda_ctx *gpu, int n, int h, int w, int c, float offset, int training,
                        float eps, float momentum) {
  const cluda_batchnorm_params p = {eps, momentum, training};
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const int64_t rows = (int64_t)n * h * w, count = rows * c;
  const uint64_t seed = 3100 + (uint64_t)count + (uint64_t)training;
  float *x = test_alloc_f32(count), *y = test_alloc_f32(count), *dy = test_alloc_f32(count),
        *dx = test_alloc_f32(count), *got = test_alloc_f32(count > c ? count : c),
        *run1 = test_alloc_f32(count), *run2 = test_alloc_f32(count);
  float *gamma = test_alloc_f32(c), *beta = test_alloc_f32(c), *rm0 = test_alloc_f32(c),
        *rv0 = test_alloc_f32(c), *rm = test_alloc_f32(c), *rv = test_alloc_f32(c),
        *sm = test_alloc_f32(c), *sr = test_alloc_f32(c), *dg0 = test_alloc_f32(c),
        *db0 = test_alloc_f32(c), *dg = test_alloc_f32(c), *db = test_alloc_f32(c),
        *stats1 = test_alloc_f32(4 * (int64_t)c), *stats2 = test_alloc_f32(4 * (int64_t)c);
  test_fill_uniform(x, count, offset - 1.0f, offset + 1.0f, seed, 0);
  test_fill_uniform(dy, count, -1.0f, 1.0f, seed, 1);
  test_fill_uniform(gamma, c, 0.5f, 1.5f, seed, 2);
  test_fill_uniform(beta, c, -0.5f, 0.5f, seed, 3);
  test_fill_uniform(rm0, c, offset - 0.1f, offset + 0.1f, seed, 4);
  test_fill_uniform(rv0, c, 0.25f, 0.5f, seed, 5);
  test_fill_uniform(dg0, c, -1.0f, 1.0f, seed, 6);
  test_fill_uniform(db0, c, -1.0f, 1.0f, seed, 7);
  memcpy(rm, rm0, sizeof(float) * (size_t)c);
  memcpy(rv, rv0, sizeof(float) * (size_t)c);
  memcpy(dg, dg0, sizeof(float) * (size_t)c);
  memcpy(db, db0, sizeof(float) * (size_t)c);

  cluda_tensor hx = cluda_tensor_4d(CLUDA_F32, x, n, h, w, c);
  cluda_tensor hy = cluda_tensor_4d(CLUDA_F32, y, n, h, w, c);
  cluda_tensor hdy = cluda_tensor_4d(CLUDA_F32, dy, n, h, w, c);
  cluda_tensor hdx = cluda_tensor_4d(CLUDA_F32, dx, n, h, w, c);
  cluda_tensor hg = cluda_tensor_1d(CLUDA_F32, gamma, c), hb = cluda_tensor_1d(CLUDA_F32, beta, c);
  cluda_tensor hrm = cluda_tensor_1d(CLUDA_F32, rm, c), hrv = cluda_tensor_1d(CLUDA_F32, rv, c);
  cluda_tensor hrm0 = cluda_tensor_1d(CLUDA_F32, rm0, c);
  cluda_tensor hrv0 = cluda_tensor_1d(CLUDA_F32, rv0, c);
  cluda_tensor hsm = cluda_tensor_1d(CLUDA_F32, sm, c), hsr = cluda_tensor_1d(CLUDA_F32, sr, c);
  cluda_tensor hdg = cluda_tensor_1d(CLUDA_F32, dg, c), hdb = cluda_tensor_1d(CLUDA_F32, db, c);
  cluda_tensor hdg0 = cluda_tensor_1d(CLUDA_F32, dg0, c);
  cluda_tensor hdb0 = cluda_tensor_1d(CLUDA_F32, db0, c);
  TEST_OK(cluda_batchnorm_forward(&cpu, &p, &hx, &hg, &hb, &hrm, &hrv, &hy, &hsm, &hsr));
  TEST_OK(cluda_batchnorm_backward(&cpu, &p, &hx, &hg, &hsm, &hsr, &hdy, &hdx, &hdg, &hdb));

  cluda_tensor gx = gpu_copy_of(gpu, &hx), gdy = gpu_copy_of(gpu, &hdy), gg = gpu_copy_of(gpu, &hg),
               gb = gpu_copy_of(gpu, &hb);
  cluda_tensor gy = gpu_tensor_like(&hy), gdx = gpu_tensor_like(&hdx), grm = gpu_tensor_like(&hrm),
               grv = gpu_tensor_like(&hrv), gsm = gpu_tensor_like(&hsm),
               gsr = gpu_tensor_like(&hsr), gdg = gpu_tensor_like(&hdg),
               gdb = gpu_tensor_like(&hdb);
  char what[160], tag[96];
  snprintf(tag, sizeof tag, "batchnorm %s [%d,%d,%d,%d] offset %g", training ? "train" : "infer", n,
           h, w, c, (double)offset);
  printf("%s\n", tag);

  /* forward twice from the same running statistics */
  for (int run = 0; run < 2; run++) {
    gpu_upload(gpu, &grm, &hrm0);
    gpu_upload(gpu, &grv, &hrv0);
    gpu_poison(gpu, &gy);
    gpu_poison(gpu, &gsm);
    gpu_poison(gpu, &gsr);
    TEST_OK(cluda_batchnorm_forward(gpu, &p, &gx, &gg, &gb, &grm, &grv, &gy, &gsm, &gsr));
    fetch(gpu, run == 0 ? run1 : run2, &gy);
    float *st = run == 0 ? stats1 : stats2;
    fetch(gpu, st, &gsm);
    fetch(gpu, st + c, &gsr);
    fetch(gpu, st + 2 * c, &grm);
    fetch(gpu, st + 3 * c, &grv);
  }
  snprintf(what, sizeof what, "%s: y", tag);
  gpu_compare(gpu, what, &gy, y, got, 1e-5, 1e-6);
  gpu_check_bitwise(what, run1, run2, sizeof(float) * (size_t)count);
  gpu_compare(gpu, "  save_mean", &gsm, sm, got, 1e-5, 1e-6);
  gpu_compare(gpu, "  save_rstd", &gsr, sr, got, 1e-5, 1e-6);
  /* in inference the running statistics stay as they were */
  gpu_compare(gpu, "  running_mean", &grm, rm, got, 1e-5, 1e-6);
  gpu_compare(gpu, "  running_var", &grv, rv, got, 1e-5, 1e-6);
  gpu_check_bitwise("  saved and running statistics", stats1, stats2,
                    sizeof(float) * 4 * (size_t)c);

  /* backward twice from the CPU's saved statistics, so both sides see the same inputs */
  gpu_upload(gpu, &gsm, &hsm);
  gpu_upload(gpu, &gsr, &hsr);
  for (int run = 0; run < 2; run++) {
    gpu_upload(gpu, &gdg, &hdg0);
    gpu_upload(gpu, &gdb, &hdb0);
    gpu_poison(gpu, &gdx);
    TEST_OK(cluda_batchnorm_backward(gpu, &p, &gx, &gg, &gsm, &gsr, &gdy, &gdx, &gdg, &gdb));
    fetch(gpu, run == 0 ? run1 : run2, &gdx);
    float *st = run == 0 ? stats1 : stats2;
    fetch(gpu, st, &gdg);
    fetch(gpu, st + c, &gdb);
  }
  const double param_atol = 1e-6 * (1.0 + sqrt((double)rows) / 100.0);
  snprintf(what, sizeof what, "%s: dx", tag);
  gpu_compare(gpu, what, &gdx, dx, got, 1e-5, 1e-6);
  gpu_check_bitwise(what, run1, run2, sizeof(float) * (size_t)count);
  gpu_compare(gpu, "  dgamma (accumulated)", &gdg, dg, got, 1e-5, param_atol);
  gpu_compare(gpu, "  dbeta (accumulated)", &gdb, db, got, 1e-5, param_atol);
  gpu_check_bitwise("  dgamma / dbeta", stats1, stats2, sizeof(float) * 2 * (size_t)c);

  /* SyncBatchNorm: refused in training, irrelevant in inference (no ranks are contacted:
   * the stub communicator has no operations) */
  cluda_comm stub;
  memset(&stub, 0, sizeof stub);
  stub.size = 2;
  cluda_ctx synced = *gpu;
  synced.bn_sync = &stub;
  if (training) {
    TEST_FAILS(cluda_batchnorm_forward(&synced, &p, &gx, &gg, &gb, &grm, &grv, &gy, &gsm, &gsr),
               CLUDA_ERR_UNSUPPORTED, "bn_sync");
    TEST_FAILS(cluda_batchnorm_backward(&synced, &p, &gx, &gg, &gsm, &gsr, &gdy, &gdx, &gdg, &gdb),
               CLUDA_ERR_UNSUPPORTED, "bn_sync");
  } else {
    gpu_poison(gpu, &gy);
    TEST_OK(cluda_batchnorm_forward(&synced, &p, &gx, &gg, &gb, &grm, &grv, &gy, &gsm, &gsr));
    snprintf(what, sizeof what, "%s: y with bn_sync (ignored in inference)", tag);
    gpu_compare(gpu, what, &gy, y, got, 1e-5, 1e-6);
  }

  /* bad shapes never reach the GPU */
  cluda_tensor short_gamma = gg;
  short_gamma.shape[0] = c + 1;
  TEST_FAILS(cluda_batchnorm_forward(gpu, &p, &gx, &short_gamma, &gb, &grm, &grv, &gy, &gsm, &gsr),
             CLUDA_ERR_SHAPE, "gamma");
  TEST_OK(cluda_cuda_synchronize(gpu));

  gpu_tensors_free(&gx, &gdy, &gg, &gb, &gy, &gdx, &grm, &grv, &gsm, &gsr, &gdg, &gdb, NULL);
  float *hosts[] = {x,  y,  dy, dx, got, run1, run2, gamma, beta,   rm0,   rv0,
                    rm, rv, sm, sr, dg,  db,   dg0,  db0,   stats1, stats2};
  for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++)
    free(hosts[i]);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx gpu;
  gpu_test_init(argv[0], 64 << 20, &gpu);
  /*                 n    h    w    c  offset  train   eps     momentum */
  check_shape(&gpu, 2, 5, 7, 33, 0.0f, 1, 1e-5f, 0.1f);      /* C not a multiple of 32 */
  check_shape(&gpu, 1, 1, 2, 3, 0.0f, 1, 1e-5f, 0.1f);       /* 2 values per channel */
  check_shape(&gpu, 2, 13, 17, 64, 100.0f, 1, 1e-5f, 0.1f);  /* |mean| >> spread */
  check_shape(&gpu, 4, 32, 32, 256, 0.5f, 1, 1e-3f, 0.3f);   /* 4096 rows: 64 chunks */
  check_shape(&gpu, 2, 128, 128, 19, -2.0f, 1, 1e-5f, 0.1f); /* 32768 rows: chunk cap */
  check_shape(&gpu, 2, 5, 7, 33, 0.0f, 0, 1e-5f, 0.1f);      /* inference */
  check_shape(&gpu, 2, 13, 17, 64, 100.0f, 0, 1e-5f, 0.1f);  /* inference, large mean */
  check_shape(&gpu, 1, 64, 64, 512, 0.0f, 0, 1e-5f, 0.1f);   /* inference, wide */
  return gpu_test_finish(argv[0], &gpu);
}

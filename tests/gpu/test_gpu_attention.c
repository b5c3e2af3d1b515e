/* Multi-head attention: CUDA against the CPU backend on the same random inputs, forward (out,
 * probs) and backward (dq, dk, dv, the backward reading the CPU's probs), for the shapes of
 * MiT's spatial-reduction attention (heads 1/2/5/8, N up to 4096 queries against the Nk keys
 * left after the reduction) and odd sizes; both batching directions of the launcher (heads >= B
 * and B > heads); the backward with a scratch arena of exactly cluda_attention_scratch_bytes
 * (one (batch, head) pair per batched GEMM) and with room for all pairs; determinism; bad
 * shapes rejected before the GPU.
 *
 * Tolerances: the GPU's GEMMs sum in another order than OpenBLAS, and expf differs from the
 * CPU's exp by an ulp or two, so elementwise |gpu - cpu| <= rtol |cpu| + atol with
 *  - probs: rtol 1e-4, atol 1e-7 (a score error e changes p by a factor e^e; scores are O(1)
 *    sums of head_dim products, e ~ 1e-6);
 *  - out, dq, dk, dv: rtol 1e-3 and atol 1e-5 x max|cpu| of that output (sums over Nk or N up
 *    to 4096 terms with cancellation; the rounding grows like sqrt(K) eps relative to the
 *    output's scale, about 4e-6 at K = 4096);
 * and, for every output, the relative L2 error ||gpu - cpu|| / ||cpu|| <= 2e-5: fp32 GEMMs land
 * near 1e-7..1e-6, TF32 near 3e-4, so this also shows that no TF32 crept in. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_testing.h"

static double max_abs(const float *x, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; i++)
    m = fmax(m, fabs((double)x[i]));
  return m;
}

/* Elementwise with a scale-aware atol, then the relative L2 bound. */
static void compare_out(cluda_ctx *gpu, const char *what, const cluda_tensor *dev,
                        const float *want, float *got, double rtol, double atol_frac) {
  const int64_t n = cluda_tensor_numel(dev);
  gpu_compare(gpu, what, dev, want, got, rtol, atol_frac * max_abs(want, n) + 1e-30);
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; i++) {
    const double e = (double)got[i] - (double)want[i];
    num += e * e;
    den += (double)want[i] * want[i];
  }
  const double rel = den > 0.0 ? sqrt(num / den) : sqrt(num);
  TEST_CHECK(rel <= 2e-5, "%s: relative L2 error %.3g > 2e-5 (TF32 or a wrong element?)", what,
             rel);
}

static void check_shape(cluda_ctx *gpu, int b, int n, int nk, int c, int heads) {
  cluda_ctx cpu_ctx = test_cpu_context(cluda_attention_scratch_bytes(heads, b, n, nk));
  const int64_t nq = (int64_t)b * n * c, nkv = (int64_t)b * nk * c;
  const int64_t np = (int64_t)b * heads * n * nk;
  const uint64_t seed = 4200 + (uint64_t)(nq + np);
  float *q = test_alloc_f32(nq), *k = test_alloc_f32(nkv), *v = test_alloc_f32(nkv),
        *out = test_alloc_f32(nq), *probs = test_alloc_f32(np), *dout = test_alloc_f32(nq),
        *dq = test_alloc_f32(nq), *dk = test_alloc_f32(nkv), *dv = test_alloc_f32(nkv);
  int64_t most = nq > nkv ? nq : nkv;
  most = most > np ? most : np;
  float *got = test_alloc_f32(most), *first = test_alloc_f32(nq + 2 * nkv),
        *again = test_alloc_f32(nq + 2 * nkv);
  test_fill_uniform(q, nq, -1.0f, 1.0f, seed, 0);
  test_fill_uniform(k, nkv, -1.0f, 1.0f, seed, 1);
  test_fill_uniform(v, nkv, -1.0f, 1.0f, seed, 2);
  test_fill_uniform(dout, nq, -1.0f, 1.0f, seed, 3);

  cluda_tensor hq = cluda_tensor_3d(CLUDA_F32, q, b, n, c);
  cluda_tensor hk = cluda_tensor_3d(CLUDA_F32, k, b, nk, c);
  cluda_tensor hv = cluda_tensor_3d(CLUDA_F32, v, b, nk, c);
  cluda_tensor hout = cluda_tensor_3d(CLUDA_F32, out, b, n, c);
  cluda_tensor hp = cluda_tensor_3d(CLUDA_F32, probs, b * heads, n, nk);
  cluda_tensor hdo = cluda_tensor_3d(CLUDA_F32, dout, b, n, c);
  cluda_tensor hdq = cluda_tensor_3d(CLUDA_F32, dq, b, n, c);
  cluda_tensor hdk = cluda_tensor_3d(CLUDA_F32, dk, b, nk, c);
  cluda_tensor hdv = cluda_tensor_3d(CLUDA_F32, dv, b, nk, c);
  TEST_OK(cluda_attention_forward(&cpu_ctx, heads, &hq, &hk, &hv, &hout, &hp));
  TEST_OK(cluda_attention_backward(&cpu_ctx, heads, &hq, &hk, &hv, &hp, &hdo, &hdq, &hdk, &hdv));

  cluda_tensor gq = gpu_copy_of(gpu, &hq), gk = gpu_copy_of(gpu, &hk), gv = gpu_copy_of(gpu, &hv),
               gdo = gpu_copy_of(gpu, &hdo);
  cluda_tensor gout = gpu_tensor_like(&hout), gp = gpu_tensor_like(&hp),
               gdq = gpu_tensor_like(&hdq), gdk = gpu_tensor_like(&hdk),
               gdv = gpu_tensor_like(&hdv);
  char what[160];
  gpu_poison(gpu, &gout);
  gpu_poison(gpu, &gp);
  TEST_OK(cluda_attention_forward(gpu, heads, &gq, &gk, &gv, &gout, &gp));
  snprintf(what, sizeof what, "attention probs B=%d N=%d Nk=%d C=%d heads=%d", b, n, nk, c, heads);
  gpu_compare(gpu, what, &gp, probs, got, 1e-4, 1e-7);
  snprintf(what, sizeof what, "attention out   B=%d N=%d Nk=%d C=%d heads=%d", b, n, nk, c, heads);
  compare_out(gpu, what, &gout, out, got, 1e-3, 1e-5);

  /* The backward reads the CPU's probs. Run 0 in a context whose scratch holds exactly one
   * pair's dS (the documented size), run 1 and 2 in the test's context (room for all pairs);
   * runs 1 and 2 must agree bit for bit. Each run poisons and reads on its own stream. */
  cluda_ctx small;
  const int have_small =
      TEST_OK(cluda_cuda_context_create(0, cluda_attention_scratch_bytes(heads, b, n, nk), &small));
  for (int run = 0; run < 3; run++) {
    cluda_ctx *ctx = run == 0 ? &small : gpu;
    if (run == 0 && !have_small) continue;
    gpu_upload(ctx, &gp, &hp);
    gpu_poison(ctx, &gdq);
    gpu_poison(ctx, &gdk);
    gpu_poison(ctx, &gdv);
    TEST_OK(cluda_attention_backward(ctx, heads, &gq, &gk, &gv, &gp, &gdo, &gdq, &gdk, &gdv));
    TEST_CHECK(ctx->scratch->used == 0, "attention_backward released its scratch");
    const char *how = run == 0 ? "one pair per call" : "all pairs per call";
    snprintf(what, sizeof what, "attention dq (%s) B=%d N=%d Nk=%d heads=%d", how, b, n, nk, heads);
    compare_out(ctx, what, &gdq, dq, got, 1e-3, 1e-5);
    snprintf(what, sizeof what, "attention dk (%s) B=%d N=%d Nk=%d heads=%d", how, b, n, nk, heads);
    compare_out(ctx, what, &gdk, dk, got, 1e-3, 1e-5);
    snprintf(what, sizeof what, "attention dv (%s) B=%d N=%d Nk=%d heads=%d", how, b, n, nk, heads);
    compare_out(ctx, what, &gdv, dv, got, 1e-3, 1e-5);
    if (run > 0) {
      float *keep = run == 1 ? first : again;
      TEST_OK(cluda_cuda_download(ctx, keep, gdq.data, sizeof(float) * (size_t)nq));
      TEST_OK(cluda_cuda_download(ctx, keep + nq, gdk.data, sizeof(float) * (size_t)nkv));
      TEST_OK(cluda_cuda_download(ctx, keep + nq + nkv, gdv.data, sizeof(float) * (size_t)nkv));
    }
  }
  gpu_check_bitwise("attention dq/dk/dv twice", first, again,
                    sizeof(float) * (size_t)(nq + 2 * nkv));
  if (have_small) cluda_cuda_context_destroy(&small);

  /* bad shapes never reach the GPU */
  cluda_tensor bad_probs = gp;
  bad_probs.shape[2] = nk + 1;
  TEST_FAILS(cluda_attention_forward(gpu, heads, &gq, &gk, &gv, &gout, &bad_probs), CLUDA_ERR_SHAPE,
             "probs");
  cluda_tensor bad_dk = gdk;
  bad_dk.shape[1] = nk + 1;
  TEST_FAILS(cluda_attention_backward(gpu, heads, &gq, &gk, &gv, &gp, &gdo, &gdq, &bad_dk, &gdv),
             CLUDA_ERR_SHAPE, "dk");
  TEST_OK(cluda_cuda_synchronize(gpu));

  gpu_tensors_free(&gq, &gk, &gv, &gdo, &gout, &gp, &gdq, &gdk, &gdv, NULL);
  float *hosts[] = {q, k, v, out, probs, dout, dq, dk, dv, got, first, again};
  for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++)
    free(hosts[i]);
  test_context_free(&cpu_ctx);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx gpu;
  gpu_test_init(argv[0], 256 << 20, &gpu);
  check_shape(&gpu, 1, 1, 1, 1, 1);       /* one token, one channel: out = v */
  check_shape(&gpu, 2, 1, 3, 8, 2);       /* a single query */
  check_shape(&gpu, 2, 4096, 64, 32, 1);  /* MiT stage 1 (64x64 tokens, sr 8: 8x8 keys) */
  check_shape(&gpu, 1, 4096, 256, 64, 2); /* stage 2 of a 512 crop: 64x64 vs 16x16 */
  check_shape(&gpu, 2, 1024, 64, 64, 2);  /* stage 2, sr 4 */
  check_shape(&gpu, 2, 256, 64, 160, 5);  /* stage 3, head_dim 32, sr 2 */
  check_shape(&gpu, 2, 64, 64, 256, 8);   /* stage 4, no reduction (Nk = N) */
  check_shape(&gpu, 3, 77, 13, 40, 5);    /* odd sizes, head_dim 8 */
  check_shape(&gpu, 2, 999, 31, 45, 5);   /* odd sizes, head_dim 9 */
  check_shape(&gpu, 5, 35, 9, 34, 2);     /* B > heads: the images are batched */
  check_shape(&gpu, 4, 300, 75, 64, 1);   /* B > heads with one head */
  return gpu_test_finish(argv[0], &gpu);
}

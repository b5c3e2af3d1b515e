/* A whole network on the GPU against the CPU: MiT-B0 with a DAFormer head and with a SegFormer
 * head, batch 2, 64x96 inputs, in training mode (dropout and drop path draw the same keyed
 * masks on both backends, BatchNorm uses batch statistics and updates its running statistics):
 * the forward's stage outputs, fused features, logits and BN buffers, and the backward's full
 * parameter gradient (every tensor of the flat buffer) and input gradient.
 *
 * Tolerances: the network chains ~40 layers of fp32 sums taken in other orders (cuBLASLt,
 * cuDNN, block reductions), so element-wise agreement is judged against the tensor's scale:
 * |gpu - cpu| <= 1e-3 |cpu| + 1e-4 max|cpu|, and every tensor's relative L2 error (printed)
 * must stay below 1e-4. TF32 anywhere would show as ~1e-3 relative L2. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/config.h"
#include "cluda/segmentor.h"
#include "gpu_testing.h"

enum { BATCH = 2, HEIGHT = 64, WIDTH = 96 };

static double max_abs(const float *x, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; i++)
    m = fmax(m, fabs((double)x[i]));
  return m;
}

/* Downloads n floats from dev and compares them with want at the network tolerance. */
static void compare(cluda_ctx *g, const char *what, const void *dev, const float *want, int64_t n) {
  float *got = test_alloc_f32(n);
  if (TEST_OK(cluda_cuda_download(g, got, dev, (size_t)n * sizeof(float)))) {
    double num = 0.0, den = 0.0;
    for (int64_t i = 0; i < n; i++) {
      double e = (double)got[i] - want[i];
      num += e * e;
      den += (double)want[i] * want[i];
    }
    double rel = den > 0 ? sqrt(num / den) : sqrt(num);
    printf("  %-44s rel-L2 %.3g\n", what, rel);
    TEST_CHECK(rel <= 1e-4, "%s: relative L2 error %.3g <= 1e-4", what, rel);
    test_compare_f32(what, got, want, n, 1e-3, 1e-4 * max_abs(want, n));
  }
  free(got);
}

/* A device buffer of `bytes`, holding a copy of host when host is not NULL. */
static void *device_copy(cluda_ctx *g, const void *host, size_t bytes) {
  void *d = NULL;
  if (!TEST_OK(cluda_cuda_malloc(bytes ? bytes : 4, &d))) abort();
  if (bytes && host) TEST_OK(cluda_cuda_upload(g, d, host, bytes));
  return d;
}

static void check_network(cluda_ctx *g, const char *name, const char *yaml) {
  cluda_config cfg;
  cluda_segmentor_config mc;
  cluda_segmentor model;
  if (!TEST_OK(cluda_config_init(&cfg))) return;
  int ok = TEST_OK(cluda_config_load_string(&cfg, yaml, name)) &&
           TEST_OK(cluda_config_to_segmentor_config(&cfg, &mc)) &&
           TEST_OK(cluda_segmentor_create(&model, &mc));
  cluda_config_free(&cfg);
  if (!ok) return;
  cluda_segmentor_plan plan;
  if (!TEST_OK(cluda_segmentor_plan_for(&model, BATCH, HEIGHT, WIDTH, &plan))) {
    cluda_segmentor_free(&model);
    return;
  }
  const size_t np = model.params.total, ns = model.state.total;
  float *params = test_alloc_f32((int64_t)np), *state0 = test_alloc_f32((int64_t)ns + 1);
  TEST_OK(cluda_segmentor_init(&model, params, state0, 7));
  float *state = test_alloc_f32((int64_t)ns + 1), *grads = test_alloc_f32((int64_t)np);
  memcpy(state, state0, ns * sizeof(float));
  memset(grads, 0, np * sizeof(float));
  const int64_t nx = (int64_t)BATCH * HEIGHT * WIDTH * 3;
  const int h4 = HEIGHT / 4, w4 = WIDTH / 4, K = mc.head.num_classes, Cf = mc.head.channels;
  const int64_t nl = (int64_t)BATCH * h4 * w4 * K, nf = (int64_t)BATCH * h4 * w4 * Cf;
  float *x = test_alloc_f32(nx), *dlogits = test_alloc_f32(nl), *dfused = test_alloc_f32(nf);
  float *dx = test_alloc_f32(nx);
  test_fill_uniform(x, nx, -2.0f, 2.0f, 11, 0);
  test_fill_uniform(dlogits, nl, -1e-3f, 1e-3f, 11, 1);
  test_fill_uniform(dfused, nf, -1e-3f, 1e-3f, 11, 2);
  cluda_run_mode mode = {1, 1, cluda_rng_make_key(5, 0, 3, CLUDA_RNG_DROPOUT, 0), 0};

  /* the reference */
  cluda_ctx cpu = test_cpu_context(plan.scratch_bytes);
  void *acts = test_alloc(plan.activation_bytes);
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, BATCH, HEIGHT, WIDTH, 3);
  cluda_tensor tdl = cluda_tensor_4d(CLUDA_F32, dlogits, BATCH, h4, w4, K);
  cluda_tensor tdf = cluda_tensor_4d(CLUDA_F32, dfused, BATCH, h4, w4, Cf);
  cluda_tensor tdx = cluda_tensor_4d(CLUDA_F32, dx, BATCH, HEIGHT, WIDTH, 3);
  const cluda_tensor *no_enc[4] = {NULL, NULL, NULL, NULL};
  cluda_segmentor_outputs out;
  ok = TEST_OK(
           cluda_segmentor_forward(&cpu, &model, &plan, params, state, &mode, &tx, acts, &out)) &&
       TEST_OK(cluda_segmentor_backward(&cpu, &model, &plan, params, grads, state, &mode, &tx, acts,
                                        &tdl, &tdf, no_enc, &tdx));

  /* the same on the GPU: device copies of everything, the activations planned the same way */
  if (ok) {
    float *d_params = device_copy(g, params, np * sizeof(float));
    float *d_state = device_copy(g, state0, ns * sizeof(float));
    float *d_grads = device_copy(g, NULL, np * sizeof(float));
    TEST_OK(cluda_cuda_memset(g, d_grads, 0, np * sizeof(float)));
    void *d_acts = device_copy(g, NULL, plan.activation_bytes);
    TEST_OK(cluda_cuda_memset(g, d_acts, 0xFF, plan.activation_bytes)); /* NaN poison */
    float *d_x = device_copy(g, x, (size_t)nx * sizeof(float));
    float *d_dl = device_copy(g, dlogits, (size_t)nl * sizeof(float));
    float *d_df = device_copy(g, dfused, (size_t)nf * sizeof(float));
    float *d_dx = device_copy(g, NULL, (size_t)nx * sizeof(float));
    TEST_OK(cluda_cuda_memset(g, d_dx, 0xFF, (size_t)nx * sizeof(float)));
    cluda_tensor gx = tx, gdl = tdl, gdf = tdf, gdx = tdx;
    gx.data = d_x;
    gdl.data = d_dl;
    gdf.data = d_df;
    gdx.data = d_dx;
    cluda_segmentor_outputs gout;
    if (TEST_OK(cluda_segmentor_forward(g, &model, &plan, d_params, d_state, &mode, &gx, d_acts,
                                        &gout)) &&
        TEST_OK(cluda_segmentor_backward(g, &model, &plan, d_params, d_grads, d_state, &mode, &gx,
                                         d_acts, &gdl, &gdf, no_enc, &gdx)) &&
        TEST_OK(cluda_cuda_synchronize(g))) {
      char what[96];
      for (int i = 0; i < 4; i++) {
        snprintf(what, sizeof what, "%s: encoder stage %d", name, i + 1);
        compare(g, what, gout.enc[i].data, cluda_f32(&out.enc[i]), cluda_tensor_numel(&out.enc[i]));
      }
      snprintf(what, sizeof what, "%s: fused features", name);
      compare(g, what, gout.fused.data, cluda_f32(&out.fused), nf);
      snprintf(what, sizeof what, "%s: logits", name);
      compare(g, what, gout.logits.data, cluda_f32(&out.logits), nl);
      snprintf(what, sizeof what, "%s: BN running statistics", name);
      if (ns) compare(g, what, d_state, state, (int64_t)ns);
      snprintf(what, sizeof what, "%s: input gradient", name);
      compare(g, what, d_dx, dx, nx);
      /* every parameter tensor against the scale of the whole gradient: tensors whose true
       * gradient is zero (biases feeding a training-mode BatchNorm) hold only rounding noise
       * on both backends, so their own norm is no scale to judge them by */
      float *all = test_alloc_f32((int64_t)np);
      if (TEST_OK(cluda_cuda_download(g, all, d_grads, np * sizeof(float)))) {
        double global = 0.0;
        for (size_t i = 0; i < np; i++)
          global += (double)grads[i] * grads[i];
        global = sqrt(global);
        int worst = -1;
        double worst_rel = 0.0;
        for (int e = 0; e < model.params.count; e++) {
          const cluda_param_info *pe = &model.params.items[e];
          const int64_t n = (int64_t)pe->count;
          double num = 0.0, den = 0.0;
          for (int64_t i = 0; i < n; i++) {
            double d = (double)all[pe->offset + i] - grads[pe->offset + i];
            num += d * d;
            den += (double)grads[pe->offset + i] * grads[pe->offset + i];
          }
          double rel = sqrt(num) / fmax(sqrt(den), 1e-3 * global);
          if (rel > worst_rel) worst_rel = rel, worst = e;
        }
        printf("  %s: parameter gradients, worst tensor %s rel-L2 %.3g\n", name,
               worst >= 0 ? model.params.items[worst].name : "-", worst_rel);
        TEST_CHECK(worst_rel <= 1e-4,
                   "%s: every parameter gradient within 1e-4 relative L2, floored at 1e-3 of "
                   "the whole gradient's norm (worst %s: %.3g)",
                   name, worst >= 0 ? model.params.items[worst].name : "-", worst_rel);
        snprintf(what, sizeof what, "%s: all parameter gradients", name);
        test_compare_f32(what, all, grads, (int64_t)np, 1e-3, 1e-4 * max_abs(grads, np));
      }
      free(all);
    }
    void *device[] = {d_params, d_state, d_grads, d_acts, d_x, d_dl, d_df, d_dx};
    for (size_t i = 0; i < sizeof device / sizeof device[0]; i++)
      cluda_cuda_free(device[i]);
  }
  test_context_free(&cpu);
  free(acts);
  free(params);
  free(state0);
  free(state);
  free(grads);
  free(x);
  free(dlogits);
  free(dfused);
  free(dx);
  cluda_segmentor_free(&model);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx g;
  gpu_test_init(argv[0], (size_t)512 << 20, &g); /* cuDNN workspaces and reduction partials */
  check_network(&g, "MiT-B0 + DAFormer head",
                "model: {encoder: b0, head: daformer, embed_dims: 64, channels: 32}\n");
  check_network(&g, "MiT-B0 + SegFormer head",
                "model: {encoder: b0, head: segformer, embed_dims: 64}\n");
  return gpu_test_finish(argv[0], &g);
}

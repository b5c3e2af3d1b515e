/* The fused AdamW + EMA teacher step and the gradient norm on the GPU (cuda/optim.cu) against
 * the CPU's cluda_adamw_step, cluda_ema_update, cluda_grad_norm and cluda_grad_clip applied in
 * the trainer's order, over several steps of a table with two groups, no_decay entries, odd
 * entry sizes and entries that span many blocks:
 *   CPU: EMA(0); then per iteration it: [norm or clip], AdamW(it), EMA(it + 1)
 *   GPU: cluda_cuda_ema_update(0); then per iteration the fused step with ema_t = it + 1,
 *        except the last iteration, which passes teacher = NULL and runs
 *        cluda_cuda_ema_update(it + 1) on its own (the unfused boundary path).
 * One iteration clips (grad_scale from cluda_cuda_grad_norm, as cluda_grad_clip computes it).
 * Whole flat buffers are compared, padding included: padding holds a sentinel in params, m, v
 * and teacher and NaN in the gradients, which neither side may read or write.
 *
 * Tolerances: the kernel performs the CPU's float operations in the CPU's order with explicit
 * round-to-nearest intrinsics (no FMA contraction), and the scalars are formed on the host
 * with the same double expressions, so the results are expected to be bit-identical (the log
 * prints how many elements differ at all); the check allows rtol 1e-6, atol 1e-9 so that a
 * one-ulp difference in a maths routine would not fail a correct kernel. The norm's double sum
 * runs in another order than the CPU's chunks: rtol 1e-12. The GPU norm itself must be bitwise
 * reproducible. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/optim.h"
#include "gpu_testing.h"

enum { STEPS = 5, CLIP_STEP = 2 };

static const float kSentinel = 12345.0f;

/* Writes `value` into every padding float of a flat buffer. */
static void fill_padding(const cluda_param_table *t, float *buf, float value) {
  size_t at = 0;
  for (int e = 0; e < t->count; e++) {
    for (; at < t->items[e].offset; at++)
      buf[at] = value;
    at = t->items[e].offset + t->items[e].count;
  }
  for (; at < t->total; at++)
    buf[at] = value;
}

static int count_bit_differences(const float *a, const float *b, size_t n) {
  int diff = 0;
  for (size_t i = 0; i < n; i++)
    diff += memcmp(&a[i], &b[i], sizeof(float)) != 0;
  return diff;
}

/* Compares a device buffer with the CPU's (whole table, padding included). */
static void compare_buffer(cluda_ctx *gpu, const char *what, int it, const float *dev,
                           const float *want, float *got, size_t n) {
  char name[96];
  snprintf(name, sizeof name, "%s after iteration %d", what, it);
  if (!TEST_OK(cluda_cuda_download(gpu, got, dev, n * sizeof(float)))) return;
  /* padding keeps the sentinel on both sides; NaN nowhere */
  test_compare_f32(name, got, want, (int64_t)n, 1e-6, 1e-9);
  printf("  %-40s %d of %zu floats differ in any bit\n", name, count_bit_differences(got, want, n),
         n);
}

static void build_table(cluda_param_table *t) {
  struct {
    const char *name;
    int n;
    cluda_param_group group;
    int no_decay;
  } entries[] = {
      {"backbone.patch_embed1.proj.weight", 4097, CLUDA_GROUP_ENCODER, 0},
      {"backbone.patch_embed1.norm.weight", 1, CLUDA_GROUP_ENCODER, 1},
      {"backbone.block1.0.attn.q.weight", 70001, CLUDA_GROUP_ENCODER, 0},
      {"backbone.block1.0.norm1.bias", 17, CLUDA_GROUP_ENCODER, 1},
      {"backbone.block4.2.mlp.fc2.weight", 300000, CLUDA_GROUP_ENCODER, 0},
      {"decode_head.linear_c4.proj.weight", 4096, CLUDA_GROUP_HEAD, 0},
      {"decode_head.fuse_layer.bn.weight", 33, CLUDA_GROUP_HEAD, 1},
      {"decode_head.conv_seg.weight", 12289, CLUDA_GROUP_HEAD, 0},
      {"decode_head.conv_seg.bias", 19, CLUDA_GROUP_HEAD, 1},
  };
  cluda_param_table_init(t);
  for (size_t i = 0; i < sizeof entries / sizeof entries[0]; i++)
    TEST_OK(cluda_param_table_add(t, entries[i].name, 1, &entries[i].n, entries[i].group,
                                  entries[i].no_decay, NULL));
}

static void check_steps(cluda_ctx *gpu) {
  cluda_param_table table;
  build_table(&table);
  const size_t n = table.total;
  cluda_adamw_config cfg = cluda_adamw_default_config();
  cluda_adamw opt;
  TEST_OK(cluda_adamw_init(&opt, &table, &cfg));
  const double ema_alpha = 0.6; /* t = 1: 0.5 (warm-up); t >= 2: the cap 0.6 */
  const double max_norm = 1.0;

  float *params = test_alloc_f32((int64_t)n), *teacher = test_alloc_f32((int64_t)n),
        *grads = test_alloc_f32((int64_t)n), *got = test_alloc_f32((int64_t)n);
  test_fill_uniform(params, (int64_t)n, -1.0f, 1.0f, 31, 0);
  test_fill_uniform(teacher, (int64_t)n, -1.0f, 1.0f, 31, 1);
  fill_padding(&table, params, kSentinel);
  fill_padding(&table, teacher, kSentinel);
  fill_padding(&table, opt.m, kSentinel);
  fill_padding(&table, opt.v, kSentinel);

  float *d_params = NULL, *d_teacher = NULL, *d_grads = NULL, *d_m = NULL, *d_v = NULL;
  TEST_OK(cluda_cuda_malloc(n * sizeof(float), (void **)&d_params));
  TEST_OK(cluda_cuda_malloc(n * sizeof(float), (void **)&d_teacher));
  TEST_OK(cluda_cuda_malloc(n * sizeof(float), (void **)&d_grads));
  TEST_OK(cluda_cuda_malloc(n * sizeof(float), (void **)&d_m));
  TEST_OK(cluda_cuda_malloc(n * sizeof(float), (void **)&d_v));
  TEST_OK(cluda_cuda_upload(gpu, d_params, params, n * sizeof(float)));
  TEST_OK(cluda_cuda_upload(gpu, d_teacher, teacher, n * sizeof(float)));
  TEST_OK(cluda_cuda_upload(gpu, d_m, opt.m, n * sizeof(float)));
  TEST_OK(cluda_cuda_upload(gpu, d_v, opt.v, n * sizeof(float)));

  cluda_cuda_optim *meta = NULL;
  TEST_OK(cluda_cuda_optim_create(gpu, &table, &meta));
  TEST_OK(cluda_cuda_optim_check_table(meta, &table));

  /* iteration 0 opens with the teacher copy on both sides */
  TEST_OK(cluda_ema_update(&table, teacher, params, 0, ema_alpha));
  TEST_OK(cluda_cuda_ema_update(gpu, meta, d_teacher, d_params, 0, ema_alpha));
  compare_buffer(gpu, "teacher (copy at t = 0)", -1, d_teacher, teacher, got, n);

  for (int it = 0; it < STEPS; it++) {
    /* gradients of growing size; the clip step's are large enough to clip */
    const float amp = it == CLIP_STEP ? 0.05f : 0.002f * (float)(it + 1);
    test_fill_uniform(grads, (int64_t)n, -amp, amp, 32, (uint32_t)it);
    fill_padding(&table, grads, NAN);
    TEST_OK(cluda_cuda_upload(gpu, d_grads, grads, n * sizeof(float)));
    const double lrs[CLUDA_OPTIM_GROUPS] = {1e-3 * (1.0 - 0.1 * it), 1e-2 * (1.0 - 0.1 * it)};

    /* CPU, in the trainer's order */
    double cpu_norm = 0.0;
    if (it == CLIP_STEP)
      TEST_OK(cluda_grad_clip(&table, grads, max_norm, &cpu_norm));
    else
      TEST_OK(cluda_grad_norm(&table, grads, &cpu_norm));
    TEST_OK(cluda_adamw_step(&opt, &table, params, grads, lrs));
    const int last = it == STEPS - 1;
    TEST_OK(cluda_ema_update(&table, teacher, params, it + 1, ema_alpha));

    /* GPU */
    float grad_scale = 1.0f;
    if (it == CLIP_STEP) {
      double n1 = 0.0, n2 = 0.0;
      TEST_OK(cluda_cuda_grad_norm(gpu, meta, d_grads, &n1));
      TEST_OK(cluda_cuda_grad_norm(gpu, meta, d_grads, &n2));
      TEST_CHECK(memcmp(&n1, &n2, sizeof n1) == 0, "grad norm twice: %.17g vs %.17g", n1, n2);
      TEST_CHECK(fabs(n1 - cpu_norm) <= 1e-12 * cpu_norm, "cuda_grad_norm %.17g vs CPU %.17g", n1,
                 cpu_norm);
      const double coef = max_norm / (n1 + 1e-6);
      TEST_CHECK(coef < 1.0, "the clip step clips (coefficient %g)", coef);
      if (coef < 1.0) grad_scale = (float)coef;
    }
    double gpu_norm = 0.0;
    TEST_OK(cluda_cuda_adamw_ema_step(gpu, meta, &cfg, lrs, opt.step, grad_scale, d_params, d_grads,
                                      d_m, d_v, last ? NULL : d_teacher, it + 1, ema_alpha,
                                      &gpu_norm));
    if (last) TEST_OK(cluda_cuda_ema_update(gpu, meta, d_teacher, d_params, it + 1, ema_alpha));
    TEST_CHECK(fabs(gpu_norm - cpu_norm) <= 1e-12 * cpu_norm,
               "iteration %d: fused step's grad norm %.17g vs CPU %.17g", it, gpu_norm, cpu_norm);
    compare_buffer(gpu, "params", it, d_params, params, got, n);
    compare_buffer(gpu, "m", it, d_m, opt.m, got, n);
    compare_buffer(gpu, "v", it, d_v, opt.v, got, n);
    compare_buffer(gpu, last ? "teacher (unfused EMA)" : "teacher (fused EMA)", it, d_teacher,
                   teacher, got, n);
  }

  /* a step without the norm or the teacher leaves the teacher alone */
  TEST_OK(cluda_cuda_download(gpu, got, d_teacher, n * sizeof(float)));
  const double lrs[CLUDA_OPTIM_GROUPS] = {1e-3, 1e-2};
  TEST_OK(cluda_cuda_adamw_ema_step(gpu, meta, &cfg, lrs, opt.step + 1, 1.0f, d_params, d_grads,
                                    d_m, d_v, NULL, 0, 0.0, NULL));
  float *again = test_alloc_f32((int64_t)n);
  TEST_OK(cluda_cuda_download(gpu, again, d_teacher, n * sizeof(float)));
  TEST_CHECK(memcmp(got, again, n * sizeof(float)) == 0, "teacher NULL: the teacher is untouched");
  free(again);

  /* bad arguments are refused before the GPU */
  TEST_FAILS(cluda_cuda_adamw_ema_step(gpu, meta, &cfg, lrs, 0, 1.0f, d_params, d_grads, d_m, d_v,
                                       NULL, 0, 0.0, NULL),
             CLUDA_ERR_ARG, "step 0");
  TEST_FAILS(cluda_cuda_adamw_ema_step(gpu, meta, &cfg, lrs, 1, 1.0f, d_params, d_params, d_m, d_v,
                                       NULL, 0, 0.0, NULL),
             CLUDA_ERR_ARG, "distinct");
  TEST_FAILS(cluda_cuda_adamw_ema_step(gpu, meta, &cfg, lrs, 1, 2.0f, d_params, d_grads, d_m, d_v,
                                       NULL, 0, 0.0, NULL),
             CLUDA_ERR_ARG, "grad_scale");
  TEST_FAILS(cluda_cuda_adamw_ema_step(gpu, meta, &cfg, lrs, 1, 1.0f, d_params, d_grads, d_m, d_v,
                                       d_teacher, 1, 1.5, NULL),
             CLUDA_ERR_ARG, "alpha");
  const double bad_lrs[CLUDA_OPTIM_GROUPS] = {1e-3, -1.0};
  TEST_FAILS(cluda_cuda_adamw_ema_step(gpu, meta, &cfg, bad_lrs, 1, 1.0f, d_params, d_grads, d_m,
                                       d_v, NULL, 0, 0.0, NULL),
             CLUDA_ERR_ARG, "lr of group head");
  TEST_FAILS(cluda_cuda_ema_update(gpu, meta, d_teacher, d_teacher, 1, 0.5), CLUDA_ERR_ARG,
             "alias");
  cluda_param_table other;
  cluda_param_table_init(&other);
  int one = 5;
  TEST_OK(cluda_param_table_add(&other, "x", 1, &one, CLUDA_GROUP_ENCODER, 0, NULL));
  TEST_FAILS(cluda_cuda_optim_check_table(meta, &other), CLUDA_ERR_ARG, "not the one");
  cluda_param_table_free(&other);
  TEST_OK(cluda_cuda_synchronize(gpu));

  cluda_cuda_optim_destroy(meta);
  cluda_cuda_free(d_params);
  cluda_cuda_free(d_teacher);
  cluda_cuda_free(d_grads);
  cluda_cuda_free(d_m);
  cluda_cuda_free(d_v);
  cluda_adamw_free(&opt);
  cluda_param_table_free(&table);
  free(params);
  free(teacher);
  free(grads);
  free(got);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx gpu;
  gpu_test_init(argv[0], 1 << 20, &gpu);
  check_steps(&gpu);
  return gpu_test_finish(argv[0], &gpu);
}

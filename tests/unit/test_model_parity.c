/* Whole-network parity with PyTorch / Hugging Face: the segmentor (MiT encoder + SegFormer or
 * DAFormer head) with every weight filled by a procedural generator (no weight files), run
 * forward and backward on the CPU, against float64
 * PyTorch results in tests/fixtures/model/<net>.h5 (written by tools/make_model_fixtures.py;
 * method, versions and cases in tools/README.md).
 *
 * Networks (one HDF5 file each, one group per run mode):
 *   hf_b0        HF SegformerForSemanticSegmentation, MiT-B0 dims, HF's own LayerNorm eps
 *                1e-5 everywhere, so block_norm_eps = 1e-5; train and eval
 *   hf_b1        the same at MiT-B1 dims, block/stage norms at mmseg's 1e-6 (cluda's default
 *                config); train
 *   daformer_b0  MiT-B0 + DAFormer head (E 64, Cf 32); train and eval
 * Weights and BN running statistics (gen_weights), the input x and the cotangents r_* are
 * all procedural. The safetensors loader (HF and mmseg naming, F16 / BF16, K/V fusion,
 * layouts) is tested by test_weights.c on real tiny Hugging Face files in
 * tests/fixtures/weights/, not here. Generator
 * "cluda-hash-v1" (gen_fill, identical to gen_values in the script): element i (cluda layout)
 * of array `name` is (float)(offset + scale * m * 2^-23), m = (h >> 40) - 2^23,
 * h = splitmix64(fnv1a64(name) ^ splitmix64(seed ^ i)); seed = root attribute gen_seed,
 * scale / offset per array in gen_scale_offset (names in gen_names); tensors the script moved
 * afterwards (BN biases off the ReLU kink) are stored whole in gen_override/<name>.
 * train = stochastic 0, bn_batch_stats 1 (PyTorch train mode with every dropout and drop path
 * at 0); eval = stochastic 0, bn_batch_stats 0 (BN running statistics). Input batch 2, 64x96.
 *
 * Checks, per case:
 *   forward: the four stage outputs, the fused features and the logits, and after a train
 *     forward the updated BN running statistics:
 *       |got - want| <= 1e-4 |want| + 1e-5 max|want|
 *   backward from L = sum(logits r_logits) + sum(fused r_fused) + sum_i sum(enc_i r_enc_i):
 *     dx and the gradient of a selection of parameters (cluda names and layouts; every
 *     row_stride-th row of those over 4096 elements):
 *       |got - want| <= 1e-3 |want| + 1e-4 max|want|
 *     and, for EVERY parameter, the L2 and L1 norms of its gradient within 1e-3 relative.
 *     Gradients that are zero in exact arithmetic (SegFormer's linear_c biases under batch-
 *     statistics BN) must satisfy |got| <= 1e-4 max_c sum_rows |dY_c| (the scale of the sum
 *     that forms them, stored by the script).
 *   The relative terms are the accuracy asked of a float32 network (PyTorch's own float32
 *   run uses under 0.2 of them, attribute torch_f32_margin_*); the absolute terms, a tenth of
 *   the relative ones scaled by the array's largest entry, cover entries that are sums with
 *   cancellation, as in test_golden.c.
 *   Backward contract: dx is prefilled with garbage (must be overwritten); a second backward
 *   must leave dx unchanged and exactly double every parameter gradient.
 * The LayerNorm epsilons are pinned: swapping 1e-5 and 1e-6 moves the outputs by over 100
 * forward tolerances (attributes eps_sensitivity_*).
 *
 * The MiT-B5 parameter count (81,443,008) is test_mit's (not repeated here).
 *
 * A missing fixture file, case or dataset is a failure, never a skip. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluda/segmentor.h"
#include "fixture.h"
#include "testing.h"

#define FWD_RTOL 1e-4
#define FWD_ATOL_REL 1e-5
#define BWD_RTOL 1e-3
#define BWD_ATOL_REL 1e-4
#define GARBAGE 1.0e30f
#define LIST_MAX 65536

typedef struct net_case {
  const char *name;    /* fixture tests/fixtures/model/<name>.h5 */
  const char *encoder; /* preset */
  cluda_head_kind head;
  int embed_dims, channels;
  float block_norm_eps;
  const char *modes; /* the groups, in the file's order */
} net_case;

static const net_case CASES[] = {
    {"hf_b0", "b0", CLUDA_HEAD_SEGFORMER, 256, 256, 1e-5f, "train,eval"},
    {"hf_b1", "b1", CLUDA_HEAD_SEGFORMER, 256, 256, 1e-6f, "train"},
    {"daformer_b0", "b0", CLUDA_HEAD_DAFORMER, 64, 32, 1e-6f, "train,eval"},
};

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

static double now_s(void) {
  struct timespec ts;
  timespec_get(&ts, TIME_UTC);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double max_abs(const float *x, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; i++)
    if (fabs((double)x[i]) > m) m = fabs((double)x[i]);
  return m;
}

/* ---- procedural arrays: generator "cluda-hash-v1" of tools/make_model_fixtures.py ----
 * Element i (row-major, cluda layout) of the array `name` in a file with seed s:
 *   h = splitmix64(fnv1a64(name) ^ splitmix64(s ^ i)),  m = (h >> 40) - 2^23,
 *   value = (float)(offset + scale * m * 2^-23)
 * scale and offset (per array, dataset gen_scale_offset) are powers of two or 0, so the double
 * expression is exact and the one rounding to float equals numpy's astype(float32). */
#define GEN_NAME "cluda-hash-v1"

static uint64_t fnv1a64(const char *s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (; *s; s++) {
    h ^= (uint64_t)(unsigned char)*s;
    h *= 0x100000001B3ull;
  }
  return h;
}

static uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static int64_t gen_m(const char *name, uint64_t seed, uint64_t index) {
  uint64_t h = splitmix64(fnv1a64(name) ^ splitmix64(seed ^ index));
  return (int64_t)(h >> 40) - ((int64_t)1 << 23);
}

static void gen_fill(const char *name, uint64_t seed, double scale, double offset, float *dst,
                     int64_t n) {
  uint64_t hn = fnv1a64(name);
  for (int64_t i = 0; i < n; i++) {
    uint64_t h = splitmix64(hn ^ splitmix64(seed ^ (uint64_t)i));
    int64_t m = (int64_t)(h >> 40) - ((int64_t)1 << 23);
    dst[i] = (float)(offset + scale * ((double)m * 0x1p-23));
  }
}

/* The reference values tools/make_model_fixtures.py asserts too. */
static void check_generator(void) {
  TEST_CHECK(fnv1a64("x") == 0xAF63F54C86021707ull, "fnv1a64(\"x\") is %016llx",
             (unsigned long long)fnv1a64("x"));
  TEST_CHECK(splitmix64(0) == 0xE220A8397B1DCDAFull, "splitmix64(0) is %016llx",
             (unsigned long long)splitmix64(0));
  TEST_CHECK(gen_m("x", 7, 0) == -5507529 && gen_m("x", 7, 12345) == 6992264 &&
                 gen_m("backbone.block1.0.attn.kv.weight", 2, 4095) == 6273400,
             "generator: reference values differ from the Python script's");
}

/* Reads "<group>/<name>" (group may be "" for the root); records a failure when it cannot. */
static int load(const fixture *f, const char *group, const char *name, cluda_tensor *t) {
  char path[256];
  snprintf(path, sizeof path, "%s%s%s", group, group[0] ? "/" : "", name);
  t->data = NULL;
  return TEST_OK(fixture_read(f, path, CLUDA_F32, t));
}

/* got (a cluda tensor) against the fixture dataset <group>/<name>: shape and values. */
static void compare_ds(const fixture *f, const char *label, const char *group, const char *name,
                       const cluda_tensor *got, double rtol, double atol_rel) {
  cluda_tensor want;
  if (!load(f, group, name, &want)) return;
  char what[256], gs[64], ws[64];
  snprintf(what, sizeof what, "%s/%s: %s", label, group, name);
  if (TEST_CHECK(cluda_tensor_same_shape(got, &want), "%s: cluda has %s, PyTorch %s", what,
                 cluda_tensor_describe(got, gs, sizeof gs),
                 cluda_tensor_describe(&want, ws, sizeof ws))) {
    int64_t n = cluda_tensor_numel(&want);
    const float *w = cluda_f32(&want);
    test_compare_f32(what, cluda_f32(got), w, n, rtol, atol_rel * max_abs(w, n));
  }
  free(want.data);
}

/* A selected gradient: the dataset holds every row_stride-th row (first index) of it. */
static void compare_grad(const fixture *f, const char *label, const char *group, const char *name,
                         const cluda_tensor *got) {
  char path[512], what[512];
  snprintf(path, sizeof path, "%s/%s", group, name);
  snprintf(what, sizeof what, "%s/%s: %s", label, group, name);
  int stride = 0;
  if (!TEST_OK(fixture_attr_int(f, path, "row_stride", &stride)) ||
      !TEST_CHECK(stride >= 1, "%s: row_stride %d", what, stride))
    return;
  cluda_tensor want;
  if (!load(f, group, name, &want)) return;
  int rows = (got->shape[0] + stride - 1) / stride, same = want.ndim == got->ndim;
  for (int d = 1; d < got->ndim && same; d++)
    same = want.shape[d] == got->shape[d];
  char gs[64], ws[64];
  if (TEST_CHECK(same && want.shape[0] == rows,
                 "%s: cluda has %s, PyTorch %s with every %d-th row (%d rows expected)", what,
                 cluda_tensor_describe(got, gs, sizeof gs),
                 cluda_tensor_describe(&want, ws, sizeof ws), stride, rows)) {
    int64_t n = cluda_tensor_numel(&want), row = n / rows;
    float *sel = test_alloc_f32(n);
    for (int r = 0; r < rows; r++)
      memcpy(sel + (int64_t)r * row, cluda_f32(got) + (int64_t)r * stride * row,
             sizeof(float) * (size_t)row);
    const float *w = cluda_f32(&want);
    test_compare_f32(what, sel, w, n, BWD_RTOL, BWD_ATOL_REL * max_abs(w, n));
    free(sel);
  }
  free(want.data);
}

/* Splits a comma-separated list in place; returns the number of items (at most max). */
static int split_list(char *s, char **items, int max) {
  int n = 0;
  if (!s[0]) return 0;
  for (char *p = s; n < max;) {
    items[n++] = p;
    char *c = strchr(p, ',');
    if (!c) break;
    *c = '\0';
    p = c + 1;
  }
  return n;
}

static int in_list(char *const *items, int n, const char *name) {
  for (int i = 0; i < n; i++)
    if (strcmp(items[i], name) == 0) return 1;
  return 0;
}

/* The file's generator table: names (gen_names) and [count, 2] scale / offset. */
typedef struct gen_table {
  char *buf; /* gen_names, split in place */
  char **names;
  int count;
  cluda_tensor so;
  uint64_t seed;
} gen_table;

static int gen_open(const fixture *f, gen_table *g) {
  memset(g, 0, sizeof *g);
  char gen[64] = "";
  int seed = -1;
  if (!TEST_OK(fixture_attr_string(f, "/", "gen", gen, sizeof gen)) ||
      !TEST_CHECK(strcmp(gen, GEN_NAME) == 0,
                  "%s: values from generator \"%s\", the test implements \"%s\"", f->path, gen,
                  GEN_NAME) ||
      !TEST_OK(fixture_attr_int(f, "/", "gen_seed", &seed)))
    return 0;
  g->seed = (uint64_t)(int64_t)seed;
  g->buf = test_alloc(LIST_MAX);
  g->names = test_alloc(sizeof(char *) * 4096);
  if (!TEST_OK(fixture_attr_string(f, "/", "gen_names", g->buf, LIST_MAX))) return 0;
  g->count = split_list(g->buf, g->names, 4096);
  if (!load(f, "", "gen_scale_offset", &g->so)) return 0;
  return TEST_CHECK(cluda_tensor_numel(&g->so) == 2 * (int64_t)g->count,
                    "%s: gen_scale_offset has %lld entries for %d names", f->path,
                    (long long)cluda_tensor_numel(&g->so), g->count);
}

static void gen_close(gen_table *g) {
  free(g->buf);
  free(g->names);
  free(g->so.data);
}

/* Fills t with the generator's values of array `name` (cluda layout). */
static int gen_array(const gen_table *g, const char *label, const char *name, cluda_tensor *t) {
  for (int i = 0; i < g->count; i++)
    if (strcmp(g->names[i], name) == 0) {
      const float *so = cluda_f32(&g->so) + 2 * i;
      gen_fill(name, g->seed, so[0], so[1], cluda_f32(t), cluda_tensor_numel(t));
      return 1;
    }
  return TEST_CHECK(0, "%s: the fixture's generator table has no entry %s", label, name);
}

/* Procedural weights: every parameter and BN statistic from the generator, then the few
 * tensors the script moved (BN biases off the ReLU kink) from gen_override/<name>. */
static int gen_weights(const fixture *f, const gen_table *g, const char *label,
                       const cluda_segmentor *m, float *params, float *state) {
  int ok = TEST_CHECK(g->count == m->params.count + m->state.count + 7,
                      "%s: the generator table has %d entries; the segmentor has %d parameters "
                      "and %d statistics (+ x and 6 cotangents)",
                      label, g->count, m->params.count, m->state.count);
  for (int i = 0; i < m->params.count && ok; i++) {
    cluda_tensor t = cluda_param_view(&m->params, i, params);
    ok = gen_array(g, label, m->params.items[i].name, &t);
  }
  for (int i = 0; i < m->state.count && ok; i++) {
    cluda_tensor t = cluda_param_view(&m->state, i, state);
    ok = gen_array(g, label, m->state.items[i].name, &t);
  }
  char *buf = test_alloc(LIST_MAX);
  char **items = test_alloc(sizeof(char *) * 1024);
  int n = 0;
  if (ok && (ok = TEST_OK(fixture_attr_string(f, "/", "gen_override_names", buf, LIST_MAX))))
    n = split_list(buf, items, 1024);
  for (int i = 0; i < n && ok; i++) {
    int idx = cluda_param_table_find(&m->params, items[i]);
    ok = TEST_CHECK(idx >= 0, "%s: override %s is not a segmentor parameter", label, items[i]);
    if (!ok) break;
    cluda_tensor t = cluda_param_view(&m->params, idx, params), w;
    char ds[192], gs[64], ws[64];
    snprintf(ds, sizeof ds, "gen_override/%s", items[i]);
    if (!(ok = load(f, "", ds, &w))) break;
    ok = TEST_CHECK(cluda_tensor_same_shape(&t, &w), "%s: %s: cluda has %s, the override %s", label,
                    ds, cluda_tensor_describe(&t, gs, sizeof gs),
                    cluda_tensor_describe(&w, ws, sizeof ws));
    if (ok) memcpy(t.data, w.data, sizeof(float) * (size_t)cluda_tensor_numel(&t));
    free(w.data);
  }
  free(buf);
  free(items);
  return ok;
}

/* A tensor of t's shape holding the generator's values of `name` (data NULL on failure). */
static cluda_tensor gen_like(const gen_table *g, const char *label, const char *name,
                             const cluda_tensor *t) {
  cluda_tensor r = *t;
  r.data = test_alloc_f32(cluda_tensor_numel(t));
  if (!gen_array(g, label, name, &r)) {
    free(r.data);
    r.data = NULL;
  }
  return r;
}

/* A parameter's gradient as a tensor of the table's shape. */
static cluda_tensor grad_view(const cluda_segmentor *m, int idx, float *grads) {
  return cluda_param_view(&m->params, idx, grads);
}

static void check_attr_string(const fixture *f, const char *obj, const char *attr,
                              const char *want) {
  char got[256] = "";
  if (TEST_OK(fixture_attr_string(f, obj, attr, got, sizeof got)))
    TEST_CHECK(strcmp(got, want) == 0, "%s: attribute %s is \"%s\", the test expects \"%s\"",
               f->path, attr, got, want);
}

static void check_attr_int(const fixture *f, const char *obj, const char *attr, int want) {
  int got = -1;
  if (TEST_OK(fixture_attr_int(f, obj, attr, &got)))
    TEST_CHECK(got == want, "%s: attribute %s of %s is %d, the test expects %d", f->path, attr, obj,
               got, want);
}

/* Gradient checks of one case: the selected full gradients, the L2 / L1 norms of every
 * parameter's gradient, the exact-zero ones. */
static void check_grads(const fixture *f, const char *label, const char *group,
                        const cluda_segmentor *m, float *grads) {
  char *buf = test_alloc(LIST_MAX);
  char **items = test_alloc(sizeof(char *) * 4096);
  char **zero = test_alloc(sizeof(char *) * 4096);
  char *zbuf = test_alloc(LIST_MAX);

  /* selected full gradients */
  if (TEST_OK(fixture_attr_string(f, group, "grad_selected", buf, LIST_MAX))) {
    int n = split_list(buf, items, 4096);
    TEST_CHECK(n > 0, "%s/%s: no selected gradients", label, group);
    for (int i = 0; i < n; i++) {
      int idx = cluda_param_table_find(&m->params, items[i]);
      if (!TEST_CHECK(idx >= 0, "%s/%s: the segmentor has no parameter %s", label, group, items[i]))
        continue;
      cluda_tensor g = grad_view(m, idx, grads);
      char ds[192];
      snprintf(ds, sizeof ds, "grad/%s", items[i]);
      compare_grad(f, label, group, ds, &g);
    }
  }

  /* gradients zero in exact arithmetic */
  int nz = 0;
  if (TEST_OK(fixture_attr_string(f, group, "grad_zero_names", zbuf, LIST_MAX)))
    nz = split_list(zbuf, zero, 4096);
  if (nz > 0) {
    cluda_tensor scale;
    if (load(f, group, "grad_zero_scale", &scale) &&
        TEST_CHECK(cluda_tensor_numel(&scale) == nz, "%s/%s: grad_zero_scale has %lld entries",
                   label, group, (long long)cluda_tensor_numel(&scale))) {
      for (int i = 0; i < nz; i++) {
        int idx = cluda_param_table_find(&m->params, zero[i]);
        if (!TEST_CHECK(idx >= 0, "%s/%s: the segmentor has no parameter %s", label, group,
                        zero[i]))
          continue;
        cluda_tensor g = grad_view(m, idx, grads);
        double got = max_abs(cluda_f32(&g), cluda_tensor_numel(&g));
        double bound = BWD_ATOL_REL * cluda_f32(&scale)[i];
        TEST_CHECK(got <= bound,
                   "%s/%s: %s: gradient is zero in exact arithmetic; max|got| = %.3g > %.3g", label,
                   group, zero[i], got, bound);
      }
    }
    free(scale.data);
  }

  /* norms of every parameter's gradient */
  cluda_tensor stats;
  if (TEST_OK(fixture_attr_string(f, group, "grad_stats_names", buf, LIST_MAX)) &&
      load(f, group, "grad_stats", &stats)) {
    int n = split_list(buf, items, 4096);
    TEST_CHECK(cluda_tensor_numel(&stats) == 2 * (int64_t)n,
               "%s/%s: grad_stats has %lld entries for %d names", label, group,
               (long long)cluda_tensor_numel(&stats), n);
    int bad = 0, missing = 0;
    for (int i = 0; i < n && 2 * i + 1 < cluda_tensor_numel(&stats); i++) {
      int idx = cluda_param_table_find(&m->params, items[i]);
      if (idx < 0) {
        if (missing++ < 5)
          printf("  %s/%s: no parameter %s in the segmentor\n", label, group, items[i]);
        continue;
      }
      cluda_tensor g = grad_view(m, idx, grads);
      const float *p = cluda_f32(&g);
      double l2 = 0.0, l1 = 0.0;
      for (int64_t k = 0; k < cluda_tensor_numel(&g); k++) {
        l2 += (double)p[k] * p[k];
        l1 += fabs((double)p[k]);
      }
      l2 = sqrt(l2);
      double w2 = cluda_f32(&stats)[2 * i], w1 = cluda_f32(&stats)[2 * i + 1];
      if (fabs(l2 - w2) > BWD_RTOL * w2 || fabs(l1 - w1) > BWD_RTOL * w1) {
        if (bad++ < 10)
          printf("  %s/%s: gradient of %s: L2 %.7g (PyTorch %.7g, rel %.2g), L1 %.7g "
                 "(PyTorch %.7g, rel %.2g)\n",
                 label, group, items[i], l2, w2, fabs(l2 - w2) / w2, l1, w1, fabs(l1 - w1) / w1);
      }
    }
    TEST_CHECK(missing == 0, "%s/%s: %d gradient-norm names are not segmentor parameters", label,
               group, missing);
    TEST_CHECK(bad == 0,
               "%s/%s: %d of %d parameter gradients have L2/L1 norms off by more than "
               "%g relative",
               label, group, bad, n, BWD_RTOL);
    /* every parameter of the segmentor is covered */
    int uncovered = 0;
    for (int i = 0; i < m->params.count; i++) {
      const char *pn = m->params.items[i].name;
      if (!in_list(items, n, pn) && !in_list(zero, nz, pn) && uncovered++ < 5)
        printf("  %s/%s: parameter %s has no PyTorch gradient\n", label, group, pn);
    }
    TEST_CHECK(uncovered == 0 && n + nz == m->params.count,
               "%s/%s: the fixture covers %d + %d parameters, the segmentor has %d (%d uncovered)",
               label, group, n, nz, m->params.count, uncovered);
    free(stats.data);
  }
  free(buf);
  free(zbuf);
  free(items);
  free(zero);
}

/* BN running statistics after a train-mode forward against PyTorch's updated buffers. */
static void check_state(const fixture *f, const char *label, const char *group,
                        const cluda_segmentor *m, float *state) {
  char *buf = test_alloc(LIST_MAX);
  char **items = test_alloc(sizeof(char *) * 1024);
  if (TEST_OK(fixture_attr_string(f, group, "state_names", buf, LIST_MAX))) {
    int n = split_list(buf, items, 1024);
    TEST_CHECK(n == m->state.count, "%s/%s: %d running statistics in the fixture, %d in cluda",
               label, group, n, m->state.count);
    for (int i = 0; i < n; i++) {
      int idx = cluda_param_table_find(&m->state, items[i]);
      if (!TEST_CHECK(idx >= 0, "%s/%s: the segmentor has no state entry %s", label, group,
                      items[i]))
        continue;
      cluda_tensor s = cluda_param_view(&m->state, idx, state);
      char ds[192];
      snprintf(ds, sizeof ds, "state/%s", items[i]);
      compare_ds(f, label, group, ds, &s, FWD_RTOL, FWD_ATOL_REL);
    }
  }
  free(buf);
  free(items);
}

/* After a second backward every parameter gradient must be twice the first: exactly, up to
 * the regrouping of sums a blocked GEMM does when it accumulates into its output in K chunks
 * (1e-6 relative, 1e-7 of the parameter's largest entry). */
static void check_doubled(const char *label, const char *group, const cluda_segmentor *m,
                          const float *g1, const float *g2) {
  int bad = 0;
  const char *first = NULL;
  for (int i = 0; i < m->params.count; i++) {
    const cluda_param_info *p = &m->params.items[i];
    double big = 2.0 * max_abs(g1 + p->offset, (int64_t)p->count);
    for (size_t k = 0; k < p->count; k++) {
      double want = 2.0 * (double)g1[p->offset + k], got = g2[p->offset + k];
      if (fabs(got - want) > 1e-6 * fabs(want) + 1e-7 * big) {
        if (!first) first = p->name;
        bad++;
        break;
      }
    }
  }
  TEST_CHECK(bad == 0,
             "%s/%s: a second backward does not double the gradients of %d parameters "
             "(first: %s); they must accumulate",
             label, group, bad, first ? first : "");
}

static void run_mode(const net_case *nc, const fixture *f, const gen_table *gen,
                     const cluda_segmentor *model, const char *group) {
  char label[64];
  snprintf(label, sizeof label, "model/%s", nc->name);
  if (!TEST_CHECK(fixture_has(f, group), "%s: no case group \"%s\"", f->path, group)) return;
  int bn_batch_stats = -1;
  if (!TEST_OK(fixture_attr_int(f, group, "bn_batch_stats", &bn_batch_stats))) return;
  check_attr_int(f, group, "stochastic", 0);
  double eps = 0.0;
  if (TEST_OK(fixture_attr_double(f, group, "block_norm_eps", &eps)))
    TEST_CHECK(fabs(eps - nc->block_norm_eps) <= 1e-3 * eps,
               "%s/%s: PyTorch ran with block/stage LayerNorm eps %g, the test sets %g", label,
               group, eps, (double)nc->block_norm_eps);
  if (TEST_OK(fixture_attr_double(f, group, "patch_norm_eps", &eps)))
    TEST_CHECK(fabs(eps - model->cfg.encoder.patch_norm_eps) <= 1e-3 * eps,
               "%s/%s: PyTorch ran with patch/SR LayerNorm eps %g, cluda's config has %g", label,
               group, eps, (double)model->cfg.encoder.patch_norm_eps);

  float *params = test_alloc_f32((int64_t)model->params.total);
  float *state = test_alloc_f32((int64_t)(model->state.total ? model->state.total : 1));
  float *grads = test_alloc_f32((int64_t)model->params.total);
  float *grads2 = test_alloc_f32((int64_t)model->params.total);
  memset(params, 0, sizeof(float) * model->params.total);
  memset(grads, 0, sizeof(float) * model->params.total);
  cluda_tensor x = {0}, rl = {0}, rf = {0}, re[4] = {{0}};
  void *acts = NULL;
  cluda_ctx ctx = {0};

  /* fresh weights and running statistics for every case */
  if (!gen_weights(f, gen, label, model, params, state)) goto out;

  /* input and cotangents: procedural (generator table at the file's root) */
  int batch = 0, height = 0, width = 0;
  if (!TEST_OK(fixture_attr_int(f, "/", "batch", &batch)) ||
      !TEST_OK(fixture_attr_int(f, "/", "height", &height)) ||
      !TEST_OK(fixture_attr_int(f, "/", "width", &width)))
    goto out;
  cluda_tensor xshape = cluda_tensor_4d(CLUDA_F32, NULL, batch, height, width, 3);
  x = gen_like(gen, label, "x", &xshape);
  if (!x.data) goto out;

  cluda_segmentor_plan plan;
  if (!TEST_OK(cluda_segmentor_plan_for(model, x.shape[0], x.shape[1], x.shape[2], &plan)))
    goto out;
  ctx = test_cpu_context(plan.scratch_bytes > 64 ? plan.scratch_bytes : 64);
  acts = test_alloc(plan.activation_bytes > 0 ? plan.activation_bytes : 1);
  cluda_run_mode mode;
  memset(&mode, 0, sizeof mode);
  mode.stochastic = 0;
  mode.bn_batch_stats = bn_batch_stats;

  cluda_segmentor_outputs out;
  double t0 = now_s();
  if (!TEST_OK(cluda_segmentor_forward(&ctx, model, &plan, params, state, &mode, &x, acts, &out)))
    goto out;
  double t1 = now_s();
  for (int i = 0; i < 4; i++) {
    char nm[16];
    snprintf(nm, sizeof nm, "enc%d", i + 1);
    compare_ds(f, label, group, nm, &out.enc[i], FWD_RTOL, FWD_ATOL_REL);
  }
  compare_ds(f, label, group, "fused", &out.fused, FWD_RTOL, FWD_ATOL_REL);
  compare_ds(f, label, group, "logits", &out.logits, FWD_RTOL, FWD_ATOL_REL);
  if (bn_batch_stats) check_state(f, label, group, model, state);

  rl = gen_like(gen, label, "r_logits", &out.logits);
  rf = gen_like(gen, label, "r_fused", &out.fused);
  int ok = rl.data && rf.data;
  for (int i = 0; i < 4; i++) {
    char nm[16];
    snprintf(nm, sizeof nm, "r_enc%d", i + 1);
    re[i] = gen_like(gen, label, nm, &out.enc[i]);
    ok = ok && re[i].data;
  }
  if (!ok) goto out;

  /* backward, twice */
  cluda_tensor dx = x;
  dx.data = test_alloc_f32(cluda_tensor_numel(&x));
  for (int64_t i = 0; i < cluda_tensor_numel(&x); i++)
    cluda_f32(&dx)[i] = GARBAGE;
  const cluda_tensor *denc[4] = {&re[0], &re[1], &re[2], &re[3]};
  double t2 = now_s();
  if (TEST_OK(cluda_segmentor_backward(&ctx, model, &plan, params, grads, state, &mode, &x, acts,
                                       &rl, &rf, denc, &dx))) {
    double t3 = now_s();
    printf("%s/%s: forward %.2f s, backward %.2f s (batch %d, %dx%d)\n", label, group, t1 - t0,
           t3 - t2, x.shape[0], x.shape[1], x.shape[2]);
    compare_ds(f, label, group, "dx", &dx, BWD_RTOL, BWD_ATOL_REL);
    check_grads(f, label, group, model, grads);
    memcpy(grads2, grads, sizeof(float) * model->params.total);
    if (TEST_OK(cluda_segmentor_backward(&ctx, model, &plan, params, grads2, state, &mode, &x, acts,
                                         &rl, &rf, denc, &dx))) {
      compare_ds(f, label, group, "dx", &dx, BWD_RTOL, BWD_ATOL_REL);
      check_doubled(label, group, model, grads, grads2);
    }
  }
  free(dx.data);
out:
  if (ctx.scratch) test_context_free(&ctx);
  free(acts);
  free(x.data);
  free(rl.data);
  free(rf.data);
  for (int i = 0; i < 4; i++)
    free(re[i].data);
  free(params);
  free(state);
  free(grads);
  free(grads2);
}

static void run_net(const net_case *nc) {
  char fname[64];
  snprintf(fname, sizeof fname, "model/%s", nc->name);
  fixture f;
  if (!TEST_OK(fixture_open(fname, &f))) return;
  gen_table gen;
  memset(&gen, 0, sizeof gen);
  char cases[256] = "", torch[64] = "", hf[64] = "";
  if (TEST_OK(fixture_attr_string(&f, "/", "cases", cases, sizeof cases)))
    TEST_CHECK(strcmp(cases, nc->modes) == 0, "%s holds cases \"%s\", the test runs \"%s\"", f.path,
               cases, nc->modes);
  fixture_attr_string(&f, "/", "torch_version", torch, sizeof torch);
  fixture_attr_string(&f, "/", "transformers_version", hf, sizeof hf);
  printf("%s.h5: cases %s (torch %s, transformers %s)\n", fname, nc->modes, torch, hf);

  char weights_name[128] = "";
  check_attr_string(&f, "/", "encoder", nc->encoder);
  check_attr_string(&f, "/", "head", nc->head == CLUDA_HEAD_SEGFORMER ? "segformer" : "daformer");
  check_attr_string(&f, "/", "weights_dtype", "F32");
  check_attr_string(&f, "/", "naming", "cluda");
  check_attr_int(&f, "/", "embed_dims", nc->embed_dims);
  check_attr_int(&f, "/", "channels", nc->channels);
  TEST_OK(fixture_attr_string(&f, "/", "weights", weights_name, sizeof weights_name));
  TEST_CHECK(strcmp(weights_name, "procedural") == 0,
             "%s: weights \"%s\", the test expects procedural weights", f.path, weights_name);
  if (!gen_open(&f, &gen)) goto out;

  cluda_segmentor_config cfg;
  cluda_segmentor model;
  memset(&model, 0, sizeof model);
  if (!TEST_OK(cluda_segmentor_default_config(nc->encoder, nc->head, &cfg))) goto out;
  cfg.encoder.block_norm_eps = nc->block_norm_eps;
  cfg.head.embed_dims = nc->embed_dims;
  cfg.head.channels = nc->channels;
  cfg.head.num_classes = 19;
  if (!TEST_OK(cluda_segmentor_create(&model, &cfg))) goto out;

  char buf[256];
  snprintf(buf, sizeof buf, "%s", nc->modes);
  char *items[8];
  int n = split_list(buf, items, 8);
  for (int i = 0; i < n; i++)
    run_mode(nc, &f, &gen, &model, items[i]);
  cluda_segmentor_free(&model);
out:
  gen_close(&gen);
  fixture_close(&f);
}

int main(void) {
  check_generator();
  for (int i = 0; i < COUNT(CASES); i++)
    run_net(&CASES[i]);
  return test_finish("test_model_parity");
}

/* Golden tests: the CPU ops against PyTorch results stored in tests/fixtures/<family>.h5 (written
 * by tools/make_fixtures.py; see tools/README.md for the method and the versions used).
 *
 * Every case stores inputs, parameters, a random cotangent r, and PyTorch's outputs and the
 * gradients of L = sum(y * r) (for the cross-entropy, L = loss * dloss), all computed in
 * float64 and rounded once to float32. The test runs the public op with dy = r and compares:
 *
 *   |got - want| <= RTOL |want| + ATOL_REL max|want|     (per compared array)
 *
 * RTOL = 1e-5 is the accuracy asked of the float32 ops. The absolute term, 1e-6 of the
 * array's largest magnitude (about 8 float32 ulps of it), covers elements that are sums with
 * cancellation (gradients near zero), whose float32 rounding error scales with the summands,
 * not with the result. Labels (uint8) must match exactly.
 *
 * The backward contract is checked too: input gradients are pre-filled with garbage (they
 * must be overwritten) and the backward runs twice, after which parameter gradients must be
 * exactly twice the first result (they accumulate) and input gradients unchanged.
 *
 * A missing fixture file, case or dataset is a failure, never a skip. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/sr_attention.h"
#include "fixture.h"
#include "testing.h"

#define RTOL 1e-5
#define ATOL_REL 1e-6
#define GARBAGE 1.0e30f

/* ---- helpers ---- */

/* Tensors a case allocated, freed together at its end. */
typedef struct bag {
  void *ptrs[64];
  int count;
} bag;

static void *bag_keep(bag *b, void *p) {
  if (b->count < (int)(sizeof b->ptrs / sizeof b->ptrs[0]))
    b->ptrs[b->count++] = p;
  else {
    fprintf(stderr, "test_golden: bag full\n");
    abort();
  }
  return p;
}

static void bag_free(bag *b) {
  for (int i = 0; i < b->count; i++)
    free(b->ptrs[i]);
  b->count = 0;
}

/* Loads "<case>/<name>"; records a failure (naming file, case and dataset) when it cannot. */
static int load(const fixture *f, bag *b, const char *cs, const char *name, cluda_dtype dtype,
                cluda_tensor *t) {
  char path[192];
  snprintf(path, sizeof path, "%s/%s", cs, name);
  cluda_status s = fixture_read(f, path, dtype, t);
  if (!TEST_OK(s)) return 0;
  bag_keep(b, t->data);
  return 1;
}

static int attr_int(const fixture *f, const char *cs, const char *name, int *out) {
  return TEST_OK(fixture_attr_int(f, cs, name, out));
}

/* A zero-filled f32 tensor with like's shape. */
static cluda_tensor zeros_like(bag *b, const cluda_tensor *like) {
  cluda_tensor t = *like;
  t.dtype = CLUDA_F32;
  t.data = bag_keep(b, test_alloc_f32(cluda_tensor_numel(like)));
  return t;
}

static void fill(cluda_tensor *t, float v) {
  float *p = cluda_f32(t);
  for (int64_t i = 0; i < cluda_tensor_numel(t); i++)
    p[i] = v;
}

static double max_abs(const float *x, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; i++)
    if (fabs((double)x[i]) > m) m = fabs((double)x[i]);
  return m;
}

/* got against want (same numel), scale factor applied to want (1 or 2 for the accumulation
 * check; exact in float32). */
static void compare_scaled(const char *family, const char *cs, const char *what,
                           const cluda_tensor *got, const cluda_tensor *want, float scale) {
  char label[192];
  snprintf(label, sizeof label, "%s/%s: %s%s", family, cs, what,
           scale == 1.0f ? "" : " (after a second backward)");
  int64_t n = cluda_tensor_numel(want);
  if (!TEST_CHECK(cluda_tensor_numel(got) == n, "%s: %lld elements, fixture has %lld", label,
                  (long long)cluda_tensor_numel(got), (long long)n))
    return;
  const float *w = cluda_f32(want);
  float *scaled = NULL;
  if (scale != 1.0f) {
    scaled = test_alloc_f32(n);
    for (int64_t i = 0; i < n; i++)
      scaled[i] = scale * w[i];
    w = scaled;
  }
  test_compare_f32(label, cluda_f32(got), w, n, RTOL, ATOL_REL * max_abs(w, n));
  free(scaled);
}

static void compare(const char *family, const char *cs, const char *what, const cluda_tensor *got,
                    const cluda_tensor *want) {
  compare_scaled(family, cs, what, got, want, 1.0f);
}

static void compare_u8(const char *family, const char *cs, const char *what,
                       const cluda_tensor *got, const cluda_tensor *want) {
  int64_t n = cluda_tensor_numel(want), bad = 0, first = -1;
  const uint8_t *g = cluda_u8(got), *w = cluda_u8(want);
  for (int64_t i = 0; i < n; i++)
    if (g[i] != w[i]) {
      if (first < 0) first = i;
      bad++;
    }
  TEST_CHECK(bad == 0, "%s/%s: %s: %lld of %lld labels differ; first at %lld: got %d want %d",
             family, cs, what, (long long)bad, (long long)n, (long long)first,
             first >= 0 ? g[first] : 0, first >= 0 ? w[first] : 0);
}

/* Opens a family's fixture and checks its case list is the one this test runs. */
static int open_family(const char *family, const char *const *cases, int count, fixture *f) {
  if (!TEST_OK(fixture_open(family, f))) return 0;
  char want[1024] = "", got[1024] = "", torch[64] = "";
  for (int i = 0; i < count; i++) {
    if (i) strncat(want, ",", sizeof want - strlen(want) - 1);
    strncat(want, cases[i], sizeof want - strlen(want) - 1);
  }
  TEST_OK(fixture_attr_string(f, "/", "cases", got, sizeof got));
  TEST_CHECK(strcmp(got, want) == 0, "%s.h5 holds cases \"%s\", test_golden runs \"%s\"", family,
             got, want);
  TEST_OK(fixture_attr_string(f, "/", "torch_version", torch, sizeof torch));
  printf("%s.h5: %d cases (torch %s)\n", family, count, torch);
  return 1;
}

#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---- conv2d ---- */

static void conv2d_case(const fixture *f, const char *cs) {
  static const char fam[] = "conv2d";
  bag b = {0};
  cluda_conv2d_params p;
  int has_bias = 0;
  int ok = attr_int(f, cs, "kernel_h", &p.kernel_h) && attr_int(f, cs, "kernel_w", &p.kernel_w) &&
           attr_int(f, cs, "stride_h", &p.stride_h) && attr_int(f, cs, "stride_w", &p.stride_w) &&
           attr_int(f, cs, "pad_h", &p.pad_h) && attr_int(f, cs, "pad_w", &p.pad_w) &&
           attr_int(f, cs, "dilation_h", &p.dilation_h) &&
           attr_int(f, cs, "dilation_w", &p.dilation_w) && attr_int(f, cs, "groups", &p.groups) &&
           attr_int(f, cs, "has_bias", &has_bias);
  cluda_tensor x, w, bias = {0}, r, y, dx, dw, db = {0};
  ok = ok && load(f, &b, cs, "x", CLUDA_F32, &x) && load(f, &b, cs, "w", CLUDA_F32, &w) &&
       load(f, &b, cs, "r", CLUDA_F32, &r) && load(f, &b, cs, "y", CLUDA_F32, &y) &&
       load(f, &b, cs, "dx", CLUDA_F32, &dx) && load(f, &b, cs, "dw", CLUDA_F32, &dw);
  if (ok && has_bias)
    ok = load(f, &b, cs, "b", CLUDA_F32, &bias) && load(f, &b, cs, "db", CLUDA_F32, &db);
  if (!ok) goto out;

  int oh = cluda_conv2d_out_size(x.shape[1], p.kernel_h, p.stride_h, p.pad_h, p.dilation_h);
  int ow = cluda_conv2d_out_size(x.shape[2], p.kernel_w, p.stride_w, p.pad_w, p.dilation_w);
  TEST_CHECK(oh == y.shape[1] && ow == y.shape[2],
             "%s/%s: cluda_conv2d_out_size gives %dx%d, PyTorch %dx%d", fam, cs, oh, ow, y.shape[1],
             y.shape[2]);

  cluda_tensor gy = zeros_like(&b, &y), gdx = zeros_like(&b, &dx), gdw = zeros_like(&b, &dw);
  cluda_tensor gdb = has_bias ? zeros_like(&b, &db) : db;
  size_t scratch = cluda_conv2d_scratch_bytes(&p, &x, &w, &y);
  cluda_ctx ctx = test_cpu_context(scratch ? scratch : 64);
  const cluda_tensor *pb = has_bias ? &bias : NULL;
  cluda_tensor *pdb = has_bias ? &gdb : NULL;
  if (TEST_OK(cluda_conv2d_forward(&ctx, &p, &x, &w, pb, &gy))) compare(fam, cs, "y", &gy, &y);
  fill(&gdx, GARBAGE);
  if (TEST_OK(cluda_conv2d_backward(&ctx, &p, &x, &w, &r, &gdx, &gdw, pdb))) {
    compare(fam, cs, "dx", &gdx, &dx);
    compare(fam, cs, "dw", &gdw, &dw);
    if (has_bias) compare(fam, cs, "db", &gdb, &db);
    if (TEST_OK(cluda_conv2d_backward(&ctx, &p, &x, &w, &r, &gdx, &gdw, pdb))) {
      compare(fam, cs, "dx", &gdx, &dx);
      compare_scaled(fam, cs, "dw", &gdw, &dw, 2.0f);
      if (has_bias) compare_scaled(fam, cs, "db", &gdb, &db, 2.0f);
    }
  }
  test_context_free(&ctx);
out:
  bag_free(&b);
}

/* ---- layernorm ---- */

static void layernorm_case(const fixture *f, const char *cs) {
  static const char fam[] = "layernorm";
  bag b = {0};
  double eps = 0.0;
  cluda_tensor x, g, be, r, y, mean, rstd, dx, dg, dbe;
  int ok = TEST_OK(fixture_attr_double(f, cs, "eps", &eps)) &&
           load(f, &b, cs, "x", CLUDA_F32, &x) && load(f, &b, cs, "gamma", CLUDA_F32, &g) &&
           load(f, &b, cs, "beta", CLUDA_F32, &be) && load(f, &b, cs, "r", CLUDA_F32, &r) &&
           load(f, &b, cs, "y", CLUDA_F32, &y) && load(f, &b, cs, "mean", CLUDA_F32, &mean) &&
           load(f, &b, cs, "rstd", CLUDA_F32, &rstd) && load(f, &b, cs, "dx", CLUDA_F32, &dx) &&
           load(f, &b, cs, "dgamma", CLUDA_F32, &dg) && load(f, &b, cs, "dbeta", CLUDA_F32, &dbe);
  if (!ok) goto out;
  cluda_ctx ctx = test_cpu_context(1 << 16);
  cluda_tensor gy = zeros_like(&b, &y), gmean = zeros_like(&b, &mean),
               grstd = zeros_like(&b, &rstd), gdx = zeros_like(&b, &dx), gdg = zeros_like(&b, &dg),
               gdbe = zeros_like(&b, &dbe);
  if (TEST_OK(cluda_layernorm_forward(&ctx, &x, &g, &be, (float)eps, &gy, &gmean, &grstd))) {
    compare(fam, cs, "y", &gy, &y);
    compare(fam, cs, "mean", &gmean, &mean);
    compare(fam, cs, "rstd", &grstd, &rstd);
    fill(&gdx, GARBAGE);
    if (TEST_OK(cluda_layernorm_backward(&ctx, &x, &g, &gmean, &grstd, &r, &gdx, &gdg, &gdbe))) {
      compare(fam, cs, "dx", &gdx, &dx);
      compare(fam, cs, "dgamma", &gdg, &dg);
      compare(fam, cs, "dbeta", &gdbe, &dbe);
      if (TEST_OK(cluda_layernorm_backward(&ctx, &x, &g, &gmean, &grstd, &r, &gdx, &gdg, &gdbe))) {
        compare(fam, cs, "dx", &gdx, &dx);
        compare_scaled(fam, cs, "dgamma", &gdg, &dg, 2.0f);
        compare_scaled(fam, cs, "dbeta", &gdbe, &dbe, 2.0f);
      }
    }
  }
  test_context_free(&ctx);
out:
  bag_free(&b);
}

/* ---- multi-head attention ---- */

static void attention_case(const fixture *f, const char *cs) {
  static const char fam[] = "attention";
  bag b = {0};
  int heads = 0;
  cluda_tensor q, k, v, r, o, probs, dq, dk, dv;
  int ok = attr_int(f, cs, "heads", &heads) && load(f, &b, cs, "q", CLUDA_F32, &q) &&
           load(f, &b, cs, "k", CLUDA_F32, &k) && load(f, &b, cs, "v", CLUDA_F32, &v) &&
           load(f, &b, cs, "r", CLUDA_F32, &r) && load(f, &b, cs, "out", CLUDA_F32, &o) &&
           load(f, &b, cs, "probs", CLUDA_F32, &probs) && load(f, &b, cs, "dq", CLUDA_F32, &dq) &&
           load(f, &b, cs, "dk", CLUDA_F32, &dk) && load(f, &b, cs, "dv", CLUDA_F32, &dv);
  if (!ok) goto out;
  cluda_ctx ctx = test_cpu_context(1 << 20);
  cluda_tensor go = zeros_like(&b, &o), gp = zeros_like(&b, &probs), gdq = zeros_like(&b, &dq),
               gdk = zeros_like(&b, &dk), gdv = zeros_like(&b, &dv);
  if (TEST_OK(cluda_attention_forward(&ctx, heads, &q, &k, &v, &go, &gp))) {
    compare(fam, cs, "out", &go, &o);
    compare(fam, cs, "probs", &gp, &probs);
    fill(&gdq, GARBAGE);
    fill(&gdk, GARBAGE);
    fill(&gdv, GARBAGE);
    for (int pass = 0; pass < 2; pass++) {
      if (!TEST_OK(cluda_attention_backward(&ctx, heads, &q, &k, &v, &gp, &r, &gdq, &gdk, &gdv)))
        break;
      compare(fam, cs, "dq", &gdq, &dq);
      compare(fam, cs, "dk", &gdk, &dk);
      compare(fam, cs, "dv", &gdv, &dv);
    }
  }
  test_context_free(&ctx);
out:
  bag_free(&b);
}

/* ---- MiT efficient self-attention ---- */

typedef struct sr_slot {
  const char *name;
  size_t offset; /* of the tensor in cluda_sr_attention_weights */
  int needs_sr;  /* only with sr_ratio > 1 */
} sr_slot;

#define SR_SLOT(field, sr)                                                                         \
  { #field, offsetof(cluda_sr_attention_weights, field), sr }
static const sr_slot sr_slots[] = {
    SR_SLOT(q_w, 0),    SR_SLOT(q_b, 0),    SR_SLOT(kv_w, 0),   SR_SLOT(kv_b, 0),
    SR_SLOT(sr_w, 1),   SR_SLOT(sr_b, 1),   SR_SLOT(norm_w, 1), SR_SLOT(norm_b, 1),
    SR_SLOT(proj_w, 0), SR_SLOT(proj_b, 0),
};

static cluda_tensor *sr_field(cluda_sr_attention_weights *w, const sr_slot *s) {
  return (cluda_tensor *)((char *)w + s->offset);
}

static void sr_attention_case(const fixture *f, const char *cs) {
  static const char fam[] = "sr_attention";
  bag b = {0};
  cluda_sr_attention_params p;
  double eps = 0.0;
  int ok = attr_int(f, cs, "channels", &p.channels) && attr_int(f, cs, "heads", &p.heads) &&
           attr_int(f, cs, "sr_ratio", &p.sr_ratio) &&
           TEST_OK(fixture_attr_double(f, cs, "sr_norm_eps", &eps));
  p.sr_norm_eps = (float)eps;
  cluda_sr_attention_weights w, want, got;
  memset(&w, 0, sizeof w);
  memset(&want, 0, sizeof want);
  memset(&got, 0, sizeof got);
  cluda_tensor x, r, y, dx;
  ok = ok && load(f, &b, cs, "x", CLUDA_F32, &x) && load(f, &b, cs, "r", CLUDA_F32, &r) &&
       load(f, &b, cs, "y", CLUDA_F32, &y) && load(f, &b, cs, "dx", CLUDA_F32, &dx);
  for (int i = 0; ok && i < COUNT(sr_slots); i++) {
    const sr_slot *s = &sr_slots[i];
    if (s->needs_sr && p.sr_ratio <= 1) continue;
    char dname[32];
    snprintf(dname, sizeof dname, "d%s", s->name);
    ok = load(f, &b, cs, s->name, CLUDA_F32, sr_field(&w, s)) &&
         load(f, &b, cs, dname, CLUDA_F32, sr_field(&want, s));
    if (ok) *sr_field(&got, s) = zeros_like(&b, sr_field(&want, s));
  }
  if (!ok) goto out;

  size_t saved_bytes = 0, scratch_bytes = 0;
  if (!TEST_OK(cluda_sr_attention_plan(&p, x.shape[0], x.shape[1], x.shape[2], &saved_bytes,
                                       &scratch_bytes)))
    goto out;
  void *saved = bag_keep(&b, test_alloc(saved_bytes));
  cluda_ctx ctx = test_cpu_context(scratch_bytes ? scratch_bytes : 64);
  cluda_tensor gy = zeros_like(&b, &y), gdx = zeros_like(&b, &dx);
  if (TEST_OK(cluda_sr_attention_forward(&ctx, &p, &w, &x, saved, saved_bytes, &gy))) {
    compare(fam, cs, "y", &gy, &y);
    fill(&gdx, GARBAGE);
    for (int pass = 0; pass < 2; pass++) {
      if (!TEST_OK(
              cluda_sr_attention_backward(&ctx, &p, &w, &x, saved, saved_bytes, &r, &gdx, &got)))
        break;
      compare(fam, cs, "dx", &gdx, &dx);
      for (int i = 0; i < COUNT(sr_slots); i++) {
        const sr_slot *s = &sr_slots[i];
        if (s->needs_sr && p.sr_ratio <= 1) continue;
        char what[32];
        snprintf(what, sizeof what, "d%s", s->name);
        compare_scaled(fam, cs, what, sr_field(&got, s), sr_field(&want, s), pass ? 2.0f : 1.0f);
      }
    }
  }
  test_context_free(&ctx);
out:
  bag_free(&b);
}

/* ---- resizes ---- */

static void bilinear_case(const fixture *f, const char *cs) {
  static const char fam[] = "resize_bilinear";
  bag b = {0};
  int ac = 0;
  cluda_tensor x, r, y, dx;
  int ok = attr_int(f, cs, "align_corners", &ac) && load(f, &b, cs, "x", CLUDA_F32, &x) &&
           load(f, &b, cs, "r", CLUDA_F32, &r) && load(f, &b, cs, "y", CLUDA_F32, &y) &&
           load(f, &b, cs, "dx", CLUDA_F32, &dx);
  if (!ok) goto out;
  cluda_ctx ctx = test_cpu_context(1 << 16);
  cluda_tensor gy = zeros_like(&b, &y), gdx = zeros_like(&b, &dx);
  if (TEST_OK(cluda_resize_bilinear_forward(&ctx, ac, &x, &gy))) compare(fam, cs, "y", &gy, &y);
  fill(&gdx, GARBAGE);
  for (int pass = 0; pass < 2; pass++) {
    if (!TEST_OK(cluda_resize_bilinear_backward(&ctx, ac, &r, &gdx))) break;
    compare(fam, cs, "dx", &gdx, &dx);
  }
  test_context_free(&ctx);
out:
  bag_free(&b);
}

static void nearest_case(const fixture *f, const char *cs) {
  static const char fam[] = "resize_nearest";
  bag b = {0};
  char path[192];
  snprintf(path, sizeof path, "%s/r", cs);
  int labels = !fixture_has(f, path); /* label cases have no cotangent */
  cluda_tensor x, y, r, dx;
  cluda_dtype dt = labels ? CLUDA_U8 : CLUDA_F32;
  int ok = load(f, &b, cs, "x", dt, &x) && load(f, &b, cs, "y", dt, &y);
  if (ok && !labels)
    ok = load(f, &b, cs, "r", CLUDA_F32, &r) && load(f, &b, cs, "dx", CLUDA_F32, &dx);
  if (!ok) goto out;
  cluda_ctx ctx = test_cpu_context(1 << 16);
  cluda_tensor gy = y;
  gy.data = bag_keep(&b, test_alloc(cluda_tensor_bytes(&y)));
  if (TEST_OK(cluda_resize_nearest_forward(&ctx, &x, &gy))) {
    if (labels)
      compare_u8(fam, cs, "labels", &gy, &y);
    else
      compare(fam, cs, "y", &gy, &y);
  }
  if (!labels) {
    cluda_tensor gdx = zeros_like(&b, &dx);
    fill(&gdx, GARBAGE);
    for (int pass = 0; pass < 2; pass++) {
      if (!TEST_OK(cluda_resize_nearest_backward(&ctx, &r, &gdx))) break;
      compare(fam, cs, "dx", &gdx, &dx);
    }
  }
  test_context_free(&ctx);
out:
  bag_free(&b);
}

/* ---- cross-entropy ---- */

static void cross_entropy_case(const fixture *f, const char *cs) {
  static const char fam[] = "cross_entropy";
  bag b = {0};
  int ignore = 0, has_w = 0;
  cluda_tensor logits, labels, weights = {0}, loss, dloss, dlogits;
  int ok = attr_int(f, cs, "ignore_index", &ignore) && attr_int(f, cs, "has_weights", &has_w) &&
           load(f, &b, cs, "logits", CLUDA_F32, &logits) &&
           load(f, &b, cs, "labels", CLUDA_U8, &labels) &&
           load(f, &b, cs, "loss", CLUDA_F32, &loss) &&
           load(f, &b, cs, "dloss", CLUDA_F32, &dloss) &&
           load(f, &b, cs, "dlogits", CLUDA_F32, &dlogits);
  if (ok && has_w) ok = load(f, &b, cs, "weights", CLUDA_F32, &weights);
  if (!ok) goto out;
  cluda_ctx ctx = test_cpu_context(1 << 16);
  const cluda_tensor *pw = has_w ? &weights : NULL;
  cluda_tensor gloss = zeros_like(&b, &loss), gdl = zeros_like(&b, &dlogits);
  if (TEST_OK(cluda_cross_entropy_forward(&ctx, &logits, &labels, pw, ignore, &gloss)))
    compare(fam, cs, "loss", &gloss, &loss);
  fill(&gdl, GARBAGE);
  for (int pass = 0; pass < 2; pass++) {
    if (!TEST_OK(cluda_cross_entropy_backward(&ctx, &logits, &labels, pw, ignore, &dloss, &gdl)))
      break;
    compare(fam, cs, "dlogits", &gdl, &dlogits);
  }
  test_context_free(&ctx);
out:
  bag_free(&b);
}

/* ---- families ---- */

typedef void (*case_fn)(const fixture *f, const char *cs);

static void run_family(const char *family, const char *const *cases, int count, case_fn fn) {
  fixture f;
  if (!open_family(family, cases, count, &f)) return;
  for (int i = 0; i < count; i++)
    fn(&f, cases[i]);
  fixture_close(&f);
}

static void check_reader_errors(void) {
  fixture f;
  TEST_FAILS(fixture_open("no_such_family", &f), CLUDA_ERR_IO, "no_such_family.h5");
  if (!TEST_OK(fixture_open("conv2d", &f))) return;
  cluda_tensor t;
  TEST_FAILS(fixture_read(&f, "dilated2/nope", CLUDA_F32, &t), CLUDA_ERR_IO, "dilated2/nope");
  TEST_FAILS(fixture_read(&f, "nocase/x", CLUDA_F32, &t), CLUDA_ERR_IO, "nocase/x");
  TEST_FAILS(fixture_read(&f, "dilated2/x", CLUDA_U8, &t), CLUDA_ERR_DTYPE, "dilated2/x");
  int v;
  TEST_FAILS(fixture_attr_int(&f, "dilated2", "nope", &v), CLUDA_ERR_IO, "nope");
  fixture_close(&f);
}

int main(int argc, char **argv) {
  (void)argc;
  static const char *const conv[] = {"dilated2",  "dilated6_dw", "dilated6_bias",
                                     "depthwise", "patch7s4",    "patch3s2",
                                     "grouped",   "sr2",         "pointwise"};
  static const char *const ln[] = {"eps1e-6", "eps1e-5", "eps1e-5_small_var"};
  static const char *const attn[] = {"h3_n7_nk5", "h2_n4_nk9", "h4_n6_nk6"};
  static const char *const sr[] = {"sr2", "sr1", "sr3"};
  static const char *const bil[] = {
      "up2_ac0",          "down_ac0",   "h7to5_w5to13_ac0", "up_nonsquare_ac0", "up2.5_ac0",
      "same_ac0",         "one_px_ac0", "up2_ac1",          "down_ac1",         "h7to5_w5to13_ac1",
      "up_nonsquare_ac1", "to65_ac1",   "same_ac1",         "one_px_ac1"};
  static const char *const near[] = {
      "h5to8_w7to3",   "h6to13_w4to9",       "down_h9to4_w10to6",     "up2",
      "h7to21_w3to13", "labels_h5to8_w7to3", "labels_h17to7_w13to29", "labels_h10to65_w9to65"};
  static const char *const ce[] = {"weighted_k5", "unweighted_k19", "large_logits_k7"};

  check_reader_errors();
  run_family("conv2d", conv, COUNT(conv), conv2d_case);
  run_family("layernorm", ln, COUNT(ln), layernorm_case);
  run_family("attention", attn, COUNT(attn), attention_case);
  run_family("sr_attention", sr, COUNT(sr), sr_attention_case);
  run_family("resize_bilinear", bil, COUNT(bil), bilinear_case);
  run_family("resize_nearest", near, COUNT(near), nearest_case);
  run_family("cross_entropy", ce, COUNT(ce), cross_entropy_case);
  return test_finish(argv[0]);
}

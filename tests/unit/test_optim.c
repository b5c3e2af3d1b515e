/* Optimizer, EMA and LR schedule (src/train/optim.c): AdamW against a naive double
 * reference over several steps with both groups and no_decay entries, and against
 * torch.optim.AdamW fixtures (tests/fixtures/optim.h5); resuming from a copied state; padding
 * never touched; gradient norm, clipping and the non-finite check (naming the parameter);
 * EMA alpha warm-up and update; the mmcv poly + linear warm-up schedule against its formula
 * and the fixture table; lr scaling; bit-identical results for 1 and 2 threads; argument
 * validation. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/optim.h"
#include "fixture.h"
#include "testing.h"

static const float PAD = 777.0f; /* sentinel written into padding floats */

typedef struct spec {
  const char *name;
  int ndim;
  int shape[4];
  cluda_param_group group;
  int no_decay;
} spec;

static void build(cluda_param_table *t, const spec *s, int n) {
  cluda_param_table_init(t);
  for (int i = 0; i < n; i++)
    TEST_OK(cluda_param_table_add(t, s[i].name, s[i].ndim, s[i].shape, s[i].group, s[i].no_decay,
                                  NULL));
}

/* Fills the entries of a flat buffer from the RNG and the padding with `pad`. */
static void fill_flat(const cluda_param_table *t, float *x, float lo, float hi, uint64_t seed,
                      float pad) {
  for (size_t i = 0; i < t->total; i++)
    x[i] = pad;
  for (int e = 0; e < t->count; e++)
    test_fill_uniform(x + t->items[e].offset, (int64_t)t->items[e].count, lo, hi, seed,
                      (uint32_t)e);
}

/* Whether every padding float equals `pad` (bitwise for NaN). */
static int padding_is(const cluda_param_table *t, const float *x, float pad) {
  size_t pos = 0;
  for (int e = 0; e <= t->count; e++) {
    size_t end = e < t->count ? t->items[e].offset : t->total;
    for (; pos < end; pos++)
      if (memcmp(&x[pos], &pad, sizeof pad) != 0) return 0;
    if (e < t->count) pos = t->items[e].offset + t->items[e].count;
  }
  return 1;
}

static const spec SMALL[] = {
    {"backbone.block1.0.attn.q.weight", 2, {6, 7}, CLUDA_GROUP_ENCODER, 0},
    {"backbone.block1.0.norm1.weight", 1, {16}, CLUDA_GROUP_ENCODER, 1},
    {"backbone.block1.0.norm1.bias", 1, {1}, CLUDA_GROUP_ENCODER, 1},
    {"decode_head.fuse_layer.bottleneck.conv.weight", 4, {3, 3, 1, 5}, CLUDA_GROUP_HEAD, 0},
    {"decode_head.fuse_layer.bottleneck.bn.weight", 1, {9}, CLUDA_GROUP_HEAD, 0},
    {"decode_head.test.nodecay", 1, {7}, CLUDA_GROUP_HEAD, 1},
};
enum { NSMALL = sizeof SMALL / sizeof SMALL[0] };

/* ---- AdamW vs a naive double reference --------------------------------------------- */

static void test_adamw_naive(void) {
  cluda_param_table t;
  build(&t, SMALL, NSMALL);
  TEST_CHECK(t.total > cluda_param_table_elements(&t), "small table has padding");
  const size_t n = t.total;
  float *p = test_alloc_f32((int64_t)n), *g = test_alloc_f32((int64_t)n);
  double *rp = test_alloc_f64((int64_t)n), *rm = test_alloc_f64((int64_t)n),
         *rv = test_alloc_f64((int64_t)n);
  fill_flat(&t, p, -1.0f, 1.0f, 11, PAD);
  test_to_double(p, rp, (int64_t)n);
  memset(rm, 0, n * sizeof *rm);
  memset(rv, 0, n * sizeof *rv);
  cluda_adamw_config c = cluda_adamw_default_config();
  c.weight_decay = 0.05; /* large enough to show in a few steps */
  cluda_adamw opt;
  TEST_OK(cluda_adamw_init(&opt, &t, &c));
  const int steps = 7;
  for (int s = 1; s <= steps; s++) {
    /* gradients change scale per step; padding gradients are NaN and must be ignored */
    const float scale = s == 3 ? 1e-3f : (s == 5 ? 20.0f : 1.0f);
    fill_flat(&t, g, -scale, scale, 100 + (uint64_t)s, NAN);
    if (s == 2) g[t.items[0].offset + 3] = 0.0f;
    const double lr[2] = {1e-2 / s, 0.3 / s};
    TEST_OK(cluda_adamw_step(&opt, &t, p, g, lr));
    const double bc1 = 1.0 - pow(c.beta1, s), bc2 = 1.0 - pow(c.beta2, s);
    for (int e = 0; e < t.count; e++) {
      const cluda_param_info *pi = &t.items[e];
      const double l = lr[pi->group], wd = pi->no_decay ? 0.0 : c.weight_decay;
      for (size_t i = pi->offset; i < pi->offset + pi->count; i++) {
        rp[i] *= 1.0 - l * wd;
        rm[i] = c.beta1 * rm[i] + (1.0 - c.beta1) * g[i];
        rv[i] = c.beta2 * rv[i] + (1.0 - c.beta2) * (double)g[i] * g[i];
        rp[i] -= l * (rm[i] / bc1) / (sqrt(rv[i] / bc2) + c.eps);
      }
    }
    TEST_CHECK(opt.step == s, "adamw step count %lld after %d steps", (long long)opt.step, s);
  }
  for (int e = 0; e < t.count; e++) {
    const cluda_param_info *pi = &t.items[e];
    char what[160];
    snprintf(what, sizeof what, "adamw vs double reference: %s p", pi->name);
    test_compare(what, p + pi->offset, rp + pi->offset, (int64_t)pi->count, 1e-6, 1e-7);
    snprintf(what, sizeof what, "adamw vs double reference: %s m", pi->name);
    test_compare(what, opt.m + pi->offset, rm + pi->offset, (int64_t)pi->count, 1e-5, 1e-9);
    snprintf(what, sizeof what, "adamw vs double reference: %s v", pi->name);
    test_compare(what, opt.v + pi->offset, rv + pi->offset, (int64_t)pi->count, 1e-5, 1e-14);
  }
  TEST_CHECK(padding_is(&t, p, PAD), "adamw leaves parameter padding untouched");
  TEST_CHECK(padding_is(&t, opt.m, 0.0f) && padding_is(&t, opt.v, 0.0f),
             "adamw keeps m/v padding zero");

  /* no_decay entries with zero gradient and lr: unchanged; decayed ones only shrink */
  float *p2 = test_alloc_f32((int64_t)n), *g0 = test_alloc_f32((int64_t)n);
  fill_flat(&t, p2, -1.0f, 1.0f, 12, PAD);
  memcpy(g0, p2, n * sizeof *g0);
  TEST_OK(cluda_grad_zero(&t, g0));
  int all_zero = 1;
  for (size_t i = 0; i < n; i++)
    all_zero &= g0[i] == 0.0f;
  TEST_CHECK(all_zero, "grad_zero clears every float, padding included");
  cluda_adamw fresh;
  TEST_OK(cluda_adamw_init(&fresh, &t, &c));
  float *before = test_alloc_f32((int64_t)n);
  memcpy(before, p2, n * sizeof *p2);
  const double lr[2] = {0.1, 1.0};
  TEST_OK(cluda_adamw_step(&fresh, &t, p2, g0, lr));
  int ok_nodecay = 1, ok_decay = 1;
  for (int e = 0; e < t.count; e++) {
    const cluda_param_info *pi = &t.items[e];
    const float f = (float)(1.0 - lr[pi->group] * c.weight_decay);
    for (size_t i = pi->offset; i < pi->offset + pi->count; i++) {
      if (pi->no_decay)
        ok_nodecay &= p2[i] == before[i];
      else
        ok_decay &= p2[i] == before[i] * f;
    }
  }
  TEST_CHECK(ok_nodecay, "zero gradient: no_decay entries unchanged");
  TEST_CHECK(ok_decay, "zero gradient: decayed entries scaled by 1 - lr wd of their group");
  cluda_adamw_free(&fresh);
  cluda_adamw_free(&opt);
  cluda_adamw_free(&opt); /* freeing twice is safe */
  free(p), free(g), free(rp), free(rm), free(rv), free(p2), free(g0), free(before);
  cluda_param_table_free(&t);
}

/* ---- AdamW vs torch.optim.AdamW ------------------------------------------------------ */

static const spec TORCH[] = {
    {"backbone.patch_embed1.proj.weight", 4, {4, 3, 3, 3}, CLUDA_GROUP_ENCODER, 0},
    {"backbone.block1.0.norm1.weight", 1, {19}, CLUDA_GROUP_ENCODER, 1},
    {"backbone.block1.0.norm1.bias", 1, {19}, CLUDA_GROUP_ENCODER, 1},
    {"decode_head.fuse_layer.bottleneck.conv.weight", 4, {5, 1, 1, 13}, CLUDA_GROUP_HEAD, 0},
    {"decode_head.fuse_layer.bottleneck.bn.weight", 1, {5}, CLUDA_GROUP_HEAD, 0},
    {"decode_head.test.nodecay", 1, {3}, CLUDA_GROUP_HEAD, 1},
};
enum { NTORCH = sizeof TORCH / sizeof TORCH[0] };

static void test_adamw_torch(void) {
  fixture f;
  if (!TEST_OK(fixture_open("optim", &f))) return;
  cluda_param_table t;
  build(&t, TORCH, NTORCH);
  int count = 0, steps = 0;
  TEST_OK(fixture_attr_int(&f, "adamw", "count", &count));
  TEST_OK(fixture_attr_int(&f, "adamw", "steps", &steps));
  TEST_CHECK(count == NTORCH && steps >= 1, "fixture has %d tensors (want %d), %d steps", count,
             NTORCH, steps);
  cluda_adamw_config c = cluda_adamw_default_config();
  TEST_OK(fixture_attr_double(&f, "adamw", "beta1", &c.beta1));
  TEST_OK(fixture_attr_double(&f, "adamw", "beta2", &c.beta2));
  TEST_OK(fixture_attr_double(&f, "adamw", "eps", &c.eps));
  TEST_OK(fixture_attr_double(&f, "adamw", "weight_decay", &c.weight_decay));
  float *p = test_alloc_f32((int64_t)t.total), *g = test_alloc_f32((int64_t)t.total);
  cluda_tensor grads[NTORCH], p_steps[NTORCH], m[NTORCH], v[NTORCH];
  memset(grads, 0, sizeof grads), memset(p_steps, 0, sizeof p_steps);
  memset(m, 0, sizeof m), memset(v, 0, sizeof v);
  for (size_t i = 0; i < t.total; i++)
    p[i] = PAD;
  int ok = 1;
  for (int e = 0; e < NTORCH && ok; e++) {
    const cluda_param_info *pi = &t.items[e];
    char obj[32], path[64], name[CLUDA_PARAM_NAME_MAX];
    int grp = -1, nd = -1;
    const int cnt = (int)pi->count, gshape[2] = {steps, cnt};
    snprintf(obj, sizeof obj, "adamw/%d", e);
    ok &= TEST_OK(fixture_attr_string(&f, obj, "name", name, sizeof name));
    ok &= TEST_OK(fixture_attr_int(&f, obj, "group", &grp));
    ok &= TEST_OK(fixture_attr_int(&f, obj, "no_decay", &nd));
    ok &= TEST_CHECK(strcmp(name, pi->name) == 0 && grp == (int)pi->group && nd == pi->no_decay,
                     "fixture tensor %d is %s group %d no_decay %d", e, name, grp, nd);
    cluda_tensor p0;
    snprintf(path, sizeof path, "%s/p0", obj);
    ok &= TEST_OK(fixture_read_shaped(&f, path, CLUDA_F32, 1, &cnt, &p0));
    if (!ok) break;
    memcpy(p + pi->offset, p0.data, pi->count * sizeof(float));
    free(p0.data);
    snprintf(path, sizeof path, "%s/grads", obj);
    ok &= TEST_OK(fixture_read_shaped(&f, path, CLUDA_F32, 2, gshape, &grads[e]));
    snprintf(path, sizeof path, "%s/p_steps", obj);
    ok &= TEST_OK(fixture_read_shaped(&f, path, CLUDA_F32, 2, gshape, &p_steps[e]));
    snprintf(path, sizeof path, "%s/m", obj);
    ok &= TEST_OK(fixture_read_shaped(&f, path, CLUDA_F32, 1, &cnt, &m[e]));
    snprintf(path, sizeof path, "%s/v", obj);
    ok &= TEST_OK(fixture_read_shaped(&f, path, CLUDA_F32, 1, &cnt, &v[e]));
  }
  cluda_adamw opt;
  memset(&opt, 0, sizeof opt);
  if (ok) TEST_OK(cluda_adamw_init(&opt, &t, &c));
  for (int s = 1; ok && s <= steps; s++) {
    double lr[2];
    char key[32];
    snprintf(key, sizeof key, "lr_enc_%d", s);
    TEST_OK(fixture_attr_double(&f, "adamw", key, &lr[CLUDA_GROUP_ENCODER]));
    snprintf(key, sizeof key, "lr_head_%d", s);
    TEST_OK(fixture_attr_double(&f, "adamw", key, &lr[CLUDA_GROUP_HEAD]));
    for (size_t i = 0; i < t.total; i++)
      g[i] = NAN;
    for (int e = 0; e < NTORCH; e++)
      memcpy(g + t.items[e].offset, cluda_f32(&grads[e]) + (size_t)(s - 1) * t.items[e].count,
             t.items[e].count * sizeof(float));
    TEST_OK(cluda_adamw_step(&opt, &t, p, g, lr));
    for (int e = 0; e < NTORCH; e++) {
      const cluda_param_info *pi = &t.items[e];
      char what[160];
      /* torch's CPU sqrt (MKL) may differ by 1 ulp, so a parameter near 0 can differ by
       * about one ulp of its update (|update| <= ~lr): allow 2^-22 lr on top of 1e-6 rel. */
      snprintf(what, sizeof what, "adamw vs torch: %s after step %d", pi->name, s);
      test_compare_f32(what, p + pi->offset, cluda_f32(&p_steps[e]) + (size_t)(s - 1) * pi->count,
                       (int64_t)pi->count, 1e-6, lr[pi->group] * 0x1p-22);
    }
  }
  for (int e = 0; ok && e < NTORCH; e++) {
    const cluda_param_info *pi = &t.items[e];
    char what[160];
    snprintf(what, sizeof what, "adamw vs torch: %s exp_avg", pi->name);
    test_compare_f32(what, opt.m + pi->offset, cluda_f32(&m[e]), (int64_t)pi->count, 1e-6, 1e-12);
    snprintf(what, sizeof what, "adamw vs torch: %s exp_avg_sq", pi->name);
    test_compare_f32(what, opt.v + pi->offset, cluda_f32(&v[e]), (int64_t)pi->count, 1e-6, 1e-15);
  }
  if (ok) TEST_CHECK(padding_is(&t, p, PAD), "adamw vs torch: padding untouched");
  for (int e = 0; e < NTORCH; e++)
    free(grads[e].data), free(p_steps[e].data), free(m[e].data), free(v[e].data);
  cluda_adamw_free(&opt);
  free(p), free(g);
  cluda_param_table_free(&t);
  fixture_close(&f);
}

/* ---- resume from a copied state (what a checkpoint does) ------------------------------ */

static void test_adamw_resume(void) {
  cluda_param_table t;
  build(&t, SMALL, NSMALL);
  const size_t n = t.total;
  float *pa = test_alloc_f32((int64_t)n), *pb = test_alloc_f32((int64_t)n),
        *g = test_alloc_f32((int64_t)n);
  fill_flat(&t, pa, -1.0f, 1.0f, 21, PAD);
  cluda_adamw_config c = cluda_adamw_default_config();
  cluda_adamw a, b;
  TEST_OK(cluda_adamw_init(&a, &t, &c));
  for (int s = 0; s < 5; s++) {
    if (s == 3) {
      /* "save" a and "load" into a fresh b */
      memcpy(pb, pa, n * sizeof *pa);
      TEST_OK(cluda_adamw_init(&b, &t, &a.config));
      TEST_CHECK(b.table_hash == a.table_hash && b.total == a.total, "resume: same layout");
      b.step = a.step;
      memcpy(b.m, a.m, n * sizeof *a.m);
      memcpy(b.v, a.v, n * sizeof *a.v);
    }
    fill_flat(&t, g, -1.0f, 1.0f, 200 + (uint64_t)s, 0.0f);
    double lr[2];
    TEST_OK(cluda_lr_group_lrs(&(cluda_lr_schedule){10, 1.0, 0.0, CLUDA_WARMUP_LINEAR, 2, 0.1}, &c,
                               s, lr));
    TEST_OK(cluda_adamw_step(&a, &t, pa, g, lr));
    if (s >= 3) TEST_OK(cluda_adamw_step(&b, &t, pb, g, lr));
  }
  TEST_CHECK(memcmp(pa, pb, n * sizeof *pa) == 0 && memcmp(a.m, b.m, n * sizeof *a.m) == 0 &&
                 memcmp(a.v, b.v, n * sizeof *a.v) == 0 && a.step == b.step,
             "resumed optimizer is bit-identical to the uninterrupted one");
  cluda_adamw_free(&a);
  cluda_adamw_free(&b);
  free(pa), free(pb), free(g);
  cluda_param_table_free(&t);
}

/* ---- gradients: norm, clip, non-finite check ---------------------------------------- */

static void test_gradients(void) {
  cluda_param_table t;
  build(&t, SMALL, NSMALL);
  const size_t n = t.total;
  float *g = test_alloc_f32((int64_t)n);
  fill_flat(&t, g, -2.0f, 2.0f, 31, NAN);
  double want = 0.0, norm = -1.0;
  for (int e = 0; e < t.count; e++)
    for (size_t i = t.items[e].offset; i < t.items[e].offset + t.items[e].count; i++)
      want += (double)g[i] * g[i];
  want = sqrt(want);
  TEST_OK(cluda_grad_norm(&t, g, &norm));
  TEST_CHECK(fabs(norm - want) <= 1e-12 * want, "grad_norm %.17g vs %.17g (NaN padding ignored)",
             norm, want);
  int bad = 7;
  int64_t elem = 7;
  TEST_OK(cluda_grad_check_finite(&t, g, &bad, &elem));
  TEST_CHECK(bad == -1 && elem == -1, "finite gradients: no bad entry (got %d)", bad);

  /* clip: above max_norm everything scales by max / (norm + 1e-6); below, nothing changes */
  float *gc = test_alloc_f32((int64_t)n);
  memcpy(gc, g, n * sizeof *g);
  TEST_OK(cluda_grad_clip(&t, gc, 2.0 * want, &norm));
  TEST_CHECK(memcmp(gc, g, n * sizeof *g) == 0, "grad_clip below max_norm: unchanged");
  TEST_OK(cluda_grad_clip(&t, gc, 0.5 * want, &norm));
  const float scale = (float)(0.5 * want / (want + 1e-6));
  int ok = 1;
  for (int e = 0; e < t.count; e++)
    for (size_t i = t.items[e].offset; i < t.items[e].offset + t.items[e].count; i++)
      ok &= gc[i] == g[i] * scale;
  TEST_CHECK(ok && padding_is(&t, gc, NAN), "grad_clip scales entries only");
  TEST_OK(cluda_grad_norm(&t, gc, &norm));
  TEST_CHECK(fabs(norm - 0.5 * want) < 1e-6 * want, "clipped norm %g (want %g)", norm, 0.5 * want);

  /* first non-finite in table order, named */
  g[t.items[4].offset + 2] = INFINITY;
  g[t.items[3].offset + 5] = NAN;
  TEST_FAILS(cluda_grad_check_finite(&t, g, &bad, &elem), CLUDA_ERR_ARG,
             "decode_head.fuse_layer.bottleneck.conv.weight");
  TEST_CHECK(bad == 3 && elem == 5, "non-finite: entry %d element %lld (want 3, 5)", bad,
             (long long)elem);
  TEST_OK(cluda_grad_norm(&t, g, &norm));
  TEST_CHECK(!isfinite(norm), "grad_norm of non-finite gradients is non-finite");
  g[t.items[3].offset + 5] = 0.0f;
  TEST_FAILS(cluda_grad_check_finite(&t, g, NULL, NULL), CLUDA_ERR_ARG,
             "decode_head.fuse_layer.bottleneck.bn.weight (element 2");
  g[t.items[4].offset + 2] = 0.0f;
  g[t.items[2].offset] = -INFINITY; /* a one-element entry */
  TEST_FAILS(cluda_grad_check_finite(&t, g, &bad, NULL), CLUDA_ERR_ARG,
             "backbone.block1.0.norm1.bias");
  TEST_CHECK(bad == 2, "non-finite in the one-element entry: %d", bad);

  TEST_FAILS(cluda_grad_norm(&t, NULL, &norm), CLUDA_ERR_ARG, "grads");
  TEST_FAILS(cluda_grad_norm(&t, g, NULL), CLUDA_ERR_ARG, "norm");
  TEST_FAILS(cluda_grad_norm(NULL, g, &norm), CLUDA_ERR_ARG, "table");
  TEST_FAILS(cluda_grad_clip(&t, g, 0.0, NULL), CLUDA_ERR_ARG, "max_norm");
  TEST_FAILS(cluda_grad_zero(&t, NULL), CLUDA_ERR_ARG, "grads");
  TEST_FAILS(cluda_grad_check_finite(NULL, g, &bad, NULL), CLUDA_ERR_ARG, "table");
  free(g), free(gc);
  cluda_param_table_free(&t);
}

/* ---- EMA ---------------------------------------------------------------------------- */

static void test_ema(void) {
  TEST_CHECK(cluda_ema_alpha(0, 0.999) == 0.0, "ema alpha t=0 is 0");
  TEST_CHECK(cluda_ema_alpha(1, 0.999) == 0.5, "ema alpha t=1 is 0.5");
  TEST_CHECK(cluda_ema_alpha(9, 0.999) == 0.9, "ema alpha t=9 is 0.9");
  TEST_CHECK(cluda_ema_alpha(998, 0.999) < 0.999, "ema alpha t=998 below 0.999");
  TEST_CHECK(cluda_ema_alpha(999, 0.999) == 0.999, "ema alpha reaches 0.999 at t=999");
  TEST_CHECK(cluda_ema_alpha(40000, 0.999) == 0.999, "ema alpha stays 0.999");
  TEST_CHECK(cluda_ema_alpha(200, 0.99) == 0.99, "ema alpha 0.99 (DACS) caps at t=99..");

  cluda_param_table t;
  build(&t, SMALL, NSMALL);
  const size_t n = t.total;
  float *te = test_alloc_f32((int64_t)n), *st = test_alloc_f32((int64_t)n);
  double *ref = test_alloc_f64((int64_t)n);
  fill_flat(&t, te, 5.0f, 6.0f, 41, PAD);
  fill_flat(&t, st, -1.0f, 1.0f, 42, -PAD);
  TEST_OK(cluda_ema_update(&t, te, st, 0, 0.999));
  int ok = 1;
  for (int e = 0; e < t.count; e++)
    ok &= memcmp(te + t.items[e].offset, st + t.items[e].offset, t.items[e].count * 4) == 0;
  TEST_CHECK(ok && padding_is(&t, te, PAD), "ema t=0 copies the student, padding untouched");
  const int64_t ts[] = {1, 9, 500, 999, 5000};
  for (size_t k = 0; k < sizeof ts / sizeof ts[0]; k++) {
    fill_flat(&t, st, -1.0f, 1.0f, 50 + (uint64_t)k, -PAD);
    test_to_double(te, ref, (int64_t)n);
    const double a = cluda_ema_alpha(ts[k], 0.999);
    for (size_t i = 0; i < n; i++)
      ref[i] = a * ref[i] + (1.0 - a) * st[i];
    TEST_OK(cluda_ema_update(&t, te, st, ts[k], 0.999));
    for (int e = 0; e < t.count; e++) {
      char what[160];
      snprintf(what, sizeof what, "ema t=%lld %s", (long long)ts[k], t.items[e].name);
      test_compare(what, te + t.items[e].offset, ref + t.items[e].offset, (int64_t)t.items[e].count,
                   1e-6, 1e-7);
    }
  }
  TEST_CHECK(padding_is(&t, te, PAD), "ema leaves teacher padding untouched");
  /* t=1 is the plain mean */
  fill_flat(&t, te, -1.0f, 1.0f, 60, PAD);
  fill_flat(&t, st, -1.0f, 1.0f, 61, PAD);
  float first = te[0], second = st[0];
  TEST_OK(cluda_ema_update(&t, te, st, 1, 0.999));
  TEST_CHECK(te[0] == 0.5f * first + 0.5f * second, "ema t=1 gives the mean");

  TEST_FAILS(cluda_ema_update(&t, te, st, -1, 0.999), CLUDA_ERR_ARG, "iteration");
  TEST_FAILS(cluda_ema_update(&t, te, st, 3, 1.5), CLUDA_ERR_ARG, "alpha");
  TEST_FAILS(cluda_ema_update(&t, NULL, st, 3, 0.999), CLUDA_ERR_ARG, "NULL");
  TEST_FAILS(cluda_ema_update(&t, te, te, 3, 0.999), CLUDA_ERR_ARG, "alias");
  TEST_FAILS(cluda_ema_update(NULL, te, st, 3, 0.999), CLUDA_ERR_ARG, "table");
  free(te), free(st), free(ref);
  cluda_param_table_free(&t);
}

/* ---- LR schedule -------------------------------------------------------------------- */

/* mmcv PolyLrUpdaterHook + get_warmup_lr, written out independently. */
static double mmcv_lr(const cluda_lr_schedule *s, double base, int64_t t) {
  double regular = (base - s->min_lr) * pow(1.0 - (double)t / s->max_iters, s->power) + s->min_lr;
  if (s->warmup == CLUDA_WARMUP_NONE || t >= s->warmup_iters) return regular;
  double x = (double)t / s->warmup_iters;
  if (s->warmup == CLUDA_WARMUP_CONSTANT) return regular * s->warmup_ratio;
  if (s->warmup == CLUDA_WARMUP_LINEAR)
    return regular * (1.0 - (1.0 - x) * (1.0 - s->warmup_ratio));
  return regular * pow(s->warmup_ratio, 1.0 - x);
}

static void test_schedule(void) {
  const cluda_lr_schedule d = cluda_lr_schedule_default();
  TEST_CHECK(d.max_iters == 40000 && d.power == 1.0 && d.min_lr == 0.0 &&
                 d.warmup == CLUDA_WARMUP_LINEAR && d.warmup_iters == 1500 &&
                 d.warmup_ratio == 1e-6,
             "default schedule is the reference one");
  const cluda_adamw_config c = cluda_adamw_default_config();
  TEST_CHECK(c.lr == 6e-5 && c.head_lr_mult == 10.0 && c.beta1 == 0.9 && c.beta2 == 0.999 &&
                 c.eps == 1e-8 && c.weight_decay == 0.01,
             "default AdamW config is the reference one");

  /* against the fixture table computed from mmcv's source semantics */
  fixture f;
  if (TEST_OK(fixture_open("optim", &f))) {
    int points = 0;
    double base = 0.0, mult = 0.0;
    TEST_OK(fixture_attr_int(&f, "schedule", "points", &points));
    TEST_OK(fixture_attr_double(&f, "schedule", "base_lr", &base));
    TEST_OK(fixture_attr_double(&f, "schedule", "head_lr_mult", &mult));
    cluda_adamw_config fc = c;
    fc.lr = base;
    fc.head_lr_mult = mult;
    const int64_t required[] = {0, 1, 749, 1499, 1500, 20000, 39999};
    int seen = 0;
    for (int k = 0; k < points; k++) {
      char key[32];
      int tt = -1;
      double enc = -1.0, head = -1.0, lr[2] = {0.0, 0.0};
      snprintf(key, sizeof key, "t_%d", k);
      TEST_OK(fixture_attr_int(&f, "schedule", key, &tt));
      snprintf(key, sizeof key, "enc_%d", k);
      TEST_OK(fixture_attr_double(&f, "schedule", key, &enc));
      snprintf(key, sizeof key, "head_%d", k);
      TEST_OK(fixture_attr_double(&f, "schedule", key, &head));
      TEST_OK(cluda_lr_group_lrs(&d, &fc, tt, lr));
      /* same double operations in the same order as the Python: bit-identical */
      TEST_CHECK(lr[0] == enc && lr[1] == head,
                 "schedule t=%d: encoder %.17g head %.17g, mmcv %.17g %.17g", tt, lr[0], lr[1], enc,
                 head);
      for (size_t r = 0; r < sizeof required / sizeof required[0]; r++)
        seen += tt == required[r];
    }
    TEST_CHECK(seen == 7, "fixture covers t = 0, 1, 749, 1499, 1500, 20000, 39999 (%d)", seen);
    fixture_close(&f);
  }

  /* against the formula, all warm-up kinds and a nonzero min_lr */
  const cluda_warmup kinds[] = {CLUDA_WARMUP_NONE, CLUDA_WARMUP_CONSTANT, CLUDA_WARMUP_LINEAR,
                                CLUDA_WARMUP_EXP};
  const int64_t ts[] = {0, 1, 2, 749, 1499, 1500, 1501, 20000, 39999, 40000};
  for (int k = 0; k < 4; k++)
    for (int mm = 0; mm < 2; mm++) {
      cluda_lr_schedule s = d;
      s.warmup = kinds[k];
      s.min_lr = mm ? 1e-6 : 0.0;
      s.power = mm ? 0.9 : 1.0;
      int ok = 1;
      for (size_t i = 0; i < sizeof ts / sizeof ts[0]; i++) {
        double lr = -1.0;
        ok &= TEST_OK(cluda_lr_at(&s, 6e-4, ts[i], &lr));
        ok &= lr == mmcv_lr(&s, 6e-4, ts[i]);
      }
      TEST_CHECK(ok, "schedule warmup %d min_lr %g power %g matches the formula", k, s.min_lr,
                 s.power);
    }
  /* shape: ~base*ratio at 0, increasing through warm-up, poly afterwards, 0 at the end */
  double lr0, lr1, lr1499, lr1500, lr_end, prev = -1.0;
  TEST_OK(cluda_lr_at(&d, 6e-5, 0, &lr0));
  TEST_OK(cluda_lr_at(&d, 6e-5, 1, &lr1));
  TEST_OK(cluda_lr_at(&d, 6e-5, 1499, &lr1499));
  TEST_OK(cluda_lr_at(&d, 6e-5, 1500, &lr1500));
  TEST_OK(cluda_lr_at(&d, 6e-5, 40000, &lr_end));
  TEST_CHECK(fabs(lr0 - 6e-11) < 1e-20, "lr(0) = base * 1e-6 (%g)", lr0);
  TEST_CHECK(fabs(lr1500 - 6e-5 * (1.0 - 1500.0 / 40000.0)) < 1e-18, "lr(1500) is pure poly");
  TEST_CHECK(lr0 < lr1 && lr1 < lr1499 && lr1499 < lr1500 && lr_end == 0.0,
             "warm-up increases to the poly curve, which ends at 0");
  int mono = 1;
  for (int64_t tt = 0; tt <= 1500; tt += 10) {
    double lr;
    TEST_OK(cluda_lr_at(&d, 6e-5, tt, &lr));
    mono &= lr > prev;
    prev = lr;
  }
  TEST_CHECK(mono, "warm-up is increasing");
  double glr[2];
  TEST_OK(cluda_lr_group_lrs(&d, &c, 20000, glr));
  TEST_CHECK(glr[0] == 3e-5 && fabs(glr[1] - 3e-4) < 1e-19, "group lrs at 20000: %g %g", glr[0],
             glr[1]);

  double lr;
  cluda_lr_schedule bad = d;
  TEST_FAILS(cluda_lr_at(&d, 6e-5, -1, &lr), CLUDA_ERR_ARG, "iteration");
  TEST_FAILS(cluda_lr_at(&d, 6e-5, 40001, &lr), CLUDA_ERR_ARG, "max_iters");
  TEST_FAILS(cluda_lr_at(&d, -6e-5, 10, &lr), CLUDA_ERR_ARG, "base lr");
  TEST_FAILS(cluda_lr_at(NULL, 6e-5, 10, &lr), CLUDA_ERR_ARG, "NULL");
  bad.warmup_ratio = 0.0;
  TEST_FAILS(cluda_lr_at(&bad, 6e-5, 10, &lr), CLUDA_ERR_ARG, "warmup_ratio");
  bad = d, bad.max_iters = 0;
  TEST_FAILS(cluda_lr_at(&bad, 6e-5, 0, &lr), CLUDA_ERR_ARG, "max_iters");
  bad = d, bad.warmup_iters = 0;
  TEST_FAILS(cluda_lr_at(&bad, 6e-5, 0, &lr), CLUDA_ERR_ARG, "warmup_iters");
  cluda_adamw_config badc = c;
  badc.lr = -1.0;
  TEST_FAILS(cluda_lr_group_lrs(&d, &badc, 0, glr), CLUDA_ERR_ARG, "lr");

  /* optim.lr_scaling */
  cluda_lr_scaling mode;
  double factor;
  TEST_OK(cluda_lr_scaling_parse("none", &mode));
  TEST_OK(cluda_lr_scale_factor(mode, 8, 2, &factor));
  TEST_CHECK(mode == CLUDA_LR_SCALING_NONE && factor == 1.0, "lr_scaling none: %g", factor);
  TEST_OK(cluda_lr_scaling_parse("linear", &mode));
  TEST_OK(cluda_lr_scale_factor(mode, 8, 2, &factor));
  TEST_CHECK(mode == CLUDA_LR_SCALING_LINEAR && factor == 4.0, "lr_scaling linear: %g", factor);
  TEST_OK(cluda_lr_scaling_parse("sqrt", &mode));
  TEST_OK(cluda_lr_scale_factor(mode, 8, 2, &factor));
  TEST_CHECK(mode == CLUDA_LR_SCALING_SQRT && factor == 2.0, "lr_scaling sqrt: %g", factor);
  TEST_CHECK(strcmp(cluda_lr_scaling_name(CLUDA_LR_SCALING_SQRT), "sqrt") == 0, "scaling name");
  TEST_FAILS(cluda_lr_scaling_parse("cubic", &mode), CLUDA_ERR_ARG, "cubic");
  TEST_FAILS(cluda_lr_scale_factor(CLUDA_LR_SCALING_LINEAR, 0, 2, &factor), CLUDA_ERR_ARG,
             "batches");
  TEST_FAILS(cluda_lr_scale_factor((cluda_lr_scaling)9, 2, 2, &factor), CLUDA_ERR_ARG, "mode");
}

/* ---- thread-count determinism on a table with multi-chunk entries -------------------- */

static void test_threads(void) {
  static const spec BIG[] = {
      {"backbone.big.weight", 2, {300, 333}, CLUDA_GROUP_ENCODER, 0},
      {"backbone.norm.weight", 1, {3}, CLUDA_GROUP_ENCODER, 1},
      {"decode_head.conv.weight", 4, {7, 3, 3, 1111}, CLUDA_GROUP_HEAD, 0},
      {"decode_head.bn.weight", 1, {65536}, CLUDA_GROUP_HEAD, 0},
      {"decode_head.tail", 1, {17}, CLUDA_GROUP_HEAD, 1},
  };
  cluda_param_table t;
  build(&t, BIG, 5);
  const size_t n = t.total;
  float *p[2], *te[2], *g = test_alloc_f32((int64_t)n), *st = test_alloc_f32((int64_t)n);
  cluda_adamw opt[2];
  double norm[2];
  int bad[2];
  fill_flat(&t, st, -1.0f, 1.0f, 71, PAD);
  const cluda_adamw_config c = cluda_adamw_default_config();
  for (int k = 0; k < 2; k++) {
    omp_set_num_threads(k + 1);
    p[k] = test_alloc_f32((int64_t)n), te[k] = test_alloc_f32((int64_t)n);
    fill_flat(&t, p[k], -1.0f, 1.0f, 70, PAD);
    memcpy(te[k], p[k], n * sizeof(float));
    TEST_OK(cluda_adamw_init(&opt[k], &t, &c));
    for (int s = 0; s < 3; s++) {
      fill_flat(&t, g, -1.0f, 1.0f, 80 + (uint64_t)s, NAN);
      double lr[2] = {1e-3, 1e-2};
      TEST_OK(cluda_adamw_step(&opt[k], &t, p[k], g, lr));
      TEST_OK(cluda_ema_update(&t, te[k], st, s + 5, 0.999));
    }
    TEST_OK(cluda_grad_norm(&t, g, &norm[k]));
    g[t.items[3].offset + 60000] = NAN; /* in the last chunk ... */
    g[t.items[2].offset + 7] = INFINITY;
    cluda_status s = cluda_grad_check_finite(&t, g, &bad[k], NULL);
    TEST_CHECK(s.code == CLUDA_ERR_ARG && bad[k] == 2, "threads %d: first non-finite entry %d",
               k + 1, bad[k]);
  }
  omp_set_num_threads(2);
  TEST_CHECK(memcmp(p[0], p[1], n * sizeof(float)) == 0 &&
                 memcmp(opt[0].m, opt[1].m, n * sizeof(float)) == 0 &&
                 memcmp(opt[0].v, opt[1].v, n * sizeof(float)) == 0,
             "adamw bit-identical for 1 and 2 threads");
  TEST_CHECK(memcmp(te[0], te[1], n * sizeof(float)) == 0, "ema bit-identical for 1 and 2 threads");
  TEST_CHECK(norm[0] == norm[1], "grad_norm bit-identical for 1 and 2 threads (%.17g %.17g)",
             norm[0], norm[1]);
  TEST_CHECK(padding_is(&t, p[1], PAD) && padding_is(&t, te[1], PAD), "big table: padding intact");
  for (int k = 0; k < 2; k++) {
    cluda_adamw_free(&opt[k]);
    free(p[k]), free(te[k]);
  }
  free(g), free(st);
  cluda_param_table_free(&t);
}

/* ---- argument validation ------------------------------------------------------------ */

static void test_bad_input(void) {
  cluda_param_table t, other, flipped, empty;
  build(&t, SMALL, NSMALL);
  build(&other, SMALL, NSMALL - 1);
  spec sp[NSMALL];
  memcpy(sp, SMALL, sizeof sp);
  sp[4].no_decay = 1; /* same sizes, different decay: must still be refused */
  build(&flipped, sp, NSMALL);
  cluda_param_table_init(&empty);
  float *p = test_alloc_f32((int64_t)t.total), *g = test_alloc_f32((int64_t)t.total);
  fill_flat(&t, p, -1.0f, 1.0f, 90, PAD);
  fill_flat(&t, g, -1.0f, 1.0f, 91, PAD);
  cluda_adamw_config c = cluda_adamw_default_config();
  cluda_adamw opt;
  const double lr[2] = {1e-3, 1e-2}, neg[2] = {1e-3, -1e-2}, nan_lr[2] = {NAN, 1e-2};
  TEST_FAILS(cluda_adamw_init(NULL, &t, &c), CLUDA_ERR_ARG, "NULL");
  TEST_FAILS(cluda_adamw_init(&opt, NULL, &c), CLUDA_ERR_ARG, "table");
  TEST_FAILS(cluda_adamw_init(&opt, &empty, &c), CLUDA_ERR_ARG, "empty");
  cluda_adamw_config b = c;
  b.lr = -1e-4;
  TEST_FAILS(cluda_adamw_init(&opt, &t, &b), CLUDA_ERR_ARG, "lr");
  b = c, b.beta1 = 1.0;
  TEST_FAILS(cluda_adamw_init(&opt, &t, &b), CLUDA_ERR_ARG, "beta1");
  b = c, b.beta2 = -0.1;
  TEST_FAILS(cluda_adamw_init(&opt, &t, &b), CLUDA_ERR_ARG, "beta2");
  b = c, b.eps = 0.0;
  TEST_FAILS(cluda_adamw_init(&opt, &t, &b), CLUDA_ERR_ARG, "eps");
  b = c, b.weight_decay = -0.01;
  TEST_FAILS(cluda_adamw_init(&opt, &t, &b), CLUDA_ERR_ARG, "weight_decay");
  b = c, b.head_lr_mult = -10.0;
  TEST_FAILS(cluda_adamw_init(&opt, &t, &b), CLUDA_ERR_ARG, "head_lr_mult");

  TEST_OK(cluda_adamw_init(&opt, &t, &c));
  float *p0 = test_alloc_f32((int64_t)t.total);
  memcpy(p0, p, t.total * sizeof *p);
  TEST_FAILS(cluda_adamw_step(NULL, &t, p, g, lr), CLUDA_ERR_ARG, "NULL");
  TEST_FAILS(cluda_adamw_step(&opt, &t, NULL, g, lr), CLUDA_ERR_ARG, "NULL");
  TEST_FAILS(cluda_adamw_step(&opt, &t, p, NULL, lr), CLUDA_ERR_ARG, "NULL");
  TEST_FAILS(cluda_adamw_step(&opt, &t, p, g, NULL), CLUDA_ERR_ARG, "NULL");
  TEST_FAILS(cluda_adamw_step(&opt, NULL, p, g, lr), CLUDA_ERR_ARG, "table");
  TEST_FAILS(cluda_adamw_step(&opt, &t, p, p, lr), CLUDA_ERR_ARG, "alias");
  TEST_FAILS(cluda_adamw_step(&opt, &other, p, g, lr), CLUDA_ERR_ARG, "not the one");
  TEST_FAILS(cluda_adamw_step(&opt, &flipped, p, g, lr), CLUDA_ERR_ARG, "not the one");
  TEST_FAILS(cluda_adamw_step(&opt, &t, p, g, neg), CLUDA_ERR_ARG, "lr of group head");
  TEST_FAILS(cluda_adamw_step(&opt, &t, p, g, nan_lr), CLUDA_ERR_ARG, "lr of group encoder");
  TEST_CHECK(opt.step == 0 && memcmp(p, p0, t.total * sizeof *p) == 0,
             "failed steps change nothing");
  cluda_adamw_free(&opt);
  TEST_FAILS(cluda_adamw_step(&opt, &t, p, g, lr), CLUDA_ERR_ARG, "not initialised");
  free(p), free(g), free(p0);
  cluda_param_table_free(&t);
  cluda_param_table_free(&other);
  cluda_param_table_free(&flipped);
}

int main(void) {
  test_adamw_naive();
  test_adamw_torch();
  test_adamw_resume();
  test_gradients();
  test_ema();
  test_schedule();
  test_threads();
  test_bad_input();
  return test_finish("test_optim");
}

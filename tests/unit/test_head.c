/* Decode heads (DAFormer sep-ASPP, SegFormer all-MLP): the forward against a naive double
 * reference of the whole head written here (embeddings, bilinear resize, ASPP with dilations up
 * to 18 on a 12x10 map, BN in both modes with the running-statistics update, Dropout2d with
 * the mask rebuilt from the key, classifier); the backward against central finite differences
 * of that reference for every input map and every parameter tensor (sampled elements plus one
 * random direction over the whole tensor), with dlogits only, dfused only and both; parameter
 * and MAC counts of the real configurations; plan sizes being sufficient; and argument
 * validation. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/head.h"
#include "testing.h"

enum { LEVELS = 4 };
enum { GRAD_LOGITS = 1, GRAD_FUSED = 2, GRAD_BOTH = 3 };

/* ---- the reference, in double ---- */

/* What the reference needs besides the packed parameters and inputs. */
typedef struct ref_head {
  const cluda_head *head;
  const cluda_param_table *params, *state;
  int b, h[LEVELS], w[LEVELS];
  int bn_batch;             /* BN with batch statistics */
  const uint8_t *mask;      /* Dropout2d keep-mask [B, Cf], NULL for none */
  const double *state0;     /* running statistics (flat state layout) */
  double *state1;           /* updated running statistics, or NULL */
  int64_t feat_off[LEVELS]; /* where the input maps start in the packed vector */
} ref_head;

/* The packed vector: the flat parameter buffer (params->total), then the four input maps. */
static const double *ref_param(const ref_head *r, const double *x, const char *suffix) {
  char name[2 * CLUDA_PARAM_NAME_MAX];
  snprintf(name, sizeof name, "decode_head.%s", suffix);
  int i = cluda_param_table_find(r->params, name);
  if (i < 0) {
    fprintf(stderr, "test_head: no parameter %s\n", name);
    abort();
  }
  return x + r->params->items[i].offset;
}

static int state_index(const ref_head *r, const char *suffix) {
  char name[2 * CLUDA_PARAM_NAME_MAX];
  snprintf(name, sizeof name, "decode_head.%s", suffix);
  int i = cluda_param_table_find(r->state, name);
  if (i < 0) {
    fprintf(stderr, "test_head: no state %s\n", name);
    abort();
  }
  return i;
}

/* y[m, out] = x[m, in] w[out, in]^T (+ b) */
static void linear_ref(const double *x, int64_t m, int in, const double *w, const double *b,
                       int out, double *y) {
  for (int64_t i = 0; i < m; i++)
    for (int o = 0; o < out; o++) {
      double acc = b ? b[o] : 0.0;
      for (int k = 0; k < in; k++)
        acc += x[i * in + k] * w[(int64_t)o * in + k];
      y[i * out + o] = acc;
    }
}

/* Bilinear, align_corners False (PyTorch's source-index rule). */
static void resize_ref(const double *x, int b, int hi, int wi, int c, int ho, int wo, double *y) {
  for (int n = 0; n < b; n++)
    for (int oy = 0; oy < ho; oy++) {
      double sy = fmax(0.0, (oy + 0.5) * hi / ho - 0.5);
      int y0 = (int)sy, y1 = y0 + (y0 < hi - 1);
      double ly = sy - y0;
      for (int ox = 0; ox < wo; ox++) {
        double sx = fmax(0.0, (ox + 0.5) * wi / wo - 0.5);
        int x0 = (int)sx, x1 = x0 + (x0 < wi - 1);
        double lx = sx - x0;
        for (int ch = 0; ch < c; ch++) {
#define AT(yy, xx) x[(((int64_t)n * hi + (yy)) * wi + (xx)) * c + ch]
          y[(((int64_t)n * ho + oy) * wo + ox) * c + ch] =
              (1 - ly) * ((1 - lx) * AT(y0, x0) + lx * AT(y0, x1)) +
              ly * ((1 - lx) * AT(y1, x0) + lx * AT(y1, x1));
#undef AT
        }
      }
    }
}

/* 3x3 stride-1 conv, padding = dilation, OHWI weights; depthwise when dw (cout == cin). */
static void conv3_ref(const double *x, int b, int h, int w, int cin, const double *wt, int cout,
                      int dil, int dw, double *y) {
  for (int n = 0; n < b; n++)
    for (int oy = 0; oy < h; oy++)
      for (int ox = 0; ox < w; ox++)
        for (int co = 0; co < cout; co++) {
          double acc = 0.0;
          for (int ky = 0; ky < 3; ky++)
            for (int kx = 0; kx < 3; kx++) {
              int iy = oy + (ky - 1) * dil, ix = ox + (kx - 1) * dil;
              if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
              const double *px = x + (((int64_t)n * h + iy) * w + ix) * cin;
              if (dw) {
                acc += px[co] * wt[((int64_t)co * 3 + ky) * 3 + kx];
              } else {
                const double *pw = wt + (((int64_t)co * 3 + ky) * 3 + kx) * cin;
                for (int ci = 0; ci < cin; ci++)
                  acc += px[ci] * pw[ci];
              }
            }
          y[(((int64_t)n * h + oy) * w + ox) * cout + co] = acc;
        }
}

/* y = ReLU(BN(z)) over rows of c channels, in place; running statistics from / to state. */
static void bn_relu_ref(const ref_head *r, const double *x, const char *base, double *z,
                        int64_t rows, int c) {
  char name[96];
  snprintf(name, sizeof name, "%s.bn.weight", base);
  const double *g = ref_param(r, x, name);
  snprintf(name, sizeof name, "%s.bn.bias", base);
  const double *bt = ref_param(r, x, name);
  snprintf(name, sizeof name, "%s.bn.running_mean", base);
  const cluda_param_info *im = &r->state->items[state_index(r, name)];
  snprintf(name, sizeof name, "%s.bn.running_var", base);
  const cluda_param_info *iv = &r->state->items[state_index(r, name)];
  const double eps = r->head->cfg.bn_eps, mom = r->head->cfg.bn_momentum;
  for (int ch = 0; ch < c; ch++) {
    double mean, var;
    if (r->bn_batch) {
      double s = 0.0, ss = 0.0;
      for (int64_t i = 0; i < rows; i++)
        s += z[i * c + ch];
      mean = s / rows;
      for (int64_t i = 0; i < rows; i++)
        ss += (z[i * c + ch] - mean) * (z[i * c + ch] - mean);
      var = ss / rows;
      if (r->state1) {
        r->state1[im->offset + ch] = (1 - mom) * r->state0[im->offset + ch] + mom * mean;
        r->state1[iv->offset + ch] =
            (1 - mom) * r->state0[iv->offset + ch] + mom * ss / (double)(rows - 1);
      }
    } else {
      mean = r->state0[im->offset + ch];
      var = r->state0[iv->offset + ch];
    }
    const double rstd = 1.0 / sqrt(var + eps);
    for (int64_t i = 0; i < rows; i++) {
      double v = (z[i * c + ch] - mean) * rstd * g[ch] + bt[ch];
      z[i * c + ch] = v > 0.0 ? v : 0.0;
    }
  }
}

/* The whole head: fused [rows, Cf] and logits [rows, K] from the packed vector x. */
static void head_ref(const ref_head *r, const double *x, double *fused, double *logits) {
  const cluda_head_config *cfg = &r->head->cfg;
  const int b = r->b, h0 = r->h[0], w0 = r->w[0], e = cfg->embed_dims, cf = cfg->channels;
  const int daformer = cfg->kind == CLUDA_HEAD_DAFORMER, wide = 4 * e;
  const int64_t rows = (int64_t)b * h0 * w0;
  char name[96];
  /* embeddings, resized, concatenated */
  double *cat = malloc(sizeof(double) * rows * wide), *res = malloc(sizeof(double) * rows * e);
  for (int i = 0; i < LEVELS; i++) {
    const int64_t m = (int64_t)b * r->h[i] * r->w[i];
    double *emb = malloc(sizeof(double) * m * e);
    snprintf(name, sizeof name,
             daformer ? "embed_layers.%d.proj.weight" : "linear_c.%d.proj.weight", i);
    const double *wt = ref_param(r, x, name);
    snprintf(name, sizeof name, daformer ? "embed_layers.%d.proj.bias" : "linear_c.%d.proj.bias",
             i);
    linear_ref(x + r->feat_off[i], m, cfg->in_channels[i], wt, ref_param(r, x, name), e, emb);
    resize_ref(emb, b, r->h[i], r->w[i], e, h0, w0, res); /* identity for level 0 */
    for (int64_t p = 0; p < rows; p++)
      memcpy(cat + p * wide + i * e, res + p * e, sizeof(double) * e);
    free(emb);
  }
  if (daformer) {
    double *aspp = malloc(sizeof(double) * rows * 4 * cf), *br = malloc(sizeof(double) * rows * cf);
    double *dwo = malloc(sizeof(double) * rows * wide);
    for (int j = 0; j < 4; j++) {
      if (j == 0) {
        linear_ref(cat, rows, wide, ref_param(r, x, "fuse_layer.aspp_modules.0.conv.weight"), NULL,
                   cf, br);
        bn_relu_ref(r, x, "fuse_layer.aspp_modules.0", br, rows, cf);
      } else {
        snprintf(name, sizeof name, "fuse_layer.aspp_modules.%d.depthwise_conv.conv.weight", j);
        conv3_ref(cat, b, h0, w0, wide, ref_param(r, x, name), wide, cfg->dilations[j], 1, dwo);
        snprintf(name, sizeof name, "fuse_layer.aspp_modules.%d.depthwise_conv", j);
        bn_relu_ref(r, x, name, dwo, rows, wide);
        snprintf(name, sizeof name, "fuse_layer.aspp_modules.%d.pointwise_conv.conv.weight", j);
        linear_ref(dwo, rows, wide, ref_param(r, x, name), NULL, cf, br);
        snprintf(name, sizeof name, "fuse_layer.aspp_modules.%d.pointwise_conv", j);
        bn_relu_ref(r, x, name, br, rows, cf);
      }
      for (int64_t p = 0; p < rows; p++)
        memcpy(aspp + p * 4 * cf + j * cf, br + p * cf, sizeof(double) * cf);
    }
    conv3_ref(aspp, b, h0, w0, 4 * cf, ref_param(r, x, "fuse_layer.bottleneck.conv.weight"), cf, 1,
              0, fused);
    bn_relu_ref(r, x, "fuse_layer.bottleneck", fused, rows, cf);
    free(aspp);
    free(br);
    free(dwo);
  } else {
    linear_ref(cat, rows, wide, ref_param(r, x, "linear_fuse.conv.weight"), NULL, cf, fused);
    bn_relu_ref(r, x, "linear_fuse", fused, rows, cf);
  }
  /* Dropout2d, then the classifier */
  double *cls_in = malloc(sizeof(double) * rows * cf);
  const double scale = 1.0 / (1.0 - (double)cfg->dropout);
  for (int64_t p = 0; p < rows; p++)
    for (int c = 0; c < cf; c++) {
      const int n = (int)(p / ((int64_t)h0 * w0));
      cls_in[p * cf + c] =
          r->mask ? fused[p * cf + c] * (r->mask[n * cf + c] ? scale : 0.0) : fused[p * cf + c];
    }
  const char *cw = daformer ? "conv_seg.weight" : "linear_pred.weight";
  const char *cb = daformer ? "conv_seg.bias" : "linear_pred.bias";
  linear_ref(cls_in, rows, cf, ref_param(r, x, cw), ref_param(r, x, cb), cfg->num_classes, logits);
  free(cls_in);
  free(cat);
  free(res);
}

/* L = <r_logits, logits> + <r_fused, fused> (either weight vector may be NULL). */
typedef struct fd_user {
  ref_head *ref;
  const double *r_logits, *r_fused;
  double *fused, *logits;
  int64_t n_fused, n_logits;
} fd_user;

static double head_loss(const double *x, void *user) {
  fd_user *u = user;
  head_ref(u->ref, x, u->fused, u->logits);
  double l = 0.0;
  if (u->r_logits)
    for (int64_t i = 0; i < u->n_logits; i++)
      l += u->r_logits[i] * u->logits[i];
  if (u->r_fused)
    for (int64_t i = 0; i < u->n_fused; i++)
      l += u->r_fused[i] * u->fused[i];
  return l;
}

/* Central difference of the loss along direction v over x[off, off + n). */
static double fd_direction(fd_user *u, double *x, int64_t off, int64_t n, const double *v,
                           double h) {
  double *saved = malloc(sizeof(double) * n);
  memcpy(saved, x + off, sizeof(double) * n);
  for (int64_t i = 0; i < n; i++)
    x[off + i] = saved[i] + h * v[i];
  double plus = head_loss(x, u);
  for (int64_t i = 0; i < n; i++)
    x[off + i] = saved[i] - h * v[i];
  double minus = head_loss(x, u);
  memcpy(x + off, saved, sizeof(double) * n);
  free(saved);
  return (plus - minus) / (2 * h);
}

/* Compares the analytic gradient `got` of x[off, off + n) with finite differences at `samples`
 * spread elements and along one random unit direction over the whole range. */
static void check_gradient(const char *what, fd_user *u, double *x, int64_t off, int64_t n,
                           const float *got, int samples, uint32_t seed) {
  const double h = 1e-7;
  int count = 0;
  float got_s[64];
  double want_s[64];
  if (samples > n) samples = (int)n;
  for (int s = 0; s < samples; s++) {
    int64_t i = samples == 1 ? n / 2 : (int64_t)s * (n - 1) / (samples - 1);
    double *xi = x + off + i, keep = *xi;
    *xi = keep + h;
    double plus = head_loss(x, u);
    *xi = keep - h;
    double minus = head_loss(x, u);
    *xi = keep;
    got_s[count] = got[i];
    want_s[count++] = (plus - minus) / (2 * h);
  }
  float *vf = test_alloc_f32(n);
  double *v = test_alloc_f64(n);
  test_fill_uniform(vf, n, -1.0f, 1.0f, seed, 77);
  double norm = 0.0, dot = 0.0;
  for (int64_t i = 0; i < n; i++)
    norm += (double)vf[i] * vf[i];
  norm = sqrt(norm);
  for (int64_t i = 0; i < n; i++) {
    v[i] = vf[i] / norm;
    dot += v[i] * got[i];
  }
  want_s[count] = fd_direction(u, x, off, n, v, h);
  got_s[count++] = (float)dot;
  double scale = 0.0;
  for (int i = 0; i < count; i++)
    scale = fmax(scale, fabs(want_s[i]));
  /* the absolute floor covers gradients that are exactly zero (e.g. a SegFormer embedding bias
   * under batch-statistics BN, whose per-channel constant the BN mean removes): float32
   * leaves ~1e-6 of cancellation noise there */
  test_compare(what, got_s, want_s, count, 2e-3, 1e-4 * scale + 2e-5);
  free(vf);
  free(v);
}

/* ---- a head under test ---- */

typedef struct head_setup {
  cluda_head head;
  cluda_param_table params, state;
  float *p, *s;
  int b, h[LEVELS], w[LEVELS];
  float *feats[LEVELS];
  int64_t feat_n[LEVELS];
} head_setup;

static cluda_head_config small_config(cluda_head_kind kind, float dropout) {
  const int in_ch[4] = {8, 16, 24, 32};
  cluda_head_config cfg;
  cluda_head_default_config(kind, in_ch, &cfg);
  cfg.embed_dims = 12;
  cfg.channels = kind == CLUDA_HEAD_DAFORMER ? 10 : 12;
  cfg.num_classes = 5;
  cfg.dropout = dropout;
  return cfg;
}

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Declares and initialises the head, then moves BN affine parameters, running statistics and
 * the classifier away from their init values so that every path carries signal. */
static void setup_head(head_setup *t, const cluda_head_config *cfg, int batch, uint32_t seed) {
  static const int hs[LEVELS] = {12, 6, 3, 2}, ws[LEVELS] = {10, 5, 3, 2};
  memset(t, 0, sizeof *t);
  cluda_param_table_init(&t->params);
  cluda_param_table_init(&t->state);
  TEST_OK(cluda_head_declare(&t->head, cfg, "decode_head.", &t->params, &t->state));
  t->p = test_alloc_f32((int64_t)t->params.total);
  t->s = test_alloc_f32((int64_t)t->state.total);
  TEST_OK(cluda_head_init(&t->head, &t->params, t->p, &t->state, t->s, seed));
  for (int i = 0; i < t->params.count; i++) {
    const cluda_param_info *in = &t->params.items[i];
    float *d = t->p + in->offset;
    if (ends_with(in->name, ".bn.weight")) {
      test_fill_uniform(d, (int64_t)in->count, 0.7f, 1.3f, seed, 100 + i);
    } else if (ends_with(in->name, ".bn.bias") || strstr(in->name, "conv_seg") ||
               strstr(in->name, "linear_pred")) {
      test_fill_uniform(d, (int64_t)in->count, -0.3f, 0.3f, seed, 100 + i);
    }
  }
  for (int i = 0; i < t->state.count; i++) {
    const cluda_param_info *in = &t->state.items[i];
    const int var = ends_with(in->name, "running_var");
    test_fill_uniform(t->s + in->offset, (int64_t)in->count, var ? 0.5f : -0.3f, var ? 1.5f : 0.3f,
                      seed, 300 + i);
  }
  t->b = batch;
  for (int i = 0; i < LEVELS; i++) {
    t->h[i] = hs[i];
    t->w[i] = ws[i];
    t->feat_n[i] = (int64_t)batch * hs[i] * ws[i] * cfg->in_channels[i];
    t->feats[i] = test_alloc_f32(t->feat_n[i]);
    test_fill_uniform(t->feats[i], t->feat_n[i], -1.0f, 1.0f, seed, 10 + i);
  }
}

static void free_head(head_setup *t) {
  cluda_param_table_free(&t->params);
  cluda_param_table_free(&t->state);
  free(t->p);
  free(t->s);
  for (int i = 0; i < LEVELS; i++)
    free(t->feats[i]);
}

static void feat_tensors(const head_setup *t, float *const data[LEVELS], cluda_tensor out[LEVELS]) {
  for (int i = 0; i < LEVELS; i++)
    out[i] =
        cluda_tensor_4d(CLUDA_F32, data[i], t->b, t->h[i], t->w[i], t->head.cfg.in_channels[i]);
}

/* The Dropout2d keep-mask, rebuilt from the key as head.h documents it. */
static void mask_from_key(cluda_rng_key key, float p, int n, int c, uint8_t *mask) {
  key.stream = (key.stream & ~((uint64_t)0xffff << 32)) | ((uint64_t)CLUDA_RNG_DROPOUT << 32);
  for (int i = 0; i < n * c; i++)
    mask[i] = cluda_rng_uniform(key, (uint64_t)i) >= p;
}

/* One full check: forward vs the reference, running statistics, backward vs FD. */
static void check_head(cluda_head_kind kind, int bn_batch, int stochastic, float dropout, int grads,
                       int samples, uint32_t seed) {
  const char *kname = kind == CLUDA_HEAD_DAFORMER ? "daformer" : "segformer";
  const char *gname = grads == GRAD_BOTH     ? "dlogits+dfused"
                      : grads == GRAD_LOGITS ? "dlogits"
                                             : "dfused";
  char tag[160], what[400];
  snprintf(tag, sizeof tag, "%s bn_%s dropout %g%s, %s", kname, bn_batch ? "batch" : "running",
           (double)dropout, stochastic ? " on" : " off", gname);
  const cluda_head_config cfg = small_config(kind, dropout);
  head_setup t;
  setup_head(&t, &cfg, 2, seed);
  const int cf = cfg.channels, k = cfg.num_classes;
  cluda_head_plan plan;
  TEST_OK(cluda_head_plan_for(&t.head, t.b, t.h, t.w, &plan));
  cluda_ctx ctx = test_cpu_context(plan.scratch_bytes); /* exactly what the plan asks */
  void *acts = test_alloc(plan.activation_bytes);
  cluda_run_mode mode = {stochastic, bn_batch,
                         cluda_rng_make_key(seed, 0, 7, CLUDA_RNG_DROPPATH, 3), 0};
  const int64_t rows = (int64_t)t.b * t.h[0] * t.w[0];

  /* reference inputs: packed parameters + maps; the state before the forward */
  int64_t np = (int64_t)t.params.total, nx = np;
  ref_head ref = {&t.head, &t.params, &t.state, t.b, {0}, {0}, bn_batch, NULL, NULL, NULL, {0}};
  for (int i = 0; i < LEVELS; i++) {
    ref.h[i] = t.h[i];
    ref.w[i] = t.w[i];
    ref.feat_off[i] = nx;
    nx += t.feat_n[i];
  }
  double *x = test_alloc_f64(nx);
  test_to_double(t.p, x, np);
  for (int i = 0; i < LEVELS; i++)
    test_to_double(t.feats[i], x + ref.feat_off[i], t.feat_n[i]);
  double *state0 = test_alloc_f64((int64_t)t.state.total);
  double *state1 = test_alloc_f64((int64_t)t.state.total);
  float *state_before = test_alloc_f32((int64_t)t.state.total);
  test_to_double(t.s, state0, (int64_t)t.state.total);
  memcpy(state_before, t.s, t.state.total * sizeof(float));
  memcpy(state1, state0, t.state.total * sizeof(double));
  uint8_t *mask = NULL;
  if (stochastic && dropout > 0.0f) {
    mask = test_alloc((size_t)t.b * cf);
    mask_from_key(mode.key, dropout, t.b, cf, mask);
  }
  ref.state0 = state0;
  ref.state1 = state1;
  ref.mask = mask;
  double *want_fused = test_alloc_f64(rows * cf), *want_logits = test_alloc_f64(rows * k);
  head_ref(&ref, x, want_fused, want_logits);
  ref.state1 = NULL; /* FD evaluations leave it alone */

  /* forward */
  cluda_tensor feats[LEVELS], fused, logits;
  feat_tensors(&t, t.feats, feats);
  TEST_OK(cluda_head_forward(&ctx, &t.head, &plan, &t.params, t.p, &t.state, t.s, &mode, feats,
                             acts, &fused, &logits));
  TEST_CHECK(fused.ndim == 4 && fused.shape[0] == t.b && fused.shape[1] == t.h[0] &&
                 fused.shape[2] == t.w[0] && fused.shape[3] == cf && logits.shape[3] == k,
             "%s: output shapes", tag);
  snprintf(what, sizeof what, "head forward fused, %s", tag);
  test_compare(what, cluda_f32(&fused), want_fused, rows * cf, 1e-4, 1e-5);
  snprintf(what, sizeof what, "head forward logits, %s", tag);
  test_compare(what, cluda_f32(&logits), want_logits, rows * k, 1e-4, 1e-5);
  if (bn_batch) {
    snprintf(what, sizeof what, "head running statistics updated, %s", tag);
    test_compare(what, t.s, state1, (int64_t)t.state.total, 1e-5, 1e-6);
  } else {
    TEST_CHECK(memcmp(t.s, state_before, t.state.total * sizeof(float)) == 0,
               "%s: running statistics untouched in running-stats mode", tag);
  }
  TEST_CHECK(ctx.scratch->used == 0 && ctx.scratch->peak <= plan.scratch_bytes,
             "%s: forward stays within the planned scratch and releases it", tag);
  if (mask) { /* the mask must matter: some channel of the reference is dropped and kept */
    int kept = 0;
    for (int i = 0; i < t.b * cf; i++)
      kept += mask[i];
    TEST_CHECK(kept > 0 && kept < t.b * cf, "%s: the test mask drops some channels (%d of %d kept)",
               tag, kept, t.b * cf);
  }

  /* backward: parameter gradients accumulate onto a prior, input gradients are overwritten */
  float *r_logits_f = test_alloc_f32(rows * k), *r_fused_f = test_alloc_f32(rows * cf);
  test_fill_uniform(r_logits_f, rows * k, -1.0f, 1.0f, seed, 40);
  test_fill_uniform(r_fused_f, rows * cf, -1.0f, 1.0f, seed, 41);
  float *grad = test_alloc_f32(np), *prior = test_alloc_f32(np);
  test_fill_uniform(prior, np, -1.0f, 1.0f, seed, 42);
  memcpy(grad, prior, (size_t)np * sizeof(float));
  float *dfeat_data[LEVELS];
  cluda_tensor dfeat_t[LEVELS];
  cluda_tensor *dfeats[LEVELS];
  for (int i = 0; i < LEVELS; i++) {
    dfeat_data[i] = test_alloc_f32(t.feat_n[i]);
    for (int64_t j = 0; j < t.feat_n[i]; j++)
      dfeat_data[i][j] = NAN;
  }
  feat_tensors(&t, dfeat_data, dfeat_t);
  for (int i = 0; i < LEVELS; i++)
    dfeats[i] = &dfeat_t[i];
  cluda_tensor dlogits = cluda_tensor_4d(CLUDA_F32, r_logits_f, t.b, t.h[0], t.w[0], k);
  cluda_tensor dfused = cluda_tensor_4d(CLUDA_F32, r_fused_f, t.b, t.h[0], t.w[0], cf);
  TEST_OK(cluda_head_backward(&ctx, &t.head, &plan, &t.params, t.p, grad, &t.state, t.s, &mode,
                              feats, acts, (grads & GRAD_LOGITS) ? &dlogits : NULL,
                              (grads & GRAD_FUSED) ? &dfused : NULL, dfeats));
  TEST_CHECK(ctx.scratch->used == 0 && ctx.scratch->peak <= plan.scratch_bytes,
             "%s: backward stays within the planned scratch (%zu of %zu) and releases it", tag,
             ctx.scratch->peak, plan.scratch_bytes);
  for (int64_t i = 0; i < np; i++)
    grad[i] -= prior[i];

  double *r_logits = test_alloc_f64(rows * k), *r_fused = test_alloc_f64(rows * cf);
  test_to_double(r_logits_f, r_logits, rows * k);
  test_to_double(r_fused_f, r_fused, rows * cf);
  fd_user u = {&ref,
               (grads & GRAD_LOGITS) ? r_logits : NULL,
               (grads & GRAD_FUSED) ? r_fused : NULL,
               want_fused,
               want_logits,
               rows * cf,
               rows * k};
  for (int i = 0; i < LEVELS; i++) {
    snprintf(what, sizeof what, "head dfeats[%d] vs FD, %s", i, tag);
    check_gradient(what, &u, x, ref.feat_off[i], t.feat_n[i], dfeat_data[i], samples, seed + i);
  }
  for (int i = t.head.first_param; i < t.head.first_param + t.head.param_count; i++) {
    const cluda_param_info *in = &t.params.items[i];
    snprintf(what, sizeof what, "head d%s (added) vs FD, %s", in->name, tag);
    check_gradient(what, &u, x, (int64_t)in->offset, (int64_t)in->count, grad + in->offset, samples,
                   seed + 10 + i);
  }

  free(acts);
  free(x);
  free(state0);
  free(state1);
  free(state_before);
  free(mask);
  free(want_fused);
  free(want_logits);
  free(r_logits_f);
  free(r_fused_f);
  free(grad);
  free(prior);
  for (int i = 0; i < LEVELS; i++)
    free(dfeat_data[i]);
  free(r_logits);
  free(r_fused);
  test_context_free(&ctx);
  free_head(&t);
}

/* Dropout2d: the same key gives the same logits, another key other logits; evaluation mode
 * ignores the key. */
static void check_dropout_key(void) {
  const cluda_head_config cfg = small_config(CLUDA_HEAD_DAFORMER, 0.5f);
  head_setup t;
  setup_head(&t, &cfg, 2, 21);
  cluda_head_plan plan;
  TEST_OK(cluda_head_plan_for(&t.head, t.b, t.h, t.w, &plan));
  cluda_ctx ctx = test_cpu_context(plan.scratch_bytes);
  void *acts = test_alloc(plan.activation_bytes);
  const int64_t n = (int64_t)t.b * t.h[0] * t.w[0] * cfg.num_classes;
  float *out[4];
  cluda_tensor feats[LEVELS], fused, logits;
  feat_tensors(&t, t.feats, feats);
  for (int r = 0; r < 4; r++) {
    /* runs 0 and 1: key A; run 2: key B; run 3: key B with dropout off */
    cluda_run_mode mode = {r < 3, 0, cluda_rng_make_key(5, 0, r < 2 ? 1 : 2, CLUDA_RNG_DROPOUT, 0),
                           0};
    TEST_OK(cluda_head_forward(&ctx, &t.head, &plan, &t.params, t.p, &t.state, t.s, &mode, feats,
                               acts, &fused, &logits));
    out[r] = test_alloc_f32(n);
    memcpy(out[r], logits.data, (size_t)n * sizeof(float));
  }
  TEST_CHECK(memcmp(out[0], out[1], (size_t)n * sizeof(float)) == 0,
             "head Dropout2d: the same key reproduces the logits bit for bit");
  TEST_CHECK(memcmp(out[0], out[2], (size_t)n * sizeof(float)) != 0,
             "head Dropout2d: another key gives other logits");
  cluda_run_mode eval = {0, 0, cluda_rng_make_key(5, 0, 1, CLUDA_RNG_DROPOUT, 0), 0};
  TEST_OK(cluda_head_forward(&ctx, &t.head, &plan, &t.params, t.p, &t.state, t.s, &eval, feats,
                             acts, &fused, &logits));
  TEST_CHECK(memcmp(out[3], logits.data, (size_t)n * sizeof(float)) == 0,
             "head Dropout2d: off when not stochastic, whatever the key");
  for (int r = 0; r < 4; r++)
    free(out[r]);
  free(acts);
  test_context_free(&ctx);
  free_head(&t);
}

/* ---- sizes of the real configurations ---- */

static size_t count_params(cluda_head_kind kind, const int in_ch[4], int e, int cf, int k) {
  cluda_head_config cfg;
  cluda_head_default_config(kind, in_ch, &cfg);
  cfg.embed_dims = e;
  cfg.channels = cf;
  cfg.num_classes = k;
  cluda_param_table p, s;
  cluda_param_table_init(&p);
  cluda_param_table_init(&s);
  cluda_head head;
  size_t n = 0;
  if (TEST_OK(cluda_head_declare(&head, &cfg, "decode_head.", &p, &s)))
    n = cluda_param_table_elements(&p);
  cluda_param_table_free(&p);
  cluda_param_table_free(&s);
  return n;
}

static double plan_macs(cluda_head_kind kind, const int in_ch[4], int e, int cf, int size) {
  cluda_head_config cfg;
  cluda_head_default_config(kind, in_ch, &cfg);
  cfg.embed_dims = e;
  cfg.channels = cf;
  cluda_param_table p, s;
  cluda_param_table_init(&p);
  cluda_param_table_init(&s);
  cluda_head head;
  cluda_head_plan plan = {0};
  int h[4], w[4];
  for (int i = 0; i < 4; i++)
    h[i] = w[i] = size >> (2 + i);
  TEST_OK(cluda_head_declare(&head, &cfg, "decode_head.", &p, &s));
  TEST_OK(cluda_head_plan_for(&head, 1, h, w, &plan));
  cluda_param_table_free(&p);
  cluda_param_table_free(&s);
  return plan.macs;
}

static void check_sizes(void) {
  const int b5[4] = {64, 128, 320, 512}, tiny[4] = {16, 32, 64, 128};
  size_t n = count_params(CLUDA_HEAD_DAFORMER, b5, 256, 256, 19);
  TEST_CHECK(n == 3712275, "DAFormer head E=256 over B5 has %zu params, want 3,712,275", n);
  n = count_params(CLUDA_HEAD_DAFORMER, b5, 512, 256, 19);
  TEST_CHECK(n == 5057811, "DAFormer head E=512 over B5 has %zu params, want 5,057,811", n);
  n = count_params(CLUDA_HEAD_DAFORMER, tiny, 64, 64, 19);
  TEST_CHECK(n == 238931, "DAFormer-tiny head E=64 has %zu params, want 238,931", n);
  n = count_params(CLUDA_HEAD_DAFORMER, tiny, 128, 64, 19);
  TEST_CHECK(n == 328531, "DAFormer-tiny head E=128 has %zu params, want 328,531", n);
  /* SegFormer: sum C_i E + 4E (embeds) + 4E E + 2E (linear_fuse + BN) + E K + K (linear_pred) */
  const size_t e = 256, k = 19,
               formula = (64 + 128 + 320 + 512) * e + 4 * e + 4 * e * e + 2 * e + e * k + k;
  n = count_params(CLUDA_HEAD_SEGFORMER, b5, 256, 256, 19);
  TEST_CHECK(n == formula && n == 530707,
             "SegFormer head E=256 over B1 dims has %zu params, want %zu (0.53 M)", n, formula);
  double m = plan_macs(CLUDA_HEAD_DAFORMER, b5, 256, 256, 512);
  TEST_CHECK(fabs(m - 56.89e9) < 0.005e9, "DAFormer head E=256 at 512^2: %.4g MACs, want 56.89 G",
             m);
  m = plan_macs(CLUDA_HEAD_DAFORMER, b5, 512, 256, 512);
  TEST_CHECK(fabs(m - 75.04e9) < 0.005e9, "DAFormer head E=512 at 512^2: %.4g MACs, want 75.04 G",
             m);
  m = plan_macs(CLUDA_HEAD_SEGFORMER, b5, 768, 768, 512);
  TEST_CHECK(fabs(m - 40.45e9) < 0.005e9, "SegFormer head E=768 at 512^2: %.4g MACs, want 40.45 G",
             m);
}

/* Names, shapes and the initialisation rules of model.md 2.1. */
static void check_declare_and_init(void) {
  const int tiny[4] = {16, 32, 64, 128};
  cluda_head_config cfg;
  cluda_head_default_config(CLUDA_HEAD_DAFORMER, tiny, &cfg);
  TEST_CHECK(cfg.embed_dims == 512 && cfg.channels == 256 && cfg.num_classes == 19 &&
                 cfg.dilations[3] == 18 && cfg.dropout == 0.1f,
             "DAFormer default config: E 512, Cf 256, 19 classes, dilations to 18, dropout 0.1");
  cfg.embed_dims = 64;
  cfg.channels = 64;
  cluda_param_table p, s;
  cluda_param_table_init(&p);
  cluda_param_table_init(&s);
  cluda_head head;
  TEST_OK(cluda_head_declare(&head, &cfg, "decode_head.", &p, &s));
  TEST_CHECK(head.param_count == 34 && head.state_count == 16 && head.first_param == 0,
             "DAFormer head declares 34 parameters and 16 running statistics (got %d, %d)",
             head.param_count, head.state_count);
  int i = cluda_param_table_find(&p, "decode_head.fuse_layer.aspp_modules.2.depthwise_conv.conv"
                                     ".weight");
  TEST_CHECK(i >= 0 && p.items[i].ndim == 4 && p.items[i].shape[0] == 256 &&
                 p.items[i].shape[1] == 3 && p.items[i].shape[2] == 3 && p.items[i].shape[3] == 1 &&
                 p.items[i].group == CLUDA_GROUP_HEAD,
             "depthwise weight is OHWI [4E, 3, 3, 1] in the head group");
  i = cluda_param_table_find(&p, "decode_head.embed_layers.3.proj.weight");
  TEST_CHECK(i >= 0 && p.items[i].ndim == 2 && p.items[i].shape[0] == 64 &&
                 p.items[i].shape[1] == 128,
             "embed_layers.3.proj.weight is [E, C_4]");
  i = cluda_param_table_find(&p, "decode_head.conv_seg.weight");
  TEST_CHECK(i >= 0 && p.items[i].shape[0] == 19 && p.items[i].shape[3] == 64,
             "conv_seg.weight is [K, 1, 1, Cf]");
  TEST_CHECK(
      cluda_param_table_find(&s, "decode_head.fuse_layer.bottleneck.bn.running_var") >= 0 &&
          cluda_param_table_find(&s, "decode_head.fuse_layer.aspp_modules.0.bn.running_mean") >= 0,
      "BN running statistics are named <...>.bn.running_mean / running_var");

  float *pd = test_alloc_f32((int64_t)p.total), *sd = test_alloc_f32((int64_t)s.total);
  TEST_OK(cluda_head_init(&head, &p, pd, &s, sd, 3));
  for (i = 0; i < p.count; i++) {
    const cluda_param_info *in = &p.items[i];
    const float *d = pd + in->offset;
    double sum = 0.0, sq = 0.0, mx = 0.0;
    for (size_t j = 0; j < in->count; j++) {
      sum += d[j];
      sq += (double)d[j] * d[j];
      mx = fmax(mx, fabs(d[j]));
    }
    const double mean = sum / in->count, std = sqrt(sq / in->count - mean * mean);
    if (ends_with(in->name, ".bn.weight"))
      TEST_CHECK(mean == 1.0 && std < 1e-12, "%s is all ones", in->name);
    else if (ends_with(in->name, ".bn.bias") || ends_with(in->name, "conv_seg.bias"))
      TEST_CHECK(mx == 0.0, "%s is all zeros", in->name);
    else if (ends_with(in->name, "conv_seg.weight"))
      TEST_CHECK(fabs(std - 0.01) < 0.001, "%s: std %.4g, want 0.01", in->name, std);
    else if (ends_with(in->name, "conv.weight")) {
      const double want = sqrt(2.0 / ((double)in->shape[0] * in->shape[1] * in->shape[2]));
      TEST_CHECK(fabs(std / want - 1.0) < 0.05 && fabs(mean) < 0.1 * want,
                 "%s: Kaiming fan-out std %.4g, want %.4g", in->name, std, want);
    } else if (strstr(in->name, "embed_layers")) {
      const int fan_in = p.items[i - (ends_with(in->name, ".bias") ? 1 : 0)].shape[1];
      const double bound = 1.0 / sqrt((double)fan_in);
      TEST_CHECK(mx <= bound && mx > 0.8 * bound, "%s: uniform within +-1/sqrt(%d) (max %.4g)",
                 in->name, fan_in, mx);
    }
  }
  int all_ok = 1;
  for (i = 0; i < s.count; i++) {
    const float want = ends_with(s.items[i].name, "running_var") ? 1.0f : 0.0f;
    for (size_t j = 0; j < s.items[i].count; j++)
      all_ok &= sd[s.items[i].offset + j] == want;
  }
  TEST_CHECK(all_ok, "running means start at 0 and running variances at 1");
  free(pd);
  free(sd);
  cluda_param_table_free(&p);
  cluda_param_table_free(&s);
}

/* ---- argument validation ---- */

static void check_validation(void) {
  cluda_head_config cfg = small_config(CLUDA_HEAD_DAFORMER, 0.1f);
  head_setup t;
  setup_head(&t, &cfg, 2, 5);
  cluda_head_plan plan;
  TEST_OK(cluda_head_plan_for(&t.head, t.b, t.h, t.w, &plan));
  cluda_ctx ctx = test_cpu_context(plan.scratch_bytes);
  void *acts = test_alloc(plan.activation_bytes);
  cluda_run_mode mode = {1, 1, cluda_rng_make_key(1, 0, 0, CLUDA_RNG_DROPOUT, 0), 0};
  cluda_tensor feats[LEVELS], fused, logits;
  feat_tensors(&t, t.feats, feats);

  /* configurations */
  cluda_param_table p, s;
  cluda_param_table_init(&p);
  cluda_param_table_init(&s);
  cluda_head h2;
  cluda_head_config bad = cfg;
  bad.dilations[0] = 2;
  TEST_FAILS(cluda_head_declare(&h2, &bad, "decode_head.", &p, &s), CLUDA_ERR_ARG, "dilations[0]");
  bad = cfg;
  bad.in_channels[2] = 0;
  TEST_FAILS(cluda_head_declare(&h2, &bad, "decode_head.", &p, &s), CLUDA_ERR_ARG,
             "in_channels[2]");
  bad = small_config(CLUDA_HEAD_SEGFORMER, 0.1f);
  bad.channels = 10;
  TEST_FAILS(cluda_head_declare(&h2, &bad, "decode_head.", &p, &s), CLUDA_ERR_ARG, "channels");
  bad = cfg;
  bad.dropout = 1.0f;
  TEST_FAILS(cluda_head_declare(&h2, &bad, "decode_head.", &p, &s), CLUDA_ERR_ARG, "dropout");
  TEST_FAILS(cluda_head_declare(&h2, NULL, "decode_head.", &p, &s), CLUDA_ERR_ARG, "cfg");
  TEST_CHECK(p.count == 0 && s.count == 0, "failed declarations leave the tables empty");
  /* the same names twice in one table */
  TEST_FAILS(cluda_head_declare(&h2, &cfg, "decode_head.", &t.params, &t.state), CLUDA_ERR_ARG,
             "decode_head.");

  /* plans */
  cluda_head_plan bad_plan;
  TEST_FAILS(cluda_head_plan_for(&t.head, 0, t.h, t.w, &bad_plan), CLUDA_ERR_SHAPE, "batch");
  int hz[4] = {12, 6, 0, 2};
  TEST_FAILS(cluda_head_plan_for(&t.head, 2, hz, t.w, &bad_plan), CLUDA_ERR_SHAPE, "level 2");
  TEST_FAILS(cluda_head_plan_for(&t.head, 2, t.h, t.w, NULL), CLUDA_ERR_ARG, "plan");

  /* forward inputs */
  cluda_tensor wrong[LEVELS];
  memcpy(wrong, feats, sizeof wrong);
  wrong[1].shape[1] = 5; /* wrong size */
  TEST_FAILS(cluda_head_forward(&ctx, &t.head, &plan, &t.params, t.p, &t.state, t.s, &mode, wrong,
                                acts, &fused, &logits),
             CLUDA_ERR_SHAPE, "feats[1]");
  memcpy(wrong, feats, sizeof wrong);
  wrong[2].shape[3] = 23; /* wrong channels */
  TEST_FAILS(cluda_head_forward(&ctx, &t.head, &plan, &t.params, t.p, &t.state, t.s, &mode, wrong,
                                acts, &fused, &logits),
             CLUDA_ERR_SHAPE, "feats[2]");
  memcpy(wrong, feats, sizeof wrong);
  wrong[3].data = NULL;
  TEST_FAILS(cluda_head_forward(&ctx, &t.head, &plan, &t.params, t.p, &t.state, t.s, &mode, wrong,
                                acts, &fused, &logits),
             CLUDA_ERR_ARG, "feats[3]");
  TEST_FAILS(cluda_head_forward(&ctx, &t.head, &plan, &t.params, t.p, &t.state, t.s, &mode, NULL,
                                acts, &fused, &logits),
             CLUDA_ERR_ARG, "feats");
  TEST_FAILS(cluda_head_forward(&ctx, NULL, &plan, &t.params, t.p, &t.state, t.s, &mode, feats,
                                acts, &fused, &logits),
             CLUDA_ERR_ARG, "head");
  TEST_FAILS(cluda_head_forward(&ctx, &t.head, &plan, &t.params, t.p, &t.state, t.s, &mode, feats,
                                NULL, &fused, &logits),
             CLUDA_ERR_ARG, "acts");
  TEST_FAILS(cluda_head_forward(&ctx, &t.head, &plan, &t.params, t.p, &t.state, t.s, &mode, feats,
                                acts, NULL, &logits),
             CLUDA_ERR_ARG, "fused");
  /* a table declared for another configuration */
  cluda_head_config other = cfg;
  other.channels = 11;
  TEST_OK(cluda_head_declare(&h2, &other, "decode_head.", &p, &s));
  TEST_FAILS(cluda_head_forward(&ctx, &t.head, &plan, &p, t.p, &s, t.s, &mode, feats, acts, &fused,
                                &logits),
             CLUDA_ERR_SHAPE, "params");
  /* a plan for a smaller input */
  cluda_head_plan small;
  int h1[4] = {4, 2, 1, 1}, w1[4] = {4, 2, 1, 1};
  TEST_OK(cluda_head_plan_for(&t.head, 2, h1, w1, &small));
  TEST_FAILS(cluda_head_forward(&ctx, &t.head, &small, &t.params, t.p, &t.state, t.s, &mode, feats,
                                acts, &fused, &logits),
             CLUDA_ERR_SHAPE, "feats[0]");
  /* scratch too small */
  cluda_ctx tight = test_cpu_context(1024);
  TEST_FAILS(cluda_head_forward(&tight, &t.head, &plan, &t.params, t.p, &t.state, t.s, &mode, feats,
                                acts, &fused, &logits),
             CLUDA_ERR_ALLOC, "head_forward");
  TEST_CHECK(tight.scratch->used == 0, "a failed forward releases its scratch");

  /* backward inputs */
  TEST_OK(cluda_head_forward(&ctx, &t.head, &plan, &t.params, t.p, &t.state, t.s, &mode, feats,
                             acts, &fused, &logits));
  float *grad = test_alloc_f32((int64_t)t.params.total);
  cluda_tensor dlog = logits, bad_dlog = logits;
  bad_dlog.shape[3] = 4;
  TEST_FAILS(cluda_head_backward(&ctx, &t.head, &plan, &t.params, t.p, grad, &t.state, t.s, &mode,
                                 feats, acts, NULL, NULL, NULL),
             CLUDA_ERR_ARG, "dlogits and dfused");
  TEST_FAILS(cluda_head_backward(&ctx, &t.head, &plan, &t.params, t.p, grad, &t.state, t.s, &mode,
                                 feats, acts, &bad_dlog, NULL, NULL),
             CLUDA_ERR_SHAPE, "dlogits");
  TEST_FAILS(cluda_head_backward(&ctx, &t.head, &plan, &t.params, t.p, grad, &t.state, t.s, &mode,
                                 feats, acts, &dlog, &logits, NULL),
             CLUDA_ERR_SHAPE, "dfused");
  cluda_tensor bad_dfeat = feats[2];
  bad_dfeat.shape[2] = 1;
  cluda_tensor *dfeats[4] = {NULL, NULL, &bad_dfeat, NULL};
  TEST_FAILS(cluda_head_backward(&ctx, &t.head, &plan, &t.params, t.p, grad, &t.state, t.s, &mode,
                                 feats, acts, &dlog, NULL, dfeats),
             CLUDA_ERR_SHAPE, "dfeats[2]");
  TEST_FAILS(cluda_head_backward(&ctx, &t.head, &plan, &t.params, t.p, NULL, &t.state, t.s, &mode,
                                 feats, acts, &dlog, NULL, NULL),
             CLUDA_ERR_ARG, "grads");
  /* dfeats NULL: parameter gradients only */
  TEST_OK(cluda_head_backward(&ctx, &t.head, &plan, &t.params, t.p, grad, &t.state, t.s, &mode,
                              feats, acts, &dlog, NULL, NULL));

  free(grad);
  cluda_param_table_free(&p);
  cluda_param_table_free(&s);
  free(acts);
  test_context_free(&ctx);
  test_context_free(&tight);
  free_head(&t);
}

int main(void) {
  check_sizes();
  check_declare_and_init();
  /* DAFormer: the full case with more samples, then the variations */
  check_head(CLUDA_HEAD_DAFORMER, 1, 1, 0.5f, GRAD_BOTH, 12, 1);
  check_head(CLUDA_HEAD_DAFORMER, 1, 1, 0.5f, GRAD_LOGITS, 4, 2);
  check_head(CLUDA_HEAD_DAFORMER, 1, 0, 0.1f, GRAD_FUSED, 4, 3);
  check_head(CLUDA_HEAD_DAFORMER, 0, 0, 0.1f, GRAD_BOTH, 4, 4);
  check_head(CLUDA_HEAD_DAFORMER, 0, 1, 0.0f, GRAD_LOGITS, 4, 5);
  /* SegFormer */
  check_head(CLUDA_HEAD_SEGFORMER, 1, 1, 0.5f, GRAD_BOTH, 12, 6);
  check_head(CLUDA_HEAD_SEGFORMER, 0, 0, 0.1f, GRAD_LOGITS, 4, 7);
  check_head(CLUDA_HEAD_SEGFORMER, 1, 0, 0.1f, GRAD_FUSED, 4, 8);
  check_dropout_key();
  check_validation();
  return test_finish("test_head");
}

/* Segmentor (MiT encoder + decode head): presets and parameter counts, output shapes for an
 * odd non-square input, the backward against the independently tested parts composed by hand
 * (bit for bit) and against finite differences of the whole network, the denc (FD-loss) path,
 * 1- vs 2-thread determinism, and student/teacher sharing one segmentor with their own
 * parameter, state and activation buffers.
 *
 * Why finite differences of the float forward: no double implementation of the encoder exists
 * outside test_mit.c (where it is private), and the head and the encoder are each checked
 * against a double reference in their own tests. What this test must catch are glue errors (a
 * stage routed to the wrong level, a lost or doubled gradient term, a sign), which change a
 * directional derivative by O(1). The loss is piecewise smooth (ReLU kinks), so the step is
 * small (1e-4 per element along a random direction over a whole tensor, 1e-3 on single
 * elements at the largest gradients, which cross far fewer kinks), and the prediction uses the
 * float perturbation actually applied. The float forward leaves ~5e-6 of noise in a loss
 * change (absolute floor 2e-5); the tolerance is 3e-2 relative. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/segmentor.h"
#include "testing.h"

enum { STAGES = 4 };

/* ---- presets and counts ---- */

static size_t count_for(const char *enc, cluda_head_kind kind, int *state_count) {
  cluda_segmentor_config cfg;
  cluda_segmentor model;
  size_t n = 0;
  if (!TEST_OK(cluda_segmentor_default_config(enc, kind, &cfg))) return 0;
  if (!TEST_OK(cluda_segmentor_create(&model, &cfg))) return 0;
  n = cluda_param_table_elements(&model.params);
  if (state_count) *state_count = model.state.count;
  cluda_segmentor_free(&model);
  return n;
}

static void check_presets(void) {
  static const char *const names[] = {"b0", "b1", "b2", "b3", "b4", "b5", "tiny"};
  for (int i = 0; i < 7; i++)
    for (int k = 0; k < 2; k++) {
      cluda_segmentor_config cfg;
      if (!TEST_OK(cluda_segmentor_default_config(names[i], (cluda_head_kind)k, &cfg))) continue;
      const int tiny = i == 6, small = i < 2;
      const int want_e = tiny ? 64 : k == CLUDA_HEAD_DAFORMER ? 512 : small ? 256 : 768;
      const int want_cf = tiny ? 64 : k == CLUDA_HEAD_DAFORMER ? 256 : want_e;
      TEST_CHECK(cfg.head.kind == (cluda_head_kind)k && cfg.head.embed_dims == want_e &&
                     cfg.head.channels == want_cf && cfg.head.num_classes == 19 &&
                     memcmp(cfg.head.in_channels, cfg.encoder.embed_dims, sizeof(int) * 4) == 0 &&
                     strcmp(cfg.encoder_name, names[i]) == 0,
                 "segmentor preset %s/%s: head E %d (want %d), Cf %d (want %d), in_channels = "
                 "encoder dims",
                 names[i], k ? "segformer" : "daformer", cfg.head.embed_dims, want_e,
                 cfg.head.channels, want_cf);
    }
  int states = 0;
  size_t n = count_for("tiny", CLUDA_HEAD_DAFORMER, &states);
  TEST_CHECK(n == 746976 + 238931 && states == 16,
             "tiny DAFormer segmentor: %zu params (want 746,976 + 238,931), %d state entries", n,
             states);
  n = count_for("b5", CLUDA_HEAD_DAFORMER, NULL);
  TEST_CHECK(n == 81443008 + 5057811, "B5 CLUDA segmentor: %zu params, want 81,443,008 + 5,057,811",
             n);
  n = count_for("b0", CLUDA_HEAD_SEGFORMER, &states);
  /* SegFormer head over B0 dims (32, 64, 160, 256), E = 256, K = 19 */
  const size_t head =
      (32 + 64 + 160 + 256) * 256 + 4 * 256 + 4 * 256 * 256 + 2 * 256 + 256 * 19 + 19;
  TEST_CHECK(n == 3319392 + head && states == 2,
             "SegFormer-B0: %zu params, want 3,319,392 + %zu; %d state entries", n, head, states);

  cluda_segmentor_config cfg;
  TEST_FAILS(cluda_segmentor_default_config("b6", CLUDA_HEAD_DAFORMER, &cfg), CLUDA_ERR_ARG, "b6");
  TEST_FAILS(cluda_segmentor_default_config(NULL, CLUDA_HEAD_DAFORMER, &cfg), CLUDA_ERR_ARG,
             "encoder");
  TEST_OK(cluda_segmentor_default_config("tiny", CLUDA_HEAD_DAFORMER, &cfg));
  cluda_segmentor model;
  cfg.head.in_channels[2] = 65;
  TEST_FAILS(cluda_segmentor_create(&model, &cfg), CLUDA_ERR_ARG, "in_channels[2]");
  TEST_CHECK(model.params.items == NULL && model.params.count == 0,
             "a failed create leaves nothing allocated");
  cfg.head.in_channels[2] = 0; /* zero: taken from the encoder */
  cfg.head.dilations[0] = 3;
  TEST_FAILS(cluda_segmentor_create(&model, &cfg), CLUDA_ERR_ARG, "dilations[0]");
  cfg.head.dilations[0] = 1;
  if (TEST_OK(cluda_segmentor_create(&model, &cfg))) {
    const int a = cluda_param_table_find(&model.params, "backbone.patch_embed1.proj.weight");
    const int b = cluda_param_table_find(&model.params, "decode_head.conv_seg.weight");
    const int c =
        cluda_param_table_find(&model.state, "decode_head.fuse_layer.bottleneck.bn.running_var");
    TEST_CHECK(a == 0 && b == model.params.count - 2 && c >= 0 &&
                   model.params.items[a].group == CLUDA_GROUP_ENCODER &&
                   model.params.items[b].group == CLUDA_GROUP_HEAD,
               "names: backbone.* first (encoder group), decode_head.* after (head group)");
    cluda_segmentor_free(&model);
  }
}

/* ---- a model with its buffers ---- */

typedef struct seg {
  cluda_segmentor model;
  cluda_segmentor_plan plan;
  float *params, *state;
  int b, h, w;
} seg;

/* A segmentor from a preset or, for "small", a minimal network for finite differences. */
static void seg_create(seg *s, const char *name, cluda_head_kind kind, int b, int h, int w,
                       uint64_t seed) {
  cluda_segmentor_config cfg;
  memset(s, 0, sizeof *s);
  const int small = strcmp(name, "small") == 0;
  TEST_OK(cluda_segmentor_default_config(small ? "tiny" : name, kind, &cfg));
  if (small) {
    const int dims[4] = {8, 16, 16, 16};
    snprintf(cfg.encoder_name, sizeof cfg.encoder_name, "custom");
    for (int i = 0; i < 4; i++) {
      cfg.encoder.embed_dims[i] = dims[i];
      cfg.encoder.depths[i] = 1;
      cfg.encoder.heads[i] = 1;
      cfg.head.in_channels[i] = 0;
    }
    cfg.head.embed_dims = 8;
    cfg.head.channels = 8;
    cfg.head.num_classes = 3;
  }
  TEST_OK(cluda_segmentor_create(&s->model, &cfg));
  s->params = test_alloc_f32((int64_t)s->model.params.total);
  s->state = test_alloc_f32((int64_t)s->model.state.total);
  TEST_OK(cluda_segmentor_init(&s->model, s->params, s->state, seed));
  TEST_OK(cluda_segmentor_plan_for(&s->model, b, h, w, &s->plan));
  s->b = b;
  s->h = h;
  s->w = w;
}

static void seg_free(seg *s) {
  cluda_segmentor_free(&s->model);
  free(s->params);
  free(s->state);
}

static int64_t numel4(const cluda_tensor *t) {
  return (int64_t)t->shape[0] * t->shape[1] * t->shape[2] * t->shape[3];
}

static int all_finite(const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(x[i])) return 0;
  return 1;
}

/* ---- output shapes ---- */

static void check_shapes(cluda_head_kind kind) {
  const char *kname = kind == CLUDA_HEAD_DAFORMER ? "daformer" : "segformer";
  seg s;
  seg_create(&s, "tiny", kind, 2, 50, 70, 1);
  const int want_h[4] = {13, 7, 4, 2}, want_w[4] = {18, 9, 5, 3};
  int ok = 1;
  for (int i = 0; i < STAGES; i++)
    ok &= s.plan.encoder.out_h[i] == want_h[i] && s.plan.encoder.out_w[i] == want_w[i];
  TEST_CHECK(ok && s.plan.head.out_h == 13 && s.plan.head.out_w == 18,
             "%s: 50x70 input gives stages 13x18, 7x9, 4x5, 2x3 and a 13x18 head", kname);
  TEST_CHECK(s.plan.macs == s.plan.encoder.macs + s.plan.head.macs && s.plan.macs > 0,
             "%s: plan MACs are the encoder's plus the head's", kname);
  cluda_ctx ctx = test_cpu_context(s.plan.scratch_bytes);
  void *acts = test_alloc(s.plan.activation_bytes);
  float *x = test_alloc_f32((int64_t)2 * 50 * 70 * 3);
  test_fill_uniform(x, (int64_t)2 * 50 * 70 * 3, -2.0f, 2.0f, 9, 0);
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, 2, 50, 70, 3);
  cluda_run_mode mode = {1, 1, cluda_rng_make_key(3, 0, 0, CLUDA_RNG_DROPOUT, 0), 0};
  cluda_segmentor_outputs out;
  if (TEST_OK(cluda_segmentor_forward(&ctx, &s.model, &s.plan, s.params, s.state, &mode, &tx, acts,
                                      &out))) {
    const int cf = s.model.cfg.head.channels;
    TEST_CHECK(out.logits.shape[0] == 2 && out.logits.shape[1] == 13 && out.logits.shape[2] == 18 &&
                   out.logits.shape[3] == 19 && out.fused.shape[3] == cf &&
                   out.fused.shape[1] == 13 && out.fused.shape[2] == 18,
               "%s: logits [2,13,18,19] and fused [2,13,18,%d]", kname, cf);
    for (int i = 0; i < STAGES; i++)
      TEST_CHECK(out.enc[i].shape[1] == want_h[i] && out.enc[i].shape[2] == want_w[i] &&
                     out.enc[i].shape[3] == s.model.cfg.encoder.embed_dims[i],
                 "%s: stage %d output shape", kname, i + 1);
    TEST_CHECK(all_finite(cluda_f32(&out.logits), numel4(&out.logits)) &&
                   all_finite(cluda_f32(&out.fused), numel4(&out.fused)),
               "%s: outputs are finite", kname);
    char *lo = acts, *hi = (char *)acts + s.plan.activation_bytes;
    TEST_CHECK((char *)out.logits.data >= lo && (char *)out.logits.data < hi,
               "%s: output views point into acts", kname);
  }
  TEST_CHECK(ctx.scratch->used == 0 && ctx.scratch->peak <= s.plan.scratch_bytes,
             "%s: forward within the planned scratch", kname);
  free(x);
  free(acts);
  test_context_free(&ctx);
  seg_free(&s);
}

/* ---- one forward + backward with everything a test looks at ---- */

typedef struct run_out {
  float *logits, *fused, *grads, *dx, *state;
  int64_t n_logits, n_fused;
} run_out;

typedef struct cotangents {
  float *dlogits, *dfused, *denc[4]; /* NULL: not given */
} cotangents;

static void run_free(run_out *r) {
  free(r->logits);
  free(r->fused);
  free(r->grads);
  free(r->dx);
  free(r->state);
  memset(r, 0, sizeof *r);
}

/* Random cotangents for every output of s (each kept only if its bit is set in `which`:
 * 1 logits, 2 fused, 4 denc). */
static cotangents make_cotangents(const seg *s, int which, uint32_t seed) {
  cotangents c;
  memset(&c, 0, sizeof c);
  const int64_t px = (int64_t)s->b * s->plan.head.out_h * s->plan.head.out_w;
  if (which & 1) {
    const int64_t n = px * s->model.cfg.head.num_classes;
    c.dlogits = test_alloc_f32(n);
    test_fill_uniform(c.dlogits, n, -1.0f, 1.0f, seed, 1);
  }
  if (which & 2) {
    const int64_t n = px * s->model.cfg.head.channels;
    c.dfused = test_alloc_f32(n);
    test_fill_uniform(c.dfused, n, -1.0f, 1.0f, seed, 2);
  }
  if (which & 4)
    for (int i = 0; i < STAGES; i++) {
      const int64_t n = (int64_t)s->b * s->plan.encoder.out_h[i] * s->plan.encoder.out_w[i] *
                        s->model.cfg.encoder.embed_dims[i];
      c.denc[i] = test_alloc_f32(n);
      test_fill_uniform(c.denc[i], n, -1.0f, 1.0f, seed, 3 + i);
    }
  return c;
}

static void cotangents_free(cotangents *c) {
  free(c->dlogits);
  free(c->dfused);
  for (int i = 0; i < STAGES; i++)
    free(c->denc[i]);
}

/* Forward and backward of s on x with params p (state copied from s->state) into r. */
static void run_once(const seg *s, const float *p, const float *x, const cluda_run_mode *mode,
                     const cotangents *c, run_out *r) {
  cluda_ctx ctx = test_cpu_context(s->plan.scratch_bytes);
  void *acts = test_alloc(s->plan.activation_bytes);
  const int64_t nx = (int64_t)s->b * s->h * s->w * 3;
  memset(r, 0, sizeof *r);
  r->state = test_alloc_f32((int64_t)s->model.state.total);
  memcpy(r->state, s->state, s->model.state.total * sizeof(float));
  r->grads = test_alloc_f32((int64_t)s->model.params.total);
  memset(r->grads, 0, s->model.params.total * sizeof(float));
  r->dx = test_alloc_f32(nx);
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, (float *)x, s->b, s->h, s->w, 3);
  cluda_tensor tdx = cluda_tensor_4d(CLUDA_F32, r->dx, s->b, s->h, s->w, 3);
  cluda_segmentor_outputs out;
  if (TEST_OK(
          cluda_segmentor_forward(&ctx, &s->model, &s->plan, p, r->state, mode, &tx, acts, &out))) {
    r->n_logits = numel4(&out.logits);
    r->n_fused = numel4(&out.fused);
    r->logits = test_alloc_f32(r->n_logits);
    r->fused = test_alloc_f32(r->n_fused);
    memcpy(r->logits, out.logits.data, (size_t)r->n_logits * sizeof(float));
    memcpy(r->fused, out.fused.data, (size_t)r->n_fused * sizeof(float));
    if (c) {
      cluda_tensor dl = out.logits, df = out.fused, de[4];
      const cluda_tensor *denc[4];
      dl.data = c->dlogits;
      df.data = c->dfused;
      for (int i = 0; i < STAGES; i++) {
        de[i] = out.enc[i];
        de[i].data = c->denc[i];
        denc[i] = c->denc[i] ? &de[i] : NULL;
      }
      TEST_OK(cluda_segmentor_backward(&ctx, &s->model, &s->plan, p, r->grads, r->state, mode, &tx,
                                       acts, c->dlogits ? &dl : NULL, c->dfused ? &df : NULL, denc,
                                       &tdx));
      TEST_CHECK(ctx.scratch->used == 0 && ctx.scratch->peak <= s->plan.scratch_bytes,
                 "segmentor backward within the planned scratch (%zu of %zu)", ctx.scratch->peak,
                 s->plan.scratch_bytes);
    }
  }
  free(acts);
  test_context_free(&ctx);
}

static int same(const float *a, const float *b, size_t n) {
  return a && b && memcmp(a, b, n * sizeof(float)) == 0;
}

/* ---- determinism across thread counts ---- */

static void check_threads(void) {
  seg s;
  seg_create(&s, "tiny", CLUDA_HEAD_DAFORMER, 2, 50, 70, 4);
  const int64_t nx = (int64_t)2 * 50 * 70 * 3;
  float *x = test_alloc_f32(nx);
  test_fill_uniform(x, nx, -2.0f, 2.0f, 4, 0);
  cotangents c = make_cotangents(&s, 7, 4);
  cluda_run_mode mode = {1, 1, cluda_rng_make_key(4, 0, 1, CLUDA_RNG_DROPOUT, 0), 0};
  run_out r[2];
  for (int t = 0; t < 2; t++) {
    omp_set_num_threads(t + 1);
    run_once(&s, s.params, x, &mode, &c, &r[t]);
  }
  omp_set_num_threads(2);
  const size_t np = s.model.params.total, ns = s.model.state.total;
  TEST_CHECK(same(r[0].logits, r[1].logits, (size_t)r[0].n_logits) &&
                 same(r[0].fused, r[1].fused, (size_t)r[0].n_fused) &&
                 same(r[0].state, r[1].state, ns),
             "segmentor forward (logits, fused, running statistics) bit-identical on 1 and 2 "
             "threads");
  TEST_CHECK(same(r[0].grads, r[1].grads, np) && same(r[0].dx, r[1].dx, (size_t)nx),
             "segmentor backward (grads, dx) bit-identical on 1 and 2 threads");
  TEST_CHECK(all_finite(r[0].grads, (int64_t)np) && all_finite(r[0].dx, nx),
             "segmentor gradients are finite");
  run_free(&r[0]);
  run_free(&r[1]);
  cotangents_free(&c);
  free(x);
  seg_free(&s);
}

/* ---- the backward against the parts composed by hand ---- */

/* grads and dx of: encoder forward, head forward on its outputs, head backward (when dlogits
 * or dfused), stage gradients + denc, encoder backward. */
static void compose_by_hand(const seg *s, const float *x, const cluda_run_mode *mode,
                            const cotangents *c, float *grads, float *dx, float *state) {
  const cluda_segmentor *m = &s->model;
  const cluda_segmentor_plan *pl = &s->plan;
  cluda_ctx ctx = test_cpu_context(pl->scratch_bytes);
  void *enc_acts = test_alloc(pl->encoder.activation_bytes);
  void *head_acts = test_alloc(pl->head.activation_bytes);
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, (float *)x, s->b, s->h, s->w, 3);
  cluda_tensor tdx = cluda_tensor_4d(CLUDA_F32, dx, s->b, s->h, s->w, 3);
  cluda_tensor enc[4], fused, logits, dstage[4];
  cluda_tensor *dstage_ptr[4];
  const cluda_tensor *dout[4];
  float *dstage_data[4] = {NULL, NULL, NULL, NULL};
  TEST_OK(cluda_mit_forward(&ctx, &m->encoder, &pl->encoder, &m->params, s->params, mode, &tx,
                            enc_acts, enc));
  TEST_OK(cluda_head_forward(&ctx, &m->head, &pl->head, &m->params, s->params, &m->state, state,
                             mode, enc, head_acts, &fused, &logits));
  const int head = c->dlogits || c->dfused;
  for (int i = 0; i < STAGES; i++) {
    dstage_data[i] = test_alloc_f32(numel4(&enc[i]));
    dstage[i] = enc[i];
    dstage[i].data = dstage_data[i];
    dstage_ptr[i] = &dstage[i];
  }
  if (head) {
    cluda_tensor dl = logits, df = fused;
    dl.data = c->dlogits;
    df.data = c->dfused;
    TEST_OK(cluda_head_backward(&ctx, &m->head, &pl->head, &m->params, s->params, grads, &m->state,
                                state, mode, enc, head_acts, c->dlogits ? &dl : NULL,
                                c->dfused ? &df : NULL, dstage_ptr));
  }
  cluda_tensor de[4];
  for (int i = 0; i < STAGES; i++) {
    de[i] = enc[i];
    de[i].data = c->denc[i];
    if (head) {
      if (c->denc[i]) TEST_OK(cluda_axpy(&ctx, 1.0f, &de[i], &dstage[i]));
      dout[i] = &dstage[i];
    } else {
      dout[i] = c->denc[i] ? &de[i] : NULL;
    }
  }
  TEST_OK(cluda_mit_backward(&ctx, &m->encoder, &pl->encoder, &m->params, s->params, grads, mode,
                             &tx, enc_acts, dout, &tdx));
  for (int i = 0; i < STAGES; i++)
    free(dstage_data[i]);
  free(enc_acts);
  free(head_acts);
  test_context_free(&ctx);
}

static void check_composition(int which, const char *what) {
  seg s;
  seg_create(&s, "tiny", CLUDA_HEAD_DAFORMER, 2, 50, 70, 5);
  const int64_t nx = (int64_t)2 * 50 * 70 * 3;
  const size_t np = s.model.params.total;
  float *x = test_alloc_f32(nx);
  test_fill_uniform(x, nx, -2.0f, 2.0f, 5, 0);
  cotangents c = make_cotangents(&s, which, 5);
  cluda_run_mode mode = {1, 1, cluda_rng_make_key(5, 0, 2, CLUDA_RNG_DROPOUT, 0), 0};
  run_out r;
  run_once(&s, s.params, x, &mode, &c, &r);
  float *grads = test_alloc_f32((int64_t)np), *dx = test_alloc_f32(nx);
  float *state = test_alloc_f32((int64_t)s.model.state.total);
  memset(grads, 0, np * sizeof(float));
  memcpy(state, s.state, s.model.state.total * sizeof(float));
  compose_by_hand(&s, x, &mode, &c, grads, dx, state);
  TEST_CHECK(same(r.grads, grads, np) && same(r.dx, dx, (size_t)nx),
             "segmentor backward (%s) equals encoder and head composed by hand, bit for bit", what);
  /* the head's gradients are untouched when nothing flows through the head */
  if (!(which & 3)) {
    const int first = s.model.head.first_param;
    int zero = 1;
    for (size_t i = s.model.params.items[first].offset; i < np; i++)
      zero &= r.grads[i] == 0.0f;
    TEST_CHECK(zero, "segmentor backward (%s): head gradients stay zero", what);
  }
  free(grads);
  free(dx);
  free(state);
  run_free(&r);
  cotangents_free(&c);
  free(x);
  seg_free(&s);
}

/* ---- finite differences of the whole network ---- */

typedef struct fd_ctx {
  const seg *s;
  const cluda_run_mode *mode;
  const cotangents *c;
  cluda_ctx ctx;
  void *acts;
  float *state;
} fd_ctx;

/* L = <dlogits, logits> + <dfused, fused> + sum_i <denc[i], enc[i]>, accumulated in double. */
static double fd_loss(fd_ctx *f, const float *p, const float *x) {
  const seg *s = f->s;
  memcpy(f->state, s->state, s->model.state.total * sizeof(float));
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, (float *)x, s->b, s->h, s->w, 3);
  cluda_segmentor_outputs out;
  if (!TEST_OK(cluda_segmentor_forward(&f->ctx, &s->model, &s->plan, p, f->state, f->mode, &tx,
                                       f->acts, &out)))
    return NAN;
  double l = 0.0;
  const float *lg = cluda_f32(&out.logits), *fu = cluda_f32(&out.fused);
  for (int64_t i = 0; f->c->dlogits && i < numel4(&out.logits); i++)
    l += (double)f->c->dlogits[i] * lg[i];
  for (int64_t i = 0; f->c->dfused && i < numel4(&out.fused); i++)
    l += (double)f->c->dfused[i] * fu[i];
  for (int k = 0; k < STAGES; k++) {
    const float *e = cluda_f32(&out.enc[k]);
    for (int64_t i = 0; f->c->denc[k] && i < numel4(&out.enc[k]); i++)
      l += (double)f->c->denc[k][i] * e[i];
  }
  return l;
}

/* Perturbs v[0, n) by +-h u (u_i = sign(g_i) times a uniform draw in [0, 1), so the predicted
 * change is a sum of non-negative terms well above the float noise of the loss, and a lost,
 * doubled or misrouted gradient term still shows; u = e_i when only > 0), returns the
 * measured loss change and, in *predicted, the change the gradient g predicts for the float
 * perturbation really applied. */
static double fd_perturb(fd_ctx *f, float *v, int64_t n, const float *g, const float *p,
                         const float *x, float h, int64_t only, uint32_t seed, double *predicted) {
  float *keep = test_alloc_f32(n), *u = test_alloc_f32(n);
  memcpy(keep, v, (size_t)n * sizeof(float));
  test_fill_uniform(u, n, 0.0f, 1.0f, seed, 50);
  for (int64_t i = 0; i < n; i++)
    if (g[i] < 0.0f) u[i] = -u[i];
  if (only >= 0)
    for (int64_t i = 0; i < n; i++)
      u[i] = i == only ? 1.0f : 0.0f;
  double pred = 0.0;
  for (int64_t i = 0; i < n; i++)
    v[i] = keep[i] + h * u[i];
  double plus = fd_loss(f, p, x);
  for (int64_t i = 0; i < n; i++) {
    pred += (double)g[i] * ((double)v[i] - (double)(keep[i] - h * u[i]));
    v[i] = keep[i] - h * u[i];
  }
  double minus = fd_loss(f, p, x);
  memcpy(v, keep, (size_t)n * sizeof(float));
  free(keep);
  free(u);
  *predicted = pred;
  return plus - minus;
}

/* Index of the largest |g[i]| other than `skip`. */
static int64_t top_gradient(const float *g, int64_t n, int64_t skip) {
  int64_t best = skip == 0 ? 1 : 0;
  for (int64_t i = 0; i < n; i++)
    if (i != skip && fabsf(g[i]) > fabsf(g[best])) best = i;
  return best;
}

/* One directional derivative over all of v and single-element ones at the two largest
 * gradients: a perturbation of one element crosses far fewer ReLU kinks. */
static int fd_checks(fd_ctx *f, float *v, int64_t n, const float *g, const float *p, const float *x,
                     uint32_t seed, float *got, double *want) {
  double pred;
  int k = 0;
  want[k] = fd_perturb(f, v, n, g, p, x, 1e-4f, -1, seed, &pred);
  got[k++] = (float)pred;
  int64_t first = top_gradient(g, n, -1);
  for (int j = 0; j < 2 && n > j; j++) {
    const int64_t i = j == 0 ? first : top_gradient(g, n, first);
    want[k] = fd_perturb(f, v, n, g, p, x, 1e-3f, i, seed, &pred);
    got[k++] = (float)pred;
  }
  return k;
}

static void check_finite_differences(int stochastic) {
  seg s;
  seg_create(&s, "small", CLUDA_HEAD_DAFORMER, 2, 32, 40, 6);
  const int64_t nx = (int64_t)2 * 32 * 40 * 3;
  float *x = test_alloc_f32(nx);
  test_fill_uniform(x, nx, -2.0f, 2.0f, 6, 0);
  /* every output carries a cotangent: the classifier, fused and denc paths all count */
  cotangents c = make_cotangents(&s, 7, 6);
  cluda_run_mode mode = {stochastic, 1, cluda_rng_make_key(6, 0, 3, CLUDA_RNG_DROPOUT, 0), 0};
  run_out r;
  run_once(&s, s.params, x, &mode, &c, &r);

  fd_ctx f = {&s,
              &mode,
              &c,
              test_cpu_context(s.plan.scratch_bytes),
              test_alloc(s.plan.activation_bytes),
              test_alloc_f32((int64_t)s.model.state.total)};
  static const char *const names[] = {
      "backbone.patch_embed1.proj.weight",
      "backbone.block1.0.attn.sr.weight",
      "backbone.block2.0.mlp.fc1.weight",
      "backbone.block3.0.attn.proj.weight",
      "backbone.block4.0.mlp.fc2.weight",
      "backbone.norm2.weight",
      "backbone.norm4.bias",
      "decode_head.embed_layers.0.proj.weight",
      "decode_head.embed_layers.3.proj.bias",
      "decode_head.fuse_layer.aspp_modules.2.depthwise_conv.bn.weight",
      "decode_head.fuse_layer.bottleneck.conv.weight",
      "decode_head.conv_seg.weight",
  };
  enum { N_NAMES = sizeof names / sizeof names[0], CHECKS = 3 };
  float got[N_NAMES * CHECKS];
  double want[N_NAMES * CHECKS];
  char what[128];
  int n = fd_checks(&f, x, nx, r.dx, s.params, x, 100, got, want);
  snprintf(what, sizeof what, "segmentor dx vs FD (stochastic %d)", stochastic);
  test_compare(what, got, want, n, 3e-2, 2e-5);
  n = 0;
  for (int k = 0; k < N_NAMES; k++) {
    const int idx = cluda_param_table_find(&s.model.params, names[k]);
    if (!TEST_CHECK(idx >= 0, "segmentor has parameter %s", names[k])) continue;
    const cluda_param_info *in = &s.model.params.items[idx];
    n += fd_checks(&f, s.params + in->offset, (int64_t)in->count, r.grads + in->offset, s.params, x,
                   200 + k, got + n, want + n);
  }
  snprintf(what, sizeof what, "segmentor parameter gradients vs FD, %d tensors (stochastic %d)",
           N_NAMES, stochastic);
  test_compare(what, got, want, n, 3e-2, 2e-5);

  free(f.acts);
  free(f.state);
  test_context_free(&f.ctx);
  run_free(&r);
  cotangents_free(&c);
  free(x);
  seg_free(&s);
}

/* ---- student and teacher share one segmentor ---- */

static void check_shared(void) {
  seg s;
  seg_create(&s, "tiny", CLUDA_HEAD_DAFORMER, 2, 50, 70, 7);
  const cluda_segmentor *m = &s.model;
  const size_t np = m->params.total, ns = m->state.total;
  const int64_t nx = (int64_t)2 * 50 * 70 * 3;
  float *teacher = test_alloc_f32((int64_t)np), *t_state = test_alloc_f32((int64_t)ns);
  TEST_OK(cluda_segmentor_init(m, teacher, t_state, 8));
  float *x = test_alloc_f32(nx), *xt = test_alloc_f32(nx);
  test_fill_uniform(x, nx, -2.0f, 2.0f, 7, 0);
  test_fill_uniform(xt, nx, -2.0f, 2.0f, 7, 1);
  cotangents c = make_cotangents(&s, 3, 7);
  cluda_run_mode train = {1, 1, cluda_rng_make_key(7, 0, 4, CLUDA_RNG_DROPOUT, 0), 0};
  cluda_run_mode pseudo = {0, 1, train.key, 0}; /* the teacher: no dropout, batch-stat BN */

  /* the student alone */
  run_out alone;
  run_once(&s, s.params, x, &train, &c, &alone);

  /* student forward, teacher forward, student backward: separate acts and state buffers */
  cluda_ctx ctx = test_cpu_context(s.plan.scratch_bytes);
  void *acts_s = test_alloc(s.plan.activation_bytes), *acts_t = test_alloc(s.plan.activation_bytes);
  float *s_state = test_alloc_f32((int64_t)ns), *grads = test_alloc_f32((int64_t)np);
  float *dx = test_alloc_f32(nx);
  memcpy(s_state, s.state, ns * sizeof(float));
  memcpy(t_state, s.state, ns * sizeof(float));
  memset(grads, 0, np * sizeof(float));
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, 2, 50, 70, 3);
  cluda_tensor txt = cluda_tensor_4d(CLUDA_F32, xt, 2, 50, 70, 3);
  cluda_tensor tdx = cluda_tensor_4d(CLUDA_F32, dx, 2, 50, 70, 3);
  cluda_segmentor_outputs out_s, out_t;
  TEST_OK(
      cluda_segmentor_forward(&ctx, m, &s.plan, s.params, s_state, &train, &tx, acts_s, &out_s));
  TEST_OK(
      cluda_segmentor_forward(&ctx, m, &s.plan, teacher, t_state, &pseudo, &txt, acts_t, &out_t));
  cluda_tensor dl = out_s.logits, df = out_s.fused;
  dl.data = c.dlogits;
  df.data = c.dfused;
  const cluda_tensor *no_denc[4] = {NULL, NULL, NULL, NULL};
  TEST_OK(cluda_segmentor_backward(&ctx, m, &s.plan, s.params, grads, s_state, &train, &tx, acts_s,
                                   &dl, &df, no_denc, &tdx));
  TEST_CHECK(same(alone.logits, cluda_f32(&out_s.logits), (size_t)alone.n_logits) &&
                 same(alone.grads, grads, np) && same(alone.dx, dx, (size_t)nx) &&
                 same(alone.state, s_state, ns),
             "student results with a teacher forward in between equal the student alone");
  TEST_CHECK(memcmp(cluda_f32(&out_s.logits), cluda_f32(&out_t.logits),
                    (size_t)alone.n_logits * sizeof(float)) != 0 &&
                 memcmp(s_state, t_state, ns * sizeof(float)) != 0,
             "student and teacher parameters give their own logits and running statistics");
  /* the teacher's result does not depend on the student's run either */
  float *t_logits = test_alloc_f32(alone.n_logits), *t_state2 = test_alloc_f32((int64_t)ns);
  memcpy(t_logits, out_t.logits.data, (size_t)alone.n_logits * sizeof(float));
  memcpy(t_state2, s.state, ns * sizeof(float));
  TEST_OK(
      cluda_segmentor_forward(&ctx, m, &s.plan, teacher, t_state2, &pseudo, &txt, acts_t, &out_t));
  TEST_CHECK(same(t_logits, cluda_f32(&out_t.logits), (size_t)alone.n_logits) &&
                 same(t_state, t_state2, ns),
             "teacher results equal a teacher-only run");

  free(t_logits);
  free(t_state2);
  free(acts_s);
  free(acts_t);
  free(s_state);
  free(grads);
  free(dx);
  test_context_free(&ctx);
  run_free(&alone);
  cotangents_free(&c);
  free(teacher);
  free(t_state);
  free(x);
  free(xt);
  seg_free(&s);
}

/* ---- argument validation ---- */

static void check_validation(void) {
  seg s;
  seg_create(&s, "small", CLUDA_HEAD_DAFORMER, 2, 32, 40, 9);
  const cluda_segmentor *m = &s.model;
  cluda_ctx ctx = test_cpu_context(s.plan.scratch_bytes);
  void *acts = test_alloc(s.plan.activation_bytes);
  const int64_t nx = (int64_t)2 * 32 * 40 * 3;
  float *x = test_alloc_f32(nx), *grads = test_alloc_f32((int64_t)m->params.total);
  test_fill_uniform(x, nx, -1.0f, 1.0f, 9, 0);
  cluda_tensor tx = cluda_tensor_4d(CLUDA_F32, x, 2, 32, 40, 3);
  cluda_run_mode mode = {0, 0, cluda_rng_make_key(9, 0, 0, CLUDA_RNG_DROPOUT, 0), 0};
  cluda_segmentor_outputs out;
  cluda_segmentor_plan plan;
  TEST_FAILS(cluda_segmentor_plan_for(m, 0, 32, 40, &plan), CLUDA_ERR_SHAPE, "batch");
  TEST_FAILS(cluda_segmentor_plan_for(NULL, 2, 32, 40, &plan), CLUDA_ERR_ARG, "model");
  cluda_tensor bad_x = cluda_tensor_4d(CLUDA_F32, x, 2, 40, 32, 3);
  TEST_FAILS(
      cluda_segmentor_forward(&ctx, m, &s.plan, s.params, s.state, &mode, &bad_x, acts, &out),
      CLUDA_ERR_SHAPE, "x");
  cluda_segmentor_plan small = s.plan;
  small.activation_bytes -= 64;
  TEST_FAILS(cluda_segmentor_forward(&ctx, m, &small, s.params, s.state, &mode, &tx, acts, &out),
             CLUDA_ERR_ARG, "activation_bytes");
  TEST_FAILS(cluda_segmentor_forward(&ctx, m, &s.plan, s.params, s.state, &mode, &tx, NULL, &out),
             CLUDA_ERR_ARG, "acts");
  TEST_OK(cluda_segmentor_forward(&ctx, m, &s.plan, s.params, s.state, &mode, &tx, acts, &out));
  const cluda_tensor *none[4] = {NULL, NULL, NULL, NULL};
  TEST_FAILS(cluda_segmentor_backward(&ctx, m, &s.plan, s.params, grads, s.state, &mode, &tx, acts,
                                      NULL, NULL, none, NULL),
             CLUDA_ERR_ARG, "all NULL");
  cluda_tensor bad = out.enc[1];
  bad.shape[3] += 1;
  const cluda_tensor *denc[4] = {NULL, &bad, NULL, NULL};
  TEST_FAILS(cluda_segmentor_backward(&ctx, m, &s.plan, s.params, grads, s.state, &mode, &tx, acts,
                                      &out.logits, NULL, denc, NULL),
             CLUDA_ERR_SHAPE, "denc[1]");
  cluda_ctx tight = test_cpu_context(256);
  TEST_FAILS(cluda_segmentor_backward(&tight, m, &s.plan, s.params, grads, s.state, &mode, &tx,
                                      acts, &out.logits, NULL, NULL, NULL),
             CLUDA_ERR_ALLOC, "segmentor_backward");
  TEST_CHECK(tight.scratch->used == 0, "a failed backward releases its scratch");
  test_context_free(&tight);
  free(x);
  free(grads);
  free(acts);
  test_context_free(&ctx);
  seg_free(&s);
}

int main(void) {
  check_presets();
  check_shapes(CLUDA_HEAD_DAFORMER);
  check_shapes(CLUDA_HEAD_SEGFORMER);
  check_threads();
  check_composition(3, "dlogits + dfused");
  check_composition(7, "dlogits + dfused + denc");
  check_composition(4, "denc only");
  check_finite_differences(0);
  check_finite_differences(1);
  check_shared();
  check_validation();
  return test_finish("test_segmentor");
}

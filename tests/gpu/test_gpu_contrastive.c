/* The streamed contrastive loss (include/cluda/contrastive.h): CUDA against the CPU backend on
 * the same random L2-normalised rows. Every option combination: anchors = contrast set
 * (self_offset 0), a block of it (self_offset > 0, a "global" mean_count) or disjoint
 * (self_offset -1) x pairs SEPARATE / ALL / STUFF_ONLY x ref_ignore_as_class x weighting none
 * (anchor weights NULL) / anchor weights / ref_pair_weight with contrast weights / ref_pair_weight
 * with contrast weights NULL x ref_half x tau 1 and 0.1, with odd Ma, Mc, D and tile_cols that
 * do not divide Mc; edge cases (Ma = 1 against 23 rows in tiles of one column, Ma = 0, Mc = 0,
 * every label ignored, a single class: no negatives, anchors without positives, the default
 * tile of 512 over 2100 rows, D = 64). Compared: the loss, stats [Ma, 4], d_anchors,
 * d_contrast, d_anchor_weights and d_contrast_weights, with the outputs poisoned (NaN) before
 * each GPU run and the GPU given exactly cluda_contrastive_scratch_bytes of free scratch.
 * The GPU backward reads the CPU's stats, so both sides see the same inputs. Each case also
 * runs twice on the GPU and must give the same bits; subsets of the optional gradients (NULL
 * outputs) are checked; bad label values fail with the CPU's message before anything is
 * written.
 *
 * Tolerances. The similarity GEMM sums D products in another order (cuBLAS vs OpenBLAS) and
 * expf differs in the last bit, so a score s = <a, c> / tau differs by ~ sqrt(D) eps |s|
 * (up to ~5e-6 at tau 0.1); the row statistics are double sums of exponentials and softplus /
 * sigmoid terms of those scores:
 *  - loss: atol 1e-4 x (the loss with every term taken in absolute value: weights may be
 *    negative and cancel) + 1e-6;
 *  - stats: log S rtol 1e-5, atol 1e-5 / tau (or both -inf); |P_i| exactly; C_i and T_i
 *    rtol 1e-4, atol 1e-5 |P_i| / tau + 1e-6 (|P_i| terms, each off by |v_p| <= 1.5 times the
 *    score error);
 *  - d_anchors, d_contrast, d_contrast_weights: rtol 2e-3, atol 2e-4 max|cpu| (sums over the
 *    tiles / rows with cancellation; the scale is the output's), and the relative L2 error
 *    ||gpu - cpu|| / ||cpu|| <= 2e-4 (fp32: ~1e-6..1e-5 here; TF32 would be ~1e-3 / tau);
 *  - d_anchor_weights = g T_i / |P_i|: rtol 1e-4, atol 1e-4 max|cpu| (T_i may cancel). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cl_problems.h"
#include "cluda/contrastive.h"
#include "gpu_testing.h"

/* Outputs of one run (host copies). */
typedef struct cl_out {
  float loss;
  float *stats, *da, *dc, *du, *dv;
} cl_out;

static void alloc_out(const cl_case *c, cl_out *o) {
  o->loss = 0.0f;
  o->stats = test_alloc_f32((int64_t)c->ma * CLUDA_CL_STATS_COLS + 1);
  o->da = test_alloc_f32((int64_t)c->ma * c->d + 1);
  o->dc = test_alloc_f32((int64_t)c->mc * c->d + 1);
  o->du = test_alloc_f32(c->ma + 1);
  o->dv = test_alloc_f32(c->mc + 1);
}

static void free_out(cl_out *o) {
  free(o->stats);
  free(o->da);
  free(o->dc);
  free(o->du);
  free(o->dv);
}

/* Which optional outputs a backward call asks for. */
enum { OUT_DA = 1, OUT_DC = 2, OUT_DU = 4, OUT_DV = 8, OUT_ALL = 15 };

static void run_cpu(const cl_case *c, const cl_data *x, float r, cl_out *o) {
  cluda_contrastive_params p = make_params(c, x);
  cluda_ctx ctx = test_cpu_context(cluda_contrastive_scratch_bytes(&p, c->ma, c->mc));
  cluda_tensor ta = cluda_tensor_2d(CLUDA_F32, x->a, c->ma, c->d);
  cluda_tensor tc = cluda_tensor_2d(CLUDA_F32, x->c, c->mc, c->d);
  cluda_tensor tla = cluda_tensor_1d(CLUDA_U8, x->la, c->ma);
  cluda_tensor tlc = cluda_tensor_1d(CLUDA_U8, x->lc, c->mc);
  cluda_tensor tu = cluda_tensor_1d(CLUDA_F32, x->u, c->ma);
  cluda_tensor tv = cluda_tensor_1d(CLUDA_F32, x->v, c->mc);
  cluda_tensor tloss = cluda_tensor_1d(CLUDA_F32, &o->loss, 1);
  cluda_tensor tr = cluda_tensor_1d(CLUDA_F32, &r, 1);
  cluda_tensor tst = cluda_tensor_2d(CLUDA_F32, o->stats, c->ma, CLUDA_CL_STATS_COLS);
  cluda_tensor tda = cluda_tensor_2d(CLUDA_F32, o->da, c->ma, c->d);
  cluda_tensor tdc = cluda_tensor_2d(CLUDA_F32, o->dc, c->mc, c->d);
  cluda_tensor tdu = cluda_tensor_1d(CLUDA_F32, o->du, c->ma);
  cluda_tensor tdv = cluda_tensor_1d(CLUDA_F32, o->dv, c->mc);
  const cluda_tensor *aw = c->weighting != W_NONE ? &tu : NULL;
  const cluda_tensor *cw = c->weighting == W_PAIR ? &tv : NULL;
  TEST_OK(cluda_contrastive_forward(&ctx, &p, &ta, &tla, aw, &tc, &tlc, cw, &tloss, &tst));
  TEST_OK(cluda_contrastive_backward(&ctx, &p, &ta, &tla, aw, &tc, &tlc, cw, &tst, &tr, &tda, &tdc,
                                     &tdu, p.ref_pair_weight ? &tdv : NULL));
  test_context_free(&ctx);
}

/* Device copies of one case's inputs and outputs. */
typedef struct gpu_case {
  cluda_tensor a, c, la, lc, u, v, loss, dloss, stats, da, dc, du, dv;
} gpu_case;

static gpu_case gpu_case_make(cluda_ctx *gpu, const cl_case *c, const cl_data *x, float r) {
  gpu_case g;
  cluda_tensor ha = cluda_tensor_2d(CLUDA_F32, x->a, c->ma, c->d);
  cluda_tensor hc = cluda_tensor_2d(CLUDA_F32, x->c, c->mc, c->d);
  cluda_tensor hla = cluda_tensor_1d(CLUDA_U8, x->la, c->ma);
  cluda_tensor hlc = cluda_tensor_1d(CLUDA_U8, x->lc, c->mc);
  cluda_tensor hu = cluda_tensor_1d(CLUDA_F32, x->u, c->ma);
  cluda_tensor hv = cluda_tensor_1d(CLUDA_F32, x->v, c->mc);
  cluda_tensor hr = cluda_tensor_1d(CLUDA_F32, &r, 1);
  g.a = gpu_copy_of(gpu, &ha);
  g.c = gpu_copy_of(gpu, &hc);
  g.la = gpu_copy_of(gpu, &hla);
  g.lc = gpu_copy_of(gpu, &hlc);
  g.u = gpu_copy_of(gpu, &hu);
  g.v = gpu_copy_of(gpu, &hv);
  g.dloss = gpu_copy_of(gpu, &hr);
  cluda_tensor shape_loss = cluda_tensor_1d(CLUDA_F32, NULL, 1);
  cluda_tensor shape_st = cluda_tensor_2d(CLUDA_F32, NULL, c->ma, CLUDA_CL_STATS_COLS);
  g.loss = gpu_tensor_like(&shape_loss);
  g.stats = gpu_tensor_like(&shape_st);
  g.da = gpu_tensor_like(&ha);
  g.dc = gpu_tensor_like(&hc);
  g.du = gpu_tensor_like(&hu);
  g.dv = gpu_tensor_like(&hv);
  return g;
}

static void gpu_case_free(gpu_case *g) {
  cluda_tensor *all[] = {&g->a,     &g->c,     &g->la, &g->lc, &g->u,  &g->v, &g->loss,
                         &g->dloss, &g->stats, &g->da, &g->dc, &g->du, &g->dv};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    gpu_tensor_free(all[i]);
}

/* Leaves exactly `need` bytes of the context's scratch free; returns the mark to release. */
static size_t hold_scratch(cluda_ctx *gpu, size_t need) {
  cluda_arena *ar = gpu->scratch;
  const size_t mark = cluda_arena_mark(ar), free_bytes = ar->capacity - ar->used;
  if (free_bytes > need) {
    void *hold = NULL;
    TEST_OK(cluda_arena_alloc(ar, free_bytes - need, "test: scratch held back", &hold));
  }
  return mark;
}

/* Forward, then (stats replaced by `cpu_stats` when not NULL) the backward with the outputs
 * in `outputs`; everything downloaded into o. Outputs are poisoned first. */
static void run_gpu(cluda_ctx *gpu, const cl_case *c, const cl_data *x, gpu_case *g,
                    const float *cpu_stats, int outputs, cl_out *o) {
  cluda_contrastive_params p = make_params(c, x);
  const cluda_tensor *aw = c->weighting != W_NONE ? &g->u : NULL;
  const cluda_tensor *cw = c->weighting == W_PAIR ? &g->v : NULL;
  cluda_tensor *out[] = {&g->loss, &g->stats, &g->da, &g->dc, &g->du, &g->dv};
  for (size_t i = 0; i < sizeof out / sizeof out[0]; i++)
    gpu_poison(gpu, out[i]);
  const size_t mark = hold_scratch(gpu, cluda_contrastive_scratch_bytes(&p, c->ma, c->mc));
  const size_t used = gpu->scratch->used;
  TEST_OK(cluda_contrastive_forward(gpu, &p, &g->a, &g->la, aw, &g->c, &g->lc, cw, &g->loss,
                                    &g->stats));
  TEST_CHECK(gpu->scratch->used == used, "contrastive_forward released its scratch");
  TEST_OK(cluda_cuda_download(gpu, &o->loss, g->loss.data, sizeof(float)));
  TEST_OK(cluda_cuda_download(gpu, o->stats, g->stats.data, cluda_tensor_bytes(&g->stats)));
  if (cpu_stats) {
    cluda_tensor hs = cluda_tensor_2d(CLUDA_F32, (void *)cpu_stats, c->ma, CLUDA_CL_STATS_COLS);
    gpu_upload(gpu, &g->stats, &hs);
  }
  TEST_OK(cluda_contrastive_backward(
      gpu, &p, &g->a, &g->la, aw, &g->c, &g->lc, cw, &g->stats, &g->dloss,
      outputs & OUT_DA ? &g->da : NULL, outputs & OUT_DC ? &g->dc : NULL,
      outputs & OUT_DU ? &g->du : NULL, (outputs & OUT_DV) && p.ref_pair_weight ? &g->dv : NULL));
  TEST_CHECK(gpu->scratch->used == used, "contrastive_backward released its scratch");
  cluda_arena_release(gpu->scratch, mark);
  TEST_OK(cluda_cuda_download(gpu, o->da, g->da.data, cluda_tensor_bytes(&g->da)));
  TEST_OK(cluda_cuda_download(gpu, o->dc, g->dc.data, cluda_tensor_bytes(&g->dc)));
  TEST_OK(cluda_cuda_download(gpu, o->du, g->du.data, cluda_tensor_bytes(&g->du)));
  TEST_OK(cluda_cuda_download(gpu, o->dv, g->dv.data, cluda_tensor_bytes(&g->dv)));
}

static double max_abs(const float *x, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; i++)
    m = fmax(m, fabs((double)x[i]));
  return m;
}

/* Elementwise with atol = atol_frac max|want| (+ a floor), then the relative L2 bound. */
static void compare_grad(const char *what, const float *got, const float *want, int64_t n,
                         double rtol, double atol_frac, double rel_l2_max) {
  if (n == 0) return;
  test_compare_f32(what, got, want, n, rtol, atol_frac * max_abs(want, n) + 1e-12);
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; i++) {
    const double e = (double)got[i] - (double)want[i];
    num += e * e;
    den += (double)want[i] * want[i];
  }
  const double rel = den > 0.0 ? sqrt(num / den) : sqrt(num);
  if (rel_l2_max > 0.0)
    TEST_CHECK(rel <= rel_l2_max, "%s: relative L2 error %.3g > %.3g", what, rel, rel_l2_max);
}

/* stats [ma, 4] with the per-column rules of the header comment. */
static void compare_stats(const char *what, const float *got, const float *want, int ma,
                          float tau) {
  int bad = 0, worst = -1;
  for (int i = 0; i < ma && bad < 1000000; i++) {
    const float *g = got + (size_t)i * 4, *w = want + (size_t)i * 4;
    int ok;
    if (isinf(w[0]) || isinf(g[0]))
      ok = g[0] == w[0];
    else
      ok = fabs((double)g[0] - w[0]) <= 1e-5 / tau + 1e-5 * fabs((double)w[0]);
    ok = ok && g[1] == w[1];
    const double atol = 1e-5 * (double)w[1] / tau + 1e-6; /* |v_p| <= 1.5 */
    for (int k = 2; k < 4; k++)
      ok = ok && isfinite(g[k]) && fabs((double)g[k] - w[k]) <= atol + 1e-4 * fabs((double)w[k]);
    if (!ok) {
      if (worst < 0) worst = i;
      bad++;
    }
  }
  if (worst < 0) {
    TEST_CHECK(1, "%s", what);
    return;
  }
  const float *g = got + (size_t)worst * 4, *w = want + (size_t)worst * 4;
  TEST_CHECK(0,
             "%s: %d of %d rows differ; first row %d: got (%.9g %.9g %.9g %.9g) want (%.9g %.9g "
             "%.9g %.9g)",
             what, bad, ma, worst, (double)g[0], (double)g[1], (double)g[2], (double)g[3],
             (double)w[0], (double)w[1], (double)w[2], (double)w[3]);
}

static void case_name(const cl_case *c, char *buf, size_t n) {
  snprintf(buf, n, "%s Ma=%d Mc=%d D=%d pairs=%s ign=%d w=%s half=%d tau=%g tile=%d mc=%lld",
           rel_name[c->rel], c->ma, c->mc, c->d, pairs_name[c->pairs], c->ignore_as_class,
           weighting_name[c->weighting], c->half, (double)c->tau, c->tile_cols,
           (long long)c->mean_count);
}

/* CPU vs GPU for one case (all outputs, twice for determinism), plus the NULL-output
 * subsets when `subsets`. */
static void check_case(cluda_ctx *gpu, const cl_case *c, uint64_t seed, int subsets) {
  char name[200], what[320];
  case_name(c, name, sizeof name);
  const float r = 0.9f;
  cl_data x = make_data(c, seed, -0.5f, 1.5f);
  cl_out want, got[2];
  alloc_out(c, &want);
  run_cpu(c, &x, r, &want);
  gpu_case g = gpu_case_make(gpu, c, &x, r);
  const int64_t nda = (int64_t)c->ma * c->d, ndc = (int64_t)c->mc * c->d;
  const int pair = c->weighting >= W_PAIR;
  for (int run = 0; run < 2; run++) {
    alloc_out(c, &got[run]);
    run_gpu(gpu, c, &x, &g, want.stats, OUT_ALL, &got[run]);
  }
  cl_out *o = &got[0];
  /* the loss's own scale: weights may be negative, so the sum can cancel */
  double loss_abs = 0.0;
  for (int i = 0; i < c->ma; i++) {
    const float *st = want.stats + (size_t)i * 4;
    if (st[1] > 0.0f)
      loss_abs +=
          fabs(c->weighting != W_NONE ? (double)x.u[i] : 1.0) * fabs((double)st[3]) / (double)st[1];
  }
  loss_abs *= 0.7 * (c->half ? 0.5 : 1.0) / (double)(c->mean_count > 0 ? c->mean_count : c->ma);
  snprintf(what, sizeof what, "loss [%s]", name);
  TEST_CHECK(fabs((double)o->loss - want.loss) <= 1e-4 * loss_abs + 1e-6, "%s: got %.9g want %.9g",
             what, (double)o->loss, (double)want.loss);
  snprintf(what, sizeof what, "stats [%s]", name);
  compare_stats(what, o->stats, want.stats, c->ma, c->tau);
  snprintf(what, sizeof what, "d_anchors [%s]", name);
  compare_grad(what, o->da, want.da, nda, 2e-3, 2e-4, 2e-4);
  snprintf(what, sizeof what, "d_contrast [%s]", name);
  compare_grad(what, o->dc, want.dc, ndc, 2e-3, 2e-4, 2e-4);
  snprintf(what, sizeof what, "d_anchor_weights [%s]", name);
  compare_grad(what, o->du, want.du, c->ma, 1e-4, 1e-4, 0.0);
  if (pair) {
    snprintf(what, sizeof what, "d_contrast_weights [%s]", name);
    compare_grad(what, o->dv, want.dv, c->mc, 2e-3, 2e-4, 2e-4);
  }
  /* determinism: the second run gives the same bits */
  int same = memcmp(&got[0].loss, &got[1].loss, sizeof(float)) == 0 &&
             memcmp(got[0].stats, got[1].stats, sizeof(float) * (size_t)c->ma * 4) == 0 &&
             memcmp(got[0].da, got[1].da, sizeof(float) * (size_t)nda) == 0 &&
             memcmp(got[0].dc, got[1].dc, sizeof(float) * (size_t)ndc) == 0 &&
             memcmp(got[0].du, got[1].du, sizeof(float) * (size_t)c->ma) == 0 &&
             (!pair || memcmp(got[0].dv, got[1].dv, sizeof(float) * (size_t)c->mc) == 0);
  TEST_CHECK(same, "two GPU runs differ bitwise [%s]", name);

  if (subsets) {
    /* only d_anchors; then only d_contrast (+ d_contrast_weights): what is asked for is the
     * same as in the full run; what is not asked for stays poisoned */
    static const int masks[2] = {OUT_DA, OUT_DC | OUT_DV};
    for (int k = 0; k < 2; k++) {
      cl_out s;
      alloc_out(c, &s);
      run_gpu(gpu, c, &x, &g, want.stats, masks[k], &s);
      int ok = 1;
      if (masks[k] & OUT_DA) ok &= memcmp(s.da, o->da, sizeof(float) * (size_t)nda) == 0;
      if (masks[k] & OUT_DC) ok &= memcmp(s.dc, o->dc, sizeof(float) * (size_t)ndc) == 0;
      if ((masks[k] & OUT_DV) && pair)
        ok &= memcmp(s.dv, o->dv, sizeof(float) * (size_t)c->mc) == 0;
      int untouched = 1;
      for (int i = 0; i < c->ma; i++)
        untouched &= isnan(s.du[i]);
      if (!(masks[k] & OUT_DA))
        for (int64_t i = 0; i < nda; i++)
          untouched &= isnan(s.da[i]);
      TEST_CHECK(ok && untouched, "backward with outputs 0x%x: %s [%s]", masks[k],
                 ok ? "an output that was not asked for was written" : "results differ", name);
      free_out(&s);
    }
  }
  gpu_case_free(&g);
  free_out(&want);
  free_out(&got[0]);
  free_out(&got[1]);
  free_data(&x);
}

static void check_all_options(cluda_ctx *gpu) {
  static const int sizes[3][3] = {{37, 37, 8}, {120, 131, 12}, {200, 201, 16}};
  int n = 0;
  for (int rel = 0; rel < 3; rel++)
    for (int pairs = 0; pairs < 3; pairs++)
      for (int ign = 0; ign < 2; ign++)
        for (int wt = 0; wt < 4; wt++)
          for (int half = 0; half < 2; half++)
            for (int ti = 0; ti < 2; ti++) {
              const float tau = ti ? 0.1f : 1.0f;
              const int *s = sizes[n % 3];
              /* tile_cols 7, 64 or the default (512 > Mc: one tile) */
              const int tile = n % 3 == 0 ? 7 : n % 3 == 1 ? 64 : 0;
              cl_case m = {s[0], s[1], s[2], rel, pairs, ign, wt, half, tau, tile, 0};
              if (rel == REL_SELF) m.mc = m.ma;
              if (rel == REL_BLOCK) m.ma = s[0] / 3, m.mean_count = 2 * m.mc; /* "global" */
              if (rel == REL_DISJOINT) m.ma = s[0] / 2 + 3;
              check_case(gpu, &m, 7000 + (uint64_t)n, n % 5 == 0);
              n++;
            }
  printf("checked %d option combinations\n", n);
}

static void check_edge_cases(cluda_ctx *gpu) {
  /* one anchor against 23 rows in tiles of one column; two anchors only */
  for (int pairs = 0; pairs < 3; pairs++) {
    cl_case a = {1, 23, 4, REL_DISJOINT, pairs, 0, W_PAIR, 1, 0.2f, 1, 0};
    check_case(gpu, &a, 80 + (uint64_t)pairs, 1);
    cl_case b = {2, 2, 4, REL_SELF, pairs, 0, W_ANCHOR, 0, 0.2f, 1, 0};
    check_case(gpu, &b, 90 + (uint64_t)pairs, 1);
  }
  /* a single anchor inside a larger contrast block */
  {
    cl_case c = {1, 40, 6, REL_BLOCK, 0, 0, W_ANCHOR, 0, 0.3f, 16, 0};
    check_case(gpu, &c, 81, 1);
  }
  /* no anchors; no contrast rows (self_offset -1) */
  {
    cl_case c = {0, 9, 5, REL_DISJOINT, 1, 0, W_PAIR, 0, 0.5f, 4, 3};
    check_case(gpu, &c, 82, 1);
    cl_case e = {7, 0, 5, REL_DISJOINT, 0, 0, W_PAIR, 0, 0.5f, 0, 0};
    check_case(gpu, &e, 83, 1);
  }
  /* the default tile (512) over 2100 rows (5 tiles, the last of 52), D = 64 */
  {
    cl_case c = {700, 2100, 64, REL_BLOCK, CLUDA_CL_PAIRS_SEPARATE, 0, W_PAIR, 0, 0.1f, 0, 4200};
    check_case(gpu, &c, 84, 1);
    cl_case d = {777, 777, 64, REL_SELF, CLUDA_CL_PAIRS_ALL, 1, W_ANCHOR, 1, 0.07f, 300, 0};
    check_case(gpu, &d, 85, 0);
  }
  /* all labels ignored / one class only (no negatives) / all 255 as a class: loss 0 */
  static const char *kinds[] = {"all ignored", "one class", "all 255 as a class"};
  for (int kind = 0; kind < 3; kind++) {
    cl_case c = {30, 30, 6, REL_SELF, CLUDA_CL_PAIRS_ALL, kind == 2, W_ANCHOR, 0, 0.5f, 8, 0};
    cl_data x = make_data(&c, 86, -0.5f, 1.5f);
    memset(x.la, kind == 1 ? 3 : 255, (size_t)c.ma);
    memset(x.lc, kind == 1 ? 3 : 255, (size_t)c.mc);
    cl_out o;
    alloc_out(&c, &o);
    gpu_case g = gpu_case_make(gpu, &c, &x, 1.0f);
    run_gpu(gpu, &c, &x, &g, NULL, OUT_ALL, &o);
    TEST_CHECK(o.loss == 0.0f, "%s: GPU loss %g must be 0", kinds[kind], (double)o.loss);
    int nz = 0;
    for (int64_t i = 0; i < (int64_t)c.ma * c.d; i++)
      nz += o.da[i] != 0.0f;
    for (int64_t i = 0; i < (int64_t)c.mc * c.d; i++)
      nz += o.dc[i] != 0.0f;
    for (int i = 0; i < c.ma; i++)
      nz += o.du[i] != 0.0f;
    TEST_CHECK(nz == 0, "%s: %d nonzero GPU gradient entries", kinds[kind], nz);
    for (int i = 0; i < c.ma; i++)
      nz += o.stats[4 * i + 1] != (kind == 0 ? 0.0f : 29.0f);
    TEST_CHECK(nz == 0, "%s: |P_i| must be %d", kinds[kind], kind == 0 ? 0 : 29);
    gpu_case_free(&g);
    free_out(&o);
    free_data(&x);
  }
}

/* Bad label values fail with the CPU's message (forward and backward), before any output is
 * written; a bad shape never reaches the GPU. */
static void check_bad_inputs(cluda_ctx *gpu) {
  cl_case c = {4, 6, 3, REL_DISJOINT, 0, 0, W_ANCHOR, 0, 1.0f, 0, 0};
  cl_data x = make_data(&c, 95, -0.5f, 1.5f);
  static const uint8_t la[4] = {0, 1, 2, 255}, lc[6] = {0, 1, 2, 19, 255, 0};
  memcpy(x.la, la, sizeof la);
  memcpy(x.lc, lc, sizeof lc);
  cluda_contrastive_params p = make_params(&c, &x);
  gpu_case g = gpu_case_make(gpu, &c, &x, 1.0f);
  gpu_poison(gpu, &g.loss);
  TEST_FAILS(
      cluda_contrastive_forward(gpu, &p, &g.a, &g.la, &g.u, &g.c, &g.lc, NULL, &g.loss, &g.stats),
      CLUDA_ERR_ARG,
      "contrastive_forward: contrast_labels[3] = 19 is neither a class (< num_classes = 19) "
      "nor ignore_index 255");
  float loss_bits = 0.0f;
  TEST_OK(cluda_cuda_download(gpu, &loss_bits, g.loss.data, sizeof loss_bits));
  TEST_CHECK(isnan(loss_bits), "a failed label check writes no loss");
  /* an anchor label is reported first, as the CPU checks anchors first */
  x.la[2] = 200;
  cluda_tensor hla = cluda_tensor_1d(CLUDA_U8, x.la, c.ma);
  gpu_upload(gpu, &g.la, &hla);
  TEST_FAILS(
      cluda_contrastive_forward(gpu, &p, &g.a, &g.la, &g.u, &g.c, &g.lc, NULL, &g.loss, &g.stats),
      CLUDA_ERR_ARG, "anchor_labels[2] = 200");
  TEST_FAILS(cluda_contrastive_backward(gpu, &p, &g.a, &g.la, &g.u, &g.c, &g.lc, NULL, &g.stats,
                                        &g.dloss, &g.da, &g.dc, &g.du, NULL),
             CLUDA_ERR_ARG, "contrastive_backward: anchor_labels[2] = 200");
  cluda_tensor bad_stats = g.stats;
  bad_stats.shape[1] = 3;
  TEST_FAILS(
      cluda_contrastive_forward(gpu, &p, &g.a, &g.la, &g.u, &g.c, &g.lc, NULL, &g.loss, &bad_stats),
      CLUDA_ERR_SHAPE, "stats");
  TEST_OK(cluda_cuda_synchronize(gpu));
  gpu_case_free(&g);
  free_data(&x);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx gpu;
  gpu_test_init(argv[0], 64 << 20, &gpu);
  check_bad_inputs(&gpu);
  check_edge_cases(&gpu);
  check_all_options(&gpu);
  return gpu_test_finish(argv[0], &gpu);
}

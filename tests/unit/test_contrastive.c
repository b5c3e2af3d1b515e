/* The streamed CLUDA contrastive loss (include/cluda/contrastive.h) against two independent
 * double-precision references that materialise the whole Ma x Mc similarity matrix: the
 * paper's form (decision 5: mean over positives of -log(e^s_ip / (e^s_ip + sum_N e^s_in)))
 * and a literal transcription of the reference code (algorithm.md 6.3 steps 3-8, row max over
 * ALL columns, -sum_j P_ij l_ij G_ij / max(1, |P_i|)). Every option combination (pairs x
 * ignore handling x weighting x ref_half x anchors/contrast relation x tau) is checked for
 * the loss, d_anchors, d_contrast and the weight gradients: element-wise against central
 * finite differences of the reference at small sizes, and along random directions at
 * M = 37..200. Also: edge cases, bit-identical results for 1 and 2 threads, argument
 * validation, and the paper-size memory test (M = 8450, D = 256; run first, because VmHWM
 * is a process-lifetime high-water mark). Under a sanitizer or in a build without NDEBUG the
 * paper-size case shrinks to M = 2112 and skips the RSS bound (ASan shadow memory); the
 * environment variable CLUDA_TEST_CL_BIG_M sets M explicitly (0 skips the case). */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cl_problems.h"
#include "cluda/contrastive.h"
#include "testing.h"

/* The test's own thing-class list (Cityscapes train ids, decision 7). */
static const int test_things[] = {6, 7, 11, 12, 13, 14, 15, 16, 17, 18};

static int is_thing(int y) {
  for (size_t i = 0; i < sizeof test_things / sizeof test_things[0]; i++)
    if (test_things[i] == y) return 1;
  return 0;
}

/* ---- references ---- */

typedef struct ref_problem {
  int ma, mc, d;
  const uint8_t *la, *lc;
  int pairs; /* 0 separate, 1 all, 2 stuff_only */
  int ignore_as_class, weighting /* 0 none, 1 anchor, 2 pair */, half;
  double tau, loss_weight;
  int64_t self_offset, mean_count; /* mean_count: the denominator (> 0) */
  double r;                        /* f = r * loss */
} ref_problem;

/* x = [A (ma d), C (mc d), u (ma), v (mc)] */
typedef struct ref_view {
  const double *a, *c, *u, *v;
} ref_view;

static ref_view view_of(const ref_problem *q, const double *x) {
  ref_view w = {x, x + (size_t)q->ma * q->d, x + (size_t)(q->ma + q->mc) * q->d,
                x + (size_t)(q->ma + q->mc) * q->d + q->ma};
  return w;
}

static int ref_valid(const ref_problem *q, int y) { return y != 255 || q->ignore_as_class; }

static int ref_anchor_active(const ref_problem *q, int y) {
  return ref_valid(q, y) && !(q->pairs == 2 && is_thing(y));
}

static int ref_pos(const ref_problem *q, int i, int j) {
  if (q->self_offset >= 0 && j == q->self_offset + i) return 0;
  return ref_valid(q, q->lc[j]) && q->lc[j] == q->la[i];
}

static int ref_neg(const ref_problem *q, int i, int j) {
  if (q->self_offset >= 0 && j == q->self_offset + i) return 0;
  int yi = q->la[i], yj = q->lc[j];
  if (!ref_valid(q, yj) || yj == yi) return 0;
  return q->pairs == 1 || is_thing(yi) == is_thing(yj);
}

static double ref_pair_weight(const ref_problem *q, const ref_view *w, int i, int j) {
  if (q->weighting == 2) return w->u[i] * w->v[j];
  if (q->weighting == 1) return w->u[i];
  return 1.0;
}

static double *ref_similarity(const ref_problem *q, const ref_view *w) {
  double *s = test_alloc_f64((int64_t)q->ma * q->mc);
  for (int i = 0; i < q->ma; i++)
    for (int j = 0; j < q->mc; j++) {
      double dot = 0.0;
      for (int k = 0; k < q->d; k++)
        dot += w->a[(size_t)i * q->d + k] * w->c[(size_t)j * q->d + k];
      s[(size_t)i * q->mc + j] = dot / q->tau;
    }
  return s;
}

static double ref_scale(const ref_problem *q) {
  return q->r * q->loss_weight * (q->half ? 0.5 : 1.0) / (double)q->mean_count;
}

/* Paper Eq. 2 (decision 5), row max over the anchor's positives and negatives. */
static double ref_paper(const double *x, void *user) {
  const ref_problem *q = user;
  ref_view w = view_of(q, x);
  double *s = ref_similarity(q, &w), total = 0.0;
  for (int i = 0; i < q->ma; i++) {
    if (!ref_anchor_active(q, q->la[i])) continue;
    const double *si = s + (size_t)i * q->mc;
    int np = 0;
    double m = -INFINITY;
    for (int j = 0; j < q->mc; j++) {
      if (ref_pos(q, i, j)) np++;
      if (ref_pos(q, i, j) || ref_neg(q, i, j)) m = fmax(m, si[j]);
    }
    if (np == 0) continue;
    double neg = 0.0;
    for (int j = 0; j < q->mc; j++)
      if (ref_neg(q, i, j)) neg += exp(si[j] - m);
    double li = 0.0;
    for (int j = 0; j < q->mc; j++)
      if (ref_pos(q, i, j)) {
        double e = exp(si[j] - m);
        li += ref_pair_weight(q, &w, i, j) * -log(e / (e + neg));
      }
    total += li / np;
  }
  free(s);
  return ref_scale(q) * total;
}

/* algorithm.md 6.3 steps 3-8 literally: L = S - max over all k, l_ij = L_ij - log(e^L_ij +
 * sum_{k in N_i} e^L_ik), l_i = -sum_j P_ij l_ij G_ij / max(1, sum_j P_ij). */
static double ref_code(const double *x, void *user) {
  const ref_problem *q = user;
  ref_view w = view_of(q, x);
  double *s = ref_similarity(q, &w), total = 0.0;
  for (int i = 0; i < q->ma; i++) {
    const int active = ref_anchor_active(q, q->la[i]);
    double *L = s + (size_t)i * q->mc, m = -INFINITY, neg = 0.0, sum = 0.0, np = 0.0;
    for (int j = 0; j < q->mc; j++)
      m = fmax(m, L[j]);
    for (int j = 0; j < q->mc; j++)
      L[j] -= m;
    for (int j = 0; j < q->mc; j++)
      if (ref_neg(q, i, j)) neg += exp(L[j]);
    for (int j = 0; j < q->mc; j++) {
      const double pij = active && ref_pos(q, i, j) ? 1.0 : 0.0;
      if (pij == 0.0) continue;
      const double lij = L[j] - log(exp(L[j]) + neg);
      sum += pij * lij * ref_pair_weight(q, &w, i, j);
      np += pij;
    }
    total += -sum / fmax(1.0, np);
  }
  free(s);
  return ref_scale(q) * total;
}

/* ---- problem generation ---- */

static ref_problem make_ref(const cl_case *c, const cl_data *x, double r) {
  ref_problem q = {c->ma,
                   c->mc,
                   c->d,
                   x->la,
                   x->lc,
                   c->pairs,
                   c->ignore_as_class,
                   c->weighting,
                   c->half,
                   c->tau,
                   0.7,
                   x->self_offset,
                   c->mean_count > 0 ? c->mean_count : c->ma,
                   r};
  return q;
}

/* Packs [A, C, u, v] in double for the references. */
static double *pack(const cl_case *c, const cl_data *x) {
  const int64_t na = (int64_t)c->ma * c->d, nc = (int64_t)c->mc * c->d;
  double *p = test_alloc_f64(na + nc + c->ma + c->mc);
  test_to_double(x->a, p, na);
  test_to_double(x->c, p + na, nc);
  test_to_double(x->u, p + na + nc, c->ma);
  test_to_double(x->v, p + na + nc + c->ma, c->mc);
  return p;
}

typedef struct cl_out {
  float loss;
  float *stats, *da, *dc, *du, *dv;
} cl_out;

/* Runs forward and backward (dloss = r) with a scratch arena of exactly the queried size. */
static int run_op(const cl_case *c, const cl_data *x, float r, cl_out *o) {
  cluda_contrastive_params p = make_params(c, x);
  cluda_ctx ctx = test_cpu_context(cluda_contrastive_scratch_bytes(&p, c->ma, c->mc));
  o->stats = test_alloc_f32((int64_t)c->ma * CLUDA_CL_STATS_COLS);
  o->da = test_alloc_f32((int64_t)c->ma * c->d);
  o->dc = test_alloc_f32((int64_t)c->mc * c->d);
  o->du = test_alloc_f32(c->ma);
  o->dv = test_alloc_f32(c->mc);
  for (int64_t i = 0; i < (int64_t)c->mc * c->d; i++)
    o->dc[i] = 12345.0f; /* the backward must overwrite */
  for (int64_t i = 0; i < (int64_t)c->ma * c->d; i++)
    o->da[i] = -777.0f;
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
  const cluda_tensor *aw = c->weighting ? &tu : NULL, *cw = c->weighting == 2 ? &tv : NULL;
  int ok = TEST_OK(cluda_contrastive_forward(&ctx, &p, &ta, &tla, aw, &tc, &tlc, cw, &tloss, &tst));
  ok &= TEST_OK(cluda_contrastive_backward(&ctx, &p, &ta, &tla, aw, &tc, &tlc, cw, &tst, &tr, &tda,
                                           &tdc, c->weighting ? &tdu : NULL, cw ? &tdv : NULL));
  ok &= TEST_CHECK(ctx.scratch->used == 0, "scratch released (used %zu)", ctx.scratch->used);
  test_context_free(&ctx);
  return ok;
}

static void free_out(cl_out *o) {
  free(o->stats);
  free(o->da);
  free(o->dc);
  free(o->du);
  free(o->dv);
}

static double max_abs(const double *x, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; i++)
    m = fmax(m, fabs(x[i]));
  return m;
}

static void case_name(const cl_case *c, char *buf, size_t n) {
  snprintf(buf, n, "%s M=%dx%d D=%d pairs=%s ignore_as_class=%d weight=%s half=%d tau=%g tile=%d",
           rel_name[c->rel], c->ma, c->mc, c->d, pairs_name[c->pairs], c->ignore_as_class,
           weighting_name[c->weighting], c->half, (double)c->tau, c->tile_cols);
}

/* Loss vs both references; |P_i| in stats; gradients vs finite differences: element-wise
 * (full_fd) or along 3 random directions. */
static void check_case(const cl_case *c, uint64_t seed, int full_fd) {
  char name[200], msg[300];
  case_name(c, name, sizeof name);
  cl_data x = make_data(c, seed, 0.0f, 1.0f);
  const float r = 1.3f;
  cl_out o;
  if (!run_op(c, &x, r, &o)) {
    free_data(&x);
    free_out(&o);
    return;
  }
  double *xd = pack(c, &x);
  ref_problem q = make_ref(c, &x, 1.0);
  const double want = ref_paper(xd, &q), want_code = ref_code(xd, &q);
  snprintf(msg, sizeof msg, "%s: paper form == reference-code form", name);
  TEST_CHECK(fabs(want - want_code) <= 1e-12 + 1e-10 * fabs(want), "%s (%.15g vs %.15g)", msg, want,
             want_code);
  snprintf(msg, sizeof msg, "%s: loss", name);
  test_compare(msg, &o.loss, &want, 1, 2e-5, 1e-7);

  /* |P_i| of active anchors */
  int bad = 0;
  for (int i = 0; i < c->ma; i++) {
    int np = 0;
    if (ref_anchor_active(&q, x.la[i]))
      for (int j = 0; j < c->mc; j++)
        np += ref_pos(&q, i, j);
    bad += o.stats[(size_t)i * CLUDA_CL_STATS_COLS + 1] != (float)np;
  }
  TEST_CHECK(bad == 0, "%s: |P_i| wrong for %d anchors", name, bad);

  q.r = r;
  const int64_t na = (int64_t)c->ma * c->d, nc = (int64_t)c->mc * c->d;
  const int64_t nx = na + nc + c->ma + c->mc;
  if (full_fd) {
    double *grad = test_alloc_f64(nx);
    test_finite_difference(ref_paper, &q, xd, nx, 1e-6, grad);
    const double atol = 2e-4 * max_abs(grad, nx) + 1e-8;
    snprintf(msg, sizeof msg, "%s: d_anchors vs finite differences", name);
    test_compare(msg, o.da, grad, na, 2e-3, atol);
    snprintf(msg, sizeof msg, "%s: d_contrast vs finite differences", name);
    test_compare(msg, o.dc, grad + na, nc, 2e-3, atol);
    if (c->weighting) {
      snprintf(msg, sizeof msg, "%s: d_anchor_weights vs finite differences", name);
      test_compare(msg, o.du, grad + na + nc, c->ma, 2e-3, atol);
    }
    if (c->weighting == 2) {
      snprintf(msg, sizeof msg, "%s: d_contrast_weights vs finite differences", name);
      test_compare(msg, o.dv, grad + na + nc + c->ma, c->mc, 2e-3, atol);
    }
    free(grad);
  } else {
    /* directional derivatives: <grad, e> vs (f(x + h e) - f(x - h e)) / 2h */
    double *e = test_alloc_f64(nx), *xp = test_alloc_f64(nx);
    float *ef = test_alloc_f32(nx);
    for (int t = 0; t < 3; t++) {
      test_fill_uniform(ef, nx, -1.0f, 1.0f, seed + 100, (uint32_t)t);
      test_to_double(ef, e, nx);
      if (!c->weighting)
        for (int64_t i = na + nc; i < nx; i++)
          e[i] = 0.0;
      if (c->weighting == 1)
        for (int64_t i = na + nc + c->ma; i < nx; i++)
          e[i] = 0.0;
      const double h = 1e-5;
      for (int64_t i = 0; i < nx; i++)
        xp[i] = xd[i] + h * e[i];
      double fp = ref_paper(xp, &q);
      for (int64_t i = 0; i < nx; i++)
        xp[i] = xd[i] - h * e[i];
      double fm = ref_paper(xp, &q);
      double fd = (fp - fm) / (2.0 * h), got = 0.0, mag = 0.0;
      const float *parts[4] = {o.da, o.dc, o.du, o.dv};
      const int64_t lens[4] = {na, nc, c->ma, c->mc};
      int64_t off = 0;
      for (int k = 0; k < 4; k++) {
        for (int64_t i = 0; i < lens[k]; i++)
          if (e[off + i] != 0.0) {
            got += (double)parts[k][i] * e[off + i];
            mag += fabs((double)parts[k][i] * e[off + i]);
          }
        off += lens[k];
      }
      TEST_CHECK(fabs(got - fd) <= 1e-4 * mag + 1e-9,
                 "%s: directional derivative %d: %.9g vs finite difference %.9g", name, t, got, fd);
    }
    free(e);
    free(xp);
    free(ef);
  }
  free(xd);
  free_out(&o);
  free_data(&x);
}

static void check_all_options(void) {
  static const int sizes[3][3] = {{37, 37, 8}, {120, 120, 12}, {200, 200, 16}};
  int n = 0;
  for (int rel = 0; rel < 3; rel++)
    for (int pairs = 0; pairs < 3; pairs++)
      for (int ign = 0; ign < 2; ign++)
        for (int wt = 0; wt < 3; wt++)
          for (int half = 0; half < 2; half++)
            for (int ti = 0; ti < 2; ti++) {
              const float tau = ti ? 0.1f : 1.0f;
              /* small: element-wise finite differences */
              cl_case c = {rel == REL_SELF ? 21 : 17, 26, 5, rel, pairs, ign, wt, half, tau, 7, 0};
              if (rel == REL_SELF) c.mc = c.ma;
              if (rel == REL_BLOCK) c.mean_count = 2 * c.mc; /* a "global" count */
              check_case(&c, 1000 + (uint64_t)n, 1);
              /* medium: directions */
              const int *s = sizes[n % 3];
              cl_case m = {s[0], s[1], s[2], rel, pairs, ign, wt, half, tau, n % 2 ? 64 : 0, 0};
              if (rel == REL_BLOCK) m.ma = s[0] / 3, m.mean_count = m.mc;
              if (rel == REL_DISJOINT) m.ma = s[0] / 2 + 3;
              check_case(&m, 5000 + (uint64_t)n, 0);
              n++;
            }
  printf("checked %d option combinations\n", n);
}

/* All labels ignored, a single class (no negatives: loss 0), a single anchor, tile size 1. */
static void check_edge_cases(void) {
  const float r = 1.0f;
  /* all ignored / a single class / all ignored with the ignore label as a class */
  static const char *kinds[] = {"all ignored", "one class", "all 255 as a class"};
  for (int kind = 0; kind < 3; kind++) {
    cl_case c = {30, 30, 6, REL_SELF, CLUDA_CL_PAIRS_ALL, kind == 2, 1, 0, 0.5f, 8, 0};
    cl_data x = make_data(&c, 77, 0.0f, 1.0f);
    memset(x.la, kind == 1 ? 3 : 255, (size_t)c.ma);
    memset(x.lc, kind == 1 ? 3 : 255, (size_t)c.mc);
    cl_out o;
    run_op(&c, &x, r, &o);
    TEST_CHECK(o.loss == 0.0f, "%s: loss %g must be 0", kinds[kind], (double)o.loss);
    int nz = 0;
    for (int64_t i = 0; i < (int64_t)c.ma * c.d; i++)
      nz += o.da[i] != 0.0f;
    for (int64_t i = 0; i < (int64_t)c.mc * c.d; i++)
      nz += o.dc[i] != 0.0f;
    for (int i = 0; i < c.ma; i++)
      nz += o.du[i] != 0.0f;
    TEST_CHECK(nz == 0, "%s: %d nonzero gradient entries", kinds[kind], nz);
    free_out(&o);
    free_data(&x);
  }
  /* single anchor against itself: no positive */
  {
    cl_case c = {1, 1, 4, REL_SELF, 0, 0, 0, 0, 1.0f, 0, 0};
    cl_data x = make_data(&c, 78, 0.0f, 1.0f);
    x.la[0] = x.lc[0] = 0;
    cl_out o;
    run_op(&c, &x, r, &o);
    TEST_CHECK(o.loss == 0.0f, "single anchor: loss %g must be 0", (double)o.loss);
    free_out(&o);
    free_data(&x);
  }
  /* single anchor against a contrast set, tile of one column, and two anchors only */
  int sizes[2][2] = {{1, 23}, {2, 2}};
  for (int k = 0; k < 2; k++)
    for (int pairs = 0; pairs < 3; pairs++) {
      cl_case c = {sizes[k][0], sizes[k][1], 4, k ? REL_SELF : REL_DISJOINT, pairs, 0, 2, 1,
                   0.2f,        1,           0};
      check_case(&c, 79 + (uint64_t)pairs, 1);
    }
  /* a single anchor with positives and thing/stuff negatives, checked element-wise */
  {
    cl_case c = {1, 40, 6, REL_BLOCK, 0, 0, 1, 0, 0.3f, 16, 0};
    check_case(&c, 81, 1);
  }
}

/* Bit-identical loss, stats and gradients for 1 and 2 OpenMP threads. */
static void check_threads(void) {
  cl_case c = {700, 900, 24, REL_BLOCK, CLUDA_CL_PAIRS_SEPARATE, 0, 2, 0, 0.1f, 128, 0};
  cl_data x = make_data(&c, 91, 0.0f, 1.0f);
  cl_out o[2];
  int saved = omp_get_max_threads();
  for (int t = 0; t < 2; t++) {
    omp_set_num_threads(t + 1);
    run_op(&c, &x, 0.9f, &o[t]);
  }
  omp_set_num_threads(saved);
  TEST_CHECK(memcmp(&o[0].loss, &o[1].loss, sizeof(float)) == 0, "threads: loss %.9g vs %.9g",
             (double)o[0].loss, (double)o[1].loss);
  TEST_CHECK(memcmp(o[0].stats, o[1].stats, sizeof(float) * (size_t)c.ma * 4) == 0,
             "threads: stats differ");
  TEST_CHECK(memcmp(o[0].da, o[1].da, sizeof(float) * (size_t)c.ma * c.d) == 0,
             "threads: d_anchors differ");
  TEST_CHECK(memcmp(o[0].dc, o[1].dc, sizeof(float) * (size_t)c.mc * c.d) == 0,
             "threads: d_contrast differ");
  TEST_CHECK(memcmp(o[0].du, o[1].du, sizeof(float) * (size_t)c.ma) == 0,
             "threads: d_anchor_weights differ");
  TEST_CHECK(memcmp(o[0].dv, o[1].dv, sizeof(float) * (size_t)c.mc) == 0,
             "threads: d_contrast_weights differ");
  free_out(&o[0]);
  free_out(&o[1]);
  free_data(&x);
}

static void check_bad_inputs(void) {
  enum { MA = 4, MC = 6, D = 3 };
  float a[MA * D] = {0}, c[MC * D] = {0}, u[MC] = {0}, v[MC] = {0}, loss[2] = {0}, one = 1.0f;
  float st[MA * 4] = {0}, da[MA * D], dc[MC * D], du[MA], dv[MC];
  uint8_t la[MC] = {0, 1, 2, 255}, lc[MC] = {0, 1, 2, 3, 255, 0};
  cluda_contrastive_params p, q;
  cluda_contrastive_default_params(&p);
  p.self_offset = -1;
  cluda_ctx ctx = test_cpu_context(cluda_contrastive_scratch_bytes(&p, MA, MC) + 4096);
  cluda_ctx noscratch = cluda_cpu_context(NULL);
  cluda_tensor ta = cluda_tensor_2d(CLUDA_F32, a, MA, D), tc = cluda_tensor_2d(CLUDA_F32, c, MC, D);
  cluda_tensor tla = cluda_tensor_1d(CLUDA_U8, la, MA), tlc = cluda_tensor_1d(CLUDA_U8, lc, MC);
  cluda_tensor tu = cluda_tensor_1d(CLUDA_F32, u, MA), tv = cluda_tensor_1d(CLUDA_F32, v, MC);
  cluda_tensor tl = cluda_tensor_1d(CLUDA_F32, loss, 1), tl2 = cluda_tensor_1d(CLUDA_F32, loss, 2);
  cluda_tensor tone = cluda_tensor_1d(CLUDA_F32, &one, 1);
  cluda_tensor tst = cluda_tensor_2d(CLUDA_F32, st, MA, 4);
  cluda_tensor tda = cluda_tensor_2d(CLUDA_F32, da, MA, D),
               tdc = cluda_tensor_2d(CLUDA_F32, dc, MC, D);
  cluda_tensor tdu = cluda_tensor_1d(CLUDA_F32, du, MA), tdv = cluda_tensor_1d(CLUDA_F32, dv, MC);
  cluda_tensor c_d2 = cluda_tensor_2d(CLUDA_F32, c, MC * D / 2, 2);
  cluda_tensor a_3d = cluda_tensor_3d(CLUDA_F32, a, 2, 2, D);
  cluda_tensor a_u8 = cluda_tensor_2d(CLUDA_U8, la, MA, 1);
  cluda_tensor la_short = cluda_tensor_1d(CLUDA_U8, la, MA - 1);
  cluda_tensor lc_f32 = cluda_tensor_1d(CLUDA_F32, v, MC);
  cluda_tensor u_long = cluda_tensor_1d(CLUDA_F32, u, MC);
  cluda_tensor st_bad = cluda_tensor_2d(CLUDA_F32, st, MA, 3);
  cluda_tensor dc_bad = cluda_tensor_2d(CLUDA_F32, dc, MC - 1, D);
  cluda_tensor dv_bad = cluda_tensor_1d(CLUDA_F32, dv, MA);

  TEST_OK(cluda_contrastive_forward(&ctx, &p, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst));
  TEST_FAILS(cluda_contrastive_forward(NULL, &p, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ARG, "ctx");
  TEST_FAILS(cluda_contrastive_forward(&ctx, NULL, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ARG, "params is NULL");
  TEST_FAILS(cluda_contrastive_forward(&noscratch, &p, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ALLOC, "ctx->scratch is NULL");
  q = p;
  q.tau = 0.0f;
  TEST_FAILS(cluda_contrastive_forward(&ctx, &q, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ARG, "tau 0 must be a finite number > 0");
  q.tau = -1.0f;
  TEST_FAILS(cluda_contrastive_forward(&ctx, &q, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ARG, "tau -1");
  q.tau = NAN;
  TEST_FAILS(cluda_contrastive_forward(&ctx, &q, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ARG, "tau");
  q = p;
  q.pairs = (cluda_cl_pairs)3;
  TEST_FAILS(cluda_contrastive_forward(&ctx, &q, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ARG, "pairs 3");
  q = p;
  q.num_classes = 0;
  TEST_FAILS(cluda_contrastive_forward(&ctx, &q, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ARG, "num_classes 0");
  q = p;
  q.ignore_index = 256;
  TEST_FAILS(cluda_contrastive_forward(&ctx, &q, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ARG, "ignore_index 256");
  q = p;
  q.tile_cols = -2;
  TEST_FAILS(cluda_contrastive_forward(&ctx, &q, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ARG, "tile_cols -2");
  q = p;
  q.self_offset = 3; /* 3 + 4 anchors > 6 contrast rows */
  TEST_FAILS(cluda_contrastive_forward(&ctx, &q, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ARG,
             "self_offset 3 must be -1 or place the anchors' 4 rows inside contrast "
             "[6,3] f32");
  q.self_offset = -2;
  TEST_FAILS(cluda_contrastive_forward(&ctx, &q, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ARG, "self_offset -2");
  q = p;
  q.mean_count = 3;
  TEST_FAILS(cluda_contrastive_forward(&ctx, &q, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ARG, "mean_count 3");
  TEST_FAILS(cluda_contrastive_forward(&ctx, &p, NULL, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ARG, "anchors is NULL");
  TEST_FAILS(cluda_contrastive_forward(&ctx, &p, &a_3d, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_SHAPE, "anchors [2,2,3] f32 must have 2 dimensions");
  TEST_FAILS(cluda_contrastive_forward(&ctx, &p, &a_u8, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_DTYPE, "anchors");
  TEST_FAILS(cluda_contrastive_forward(&ctx, &p, &ta, &tla, &tu, &c_d2, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_SHAPE,
             "anchors [4,3] f32 and contrast [9,2] f32 must have the same feature");
  TEST_FAILS(cluda_contrastive_forward(&ctx, &p, &ta, &la_short, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_SHAPE, "anchor_labels [3] u8 must be [4] (the rows of anchors [4,3] f32)");
  TEST_FAILS(cluda_contrastive_forward(&ctx, &p, &ta, &tla, &tu, &tc, &lc_f32, NULL, &tl, &tst),
             CLUDA_ERR_DTYPE, "contrast_labels");
  TEST_FAILS(cluda_contrastive_forward(&ctx, &p, &ta, &tla, &u_long, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_SHAPE, "anchor_weights [6] f32 must be [4]");
  TEST_FAILS(cluda_contrastive_forward(&ctx, &p, &ta, &tla, &tu, &tc, &tlc, &tv, &tl, &tst),
             CLUDA_ERR_ARG, "contrast_weights is only used with ref_pair_weight");
  TEST_FAILS(cluda_contrastive_forward(&ctx, &p, &ta, &tla, &tu, &tc, &tlc, NULL, &tl2, &tst),
             CLUDA_ERR_SHAPE, "loss [2] f32 must have exactly one element");
  TEST_FAILS(cluda_contrastive_forward(&ctx, &p, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &st_bad),
             CLUDA_ERR_SHAPE, "stats [4,3] f32 must be [4, 4] for anchors [4,3] f32");
  /* label values */
  lc[3] = 19;
  TEST_FAILS(cluda_contrastive_forward(&ctx, &p, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ARG,
             "contrast_labels[3] = 19 is neither a class (< num_classes = 19) nor "
             "ignore_index 255");
  lc[3] = 3;
  la[2] = 200;
  TEST_FAILS(cluda_contrastive_forward(&ctx, &p, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
             CLUDA_ERR_ARG, "anchor_labels[2] = 200");
  la[2] = 2;
  /* scratch too small */
  {
    cluda_ctx small = test_cpu_context(64);
    TEST_FAILS(cluda_contrastive_forward(&small, &p, &ta, &tla, &tu, &tc, &tlc, NULL, &tl, &tst),
               CLUDA_ERR_ALLOC, "contrastive");
    TEST_CHECK(small.scratch->used == 0, "scratch released after a failed allocation");
    test_context_free(&small);
  }
  /* backward */
  TEST_OK(cluda_contrastive_backward(&ctx, &p, &ta, &tla, &tu, &tc, &tlc, NULL, &tst, &tone, &tda,
                                     &tdc, &tdu, NULL));
  TEST_FAILS(cluda_contrastive_backward(&ctx, &p, &ta, &tla, &tu, &tc, &tlc, NULL, &tst, &tl2, &tda,
                                        &tdc, &tdu, NULL),
             CLUDA_ERR_SHAPE, "dloss [2] f32 must have exactly one element");
  TEST_FAILS(cluda_contrastive_backward(&ctx, &p, &ta, &tla, &tu, &tc, &tlc, NULL, &tst, &tone,
                                        &tdc, &tdc, &tdu, NULL),
             CLUDA_ERR_SHAPE, "d_anchors [6,3] f32 and anchors [4,3] f32 must have the same shape");
  TEST_FAILS(cluda_contrastive_backward(&ctx, &p, &ta, &tla, &tu, &tc, &tlc, NULL, &tst, &tone,
                                        &tda, &dc_bad, &tdu, NULL),
             CLUDA_ERR_SHAPE, "d_contrast [5,3] f32 and contrast [6,3] f32");
  TEST_FAILS(cluda_contrastive_backward(&ctx, &p, &ta, &tla, &tu, &tc, &tlc, NULL, &tst, &tone,
                                        &tda, &tdc, &tdu, &tdv),
             CLUDA_ERR_ARG, "d_contrast_weights needs ref_pair_weight");
  q = p;
  q.ref_pair_weight = 1;
  TEST_FAILS(cluda_contrastive_backward(&ctx, &q, &ta, &tla, &tu, &tc, &tlc, &tv, &tst, &tone, &tda,
                                        &tdc, &tdu, &dv_bad),
             CLUDA_ERR_SHAPE, "d_contrast_weights [4] f32 must be [6]");
  TEST_FAILS(cluda_contrastive_backward(&ctx, &p, &ta, &tla, &tu, &tc, &tlc, NULL, &st_bad, &tone,
                                        &tda, &tdc, &tdu, NULL),
             CLUDA_ERR_SHAPE, "stats");
  /* thing list */
  int bad_things[] = {3, 300};
  TEST_FAILS(cluda_contrastive_set_things(&q, bad_things, 2), CLUDA_ERR_ARG,
             "class 300 (entry 1) is not in 0..255");
  int things[] = {3, 5};
  TEST_OK(cluda_contrastive_set_things(&q, things, 2));
  TEST_CHECK(q.thing[3] && q.thing[5] && !q.thing[11], "set_things replaces the list");
  test_context_free(&ctx);
}

/* Defaults (decisions 4-14) and the Cityscapes thing list. */
static void check_defaults(void) {
  cluda_contrastive_params p;
  cluda_contrastive_default_params(&p);
  int ok = p.tau == 1.0f && p.loss_weight == 1.0f && p.pairs == CLUDA_CL_PAIRS_SEPARATE &&
           p.num_classes == 19 && p.ignore_index == 255 && !p.ref_ignore_as_class &&
           !p.ref_pair_weight && !p.ref_half && p.mean_count == 0 && p.self_offset == 0;
  TEST_CHECK(ok, "default parameters");
  int things = 0;
  for (int c = 0; c < 256; c++)
    things += p.thing[c] != is_thing(c);
  TEST_CHECK(things == 0, "default thing classes are Cityscapes 6, 7, 11..18");
}

static long status_kib(const char *key) {
  FILE *f = fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  long v = -1;
  size_t n = strlen(key);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, key, n) == 0 && line[n] == ':') {
      v = strtol(line + n + 1, NULL, 10);
      break;
    }
  fclose(f);
  return v;
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* Paper size: all 2 x 65 x 65 = 8450 pixels are anchors and contrast rows, D = 256. Forward +
 * backward must not grow the peak RSS by 1 GiB (one materialised 8450^2 f32 matrix is 286 MB;
 * the reference builds several); a 64-anchor block is checked against the reference with the
 * global mean count. */
static void check_paper_size(void) {
  int m = 8450, bound = 1;
#if defined(__SANITIZE_ADDRESS__) || !defined(NDEBUG)
  m = 2112, bound = 0;
#endif
  const char *env = getenv("CLUDA_TEST_CL_BIG_M");
  if (env) m = atoi(env);
  if (m <= 0) {
    printf("paper-size case skipped (CLUDA_TEST_CL_BIG_M=%s)\n", env ? env : "");
    return;
  }
  const int d = 256;
  const long hwm0 = status_kib("VmHWM"), rss0 = status_kib("VmRSS");
  cl_case c = {m, m, d, REL_SELF, CLUDA_CL_PAIRS_SEPARATE, 0, 1, 0, 1.0f, 0, 0};
  cl_data x;
  x.a = test_alloc_f32((int64_t)m * d);
  x.u = test_alloc_f32(m);
  x.la = test_alloc((size_t)m);
  x.c = x.a;
  x.v = x.u;
  x.lc = x.la;
  x.self_offset = 0;
  test_fill_uniform(x.a, (int64_t)m * d, -1.0f, 1.0f, 7, 0);
  normalise_rows(x.a, m, d);
  /* Cityscapes-like: road, sidewalk, building, vegetation, sky, car, person, some ignore */
  {
    static const uint8_t pool[] = {0, 0, 0, 1, 2, 2, 8, 8, 10, 13, 13, 11, 255};
    float *u = test_alloc_f32(m);
    test_fill_uniform(u, m, 0.0f, 1.0f, 7, 1);
    for (int i = 0; i < m; i++)
      x.la[i] = pool[(int)(u[i] * 13.0f) % 13];
    test_fill_uniform(x.u, m, 0.5f, 1.0f, 7, 2);
    free(u);
  }
  cl_out o;
  const double t0 = now_s();
  run_op(&c, &x, 1.0f, &o);
  const double t1 = now_s();
  const long hwm1 = status_kib("VmHWM"), rss1 = status_kib("VmRSS");
  cluda_contrastive_params p = make_params(&c, &x);
  printf("paper size M=%d D=%d: forward+backward %.2f s (2 sgemm passes + 1 recompute + 2 "
         "gradient sgemms), loss %.6f, scratch %.1f MiB, VmHWM %ld -> %ld KiB (+%.1f MiB), VmRSS "
         "%ld -> %ld KiB\n",
         m, d, t1 - t0, (double)o.loss,
         (double)cluda_contrastive_scratch_bytes(&p, m, m) / 1048576.0, hwm0, hwm1,
         (double)(hwm1 - hwm0) / 1024.0, rss0, rss1);
  TEST_CHECK(isfinite(o.loss) && o.loss > 0.0f, "paper size: loss %g", (double)o.loss);
  if (bound && hwm0 > 0)
    TEST_CHECK(hwm1 - hwm0 < 1024L * 1024L, "paper size: peak RSS grew by %ld KiB (>= 1 GiB)",
               hwm1 - hwm0);
  free_out(&o);

  /* 64 anchors (a block of the rows) against all m, global mean count, vs the reference */
  cl_case b = {64, m, d, REL_BLOCK, CLUDA_CL_PAIRS_SEPARATE, 0, 1, 0, 1.0f, 0, m};
  cl_data y = x;
  y.self_offset = (m - 64) / 2;
  y.a = x.a + y.self_offset * d;
  y.la = x.la + y.self_offset;
  y.u = x.u + y.self_offset;
  run_op(&b, &y, 1.0f, &o);
  double *xd = pack(&b, &y);
  ref_problem q = make_ref(&b, &y, 1.0);
  const double want = ref_paper(xd, &q);
  test_compare("paper size: 64-anchor block loss (global mean count)", &o.loss, &want, 1, 1e-4,
               1e-9);
  free(xd);
  free_out(&o);
  free(x.a);
  free(x.u);
  free(x.la);
}

int main(void) {
  check_paper_size(); /* first: VmHWM is a process-lifetime peak */
  check_defaults();
  check_all_options();
  check_edge_cases();
  check_threads();
  check_bad_inputs();
  return test_finish("test_contrastive");
}

/* MiT efficient self-attention (spatial-reduction attention), composed only from the public
 * ops so that it runs on whatever backend ctx names. The forward keeps every activation the
 * backward needs in the caller's `saved` buffer; the backward takes its temporary gradients
 * from ctx->scratch. Both buffers are laid out by one function (sr_layout) so plan, forward
 * and backward cannot disagree.
 *
 * K and V are computed as two linear layers whose weights and biases are the two halves of
 * kv_w [2C, C] and kv_b [2C] (row-major, so each half is a contiguous view): this gives the
 * same values as one kv linear followed by a split, without the [B, Nk, 2C] buffer or the
 * copies. In the backward, dK and dV are concatenated so that one linear backward updates
 * all of kv_w and kv_b and returns the summed input gradient. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>

#include "cluda/sr_attention.h"
#include "op_common.h"

typedef struct sr_layout {
  int b, h, w, c, heads, r;
  int hs, ws, n, nk; /* reduced map and token counts (hs = h, ws = w when r == 1) */
  /* byte offsets into `saved` */
  size_t q, xs, xn, mean, rstd, k, v, probs, o, saved_bytes;
  /* byte offsets into the backward's scratch block, then the block size */
  size_t d_o, dq, dk, dv, dkv, dxr, dxs, own_scratch;
  size_t scratch_bytes; /* own block + the most a nested op takes, forward or backward */
} sr_layout;

/* Appends a region of `floats` floats at *at (64-byte aligned) and returns its offset. */
static size_t region(size_t *at, int64_t floats) {
  size_t off = *at;
  *at += cluda_arena_align((size_t)floats * sizeof(float));
  return off;
}

static cluda_conv2d_params sr_conv_params(int r) {
  cluda_conv2d_params cp = {r, r, r, r, 0, 0, 1, 1, 1};
  return cp;
}

static cluda_status check_params(const char *op, const cluda_sr_attention_params *p) {
  CLUDA_REQUIRE(p != NULL, CLUDA_ERR_ARG, "%s: p is NULL", op);
  CLUDA_REQUIRE(p->channels >= 1, CLUDA_ERR_ARG, "%s: p->channels = %d must be >= 1", op,
                p->channels);
  CLUDA_REQUIRE(p->heads >= 1 && p->channels % p->heads == 0, CLUDA_ERR_ARG,
                "%s: p->heads = %d must be >= 1 and divide p->channels = %d", op, p->heads,
                p->channels);
  CLUDA_REQUIRE(p->sr_ratio >= 1, CLUDA_ERR_ARG, "%s: p->sr_ratio = %d must be >= 1", op,
                p->sr_ratio);
  CLUDA_REQUIRE(p->sr_ratio == 1 || (p->sr_norm_eps > 0.0f && isfinite(p->sr_norm_eps)),
                CLUDA_ERR_ARG, "%s: p->sr_norm_eps = %g must be positive and finite", op,
                (double)p->sr_norm_eps);
  return cluda_ok();
}

static cluda_status make_layout(const char *op, const cluda_sr_attention_params *p, int batch,
                                int height, int width, sr_layout *L) {
  const int r = p->sr_ratio, c = p->channels;
  CLUDA_REQUIRE(batch >= 1 && height >= r && width >= r, CLUDA_ERR_SHAPE,
                "%s: input [%d, %d, %d, %d] must have batch >= 1 and height, width >= "
                "sr_ratio = %d",
                op, batch, height, width, c, r);
  L->b = batch;
  L->h = height;
  L->w = width;
  L->c = c;
  L->heads = p->heads;
  L->r = r;
  L->hs = r > 1 ? cluda_conv2d_out_size(height, r, r, 0, 1) : height;
  L->ws = r > 1 ? cluda_conv2d_out_size(width, r, r, 0, 1) : width;
  const int64_t n = (int64_t)height * width, nk = (int64_t)L->hs * L->ws;
  const int64_t m = batch * n * c, mk = batch * nk * c;
  /* every view is built with int dimensions; the add trick views [B*N*C] as one row */
  CLUDA_REQUIRE(n <= INT_MAX && m <= INT_MAX && (int64_t)batch * p->heads <= INT_MAX,
                CLUDA_ERR_SHAPE,
                "%s: input [%d, %d, %d, %d] is too large (B*H*W*C must fit in int)", op, batch,
                height, width, c);
  L->n = (int)n;
  L->nk = (int)nk;

  size_t at = 0;
  L->q = region(&at, m);
  L->xs = L->xn = L->mean = L->rstd = 0;
  if (r > 1) {
    L->xs = region(&at, mk);
    L->xn = region(&at, mk);
    L->mean = region(&at, batch * nk);
    L->rstd = region(&at, batch * nk);
  }
  L->k = region(&at, mk);
  L->v = region(&at, mk);
  L->probs = region(&at, (int64_t)batch * p->heads * n * nk);
  L->o = region(&at, m);
  L->saved_bytes = at;

  at = 0;
  L->d_o = region(&at, m);
  L->dq = region(&at, m);
  L->dk = region(&at, mk);
  L->dv = region(&at, mk);
  L->dkv = region(&at, 2 * mk);
  L->dxr = L->dxs = 0;
  if (r > 1) {
    L->dxr = region(&at, mk);
    L->dxs = region(&at, mk);
  }
  L->own_scratch = at;
  size_t nested = cluda_attention_scratch_bytes(p->heads, batch, L->n, L->nk);
  if (r > 1) {
    cluda_conv2d_params cp = sr_conv_params(r);
    cluda_tensor x = cluda_tensor_4d(CLUDA_F32, NULL, batch, height, width, c);
    cluda_tensor w = cluda_tensor_4d(CLUDA_F32, NULL, c, r, r, c);
    cluda_tensor y = cluda_tensor_4d(CLUDA_F32, NULL, batch, L->hs, L->ws, c);
    size_t conv = cluda_arena_align(cluda_conv2d_scratch_bytes(&cp, &x, &w, &y));
    if (conv > nested) nested = conv;
  }
  L->scratch_bytes = L->own_scratch + nested;
  return cluda_ok();
}

/* One parameter (or gradient) tensor: f32 with exactly the shape want[0..ndim). */
static cluda_status check_param(const char *op, const char *set, const char *name,
                                const cluda_tensor *t, int ndim, int d0, int d1, int d2, int d3) {
  char arg[48], d[64], shape[64];
  snprintf(arg, sizeof arg, "%s->%s", set, name);
  CLUDA_TRY(cluda_check_tensor(op, arg, t, CLUDA_F32, ndim));
  const int want[4] = {d0, d1, d2, d3};
  int ok = 1;
  size_t len = 0;
  for (int i = 0; i < ndim; i++) {
    ok &= t->shape[i] == want[i];
    len += (size_t)snprintf(shape + len, sizeof shape - len, i ? ",%d" : "[%d", want[i]);
  }
  snprintf(shape + len, sizeof shape - len, "]");
  CLUDA_REQUIRE(ok, CLUDA_ERR_SHAPE, "%s: %s %s must be %s", op, arg,
                cluda_tensor_describe(t, d, sizeof d), shape);
  return cluda_ok();
}

static cluda_status check_weights(const char *op, const char *set,
                                  const cluda_sr_attention_weights *w,
                                  const cluda_sr_attention_params *p) {
  const int c = p->channels, r = p->sr_ratio;
  CLUDA_REQUIRE(w != NULL, CLUDA_ERR_ARG, "%s: %s is NULL", op, set);
  CLUDA_TRY(check_param(op, set, "q_w", &w->q_w, 2, c, c, 0, 0));
  CLUDA_TRY(check_param(op, set, "q_b", &w->q_b, 1, c, 0, 0, 0));
  CLUDA_TRY(check_param(op, set, "kv_w", &w->kv_w, 2, 2 * c, c, 0, 0));
  CLUDA_TRY(check_param(op, set, "kv_b", &w->kv_b, 1, 2 * c, 0, 0, 0));
  if (r > 1) {
    CLUDA_TRY(check_param(op, set, "sr_w", &w->sr_w, 4, c, r, r, c));
    CLUDA_TRY(check_param(op, set, "sr_b", &w->sr_b, 1, c, 0, 0, 0));
    CLUDA_TRY(check_param(op, set, "norm_w", &w->norm_w, 1, c, 0, 0, 0));
    CLUDA_TRY(check_param(op, set, "norm_b", &w->norm_b, 1, c, 0, 0, 0));
  }
  CLUDA_TRY(check_param(op, set, "proj_w", &w->proj_w, 2, c, c, 0, 0));
  CLUDA_TRY(check_param(op, set, "proj_b", &w->proj_b, 1, c, 0, 0, 0));
  return cluda_ok();
}

/* x (or dy, dx): NHWC f32 with C channels. */
static cluda_status check_map(const char *op, const char *name, const cluda_tensor *t,
                              const cluda_sr_attention_params *p) {
  char d[64];
  CLUDA_TRY(cluda_check_tensor(op, name, t, CLUDA_F32, 4));
  CLUDA_REQUIRE(t->shape[3] == p->channels, CLUDA_ERR_SHAPE,
                "%s: %s %s must have p->channels = %d channels", op, name,
                cluda_tensor_describe(t, d, sizeof d), p->channels);
  return cluda_ok();
}

static cluda_status check_saved(const char *op, const void *saved, size_t saved_bytes,
                                const sr_layout *L) {
  CLUDA_REQUIRE(saved != NULL, CLUDA_ERR_ARG, "%s: saved is NULL", op);
  CLUDA_REQUIRE((uintptr_t)saved % sizeof(float) == 0, CLUDA_ERR_ARG,
                "%s: saved is not aligned for floats", op);
  CLUDA_REQUIRE(saved_bytes >= L->saved_bytes, CLUDA_ERR_ARG,
                "%s: saved_bytes = %zu but this input needs %zu (cluda_sr_attention_plan)", op,
                saved_bytes, L->saved_bytes);
  return cluda_ok();
}

cluda_status cluda_sr_attention_plan(const cluda_sr_attention_params *p, int batch, int height,
                                     int width, size_t *saved_bytes, size_t *scratch_bytes) {
  const char *op = "sr_attention_plan";
  CLUDA_TRY(check_params(op, p));
  CLUDA_REQUIRE(saved_bytes != NULL && scratch_bytes != NULL, CLUDA_ERR_ARG,
                "%s: saved_bytes or scratch_bytes is NULL", op);
  sr_layout L;
  CLUDA_TRY(make_layout(op, p, batch, height, width, &L));
  *saved_bytes = L.saved_bytes;
  *scratch_bytes = L.scratch_bytes;
  return cluda_ok();
}

/* A view of n floats at byte offset off of base (device memory on a GPU backend). */
static float *at_offset(const void *base, size_t off) { return (float *)((char *)base + off); }

/* The activations the forward saves, as tensor views. */
typedef struct sr_saved {
  cluda_tensor q, xs, xs3, xn, mean, rstd, k, v, probs, o;
} sr_saved;

static sr_saved saved_views(const sr_layout *L, const void *saved) {
  sr_saved s;
  const int b = L->b, n = L->n, nk = L->nk, c = L->c;
  s.q = cluda_tensor_3d(CLUDA_F32, at_offset(saved, L->q), b, n, c);
  if (L->r > 1) {
    s.xs = cluda_tensor_4d(CLUDA_F32, at_offset(saved, L->xs), b, L->hs, L->ws, c);
    s.xs3 = cluda_tensor_3d(CLUDA_F32, at_offset(saved, L->xs), b, nk, c);
    s.xn = cluda_tensor_3d(CLUDA_F32, at_offset(saved, L->xn), b, nk, c);
    s.mean = cluda_tensor_1d(CLUDA_F32, at_offset(saved, L->mean), b * nk);
    s.rstd = cluda_tensor_1d(CLUDA_F32, at_offset(saved, L->rstd), b * nk);
  }
  s.k = cluda_tensor_3d(CLUDA_F32, at_offset(saved, L->k), b, nk, c);
  s.v = cluda_tensor_3d(CLUDA_F32, at_offset(saved, L->v), b, nk, c);
  s.probs = cluda_tensor_3d(CLUDA_F32, at_offset(saved, L->probs), b * L->heads, n, nk);
  s.o = cluda_tensor_3d(CLUDA_F32, at_offset(saved, L->o), b, n, c);
  return s;
}

/* The K (half 0) or V (half 1) rows of kv_w and entries of kv_b. */
static cluda_tensor kv_weight_half(const cluda_tensor *kv_w, int half, int c) {
  return cluda_tensor_2d(CLUDA_F32, at_offset(kv_w->data, (size_t)half * c * c * sizeof(float)), c,
                         c);
}
static cluda_tensor kv_bias_half(const cluda_tensor *kv_b, int half, int c) {
  return cluda_tensor_1d(CLUDA_F32, at_offset(kv_b->data, (size_t)half * c * sizeof(float)), c);
}

cluda_status cluda_sr_attention_forward(cluda_ctx *ctx, const cluda_sr_attention_params *p,
                                        const cluda_sr_attention_weights *w, const cluda_tensor *x,
                                        void *saved, size_t saved_bytes, cluda_tensor *y) {
  const char *op = "sr_attention_forward";
  CLUDA_TRY(check_params(op, p));
  CLUDA_TRY(check_weights(op, "w", w, p));
  CLUDA_TRY(check_map(op, "x", x, p));
  CLUDA_TRY(cluda_check_tensor(op, "y", y, CLUDA_F32, 4));
  CLUDA_REQUIRE_SAME_SHAPE(op, "y", y, "x", x);
  sr_layout L;
  CLUDA_TRY(make_layout(op, p, x->shape[0], x->shape[1], x->shape[2], &L));
  CLUDA_TRY(check_saved(op, saved, saved_bytes, &L));
  CLUDA_REQUIRE(ctx != NULL, CLUDA_ERR_ARG, "%s: ctx is NULL", op);

  const int c = L.c;
  sr_saved s = saved_views(&L, saved);
  cluda_tensor x3 = cluda_tensor_3d(CLUDA_F32, x->data, L.b, L.n, c);
  CLUDA_TRY(cluda_linear_forward(ctx, &x3, &w->q_w, &w->q_b, &s.q));
  const cluda_tensor *xr = &x3; /* what K and V are computed from */
  if (L.r > 1) {
    cluda_conv2d_params cp = sr_conv_params(L.r);
    CLUDA_TRY(cluda_conv2d_forward(ctx, &cp, x, &w->sr_w, &w->sr_b, &s.xs));
    CLUDA_TRY(cluda_layernorm_forward(ctx, &s.xs3, &w->norm_w, &w->norm_b, p->sr_norm_eps, &s.xn,
                                      &s.mean, &s.rstd));
    xr = &s.xn;
  }
  cluda_tensor wk = kv_weight_half(&w->kv_w, 0, c), wv = kv_weight_half(&w->kv_w, 1, c);
  cluda_tensor bk = kv_bias_half(&w->kv_b, 0, c), bv = kv_bias_half(&w->kv_b, 1, c);
  CLUDA_TRY(cluda_linear_forward(ctx, xr, &wk, &bk, &s.k));
  CLUDA_TRY(cluda_linear_forward(ctx, xr, &wv, &bv, &s.v));
  CLUDA_TRY(cluda_attention_forward(ctx, L.heads, &s.q, &s.k, &s.v, &s.o, &s.probs));
  cluda_tensor y3 = cluda_tensor_3d(CLUDA_F32, y->data, L.b, L.n, c);
  return cluda_linear_forward(ctx, &s.o, &w->proj_w, &w->proj_b, &y3);
}

/* The backward proper, with the scratch block `tmp` (L->own_scratch bytes) carved. */
static cluda_status backward_body(cluda_ctx *ctx, const sr_layout *L,
                                  const cluda_sr_attention_weights *w, const cluda_tensor *x,
                                  const void *saved, const cluda_tensor *dy, cluda_tensor *dx,
                                  cluda_sr_attention_weights *g, void *tmp) {
  const int b = L->b, n = L->n, nk = L->nk, c = L->c;
  sr_saved s = saved_views(L, saved);
  cluda_tensor x3 = cluda_tensor_3d(CLUDA_F32, x->data, b, n, c);
  cluda_tensor dy3 = cluda_tensor_3d(CLUDA_F32, dy->data, b, n, c);
  cluda_tensor dx3 = cluda_tensor_3d(CLUDA_F32, dx->data, b, n, c);
  cluda_tensor d_o = cluda_tensor_3d(CLUDA_F32, at_offset(tmp, L->d_o), b, n, c);
  cluda_tensor dq = cluda_tensor_3d(CLUDA_F32, at_offset(tmp, L->dq), b, n, c);
  cluda_tensor dk = cluda_tensor_3d(CLUDA_F32, at_offset(tmp, L->dk), b, nk, c);
  cluda_tensor dv = cluda_tensor_3d(CLUDA_F32, at_offset(tmp, L->dv), b, nk, c);
  cluda_tensor dkv = cluda_tensor_3d(CLUDA_F32, at_offset(tmp, L->dkv), b, nk, 2 * c);

  /* y = o Wp^T + bp */
  CLUDA_TRY(cluda_linear_backward(ctx, &s.o, &w->proj_w, &dy3, &d_o, &g->proj_w, &g->proj_b));
  CLUDA_TRY(
      cluda_attention_backward(ctx, L->heads, &s.q, &s.k, &s.v, &s.probs, &d_o, &dq, &dk, &dv));
  /* [dK | dV] is the gradient of the kv linear's output */
  const cluda_tensor *halves[2] = {&dk, &dv};
  CLUDA_TRY(cluda_concat_forward(ctx, 2, halves, &dkv));
  if (L->r > 1) {
    cluda_tensor dxr = cluda_tensor_3d(CLUDA_F32, at_offset(tmp, L->dxr), b, nk, c);
    cluda_tensor dxs3 = cluda_tensor_3d(CLUDA_F32, at_offset(tmp, L->dxs), b, nk, c);
    cluda_tensor dxs = cluda_tensor_4d(CLUDA_F32, at_offset(tmp, L->dxs), b, L->hs, L->ws, c);
    cluda_conv2d_params cp = sr_conv_params(L->r);
    CLUDA_TRY(cluda_linear_backward(ctx, &s.xn, &w->kv_w, &dkv, &dxr, &g->kv_w, &g->kv_b));
    CLUDA_TRY(cluda_layernorm_backward(ctx, &s.xs3, &w->norm_w, &s.mean, &s.rstd, &dxr, &dxs3,
                                       &g->norm_w, &g->norm_b));
    CLUDA_TRY(cluda_conv2d_backward(ctx, &cp, x, &w->sr_w, &dxs, dx, &g->sr_w, &g->sr_b));
  } else {
    CLUDA_TRY(cluda_linear_backward(ctx, &x3, &w->kv_w, &dkv, &dx3, &g->kv_w, &g->kv_b));
  }
  /* the q path's input gradient goes to d_o (free now), then is added onto dx */
  CLUDA_TRY(cluda_linear_backward(ctx, &x3, &w->q_w, &dq, &d_o, &g->q_w, &g->q_b));
  return cluda_axpy(ctx, 1.0f, &d_o, &dx3);
}

cluda_status cluda_sr_attention_backward(cluda_ctx *ctx, const cluda_sr_attention_params *p,
                                         const cluda_sr_attention_weights *w, const cluda_tensor *x,
                                         const void *saved, size_t saved_bytes,
                                         const cluda_tensor *dy, cluda_tensor *dx,
                                         cluda_sr_attention_weights *grads) {
  const char *op = "sr_attention_backward";
  CLUDA_TRY(check_params(op, p));
  CLUDA_TRY(check_weights(op, "w", w, p));
  CLUDA_TRY(check_weights(op, "grads", grads, p));
  CLUDA_TRY(check_map(op, "x", x, p));
  CLUDA_TRY(cluda_check_tensor(op, "dy", dy, CLUDA_F32, 4));
  CLUDA_REQUIRE_SAME_SHAPE(op, "dy", dy, "x", x);
  CLUDA_TRY(cluda_check_tensor(op, "dx", dx, CLUDA_F32, 4));
  CLUDA_REQUIRE_SAME_SHAPE(op, "dx", dx, "x", x);
  sr_layout L;
  CLUDA_TRY(make_layout(op, p, x->shape[0], x->shape[1], x->shape[2], &L));
  CLUDA_TRY(check_saved(op, saved, saved_bytes, &L));
  CLUDA_REQUIRE(ctx != NULL && ctx->scratch != NULL, CLUDA_ERR_ARG,
                "%s: ctx or ctx->scratch is NULL (needs %zu bytes, cluda_sr_attention_plan)", op,
                L.scratch_bytes);

  const size_t mark = cluda_arena_mark(ctx->scratch);
  void *tmp = NULL;
  cluda_status st = cluda_arena_alloc(ctx->scratch, L.own_scratch, op, &tmp);
  if (st.code == CLUDA_OK) st = backward_body(ctx, &L, w, x, saved, dy, dx, grads, tmp);
  cluda_arena_release(ctx->scratch, mark); /* on failure too */
  return st;
}

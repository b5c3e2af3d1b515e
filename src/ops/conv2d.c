/* conv2d, NHWC activations and OHWI weights (PyTorch Conv2d: cross-correlation, zero padding,
 * stride, dilation, groups).
 *
 * The CPU implementation picks one of three kernels:
 *  - depthwise (C_in / groups == 1 and C_out / groups == 1): a direct loop vectorised over
 *    the contiguous channel axis, with the weights transposed to [KH*KW, C] in scratch;
 *  - pointwise (1x1, stride 1, pad 0): one GEMM per group straight on x, no scratch;
 *  - everything else: im2col (patch vector ordered kh, kw, c_in like an OHWI weight row) +
 *    one GEMM per group, over chunks of output pixels so the column buffer stays bounded.
 * Backward is deterministic and independent of the OpenMP thread count: dx is gathered per
 * input row (no scatter races), dw is accumulated by GEMMs over a fixed chunk sequence (or,
 * for depthwise, fixed-chunk partial sums reduced in a fixed order), db per channel block. */
#include <cblas.h>
#include <string.h>

#include "op_common.h"

/* Upper bound on the im2col buffer: a chunk holds max(1, min(pixels, budget / row)) output
 * pixels of K = KH*KW*C_in/groups floats. The chunk size depends only on the shapes. */
enum { CONV_COL_BUDGET_BYTES = 16 << 20 };
/* Depthwise dw: the (n, oh) output rows are split into at most this many fixed chunks whose
 * partial sums are added in chunk order. */
enum { CONV_DW_CHUNKS = 32 };
/* Below this much work (elements touched) OpenMP overhead is not worth it. */
enum { CONV_PAR_MIN = 1 << 15 };

typedef enum conv_kind { CONV_DEPTHWISE, CONV_POINTWISE, CONV_IM2COL } conv_kind;

typedef struct conv_geom {
  int n, h, w, cin;
  int oh, ow, cout;
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int groups, cig, cog;
  int64_t k; /* KH * KW * cig: one im2col row, one weight row */
  int64_t m; /* N * OH * OW output pixels */
  conv_kind kind;
} conv_geom;

/* floor division for a possibly negative numerator and a positive divisor */
static int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

int cluda_conv2d_out_size(int in, int kernel, int stride, int pad, int dilation) {
  if (stride < 1) return 0;
  int64_t span = (int64_t)in + 2 * (int64_t)pad - (int64_t)dilation * (kernel - 1) - 1;
  int64_t out = floor_div(span, stride) + 1;
  return out < 0 ? 0 : out > INT32_MAX ? INT32_MAX : (int)out;
}

/* Fills g from validated (or at least rank-4, groups >= 1) arguments; y gives OH, OW. */
static void geom_init(conv_geom *g, const cluda_conv2d_params *p, const cluda_tensor *x,
                      const cluda_tensor *w, const cluda_tensor *y) {
  g->n = x->shape[0];
  g->h = x->shape[1];
  g->w = x->shape[2];
  g->cin = x->shape[3];
  g->oh = y->shape[1];
  g->ow = y->shape[2];
  g->cout = w->shape[0];
  g->kh = p->kernel_h;
  g->kw = p->kernel_w;
  g->sh = p->stride_h;
  g->sw = p->stride_w;
  g->ph = p->pad_h;
  g->pw = p->pad_w;
  g->dh = p->dilation_h;
  g->dw = p->dilation_w;
  g->groups = p->groups;
  g->cig = g->cin / g->groups;
  g->cog = g->cout / g->groups;
  g->k = (int64_t)g->kh * g->kw * g->cig;
  g->m = (int64_t)g->n * g->oh * g->ow;
  if (g->cig == 1 && g->cog == 1)
    g->kind = CONV_DEPTHWISE;
  else if (g->kh == 1 && g->kw == 1 && g->sh == 1 && g->sw == 1 && g->ph == 0 && g->pw == 0)
    g->kind = CONV_POINTWISE;
  else
    g->kind = CONV_IM2COL;
}

static int64_t col_chunk_pixels(const conv_geom *g) {
  int64_t rows = CONV_COL_BUDGET_BYTES / ((int64_t)sizeof(float) * (g->k > 0 ? g->k : 1));
  if (rows < 1) rows = 1;
  return rows < g->m ? rows : g->m;
}

static int dw_chunks(const conv_geom *g) {
  int64_t rows = (int64_t)g->n * g->oh;
  return rows < CONV_DW_CHUNKS ? (int)rows : CONV_DW_CHUNKS;
}

static size_t f32_bytes(int64_t count) { return cluda_arena_align((size_t)count * sizeof(float)); }

/* Exactly the scratch one call takes: forward (is_forward) or backward with the given
 * gradients requested. */
static size_t scratch_need(const conv_geom *g, int is_forward, int need_dx, int need_dw) {
  if (g->m == 0) return 0;
  int64_t taps = (int64_t)g->kh * g->kw;
  switch (g->kind) {
  case CONV_POINTWISE: return 0;
  case CONV_DEPTHWISE:
    if (is_forward) return f32_bytes(taps * g->cin);
    return (need_dx ? f32_bytes(taps * g->cin) : 0) +
           (need_dw ? f32_bytes((int64_t)dw_chunks(g) * taps * g->cin) : 0);
  case CONV_IM2COL:
    return is_forward || need_dx || need_dw ? f32_bytes(col_chunk_pixels(g) * g->k) : 0;
  }
  return 0;
}

/* The larger of forward and backward with dx, dw and db: at most one im2col chunk
 * (CONV_COL_BUDGET_BYTES, or one K-float row if that is bigger), 0 for pointwise convs,
 * and for depthwise the transposed weights plus CONV_DW_CHUNKS partial weight gradients.
 * Returns 0 for arguments that cannot be valid. */
size_t cluda_conv2d_scratch_bytes(const cluda_conv2d_params *p, const cluda_tensor *x,
                                  const cluda_tensor *w, const cluda_tensor *y) {
  if (!p || !x || !w || !y || x->ndim != 4 || w->ndim != 4 || y->ndim != 4) return 0;
  if (p->groups < 1 || p->kernel_h < 1 || p->kernel_w < 1) return 0;
  conv_geom g;
  geom_init(&g, p, x, w, y);
  if (g.m <= 0 || g.k <= 0 || g.cout <= 0) return 0;
  size_t fwd = scratch_need(&g, 1, 0, 0), bwd = scratch_need(&g, 0, 1, 1);
  return fwd > bwd ? fwd : bwd;
}

/* ---- validation ---- */

/* Checks p, x, w and the output-shaped tensor (y, or dy in the backward) and fills g. */
static cluda_status check_common(const char *op, cluda_ctx *ctx, const cluda_conv2d_params *p,
                                 const cluda_tensor *x, const cluda_tensor *w, const char *y_name,
                                 const cluda_tensor *y, conv_geom *g) {
  char d1[64], d2[64];
  CLUDA_REQUIRE(ctx != NULL && ctx->backend != NULL, CLUDA_ERR_ARG,
                "%s: ctx or ctx->backend is NULL", op);
  CLUDA_REQUIRE(p != NULL, CLUDA_ERR_ARG, "%s: params p is NULL", op);
  CLUDA_TRY(cluda_check_tensor(op, "x", x, CLUDA_F32, 4));
  CLUDA_TRY(cluda_check_tensor(op, "w", w, CLUDA_F32, 4));
  CLUDA_TRY(cluda_check_tensor(op, y_name, y, CLUDA_F32, 4));
  CLUDA_REQUIRE(p->kernel_h >= 1 && p->kernel_w >= 1, CLUDA_ERR_ARG,
                "%s: kernel %dx%d must be >= 1", op, p->kernel_h, p->kernel_w);
  CLUDA_REQUIRE(p->stride_h >= 1 && p->stride_w >= 1, CLUDA_ERR_ARG,
                "%s: stride %dx%d must be >= 1", op, p->stride_h, p->stride_w);
  CLUDA_REQUIRE(p->dilation_h >= 1 && p->dilation_w >= 1, CLUDA_ERR_ARG,
                "%s: dilation %dx%d must be >= 1", op, p->dilation_h, p->dilation_w);
  CLUDA_REQUIRE(p->pad_h >= 0 && p->pad_w >= 0, CLUDA_ERR_ARG, "%s: pad %dx%d must be >= 0", op,
                p->pad_h, p->pad_w);
  CLUDA_REQUIRE(p->groups >= 1, CLUDA_ERR_ARG, "%s: groups %d must be >= 1", op, p->groups);
  CLUDA_REQUIRE(x->shape[1] >= 1 && x->shape[2] >= 1 && x->shape[3] >= 1, CLUDA_ERR_SHAPE,
                "%s: x %s must have H, W, C_in >= 1", op, cluda_tensor_describe(x, d1, sizeof d1));
  CLUDA_REQUIRE(x->shape[3] % p->groups == 0, CLUDA_ERR_SHAPE,
                "%s: x %s: C_in %d is not divisible by groups %d", op,
                cluda_tensor_describe(x, d1, sizeof d1), x->shape[3], p->groups);
  int cout = w->shape[0];
  CLUDA_REQUIRE(cout >= 1 && cout % p->groups == 0, CLUDA_ERR_SHAPE,
                "%s: w %s: C_out %d must be >= 1 and divisible by groups %d", op,
                cluda_tensor_describe(w, d1, sizeof d1), cout, p->groups);
  CLUDA_REQUIRE(w->shape[1] == p->kernel_h && w->shape[2] == p->kernel_w &&
                    w->shape[3] == x->shape[3] / p->groups,
                CLUDA_ERR_SHAPE,
                "%s: w %s must be [C_out,KH,KW,C_in/groups] = [%d,%d,%d,%d] for x %s, groups %d",
                op, cluda_tensor_describe(w, d1, sizeof d1), cout, p->kernel_h, p->kernel_w,
                x->shape[3] / p->groups, cluda_tensor_describe(x, d2, sizeof d2), p->groups);
  int oh = cluda_conv2d_out_size(x->shape[1], p->kernel_h, p->stride_h, p->pad_h, p->dilation_h);
  int ow = cluda_conv2d_out_size(x->shape[2], p->kernel_w, p->stride_w, p->pad_w, p->dilation_w);
  CLUDA_REQUIRE(oh >= 1 && ow >= 1, CLUDA_ERR_SHAPE,
                "%s: output size %dx%d < 1 for x %s, kernel %dx%d, stride %dx%d, pad %dx%d, "
                "dilation %dx%d",
                op, oh, ow, cluda_tensor_describe(x, d1, sizeof d1), p->kernel_h, p->kernel_w,
                p->stride_h, p->stride_w, p->pad_h, p->pad_w, p->dilation_h, p->dilation_w);
  CLUDA_REQUIRE(y->shape[0] == x->shape[0] && y->shape[1] == oh && y->shape[2] == ow &&
                    y->shape[3] == cout,
                CLUDA_ERR_SHAPE, "%s: %s %s must be [N,OH,OW,C_out] = [%d,%d,%d,%d]", op, y_name,
                cluda_tensor_describe(y, d1, sizeof d1), x->shape[0], oh, ow, cout);
  geom_init(g, p, x, w, y);
  return cluda_ok();
}

static cluda_status check_bias(const char *op, const char *name, const cluda_tensor *b, int cout) {
  char d[64];
  CLUDA_TRY(cluda_check_tensor(op, name, b, CLUDA_F32, 1));
  CLUDA_REQUIRE(b->shape[0] == cout, CLUDA_ERR_SHAPE, "%s: %s %s must be [C_out] = [%d]", op, name,
                cluda_tensor_describe(b, d, sizeof d), cout);
  return cluda_ok();
}

static cluda_status check_scratch(const char *op, const cluda_ctx *ctx, size_t need) {
  if (need == 0) return cluda_ok();
  CLUDA_REQUIRE(ctx->scratch != NULL, CLUDA_ERR_ARG,
                "%s: needs %zu bytes of scratch but ctx->scratch is NULL "
                "(size it with cluda_conv2d_scratch_bytes)",
                op, need);
  size_t free_bytes = ctx->scratch->capacity - ctx->scratch->used;
  CLUDA_REQUIRE(need <= free_bytes, CLUDA_ERR_ALLOC,
                "%s: needs %zu bytes of scratch, ctx->scratch has %zu of %zu free "
                "(size it with cluda_conv2d_scratch_bytes)",
                op, need, free_bytes, ctx->scratch->capacity);
  return cluda_ok();
}

cluda_status cluda_conv2d_forward(cluda_ctx *ctx, const cluda_conv2d_params *p,
                                  const cluda_tensor *x, const cluda_tensor *w,
                                  const cluda_tensor *b, cluda_tensor *y) {
  static const char op[] = "conv2d_forward";
  conv_geom g;
  CLUDA_TRY(check_common(op, ctx, p, x, w, "y", y, &g));
  if (b) CLUDA_TRY(check_bias(op, "b", b, g.cout));
  CLUDA_TRY(check_scratch(op, ctx, scratch_need(&g, 1, 0, 0)));
  CLUDA_DISPATCH(ctx, conv2d_forward, p, x, w, b, y);
}

cluda_status cluda_conv2d_backward(cluda_ctx *ctx, const cluda_conv2d_params *p,
                                   const cluda_tensor *x, const cluda_tensor *w,
                                   const cluda_tensor *dy, cluda_tensor *dx, cluda_tensor *dw,
                                   cluda_tensor *db) {
  static const char op[] = "conv2d_backward";
  conv_geom g;
  CLUDA_TRY(check_common(op, ctx, p, x, w, "dy", dy, &g));
  if (dx) {
    CLUDA_TRY(cluda_check_tensor(op, "dx", dx, CLUDA_F32, 4));
    CLUDA_REQUIRE_SAME_SHAPE(op, "dx", dx, "x", x);
  }
  if (dw) {
    CLUDA_TRY(cluda_check_tensor(op, "dw", dw, CLUDA_F32, 4));
    CLUDA_REQUIRE_SAME_SHAPE(op, "dw", dw, "w", w);
  }
  if (db) CLUDA_TRY(check_bias(op, "db", db, g.cout));
  CLUDA_TRY(check_scratch(op, ctx, scratch_need(&g, 0, dx != NULL, dw != NULL)));
  CLUDA_DISPATCH(ctx, conv2d_backward, p, x, w, dy, dx, dw, db);
}

/* ---- CPU implementation ---- */

/* rows of y (Cout wide) start as the bias; the GEMMs then add with beta = 1 */
static void fill_bias(float *y, int64_t rows, int cout, const float *b) {
#pragma omp parallel for schedule(static) if (rows * cout > CONV_PAR_MIN)
  for (int64_t r = 0; r < rows; r++)
    memcpy(y + r * cout, b, (size_t)cout * sizeof(float));
}

/* db[c] += sum over all rows of dy[:, c]: each channel block is summed (in double) by one
 * thread in row order, so the result does not depend on the thread count. */
static void bias_grad(const float *dy, int64_t rows, int cout, float *db) {
  enum { BLOCK = 64 };
  int blocks = (cout + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) if (blocks > 1 && rows * cout > CONV_PAR_MIN)
  for (int blk = 0; blk < blocks; blk++) {
    int c0 = blk * BLOCK, c1 = c0 + BLOCK < cout ? c0 + BLOCK : cout;
    double acc[BLOCK] = {0};
    for (int64_t r = 0; r < rows; r++) {
      const float *row = dy + r * cout;
      for (int c = c0; c < c1; c++)
        acc[c - c0] += row[c];
    }
    for (int c = c0; c < c1; c++)
      db[c] += (float)acc[c - c0];
  }
}

/* col[r - r0, (kh, kw, ci)] = x[n, oh*sh - ph + kh*dh, ow*sw - pw + kw*dw, grp*cig + ci] for
 * output pixels r in [r0, r1), zero outside the input. */
static void im2col(const conv_geom *g, const float *x, int grp, int64_t r0, int64_t r1,
                   float *col) {
  const int64_t ohw = (int64_t)g->oh * g->ow;
  const size_t run = (size_t)g->cig * sizeof(float);
  /* one group and no horizontal dilation: a kernel row reads KW * C_in consecutive floats */
  const int contiguous = g->groups == 1 && g->dw == 1;
#pragma omp parallel for schedule(static) if ((r1 - r0) * g->k > CONV_PAR_MIN)
  for (int64_t r = r0; r < r1; r++) {
    int64_t n = r / ohw, rem = r - n * ohw;
    int oh = (int)(rem / g->ow), ow = (int)(rem % g->ow);
    const float *xn = x + n * g->h * g->w * g->cin + (int64_t)grp * g->cig;
    float *row = col + (r - r0) * g->k;
    for (int kh = 0; kh < g->kh; kh++) {
      int ih = oh * g->sh - g->ph + kh * g->dh;
      float *dst = row + (int64_t)kh * g->kw * g->cig;
      if (ih < 0 || ih >= g->h) {
        memset(dst, 0, run * g->kw);
        continue;
      }
      if (contiguous) {
        /* the taps of one kernel row are one contiguous stretch of x: copy it at once */
        int iw0 = ow * g->sw - g->pw;
        int lo = iw0 < 0 ? -iw0 : 0, hi = g->w - iw0 < g->kw ? g->w - iw0 : g->kw;
        if (lo > g->kw) lo = g->kw; /* padding wider than the kernel */
        if (hi < lo) hi = lo;
        memset(dst, 0, run * lo);
        if (hi > lo)
          memcpy(dst + (int64_t)lo * g->cig, xn + ((int64_t)ih * g->w + iw0 + lo) * g->cin,
                 run * (hi - lo));
        memset(dst + (int64_t)hi * g->cig, 0, run * (g->kw - hi));
        continue;
      }
      for (int kw = 0; kw < g->kw; kw++) {
        int iw = ow * g->sw - g->pw + kw * g->dw;
        if (iw < 0 || iw >= g->w)
          memset(dst + (int64_t)kw * g->cig, 0, run);
        else
          memcpy(dst + (int64_t)kw * g->cig, xn + ((int64_t)ih * g->w + iw) * g->cin, run);
      }
    }
  }
}

/* dx[n, ih, iw, grp*cig + ci] += every col entry of pixels r in [r0, r1) that im2col took from
 * there. A gather: each thread owns whole input rows (n, ih), and each element adds its
 * terms in (kh, kw) order, so there are no races and no thread-count dependence. */
static void col2im_add(const conv_geom *g, const float *col, int grp, int64_t r0, int64_t r1,
                       float *dx) {
  const int64_t ohw = (int64_t)g->oh * g->ow;
  const int64_t n0 = r0 / ohw, n1 = (r1 - 1) / ohw;
  const int64_t pairs = (n1 - n0 + 1) * g->h;
  const int cig = g->cig;
#pragma omp parallel for schedule(static) if ((r1 - r0) * g->k > CONV_PAR_MIN)
  for (int64_t idx = 0; idx < pairs; idx++) {
    int64_t n = n0 + idx / g->h;
    int ih = (int)(idx % g->h);
    /* this chunk's pixels of image n, and their output rows */
    int64_t lo = r0 > n * ohw ? r0 : n * ohw, hi = r1 < (n + 1) * ohw ? r1 : (n + 1) * ohw;
    int oh_lo = (int)((lo - n * ohw) / g->ow), oh_hi = (int)((hi - 1 - n * ohw) / g->ow);
    float *dxrow = dx + (n * g->h + ih) * g->w * g->cin + (int64_t)grp * cig;
    for (int kh = 0; kh < g->kh; kh++) {
      int t = ih + g->ph - kh * g->dh;
      if (t < 0 || t % g->sh) continue;
      int oh = t / g->sh;
      if (oh < oh_lo || oh > oh_hi) continue;
      int64_t rowbase = n * ohw + (int64_t)oh * g->ow;
      for (int iw = 0; iw < g->w; iw++) {
        float *restrict d = dxrow + (int64_t)iw * g->cin;
        for (int kw = 0; kw < g->kw; kw++) {
          int u = iw + g->pw - kw * g->dw;
          if (u < 0 || u % g->sw) continue;
          int ow = u / g->sw;
          int64_t r = rowbase + ow;
          if (ow >= g->ow || r < lo || r >= hi) continue;
          const float *restrict s = col + (r - r0) * g->k + ((int64_t)kh * g->kw + kw) * cig;
          for (int c = 0; c < cig; c++)
            d[c] += s[c];
        }
      }
    }
  }
}

/* wt[(kh*KW + kw)*C + c] = w[c, kh, kw, 0]: depthwise taps made contiguous over channels */
static void depthwise_transpose(const conv_geom *g, const float *w, float *wt) {
  int64_t taps = (int64_t)g->kh * g->kw;
  for (int64_t t = 0; t < taps; t++)
    for (int c = 0; c < g->cin; c++)
      wt[t * g->cin + c] = w[(int64_t)c * taps + t];
}

static void depthwise_forward(const conv_geom *g, const float *x, const float *wt, const float *b,
                              float *y) {
  const int C = g->cin;
  const int64_t rows = (int64_t)g->n * g->oh;
#pragma omp parallel for schedule(static) if (g->m * g->kh * g->kw * C > CONV_PAR_MIN)
  for (int64_t row = 0; row < rows; row++) {
    int64_t n = row / g->oh;
    int oh = (int)(row % g->oh);
    const float *xn = x + n * g->h * g->w * C;
    for (int ow = 0; ow < g->ow; ow++) {
      float *restrict out = y + (row * g->ow + ow) * C;
      if (b)
        memcpy(out, b, (size_t)C * sizeof(float));
      else
        memset(out, 0, (size_t)C * sizeof(float));
      for (int kh = 0; kh < g->kh; kh++) {
        int ih = oh * g->sh - g->ph + kh * g->dh;
        if (ih < 0 || ih >= g->h) continue;
        for (int kw = 0; kw < g->kw; kw++) {
          int iw = ow * g->sw - g->pw + kw * g->dw;
          if (iw < 0 || iw >= g->w) continue;
          const float *restrict xp = xn + ((int64_t)ih * g->w + iw) * C;
          const float *restrict wp = wt + ((int64_t)kh * g->kw + kw) * C;
          for (int c = 0; c < C; c++)
            out[c] += xp[c] * wp[c];
        }
      }
    }
  }
}

/* dx[n, ih, iw, c] = sum over taps (kh, kw) that read it of dy[n, oh, ow, c] w[c, kh, kw]:
 * gathered per input row, terms in (kh, kw) order. */
static void depthwise_backward_dx(const conv_geom *g, const float *dy, const float *wt, float *dx) {
  const int C = g->cin;
  const int64_t rows = (int64_t)g->n * g->h;
#pragma omp parallel for schedule(static) if (g->m * g->kh * g->kw * C > CONV_PAR_MIN)
  for (int64_t row = 0; row < rows; row++) {
    int64_t n = row / g->h;
    int ih = (int)(row % g->h);
    float *dxrow = dx + row * g->w * C;
    memset(dxrow, 0, (size_t)g->w * C * sizeof(float));
    for (int kh = 0; kh < g->kh; kh++) {
      int t = ih + g->ph - kh * g->dh;
      if (t < 0 || t % g->sh) continue;
      int oh = t / g->sh;
      if (oh >= g->oh) continue;
      const float *dyrow = dy + ((n * g->oh) + oh) * g->ow * C;
      for (int iw = 0; iw < g->w; iw++) {
        float *restrict d = dxrow + (int64_t)iw * C;
        for (int kw = 0; kw < g->kw; kw++) {
          int u = iw + g->pw - kw * g->dw;
          if (u < 0 || u % g->sw) continue;
          int ow = u / g->sw;
          if (ow >= g->ow) continue;
          const float *restrict s = dyrow + (int64_t)ow * C;
          const float *restrict wp = wt + ((int64_t)kh * g->kw + kw) * C;
          for (int c = 0; c < C; c++)
            d[c] += s[c] * wp[c];
        }
      }
    }
  }
}

/* dw[c, kh, kw] += sum over output pixels of dy[.., c] x[tap(..), c]: each of a fixed number
 * of output-row chunks sums into its own [taps, C] partial, and the partials are added in
 * chunk order. */
static void depthwise_backward_dw(const conv_geom *g, const float *x, const float *dy, float *part,
                                  float *dw) {
  const int C = g->cin;
  const int64_t taps = (int64_t)g->kh * g->kw, rows = (int64_t)g->n * g->oh;
  const int chunks = dw_chunks(g);
#pragma omp parallel for schedule(static) if (g->m * taps * C > CONV_PAR_MIN)
  for (int ch = 0; ch < chunks; ch++) {
    float *pp = part + ch * taps * C;
    memset(pp, 0, (size_t)(taps * C) * sizeof(float));
    int64_t ra = rows * ch / chunks, rb = rows * (ch + 1) / chunks;
    for (int64_t row = ra; row < rb; row++) {
      int64_t n = row / g->oh;
      int oh = (int)(row % g->oh);
      const float *xn = x + n * g->h * g->w * C;
      for (int kh = 0; kh < g->kh; kh++) {
        int ih = oh * g->sh - g->ph + kh * g->dh;
        if (ih < 0 || ih >= g->h) continue;
        for (int ow = 0; ow < g->ow; ow++) {
          const float *restrict s = dy + (row * g->ow + ow) * C;
          for (int kw = 0; kw < g->kw; kw++) {
            int iw = ow * g->sw - g->pw + kw * g->dw;
            if (iw < 0 || iw >= g->w) continue;
            const float *restrict xp = xn + ((int64_t)ih * g->w + iw) * C;
            float *restrict acc = pp + ((int64_t)kh * g->kw + kw) * C;
            for (int c = 0; c < C; c++)
              acc[c] += s[c] * xp[c];
          }
        }
      }
    }
  }
#pragma omp parallel for schedule(static) if (chunks * taps * C > CONV_PAR_MIN)
  for (int c = 0; c < C; c++)
    for (int64_t t = 0; t < taps; t++) {
      float s = 0.0f;
      for (int ch = 0; ch < chunks; ch++)
        s += part[(ch * taps + t) * C + c];
      dw[(int64_t)c * taps + t] += s;
    }
}

cluda_status cluda_cpu_conv2d_forward(cluda_ctx *ctx, const cluda_conv2d_params *p,
                                      const cluda_tensor *x, const cluda_tensor *w,
                                      const cluda_tensor *b, cluda_tensor *y) {
  conv_geom g;
  geom_init(&g, p, x, w, y);
  if (g.m == 0) return cluda_ok();
  const float *xp = cluda_f32(x), *wp = cluda_f32(w), *bp = b ? cluda_f32(b) : NULL;
  float *yp = cluda_f32(y);
  const float beta = bp ? 1.0f : 0.0f;

  if (g.kind == CONV_POINTWISE) {
    /* y[m, grp] = x[m, grp] w[grp]^T: x already is the column matrix */
    if (bp) fill_bias(yp, g.m, g.cout, bp);
    for (int grp = 0; grp < g.groups; grp++)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)g.m, g.cog, g.cig, 1.0f,
                  xp + (int64_t)grp * g.cig, g.cin, wp + (int64_t)grp * g.cog * g.cig, g.cig, beta,
                  yp + (int64_t)grp * g.cog, g.cout);
    return cluda_ok();
  }

  size_t mark = cluda_arena_mark(ctx->scratch);
  if (g.kind == CONV_DEPTHWISE) {
    float *wt;
    CLUDA_TRY(cluda_arena_alloc(ctx->scratch, scratch_need(&g, 1, 0, 0),
                                "conv2d_forward depthwise weights", (void **)&wt));
    depthwise_transpose(&g, wp, wt);
    depthwise_forward(&g, xp, wt, bp, yp);
    cluda_arena_release(ctx->scratch, mark);
    return cluda_ok();
  }

  const int64_t chunk = col_chunk_pixels(&g);
  float *col;
  CLUDA_TRY(cluda_arena_alloc(ctx->scratch, scratch_need(&g, 1, 0, 0), "conv2d_forward im2col",
                              (void **)&col));
  for (int64_t r0 = 0; r0 < g.m; r0 += chunk) {
    int64_t r1 = r0 + chunk < g.m ? r0 + chunk : g.m;
    if (bp) fill_bias(yp + r0 * g.cout, r1 - r0, g.cout, bp);
    for (int grp = 0; grp < g.groups; grp++) {
      im2col(&g, xp, grp, r0, r1, col);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)(r1 - r0), g.cog, (int)g.k, 1.0f,
                  col, (int)g.k, wp + (int64_t)grp * g.cog * g.k, (int)g.k, beta,
                  yp + r0 * g.cout + (int64_t)grp * g.cog, g.cout);
    }
  }
  cluda_arena_release(ctx->scratch, mark);
  return cluda_ok();
}

cluda_status cluda_cpu_conv2d_backward(cluda_ctx *ctx, const cluda_conv2d_params *p,
                                       const cluda_tensor *x, const cluda_tensor *w,
                                       const cluda_tensor *dy, cluda_tensor *dx, cluda_tensor *dw,
                                       cluda_tensor *db) {
  conv_geom g;
  geom_init(&g, p, x, w, dy);
  const float *xp = cluda_f32(x), *wp = cluda_f32(w), *dyp = cluda_f32(dy);
  float *dxp = dx ? cluda_f32(dx) : NULL, *dwp = dw ? cluda_f32(dw) : NULL;
  if (g.m == 0) {
    /* an empty batch: nothing to add to dw/db, and dx (also empty) has nothing to overwrite */
    return cluda_ok();
  }
  if (db) bias_grad(dyp, g.m, g.cout, cluda_f32(db));
  if (!dxp && !dwp) return cluda_ok();

  if (g.kind == CONV_POINTWISE) {
    for (int grp = 0; grp < g.groups; grp++) {
      const float *dyg = dyp + (int64_t)grp * g.cog;
      const float *wg = wp + (int64_t)grp * g.cog * g.cig;
      if (dwp) /* dw[grp] += dy[:, grp]^T x[:, grp] */
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, g.cog, g.cig, (int)g.m, 1.0f, dyg,
                    g.cout, xp + (int64_t)grp * g.cig, g.cin, 1.0f,
                    dwp + (int64_t)grp * g.cog * g.cig, g.cig);
      if (dxp) /* dx[:, grp] = dy[:, grp] w[grp] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)g.m, g.cig, g.cog, 1.0f, dyg,
                    g.cout, wg, g.cig, 0.0f, dxp + (int64_t)grp * g.cig, g.cin);
    }
    return cluda_ok();
  }

  size_t mark = cluda_arena_mark(ctx->scratch);
  if (g.kind == CONV_DEPTHWISE) {
    const int64_t taps = (int64_t)g.kh * g.kw;
    if (dxp) {
      float *wt;
      CLUDA_TRY(cluda_arena_alloc(ctx->scratch, f32_bytes(taps * g.cin),
                                  "conv2d_backward depthwise weights", (void **)&wt));
      depthwise_transpose(&g, wp, wt);
      depthwise_backward_dx(&g, dyp, wt, dxp);
    }
    if (dwp) {
      float *part;
      cluda_status s = cluda_arena_alloc(ctx->scratch, f32_bytes(dw_chunks(&g) * taps * g.cin),
                                         "conv2d_backward depthwise dw partials", (void **)&part);
      if (s.code != CLUDA_OK) {
        cluda_arena_release(ctx->scratch, mark);
        return s;
      }
      depthwise_backward_dw(&g, xp, dyp, part, dwp);
    }
    cluda_arena_release(ctx->scratch, mark);
    return cluda_ok();
  }

  const int64_t chunk = col_chunk_pixels(&g);
  float *col;
  CLUDA_TRY(cluda_arena_alloc(ctx->scratch, scratch_need(&g, 0, dxp != NULL, dwp != NULL),
                              "conv2d_backward im2col", (void **)&col));
  if (dxp) {
    int64_t count = cluda_tensor_numel(dx);
#pragma omp parallel for schedule(static) if (count > CONV_PAR_MIN)
    for (int64_t i = 0; i < count; i++)
      dxp[i] = 0.0f;
  }
  /* chunks run in a fixed order, so dw's accumulation order only depends on the shapes */
  for (int64_t r0 = 0; r0 < g.m; r0 += chunk) {
    int64_t r1 = r0 + chunk < g.m ? r0 + chunk : g.m;
    int mc = (int)(r1 - r0);
    for (int grp = 0; grp < g.groups; grp++) {
      const float *dyg = dyp + r0 * g.cout + (int64_t)grp * g.cog;
      const float *wg = wp + (int64_t)grp * g.cog * g.k;
      if (dwp) { /* dw[grp] += dy[chunk, grp]^T col */
        im2col(&g, xp, grp, r0, r1, col);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, g.cog, (int)g.k, mc, 1.0f, dyg, g.cout,
                    col, (int)g.k, 1.0f, dwp + (int64_t)grp * g.cog * g.k, (int)g.k);
      }
      if (dxp) { /* dcol = dy[chunk, grp] w[grp], then folded back into dx */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, mc, (int)g.k, g.cog, 1.0f, dyg,
                    g.cout, wg, (int)g.k, 0.0f, col, (int)g.k);
        col2im_add(&g, col, grp, r0, r1, dxp);
      }
    }
  }
  cluda_arena_release(ctx->scratch, mark);
  return cluda_ok();
}

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
/* ... of at least this many output pixels each, so that small images do not spend more time
 * clearing and adding partials than summing. */
enum { CONV_DW_CHUNK_PIXELS = 256 };
/* Below this much work (elements touched) OpenMP overhead is not worth it. */
enum { CONV_PAR_MIN = 1 << 15 };
/* Depthwise dw: channels per slice of the taps loop. */
enum { DW_SLICE = 128 };

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
  int64_t rows = (int64_t)g->n * g->oh, c = rows < CONV_DW_CHUNKS ? rows : CONV_DW_CHUNKS;
  if (g->m / CONV_DW_CHUNK_PIXELS < c) c = g->m / CONV_DW_CHUNK_PIXELS;
  return c < 1 ? 1 : (int)c;
}

static int conv_direct(const conv_geom *g);

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
    if (is_forward && conv_direct(g)) return f32_bytes(g->k * g->cout);
    if (!is_forward && conv_direct(g)) { /* dw directly, then dx through im2col */
      size_t part = need_dw ? f32_bytes((int64_t)dw_chunks(g) * g->k * g->cout) : 0;
      size_t col = need_dx ? f32_bytes(col_chunk_pixels(g) * g->k) : 0;
      return part > col ? part : col;
    }
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

/* The taps of one spatial axis that land inside the other tensor: tap k = first + i * step
 * for i < count reads position pos + i * delta there. */
typedef struct dw_taps {
  int first, step, count;
  int64_t pos, delta;
} dw_taps;

/* Forward (and dw): tap k of output position o reads input position o*s - pad + k*dil,
 * kept while it lies in [0, len). The valid k form one contiguous range. */
static dw_taps taps_forward(int o, int s, int pad, int dil, int kernel, int len) {
  dw_taps t = {0, 1, 0, 0, dil};
  int64_t p = (int64_t)o * s - pad;
  int64_t lo = p >= 0 ? 0 : (-p + dil - 1) / dil;
  int64_t hi = p > len - 1 ? -1 : (len - 1 - p) / dil; /* last k inside */
  if (hi > kernel - 1) hi = kernel - 1;
  if (hi >= lo) {
    t.first = (int)lo;
    t.count = (int)(hi - lo + 1);
    t.pos = p + lo * dil;
  }
  return t;
}

static int gcd_int(int a, int b) {
  while (b) {
    int r = a % b;
    a = b;
    b = r;
  }
  return a;
}

/* dx: input position i receives tap k from output position (i + pad - k*dil) / s when that
 * is a whole number in [0, out_len). The valid k step by s / gcd(s, dil). */
static dw_taps taps_backward(int i, int s, int pad, int dil, int kernel, int out_len) {
  dw_taps t = {0, 1, 0, 0, 0};
  int64_t p = (int64_t)i + pad, top = (int64_t)(out_len - 1) * s;
  int k = 0;
  for (; k < kernel && p - (int64_t)k * dil >= 0; k++) /* the first valid k, if any */
    if ((p - (int64_t)k * dil) % s == 0 && p - (int64_t)k * dil <= top) break;
  if (k >= kernel || p - (int64_t)k * dil < 0) return t;
  t.first = k;
  t.step = s / gcd_int(s, dil);
  t.pos = (p - (int64_t)k * dil) / s;
  t.delta = -(int64_t)t.step * dil / s;
  /* later taps read lower output positions: only the lower bound can end the run */
  for (; k < kernel && p - (int64_t)k * dil >= 0; k += t.step)
    t.count++;
  return t;
}

/* The range [lo, hi) of output positions o in [0, out_len) whose taps all lie inside
 * [0, len) (forward: o*s - pad + k*dil for every k < kernel); hi <= lo when there is none. */
static void interior_forward(int s, int pad, int dil, int kernel, int len, int out_len, int *lo,
                             int *hi) {
  int64_t span = (int64_t)(kernel - 1) * dil;
  int64_t a = (pad + s - 1) / s, b = len - 1 - span + pad >= 0 ? (len - 1 - span + pad) / s + 1 : 0;
  *lo = (int)(a < out_len ? a : out_len);
  *hi = (int)(b < out_len ? b : out_len);
}

/* The depthwise inner kernels, vectorised over the contiguous channels with GCC vector
 * extensions, one accumulator per vector kept in registers over all taps. The library is
 * built for baseline x86-64 (SSE2 only), so they are compiled for AVX-512, AVX2 and the
 * baseline and picked at run time (2-3x apart). Each channel's terms are added in the same
 * order in every variant, and ISO C mode compiles without FMA contraction
 * (-ffp-contract=off), so all variants give the same bits.
 *
 * pixels: for p < count, out[p*ostep + c] = init[c] (0 without init) + sum over the taps
 *   (i, j) of rh x rw, in order, of src[(rh.pos + i rh.delta) rstride + (rw.pos + p pstep +
 *   j rw.delta) C + c] * wt[((rh.first + i rh.step) KW + rw.first + j rw.step) C + c].
 * tap_sum: acc[c] += sum over p < count, in order, of a[p C + c] * b[p bstep + c], c < cn.
 * tap_sum3: the same for three taps t at once (b + t tstep into acc + t C): a is loaded
 *   once for all three, and the three independent sums hide the add latency. */
#define DW_KERNELS(SFX, VW, NV, ATTR)                                                              \
  typedef float dw_vec_##SFX __attribute__((vector_size((VW) * sizeof(float))));                   \
  ATTR static inline dw_vec_##SFX dw_ld_##SFX(const float *p) {                                    \
    dw_vec_##SFX v;                                                                                \
    memcpy(&v, p, sizeof v);                                                                       \
    return v;                                                                                      \
  }                                                                                                \
  /* nv (a constant after inlining) vectors of channels from c0, for one pixel */                  \
  ATTR static inline __attribute__((always_inline)) void dw_pixel_blk_##SFX(                       \
      int nv, int c0, const float *src, int64_t rstride, dw_taps rh, int64_t pos, dw_taps rw,      \
      const float *wt, int64_t wrs, int C, const float *init, float *out) {                        \
    dw_vec_##SFX acc[NV];                                                                          \
    for (int v = 0; v < nv; v++)                                                                   \
      acc[v] = init ? dw_ld_##SFX(init + c0 + v * (VW)) : (dw_vec_##SFX){0};                       \
    for (int i = 0; i < rh.count; i++) {                                                           \
      const float *srow = src + (rh.pos + i * rh.delta) * rstride + c0;                            \
      const float *wrow = wt + (int64_t)(rh.first + i * rh.step) * wrs + c0;                       \
      for (int j = 0; j < rw.count; j++) {                                                         \
        const float *xp = srow + (pos + j * rw.delta) * C;                                         \
        const float *wp = wrow + (int64_t)(rw.first + j * rw.step) * C;                            \
        for (int v = 0; v < nv; v++)                                                               \
          acc[v] += dw_ld_##SFX(xp + v * (VW)) * dw_ld_##SFX(wp + v * (VW));                       \
      }                                                                                            \
    }                                                                                              \
    memcpy(out + c0, acc, (size_t)nv * sizeof acc[0]);                                             \
  }                                                                                                \
  ATTR static void dw_pixels_##SFX(const float *src, int64_t rstride, dw_taps rh, dw_taps rw,      \
                                   int64_t pstep, int count, const float *wt, int kw_count, int C, \
                                   const float *init, float *out, int64_t ostep) {                 \
    const int64_t wrs = (int64_t)kw_count * C;                                                     \
    for (int p = 0; p < count; p++) {                                                              \
      const int64_t pos = rw.pos + p * pstep;                                                      \
      float *o = out + p * ostep;                                                                  \
      int c0 = 0;                                                                                  \
      for (; c0 + (NV) * (VW) <= C; c0 += (NV) * (VW))                                             \
        dw_pixel_blk_##SFX(NV, c0, src, rstride, rh, pos, rw, wt, wrs, C, init, o);                \
      for (; c0 + (VW) <= C; c0 += (VW))                                                           \
        dw_pixel_blk_##SFX(1, c0, src, rstride, rh, pos, rw, wt, wrs, C, init, o);                 \
      for (; c0 < C; c0++) {                                                                       \
        float acc = init ? init[c0] : 0.0f;                                                        \
        for (int i = 0; i < rh.count; i++)                                                         \
          for (int j = 0; j < rw.count; j++)                                                       \
            acc += src[(rh.pos + i * rh.delta) * rstride + (pos + j * rw.delta) * C + c0] *        \
                   wt[(int64_t)(rh.first + i * rh.step) * wrs +                                    \
                      (int64_t)(rw.first + j * rw.step) * C + c0];                                 \
        o[c0] = acc;                                                                               \
      }                                                                                            \
    }                                                                                              \
  }                                                                                                \
  ATTR static inline __attribute__((always_inline)) void dw_sum_blk_##SFX(                         \
      int nv, int c0, const float *a, const float *b, int64_t bstep, int count, int C,             \
      float *acc) {                                                                                \
    dw_vec_##SFX s[NV];                                                                            \
    for (int v = 0; v < nv; v++)                                                                   \
      s[v] = dw_ld_##SFX(acc + c0 + v * (VW));                                                     \
    for (int p = 0; p < count; p++)                                                                \
      for (int v = 0; v < nv; v++)                                                                 \
        s[v] += dw_ld_##SFX(a + (int64_t)p * C + c0 + v * (VW)) *                                  \
                dw_ld_##SFX(b + p * bstep + c0 + v * (VW));                                        \
    memcpy(acc + c0, s, (size_t)nv * sizeof s[0]);                                                 \
  }                                                                                                \
  ATTR static void dw_tap_sum_##SFX(const float *a, const float *b, int64_t bstep, int count,      \
                                    int C, int cn, float *acc) {                                   \
    int c0 = 0;                                                                                    \
    for (; c0 + (NV) * (VW) <= cn; c0 += (NV) * (VW))                                              \
      dw_sum_blk_##SFX(NV, c0, a, b, bstep, count, C, acc);                                        \
    for (; c0 + (VW) <= cn; c0 += (VW))                                                            \
      dw_sum_blk_##SFX(1, c0, a, b, bstep, count, C, acc);                                         \
    for (; c0 < cn; c0++) {                                                                        \
      float s = acc[c0];                                                                           \
      for (int p = 0; p < count; p++)                                                              \
        s += a[(int64_t)p * C + c0] * b[p * bstep + c0];                                           \
      acc[c0] = s;                                                                                 \
    }                                                                                              \
  }                                                                                                \
  ATTR static inline __attribute__((always_inline)) void dw_sum3_blk_##SFX(                        \
      int nv, int c0, const float *a, const float *b, int64_t bstep, int64_t tstep, int count,     \
      int C, float *acc) {                                                                         \
    dw_vec_##SFX s[3][NV];                                                                         \
    for (int t = 0; t < 3; t++)                                                                    \
      for (int v = 0; v < nv; v++)                                                                 \
        s[t][v] = dw_ld_##SFX(acc + t * C + c0 + v * (VW));                                        \
    for (int p = 0; p < count; p++)                                                                \
      for (int v = 0; v < nv; v++) {                                                               \
        const dw_vec_##SFX d = dw_ld_##SFX(a + (int64_t)p * C + c0 + v * (VW));                    \
        for (int t = 0; t < 3; t++)                                                                \
          s[t][v] += d * dw_ld_##SFX(b + p * bstep + t * tstep + c0 + v * (VW));                   \
      }                                                                                            \
    for (int t = 0; t < 3; t++)                                                                    \
      memcpy(acc + t * C + c0, s[t], (size_t)nv * sizeof s[t][0]);                                 \
  }                                                                                                \
  ATTR static void dw_tap_sum3_##SFX(const float *a, const float *b, int64_t bstep, int64_t tstep, \
                                     int count, int C, int cn, float *acc) {                       \
    int c0 = 0;                                                                                    \
    for (; c0 + (NV) * (VW) <= cn; c0 += (NV) * (VW))                                              \
      dw_sum3_blk_##SFX(NV, c0, a, b, bstep, tstep, count, C, acc);                                \
    for (; c0 + (VW) <= cn; c0 += (VW))                                                            \
      dw_sum3_blk_##SFX(1, c0, a, b, bstep, tstep, count, C, acc);                                 \
    for (; c0 < cn; c0++)                                                                          \
      for (int t = 0; t < 3; t++) {                                                                \
        float s = acc[t * C + c0];                                                                 \
        for (int p = 0; p < count; p++)                                                            \
          s += a[(int64_t)p * C + c0] * b[p * bstep + t * tstep + c0];                             \
        acc[t * C + c0] = s;                                                                       \
      }                                                                                            \
  }

#if defined(__GNUC__) && defined(__x86_64__)
#define DW_X86 1
DW_KERNELS(avx512, 16, 4, __attribute__((target("avx512f"))))
DW_KERNELS(avx2, 8, 4, __attribute__((target("avx2"))))
#endif
DW_KERNELS(base, 4, 4, )

typedef void dw_pixels_fn(const float *src, int64_t rstride, dw_taps rh, dw_taps rw, int64_t pstep,
                          int count, const float *wt, int kw_count, int C, const float *init,
                          float *out, int64_t ostep);
typedef void dw_tap_sum_fn(const float *a, const float *b, int64_t bstep, int count, int C, int cn,
                           float *acc);
typedef void dw_tap_sum3_fn(const float *a, const float *b, int64_t bstep, int64_t tstep, int count,
                            int C, int cn, float *acc);
typedef struct dw_kernels {
  dw_pixels_fn *pixels;
  dw_tap_sum_fn *tap_sum;
  dw_tap_sum3_fn *tap_sum3;
} dw_kernels;

static dw_kernels dw_kernels_pick(void) {
#ifdef DW_X86
  if (__builtin_cpu_supports("avx512f"))
    return (dw_kernels){dw_pixels_avx512, dw_tap_sum_avx512, dw_tap_sum3_avx512};
  if (__builtin_cpu_supports("avx2"))
    return (dw_kernels){dw_pixels_avx2, dw_tap_sum_avx2, dw_tap_sum3_avx2};
#endif
  return (dw_kernels){dw_pixels_base, dw_tap_sum_base, dw_tap_sum3_base};
}

/* y[n, oh, ow, c] = b[c] + sum over in-bounds taps (kh, kw), in order, of x w; one thread
 * per output row; the columns whose taps are all inside run without per-pixel bounds. */
static void depthwise_forward(const conv_geom *g, const float *x, const float *wt, const float *b,
                              float *y) {
  const int C = g->cin;
  const int64_t rows = (int64_t)g->n * g->oh, rstride = (int64_t)g->w * C;
  const dw_kernels k = dw_kernels_pick();
  int lo, hi;
  interior_forward(g->sw, g->pw, g->dw, g->kw, g->w, g->ow, &lo, &hi);
#pragma omp parallel for schedule(static) if (g->m * g->kh * g->kw * C > CONV_PAR_MIN)
  for (int64_t row = 0; row < rows; row++) {
    const int64_t n = row / g->oh;
    const dw_taps rh = taps_forward((int)(row % g->oh), g->sh, g->ph, g->dh, g->kh, g->h);
    const float *xn = x + n * g->h * rstride;
    float *yrow = y + row * g->ow * C;
    for (int ow = 0; ow < g->ow; ow++) {
      if (ow == lo && hi > lo) { /* the interior: all KW taps, input column ow*sw - pw */
        dw_taps rw = {0, 1, g->kw, (int64_t)lo * g->sw - g->pw, g->dw};
        k.pixels(xn, rstride, rh, rw, g->sw, hi - lo, wt, g->kw, C, b, yrow + (int64_t)lo * C, C);
        ow = hi - 1;
        continue;
      }
      dw_taps rw = taps_forward(ow, g->sw, g->pw, g->dw, g->kw, g->w);
      k.pixels(xn, rstride, rh, rw, 0, 1, wt, g->kw, C, b, yrow + (int64_t)ow * C, C);
    }
  }
}

/* dx[n, ih, iw, c] = sum over taps (kh, kw) that read it of dy[n, oh, ow, c] w[c, kh, kw]:
 * gathered per input row, terms in (kh, kw) order. With stride 1 the columns that get all
 * KW taps run without per-pixel bounds. */
static void depthwise_backward_dx(const conv_geom *g, const float *dy, const float *wt, float *dx) {
  const int C = g->cin;
  const int64_t rows = (int64_t)g->n * g->h, rstride = (int64_t)g->ow * C;
  const dw_kernels k = dw_kernels_pick();
  /* stride 1: iw gets every tap iff 0 <= iw + pw - kw*dw < OW for all kw */
  int lo = 0, hi = 0;
  if (g->sw == 1) {
    int64_t a = (int64_t)(g->kw - 1) * g->dw - g->pw, b = (int64_t)g->ow - g->pw;
    lo = (int)(a < 0 ? 0 : a < g->w ? a : g->w);
    hi = (int)(b < lo ? lo : b < g->w ? b : g->w);
  }
#pragma omp parallel for schedule(static) if (g->m * g->kh * g->kw * C > CONV_PAR_MIN)
  for (int64_t row = 0; row < rows; row++) {
    const int64_t n = row / g->h;
    const dw_taps rh = taps_backward((int)(row % g->h), g->sh, g->ph, g->dh, g->kh, g->oh);
    const float *dyn = dy + n * g->oh * rstride;
    float *dxrow = dx + row * g->w * C;
    for (int iw = 0; iw < g->w; iw++) {
      if (iw == lo && hi > lo) {
        dw_taps rw = {0, 1, g->kw, (int64_t)lo + g->pw, -(int64_t)g->dw};
        k.pixels(dyn, rstride, rh, rw, 1, hi - lo, wt, g->kw, C, NULL, dxrow + (int64_t)lo * C, C);
        iw = hi - 1;
        continue;
      }
      dw_taps rw = taps_backward(iw, g->sw, g->pw, g->dw, g->kw, g->ow);
      k.pixels(dyn, rstride, rh, rw, 0, 1, wt, g->kw, C, NULL, dxrow + (int64_t)iw * C, C);
    }
  }
}

/* dw[c, kh, kw] += sum over output pixels of dy[.., c] x[tap(..), c]: each of a fixed number
 * of output-row chunks sums into its own [taps, C] partial (per tap: rows, then columns in
 * order), and the partials are added in chunk order. */
static void depthwise_backward_dw(const conv_geom *g, const float *x, const float *dy, float *part,
                                  float *dw) {
  const int C = g->cin;
  const int64_t taps = (int64_t)g->kh * g->kw, rows = (int64_t)g->n * g->oh;
  const int64_t rstride = (int64_t)g->w * C;
  const int chunks = dw_chunks(g);
  const dw_kernels k = dw_kernels_pick();
  int lo, hi; /* the output columns whose taps are all inside the input row */
  interior_forward(g->sw, g->pw, g->dw, g->kw, g->w, g->ow, &lo, &hi);
  /* work items: (chunk, channel slice); a slice keeps its dy and x rows in L1 over the taps */
  const int slices = (C + DW_SLICE - 1) / DW_SLICE, items = chunks * slices;
#pragma omp parallel for schedule(static) if (g->m * taps * C > CONV_PAR_MIN)
  for (int it = 0; it < items; it++) {
    const int ch = it / slices, c0 = it % slices * DW_SLICE;
    const int cn = C - c0 < DW_SLICE ? C - c0 : DW_SLICE;
    float *pp = part + ch * taps * C;
    for (int64_t t = 0; t < taps; t++)
      memset(pp + t * C + c0, 0, (size_t)cn * sizeof(float));
    int64_t ra = rows * ch / chunks, rb = rows * (ch + 1) / chunks;
    for (int64_t row = ra; row < rb; row++) {
      const int64_t n = row / g->oh;
      const dw_taps rh = taps_forward((int)(row % g->oh), g->sh, g->ph, g->dh, g->kh, g->h);
      const float *dyrow = dy + row * g->ow * C;
      for (int i = 0; i < rh.count; i++) {
        const int kh = rh.first + i;
        const float *xrow = x + (n * g->h + rh.pos + i * rh.delta) * rstride + c0;
        float *acc = pp + (int64_t)kh * g->kw * C + c0;
        /* 3 wide: the columns where all taps are inside go through tap_sum3; each tap still
         * adds its columns in order (left border, interior, right border) */
        const int fused = g->kw == 3 && hi > lo;
        for (int kw = 0; kw < g->kw; kw++) {
          /* the output columns whose tap kw lies inside the row: a contiguous range */
          int64_t off = (int64_t)kw * g->dw - g->pw;
          int64_t oa = off >= 0 ? 0 : (-off + g->sw - 1) / g->sw;
          int64_t ob = off > g->w - 1 ? 0 : (g->w - 1 - off) / g->sw + 1;
          if (ob > g->ow) ob = g->ow;
          int64_t e = fused ? lo : ob;
          if (e > oa)
            k.tap_sum(dyrow + oa * C + c0, xrow + (oa * g->sw + off) * C, (int64_t)g->sw * C,
                      (int)(e - oa), C, cn, acc + (int64_t)kw * C);
        }
        if (!fused) continue;
        k.tap_sum3(dyrow + (int64_t)lo * C + c0, xrow + ((int64_t)lo * g->sw - g->pw) * C,
                   (int64_t)g->sw * C, (int64_t)g->dw * C, hi - lo, C, cn, acc);
        for (int kw = 0; kw < 3; kw++) {
          int64_t off = (int64_t)kw * g->dw - g->pw;
          int64_t ob = off > g->w - 1 ? 0 : (g->w - 1 - off) / g->sw + 1;
          if (ob > g->ow) ob = g->ow;
          if (ob > hi)
            k.tap_sum(dyrow + (int64_t)hi * C + c0, xrow + ((int64_t)hi * g->sw + off) * C,
                      (int64_t)g->sw * C, (int)(ob - hi), C, cn, acc + (int64_t)kw * C);
        }
      }
    }
  }
  /* per channel block and tap: the chunk partials in chunk order */
  enum { RB = 64 };
  const int blocks = (C + RB - 1) / RB;
#pragma omp parallel for schedule(static) if (chunks * taps * C > CONV_PAR_MIN)
  for (int blk = 0; blk < blocks; blk++) {
    const int c0 = blk * RB, cn = C - c0 < RB ? C - c0 : RB;
    for (int64_t t = 0; t < taps; t++) {
      float s[RB] = {0};
      for (int ch = 0; ch < chunks; ch++) {
        const float *restrict pp = part + (ch * taps + t) * C + c0;
        for (int c = 0; c < cn; c++)
          s[c] += pp[c];
      }
      for (int c = 0; c < cn; c++)
        dw[(int64_t)(c0 + c) * taps + t] += s[c];
    }
  }
}

/* ---- direct kernel for convolutions with few input channels (the RGB stem) ---- */

/* With C_in this small, im2col copies K = KH*KW*C_in floats per output pixel for a GEMM of
 * only C_out columns, and the copy costs as much as the GEMM. The direct kernel reads the
 * taps straight from x (through a table of K offsets) for tiles of CD_PIX output pixels of
 * one row, each tap value broadcast against C_out weights, all sums in registers. Tiles that
 * touch the padding are first gathered (zero-filled) into a small buffer. Sum order per
 * output: bias, then the taps in (kh, kw, c_in) order, for every thread count and variant. */
enum { CD_PIX = 6, CD_MAX_CIN = 4, CD_MAX_K = 256 };

static int conv_direct(const conv_geom *g) {
  return g->kind == CONV_IM2COL && g->groups == 1 && g->cin <= CD_MAX_CIN && g->k <= CD_MAX_K;
}

/* dst[p][co] = bias[co] (0 without bias) + sum over k < K of src[p][off[k]] wt[k cout + co],
 * for p < np pixels. */
#define CD_KERNELS(SFX, VW, ATTR)                                                                  \
  typedef float cd_vec_##SFX __attribute__((vector_size((VW) * sizeof(float))));                   \
  ATTR static inline __attribute__((always_inline)) void cd_blk_##SFX(                             \
      int np, int nv, const float *const *src, const int32_t *off, int K, const float *wt,         \
      int cout, int co, const float *bias, float *const *dst) {                                    \
    cd_vec_##SFX acc[CD_PIX][2];                                                                   \
    for (int p = 0; p < np; p++)                                                                   \
      for (int v = 0; v < nv; v++) {                                                               \
        acc[p][v] = (cd_vec_##SFX){0};                                                             \
        if (bias) memcpy(&acc[p][v], bias + co + v * (VW), sizeof acc[p][v]);                      \
      }                                                                                            \
    for (int k = 0; k < K; k++) {                                                                  \
      cd_vec_##SFX wv[2];                                                                          \
      for (int v = 0; v < nv; v++)                                                                 \
        memcpy(&wv[v], wt + (int64_t)k * cout + co + v * (VW), sizeof wv[v]);                      \
      for (int p = 0; p < np; p++) {                                                               \
        const float xs = src[p][off[k]];                                                           \
        for (int v = 0; v < nv; v++)                                                               \
          acc[p][v] += xs * wv[v];                                                                 \
      }                                                                                            \
    }                                                                                              \
    for (int p = 0; p < np; p++)                                                                   \
      for (int v = 0; v < nv; v++)                                                                 \
        memcpy(dst[p] + co + v * (VW), &acc[p][v], sizeof acc[p][v]);                              \
  }                                                                                                \
  ATTR static void cd_pixels_##SFX(int np, const float *const *src, const int32_t *off, int K,     \
                                   const float *wt, int cout, const float *bias,                   \
                                   float *const *dst) {                                            \
    int co = 0;                                                                                    \
    if (np == CD_PIX) { /* constant trip counts: the sums stay in registers */                     \
      for (; co + 2 * (VW) <= cout; co += 2 * (VW))                                                \
        cd_blk_##SFX(CD_PIX, 2, src, off, K, wt, cout, co, bias, dst);                             \
      for (; co + (VW) <= cout; co += (VW))                                                        \
        cd_blk_##SFX(CD_PIX, 1, src, off, K, wt, cout, co, bias, dst);                             \
    } else {                                                                                       \
      for (; co + (VW) <= cout; co += (VW))                                                        \
        cd_blk_##SFX(np, 1, src, off, K, wt, cout, co, bias, dst);                                 \
    }                                                                                              \
    for (; co < cout; co++)                                                                        \
      for (int p = 0; p < np; p++) {                                                               \
        float acc = bias ? bias[co] : 0.0f;                                                        \
        for (int k = 0; k < K; k++)                                                                \
          acc += src[p][off[k]] * wt[(int64_t)k * cout + co];                                      \
        dst[p][co] = acc;                                                                          \
      }                                                                                            \
  }

#ifdef DW_X86
CD_KERNELS(avx512, 16, __attribute__((target("avx512f"))))
CD_KERNELS(avx2, 8, __attribute__((target("avx2"))))
#endif
CD_KERNELS(base, 4, )

typedef void cd_pixels_fn(int np, const float *const *src, const int32_t *off, int K,
                          const float *wt, int cout, const float *bias, float *const *dst);

static cd_pixels_fn *cd_pick(void) {
#ifdef DW_X86
  if (__builtin_cpu_supports("avx512f")) return cd_pixels_avx512;
  if (__builtin_cpu_supports("avx2")) return cd_pixels_avx2;
#endif
  return cd_pixels_base;
}

/* wt[k, co] = w[co, k]: the weights as a [K, C_out] matrix */
static void direct_transpose(const conv_geom *g, const float *w, float *wt) {
  for (int64_t k = 0; k < g->k; k++)
    for (int co = 0; co < g->cout; co++)
      wt[k * g->cout + co] = w[(int64_t)co * g->k + k];
}

static void direct_forward(const conv_geom *g, const float *x, const float *wt, const float *b,
                           float *y) {
  const int K = (int)g->k, cin = g->cin;
  const int64_t rows = (int64_t)g->n * g->oh, rstride = (int64_t)g->w * cin;
  cd_pixels_fn *const kern = cd_pick();
  int32_t off[CD_MAX_K], ident[CD_MAX_K]; /* tap offsets in x, and in a gathered patch */
  for (int kh = 0, k = 0; kh < g->kh; kh++)
    for (int kw = 0; kw < g->kw; kw++)
      for (int ci = 0; ci < cin; ci++, k++) {
        off[k] = (int32_t)((int64_t)kh * g->dh * rstride + ((int64_t)kw * g->dw) * cin + ci);
        ident[k] = k;
      }
  int lo, hi; /* the output columns whose taps are all inside the input row */
  interior_forward(g->sw, g->pw, g->dw, g->kw, g->w, g->ow, &lo, &hi);
#pragma omp parallel for schedule(static) if (g->m * g->k * g->cout > CONV_PAR_MIN)
  for (int64_t row = 0; row < rows; row++) {
    const int64_t n = row / g->oh;
    const int oh = (int)(row % g->oh), ih0 = oh * g->sh - g->ph;
    const dw_taps rh = taps_forward(oh, g->sh, g->ph, g->dh, g->kh, g->h);
    const int row_inside = rh.count == g->kh;
    const float *xn = x + n * g->h * rstride;
    float patch[CD_PIX * CD_MAX_K];
    for (int ow0 = 0; ow0 < g->ow; ow0 += CD_PIX) {
      const int np = g->ow - ow0 < CD_PIX ? g->ow - ow0 : CD_PIX;
      const float *src[CD_PIX];
      float *dst[CD_PIX];
      const int inside = row_inside && ow0 >= lo && ow0 + np <= hi;
      for (int p = 0; p < np; p++) {
        const int iw0 = (ow0 + p) * g->sw - g->pw;
        dst[p] = y + (row * g->ow + ow0 + p) * g->cout;
        if (inside) {
          src[p] = xn + (int64_t)ih0 * rstride + (int64_t)iw0 * cin;
          continue;
        }
        float *pp = patch + p * K; /* gather, zeros outside the input */
        for (int kh = 0, k = 0; kh < g->kh; kh++) {
          const int ih = ih0 + kh * g->dh;
          for (int kw = 0; kw < g->kw; kw++) {
            const int iw = iw0 + kw * g->dw;
            const int ok = ih >= 0 && ih < g->h && iw >= 0 && iw < g->w;
            for (int ci = 0; ci < cin; ci++, k++)
              pp[k] = ok ? xn[(int64_t)ih * rstride + (int64_t)iw * cin + ci] : 0.0f;
          }
        }
        src[p] = pp;
      }
      kern(np, src, inside ? off : ident, K, wt, g->cout, b, dst);
    }
  }
}

/* Backward without dx (the stem's image needs none): dw from the same tap reads. Each of a
 * fixed number of output-row chunks sums into its own [K, C_out] partial, in pixel order;
 * blocks of CDW_KB taps x C_out stay in registers over a tile of CDW_PIX pixels. The partials
 * are added in chunk order, so the bits do not depend on the thread count. */
enum { CDW_KB = 6, CDW_PIX = 16 };

/* part[k][co] += sum over p < np, in order, of src[p][off[k]] dyp[p][co] */
#define CDW_KERNELS(SFX, VW, ATTR)                                                                 \
  ATTR static inline __attribute__((always_inline)) void cdw_blk_##SFX(                            \
      int nk, int nv, int np, const float *const *src, const int32_t *off, int k0,                 \
      const float *const *dyp, int co, int cout, float *part) {                                    \
    cd_vec_##SFX acc[CDW_KB][2];                                                                   \
    for (int kb = 0; kb < nk; kb++)                                                                \
      for (int v = 0; v < nv; v++)                                                                 \
        memcpy(&acc[kb][v], part + (int64_t)(k0 + kb) * cout + co + v * (VW), sizeof acc[kb][v]);  \
    for (int p = 0; p < np; p++) {                                                                 \
      cd_vec_##SFX dv[2];                                                                          \
      for (int v = 0; v < nv; v++)                                                                 \
        memcpy(&dv[v], dyp[p] + co + v * (VW), sizeof dv[v]);                                      \
      for (int kb = 0; kb < nk; kb++) {                                                            \
        const float xs = src[p][off[k0 + kb]];                                                     \
        for (int v = 0; v < nv; v++)                                                               \
          acc[kb][v] += xs * dv[v];                                                                \
      }                                                                                            \
    }                                                                                              \
    for (int kb = 0; kb < nk; kb++)                                                                \
      for (int v = 0; v < nv; v++)                                                                 \
        memcpy(part + (int64_t)(k0 + kb) * cout + co + v * (VW), &acc[kb][v], sizeof acc[kb][v]);  \
  }                                                                                                \
  ATTR static void cdw_pixels_##SFX(int np, const float *const *src, const int32_t *off, int K,    \
                                    const float *const *dyp, int cout, float *part) {              \
    for (int k0 = 0; k0 < K; k0 += CDW_KB) {                                                       \
      const int nk = K - k0 < CDW_KB ? K - k0 : CDW_KB;                                            \
      int co = 0;                                                                                  \
      if (nk == CDW_KB) { /* constant trip counts: the sums stay in registers */                   \
        for (; co + 2 * (VW) <= cout; co += 2 * (VW))                                              \
          cdw_blk_##SFX(CDW_KB, 2, np, src, off, k0, dyp, co, cout, part);                         \
        for (; co + (VW) <= cout; co += (VW))                                                      \
          cdw_blk_##SFX(CDW_KB, 1, np, src, off, k0, dyp, co, cout, part);                         \
      } else {                                                                                     \
        for (; co + (VW) <= cout; co += (VW))                                                      \
          cdw_blk_##SFX(nk, 1, np, src, off, k0, dyp, co, cout, part);                             \
      }                                                                                            \
      for (; co < cout; co++)                                                                      \
        for (int kb = 0; kb < nk; kb++) {                                                          \
          float acc = part[(int64_t)(k0 + kb) * cout + co];                                        \
          for (int p = 0; p < np; p++)                                                             \
            acc += src[p][off[k0 + kb]] * dyp[p][co];                                              \
          part[(int64_t)(k0 + kb) * cout + co] = acc;                                              \
        }                                                                                          \
    }                                                                                              \
  }

#ifdef DW_X86
CDW_KERNELS(avx512, 16, __attribute__((target("avx512f"))))
CDW_KERNELS(avx2, 8, __attribute__((target("avx2"))))
#endif
CDW_KERNELS(base, 4, )

typedef void cdw_pixels_fn(int np, const float *const *src, const int32_t *off, int K,
                           const float *const *dyp, int cout, float *part);

static cdw_pixels_fn *cdw_pick(void) {
#ifdef DW_X86
  if (__builtin_cpu_supports("avx512f")) return cdw_pixels_avx512;
  if (__builtin_cpu_supports("avx2")) return cdw_pixels_avx2;
#endif
  return cdw_pixels_base;
}

static void direct_backward_dw(const conv_geom *g, const float *x, const float *dy, float *part,
                               float *dw) {
  const int K = (int)g->k, cin = g->cin, cout = g->cout;
  const int64_t rows = (int64_t)g->n * g->oh, rstride = (int64_t)g->w * cin;
  const int chunks = dw_chunks(g);
  cdw_pixels_fn *const kern = cdw_pick();
  int32_t off[CD_MAX_K], ident[CD_MAX_K]; /* tap offsets in x, and in a gathered patch */
  for (int kh = 0, k = 0; kh < g->kh; kh++)
    for (int kw = 0; kw < g->kw; kw++)
      for (int ci = 0; ci < cin; ci++, k++) {
        off[k] = (int32_t)((int64_t)kh * g->dh * rstride + ((int64_t)kw * g->dw) * cin + ci);
        ident[k] = k;
      }
  int lo, hi; /* the output columns whose taps are all inside the input row */
  interior_forward(g->sw, g->pw, g->dw, g->kw, g->w, g->ow, &lo, &hi);
#pragma omp parallel for schedule(static) if (g->m * g->k * cout > CONV_PAR_MIN)
  for (int ch = 0; ch < chunks; ch++) {
    float *pp = part + (int64_t)ch * K * cout;
    memset(pp, 0, (size_t)K * cout * sizeof(float));
    float patch[CDW_PIX * CD_MAX_K];
    for (int64_t row = rows * ch / chunks; row < rows * (ch + 1) / chunks; row++) {
      const int64_t n = row / g->oh;
      const int oh = (int)(row % g->oh), ih0 = oh * g->sh - g->ph;
      const int row_inside = taps_forward(oh, g->sh, g->ph, g->dh, g->kh, g->h).count == g->kh;
      const float *xn = x + n * g->h * rstride;
      for (int ow0 = 0; ow0 < g->ow; ow0 += CDW_PIX) {
        const int np = g->ow - ow0 < CDW_PIX ? g->ow - ow0 : CDW_PIX;
        const float *src[CDW_PIX], *dyp[CDW_PIX];
        const int inside = row_inside && ow0 >= lo && ow0 + np <= hi;
        for (int p = 0; p < np; p++) {
          const int iw0 = (ow0 + p) * g->sw - g->pw;
          dyp[p] = dy + (row * g->ow + ow0 + p) * cout;
          if (inside) {
            src[p] = xn + (int64_t)ih0 * rstride + (int64_t)iw0 * cin;
            continue;
          }
          float *pt = patch + p * K; /* gather, zeros outside the input */
          for (int kh = 0, k = 0; kh < g->kh; kh++) {
            const int ih = ih0 + kh * g->dh;
            for (int kw = 0; kw < g->kw; kw++) {
              const int iw = iw0 + kw * g->dw;
              const int ok = ih >= 0 && ih < g->h && iw >= 0 && iw < g->w;
              for (int ci = 0; ci < cin; ci++, k++)
                pt[k] = ok ? xn[(int64_t)ih * rstride + (int64_t)iw * cin + ci] : 0.0f;
            }
          }
          src[p] = pt;
        }
        kern(np, src, inside ? off : ident, K, dyp, cout, pp);
      }
    }
  }
  /* dw[co, k] += the chunk partials [k, co] in chunk order */
  enum { RB = 64 };
  const int blocks = (cout + RB - 1) / RB;
#pragma omp parallel for collapse(2) schedule(static) if (chunks * g->k * cout > CONV_PAR_MIN)
  for (int k = 0; k < K; k++)
    for (int blk = 0; blk < blocks; blk++) {
      const int c0 = blk * RB, cn = cout - c0 < RB ? cout - c0 : RB;
      float s[RB] = {0};
      for (int ch = 0; ch < chunks; ch++) {
        const float *restrict pp = part + ((int64_t)ch * K + k) * cout + c0;
        for (int c = 0; c < cn; c++)
          s[c] += pp[c];
      }
      for (int c = 0; c < cn; c++)
        dw[(int64_t)(c0 + c) * K + k] += s[c];
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

  if (conv_direct(&g)) {
    float *wt;
    CLUDA_TRY(cluda_arena_alloc(ctx->scratch, scratch_need(&g, 1, 0, 0),
                                "conv2d_forward direct weights", (void **)&wt));
    direct_transpose(&g, wp, wt);
    direct_forward(&g, xp, wt, bp, yp);
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

  if (dwp && conv_direct(&g)) { /* dw from the direct kernel, dx (if asked for) below */
    float *part;
    CLUDA_TRY(cluda_arena_alloc(ctx->scratch, scratch_need(&g, 0, 0, 1),
                                "conv2d_backward direct dw partials", (void **)&part));
    direct_backward_dw(&g, xp, dyp, part, dwp);
    cluda_arena_release(ctx->scratch, mark);
    dwp = NULL;
    if (!dxp) return cluda_ok();
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

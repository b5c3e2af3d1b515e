/* Average pooling on NHWC maps: PyTorch AvgPool2d with count_include_pad = True and
 * ceil_mode = False. In floor mode every window lies inside the padded input, so the divisor
 * is always KH * KW. Both directions loop over contiguous channels; the backward gathers per
 * input row (no scatter), so it is race-free and independent of the thread count. */
#include <string.h>

#include "op_common.h"

enum { POOL_PAR_MIN = 1 << 15 };

typedef struct pool_geom {
  int n, h, w, c, oh, ow;
  int kh, kw, sh, sw, ph, pw;
} pool_geom;

/* floor((in + 2 pad - kernel) / stride) + 1, or <= 0 when no window fits */
static int64_t pool_out_size(int in, int kernel, int stride, int pad) {
  int64_t span = (int64_t)in + 2 * (int64_t)pad - kernel;
  return span < 0 ? 0 : span / stride + 1;
}

/* Checks p, the input-shaped tensor (x or dx) and the output-shaped one (y or dy). */
static cluda_status check_pool(const char *op, const cluda_pool2d_params *p, const char *in_name,
                               const cluda_tensor *in, const char *out_name,
                               const cluda_tensor *out) {
  char d1[64], d2[64];
  CLUDA_REQUIRE(p != NULL, CLUDA_ERR_ARG, "%s: params p is NULL", op);
  CLUDA_TRY(cluda_check_tensor(op, in_name, in, CLUDA_F32, 4));
  CLUDA_TRY(cluda_check_tensor(op, out_name, out, CLUDA_F32, 4));
  CLUDA_REQUIRE(p->kernel_h >= 1 && p->kernel_w >= 1, CLUDA_ERR_ARG,
                "%s: kernel %dx%d must be >= 1", op, p->kernel_h, p->kernel_w);
  CLUDA_REQUIRE(p->stride_h >= 1 && p->stride_w >= 1, CLUDA_ERR_ARG,
                "%s: stride %dx%d must be >= 1", op, p->stride_h, p->stride_w);
  /* PyTorch's own rule: pad should be at most half of the kernel size */
  CLUDA_REQUIRE(p->pad_h >= 0 && p->pad_w >= 0 && p->pad_h <= p->kernel_h / 2 &&
                    p->pad_w <= p->kernel_w / 2,
                CLUDA_ERR_ARG, "%s: pad %dx%d must be in [0, kernel/2] for kernel %dx%d", op,
                p->pad_h, p->pad_w, p->kernel_h, p->kernel_w);
  CLUDA_REQUIRE(in->shape[1] >= 1 && in->shape[2] >= 1, CLUDA_ERR_SHAPE,
                "%s: %s %s must have H, W >= 1", op, in_name,
                cluda_tensor_describe(in, d1, sizeof d1));
  int64_t oh = pool_out_size(in->shape[1], p->kernel_h, p->stride_h, p->pad_h);
  int64_t ow = pool_out_size(in->shape[2], p->kernel_w, p->stride_w, p->pad_w);
  CLUDA_REQUIRE(oh >= 1 && ow >= 1, CLUDA_ERR_SHAPE,
                "%s: %s %s is smaller than kernel %dx%d with pad %dx%d (output size < 1)", op,
                in_name, cluda_tensor_describe(in, d1, sizeof d1), p->kernel_h, p->kernel_w,
                p->pad_h, p->pad_w);
  CLUDA_REQUIRE(out->shape[0] == in->shape[0] && out->shape[1] == oh && out->shape[2] == ow &&
                    out->shape[3] == in->shape[3],
                CLUDA_ERR_SHAPE, "%s: %s %s must be [N,OH,OW,C] = [%d,%lld,%lld,%d] for %s %s", op,
                out_name, cluda_tensor_describe(out, d1, sizeof d1), in->shape[0], (long long)oh,
                (long long)ow, in->shape[3], in_name, cluda_tensor_describe(in, d2, sizeof d2));
  return cluda_ok();
}

cluda_status cluda_avgpool_forward(cluda_ctx *ctx, const cluda_pool2d_params *p,
                                   const cluda_tensor *x, cluda_tensor *y) {
  CLUDA_TRY(check_pool("avgpool_forward", p, "x", x, "y", y));
  CLUDA_DISPATCH(ctx, avgpool_forward, p, x, y);
}

cluda_status cluda_avgpool_backward(cluda_ctx *ctx, const cluda_pool2d_params *p,
                                    const cluda_tensor *dy, cluda_tensor *dx) {
  CLUDA_TRY(check_pool("avgpool_backward", p, "dx", dx, "dy", dy));
  CLUDA_DISPATCH(ctx, avgpool_backward, p, dy, dx);
}

/* ---- CPU implementation ---- */

static void geom_from(const cluda_pool2d_params *p, const cluda_tensor *in, const cluda_tensor *out,
                      pool_geom *g) {
  g->n = in->shape[0];
  g->h = in->shape[1];
  g->w = in->shape[2];
  g->c = in->shape[3];
  g->oh = out->shape[1];
  g->ow = out->shape[2];
  g->kh = p->kernel_h;
  g->kw = p->kernel_w;
  g->sh = p->stride_h;
  g->sw = p->stride_w;
  g->ph = p->pad_h;
  g->pw = p->pad_w;
}

cluda_status cluda_cpu_avgpool_forward(cluda_ctx *ctx, const cluda_pool2d_params *p,
                                       const cluda_tensor *x, cluda_tensor *y) {
  (void)ctx;
  pool_geom g;
  geom_from(p, x, y, &g);
  const float *in = cluda_f32(x);
  float *out = cluda_f32(y);
  const int C = g.c;
  const float divisor = (float)g.kh * (float)g.kw;
  const int64_t rows = (int64_t)g.n * g.oh;
#pragma omp parallel for schedule(static) if (cluda_tensor_numel(x) > POOL_PAR_MIN)
  for (int64_t row = 0; row < rows; row++) {
    int64_t n = row / g.oh;
    int oh = (int)(row % g.oh);
    int h0 = oh * g.sh - g.ph, h1 = h0 + g.kh;
    if (h0 < 0) h0 = 0;
    if (h1 > g.h) h1 = g.h;
    const float *xn = in + n * g.h * g.w * C;
    for (int ow = 0; ow < g.ow; ow++) {
      int w0 = ow * g.sw - g.pw, w1 = w0 + g.kw;
      if (w0 < 0) w0 = 0;
      if (w1 > g.w) w1 = g.w;
      float *restrict o = out + (row * g.ow + ow) * C;
      memset(o, 0, (size_t)C * sizeof(float));
      for (int ih = h0; ih < h1; ih++)
        for (int iw = w0; iw < w1; iw++) {
          const float *restrict xp = xn + ((int64_t)ih * g.w + iw) * C;
          for (int c = 0; c < C; c++)
            o[c] += xp[c];
        }
      for (int c = 0; c < C; c++)
        o[c] /= divisor;
    }
  }
  return cluda_ok();
}

/* dx[n, ih, iw, c] = sum over the windows (oh, ow) that contain (ih, iw) of dy / (KH KW). */
cluda_status cluda_cpu_avgpool_backward(cluda_ctx *ctx, const cluda_pool2d_params *p,
                                        const cluda_tensor *dy, cluda_tensor *dx) {
  (void)ctx;
  pool_geom g;
  geom_from(p, dx, dy, &g);
  const float *gy = cluda_f32(dy);
  float *gx = cluda_f32(dx);
  const int C = g.c;
  const float divisor = (float)g.kh * (float)g.kw;
  const int64_t rows = (int64_t)g.n * g.h;
#pragma omp parallel for schedule(static) if (cluda_tensor_numel(dx) > POOL_PAR_MIN)
  for (int64_t row = 0; row < rows; row++) {
    int64_t n = row / g.h;
    int ih = (int)(row % g.h);
    /* windows oh with oh*sh - ph <= ih < oh*sh - ph + kh */
    int a = ih + g.ph - g.kh + 1;
    int oh0 = a <= 0 ? 0 : (a + g.sh - 1) / g.sh, oh1 = (ih + g.ph) / g.sh;
    if (oh1 > g.oh - 1) oh1 = g.oh - 1;
    float *dxrow = gx + row * g.w * C;
    for (int iw = 0; iw < g.w; iw++) {
      int b = iw + g.pw - g.kw + 1;
      int ow0 = b <= 0 ? 0 : (b + g.sw - 1) / g.sw, ow1 = (iw + g.pw) / g.sw;
      if (ow1 > g.ow - 1) ow1 = g.ow - 1;
      float *restrict d = dxrow + (int64_t)iw * C;
      memset(d, 0, (size_t)C * sizeof(float));
      for (int oh = oh0; oh <= oh1; oh++)
        for (int ow = ow0; ow <= ow1; ow++) {
          const float *restrict s = gy + ((n * g.oh + oh) * g.ow + ow) * C;
          for (int c = 0; c < C; c++)
            d[c] += s[c];
        }
      for (int c = 0; c < C; c++)
        d[c] /= divisor;
    }
  }
  return cluda_ok();
}

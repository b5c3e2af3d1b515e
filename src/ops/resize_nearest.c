/* Nearest resize of NHWC maps, PyTorch's legacy 'nearest' (F.interpolate(mode='nearest',
 * size=...)): src = min(floor(dst * scale), in - 1) with scale = in / out computed in
 * float, as in PyTorch's nearest_idx. Forward handles f32 maps and u8 labels; the f32
 * backward is the scatter-add transpose, computed as a deterministic gather. */
#include <math.h>
#include <string.h>

#include "op_common.h"

static cluda_status check_pair(const char *op, cluda_dtype dtype, const char *in_name,
                               const cluda_tensor *in, const char *out_name,
                               const cluda_tensor *out) {
  char di[64], dout[64];
  CLUDA_TRY(cluda_check_tensor(op, in_name, in, dtype, 4));
  CLUDA_TRY(cluda_check_tensor(op, out_name, out, dtype, 4));
  CLUDA_REQUIRE(in->shape[0] == out->shape[0] && in->shape[3] == out->shape[3], CLUDA_ERR_SHAPE,
                "%s: %s %s and %s %s must have the same batch size and channels", op, in_name,
                cluda_tensor_describe(in, di, sizeof di), out_name,
                cluda_tensor_describe(out, dout, sizeof dout));
  CLUDA_REQUIRE(in->shape[1] > 0 && in->shape[2] > 0, CLUDA_ERR_SHAPE,
                "%s: %s %s must have a non-empty height and width", op, in_name,
                cluda_tensor_describe(in, di, sizeof di));
  CLUDA_REQUIRE(out->shape[1] > 0 && out->shape[2] > 0, CLUDA_ERR_SHAPE,
                "%s: %s %s must have a non-empty height and width", op, out_name,
                cluda_tensor_describe(out, dout, sizeof dout));
  return cluda_ok();
}

cluda_status cluda_resize_nearest_forward(cluda_ctx *ctx, const cluda_tensor *x, cluda_tensor *y) {
  static const char op[] = "resize_nearest_forward";
  char dx_[64];
  CLUDA_REQUIRE(x != NULL, CLUDA_ERR_ARG, "%s: x is NULL", op);
  CLUDA_REQUIRE(x->dtype == CLUDA_F32 || x->dtype == CLUDA_U8, CLUDA_ERR_DTYPE,
                "%s: x %s must be f32 or u8", op, cluda_tensor_describe(x, dx_, sizeof dx_));
  /* y must match x's dtype */
  CLUDA_TRY(check_pair(op, x->dtype, "x", x, "y", y));
  CLUDA_DISPATCH(ctx, resize_nearest_forward, x, y);
}

cluda_status cluda_resize_nearest_backward(cluda_ctx *ctx, const cluda_tensor *dy,
                                           cluda_tensor *dx) {
  /* dx has the input's shape, dy the output's */
  CLUDA_TRY(check_pair("resize_nearest_backward", CLUDA_F32, "dx", dx, "dy", dy));
  CLUDA_DISPATCH(ctx, resize_nearest_backward, dy, dx);
}

/* ---- CPU implementations ---- */

/* PyTorch nearest_idx: exact shortcuts for equal size and exact x2, else the float rule. */
static inline int nearest_src(int dst, int in, int out, float scale) {
  if (out == in) return dst;
  if (out == 2 * in) return dst >> 1;
  int s = (int)floorf((float)dst * scale);
  return s < in - 1 ? s : in - 1;
}

cluda_status cluda_cpu_resize_nearest_forward(cluda_ctx *ctx, const cluda_tensor *x,
                                              cluda_tensor *y) {
  (void)ctx;
  const int n = x->shape[0], ih = x->shape[1], iw = x->shape[2], c = x->shape[3];
  const int oh = y->shape[1], ow = y->shape[2];
  const float sh = (float)ih / (float)oh, sw = (float)iw / (float)ow;
  const size_t es = cluda_dtype_size(x->dtype), pix = (size_t)c * es;
  const char *in = (const char *)x->data;
  char *out = (char *)y->data;
  const int64_t rows = (int64_t)n * oh;
  const int64_t work = rows * ow * c;
#pragma omp parallel for schedule(static) if (work > 65536)
  for (int64_t r = 0; r < rows; r++) {
    const int b = (int)(r / oh), yo = (int)(r % oh);
    const char *srow = in + ((int64_t)b * ih + nearest_src(yo, ih, oh, sh)) * iw * (int64_t)pix;
    char *drow = out + r * ow * (int64_t)pix;
    if (pix == 1) { /* single-channel labels: byte copies */
      for (int xo = 0; xo < ow; xo++)
        drow[xo] = srow[nearest_src(xo, iw, ow, sw)];
    } else {
      for (int xo = 0; xo < ow; xo++)
        memcpy(drow + (int64_t)xo * pix, srow + (int64_t)nearest_src(xo, iw, ow, sw) * pix, pix);
    }
  }
  return cluda_ok();
}

cluda_status cluda_cpu_resize_nearest_backward(cluda_ctx *ctx, const cluda_tensor *dy,
                                               cluda_tensor *dx) {
  (void)ctx;
  const int n = dx->shape[0], ih = dx->shape[1], iw = dx->shape[2], c = dx->shape[3];
  const int oh = dy->shape[1], ow = dy->shape[2];
  const float sh = (float)ih / (float)oh, sw = (float)iw / (float)ow;
  const float *g = cluda_f32(dy);
  float *d = cluda_f32(dx);
  const int64_t rows = (int64_t)n * ih;
  const int64_t work = (int64_t)n * oh * ow * c;
  /* Gather over dx rows: each is owned by one iteration and sums the output rows that read
   * it in increasing order, so the result does not depend on the thread count. The source
   * row is monotone in the output row, so the scan stops once it passes this row. */
#pragma omp parallel for schedule(static) if (work > 65536)
  for (int64_t r = 0; r < rows; r++) {
    const int b = (int)(r / ih), yi = (int)(r % ih);
    float *drow = d + r * iw * c;
    memset(drow, 0, sizeof(float) * (size_t)iw * (size_t)c);
    for (int yo = 0; yo < oh; yo++) {
      const int s = nearest_src(yo, ih, oh, sh);
      if (s > yi) break;
      if (s < yi) continue;
      const float *grow = g + ((int64_t)b * oh + yo) * ow * c;
      for (int xo = 0; xo < ow; xo++) {
        float *dp = drow + (int64_t)nearest_src(xo, iw, ow, sw) * c;
        const float *gp = grow + (int64_t)xo * c;
        for (int k = 0; k < c; k++)
          dp[k] += gp[k];
      }
    }
  }
  return cluda_ok();
}

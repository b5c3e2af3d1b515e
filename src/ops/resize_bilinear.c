/* Bilinear resize of NHWC maps (F.interpolate(mode='bilinear', size=..., antialias=False)).
 * Coordinates are computed exactly as PyTorch's CPU kernel does, in float
 * (area_pixel_compute_scale / area_pixel_compute_source_index / guard_index_and_lambda),
 * so results agree with PyTorch to float rounding. The backward is the exact transpose,
 * computed as a gather over the rows of dx so it is deterministic without atomics. */
#include <math.h>
#include <string.h>

#include "op_common.h"

/* Checks the (input-side, output-side) pair: f32, rank 4, same N and C, non-empty H, W. */
static cluda_status check_pair(const char *op, int align_corners, const char *in_name,
                               const cluda_tensor *in, const char *out_name,
                               const cluda_tensor *out) {
  char di[64], dout[64];
  CLUDA_REQUIRE(align_corners == 0 || align_corners == 1, CLUDA_ERR_ARG,
                "%s: align_corners must be 0 or 1, got %d", op, align_corners);
  CLUDA_TRY(cluda_check_tensor(op, in_name, in, CLUDA_F32, 4));
  CLUDA_TRY(cluda_check_tensor(op, out_name, out, CLUDA_F32, 4));
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

cluda_status cluda_resize_bilinear_forward(cluda_ctx *ctx, int align_corners, const cluda_tensor *x,
                                           cluda_tensor *y) {
  CLUDA_TRY(check_pair("resize_bilinear_forward", align_corners, "x", x, "y", y));
  CLUDA_DISPATCH(ctx, resize_bilinear_forward, align_corners, x, y);
}

cluda_status cluda_resize_bilinear_backward(cluda_ctx *ctx, int align_corners,
                                            const cluda_tensor *dy, cluda_tensor *dx) {
  /* dx has the input's shape, dy the output's */
  CLUDA_TRY(check_pair("resize_bilinear_backward", align_corners, "dx", dx, "dy", dy));
  CLUDA_DISPATCH(ctx, resize_bilinear_backward, align_corners, dy, dx);
}

/* ---- CPU implementations ---- */

/* One output coordinate: the two source indices and their weights. */
typedef struct lin_coord {
  int i0, i1;
  float l0, l1;
} lin_coord;

/* area_pixel_compute_scale for a size (no scale_factor), in float as PyTorch's opmath. */
static float lin_scale(int in, int out, int align_corners) {
  if (align_corners) return out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f;
  return (float)in / (float)out;
}

/* compute_source_index_and_lambda: equal sizes copy; otherwise the float source index,
 * clamped at 0 for half-pixel centres, floor-ed and guarded at the last pixel. */
static inline lin_coord lin_coord_at(float scale, int dst, int in, int out, int align_corners) {
  lin_coord c;
  if (in == out) {
    c.i0 = c.i1 = dst;
    c.l0 = 1.0f;
    c.l1 = 0.0f;
    return c;
  }
  float src;
  if (align_corners) {
    src = scale * (float)dst;
  } else {
    src = scale * ((float)dst + 0.5f) - 0.5f;
    if (src < 0.0f) src = 0.0f;
  }
  int i0 = (int)floorf(src);
  if (i0 > in - 1) i0 = in - 1;
  float l1 = src - (float)i0;
  l1 = l1 < 0.0f ? 0.0f : (l1 > 1.0f ? 1.0f : l1);
  c.i0 = i0;
  c.i1 = i0 + (i0 < in - 1 ? 1 : 0);
  c.l1 = l1;
  c.l0 = 1.0f - l1;
  return c;
}

cluda_status cluda_cpu_resize_bilinear_forward(cluda_ctx *ctx, int align_corners,
                                               const cluda_tensor *x, cluda_tensor *y) {
  (void)ctx;
  const int n = x->shape[0], ih = x->shape[1], iw = x->shape[2], c = x->shape[3];
  const int oh = y->shape[1], ow = y->shape[2];
  const float sh = lin_scale(ih, oh, align_corners), sw = lin_scale(iw, ow, align_corners);
  const float *in = cluda_f32(x);
  float *out = cluda_f32(y);
  const int64_t rows = (int64_t)n * oh;
  const int64_t work = rows * ow * c;
  /* one output row per iteration: rows are independent */
#pragma omp parallel for schedule(static) if (work > 32768)
  for (int64_t r = 0; r < rows; r++) {
    const int b = (int)(r / oh), y0 = (int)(r % oh);
    const lin_coord hc = lin_coord_at(sh, y0, ih, oh, align_corners);
    const float *row0 = in + ((int64_t)b * ih + hc.i0) * iw * c;
    const float *row1 = in + ((int64_t)b * ih + hc.i1) * iw * c;
    float *dst = out + r * ow * c;
    for (int x0 = 0; x0 < ow; x0++) {
      const lin_coord wc = lin_coord_at(sw, x0, iw, ow, align_corners);
      /* PyTorch's channels-last kernel: four products with weights h * w */
      const float w00 = hc.l0 * wc.l0, w01 = hc.l0 * wc.l1;
      const float w10 = hc.l1 * wc.l0, w11 = hc.l1 * wc.l1;
      const float *p00 = row0 + (int64_t)wc.i0 * c, *p01 = row0 + (int64_t)wc.i1 * c;
      const float *p10 = row1 + (int64_t)wc.i0 * c, *p11 = row1 + (int64_t)wc.i1 * c;
      float *o = dst + (int64_t)x0 * c;
      for (int k = 0; k < c; k++)
        o[k] = p00[k] * w00 + p01[k] * w01 + p10[k] * w10 + p11[k] * w11;
    }
  }
  return cluda_ok();
}

cluda_status cluda_cpu_resize_bilinear_backward(cluda_ctx *ctx, int align_corners,
                                                const cluda_tensor *dy, cluda_tensor *dx) {
  (void)ctx;
  const int n = dx->shape[0], ih = dx->shape[1], iw = dx->shape[2], c = dx->shape[3];
  const int oh = dy->shape[1], ow = dy->shape[2];
  const float sh = lin_scale(ih, oh, align_corners), sw = lin_scale(iw, ow, align_corners);
  const float *g = cluda_f32(dy);
  float *d = cluda_f32(dx);
  const int64_t rows = (int64_t)n * ih;
  const int64_t work = (int64_t)n * oh * ow * c;
  /* Gather: each dx row is owned by one iteration, which adds the contributions of every
   * output row that reads it in a fixed order (output row, then column), so the result
   * does not depend on the thread count. Source rows are monotone in the output row, so
   * the scan stops once they pass this row. */
#pragma omp parallel for schedule(static) if (work > 32768)
  for (int64_t r = 0; r < rows; r++) {
    const int b = (int)(r / ih), y0 = (int)(r % ih);
    float *drow = d + r * iw * c;
    memset(drow, 0, sizeof(float) * (size_t)iw * (size_t)c);
    for (int yo = 0; yo < oh; yo++) {
      const lin_coord hc = lin_coord_at(sh, yo, ih, oh, align_corners);
      if (hc.i0 > y0) break;
      float wh = 0.0f;
      if (hc.i0 == y0) wh += hc.l0;
      if (hc.i1 == y0) wh += hc.l1;
      if (hc.i0 != y0 && hc.i1 != y0) continue;
      const float *grow = g + ((int64_t)b * oh + yo) * ow * c;
      for (int xo = 0; xo < ow; xo++) {
        const lin_coord wc = lin_coord_at(sw, xo, iw, ow, align_corners);
        const float w0 = wh * wc.l0, w1 = wh * wc.l1;
        const float *gp = grow + (int64_t)xo * c;
        float *d0 = drow + (int64_t)wc.i0 * c, *d1 = drow + (int64_t)wc.i1 * c;
        for (int k = 0; k < c; k++)
          d0[k] += gp[k] * w0;
        for (int k = 0; k < c; k++)
          d1[k] += gp[k] * w1;
      }
    }
  }
  return cluda_ok();
}

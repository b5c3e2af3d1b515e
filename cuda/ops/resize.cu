/* Resizes of NHWC maps on the GPU: bilinear (align_corners 0 and 1, no antialias) and
 * PyTorch's legacy nearest (the CPU twins are src/ops/resize_bilinear.c and
 * src/ops/resize_nearest.c).
 *
 * Coordinates are computed exactly as the CPU (and PyTorch) compute them, in float, with
 * explicitly rounded operations (__fmul_rn, __fadd_rn, ...) so that nvcc cannot contract a
 * multiply and an add into an FMA: a contracted `scale * (dst + 0.5) - 0.5` can land on the
 * other side of an integer and pick another source pixel. The interpolation sums are written
 * the same way and in the CPU's order, so forward results are expected to be bit-identical
 * to the CPU's.
 *
 * Backwards are gathers, deterministic without atomics: one thread per dx element adds the
 * dy elements that read it. The source index of an output coordinate is non-decreasing in
 * the coordinate (every step of its computation is monotone: a float multiply or add by a
 * constant, a clamp, floor), so the outputs that read input row i form one contiguous range
 * found by binary search on that same function:
 *  - bilinear: output row o reads rows i0(o) and i1(o) = i0(o) + 1 (or i0(o) at the last
 *    row), so it reads row i exactly when i0(o) is i - 1 or i; the range is
 *    [first o with i0(o) >= i - 1, first o with i0(o) >= i + 1). Within it the weight of
 *    row i is (i0 == i ? l0 : 0) + (i1 == i ? l1 : 0); columns likewise.
 *  - nearest: output row o reads row src(o); the range is [first o with src(o) >= i, first
 *    o with src(o) >= i + 1).
 * The terms are added in the CPU's order (output row, then output column; the i0 term
 * before the i1 term), so the backwards are expected to match the CPU bit for bit too. */
#include <math.h>

#include "kernel_common.cuh"

using namespace cluda_kernels;

namespace {

struct LinCoord {
  int i0, i1;
  float l0, l1;
};

/* area_pixel_compute_scale for a size, in float (host; the CPU's lin_scale). */
float lin_scale(int in, int out, int align_corners) {
  if (align_corners) return out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f;
  return (float)in / (float)out;
}

/* The CPU's lin_coord_at with every float operation explicitly rounded. */
__device__ __forceinline__ LinCoord lin_coord_at(float scale, int dst, int in, int out,
                                                 int align_corners) {
  LinCoord c;
  if (in == out) {
    c.i0 = c.i1 = dst;
    c.l0 = 1.0f;
    c.l1 = 0.0f;
    return c;
  }
  float src;
  if (align_corners) {
    src = __fmul_rn(scale, (float)dst);
  } else {
    src = __fsub_rn(__fmul_rn(scale, __fadd_rn((float)dst, 0.5f)), 0.5f);
    if (src < 0.0f) src = 0.0f;
  }
  int i0 = (int)floorf(src);
  if (i0 > in - 1) i0 = in - 1;
  float l1 = __fsub_rn(src, (float)i0);
  l1 = l1 < 0.0f ? 0.0f : (l1 > 1.0f ? 1.0f : l1);
  c.i0 = i0;
  c.i1 = i0 + (i0 < in - 1 ? 1 : 0);
  c.l1 = l1;
  c.l0 = __fsub_rn(1.0f, l1);
  return c;
}

/* The first output coordinate o in [0, out) with i0(o) >= target (out when none). */
__device__ int lin_first_at_least(int target, float scale, int in, int out, int align_corners) {
  int lo = 0, hi = out;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (lin_coord_at(scale, mid, in, out, align_corners).i0 >= target)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

/* PyTorch's nearest_idx (the CPU's nearest_src): exact shortcuts for equal size and exact
 * x2, else min(floor(dst * scale), in - 1) with scale = in / out in float. */
__device__ __forceinline__ int nearest_src(int dst, int in, int out, float scale) {
  if (out == in) return dst;
  if (out == 2 * in) return dst >> 1;
  const int s = (int)floorf(__fmul_rn((float)dst, scale));
  return s < in - 1 ? s : in - 1;
}

/* The first output coordinate o in [0, out) with src(o) >= target (out when none). */
__device__ int nearest_first_at_least(int target, int in, int out, float scale) {
  int lo = 0, hi = out;
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (nearest_src(mid, in, out, scale) >= target)
      hi = mid;
    else
      lo = mid + 1;
  }
  return lo;
}

/* The shapes of one call: x (or dx) [n, ih, iw, c], y (or dy) [n, oh, ow, c]. */
struct Shapes {
  int n, ih, iw, c, oh, ow;
};

/* One thread per y element: y = p00 w00 + p01 w01 + p10 w10 + p11 w11 (the CPU's order). */
__global__ void bilinear_forward_kernel(const float *__restrict__ x, float *__restrict__ y,
                                        Shapes s, float scale_h, float scale_w, int align_corners) {
  const int64_t total = (int64_t)s.n * s.oh * s.ow * s.c;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const NhwcPos pos = nhwc_pos(i, s.oh, s.ow, s.c);
    const int k = pos.c, xo = pos.x, yo = pos.y;
    const int64_t b = pos.n;
    const LinCoord hc = lin_coord_at(scale_h, yo, s.ih, s.oh, align_corners);
    const LinCoord wc = lin_coord_at(scale_w, xo, s.iw, s.ow, align_corners);
    const float w00 = __fmul_rn(hc.l0, wc.l0), w01 = __fmul_rn(hc.l0, wc.l1);
    const float w10 = __fmul_rn(hc.l1, wc.l0), w11 = __fmul_rn(hc.l1, wc.l1);
    const float *xb = x + b * s.ih * s.iw * s.c + k;
    const float *row0 = xb + (int64_t)hc.i0 * s.iw * s.c, *row1 = xb + (int64_t)hc.i1 * s.iw * s.c;
    const float p00 = row0[(int64_t)wc.i0 * s.c], p01 = row0[(int64_t)wc.i1 * s.c];
    const float p10 = row1[(int64_t)wc.i0 * s.c], p11 = row1[(int64_t)wc.i1 * s.c];
    float v = __fmul_rn(p00, w00);
    v = __fadd_rn(v, __fmul_rn(p01, w01));
    v = __fadd_rn(v, __fmul_rn(p10, w10));
    v = __fadd_rn(v, __fmul_rn(p11, w11));
    y[i] = v;
  }
}

/* One thread per dx element (see the file comment for the ranges and the order). */
__global__ void bilinear_backward_kernel(const float *__restrict__ dy, float *__restrict__ dx,
                                         Shapes s, float scale_h, float scale_w,
                                         int align_corners) {
  const int64_t total = (int64_t)s.n * s.ih * s.iw * s.c;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const NhwcPos pos = nhwc_pos(i, s.ih, s.iw, s.c);
    const int k = pos.c, xi = pos.x, yi = pos.y;
    const int64_t b = pos.n;
    const int y0 = lin_first_at_least(yi - 1, scale_h, s.ih, s.oh, align_corners);
    const int y1 = lin_first_at_least(yi + 1, scale_h, s.ih, s.oh, align_corners);
    const int x0 = lin_first_at_least(xi - 1, scale_w, s.iw, s.ow, align_corners);
    const int x1 = lin_first_at_least(xi + 1, scale_w, s.iw, s.ow, align_corners);
    const float *dyb = dy + b * s.oh * s.ow * s.c + k;
    float acc = 0.0f;
    for (int yo = y0; yo < y1; yo++) {
      const LinCoord hc = lin_coord_at(scale_h, yo, s.ih, s.oh, align_corners);
      if (hc.i0 != yi && hc.i1 != yi) continue;
      float wh = 0.0f;
      if (hc.i0 == yi) wh = __fadd_rn(wh, hc.l0);
      if (hc.i1 == yi) wh = __fadd_rn(wh, hc.l1);
      const float *grow = dyb + (int64_t)yo * s.ow * s.c;
      for (int xo = x0; xo < x1; xo++) {
        const LinCoord wc = lin_coord_at(scale_w, xo, s.iw, s.ow, align_corners);
        const float g = grow[(int64_t)xo * s.c];
        if (wc.i0 == xi) acc = __fadd_rn(acc, __fmul_rn(g, __fmul_rn(wh, wc.l0)));
        if (wc.i1 == xi) acc = __fadd_rn(acc, __fmul_rn(g, __fmul_rn(wh, wc.l1)));
      }
    }
    dx[i] = acc;
  }
}

/* One thread per y element: a copy from the nearest source pixel (f32 maps or u8 labels). */
template <typename T>
__global__ void nearest_forward_kernel(const T *__restrict__ x, T *__restrict__ y, Shapes s,
                                       float scale_h, float scale_w) {
  const int64_t total = (int64_t)s.n * s.oh * s.ow * s.c;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const NhwcPos pos = nhwc_pos(i, s.oh, s.ow, s.c);
    const int k = pos.c, xo = pos.x, yo = pos.y;
    const int64_t b = pos.n;
    const int ys = nearest_src(yo, s.ih, s.oh, scale_h), xs = nearest_src(xo, s.iw, s.ow, scale_w);
    y[i] = x[((b * s.ih + ys) * s.iw + xs) * s.c + k];
  }
}

/* One thread per dx element: the sum of the dy elements whose source it is, in output row
 * then output column order. */
__global__ void nearest_backward_kernel(const float *__restrict__ dy, float *__restrict__ dx,
                                        Shapes s, float scale_h, float scale_w) {
  const int64_t total = (int64_t)s.n * s.ih * s.iw * s.c;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total;
       i += (int64_t)gridDim.x * blockDim.x) {
    const NhwcPos pos = nhwc_pos(i, s.ih, s.iw, s.c);
    const int k = pos.c, xi = pos.x, yi = pos.y;
    const int64_t b = pos.n;
    const int y0 = nearest_first_at_least(yi, s.ih, s.oh, scale_h);
    const int y1 = nearest_first_at_least(yi + 1, s.ih, s.oh, scale_h);
    const int x0 = nearest_first_at_least(xi, s.iw, s.ow, scale_w);
    const int x1 = nearest_first_at_least(xi + 1, s.iw, s.ow, scale_w);
    const float *dyb = dy + b * s.oh * s.ow * s.c + k;
    float acc = 0.0f;
    for (int yo = y0; yo < y1; yo++)
      for (int xo = x0; xo < x1; xo++)
        acc = __fadd_rn(acc, dyb[((int64_t)yo * s.ow + xo) * s.c]);
    dx[i] = acc;
  }
}

/* in: x or dx (input side), out: y or dy (output side) */
Shapes shapes_of(const cluda_tensor *in, const cluda_tensor *out) {
  Shapes s;
  s.n = in->shape[0];
  s.ih = in->shape[1];
  s.iw = in->shape[2];
  s.c = in->shape[3];
  s.oh = out->shape[1];
  s.ow = out->shape[2];
  return s;
}

/* Forward: y (out) from x (in); backward: dx (in) from dy (out), a gather. One thread per
 * element of the tensor written. */
cluda_status bilinear(cluda_ctx *ctx, int align_corners, const cluda_tensor *in,
                      const cluda_tensor *out, bool backward) {
  const Shapes s = shapes_of(in, out);
  const int64_t total = cluda_tensor_numel(backward ? in : out);
  if (total == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const unsigned grid = grid_size(total, kBlock, fill_cap(d));
  const float scale_h = lin_scale(s.ih, s.oh, align_corners);
  const float scale_w = lin_scale(s.iw, s.ow, align_corners);
  if (backward) {
    bilinear_backward_kernel<<<grid, kBlock, 0, d->stream>>>(cluda_f32(out), cluda_f32(in), s,
                                                             scale_h, scale_w, align_corners);
    CLUDA_CUDA_CHECK_LAUNCH("resize_bilinear_backward", "bilinear_backward_kernel");
  } else {
    bilinear_forward_kernel<<<grid, kBlock, 0, d->stream>>>(cluda_f32(in), cluda_f32(out), s,
                                                            scale_h, scale_w, align_corners);
    CLUDA_CUDA_CHECK_LAUNCH("resize_bilinear_forward", "bilinear_forward_kernel");
  }
  return cluda_ok();
}

} // namespace

extern "C" cluda_status cluda_cuda_resize_bilinear_forward(cluda_ctx *ctx, int align_corners,
                                                           const cluda_tensor *x, cluda_tensor *y) {
  return bilinear(ctx, align_corners, x, y, false);
}

extern "C" cluda_status cluda_cuda_resize_bilinear_backward(cluda_ctx *ctx, int align_corners,
                                                            const cluda_tensor *dy,
                                                            cluda_tensor *dx) {
  return bilinear(ctx, align_corners, dx, dy, true);
}

extern "C" cluda_status cluda_cuda_resize_nearest_forward(cluda_ctx *ctx, const cluda_tensor *x,
                                                          cluda_tensor *y) {
  const Shapes s = shapes_of(x, y);
  const int64_t total = cluda_tensor_numel(y);
  if (total == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  /* in / out in float, as the CPU's nearest scale */
  const float sh = (float)s.ih / (float)s.oh, sw = (float)s.iw / (float)s.ow;
  const unsigned grid = grid_size(total, kBlock, fill_cap(d));
  if (x->dtype == CLUDA_U8) {
    nearest_forward_kernel<uint8_t>
        <<<grid, kBlock, 0, d->stream>>>(cluda_u8(x), cluda_u8(y), s, sh, sw);
    CLUDA_CUDA_CHECK_LAUNCH("resize_nearest_forward", "nearest_forward_kernel<uint8_t>");
  } else {
    nearest_forward_kernel<float>
        <<<grid, kBlock, 0, d->stream>>>(cluda_f32(x), cluda_f32(y), s, sh, sw);
    CLUDA_CUDA_CHECK_LAUNCH("resize_nearest_forward", "nearest_forward_kernel<float>");
  }
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_resize_nearest_backward(cluda_ctx *ctx, const cluda_tensor *dy,
                                                           cluda_tensor *dx) {
  const Shapes s = shapes_of(dx, dy);
  const int64_t total = cluda_tensor_numel(dx);
  if (total == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const float sh = (float)s.ih / (float)s.oh, sw = (float)s.iw / (float)s.ow;
  nearest_backward_kernel<<<grid_size(total, kBlock, fill_cap(d)), kBlock, 0, d->stream>>>(
      cluda_f32(dy), cluda_f32(dx), s, sh, sw);
  CLUDA_CUDA_CHECK_LAUNCH("resize_nearest_backward", "nearest_backward_kernel");
  return cluda_ok();
}

/* STUB: to be replaced by the implementation. */
#include "op_common.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

cluda_status cluda_resize_bilinear_forward(cluda_ctx *ctx, int align_corners, const cluda_tensor *x, cluda_tensor *y) {
  CLUDA_DISPATCH(ctx, resize_bilinear_forward, align_corners, x, y);
}

cluda_status cluda_cpu_resize_bilinear_forward(cluda_ctx *ctx, int align_corners, const cluda_tensor *x, cluda_tensor *y) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "resize_bilinear_forward: not implemented yet");
}

cluda_status cluda_resize_bilinear_backward(cluda_ctx *ctx, int align_corners, const cluda_tensor *dy, cluda_tensor *dx) {
  CLUDA_DISPATCH(ctx, resize_bilinear_backward, align_corners, dy, dx);
}

cluda_status cluda_cpu_resize_bilinear_backward(cluda_ctx *ctx, int align_corners, const cluda_tensor *dy, cluda_tensor *dx) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "resize_bilinear_backward: not implemented yet");
}


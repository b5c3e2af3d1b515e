/* STUB: to be replaced by the implementation. */
#include "op_common.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

cluda_status cluda_conv2d_forward(cluda_ctx *ctx, const cluda_conv2d_params *p, const cluda_tensor *x, const cluda_tensor *w, const cluda_tensor *b, cluda_tensor *y) {
  CLUDA_DISPATCH(ctx, conv2d_forward, p, x, w, b, y);
}

cluda_status cluda_cpu_conv2d_forward(cluda_ctx *ctx, const cluda_conv2d_params *p, const cluda_tensor *x, const cluda_tensor *w, const cluda_tensor *b, cluda_tensor *y) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "conv2d_forward: not implemented yet");
}

cluda_status cluda_conv2d_backward(cluda_ctx *ctx, const cluda_conv2d_params *p, const cluda_tensor *x, const cluda_tensor *w, const cluda_tensor *dy, cluda_tensor *dx, cluda_tensor *dw, cluda_tensor *db) {
  CLUDA_DISPATCH(ctx, conv2d_backward, p, x, w, dy, dx, dw, db);
}

cluda_status cluda_cpu_conv2d_backward(cluda_ctx *ctx, const cluda_conv2d_params *p, const cluda_tensor *x, const cluda_tensor *w, const cluda_tensor *dy, cluda_tensor *dx, cluda_tensor *dw, cluda_tensor *db) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "conv2d_backward: not implemented yet");
}

int cluda_conv2d_out_size(int in, int kernel, int stride, int pad, int dilation) {
  return (in + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1;
}

size_t cluda_conv2d_scratch_bytes(const cluda_conv2d_params *p, const cluda_tensor *x,
                                  const cluda_tensor *w, const cluda_tensor *y) {
  return 0;
}

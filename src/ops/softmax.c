/* STUB: to be replaced by the implementation. */
#include "op_common.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

cluda_status cluda_softmax_forward(cluda_ctx *ctx, const cluda_tensor *x, cluda_tensor *y) {
  CLUDA_DISPATCH(ctx, softmax_forward, x, y);
}

cluda_status cluda_cpu_softmax_forward(cluda_ctx *ctx, const cluda_tensor *x, cluda_tensor *y) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "softmax_forward: not implemented yet");
}

cluda_status cluda_softmax_backward(cluda_ctx *ctx, const cluda_tensor *y, const cluda_tensor *dy, cluda_tensor *dx) {
  CLUDA_DISPATCH(ctx, softmax_backward, y, dy, dx);
}

cluda_status cluda_cpu_softmax_backward(cluda_ctx *ctx, const cluda_tensor *y, const cluda_tensor *dy, cluda_tensor *dx) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "softmax_backward: not implemented yet");
}


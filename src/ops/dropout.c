/* STUB: to be replaced by the implementation. */
#include "op_common.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

cluda_status cluda_dropout_forward(cluda_ctx *ctx, const cluda_dropout_params *p, const cluda_tensor *x, cluda_tensor *y, cluda_tensor *mask) {
  CLUDA_DISPATCH(ctx, dropout_forward, p, x, y, mask);
}

cluda_status cluda_cpu_dropout_forward(cluda_ctx *ctx, const cluda_dropout_params *p, const cluda_tensor *x, cluda_tensor *y, cluda_tensor *mask) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "dropout_forward: not implemented yet");
}

cluda_status cluda_dropout_backward(cluda_ctx *ctx, const cluda_dropout_params *p, const cluda_tensor *mask, const cluda_tensor *dy, cluda_tensor *dx) {
  CLUDA_DISPATCH(ctx, dropout_backward, p, mask, dy, dx);
}

cluda_status cluda_cpu_dropout_backward(cluda_ctx *ctx, const cluda_dropout_params *p, const cluda_tensor *mask, const cluda_tensor *dy, cluda_tensor *dx) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "dropout_backward: not implemented yet");
}


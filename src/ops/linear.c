/* STUB: to be replaced by the implementation. */
#include "op_common.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

cluda_status cluda_linear_forward(cluda_ctx *ctx, const cluda_tensor *x, const cluda_tensor *w, const cluda_tensor *b, cluda_tensor *y) {
  CLUDA_DISPATCH(ctx, linear_forward, x, w, b, y);
}

cluda_status cluda_cpu_linear_forward(cluda_ctx *ctx, const cluda_tensor *x, const cluda_tensor *w, const cluda_tensor *b, cluda_tensor *y) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "linear_forward: not implemented yet");
}

cluda_status cluda_linear_backward(cluda_ctx *ctx, const cluda_tensor *x, const cluda_tensor *w, const cluda_tensor *dy, cluda_tensor *dx, cluda_tensor *dw, cluda_tensor *db) {
  CLUDA_DISPATCH(ctx, linear_backward, x, w, dy, dx, dw, db);
}

cluda_status cluda_cpu_linear_backward(cluda_ctx *ctx, const cluda_tensor *x, const cluda_tensor *w, const cluda_tensor *dy, cluda_tensor *dx, cluda_tensor *dw, cluda_tensor *db) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "linear_backward: not implemented yet");
}


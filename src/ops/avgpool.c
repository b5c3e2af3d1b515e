/* STUB: to be replaced by the implementation. */
#include "op_common.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

cluda_status cluda_avgpool_forward(cluda_ctx *ctx, const cluda_pool2d_params *p, const cluda_tensor *x, cluda_tensor *y) {
  CLUDA_DISPATCH(ctx, avgpool_forward, p, x, y);
}

cluda_status cluda_cpu_avgpool_forward(cluda_ctx *ctx, const cluda_pool2d_params *p, const cluda_tensor *x, cluda_tensor *y) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "avgpool_forward: not implemented yet");
}

cluda_status cluda_avgpool_backward(cluda_ctx *ctx, const cluda_pool2d_params *p, const cluda_tensor *dy, cluda_tensor *dx) {
  CLUDA_DISPATCH(ctx, avgpool_backward, p, dy, dx);
}

cluda_status cluda_cpu_avgpool_backward(cluda_ctx *ctx, const cluda_pool2d_params *p, const cluda_tensor *dy, cluda_tensor *dx) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "avgpool_backward: not implemented yet");
}


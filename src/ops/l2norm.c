/* STUB: to be replaced by the implementation. */
#include "op_common.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

cluda_status cluda_l2norm_forward(cluda_ctx *ctx, float eps, const cluda_tensor *x, cluda_tensor *y, cluda_tensor *norms) {
  CLUDA_DISPATCH(ctx, l2norm_forward, eps, x, y, norms);
}

cluda_status cluda_cpu_l2norm_forward(cluda_ctx *ctx, float eps, const cluda_tensor *x, cluda_tensor *y, cluda_tensor *norms) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "l2norm_forward: not implemented yet");
}

cluda_status cluda_l2norm_backward(cluda_ctx *ctx, float eps, const cluda_tensor *x, const cluda_tensor *norms, const cluda_tensor *dy, cluda_tensor *dx) {
  CLUDA_DISPATCH(ctx, l2norm_backward, eps, x, norms, dy, dx);
}

cluda_status cluda_cpu_l2norm_backward(cluda_ctx *ctx, float eps, const cluda_tensor *x, const cluda_tensor *norms, const cluda_tensor *dy, cluda_tensor *dx) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "l2norm_backward: not implemented yet");
}


/* STUB: to be replaced by the implementation. */
#include "op_common.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

cluda_status cluda_layernorm_forward(cluda_ctx *ctx, const cluda_tensor *x, const cluda_tensor *gamma, const cluda_tensor *beta, float eps, cluda_tensor *y, cluda_tensor *mean, cluda_tensor *rstd) {
  CLUDA_DISPATCH(ctx, layernorm_forward, x, gamma, beta, eps, y, mean, rstd);
}

cluda_status cluda_cpu_layernorm_forward(cluda_ctx *ctx, const cluda_tensor *x, const cluda_tensor *gamma, const cluda_tensor *beta, float eps, cluda_tensor *y, cluda_tensor *mean, cluda_tensor *rstd) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "layernorm_forward: not implemented yet");
}

cluda_status cluda_layernorm_backward(cluda_ctx *ctx, const cluda_tensor *x, const cluda_tensor *gamma, const cluda_tensor *mean, const cluda_tensor *rstd, const cluda_tensor *dy, cluda_tensor *dx, cluda_tensor *dgamma, cluda_tensor *dbeta) {
  CLUDA_DISPATCH(ctx, layernorm_backward, x, gamma, mean, rstd, dy, dx, dgamma, dbeta);
}

cluda_status cluda_cpu_layernorm_backward(cluda_ctx *ctx, const cluda_tensor *x, const cluda_tensor *gamma, const cluda_tensor *mean, const cluda_tensor *rstd, const cluda_tensor *dy, cluda_tensor *dx, cluda_tensor *dgamma, cluda_tensor *dbeta) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "layernorm_backward: not implemented yet");
}


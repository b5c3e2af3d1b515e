/* STUB: to be replaced by the implementation. */
#include "op_common.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

cluda_status cluda_batchnorm_forward(cluda_ctx *ctx, const cluda_batchnorm_params *p, const cluda_tensor *x, const cluda_tensor *gamma, const cluda_tensor *beta, cluda_tensor *running_mean, cluda_tensor *running_var, cluda_tensor *y, cluda_tensor *save_mean, cluda_tensor *save_rstd) {
  CLUDA_DISPATCH(ctx, batchnorm_forward, p, x, gamma, beta, running_mean, running_var, y, save_mean, save_rstd);
}

cluda_status cluda_cpu_batchnorm_forward(cluda_ctx *ctx, const cluda_batchnorm_params *p, const cluda_tensor *x, const cluda_tensor *gamma, const cluda_tensor *beta, cluda_tensor *running_mean, cluda_tensor *running_var, cluda_tensor *y, cluda_tensor *save_mean, cluda_tensor *save_rstd) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "batchnorm_forward: not implemented yet");
}

cluda_status cluda_batchnorm_backward(cluda_ctx *ctx, const cluda_batchnorm_params *p, const cluda_tensor *x, const cluda_tensor *gamma, const cluda_tensor *save_mean, const cluda_tensor *save_rstd, const cluda_tensor *dy, cluda_tensor *dx, cluda_tensor *dgamma, cluda_tensor *dbeta) {
  CLUDA_DISPATCH(ctx, batchnorm_backward, p, x, gamma, save_mean, save_rstd, dy, dx, dgamma, dbeta);
}

cluda_status cluda_cpu_batchnorm_backward(cluda_ctx *ctx, const cluda_batchnorm_params *p, const cluda_tensor *x, const cluda_tensor *gamma, const cluda_tensor *save_mean, const cluda_tensor *save_rstd, const cluda_tensor *dy, cluda_tensor *dx, cluda_tensor *dgamma, cluda_tensor *dbeta) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "batchnorm_backward: not implemented yet");
}


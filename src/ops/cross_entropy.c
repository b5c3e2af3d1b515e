/* STUB: to be replaced by the implementation. */
#include "op_common.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

cluda_status cluda_cross_entropy_forward(cluda_ctx *ctx, const cluda_tensor *logits, const cluda_tensor *labels, const cluda_tensor *weights, int ignore_index, cluda_tensor *loss) {
  CLUDA_DISPATCH(ctx, cross_entropy_forward, logits, labels, weights, ignore_index, loss);
}

cluda_status cluda_cpu_cross_entropy_forward(cluda_ctx *ctx, const cluda_tensor *logits, const cluda_tensor *labels, const cluda_tensor *weights, int ignore_index, cluda_tensor *loss) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "cross_entropy_forward: not implemented yet");
}

cluda_status cluda_cross_entropy_backward(cluda_ctx *ctx, const cluda_tensor *logits, const cluda_tensor *labels, const cluda_tensor *weights, int ignore_index, const cluda_tensor *dloss, cluda_tensor *dlogits) {
  CLUDA_DISPATCH(ctx, cross_entropy_backward, logits, labels, weights, ignore_index, dloss, dlogits);
}

cluda_status cluda_cpu_cross_entropy_backward(cluda_ctx *ctx, const cluda_tensor *logits, const cluda_tensor *labels, const cluda_tensor *weights, int ignore_index, const cluda_tensor *dloss, cluda_tensor *dlogits) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "cross_entropy_backward: not implemented yet");
}


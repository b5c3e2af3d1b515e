/* STUB: to be replaced by the implementation. */
#include "op_common.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

cluda_status cluda_feature_distance_forward(cluda_ctx *ctx, const cluda_tensor *a, const cluda_tensor *b, const cluda_tensor *mask, cluda_tensor *loss, cluda_tensor *count) {
  CLUDA_DISPATCH(ctx, feature_distance_forward, a, b, mask, loss, count);
}

cluda_status cluda_cpu_feature_distance_forward(cluda_ctx *ctx, const cluda_tensor *a, const cluda_tensor *b, const cluda_tensor *mask, cluda_tensor *loss, cluda_tensor *count) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "feature_distance_forward: not implemented yet");
}

cluda_status cluda_feature_distance_backward(cluda_ctx *ctx, const cluda_tensor *a, const cluda_tensor *b, const cluda_tensor *mask, const cluda_tensor *dloss, cluda_tensor *da, cluda_tensor *db) {
  CLUDA_DISPATCH(ctx, feature_distance_backward, a, b, mask, dloss, da, db);
}

cluda_status cluda_cpu_feature_distance_backward(cluda_ctx *ctx, const cluda_tensor *a, const cluda_tensor *b, const cluda_tensor *mask, const cluda_tensor *dloss, cluda_tensor *da, cluda_tensor *db) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "feature_distance_backward: not implemented yet");
}


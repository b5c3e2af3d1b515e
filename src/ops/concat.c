/* STUB: to be replaced by the implementation. */
#include "op_common.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

cluda_status cluda_concat_forward(cluda_ctx *ctx, int count, const cluda_tensor *const *xs, cluda_tensor *y) {
  CLUDA_DISPATCH(ctx, concat_forward, count, xs, y);
}

cluda_status cluda_cpu_concat_forward(cluda_ctx *ctx, int count, const cluda_tensor *const *xs, cluda_tensor *y) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "concat_forward: not implemented yet");
}

cluda_status cluda_concat_backward(cluda_ctx *ctx, int count, const cluda_tensor *dy, cluda_tensor *const *dxs) {
  CLUDA_DISPATCH(ctx, concat_backward, count, dy, dxs);
}

cluda_status cluda_cpu_concat_backward(cluda_ctx *ctx, int count, const cluda_tensor *dy, cluda_tensor *const *dxs) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "concat_backward: not implemented yet");
}

cluda_status cluda_slice_forward(cluda_ctx *ctx, int begin, const cluda_tensor *x, cluda_tensor *y) {
  CLUDA_DISPATCH(ctx, slice_forward, begin, x, y);
}

cluda_status cluda_cpu_slice_forward(cluda_ctx *ctx, int begin, const cluda_tensor *x, cluda_tensor *y) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "slice_forward: not implemented yet");
}

cluda_status cluda_slice_backward(cluda_ctx *ctx, int begin, const cluda_tensor *dy, cluda_tensor *dx) {
  CLUDA_DISPATCH(ctx, slice_backward, begin, dy, dx);
}

cluda_status cluda_cpu_slice_backward(cluda_ctx *ctx, int begin, const cluda_tensor *dy, cluda_tensor *dx) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "slice_backward: not implemented yet");
}


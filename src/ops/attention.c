/* STUB: to be replaced by the implementation. */
#include "op_common.h"

#pragma GCC diagnostic ignored "-Wunused-parameter"

cluda_status cluda_attention_forward(cluda_ctx *ctx, int heads, const cluda_tensor *q, const cluda_tensor *k, const cluda_tensor *v, cluda_tensor *out, cluda_tensor *probs) {
  CLUDA_DISPATCH(ctx, attention_forward, heads, q, k, v, out, probs);
}

cluda_status cluda_cpu_attention_forward(cluda_ctx *ctx, int heads, const cluda_tensor *q, const cluda_tensor *k, const cluda_tensor *v, cluda_tensor *out, cluda_tensor *probs) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "attention_forward: not implemented yet");
}

cluda_status cluda_attention_backward(cluda_ctx *ctx, int heads, const cluda_tensor *q, const cluda_tensor *k, const cluda_tensor *v, const cluda_tensor *probs, const cluda_tensor *dout, cluda_tensor *dq, cluda_tensor *dk, cluda_tensor *dv) {
  CLUDA_DISPATCH(ctx, attention_backward, heads, q, k, v, probs, dout, dq, dk, dv);
}

cluda_status cluda_cpu_attention_backward(cluda_ctx *ctx, int heads, const cluda_tensor *q, const cluda_tensor *k, const cluda_tensor *v, const cluda_tensor *probs, const cluda_tensor *dout, cluda_tensor *dq, cluda_tensor *dk, cluda_tensor *dv) {
  return CLUDA_FAIL(CLUDA_ERR_UNSUPPORTED, "attention_backward: not implemented yet");
}


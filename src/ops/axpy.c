/* y += alpha x: residual additions in forward passes and sums of gradient contributions in
 * backward passes (e.g. a tensor read by two branches). */
#include "op_common.h"

cluda_status cluda_axpy(cluda_ctx *ctx, float alpha, const cluda_tensor *x, cluda_tensor *y) {
  CLUDA_TRY(cluda_check_tensor("axpy", "x", x, CLUDA_F32, -1));
  CLUDA_TRY(cluda_check_tensor("axpy", "y", y, CLUDA_F32, -1));
  CLUDA_REQUIRE_SAME_SHAPE("axpy", "x", x, "y", y);
  CLUDA_DISPATCH(ctx, axpy, alpha, x, y);
}

cluda_status cluda_cpu_axpy(cluda_ctx *ctx, float alpha, const cluda_tensor *x, cluda_tensor *y) {
  (void)ctx;
  const float *in = cluda_f32(x);
  float *out = cluda_f32(y);
  int64_t n = cluda_tensor_numel(x);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++)
    out[i] += alpha * in[i];
  return cluda_ok();
}

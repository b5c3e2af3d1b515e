/* Elementwise activations: GELU (exact erf form), ReLU, sigmoid. */
#include <math.h>

#include "op_common.h"

static cluda_status check_unary(const char *op, const char *a_name, const cluda_tensor *a,
                                const char *b_name, const cluda_tensor *b) {
  CLUDA_TRY(cluda_check_tensor(op, a_name, a, CLUDA_F32, -1));
  CLUDA_TRY(cluda_check_tensor(op, b_name, b, CLUDA_F32, -1));
  CLUDA_REQUIRE_SAME_SHAPE(op, a_name, a, b_name, b);
  return cluda_ok();
}

static cluda_status check_binary(const char *op, const char *a_name, const cluda_tensor *a,
                                 const cluda_tensor *dy, cluda_tensor *dx) {
  CLUDA_TRY(check_unary(op, a_name, a, "dy", dy));
  CLUDA_TRY(check_unary(op, a_name, a, "dx", dx));
  return cluda_ok();
}

cluda_status cluda_gelu_forward(cluda_ctx *ctx, const cluda_tensor *x, cluda_tensor *y) {
  CLUDA_TRY(check_unary("gelu_forward", "x", x, "y", y));
  CLUDA_DISPATCH(ctx, gelu_forward, x, y);
}

cluda_status cluda_gelu_backward(cluda_ctx *ctx, const cluda_tensor *x, const cluda_tensor *dy,
                                 cluda_tensor *dx) {
  CLUDA_TRY(check_binary("gelu_backward", "x", x, dy, dx));
  CLUDA_DISPATCH(ctx, gelu_backward, x, dy, dx);
}

cluda_status cluda_relu_forward(cluda_ctx *ctx, const cluda_tensor *x, cluda_tensor *y) {
  CLUDA_TRY(check_unary("relu_forward", "x", x, "y", y));
  CLUDA_DISPATCH(ctx, relu_forward, x, y);
}

cluda_status cluda_relu_backward(cluda_ctx *ctx, const cluda_tensor *y, const cluda_tensor *dy,
                                 cluda_tensor *dx) {
  CLUDA_TRY(check_binary("relu_backward", "y", y, dy, dx));
  CLUDA_DISPATCH(ctx, relu_backward, y, dy, dx);
}

cluda_status cluda_sigmoid_forward(cluda_ctx *ctx, const cluda_tensor *x, cluda_tensor *y) {
  CLUDA_TRY(check_unary("sigmoid_forward", "x", x, "y", y));
  CLUDA_DISPATCH(ctx, sigmoid_forward, x, y);
}

cluda_status cluda_sigmoid_backward(cluda_ctx *ctx, const cluda_tensor *y, const cluda_tensor *dy,
                                    cluda_tensor *dx) {
  CLUDA_TRY(check_binary("sigmoid_backward", "y", y, dy, dx));
  CLUDA_DISPATCH(ctx, sigmoid_backward, y, dy, dx);
}

/* ---- CPU implementations ---- */

static const float kInvSqrt2 = 0.70710678118654752f;
static const float kInvSqrt2Pi = 0.39894228040143268f;

cluda_status cluda_cpu_gelu_forward(cluda_ctx *ctx, const cluda_tensor *x, cluda_tensor *y) {
  (void)ctx;
  const float *in = cluda_f32(x);
  float *out = cluda_f32(y);
  int64_t n = cluda_tensor_numel(x);
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++)
    out[i] = 0.5f * in[i] * (1.0f + erff(in[i] * kInvSqrt2));
  return cluda_ok();
}

cluda_status cluda_cpu_gelu_backward(cluda_ctx *ctx, const cluda_tensor *x, const cluda_tensor *dy,
                                     cluda_tensor *dx) {
  (void)ctx;
  const float *in = cluda_f32(x), *g = cluda_f32(dy);
  float *out = cluda_f32(dx);
  int64_t n = cluda_tensor_numel(x);
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++) {
    float v = in[i];
    float cdf = 0.5f * (1.0f + erff(v * kInvSqrt2));
    float pdf = kInvSqrt2Pi * expf(-0.5f * v * v);
    out[i] = g[i] * (cdf + v * pdf);
  }
  return cluda_ok();
}

cluda_status cluda_cpu_relu_forward(cluda_ctx *ctx, const cluda_tensor *x, cluda_tensor *y) {
  (void)ctx;
  const float *in = cluda_f32(x);
  float *out = cluda_f32(y);
  int64_t n = cluda_tensor_numel(x);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++)
    out[i] = in[i] > 0.0f ? in[i] : 0.0f;
  return cluda_ok();
}

cluda_status cluda_cpu_relu_backward(cluda_ctx *ctx, const cluda_tensor *y, const cluda_tensor *dy,
                                     cluda_tensor *dx) {
  (void)ctx;
  const float *out = cluda_f32(y), *g = cluda_f32(dy);
  float *d = cluda_f32(dx);
  int64_t n = cluda_tensor_numel(y);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; i++)
    d[i] = out[i] > 0.0f ? g[i] : 0.0f;
  return cluda_ok();
}

cluda_status cluda_cpu_sigmoid_forward(cluda_ctx *ctx, const cluda_tensor *x, cluda_tensor *y) {
  (void)ctx;
  const float *in = cluda_f32(x);
  float *out = cluda_f32(y);
  int64_t n = cluda_tensor_numel(x);
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++)
    out[i] = 1.0f / (1.0f + expf(-in[i]));
  return cluda_ok();
}

cluda_status cluda_cpu_sigmoid_backward(cluda_ctx *ctx, const cluda_tensor *y,
                                        const cluda_tensor *dy, cluda_tensor *dx) {
  (void)ctx;
  const float *out = cluda_f32(y), *g = cluda_f32(dy);
  float *d = cluda_f32(dx);
  int64_t n = cluda_tensor_numel(y);
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; i++)
    d[i] = g[i] * out[i] * (1.0f - out[i]);
  return cluda_ok();
}

/* Elementwise activations on the GPU: GELU (exact erf form), ReLU, sigmoid. Grid-stride
 * loops with 16-byte accesses when every pointer is 16-byte aligned, then a scalar tail.
 * In-place use (y == x, dx == dy) is allowed: no __restrict__. */
#include "kernel_common.cuh"

using namespace cluda_kernels;

namespace {

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

struct GeluForward {
  __device__ float operator()(float x) const { return 0.5f * x * (1.0f + erff(x * kInvSqrt2)); }
};
struct GeluBackward { /* (x, dy) */
  __device__ float operator()(float x, float g) const {
    float cdf = 0.5f * (1.0f + erff(x * kInvSqrt2));
    float pdf = kInvSqrt2Pi * expf(-0.5f * x * x);
    return g * (cdf + x * pdf);
  }
};
struct ReluForward {
  __device__ float operator()(float x) const { return x > 0.0f ? x : 0.0f; }
};
struct ReluBackward { /* (y, dy): mask with y > 0 */
  __device__ float operator()(float y, float g) const { return y > 0.0f ? g : 0.0f; }
};
struct SigmoidForward {
  __device__ float operator()(float x) const { return 1.0f / (1.0f + expf(-x)); }
};
struct SigmoidBackward { /* (y, dy) */
  __device__ float operator()(float y, float g) const { return g * y * (1.0f - y); }
};

template <class F>
__global__ void map1_kernel(const float *x, float *y, int64_t n, int vectorized, F f) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (vectorized) {
    const int64_t n4 = n / 4;
    const float4 *x4 = reinterpret_cast<const float4 *>(x);
    float4 *y4 = reinterpret_cast<float4 *>(y);
    for (int64_t i = tid; i < n4; i += stride) {
      float4 v = x4[i];
      v.x = f(v.x);
      v.y = f(v.y);
      v.z = f(v.z);
      v.w = f(v.w);
      y4[i] = v;
    }
    done = n4 * 4;
  }
  for (int64_t i = done + tid; i < n; i += stride)
    y[i] = f(x[i]);
}

template <class F>
__global__ void map2_kernel(const float *a, const float *g, float *out, int64_t n, int vectorized,
                            F f) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  const int64_t tid = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  int64_t done = 0;
  if (vectorized) {
    const int64_t n4 = n / 4;
    const float4 *a4 = reinterpret_cast<const float4 *>(a);
    const float4 *g4 = reinterpret_cast<const float4 *>(g);
    float4 *o4 = reinterpret_cast<float4 *>(out);
    for (int64_t i = tid; i < n4; i += stride) {
      float4 va = a4[i], vg = g4[i], r;
      r.x = f(va.x, vg.x);
      r.y = f(va.y, vg.y);
      r.z = f(va.z, vg.z);
      r.w = f(va.w, vg.w);
      o4[i] = r;
    }
    done = n4 * 4;
  }
  for (int64_t i = done + tid; i < n; i += stride)
    out[i] = f(a[i], g[i]);
}

inline bool aligned16(const void *p) { return ((uintptr_t)p & 15u) == 0; }

template <class F>
cluda_status run_map1(cluda_ctx *ctx, const char *op, const cluda_tensor *x, cluda_tensor *y, F f) {
  const int64_t n = cluda_tensor_numel(x);
  if (n == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const float *in = cluda_f32(x);
  float *out = cluda_f32(y);
  const int vec = aligned16(in) && aligned16(out);
  const unsigned grid = grid_size(vec ? (n + 3) / 4 : n, kBlock, fill_cap(d));
  map1_kernel<<<grid, kBlock, 0, d->stream>>>(in, out, n, vec, f);
  CLUDA_CUDA_CHECK_LAUNCH(op, "map1_kernel");
  return cluda_ok();
}

template <class F>
cluda_status run_map2(cluda_ctx *ctx, const char *op, const cluda_tensor *a, const cluda_tensor *g,
                      cluda_tensor *out, F f) {
  const int64_t n = cluda_tensor_numel(a);
  if (n == 0) return cluda_ok();
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const float *pa = cluda_f32(a), *pg = cluda_f32(g);
  float *po = cluda_f32(out);
  const int vec = aligned16(pa) && aligned16(pg) && aligned16(po);
  const unsigned grid = grid_size(vec ? (n + 3) / 4 : n, kBlock, fill_cap(d));
  map2_kernel<<<grid, kBlock, 0, d->stream>>>(pa, pg, po, n, vec, f);
  CLUDA_CUDA_CHECK_LAUNCH(op, "map2_kernel");
  return cluda_ok();
}

} // namespace

extern "C" cluda_status cluda_cuda_gelu_forward(cluda_ctx *ctx, const cluda_tensor *x,
                                                cluda_tensor *y) {
  return run_map1(ctx, "gelu_forward", x, y, GeluForward());
}

extern "C" cluda_status cluda_cuda_gelu_backward(cluda_ctx *ctx, const cluda_tensor *x,
                                                 const cluda_tensor *dy, cluda_tensor *dx) {
  return run_map2(ctx, "gelu_backward", x, dy, dx, GeluBackward());
}

extern "C" cluda_status cluda_cuda_relu_forward(cluda_ctx *ctx, const cluda_tensor *x,
                                                cluda_tensor *y) {
  return run_map1(ctx, "relu_forward", x, y, ReluForward());
}

extern "C" cluda_status cluda_cuda_relu_backward(cluda_ctx *ctx, const cluda_tensor *y,
                                                 const cluda_tensor *dy, cluda_tensor *dx) {
  return run_map2(ctx, "relu_backward", y, dy, dx, ReluBackward());
}

extern "C" cluda_status cluda_cuda_sigmoid_forward(cluda_ctx *ctx, const cluda_tensor *x,
                                                   cluda_tensor *y) {
  return run_map1(ctx, "sigmoid_forward", x, y, SigmoidForward());
}

extern "C" cluda_status cluda_cuda_sigmoid_backward(cluda_ctx *ctx, const cluda_tensor *y,
                                                    const cluda_tensor *dy, cluda_tensor *dx) {
  return run_map2(ctx, "sigmoid_backward", y, dy, dx, SigmoidBackward());
}

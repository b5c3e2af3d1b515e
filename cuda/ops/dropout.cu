/* Dropout (per element), Dropout2d (per (sample, channel) of NHWC) and DropPath (per sample)
 * on the GPU, with the CPU backend's masks bit for bit: mask element i is kept iff
 * cluda_rng_uniform(key, first_sample * per_sample + i) >= p, where per_sample is the mask
 * elements per sample (mask numel / x's first dim). The device Philox in kernel_common.cuh
 * reproduces src/rng.c exactly, so a run does not change when it moves between backends
 * or between rank splits of a global batch.
 *
 * Two kernels in stream order: one thread per mask element draws the mask (one Philox call
 * each, as the CPU), then one thread per data element multiplies by 0 or 1 / (1 - p) with
 * the mask broadcast per mode. The scale is computed on the host exactly as the CPU does
 * and the product is a single float multiply, so y and dx equal the CPU's bit for bit. */
#include "kernel_common.cuh"

using namespace cluda_kernels;

namespace {

__global__ void dropout_mask_kernel(cluda_rng_key key, uint64_t first, float rate, uint8_t *mask,
                                    int64_t count) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += stride)
    mask[i] = rng_uniform(key, first + (uint64_t)i) >= rate;
}

/* out[i] = in[i] * (mask[m(i)] ? scale : 0) with m(i) = i (ELEMENT), (i / c / hw) c + i % c
 * (CHANNEL: row i / c of NHWC belongs to sample row / hw) or i / per (SAMPLE). */
__global__ void dropout_apply_kernel(int mode, float scale, const uint8_t *mask, const float *in,
                                     float *out, int64_t total, int64_t hw, int c, int64_t per) {
  const int64_t stride = (int64_t)gridDim.x * blockDim.x;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    int64_t m;
    if (mode == CLUDA_DROPOUT_ELEMENT)
      m = i;
    else if (mode == CLUDA_DROPOUT_CHANNEL)
      m = (i / c) / hw * c + i % c;
    else
      m = i / per;
    out[i] = in[i] * (mask[m] != 0 ? scale : 0.0f);
  }
}

/* The factor kept elements are multiplied by: src/ops/dropout.c's keep_scale. */
float keep_scale(float p) { return (float)(1.0 / (1.0 - (double)p)); }

cluda_status apply_mask(cluda_ctx *ctx, const char *op, const cluda_dropout_params *p,
                        const uint8_t *mask, const cluda_tensor *t, const float *in, float *out) {
  const int64_t total = cluda_tensor_numel(t);
  if (total == 0) return cluda_ok();
  int64_t hw = 1, per = 1;
  int c = 1;
  if (p->mode == CLUDA_DROPOUT_CHANNEL) {
    /* total > 0, so N, H, W and C are all >= 1 */
    hw = (int64_t)t->shape[1] * t->shape[2];
    c = t->shape[3];
  } else if (p->mode == CLUDA_DROPOUT_SAMPLE) {
    per = total / t->shape[0];
  }
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  const unsigned grid = grid_size(total, kBlock, fill_cap(d));
  dropout_apply_kernel<<<grid, kBlock, 0, d->stream>>>((int)p->mode, keep_scale(p->p), mask, in,
                                                       out, total, hw, c, per);
  CLUDA_CUDA_CHECK_LAUNCH(op, "dropout_apply_kernel");
  return cluda_ok();
}

} // namespace

extern "C" cluda_status cluda_cuda_dropout_forward(cluda_ctx *ctx, const cluda_dropout_params *p,
                                                   const cluda_tensor *x, cluda_tensor *y,
                                                   cluda_tensor *mask) {
  const int64_t count = cluda_tensor_numel(mask);
  const cluda_cuda_device *d = cluda_cuda_dev(ctx);
  if (count > 0) {
    if (p->p == 0.0f) {
      /* keeps everything without drawing, as the CPU */
      CLUDA_CUDA_TRY(cudaMemsetAsync(cluda_u8(mask), 1, (size_t)count, d->stream));
    } else {
      /* count > 0 implies x's first dim >= 1 (the mask shape follows x's, see ops.h) */
      const uint64_t per_sample = (uint64_t)(count / x->shape[0]);
      const uint64_t first = p->first_sample * per_sample;
      const unsigned grid = grid_size(count, kBlock, fill_cap(d));
      dropout_mask_kernel<<<grid, kBlock, 0, d->stream>>>(p->key, first, p->p, cluda_u8(mask),
                                                          count);
      CLUDA_CUDA_CHECK_LAUNCH("dropout_forward", "dropout_mask_kernel");
    }
  }
  return apply_mask(ctx, "dropout_forward", p, cluda_u8(mask), x, cluda_f32(x), cluda_f32(y));
}

extern "C" cluda_status cluda_cuda_dropout_backward(cluda_ctx *ctx, const cluda_dropout_params *p,
                                                    const cluda_tensor *mask,
                                                    const cluda_tensor *dy, cluda_tensor *dx) {
  return apply_mask(ctx, "dropout_backward", p, cluda_u8(mask), dy, cluda_f32(dy), cluda_f32(dx));
}

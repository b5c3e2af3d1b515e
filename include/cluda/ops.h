/* The op library. Every op has a forward and a backward with one signature shared by the
 * public entry point (cluda_<op>_<dir>: validates shapes, then dispatches through
 * ctx->backend), the CPU implementation (cluda_cpu_<op>_<dir>, src/ops/<op>.c) and the CUDA
 * implementation (cluda_cuda_<op>_<dir>, cuda/ops/<op>.cu).
 *
 * Conventions
 *  - Activations are NHWC [N, H, W, C]; "rows" ops work on the last axis of any tensor.
 *  - Conv weights are [C_out, KH, KW, C_in / groups] (OHWI); linear weights are [out, in]
 *    as in PyTorch.
 *  - Backward OVERWRITES input gradients (dx) and ACCUMULATES (+=) parameter gradients
 *    (dw, db, dgamma, dbeta), so several losses can add into one gradient buffer.
 *  - Optional tensors may be NULL where the comment says so.
 *  - Scalar losses are one-element f32 tensors on the backend's device.
 *  - Semantics follow PyTorch (see shared/spec/model.md section 9). */
#ifndef CLUDA_OPS_H
#define CLUDA_OPS_H

#include "cluda/arena.h"
#include "cluda/rng.h"
#include "cluda/status.h"
#include "cluda/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct cluda_backend;
struct cluda_comm;

/* What an op runs with: the backend table, a scratch arena (im2col buffers etc.; ops
 * release what they take before returning) and the backend's device state (stream and
 * library handles on CUDA, NULL on the CPU). */
typedef struct cluda_ctx {
  const struct cluda_backend *backend;
  cluda_arena *scratch;
  void *device;
  /* SyncBatchNorm: when set and of more than one rank, batchnorm in training takes its
   * statistics over the global batch (every rank's N*H*W values, summed with
   * cluda_comm_allreduce) and its backward sums the dx terms the same way, so every rank
   * must make the same batchnorm calls with the same C. NULL (the default): per-rank
   * statistics. dgamma / dbeta stay this rank's share either way. */
  struct cluda_comm *bn_sync;
} cluda_ctx;

/* ---- elementwise activations (any shape) ---- */
/* GELU, exact: 0.5 x (1 + erf(x / sqrt 2)) */
typedef cluda_status cluda_gelu_forward_fn(cluda_ctx *ctx, const cluda_tensor *x, cluda_tensor *y);
typedef cluda_status cluda_gelu_backward_fn(cluda_ctx *ctx, const cluda_tensor *x,
                                            const cluda_tensor *dy, cluda_tensor *dx);
/* ReLU; backward masks with y > 0 */
typedef cluda_status cluda_relu_forward_fn(cluda_ctx *ctx, const cluda_tensor *x, cluda_tensor *y);
typedef cluda_status cluda_relu_backward_fn(cluda_ctx *ctx, const cluda_tensor *y,
                                            const cluda_tensor *dy, cluda_tensor *dx);
/* sigmoid; backward from y: dx = dy y (1 - y) */
typedef cluda_status cluda_sigmoid_forward_fn(cluda_ctx *ctx, const cluda_tensor *x,
                                              cluda_tensor *y);
typedef cluda_status cluda_sigmoid_backward_fn(cluda_ctx *ctx, const cluda_tensor *y,
                                               const cluda_tensor *dy, cluda_tensor *dx);

/* ---- y += alpha x (same shape): residual adds and gradient sums; its own adjoint ---- */
typedef cluda_status cluda_axpy_fn(cluda_ctx *ctx, float alpha, const cluda_tensor *x,
                                   cluda_tensor *y);

/* ---- softmax over the last axis ---- */
typedef cluda_status cluda_softmax_forward_fn(cluda_ctx *ctx, const cluda_tensor *x,
                                              cluda_tensor *y);
typedef cluda_status cluda_softmax_backward_fn(cluda_ctx *ctx, const cluda_tensor *y,
                                               const cluda_tensor *dy, cluda_tensor *dx);

/* ---- linear: y[..., out] = x[..., in] w[out, in]^T + b[out] (b may be NULL) ---- */
typedef cluda_status cluda_linear_forward_fn(cluda_ctx *ctx, const cluda_tensor *x,
                                             const cluda_tensor *w, const cluda_tensor *b,
                                             cluda_tensor *y);
/* dx (may be NULL) = dy w; dw += dy^T x; db (may be NULL) += sum over rows of dy */
typedef cluda_status cluda_linear_backward_fn(cluda_ctx *ctx, const cluda_tensor *x,
                                              const cluda_tensor *w, const cluda_tensor *dy,
                                              cluda_tensor *dx, cluda_tensor *dw, cluda_tensor *db);

/* ---- conv2d, NHWC, zero padding, cross-correlation (PyTorch Conv2d) ---- */
typedef struct cluda_conv2d_params {
  int kernel_h, kernel_w;
  int stride_h, stride_w;
  int pad_h, pad_w;
  int dilation_h, dilation_w;
  int groups; /* groups == C_in == C_out is depthwise */
} cluda_conv2d_params;
/* floor((in + 2 pad - dilation (kernel - 1) - 1) / stride) + 1 */
int cluda_conv2d_out_size(int in, int kernel, int stride, int pad, int dilation);
/* Scratch bytes conv2d forward/backward take from ctx->scratch for these shapes (im2col
 * buffers), so callers can size the arena when planning. */
size_t cluda_conv2d_scratch_bytes(const cluda_conv2d_params *p, const cluda_tensor *x,
                                  const cluda_tensor *w, const cluda_tensor *y);
/* x [N,H,W,C_in], w [C_out,KH,KW,C_in/groups], b [C_out] or NULL, y [N,OH,OW,C_out] */
typedef cluda_status cluda_conv2d_forward_fn(cluda_ctx *ctx, const cluda_conv2d_params *p,
                                             const cluda_tensor *x, const cluda_tensor *w,
                                             const cluda_tensor *b, cluda_tensor *y);
/* dx, dw, db may each be NULL (the first conv of a network needs no dx) */
typedef cluda_status cluda_conv2d_backward_fn(cluda_ctx *ctx, const cluda_conv2d_params *p,
                                              const cluda_tensor *x, const cluda_tensor *w,
                                              const cluda_tensor *dy, cluda_tensor *dx,
                                              cluda_tensor *dw, cluda_tensor *db);

/* ---- layernorm over the last axis (biased variance, affine) ---- */
/* x, y [..., C]; gamma, beta [C]; mean, rstd [rows] are saved for the backward */
typedef cluda_status cluda_layernorm_forward_fn(cluda_ctx *ctx, const cluda_tensor *x,
                                                const cluda_tensor *gamma, const cluda_tensor *beta,
                                                float eps, cluda_tensor *y, cluda_tensor *mean,
                                                cluda_tensor *rstd);
typedef cluda_status cluda_layernorm_backward_fn(cluda_ctx *ctx, const cluda_tensor *x,
                                                 const cluda_tensor *gamma,
                                                 const cluda_tensor *mean, const cluda_tensor *rstd,
                                                 const cluda_tensor *dy, cluda_tensor *dx,
                                                 cluda_tensor *dgamma, cluda_tensor *dbeta);

/* ---- batchnorm over N, H, W of NHWC (BatchNorm2d) ---- */
typedef struct cluda_batchnorm_params {
  float eps;      /* 1e-5 */
  float momentum; /* 0.1: running = (1 - m) running + m batch (unbiased var) */
  int training;   /* 1: batch statistics and running update; 0: running statistics */
} cluda_batchnorm_params;
/* x, y [N,H,W,C]; gamma, beta, running_mean, running_var, save_mean, save_rstd [C].
 * Training: normalises with the batch mean and biased variance, updates the running
 * statistics, saves the batch mean and 1/sqrt(var + eps). Inference: saves the running
 * mean and 1/sqrt(running_var + eps) and leaves the running statistics alone. */
typedef cluda_status cluda_batchnorm_forward_fn(cluda_ctx *ctx, const cluda_batchnorm_params *p,
                                                const cluda_tensor *x, const cluda_tensor *gamma,
                                                const cluda_tensor *beta,
                                                cluda_tensor *running_mean,
                                                cluda_tensor *running_var, cluda_tensor *y,
                                                cluda_tensor *save_mean, cluda_tensor *save_rstd);
/* training selects the batch-statistics gradient (through mean and variance) or the
 * inference one (fixed statistics) */
typedef cluda_status cluda_batchnorm_backward_fn(cluda_ctx *ctx, const cluda_batchnorm_params *p,
                                                 const cluda_tensor *x, const cluda_tensor *gamma,
                                                 const cluda_tensor *save_mean,
                                                 const cluda_tensor *save_rstd,
                                                 const cluda_tensor *dy, cluda_tensor *dx,
                                                 cluda_tensor *dgamma, cluda_tensor *dbeta);

/* ---- multi-head scaled dot-product attention, no mask, scale head_dim^-0.5 ---- */
/* Scratch bytes the backward takes from ctx->scratch. */
size_t cluda_attention_scratch_bytes(int heads, int batch, int n, int nk);
/* q [B,N,C], k and v [B,Nk,C] with C = heads * head_dim, channel c in head c / head_dim;
 * out [B,N,C]; probs [B*heads, N, Nk] (3-d) is saved for the backward */
typedef cluda_status cluda_attention_forward_fn(cluda_ctx *ctx, int heads, const cluda_tensor *q,
                                                const cluda_tensor *k, const cluda_tensor *v,
                                                cluda_tensor *out, cluda_tensor *probs);
typedef cluda_status cluda_attention_backward_fn(cluda_ctx *ctx, int heads, const cluda_tensor *q,
                                                 const cluda_tensor *k, const cluda_tensor *v,
                                                 const cluda_tensor *probs,
                                                 const cluda_tensor *dout, cluda_tensor *dq,
                                                 cluda_tensor *dk, cluda_tensor *dv);

/* ---- resizes of NHWC maps; output size from y's shape ---- */
/* bilinear, no antialias; align_corners 1: src = dst (in-1)/(out-1); 0: src = max(0,
 * (dst + 0.5) in/out - 0.5) */
typedef cluda_status cluda_resize_bilinear_forward_fn(cluda_ctx *ctx, int align_corners,
                                                      const cluda_tensor *x, cluda_tensor *y);
/* dx [N,H,W,C] is overwritten with the transpose (deterministic) */
typedef cluda_status cluda_resize_bilinear_backward_fn(cluda_ctx *ctx, int align_corners,
                                                       const cluda_tensor *dy, cluda_tensor *dx);
/* nearest, PyTorch legacy rule: src = floor(dst in / out); f32 or u8 (labels) */
typedef cluda_status cluda_resize_nearest_forward_fn(cluda_ctx *ctx, const cluda_tensor *x,
                                                     cluda_tensor *y);
typedef cluda_status cluda_resize_nearest_backward_fn(cluda_ctx *ctx, const cluda_tensor *dy,
                                                      cluda_tensor *dx);

/* ---- average pooling (AvgPool2d, count_include_pad = True, floor mode) ---- */
typedef struct cluda_pool2d_params {
  int kernel_h, kernel_w;
  int stride_h, stride_w;
  int pad_h, pad_w;
} cluda_pool2d_params;
typedef cluda_status cluda_avgpool_forward_fn(cluda_ctx *ctx, const cluda_pool2d_params *p,
                                              const cluda_tensor *x, cluda_tensor *y);
typedef cluda_status cluda_avgpool_backward_fn(cluda_ctx *ctx, const cluda_pool2d_params *p,
                                               const cluda_tensor *dy, cluda_tensor *dx);

/* ---- channel concat and slice (last axis) ---- */
/* y[..., sum C_i] = concat of count inputs [..., C_i] with equal leading dims */
typedef cluda_status cluda_concat_forward_fn(cluda_ctx *ctx, int count,
                                             const cluda_tensor *const *xs, cluda_tensor *y);
/* dxs[i] = the channels of dy that came from input i */
typedef cluda_status cluda_concat_backward_fn(cluda_ctx *ctx, int count, const cluda_tensor *dy,
                                              cluda_tensor *const *dxs);
/* y[..., Cy] = x[..., begin : begin + Cy] */
typedef cluda_status cluda_slice_forward_fn(cluda_ctx *ctx, int begin, const cluda_tensor *x,
                                            cluda_tensor *y);
/* dx = zeros with dy placed at channels begin .. begin + Cy */
typedef cluda_status cluda_slice_backward_fn(cluda_ctx *ctx, int begin, const cluda_tensor *dy,
                                             cluda_tensor *dx);

/* ---- dropout family: a seeded keep-mask, kept values scaled by 1 / (1 - p) ---- */
typedef enum cluda_dropout_mode {
  CLUDA_DROPOUT_ELEMENT = 0, /* nn.Dropout: one draw per element; mask has x's numel */
  CLUDA_DROPOUT_CHANNEL = 1, /* nn.Dropout2d on NHWC: one draw per (n, c); mask [N, C] */
  CLUDA_DROPOUT_SAMPLE = 2   /* DropPath: one draw per sample (first dim); mask [N] */
} cluda_dropout_mode;
typedef struct cluda_dropout_params {
  float p; /* drop probability in [0, 1); p = 0 copies x and sets the mask to ones */
  cluda_dropout_mode mode;
  cluda_rng_key key;     /* draw first_sample * per_sample + i decides mask element i (keep iff
                            u >= p; per_sample = mask elements per sample) */
  uint64_t first_sample; /* global index of sample 0 (data parallel: rank * batch), so the
                            masks of a global batch do not depend on how ranks split it */
} cluda_dropout_params;
/* mask (u8) receives 1 for kept, 0 for dropped units */
typedef cluda_status cluda_dropout_forward_fn(cluda_ctx *ctx, const cluda_dropout_params *p,
                                              const cluda_tensor *x, cluda_tensor *y,
                                              cluda_tensor *mask);
typedef cluda_status cluda_dropout_backward_fn(cluda_ctx *ctx, const cluda_dropout_params *p,
                                               const cluda_tensor *mask, const cluda_tensor *dy,
                                               cluda_tensor *dx);

/* ---- per-pixel cross-entropy over the last axis ---- */
/* logits [N,H,W,K]; labels u8 [N,H,W] (label == ignore_index: zero loss and gradient);
 * weights f32 [N,H,W] or NULL (all ones); loss [1] = sum(w * -log softmax[label]) / (N H W):
 * the mean over ALL pixels, ignored ones included (mmseg 0.16) */
typedef cluda_status cluda_cross_entropy_forward_fn(cluda_ctx *ctx, const cluda_tensor *logits,
                                                    const cluda_tensor *labels,
                                                    const cluda_tensor *weights, int ignore_index,
                                                    cluda_tensor *loss);
/* dlogits = dloss * (softmax - onehot) * w / (N H W), from the one-element dloss */
typedef cluda_status cluda_cross_entropy_backward_fn(cluda_ctx *ctx, const cluda_tensor *logits,
                                                     const cluda_tensor *labels,
                                                     const cluda_tensor *weights, int ignore_index,
                                                     const cluda_tensor *dloss,
                                                     cluda_tensor *dlogits);

/* ---- L2 normalisation over the last axis (F.normalize: x / max(||x||, eps)) ---- */
/* norms [rows] saves ||x|| for the backward */
typedef cluda_status cluda_l2norm_forward_fn(cluda_ctx *ctx, float eps, const cluda_tensor *x,
                                             cluda_tensor *y, cluda_tensor *norms);
typedef cluda_status cluda_l2norm_backward_fn(cluda_ctx *ctx, float eps, const cluda_tensor *x,
                                              const cluda_tensor *norms, const cluda_tensor *dy,
                                              cluda_tensor *dx);

/* ---- feature distance: masked mean of per-cell L2 distance (DAFormer FD loss) ---- */
/* a, b [N,H,W,C]; mask u8 [N,H,W] (nonzero = the cell counts); loss [1] = sum over masked
 * cells of ||a - b||_2 / (number of masked cells), and 0 when no cell is masked;
 * count [1] (f32) receives the number of masked cells so the caller can skip the term */
typedef cluda_status cluda_feature_distance_forward_fn(cluda_ctx *ctx, const cluda_tensor *a,
                                                       const cluda_tensor *b,
                                                       const cluda_tensor *mask, cluda_tensor *loss,
                                                       cluda_tensor *count);
/* da = dloss (a - b) / (||a - b|| count) on masked cells with nonzero distance, else 0;
 * db (may be NULL) = -da */
typedef cluda_status cluda_feature_distance_backward_fn(cluda_ctx *ctx, const cluda_tensor *a,
                                                        const cluda_tensor *b,
                                                        const cluda_tensor *mask,
                                                        const cluda_tensor *dloss, cluda_tensor *da,
                                                        cluda_tensor *db);

/* The public entry points: validate, then run on ctx->backend. */
cluda_gelu_forward_fn cluda_gelu_forward;
cluda_gelu_backward_fn cluda_gelu_backward;
cluda_relu_forward_fn cluda_relu_forward;
cluda_relu_backward_fn cluda_relu_backward;
cluda_sigmoid_forward_fn cluda_sigmoid_forward;
cluda_sigmoid_backward_fn cluda_sigmoid_backward;
cluda_axpy_fn cluda_axpy;
cluda_softmax_forward_fn cluda_softmax_forward;
cluda_softmax_backward_fn cluda_softmax_backward;
cluda_linear_forward_fn cluda_linear_forward;
cluda_linear_backward_fn cluda_linear_backward;
cluda_conv2d_forward_fn cluda_conv2d_forward;
cluda_conv2d_backward_fn cluda_conv2d_backward;
cluda_layernorm_forward_fn cluda_layernorm_forward;
cluda_layernorm_backward_fn cluda_layernorm_backward;
cluda_batchnorm_forward_fn cluda_batchnorm_forward;
cluda_batchnorm_backward_fn cluda_batchnorm_backward;
cluda_attention_forward_fn cluda_attention_forward;
cluda_attention_backward_fn cluda_attention_backward;
cluda_resize_bilinear_forward_fn cluda_resize_bilinear_forward;
cluda_resize_bilinear_backward_fn cluda_resize_bilinear_backward;
cluda_resize_nearest_forward_fn cluda_resize_nearest_forward;
cluda_resize_nearest_backward_fn cluda_resize_nearest_backward;
cluda_avgpool_forward_fn cluda_avgpool_forward;
cluda_avgpool_backward_fn cluda_avgpool_backward;
cluda_concat_forward_fn cluda_concat_forward;
cluda_concat_backward_fn cluda_concat_backward;
cluda_slice_forward_fn cluda_slice_forward;
cluda_slice_backward_fn cluda_slice_backward;
cluda_dropout_forward_fn cluda_dropout_forward;
cluda_dropout_backward_fn cluda_dropout_backward;
cluda_cross_entropy_forward_fn cluda_cross_entropy_forward;
cluda_cross_entropy_backward_fn cluda_cross_entropy_backward;
cluda_l2norm_forward_fn cluda_l2norm_forward;
cluda_l2norm_backward_fn cluda_l2norm_backward;
cluda_feature_distance_forward_fn cluda_feature_distance_forward;
cluda_feature_distance_backward_fn cluda_feature_distance_backward;

#ifdef __cplusplus
}
#endif
#endif

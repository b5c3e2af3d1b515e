/* The CUDA backend: device discovery, CUDA contexts, device memory helpers and the CUDA op
 * implementations (cluda_cuda_<op>_<dir>, cuda/ops/<op>.cu).
 *
 * Only code built with the CUDA backend (CLUDA_HAVE_CUDA, target cluda_cuda) may include
 * this header. It pulls in no CUDA header: device state is opaque behind ctx->device.
 *
 * Without a GPU (no driver, the stub driver, no device) cluda_cuda_probe still succeeds and
 * reports device_count 0 with one line saying why; callers then use the CPU backend.
 *
 * Ops on a CUDA context are queued on the context's stream and return before the GPU has
 * finished (except where a result must be checked on the host: cross_entropy waits for its
 * label check). Every op of one context runs on that one stream, so the scratch arena can
 * be reused as soon as an op returns. Call cluda_cuda_synchronize before reading results
 * with anything but cluda_cuda_download. */
#ifndef CLUDA_CUDA_H
#define CLUDA_CUDA_H

#include <stddef.h>

#include "cluda/backend.h"
#include "cluda/ops.h"
#include "cluda/optim.h"
#include "cluda/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { CLUDA_CUDA_NAME_BYTES = 256, CLUDA_CUDA_LINE_BYTES = 640 };

/* What cluda_cuda_probe found. Versions are 0 when unknown. */
typedef struct cluda_cuda_info {
  int device_count;     /* usable GPUs; 0 means "use the CPU backend" (see error, line) */
  int error;            /* cudaGetDeviceCount's cudaError_t (35 no driver, 34 stub driver,
                           100 no device), 0 on success */
  char error_name[64];  /* "cudaErrorInsufficientDriver" */
  char error_text[160]; /* "CUDA driver version is insufficient for CUDA runtime version" */
  int runtime_version;  /* cudaRuntimeGetVersion: 1000 major + 10 minor (13000) */
  int driver_version;   /* cudaDriverGetVersion, same encoding; 0 without a driver */
  int cublas_version;   /* 10000 major + 100 minor + patch (130100) */
  int cudnn_version;    /* cudnnGetVersion: 10000 major + 100 minor + patch (91900) */
  int nccl_version;     /* ncclGetVersion: 10000 major + 100 minor + patch (22809) */
  /* the probed device (valid when device_count > 0) */
  int device;
  char name[CLUDA_CUDA_NAME_BYTES];
  int cc_major, cc_minor; /* compute capability: 9.0 on H100/H200 */
  int multiprocessors;
  size_t total_memory; /* bytes */
  size_t free_memory;  /* bytes, when the probe could read it */
  /* one human-readable line, e.g. "cluda: no GPU (cudaErrorInsufficientDriver: ...); using
   * the CPU backend [CUDA runtime 13.0, driver none, cuDNN 9.19.0, NCCL 2.28.9]" */
  char line[CLUDA_CUDA_LINE_BYTES];
} cluda_cuda_info;

/* Fills *info for GPU `device`. Never crashes without a driver: "no GPU" (any error from
 * cudaGetDeviceCount, or a count of 0) is a successful probe with device_count 0.
 * Fails (CLUDA_ERR_ARG) for a NULL info or a device index outside [0, device_count), and
 * (CLUDA_ERR_DEVICE) when a GPU is present but cannot be queried; *info and its line are
 * filled as far as the probe got in every case. */
cluda_status cluda_cuda_probe(int device, cluda_cuda_info *info);

/* The CUDA backend table: the ops listed below; the others are NULL, and their public
 * entry points answer CLUDA_ERR_UNSUPPORTED on a CUDA context. */
const cluda_backend *cluda_backend_cuda(void);

/* Creates a context on GPU `device`: makes it current (cudaSetDevice), creates a stream,
 * a cuBLAS, a cuBLASLt and a cuDNN handle bound to it, and a device scratch arena of
 * scratch_bytes (ctx->scratch; may be 0). *out gets backend = cluda_backend_cuda(). Fails with
 * CLUDA_ERR_DEVICE (naming the CUDA call and its error) when there is no GPU. */
cluda_status cluda_cuda_context_create(int device, size_t scratch_bytes, cluda_ctx *out);
/* Waits for the stream, then frees everything the context owns; *ctx is zeroed. Accepts a
 * zeroed or already destroyed context. */
void cluda_cuda_context_destroy(cluda_ctx *ctx);
/* 1 when ctx was made by cluda_cuda_context_create. */
int cluda_cuda_context_is_cuda(const cluda_ctx *ctx);

/* Waits for all work queued on the context's stream; reports any asynchronous error. */
cluda_status cluda_cuda_synchronize(cluda_ctx *ctx);
/* The context's cudaStream_t, cublasHandle_t and cublasLtHandle_t (as void *). */
void *cluda_cuda_stream(const cluda_ctx *ctx);
void *cluda_cuda_cublas(const cluda_ctx *ctx);
void *cluda_cuda_cublaslt(const cluda_ctx *ctx);

/* Device memory (on the current device). cluda_cuda_free accepts NULL. */
cluda_status cluda_cuda_malloc(size_t bytes, void **out);
void cluda_cuda_free(void *device_ptr);
/* Copies on the context's stream and waits for the copy. */
cluda_status cluda_cuda_upload(cluda_ctx *ctx, void *device_dst, const void *host_src,
                               size_t bytes);
cluda_status cluda_cuda_download(cluda_ctx *ctx, void *host_dst, const void *device_src,
                                 size_t bytes);
/* Sets bytes of device memory to `value` on the context's stream (does not wait). */
cluda_status cluda_cuda_memset(cluda_ctx *ctx, void *device_dst, int value, size_t bytes);

/* CUDA implementations (cuda/ops/<op>.cu); like the CPU ones they assume arguments that
 * the public entry point validated, with every tensor's data in device memory. */
cluda_gelu_forward_fn cluda_cuda_gelu_forward;
cluda_gelu_backward_fn cluda_cuda_gelu_backward;
cluda_relu_forward_fn cluda_cuda_relu_forward;
cluda_relu_backward_fn cluda_cuda_relu_backward;
cluda_sigmoid_forward_fn cluda_cuda_sigmoid_forward;
cluda_sigmoid_backward_fn cluda_cuda_sigmoid_backward;
cluda_softmax_forward_fn cluda_cuda_softmax_forward;
cluda_softmax_backward_fn cluda_cuda_softmax_backward;
cluda_layernorm_forward_fn cluda_cuda_layernorm_forward;
cluda_layernorm_backward_fn cluda_cuda_layernorm_backward;
cluda_cross_entropy_forward_fn cluda_cuda_cross_entropy_forward;
cluda_cross_entropy_backward_fn cluda_cuda_cross_entropy_backward;
/* conv2d (cuda/ops/conv2d.cu): cuDNN for general convs (its workspace from ctx->scratch),
 * direct kernels for depthwise ones; db and the depthwise dw take partials from ctx->scratch.
 * batchnorm (cuda/ops/batchnorm.cu): per-channel partials from ctx->scratch; no SyncBatchNorm
 * (training with ctx->bn_sync of more than one rank fails with CLUDA_ERR_UNSUPPORTED).
 * resize (cuda/ops/resize.cu): no scratch. */
cluda_conv2d_forward_fn cluda_cuda_conv2d_forward;
cluda_conv2d_backward_fn cluda_cuda_conv2d_backward;
cluda_batchnorm_forward_fn cluda_cuda_batchnorm_forward;
cluda_batchnorm_backward_fn cluda_cuda_batchnorm_backward;
cluda_resize_bilinear_forward_fn cluda_cuda_resize_bilinear_forward;
cluda_resize_bilinear_backward_fn cluda_cuda_resize_bilinear_backward;
cluda_resize_nearest_forward_fn cluda_cuda_resize_nearest_forward;
cluda_resize_nearest_backward_fn cluda_cuda_resize_nearest_backward;
/* linear (cuda/ops/linear.cu) uses 32 MiB of ctx->scratch as cuBLASLt workspace when that much
 * is free (else none); its db and feature_distance take small partial buffers from it. */
cluda_linear_forward_fn cluda_cuda_linear_forward;
cluda_linear_backward_fn cluda_cuda_linear_backward;
cluda_axpy_fn cluda_cuda_axpy;
cluda_l2norm_forward_fn cluda_cuda_l2norm_forward;
cluda_l2norm_backward_fn cluda_cuda_l2norm_backward;
cluda_feature_distance_forward_fn cluda_cuda_feature_distance_forward;
cluda_feature_distance_backward_fn cluda_cuda_feature_distance_backward;
cluda_avgpool_forward_fn cluda_cuda_avgpool_forward;
cluda_avgpool_backward_fn cluda_cuda_avgpool_backward;
cluda_concat_forward_fn cluda_cuda_concat_forward;
cluda_concat_backward_fn cluda_cuda_concat_backward;
cluda_slice_forward_fn cluda_cuda_slice_forward;
cluda_slice_backward_fn cluda_cuda_slice_backward;
cluda_dropout_forward_fn cluda_cuda_dropout_forward;
cluda_dropout_backward_fn cluda_cuda_dropout_backward;

/* attention (cuda/ops/attention.cu): the backward takes dS blocks of N Nk floats from
 * ctx->scratch, as many (batch, head) pairs per batched GEMM as the free scratch holds and at
 * least one (cluda_attention_scratch_bytes). */
cluda_attention_forward_fn cluda_cuda_attention_forward;
cluda_attention_backward_fn cluda_cuda_attention_backward;
/* the contrastive loss (cuda/ops/contrastive.cu; include/cluda/contrastive.h): a subset of
 * cluda_contrastive_scratch_bytes from ctx->scratch; synchronises once per call to check the
 * labels. */
cluda_contrastive_forward_fn cluda_cuda_contrastive_forward;
cluda_contrastive_backward_fn cluda_cuda_contrastive_backward;

/* ---- AdamW + EMA teacher + gradient norm on device buffers (cuda/optim.cu) ----
 * params, grads, m, v and teacher are device copies of the flat buffers of one
 * cluda_param_table (table->total floats each; m and v start zeroed like cluda_adamw_init's).
 * Padding floats are never read or written. Results equal cluda_adamw_step, cluda_ema_update
 * and cluda_grad_norm (the same float operations in the same order; the norm's double sum in
 * another order). */
typedef struct cluda_cuda_optim cluda_cuda_optim; /* per-table metadata on the device */

/* Builds the metadata of `table` (spans of <= 4096 elements inside one entry, each with the
 * entry's group and no_decay flag; 16 bytes per span) and uploads it once. Waits for the
 * upload. */
cluda_status cluda_cuda_optim_create(cluda_ctx *ctx, const cluda_param_table *table,
                                     cluda_cuda_optim **out);
/* Frees the metadata (NULL is accepted). Call after the work using it has finished. */
void cluda_cuda_optim_destroy(cluda_cuda_optim *meta);
/* Fails (CLUDA_ERR_ARG) unless `table` is the one the metadata was built from. */
cluda_status cluda_cuda_optim_check_table(const cluda_cuda_optim *meta,
                                          const cluda_param_table *table);

/* *norm = the global L2 norm of grads over the table's entries: per-span double sums of
 * squares, then one block sums them in span order (deterministic). Waits for the stream. */
cluda_status cluda_cuda_grad_norm(cluda_ctx *ctx, const cluda_cuda_optim *meta, const float *grads,
                                  double *norm);

/* One fused pass: AdamW step t = `step` (opt->step + 1) with the scheduled group_lr, on the
 * gradients times grad_scale (1, or the clipping coefficient (float)(max_norm / (n + 1e-6))
 * when that is below 1, as cluda_grad_clip would multiply them; grads itself is not written),
 * then, when teacher is not NULL, the EMA update of iteration ema_t from the NEW parameters:
 * teacher = a teacher + (1 - a) params, a = cluda_ema_alpha(ema_t, ema_alpha) (ema_t = 0:
 * copy). The trainer's order is EMA(it) -> losses -> AdamW(it) -> EMA(it + 1) -> ..., so the
 * fused call of iteration it passes ema_t = it + 1; cuda/optim.cu explains when to pass
 * teacher = NULL and run cluda_cuda_ema_update instead (iteration 0, checkpoints, the last
 * iteration). grad_norm (may be NULL) receives the L2 norm of the unscaled gradients (what
 * the trainer logs), which makes the call wait for the stream. Fails on NULL or aliased
 * buffers, step < 1, an invalid config, a negative or non-finite lr, grad_scale outside
 * [0, 1], or (with a teacher) ema_t < 0 or ema_alpha outside [0, 1]. */
cluda_status cluda_cuda_adamw_ema_step(cluda_ctx *ctx, const cluda_cuda_optim *meta,
                                       const cluda_adamw_config *config,
                                       const double group_lr[CLUDA_OPTIM_GROUPS], int64_t step,
                                       float grad_scale, float *params, const float *grads,
                                       float *m, float *v, float *teacher, int64_t ema_t,
                                       double ema_alpha, double *grad_norm);

/* cluda_ema_update on device buffers (iteration t, copy at t = 0). Does not wait. */
cluda_status cluda_cuda_ema_update(cluda_ctx *ctx, const cluda_cuda_optim *meta, float *teacher,
                                   const float *student, int64_t t, double alpha);

#ifdef __cplusplus
}
#endif
#endif

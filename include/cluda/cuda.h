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
 * a cuBLAS and a cuBLASLt handle bound to it, and a device scratch arena of scratch_bytes
 * (ctx->scratch; may be 0). *out gets backend = cluda_backend_cuda(). Fails with
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

#ifdef __cplusplus
}
#endif
#endif

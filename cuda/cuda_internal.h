/* Private to the CUDA backend (the .c and .cu files under cuda/): the device state behind
 * ctx->device and the error macros. Valid C11 and CUDA C++. */
#ifndef CLUDA_CUDA_INTERNAL_H
#define CLUDA_CUDA_INTERNAL_H

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "cluda/arena.h"
#include "cluda/cuda.h"
#include "cluda/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What a CUDA context owns; ctx->device points to one. No globals: several contexts (one
 * per GPU, or per thread) can live in one process. */
typedef struct cluda_cuda_device {
  unsigned magic; /* CLUDA_CUDA_MAGIC while alive */
  int device;     /* CUDA device ordinal */
  int multiprocessors;
  cudaStream_t stream; /* every op of the context runs on it */
  cublasHandle_t cublas;
  cublasLtHandle_t cublaslt;
  /* bound to `stream` like the cuBLAS handles; conv2d (cuda/ops/conv2d.cu) */
  cudnnHandle_t cudnn;
  void *scratch_base; /* cudaMalloc'd; wrapped by `scratch` (ctx->scratch) */
  cluda_arena scratch;
  /* A small device buffer kernels use to report errors the host must see (the first bad
   * label of cross_entropy). Shared by the ops of the context: they run in stream order. */
  unsigned long long *report;
} cluda_cuda_device;

enum { CLUDA_CUDA_MAGIC = 0xC1DAC0DEu };

static inline cluda_cuda_device *cluda_cuda_dev(const cluda_ctx *ctx) {
  return (cluda_cuda_device *)ctx->device;
}

/* Returns CLUDA_ERR_DEVICE from the current function when a CUDA runtime call fails; the
 * message names the call and the CUDA error:
 *   "activation.cu:40: cudaMemsetAsync(...): cudaErrorInvalidValue: invalid argument" */
#define CLUDA_CUDA_TRY(call)                                                                       \
  do {                                                                                             \
    cudaError_t cluda_cuda_err_ = (call);                                                          \
    if (cluda_cuda_err_ != cudaSuccess)                                                            \
      return CLUDA_FAIL(CLUDA_ERR_DEVICE, "%s: %s: %s", #call, cudaGetErrorName(cluda_cuda_err_),  \
                        cudaGetErrorString(cluda_cuda_err_));                                      \
  } while (0)

/* The same for cuBLAS / cuBLASLt calls. */
#define CLUDA_CUBLAS_TRY(call)                                                                     \
  do {                                                                                             \
    cublasStatus_t cluda_cublas_st_ = (call);                                                      \
    if (cluda_cublas_st_ != CUBLAS_STATUS_SUCCESS)                                                 \
      return CLUDA_FAIL(CLUDA_ERR_DEVICE, "%s: %s: %s", #call,                                     \
                        cublasGetStatusName(cluda_cublas_st_),                                     \
                        cublasGetStatusString(cluda_cublas_st_));                                  \
  } while (0)

/* The same for cuDNN calls. */
#define CLUDA_CUDNN_TRY(call)                                                                      \
  do {                                                                                             \
    cudnnStatus_t cluda_cudnn_st_ = (call);                                                        \
    if (cluda_cudnn_st_ != CUDNN_STATUS_SUCCESS)                                                   \
      return CLUDA_FAIL(CLUDA_ERR_DEVICE, "%s: %s", #call, cudnnGetErrorString(cluda_cudnn_st_));  \
  } while (0)

/* After a kernel launch: reports a launch error (bad configuration, no kernel image for
 * this GPU, an earlier sticky error) naming the op and the kernel. */
#define CLUDA_CUDA_CHECK_LAUNCH(op, kernel)                                                        \
  do {                                                                                             \
    cudaError_t cluda_cuda_err_ = cudaGetLastError();                                              \
    if (cluda_cuda_err_ != cudaSuccess)                                                            \
      return CLUDA_FAIL(CLUDA_ERR_DEVICE, "%s: launching %s: %s: %s", (op), (kernel),              \
                        cudaGetErrorName(cluda_cuda_err_), cudaGetErrorString(cluda_cuda_err_));   \
  } while (0)

#ifdef __cplusplus
}
#endif
#endif

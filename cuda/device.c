/* Device discovery, CUDA contexts and device memory helpers. Plain C11 on the CUDA runtime
 * API: never the driver API, so binaries start on machines without libcuda.so.1. */
#include <cudnn.h>
#include <nccl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

/* ---- probe ---- */

static void copy_text(char *dst, size_t size, const char *src) {
  snprintf(dst, size, "%s", src ? src : "");
}

/* "13.0" from 13000 (runtime and driver encoding) */
static const char *cuda_version_text(int v, char *buf, size_t size) {
  if (v <= 0)
    snprintf(buf, size, "none");
  else
    snprintf(buf, size, "%d.%d", v / 1000, (v % 1000) / 10);
  return buf;
}

/* "9.19.0" from 91900 (cuBLAS, cuDNN 9 and NCCL >= 2.9 encoding) */
static const char *lib_version_text(int v, char *buf, size_t size) {
  if (v <= 0)
    snprintf(buf, size, "unknown");
  else
    snprintf(buf, size, "%d.%d.%d", v / 10000, (v % 10000) / 100, v % 100);
  return buf;
}

static void library_versions(char *buf, size_t size, const cluda_cuda_info *info) {
  char rt[16], drv[16], cublas[24], cudnn[24], nccl[24];
  snprintf(buf, size, "CUDA runtime %s, driver %s, cuBLAS %s, cuDNN %s, NCCL %s",
           cuda_version_text(info->runtime_version, rt, sizeof rt),
           cuda_version_text(info->driver_version, drv, sizeof drv),
           lib_version_text(info->cublas_version, cublas, sizeof cublas),
           lib_version_text(info->cudnn_version, cudnn, sizeof cudnn),
           lib_version_text(info->nccl_version, nccl, sizeof nccl));
}

cluda_status cluda_cuda_probe(int device, cluda_cuda_info *info) {
  CLUDA_REQUIRE(info != NULL, CLUDA_ERR_ARG, "cuda_probe: info is NULL");
  memset(info, 0, sizeof *info);
  info->device = device;

  /* None of these needs a driver. */
  int v = 0;
  if (cudaRuntimeGetVersion(&v) == cudaSuccess) info->runtime_version = v;
  v = 0;
  if (cudaDriverGetVersion(&v) == cudaSuccess) info->driver_version = v;
  int major = 0, minor = 0, patch = 0;
  if (cublasGetProperty(MAJOR_VERSION, &major) == CUBLAS_STATUS_SUCCESS &&
      cublasGetProperty(MINOR_VERSION, &minor) == CUBLAS_STATUS_SUCCESS &&
      cublasGetProperty(PATCH_LEVEL, &patch) == CUBLAS_STATUS_SUCCESS)
    info->cublas_version = major * 10000 + minor * 100 + patch;
  info->cudnn_version = (int)cudnnGetVersion();
  v = 0;
  if (ncclGetVersion(&v) == ncclSuccess) info->nccl_version = v;
  char versions[200];
  library_versions(versions, sizeof versions, info);

  /* The count is left untouched on error: start from 0 and trust only cudaSuccess. Any
   * error (35 no driver, 34 stub driver, 100 no device, ...) or a count of 0 is "no GPU". */
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count <= 0) {
    (void)cudaGetLastError();
    info->device_count = 0;
    info->error = (int)err;
    if (err != cudaSuccess) {
      copy_text(info->error_name, sizeof info->error_name, cudaGetErrorName(err));
      copy_text(info->error_text, sizeof info->error_text, cudaGetErrorString(err));
    } else {
      copy_text(info->error_name, sizeof info->error_name, "cudaSuccess");
      copy_text(info->error_text, sizeof info->error_text, "cudaGetDeviceCount found 0 devices");
    }
    snprintf(info->line, sizeof info->line, "cluda: no GPU (%s: %s); using the CPU backend [%s]",
             info->error_name, info->error_text, versions);
    return cluda_ok();
  }
  info->device_count = count;
  if (device < 0 || device >= count) {
    snprintf(info->line, sizeof info->line, "cluda: %d GPU(s), no device %d [%s]", count, device,
             versions);
    return CLUDA_FAIL(CLUDA_ERR_ARG, "cuda_probe: device %d does not exist (%d GPU(s))", device,
                      count);
  }

  struct cudaDeviceProp prop;
  err = cudaGetDeviceProperties(&prop, device);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    info->error = (int)err;
    copy_text(info->error_name, sizeof info->error_name, cudaGetErrorName(err));
    copy_text(info->error_text, sizeof info->error_text, cudaGetErrorString(err));
    snprintf(info->line, sizeof info->line, "cluda: GPU %d of %d cannot be queried (%s: %s) [%s]",
             device, count, info->error_name, info->error_text, versions);
    return CLUDA_FAIL(CLUDA_ERR_DEVICE, "cuda_probe: cudaGetDeviceProperties(%d): %s: %s", device,
                      info->error_name, info->error_text);
  }
  copy_text(info->name, sizeof info->name, prop.name);
  info->cc_major = prop.major;
  info->cc_minor = prop.minor;
  info->multiprocessors = prop.multiProcessorCount;
  info->total_memory = prop.totalGlobalMem;

  /* Free memory needs the device's context: make it current, then restore the caller's. */
  int previous = -1;
  if (cudaGetDevice(&previous) == cudaSuccess && cudaSetDevice(device) == cudaSuccess) {
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) info->free_memory = free_bytes;
    if (previous >= 0) (void)cudaSetDevice(previous);
  }
  (void)cudaGetLastError();

  const double gib = 1024.0 * 1024.0 * 1024.0;
  snprintf(info->line, sizeof info->line,
           "cluda: GPU %d of %d: %s, sm_%d%d, %d SMs, %.1f GiB (%.1f GiB free) [%s]", device, count,
           info->name, info->cc_major, info->cc_minor, info->multiprocessors,
           (double)info->total_memory / gib, (double)info->free_memory / gib, versions);
  return cluda_ok();
}

/* ---- contexts ---- */

static void device_free(cluda_cuda_device *d) {
  if (!d) return;
  if (d->stream) (void)cudaStreamSynchronize(d->stream);
  if (d->report) (void)cudaFree(d->report);
  if (d->scratch_base) (void)cudaFree(d->scratch_base);
  if (d->cudnn) (void)cudnnDestroy(d->cudnn);
  if (d->cublaslt) (void)cublasLtDestroy(d->cublaslt);
  if (d->cublas) (void)cublasDestroy(d->cublas);
  if (d->stream) (void)cudaStreamDestroy(d->stream);
  (void)cudaGetLastError();
  d->magic = 0;
  free(d);
}

static cluda_status device_init(cluda_cuda_device *d, int device, size_t scratch_bytes) {
  d->device = device;
  CLUDA_CUDA_TRY(cudaSetDevice(device));
  CLUDA_CUDA_TRY(
      cudaDeviceGetAttribute(&d->multiprocessors, cudaDevAttrMultiProcessorCount, device));
  CLUDA_CUDA_TRY(cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking));
  CLUDA_CUBLAS_TRY(cublasCreate(&d->cublas));
  CLUDA_CUBLAS_TRY(cublasSetStream(d->cublas, d->stream));
  CLUDA_CUBLAS_TRY(cublasLtCreate(&d->cublaslt));
  CLUDA_CUDNN_TRY(cudnnCreate(&d->cudnn));
  CLUDA_CUDNN_TRY(cudnnSetStream(d->cudnn, d->stream));
  scratch_bytes = cluda_arena_align(scratch_bytes);
  if (scratch_bytes > 0) CLUDA_CUDA_TRY(cudaMalloc(&d->scratch_base, scratch_bytes));
  cluda_arena_wrap(&d->scratch, d->scratch_base, scratch_bytes);
  CLUDA_CUDA_TRY(cudaMalloc((void **)&d->report, 64));
  CLUDA_CUDA_TRY(cudaMemsetAsync(d->report, 0, 64, d->stream));
  CLUDA_CUDA_TRY(cudaStreamSynchronize(d->stream));
  d->magic = CLUDA_CUDA_MAGIC;
  return cluda_ok();
}

cluda_status cluda_cuda_context_create(int device, size_t scratch_bytes, cluda_ctx *out) {
  CLUDA_REQUIRE(out != NULL, CLUDA_ERR_ARG, "cuda_context_create: out is NULL");
  memset(out, 0, sizeof *out);
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    return CLUDA_FAIL(CLUDA_ERR_DEVICE, "cuda_context_create: no GPU: cudaGetDeviceCount: %s: %s",
                      cudaGetErrorName(err), cudaGetErrorString(err));
  }
  CLUDA_REQUIRE(count > 0, CLUDA_ERR_DEVICE, "cuda_context_create: no GPU (0 devices)");
  CLUDA_REQUIRE(device >= 0 && device < count, CLUDA_ERR_ARG,
                "cuda_context_create: device %d does not exist (%d GPU(s))", device, count);
  cluda_cuda_device *d = calloc(1, sizeof *d);
  CLUDA_REQUIRE(d != NULL, CLUDA_ERR_ALLOC, "cuda_context_create: out of host memory");
  cluda_status s = device_init(d, device, scratch_bytes);
  if (s.code != CLUDA_OK) {
    device_free(d);
    return s;
  }
  out->backend = cluda_backend_cuda();
  out->scratch = &d->scratch;
  out->device = d;
  return cluda_ok();
}

int cluda_cuda_context_is_cuda(const cluda_ctx *ctx) {
  return ctx && ctx->device && cluda_cuda_dev(ctx)->magic == CLUDA_CUDA_MAGIC;
}

void cluda_cuda_context_destroy(cluda_ctx *ctx) {
  if (!ctx) return;
  if (cluda_cuda_context_is_cuda(ctx)) device_free(cluda_cuda_dev(ctx));
  memset(ctx, 0, sizeof *ctx);
}

#define REQUIRE_CUDA_CTX(op, ctx)                                                                  \
  CLUDA_REQUIRE(cluda_cuda_context_is_cuda(ctx), CLUDA_ERR_ARG, "%s: not a CUDA context", (op))

cluda_status cluda_cuda_synchronize(cluda_ctx *ctx) {
  REQUIRE_CUDA_CTX("cuda_synchronize", ctx);
  CLUDA_CUDA_TRY(cudaStreamSynchronize(cluda_cuda_dev(ctx)->stream));
  CLUDA_CUDA_TRY(cudaGetLastError());
  return cluda_ok();
}

void *cluda_cuda_stream(const cluda_ctx *ctx) {
  return cluda_cuda_context_is_cuda(ctx) ? (void *)cluda_cuda_dev(ctx)->stream : NULL;
}

void *cluda_cuda_cublas(const cluda_ctx *ctx) {
  return cluda_cuda_context_is_cuda(ctx) ? (void *)cluda_cuda_dev(ctx)->cublas : NULL;
}

void *cluda_cuda_cublaslt(const cluda_ctx *ctx) {
  return cluda_cuda_context_is_cuda(ctx) ? (void *)cluda_cuda_dev(ctx)->cublaslt : NULL;
}

/* ---- device memory ---- */

cluda_status cluda_cuda_malloc(size_t bytes, void **out) {
  CLUDA_REQUIRE(out != NULL, CLUDA_ERR_ARG, "cuda_malloc: out is NULL");
  *out = NULL;
  if (bytes == 0) return cluda_ok();
  cudaError_t err = cudaMalloc(out, bytes);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    *out = NULL;
    return CLUDA_FAIL(err == cudaErrorMemoryAllocation ? CLUDA_ERR_ALLOC : CLUDA_ERR_DEVICE,
                      "cuda_malloc: cudaMalloc(%zu bytes): %s: %s", bytes, cudaGetErrorName(err),
                      cudaGetErrorString(err));
  }
  return cluda_ok();
}

void cluda_cuda_free(void *device_ptr) {
  if (device_ptr) (void)cudaFree(device_ptr);
}

cluda_status cluda_cuda_upload(cluda_ctx *ctx, void *device_dst, const void *host_src,
                               size_t bytes) {
  REQUIRE_CUDA_CTX("cuda_upload", ctx);
  if (bytes == 0) return cluda_ok();
  cudaStream_t stream = cluda_cuda_dev(ctx)->stream;
  CLUDA_CUDA_TRY(cudaMemcpyAsync(device_dst, host_src, bytes, cudaMemcpyHostToDevice, stream));
  CLUDA_CUDA_TRY(cudaStreamSynchronize(stream));
  return cluda_ok();
}

cluda_status cluda_cuda_download(cluda_ctx *ctx, void *host_dst, const void *device_src,
                                 size_t bytes) {
  REQUIRE_CUDA_CTX("cuda_download", ctx);
  if (bytes == 0) return cluda_ok();
  cudaStream_t stream = cluda_cuda_dev(ctx)->stream;
  CLUDA_CUDA_TRY(cudaMemcpyAsync(host_dst, device_src, bytes, cudaMemcpyDeviceToHost, stream));
  CLUDA_CUDA_TRY(cudaStreamSynchronize(stream));
  return cluda_ok();
}

cluda_status cluda_cuda_memset(cluda_ctx *ctx, void *device_dst, int value, size_t bytes) {
  REQUIRE_CUDA_CTX("cuda_memset", ctx);
  if (bytes == 0) return cluda_ok();
  CLUDA_CUDA_TRY(cudaMemsetAsync(device_dst, value, bytes, cluda_cuda_dev(ctx)->stream));
  return cluda_ok();
}

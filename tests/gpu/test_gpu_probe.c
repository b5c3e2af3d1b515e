/* Device discovery and the CUDA backend table. Unlike the other GPU tests this one runs
 * (and must pass) on machines without a GPU: there it checks that the probe reports "no
 * GPU" cleanly and that nothing crashes; on a GPU machine it checks the reported device and
 * a context's life cycle. The table and the validate-before-dispatch checks need no GPU. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_testing.h"

/* A CUDA-backend context without device state: any op that got past validation would
 * crash or fail on it, so the checks below prove the public entry points stop first. */
static cluda_ctx fake_cuda_ctx(void) {
  cluda_ctx ctx = {.backend = cluda_backend_cuda(), .scratch = NULL, .device = NULL};
  return ctx;
}

static void check_table(void) {
  const cluda_backend *b = cluda_backend_cuda();
  TEST_CHECK(b != NULL && strcmp(b->name, "cuda") == 0, "cuda backend table is named \"cuda\"");
  TEST_CHECK(b->gelu_forward == cluda_cuda_gelu_forward && b->gelu_backward != NULL &&
                 b->relu_forward != NULL && b->relu_backward != NULL &&
                 b->sigmoid_forward != NULL && b->sigmoid_backward != NULL,
             "activations are in the cuda table");
  TEST_CHECK(b->softmax_forward != NULL && b->softmax_backward != NULL &&
                 b->layernorm_forward != NULL && b->layernorm_backward != NULL &&
                 b->cross_entropy_forward != NULL && b->cross_entropy_backward != NULL,
             "softmax, layernorm and cross_entropy are in the cuda table");
  TEST_CHECK(b->linear_forward != NULL && b->linear_backward != NULL && b->axpy != NULL &&
                 b->l2norm_forward != NULL && b->feature_distance_forward != NULL &&
                 b->avgpool_forward != NULL && b->concat_forward != NULL &&
                 b->slice_backward != NULL && b->dropout_forward != NULL,
             "linear, axpy, l2norm, feature_distance, avgpool, concat/slice, dropout are in the "
             "cuda table");
  /* Every op of the table has a CUDA version: the table is a struct of function pointers
   * after the name, so walk it as such. */
  const size_t slots = (sizeof *b - offsetof(cluda_backend, gelu_forward)) / sizeof(void (*)(void));
  const char *first = (const char *)&b->gelu_forward;
  int missing = 0;
  for (size_t i = 0; i < slots; i++) {
    void (*fn)(void);
    memcpy(&fn, first + i * sizeof fn, sizeof fn);
    missing += fn == NULL;
  }
  TEST_CHECK(missing == 0, "every op of the backend table has a CUDA version (%d missing of %zu)",
             missing, slots);
  TEST_CHECK(cluda_backend_cpu() != b, "cpu and cuda tables differ");
}

static void check_validation_before_dispatch(void) {
  cluda_ctx ctx = fake_cuda_ctx();
  void *bogus = (void *)(uintptr_t)0x10; /* never dereferenced if validation comes first */
  cluda_tensor x = cluda_tensor_4d(CLUDA_F32, bogus, 2, 3, 4, 5);
  cluda_tensor y_bad = cluda_tensor_4d(CLUDA_F32, bogus, 2, 3, 4, 6);
  TEST_FAILS(cluda_gelu_forward(&ctx, &x, &y_bad), CLUDA_ERR_SHAPE, "gelu_forward");
  TEST_FAILS(cluda_relu_backward(&ctx, &x, &x, &y_bad), CLUDA_ERR_SHAPE, "relu_backward");
  cluda_tensor labels_u8 = cluda_tensor_4d(CLUDA_U8, bogus, 2, 3, 4, 5);
  TEST_FAILS(cluda_sigmoid_forward(&ctx, &labels_u8, &x), CLUDA_ERR_DTYPE, "x");
  TEST_FAILS(cluda_softmax_forward(&ctx, &x, &y_bad), CLUDA_ERR_SHAPE, "softmax_forward");
  TEST_FAILS(cluda_gelu_forward(&ctx, &x, NULL), CLUDA_ERR_ARG, "y is NULL");
  /* cross_entropy: labels must be [N,H,W] of the logits */
  cluda_tensor labels = cluda_tensor_3d(CLUDA_U8, bogus, 2, 3, 5);
  cluda_tensor loss = cluda_tensor_1d(CLUDA_F32, bogus, 1);
  TEST_FAILS(cluda_cross_entropy_forward(&ctx, &x, &labels, NULL, 255, &loss), CLUDA_ERR_SHAPE,
             "labels");
  /* layernorm: gamma must have C elements */
  cluda_tensor gamma_bad = cluda_tensor_1d(CLUDA_F32, bogus, 4);
  cluda_tensor beta = cluda_tensor_1d(CLUDA_F32, bogus, 5);
  cluda_tensor stats = cluda_tensor_1d(CLUDA_F32, bogus, 24);
  cluda_tensor y = cluda_tensor_4d(CLUDA_F32, bogus, 2, 3, 4, 5);
  cluda_status s = cluda_layernorm_forward(&ctx, &x, &gamma_bad, &beta, 1e-6f, &y, &stats, &stats);
  TEST_CHECK(s.code == CLUDA_ERR_SHAPE, "layernorm_forward rejects gamma [4] for C = 5: %s %s",
             cluda_code_name(s.code), s.message);
  /* linear: w must be [out, in] with x's in */
  cluda_tensor lx = cluda_tensor_2d(CLUDA_F32, bogus, 2, 3);
  cluda_tensor lw = cluda_tensor_2d(CLUDA_F32, bogus, 4, 5);
  cluda_tensor ly = cluda_tensor_2d(CLUDA_F32, bogus, 2, 4);
  TEST_FAILS(cluda_linear_forward(&ctx, &lx, &lw, NULL, &ly), CLUDA_ERR_SHAPE, "w");
  /* an op a backend lacks: valid arguments, then CLUDA_ERR_UNSUPPORTED naming the backend
   * (a copy of the CUDA table with one entry removed, since the real one is complete) */
  cluda_backend partial = *cluda_backend_cuda();
  partial.resize_nearest_forward = NULL;
  cluda_ctx partial_ctx = {.backend = &partial, .scratch = NULL, .device = NULL};
  cluda_tensor rx = cluda_tensor_4d(CLUDA_F32, bogus, 1, 2, 2, 3);
  cluda_tensor ry = cluda_tensor_4d(CLUDA_F32, bogus, 1, 4, 4, 3);
  TEST_FAILS(cluda_resize_nearest_forward(&partial_ctx, &rx, &ry), CLUDA_ERR_UNSUPPORTED, "cuda");
}

static void check_no_gpu(const cluda_cuda_info *info) {
  TEST_CHECK(strstr(info->line, "no GPU") != NULL && strstr(info->line, "CPU backend") != NULL,
             "the no-GPU line says so: %s", info->line);
  TEST_CHECK(info->error != 0 || strstr(info->error_text, "0 devices") != NULL,
             "an error code (35 no driver, 34 stub, 100 no device) or a count of 0: %d %s",
             info->error, info->error_name);
  if (info->error == 35)
    TEST_CHECK(info->driver_version == 0, "no driver: cudaDriverGetVersion reports 0");
  /* asking again gives the same answer (error 35 repeats) */
  cluda_cuda_info again;
  TEST_OK(cluda_cuda_probe(0, &again));
  TEST_CHECK(again.device_count == 0 && again.error == info->error, "a second probe agrees");
  /* creating a context fails cleanly */
  cluda_ctx ctx;
  TEST_FAILS(cluda_cuda_context_create(0, 1 << 20, &ctx), CLUDA_ERR_DEVICE, "no GPU");
  TEST_CHECK(ctx.backend == NULL && ctx.device == NULL, "a failed create leaves a zeroed ctx");
  cluda_cuda_context_destroy(&ctx); /* harmless */
  TEST_CHECK(!cluda_cuda_context_is_cuda(&ctx), "a zeroed ctx is not a CUDA context");
  TEST_FAILS(cluda_cuda_synchronize(&ctx), CLUDA_ERR_ARG, "not a CUDA context");
  void *p = (void *)1;
  cluda_status s = cluda_cuda_malloc(256, &p);
  TEST_CHECK(s.code != CLUDA_OK && p == NULL, "cudaMalloc without a GPU fails cleanly: %s",
             s.message);
}

static void check_gpu(const cluda_cuda_info *info) {
  TEST_CHECK(info->name[0] != '\0', "device name: %s", info->name);
  TEST_CHECK(info->cc_major * 10 + info->cc_minor >= 75, "compute capability %d.%d >= 7.5",
             info->cc_major, info->cc_minor);
  TEST_CHECK(info->multiprocessors > 0 && info->total_memory > 0 && info->free_memory > 0 &&
                 info->free_memory <= info->total_memory,
             "SMs %d, memory %zu total %zu free", info->multiprocessors, info->total_memory,
             info->free_memory);
  TEST_CHECK(info->driver_version >= info->runtime_version || info->driver_version > 0,
             "driver %d, runtime %d", info->driver_version, info->runtime_version);
  TEST_CHECK(strstr(info->line, info->name) != NULL, "the line names the device");
  cluda_cuda_info bad;
  TEST_FAILS(cluda_cuda_probe(info->device_count, &bad), CLUDA_ERR_ARG, "does not exist");

  cluda_ctx ctx;
  if (!TEST_OK(cluda_cuda_context_create(0, 1 << 20, &ctx))) return;
  TEST_CHECK(cluda_cuda_context_is_cuda(&ctx) && ctx.backend == cluda_backend_cuda(),
             "context uses the cuda table");
  TEST_CHECK(cluda_cuda_stream(&ctx) != NULL && cluda_cuda_cublas(&ctx) != NULL &&
                 cluda_cuda_cublaslt(&ctx) != NULL,
             "stream and cuBLAS handles");
  TEST_CHECK(ctx.scratch != NULL && ctx.scratch->capacity >= (1 << 20) && ctx.scratch->used == 0,
             "device scratch arena");
  /* a round trip through device memory */
  enum { N = 1000 };
  float host[N], back[N];
  for (int i = 0; i < N; i++)
    host[i] = (float)i * 0.5f - 7.0f;
  void *dev = NULL;
  if (TEST_OK(cluda_cuda_malloc(sizeof host, &dev))) {
    TEST_OK(cluda_cuda_upload(&ctx, dev, host, sizeof host));
    memset(back, 0, sizeof back);
    TEST_OK(cluda_cuda_download(&ctx, back, dev, sizeof back));
    TEST_CHECK(memcmp(host, back, sizeof host) == 0, "upload/download round trip");
    cluda_cuda_free(dev);
  }
  void *huge = NULL;
  TEST_FAILS(cluda_cuda_malloc((size_t)1 << 50, &huge), CLUDA_ERR_ALLOC, "cudaMalloc");
  TEST_OK(cluda_cuda_synchronize(&ctx));
  cluda_cuda_context_destroy(&ctx);
  TEST_CHECK(ctx.device == NULL && ctx.backend == NULL, "destroy zeroes the ctx");
}

int main(int argc, char **argv) {
  (void)argc;
  TEST_FAILS(cluda_cuda_probe(0, NULL), CLUDA_ERR_ARG, "info");
  cluda_cuda_info info;
  cluda_status s = cluda_cuda_probe(0, &info);
  printf("%s\n", info.line);
  TEST_OK(s);
  /* library versions need no driver */
  TEST_CHECK(info.runtime_version >= 12000, "CUDA runtime version %d", info.runtime_version);
  TEST_CHECK(info.cublas_version > 0, "cuBLAS version %d", info.cublas_version);
  TEST_CHECK(info.cudnn_version >= 90000, "cuDNN version %d", info.cudnn_version);
  TEST_CHECK(info.nccl_version > 0, "NCCL version %d", info.nccl_version);
  if (info.device_count == 0)
    check_no_gpu(&info);
  else
    check_gpu(&info);
  check_table();
  check_validation_before_dispatch();
  return test_finish(argv[0]);
}

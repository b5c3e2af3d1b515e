/* Helpers for the GPU tests (tests/gpu/test_*.c): probe-or-skip, device copies of host
 * tensors, output poisoning and CUDA-vs-CPU comparisons. Header-only (static inline) because
 * the CMake loop builds each test_*.c on its own.
 *
 * Method: every CUDA op runs on the same random inputs as its CPU twin (the reference);
 * outputs are poisoned (all bytes 0xFF, a NaN) before each GPU run, so an element the GPU
 * does not write fails the comparison; parameter gradients start from the same random
 * values on both sides, so accumulation (+=) is checked too.
 *
 * Tolerances (|gpu - cpu| <= atol + rtol |cpu|, elementwise), chosen from the arithmetic:
 *  - activations: rtol 1e-5, atol 1e-6: erff/expf differ by a few ulp between the CUDA and
 *    glibc maths libraries;
 *  - softmax: rtol 1e-5, atol 1e-7 forward; rtol 1e-4, atol 1e-6 backward (a dot product
 *    over the row in another order, then a difference);
 *  - layernorm: y, dx rtol 1e-4, atol 1e-5 (mean and variance summed in another order;
 *    dx has cancellation); mean rtol 1e-5, rstd rtol 1e-4 (atol 1e-6); dgamma, dbeta (sums
 *    over every row in another order) rtol 1e-4, atol 1e-5 (1 + sqrt(rows));
 *  - cross_entropy: loss rtol 1e-5, atol 1e-7 (both accumulate in double); dlogits rtol
 *    1e-4, atol 1e-6 / (N H W) (the gradient's scale is dloss / (N H W)).
 * Reductions the GPU must do deterministically (layernorm dgamma/dbeta, the CE loss) are
 * also run twice and compared bit for bit. */
#ifndef CLUDA_GPU_TESTING_H
#define CLUDA_GPU_TESTING_H

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/cuda.h"
#include "testing.h"

enum { GPU_TEST_SKIP = 77 };

static inline const char *gpu_test_basename(const char *path) {
  const char *base = strrchr(path, '/');
  return base ? base + 1 : path;
}

/* Prints the probe line. Without a GPU prints SKIP and exits 77 (ctest SKIP_RETURN_CODE);
 * otherwise creates a CUDA context on GPU 0 with `scratch` bytes of device scratch. */
static inline void gpu_test_init(const char *program, size_t scratch, cluda_ctx *ctx) {
  cluda_cuda_info info;
  cluda_status s = cluda_cuda_probe(0, &info);
  printf("%s\n", info.line);
  if (s.code != CLUDA_OK) {
    printf("%s: probe failed: %s\n", gpu_test_basename(program), s.message);
    exit(1);
  }
  if (info.device_count == 0) {
    printf("%s: SKIP (no GPU)\n", gpu_test_basename(program));
    fflush(stdout);
    exit(GPU_TEST_SKIP);
  }
  s = cluda_cuda_context_create(0, scratch, ctx);
  if (s.code != CLUDA_OK) {
    printf("%s: cannot create a CUDA context: %s\n", gpu_test_basename(program), s.message);
    exit(1);
  }
}

/* Destroys the context and prints the summary; returns the exit code. */
static inline int gpu_test_finish(const char *program, cluda_ctx *ctx) {
  TEST_OK(cluda_cuda_synchronize(ctx));
  cluda_cuda_context_destroy(ctx);
  return test_finish(program);
}

/* A device tensor with the shape and dtype of `host` (uninitialised). Aborts on failure. */
static inline cluda_tensor gpu_tensor_like(const cluda_tensor *host) {
  cluda_tensor t = *host;
  t.data = NULL;
  cluda_status s = cluda_cuda_malloc(cluda_tensor_bytes(host), &t.data);
  if (s.code != CLUDA_OK) {
    fprintf(stderr, "gpu_tensor_like: %s\n", s.message);
    abort();
  }
  return t;
}

static inline void gpu_tensor_free(cluda_tensor *t) {
  cluda_cuda_free(t->data);
  t->data = NULL;
}

/* Frees the device tensors listed, up to a NULL: gpu_tensors_free(&gx, &gy, NULL). */
#if defined(__GNUC__)
__attribute__((sentinel))
#endif
static inline void
gpu_tensors_free(cluda_tensor *first, ...) {
  va_list ap;
  va_start(ap, first);
  for (cluda_tensor *t = first; t; t = va_arg(ap, cluda_tensor *))
    gpu_tensor_free(t);
  va_end(ap);
}

/* host -> device / device -> host for tensors of the same size */
static inline int gpu_upload(cluda_ctx *ctx, cluda_tensor *dev, const cluda_tensor *host) {
  return TEST_OK(cluda_cuda_upload(ctx, dev->data, host->data, cluda_tensor_bytes(host)));
}
static inline int gpu_download(cluda_ctx *ctx, cluda_tensor *host, const cluda_tensor *dev) {
  return TEST_OK(cluda_cuda_download(ctx, host->data, dev->data, cluda_tensor_bytes(dev)));
}
/* A device copy of a host tensor. */
static inline cluda_tensor gpu_copy_of(cluda_ctx *ctx, const cluda_tensor *host) {
  cluda_tensor t = gpu_tensor_like(host);
  gpu_upload(ctx, &t, host);
  return t;
}
/* Fills a device tensor with 0xFF bytes: NaN for f32, so unwritten elements fail. */
static inline void gpu_poison(cluda_ctx *ctx, cluda_tensor *dev) {
  TEST_OK(cluda_cuda_memset(ctx, dev->data, 0xFF, cluda_tensor_bytes(dev)));
}

/* Downloads a device f32 tensor into `scratch` (numel floats) and compares it with the
 * CPU result; also prints the relative L2 error ||gpu - cpu|| / ||cpu|| for the log. */
static inline int gpu_compare(cluda_ctx *ctx, const char *what, const cluda_tensor *dev,
                              const float *want, float *scratch, double rtol, double atol) {
  int64_t n = cluda_tensor_numel(dev);
  if (!TEST_OK(cluda_cuda_download(ctx, scratch, dev->data, (size_t)n * sizeof(float)))) return 0;
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; i++) {
    double e = (double)scratch[i] - (double)want[i];
    num += e * e;
    den += (double)want[i] * want[i];
  }
  printf("  %-48s rel-L2 %.3g\n", what, den > 0 ? sqrt(num / den) : sqrt(num));
  return test_compare_f32(what, scratch, want, n, rtol, atol);
}

/* Checks that two host buffers are bitwise identical (determinism of GPU reductions). */
static inline int gpu_check_bitwise(const char *what, const void *a, const void *b, size_t bytes) {
  return TEST_CHECK(memcmp(a, b, bytes) == 0, "%s: two runs differ bitwise", what);
}

/* Fills labels with values in [0, classes) and about `ignore_permille`/1000 ignore_index. */
static inline void gpu_fill_labels(uint8_t *labels, int64_t n, int classes, int ignore_index,
                                   int ignore_permille, uint64_t seed) {
  float *u = test_alloc_f32(n);
  test_fill_uniform(u, n, 0.0f, 1.0f, seed, 7);
  for (int64_t i = 0; i < n; i++) {
    int c = (int)(u[i] * 1000.0f);
    if (c < ignore_permille)
      labels[i] = (uint8_t)ignore_index;
    else
      labels[i] = (uint8_t)((int64_t)(u[i] * 1e6f + (float)i) % classes);
  }
  free(u);
}

#endif

#include "cluda/tensor.h"

#include <stdio.h>

static cluda_tensor make(cluda_dtype dtype, void *data, int ndim, int d0, int d1, int d2, int d3) {
  cluda_tensor t;
  t.dtype = dtype;
  t.ndim = ndim;
  t.shape[0] = d0;
  t.shape[1] = d1;
  t.shape[2] = d2;
  t.shape[3] = d3;
  t.data = data;
  return t;
}

cluda_tensor cluda_tensor_1d(cluda_dtype dtype, void *data, int d0) {
  return make(dtype, data, 1, d0, 1, 1, 1);
}
cluda_tensor cluda_tensor_2d(cluda_dtype dtype, void *data, int d0, int d1) {
  return make(dtype, data, 2, d0, d1, 1, 1);
}
cluda_tensor cluda_tensor_3d(cluda_dtype dtype, void *data, int d0, int d1, int d2) {
  return make(dtype, data, 3, d0, d1, d2, 1);
}
cluda_tensor cluda_tensor_4d(cluda_dtype dtype, void *data, int n, int h, int w, int c) {
  return make(dtype, data, 4, n, h, w, c);
}

int64_t cluda_tensor_numel(const cluda_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++)
    n *= t->shape[i];
  return n;
}

size_t cluda_dtype_size(cluda_dtype dtype) {
  switch (dtype) {
  case CLUDA_F32: return 4;
  case CLUDA_BF16: return 2;
  case CLUDA_U8: return 1;
  }
  return 0;
}

size_t cluda_tensor_bytes(const cluda_tensor *t) {
  return (size_t)cluda_tensor_numel(t) * cluda_dtype_size(t->dtype);
}

int64_t cluda_tensor_rows(const cluda_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i + 1 < t->ndim; i++)
    n *= t->shape[i];
  return n;
}

int cluda_tensor_cols(const cluda_tensor *t) { return t->ndim > 0 ? t->shape[t->ndim - 1] : 1; }

int cluda_tensor_same_shape(const cluda_tensor *a, const cluda_tensor *b) {
  if (a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return 0;
  return 1;
}

static const char *dtype_name(cluda_dtype dtype) {
  switch (dtype) {
  case CLUDA_F32: return "f32";
  case CLUDA_BF16: return "bf16";
  case CLUDA_U8: return "u8";
  }
  return "?";
}

const char *cluda_tensor_describe(const cluda_tensor *t, char *buf, size_t size) {
  if (!t) {
    snprintf(buf, size, "(null)");
    return buf;
  }
  size_t n = (size_t)snprintf(buf, size, "[");
  for (int i = 0; i < t->ndim && n < size; i++)
    n += (size_t)snprintf(buf + n, size - n, i ? ",%d" : "%d", t->shape[i]);
  if (n < size) snprintf(buf + n, size - n, "] %s", dtype_name(t->dtype));
  return buf;
}

cluda_status cluda_check_tensor(const char *op, const char *arg, const cluda_tensor *t,
                                cluda_dtype dtype, int ndim) {
  char d[64];
  CLUDA_REQUIRE(t != NULL, CLUDA_ERR_ARG, "%s: %s is NULL", op, arg);
  CLUDA_REQUIRE(t->data != NULL || cluda_tensor_numel(t) == 0, CLUDA_ERR_ARG,
                "%s: %s %s has no data", op, arg, cluda_tensor_describe(t, d, sizeof d));
  CLUDA_REQUIRE(t->dtype == dtype, CLUDA_ERR_DTYPE, "%s: %s %s must be %s", op, arg,
                cluda_tensor_describe(t, d, sizeof d), dtype_name(dtype));
  CLUDA_REQUIRE(ndim < 0 || t->ndim == ndim, CLUDA_ERR_SHAPE, "%s: %s %s must have %d dimensions",
                op, arg, cluda_tensor_describe(t, d, sizeof d), ndim);
  CLUDA_REQUIRE(t->ndim >= 1 && t->ndim <= CLUDA_MAX_DIMS, CLUDA_ERR_SHAPE,
                "%s: %s has %d dimensions (1..4 allowed)", op, arg, t->ndim);
  for (int i = 0; i < t->ndim; i++)
    CLUDA_REQUIRE(t->shape[i] >= 0, CLUDA_ERR_SHAPE, "%s: %s %s has a negative dimension", op, arg,
                  cluda_tensor_describe(t, d, sizeof d));
  return cluda_ok();
}

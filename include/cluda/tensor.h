/* A tensor is a non-owning view: dtype, up to four dimensions and a data pointer.
 * Four-dimensional activations are NHWC; matrices are [rows, cols]; token sequences
 * [B, N, C]. Memory comes from the caller (a planned arena, a parameter buffer, malloc). */
#ifndef CLUDA_TENSOR_H
#define CLUDA_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "cluda/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cluda_dtype {
  CLUDA_F32 = 0,
  CLUDA_BF16 = 1, /* reserved for the GPU mixed-precision path */
  CLUDA_U8 = 2    /* labels and masks */
} cluda_dtype;

enum { CLUDA_MAX_DIMS = 4 };

typedef struct cluda_tensor {
  cluda_dtype dtype;
  int ndim;
  int shape[CLUDA_MAX_DIMS]; /* shape[ndim..] are 1 */
  void *data;
} cluda_tensor;

cluda_tensor cluda_tensor_1d(cluda_dtype dtype, void *data, int d0);
cluda_tensor cluda_tensor_2d(cluda_dtype dtype, void *data, int d0, int d1);
cluda_tensor cluda_tensor_3d(cluda_dtype dtype, void *data, int d0, int d1, int d2);
/* NHWC activation */
cluda_tensor cluda_tensor_4d(cluda_dtype dtype, void *data, int n, int h, int w, int c);

int64_t cluda_tensor_numel(const cluda_tensor *t);
size_t cluda_dtype_size(cluda_dtype dtype);
size_t cluda_tensor_bytes(const cluda_tensor *t);
/* Product of all dimensions but the last: the number of rows of a [..., C] tensor. */
int64_t cluda_tensor_rows(const cluda_tensor *t);
/* Size of the last dimension. */
int cluda_tensor_cols(const cluda_tensor *t);
int cluda_tensor_same_shape(const cluda_tensor *a, const cluda_tensor *b);

/* Writes "[2,8,8,16] f32" (or "(null)") into buf; returns buf. For error messages. */
const char *cluda_tensor_describe(const cluda_tensor *t, char *buf, size_t size);

/* Checks a tensor argument of an op: not NULL, data not NULL, the expected dtype and
 * rank (ndim < 0 accepts any rank). The message names the op and the argument. */
cluda_status cluda_check_tensor(const char *op, const char *arg, const cluda_tensor *t,
                                cluda_dtype dtype, int ndim);

static inline float *cluda_f32(const cluda_tensor *t) { return (float *)t->data; }
static inline uint8_t *cluda_u8(const cluda_tensor *t) { return (uint8_t *)t->data; }

#ifdef __cplusplus
}
#endif
#endif

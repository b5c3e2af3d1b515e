/* Shared by the op files: dispatch to the backend and common argument checks. */
#ifndef CLUDA_OP_COMMON_H
#define CLUDA_OP_COMMON_H

#include "cluda/backend.h"
#include "cluda/ops.h"

/* Runs ctx->backend->fn(ctx, ...) after checking that the backend implements it. */
#define CLUDA_DISPATCH(ctx, fn, ...)                                                               \
  do {                                                                                             \
    CLUDA_REQUIRE((ctx) != NULL && (ctx)->backend != NULL, CLUDA_ERR_ARG,                          \
                  #fn ": ctx or ctx->backend is NULL");                                            \
    CLUDA_REQUIRE((ctx)->backend->fn != NULL, CLUDA_ERR_UNSUPPORTED,                               \
                  #fn ": not implemented by the %s backend", (ctx)->backend->name);                \
    return (ctx)->backend->fn((ctx), __VA_ARGS__);                                                 \
  } while (0)

/* Fails unless a and b have the same shape; names the op and both arguments. */
#define CLUDA_REQUIRE_SAME_SHAPE(op, a_name, a, b_name, b)                                         \
  do {                                                                                             \
    char da_[64], db_[64];                                                                         \
    CLUDA_REQUIRE(cluda_tensor_same_shape((a), (b)), CLUDA_ERR_SHAPE,                              \
                  "%s: %s %s and %s %s must have the same shape", (op), (a_name),                  \
                  cluda_tensor_describe((a), da_, sizeof da_), (b_name),                           \
                  cluda_tensor_describe((b), db_, sizeof db_));                                    \
  } while (0)

#endif

/* Status codes: every fallible cluda function returns a cluda_status whose message names
 * the file:line where the error was detected and the input at fault. No global error state. */
#ifndef CLUDA_STATUS_H
#define CLUDA_STATUS_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cluda_code {
  CLUDA_OK = 0,
  CLUDA_ERR_ARG,         /* an argument is invalid (NULL, negative size, bad option) */
  CLUDA_ERR_SHAPE,       /* tensor shapes do not agree */
  CLUDA_ERR_DTYPE,       /* a tensor has a dtype the op does not support */
  CLUDA_ERR_ALLOC,       /* out of memory or workspace */
  CLUDA_ERR_IO,          /* file missing, unreadable or malformed */
  CLUDA_ERR_UNSUPPORTED, /* this backend does not implement the op */
  CLUDA_ERR_DEVICE,      /* CUDA / cuBLAS / cuDNN / NCCL failure */
  CLUDA_ERR_COMM         /* MPI / NCCL communication failure */
} cluda_code;

enum { CLUDA_STATUS_MESSAGE_BYTES = 248 };

typedef struct cluda_status {
  cluda_code code;
  char message[CLUDA_STATUS_MESSAGE_BYTES]; /* "file.c:123: op: what is wrong" */
} cluda_status;

static inline cluda_status cluda_ok(void) {
  cluda_status s;
  s.code = CLUDA_OK;
  s.message[0] = '\0';
  return s;
}

/* Builds a failed status; use through CLUDA_FAIL so file and line are filled in. */
cluda_status cluda_status_make(cluda_code code, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

const char *cluda_code_name(cluda_code code);

#define CLUDA_FAIL(code, ...) cluda_status_make((code), __FILE__, __LINE__, __VA_ARGS__)

/* Returns a failed status from the current function when cond is false. */
#define CLUDA_REQUIRE(cond, code, ...)                                                             \
  do {                                                                                             \
    if (!(cond)) return CLUDA_FAIL((code), __VA_ARGS__);                                           \
  } while (0)

/* Propagates a failed status from a callee. */
#define CLUDA_TRY(expr)                                                                            \
  do {                                                                                             \
    cluda_status cluda_try_status_ = (expr);                                                       \
    if (cluda_try_status_.code != CLUDA_OK) return cluda_try_status_;                              \
  } while (0)

#ifdef __cplusplus
}
#endif
#endif

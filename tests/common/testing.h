/* A small test harness: checks that record failures and go on, random inputs from the
 * project RNG, comparison against double-precision references, and central finite
 * differences in double. Each test program ends with test_finish(), which prints
 * "<program>: N passed, N failed" and returns the exit code. */
#ifndef CLUDA_TESTING_H
#define CLUDA_TESTING_H

#include <stdint.h>
#include <stdio.h>

#include "cluda/backend.h"
#include "cluda/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct test_counts {
  int passed;
  int failed;
} test_counts;

/* Records one check; prints the location and message when it fails. Returns ok. */
int test_record(int ok, const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define TEST_CHECK(cond, ...) test_record(!!(cond), __FILE__, __LINE__, __VA_ARGS__)

/* Checks that a cluda call succeeded, printing its status message otherwise. */
#define TEST_OK(expr) test_status_ok((expr), #expr, __FILE__, __LINE__)
int test_status_ok(cluda_status s, const char *expr, const char *file, int line);

/* Checks that a cluda call failed with the given code and that its message mentions
 * `needle` (e.g. the argument name); prints the message so the log shows what users see. */
#define TEST_FAILS(expr, code, needle)                                                             \
  test_status_fails((expr), (code), (needle), #expr, __FILE__, __LINE__)
int test_status_fails(cluda_status s, cluda_code code, const char *needle, const char *expr,
                      const char *file, int line);

/* Prints the summary line and returns 0 when nothing failed, else 1. */
int test_finish(const char *program);

/* Uniform floats in [lo, hi) from the project RNG (seed, slot). */
void test_fill_uniform(float *x, int64_t n, float lo, float hi, uint64_t seed, uint32_t slot);
/* Copies float -> double / double -> float. */
void test_to_double(const float *x, double *y, int64_t n);
void test_to_float(const double *x, float *y, int64_t n);
/* The whole file as a NUL-terminated string (malloc'ed; the caller frees), or NULL when it
 * cannot be read. */
char *test_read_text(const char *path);

/* Allocation that aborts the test program on failure (tests only). */
void *test_alloc(size_t bytes);
float *test_alloc_f32(int64_t n);
double *test_alloc_f64(int64_t n);

/* Compares got against want elementwise: |got - want| <= atol + rtol |want|. Records one
 * check named `what` and prints the worst element on failure. */
int test_compare(const char *what, const float *got, const double *want, int64_t n, double rtol,
                 double atol);
/* The same with float expectations (e.g. fixtures, CPU twins). */
int test_compare_f32(const char *what, const float *got, const float *want, int64_t n, double rtol,
                     double atol);

/* Scalar function of a double vector, for finite differences. */
typedef double (*test_scalar_fn)(const double *x, void *user);

/* grad[i] = (f(x + h e_i) - f(x - h e_i)) / (2h), evaluated in double; x is restored. */
void test_finite_difference(test_scalar_fn f, void *user, double *x, int64_t n, double h,
                            double *grad);

/* An f32 tensor view of `ndim` dimensions: lead[0..ndim-2], then `last`. */
cluda_tensor test_tensor_rows(int ndim, const int *lead, int last, void *data);

/* A CPU context with a scratch arena of `bytes` (free with test_context_free). */
cluda_ctx test_cpu_context(size_t bytes);
void test_context_free(cluda_ctx *ctx);

#ifdef __cplusplus
}
#endif
#endif

#include "testing.h"

#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/rng.h"

/* Test programs are single-threaded at the harness level; the counters are private to
 * this test-only library. */
static test_counts counts;

int test_record(int ok, const char *file, int line, const char *fmt, ...) {
  if (ok) {
    counts.passed++;
    return 1;
  }
  counts.failed++;
  fprintf(stderr, "FAIL %s:%d: ", file, line);
  va_list ap;
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  return 0;
}

int test_status_ok(cluda_status s, const char *expr, const char *file, int line) {
  return test_record(s.code == CLUDA_OK, file, line, "%s -> %s: %s", expr, cluda_code_name(s.code),
                     s.message);
}

int test_status_fails(cluda_status s, cluda_code code, const char *needle, const char *expr,
                      const char *file, int line) {
  if (s.code != CLUDA_OK) printf("  expected error: %s\n", s.message);
  int ok = s.code == code && (!needle || strstr(s.message, needle) != NULL);
  return test_record(ok, file, line, "%s -> %s \"%s\", expected %s mentioning \"%s\"", expr,
                     cluda_code_name(s.code), s.message, cluda_code_name(code),
                     needle ? needle : "");
}

int test_finish(const char *program) {
  const char *base = strrchr(program, '/');
  base = base ? base + 1 : program;
  printf("%s: %d passed, %d failed\n", base, counts.passed, counts.failed);
  return counts.failed ? 1 : 0;
}

void test_fill_uniform(float *x, int64_t n, float lo, float hi, uint64_t seed, uint32_t slot) {
  cluda_rng_key key = cluda_rng_make_key(seed, 0, 0, CLUDA_RNG_TEST, slot);
  for (int64_t i = 0; i < n; i++)
    x[i] = lo + (hi - lo) * cluda_rng_uniform(key, (uint64_t)i);
}

void test_to_double(const float *x, double *y, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    y[i] = x[i];
}

void test_to_float(const double *x, float *y, int64_t n) {
  for (int64_t i = 0; i < n; i++)
    y[i] = (float)x[i];
}

void *test_alloc(size_t bytes) {
  void *p = calloc(1, bytes ? bytes : 1);
  if (!p) {
    fprintf(stderr, "test_alloc: out of memory (%zu bytes)\n", bytes);
    abort();
  }
  return p;
}

float *test_alloc_f32(int64_t n) { return test_alloc((size_t)n * sizeof(float)); }
double *test_alloc_f64(int64_t n) { return test_alloc((size_t)n * sizeof(double)); }

static int compare_impl(const char *what, const float *got, const double *want_d,
                        const float *want_f, int64_t n, double rtol, double atol) {
  int64_t worst = -1;
  double worst_excess = 0.0;
  int64_t bad = 0;
  for (int64_t i = 0; i < n; i++) {
    double w = want_d ? want_d[i] : (double)want_f[i];
    double err = fabs((double)got[i] - w);
    double tol = atol + rtol * fabs(w);
    int finite = isfinite(got[i]) && isfinite(w);
    if (!finite || err > tol) {
      bad++;
      double excess = finite ? err / tol : INFINITY;
      if (worst < 0 || excess > worst_excess) {
        worst = i;
        worst_excess = excess;
      }
    }
  }
  if (worst < 0) return test_record(1, __FILE__, __LINE__, "%s", what);
  double w = want_d ? want_d[worst] : (double)want_f[worst];
  return test_record(0, __FILE__, __LINE__,
                     "%s: %lld of %lld elements out of tolerance (rtol %g, atol %g); worst at "
                     "%lld: got %.9g want %.9g",
                     what, (long long)bad, (long long)n, rtol, atol, (long long)worst,
                     (double)got[worst], w);
}

int test_compare(const char *what, const float *got, const double *want, int64_t n, double rtol,
                 double atol) {
  return compare_impl(what, got, want, NULL, n, rtol, atol);
}

int test_compare_f32(const char *what, const float *got, const float *want, int64_t n, double rtol,
                     double atol) {
  return compare_impl(what, got, NULL, want, n, rtol, atol);
}

void test_finite_difference(test_scalar_fn f, void *user, double *x, int64_t n, double h,
                            double *grad) {
  for (int64_t i = 0; i < n; i++) {
    double saved = x[i];
    x[i] = saved + h;
    double fp = f(x, user);
    x[i] = saved - h;
    double fm = f(x, user);
    x[i] = saved;
    grad[i] = (fp - fm) / (2.0 * h);
  }
}

cluda_ctx test_cpu_context(size_t bytes) {
  cluda_arena *arena = test_alloc(sizeof *arena);
  cluda_status s = cluda_arena_create(arena, bytes);
  if (s.code != CLUDA_OK) {
    fprintf(stderr, "test_cpu_context: %s\n", s.message);
    abort();
  }
  return cluda_cpu_context(arena);
}

void test_context_free(cluda_ctx *ctx) {
  if (ctx->scratch) {
    cluda_arena_destroy(ctx->scratch);
    free(ctx->scratch);
  }
  ctx->scratch = NULL;
}

cluda_tensor test_tensor_rows(int ndim, const int *lead, int last, void *data) {
  cluda_tensor t = cluda_tensor_1d(CLUDA_F32, data, last);
  t.ndim = ndim;
  for (int i = 0; i + 1 < ndim; i++)
    t.shape[i] = lead[i];
  t.shape[ndim - 1] = last;
  return t;
}

char *test_read_text(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  char *text = NULL;
  long n = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
  if (n >= 0 && fseek(f, 0, SEEK_SET) == 0) {
    text = test_alloc((size_t)n + 1);
    size_t got = fread(text, 1, (size_t)n, f);
    text[got] = '\0';
  }
  fclose(f);
  return text;
}

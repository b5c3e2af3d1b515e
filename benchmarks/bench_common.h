/* Shared by the benchmark programs: clock, sorting, machine load, option parsing, thread
 * setup and random inputs (from the project's counter-based RNG). */
#ifndef CLUDA_BENCH_COMMON_H
#define CLUDA_BENCH_COMMON_H

#include <cblas.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "cluda/rng.h"

static inline double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static inline int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* The 1-minute load average (Linux), or -1: other work on a 2-core machine skews timings. */
static inline double load_average(void) {
  FILE *f = fopen("/proc/loadavg", "r");
  double load = -1;
  if (f) {
    if (fscanf(f, "%lf", &load) != 1) load = -1;
    fclose(f);
  }
  return load;
}

static inline int parse_int(const char *s, int lo, int *out) {
  char *end;
  long v = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || v < lo || v > 1000000) return 0;
  *out = (int)v;
  return 1;
}

static inline int env_threads(const char *name) {
  const char *v = getenv(name);
  int n;
  return v && parse_int(v, 1, &n) ? n : 0;
}

/* OpenMP and OpenBLAS thread counts: `threads` when nonzero, else the environment, else 2. */
static inline void setup_threads(int threads) {
  int omp = threads ? threads : env_threads("OMP_NUM_THREADS");
  if (!omp) omp = 2;
  int blas = threads ? threads : env_threads("OPENBLAS_NUM_THREADS");
  if (!blas) blas = omp;
  omp_set_num_threads(omp);
  openblas_set_num_threads(blas);
}

/* Uniform values in [-scale, scale) from stream `slot` of the benchmark seed. */
static inline void fill_uniform(float *p, int64_t n, float scale, uint32_t slot) {
  cluda_rng_key key = cluda_rng_make_key(1234, 0, 0, CLUDA_RNG_TEST, slot);
  for (int64_t i = 0; i < n; i++)
    p[i] = scale * (2.0f * cluda_rng_uniform(key, (uint64_t)i) - 1.0f);
}

#endif

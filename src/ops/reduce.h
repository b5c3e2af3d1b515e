/* Deterministic row reductions for the CPU ops: LANES interleaved double partial sums
 * (independent add chains the compiler vectorises) combined in a fixed order, so results
 * do not depend on how rows are split over threads. */
#ifndef CLUDA_REDUCE_H
#define CLUDA_REDUCE_H

enum { LANES = 8 };

/* Parameter-gradient reductions give each thread a block of COL_BLOCK channels. */
enum { COL_BLOCK = 16 }; /* one 64-byte cache line of floats */

static inline double lanes_total(const double *acc) {
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static inline double row_sum(const float *a, int n) {
  double acc[LANES] = {0};
  int i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int j = 0; j < LANES; j++)
      acc[j] += a[i + j];
  for (int j = 0; i < n; i++, j++)
    acc[j] += a[i];
  return lanes_total(acc);
}

/* sum of a b in double */
static inline double row_dot(const float *a, const float *b, int n) {
  double acc[LANES] = {0};
  int i = 0;
  for (; i + LANES <= n; i += LANES)
    for (int j = 0; j < LANES; j++)
      acc[j] += (double)a[i + j] * b[i + j];
  for (int j = 0; i < n; i++, j++)
    acc[j] += (double)a[i] * b[i];
  return lanes_total(acc);
}

#endif

#include "cluda/rng.h"

#include <math.h>

enum {
  PHILOX_M0 = 0xD2511F53u,
  PHILOX_M1 = 0xCD9E8D57u,
  PHILOX_W0 = 0x9E3779B9u,
  PHILOX_W1 = 0xBB67AE85u
};

static inline void mulhilo(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo) {
  uint64_t p = (uint64_t)a * b;
  *hi = (uint32_t)(p >> 32);
  *lo = (uint32_t)p;
}

void cluda_philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
  uint32_t c0 = counter[0], c1 = counter[1], c2 = counter[2], c3 = counter[3];
  uint32_t k0 = key[0], k1 = key[1];
  for (int round = 0; round < 10; round++) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo(PHILOX_M0, c0, &hi0, &lo0);
    mulhilo(PHILOX_M1, c2, &hi1, &lo1);
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0;
    c1 = n1;
    c2 = n2;
    c3 = n3;
    k0 += PHILOX_W0;
    k1 += PHILOX_W1;
  }
  out[0] = c0;
  out[1] = c1;
  out[2] = c2;
  out[3] = c3;
}

cluda_rng_key cluda_rng_make_key(uint64_t seed, uint32_t rank, uint32_t iteration, uint32_t purpose,
                                 uint32_t slot) {
  cluda_rng_key k;
  k.seed = seed;
  k.stream = ((uint64_t)(rank & 0xffffu) << 48) | ((uint64_t)(purpose & 0xffffu) << 32) |
             (uint64_t)iteration;
  k.slot = slot & 0xffffu;
  return k;
}

void cluda_rng_bits(cluda_rng_key key, uint64_t index, uint32_t out[4]) {
  const uint32_t counter[4] = {(uint32_t)index,
                               (uint32_t)((index >> 32) & 0xffffu) | (key.slot << 16),
                               (uint32_t)key.stream, (uint32_t)(key.stream >> 32)};
  const uint32_t k[2] = {(uint32_t)key.seed, (uint32_t)(key.seed >> 32)};
  cluda_philox4x32_10(counter, k, out);
}

float cluda_rng_uniform(cluda_rng_key key, uint64_t index) {
  uint32_t r[4];
  cluda_rng_bits(key, index, r);
  return (float)(r[0] >> 8) * (1.0f / 16777216.0f);
}

double cluda_rng_normal(cluda_rng_key key, uint64_t index) {
  uint32_t r[4];
  cluda_rng_bits(key, index, r);
  /* u1 in (0, 1] so the log is finite */
  double u1 = ((double)r[0] + 1.0) / 4294967296.0;
  double u2 = (double)r[1] / 4294967296.0;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

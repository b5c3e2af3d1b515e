/* Counter-based random numbers (Philox4x32-10, Salmon et al. 2011). A draw is a pure
 * function of (seed, stream, index): results do not depend on thread count, call order or
 * backend, and any element can be drawn independently. */
#ifndef CLUDA_RNG_H
#define CLUDA_RNG_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cluda_rng_key {
  uint64_t seed;   /* the experiment seed: the Philox key */
  uint64_t stream; /* rank << 48 | purpose << 32 | iteration: counter words 2 and 3 */
  uint32_t slot;   /* several streams of one purpose in an iteration (e.g. layer index) */
} cluda_rng_key;

/* What a stream of draws is for; part of every key so streams never collide. */
typedef enum cluda_rng_purpose {
  CLUDA_RNG_INIT = 1,     /* parameter initialisation */
  CLUDA_RNG_DROPOUT = 2,  /* dropout / Dropout2d masks */
  CLUDA_RNG_DROPPATH = 3, /* stochastic depth */
  CLUDA_RNG_DATA = 4,     /* sampling, crops, flips */
  CLUDA_RNG_AUGMENT = 5,  /* ClassMix, jitter, blur */
  CLUDA_RNG_TEST = 0xfff0 /* unit tests */
} cluda_rng_purpose;

/* Builds the key of one stream. rank and purpose must fit in 16 bits, slot in 16 bits; draw
 * indices must stay below 2^48. Distinct arguments give disjoint counters. */
cluda_rng_key cluda_rng_make_key(uint64_t seed, uint32_t rank, uint32_t iteration, uint32_t purpose,
                                 uint32_t slot);

/* The raw generator: 4 x 32 random bits for a 128-bit counter and a 64-bit key. */
void cluda_philox4x32_10(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

/* Four 32-bit words for draw `index` (< 2^48) of the stream. */
void cluda_rng_bits(cluda_rng_key key, uint64_t index, uint32_t out[4]);

/* A uniform float in [0, 1) for draw `index` (24 random bits). */
float cluda_rng_uniform(cluda_rng_key key, uint64_t index);

/* A standard normal draw for `index` (Box-Muller on two 32-bit words). */
double cluda_rng_normal(cluda_rng_key key, uint64_t index);

#ifdef __cplusplus
}
#endif
#endif

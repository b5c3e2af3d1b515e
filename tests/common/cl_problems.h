/* Random problems for the contrastive-loss tests (tests/unit/test_contrastive.c and its GPU twin
 * tests/gpu/test_gpu_contrastive.c): L2-normalised anchor and contrast rows, labels from 2
 * stuff + 2 thing classes with ~15 % ignore, per-row weights, and the relation between anchors
 * and the contrast set (self_offset), so both tests draw exactly the same cases. */
#ifndef CLUDA_TEST_CL_PROBLEMS_H
#define CLUDA_TEST_CL_PROBLEMS_H

#include <stdint.h>

#include "cluda/contrastive.h"

/* How the anchors relate to the contrast set: they are it (self_offset 0), a block of it
 * (self_offset > 0) or disjoint rows (self_offset -1). */
enum { REL_SELF = 0, REL_BLOCK = 1, REL_DISJOINT = 2 };
/* Weighting: none (anchor weights NULL), anchor weights, ref_pair_weight with contrast weights,
 * ref_pair_weight with the contrast weights NULL. */
enum { W_NONE = 0, W_ANCHOR = 1, W_PAIR = 2, W_PAIR_NO_V = 3 };
extern const char *const rel_name[3];
extern const char *const pairs_name[3];
extern const char *const weighting_name[4];

typedef struct cl_case {
  int ma, mc, d;
  int rel, pairs, ignore_as_class, weighting, half;
  float tau;
  int tile_cols;
  int64_t mean_count; /* 0: Ma */
} cl_case;

typedef struct cl_data {
  float *a, *c, *u, *v;
  uint8_t *la, *lc;
  int64_t self_offset;
} cl_data;

/* Each row scaled to unit L2 norm (in double). */
void normalise_rows(float *x, int rows, int d);

/* The rows, labels and weights of a case. Weights are uniform in [weight_lo, weight_hi) (row 1
 * of u and row 2 of v are 0, margin pixels); label 8, which no class pool uses, marks anchor 0
 * as having no positives. Buffers hold one spare element, so empty cases allocate. */
cl_data make_data(const cl_case *c, uint64_t seed, float weight_lo, float weight_hi);
void free_data(cl_data *x);

/* The op's parameters for a case (loss weight 0.7). */
cluda_contrastive_params make_params(const cl_case *c, const cl_data *x);

#endif

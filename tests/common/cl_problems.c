#include "cl_problems.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testing.h"

const char *const rel_name[3] = {"self", "block", "disjoint"};
const char *const pairs_name[3] = {"separate", "all", "stuff_only"};
const char *const weighting_name[4] = {"none", "anchor", "pair", "pair(v NULL)"};

void normalise_rows(float *x, int rows, int d) {
  for (int i = 0; i < rows; i++) {
    double n = 0.0;
    for (int k = 0; k < d; k++)
      n += (double)x[(size_t)i * d + k] * x[(size_t)i * d + k];
    n = sqrt(n) + 1e-12;
    for (int k = 0; k < d; k++)
      x[(size_t)i * d + k] = (float)(x[(size_t)i * d + k] / n);
  }
}

/* Labels from 2 stuff (0, 1) + 2 thing (11, 13) classes and ~15 % ignore (255); label 8 is
 * reserved for rows without positives. */
static void fill_labels(uint8_t *lab, int n, uint64_t seed, uint32_t slot) {
  static const uint8_t pool[] = {0, 1, 11, 13, 0, 1, 11};
  float *u = test_alloc_f32(n + 1);
  test_fill_uniform(u, n, 0.0f, 1.0f, seed, slot);
  for (int i = 0; i < n; i++)
    lab[i] = u[i] < 0.15f ? 255 : pool[(int)((u[i] - 0.15f) / 0.85f * 7.0f) % 7];
  free(u);
}

cl_data make_data(const cl_case *c, uint64_t seed, float weight_lo, float weight_hi) {
  cl_data x;
  x.a = test_alloc_f32((int64_t)c->ma * c->d + 1);
  x.c = test_alloc_f32((int64_t)c->mc * c->d + 1);
  x.u = test_alloc_f32(c->ma + 1);
  x.v = test_alloc_f32(c->mc + 1);
  x.la = test_alloc((size_t)c->ma + 1);
  x.lc = test_alloc((size_t)c->mc + 1);
  test_fill_uniform(x.c, (int64_t)c->mc * c->d, -1.0f, 1.0f, seed, 0);
  normalise_rows(x.c, c->mc, c->d);
  fill_labels(x.lc, c->mc, seed, 1);
  test_fill_uniform(x.u, c->ma, weight_lo, weight_hi, seed, 2);
  test_fill_uniform(x.v, c->mc, weight_lo, weight_hi, seed, 3);
  if (c->ma > 2) x.u[1] = 0.0f; /* a margin pixel */
  if (c->mc > 2) x.v[2] = 0.0f;
  x.self_offset = c->rel == REL_SELF ? 0 : c->rel == REL_BLOCK ? (c->mc - c->ma) / 2 : -1;
  if (c->rel == REL_DISJOINT) {
    test_fill_uniform(x.a, (int64_t)c->ma * c->d, -1.0f, 1.0f, seed, 4);
    normalise_rows(x.a, c->ma, c->d);
    fill_labels(x.la, c->ma, seed, 5);
    if (c->ma > 2) x.la[0] = 8; /* no contrast row has label 8: no positives */
  } else {
    memcpy(x.a, x.c + x.self_offset * c->d, sizeof(float) * (size_t)c->ma * c->d);
    if (c->ma > 2) x.lc[x.self_offset] = 8; /* anchor 0 is alone in its class */
    memcpy(x.la, x.lc + x.self_offset, (size_t)c->ma);
    memcpy(x.u, x.v + x.self_offset, sizeof(float) * (size_t)c->ma);
  }
  return x;
}

void free_data(cl_data *x) {
  free(x->a);
  free(x->c);
  free(x->u);
  free(x->v);
  free(x->la);
  free(x->lc);
}

cluda_contrastive_params make_params(const cl_case *c, const cl_data *x) {
  cluda_contrastive_params p;
  cluda_contrastive_default_params(&p);
  p.tau = c->tau;
  p.loss_weight = 0.7f;
  p.pairs = (cluda_cl_pairs)c->pairs;
  p.ref_ignore_as_class = c->ignore_as_class;
  p.ref_pair_weight = c->weighting >= W_PAIR;
  p.ref_half = c->half;
  p.mean_count = c->mean_count;
  p.self_offset = x->self_offset;
  p.tile_cols = c->tile_cols;
  return p;
}

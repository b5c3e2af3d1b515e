/* What networks share: how a forward pass runs (training vs teacher vs inference). */
#ifndef CLUDA_MODEL_H
#define CLUDA_MODEL_H

#include "cluda/rng.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cluda_run_mode {
  /* Dropout, Dropout2d and drop path active (the student in training). Off for the EMA
   * teacher, evaluation and inference. */
  int stochastic;
  /* BatchNorm normalises with batch statistics and updates its running statistics (the
   * student in training, and the teacher while pseudo-labelling: decisions.md #17). Off:
   * running statistics (evaluation, inference). */
  int bn_batch_stats;
  /* Base key of the dropout / drop-path draws; layer k draws from slot k of it. */
  cluda_rng_key key;
  /* Global index of this batch's first sample (data parallel: rank * batch; 0 in one
   * process): the masks of a global batch are the same however ranks split it. */
  uint64_t first_sample;
} cluda_run_mode;

#ifdef __cplusplus
}
#endif
#endif

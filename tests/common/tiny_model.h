/* The tiny network of configs/model_tiny.yaml built in the test process, to make weight files
 * and reference outputs for the program tests (tests/unit/test_*_cli.c). */
#ifndef CLUDA_TEST_TINY_MODEL_H
#define CLUDA_TEST_TINY_MODEL_H

#include <stdint.h>

#include "cluda/segmentor.h"

#define TINY_CONFIG CLUDA_FIXTURE_DIR "/../../configs/model_tiny.yaml"

typedef struct model {
  cluda_segmentor seg;
  float *params, *state;
} model;

/* The network of TINY_CONFIG with one `--set`-style override (may be NULL), initialised from
 * seed. Records failed checks and returns 0 on failure. */
int make_model(model *m, const char *set_override, uint64_t seed);
void free_model(model *m);

#endif

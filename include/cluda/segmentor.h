/* Encoder + decode head: the network a CLUDA student, teacher or inference run uses. Owns
 * the parameter and state tables (names "backbone.*" and "decode_head.*"); the flat buffers
 * themselves belong to the caller (student, teacher and ImageNet copies share one
 * segmentor). */
#ifndef CLUDA_SEGMENTOR_H
#define CLUDA_SEGMENTOR_H

#include "cluda/head.h"
#include "cluda/mit.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cluda_segmentor_config {
  char encoder_name[16]; /* "b0".."b5", "tiny" or "custom" (informational) */
  cluda_mit_config encoder;
  cluda_head_config head;
} cluda_segmentor_config;

/* MiT preset + head defaults (kind, E, classes) in one call. */
cluda_status cluda_segmentor_default_config(const char *encoder, cluda_head_kind head,
                                            cluda_segmentor_config *cfg);

typedef struct cluda_segmentor {
  cluda_segmentor_config cfg;
  cluda_mit encoder;
  cluda_head head;
  cluda_param_table params; /* trainable */
  cluda_param_table state;  /* BatchNorm running statistics */
} cluda_segmentor;

cluda_status cluda_segmentor_create(cluda_segmentor *model, const cluda_segmentor_config *cfg);
void cluda_segmentor_free(cluda_segmentor *model);

/* Random initialisation of both parts from `seed`. */
cluda_status cluda_segmentor_init(const cluda_segmentor *model, float *params, float *state,
                                  uint64_t seed);

typedef struct cluda_segmentor_plan {
  cluda_mit_plan encoder;
  cluda_head_plan head;
  size_t activation_bytes; /* encoder + a copy of the four stage outputs + head */
  size_t scratch_bytes;    /* the four stage gradients + the larger of the two */
  double macs;             /* per image */
} cluda_segmentor_plan;

cluda_status cluda_segmentor_plan_for(const cluda_segmentor *model, int batch, int height,
                                      int width, cluda_segmentor_plan *plan);

typedef struct cluda_segmentor_outputs {
  cluda_tensor enc[4]; /* stage outputs */
  cluda_tensor fused;  /* head's fused features [B, H/4, W/4, Cf] */
  cluda_tensor logits; /* [B, H/4, W/4, K] */
} cluda_segmentor_outputs;

/* x: normalised image [B, H, W, 3]. Views in `out` point into acts. */
cluda_status cluda_segmentor_forward(cluda_ctx *ctx, const cluda_segmentor *model,
                                     const cluda_segmentor_plan *plan, const float *params,
                                     float *state, const cluda_run_mode *mode,
                                     const cluda_tensor *x, void *acts,
                                     cluda_segmentor_outputs *out);

/* Accumulates into grads. dlogits / dfused: gradients of the head outputs (either may be
 * NULL); denc[i] (may be NULL) adds a gradient at encoder stage i (the FD loss); dx may be
 * NULL. */
cluda_status cluda_segmentor_backward(cluda_ctx *ctx, const cluda_segmentor *model,
                                      const cluda_segmentor_plan *plan, const float *params,
                                      float *grads, const float *state, const cluda_run_mode *mode,
                                      const cluda_tensor *x, const void *acts,
                                      const cluda_tensor *dlogits, const cluda_tensor *dfused,
                                      const cluda_tensor *const denc[4], cluda_tensor *dx);

#ifdef __cplusplus
}
#endif
#endif

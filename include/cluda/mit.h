/* Mix Transformer encoder (MiT-B0..B5, SegFormer), shared/spec/model.md section 1.
 *
 * Stage i = 1..4: overlapping patch embedding (conv k=7 s=4 p=3 for stage 1, k=3 s=2 p=1
 * after; LayerNorm eps patch_norm_eps), depths[i] blocks
 *   x += DropPath(SRAttention(LN1(x)));  x += DropPath(fc2(GELU(DWConv3x3(fc1(LN2(x))))))
 * (LN1/LN2 eps block_norm_eps), then the stage LayerNorm (eps block_norm_eps). Outputs are
 * the four stage maps [B, H_i, W_i, C_i] at strides 4, 8, 16, 32 (PyTorch conv arithmetic,
 * any input size).
 *
 * The encoder holds no tensors: parameters live in a flat buffer described by a
 * cluda_param_table (names "<prefix>patch_embed1.proj.weight", "<prefix>block1.0.attn.q.weight",
 * ... exactly the mmseg / DAFormer names of model.md 7.2 after the prefix; conv weights
 * OHWI), so one encoder serves the student, the EMA teacher and the frozen ImageNet copy
 * with three parameter buffers. Saved activations live in a caller buffer sized by the
 * plan. */
#ifndef CLUDA_MIT_H
#define CLUDA_MIT_H

#include <stddef.h>

#include "cluda/model.h"
#include "cluda/ops.h"
#include "cluda/params.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cluda_mit_config {
  int in_channels;      /* 3 */
  int embed_dims[4];    /* C_1..C_4 */
  int depths[4];        /* D_1..D_4 */
  int heads[4];         /* C_i % heads[i] == 0 */
  int sr_ratios[4];     /* 8, 4, 2, 1 */
  int mlp_ratio;        /* 4: Mix-FFN hidden width mlp_ratio * C_i */
  float drop_path_rate; /* 0.1: block k of all sum(D) blocks gets rate * k / (sum(D) - 1) */
  float patch_norm_eps; /* 1e-5: patch-embedding norms and the SR norms */
  float block_norm_eps; /* 1e-6: norm1, norm2 and the stage norms (Hugging Face: 1e-5) */
} cluda_mit_config;

/* Fills cfg for "b0".."b5" (model.md 1.1) or "tiny" (model.md section 10). */
cluda_status cluda_mit_preset(const char *name, cluda_mit_config *cfg);

typedef struct cluda_mit {
  cluda_mit_config cfg;
  int first_param; /* index of the encoder's first entry in the parameter table */
  int param_count; /* entries, registered in a fixed order (see mit.c) */
} cluda_mit;

/* Validates cfg and registers the encoder's parameters in `params` with names prefixed by
 * `prefix` (e.g. "backbone."), group CLUDA_GROUP_ENCODER, no_decay for norm parameters. */
cluda_status cluda_mit_declare(cluda_mit *mit, const cluda_mit_config *cfg, const char *prefix,
                               cluda_param_table *params);

/* Initialises the encoder's parameters as model.md 1.7 (trunc-normal 0.02 linears, fan-out
 * normal convs, unit LayerNorms, zero biases) from the counter-based RNG. */
cluda_status cluda_mit_init(const cluda_mit *mit, const cluda_param_table *params, float *data,
                            uint64_t seed);

typedef struct cluda_mit_plan {
  int batch, height, width;
  int out_h[4], out_w[4];  /* stage output sizes */
  size_t activation_bytes; /* the buffer forward fills and backward reads */
  size_t scratch_bytes;    /* what forward and backward take from ctx->scratch */
  double macs;             /* multiply-accumulates of one forward per image */
} cluda_mit_plan;

cluda_status cluda_mit_plan_for(const cluda_mit *mit, int batch, int height, int width,
                                cluda_mit_plan *plan);

/* x [B, H, W, in_channels] as planned; acts: plan->activation_bytes on the backend's device.
 * out[i] receives views (inside acts) of the four stage outputs. */
cluda_status cluda_mit_forward(cluda_ctx *ctx, const cluda_mit *mit, const cluda_mit_plan *plan,
                               const cluda_param_table *table, const float *params,
                               const cluda_run_mode *mode, const cluda_tensor *x, void *acts,
                               cluda_tensor out[4]);

/* The stage-output views inside acts, the same cluda_mit_forward put in out (for a caller
 * whose backward no longer holds them, e.g. to feed the head's backward). */
cluda_status cluda_mit_stage_views(const cluda_mit *mit, const cluda_mit_plan *plan,
                                   const void *acts, cluda_tensor out[4]);

/* Accumulates parameter gradients into `grads` (same layout as params). dout[i] is the
 * gradient of stage output i, NULL for none. dx (may be NULL) is overwritten; with every
 * dout NULL the call does nothing, and fails if dx is given (it cannot be zeroed). `mode` must be
 * the forward's: it says whether drop path was applied (the masks themselves are saved in acts,
 * which may be device memory the host cannot read). */
cluda_status cluda_mit_backward(cluda_ctx *ctx, const cluda_mit *mit, const cluda_mit_plan *plan,
                                const cluda_param_table *table, const float *params, float *grads,
                                const cluda_run_mode *mode, const cluda_tensor *x, const void *acts,
                                const cluda_tensor *const dout[4], cluda_tensor *dx);

#ifdef __cplusplus
}
#endif
#endif

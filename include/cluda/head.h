/* Decode heads over the four encoder maps, shared/spec/model.md sections 2 and 3. Each
 * returns the fused feature map (what CLUDA contrasts) and the logits, both at the stride-4
 * resolution of level 0, and back-propagates from both.
 *
 * DAFormer ("daformer_sepaspp"): per-level Linear C_i -> E; levels 1..3 bilinearly resized
 * (align_corners False) to level 0's size; concat [e0, e1, e2, e3]; ASPP with branch d=1
 * (1x1 conv 4E -> Cf, BN, ReLU) and branches d in {6,12,18} (depthwise 3x3 dilation d on 4E,
 * BN, ReLU, then 1x1 4E -> Cf, BN, ReLU); concat (4 Cf); bottleneck 3x3 p1 4Cf -> Cf, BN,
 * ReLU = fused [B, H0, W0, Cf]; Dropout2d(p); 1x1 conv Cf -> K with bias = logits. Convs
 * before a BN have no bias.
 *
 * SegFormer all-MLP: per-level Linear C_i -> E, resize to level 0, concat [c1, c2, c3, c4]
 * (DAFormer order; Hugging Face / NVlabs use [c4..c1] and their linear_fuse input blocks are
 * permuted on load), 1x1 conv 4E -> E (no bias), BN, ReLU = fused [B, H0, W0, E];
 * Dropout2d(p); 1x1 conv E -> K with bias = logits.
 *
 * Parameter names (after the prefix, e.g. "decode_head.") are the mmseg / DAFormer ones of
 * model.md 7.2: "embed_layers.0.proj.weight", "fuse_layer.aspp_modules.1.depthwise_conv.conv
 * .weight", "fuse_layer.bottleneck.bn.weight", "conv_seg.weight", ...; SegFormer:
 * "linear_c.0.proj.weight" (DAFormer's loop naming), "linear_fuse.conv.weight",
 * "linear_fuse.bn.weight", "linear_pred.weight". BatchNorm running statistics are entries
 * "<...>.bn.running_mean" / "running_var" of a separate state table. Group CLUDA_GROUP_HEAD;
 * every head parameter, BN included, is decayed as in the reference (mmcv's "norm" key does
 * not match modules named "bn": algorithm.md 4.1). */
#ifndef CLUDA_HEAD_H
#define CLUDA_HEAD_H

#include <stddef.h>

#include "cluda/model.h"
#include "cluda/ops.h"
#include "cluda/params.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cluda_head_kind { CLUDA_HEAD_DAFORMER = 0, CLUDA_HEAD_SEGFORMER = 1 } cluda_head_kind;

typedef struct cluda_head_config {
  cluda_head_kind kind;
  int in_channels[4]; /* the encoder's embed_dims */
  int embed_dims;     /* E: 512 CLUDA, 256 DAFormer; SegFormer 256 (B0/B1) or 768 */
  int channels;       /* DAFormer fused width Cf (256); SegFormer: must equal embed_dims */
  int num_classes;    /* K: 19 */
  int dilations[4];   /* DAFormer ASPP: 1, 6, 12, 18 (dilations[0] must be 1) */
  float dropout;      /* 0.1: Dropout2d before the classifier */
  float bn_eps;       /* 1e-5 */
  float bn_momentum;  /* 0.1 */
} cluda_head_config;

/* Defaults for a head over an encoder with these embed_dims: DAFormer E = 512 (CLUDA),
 * Cf = 256, 19 classes, dilations 1/6/12/18, dropout 0.1; SegFormer E = 256. */
void cluda_head_default_config(cluda_head_kind kind, const int in_channels[4],
                               cluda_head_config *cfg);

typedef struct cluda_head {
  cluda_head_config cfg;
  int first_param, param_count; /* range in the parameter table */
  int first_state, state_count; /* range in the state table (BN running statistics) */
} cluda_head;

cluda_status cluda_head_declare(cluda_head *head, const cluda_head_config *cfg, const char *prefix,
                                cluda_param_table *params, cluda_param_table *state);

/* Initialisation of model.md 2.1 (Kaiming fan-out convs, BN 1/0, conv_seg normal 0.01,
 * PyTorch-default linears; running mean 0, running var 1). */
cluda_status cluda_head_init(const cluda_head *head, const cluda_param_table *params,
                             float *param_data, const cluda_param_table *state, float *state_data,
                             uint64_t seed);

typedef struct cluda_head_plan {
  int batch;
  int in_h[4], in_w[4]; /* the four input maps */
  int out_h, out_w;     /* = in_h[0], in_w[0] */
  size_t activation_bytes;
  size_t scratch_bytes;
  double macs; /* per image, forward */
} cluda_head_plan;

cluda_status cluda_head_plan_for(const cluda_head *head, int batch, const int in_h[4],
                                 const int in_w[4], cluda_head_plan *plan);

/* feats[i] [B, in_h[i], in_w[i], in_channels[i]]; state (BN running statistics) is read,
 * and updated when mode->bn_batch_stats. fused and logits receive views inside acts:
 * fused [B, out_h, out_w, channels], logits [B, out_h, out_w, num_classes]. Dropout2d (when
 * mode->stochastic) draws mask element n * channels + c from mode->key with its purpose set
 * to CLUDA_RNG_DROPOUT (seed, rank, iteration and slot as given). */
cluda_status cluda_head_forward(cluda_ctx *ctx, const cluda_head *head, const cluda_head_plan *plan,
                                const cluda_param_table *params, const float *param_data,
                                const cluda_param_table *state, float *state_data,
                                const cluda_run_mode *mode, const cluda_tensor feats[4], void *acts,
                                cluda_tensor *fused, cluda_tensor *logits);

/* Accumulates parameter gradients into grads. dlogits and dfused (either may be NULL, not
 * both) are the gradients of the two outputs; dfeats[i] (each may be NULL) are overwritten. */
cluda_status cluda_head_backward(cluda_ctx *ctx, const cluda_head *head,
                                 const cluda_head_plan *plan, const cluda_param_table *params,
                                 const float *param_data, float *grads,
                                 const cluda_param_table *state, const float *state_data,
                                 const cluda_run_mode *mode, const cluda_tensor feats[4],
                                 const void *acts, const cluda_tensor *dlogits,
                                 const cluda_tensor *dfused, cluda_tensor *const dfeats[4]);

#ifdef __cplusplus
}
#endif
#endif

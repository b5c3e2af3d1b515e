/* The CLUDA pixel-contrastive loss (paper Eq. 2, 3, 5; shared/spec/decisions.md 4-14),
 * streamed over column tiles so that memory is O(M D): no M x M matrix is ever formed.
 *
 * Inputs are feature ROWS that are already resized to cl.size and L2-normalised
 * (cluda_resize_bilinear_forward with align_corners 1, then cluda_l2norm_forward, eps 1e-12);
 * labels are resized by legacy nearest. All of that happens outside this loss.
 *
 * Rows. The anchors are this process's rows A [Ma, D] with labels y^a, anchor weights u. The
 * contrast set is C [Mc, D] with labels y^c (and, for ref_pair_weight, weights v): the rows of
 * the whole global batch (the all-gather over ranks, rank-major), or the anchors themselves for
 * one process or cl.scope = local. Anchor a is the same pixel as contrast row self_offset + a
 * (the rank's block of the gather; self_offset = 0 and A == C for one process), and that pair is
 * never a positive nor a negative (j != i). self_offset = -1: no anchor is in the contrast set.
 *
 * Semantics (defaults = the paper). With s_ij = <a_i, c_j> / tau:
 *  - valid label: y != ignore_index, or any label when ref_ignore_as_class (255 is a class);
 *    group(y) = thing[y] (thing vs stuff, decision 7; with ref_ignore_as_class the ignore
 *    label's group is thing[ignore_index], stuff unless set);
 *  - anchor i is active when y_i is valid and not (pairs == STUFF_ONLY and y_i is a thing);
 *  - positives P_i = { j != self(i) : y_j == y_i } (valid, same class);
 *  - negatives N_i = { k != self(i) : y_k valid, y_k != y_i } restricted by pairs:
 *      SEPARATE (default, "S-S + T-T"): group(y_k) == group(y_i);
 *      ALL ("S-S + T-T + S-T", what the reference code effectively does): no restriction;
 *      STUFF_ONLY ("S-S"): as SEPARATE, and only stuff anchors are active;
 *  - log S_i = log sum_{k in N_i} e^{s_ik} (computed max-subtracted: m_i = max_{k in N_i} s_ik,
 *    log S_i = m_i + log sum e^{s_ik - m_i}; minus infinity when N_i is empty);
 *  - l_ip = -log( e^{s_ip} / (e^{s_ip} + S_i) ) = softplus(log S_i - s_ip)  (decision 5);
 *  - per-anchor loss l_i = (1 / |P_i|) sum_{p in P_i} G_ip l_ip  (0 when P_i is empty or i is
 *    not active), with G_ip = u_i by default (Gamma for target anchors, 1 for source, 0 for
 *    margins; u = NULL is all ones, which is cl.mix_weighting = none) and G_ip = u_i v_p with
 *    ref_pair_weight (the reference's g_i g_j: pair weights multiply the positive terms only,
 *    never the negatives inside the log, exactly as the reference);
 *  - loss = loss_weight (x 0.5 with ref_half) x sum_i l_i / mean_count. mean_count is the
 *    number of anchor rows of the GLOBAL batch (all rows, ignored ones included: decision 12),
 *    so every rank divides by the same number; the global loss is the SUM of the ranks' losses.
 *    mean_count = 0 means Ma (one process).
 *
 * The reference's exact form (algorithm.md 6.3 steps 3-8) is the same function: its row max
 * is detached and cancels inside L_ij - log(e^{L_ij} + sum_k e^{L_ik}), its -sum_j P_ij l_ij
 * G_ij / max(1, |P_i|) is the mean over positives (rows without positives give 0 either way),
 * and its G only multiplies the positive terms. So the reference is reproduced by the option
 * combination ref_ignore_as_class + pairs ALL + ref_pair_weight + ref_half, and there is no
 * separate "ref_form" switch (tests/unit/test_contrastive.c checks a literal transcription of
 * 6.3 against this op). Rounding differs only in where the constant shift is taken.
 *
 * Not here: ref_row_order (decision 9; the reference pairs pixel-major feature rows with
 * batch-major label rows). The loss only sees rows, so that quirk is a permutation of the
 * label/weight rows the CALLER applies when flattening (cluda_ref_row_order_permute, trainer.h).
 * Multi-resolution (decision 15) is two calls on the same LR anchors: against the LR contrast
 * rows with anchor weights delta_i w_i, and against the HR contrast rows with (1 - delta_i) w_i
 * (w_i: Gamma / 1 / 0 as below); the chain rule through d_anchor_weights gives dL/d delta.
 * The reference's LR-HR pair weight (1 - a_i a_j c_i) g_i g_j is not a product, but the loss is
 * linear in G, so it is two ref_pair_weight calls: (u = g, v = g) plus (u = -a c g, v = a g);
 * the LR-LR weight a_i a_j c_i g_i g_j is one call (u = a c g, v = a g). Weights may be any
 * finite value, negative ones included.
 *
 * Gradients (s is the only path; the row max is a constant, which is exact), with
 * beta_i = dloss x loss_weight (x 0.5) / (mean_count |P_i|) for active anchors with positives,
 * sigma_ip = sigmoid(log S_i - s_ip), C_i = sum_{p in P_i} v_p sigma_ip (v = 1 by default):
 *   dL/ds_ip = -beta_i u_i v_p sigma_ip            (p in P_i)
 *   dL/ds_ik =  beta_i u_i C_i e^{s_ik - log S_i}   (k in N_i)
 *   dL/da_i = sum_j dL/ds_ij c_j / tau,  dL/dc_j = sum_i dL/ds_ij a_i / tau
 *   dL/du_i = beta_i sum_{p in P_i} v_p l_ip,  dL/dv_p = sum_{i : p in P_i} beta_i u_i l_ip.
 *
 * Computation: column tiles of tile_cols contrast rows; each tile product A C_t^T is one
 * cblas_sgemm into a [Ma, tile_cols] scratch buffer. Forward pass 1: running max and S_i
 * (rescaled when the max grows, double); pass 2: |P_i|, the positive terms and C_i (double).
 * Backward: recompute each tile, turn it into dL/ds in place, then d_anchor += dS C_t and
 * d_contrast[t] = dS^T A (two sgemms). Rows are owned by one OpenMP thread and visited in a
 * fixed tile order, so results are bit-identical for any OpenMP thread count.
 * Memory: scratch of cluda_contrastive_scratch_bytes (about 4 Ma tile_cols bytes + O(Ma + Mc)),
 * from ctx->scratch and released before returning; stats [Ma, 4] is saved for the backward.
 *
 * Backends: the CPU computes it here; a CUDA context dispatches to cuda/ops/contrastive.cu
 * (same tiles and statistics; all tensors in device memory). */
#ifndef CLUDA_CONTRASTIVE_H
#define CLUDA_CONTRASTIVE_H

#include <stddef.h>
#include <stdint.h>

#include "cluda/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cluda_cl_pairs {
  CLUDA_CL_PAIRS_SEPARATE = 0,  /* default: negatives from the anchor's own group */
  CLUDA_CL_PAIRS_ALL = 1,       /* every other valid class is a negative */
  CLUDA_CL_PAIRS_STUFF_ONLY = 2 /* separate, and only stuff anchors contribute */
} cluda_cl_pairs;

enum {
  CLUDA_CL_STATS_COLS = 4, /* stats row: log S_i, |P_i| (0: inactive), C_i, T_i */
  CLUDA_CL_DEFAULT_TILE_COLS = 512
};

typedef struct cluda_contrastive_params {
  float tau;               /* cl.tau > 0 (1.0) */
  float loss_weight;       /* cl.loss_weight (1.0) */
  cluda_cl_pairs pairs;    /* cl.pairs (SEPARATE) */
  int num_classes;         /* labels must be < num_classes or ignore_index (19) */
  int ignore_index;        /* 0..255 (255) */
  int ref_ignore_as_class; /* the ignore label is one more class (0) */
  int ref_pair_weight;     /* pair weight u_i v_j instead of the anchor weight u_i (0) */
  int ref_half;            /* extra x 0.5 of the reference (0) */
  int64_t mean_count;      /* global number of anchor rows; 0: Ma */
  int64_t self_offset;     /* anchor a is contrast row self_offset + a; -1: none (0) */
  int tile_cols;           /* contrast rows per tile; 0: CLUDA_CL_DEFAULT_TILE_COLS */
  uint8_t thing[256];      /* thing[c] = 1 for thing classes (Cityscapes 6, 7, 11..18) */
} cluda_contrastive_params;

/* The defaults above (decisions.md): tau 1, weight 1, SEPARATE, 19 classes, ignore 255, no
 * ref_ options, mean over the local rows, anchors = contrast set, Cityscapes thing classes. */
void cluda_contrastive_default_params(cluda_contrastive_params *p);

/* Sets the thing-class list (the others become stuff); classes must be in 0..255. */
cluda_status cluda_contrastive_set_things(cluda_contrastive_params *p, const int *classes, int n);

/* Scratch bytes forward/backward take from ctx->scratch for Ma anchors and Mc contrast rows
 * (the backward's extra buffer for d_contrast_weights is included when ref_pair_weight). */
size_t cluda_contrastive_scratch_bytes(const cluda_contrastive_params *p, int64_t num_anchors,
                                       int64_t num_contrast);

/* anchors [Ma, D] f32, anchor_labels [Ma] u8, anchor_weights [Ma] f32 or NULL (all 1);
 * contrast [Mc, D] f32, contrast_labels [Mc] u8, contrast_weights [Mc] f32 (only with
 * ref_pair_weight; NULL there is all 1). anchors and contrast may be the same tensor.
 * loss: 1 element (this rank's share). stats [Ma, CLUDA_CL_STATS_COLS] f32, saved for the
 * backward: log S_i, |P_i| (0 for inactive anchors), C_i, T_i = sum_p v_p l_ip (so T_i / |P_i|
 * is anchor i's loss before u_i and the scaling; without ref_pair_weight v = 1). */
cluda_status
cluda_contrastive_forward(cluda_ctx *ctx, const cluda_contrastive_params *p,
                          const cluda_tensor *anchors, const cluda_tensor *anchor_labels,
                          const cluda_tensor *anchor_weights, const cluda_tensor *contrast,
                          const cluda_tensor *contrast_labels, const cluda_tensor *contrast_weights,
                          cluda_tensor *loss, cluda_tensor *stats);

/* Same inputs and the forward's stats; dloss 1 element. Outputs (each may be NULL; all are
 * OVERWRITTEN, and must not overlap each other or the inputs):
 *   d_anchors [Ma, D]: the gradient through the anchor side;
 *   d_contrast [Mc, D]: through the contrast side (distributed: reduce-scatter with SUM, then
 *     add d_anchors; one process: add the two);
 *   d_anchor_weights [Ma]; d_contrast_weights [Mc] (ref_pair_weight only). */
cluda_status cluda_contrastive_backward(
    cluda_ctx *ctx, const cluda_contrastive_params *p, const cluda_tensor *anchors,
    const cluda_tensor *anchor_labels, const cluda_tensor *anchor_weights,
    const cluda_tensor *contrast, const cluda_tensor *contrast_labels,
    const cluda_tensor *contrast_weights, const cluda_tensor *stats, const cluda_tensor *dloss,
    cluda_tensor *d_anchors, cluda_tensor *d_contrast, cluda_tensor *d_anchor_weights,
    cluda_tensor *d_contrast_weights);

/* ---- data parallel: this rank's rows against the global batch (decisions.md 14) ---- */

/* Buffers of cluda_contrastive_rows_step for M rows of D dims on W ranks (caller-owned; the
 * gathered ones only when the scope is global and W > 1, else they may be NULL). */
typedef struct cluda_contrastive_buffers {
  float *stats;        /* [M, CLUDA_CL_STATS_COLS] */
  float *d_anchors;    /* [M, D] */
  float *all_rows;     /* [W M, D] */
  float *all_drows;    /* [W M, D] */
  float *all_weights;  /* [W M] (ref_pair_weight with weights only) */
  uint8_t *all_labels; /* [W M] */
} cluda_contrastive_buffers;

/* Forward and backward of the loss of this rank's rows [M, D] (L2-normalised), labels [M] and
 * anchor weights [M] (NULL: all 1; with ref_pair_weight they are also the contrast weights):
 *  - global = 1 and comm->size > 1: the contrast set is every rank's rows, labels (and pair
 *    weights), all-gathered rank-major; this rank's anchors are its block (self_offset =
 *    rank M). The gradient of this rank's rows through the contrast side is the reduce-scatter
 *    (SUM) of every rank's gradient w.r.t. the gathered rows (systems.md 2.2), to which the
 *    anchor-side gradient is added;
 *  - otherwise: the contrast set is this rank's own rows (one process, or cl.scope local).
 * Every rank normalises by M (p->mean_count is ignored), so with equal M on every rank the
 * AVERAGE of the ranks' *loss equals the loss of the whole global batch in one process, and
 * d_rows [M, D] (overwritten) is d(sum over ranks of *loss)/d(rows) — exactly what the
 * all-reduce average of parameter gradients needs. p->self_offset is ignored. Collective when
 * global and comm->size > 1. */
cluda_status cluda_contrastive_rows_step(cluda_ctx *ctx, struct cluda_comm *comm,
                                         const cluda_contrastive_params *p, int global,
                                         const cluda_tensor *rows, const cluda_tensor *labels,
                                         const cluda_tensor *weights,
                                         const cluda_contrastive_buffers *buf, double *loss,
                                         cluda_tensor *d_rows);

#ifdef __cplusplus
}
#endif
#endif

/* MiT efficient self-attention (SegFormer "Attention" with spatial reduction), composed from
 * the ops of ops.h so it runs on any backend:
 *   q = x Wq^T + bq
 *   if sr_ratio > 1: x' = LayerNorm_eps(Conv2d_{kernel = stride = r}(x))   (eps 1e-5)
 *   else:            x' = x
 *   [k | v] = x' Wkv^T + bkv         (first C outputs are K, next C are V)
 *   o = softmax(q k^T / sqrt(d)) v    per head, head h owns channels [h d, (h+1) d)
 *   y = o Wp^T + bp
 * x and y are [B, H, W, C] (tokens in row-major spatial order). */
#ifndef CLUDA_SR_ATTENTION_H
#define CLUDA_SR_ATTENTION_H

#include <stddef.h>

#include "cluda/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cluda_sr_attention_params {
  int channels;      /* C */
  int heads;         /* C % heads == 0 */
  int sr_ratio;      /* 1 (no reduction) or r > 1 */
  float sr_norm_eps; /* 1e-5 in MiT */
} cluda_sr_attention_params;

/* Parameters (or their gradients: the same layout). sr_* and norm_* are unused when
 * sr_ratio == 1. Shapes: q_w [C,C], q_b [C], kv_w [2C,C], kv_b [2C], sr_w [C,r,r,C] (OHWI),
 * sr_b [C], norm_w [C], norm_b [C], proj_w [C,C], proj_b [C]. */
typedef struct cluda_sr_attention_weights {
  cluda_tensor q_w, q_b;
  cluda_tensor kv_w, kv_b;
  cluda_tensor sr_w, sr_b;
  cluda_tensor norm_w, norm_b;
  cluda_tensor proj_w, proj_b;
} cluda_sr_attention_weights;

/* Bytes of the activation buffer the forward fills and the backward reads, and of the
 * scratch the backward needs from ctx->scratch, for an input of [batch, height, width, C]. */
cluda_status cluda_sr_attention_plan(const cluda_sr_attention_params *p, int batch, int height,
                                     int width, size_t *saved_bytes, size_t *scratch_bytes);

/* saved: a buffer of at least saved_bytes (from cluda_sr_attention_plan), on the backend's
 * device; the layout inside is private to the op. */
cluda_status cluda_sr_attention_forward(cluda_ctx *ctx, const cluda_sr_attention_params *p,
                                        const cluda_sr_attention_weights *w, const cluda_tensor *x,
                                        void *saved, size_t saved_bytes, cluda_tensor *y);

/* dx is overwritten; every tensor of grads is accumulated into (+=). */
cluda_status cluda_sr_attention_backward(cluda_ctx *ctx, const cluda_sr_attention_params *p,
                                         const cluda_sr_attention_weights *w, const cluda_tensor *x,
                                         const void *saved, size_t saved_bytes,
                                         const cluda_tensor *dy, cluda_tensor *dx,
                                         cluda_sr_attention_weights *grads);

#ifdef __cplusplus
}
#endif
#endif

/* Encoder + decode head glue. The activation buffer holds the encoder's block, a copy of
 * the four stage outputs and the head's block (64-byte aligned each); the backward takes the
 * four stage gradients from the scratch arena, below what the head and the encoder take. */
#include <stdio.h>
#include <string.h>

#include "cluda/segmentor.h"

enum { NUM_STAGES = 4 };

cluda_status cluda_segmentor_default_config(const char *encoder, cluda_head_kind head,
                                            cluda_segmentor_config *cfg) {
  const char *op = "segmentor_default_config";
  CLUDA_REQUIRE(encoder != NULL && cfg != NULL, CLUDA_ERR_ARG, "%s: encoder or cfg is NULL", op);
  CLUDA_REQUIRE(head == CLUDA_HEAD_DAFORMER || head == CLUDA_HEAD_SEGFORMER, CLUDA_ERR_ARG,
                "%s: head = %d is not a cluda_head_kind", op, (int)head);
  memset(cfg, 0, sizeof *cfg);
  CLUDA_TRY(cluda_mit_preset(encoder, &cfg->encoder));
  snprintf(cfg->encoder_name, sizeof cfg->encoder_name, "%s", encoder);
  cluda_head_default_config(head, cfg->encoder.embed_dims, &cfg->head);
  if (strcmp(encoder, "tiny") == 0) {
    /* model.md section 10: E = 64, Cf = 64 */
    cfg->head.embed_dims = 64;
    cfg->head.channels = 64;
  } else if (head == CLUDA_HEAD_SEGFORMER && strcmp(encoder, "b0") != 0 &&
             strcmp(encoder, "b1") != 0) {
    /* model.md section 3: E = 256 for B0/B1, 768 for B2-B5 */
    cfg->head.embed_dims = 768;
    cfg->head.channels = 768;
  }
  return cluda_ok();
}

cluda_status cluda_segmentor_create(cluda_segmentor *model, const cluda_segmentor_config *cfg) {
  const char *op = "segmentor_create";
  CLUDA_REQUIRE(model != NULL && cfg != NULL, CLUDA_ERR_ARG, "%s: model or cfg is NULL", op);
  memset(model, 0, sizeof *model);
  model->cfg = *cfg;
  /* the head reads the encoder's stage widths: fill them in, refuse a conflicting setting */
  for (int i = 0; i < NUM_STAGES; i++) {
    const int enc = cfg->encoder.embed_dims[i], hd = cfg->head.in_channels[i];
    CLUDA_REQUIRE(hd == 0 || hd == enc, CLUDA_ERR_ARG,
                  "%s: cfg->head.in_channels[%d] = %d differs from cfg->encoder.embed_dims[%d] = "
                  "%d",
                  op, i, hd, i, enc);
    model->cfg.head.in_channels[i] = enc;
  }
  cluda_param_table_init(&model->params);
  cluda_param_table_init(&model->state);
  cluda_status s =
      cluda_mit_declare(&model->encoder, &model->cfg.encoder, "backbone.", &model->params);
  if (s.code == CLUDA_OK)
    s = cluda_head_declare(&model->head, &model->cfg.head, "decode_head.", &model->params,
                           &model->state);
  if (s.code != CLUDA_OK) cluda_segmentor_free(model);
  return s;
}

void cluda_segmentor_free(cluda_segmentor *model) {
  if (!model) return;
  cluda_param_table_free(&model->params);
  cluda_param_table_free(&model->state);
  memset(model, 0, sizeof *model);
}

cluda_status cluda_segmentor_init(const cluda_segmentor *model, float *params, float *state,
                                  uint64_t seed) {
  const char *op = "segmentor_init";
  CLUDA_REQUIRE(model != NULL && params != NULL && state != NULL, CLUDA_ERR_ARG,
                "%s: model, params or state is NULL", op);
  /* both draw one stream per table index, so they never share draws */
  CLUDA_TRY(cluda_mit_init(&model->encoder, &model->params, params, seed));
  return cluda_head_init(&model->head, &model->params, params, &model->state, state, seed);
}

/* Bytes of one stage map [B, H_i, W_i, C_i], aligned. */
static size_t stage_bytes(const cluda_mit_plan *enc, const cluda_mit_config *cfg, int i) {
  return cluda_arena_align((size_t)enc->batch * enc->out_h[i] * enc->out_w[i] * cfg->embed_dims[i] *
                           sizeof(float));
}

/* Byte offsets inside the segmentor's activation buffer: the encoder's block, a copy of the
 * four stage outputs (the head backward reads them and the encoder does not say where they
 * sit in its block), then the head's block. */
typedef struct seg_layout {
  size_t stage[NUM_STAGES], head, total;
  size_t stage_grads; /* scratch bytes of the four stage gradients in the backward */
} seg_layout;

static seg_layout seg_layout_for(const cluda_segmentor *model, const cluda_segmentor_plan *plan) {
  seg_layout L;
  size_t at = cluda_arena_align(plan->encoder.activation_bytes);
  for (int i = 0; i < NUM_STAGES; i++) {
    L.stage[i] = at;
    at += stage_bytes(&plan->encoder, &model->cfg.encoder, i);
  }
  L.stage_grads = at - L.stage[0];
  L.head = at;
  L.total = at + cluda_arena_align(plan->head.activation_bytes);
  return L;
}

/* The four stage maps at byte offsets off[i] of base. */
static void stage_views(const cluda_segmentor *model, const cluda_segmentor_plan *plan,
                        const void *base, const size_t off[4], cluda_tensor out[4]) {
  const cluda_mit_plan *ep = &plan->encoder;
  for (int i = 0; i < NUM_STAGES; i++)
    out[i] = cluda_tensor_4d(CLUDA_F32, (char *)base + off[i], ep->batch, ep->out_h[i],
                             ep->out_w[i], model->cfg.encoder.embed_dims[i]);
}

cluda_status cluda_segmentor_plan_for(const cluda_segmentor *model, int batch, int height,
                                      int width, cluda_segmentor_plan *plan) {
  const char *op = "segmentor_plan_for";
  CLUDA_REQUIRE(model != NULL && plan != NULL, CLUDA_ERR_ARG, "%s: model or plan is NULL", op);
  memset(plan, 0, sizeof *plan);
  CLUDA_TRY(cluda_mit_plan_for(&model->encoder, batch, height, width, &plan->encoder));
  CLUDA_TRY(cluda_head_plan_for(&model->head, batch, plan->encoder.out_h, plan->encoder.out_w,
                                &plan->head));
  const seg_layout L = seg_layout_for(model, plan);
  plan->activation_bytes = L.total;
  const size_t enc = cluda_arena_align(plan->encoder.scratch_bytes);
  const size_t head = cluda_arena_align(plan->head.scratch_bytes);
  /* the stage gradients stay allocated while the head and then the encoder run */
  plan->scratch_bytes = L.stage_grads + (enc > head ? enc : head);
  plan->macs = plan->encoder.macs + plan->head.macs;
  return cluda_ok();
}

static cluda_status check_plan(const char *op, const cluda_segmentor *model,
                               const cluda_segmentor_plan *plan, seg_layout *L) {
  CLUDA_REQUIRE(model != NULL && plan != NULL, CLUDA_ERR_ARG, "%s: model or plan is NULL", op);
  *L = seg_layout_for(model, plan);
  CLUDA_REQUIRE(
      plan->activation_bytes >= L->total, CLUDA_ERR_ARG,
      "%s: plan->activation_bytes = %zu but the parts need %zu (cluda_segmentor_plan_for)", op,
      plan->activation_bytes, L->total);
  return cluda_ok();
}

cluda_status cluda_segmentor_forward(cluda_ctx *ctx, const cluda_segmentor *model,
                                     const cluda_segmentor_plan *plan, const float *params,
                                     float *state, const cluda_run_mode *mode,
                                     const cluda_tensor *x, void *acts,
                                     cluda_segmentor_outputs *out) {
  const char *op = "segmentor_forward";
  seg_layout L;
  CLUDA_TRY(check_plan(op, model, plan, &L));
  CLUDA_REQUIRE(acts != NULL && out != NULL, CLUDA_ERR_ARG, "%s: acts or out is NULL", op);
  CLUDA_TRY(cluda_mit_forward(ctx, &model->encoder, &plan->encoder, &model->params, params, mode, x,
                              acts, out->enc));
  cluda_tensor saved[NUM_STAGES];
  stage_views(model, plan, acts, L.stage, saved);
  for (int i = 0; i < NUM_STAGES; i++) {
    const cluda_tensor *one[1] = {&out->enc[i]};
    CLUDA_TRY(cluda_concat_forward(ctx, 1, one, &saved[i])); /* a copy */
  }
  return cluda_head_forward(ctx, &model->head, &plan->head, &model->params, params, &model->state,
                            state, mode, saved, (char *)acts + L.head, &out->fused, &out->logits);
}

/* The backward with the stage gradients carved from the scratch at `grad_base`. */
static cluda_status backward_body(cluda_ctx *ctx, const cluda_segmentor *model,
                                  const cluda_segmentor_plan *plan, const seg_layout *L,
                                  const float *params, float *grads, const float *state,
                                  const cluda_run_mode *mode, const cluda_tensor *x,
                                  const void *acts, const cluda_tensor *dlogits,
                                  const cluda_tensor *dfused, const cluda_tensor *const denc[4],
                                  cluda_tensor *dx, void *grad_base) {
  cluda_tensor saved[NUM_STAGES], dstage[NUM_STAGES];
  cluda_tensor *dstage_ptr[NUM_STAGES];
  const cluda_tensor *dout[NUM_STAGES];
  size_t grad_off[NUM_STAGES];
  for (int i = 0; i < NUM_STAGES; i++) {
    grad_off[i] = L->stage[i] - L->stage[0]; /* the same layout as the copies */
    dstage_ptr[i] = &dstage[i];
  }
  stage_views(model, plan, acts, L->stage, saved);
  stage_views(model, plan, grad_base, grad_off, dstage);
  const int through_head = dlogits != NULL || dfused != NULL;
  if (through_head)
    CLUDA_TRY(cluda_head_backward(ctx, &model->head, &plan->head, &model->params, params, grads,
                                  &model->state, state, mode, saved, (const char *)acts + L->head,
                                  dlogits, dfused, dstage_ptr));
  for (int i = 0; i < NUM_STAGES; i++) {
    const cluda_tensor *extra = denc ? denc[i] : NULL;
    if (through_head) {
      if (extra) CLUDA_TRY(cluda_axpy(ctx, 1.0f, extra, &dstage[i]));
      dout[i] = &dstage[i];
    } else {
      dout[i] = extra; /* no head gradient: the stage gradients go to the encoder as they are */
    }
  }
  return cluda_mit_backward(ctx, &model->encoder, &plan->encoder, &model->params, params, grads,
                            mode, x, acts, dout, dx);
}

cluda_status cluda_segmentor_backward(cluda_ctx *ctx, const cluda_segmentor *model,
                                      const cluda_segmentor_plan *plan, const float *params,
                                      float *grads, const float *state, const cluda_run_mode *mode,
                                      const cluda_tensor *x, const void *acts,
                                      const cluda_tensor *dlogits, const cluda_tensor *dfused,
                                      const cluda_tensor *const denc[4], cluda_tensor *dx) {
  const char *op = "segmentor_backward";
  seg_layout L;
  CLUDA_TRY(check_plan(op, model, plan, &L));
  CLUDA_REQUIRE(ctx != NULL && ctx->scratch != NULL, CLUDA_ERR_ARG,
                "%s: ctx or ctx->scratch is NULL", op);
  CLUDA_REQUIRE(acts != NULL, CLUDA_ERR_ARG, "%s: acts is NULL", op);
  int any = dlogits != NULL || dfused != NULL;
  for (int i = 0; denc && i < NUM_STAGES; i++)
    any |= denc[i] != NULL;
  CLUDA_REQUIRE(any, CLUDA_ERR_ARG, "%s: dlogits, dfused and denc are all NULL", op);
  for (int i = 0; denc && i < NUM_STAGES; i++) {
    if (!denc[i]) continue;
    char name[16], d[64];
    snprintf(name, sizeof name, "denc[%d]", i);
    CLUDA_TRY(cluda_check_tensor(op, name, denc[i], CLUDA_F32, 4));
    const cluda_mit_plan *ep = &plan->encoder;
    const cluda_tensor *t = denc[i];
    CLUDA_REQUIRE(t->shape[0] == ep->batch && t->shape[1] == ep->out_h[i] &&
                      t->shape[2] == ep->out_w[i] &&
                      t->shape[3] == model->cfg.encoder.embed_dims[i],
                  CLUDA_ERR_SHAPE, "%s: %s %s must be [%d, %d, %d, %d] (stage %d output)", op, name,
                  cluda_tensor_describe(t, d, sizeof d), ep->batch, ep->out_h[i], ep->out_w[i],
                  model->cfg.encoder.embed_dims[i], i + 1);
  }

  const size_t mark = cluda_arena_mark(ctx->scratch);
  void *grad_base = NULL;
  cluda_status s = cluda_arena_alloc(ctx->scratch, L.stage_grads, op, &grad_base);
  if (s.code == CLUDA_OK)
    s = backward_body(ctx, model, plan, &L, params, grads, state, mode, x, acts, dlogits, dfused,
                      denc, dx, grad_base);
  cluda_arena_release(ctx->scratch, mark); /* on failure too */
  return s;
}

/* The CLUDA training step. cluda_trainer_step reads top to bottom like the paper's Figure 1
 * in the backward order of algorithm.md 6.6; each stage is a small function below it. */
#include "cluda/trainer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluda/backend.h"
#include "cluda/ops.h"

/* Batch tensors, allocated once in init. B images per domain, crop H x W, logits at h x w
 * (stride 4), FD cells at H/32 x W/32, contrast map ch x cw. */
typedef struct cluda_trainer_buffers {
  int B, H, W, h, w, K, Cf, h32, w32, C4, ch, cw;
  uint8_t *render_rgb, *render_lbl; /* one image at the data size */
  float *src_img, *tgt_img, *mix_img;
  uint8_t *src_lbl, *pl_lbl, *mix_lbl, *mix_mask, *valid;
  float *pl_weight, *mix_weight;
  float *up, *dup, *dlogits; /* logits at label size and the gradients */
  float *loss, *count, *dloss;
  uint8_t *fd_lbl, *fd_mask;
  float *dfd;
  float *cl_feat, *cl_unit, *cl_norms, *cl_weight, *cl_stats, *cl_da, *cl_dc, *cl_dunit;
  uint8_t *cl_lbl;
  /* the global contrast set (cl.scope global over several ranks): gathered rows, labels,
   * weights and the gradient w.r.t. the gathered rows */
  float *cl_all_rows, *cl_all_weight, *cl_all_drows;
  uint8_t *cl_all_lbl;
  float *dfused;
} cluda_trainer_buffers;

/* Which pass a dropout key belongs to: the iteration word is 2 t + pass, so the source and
 * mixed student forwards of one iteration draw different masks. */
enum { PASS_SOURCE = 0, PASS_MIXED = 1 };

static cluda_rng_key pass_key(const cluda_trainer *t, int64_t it, int pass) {
  return cluda_rng_make_key(t->s.seed, 0, (uint32_t)(2 * it + pass), CLUDA_RNG_DROPOUT, 0);
}

/* ---------------------------------------------------------------------------------------
 * Optional per-stage timing (t->stage_seconds; trainer.h)
 * --------------------------------------------------------------------------------------- */

const char *cluda_train_stage_name(int stage) {
  static const char *const names[CLUDA_TRAIN_STAGES] = {"ema",     "data",    "src_fwd", "fd",
                                                        "cl_src",  "src_bwd", "teacher", "mix_aug",
                                                        "mix_fwd", "cl_mix",  "mix_bwd", "optim"};
  return stage >= 0 && stage < CLUDA_TRAIN_STAGES ? names[stage] : "?";
}

static double mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Adds the time since *mark to `stage` and moves *mark to now; nothing when timing is off. */
static void stage_lap(cluda_trainer *t, int stage, double *mark) {
  if (!t->stage_seconds) return;
  double now = mono_now();
  t->stage_seconds[stage] += now - *mark;
  *mark = now;
}

static double stage_start(const cluda_trainer *t) { return t->stage_seconds ? mono_now() : 0.0; }

/* ---------------------------------------------------------------------------------------
 * Data: synthetic scenes, random crop and flip, normalisation
 * --------------------------------------------------------------------------------------- */

cluda_status cluda_trainer_render(const cluda_train_settings *s, cluda_synth_domain domain,
                                  cluda_synth_split split, uint64_t index, float *image,
                                  uint8_t *labels) {
  const cluda_synth_config *cfg = domain == CLUDA_SYNTH_SOURCE ? &s->source_data : &s->target_data;
  size_t n = (size_t)cfg->height * (size_t)cfg->width;
  uint8_t *rgb = malloc(n * 3);
  CLUDA_REQUIRE(rgb != NULL, CLUDA_ERR_ALLOC, "trainer_render: out of memory");
  cluda_status st = cluda_synth_render(cfg, split, index, rgb, labels);
  if (st.code == CLUDA_OK)
    for (size_t p = 0; p < n; p++)
      for (int c = 0; c < 3; c++)
        image[p * 3 + c] =
            ((float)rgb[p * 3 + c] - cluda_dacs_image_mean[c]) / cluda_dacs_image_std[c];
  free(rgb);
  return st;
}

/* Copies the crop at (y0, x0) of the rendered image, flipped when asked, into slot `b`. */
static void crop_into(const cluda_trainer_buffers *bf, const cluda_synth_config *cfg, int y0,
                      int x0, int flip, float *img, uint8_t *lbl, int b) {
  for (int y = 0; y < bf->H; y++)
    for (int x = 0; x < bf->W; x++) {
      int sx = x0 + (flip ? bf->W - 1 - x : x);
      size_t src = (size_t)(y0 + y) * (size_t)cfg->width + (size_t)sx;
      size_t dst = ((size_t)b * (size_t)bf->H + (size_t)y) * (size_t)bf->W + (size_t)x;
      lbl[dst] = bf->render_lbl[src];
      for (int c = 0; c < 3; c++)
        img[dst * 3 + c] = ((float)bf->render_rgb[src * 3 + c] - cluda_dacs_image_mean[c]) /
                           cluda_dacs_image_std[c];
    }
}

static int64_t count_in_crop(const cluda_trainer_buffers *bf, const cluda_synth_config *cfg, int y0,
                             int x0, int class_id) {
  int64_t n = 0;
  for (int y = 0; y < bf->H; y++)
    for (int x = 0; x < bf->W; x++)
      n += bf->render_lbl[(size_t)(y0 + y) * (size_t)cfg->width + (size_t)(x0 + x)] == class_id;
  return n;
}

/* Sample b of a domain at iteration it: image choice (RCS or uniform), crop, flip. Draws
 * come from the data stream (slot = domain) at indices 8 g + k, g = the sample's global
 * index first_sample + b. */
static cluda_status load_sample(cluda_trainer *t, cluda_synth_domain domain, int64_t it, int b,
                                float *img, uint8_t *lbl) {
  cluda_trainer_buffers *bf = t->buf;
  const cluda_synth_config *cfg =
      domain == CLUDA_SYNTH_SOURCE ? &t->s.source_data : &t->s.target_data;
  cluda_rng_key key = cluda_rng_make_key(t->s.seed, 0, (uint32_t)it, CLUDA_RNG_DATA, domain);
  const uint64_t g = t->first_sample + (uint64_t)b, d = 8 * g;
  int image = 0, rare_class = -1;
  if (domain == CLUDA_SYNTH_SOURCE && t->rcs_created) {
    cluda_rng_key rkey = cluda_rng_make_key(t->s.seed, 0, (uint32_t)it, CLUDA_RNG_DATA, 2);
    CLUDA_TRY(cluda_rcs_sample(&t->rcs, rkey, g, &rare_class, &image));
  } else {
    uint32_t bits[4];
    cluda_rng_bits(key, d, bits);
    image = (int)(bits[0] % (uint32_t)t->s.train_images);
  }
  CLUDA_TRY(
      cluda_synth_render(cfg, CLUDA_SYNTH_TRAIN, (uint64_t)image, bf->render_rgb, bf->render_lbl));
  /* RCS re-crops the same image up to 10 times until the rare class is present enough. */
  int y0 = 0, x0 = 0, tries = rare_class >= 0 ? 10 : 1;
  for (int k = 0; k < tries; k++) {
    y0 = (int)(cluda_rng_uniform(key, d + 1 + (uint64_t)k * 16) * (float)(cfg->height - bf->H + 1));
    x0 = (int)(cluda_rng_uniform(key, d + 2 + (uint64_t)k * 16) * (float)(cfg->width - bf->W + 1));
    if (rare_class < 0 ||
        (double)count_in_crop(bf, cfg, y0, x0, rare_class) > 0.5 * (double)t->s.rcs_min_pixels)
      break;
  }
  int flip = t->s.flip && cluda_rng_uniform(key, d + 3) < 0.5f;
  crop_into(bf, cfg, y0, x0, flip, img, lbl, b);
  return cluda_ok();
}

/* The target labels land in pl_lbl only to be overwritten by the pseudo-labels. */
static cluda_status load_batches(cluda_trainer *t, int64_t it) {
  cluda_trainer_buffers *bf = t->buf;
  CLUDA_REQUIRE(t->s.source_synthetic || t->source.get, CLUDA_ERR_ARG,
                "trainer_step: data.source is a data set but no sample source is attached");
  CLUDA_REQUIRE(!t->s.uda || t->s.target_synthetic || t->target.get, CLUDA_ERR_ARG,
                "trainer_step: data.target is a data set but no sample source is attached");
  if (t->source.get) CLUDA_TRY(t->source.get(t->source.ctx, it, bf->src_img, bf->src_lbl));
  if (t->s.uda && t->target.get)
    CLUDA_TRY(t->target.get(t->target.ctx, it, bf->tgt_img, bf->pl_lbl));
  for (int b = 0; b < bf->B; b++) {
    if (!t->source.get)
      CLUDA_TRY(load_sample(t, CLUDA_SYNTH_SOURCE, it, b, bf->src_img, bf->src_lbl));
    if (t->s.uda && !t->target.get)
      CLUDA_TRY(load_sample(t, CLUDA_SYNTH_TARGET, it, b, bf->tgt_img, bf->pl_lbl));
  }
  return cluda_ok();
}

/* ---------------------------------------------------------------------------------------
 * Loss terms. Each fills a gradient buffer for the backward and returns its value.
 * --------------------------------------------------------------------------------------- */

static cluda_tensor t4(void *p, cluda_dtype dt, int n, int h, int w, int c) {
  return cluda_tensor_4d(dt, p, n, h, w, c);
}

/* Non-finite loss terms stop the run (the test hook poisons one on purpose). */
static cluda_status check_term(const cluda_trainer *t, int64_t it, const char *term,
                               double *value) {
  if (t->hooks.nan_term && t->hooks.nan_iteration == it && !strcmp(t->hooks.nan_term, term))
    *value = NAN;
  CLUDA_REQUIRE(isfinite(*value), CLUDA_ERR_ARG,
                "training stopped at iteration %lld: loss term %s is %s", (long long)it, term,
                isnan(*value) ? "NaN" : "infinite");
  return cluda_ok();
}

/* CE of logits upsampled x4 (bilinear, align_corners False) against labels, with optional
 * per-pixel weights; dlogits receives the gradient (algorithm.md 1.9). */
static cluda_status cross_entropy(cluda_trainer *t, cluda_ctx *ctx, const cluda_tensor *logits,
                                  const uint8_t *labels, const float *weights, double *value) {
  cluda_trainer_buffers *bf = t->buf;
  cluda_tensor up = t4(bf->up, CLUDA_F32, bf->B, bf->H, bf->W, bf->K);
  cluda_tensor dup = t4(bf->dup, CLUDA_F32, bf->B, bf->H, bf->W, bf->K);
  cluda_tensor lbl = cluda_tensor_3d(CLUDA_U8, (void *)labels, bf->B, bf->H, bf->W);
  cluda_tensor wt = cluda_tensor_3d(CLUDA_F32, (void *)weights, bf->B, bf->H, bf->W);
  cluda_tensor loss = cluda_tensor_1d(CLUDA_F32, bf->loss, 1);
  cluda_tensor dloss = cluda_tensor_1d(CLUDA_F32, bf->dloss, 1);
  cluda_tensor dlogits = t4(bf->dlogits, CLUDA_F32, bf->B, bf->h, bf->w, bf->K);
  CLUDA_TRY(cluda_resize_bilinear_forward(ctx, 0, logits, &up));
  CLUDA_TRY(
      cluda_cross_entropy_forward(ctx, &up, &lbl, weights ? &wt : NULL, CLUDA_IGNORE_LABEL, &loss));
  *value = bf->loss[0];
  bf->dloss[0] = 1.0f;
  CLUDA_TRY(cluda_cross_entropy_backward(ctx, &up, &lbl, weights ? &wt : NULL, CLUDA_IGNORE_LABEL,
                                         &dloss, &dup));
  return cluda_resize_bilinear_backward(ctx, 0, &dup, &dlogits);
}

/* Thing-class feature distance between the student's and the frozen ImageNet encoder's last
 * stage on the source image (algorithm.md 3). *active = 0 when no cell qualifies: the term
 * is skipped (decisions.md 19) and dfd is not used. */
static cluda_status feature_distance(cluda_trainer *t, cluda_ctx *ctx, const cluda_tensor *x,
                                     const cluda_tensor *student_f4, double *value, int64_t *cells,
                                     int *active) {
  cluda_trainer_buffers *bf = t->buf;
  cluda_run_mode eval = {0, 0, pass_key(t, 0, PASS_SOURCE), t->first_sample};
  cluda_tensor imnet_out[4];
  CLUDA_TRY(cluda_mit_forward(ctx, &t->model.encoder, &t->plan.encoder, &t->model.params, t->imnet,
                              &eval, x, t->imnet_acts, imnet_out));
  cluda_tensor lbl = cluda_tensor_3d(CLUDA_U8, bf->src_lbl, bf->B, bf->H, bf->W);
  cluda_tensor cell = cluda_tensor_3d(CLUDA_U8, bf->fd_lbl, bf->B, bf->h32, bf->w32);
  cluda_tensor mask = cluda_tensor_3d(CLUDA_U8, bf->fd_mask, bf->B, bf->h32, bf->w32);
  CLUDA_TRY(cluda_dacs_downscale_label(&lbl, bf->H / bf->h32, bf->K, t->s.fd_min_ratio, &cell));
  CLUDA_TRY(cluda_dacs_class_mask(&cell, t->s.fd_classes, t->s.fd_class_count, &mask));
  cluda_tensor loss = cluda_tensor_1d(CLUDA_F32, bf->loss, 1);
  cluda_tensor count = cluda_tensor_1d(CLUDA_F32, bf->count, 1);
  CLUDA_TRY(cluda_feature_distance_forward(ctx, student_f4, &imnet_out[3], &mask, &loss, &count));
  /* The mean is over the thing cells of the GLOBAL batch: this rank's term is its cell sum
   * times W / (global cells), so the ranks' average is the global mean (and so are the
   * averaged gradients). */
  const int64_t local = (int64_t)bf->count[0];
  int64_t global = local;
  CLUDA_TRY(cluda_comm_allreduce(t->comm, &global, &global, 1, CLUDA_COMM_I64, CLUDA_COMM_SUM));
  *cells = global;
  *active = global > 0;
  const double share = global > 0 ? (double)local * t->comm->size / (double)global : 0.0;
  *value = *active ? (double)t->s.fd_lambda * bf->loss[0] * share : 0.0;
  if (!*active || local == 0) return cluda_ok(); /* no cell here: no gradient from FD */
  bf->dloss[0] = (float)((double)t->s.fd_lambda * share);
  cluda_tensor dloss = cluda_tensor_1d(CLUDA_F32, bf->dloss, 1);
  cluda_tensor dfd = t4(bf->dfd, CLUDA_F32, bf->B, bf->h32, bf->w32, bf->C4);
  return cluda_feature_distance_backward(ctx, student_f4, &imnet_out[3], &mask, &dloss, &dfd, NULL);
}

/* The reference's row-ordering quirk (algorithm.md 6.3 "Row-ordering quirk", decisions.md 9):
 * features pixel-major, labels/weights batch-major; here a permutation of the label and
 * weight rows only (the features and their gradients keep their order). */
void cluda_ref_row_order_permute(int B, int64_t N, const uint8_t *labels, uint8_t *labels_out,
                                 const float *weights, float *weights_out) {
  for (int b = 0; b < B; b++)
    for (int64_t k = 0; k < N; k++) {
      int64_t dst = (int64_t)b * N + k, src = k * B + b;
      labels_out[dst] = labels[src];
      if (weights) weights_out[dst] = weights[src];
    }
}

/* Pixel-contrastive loss on the fused features (paper Eq. 2-5, decisions.md 3-14): resize to
 * cl.size (bilinear, align_corners True), L2-normalise, labels by legacy nearest, anchor
 * weights (may be NULL) resized like the features; dfused receives the gradient. */
static cluda_status contrastive(cluda_trainer *t, cluda_ctx *ctx, const cluda_tensor *fused,
                                const uint8_t *labels, const float *weights, double *value) {
  cluda_trainer_buffers *bf = t->buf;
  const int B = bf->B, ch = bf->ch, cw = bf->cw, C = bf->Cf, M = B * ch * cw;
  cluda_tensor feat = t4(bf->cl_feat, CLUDA_F32, B, ch, cw, C);
  cluda_tensor unit = t4(bf->cl_unit, CLUDA_F32, B, ch, cw, C);
  cluda_tensor norms = cluda_tensor_1d(CLUDA_F32, bf->cl_norms, M);
  CLUDA_TRY(cluda_resize_bilinear_forward(ctx, 1, fused, &feat));
  CLUDA_TRY(cluda_l2norm_forward(ctx, 1e-12f, &feat, &unit, &norms));
  cluda_tensor lbl_full = t4((void *)labels, CLUDA_U8, B, bf->H, bf->W, 1);
  cluda_tensor lbl_small = t4(bf->cl_lbl, CLUDA_U8, B, ch, cw, 1);
  CLUDA_TRY(cluda_resize_nearest_forward(ctx, &lbl_full, &lbl_small));
  if (weights) {
    cluda_tensor w_full = t4((void *)weights, CLUDA_F32, B, bf->H, bf->W, 1);
    cluda_tensor w_small = t4(bf->cl_weight, CLUDA_F32, B, ch, cw, 1);
    CLUDA_TRY(cluda_resize_bilinear_forward(ctx, 1, &w_full, &w_small));
  }
  if (t->s.cl_ref_row_order && B > 1) {
    /* cl_da and cl_dc are not used before the backward: scratch for the unpermuted rows. */
    float *w_tmp = bf->cl_da;
    uint8_t *lbl_tmp = (uint8_t *)bf->cl_dc;
    memcpy(lbl_tmp, bf->cl_lbl, (size_t)M);
    if (weights) memcpy(w_tmp, bf->cl_weight, (size_t)M * sizeof *w_tmp);
    cluda_ref_row_order_permute(B, (int64_t)ch * cw, lbl_tmp, bf->cl_lbl, weights ? w_tmp : NULL,
                                bf->cl_weight);
  }
  /* The contrast set: this rank's rows, or (cl.scope global) every rank's (decisions.md 14). */
  cluda_tensor rows = cluda_tensor_2d(CLUDA_F32, bf->cl_unit, M, C);
  cluda_tensor rlbl = cluda_tensor_1d(CLUDA_U8, bf->cl_lbl, M);
  cluda_tensor rw = cluda_tensor_1d(CLUDA_F32, bf->cl_weight, M);
  cluda_tensor dc = cluda_tensor_2d(CLUDA_F32, bf->cl_dc, M, C);
  cluda_contrastive_buffers cb = {bf->cl_stats,     bf->cl_da,         bf->cl_all_rows,
                                  bf->cl_all_drows, bf->cl_all_weight, bf->cl_all_lbl};
  CLUDA_TRY(cluda_contrastive_rows_step(ctx, t->comm, &t->s.cl, t->s.cl_scope_global, &rows, &rlbl,
                                        weights ? &rw : NULL, &cb, value, &dc));
  cluda_tensor dunit = t4(bf->cl_dc, CLUDA_F32, B, ch, cw, C);
  cluda_tensor dfeat = t4(bf->cl_dunit, CLUDA_F32, B, ch, cw, C);
  CLUDA_TRY(cluda_l2norm_backward(ctx, 1e-12f, &feat, &norms, &dunit, &dfeat));
  cluda_tensor dfused = t4(bf->dfused, CLUDA_F32, B, bf->h, bf->w, C);
  return cluda_resize_bilinear_backward(ctx, 1, &dfeat, &dfused);
}

/* ---------------------------------------------------------------------------------------
 * Stages of the step
 * --------------------------------------------------------------------------------------- */

/* EMA teacher at the start of iteration t (copy at t = 0; algorithm.md 1.3). */
static cluda_status ema_teacher(cluda_trainer *t, int64_t it, cluda_step_stats *st) {
  st->ema_alpha = it == 0 ? 0.0 : cluda_ema_alpha(it, t->s.ema_alpha);
  return cluda_ema_update(&t->model.params, t->teacher, t->student, it, t->s.ema_alpha);
}

/* Student forward on the source crop, CE + FD + source CL, and their backward together
 * (algorithm.md 6.6 steps 2-4). */
static cluda_status source_terms(cluda_trainer *t, cluda_ctx *ctx, int64_t it,
                                 cluda_step_stats *st) {
  cluda_trainer_buffers *bf = t->buf;
  cluda_run_mode train = {1, 1, pass_key(t, it, PASS_SOURCE), t->first_sample};
  cluda_tensor x = t4(bf->src_img, CLUDA_F32, bf->B, bf->H, bf->W, 3);
  cluda_segmentor_outputs out;
  double mark = stage_start(t);
  CLUDA_TRY(cluda_segmentor_forward(ctx, &t->model, &t->plan, t->student, t->student_state, &train,
                                    &x, t->acts, &out));
  int ce = t->s.source_ce, fd = 0, cl = t->s.cl_source;
  if (ce) {
    CLUDA_TRY(cross_entropy(t, ctx, &out.logits, bf->src_lbl, NULL, &st->loss_src));
    CLUDA_TRY(check_term(t, it, "loss_src", &st->loss_src));
  }
  stage_lap(t, CLUDA_STAGE_SRC_FWD, &mark);
  if (t->s.fd_lambda > 0) {
    CLUDA_TRY(feature_distance(t, ctx, &x, &out.enc[3], &st->loss_fd, &st->fd_cells, &fd));
    st->fd_active = fd;
    CLUDA_TRY(check_term(t, it, "loss_fd", &st->loss_fd));
    stage_lap(t, CLUDA_STAGE_FD, &mark);
  }
  if (cl) {
    CLUDA_TRY(contrastive(t, ctx, &out.fused, bf->src_lbl, NULL, &st->loss_cl_src));
    CLUDA_TRY(check_term(t, it, "loss_cl_src", &st->loss_cl_src));
    stage_lap(t, CLUDA_STAGE_CL_SRC, &mark);
  }
  if (!ce && !cl && !fd) return cluda_ok();
  cluda_tensor dlogits = t4(bf->dlogits, CLUDA_F32, bf->B, bf->h, bf->w, bf->K);
  cluda_tensor dfused = t4(bf->dfused, CLUDA_F32, bf->B, bf->h, bf->w, bf->Cf);
  cluda_tensor dfd = t4(bf->dfd, CLUDA_F32, bf->B, bf->h32, bf->w32, bf->C4);
  const cluda_tensor *denc[4] = {NULL, NULL, NULL, fd ? &dfd : NULL};
  if (!ce && !cl) { /* FD alone: the head gets a zero logit gradient */
    memset(bf->dlogits, 0, (size_t)bf->B * bf->h * bf->w * bf->K * sizeof(float));
    ce = 1;
  }
  CLUDA_TRY(cluda_segmentor_backward(ctx, &t->model, &t->plan, t->student, t->grads,
                                     t->student_state, &train, &x, t->acts, ce ? &dlogits : NULL,
                                     cl ? &dfused : NULL, denc, NULL));
  stage_lap(t, CLUDA_STAGE_SRC_BWD, &mark);
  return cluda_ok();
}

/* Teacher pseudo-labels on the target crop, the confidence weight Gamma (paper Eq. 4) and
 * the pixel weights with margins (algorithm.md 1.4-1.5). */
static cluda_status pseudo_labels(cluda_trainer *t, cluda_ctx *ctx, int64_t it,
                                  cluda_step_stats *st) {
  cluda_trainer_buffers *bf = t->buf;
  cluda_run_mode teach = {0, t->s.teacher_bn_batch, pass_key(t, it, PASS_SOURCE), t->first_sample};
  cluda_tensor x = t4(bf->tgt_img, CLUDA_F32, bf->B, bf->H, bf->W, 3);
  cluda_segmentor_outputs out;
  CLUDA_TRY(cluda_segmentor_forward(ctx, &t->model, &t->plan, t->teacher, t->teacher_state, &teach,
                                    &x, t->acts, &out));
  cluda_tensor up = t4(bf->up, CLUDA_F32, bf->B, bf->H, bf->W, bf->K);
  CLUDA_TRY(cluda_resize_bilinear_forward(ctx, 0, &out.logits, &up));
  cluda_tensor lbl = cluda_tensor_3d(CLUDA_U8, bf->pl_lbl, bf->B, bf->H, bf->W);
  int64_t confident = 0, total = 0;
  CLUDA_TRY(cluda_dacs_pseudo_label(&up, t->s.pseudo_threshold, &lbl, NULL, &confident, &total));
  /* Gamma over the global batch (decisions.md 10): the counts of every rank. */
  if (!t->s.ref_local_gamma) {
    int64_t counts[2] = {confident, total};
    CLUDA_TRY(cluda_comm_allreduce(t->comm, counts, counts, 2, CLUDA_COMM_I64, CLUDA_COMM_SUM));
    confident = counts[0];
    total = counts[1];
  }
  st->gamma = cluda_dacs_gamma(confident, total);
  cluda_tensor valid = cluda_tensor_3d(CLUDA_U8, bf->valid, bf->B, bf->H, bf->W);
  int margins = t->s.ignore_top > 0 || t->s.ignore_bottom > 0;
  if (margins) CLUDA_TRY(cluda_dacs_margin_mask(t->s.ignore_top, t->s.ignore_bottom, &valid));
  cluda_tensor w = cluda_tensor_3d(CLUDA_F32, bf->pl_weight, bf->B, bf->H, bf->W);
  return cluda_dacs_pseudo_weight((float)st->gamma, margins ? &valid : NULL, &w);
}

/* ClassMix over the batch's source classes, then colour jitter and blur of the mixed image
 * (algorithm.md 1.6-1.7). */
static cluda_status class_mix(cluda_trainer *t, int64_t it) {
  cluda_trainer_buffers *bf = t->buf;
  int B = bf->B, H = bf->H, W = bf->W;
  cluda_tensor src_lbl = cluda_tensor_3d(CLUDA_U8, bf->src_lbl, B, H, W);
  cluda_tensor pl_lbl = cluda_tensor_3d(CLUDA_U8, bf->pl_lbl, B, H, W);
  cluda_tensor mix_lbl = cluda_tensor_3d(CLUDA_U8, bf->mix_lbl, B, H, W);
  cluda_tensor mask = cluda_tensor_3d(CLUDA_U8, bf->mix_mask, B, H, W);
  cluda_tensor src = t4(bf->src_img, CLUDA_F32, B, H, W, 3);
  cluda_tensor tgt = t4(bf->tgt_img, CLUDA_F32, B, H, W, 3);
  cluda_tensor mix = t4(bf->mix_img, CLUDA_F32, B, H, W, 3);
  cluda_tensor pl_w = cluda_tensor_3d(CLUDA_F32, bf->pl_weight, B, H, W);
  cluda_tensor mix_w = cluda_tensor_3d(CLUDA_F32, bf->mix_weight, B, H, W);
  cluda_rng_key key =
      cluda_rng_make_key(t->s.seed, 0, (uint32_t)it, CLUDA_RNG_AUGMENT, CLUDA_DACS_SLOT_CLASSMIX);
  /* the classes of the global batch's source labels (every rank's flags, max-reduced) */
  uint8_t classes[256];
  int count = 0;
  CLUDA_TRY(cluda_dacs_batch_classes(&src_lbl, classes, &count));
  CLUDA_TRY(cluda_comm_allreduce(t->comm, classes, classes, 256, CLUDA_COMM_U8, CLUDA_COMM_MAX));
  CLUDA_TRY(cluda_dacs_classmix_masks(&src_lbl, classes, key, t->first_sample, &mask, NULL));
  CLUDA_TRY(cluda_dacs_classmix_apply(&mask, &src, &tgt, &mix, &src_lbl, &pl_lbl, &mix_lbl, &pl_w,
                                      &mix_w));
  return cluda_dacs_strong_augment(&t->s.aug, t->s.seed, (uint32_t)t->first_sample, (uint32_t)it,
                                   &t->scratch, &mix, NULL);
}

/* Student forward on the mixed image, weighted CE + mixed CL (target anchors x Gamma,
 * decisions.md 11), one backward (algorithm.md 6.6 step 6). */
static cluda_status mixed_terms(cluda_trainer *t, cluda_ctx *ctx, int64_t it,
                                cluda_step_stats *st) {
  cluda_trainer_buffers *bf = t->buf;
  cluda_run_mode train = {1, 1, pass_key(t, it, PASS_MIXED), t->first_sample};
  cluda_tensor x = t4(bf->mix_img, CLUDA_F32, bf->B, bf->H, bf->W, 3);
  cluda_segmentor_outputs out;
  double mark = stage_start(t);
  CLUDA_TRY(cluda_segmentor_forward(ctx, &t->model, &t->plan, t->student, t->student_state, &train,
                                    &x, t->acts, &out));
  CLUDA_TRY(cross_entropy(t, ctx, &out.logits, bf->mix_lbl, bf->mix_weight, &st->loss_mix));
  CLUDA_TRY(check_term(t, it, "loss_mix", &st->loss_mix));
  stage_lap(t, CLUDA_STAGE_MIX_FWD, &mark);
  int cl = t->s.cl_mix;
  if (cl) {
    const float *w = t->s.cl_mix_weighted ? bf->mix_weight : NULL;
    CLUDA_TRY(contrastive(t, ctx, &out.fused, bf->mix_lbl, w, &st->loss_cl_mix));
    CLUDA_TRY(check_term(t, it, "loss_cl_mix", &st->loss_cl_mix));
    stage_lap(t, CLUDA_STAGE_CL_MIX, &mark);
  }
  cluda_tensor dlogits = t4(bf->dlogits, CLUDA_F32, bf->B, bf->h, bf->w, bf->K);
  cluda_tensor dfused = t4(bf->dfused, CLUDA_F32, bf->B, bf->h, bf->w, bf->Cf);
  const cluda_tensor *denc[4] = {NULL, NULL, NULL, NULL};
  CLUDA_TRY(cluda_segmentor_backward(ctx, &t->model, &t->plan, t->student, t->grads,
                                     t->student_state, &train, &x, t->acts, &dlogits,
                                     cl ? &dfused : NULL, denc, NULL));
  stage_lap(t, CLUDA_STAGE_MIX_BWD, &mark);
  return cluda_ok();
}

/* Stops on a non-finite gradient, naming the iteration and the terms behind it. */
static cluda_status check_gradients(const cluda_trainer *t, int64_t it, const char *terms) {
  int bad = -1;
  cluda_status s = cluda_grad_check_finite(&t->model.params, t->grads, &bad, NULL);
  if (s.code == CLUDA_OK) return s;
  return CLUDA_FAIL(CLUDA_ERR_ARG, "training stopped at iteration %lld: gradient of %s: %s",
                    (long long)it, terms, s.message);
}

/* Data parallel: the gradient of the global batch is the average of the ranks' gradients
 * (each rank's loss terms are scaled so that their average is the global loss), and the logged
 * losses are the global batch's. */
static cluda_status average_over_ranks(cluda_trainer *t, cluda_step_stats *st) {
  if (t->comm->size == 1) return cluda_ok();
  CLUDA_TRY(cluda_comm_allreduce(t->comm, t->grads, t->grads, t->model.params.total, CLUDA_COMM_F32,
                                 CLUDA_COMM_AVG));
  double v[6] = {st->loss_src, st->loss_fd,     st->loss_cl_src,
                 st->loss_mix, st->loss_cl_mix, st->gamma};
  CLUDA_TRY(cluda_comm_allreduce(t->comm, v, v, 6, CLUDA_COMM_F64, CLUDA_COMM_AVG));
  st->loss_src = v[0];
  st->loss_fd = v[1];
  st->loss_cl_src = v[2];
  st->loss_mix = v[3];
  st->loss_cl_mix = v[4];
  st->gamma = v[5];
  return cluda_ok();
}

/* AdamW with the scheduled lrs of iteration t (algorithm.md 4.1-4.2). */
static cluda_status optimizer_step(cluda_trainer *t, int64_t it, cluda_step_stats *st) {
  double lrs[CLUDA_OPTIM_GROUPS];
  CLUDA_TRY(cluda_lr_group_lrs(&t->s.schedule, &t->s.adamw, it, lrs));
  st->lr = lrs[0];
  if (t->s.grad_clip > 0)
    CLUDA_TRY(cluda_grad_clip(&t->model.params, t->grads, t->s.grad_clip, &st->grad_norm));
  else
    CLUDA_TRY(cluda_grad_norm(&t->model.params, t->grads, &st->grad_norm));
  return cluda_adamw_step(&t->opt, &t->model.params, t->student, t->grads, lrs);
}

/* One iteration: paper Figure 1 in the order of algorithm.md 6.6. */
cluda_status cluda_trainer_step(cluda_trainer *t, cluda_step_stats *stats) {
  CLUDA_REQUIRE(t != NULL && t->buf != NULL, CLUDA_ERR_ARG,
                "trainer_step: trainer not initialised");
  const int64_t it = t->iteration;
  CLUDA_REQUIRE(it < t->s.max_iters, CLUDA_ERR_ARG,
                "trainer_step: iteration %lld is past train.max_iters = %lld", (long long)it,
                (long long)t->s.max_iters);
  cluda_step_stats st;
  memset(&st, 0, sizeof st);
  st.iteration = it;
  st.gamma = NAN;
  cluda_ctx ctx = cluda_cpu_context(&t->scratch);
  if (t->s.sync_bn && t->comm->size > 1) ctx.bn_sync = t->comm; /* decisions.md 22 */

  double mark = stage_start(t);                     /* timing off: stage_lap does nothing */
  if (t->s.uda) CLUDA_TRY(ema_teacher(t, it, &st)); /* 1. EMA teacher      */
  stage_lap(t, CLUDA_STAGE_EMA, &mark);
  CLUDA_TRY(load_batches(t, it)); /*    source + target  */
  stage_lap(t, CLUDA_STAGE_DATA, &mark);
  CLUDA_TRY(cluda_grad_zero(&t->model.params, t->grads));
  stage_lap(t, CLUDA_STAGE_OPTIM, &mark);
  CLUDA_TRY(source_terms(t, &ctx, it, &st)); /* 2-4. CE + FD + CL_S (own laps) */
  mark = stage_start(t);
  CLUDA_TRY(check_gradients(t, it, "the source terms (loss_src + loss_fd + loss_cl_src)"));
  stage_lap(t, CLUDA_STAGE_OPTIM, &mark);
  if (t->s.uda) {
    CLUDA_TRY(pseudo_labels(t, &ctx, it, &st)); /* 5. teacher, Gamma    */
    stage_lap(t, CLUDA_STAGE_TEACHER, &mark);
    CLUDA_TRY(class_mix(t, it)); /*    ClassMix, augment */
    stage_lap(t, CLUDA_STAGE_MIX, &mark);
    CLUDA_TRY(mixed_terms(t, &ctx, it, &st)); /* 6. CE_mix + CL_mix (own laps) */
    mark = stage_start(t);
    CLUDA_TRY(check_gradients(t, it, "the mixed terms (loss_mix + loss_cl_mix)"));
  }
  CLUDA_TRY(average_over_ranks(t, &st)); /*    all-reduce grads   */
  CLUDA_TRY(optimizer_step(t, it, &st)); /* 7. AdamW             */
  stage_lap(t, CLUDA_STAGE_OPTIM, &mark);
  t->iteration = it + 1;
  if (t->s.replica_check_interval > 0 && t->iteration % t->s.replica_check_interval == 0)
    CLUDA_TRY(cluda_trainer_check_replicas(t));
  if (stats) *stats = st;
  return cluda_ok();
}

/* ---------------------------------------------------------------------------------------
 * Setup
 * --------------------------------------------------------------------------------------- */

static cluda_status alloc_bytes(void **p, size_t bytes, const char *what) {
  *p = calloc(1, bytes ? bytes : 1);
  CLUDA_REQUIRE(*p != NULL, CLUDA_ERR_ALLOC, "trainer_init: out of memory for %s (%zu bytes)", what,
                bytes);
  return cluda_ok();
}
#define ALLOC(field, count, what)                                                                  \
  CLUDA_TRY(alloc_bytes((void **)&(field), (size_t)(count) * sizeof *(field), (what)))

static cluda_status alloc_buffers(cluda_trainer *t) {
  cluda_trainer_buffers *bf = t->buf;
  const cluda_segmentor_config *mc = &t->model.cfg;
  bf->B = t->s.batch;
  bf->H = t->s.crop_h;
  bf->W = t->s.crop_w;
  bf->h = t->plan.head.out_h;
  bf->w = t->plan.head.out_w;
  bf->K = mc->head.num_classes;
  bf->Cf = mc->head.channels;
  bf->h32 = t->plan.encoder.out_h[3];
  bf->w32 = t->plan.encoder.out_w[3];
  bf->C4 = mc->encoder.embed_dims[3];
  bf->ch = t->s.cl_h;
  bf->cw = t->s.cl_w;
  CLUDA_REQUIRE(bf->h32 * 32 == bf->H && bf->w32 * 32 == bf->W, CLUDA_ERR_ARG,
                "trainer_init: train.crop %dx%d must be a multiple of 32 (FD label cells)", bf->H,
                bf->W);
  size_t B = (size_t)bf->B, px = B * (size_t)bf->H * (size_t)bf->W;
  size_t data_px = (size_t)t->s.source_data.height * (size_t)t->s.source_data.width;
  size_t tgt_px = (size_t)t->s.target_data.height * (size_t)t->s.target_data.width;
  if (tgt_px > data_px) data_px = tgt_px;
  size_t M = B * (size_t)bf->ch * (size_t)bf->cw;
  ALLOC(bf->render_rgb, data_px * 3, "the rendered image");
  ALLOC(bf->render_lbl, data_px, "the rendered labels");
  ALLOC(bf->src_img, px * 3, "source images");
  ALLOC(bf->tgt_img, px * 3, "target images");
  ALLOC(bf->mix_img, px * 3, "mixed images");
  ALLOC(bf->src_lbl, px, "source labels");
  ALLOC(bf->pl_lbl, px, "pseudo-labels");
  ALLOC(bf->mix_lbl, px, "mixed labels");
  ALLOC(bf->mix_mask, px, "ClassMix masks");
  ALLOC(bf->valid, px, "margin masks");
  ALLOC(bf->pl_weight, px, "pseudo-label weights");
  ALLOC(bf->mix_weight, px, "mixed weights");
  ALLOC(bf->up, px * (size_t)bf->K, "upsampled logits");
  ALLOC(bf->dup, px * (size_t)bf->K, "upsampled logit gradients");
  ALLOC(bf->dlogits, B * (size_t)bf->h * (size_t)bf->w * (size_t)bf->K, "logit gradients");
  ALLOC(bf->loss, 1, "a loss");
  ALLOC(bf->count, 1, "a count");
  ALLOC(bf->dloss, 1, "a loss gradient");
  size_t cells = B * (size_t)bf->h32 * (size_t)bf->w32;
  ALLOC(bf->fd_lbl, cells, "FD cell labels");
  ALLOC(bf->fd_mask, cells, "FD cell mask");
  ALLOC(bf->dfd, cells * (size_t)bf->C4, "FD gradient");
  ALLOC(bf->cl_feat, M * (size_t)bf->Cf, "CL features");
  ALLOC(bf->cl_unit, M * (size_t)bf->Cf, "CL unit features");
  ALLOC(bf->cl_norms, M, "CL norms");
  ALLOC(bf->cl_weight, M, "CL anchor weights");
  ALLOC(bf->cl_stats, M * CLUDA_CL_STATS_COLS, "CL statistics");
  ALLOC(bf->cl_da, M * (size_t)bf->Cf, "CL anchor gradients");
  ALLOC(bf->cl_dc, M * (size_t)bf->Cf, "CL contrast gradients");
  ALLOC(bf->cl_dunit, M * (size_t)bf->Cf, "CL feature gradients");
  ALLOC(bf->cl_lbl, M, "CL labels");
  ALLOC(bf->dfused, B * (size_t)bf->h * (size_t)bf->w * (size_t)bf->Cf, "fused gradients");
  if (t->comm->size > 1 && t->s.cl_scope_global && (t->s.cl_source || t->s.cl_mix)) {
    size_t all = M * (size_t)t->comm->size;
    ALLOC(bf->cl_all_rows, all * (size_t)bf->Cf, "the gathered CL rows");
    ALLOC(bf->cl_all_drows, all * (size_t)bf->Cf, "the gathered CL row gradients");
    ALLOC(bf->cl_all_weight, all, "the gathered CL weights");
    ALLOC(bf->cl_all_lbl, all, "the gathered CL labels");
  }
  return cluda_ok();
}

static void free_buffers(cluda_trainer_buffers *bf) {
  if (!bf) return;
  void *all[] = {
      bf->render_rgb, bf->render_lbl,  bf->src_img,      bf->tgt_img,       bf->mix_img,
      bf->src_lbl,    bf->pl_lbl,      bf->mix_lbl,      bf->mix_mask,      bf->valid,
      bf->pl_weight,  bf->mix_weight,  bf->up,           bf->dup,           bf->dlogits,
      bf->loss,       bf->count,       bf->dloss,        bf->fd_lbl,        bf->fd_mask,
      bf->dfd,        bf->cl_feat,     bf->cl_unit,      bf->cl_norms,      bf->cl_weight,
      bf->cl_stats,   bf->cl_da,       bf->cl_dc,        bf->cl_dunit,      bf->cl_lbl,
      bf->dfused,     bf->cl_all_rows, bf->cl_all_drows, bf->cl_all_weight, bf->cl_all_lbl};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
    free(all[i]);
  free(bf);
}

/* RCS tables from the synthetic source split's class counts (algorithm.md 2). */
static cluda_status init_rcs(cluda_trainer *t) {
  int n = t->s.train_images;
  int64_t *stats = calloc((size_t)n * CLUDA_SYNTH_CLASSES, sizeof *stats);
  CLUDA_REQUIRE(stats != NULL, CLUDA_ERR_ALLOC, "trainer_init: out of memory for RCS statistics");
  cluda_status s = cluda_ok();
  for (int i = 0; i < n && s.code == CLUDA_OK; i++)
    s = cluda_synth_class_counts(&t->s.source_data, CLUDA_SYNTH_TRAIN, (uint64_t)i,
                                 stats + (size_t)i * CLUDA_SYNTH_CLASSES);
  if (s.code == CLUDA_OK)
    s = cluda_rcs_init(&t->rcs, stats, n, CLUDA_SYNTH_CLASSES, t->s.rcs_temperature,
                       t->s.rcs_min_pixels);
  free(stats);
  if (s.code == CLUDA_OK) t->rcs_created = 1;
  return s;
}

static cluda_status trainer_setup(cluda_trainer *t, const cluda_segmentor_config *model_cfg) {
  const cluda_train_settings *s = &t->s;
  const cluda_synth_config *rendered = s->source_synthetic   ? &s->source_data
                                       : s->target_synthetic ? &s->target_data
                                                             : NULL;
  CLUDA_REQUIRE(!rendered || (rendered->height >= s->crop_h && rendered->width >= s->crop_w),
                CLUDA_ERR_ARG, "trainer_init: train.crop %dx%d is larger than data.size %dx%d",
                s->crop_h, s->crop_w, rendered ? rendered->height : 0,
                rendered ? rendered->width : 0);
  CLUDA_TRY(cluda_segmentor_create(&t->model, model_cfg));
  t->model_created = 1;
  size_t np = t->model.params.total, ns = t->model.state.total;
  ALLOC(t->student, np, "student parameters");
  ALLOC(t->teacher, np, "teacher parameters");
  ALLOC(t->imnet, np, "ImageNet parameters");
  ALLOC(t->grads, np, "gradients");
  ALLOC(t->student_state, ns, "student BN state");
  ALLOC(t->teacher_state, ns, "teacher BN state");
  CLUDA_TRY(cluda_segmentor_init(&t->model, t->student, t->student_state, s->seed));
  /* No pretrained weights on the CPU demo: the frozen "ImageNet" copy is the initial encoder,
   * and the teacher's BN buffers start from the student's (the reference deep-copies). */
  memcpy(t->imnet, t->student, np * sizeof(float));
  memcpy(t->teacher, t->student, np * sizeof(float));
  memcpy(t->teacher_state, t->student_state, ns * sizeof(float));
  CLUDA_TRY(cluda_adamw_init(&t->opt, &t->model.params, &s->adamw));
  t->opt_created = 1;
  CLUDA_TRY(cluda_segmentor_plan_for(&t->model, s->batch, s->crop_h, s->crop_w, &t->plan));
  CLUDA_TRY(alloc_bytes(&t->acts, t->plan.activation_bytes, "activations"));
  CLUDA_TRY(alloc_bytes(&t->imnet_acts, t->plan.encoder.activation_bytes, "ImageNet activations"));
  CLUDA_TRY(alloc_bytes((void **)&t->buf, sizeof *t->buf, "batch buffers"));
  CLUDA_TRY(alloc_buffers(t));
  /* Ops release their scratch before returning, so the largest single need suffices. */
  int64_t M = (int64_t)s->batch * s->cl_h * s->cl_w;
  int64_t Mc = s->cl_scope_global ? M * t->comm->size : M;
  size_t need = t->plan.scratch_bytes;
  size_t cl = cluda_contrastive_scratch_bytes(&s->cl, M, Mc);
  size_t blur = cluda_dacs_blur_scratch_bytes(s->crop_h, s->crop_w, 3);
  if (cl > need) need = cl;
  if (blur > need) need = blur;
  CLUDA_TRY(cluda_arena_create(&t->scratch, need + (1u << 20)));
  t->scratch_created = 1;
  if (s->rcs && s->source_synthetic) CLUDA_TRY(init_rcs(t)); /* data sets: the loader's RCS */
  return cluda_ok();
}

cluda_status cluda_trainer_init(cluda_trainer *t, const cluda_train_settings *settings,
                                const cluda_segmentor_config *model_cfg, cluda_comm *comm) {
  CLUDA_REQUIRE(t != NULL && settings != NULL && model_cfg != NULL, CLUDA_ERR_ARG,
                "trainer_init: NULL argument");
  memset(t, 0, sizeof *t);
  t->s = *settings;
  t->hooks.nan_iteration = -1;
  if (comm) {
    t->comm = comm;
  } else {
    cluda_comm_init_self(&t->self_comm);
    t->comm = &t->self_comm;
  }
  t->first_sample = (uint64_t)t->comm->rank * (uint64_t)settings->batch;
  double factor = 1.0; /* decisions.md 21: the defaults are tuned for 2 images per domain */
  cluda_status sc =
      cluda_lr_scale_factor(settings->lr_scaling, settings->batch * t->comm->size, 2, &factor);
  if (sc.code != CLUDA_OK) return sc;
  t->s.adamw.lr *= factor;
  CLUDA_REQUIRE(model_cfg->head.num_classes == CLUDA_SYNTH_CLASSES, CLUDA_ERR_ARG,
                "trainer_init: model.num_classes = %d, but the synthetic data has %d classes",
                model_cfg->head.num_classes, CLUDA_SYNTH_CLASSES);
  t->s.cl.num_classes = model_cfg->head.num_classes;
  cluda_status s = trainer_setup(t, model_cfg);
  if (s.code != CLUDA_OK) cluda_trainer_free(t);
  return s;
}

void cluda_trainer_free(cluda_trainer *t) {
  if (!t) return;
  free_buffers(t->buf);
  if (t->rcs_created) cluda_rcs_free(&t->rcs);
  if (t->scratch_created) cluda_arena_destroy(&t->scratch);
  if (t->opt_created) cluda_adamw_free(&t->opt);
  free(t->acts);
  free(t->imnet_acts);
  free(t->student);
  free(t->teacher);
  free(t->imnet);
  free(t->grads);
  free(t->student_state);
  free(t->teacher_state);
  if (t->model_created) cluda_segmentor_free(&t->model);
  memset(t, 0, sizeof *t);
}

/* ---------------------------------------------------------------------------------------
 * Replicas (data parallel)
 * --------------------------------------------------------------------------------------- */

cluda_status cluda_trainer_broadcast_state(cluda_trainer *t) {
  CLUDA_REQUIRE(t != NULL && t->buf != NULL, CLUDA_ERR_ARG,
                "trainer_broadcast_state: trainer not initialised");
  if (t->comm->size == 1) return cluda_ok();
  const size_t np = t->model.params.total, ns = t->model.state.total;
  float *const params[] = {t->student, t->teacher, t->imnet, t->opt.m, t->opt.v};
  for (size_t i = 0; i < sizeof params / sizeof params[0]; i++)
    CLUDA_TRY(cluda_comm_broadcast(t->comm, params[i], np, CLUDA_COMM_F32, 0));
  CLUDA_TRY(cluda_comm_broadcast(t->comm, t->student_state, ns, CLUDA_COMM_F32, 0));
  CLUDA_TRY(cluda_comm_broadcast(t->comm, t->teacher_state, ns, CLUDA_COMM_F32, 0));
  int64_t counters[2] = {t->iteration, t->opt.step};
  CLUDA_TRY(cluda_comm_broadcast(t->comm, counters, 2, CLUDA_COMM_I64, 0));
  t->iteration = counters[0];
  t->opt.step = counters[1];
  return cluda_ok();
}

cluda_status cluda_trainer_check_replicas(cluda_trainer *t) {
  CLUDA_REQUIRE(t != NULL && t->buf != NULL, CLUDA_ERR_ARG,
                "trainer_check_replicas: trainer not initialised");
  const size_t np = t->model.params.total * sizeof(float);
  const size_t ns = t->model.state.total * sizeof(float);
  CLUDA_TRY(cluda_comm_check_replicated(t->comm, t->student, np, "the student parameters"));
  CLUDA_TRY(cluda_comm_check_replicated(t->comm, t->teacher, np, "the teacher parameters"));
  CLUDA_TRY(cluda_comm_check_replicated(t->comm, t->opt.m, np, "the AdamW first moments"));
  CLUDA_TRY(cluda_comm_check_replicated(t->comm, t->opt.v, np, "the AdamW second moments"));
  /* BN running statistics are per rank unless model.sync_bn (decisions.md 22) */
  if (t->s.sync_bn)
    CLUDA_TRY(cluda_comm_check_replicated(t->comm, t->student_state, ns,
                                          "the student BatchNorm statistics"));
  return cluda_ok();
}

cluda_status cluda_trainer_adopt_student(cluda_trainer *t) {
  CLUDA_REQUIRE(t != NULL && t->buf != NULL, CLUDA_ERR_ARG,
                "trainer_adopt_student: trainer not initialised");
  CLUDA_REQUIRE(t->iteration == 0, CLUDA_ERR_ARG,
                "trainer_adopt_student: only before the first step (iteration is %lld)",
                (long long)t->iteration);
  const size_t np = t->model.params.total, ns = t->model.state.total;
  memcpy(t->teacher, t->student, np * sizeof(float));
  memcpy(t->imnet, t->student, np * sizeof(float));
  memcpy(t->teacher_state, t->student_state, ns * sizeof(float));
  return cluda_ok();
}

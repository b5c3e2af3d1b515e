/* The CLUDA training step (paper Figure 1, Eq. 1-6; shared/spec/algorithm.md 1.2 and 6.6) in
 * one process on the CPU: DAFormer self-training (EMA teacher, pseudo-labels with the
 * confidence weight Gamma, ClassMix, strong augmentation, thing-class ImageNet feature
 * distance, AdamW with the warm-up + poly schedule) plus the two pixel-contrastive terms on
 * the decoder's fused features, trained on the built-in synthetic two-domain data.
 *
 * Everything random is a pure function of (seed, rank, iteration, purpose, slot) (rng.h), so
 * a run is bit-identical for a given build and thread count, and the state after iteration k
 * is all a resume needs: parameters, BN buffers, AdamW moments and the iteration. The
 * trainer holds no global state; buffers are planned and allocated once in init. */
#ifndef CLUDA_TRAINER_H
#define CLUDA_TRAINER_H

#include <stdint.h>

#include "cluda/arena.h"
#include "cluda/comm.h"
#include "cluda/config.h"
#include "cluda/contrastive.h"
#include "cluda/dacs.h"
#include "cluda/optim.h"
#include "cluda/segmentor.h"
#include "cluda/synthetic.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { CLUDA_TRAIN_MAX_CLASSES_LIST = 32 };

/* The training keys of a config (train.*, uda.*, cl.*, optim.*, data.*), resolved. */
typedef struct cluda_train_settings {
  uint64_t seed;
  int64_t max_iters;
  int batch;
  int crop_h, crop_w;
  int flip;
  int source_ce;
  /* UDA */
  int uda;
  double ema_alpha;
  float pseudo_threshold;
  int ignore_top, ignore_bottom;
  int teacher_bn_batch;
  float fd_lambda, fd_min_ratio;
  int fd_classes[CLUDA_TRAIN_MAX_CLASSES_LIST], fd_class_count;
  cluda_dacs_aug_config aug;
  /* CL */
  int cl_source, cl_mix;
  int cl_h, cl_w;
  int cl_mix_weighted;
  int cl_ref_row_order;        /* cl.ref_row_order: the reference's row pairing (decisions.md 9) */
  cluda_contrastive_params cl; /* tau, weight, pairs, thing classes, ref_* options */
  int cl_scope_global; /* cl.scope: contrast against the whole global batch (decisions.md 14) */
  /* data parallel */
  int ref_local_gamma; /* uda.ref_local_gamma: Gamma from this rank's pixels (decisions.md 10) */
  int sync_bn;         /* model.sync_bn: BatchNorm statistics over all ranks (decisions.md 22) */
  int64_t replica_check_interval; /* train.replica_check_interval: parameter fingerprints */
  /* optimizer and schedule */
  cluda_lr_scaling lr_scaling; /* optim.lr_scaling, applied by the trainer for the global batch */
  cluda_adamw_config adamw;
  cluda_lr_schedule schedule;
  double grad_clip;
  /* data */
  int source_synthetic, target_synthetic;      /* data.source / data.target are the built-in scenes;
                                                  otherwise the caller attaches cluda_sample_sources */
  cluda_synth_config source_data, target_data; /* size, seed, gap; domain set */
  int train_images, val_images;
  int rcs;
  double rcs_temperature;
  int64_t rcs_min_pixels;
} cluda_train_settings;

/* Reads and checks the training keys (errors name the key). */
cluda_status cluda_train_settings_from_config(const cluda_config *cfg, cluda_train_settings *out);

/* What one step computed (for the logs). A term that did not run is 0 with its flag 0. */
typedef struct cluda_step_stats {
  int64_t iteration;
  double loss_src, loss_fd, loss_cl_src, loss_mix, loss_cl_mix;
  int fd_active; /* FD had at least one thing cell */
  int64_t fd_cells;
  double gamma; /* Gamma of the pseudo-labels (NaN without UDA) */
  double lr;    /* encoder-group lr of this step */
  double ema_alpha;
  double grad_norm;
} cluda_step_stats;

/* Test hook: makes one loss term non-finite at one iteration (name as in the stats:
 * "loss_src", "loss_fd", "loss_cl_src", "loss_mix", "loss_cl_mix"). */
typedef struct cluda_trainer_hooks {
  int64_t nan_iteration; /* -1: off */
  const char *nan_term;
} cluda_trainer_hooks;

/* Stages of one step, for the optional per-stage timing (cluda_trainer.stage_seconds). FD
 * includes the frozen ImageNet encoder's forward; a *_FWD stage includes its CE loss and
 * gradient; CL stages cover resize, L2 norm, loss forward/backward and the resize back;
 * OPTIM includes zeroing and checking the gradients, clipping and AdamW. */
typedef enum cluda_train_stage {
  CLUDA_STAGE_EMA,     /* EMA teacher update                                  */
  CLUDA_STAGE_DATA,    /* render, crop, flip, normalise source + target       */
  CLUDA_STAGE_SRC_FWD, /* student forward on the source crop + CE              */
  CLUDA_STAGE_FD,      /* ImageNet-encoder forward + feature distance fwd/bwd */
  CLUDA_STAGE_CL_SRC,  /* source pixel-contrastive term fwd/bwd               */
  CLUDA_STAGE_SRC_BWD, /* student backward of the source terms                */
  CLUDA_STAGE_TEACHER, /* teacher forward, pseudo-labels, Gamma, weights      */
  CLUDA_STAGE_MIX,     /* ClassMix + strong augmentation                      */
  CLUDA_STAGE_MIX_FWD, /* student forward on the mixed image + weighted CE    */
  CLUDA_STAGE_CL_MIX,  /* mixed pixel-contrastive term fwd/bwd                */
  CLUDA_STAGE_MIX_BWD, /* student backward of the mixed terms                 */
  CLUDA_STAGE_OPTIM,   /* grad zero/checks, clip/norm, AdamW                  */
  CLUDA_TRAIN_STAGES
} cluda_train_stage;

/* Short name of a stage ("ema", "data", "src_fwd", ...), or "?" out of range. */
const char *cluda_train_stage_name(int stage);

/* A source of training samples other than the built-in synthetic scenes (the datasets on
 * disk: include/cluda/loader.h). get fills the `batch` samples of this rank for an iteration:
 * images [batch, crop_h, crop_w, 3] normalised f32, labels [batch, crop_h, crop_w] train ids. */
typedef struct cluda_sample_source {
  void *ctx;
  cluda_status (*get)(void *ctx, int64_t iteration, float *images, uint8_t *labels);
} cluda_sample_source;

/* The trainer: model, the three parameter copies, optimizer, planned buffers. */
typedef struct cluda_trainer {
  cluda_train_settings s;
  /* Data parallelism (include/cluda/comm.h): every rank runs this same step on its own
   * `batch` images; comm->size == 1 is one process. first_sample = rank * batch is the global
   * index of this rank's first image: data, augmentation and dropout draws are keyed by the
   * global index, so the global batch is the same however it is split over ranks. */
  cluda_comm *comm;
  cluda_comm self_comm; /* used when init is given no communicator */
  uint64_t first_sample;
  /* Optional data sources (NULL get: the synthetic scenes of settings->source_data/target_data). */
  cluda_sample_source source, target;
  cluda_segmentor model;
  int model_created;
  float *student, *teacher, *imnet; /* params (imnet: frozen initial encoder, FD only) */
  float *student_state, *teacher_state;
  float *grads;
  cluda_adamw opt;
  int opt_created;
  cluda_rcs rcs;
  int rcs_created;
  cluda_segmentor_plan plan; /* batch x crop */
  void *acts;                /* one buffer: the passes never overlap (algorithm.md 6.6) */
  void *imnet_acts;
  cluda_arena scratch;
  int scratch_created;
  int64_t iteration; /* the next iteration to run */
  cluda_trainer_hooks hooks;
  /* Optional timing (benchmarks): when not NULL, each step ADDS the CLOCK_MONOTONIC seconds
   * spent in each stage to stage_seconds[CLUDA_TRAIN_STAGES] (the caller zeroes it). Set it
   * after cluda_trainer_init (which clears it); NULL (the default) costs one test per stage. */
  double *stage_seconds;
  struct cluda_trainer_buffers *buf; /* batch tensors (trainer.c) */
} cluda_trainer;

/* Builds the network from model_cfg, initialises student (= teacher = ImageNet copy) from
 * settings->seed, plans all buffers. comm: the job's communicator (NULL: one process); it must
 * outlive the trainer. The lr is scaled for the global batch (optim.lr_scaling). On failure
 * everything is released. Collective when comm has several ranks. */
cluda_status cluda_trainer_init(cluda_trainer *t, const cluda_train_settings *settings,
                                const cluda_segmentor_config *model_cfg, cluda_comm *comm);

/* After pretrained weights were loaded into t->student / t->student_state: the teacher, the
 * frozen ImageNet copy of the FD term and the teacher's BN buffers become the student's (the
 * reference deep-copies the initial student). Before the first step only. */
cluda_status cluda_trainer_adopt_student(cluda_trainer *t);

/* Makes every rank's replicated state rank 0's: parameters, BN buffers, AdamW moments and
 * step, the iteration. Call after init and after rank 0 loaded a checkpoint. Collective. */
cluda_status cluda_trainer_broadcast_state(cluda_trainer *t);

/* Fails naming the first rank whose student parameters, BN buffers or AdamW moments differ
 * from rank 0's (fingerprints; train.replica_check_interval runs it inside the step).
 * Collective. */
cluda_status cluda_trainer_check_replicas(cluda_trainer *t);
void cluda_trainer_free(cluda_trainer *t);

/* Runs iteration t->iteration and advances it. A non-finite loss term or gradient stops the
 * step before the optimizer (parameters untouched) with an error naming the iteration and
 * the term. stats may be NULL; its losses are the global batch's (averaged over ranks).
 * Collective: every rank calls it for the same iteration. */
cluda_status cluda_trainer_step(cluda_trainer *t, cluda_step_stats *stats);

/* cl.ref_row_order (decisions.md 9, algorithm.md 6.3): the reference flattens the [B, N, D]
 * features pixel-major (row r = pixel r / B of image r % B) but labels and weights batch-major
 * (row r = pixel r % N of image r / N). Our feature rows are batch-major, so the feature of
 * image b, pixel k (row b N + k) is paired with the label at batch-major index k B + b:
 * labels_out[b N + k] = labels[k B + b], likewise weights (NULL: none). Identity for B = 1.
 * Out-of-place; each array holds B N entries. */
void cluda_ref_row_order_permute(int B, int64_t N, const uint8_t *labels, uint8_t *labels_out,
                                 const float *weights, float *weights_out);

/* Renders image `index` of a synthetic split, normalised [H, W, 3] and labels [H, W], at the
 * data size (for evaluation). */
cluda_status cluda_trainer_render(const cluda_train_settings *s, cluda_synth_domain domain,
                                  cluda_synth_split split, uint64_t index, float *image,
                                  uint8_t *labels);

#ifdef __cplusplus
}
#endif
#endif

/* The training keys of a config as cluda_train_settings (kept with the config code: the
 * trainer itself does not read YAML). */
#include <math.h>
#include <string.h>

#include "cluda/config.h"
#include "cluda/trainer.h"

static cluda_status get_i32(const cluda_config *cfg, const char *key, int *out) {
  int64_t v = 0;
  CLUDA_TRY(cluda_config_get_int(cfg, key, &v));
  *out = (int)v;
  return cluda_ok();
}

static cluda_status get_f32(const cluda_config *cfg, const char *key, float *out) {
  double v = 0;
  CLUDA_TRY(cluda_config_get_float(cfg, key, &v));
  *out = (float)v;
  return cluda_ok();
}

static cluda_status get_pair(const cluda_config *cfg, const char *key, int *a, int *b) {
  int v[2];
  CLUDA_TRY(cluda_config_get_int_list(cfg, key, v, 2, NULL));
  *a = v[0];
  *b = v[1];
  return cluda_ok();
}

static int is(const cluda_config *cfg, const char *key, const char *value) {
  const char *s = NULL;
  return cluda_config_get_string(cfg, key, &s).code == CLUDA_OK && !strcmp(s, value);
}

cluda_status cluda_train_settings_from_config(const cluda_config *cfg, cluda_train_settings *out) {
  CLUDA_REQUIRE(cfg != NULL && out != NULL, CLUDA_ERR_ARG, "train_settings: NULL argument");
  cluda_train_settings s;
  memset(&s, 0, sizeof s);
  int64_t i64 = 0;
  CLUDA_TRY(cluda_config_get_int(cfg, "seed", &i64));
  s.seed = (uint64_t)i64;
  CLUDA_TRY(cluda_config_get_int(cfg, "train.max_iters", &s.max_iters));
  CLUDA_TRY(get_i32(cfg, "train.batch", &s.batch));
  CLUDA_TRY(get_pair(cfg, "train.crop", &s.crop_h, &s.crop_w));
  CLUDA_REQUIRE(s.crop_h % 32 == 0 && s.crop_w % 32 == 0, CLUDA_ERR_ARG,
                "config key train.crop: [%d, %d] must be multiples of 32", s.crop_h, s.crop_w);
  CLUDA_TRY(cluda_config_get_bool(cfg, "train.flip", &s.flip));
  CLUDA_TRY(cluda_config_get_bool(cfg, "train.source_ce", &s.source_ce));

  CLUDA_TRY(cluda_config_get_bool(cfg, "uda.enabled", &s.uda));
  CLUDA_TRY(cluda_config_get_float(cfg, "uda.ema_alpha", &s.ema_alpha));
  CLUDA_TRY(get_f32(cfg, "uda.pseudo_threshold", &s.pseudo_threshold));
  CLUDA_TRY(get_i32(cfg, "uda.ignore_top", &s.ignore_top));
  CLUDA_TRY(get_i32(cfg, "uda.ignore_bottom", &s.ignore_bottom));
  s.teacher_bn_batch = is(cfg, "uda.teacher_bn", "batch");
  CLUDA_TRY(get_f32(cfg, "uda.fd_lambda", &s.fd_lambda));
  CLUDA_TRY(get_f32(cfg, "uda.fd_min_ratio", &s.fd_min_ratio));
  CLUDA_TRY(cluda_config_get_int_list(cfg, "uda.fd_classes", s.fd_classes,
                                      CLUDA_TRAIN_MAX_CLASSES_LIST, &s.fd_class_count));
  s.aug = cluda_dacs_aug_config_default();
  CLUDA_TRY(get_f32(cfg, "uda.jitter_p", &s.aug.jitter_p));
  CLUDA_TRY(get_f32(cfg, "uda.jitter_strength", &s.aug.jitter_strength));
  CLUDA_TRY(get_f32(cfg, "uda.blur_p", &s.aug.blur_p));
  double sigma[2];
  CLUDA_TRY(cluda_config_get_float_list(cfg, "uda.blur_sigma", sigma, 2, NULL));
  CLUDA_REQUIRE(sigma[0] <= sigma[1], CLUDA_ERR_ARG,
                "config key uda.blur_sigma: [%g, %g] must be ascending", sigma[0], sigma[1]);
  s.aug.sigma_min = (float)sigma[0];
  s.aug.sigma_max = (float)sigma[1];

  CLUDA_TRY(cluda_config_get_bool(cfg, "cl.source", &s.cl_source));
  CLUDA_TRY(cluda_config_get_bool(cfg, "cl.mix", &s.cl_mix));
  if (!s.uda) s.cl_mix = 0; /* no mixed image without self-training */
  CLUDA_TRY(get_pair(cfg, "cl.size", &s.cl_h, &s.cl_w));
  s.cl_mix_weighted = is(cfg, "cl.mix_weighting", "weighted");
  cluda_contrastive_default_params(&s.cl);
  CLUDA_TRY(get_f32(cfg, "cl.tau", &s.cl.tau));
  CLUDA_TRY(get_f32(cfg, "cl.loss_weight", &s.cl.loss_weight));
  s.cl.pairs = is(cfg, "cl.pairs", "all")          ? CLUDA_CL_PAIRS_ALL
               : is(cfg, "cl.pairs", "stuff_only") ? CLUDA_CL_PAIRS_STUFF_ONLY
                                                   : CLUDA_CL_PAIRS_SEPARATE;
  int things[CLUDA_TRAIN_MAX_CLASSES_LIST], nthings = 0;
  CLUDA_TRY(cluda_config_get_int_list(cfg, "cl.thing_classes", things, CLUDA_TRAIN_MAX_CLASSES_LIST,
                                      &nthings));
  CLUDA_TRY(cluda_contrastive_set_things(&s.cl, things, nthings));
  CLUDA_TRY(cluda_config_get_bool(cfg, "cl.ref_ignore_as_class", &s.cl.ref_ignore_as_class));
  CLUDA_TRY(cluda_config_get_bool(cfg, "cl.ref_pair_weight", &s.cl.ref_pair_weight));
  CLUDA_TRY(cluda_config_get_bool(cfg, "cl.ref_half", &s.cl.ref_half));
  CLUDA_TRY(cluda_config_get_bool(cfg, "cl.ref_row_order", &s.cl_ref_row_order));
  s.cl_scope_global = is(cfg, "cl.scope", "global");
  CLUDA_TRY(cluda_config_get_bool(cfg, "uda.ref_local_gamma", &s.ref_local_gamma));
  CLUDA_TRY(cluda_config_get_bool(cfg, "model.sync_bn", &s.sync_bn));
  CLUDA_TRY(cluda_config_get_int(cfg, "train.replica_check_interval", &s.replica_check_interval));

  s.adamw = cluda_adamw_default_config();
  double betas[2];
  CLUDA_TRY(cluda_config_get_float(cfg, "optim.lr", &s.adamw.lr));
  CLUDA_TRY(cluda_config_get_float(cfg, "optim.head_lr_mult", &s.adamw.head_lr_mult));
  CLUDA_TRY(cluda_config_get_float(cfg, "optim.weight_decay", &s.adamw.weight_decay));
  CLUDA_TRY(cluda_config_get_float_list(cfg, "optim.betas", betas, 2, NULL));
  s.adamw.beta1 = betas[0];
  s.adamw.beta2 = betas[1];
  CLUDA_TRY(cluda_config_get_float(cfg, "optim.eps", &s.adamw.eps));
  const char *scaling_text = NULL;
  CLUDA_TRY(cluda_config_get_string(cfg, "optim.lr_scaling", &scaling_text));
  CLUDA_TRY(cluda_lr_scaling_parse(scaling_text, &s.lr_scaling));
  s.schedule = cluda_lr_schedule_default();
  s.schedule.max_iters = s.max_iters;
  CLUDA_TRY(cluda_config_get_int(cfg, "optim.warmup_iters", &s.schedule.warmup_iters));
  s.schedule.warmup = s.schedule.warmup_iters > 0 ? CLUDA_WARMUP_LINEAR : CLUDA_WARMUP_NONE;
  CLUDA_TRY(cluda_config_get_float(cfg, "optim.warmup_ratio", &s.schedule.warmup_ratio));
  CLUDA_TRY(cluda_config_get_float(cfg, "optim.power", &s.schedule.power));
  CLUDA_TRY(cluda_config_get_float(cfg, "optim.min_lr", &s.schedule.min_lr));
  CLUDA_TRY(cluda_config_get_float(cfg, "optim.grad_clip", &s.grad_clip));

  cluda_synth_config_init(&s.source_data);
  CLUDA_TRY(cluda_config_get_int(cfg, "data.seed", &i64));
  s.source_data.seed = (uint64_t)i64;
  CLUDA_TRY(get_pair(cfg, "data.size", &s.source_data.height, &s.source_data.width));
  CLUDA_TRY(get_f32(cfg, "data.gap", &s.source_data.gap));
  s.target_data = s.source_data;
  s.source_data.domain = CLUDA_SYNTH_SOURCE;
  s.target_data.domain = CLUDA_SYNTH_TARGET;
  s.source_synthetic = is(cfg, "data.source", "synthetic");
  s.target_synthetic = is(cfg, "data.target", "synthetic");
  CLUDA_TRY(get_i32(cfg, "data.train_images", &s.train_images));
  CLUDA_TRY(get_i32(cfg, "data.val_images", &s.val_images));
  CLUDA_TRY(cluda_config_get_bool(cfg, "data.rcs", &s.rcs));
  CLUDA_TRY(cluda_config_get_float(cfg, "data.rcs_temperature", &s.rcs_temperature));
  CLUDA_TRY(cluda_config_get_int(cfg, "data.rcs_min_pixels", &s.rcs_min_pixels));
  CLUDA_REQUIRE(!s.source_synthetic ||
                    (s.crop_h <= s.source_data.height && s.crop_w <= s.source_data.width),
                CLUDA_ERR_ARG,
                "config keys train.crop [%d, %d] and data.size [%d, %d]: the crop "
                "must fit in the image",
                s.crop_h, s.crop_w, s.source_data.height, s.source_data.width);
  *out = s;
  return cluda_ok();
}

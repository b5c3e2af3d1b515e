/* cluda's HDF5 weight file.
 *
 *   /                 attributes: format "cluda-weights", format_version, cluda_version,
 *                     the architecture (encoder_name, in_channels, embed_dims[4], depths[4],
 *                     heads[4], sr_ratios[4], mlp_ratio, head_kind, head_embed_dims,
 *                     head_channels, num_classes, dilations[4]), param_count, state_count
 *   /params/<name>    one float32 dataset per trainable tensor, full mmseg name as the
 *                     dataset name (e.g. /params/backbone.block1.0.attn.q.weight), cluda
 *                     layout; attributes layout ("OHWI", "OI" or "C") and fnv1a64 (of the
 *                     little-endian float bytes, to catch silent corruption)
 *   /state/<name>     BatchNorm running statistics, the same way
 *
 * `h5ls -r` lists one line per tensor under two groups. The file is written under a temp
 * name, flushed and closed, then published by fsync + rename + directory fsync. The attribute
 * and per-tensor helpers are shared with the training checkpoint (h5_common.c). */
#include <hdf5.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cluda/fileio.h"
#include "cluda/weights.h"
#include "h5_common.h"

#ifndef CLUDA_VERSION_STRING
#define CLUDA_VERSION_STRING "0.1.0"
#endif

enum { WEIGHTS_FORMAT_VERSION = 1 };
static const char WEIGHTS_FORMAT[] = "cluda-weights";

static int write_header(hid_t file, const cluda_segmentor *model) {
  int version = WEIGHTS_FORMAT_VERSION;
  int rc = 0;
  rc |= cluda_h5_write_string_attr(file, "format", WEIGHTS_FORMAT);
  rc |= cluda_h5_write_ints_attr(file, "format_version", &version, 1);
  rc |= cluda_h5_write_string_attr(file, "cluda_version", CLUDA_VERSION_STRING);
  rc |= cluda_h5_write_architecture(file, model);
  return rc;
}

cluda_status cluda_weights_save_h5(const char *path, const cluda_segmentor *model,
                                   const float *params, const float *state) {
  CLUDA_REQUIRE(path != NULL && model != NULL && params != NULL, CLUDA_ERR_ARG,
                "weights_save_h5: NULL path, model or params");
  CLUDA_REQUIRE(state != NULL || model->state.count == 0, CLUDA_ERR_ARG,
                "weights_save_h5: state is NULL but the model has %d state tensors",
                model->state.count);
  char tmp[4200];
  CLUDA_TRY(cluda_temp_path(path, tmp, sizeof tmp));
  hid_t file;
  H5E_BEGIN_TRY { file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT); }
  H5E_END_TRY;
  CLUDA_REQUIRE(file >= 0, CLUDA_ERR_IO, "weights_save_h5: cannot create %s", tmp);
  cluda_status s = cluda_ok();
  if (write_header(file, model) != 0)
    s = CLUDA_FAIL(CLUDA_ERR_IO, "weights_save_h5 %s: cannot write the attributes", path);
  if (s.code == CLUDA_OK)
    s = cluda_h5_write_table(file, "params", &model->params, params, "weights_save_h5", path, NULL);
  if (s.code == CLUDA_OK)
    s = cluda_h5_write_table(file, "state", &model->state, state, "weights_save_h5", path, NULL);
  if (s.code == CLUDA_OK && H5Fflush(file, H5F_SCOPE_GLOBAL) < 0)
    s = CLUDA_FAIL(CLUDA_ERR_IO, "weights_save_h5 %s: H5Fflush failed", path);
  if (H5Fclose(file) < 0 && s.code == CLUDA_OK)
    s = CLUDA_FAIL(CLUDA_ERR_IO, "weights_save_h5 %s: H5Fclose failed", path);
  if (s.code != CLUDA_OK) {
    unlink(tmp); /* never leave a half-written file behind; the target is untouched */
    return s;
  }
  return cluda_publish_file(tmp, path);
}

static cluda_status check_format(hid_t file, const char *path) {
  char text[64];
  const char *sp = cluda_h5_short_path(path);
  CLUDA_REQUIRE(cluda_h5_read_string_attr(file, "format", text, sizeof text) == 0 &&
                    strcmp(text, WEIGHTS_FORMAT) == 0,
                CLUDA_ERR_IO, "weights_load_h5 %s: not a cluda weight file (format '%s')", sp,
                text);
  int version = 0;
  CLUDA_REQUIRE(cluda_h5_read_ints_attr(file, "format_version", &version, 1) == 0 && version >= 1 &&
                    version <= WEIGHTS_FORMAT_VERSION,
                CLUDA_ERR_IO, "weights_load_h5 %s: format_version %d (this build reads 1..%d)", sp,
                version, WEIGHTS_FORMAT_VERSION);
  return cluda_ok();
}

cluda_status cluda_weights_load_h5(const char *path, const cluda_segmentor *model, float *params,
                                   float *state) {
  CLUDA_REQUIRE(path != NULL && model != NULL && params != NULL, CLUDA_ERR_ARG,
                "weights_load_h5: NULL path, model or params");
  CLUDA_REQUIRE(state != NULL || model->state.count == 0, CLUDA_ERR_ARG,
                "weights_load_h5: state is NULL but the model has %d state tensors",
                model->state.count);
  FILE *probe = fopen(path, "rb");
  CLUDA_REQUIRE(probe != NULL, CLUDA_ERR_IO, "weights_load_h5: cannot open %s", path);
  fclose(probe);
  hid_t file;
  H5E_BEGIN_TRY { file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT); }
  H5E_END_TRY;
  CLUDA_REQUIRE(file >= 0, CLUDA_ERR_IO,
                "weights_load_h5: %s is not a readable HDF5 file (truncated or corrupt?)", path);
  cluda_status s = check_format(file, path);
  if (s.code == CLUDA_OK) s = cluda_h5_check_architecture(file, "weights_load_h5", path, model);
  if (s.code == CLUDA_OK)
    s = cluda_h5_visit_table(file, "params", &model->params, params, 0, "weights_load_h5", path,
                             NULL);
  if (s.code == CLUDA_OK)
    s = cluda_h5_visit_table(file, "state", &model->state, state, 0, "weights_load_h5", path, NULL);
  /* Everything matched: only now are the caller's buffers written. */
  if (s.code == CLUDA_OK)
    s = cluda_h5_visit_table(file, "params", &model->params, params, 1, "weights_load_h5", path,
                             NULL);
  if (s.code == CLUDA_OK)
    s = cluda_h5_visit_table(file, "state", &model->state, state, 1, "weights_load_h5", path, NULL);
  H5Fclose(file);
  return s;
}

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
 * name, flushed and closed, then published by fsync + rename + directory fsync. */
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluda/fileio.h"
#include "cluda/weights.h"

#ifndef CLUDA_VERSION_STRING
#define CLUDA_VERSION_STRING "0.1.0"
#endif

enum { WEIGHTS_FORMAT_VERSION = 1 };
static const char WEIGHTS_FORMAT[] = "cluda-weights";

static uint64_t fnv1a64(const float *data, size_t count) {
  const unsigned char *bytes = (const unsigned char *)data;
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < count * sizeof(float); i++) {
    h ^= bytes[i];
    h *= 1099511628211ull;
  }
  return h;
}

static const char *head_kind_name(cluda_head_kind kind) {
  return kind == CLUDA_HEAD_DAFORMER ? "daformer" : "segformer";
}

static const char *layout_name(int ndim) {
  return ndim == 4 ? "OHWI" : ndim == 2 ? "OI" : ndim == 1 ? "C" : "";
}

/* ---- writing ---- */

static int write_string_attr(hid_t obj, const char *name, const char *value) {
  hid_t type = H5Tcopy(H5T_C_S1);
  if (type < 0) return -1;
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t attr = space < 0 ? -1 : H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  int rc = attr < 0 ? -1 : H5Awrite(attr, type, &value);
  if (attr >= 0) H5Aclose(attr);
  if (space >= 0) H5Sclose(space);
  H5Tclose(type);
  return rc < 0 ? -1 : 0;
}

static int write_ints_attr(hid_t obj, const char *name, const int *values, int n) {
  hsize_t dims[1] = {(hsize_t)n};
  hid_t space = n == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, NULL);
  if (space < 0) return -1;
  hid_t attr = H5Acreate2(obj, name, H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT);
  int rc = attr < 0 ? -1 : H5Awrite(attr, H5T_NATIVE_INT, values);
  if (attr >= 0) H5Aclose(attr);
  H5Sclose(space);
  return rc < 0 ? -1 : 0;
}

static int write_u64_attr(hid_t obj, const char *name, uint64_t value) {
  hid_t space = H5Screate(H5S_SCALAR);
  if (space < 0) return -1;
  hid_t attr = H5Acreate2(obj, name, H5T_STD_U64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  int rc = attr < 0 ? -1 : H5Awrite(attr, H5T_NATIVE_UINT64, &value);
  if (attr >= 0) H5Aclose(attr);
  H5Sclose(space);
  return rc < 0 ? -1 : 0;
}

static int write_architecture(hid_t file, const cluda_segmentor *model) {
  const cluda_mit_config *enc = &model->cfg.encoder;
  const cluda_head_config *head = &model->cfg.head;
  int version = WEIGHTS_FORMAT_VERSION;
  int rc = 0;
  rc |= write_string_attr(file, "format", WEIGHTS_FORMAT);
  rc |= write_ints_attr(file, "format_version", &version, 1);
  rc |= write_string_attr(file, "cluda_version", CLUDA_VERSION_STRING);
  rc |= write_string_attr(file, "encoder_name", model->cfg.encoder_name);
  rc |= write_ints_attr(file, "in_channels", &enc->in_channels, 1);
  rc |= write_ints_attr(file, "embed_dims", enc->embed_dims, 4);
  rc |= write_ints_attr(file, "depths", enc->depths, 4);
  rc |= write_ints_attr(file, "heads", enc->heads, 4);
  rc |= write_ints_attr(file, "sr_ratios", enc->sr_ratios, 4);
  rc |= write_ints_attr(file, "mlp_ratio", &enc->mlp_ratio, 1);
  rc |= write_string_attr(file, "head_kind", head_kind_name(head->kind));
  rc |= write_ints_attr(file, "head_embed_dims", &head->embed_dims, 1);
  rc |= write_ints_attr(file, "head_channels", &head->channels, 1);
  rc |= write_ints_attr(file, "num_classes", &head->num_classes, 1);
  rc |= write_ints_attr(file, "dilations", head->dilations, 4);
  rc |= write_ints_attr(file, "param_count", &model->params.count, 1);
  rc |= write_ints_attr(file, "state_count", &model->state.count, 1);
  return rc;
}

static cluda_status write_table(hid_t file, const char *group_name, const cluda_param_table *table,
                                const float *data, const char *path) {
  hid_t group = H5Gcreate2(file, group_name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  CLUDA_REQUIRE(group >= 0, CLUDA_ERR_IO, "weights_save_h5 %s: cannot create group %s", path,
                group_name);
  cluda_status s = cluda_ok();
  for (int i = 0; i < table->count && s.code == CLUDA_OK; i++) {
    const cluda_param_info *info = &table->items[i];
    hsize_t dims[CLUDA_MAX_DIMS];
    for (int d = 0; d < info->ndim; d++)
      dims[d] = (hsize_t)info->shape[d];
    hid_t space = H5Screate_simple(info->ndim, dims, NULL);
    hid_t dset = space < 0 ? -1
                           : H5Dcreate2(group, info->name, H5T_IEEE_F32LE, space, H5P_DEFAULT,
                                        H5P_DEFAULT, H5P_DEFAULT);
    const float *values = data + info->offset;
    int rc =
        dset < 0 ? -1 : H5Dwrite(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values);
    if (rc >= 0) rc = write_string_attr(dset, "layout", layout_name(info->ndim));
    if (rc >= 0) rc = write_u64_attr(dset, "fnv1a64", fnv1a64(values, info->count));
    if (dset >= 0) H5Dclose(dset);
    if (space >= 0) H5Sclose(space);
    if (rc < 0)
      s = CLUDA_FAIL(CLUDA_ERR_IO, "weights_save_h5 %s: cannot write %s/%s (disk full?)", path,
                     group_name, info->name);
  }
  H5Gclose(group);
  return s;
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
  if (write_architecture(file, model) != 0)
    s = CLUDA_FAIL(CLUDA_ERR_IO, "weights_save_h5 %s: cannot write the attributes", path);
  if (s.code == CLUDA_OK) s = write_table(file, "params", &model->params, params, path);
  if (s.code == CLUDA_OK) s = write_table(file, "state", &model->state, state, path);
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

/* ---- reading ---- */

static int read_string_attr(hid_t obj, const char *name, char *out, size_t cap) {
  out[0] = '\0';
  hid_t attr;
  H5E_BEGIN_TRY { attr = H5Aopen(obj, name, H5P_DEFAULT); }
  H5E_END_TRY;
  if (attr < 0) return -1;
  hid_t ftype = H5Aget_type(attr);
  int rc = -1;
  if (ftype >= 0 && H5Tget_class(ftype) == H5T_STRING) {
    if (H5Tis_variable_str(ftype) > 0) {
      hid_t mtype = H5Tcopy(H5T_C_S1);
      H5Tset_size(mtype, H5T_VARIABLE);
      H5Tset_cset(mtype, H5Tget_cset(ftype));
      char *value = NULL;
      if (H5Aread(attr, mtype, &value) >= 0 && value) {
        snprintf(out, cap, "%s", value);
        H5free_memory(value);
        rc = 0;
      }
      H5Tclose(mtype);
    } else {
      size_t size = H5Tget_size(ftype);
      char *value = calloc(size + 1, 1);
      hid_t mtype = H5Tcopy(H5T_C_S1);
      H5Tset_size(mtype, size);
      if (value && H5Aread(attr, mtype, value) >= 0) {
        snprintf(out, cap, "%s", value);
        rc = 0;
      }
      H5Tclose(mtype);
      free(value);
    }
  }
  if (ftype >= 0) H5Tclose(ftype);
  H5Aclose(attr);
  return rc;
}

/* Reads an integer attribute of exactly n values. */
static int read_ints_attr(hid_t obj, const char *name, int *values, int n) {
  hid_t attr;
  H5E_BEGIN_TRY { attr = H5Aopen(obj, name, H5P_DEFAULT); }
  H5E_END_TRY;
  if (attr < 0) return -1;
  hid_t space = H5Aget_space(attr);
  hssize_t points = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
  int rc = -1;
  if (points == n) rc = H5Aread(attr, H5T_NATIVE_INT, values) < 0 ? -1 : 0;
  if (space >= 0) H5Sclose(space);
  H5Aclose(attr);
  return rc;
}

static int read_u64_attr(hid_t obj, const char *name, uint64_t *value) {
  hid_t attr;
  H5E_BEGIN_TRY { attr = H5Aopen(obj, name, H5P_DEFAULT); }
  H5E_END_TRY;
  if (attr < 0) return -1;
  int rc = H5Aread(attr, H5T_NATIVE_UINT64, value) < 0 ? -1 : 0;
  H5Aclose(attr);
  return rc;
}

static void format_ints(char *buf, size_t cap, const int *v, int n) {
  size_t used = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < n && used < cap; i++)
    used += (size_t)snprintf(buf + used, cap - used, "%s%d", i ? "," : "", v[i]);
  if (used < cap) snprintf(buf + used, cap - used, "]");
}

static const char *short_path(const char *path) {
  size_t n = strlen(path);
  return n > 48 ? path + n - 48 : path;
}

static cluda_status check_int_attr(hid_t file, const char *path, const char *name,
                                   const int *model_values, int n) {
  int values[8];
  CLUDA_REQUIRE(read_ints_attr(file, name, values, n) == 0, CLUDA_ERR_IO,
                "weights_load_h5 %s: attribute '%s' missing or not %d integer(s)", short_path(path),
                name, n);
  if (memcmp(values, model_values, (size_t)n * sizeof(int)) != 0) {
    char fs[64], ms[64];
    format_ints(fs, sizeof fs, values, n);
    format_ints(ms, sizeof ms, model_values, n);
    return CLUDA_FAIL(CLUDA_ERR_SHAPE,
                      "weights_load_h5 %s: another architecture: %s is %s in the file, %s in the "
                      "model",
                      short_path(path), name, fs, ms);
  }
  return cluda_ok();
}

static cluda_status check_architecture(hid_t file, const char *path, const cluda_segmentor *model) {
  const cluda_mit_config *enc = &model->cfg.encoder;
  const cluda_head_config *head = &model->cfg.head;
  char text[64];
  CLUDA_REQUIRE(read_string_attr(file, "format", text, sizeof text) == 0 &&
                    strcmp(text, WEIGHTS_FORMAT) == 0,
                CLUDA_ERR_IO, "weights_load_h5 %s: not a cluda weight file (format '%s')",
                short_path(path), text);
  int version = 0;
  CLUDA_REQUIRE(read_ints_attr(file, "format_version", &version, 1) == 0 && version >= 1 &&
                    version <= WEIGHTS_FORMAT_VERSION,
                CLUDA_ERR_IO, "weights_load_h5 %s: format_version %d (this build reads 1..%d)",
                short_path(path), version, WEIGHTS_FORMAT_VERSION);
  CLUDA_REQUIRE(read_string_attr(file, "head_kind", text, sizeof text) == 0, CLUDA_ERR_IO,
                "weights_load_h5 %s: attribute 'head_kind' missing", short_path(path));
  CLUDA_REQUIRE(strcmp(text, head_kind_name(head->kind)) == 0, CLUDA_ERR_SHAPE,
                "weights_load_h5 %s: another architecture: head_kind is %s in the file, %s in "
                "the model",
                short_path(path), text, head_kind_name(head->kind));
  CLUDA_TRY(check_int_attr(file, path, "in_channels", &enc->in_channels, 1));
  CLUDA_TRY(check_int_attr(file, path, "embed_dims", enc->embed_dims, 4));
  CLUDA_TRY(check_int_attr(file, path, "depths", enc->depths, 4));
  CLUDA_TRY(check_int_attr(file, path, "heads", enc->heads, 4));
  CLUDA_TRY(check_int_attr(file, path, "sr_ratios", enc->sr_ratios, 4));
  CLUDA_TRY(check_int_attr(file, path, "mlp_ratio", &enc->mlp_ratio, 1));
  CLUDA_TRY(check_int_attr(file, path, "head_embed_dims", &head->embed_dims, 1));
  CLUDA_TRY(check_int_attr(file, path, "head_channels", &head->channels, 1));
  CLUDA_TRY(check_int_attr(file, path, "num_classes", &head->num_classes, 1));
  return cluda_ok();
}

typedef struct extra_search {
  const cluda_param_table *table;
  char found[CLUDA_PARAM_NAME_MAX + 32];
} extra_search;

static herr_t find_extra(hid_t group, const char *name, const H5L_info_t *info, void *data) {
  (void)group;
  (void)info;
  extra_search *search = data;
  if (cluda_param_table_find(search->table, name) >= 0) return 0;
  snprintf(search->found, sizeof search->found, "%s", name);
  return 1; /* stop: one is enough to name */
}

/* Validates (read == 0) or reads (read == 1) every dataset of one group. */
static cluda_status visit_table(hid_t file, const char *path, const char *group_name,
                                const cluda_param_table *table, float *data, int read) {
  hid_t group;
  H5E_BEGIN_TRY { group = H5Gopen2(file, group_name, H5P_DEFAULT); }
  H5E_END_TRY;
  CLUDA_REQUIRE(group >= 0, CLUDA_ERR_IO, "weights_load_h5 %s: group /%s missing or unreadable",
                short_path(path), group_name);
  cluda_status s = cluda_ok();
  if (!read) {
    extra_search search = {table, ""};
    if (H5Literate(group, H5_INDEX_NAME, H5_ITER_NATIVE, NULL, find_extra, &search) < 0) {
      s = CLUDA_FAIL(CLUDA_ERR_IO, "weights_load_h5 %s: cannot list /%s", short_path(path),
                     group_name);
    } else {
      if (search.found[0])
        s = CLUDA_FAIL(CLUDA_ERR_SHAPE,
                       "weights_load_h5 %s: unexpected /%s/%s (the model has no such tensor)",
                       short_path(path), group_name, search.found);
      /* A missing entry is named below. */
    }
  }
  for (int i = 0; i < table->count && s.code == CLUDA_OK; i++) {
    const cluda_param_info *info = &table->items[i];
    hid_t dset;
    H5E_BEGIN_TRY { dset = H5Dopen2(group, info->name, H5P_DEFAULT); }
    H5E_END_TRY;
    if (dset < 0) {
      s = CLUDA_FAIL(CLUDA_ERR_SHAPE, "weights_load_h5 %s: missing /%s/%s", short_path(path),
                     group_name, info->name);
      break;
    }
    if (!read) {
      hid_t space = H5Dget_space(dset);
      hid_t type = H5Dget_type(dset);
      hsize_t dims[8] = {0};
      int rank = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
      if (rank >= 0 && rank <= 8) H5Sget_simple_extent_dims(space, dims, NULL);
      int same = rank == info->ndim;
      for (int d = 0; same && d < rank; d++)
        same = dims[d] == (hsize_t)info->shape[d];
      if (type < 0 || H5Tget_class(type) != H5T_FLOAT) {
        s = CLUDA_FAIL(CLUDA_ERR_IO, "weights_load_h5 %s: /%s/%s is not a float dataset",
                       short_path(path), group_name, info->name);
      } else if (!same) {
        int fdims[8], n = rank < 0 ? 0 : rank > 8 ? 8 : rank;
        for (int d = 0; d < n; d++)
          fdims[d] = (int)dims[d];
        char fs[64], ms[64];
        format_ints(fs, sizeof fs, fdims, n);
        format_ints(ms, sizeof ms, info->shape, info->ndim);
        s = CLUDA_FAIL(CLUDA_ERR_SHAPE, "weights_load_h5 %s: %s: file has %s, model expects %s",
                       short_path(path), info->name, fs, ms);
      }
      if (type >= 0) H5Tclose(type);
      if (space >= 0) H5Sclose(space);
    } else {
      float *dst = data + info->offset;
      herr_t rc;
      H5E_BEGIN_TRY { rc = H5Dread(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst); }
      H5E_END_TRY;
      uint64_t stored = 0;
      if (rc < 0)
        s = CLUDA_FAIL(CLUDA_ERR_IO, "weights_load_h5 %s: cannot read /%s/%s (corrupt file?)",
                       short_path(path), group_name, info->name);
      else if (read_u64_attr(dset, "fnv1a64", &stored) == 0 && stored != fnv1a64(dst, info->count))
        s = CLUDA_FAIL(CLUDA_ERR_IO, "weights_load_h5 %s: /%s/%s fails its checksum (corrupt file)",
                       short_path(path), group_name, info->name);
    }
    H5Dclose(dset);
  }
  H5Gclose(group);
  return s;
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
  cluda_status s = check_architecture(file, path, model);
  if (s.code == CLUDA_OK) s = visit_table(file, path, "params", &model->params, params, 0);
  if (s.code == CLUDA_OK) s = visit_table(file, path, "state", &model->state, state, 0);
  /* Everything matched: only now are the caller's buffers written. */
  if (s.code == CLUDA_OK) s = visit_table(file, path, "params", &model->params, params, 1);
  if (s.code == CLUDA_OK) s = visit_table(file, path, "state", &model->state, state, 1);
  H5Fclose(file);
  return s;
}

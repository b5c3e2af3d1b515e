/* HDF5 helpers shared by the weight file and the training checkpoint (see h5_common.h). */
#include "h5_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

uint64_t cluda_fnv1a64(uint64_t h, const void *data, size_t bytes) {
  const unsigned char *p = (const unsigned char *)data;
  for (size_t i = 0; i < bytes; i++) {
    h ^= p[i];
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

/* ---- attributes ---- */

int cluda_h5_write_string_attr(hid_t obj, const char *name, const char *value) {
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

static int write_scalar_attr(hid_t obj, const char *name, hid_t file_type, hid_t mem_type,
                             const void *value) {
  hid_t space = H5Screate(H5S_SCALAR);
  if (space < 0) return -1;
  hid_t attr = H5Acreate2(obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT);
  int rc = attr < 0 ? -1 : H5Awrite(attr, mem_type, value);
  if (attr >= 0) H5Aclose(attr);
  H5Sclose(space);
  return rc < 0 ? -1 : 0;
}

int cluda_h5_write_ints_attr(hid_t obj, const char *name, const int *values, int n) {
  if (n == 1) return write_scalar_attr(obj, name, H5T_STD_I32LE, H5T_NATIVE_INT, values);
  hsize_t dims[1] = {(hsize_t)n};
  hid_t space = H5Screate_simple(1, dims, NULL);
  if (space < 0) return -1;
  hid_t attr = H5Acreate2(obj, name, H5T_STD_I32LE, space, H5P_DEFAULT, H5P_DEFAULT);
  int rc = attr < 0 ? -1 : H5Awrite(attr, H5T_NATIVE_INT, values);
  if (attr >= 0) H5Aclose(attr);
  H5Sclose(space);
  return rc < 0 ? -1 : 0;
}

int cluda_h5_write_u64_attr(hid_t obj, const char *name, uint64_t value) {
  return write_scalar_attr(obj, name, H5T_STD_U64LE, H5T_NATIVE_UINT64, &value);
}

int cluda_h5_write_i64_attr(hid_t obj, const char *name, int64_t value) {
  return write_scalar_attr(obj, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value);
}

int cluda_h5_write_f64_attr(hid_t obj, const char *name, double value) {
  return write_scalar_attr(obj, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value);
}

int cluda_h5_read_string_attr(hid_t obj, const char *name, char *out, size_t cap) {
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

/* Reads an attribute of exactly n values of the given class as mem_type. */
static int read_attr(hid_t obj, const char *name, H5T_class_t cls, hid_t mem_type, void *values,
                     hssize_t n) {
  hid_t attr;
  H5E_BEGIN_TRY { attr = H5Aopen(obj, name, H5P_DEFAULT); }
  H5E_END_TRY;
  if (attr < 0) return -1;
  hid_t space = H5Aget_space(attr);
  hid_t type = H5Aget_type(attr);
  hssize_t points = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
  int rc = -1;
  if (points == n && type >= 0 && H5Tget_class(type) == cls)
    rc = H5Aread(attr, mem_type, values) < 0 ? -1 : 0;
  if (type >= 0) H5Tclose(type);
  if (space >= 0) H5Sclose(space);
  H5Aclose(attr);
  return rc;
}

int cluda_h5_read_ints_attr(hid_t obj, const char *name, int *values, int n) {
  return read_attr(obj, name, H5T_INTEGER, H5T_NATIVE_INT, values, n);
}

int cluda_h5_read_u64_attr(hid_t obj, const char *name, uint64_t *value) {
  return read_attr(obj, name, H5T_INTEGER, H5T_NATIVE_UINT64, value, 1);
}

int cluda_h5_read_i64_attr(hid_t obj, const char *name, int64_t *value) {
  return read_attr(obj, name, H5T_INTEGER, H5T_NATIVE_INT64, value, 1);
}

int cluda_h5_read_f64_attr(hid_t obj, const char *name, double *value) {
  return read_attr(obj, name, H5T_FLOAT, H5T_NATIVE_DOUBLE, value, 1);
}

void cluda_h5_format_ints(char *buf, size_t cap, const int *v, int n) {
  size_t used = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < n && used < cap; i++)
    used += (size_t)snprintf(buf + used, cap - used, "%s%d", i ? "," : "", v[i]);
  if (used < cap) snprintf(buf + used, cap - used, "]");
}

const char *cluda_h5_short_path(const char *path) {
  size_t n = strlen(path);
  return n > 48 ? path + n - 48 : path;
}

/* ---- architecture ---- */

int cluda_h5_write_architecture(hid_t obj, const cluda_segmentor *model) {
  const cluda_mit_config *enc = &model->cfg.encoder;
  const cluda_head_config *head = &model->cfg.head;
  int rc = 0;
  rc |= cluda_h5_write_string_attr(obj, "encoder_name", model->cfg.encoder_name);
  rc |= cluda_h5_write_ints_attr(obj, "in_channels", &enc->in_channels, 1);
  rc |= cluda_h5_write_ints_attr(obj, "embed_dims", enc->embed_dims, 4);
  rc |= cluda_h5_write_ints_attr(obj, "depths", enc->depths, 4);
  rc |= cluda_h5_write_ints_attr(obj, "heads", enc->heads, 4);
  rc |= cluda_h5_write_ints_attr(obj, "sr_ratios", enc->sr_ratios, 4);
  rc |= cluda_h5_write_ints_attr(obj, "mlp_ratio", &enc->mlp_ratio, 1);
  rc |= cluda_h5_write_string_attr(obj, "head_kind", head_kind_name(head->kind));
  rc |= cluda_h5_write_ints_attr(obj, "head_embed_dims", &head->embed_dims, 1);
  rc |= cluda_h5_write_ints_attr(obj, "head_channels", &head->channels, 1);
  rc |= cluda_h5_write_ints_attr(obj, "num_classes", &head->num_classes, 1);
  rc |= cluda_h5_write_ints_attr(obj, "dilations", head->dilations, 4);
  rc |= cluda_h5_write_ints_attr(obj, "param_count", &model->params.count, 1);
  rc |= cluda_h5_write_ints_attr(obj, "state_count", &model->state.count, 1);
  return rc;
}

static cluda_status check_int_attr(hid_t obj, const char *op, const char *path, const char *name,
                                   const int *model_values, int n) {
  int values[8];
  CLUDA_REQUIRE(cluda_h5_read_ints_attr(obj, name, values, n) == 0, CLUDA_ERR_IO,
                "%s %s: attribute '%s' missing or not %d integer(s)", op, cluda_h5_short_path(path),
                name, n);
  if (memcmp(values, model_values, (size_t)n * sizeof(int)) != 0) {
    char fs[64], ms[64];
    cluda_h5_format_ints(fs, sizeof fs, values, n);
    cluda_h5_format_ints(ms, sizeof ms, model_values, n);
    return CLUDA_FAIL(CLUDA_ERR_SHAPE,
                      "%s %s: another architecture: %s is %s in the file, %s in the model", op,
                      cluda_h5_short_path(path), name, fs, ms);
  }
  return cluda_ok();
}

cluda_status cluda_h5_check_architecture(hid_t obj, const char *op, const char *path,
                                         const cluda_segmentor *model) {
  const cluda_mit_config *enc = &model->cfg.encoder;
  const cluda_head_config *head = &model->cfg.head;
  char text[64];
  CLUDA_REQUIRE(cluda_h5_read_string_attr(obj, "head_kind", text, sizeof text) == 0, CLUDA_ERR_IO,
                "%s %s: attribute 'head_kind' missing", op, cluda_h5_short_path(path));
  CLUDA_REQUIRE(strcmp(text, head_kind_name(head->kind)) == 0, CLUDA_ERR_SHAPE,
                "%s %s: another architecture: head_kind is %s in the file, %s in the model", op,
                cluda_h5_short_path(path), text, head_kind_name(head->kind));
  CLUDA_TRY(check_int_attr(obj, op, path, "in_channels", &enc->in_channels, 1));
  CLUDA_TRY(check_int_attr(obj, op, path, "embed_dims", enc->embed_dims, 4));
  CLUDA_TRY(check_int_attr(obj, op, path, "depths", enc->depths, 4));
  CLUDA_TRY(check_int_attr(obj, op, path, "heads", enc->heads, 4));
  CLUDA_TRY(check_int_attr(obj, op, path, "sr_ratios", enc->sr_ratios, 4));
  CLUDA_TRY(check_int_attr(obj, op, path, "mlp_ratio", &enc->mlp_ratio, 1));
  CLUDA_TRY(check_int_attr(obj, op, path, "head_embed_dims", &head->embed_dims, 1));
  CLUDA_TRY(check_int_attr(obj, op, path, "head_channels", &head->channels, 1));
  CLUDA_TRY(check_int_attr(obj, op, path, "num_classes", &head->num_classes, 1));
  return cluda_ok();
}

/* ---- one dataset per table entry ---- */

cluda_status cluda_h5_write_table(hid_t loc, const char *group_name, const cluda_param_table *table,
                                  const float *data, const char *op, const char *path,
                                  uint64_t *group_hash) {
  hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
  if (lcpl >= 0) H5Pset_create_intermediate_group(lcpl, 1);
  hid_t group = lcpl < 0 ? -1 : H5Gcreate2(loc, group_name, lcpl, H5P_DEFAULT, H5P_DEFAULT);
  if (lcpl >= 0) H5Pclose(lcpl);
  CLUDA_REQUIRE(group >= 0, CLUDA_ERR_IO, "%s %s: cannot create group %s", op, path, group_name);
  cluda_status s = cluda_ok();
  uint64_t combined = CLUDA_FNV1A64_INIT;
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
    uint64_t hash = cluda_fnv1a64(CLUDA_FNV1A64_INIT, values, info->count * sizeof(float));
    combined = cluda_fnv1a64(combined, &hash, sizeof hash);
    int rc =
        dset < 0 ? -1 : H5Dwrite(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, values);
    if (rc >= 0) rc = cluda_h5_write_string_attr(dset, "layout", layout_name(info->ndim));
    if (rc >= 0) rc = cluda_h5_write_u64_attr(dset, "fnv1a64", hash);
    if (dset >= 0) H5Dclose(dset);
    if (space >= 0) H5Sclose(space);
    if (rc < 0)
      s = CLUDA_FAIL(CLUDA_ERR_IO, "%s %s: cannot write %s/%s (disk full?)", op, path, group_name,
                     info->name);
  }
  H5Gclose(group);
  if (group_hash) *group_hash = combined;
  return s;
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

cluda_status cluda_h5_visit_table(hid_t loc, const char *group_name, const cluda_param_table *table,
                                  float *data, int read, const char *op, const char *path,
                                  uint64_t *group_hash) {
  const char *sp = cluda_h5_short_path(path);
  hid_t group;
  H5E_BEGIN_TRY { group = H5Gopen2(loc, group_name, H5P_DEFAULT); }
  H5E_END_TRY;
  CLUDA_REQUIRE(group >= 0, CLUDA_ERR_IO, "%s %s: group /%s missing or unreadable", op, sp,
                group_name);
  cluda_status s = cluda_ok();
  if (!read) {
    extra_search search = {table, ""};
    herr_t rc;
    H5E_BEGIN_TRY {
      rc = H5Literate(group, H5_INDEX_NAME, H5_ITER_NATIVE, NULL, find_extra, &search);
    }
    H5E_END_TRY;
    if (rc < 0) {
      s = CLUDA_FAIL(CLUDA_ERR_IO, "%s %s: cannot list /%s", op, sp, group_name);
    } else if (search.found[0]) {
      /* A missing entry is named below. */
      s = CLUDA_FAIL(CLUDA_ERR_SHAPE, "%s %s: unexpected /%s/%s (the model has no such tensor)", op,
                     sp, group_name, search.found);
    }
  }
  uint64_t combined = CLUDA_FNV1A64_INIT;
  for (int i = 0; i < table->count && s.code == CLUDA_OK; i++) {
    const cluda_param_info *info = &table->items[i];
    hid_t dset;
    H5E_BEGIN_TRY { dset = H5Dopen2(group, info->name, H5P_DEFAULT); }
    H5E_END_TRY;
    if (dset < 0) {
      s = CLUDA_FAIL(CLUDA_ERR_SHAPE, "%s %s: missing /%s/%s", op, sp, group_name, info->name);
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
        s = CLUDA_FAIL(CLUDA_ERR_IO, "%s %s: /%s/%s is not a float dataset", op, sp, group_name,
                       info->name);
      } else if (!same) {
        int fdims[8], n = rank < 0 ? 0 : rank > 8 ? 8 : rank;
        for (int d = 0; d < n; d++)
          fdims[d] = (int)dims[d];
        char fs[64], ms[64];
        cluda_h5_format_ints(fs, sizeof fs, fdims, n);
        cluda_h5_format_ints(ms, sizeof ms, info->shape, info->ndim);
        s = CLUDA_FAIL(CLUDA_ERR_SHAPE, "%s %s: %s: file has %s, model expects %s", op, sp,
                       info->name, fs, ms);
      }
      if (type >= 0) H5Tclose(type);
      if (space >= 0) H5Sclose(space);
    } else {
      float *dst = data + info->offset;
      herr_t rc;
      H5E_BEGIN_TRY { rc = H5Dread(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, dst); }
      H5E_END_TRY;
      uint64_t stored = 0;
      uint64_t hash =
          rc < 0 ? 0 : cluda_fnv1a64(CLUDA_FNV1A64_INIT, dst, info->count * sizeof(float));
      combined = cluda_fnv1a64(combined, &hash, sizeof hash);
      if (rc < 0)
        s = CLUDA_FAIL(CLUDA_ERR_IO, "%s %s: cannot read /%s/%s (corrupt file?)", op, sp,
                       group_name, info->name);
      else if (cluda_h5_read_u64_attr(dset, "fnv1a64", &stored) == 0 && stored != hash)
        s = CLUDA_FAIL(CLUDA_ERR_IO, "%s %s: /%s/%s fails its checksum (corrupt file)", op, sp,
                       group_name, info->name);
    }
    H5Dclose(dset);
  }
  H5Gclose(group);
  if (group_hash) *group_hash = combined;
  return s;
}

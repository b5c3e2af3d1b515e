#include "fixture.h"

#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef CLUDA_FIXTURE_DIR
#define CLUDA_FIXTURE_DIR "tests/fixtures"
#endif

/* HDF5 prints its error stack to stderr by default; the statuses below say what failed. */
static void quiet_hdf5(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

cluda_status fixture_open(const char *name, fixture *f) {
  char path[512];
  CLUDA_REQUIRE(name != NULL && f != NULL, CLUDA_ERR_ARG, "fixture_open: NULL argument");
  int len = snprintf(path, sizeof path, "%s/%s.h5", CLUDA_FIXTURE_DIR, name);
  CLUDA_REQUIRE(len > 0 && (size_t)len < sizeof path, CLUDA_ERR_ARG,
                "fixture_open: path for '%s' too long", name);
  return fixture_open_path(path, f);
}

cluda_status fixture_open_path(const char *path, fixture *f) {
  CLUDA_REQUIRE(path != NULL && f != NULL, CLUDA_ERR_ARG, "fixture_open: NULL argument");
  f->file = -1;
  snprintf(f->path, sizeof f->path, "%s", path);
  quiet_hdf5();
  CLUDA_REQUIRE(access(path, R_OK) == 0, CLUDA_ERR_IO,
                "fixture file %s is missing or unreadable (regenerate: python "
                "tools/make_fixtures.py --out tests/fixtures)",
                path);
  hid_t id = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  CLUDA_REQUIRE(id >= 0, CLUDA_ERR_IO, "fixture file %s is not a readable HDF5 file", path);
  f->file = (int64_t)id;
  return cluda_ok();
}

void fixture_close(fixture *f) {
  if (f && f->file >= 0) H5Fclose((hid_t)f->file);
  if (f) f->file = -1;
}

/* H5Oexists_by_name needs every intermediate group to exist; walk the path. */
int fixture_has(const fixture *f, const char *name) {
  if (!f || f->file < 0 || !name) return 0;
  char buf[256];
  size_t n = strlen(name);
  if (n == 0 || n >= sizeof buf) return 0;
  memcpy(buf, name, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] != '/' && buf[i] != '\0') continue;
    char saved = buf[i];
    buf[i] = '\0';
    htri_t link = H5Lexists((hid_t)f->file, buf, H5P_DEFAULT);
    htri_t obj = link > 0 ? H5Oexists_by_name((hid_t)f->file, buf, H5P_DEFAULT) : 0;
    buf[i] = saved;
    if (obj <= 0) return 0;
  }
  return 1;
}

static const char *dtype_name(cluda_dtype d) {
  return d == CLUDA_F32 ? "float32" : d == CLUDA_U8 ? "uint8" : "unsupported dtype";
}

cluda_status fixture_read(const fixture *f, const char *name, cluda_dtype dtype, cluda_tensor *t) {
  CLUDA_REQUIRE(f != NULL && f->file >= 0 && name != NULL && t != NULL, CLUDA_ERR_ARG,
                "fixture_read: fixture not open or NULL argument");
  CLUDA_REQUIRE(dtype == CLUDA_F32 || dtype == CLUDA_U8, CLUDA_ERR_ARG,
                "fixture_read: %s: only float32 and uint8 datasets are supported", name);
  memset(t, 0, sizeof *t);
  CLUDA_REQUIRE(fixture_has(f, name), CLUDA_ERR_IO, "fixture %s: no dataset '%s'", f->path, name);
  hid_t ds = H5Dopen2((hid_t)f->file, name, H5P_DEFAULT);
  CLUDA_REQUIRE(ds >= 0, CLUDA_ERR_IO, "fixture %s: '%s' is not a dataset", f->path, name);

  cluda_status st = cluda_ok();
  hid_t space = H5Dget_space(ds), type = H5Dget_type(ds);
  void *data = NULL;
  hsize_t dims[H5S_MAX_RANK];
  int ndim = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
  H5T_class_t cls = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
  size_t tsize = type >= 0 ? H5Tget_size(type) : 0;
  int type_ok = dtype == CLUDA_F32
                    ? (cls == H5T_FLOAT && tsize == 4)
                    : (cls == H5T_INTEGER && tsize == 1 && H5Tget_sign(type) == H5T_SGN_NONE);
  if (ndim < 1 || ndim > CLUDA_MAX_DIMS) {
    st = CLUDA_FAIL(CLUDA_ERR_IO, "fixture %s: dataset '%s' has rank %d (want 1..%d)", f->path,
                    name, ndim, CLUDA_MAX_DIMS);
    goto done;
  }
  if (!type_ok) {
    st = CLUDA_FAIL(CLUDA_ERR_DTYPE, "fixture %s: dataset '%s' is not %s (class %d, %zu bytes)",
                    f->path, name, dtype_name(dtype), (int)cls, tsize);
    goto done;
  }
  H5Sget_simple_extent_dims(space, dims, NULL);
  t->dtype = dtype;
  t->ndim = ndim;
  for (int i = 0; i < CLUDA_MAX_DIMS; i++)
    t->shape[i] = 1;
  size_t count = 1;
  for (int i = 0; i < ndim; i++) {
    t->shape[i] = (int)dims[i];
    count *= (size_t)dims[i];
  }
  data = malloc(count * cluda_dtype_size(dtype) + 1);
  if (!data) {
    st = CLUDA_FAIL(CLUDA_ERR_ALLOC, "fixture %s: out of memory reading '%s'", f->path, name);
    goto done;
  }
  hid_t mem = dtype == CLUDA_F32 ? H5T_NATIVE_FLOAT : H5T_NATIVE_UINT8;
  if (H5Dread(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
    free(data);
    data = NULL;
    st = CLUDA_FAIL(CLUDA_ERR_IO, "fixture %s: reading dataset '%s' failed", f->path, name);
    goto done;
  }
  t->data = data;
done:
  if (type >= 0) H5Tclose(type);
  if (space >= 0) H5Sclose(space);
  H5Dclose(ds);
  if (st.code != CLUDA_OK) memset(t, 0, sizeof *t);
  return st;
}

cluda_status fixture_read_shaped(const fixture *f, const char *name, cluda_dtype dtype, int ndim,
                                 const int *shape, cluda_tensor *t) {
  CLUDA_TRY(fixture_read(f, name, dtype, t));
  int same = t->ndim == ndim;
  for (int i = 0; same && i < ndim; i++)
    same = t->shape[i] == shape[i];
  if (!same) {
    char got[64];
    cluda_tensor want = *t;
    want.ndim = ndim;
    for (int i = 0; i < CLUDA_MAX_DIMS; i++)
      want.shape[i] = i < ndim ? shape[i] : 1;
    char wbuf[64];
    cluda_tensor_describe(t, got, sizeof got);
    cluda_tensor_describe(&want, wbuf, sizeof wbuf);
    free(t->data);
    memset(t, 0, sizeof *t);
    return CLUDA_FAIL(CLUDA_ERR_SHAPE, "fixture %s: dataset '%s' is %s, expected %s", f->path, name,
                      got, wbuf);
  }
  return cluda_ok();
}

static cluda_status open_attr(const fixture *f, const char *object, const char *attr, hid_t *out) {
  CLUDA_REQUIRE(f != NULL && f->file >= 0 && object != NULL && attr != NULL, CLUDA_ERR_ARG,
                "fixture attribute: fixture not open or NULL argument");
  CLUDA_REQUIRE(strcmp(object, "/") == 0 || fixture_has(f, object), CLUDA_ERR_IO,
                "fixture %s: no object '%s' (looking for attribute '%s')", f->path, object, attr);
  htri_t has = H5Aexists_by_name((hid_t)f->file, object, attr, H5P_DEFAULT);
  CLUDA_REQUIRE(has > 0, CLUDA_ERR_IO, "fixture %s: '%s' has no attribute '%s'", f->path, object,
                attr);
  hid_t a = H5Aopen_by_name((hid_t)f->file, object, attr, H5P_DEFAULT, H5P_DEFAULT);
  CLUDA_REQUIRE(a >= 0, CLUDA_ERR_IO, "fixture %s: cannot open attribute '%s' of '%s'", f->path,
                attr, object);
  hid_t space = H5Aget_space(a);
  hssize_t n = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
  if (space >= 0) H5Sclose(space);
  if (n != 1) {
    H5Aclose(a);
    return CLUDA_FAIL(CLUDA_ERR_IO, "fixture %s: attribute '%s' of '%s' is not a scalar", f->path,
                      attr, object);
  }
  *out = a;
  return cluda_ok();
}

static cluda_status read_numeric_attr(const fixture *f, const char *object, const char *attr,
                                      hid_t mem, void *out) {
  hid_t a = -1;
  CLUDA_TRY(open_attr(f, object, attr, &a));
  hid_t type = H5Aget_type(a);
  H5T_class_t cls = H5Tget_class(type);
  H5Tclose(type);
  herr_t rc = (cls == H5T_INTEGER || cls == H5T_FLOAT) ? H5Aread(a, mem, out) : -1;
  H5Aclose(a);
  CLUDA_REQUIRE(rc >= 0, CLUDA_ERR_IO, "fixture %s: attribute '%s' of '%s' is not numeric", f->path,
                attr, object);
  return cluda_ok();
}

cluda_status fixture_attr_int(const fixture *f, const char *object, const char *attr, int *out) {
  double v;
  CLUDA_TRY(read_numeric_attr(f, object, attr, H5T_NATIVE_DOUBLE, &v));
  CLUDA_REQUIRE(v == (double)(int)v, CLUDA_ERR_IO,
                "fixture %s: attribute '%s' of '%s' is %g, not an integer", f->path, attr, object,
                v);
  *out = (int)v;
  return cluda_ok();
}

cluda_status fixture_attr_double(const fixture *f, const char *object, const char *attr,
                                 double *out) {
  return read_numeric_attr(f, object, attr, H5T_NATIVE_DOUBLE, out);
}

cluda_status fixture_attr_string(const fixture *f, const char *object, const char *attr, char *buf,
                                 size_t size) {
  CLUDA_REQUIRE(buf != NULL && size > 0, CLUDA_ERR_ARG, "fixture_attr_string: no buffer");
  buf[0] = '\0';
  hid_t a = -1;
  CLUDA_TRY(open_attr(f, object, attr, &a));
  hid_t type = H5Aget_type(a);
  cluda_status st = cluda_ok();
  if (H5Tget_class(type) != H5T_STRING) {
    st = CLUDA_FAIL(CLUDA_ERR_IO, "fixture %s: attribute '%s' of '%s' is not a string", f->path,
                    attr, object);
  } else if (H5Tis_variable_str(type) > 0) {
    char *s = NULL;
    hid_t mem = H5Tcopy(H5T_C_S1);
    H5Tset_size(mem, H5T_VARIABLE);
    if (H5Aread(a, mem, &s) >= 0 && s) {
      snprintf(buf, size, "%s", s);
      H5free_memory(s);
    } else {
      st = CLUDA_FAIL(CLUDA_ERR_IO, "fixture %s: reading attribute '%s' of '%s' failed", f->path,
                      attr, object);
    }
    H5Tclose(mem);
  } else {
    size_t n = H5Tget_size(type);
    char *s = calloc(n + 1, 1);
    hid_t mem = H5Tcopy(H5T_C_S1);
    H5Tset_size(mem, n + 1);
    H5Tset_strpad(mem, H5T_STR_NULLTERM);
    if (s && H5Aread(a, mem, s) >= 0) {
      snprintf(buf, size, "%s", s);
    } else {
      st = CLUDA_FAIL(CLUDA_ERR_IO, "fixture %s: reading attribute '%s' of '%s' failed", f->path,
                      attr, object);
    }
    free(s);
    H5Tclose(mem);
  }
  H5Tclose(type);
  H5Aclose(a);
  return st;
}

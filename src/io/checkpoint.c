/* Training checkpoints (layout and guarantees in include/cluda/checkpoint.h). */
#include "cluda/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <hdf5.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "cluda/fileio.h"
#include "cluda/weights.h"
#include "h5_common.h"

#ifndef CLUDA_VERSION_STRING
#define CLUDA_VERSION_STRING "0.1.0"
#endif

static const char CKPT_FORMAT[] = "cluda-ckpt";
enum { PATH_CAP = 4096 };

/* ---- names ---- */

static cluda_status ckpt_dir(const char *work_dir, char *out, size_t cap) {
  int n = snprintf(out, cap, "%s/checkpoints", work_dir);
  CLUDA_REQUIRE(n > 0 && (size_t)n < cap, CLUDA_ERR_ARG, "checkpoint: work dir too long: %s",
                work_dir);
  return cluda_ok();
}

static cluda_status kind_path(const char *dir, int kind, int64_t iteration, char *out, size_t cap) {
  int n = kind == CLUDA_CKPT_LATEST ? snprintf(out, cap, "%s/latest.h5", dir)
          : kind == CLUDA_CKPT_BEST
              ? snprintf(out, cap, "%s/best.h5", dir)
              : snprintf(out, cap, "%s/iter_%08" PRId64 ".h5", dir, iteration);
  CLUDA_REQUIRE(n > 0 && (size_t)n < cap, CLUDA_ERR_ARG, "checkpoint: path too long under %s", dir);
  return cluda_ok();
}

/* N of "iter_<N>.h5", or -1 for any other name. */
static int64_t iter_number(const char *name) {
  if (strncmp(name, "iter_", 5) != 0) return -1;
  const char *p = name + 5;
  if (*p < '0' || *p > '9') return -1;
  char *end = NULL;
  errno = 0;
  long long n = strtoll(p, &end, 10);
  if (errno != 0 || strcmp(end, ".h5") != 0) return -1;
  return (int64_t)n;
}

/* ---- writing ---- */

typedef struct buffer_group {
  const char *name; /* HDF5 path of the group */
  const cluda_param_table *table;
  float *data;
} buffer_group;

/* The float buffers of a state in file order; returns how many. */
static int buffer_groups(const cluda_train_state *st, buffer_group out[6]) {
  const cluda_segmentor *m = st->model;
  int n = 0;
  out[n++] = (buffer_group){"student/params", &m->params, st->student_params};
  out[n++] = (buffer_group){"student/state", &m->state, st->student_state};
  if (st->teacher_params) {
    out[n++] = (buffer_group){"teacher/params", &m->params, st->teacher_params};
    out[n++] = (buffer_group){"teacher/state", &m->state, st->teacher_state};
  }
  out[n++] = (buffer_group){"optimizer/m", &m->params, st->optimizer->m};
  out[n++] = (buffer_group){"optimizer/v", &m->params, st->optimizer->v};
  return n;
}

static cluda_status check_state(const cluda_train_state *st, const char *op) {
  CLUDA_REQUIRE(st != NULL && st->model != NULL && st->student_params != NULL &&
                    st->optimizer != NULL && st->optimizer->m != NULL && st->optimizer->v != NULL,
                CLUDA_ERR_ARG, "%s: NULL state, model, student params or optimizer", op);
  const cluda_segmentor *m = st->model;
  CLUDA_REQUIRE(st->student_state != NULL || m->state.count == 0, CLUDA_ERR_ARG,
                "%s: student_state is NULL but the model has %d state tensors", op, m->state.count);
  CLUDA_REQUIRE(st->teacher_params ? (st->teacher_state != NULL || m->state.count == 0)
                                   : st->teacher_state == NULL,
                CLUDA_ERR_ARG, "%s: teacher_params and teacher_state must both be set or NULL", op);
  CLUDA_REQUIRE(st->optimizer->total == m->params.total &&
                    st->optimizer->table_hash == cluda_param_table_hash(&m->params),
                CLUDA_ERR_ARG, "%s: the optimizer was initialised for another parameter table", op);
  CLUDA_REQUIRE(st->stream_count >= 0 && (st->stream != NULL || st->stream_count == 0),
                CLUDA_ERR_ARG, "%s: stream is NULL with stream_count %d", op, st->stream_count);
  CLUDA_REQUIRE(st->series_count >= 0 && (st->series != NULL || st->series_count == 0),
                CLUDA_ERR_ARG, "%s: series is NULL with series_count %d", op, st->series_count);
  for (int i = 0; i < st->series_count; i++) {
    const cluda_ckpt_series *s = &st->series[i];
    CLUDA_REQUIRE(s->name[0] != '\0' && strchr(s->name, '/') == NULL && s->count >= 0 &&
                      (s->values != NULL || (s->count == 0 && s->capacity == 0)),
                  CLUDA_ERR_ARG, "%s: series %d ('%s') has no name, a '/' or no values", op, i,
                  s->name);
  }
  return cluda_ok();
}

static int write_string_dataset(hid_t loc, const char *name, const char *text) {
  hid_t type = H5Tcopy(H5T_C_S1);
  if (type < 0) return -1;
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t dset =
      space < 0 ? -1 : H5Dcreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  int rc = dset < 0 ? -1 : H5Dwrite(dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, &text);
  if (dset >= 0) H5Dclose(dset);
  if (space >= 0) H5Sclose(space);
  H5Tclose(type);
  return rc < 0 ? -1 : 0;
}

static int write_vector(hid_t loc, const char *name, hid_t file_type, hid_t mem_type,
                        const void *values, int n) {
  hsize_t dims[1] = {(hsize_t)n};
  hid_t space = H5Screate_simple(1, dims, NULL);
  hid_t dset = space < 0
                   ? -1
                   : H5Dcreate2(loc, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  int rc = dset < 0 ? -1 : 0;
  if (rc == 0 && n > 0) rc = H5Dwrite(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values);
  if (dset >= 0) H5Dclose(dset);
  if (space >= 0) H5Sclose(space);
  return rc < 0 ? -1 : 0;
}

static int write_optimizer_attrs(hid_t file, const cluda_adamw *opt) {
  hid_t g = H5Gopen2(file, "optimizer", H5P_DEFAULT);
  if (g < 0) return -1;
  const cluda_adamw_config *c = &opt->config;
  int rc = 0;
  rc |= cluda_h5_write_i64_attr(g, "step", opt->step);
  rc |= cluda_h5_write_f64_attr(g, "lr", c->lr);
  rc |= cluda_h5_write_f64_attr(g, "head_lr_mult", c->head_lr_mult);
  rc |= cluda_h5_write_f64_attr(g, "beta1", c->beta1);
  rc |= cluda_h5_write_f64_attr(g, "beta2", c->beta2);
  rc |= cluda_h5_write_f64_attr(g, "eps", c->eps);
  rc |= cluda_h5_write_f64_attr(g, "weight_decay", c->weight_decay);
  rc |= cluda_h5_write_u64_attr(g, "table_hash", opt->table_hash);
  H5Gclose(g);
  return rc;
}

static int write_root_attrs(hid_t file, const cluda_train_state *st, uint64_t param_checksum) {
  const cluda_segmentor *m = st->model;
  int version = CLUDA_CKPT_FORMAT_VERSION;
  int rc = 0;
  rc |= cluda_h5_write_string_attr(file, "format", CKPT_FORMAT);
  rc |= cluda_h5_write_ints_attr(file, "format_version", &version, 1);
  rc |= cluda_h5_write_string_attr(file, "cluda_version", CLUDA_VERSION_STRING);
  rc |= cluda_h5_write_architecture(file, m);
  rc |= cluda_h5_write_i64_attr(file, "iteration", st->iteration);
  rc |= cluda_h5_write_u64_attr(file, "seed", st->seed);
  rc |= cluda_h5_write_f64_attr(file, "best_metric", st->best_metric);
  rc |= cluda_h5_write_i64_attr(file, "best_iteration", st->best_iteration);
  rc |= cluda_h5_write_u64_attr(file, "params_table_hash", cluda_param_table_hash(&m->params));
  rc |= cluda_h5_write_u64_attr(file, "state_table_hash", cluda_param_table_hash(&m->state));
  rc |= cluda_h5_write_u64_attr(file, "param_checksum", param_checksum);
  rc |= cluda_h5_write_f64_attr(file, "wall_time", (double)time(NULL));
  return rc;
}

/* Everything into an open file; the caller flushes, closes and cleans up. */
static cluda_status write_contents(hid_t file, const cluda_train_state *st, const char *path) {
  const char *op = "checkpoint_save";
  const char *sp = cluda_h5_short_path(path);
  const char *config = st->config_yaml ? st->config_yaml : "";
  CLUDA_REQUIRE(write_string_dataset(file, "config", config) == 0, CLUDA_ERR_IO,
                "%s %s: cannot write /config", op, sp);
  CLUDA_REQUIRE(write_vector(file, "data_stream", H5T_STD_I64LE, H5T_NATIVE_INT64, st->stream,
                             st->stream_count) == 0,
                CLUDA_ERR_IO, "%s %s: cannot write /data_stream", op, sp);
  hid_t extra = H5Gcreate2(file, "extra", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  CLUDA_REQUIRE(extra >= 0, CLUDA_ERR_IO, "%s %s: cannot create /extra", op, sp);
  int rc = 0;
  for (int i = 0; i < st->series_count && rc == 0; i++)
    rc = write_vector(extra, st->series[i].name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE,
                      st->series[i].values, st->series[i].count);
  H5Gclose(extra);
  CLUDA_REQUIRE(rc == 0, CLUDA_ERR_IO, "%s %s: cannot write /extra", op, sp);

  buffer_group groups[6];
  int n = buffer_groups(st, groups);
  uint64_t param_checksum = 0;
  for (int i = 0; i < n; i++) {
    uint64_t hash = 0;
    CLUDA_TRY(
        cluda_h5_write_table(file, groups[i].name, groups[i].table, groups[i].data, op, sp, &hash));
    hid_t g = H5Gopen2(file, groups[i].name, H5P_DEFAULT);
    rc = g < 0 ? -1 : cluda_h5_write_u64_attr(g, "fnv1a64", hash);
    if (g >= 0) H5Gclose(g);
    CLUDA_REQUIRE(rc == 0, CLUDA_ERR_IO, "%s %s: cannot write /%s attributes", op, sp,
                  groups[i].name);
    if (i == 0) param_checksum = hash;
  }
  CLUDA_REQUIRE(write_optimizer_attrs(file, st->optimizer) == 0, CLUDA_ERR_IO,
                "%s %s: cannot write the /optimizer attributes", op, sp);
  CLUDA_REQUIRE(write_root_attrs(file, st, param_checksum) == 0, CLUDA_ERR_IO,
                "%s %s: cannot write the root attributes", op, sp);
  return cluda_ok();
}

static int is_space_error(int err) { return err == ENOSPC || err == EFBIG || err == EDQUOT; }

/* Writes the complete file at tmp (removed again on any failure). */
static cluda_status write_file(const char *tmp, const char *path, const cluda_train_state *st) {
  cluda_status s = cluda_ok();
  errno = 0;
  H5E_BEGIN_TRY {
    hid_t file = H5Fcreate(tmp, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (file < 0) {
      s = CLUDA_FAIL(CLUDA_ERR_IO, "checkpoint_save: cannot create %s", tmp);
    } else {
      s = write_contents(file, st, path);
      if (s.code == CLUDA_OK && H5Fflush(file, H5F_SCOPE_GLOBAL) < 0)
        s = CLUDA_FAIL(CLUDA_ERR_IO, "checkpoint_save %s: H5Fflush failed",
                       cluda_h5_short_path(path));
      /* Close even after a failure so the temp's descriptor is released. */
      if (H5Fclose(file) < 0 && s.code == CLUDA_OK)
        s = CLUDA_FAIL(CLUDA_ERR_IO, "checkpoint_save %s: H5Fclose failed",
                       cluda_h5_short_path(path));
    }
  }
  H5E_END_TRY;
  if (s.code != CLUDA_OK) {
    int err = errno;
    unlink(tmp); /* the published files are untouched */
    if (is_space_error(err))
      s = CLUDA_FAIL(CLUDA_ERR_IO,
                     "checkpoint_save %s: %s while writing; the previous checkpoint is kept",
                     cluda_h5_short_path(path), strerror(err));
  }
  return s;
}

static cluda_status ensure_dir(const char *dir) {
  struct stat sb;
  if (stat(dir, &sb) == 0) {
    CLUDA_REQUIRE(S_ISDIR(sb.st_mode), CLUDA_ERR_IO, "checkpoint_save: %s is not a directory", dir);
    return cluda_ok();
  }
  CLUDA_REQUIRE(mkdir(dir, 0777) == 0 || errno == EEXIST, CLUDA_ERR_IO,
                "checkpoint_save: cannot create %s: %s", dir, strerror(errno));
  return cluda_ok();
}

/* Fails early, before any write, when the file system clearly lacks room for the file. */
static cluda_status check_space(const char *dir, const cluda_train_state *st) {
  const cluda_segmentor *m = st->model;
  int buffers = st->teacher_params ? 4 : 2;
  double bytes = 4.0 * ((double)(buffers + 2) * (double)m->params.total +
                        (double)buffers / 2 * (double)m->state.total);
  bytes += 2048.0 * (double)(m->params.count * (buffers + 2) + m->state.count * buffers) +
           (st->config_yaml ? (double)strlen(st->config_yaml) : 0.0) + (1 << 20);
  struct statvfs vfs;
  if (statvfs(dir, &vfs) != 0) return cluda_ok(); /* unknown: let the write find out */
  double avail = (double)vfs.f_bavail * (double)vfs.f_frsize;
  CLUDA_REQUIRE(avail >= bytes, CLUDA_ERR_IO,
                "checkpoint_save: no space left on %s: a checkpoint needs about %.0f MiB, %.0f "
                "MiB free; the previous checkpoint is kept",
                cluda_h5_short_path(dir), bytes / 1048576.0, avail / 1048576.0);
  return cluda_ok();
}

/* Publishes `src` (already published) under `dst` too: a hard link when the file system has
 * them, otherwise a second full write. */
static cluda_status publish_alias(const char *src, const char *dst, const cluda_train_state *st) {
  char tmp[PATH_CAP + 32];
  CLUDA_TRY(cluda_temp_path(dst, tmp, sizeof tmp));
  unlink(tmp);
  if (link(src, tmp) != 0) CLUDA_TRY(write_file(tmp, dst, st));
  return cluda_publish_file(tmp, dst);
}

typedef struct iter_file {
  int64_t n;
  char name[256];
} iter_file;

static int iter_file_desc(const void *a, const void *b) {
  int64_t x = ((const iter_file *)a)->n, y = ((const iter_file *)b)->n;
  return x < y ? 1 : x > y ? -1 : 0;
}

/* Keeps the `keep` iter_ files with the highest N (and always `current`). */
static cluda_status prune_iters(const char *dir, int keep, int64_t current) {
  DIR *d = opendir(dir);
  CLUDA_REQUIRE(d != NULL, CLUDA_ERR_IO, "checkpoint_save: cannot list %s", dir);
  iter_file *files = NULL;
  int count = 0, cap = 0;
  cluda_status s = cluda_ok();
  for (struct dirent *e = readdir(d); e != NULL; e = readdir(d)) {
    int64_t n = iter_number(e->d_name);
    if (n < 0 || strlen(e->d_name) >= sizeof files[0].name) continue;
    if (count == cap) {
      cap = cap ? 2 * cap : 16;
      iter_file *grown = realloc(files, (size_t)cap * sizeof *files);
      if (!grown) {
        s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "checkpoint_save: out of memory listing %s", dir);
        break;
      }
      files = grown;
    }
    files[count].n = n;
    snprintf(files[count].name, sizeof files[count].name, "%s", e->d_name);
    count++;
  }
  closedir(d);
  if (s.code == CLUDA_OK) {
    qsort(files, (size_t)count, sizeof *files, iter_file_desc);
    int kept = 1; /* the current file */
    for (int i = 0; i < count; i++) {
      if (files[i].n == current) continue;
      if (kept < keep) {
        kept++;
        continue;
      }
      char path[PATH_CAP + 300];
      snprintf(path, sizeof path, "%s/%s", dir, files[i].name);
      if (unlink(path) != 0 && errno != ENOENT && s.code == CLUDA_OK)
        s = CLUDA_FAIL(CLUDA_ERR_IO, "checkpoint_save: cannot delete %s: %s", path,
                       strerror(errno));
    }
  }
  free(files);
  return s;
}

cluda_status cluda_checkpoint_save(const char *work_dir, int kinds, const cluda_train_state *state,
                                   int keep_iters, char *path_out, size_t path_cap) {
  CLUDA_REQUIRE(work_dir != NULL, CLUDA_ERR_ARG, "checkpoint_save: NULL work_dir");
  CLUDA_REQUIRE(kinds > 0 &&
                    (kinds & ~(CLUDA_CKPT_LATEST | CLUDA_CKPT_BEST | CLUDA_CKPT_ITER)) == 0,
                CLUDA_ERR_ARG, "checkpoint_save: kinds 0x%x is not a mask of LATEST|BEST|ITER",
                (unsigned)kinds);
  CLUDA_TRY(check_state(state, "checkpoint_save"));
  CLUDA_REQUIRE(state->iteration >= 0, CLUDA_ERR_ARG, "checkpoint_save: iteration %" PRId64,
                state->iteration);
  char dir[PATH_CAP];
  CLUDA_TRY(ckpt_dir(work_dir, dir, sizeof dir));
  CLUDA_TRY(ensure_dir(dir));
  CLUDA_TRY(check_space(dir, state));

  /* Written in the order ITER, LATEST, BEST: the first one is the real write. */
  static const int order[3] = {CLUDA_CKPT_ITER, CLUDA_CKPT_LATEST, CLUDA_CKPT_BEST};
  char first[PATH_CAP + 32] = "";
  for (int i = 0; i < 3; i++) {
    if (!(kinds & order[i])) continue;
    char path[PATH_CAP + 32];
    CLUDA_TRY(kind_path(dir, order[i], state->iteration, path, sizeof path));
    if (!first[0]) {
      char tmp[PATH_CAP + 64];
      CLUDA_TRY(cluda_temp_path(path, tmp, sizeof tmp));
      CLUDA_TRY(write_file(tmp, path, state));
      CLUDA_TRY(cluda_publish_file(tmp, path));
      snprintf(first, sizeof first, "%s", path);
    } else {
      CLUDA_TRY(publish_alias(first, path, state));
    }
  }
  if (path_out && path_cap) snprintf(path_out, path_cap, "%s", first);
  if ((kinds & CLUDA_CKPT_ITER) && keep_iters > 0)
    CLUDA_TRY(prune_iters(dir, keep_iters, state->iteration));
  return cluda_ok();
}

/* ---- reading ---- */

static cluda_status open_checkpoint(const char *path, const char *op, hid_t *out) {
  FILE *probe = fopen(path, "rb");
  CLUDA_REQUIRE(probe != NULL, CLUDA_ERR_IO, "%s: cannot open %s: %s", op, path, strerror(errno));
  fclose(probe);
  hid_t file;
  H5E_BEGIN_TRY { file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT); }
  H5E_END_TRY;
  CLUDA_REQUIRE(file >= 0, CLUDA_ERR_IO,
                "%s: %s is not a readable HDF5 file (truncated or corrupt?)", op, path);
  char text[64];
  int version = 0;
  const char *sp = cluda_h5_short_path(path);
  cluda_status s = cluda_ok();
  if (cluda_h5_read_string_attr(file, "format", text, sizeof text) != 0 ||
      strcmp(text, CKPT_FORMAT) != 0)
    s = CLUDA_FAIL(CLUDA_ERR_IO, "%s %s: not a cluda checkpoint (format '%s')", op, sp, text);
  else if (cluda_h5_read_ints_attr(file, "format_version", &version, 1) != 0 || version < 1 ||
           version > CLUDA_CKPT_FORMAT_VERSION)
    s = CLUDA_FAIL(CLUDA_ERR_IO, "%s %s: format_version %d (this build reads 1..%d)", op, sp,
                   version, CLUDA_CKPT_FORMAT_VERSION);
  if (s.code != CLUDA_OK) {
    H5Fclose(file);
    return s;
  }
  *out = file;
  return cluda_ok();
}

static int has_link(hid_t loc, const char *name) {
  htri_t rc;
  H5E_BEGIN_TRY { rc = H5Lexists(loc, name, H5P_DEFAULT); }
  H5E_END_TRY;
  return rc > 0;
}

/* Elements of a 1-D dataset, or -1. */
static int64_t vector_length(hid_t loc, const char *name, H5T_class_t cls) {
  hid_t dset;
  H5E_BEGIN_TRY { dset = H5Dopen2(loc, name, H5P_DEFAULT); }
  H5E_END_TRY;
  if (dset < 0) return -1;
  hid_t space = H5Dget_space(dset), type = H5Dget_type(dset);
  int64_t n = -1;
  if (space >= 0 && type >= 0 && H5Tget_class(type) == cls &&
      H5Sget_simple_extent_ndims(space) == 1) {
    hsize_t dims[1];
    H5Sget_simple_extent_dims(space, dims, NULL);
    n = (int64_t)dims[0];
  }
  if (type >= 0) H5Tclose(type);
  if (space >= 0) H5Sclose(space);
  H5Dclose(dset);
  return n;
}

static int read_vector(hid_t loc, const char *name, hid_t mem_type, void *values, int64_t n) {
  if (n == 0) return 0;
  hid_t dset;
  H5E_BEGIN_TRY { dset = H5Dopen2(loc, name, H5P_DEFAULT); }
  H5E_END_TRY;
  if (dset < 0) return -1;
  herr_t rc;
  H5E_BEGIN_TRY { rc = H5Dread(dset, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values); }
  H5E_END_TRY;
  H5Dclose(dset);
  return rc < 0 ? -1 : 0;
}

/* The /config text, malloc'd (NULL on failure). */
static char *read_config(hid_t file) {
  hid_t dset;
  H5E_BEGIN_TRY { dset = H5Dopen2(file, "config", H5P_DEFAULT); }
  H5E_END_TRY;
  if (dset < 0) return NULL;
  hid_t mtype = H5Tcopy(H5T_C_S1);
  H5Tset_size(mtype, H5T_VARIABLE);
  H5Tset_cset(mtype, H5T_CSET_UTF8);
  char *value = NULL, *copy = NULL;
  herr_t rc;
  H5E_BEGIN_TRY { rc = H5Dread(dset, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, &value); }
  H5E_END_TRY;
  if (rc >= 0 && value) {
    size_t n = strlen(value);
    copy = malloc(n + 1);
    if (copy) memcpy(copy, value, n + 1);
    H5free_memory(value);
  }
  H5Tclose(mtype);
  H5Dclose(dset);
  return copy;
}

static cluda_status check_u64(hid_t obj, const char *op, const char *sp, const char *name,
                              uint64_t want, const char *what) {
  uint64_t got = 0;
  CLUDA_REQUIRE(cluda_h5_read_u64_attr(obj, name, &got) == 0, CLUDA_ERR_IO,
                "%s %s: attribute '%s' missing", op, sp, name);
  CLUDA_REQUIRE(got == want, CLUDA_ERR_SHAPE,
                "%s %s: %s differs (%s %016" PRIx64 " in the file, %016" PRIx64 " in the model)",
                op, sp, what, name, got, want);
  return cluda_ok();
}

/* The shortest of %.15g / %.17g that reads back as v (0.999, not 0.99899999999999999). */
static void format_double(char *buf, size_t cap, double v) {
  snprintf(buf, cap, "%.15g", v);
  if (strtod(buf, NULL) != v) snprintf(buf, cap, "%.17g", v);
}

static cluda_status check_optimizer(hid_t file, const char *op, const char *sp,
                                    const cluda_adamw *opt) {
  hid_t g;
  H5E_BEGIN_TRY { g = H5Gopen2(file, "optimizer", H5P_DEFAULT); }
  H5E_END_TRY;
  CLUDA_REQUIRE(g >= 0, CLUDA_ERR_IO, "%s %s: group /optimizer missing", op, sp);
  const cluda_adamw_config *c = &opt->config;
  const struct {
    const char *name;
    double value;
  } fields[6] = {{"lr", c->lr},       {"head_lr_mult", c->head_lr_mult},
                 {"beta1", c->beta1}, {"beta2", c->beta2},
                 {"eps", c->eps},     {"weight_decay", c->weight_decay}};
  cluda_status s = check_u64(g, op, sp, "table_hash", opt->table_hash, "the optimizer's table");
  int64_t step = 0;
  if (s.code == CLUDA_OK && (cluda_h5_read_i64_attr(g, "step", &step) != 0 || step < 0))
    s = CLUDA_FAIL(CLUDA_ERR_IO, "%s %s: /optimizer attribute 'step' missing or negative", op, sp);
  for (int i = 0; i < 6 && s.code == CLUDA_OK; i++) {
    double got = 0;
    if (cluda_h5_read_f64_attr(g, fields[i].name, &got) != 0)
      s = CLUDA_FAIL(CLUDA_ERR_IO, "%s %s: /optimizer attribute '%s' missing", op, sp,
                     fields[i].name);
    else if (got != fields[i].value) {
      char fs[32], rs[32];
      format_double(fs, sizeof fs, got);
      format_double(rs, sizeof rs, fields[i].value);
      s = CLUDA_FAIL(CLUDA_ERR_ARG,
                     "%s %s: incompatible optimizer config: %s is %s in the checkpoint, %s in this "
                     "run",
                     op, sp, fields[i].name, fs, rs);
    }
  }
  H5Gclose(g);
  return s;
}

/* Every check that needs no tensor data. */
static cluda_status validate(hid_t file, const char *path, const cluda_train_state *st) {
  const char *op = "checkpoint_load";
  const char *sp = cluda_h5_short_path(path);
  const cluda_segmentor *m = st->model;
  CLUDA_TRY(cluda_h5_check_architecture(file, op, path, m));
  int has_teacher = has_link(file, "teacher");
  CLUDA_REQUIRE(has_teacher == (st->teacher_params != NULL), CLUDA_ERR_ARG,
                "%s %s: the checkpoint %s, this run %s", op, sp,
                has_teacher ? "has a teacher" : "has no teacher",
                st->teacher_params ? "has one" : "has none");
  buffer_group groups[6];
  int n = buffer_groups(st, groups);
  for (int i = 0; i < n; i++)
    CLUDA_TRY(cluda_h5_visit_table(file, groups[i].name, groups[i].table, NULL, 0, op, path, NULL));
  /* Names and shapes agree; the hashes also cover order, offsets, groups and no_decay. */
  CLUDA_TRY(check_u64(file, op, sp, "params_table_hash", cluda_param_table_hash(&m->params),
                      "the parameter table (order, groups or no_decay flags)"));
  CLUDA_TRY(check_u64(file, op, sp, "state_table_hash", cluda_param_table_hash(&m->state),
                      "the state table"));
  CLUDA_TRY(check_optimizer(file, op, sp, st->optimizer));
  uint64_t seed = 0;
  CLUDA_REQUIRE(cluda_h5_read_u64_attr(file, "seed", &seed) == 0, CLUDA_ERR_IO,
                "%s %s: attribute 'seed' missing", op, sp);
  CLUDA_REQUIRE(seed == st->seed, CLUDA_ERR_ARG,
                "%s %s: the checkpoint was trained with seed %" PRIu64 ", this run has %" PRIu64,
                op, sp, seed, st->seed);
  int64_t iteration = 0, best_iteration = 0;
  double best = 0;
  CLUDA_REQUIRE(cluda_h5_read_i64_attr(file, "iteration", &iteration) == 0 && iteration >= 0 &&
                    cluda_h5_read_i64_attr(file, "best_iteration", &best_iteration) == 0 &&
                    cluda_h5_read_f64_attr(file, "best_metric", &best) == 0,
                CLUDA_ERR_IO, "%s %s: iteration or best_* attributes missing", op, sp);
  int64_t streams = vector_length(file, "data_stream", H5T_INTEGER);
  CLUDA_REQUIRE(streams >= 0, CLUDA_ERR_IO, "%s %s: /data_stream missing or not int64[n]", op, sp);
  CLUDA_REQUIRE(streams == st->stream_count, CLUDA_ERR_ARG,
                "%s %s: the data stream has %" PRId64 " position(s) in the checkpoint, this run "
                "expects %d",
                op, sp, streams, st->stream_count);
  for (int i = 0; i < st->series_count; i++) {
    char name[CLUDA_CKPT_NAME_MAX + 8];
    snprintf(name, sizeof name, "extra/%s", st->series[i].name);
    if (!has_link(file, name)) continue;
    int64_t len = vector_length(file, name, H5T_FLOAT);
    CLUDA_REQUIRE(len >= 0, CLUDA_ERR_IO, "%s %s: /%s is not float64[n]", op, sp, name);
    CLUDA_REQUIRE(len <= st->series[i].capacity, CLUDA_ERR_ARG,
                  "%s %s: /%s has %" PRId64 " values, capacity is %d", op, sp, name, len,
                  st->series[i].capacity);
  }
  return cluda_ok();
}

static cluda_status read_buffers(hid_t file, const char *path, const cluda_train_state *st) {
  const char *op = "checkpoint_load";
  const char *sp = cluda_h5_short_path(path);
  buffer_group groups[6];
  int n = buffer_groups(st, groups);
  for (int i = 0; i < n; i++) {
    uint64_t hash = 0, stored = 0;
    cluda_status s = cluda_h5_visit_table(file, groups[i].name, groups[i].table, groups[i].data, 1,
                                          op, path, &hash);
    if (s.code != CLUDA_OK) {
      size_t len = strlen(s.message);
      snprintf(s.message + len, sizeof s.message - len, "; buffers partly overwritten");
      return s;
    }
    hid_t g = H5Gopen2(file, groups[i].name, H5P_DEFAULT);
    int rc = g < 0 ? -1 : cluda_h5_read_u64_attr(g, "fnv1a64", &stored);
    if (g >= 0) H5Gclose(g);
    CLUDA_REQUIRE(rc == 0 && stored == hash, CLUDA_ERR_IO,
                  "%s %s: /%s fails its buffer checksum (corrupt file); buffers partly "
                  "overwritten",
                  op, sp, groups[i].name);
  }
  return cluda_ok();
}

/* The scalars, read into locals first so a failure changes nothing. */
static cluda_status read_scalars(hid_t file, const char *path, cluda_train_state *st) {
  const char *op = "checkpoint_load";
  const char *sp = cluda_h5_short_path(path);
  int64_t iteration = 0, best_iteration = 0, step = 0;
  double best = 0;
  hid_t g = H5Gopen2(file, "optimizer", H5P_DEFAULT);
  int rc = g < 0 ? -1 : cluda_h5_read_i64_attr(g, "step", &step);
  if (g >= 0) H5Gclose(g);
  rc |= cluda_h5_read_i64_attr(file, "iteration", &iteration);
  rc |= cluda_h5_read_i64_attr(file, "best_iteration", &best_iteration);
  rc |= cluda_h5_read_f64_attr(file, "best_metric", &best);
  CLUDA_REQUIRE(rc == 0, CLUDA_ERR_IO, "%s %s: cannot read the scalar attributes", op, sp);
  int64_t *stream = NULL;
  if (st->stream_count > 0) {
    stream = malloc((size_t)st->stream_count * sizeof *stream);
    CLUDA_REQUIRE(stream != NULL, CLUDA_ERR_ALLOC, "%s: out of memory", op);
    if (read_vector(file, "data_stream", H5T_NATIVE_INT64, stream, st->stream_count) != 0) {
      free(stream);
      return CLUDA_FAIL(CLUDA_ERR_IO, "%s %s: cannot read /data_stream", op, sp);
    }
  }
  /* Series are read in place: validate() checked their capacities. */
  cluda_status s = cluda_ok();
  for (int i = 0; i < st->series_count && s.code == CLUDA_OK; i++) {
    cluda_ckpt_series *ser = &st->series[i];
    char name[CLUDA_CKPT_NAME_MAX + 8];
    snprintf(name, sizeof name, "extra/%s", ser->name);
    int64_t len = has_link(file, name) ? vector_length(file, name, H5T_FLOAT) : 0;
    if (len < 0 || read_vector(file, name, H5T_NATIVE_DOUBLE, ser->values, len) != 0)
      s = CLUDA_FAIL(CLUDA_ERR_IO, "%s %s: cannot read /%s", op, sp, name);
    else
      ser->count = (int)len;
  }
  if (s.code == CLUDA_OK) {
    if (stream) memcpy(st->stream, stream, (size_t)st->stream_count * sizeof *stream);
    st->iteration = iteration;
    st->best_iteration = best_iteration;
    st->best_metric = best;
    st->optimizer->step = step;
  }
  free(stream);
  return s;
}

cluda_status cluda_checkpoint_load(const char *path, cluda_train_state *state) {
  CLUDA_REQUIRE(path != NULL, CLUDA_ERR_ARG, "checkpoint_load: NULL path");
  CLUDA_TRY(check_state(state, "checkpoint_load"));
  hid_t file;
  CLUDA_TRY(open_checkpoint(path, "checkpoint_load", &file));
  cluda_status s = validate(file, path, state);
  /* Everything that can be checked matched: only now are the caller's buffers written. */
  if (s.code == CLUDA_OK) s = read_buffers(file, path, state);
  if (s.code == CLUDA_OK) s = read_scalars(file, path, state);
  H5Fclose(file);
  return s;
}

/* ---- header, discovery, export ---- */

cluda_status cluda_checkpoint_read_info(const char *path, cluda_ckpt_info *info) {
  CLUDA_REQUIRE(path != NULL && info != NULL, CLUDA_ERR_ARG, "checkpoint_info: NULL argument");
  memset(info, 0, sizeof *info);
  hid_t file;
  CLUDA_TRY(open_checkpoint(path, "checkpoint_info", &file));
  int rc = cluda_h5_read_ints_attr(file, "format_version", &info->format_version, 1);
  rc |= cluda_h5_read_i64_attr(file, "iteration", &info->iteration);
  rc |= cluda_h5_read_u64_attr(file, "seed", &info->seed);
  rc |= cluda_h5_read_f64_attr(file, "best_metric", &info->best_metric);
  rc |= cluda_h5_read_i64_attr(file, "best_iteration", &info->best_iteration);
  rc |= cluda_h5_read_u64_attr(file, "param_checksum", &info->param_checksum);
  rc |= cluda_h5_read_string_attr(file, "encoder_name", info->encoder_name,
                                  sizeof info->encoder_name);
  hid_t g;
  H5E_BEGIN_TRY { g = H5Gopen2(file, "optimizer", H5P_DEFAULT); }
  H5E_END_TRY;
  rc |= g < 0 ? -1 : cluda_h5_read_i64_attr(g, "step", &info->optimizer_step);
  if (g >= 0) H5Gclose(g);
  info->has_teacher = has_link(file, "teacher");
  info->config_yaml = read_config(file);
  H5Fclose(file);
  if (rc != 0 || info->config_yaml == NULL) {
    cluda_checkpoint_info_free(info);
    return CLUDA_FAIL(CLUDA_ERR_IO, "checkpoint_info %s: header attributes or /config missing",
                      cluda_h5_short_path(path));
  }
  return cluda_ok();
}

void cluda_checkpoint_info_free(cluda_ckpt_info *info) {
  if (!info) return;
  free(info->config_yaml);
  info->config_yaml = NULL;
}

/* The stored iteration of a checkpoint whose header reads, or -1. */
static int64_t header_iteration(const char *path) {
  hid_t file;
  cluda_status s = open_checkpoint(path, "checkpoint_find", &file);
  if (s.code != CLUDA_OK) return -1;
  int64_t iteration = -1;
  if (cluda_h5_read_i64_attr(file, "iteration", &iteration) != 0) iteration = -1;
  H5Fclose(file);
  return iteration;
}

cluda_status cluda_checkpoint_find_latest(const char *work_dir, char *path_out, size_t path_cap) {
  CLUDA_REQUIRE(work_dir != NULL && path_out != NULL && path_cap > 0, CLUDA_ERR_ARG,
                "checkpoint_find_latest: NULL argument");
  char dir[PATH_CAP];
  CLUDA_TRY(ckpt_dir(work_dir, dir, sizeof dir));
  DIR *d = opendir(dir);
  CLUDA_REQUIRE(d != NULL, CLUDA_ERR_IO, "checkpoint_find_latest: no checkpoint directory %s", dir);
  int64_t best_iter = -1;
  int best_rank = 0; /* 3 latest, 2 iter_, 1 best */
  char best_path[PATH_CAP + 300] = "";
  for (struct dirent *e = readdir(d); e != NULL; e = readdir(d)) {
    int rank = strcmp(e->d_name, "latest.h5") == 0 ? 3
               : iter_number(e->d_name) >= 0       ? 2
               : strcmp(e->d_name, "best.h5") == 0 ? 1
                                                   : 0;
    if (!rank) continue;
    char path[PATH_CAP + 300];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    int64_t it = header_iteration(path);
    if (it < 0) continue;
    if (it > best_iter || (it == best_iter && rank > best_rank)) {
      best_iter = it;
      best_rank = rank;
      snprintf(best_path, sizeof best_path, "%s", path);
    }
  }
  closedir(d);
  CLUDA_REQUIRE(best_path[0] != '\0', CLUDA_ERR_IO,
                "checkpoint_find_latest: no readable checkpoint in %s", dir);
  CLUDA_REQUIRE(strlen(best_path) < path_cap, CLUDA_ERR_ARG,
                "checkpoint_find_latest: path buffer too small for %s", best_path);
  snprintf(path_out, path_cap, "%s", best_path);
  return cluda_ok();
}

cluda_status cluda_checkpoint_load_weights(const char *ckpt_path, const cluda_segmentor *model,
                                           int teacher, float *params, float *state) {
  CLUDA_REQUIRE(ckpt_path != NULL && model != NULL && params != NULL &&
                    (state != NULL || model->state.total == 0),
                CLUDA_ERR_ARG, "checkpoint_load_weights: NULL argument");
  const char *op = "checkpoint_load_weights";
  hid_t file;
  CLUDA_TRY(open_checkpoint(ckpt_path, op, &file));
  char gp[32], gs[32];
  snprintf(gp, sizeof gp, "%s/params", teacher ? "teacher" : "student");
  snprintf(gs, sizeof gs, "%s/state", teacher ? "teacher" : "student");
  cluda_status s = cluda_h5_check_architecture(file, op, ckpt_path, model);
  /* pass 0 checks every name and shape, pass 1 reads: a mismatch writes nothing */
  for (int read = 0; read < 2; read++) {
    if (s.code == CLUDA_OK)
      s = cluda_h5_visit_table(file, gp, &model->params, params, read, op, ckpt_path, NULL);
    if (s.code == CLUDA_OK)
      s = cluda_h5_visit_table(file, gs, &model->state, state, read, op, ckpt_path, NULL);
  }
  H5Fclose(file);
  return s;
}

cluda_status cluda_checkpoint_export_weights(const char *ckpt_path, const cluda_segmentor *model,
                                             int teacher, const char *weights_path) {
  CLUDA_REQUIRE(ckpt_path != NULL && model != NULL && weights_path != NULL, CLUDA_ERR_ARG,
                "checkpoint_export: NULL argument");
  float *params = calloc(model->params.total ? model->params.total : 1, sizeof(float));
  float *state = calloc(model->state.total ? model->state.total : 1, sizeof(float));
  cluda_status s = params && state
                       ? cluda_ok()
                       : CLUDA_FAIL(CLUDA_ERR_ALLOC, "checkpoint_export: out of memory");
  if (s.code == CLUDA_OK)
    s = cluda_checkpoint_load_weights(ckpt_path, model, teacher, params, state);
  if (s.code == CLUDA_OK) s = cluda_weights_save_h5(weights_path, model, params, state);
  free(params);
  free(state);
  return s;
}

cluda_status cluda_checkpoint_remove_stale(const char *work_dir, int *removed) {
  CLUDA_REQUIRE(work_dir != NULL, CLUDA_ERR_ARG, "checkpoint_remove_stale: NULL work_dir");
  if (removed) *removed = 0;
  char dir[PATH_CAP];
  CLUDA_TRY(ckpt_dir(work_dir, dir, sizeof dir));
  DIR *d = opendir(dir);
  if (!d) return cluda_ok(); /* nothing saved yet */
  cluda_status s = cluda_ok();
  for (struct dirent *e = readdir(d); e != NULL; e = readdir(d)) {
    const char *mark = strstr(e->d_name, ".tmp.");
    if (!mark) continue;
    char *end = NULL;
    long pid = strtol(mark + 5, &end, 10);
    if (end == mark + 5 || *end != '\0' || pid <= 0) continue;
    /* A live writer (this process or another run sharing the directory) keeps its temp. */
    if (pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno == EPERM) continue;
    char path[PATH_CAP + 300];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    if (unlink(path) == 0) {
      if (removed) (*removed)++;
    } else if (errno != ENOENT && s.code == CLUDA_OK) {
      s = CLUDA_FAIL(CLUDA_ERR_IO, "checkpoint_remove_stale: cannot delete %s: %s", path,
                     strerror(errno));
    }
  }
  closedir(d);
  return s;
}

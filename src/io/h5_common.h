/* Internal HDF5 helpers shared by the weight file (weights_h5.c) and the training checkpoint
 * (checkpoint.c): typed attributes, the architecture attributes, and one float32 dataset per
 * table entry with an fnv1a64 checksum attribute. Not part of the public API.
 *
 * Attribute helpers return 0 on success and -1 on failure; `op` and `path` only label
 * error messages ("weights_load_h5 <path>: ..."). */
#ifndef CLUDA_IO_H5_COMMON_H
#define CLUDA_IO_H5_COMMON_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

#include "cluda/segmentor.h"

#define CLUDA_FNV1A64_INIT 1469598103934665603ull

/* FNV-1a 64 over `bytes` bytes, continuing from h (CLUDA_FNV1A64_INIT to start). */
uint64_t cluda_fnv1a64(uint64_t h, const void *data, size_t bytes);

int cluda_h5_write_string_attr(hid_t obj, const char *name, const char *value);
int cluda_h5_write_ints_attr(hid_t obj, const char *name, const int *values, int n);
int cluda_h5_write_u64_attr(hid_t obj, const char *name, uint64_t value);
int cluda_h5_write_i64_attr(hid_t obj, const char *name, int64_t value);
int cluda_h5_write_f64_attr(hid_t obj, const char *name, double value);

int cluda_h5_read_string_attr(hid_t obj, const char *name, char *out, size_t cap);
/* Reads an integer attribute of exactly n values. */
int cluda_h5_read_ints_attr(hid_t obj, const char *name, int *values, int n);
int cluda_h5_read_u64_attr(hid_t obj, const char *name, uint64_t *value);
int cluda_h5_read_i64_attr(hid_t obj, const char *name, int64_t *value);
int cluda_h5_read_f64_attr(hid_t obj, const char *name, double *value);

/* "[1,2,3]" into buf. */
void cluda_h5_format_ints(char *buf, size_t cap, const int *v, int n);
/* The last 48 characters of a path, for messages that must fit a cluda_status. */
const char *cluda_h5_short_path(const char *path);

/* The architecture attributes (encoder_name ... state_count) on `obj`. */
int cluda_h5_write_architecture(hid_t obj, const cluda_segmentor *model);
/* Fails with CLUDA_ERR_SHAPE "another architecture: X is .. in the file, .. in the model". */
cluda_status cluda_h5_check_architecture(hid_t obj, const char *op, const char *path,
                                         const cluda_segmentor *model);

/* Creates group `group_name` (intermediate groups too) under loc with one float32 dataset per
 * entry (attributes layout and fnv1a64). *group_hash (may be NULL) receives the fnv1a64 of
 * the per-entry checksums in table order. */
cluda_status cluda_h5_write_table(hid_t loc, const char *group_name, const cluda_param_table *table,
                                  const float *data, const char *op, const char *path,
                                  uint64_t *group_hash);

/* Validates (read == 0: every entry present with its shape and a float type, no extra
 * entries; data untouched) or reads (read == 1: into data, each entry checked against its
 * fnv1a64 attribute) group `group_name`. On a read, *group_hash (may be NULL) receives the
 * same combined hash as cluda_h5_write_table. */
cluda_status cluda_h5_visit_table(hid_t loc, const char *group_name, const cluda_param_table *table,
                                  float *data, int read, const char *op, const char *path,
                                  uint64_t *group_hash);

#endif

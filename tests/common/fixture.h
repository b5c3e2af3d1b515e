/* Reader for the golden fixture files of tests/fixtures (written by tools/make_fixtures.py):
 * HDF5 files with one group per case, float32 / uint8 datasets in cluda's layout and
 * int / float / string attributes. Every function returns a cluda_status whose message
 * names the file and the dataset or attribute at fault. */
#ifndef CLUDA_TEST_FIXTURE_H
#define CLUDA_TEST_FIXTURE_H

#include <stdint.h>

#include "cluda/status.h"
#include "cluda/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct fixture {
  int64_t file; /* HDF5 file id (hid_t); < 0 when closed */
  char path[512];
} fixture;

/* Opens CLUDA_FIXTURE_DIR "/<name>.h5" read-only. A missing file is CLUDA_ERR_IO with the
 * full path and the command that regenerates it. */
cluda_status fixture_open(const char *name, fixture *f);
/* Opens a fixture by its full path. */
cluda_status fixture_open_path(const char *path, fixture *f);
void fixture_close(fixture *f);

/* Reads dataset `name` (a path such as "case/x") into a freshly malloc'ed buffer (free
 * with free(t->data)) described by *t: dtype as asked (the stored type must be float32 for
 * CLUDA_F32 and uint8 for CLUDA_U8), rank 1..4 and the stored shape. */
cluda_status fixture_read(const fixture *f, const char *name, cluda_dtype dtype, cluda_tensor *t);
/* Like fixture_read, but also checks the stored shape equals shape[0..ndim). */
cluda_status fixture_read_shaped(const fixture *f, const char *name, cluda_dtype dtype, int ndim,
                                 const int *shape, cluda_tensor *t);
/* Whether an object (dataset or group) named `name` exists. */
int fixture_has(const fixture *f, const char *name);

/* Scalar attribute `attr` of the object `object` ("/" for the file, or a case group). */
cluda_status fixture_attr_int(const fixture *f, const char *object, const char *attr, int *out);
cluda_status fixture_attr_double(const fixture *f, const char *object, const char *attr,
                                 double *out);
/* Fixed- or variable-length string attribute, copied into buf (truncated to size - 1). */
cluda_status fixture_attr_string(const fixture *f, const char *object, const char *attr, char *buf,
                                 size_t size);

#ifdef __cplusplus
}
#endif
#endif

/* Weights in and out: Hugging Face / mmseg safetensors files and cluda's own HDF5 weight
 * file. Everything maps onto a segmentor's parameter and state tables (mmseg names, cluda
 * layouts: conv weights OHWI). */
#ifndef CLUDA_WEIGHTS_H
#define CLUDA_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "cluda/segmentor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- safetensors (8-byte little-endian header length, JSON header, raw data) ---- */
typedef enum cluda_st_dtype {
  CLUDA_ST_F32,
  CLUDA_ST_F16,
  CLUDA_ST_BF16,
  CLUDA_ST_F64,
  /* Any other safetensors dtype (I64 num_batches_tracked, ...): the file opens and such a
   * tensor can be skipped, but reading it as float32 is refused. */
  CLUDA_ST_OTHER
} cluda_st_dtype;

typedef struct cluda_st_tensor {
  char name[160];
  cluda_st_dtype dtype;
  char dtype_name[12]; /* as in the header: "F32", "I64", ... */
  int ndim;
  int64_t shape[8];
  uint64_t begin, end; /* byte offsets into the data section */
} cluda_st_tensor;

typedef struct cluda_safetensors {
  char path[512];
  cluda_st_tensor *tensors;
  int count;
  uint64_t data_offset; /* where the data section starts in the file */
  uint64_t file_size;
  void *file; /* FILE * */
} cluda_safetensors;

/* Reads and validates the header (length, JSON syntax, dtypes, shapes against byte ranges,
 * ranges inside the file and non-overlapping); errors name the file and the problem. */
cluda_status cluda_safetensors_open(const char *path, cluda_safetensors *st);
void cluda_safetensors_close(cluda_safetensors *st);
int cluda_safetensors_find(const cluda_safetensors *st, const char *name);
/* Reads tensor `index` converted to float32 (count must equal its element count). */
cluda_status cluda_safetensors_read_f32(const cluda_safetensors *st, int index, float *dst,
                                        size_t count);

/* ---- loading into a segmentor ---- */
typedef enum cluda_naming {
  CLUDA_NAMING_AUTO = 0, /* detect from the keys */
  CLUDA_NAMING_MMSEG,    /* "backbone.*", "decode_head.*" (DAFormer/HRDA/CLUDA, UDA
                            checkpoints' "model." prefix stripped) */
  CLUDA_NAMING_NVLABS,   /* bare ImageNet encoder "patch_embed1.*" (+ ignored "head.*") */
  CLUDA_NAMING_HF        /* "segformer.encoder.*", "decode_head.*" (+ ignored "classifier.*") */
} cluda_naming;

typedef struct cluda_load_options {
  cluda_naming naming;
  /* 1: parameters of the decode head absent from the file keep their current values (a
   * freshly initialised head, e.g. from ImageNet encoder weights); 0: missing tensors are
   * an error. */
  int allow_missing_head;
} cluda_load_options;

typedef struct cluda_load_report {
  cluda_naming naming; /* detected */
  int loaded;          /* tensors loaded */
  int missing_head;    /* head tensors left as they were (allow_missing_head) */
  int ignored;         /* file tensors deliberately ignored (classifier, num_batches_tracked) */
} cluda_load_report;

/* Loads a safetensors file into params/state. Missing, unexpected or mis-shaped tensors
 * are rejected with a message naming the key and both shapes. Conv weights are transposed
 * OIHW -> OHWI; Hugging Face K/V are fused into kv; F16/BF16/F64 are converted. */
cluda_status cluda_load_safetensors(const char *path, const cluda_segmentor *model, float *params,
                                    float *state, const cluda_load_options *opt,
                                    cluda_load_report *report);

/* ---- cluda's HDF5 weight file: one float32 dataset per name (cluda layout), attributes for
 * the architecture; written atomically (temp file, fsync, rename, directory fsync). ---- */
cluda_status cluda_weights_save_h5(const char *path, const cluda_segmentor *model,
                                   const float *params, const float *state);
/* Rejects a file of another architecture (attributes or shapes differ) naming what differs. */
cluda_status cluda_weights_load_h5(const char *path, const cluda_segmentor *model, float *params,
                                   float *state);

#ifdef __cplusplus
}
#endif
#endif

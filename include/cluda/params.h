/* A network's tensors of one kind (trainable parameters, or non-trainable state such as
 * BatchNorm running statistics) live in ONE flat float buffer; a table maps each name to its
 * shape and offset. All-reduce, EMA, AdamW, checksums and checkpoints are single passes over
 * the flat buffer; layers bind tensor views into it by index.
 *
 * Names follow the mmseg / DAFormer checkpoint naming ("backbone.block1.0.attn.q.weight",
 * "decode_head.fuse_layer.bottleneck.conv.weight"); shapes follow cluda's layouts (conv
 * weights OHWI, linear weights [out, in]). Loaders map other namings and layouts onto these. */
#ifndef CLUDA_PARAMS_H
#define CLUDA_PARAMS_H

#include <stddef.h>

#include "cluda/status.h"
#include "cluda/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { CLUDA_PARAM_NAME_MAX = 96 };

/* Optimizer group of a parameter: the decode head trains with a larger learning rate. */
typedef enum cluda_param_group { CLUDA_GROUP_ENCODER = 0, CLUDA_GROUP_HEAD = 1 } cluda_param_group;

typedef struct cluda_param_info {
  char name[CLUDA_PARAM_NAME_MAX];
  int ndim;
  int shape[CLUDA_MAX_DIMS];
  size_t offset; /* in floats from the start of the flat buffer; a multiple of 16 */
  size_t count;  /* elements */
  cluda_param_group group;
  int no_decay; /* 1 for norm weights/biases: AdamW applies no weight decay */
} cluda_param_info;

typedef struct cluda_param_table {
  cluda_param_info *items;
  int count;
  int capacity;
  size_t total; /* floats the flat buffer needs, padding included */
} cluda_param_table;

void cluda_param_table_init(cluda_param_table *table);
void cluda_param_table_free(cluda_param_table *table);

/* Appends a tensor; fails on a duplicate name, a name too long or a bad shape. *index (may
 * be NULL) receives its position. Offsets are aligned to 16 floats (64 bytes). */
cluda_status cluda_param_table_add(cluda_param_table *table, const char *name, int ndim,
                                   const int *shape, cluda_param_group group, int no_decay,
                                   int *index);

/* Index of `name`, or -1. */
int cluda_param_table_find(const cluda_param_table *table, const char *name);

/* The view of entry `index` inside the flat buffer `base`. */
cluda_tensor cluda_param_view(const cluda_param_table *table, int index, float *base);

/* Number of trainable elements (padding excluded). */
size_t cluda_param_table_elements(const cluda_param_table *table);

#ifdef __cplusplus
}
#endif
#endif

#include "cluda/params.h"

#include <stdlib.h>
#include <string.h>

enum { PARAM_ALIGN_FLOATS = 16 };

void cluda_param_table_init(cluda_param_table *table) { memset(table, 0, sizeof *table); }

void cluda_param_table_free(cluda_param_table *table) {
  if (!table) return;
  free(table->items);
  memset(table, 0, sizeof *table);
}

cluda_status cluda_param_table_add(cluda_param_table *table, const char *name, int ndim,
                                   const int *shape, cluda_param_group group, int no_decay,
                                   int *index) {
  CLUDA_REQUIRE(table != NULL && name != NULL && shape != NULL, CLUDA_ERR_ARG,
                "param_table_add: NULL argument");
  CLUDA_REQUIRE(strlen(name) < CLUDA_PARAM_NAME_MAX, CLUDA_ERR_ARG,
                "param_table_add: name '%s' longer than %d characters", name,
                CLUDA_PARAM_NAME_MAX - 1);
  CLUDA_REQUIRE(ndim >= 1 && ndim <= CLUDA_MAX_DIMS, CLUDA_ERR_SHAPE,
                "param_table_add: %s has %d dimensions (1..4 allowed)", name, ndim);
  CLUDA_REQUIRE(cluda_param_table_find(table, name) < 0, CLUDA_ERR_ARG,
                "param_table_add: duplicate name %s", name);
  size_t count = 1;
  for (int i = 0; i < ndim; i++) {
    CLUDA_REQUIRE(shape[i] >= 1, CLUDA_ERR_SHAPE, "param_table_add: %s dimension %d is %d", name, i,
                  shape[i]);
    count *= (size_t)shape[i];
  }
  if (table->count == table->capacity) {
    int capacity = table->capacity ? 2 * table->capacity : 64;
    cluda_param_info *items = realloc(table->items, (size_t)capacity * sizeof *items);
    CLUDA_REQUIRE(items != NULL, CLUDA_ERR_ALLOC, "param_table_add: out of memory at %s", name);
    table->items = items;
    table->capacity = capacity;
  }
  cluda_param_info *p = &table->items[table->count];
  memset(p, 0, sizeof *p);
  strcpy(p->name, name);
  p->ndim = ndim;
  for (int i = 0; i < CLUDA_MAX_DIMS; i++)
    p->shape[i] = i < ndim ? shape[i] : 1;
  p->offset = table->total;
  p->count = count;
  p->group = group;
  p->no_decay = no_decay;
  table->total += (count + PARAM_ALIGN_FLOATS - 1) / PARAM_ALIGN_FLOATS * PARAM_ALIGN_FLOATS;
  if (index) *index = table->count;
  table->count++;
  return cluda_ok();
}

int cluda_param_table_find(const cluda_param_table *table, const char *name) {
  for (int i = 0; i < table->count; i++)
    if (strcmp(table->items[i].name, name) == 0) return i;
  return -1;
}

cluda_tensor cluda_param_view(const cluda_param_table *table, int index, float *base) {
  const cluda_param_info *p = &table->items[index];
  cluda_tensor t = cluda_tensor_4d(CLUDA_F32, base + p->offset, p->shape[0], p->shape[1],
                                   p->shape[2], p->shape[3]);
  t.ndim = p->ndim;
  return t;
}

size_t cluda_param_table_elements(const cluda_param_table *table) {
  size_t n = 0;
  for (int i = 0; i < table->count; i++)
    n += table->items[i].count;
  return n;
}

/* A bump allocator over one buffer: activations and op scratch are planned once per input
 * shape and carved from an arena, so a training step does no malloc. mark/release give
 * ops a scoped scratch area. */
#ifndef CLUDA_ARENA_H
#define CLUDA_ARENA_H

#include <stddef.h>

#include "cluda/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { CLUDA_ARENA_ALIGN = 64 };

typedef struct cluda_arena {
  char *base;
  size_t capacity;
  size_t used;
  size_t peak; /* high-water mark, for planning */
  int owns_base;
} cluda_arena;

/* Allocates a host arena of the given capacity. */
cluda_status cluda_arena_create(cluda_arena *arena, size_t capacity);
/* Wraps caller memory (e.g. device memory) without taking ownership. */
void cluda_arena_wrap(cluda_arena *arena, void *base, size_t capacity);
void cluda_arena_destroy(cluda_arena *arena);

/* Returns `bytes` (rounded up to CLUDA_ARENA_ALIGN) from the arena; `what` names the
 * request in the error message when the arena is too small. */
cluda_status cluda_arena_alloc(cluda_arena *arena, size_t bytes, const char *what, void **out);

static inline size_t cluda_arena_mark(const cluda_arena *arena) { return arena->used; }
static inline void cluda_arena_release(cluda_arena *arena, size_t mark) { arena->used = mark; }
static inline size_t cluda_arena_align(size_t bytes) {
  return (bytes + CLUDA_ARENA_ALIGN - 1) / CLUDA_ARENA_ALIGN * CLUDA_ARENA_ALIGN;
}

#ifdef __cplusplus
}
#endif
#endif

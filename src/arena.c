#include "cluda/arena.h"

#include <stdlib.h>
#include <string.h>

cluda_status cluda_arena_create(cluda_arena *arena, size_t capacity) {
  CLUDA_REQUIRE(arena != NULL, CLUDA_ERR_ARG, "arena_create: arena is NULL");
  memset(arena, 0, sizeof *arena);
  capacity = cluda_arena_align(capacity);
  if (capacity == 0) return cluda_ok();
  arena->base = aligned_alloc(CLUDA_ARENA_ALIGN, capacity);
  CLUDA_REQUIRE(arena->base != NULL, CLUDA_ERR_ALLOC, "arena_create: cannot allocate %zu bytes",
                capacity);
  arena->capacity = capacity;
  arena->owns_base = 1;
  return cluda_ok();
}

void cluda_arena_wrap(cluda_arena *arena, void *base, size_t capacity) {
  memset(arena, 0, sizeof *arena);
  arena->base = base;
  arena->capacity = capacity;
}

void cluda_arena_destroy(cluda_arena *arena) {
  if (!arena) return;
  if (arena->owns_base) free(arena->base);
  memset(arena, 0, sizeof *arena);
}

cluda_status cluda_arena_alloc(cluda_arena *arena, size_t bytes, const char *what, void **out) {
  CLUDA_REQUIRE(arena != NULL && out != NULL, CLUDA_ERR_ARG, "arena_alloc(%s): NULL argument",
                what);
  size_t need = cluda_arena_align(bytes);
  CLUDA_REQUIRE(need <= arena->capacity - arena->used, CLUDA_ERR_ALLOC,
                "arena_alloc(%s): needs %zu bytes, %zu of %zu free", what, need,
                arena->capacity - arena->used, arena->capacity);
  *out = arena->base + arena->used;
  arena->used += need;
  if (arena->used > arena->peak) arena->peak = arena->used;
  return cluda_ok();
}

/* The communication interface (include/cluda/comm.h): argument checks, the dispatch through
 * the backend table and the one-process "self" backend. No MPI or NCCL here, so the trainer
 * and the unit tests link none. */
#include "cluda/comm.h"

#include <stdlib.h>
#include <string.h>

size_t cluda_comm_dtype_size(cluda_comm_dtype dt) {
  switch (dt) {
  case CLUDA_COMM_U8: return 1;
  case CLUDA_COMM_I32:
  case CLUDA_COMM_F32: return 4;
  case CLUDA_COMM_I64:
  case CLUDA_COMM_U64:
  case CLUDA_COMM_F64: return 8;
  default: return 0;
  }
}

const char *cluda_comm_dtype_name(cluda_comm_dtype dt) {
  static const char *const names[CLUDA_COMM_DTYPES] = {"u8", "i32", "i64", "u64", "f32", "f64"};
  return (unsigned)dt < CLUDA_COMM_DTYPES ? names[dt] : "?";
}

const char *cluda_comm_op_name(cluda_comm_op op) {
  static const char *const names[CLUDA_COMM_OPS] = {"sum", "avg", "max", "min"};
  return (unsigned)op < CLUDA_COMM_OPS ? names[op] : "?";
}

/* ---- self: one process ---- */

static cluda_status self_broadcast(cluda_comm *c, void *buf, size_t count, cluda_comm_dtype dt,
                                   int root) {
  (void)c, (void)buf, (void)count, (void)dt, (void)root;
  return cluda_ok();
}

static void copy_if_distinct(void *dst, const void *src, size_t bytes) {
  if (dst != src) memmove(dst, src, bytes);
}

static cluda_status self_allreduce(cluda_comm *c, const void *send, void *recv, size_t count,
                                   cluda_comm_dtype dt, cluda_comm_op op) {
  (void)c, (void)op;
  copy_if_distinct(recv, send, count * cluda_comm_dtype_size(dt));
  return cluda_ok();
}

static cluda_status self_allgather(cluda_comm *c, const void *send, void *recv, size_t count,
                                   cluda_comm_dtype dt) {
  (void)c;
  copy_if_distinct(recv, send, count * cluda_comm_dtype_size(dt));
  return cluda_ok();
}

static cluda_status self_reduce_scatter(cluda_comm *c, const void *send, void *recv, size_t count,
                                        cluda_comm_dtype dt) {
  (void)c;
  copy_if_distinct(recv, send, count * cluda_comm_dtype_size(dt));
  return cluda_ok();
}

static cluda_status self_barrier(cluda_comm *c) {
  (void)c;
  return cluda_ok();
}

static void self_abort(cluda_comm *c, int exit_code) {
  (void)c;
  exit(exit_code);
}

static void self_finalize(cluda_comm *c) { (void)c; }

static const cluda_comm_ops self_ops = {"self",         self_broadcast,      self_allreduce,
                                        self_allgather, self_reduce_scatter, self_barrier,
                                        self_abort,     self_finalize};

void cluda_comm_init_self(cluda_comm *c) {
  memset(c, 0, sizeof *c);
  c->ops = &self_ops;
  c->size = 1;
  c->local_size = 1;
  c->device = -1;
}

/* ---- checked dispatch ---- */

static cluda_status check_common(const char *op, const cluda_comm *c, cluda_comm_dtype dt) {
  CLUDA_REQUIRE(c != NULL && c->ops != NULL, CLUDA_ERR_ARG, "%s: communicator c is not initialised",
                op);
  CLUDA_REQUIRE(cluda_comm_dtype_size(dt) > 0, CLUDA_ERR_ARG, "%s: dtype %d is not a comm dtype",
                op, (int)dt);
  return cluda_ok();
}

static cluda_status check_buffer(const char *op, const char *name, const void *p, size_t count) {
  CLUDA_REQUIRE(count == 0 || p != NULL, CLUDA_ERR_ARG, "%s: %s is NULL for %zu elements", op, name,
                count);
  return cluda_ok();
}

cluda_status cluda_comm_broadcast(cluda_comm *c, void *buf, size_t count, cluda_comm_dtype dt,
                                  int root) {
  const char *op = "comm_broadcast";
  CLUDA_TRY(check_common(op, c, dt));
  CLUDA_TRY(check_buffer(op, "buf", buf, count));
  CLUDA_REQUIRE(root >= 0 && root < c->size, CLUDA_ERR_ARG, "%s: root %d is not a rank of 0..%d",
                op, root, c->size - 1);
  return c->ops->broadcast(c, buf, count, dt, root);
}

cluda_status cluda_comm_allreduce(cluda_comm *c, const void *send, void *recv, size_t count,
                                  cluda_comm_dtype dt, cluda_comm_op op_kind) {
  const char *op = "comm_allreduce";
  CLUDA_TRY(check_common(op, c, dt));
  CLUDA_TRY(check_buffer(op, "send", send, count));
  CLUDA_TRY(check_buffer(op, "recv", recv, count));
  CLUDA_REQUIRE((unsigned)op_kind < CLUDA_COMM_OPS, CLUDA_ERR_ARG, "%s: op %d is not a reduction",
                op, (int)op_kind);
  CLUDA_REQUIRE(op_kind != CLUDA_COMM_AVG || dt == CLUDA_COMM_F32 || dt == CLUDA_COMM_F64,
                CLUDA_ERR_ARG, "%s: avg needs a floating dtype, not %s", op,
                cluda_comm_dtype_name(dt));
  return c->ops->allreduce(c, send, recv, count, dt, op_kind);
}

cluda_status cluda_comm_allgather(cluda_comm *c, const void *send, void *recv,
                                  size_t count_per_rank, cluda_comm_dtype dt) {
  const char *op = "comm_allgather";
  CLUDA_TRY(check_common(op, c, dt));
  CLUDA_TRY(check_buffer(op, "send", send, count_per_rank));
  CLUDA_TRY(check_buffer(op, "recv", recv, count_per_rank));
  return c->ops->allgather(c, send, recv, count_per_rank, dt);
}

cluda_status cluda_comm_reduce_scatter(cluda_comm *c, const void *send, void *recv,
                                       size_t count_per_rank, cluda_comm_dtype dt) {
  const char *op = "comm_reduce_scatter";
  CLUDA_TRY(check_common(op, c, dt));
  CLUDA_TRY(check_buffer(op, "send", send, count_per_rank));
  CLUDA_TRY(check_buffer(op, "recv", recv, count_per_rank));
  return c->ops->reduce_scatter(c, send, recv, count_per_rank, dt);
}

cluda_status cluda_comm_barrier(cluda_comm *c) {
  CLUDA_REQUIRE(c != NULL && c->ops != NULL, CLUDA_ERR_ARG,
                "comm_barrier: communicator c is not initialised");
  return c->ops->barrier(c);
}

void cluda_comm_abort(cluda_comm *c, int exit_code) {
  if (c && c->ops) c->ops->abort(c, exit_code);
  exit(exit_code); /* a backend abort does not return; this covers an uninitialised c */
}

void cluda_comm_finalize(cluda_comm *c) {
  if (!c || !c->ops) return;
  c->ops->finalize(c);
  memset(c, 0, sizeof *c);
}

/* ---- helpers ---- */

uint64_t cluda_comm_hash(const void *data, size_t bytes, uint64_t seed) {
  /* FNV-1a over 64-bit words (then the tail bytes): 8x fewer multiplies than per byte, so a
   * replica check of an 85M-parameter model hashes at memory speed rather than ~1 GB/s. */
  const unsigned char *p = data;
  uint64_t h = 1469598103934665603ull ^ seed;
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t word;
    memcpy(&word, p + i, 8);
    h ^= word;
    h *= 1099511628211ull;
    h ^= h >> 29; /* let high bits of one word reach the low bits of the next */
  }
  for (; i < bytes; i++) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
  return h;
}

cluda_status cluda_comm_check_replicated(cluda_comm *c, const void *data, size_t bytes,
                                         const char *what) {
  CLUDA_REQUIRE(c != NULL && c->ops != NULL, CLUDA_ERR_ARG,
                "comm_check_replicated: communicator c is not initialised");
  if (c->size == 1) return cluda_ok();
  uint64_t mine = cluda_comm_hash(data, bytes, 0);
  uint64_t *all = malloc((size_t)c->size * sizeof *all);
  CLUDA_REQUIRE(all != NULL, CLUDA_ERR_ALLOC, "comm_check_replicated: out of memory");
  cluda_status s = cluda_comm_allgather(c, &mine, all, 1, CLUDA_COMM_U64);
  int differs = -1;
  for (int r = 1; s.code == CLUDA_OK && r < c->size && differs < 0; r++)
    if (all[r] != all[0]) differs = r;
  uint64_t h0 = all[0], hr = differs >= 0 ? all[differs] : 0;
  free(all);
  CLUDA_TRY(s);
  CLUDA_REQUIRE(differs < 0, CLUDA_ERR_COMM,
                "%s diverged between ranks: rank %d has fingerprint %016llx, rank 0 %016llx "
                "(replicas must stay bit-identical)",
                what ? what : "replicated state", differs, (unsigned long long)hr,
                (unsigned long long)h0);
  return cluda_ok();
}

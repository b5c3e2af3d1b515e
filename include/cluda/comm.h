/* Communication between the ranks of a data-parallel job (shared/spec/systems.md 2-4).
 *
 * One small interface with three backends behind a table, chosen with the compute backend:
 *  - self: one process, no library (every collective is a copy); what unit tests and a
 *    plain `cluda_train` without MPI use;
 *  - MPI (comm/comm_mpi.c, library cluda_comm_mpi): host buffers, the CPU backend;
 *  - NCCL (comm/comm_nccl.c, library cluda_comm_nccl, CUDA builds only): device buffers on
 *    one GPU per rank, bootstrapped over MPI, under a watchdog.
 *
 * Semantics are NCCL's (systems.md 3 "NCCL vs MPI semantics"): counts are elements; allgather
 * and reduce_scatter take the PER-RANK count and lay the ranks out rank-major; reduce_scatter
 * sums (the backward of an all-gather, systems.md 2.2). In-place forms: allreduce with
 * send == recv; allgather with send == recv + rank * count; reduce_scatter with
 * recv == send + rank * count.
 *
 * Every collective returns the SAME bits on every rank (the MPI backend reduces each element
 * once and distributes the result), so replicated state (parameters, EMA teacher, AdamW
 * moments) never drifts apart; cluda_comm_check_replicated verifies it.
 *
 * Collectives must be issued in the same order on every rank. An error is returned to the
 * caller, who ends the job with cluda_comm_abort (never a silent hang: a failed rank cannot
 * leave the others waiting forever). No global state: a cluda_comm is a value the program
 * owns. */
#ifndef CLUDA_COMM_H
#define CLUDA_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "cluda/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cluda_comm_dtype {
  CLUDA_COMM_U8 = 0,
  CLUDA_COMM_I32,
  CLUDA_COMM_I64,
  CLUDA_COMM_U64,
  CLUDA_COMM_F32,
  CLUDA_COMM_F64,
  CLUDA_COMM_DTYPES
} cluda_comm_dtype;

typedef enum cluda_comm_op {
  CLUDA_COMM_SUM = 0,
  CLUDA_COMM_AVG, /* sum / size (floating dtypes only) */
  CLUDA_COMM_MAX,
  CLUDA_COMM_MIN,
  CLUDA_COMM_OPS
} cluda_comm_op;

/* Bytes of one element of dt (0 for an invalid dtype). */
size_t cluda_comm_dtype_size(cluda_comm_dtype dt);
const char *cluda_comm_dtype_name(cluda_comm_dtype dt);
const char *cluda_comm_op_name(cluda_comm_op op);

typedef struct cluda_comm cluda_comm;

/* The backend table; each entry receives validated arguments. */
typedef struct cluda_comm_ops {
  const char *name; /* "self", "mpi", "nccl" */
  cluda_status (*broadcast)(cluda_comm *c, void *buf, size_t count, cluda_comm_dtype dt, int root);
  cluda_status (*allreduce)(cluda_comm *c, const void *send, void *recv, size_t count,
                            cluda_comm_dtype dt, cluda_comm_op op);
  cluda_status (*allgather)(cluda_comm *c, const void *send, void *recv, size_t count,
                            cluda_comm_dtype dt);
  cluda_status (*reduce_scatter)(cluda_comm *c, const void *send, void *recv, size_t count,
                                 cluda_comm_dtype dt);
  cluda_status (*barrier)(cluda_comm *c);
  void (*abort)(cluda_comm *c, int exit_code); /* ends every rank; does not return */
  void (*finalize)(cluda_comm *c);
} cluda_comm_ops;

struct cluda_comm {
  const cluda_comm_ops *ops;
  int rank, size;             /* in the job */
  int local_rank, local_size; /* on this node (MPI_COMM_TYPE_SHARED) */
  int device;                 /* CUDA device of this rank (NCCL), -1 for host buffers */
  void *impl;                 /* backend state */
};

/* One process: rank 0 of 1; collectives copy send to recv. Cannot fail. */
void cluda_comm_init_self(cluda_comm *c);

/* The collectives (argument checks, then the backend). count is in elements. */
cluda_status cluda_comm_broadcast(cluda_comm *c, void *buf, size_t count, cluda_comm_dtype dt,
                                  int root);
cluda_status cluda_comm_allreduce(cluda_comm *c, const void *send, void *recv, size_t count,
                                  cluda_comm_dtype dt, cluda_comm_op op);
cluda_status cluda_comm_allgather(cluda_comm *c, const void *send, void *recv,
                                  size_t count_per_rank, cluda_comm_dtype dt);
cluda_status cluda_comm_reduce_scatter(cluda_comm *c, const void *send, void *recv,
                                       size_t count_per_rank, cluda_comm_dtype dt);
cluda_status cluda_comm_barrier(cluda_comm *c);
/* Ends the whole job with exit_code (MPI_Abort / ncclCommAbort + MPI_Abort; exit for self). */
void cluda_comm_abort(cluda_comm *c, int exit_code) __attribute__((noreturn));
/* Releases the backend; the struct is zeroed. Safe on a zeroed struct. */
void cluda_comm_finalize(cluda_comm *c);

/* Host-side helpers built on the collectives (host buffers: self and MPI backends). */

/* 64-bit FNV-1a-style hash of bytes, word at a time (the replica check's fingerprint). */
uint64_t cluda_comm_hash(const void *data, size_t bytes, uint64_t seed);

/* Fails with CLUDA_ERR_COMM, naming `what` and the first rank that differs from rank 0, when
 * the fingerprints of `bytes` host bytes are not equal on every rank. */
cluda_status cluda_comm_check_replicated(cluda_comm *c, const void *data, size_t bytes,
                                         const char *what);

#ifdef __cplusplus
}
#endif
#endif

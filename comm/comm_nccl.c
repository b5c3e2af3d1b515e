/* The NCCL backend of include/cluda/comm.h (device buffers, one GPU per rank; systems.md 3).
 *
 * Every collective is enqueued on the backend's stream and then waited for under a watchdog,
 * because NCCL has no per-operation timeout: a dead peer would leave the others spinning in a
 * kernel forever. Any NCCL or CUDA failure during the wait aborts the communicator
 * (ncclCommAbort: ncclCommDestroy may block on the pending work), after which every further
 * collective fails; the caller ends the job with cluda_comm_abort. CUDA runtime API only. */
#include "cluda/comm_nccl.h"

#include <cuda_runtime_api.h>
#include <math.h>
#include <nccl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct nccl_state {
  ncclComm_t comm; /* NULL once aborted */
  cudaStream_t stream;
  cluda_comm *bootstrap; /* host-side control and the job-wide abort */
  double timeout_s;
  float *token; /* one device float: the barrier's all-reduce */
} nccl_state;

static nccl_state *state_of(cluda_comm *c) { return (nccl_state *)c->impl; }

#define CUDA_TRY(op, call)                                                                         \
  do {                                                                                             \
    cudaError_t cuda_err_ = (call);                                                                \
    if (cuda_err_ != cudaSuccess)                                                                  \
      return CLUDA_FAIL(CLUDA_ERR_DEVICE, "%s: %s: %s: %s", op, #call,                             \
                        cudaGetErrorName(cuda_err_), cudaGetErrorString(cuda_err_));               \
  } while (0)

/* comm may be NULL (before ncclCommInitRank): ncclGetLastError then reports the thread's. */
#define NCCL_TRY(op, comm, call)                                                                   \
  do {                                                                                             \
    ncclResult_t nccl_res_ = (call);                                                               \
    if (nccl_res_ != ncclSuccess)                                                                  \
      return CLUDA_FAIL(CLUDA_ERR_COMM, "%s: %s: %s (%s)", op, #call,                              \
                        ncclGetErrorString(nccl_res_), ncclGetLastError(comm));                    \
  } while (0)

static ncclDataType_t nccl_type(cluda_comm_dtype dt) {
  switch (dt) {
  case CLUDA_COMM_U8: return ncclUint8;
  case CLUDA_COMM_I32: return ncclInt32;
  case CLUDA_COMM_I64: return ncclInt64;
  case CLUDA_COMM_U64: return ncclUint64;
  case CLUDA_COMM_F32: return ncclFloat32;
  default: return ncclFloat64;
  }
}

static ncclRedOp_t nccl_op(cluda_comm_op op) {
  switch (op) {
  case CLUDA_COMM_AVG: return ncclAvg;
  case CLUDA_COMM_MAX: return ncclMax;
  case CLUDA_COMM_MIN: return ncclMin;
  default: return ncclSum;
  }
}

static double seconds_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static cluda_status usable(const char *op, const nccl_state *st) {
  CLUDA_REQUIRE(st->comm != NULL, CLUDA_ERR_COMM,
                "%s: the NCCL communicator was aborted after an earlier error", op);
  return cluda_ok();
}

/* Aborts the communicator and returns the failure that caused it. */
static cluda_status abort_with(nccl_state *st, cluda_status why) {
  (void)ncclCommAbort(st->comm);
  st->comm = NULL;
  return why;
}

/* Waits for everything enqueued on the stream (the collective just issued included). Spins
 * for the first millisecond, where small collectives finish, then sleeps between polls so a
 * long wait does not burn a core. */
static cluda_status watchdog_wait(nccl_state *st, const char *op) {
  const double start = seconds_now();
  const struct timespec pause = {0, 100 * 1000};
  for (;;) {
    cudaError_t q = cudaStreamQuery(st->stream);
    if (q == cudaSuccess) return cluda_ok();
    if (q != cudaErrorNotReady)
      return abort_with(st, CLUDA_FAIL(CLUDA_ERR_DEVICE,
                                       "%s: cudaStreamQuery: %s: %s; NCCL communicator aborted", op,
                                       cudaGetErrorName(q), cudaGetErrorString(q)));
    ncclResult_t async = ncclSuccess;
    ncclResult_t r = ncclCommGetAsyncError(st->comm, &async);
    if (r != ncclSuccess || (async != ncclSuccess && async != ncclInProgress)) {
      ncclResult_t bad = r != ncclSuccess ? r : async;
      return abort_with(st, CLUDA_FAIL(CLUDA_ERR_COMM,
                                       "%s: NCCL asynchronous error: %s (%s); communicator aborted",
                                       op, ncclGetErrorString(bad), ncclGetLastError(st->comm)));
    }
    const double waited = seconds_now() - start;
    if (waited > st->timeout_s)
      return abort_with(st, CLUDA_FAIL(CLUDA_ERR_COMM,
                                       "%s: NCCL collective did not finish within the %g s timeout "
                                       "(a peer is dead or stalled); communicator aborted",
                                       op, st->timeout_s));
    if (waited > 1e-3) nanosleep(&pause, NULL);
  }
}

static cluda_status nccl_broadcast(cluda_comm *c, void *buf, size_t count, cluda_comm_dtype dt,
                                   int root) {
  const char *op = "comm_broadcast";
  nccl_state *st = state_of(c);
  CLUDA_TRY(usable(op, st));
  if (count == 0) return cluda_ok(); /* the count is the same on every rank: all skip */
  NCCL_TRY(op, st->comm, ncclBroadcast(buf, buf, count, nccl_type(dt), root, st->comm, st->stream));
  return watchdog_wait(st, op);
}

static cluda_status nccl_allreduce(cluda_comm *c, const void *send, void *recv, size_t count,
                                   cluda_comm_dtype dt, cluda_comm_op op_kind) {
  const char *op = "comm_allreduce";
  nccl_state *st = state_of(c);
  CLUDA_TRY(usable(op, st));
  if (count == 0) return cluda_ok();
  NCCL_TRY(op, st->comm,
           ncclAllReduce(send, recv, count, nccl_type(dt), nccl_op(op_kind), st->comm, st->stream));
  return watchdog_wait(st, op);
}

static cluda_status nccl_allgather(cluda_comm *c, const void *send, void *recv, size_t count,
                                   cluda_comm_dtype dt) {
  const char *op = "comm_allgather";
  nccl_state *st = state_of(c);
  CLUDA_TRY(usable(op, st));
  if (count == 0) return cluda_ok();
  NCCL_TRY(op, st->comm, ncclAllGather(send, recv, count, nccl_type(dt), st->comm, st->stream));
  return watchdog_wait(st, op);
}

static cluda_status nccl_reduce_scatter(cluda_comm *c, const void *send, void *recv, size_t count,
                                        cluda_comm_dtype dt) {
  const char *op = "comm_reduce_scatter";
  nccl_state *st = state_of(c);
  CLUDA_TRY(usable(op, st));
  if (count == 0) return cluda_ok();
  NCCL_TRY(op, st->comm,
           ncclReduceScatter(send, recv, count, nccl_type(dt), ncclSum, st->comm, st->stream));
  return watchdog_wait(st, op);
}

/* NCCL has no barrier: a 1-element all-reduce completes only once every rank issued it. */
static cluda_status nccl_barrier(cluda_comm *c) {
  const char *op = "comm_barrier";
  nccl_state *st = state_of(c);
  CLUDA_TRY(usable(op, st));
  NCCL_TRY(op, st->comm,
           ncclAllReduce(st->token, st->token, 1, ncclFloat32, ncclSum, st->comm, st->stream));
  return watchdog_wait(st, op);
}

static void nccl_abort(cluda_comm *c, int exit_code) {
  nccl_state *st = state_of(c);
  if (st && st->comm) {
    (void)ncclCommAbort(st->comm);
    st->comm = NULL;
  }
  if (st && st->bootstrap) cluda_comm_abort(st->bootstrap, exit_code);
  exit(exit_code);
}

static void nccl_finalize(cluda_comm *c) {
  nccl_state *st = state_of(c);
  if (!st) return;
  if (st->comm) (void)ncclCommDestroy(st->comm);
  if (st->token) (void)cudaFree(st->token);
  free(st);
  c->impl = NULL;
}

static const cluda_comm_ops nccl_ops = {"nccl",         nccl_broadcast,      nccl_allreduce,
                                        nccl_allgather, nccl_reduce_scatter, nccl_barrier,
                                        nccl_abort,     nccl_finalize};

/* This rank's part of the set-up before any NCCL collective: a GPU per local rank, the
 * device made current, and (rank 0) the unique id. */
static cluda_status select_device(cluda_comm *c, const cluda_comm *bootstrap, ncclUniqueId *id) {
  const char *op = "comm_nccl_init";
  int devices = 0;
  CUDA_TRY(op, cudaGetDeviceCount(&devices));
  /* No wrap-around: two ranks on one GPU is an NCCL error ("Duplicate GPU detected"). */
  CLUDA_REQUIRE(bootstrap->local_size <= devices, CLUDA_ERR_DEVICE,
                "%s: %d ranks on this node but only %d GPU(s) visible: launch at most %d ranks "
                "per node (one per GPU)",
                op, bootstrap->local_size, devices, devices);
  c->device = bootstrap->local_rank;
  CUDA_TRY(op, cudaSetDevice(c->device));
  if (bootstrap->rank == 0) NCCL_TRY(op, NULL, ncclGetUniqueId(id));
  return cluda_ok();
}

static cluda_status setup(cluda_comm *c, cluda_comm *bootstrap, nccl_state *st) {
  const char *op = "comm_nccl_init";
  ncclUniqueId id;
  memset(&id, 0, sizeof id);
  cluda_status mine = select_device(c, bootstrap, &id);
  /* Agree before NCCL: a rank that failed alone would leave the others blocked in
   * ncclCommInitRank, which has no timeout. */
  int32_t failed = mine.code != CLUDA_OK;
  CLUDA_TRY(cluda_comm_allreduce(bootstrap, &failed, &failed, 1, CLUDA_COMM_I32, CLUDA_COMM_MAX));
  CLUDA_TRY(mine);
  CLUDA_REQUIRE(!failed, CLUDA_ERR_COMM,
                "%s: another rank failed to select its GPU or create the NCCL id (see its "
                "message)",
                op);
  CLUDA_TRY(cluda_comm_broadcast(bootstrap, &id, sizeof id, CLUDA_COMM_U8, 0));
  NCCL_TRY(op, NULL, ncclCommInitRank(&st->comm, bootstrap->size, id, bootstrap->rank));
  CUDA_TRY(op, cudaMalloc((void **)&st->token, sizeof *st->token));
  CUDA_TRY(op, cudaMemset(st->token, 0, sizeof *st->token));
  return cluda_ok();
}

cluda_status cluda_comm_nccl_init(cluda_comm *c, cluda_comm *bootstrap, void *stream,
                                  double timeout_s) {
  const char *op = "comm_nccl_init";
  CLUDA_REQUIRE(c != NULL, CLUDA_ERR_ARG, "%s: c is NULL", op);
  memset(c, 0, sizeof *c);
  CLUDA_REQUIRE(bootstrap != NULL && bootstrap->ops != NULL, CLUDA_ERR_ARG,
                "%s: bootstrap communicator is not initialised", op);
  CLUDA_REQUIRE(bootstrap->device < 0, CLUDA_ERR_ARG,
                "%s: bootstrap (\"%s\", device %d) must be a host-buffer communicator (MPI)", op,
                bootstrap->ops->name, bootstrap->device);
  CLUDA_REQUIRE(timeout_s > 0 && isfinite(timeout_s), CLUDA_ERR_ARG,
                "%s: timeout_s %g must be a positive number of seconds", op, timeout_s);
  nccl_state *st = calloc(1, sizeof *st);
  CLUDA_REQUIRE(st != NULL, CLUDA_ERR_ALLOC, "%s: out of memory", op);
  st->stream = (cudaStream_t)stream;
  st->bootstrap = bootstrap;
  st->timeout_s = timeout_s;
  c->ops = &nccl_ops;
  c->impl = st;
  c->rank = bootstrap->rank;
  c->size = bootstrap->size;
  c->local_rank = bootstrap->local_rank;
  c->local_size = bootstrap->local_size;
  c->device = -1;
  cluda_status s = setup(c, bootstrap, st);
  if (s.code != CLUDA_OK) cluda_comm_finalize(c);
  return s;
}

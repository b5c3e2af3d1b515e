/* The MPI backend of include/cluda/comm.h (host buffers).
 *
 * allreduce and reduce_scatter are rings of MPI_Sendrecv: each element is reduced exactly once,
 * by one rank, in a fixed order, and then copied to everyone, so every rank holds the same bits
 * (a plain MPI_Allreduce does not promise that for floating point) and a run is bit-identical
 * for a given rank count. MPI has no average: sum, then scale by 1 / size. MPI errors come back
 * as statuses (MPI_ERRORS_RETURN) naming the call and MPI's message. */
#include "cluda/comm_mpi.h"

#include <mpi.h>
#include <stdlib.h>
#include <string.h>

typedef struct mpi_state {
  MPI_Comm world, node;
  int initialised_here;
  void *pad;        /* one incoming ring chunk */
  size_t pad_bytes; /* its capacity */
  void *work;       /* reduce_scatter's working copy of the input */
  size_t work_bytes;
} mpi_state;

static mpi_state *state_of(cluda_comm *c) { return (mpi_state *)c->impl; }

static cluda_status mpi_fail(const char *call, int err) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  if (MPI_Error_string(err, msg, &len) != MPI_SUCCESS) len = 0;
  msg[len] = '\0';
  return CLUDA_FAIL(CLUDA_ERR_COMM, "%s failed: %s", call, len ? msg : "unknown MPI error");
}

#define MPI_TRY(call_name, expr)                                                                   \
  do {                                                                                             \
    int mpi_err_ = (expr);                                                                         \
    if (mpi_err_ != MPI_SUCCESS) return mpi_fail(call_name, mpi_err_);                             \
  } while (0)

static MPI_Datatype mpi_type(cluda_comm_dtype dt) {
  switch (dt) {
  case CLUDA_COMM_U8: return MPI_UINT8_T;
  case CLUDA_COMM_I32: return MPI_INT32_T;
  case CLUDA_COMM_I64: return MPI_INT64_T;
  case CLUDA_COMM_U64: return MPI_UINT64_T;
  case CLUDA_COMM_F32: return MPI_FLOAT;
  default: return MPI_DOUBLE;
  }
}

/* MPI counts are int: collectives larger than that go in pieces. */
enum { MAX_PIECE = 1 << 30 };

static cluda_status mpi_broadcast(cluda_comm *c, void *buf, size_t count, cluda_comm_dtype dt,
                                  int root) {
  size_t es = cluda_comm_dtype_size(dt);
  for (size_t off = 0; off < count; off += MAX_PIECE) {
    size_t n = count - off < MAX_PIECE ? count - off : MAX_PIECE;
    MPI_TRY("MPI_Bcast",
            MPI_Bcast((char *)buf + off * es, (int)n, mpi_type(dt), root, state_of(c)->world));
  }
  return cluda_ok();
}

static cluda_status ensure_pad(mpi_state *st, size_t bytes) {
  if (st->pad_bytes >= bytes) return cluda_ok();
  void *p = realloc(st->pad, bytes);
  CLUDA_REQUIRE(p != NULL, CLUDA_ERR_ALLOC, "comm: out of memory for a %zu-byte ring buffer",
                bytes);
  st->pad = p;
  st->pad_bytes = bytes;
  return cluda_ok();
}

static void scale(void *buf, size_t count, cluda_comm_dtype dt, double factor) {
  if (dt == CLUDA_COMM_F32) {
    float *x = buf, f = (float)factor;
    for (size_t i = 0; i < count; i++)
      x[i] *= f;
  } else {
    double *x = buf;
    for (size_t i = 0; i < count; i++)
      x[i] *= factor;
  }
}

/* dst[i] = op(src[i], dst[i]) over n elements. */
static void combine(void *dst, const void *src, size_t n, cluda_comm_dtype dt, cluda_comm_op op) {
#define COMBINE(T)                                                                                 \
  do {                                                                                             \
    T *d = dst;                                                                                    \
    const T *x = src;                                                                              \
    if (op == CLUDA_COMM_MAX)                                                                      \
      for (size_t i = 0; i < n; i++)                                                               \
        d[i] = x[i] > d[i] ? x[i] : d[i];                                                          \
    else if (op == CLUDA_COMM_MIN)                                                                 \
      for (size_t i = 0; i < n; i++)                                                               \
        d[i] = x[i] < d[i] ? x[i] : d[i];                                                          \
    else                                                                                           \
      for (size_t i = 0; i < n; i++)                                                               \
        d[i] = (T)(x[i] + d[i]);                                                                   \
  } while (0)
  switch (dt) {
  case CLUDA_COMM_U8: COMBINE(uint8_t); break;
  case CLUDA_COMM_I32: COMBINE(int32_t); break;
  case CLUDA_COMM_I64: COMBINE(int64_t); break;
  case CLUDA_COMM_U64: COMBINE(uint64_t); break;
  case CLUDA_COMM_F32: COMBINE(float); break;
  default: COMBINE(double); break;
  }
#undef COMBINE
}

/* Chunk k of W of a count-element buffer: [count k / W, count (k + 1) / W). */
static size_t chunk_start(size_t count, int k, int W) { return count * (size_t)k / (size_t)W; }
static size_t chunk_len(size_t count, int k, int W) {
  return chunk_start(count, k + 1, W) - chunk_start(count, k, W);
}

/* The reduce-scatter phase of a ring over buf (in place): in step s, rank r sends its partial
 * of chunk (r - s + shift) to its right neighbour and adds the left neighbour's partial of
 * chunk (r - s - 1 + shift) into its own. After W - 1 steps rank r holds the reduction of
 * chunk (r + shift + 1) mod W, accumulated once, in ring order: every element is reduced by
 * exactly one rank, so a later all-gather gives every rank the same bits, and the order (hence
 * the rounding) is fixed for a given rank count. Unlike Open MPI 4's MPI_Reduce_scatter_block
 * it allocates nothing per call. */
static cluda_status ring_reduce(cluda_comm *c, char *buf, size_t count, cluda_comm_dtype dt,
                                cluda_comm_op op, int shift) {
  mpi_state *st = state_of(c);
  const int W = c->size, r = c->rank, left = (r + W - 1) % W, right = (r + 1) % W;
  const size_t es = cluda_comm_dtype_size(dt);
  CLUDA_TRY(ensure_pad(st, (count / (size_t)W + 1) * es));
  for (int s = 0; s < W - 1; s++) {
    const int send_k = ((r - s + shift) % W + W) % W, recv_k = ((r - s - 1 + shift) % W + W) % W;
    const size_t send_n = chunk_len(count, send_k, W), recv_n = chunk_len(count, recv_k, W);
    MPI_TRY("MPI_Sendrecv", MPI_Sendrecv(buf + chunk_start(count, send_k, W) * es, (int)send_n,
                                         mpi_type(dt), right, s, st->pad, (int)recv_n, mpi_type(dt),
                                         left, s, st->world, MPI_STATUS_IGNORE));
    combine(buf + chunk_start(count, recv_k, W) * es, st->pad, recv_n, dt, op);
  }
  return cluda_ok();
}

/* The all-gather phase: rank r starts with chunk (r + 1) mod W complete and passes chunks
 * around the ring until everyone has all of them. */
static cluda_status ring_gather(cluda_comm *c, char *buf, size_t count, cluda_comm_dtype dt) {
  mpi_state *st = state_of(c);
  const int W = c->size, r = c->rank, left = (r + W - 1) % W, right = (r + 1) % W;
  const size_t es = cluda_comm_dtype_size(dt);
  for (int s = 0; s < W - 1; s++) {
    const int send_k = ((r + 1 - s) % W + W) % W, recv_k = ((r - s) % W + W) % W;
    MPI_TRY("MPI_Sendrecv",
            MPI_Sendrecv(buf + chunk_start(count, send_k, W) * es, (int)chunk_len(count, send_k, W),
                         mpi_type(dt), right, W + s, buf + chunk_start(count, recv_k, W) * es,
                         (int)chunk_len(count, recv_k, W), mpi_type(dt), left, W + s, st->world,
                         MPI_STATUS_IGNORE));
  }
  return cluda_ok();
}

/* recv = reduction of send over ranks with identical bits everywhere: a ring reduce-scatter
 * (each element reduced once, in a fixed order) then a ring all-gather, 2 (W - 1) / W of the
 * buffer sent per rank like MPI's ring algorithm. */
static cluda_status mpi_allreduce(cluda_comm *c, const void *send, void *recv, size_t count,
                                  cluda_comm_dtype dt, cluda_comm_op op) {
  const size_t es = cluda_comm_dtype_size(dt);
  const int W = c->size;
  if (count == 0) return cluda_ok();
  CLUDA_REQUIRE(count / (size_t)W + 1 <= (size_t)MAX_PIECE, CLUDA_ERR_ARG,
                "comm_allreduce: %zu elements exceed the MPI backend's limit", count);
  if (recv != send) memcpy(recv, send, count * es);
  if (W == 1) return cluda_ok();
  CLUDA_TRY(ring_reduce(c, recv, count, dt, op, 0));
  if (op == CLUDA_COMM_AVG) {
    const int mine = (c->rank + 1) % W;
    scale((char *)recv + chunk_start(count, mine, W) * es, chunk_len(count, mine, W), dt,
          1.0 / (double)W);
  }
  return ring_gather(c, recv, count, dt);
}

static cluda_status mpi_allgather(cluda_comm *c, const void *send, void *recv, size_t count,
                                  cluda_comm_dtype dt) {
  const size_t es = cluda_comm_dtype_size(dt);
  CLUDA_REQUIRE(count <= (size_t)MAX_PIECE, CLUDA_ERR_ARG,
                "comm_allgather: %zu elements per rank exceed the MPI backend's limit", count);
  const void *src = send == (const char *)recv + (size_t)c->rank * count * es ? MPI_IN_PLACE : send;
  MPI_TRY("MPI_Allgather", MPI_Allgather(src, (int)count, mpi_type(dt), recv, (int)count,
                                         mpi_type(dt), state_of(c)->world));
  return cluda_ok();
}

/* recv (count elements) = the sum over ranks of block `rank` of send (W count elements): the
 * ring reduce phase over a copy of send, with the chunks shifted so rank r ends up owning
 * block r. */
static cluda_status mpi_reduce_scatter(cluda_comm *c, const void *send, void *recv, size_t count,
                                       cluda_comm_dtype dt) {
  mpi_state *st = state_of(c);
  const size_t es = cluda_comm_dtype_size(dt), total = count * (size_t)c->size;
  CLUDA_REQUIRE(count < (size_t)MAX_PIECE, CLUDA_ERR_ARG,
                "comm_reduce_scatter: %zu elements per rank exceed the MPI backend's limit", count);
  if (count == 0) return cluda_ok(); /* the same count on every rank */
  if (c->size == 1) {
    if (recv != send) memmove(recv, send, count * es);
    return cluda_ok();
  }
  if (st->work_bytes < total * es) {
    void *p = realloc(st->work, total * es);
    CLUDA_REQUIRE(p != NULL, CLUDA_ERR_ALLOC, "comm_reduce_scatter: out of memory for %zu bytes",
                  total * es);
    st->work = p;
    st->work_bytes = total * es;
  }
  memcpy(st->work, send, total * es);
  CLUDA_TRY(ring_reduce(c, st->work, total, dt, CLUDA_COMM_SUM, -1));
  memcpy(recv, (char *)st->work + (size_t)c->rank * count * es, count * es);
  return cluda_ok();
}

static cluda_status mpi_barrier(cluda_comm *c) {
  MPI_TRY("MPI_Barrier", MPI_Barrier(state_of(c)->world));
  return cluda_ok();
}

static void mpi_abort(cluda_comm *c, int exit_code) {
  MPI_Abort(state_of(c)->world, exit_code);
  exit(exit_code);
}

static void mpi_finalize(cluda_comm *c) {
  mpi_state *st = state_of(c);
  if (!st) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) {
    if (st->node != MPI_COMM_NULL) MPI_Comm_free(&st->node);
    if (st->world != MPI_COMM_NULL) MPI_Comm_free(&st->world);
    if (st->initialised_here) MPI_Finalize();
  }
  free(st->pad);
  free(st->work);
  free(st);
  c->impl = NULL;
}

static const cluda_comm_ops mpi_ops = {"mpi",         mpi_broadcast,      mpi_allreduce,
                                       mpi_allgather, mpi_reduce_scatter, mpi_barrier,
                                       mpi_abort,     mpi_finalize};

int cluda_comm_mpi_launched(void) {
  static const char *const vars[] = {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK",
                                     "SLURM_STEP_NUM_TASKS", "MPI_LOCALNRANKS"};
  for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++)
    if (getenv(vars[i])) return 1;
  return 0;
}

static cluda_status setup(cluda_comm *c, mpi_state *st) {
  MPI_TRY("MPI_Comm_dup", MPI_Comm_dup(MPI_COMM_WORLD, &st->world));
  MPI_TRY("MPI_Comm_set_errhandler", MPI_Comm_set_errhandler(st->world, MPI_ERRORS_RETURN));
  MPI_TRY("MPI_Comm_rank", MPI_Comm_rank(st->world, &c->rank));
  MPI_TRY("MPI_Comm_size", MPI_Comm_size(st->world, &c->size));
  MPI_TRY("MPI_Comm_split_type",
          MPI_Comm_split_type(st->world, MPI_COMM_TYPE_SHARED, c->rank, MPI_INFO_NULL, &st->node));
  MPI_TRY("MPI_Comm_rank", MPI_Comm_rank(st->node, &c->local_rank));
  MPI_TRY("MPI_Comm_size", MPI_Comm_size(st->node, &c->local_size));
  return cluda_ok();
}

cluda_status cluda_comm_mpi_init(cluda_comm *c, int *argc, char ***argv) {
  CLUDA_REQUIRE(c != NULL, CLUDA_ERR_ARG, "comm_mpi_init: c is NULL");
  memset(c, 0, sizeof *c);
  mpi_state *st = calloc(1, sizeof *st);
  CLUDA_REQUIRE(st != NULL, CLUDA_ERR_ALLOC, "comm_mpi_init: out of memory");
  st->world = st->node = MPI_COMM_NULL;
  int initialised = 0;
  MPI_Initialized(&initialised);
  if (!initialised) {
    int provided = 0;
    int err = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (err != MPI_SUCCESS) {
      free(st);
      return mpi_fail("MPI_Init_thread", err);
    }
    st->initialised_here = 1;
  }
  c->ops = &mpi_ops;
  c->impl = st;
  c->device = -1;
  cluda_status s = setup(c, st);
  if (s.code != CLUDA_OK) cluda_comm_finalize(c);
  return s;
}

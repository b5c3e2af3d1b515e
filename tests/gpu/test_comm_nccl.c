/* The NCCL backend (comm/comm_nccl.c) on one rank: bootstrapped over an MPI singleton (run
 * the program directly, no mpirun), every collective for every dtype on device buffers
 * against host values (one rank: each result equals the input; out-of-place outputs are
 * poisoned first, so an unwritten element fails), the in-place forms, count 0, argument
 * checks, the refusal of more local ranks than GPUs, and the watchdog's timeout on a stream
 * held up by a sleeping host function (ncclCommAbort, then every call fails).
 *
 * Not testable with one rank: a peer that dies or never arrives (the asynchronous-error
 * branch of the watchdog) and the agreement step when one rank fails its device selection;
 * both need >= 2 ranks on >= 2 GPUs.
 *
 * Without a GPU the argument checks and the clean "no GPU" failure of the initialisation run,
 * then the program exits 77 (ctest SKIP). */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluda/comm_mpi.h"
#include "cluda/comm_nccl.h"
#include "cluda/cuda.h"
#include "testing.h"

enum { SKIP = 77 };

static const size_t counts[] = {0, 1, 7, 4099};
enum { NCOUNTS = sizeof counts / sizeof counts[0], MAX_COUNT = 4099 };

static int is_float(cluda_comm_dtype dt) { return dt == CLUDA_COMM_F32 || dt == CLUDA_COMM_F64; }

/* Deterministic host values: non-integers for floats, negatives for signed types. */
static void fill(cluda_comm_dtype dt, void *p, size_t n, int salt) {
  for (size_t i = 0; i < n; i++) {
    long v = (long)((i * 37 + (size_t)salt * 11) % 101);
    switch (dt) {
    case CLUDA_COMM_U8: ((uint8_t *)p)[i] = (uint8_t)v; break;
    case CLUDA_COMM_I32: ((int32_t *)p)[i] = (int32_t)(v - 50); break;
    case CLUDA_COMM_I64: ((int64_t *)p)[i] = (int64_t)(v - 50) * 100000000000LL; break;
    case CLUDA_COMM_U64: ((uint64_t *)p)[i] = (uint64_t)v << 40; break;
    case CLUDA_COMM_F32: ((float *)p)[i] = (float)v * 0.37f - 11.0f; break;
    default: ((double *)p)[i] = (double)v * 0.37 - 11.0; break;
    }
  }
}

typedef struct bufs {
  void *host, *back; /* input; what came back from the device */
  void *d_send, *d_recv;
} bufs;

static int upload(void *dev, const void *host, size_t bytes) {
  return TEST_CHECK(cudaMemcpy(dev, host, bytes, cudaMemcpyHostToDevice) == cudaSuccess,
                    "upload of %zu bytes", bytes);
}

/* Downloads `bytes` of dev and checks they equal the input (the one-rank result). */
static void expect_input(const bufs *b, const void *dev, size_t bytes, const char *what,
                         cluda_comm_dtype dt, size_t count) {
  memset(b->back, 0, bytes);
  if (!TEST_CHECK(cudaMemcpy(b->back, dev, bytes, cudaMemcpyDeviceToHost) == cudaSuccess,
                  "%s: download", what))
    return;
  TEST_CHECK(memcmp(b->back, b->host, bytes) == 0, "%s %s x %zu: result equals the input", what,
             cluda_comm_dtype_name(dt), count);
}

static void poison(void *dev, size_t bytes) {
  TEST_CHECK(cudaMemset(dev, 0xFF, bytes) == cudaSuccess, "poison %zu bytes", bytes);
}

static void check_dtype(cluda_comm *c, const bufs *b, cluda_comm_dtype dt) {
  const size_t es = cluda_comm_dtype_size(dt);
  for (int k = 0; k < NCOUNTS; k++) {
    const size_t n = counts[k], bytes = n * es;
    fill(dt, b->host, n, k + (int)dt);

    upload(b->d_send, b->host, bytes);
    TEST_OK(cluda_comm_broadcast(c, b->d_send, n, dt, 0));
    expect_input(b, b->d_send, bytes, "broadcast", dt, n);

    for (int op = 0; op < CLUDA_COMM_OPS; op++) {
      if (op == CLUDA_COMM_AVG && !is_float(dt)) continue;
      char what[64];
      snprintf(what, sizeof what, "allreduce %s", cluda_comm_op_name((cluda_comm_op)op));
      upload(b->d_send, b->host, bytes);
      poison(b->d_recv, bytes);
      TEST_OK(cluda_comm_allreduce(c, b->d_send, b->d_recv, n, dt, (cluda_comm_op)op));
      expect_input(b, b->d_recv, bytes, what, dt, n);
      snprintf(what, sizeof what, "allreduce %s in place", cluda_comm_op_name((cluda_comm_op)op));
      TEST_OK(cluda_comm_allreduce(c, b->d_recv, b->d_recv, n, dt, (cluda_comm_op)op));
      expect_input(b, b->d_recv, bytes, what, dt, n);
    }

    poison(b->d_recv, bytes);
    TEST_OK(cluda_comm_allgather(c, b->d_send, b->d_recv, n, dt));
    expect_input(b, b->d_recv, bytes, "allgather", dt, n);
    TEST_OK(cluda_comm_allgather(c, b->d_recv, b->d_recv, n, dt)); /* recv + rank * n */
    expect_input(b, b->d_recv, bytes, "allgather in place", dt, n);

    poison(b->d_recv, bytes);
    TEST_OK(cluda_comm_reduce_scatter(c, b->d_send, b->d_recv, n, dt));
    expect_input(b, b->d_recv, bytes, "reduce_scatter", dt, n);
    TEST_OK(cluda_comm_reduce_scatter(c, b->d_recv, b->d_recv, n, dt));
    expect_input(b, b->d_recv, bytes, "reduce_scatter in place", dt, n);
  }
}

static void check_collectives(cluda_comm *c) {
  bufs b;
  const size_t bytes = MAX_COUNT * sizeof(double);
  b.host = test_alloc(bytes);
  b.back = test_alloc(bytes);
  if (!TEST_CHECK(cudaMalloc(&b.d_send, bytes) == cudaSuccess &&
                      cudaMalloc(&b.d_recv, bytes) == cudaSuccess,
                  "cudaMalloc of 2 x %zu bytes", bytes))
    return;
  for (int dt = 0; dt < CLUDA_COMM_DTYPES; dt++)
    check_dtype(c, &b, (cluda_comm_dtype)dt);
  TEST_OK(cluda_comm_barrier(c));
  /* argument checks of the dispatch also guard the NCCL table */
  TEST_FAILS(cluda_comm_broadcast(c, b.d_send, 1, CLUDA_COMM_F32, 1), CLUDA_ERR_ARG,
             "root 1 is not a rank");
  TEST_FAILS(cluda_comm_allreduce(c, b.d_send, b.d_recv, 1, CLUDA_COMM_I32, CLUDA_COMM_AVG),
             CLUDA_ERR_ARG, "avg needs a floating dtype");
  cudaFree(b.d_send);
  cudaFree(b.d_recv);
  free(b.host);
  free(b.back);
}

static void CUDART_CB stall(void *seconds) {
  double s = *(const double *)seconds;
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  nanosleep(&ts, NULL);
}

/* A stream held up longer than the timeout: the barrier's wait gives up, aborts the
 * communicator and names the timeout; the communicator is unusable afterwards. */
static void check_timeout(cluda_comm *boot, cudaStream_t stream) {
  cluda_comm c;
  if (!TEST_OK(cluda_comm_nccl_init(&c, boot, stream, 0.25))) return;
  double hold = 1.0;
  TEST_CHECK(cudaLaunchHostFunc(stream, stall, &hold) == cudaSuccess, "cudaLaunchHostFunc");
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  TEST_FAILS(cluda_comm_barrier(&c), CLUDA_ERR_COMM, "within the 0.25 s timeout");
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double waited = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
  /* The message proves the watchdog fired (a drained stream would have let the barrier
   * succeed); the time includes ncclCommAbort, which may wait for the held stream. */
  TEST_CHECK(waited >= 0.25, "the watchdog waited %.3f s, at least the timeout", waited);
  TEST_FAILS(cluda_comm_barrier(&c), CLUDA_ERR_COMM, "aborted after an earlier error");
  TEST_CHECK(cudaStreamSynchronize(stream) == cudaSuccess, "the held stream drains");
  cluda_comm_finalize(&c);
}

static void check_arguments(cluda_comm *boot) {
  cluda_comm c;
  TEST_FAILS(cluda_comm_nccl_init(NULL, boot, NULL, 10), CLUDA_ERR_ARG, "c is NULL");
  TEST_FAILS(cluda_comm_nccl_init(&c, NULL, NULL, 10), CLUDA_ERR_ARG, "bootstrap");
  TEST_FAILS(cluda_comm_nccl_init(&c, boot, NULL, 0), CLUDA_ERR_ARG, "timeout_s 0");
  TEST_FAILS(cluda_comm_nccl_init(&c, boot, NULL, -1), CLUDA_ERR_ARG, "timeout_s -1");
  cluda_comm on_device = *boot;
  on_device.device = 0;
  TEST_FAILS(cluda_comm_nccl_init(&c, &on_device, NULL, 10), CLUDA_ERR_ARG,
             "must be a host-buffer communicator");
  TEST_CHECK(c.ops == NULL && c.impl == NULL, "a failed init leaves a zeroed communicator");
}

/* More ranks on the node than GPUs: refused, naming both counts (no wrap-around). */
static void check_too_many_ranks(cluda_comm *boot, int devices) {
  cluda_comm c, crowded = *boot;
  crowded.local_size = devices + 1;
  char ranks[48], gpus[48];
  snprintf(ranks, sizeof ranks, "%d ranks on this node", devices + 1);
  snprintf(gpus, sizeof gpus, "only %d GPU(s)", devices);
  cluda_status s = cluda_comm_nccl_init(&c, &crowded, NULL, 10);
  TEST_FAILS(s, CLUDA_ERR_DEVICE, ranks);
  TEST_CHECK(strstr(s.message, gpus) != NULL, "the refusal names the GPU count: %s", s.message);
}

int main(int argc, char **argv) {
  cluda_cuda_info info;
  cluda_status probe = cluda_cuda_probe(0, &info);
  printf("%s\n", info.line);
  TEST_OK(probe);

  cluda_comm boot;
  if (!TEST_OK(cluda_comm_mpi_init(&boot, &argc, &argv))) return test_finish(argv[0]);
  TEST_CHECK(boot.size == 1, "run without mpirun (an MPI singleton): %d ranks", boot.size);
  check_arguments(&boot);

  if (info.device_count == 0) {
    cluda_comm c;
    TEST_FAILS(cluda_comm_nccl_init(&c, &boot, NULL, 10), CLUDA_ERR_DEVICE, "cudaGetDeviceCount");
    cluda_comm_finalize(&boot);
    int rc = test_finish(argv[0]);
    if (rc == 0) printf("test_comm_nccl: SKIP (no GPU)\n");
    return rc == 0 ? SKIP : rc;
  }

  check_too_many_ranks(&boot, info.device_count);
  cudaStream_t stream = NULL;
  TEST_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess,
             "cudaStreamCreate");
  cluda_comm c;
  if (TEST_OK(cluda_comm_nccl_init(&c, &boot, stream, 60))) {
    TEST_CHECK(strcmp(c.ops->name, "nccl") == 0 && c.rank == 0 && c.size == 1 &&
                   c.local_rank == 0 && c.local_size == 1 && c.device == 0,
               "rank %d of %d, local %d of %d, device %d", c.rank, c.size, c.local_rank,
               c.local_size, c.device);
    int current = -1;
    TEST_CHECK(cudaGetDevice(&current) == cudaSuccess && current == 0,
               "the rank's device is current");
    check_collectives(&c);
    cluda_comm_finalize(&c);
    TEST_CHECK(c.ops == NULL && c.impl == NULL, "finalize zeroes the communicator");
    cluda_comm_finalize(&c); /* harmless on a zeroed struct */
  }
  /* a second communicator after the first is gone, on the legacy default stream */
  if (TEST_OK(cluda_comm_nccl_init(&c, &boot, NULL, 60))) {
    TEST_OK(cluda_comm_barrier(&c));
    cluda_comm_finalize(&c);
  }
  check_timeout(&boot, stream);
  cudaStreamDestroy(stream);
  cluda_comm_finalize(&boot);
  return test_finish(argv[0]);
}

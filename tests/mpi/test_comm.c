/* The MPI backend of the communication interface (comm/comm.c, comm/comm_mpi.c).
 *
 * Every collective for every dtype, against values each rank computes on its own in double
 * from per-rank formulas (val() below): broadcast from each root; allreduce sum, avg, max and
 * min, out of place and in place, with counts that do not divide by the rank count (0 and 1
 * included); allgather and reduce_scatter, normal and in place; barrier. Outputs are poisoned
 * first, so an element the backend does not write fails. Integer results and copies must be
 * exact; floating sums within a few ulps of the exact sum. Results that must be replicated
 * are fingerprinted and compared across ranks with raw MPI (not with the code under test):
 * the allreduce must give the same bits on every rank. Also: cluda_comm_check_replicated,
 * the argument checks of the dispatch and the communicator's fields. */
/* mpi-ranks: 1 2 3 4 */
#include <float.h>
#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cluda/comm_mpi.h"
#include "testing.h"

static const size_t counts[] = {0, 1, 2, 3, 5, 7, 13, 1001, 65537};
enum { NCOUNTS = sizeof counts / sizeof counts[0], MAX_COUNT = 65537, POISON = 0xAB };

static int is_float(cluda_comm_dtype dt) { return dt == CLUDA_COMM_F32 || dt == CLUDA_COMM_F64; }

/* Rank r's element i, exactly representable in dt (and in double: integer values stay below
 * 2^53 even summed over 4 ranks). a varies with r in a different order for each i, so max and
 * min pick different ranks. */
static double val(cluda_comm_dtype dt, int r, size_t i) {
  const double a = (double)(((size_t)r * 7 + i * 13) % 61); /* 0..60 */
  switch (dt) {
  case CLUDA_COMM_U8: return fmod(a, 50.0);
  case CLUDA_COMM_I32: return a - 30.0;
  case CLUDA_COMM_I64: return (a - 30.0) * 1099511627776.0 + (double)r; /* 2^40 */
  case CLUDA_COMM_U64: return a * 17592186044416.0 + (double)i;         /* 2^44 */
  case CLUDA_COMM_F32: return (double)(float)(0.1 * (r + 1) + 0.013 * a - 0.37);
  default: return 0.1 * (r + 1) + 0.013 * a - 0.37 + 1e-9 * (double)i;
  }
}

static void store(cluda_comm_dtype dt, void *p, size_t i, double v) {
  switch (dt) {
  case CLUDA_COMM_U8: ((uint8_t *)p)[i] = (uint8_t)v; break;
  case CLUDA_COMM_I32: ((int32_t *)p)[i] = (int32_t)v; break;
  case CLUDA_COMM_I64: ((int64_t *)p)[i] = (int64_t)v; break;
  case CLUDA_COMM_U64: ((uint64_t *)p)[i] = (uint64_t)v; break;
  case CLUDA_COMM_F32: ((float *)p)[i] = (float)v; break;
  default: ((double *)p)[i] = v; break;
  }
}

static double load(cluda_comm_dtype dt, const void *p, size_t i) {
  switch (dt) {
  case CLUDA_COMM_U8: return ((const uint8_t *)p)[i];
  case CLUDA_COMM_I32: return ((const int32_t *)p)[i];
  case CLUDA_COMM_I64: return (double)((const int64_t *)p)[i];
  case CLUDA_COMM_U64: return (double)((const uint64_t *)p)[i];
  case CLUDA_COMM_F32: return ((const float *)p)[i];
  default: return ((const double *)p)[i];
  }
}

/* p[j] = val(dt, r, first + j) for j < n */
static void fill(cluda_comm_dtype dt, void *p, int r, size_t first, size_t n) {
  for (size_t j = 0; j < n; j++)
    store(dt, p, j, val(dt, r, first + j));
}

typedef struct ctx {
  cluda_comm *c;
  int rank, size;
  void *a, *b;    /* work buffers of size * MAX_COUNT doubles */
  double *want;   /* expected values */
  double *tol;    /* allowed absolute error (0: exact) */
  void *expected; /* want stored in the dtype, for exact comparisons */
} ctx;

/* Rounding allowance of a floating sum of `terms` values with |.| adding up to `mass`. */
static double float_tol(cluda_comm_dtype dt, double mass, int terms) {
  if (!is_float(dt)) return 0.0;
  const double eps = dt == CLUDA_COMM_F32 ? FLT_EPSILON : DBL_EPSILON;
  return (double)(terms + 2) * eps * mass;
}

/* Compares n elements of got with x->want within x->tol; one check per call. */
static int expect(const ctx *x, const char *what, cluda_comm_dtype dt, const void *got, size_t n) {
  for (size_t i = 0; i < n; i++) {
    double g = load(dt, got, i);
    if (!(fabs(g - x->want[i]) <= x->tol[i]))
      return TEST_CHECK(0, "rank %d: %s %s x %zu: element %zu is %.17g, expected %.17g (tol %g)",
                        x->rank, what, cluda_comm_dtype_name(dt), n, i, g, x->want[i], x->tol[i]);
  }
  return TEST_CHECK(1, "%s", what);
}

/* Checks that `bytes` of buf have the same fingerprint on every rank (raw MPI exchange). */
static int same_bits_everywhere(const ctx *x, const char *what, const void *buf, size_t bytes) {
  uint64_t mine = cluda_comm_hash(buf, bytes, 0);
  uint64_t *all = test_alloc((size_t)x->size * sizeof *all);
  MPI_Allgather(&mine, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD);
  int differs = -1;
  for (int r = 1; r < x->size && differs < 0; r++)
    if (all[r] != all[0]) differs = r;
  free(all);
  return TEST_CHECK(differs < 0, "%s: rank %d's result differs bitwise from rank 0's", what,
                    differs);
}

static void check_broadcast(const ctx *x, cluda_comm_dtype dt, size_t n) {
  const size_t bytes = n * cluda_comm_dtype_size(dt);
  for (int root = 0; root < x->size; root++) {
    fill(dt, x->a, x->rank, 0, n);
    fill(dt, x->expected, root, 0, n);
    TEST_OK(cluda_comm_broadcast(x->c, x->a, n, dt, root));
    TEST_CHECK(memcmp(x->a, x->expected, bytes) == 0,
               "rank %d: broadcast %s x %zu from root %d delivers the root's bytes", x->rank,
               cluda_comm_dtype_name(dt), n, root);
  }
}

static void check_allreduce(const ctx *x, cluda_comm_dtype dt, size_t n) {
  const size_t bytes = n * cluda_comm_dtype_size(dt);
  for (int op = 0; op < CLUDA_COMM_OPS; op++) {
    if (op == CLUDA_COMM_AVG && !is_float(dt)) continue;
    for (size_t i = 0; i < n; i++) {
      double acc = val(dt, 0, i), mass = fabs(acc);
      for (int r = 1; r < x->size; r++) {
        double v = val(dt, r, i);
        mass += fabs(v);
        if (op == CLUDA_COMM_MAX)
          acc = v > acc ? v : acc;
        else if (op == CLUDA_COMM_MIN)
          acc = v < acc ? v : acc;
        else
          acc += v;
      }
      x->want[i] = op == CLUDA_COMM_AVG ? acc / x->size : acc;
      x->tol[i] = op == CLUDA_COMM_MAX || op == CLUDA_COMM_MIN ? 0.0 : float_tol(dt, mass, x->size);
    }
    char what[80];
    snprintf(what, sizeof what, "allreduce %s", cluda_comm_op_name((cluda_comm_op)op));
    fill(dt, x->a, x->rank, 0, n);
    memset(x->b, POISON, bytes + 16);
    TEST_OK(cluda_comm_allreduce(x->c, x->a, x->b, n, dt, (cluda_comm_op)op));
    expect(x, what, dt, x->b, n);
    same_bits_everywhere(x, what, x->b, bytes);
    TEST_CHECK(((unsigned char *)x->b)[bytes] == POISON, "%s %s x %zu writes past recv", what,
               cluda_comm_dtype_name(dt), n);
    /* the send buffer is an input: unchanged */
    fill(dt, x->expected, x->rank, 0, n);
    TEST_CHECK(memcmp(x->a, x->expected, bytes) == 0, "%s %s x %zu leaves send unchanged", what,
               cluda_comm_dtype_name(dt), n);

    snprintf(what, sizeof what, "allreduce %s in place", cluda_comm_op_name((cluda_comm_op)op));
    TEST_OK(cluda_comm_allreduce(x->c, x->a, x->a, n, dt, (cluda_comm_op)op));
    expect(x, what, dt, x->a, n);
    TEST_CHECK(memcmp(x->a, x->b, bytes) == 0,
               "rank %d: %s %s x %zu equals the out-of-place result", x->rank, what,
               cluda_comm_dtype_name(dt), n);
  }
}

static void check_allgather(const ctx *x, cluda_comm_dtype dt, size_t n) {
  const size_t es = cluda_comm_dtype_size(dt), total = (size_t)x->size * n;
  for (int q = 0; q < x->size; q++)
    fill(dt, (char *)x->expected + (size_t)q * n * es, q, 0, n);
  fill(dt, x->a, x->rank, 0, n);
  memset(x->b, POISON, total * es + 16);
  TEST_OK(cluda_comm_allgather(x->c, x->a, x->b, n, dt));
  TEST_CHECK(memcmp(x->b, x->expected, total * es) == 0 &&
                 ((unsigned char *)x->b)[total * es] == POISON,
             "rank %d: allgather %s x %zu per rank lays the ranks out rank-major", x->rank,
             cluda_comm_dtype_name(dt), n);

  /* in place: this rank's block already sits in recv */
  char *own = (char *)x->b + (size_t)x->rank * n * es;
  memset(x->b, POISON, total * es);
  fill(dt, own, x->rank, 0, n);
  TEST_OK(cluda_comm_allgather(x->c, own, x->b, n, dt));
  TEST_CHECK(memcmp(x->b, x->expected, total * es) == 0,
             "rank %d: allgather in place %s x %zu per rank", x->rank, cluda_comm_dtype_name(dt),
             n);
  same_bits_everywhere(x, "allgather", x->b, total * es);
}

static void check_reduce_scatter(const ctx *x, cluda_comm_dtype dt, size_t n) {
  const size_t es = cluda_comm_dtype_size(dt), total = (size_t)x->size * n;
  const size_t first = (size_t)x->rank * n; /* this rank's block of the summed vector */
  for (size_t i = 0; i < n; i++) {
    double acc = 0.0, mass = 0.0;
    for (int r = 0; r < x->size; r++) {
      acc += val(dt, r, first + i);
      mass += fabs(val(dt, r, first + i));
    }
    x->want[i] = acc;
    x->tol[i] = float_tol(dt, mass, x->size);
  }
  fill(dt, x->a, x->rank, 0, total);
  memset(x->b, POISON, n * es + 16);
  TEST_OK(cluda_comm_reduce_scatter(x->c, x->a, x->b, n, dt));
  expect(x, "reduce_scatter (sum)", dt, x->b, n);
  TEST_CHECK(((unsigned char *)x->b)[n * es] == POISON, "reduce_scatter %s x %zu writes past recv",
             cluda_comm_dtype_name(dt), n);
  memcpy(x->expected, x->b, n * es);

  /* in place: the result lands on this rank's block of send */
  char *own = (char *)x->a + first * es;
  TEST_OK(cluda_comm_reduce_scatter(x->c, x->a, own, n, dt));
  expect(x, "reduce_scatter in place", dt, own, n);
  TEST_CHECK(memcmp(own, x->expected, n * es) == 0,
             "rank %d: reduce_scatter in place %s x %zu equals the out-of-place result", x->rank,
             cluda_comm_dtype_name(dt), n);
}

static void check_collectives(const ctx *x) {
  for (int dt = 0; dt < CLUDA_COMM_DTYPES; dt++)
    for (int k = 0; k < NCOUNTS; k++) {
      check_broadcast(x, (cluda_comm_dtype)dt, counts[k]);
      check_allreduce(x, (cluda_comm_dtype)dt, counts[k]);
      check_allgather(x, (cluda_comm_dtype)dt, counts[k]);
      check_reduce_scatter(x, (cluda_comm_dtype)dt, counts[k]);
    }
}

static double seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Rank 0 arrives 0.2 s late: every other rank must wait for it (threshold 0.1 s leaves room
 * for scheduling skew on an oversubscribed machine). */
static void check_barrier(const ctx *x) {
  MPI_Barrier(MPI_COMM_WORLD);
  double t0 = seconds();
  if (x->rank == 0) {
    struct timespec late = {0, 200 * 1000 * 1000};
    nanosleep(&late, NULL);
  }
  TEST_OK(cluda_comm_barrier(x->c));
  double waited = seconds() - t0;
  if (x->rank != 0)
    TEST_CHECK(waited >= 0.1, "rank %d left the barrier after %.3f s, before rank 0 arrived",
               x->rank, waited);
}

static void check_replicated(const ctx *x) {
  enum { BYTES = 1000 };
  unsigned char data[BYTES];
  for (int i = 0; i < BYTES; i++)
    data[i] = (unsigned char)(i * 31);
  TEST_OK(cluda_comm_check_replicated(x->c, data, BYTES, "student weights"));
  TEST_OK(cluda_comm_check_replicated(x->c, data, 0, "nothing"));
  TEST_FAILS(cluda_comm_check_replicated(NULL, data, BYTES, "w"), CLUDA_ERR_ARG, "not initialised");
  if (x->size == 1) return;

  /* the last rank differs in one byte: every rank fails, naming it and `what` */
  char needle[64];
  snprintf(needle, sizeof needle, "rank %d has fingerprint", x->size - 1);
  if (x->rank == x->size - 1) data[BYTES / 2] ^= 1;
  cluda_status s = cluda_comm_check_replicated(x->c, data, BYTES, "student weights");
  TEST_FAILS(s, CLUDA_ERR_COMM, needle);
  TEST_CHECK(strstr(s.message, "student weights diverged") != NULL, "names what diverged: %s",
             s.message);
  if (x->rank == x->size - 1) data[BYTES / 2] ^= 1;

  /* several ranks differ: the first one is named */
  if (x->size >= 3) {
    if (x->rank >= 1) data[0] ^= (unsigned char)x->rank;
    TEST_FAILS(cluda_comm_check_replicated(x->c, data, BYTES, "teacher"), CLUDA_ERR_COMM,
               "rank 1 has fingerprint");
    if (x->rank >= 1) data[0] ^= (unsigned char)x->rank;
  }
  TEST_OK(cluda_comm_check_replicated(x->c, data, BYTES, "restored weights"));
}

/* Every invalid call fails on the calling rank before any communication, so ranks may
 * make them independently. */
static void check_arguments(const ctx *x) {
  cluda_comm *c = x->c, zero;
  memset(&zero, 0, sizeof zero);
  float f[4] = {0};
  char needle[64];
  TEST_FAILS(cluda_comm_broadcast(NULL, f, 4, CLUDA_COMM_F32, 0), CLUDA_ERR_ARG, "not initialised");
  TEST_FAILS(cluda_comm_allreduce(&zero, f, f, 4, CLUDA_COMM_F32, CLUDA_COMM_SUM), CLUDA_ERR_ARG,
             "comm_allreduce: communicator c is not initialised");
  TEST_FAILS(cluda_comm_barrier(NULL), CLUDA_ERR_ARG, "comm_barrier: communicator c");
  TEST_FAILS(cluda_comm_allgather(c, f, f, 1, CLUDA_COMM_DTYPES), CLUDA_ERR_ARG,
             "dtype 6 is not a comm dtype");
  TEST_FAILS(cluda_comm_allgather(c, f, f, 1, (cluda_comm_dtype)-1), CLUDA_ERR_ARG, "dtype -1");
  TEST_FAILS(cluda_comm_broadcast(c, NULL, 3, CLUDA_COMM_F32, 0), CLUDA_ERR_ARG,
             "buf is NULL for 3 elements");
  TEST_FAILS(cluda_comm_broadcast(c, f, 4, CLUDA_COMM_F32, -1), CLUDA_ERR_ARG, "root -1");
  snprintf(needle, sizeof needle, "root %d is not a rank of 0..%d", x->size, x->size - 1);
  TEST_FAILS(cluda_comm_broadcast(c, f, 4, CLUDA_COMM_F32, x->size), CLUDA_ERR_ARG, needle);
  TEST_FAILS(cluda_comm_allreduce(c, NULL, f, 4, CLUDA_COMM_F32, CLUDA_COMM_SUM), CLUDA_ERR_ARG,
             "send is NULL");
  TEST_FAILS(cluda_comm_allreduce(c, f, NULL, 4, CLUDA_COMM_F32, CLUDA_COMM_SUM), CLUDA_ERR_ARG,
             "recv is NULL");
  TEST_FAILS(cluda_comm_allreduce(c, f, f, 4, CLUDA_COMM_F32, CLUDA_COMM_OPS), CLUDA_ERR_ARG,
             "op 4 is not a reduction");
  TEST_FAILS(cluda_comm_allreduce(c, f, f, 4, CLUDA_COMM_I32, CLUDA_COMM_AVG), CLUDA_ERR_ARG,
             "avg needs a floating dtype, not i32");
  TEST_FAILS(cluda_comm_allreduce(c, f, f, 4, CLUDA_COMM_U8, CLUDA_COMM_AVG), CLUDA_ERR_ARG,
             "not u8");
  TEST_FAILS(cluda_comm_allgather(c, f, NULL, 1, CLUDA_COMM_F32), CLUDA_ERR_ARG,
             "comm_allgather: recv is NULL");
  TEST_FAILS(cluda_comm_reduce_scatter(c, NULL, f, 1, CLUDA_COMM_F32), CLUDA_ERR_ARG,
             "comm_reduce_scatter: send is NULL");
  /* zero elements need no buffers (collective: every rank makes these calls) */
  TEST_OK(cluda_comm_broadcast(c, NULL, 0, CLUDA_COMM_F64, 0));
  TEST_OK(cluda_comm_allreduce(c, NULL, NULL, 0, CLUDA_COMM_F32, CLUDA_COMM_AVG));
  TEST_OK(cluda_comm_allgather(c, NULL, NULL, 0, CLUDA_COMM_U8));
  TEST_OK(cluda_comm_reduce_scatter(c, NULL, NULL, 0, CLUDA_COMM_I64));

  TEST_CHECK(cluda_comm_dtype_size(CLUDA_COMM_U8) == 1 &&
                 cluda_comm_dtype_size(CLUDA_COMM_I32) == 4 &&
                 cluda_comm_dtype_size(CLUDA_COMM_F64) == 8 &&
                 cluda_comm_dtype_size(CLUDA_COMM_DTYPES) == 0,
             "dtype sizes");
  TEST_CHECK(strcmp(cluda_comm_dtype_name(CLUDA_COMM_U64), "u64") == 0 &&
                 strcmp(cluda_comm_dtype_name(CLUDA_COMM_DTYPES), "?") == 0 &&
                 strcmp(cluda_comm_op_name(CLUDA_COMM_AVG), "avg") == 0 &&
                 strcmp(cluda_comm_op_name(CLUDA_COMM_OPS), "?") == 0,
             "dtype and op names");
}

/* The communicator's fields agree with MPI; a second communicator on an MPI the program
 * already initialised leaves MPI running when finalized. */
static void check_fields(const ctx *x, int *argc, char ***argv) {
  int rank = -1, size = -1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const cluda_comm *c = x->c;
  TEST_CHECK(strcmp(c->ops->name, "mpi") == 0 && c->rank == rank && c->size == size &&
                 c->device == -1,
             "rank %d of %d (MPI: %d of %d), device %d", c->rank, c->size, rank, size, c->device);
  /* ctest runs every rank on this one machine */
  TEST_CHECK(c->local_rank == rank && c->local_size == size, "local rank %d of %d", c->local_rank,
             c->local_size);
  TEST_CHECK(cluda_comm_mpi_launched(), "mpirun's environment is recognised");
  TEST_FAILS(cluda_comm_mpi_init(NULL, argc, argv), CLUDA_ERR_ARG, "c is NULL");

  cluda_comm second;
  if (TEST_OK(cluda_comm_mpi_init(&second, argc, argv))) {
    TEST_CHECK(second.rank == rank && second.size == size, "a second communicator");
    int v = rank + 1, sum = 0;
    TEST_OK(cluda_comm_allreduce(&second, &v, &sum, 1, CLUDA_COMM_I32, CLUDA_COMM_SUM));
    TEST_CHECK(sum == size * (size + 1) / 2, "second communicator sums to %d", sum);
    cluda_comm_finalize(&second);
  }
  int finalized = 1;
  MPI_Finalized(&finalized);
  TEST_CHECK(!finalized, "finalizing a communicator that did not initialise MPI keeps MPI up");
}

int main(int argc, char **argv) {
  cluda_comm c;
  if (!TEST_OK(cluda_comm_mpi_init(&c, &argc, &argv))) return test_finish(argv[0]);
  ctx x = {.c = &c, .rank = c.rank, .size = c.size};
  const size_t bytes = (size_t)c.size * MAX_COUNT * sizeof(double) + 16;
  x.a = test_alloc(bytes);
  x.b = test_alloc(bytes);
  x.expected = test_alloc(bytes);
  x.want = test_alloc_f64((int64_t)c.size * MAX_COUNT);
  x.tol = test_alloc_f64((int64_t)c.size * MAX_COUNT);

  check_fields(&x, &argc, &argv);
  check_arguments(&x);
  check_collectives(&x);
  check_barrier(&x);
  check_replicated(&x);

  free(x.a);
  free(x.b);
  free(x.expected);
  free(x.want);
  free(x.tol);
  int rc = test_finish(argv[0]);
  /* the test fails when any rank failed (raw MPI: independent of the code under test) */
  MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  cluda_comm_finalize(&c);
  return rc;
}

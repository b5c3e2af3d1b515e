/* Data parallelism over MPI ranks: the sum over ranks of parameter gradients computed on
 * each rank's shard of a batch equals the gradient of the whole batch on one process (the
 * property gradient all-reduce relies on), and RNG streams keyed by rank are distinct on
 * each rank while rank-free keys agree everywhere. Runs on 2 ranks. */
#include <math.h>
#include <mpi.h>
#include <stdlib.h>

#include "testing.h"

enum { ROWS_PER_RANK = 6, IN = 9, OUT = 5 };

static void test_linear_gradient_allreduce(int rank, int size) {
  cluda_ctx ctx = cluda_cpu_context(NULL);
  const int rows = ROWS_PER_RANK * size;
  /* every rank builds the same global batch from the same seed */
  float *x = test_alloc_f32((int64_t)rows * IN), *dy = test_alloc_f32((int64_t)rows * OUT);
  float *w = test_alloc_f32(OUT * IN);
  test_fill_uniform(x, (int64_t)rows * IN, -1.0f, 1.0f, 5, 0);
  test_fill_uniform(dy, (int64_t)rows * OUT, -1.0f, 1.0f, 5, 1);
  test_fill_uniform(w, OUT * IN, -1.0f, 1.0f, 5, 2);

  float dw_full[OUT * IN] = {0}, db_full[OUT] = {0};
  cluda_tensor tx = cluda_tensor_2d(CLUDA_F32, x, rows, IN);
  cluda_tensor tdy = cluda_tensor_2d(CLUDA_F32, dy, rows, OUT);
  cluda_tensor tw = cluda_tensor_2d(CLUDA_F32, w, OUT, IN);
  cluda_tensor tdw = cluda_tensor_2d(CLUDA_F32, dw_full, OUT, IN);
  cluda_tensor tdb = cluda_tensor_1d(CLUDA_F32, db_full, OUT);
  TEST_OK(cluda_linear_backward(&ctx, &tx, &tw, &tdy, NULL, &tdw, &tdb));

  float dw_shard[OUT * IN] = {0}, db_shard[OUT] = {0};
  cluda_tensor sx =
      cluda_tensor_2d(CLUDA_F32, x + (size_t)rank * ROWS_PER_RANK * IN, ROWS_PER_RANK, IN);
  cluda_tensor sdy =
      cluda_tensor_2d(CLUDA_F32, dy + (size_t)rank * ROWS_PER_RANK * OUT, ROWS_PER_RANK, OUT);
  cluda_tensor sdw = cluda_tensor_2d(CLUDA_F32, dw_shard, OUT, IN);
  cluda_tensor sdb = cluda_tensor_1d(CLUDA_F32, db_shard, OUT);
  TEST_OK(cluda_linear_backward(&ctx, &sx, &tw, &sdy, NULL, &sdw, &sdb));
  MPI_Allreduce(MPI_IN_PLACE, dw_shard, OUT * IN, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
  MPI_Allreduce(MPI_IN_PLACE, db_shard, OUT, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);

  /* summation order differs (shards then ranks), so equal up to float rounding */
  test_compare_f32("all-reduced dw equals full-batch dw", dw_shard, dw_full, OUT * IN, 1e-5, 1e-6);
  test_compare_f32("all-reduced db equals full-batch db", db_shard, db_full, OUT, 1e-5, 1e-6);
  free(x);
  free(dy);
  free(w);
}

static void test_rng_across_ranks(int rank, int size) {
  enum { DRAWS = 64 };
  float shared[DRAWS], mine[DRAWS];
  cluda_rng_key shared_key = cluda_rng_make_key(42, 0, 17, CLUDA_RNG_DATA, 0);
  cluda_rng_key rank_key = cluda_rng_make_key(42, (uint32_t)rank, 17, CLUDA_RNG_DATA, 0);
  for (int i = 0; i < DRAWS; i++) {
    shared[i] = cluda_rng_uniform(shared_key, (uint64_t)i);
    mine[i] = cluda_rng_uniform(rank_key, (uint64_t)i);
  }
  float *all_shared = test_alloc_f32((int64_t)DRAWS * size);
  float *all_mine = test_alloc_f32((int64_t)DRAWS * size);
  MPI_Allgather(shared, DRAWS, MPI_FLOAT, all_shared, DRAWS, MPI_FLOAT, MPI_COMM_WORLD);
  MPI_Allgather(mine, DRAWS, MPI_FLOAT, all_mine, DRAWS, MPI_FLOAT, MPI_COMM_WORLD);
  for (int r = 1; r < size; r++) {
    int same_shared = 0, same_mine = 0;
    for (int i = 0; i < DRAWS; i++) {
      same_shared += all_shared[r * DRAWS + i] == all_shared[i];
      same_mine += all_mine[r * DRAWS + i] == all_mine[i];
    }
    TEST_CHECK(same_shared == DRAWS, "rank-free key differs between rank 0 and %d", r);
    TEST_CHECK(same_mine < 2, "rank-keyed streams of rank 0 and %d overlap (%d equal)", r,
               same_mine);
  }
  free(all_shared);
  free(all_mine);
}

int main(int argc, char **argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  test_linear_gradient_allreduce(rank, size);
  test_rng_across_ranks(rank, size);
  int rc = test_finish(argv[0]);
  /* the test fails when any rank failed */
  MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  MPI_Finalize();
  return rc;
}

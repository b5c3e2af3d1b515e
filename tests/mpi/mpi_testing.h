/* Start and end of the MPI test programs (tests/mpi/test_*.c): the communicator under test
 * (include/cluda/comm_mpi.h), and an exit status that fails on every rank when any rank saw a
 * failed check, so mpirun reports the test as failed whichever rank it was. */
#ifndef CLUDA_MPI_TESTING_H
#define CLUDA_MPI_TESTING_H

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "cluda/comm_mpi.h"
#include "testing.h"

/* Initialises MPI and the communicator; on failure prints why and exits 1 (tests only). */
static inline void mpi_test_init(cluda_comm *comm, int *argc, char ***argv) {
  cluda_status s = cluda_comm_mpi_init(comm, argc, argv);
  if (s.code != CLUDA_OK) {
    fprintf(stderr, "%s\n", s.message);
    exit(1);
  }
}

/* test_finish on every rank, then 1 everywhere if any rank failed; finalises MPI. */
static inline int mpi_test_finish(cluda_comm *comm, const char *program) {
  int failed = test_finish(program), any = 0;
  MPI_Allreduce(&failed, &any, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  cluda_comm_finalize(comm);
  return any;
}

#endif

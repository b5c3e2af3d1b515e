/* The MPI backend of include/cluda/comm.h: host buffers over MPI_COMM_WORLD (the CPU
 * backend's data parallelism, and the bootstrap of the NCCL backend). Library
 * cluda_comm_mpi. */
#ifndef CLUDA_COMM_MPI_H
#define CLUDA_COMM_MPI_H

#include "cluda/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Initialises MPI (MPI_Init_thread, FUNNELED) unless the program already did, duplicates
 * MPI_COMM_WORLD, and finds the node-local rank and size with MPI_Comm_split_type(SHARED).
 * MPI errors are returned (MPI_ERRORS_RETURN), never fatal inside a collective.
 * cluda_comm_finalize calls MPI_Finalize only when this call initialised MPI. */
cluda_status cluda_comm_mpi_init(cluda_comm *c, int *argc, char ***argv);

/* 1 when the program runs under an MPI launcher (mpirun, srun, hydra), judged from the
 * launchers' environment variables; a plain `cluda_train` then needs no MPI at all. */
int cluda_comm_mpi_launched(void);

#ifdef __cplusplus
}
#endif
#endif

/* The NCCL backend of include/cluda/comm.h: device buffers, one GPU per rank (CUDA builds;
 * library cluda_comm_nccl; shared/spec/systems.md 3).
 *
 * Bootstrap over an initialised MPI communicator: rank 0 creates the ncclUniqueId and
 * broadcasts it; the device is the node-local rank, and every rank may see every GPU of its
 * node (no per-rank CUDA_VISIBLE_DEVICES, which breaks NVLink detection, NCCL #1066). More
 * local ranks than GPUs is refused with a message naming both counts.
 *
 * Collectives are enqueued on the stream given here and then waited for under a watchdog:
 * the wait polls cudaStreamQuery and ncclCommGetAsyncError, and on an asynchronous error or
 * after timeout_s seconds calls ncclCommAbort and returns CLUDA_ERR_COMM (the caller then
 * aborts the job), so a dead peer never leaves a rank spinning forever. The wait covers the
 * whole stream, so timeout_s must exceed the longest work queued ahead of a collective. After
 * an abort every collective fails. avg maps to ncclAvg; count 0 is a no-op. Buffers are device
 * memory: the host helpers (cluda_comm_check_replicated, scalars for logs) go through the
 * bootstrap communicator after a stream synchronisation. */
#ifndef CLUDA_COMM_NCCL_H
#define CLUDA_COMM_NCCL_H

#include "cluda/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

/* bootstrap: an MPI communicator (cluda_comm_mpi_init; any host-buffer communicator works)
 * that outlives c. stream: a cudaStream_t (NULL: the legacy default stream). timeout_s > 0.
 * Collective over the bootstrap: the ranks agree on success before ncclCommInitRank, so one
 * rank's failure (no GPU, too many local ranks) fails every rank instead of leaving them
 * blocked. Sets c->device to the node-local rank and makes it the current device. */
cluda_status cluda_comm_nccl_init(cluda_comm *c, cluda_comm *bootstrap, void *stream,
                                  double timeout_s);

#ifdef __cplusplus
}
#endif
#endif

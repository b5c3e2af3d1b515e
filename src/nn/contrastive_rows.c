/* The contrastive loss of one rank's rows against the global batch (include/cluda/
 * contrastive.h, cluda_contrastive_rows_step; shared/spec/systems.md 2.2 option A). */
#include "cluda/backend.h"
#include "cluda/comm.h"
#include "cluda/contrastive.h"

cluda_status cluda_contrastive_rows_step(cluda_ctx *ctx, cluda_comm *comm,
                                         const cluda_contrastive_params *p, int global,
                                         const cluda_tensor *rows, const cluda_tensor *labels,
                                         const cluda_tensor *weights,
                                         const cluda_contrastive_buffers *buf, double *loss,
                                         cluda_tensor *d_rows) {
  const char *op = "contrastive_rows_step";
  CLUDA_REQUIRE(comm != NULL && p != NULL && buf != NULL && loss != NULL, CLUDA_ERR_ARG,
                "%s: comm, p, buf and loss must not be NULL", op);
  /* The loss and its gradient seed live on the host here, and the MPI communicator moves host
   * buffers: a device version needs the NCCL communicator and device scalars. */
  CLUDA_REQUIRE(ctx != NULL && ctx->backend == cluda_backend_cpu(), CLUDA_ERR_UNSUPPORTED,
                "%s: only the CPU backend is supported (got %s)", op,
                ctx && ctx->backend ? ctx->backend->name : "no backend");
  CLUDA_TRY(cluda_check_tensor(op, "rows", rows, CLUDA_F32, 2));
  CLUDA_TRY(cluda_check_tensor(op, "d_rows", d_rows, CLUDA_F32, 2));
  char dr[64], dd[64];
  CLUDA_REQUIRE(cluda_tensor_same_shape(d_rows, rows), CLUDA_ERR_SHAPE,
                "%s: d_rows %s must have the shape of rows %s", op,
                cluda_tensor_describe(d_rows, dd, sizeof dd),
                cluda_tensor_describe(rows, dr, sizeof dr));
  const int64_t M = rows->shape[0];
  const int D = rows->shape[1], W = comm->size, gathered = global && W > 1;
  CLUDA_REQUIRE(buf->stats != NULL && buf->d_anchors != NULL, CLUDA_ERR_ARG,
                "%s: buf->stats and buf->d_anchors are required", op);
  const int pair_weights = weights != NULL && p->ref_pair_weight;
  CLUDA_REQUIRE(!gathered || (buf->all_rows && buf->all_drows && buf->all_labels &&
                              (!pair_weights || buf->all_weights)),
                CLUDA_ERR_ARG, "%s: the gathered buffers are required on %d ranks", op, W);

  cluda_contrastive_params cp = *p;
  cp.mean_count = M;
  cp.self_offset = 0;
  cluda_tensor crows = *rows, clabels = *labels, cweights = weights ? *weights : *rows;
  if (gathered) {
    const size_t n = (size_t)M;
    CLUDA_TRY(cluda_comm_allgather(comm, rows->data, buf->all_rows, n * (size_t)D, CLUDA_COMM_F32));
    CLUDA_TRY(cluda_comm_allgather(comm, labels->data, buf->all_labels, n, CLUDA_COMM_U8));
    if (pair_weights)
      CLUDA_TRY(cluda_comm_allgather(comm, weights->data, buf->all_weights, n, CLUDA_COMM_F32));
    crows = cluda_tensor_2d(CLUDA_F32, buf->all_rows, (int64_t)W * M, D);
    clabels = cluda_tensor_1d(CLUDA_U8, buf->all_labels, (int64_t)W * M);
    cweights = cluda_tensor_1d(CLUDA_F32, buf->all_weights, (int64_t)W * M);
    cp.self_offset = (int64_t)comm->rank * M;
  }
  const cluda_tensor *contrast_weights = pair_weights ? &cweights : NULL;
  float loss_value = 0.0f, one = 1.0f;
  cluda_tensor tloss = cluda_tensor_1d(CLUDA_F32, &loss_value, 1);
  cluda_tensor dloss = cluda_tensor_1d(CLUDA_F32, &one, 1);
  cluda_tensor stats = cluda_tensor_2d(CLUDA_F32, buf->stats, M, CLUDA_CL_STATS_COLS);
  CLUDA_TRY(cluda_contrastive_forward(ctx, &cp, rows, labels, weights, &crows, &clabels,
                                      contrast_weights, &tloss, &stats));
  *loss = loss_value;
  cluda_tensor da = cluda_tensor_2d(CLUDA_F32, buf->d_anchors, M, D);
  cluda_tensor dall = cluda_tensor_2d(CLUDA_F32, buf->all_drows, (int64_t)W * M, D);
  CLUDA_TRY(cluda_contrastive_backward(ctx, &cp, rows, labels, weights, &crows, &clabels,
                                       contrast_weights, &stats, &dloss, &da,
                                       gathered ? &dall : d_rows, NULL, NULL));
  /* SUM, not average, and not this rank's own slice alone: every rank's anchors see these
   * rows as positives and negatives (systems.md 2.2). */
  if (gathered)
    CLUDA_TRY(cluda_comm_reduce_scatter(comm, buf->all_drows, d_rows->data, (size_t)M * (size_t)D,
                                        CLUDA_COMM_F32));
  return cluda_axpy(ctx, 1.0f, &da, d_rows);
}

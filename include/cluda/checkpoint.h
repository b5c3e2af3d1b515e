/* Training checkpoints: everything a UDA run needs to continue bit for bit (student and
 * teacher parameters and BatchNorm buffers, AdamW moments and step, the iteration, the seed
 * and data-stream cursor, best metric, small metric series, the resolved config text) in one
 * HDF5 file under <work_dir>/checkpoints/:
 *
 *   latest.h5          the newest state (what `--resume auto` takes)
 *   best.h5            the state with the best target mIoU so far
 *   iter_<N>.h5        every N iterations (N zero-padded to 8 digits), newest K kept
 *
 * A file is written once under a temp name in the same directory, flushed, closed and
 * published by fsync + rename + directory fsync (cluda_publish_file); further names for the
 * same state are hard links to it, so `latest` + `iter_<N>` cost one write. A failed save
 * (disk full, EFBIG, I/O error) removes its temp file and leaves every published file as it
 * was. Layout (h5ls -r):
 *
 *   /                       attributes: format "cluda-ckpt", format_version, cluda_version,
 *                           the architecture (as the weight file: encoder_name, embed_dims,
 *                           ...), iteration, seed, best_metric, best_iteration,
 *                           params_table_hash, state_table_hash, param_checksum (= the
 *                           fnv1a64 attribute of /student/params), wall_time (informational)
 *   /config                 the resolved config YAML (scalar UTF-8 string)
 *   /data_stream            int64 [n]: the trainer's data-stream cursor(s)
 *   /extra/<name>           float64 [n]: free-form series (e.g. mIoU history)
 *   /student/params/<name>  float32, natural shape, attributes layout and fnv1a64
 *   /student/state/<name>   BatchNorm running statistics
 *   /teacher/params/<name>, /teacher/state/<name>   (only when the run has a teacher)
 *   /optimizer              attributes: step, lr, head_lr_mult, beta1, beta2, eps,
 *                           weight_decay, table_hash
 *   /optimizer/m/<name>, /optimizer/v/<name>
 * Every buffer group carries an fnv1a64 attribute: the fnv1a64 of its entries' checksums
 * in table order. */
#ifndef CLUDA_CHECKPOINT_H
#define CLUDA_CHECKPOINT_H

#include <stddef.h>
#include <stdint.h>

#include "cluda/optim.h"
#include "cluda/segmentor.h"
#include "cluda/status.h"

#ifdef __cplusplus
extern "C" {
#endif

enum { CLUDA_CKPT_FORMAT_VERSION = 1, CLUDA_CKPT_NAME_MAX = 64 };

/* Which names a save publishes (a bit mask). */
enum {
  CLUDA_CKPT_LATEST = 1, /* latest.h5 */
  CLUDA_CKPT_BEST = 2,   /* best.h5 */
  CLUDA_CKPT_ITER = 4    /* iter_<iteration>.h5, subject to keep_iters */
};

/* A named float64 series (e.g. "miou_history"). Save writes values[0..count); load sets
 * count (0 when the file has no such series) and fails when the file holds more than
 * capacity values. */
typedef struct cluda_ckpt_series {
  char name[CLUDA_CKPT_NAME_MAX];
  double *values;
  int count;
  int capacity;
} cluda_ckpt_series;

/* What the trainer owns, described by pointers (nothing is copied). Save reads all of it;
 * load checks the fields marked "checked" against the file and restores the others. */
typedef struct cluda_train_state {
  const cluda_segmentor *model; /* checked: architecture, tables (names, shapes, hashes) */
  float *student_params;        /* model->params.total floats */
  float *student_state;         /* model->state.total floats (may be NULL if no state) */
  float *teacher_params;        /* NULL (and teacher_state NULL): no teacher; checked */
  float *teacher_state;
  cluda_adamw *optimizer;  /* checked: config and table_hash; restored: step, m, v */
  int64_t iteration;       /* the next iteration to run */
  uint64_t seed;           /* checked: counter-based RNG positions derive from (seed, iter) */
  int64_t *stream;         /* the trainer's data-stream cursor(s) */
  int stream_count;        /* checked */
  const char *config_yaml; /* save only: the resolved config (may be NULL: stored as "") */
  double best_metric;      /* best target mIoU so far (NaN / any value with no best) */
  int64_t best_iteration;  /* -1: none yet */
  cluda_ckpt_series *series;
  int series_count;
} cluda_train_state;

/* Writes the state and publishes it under every name in `kinds` (a mask of CLUDA_CKPT_*) in
 * <work_dir>/checkpoints/ (created if missing; work_dir must exist). With CLUDA_CKPT_ITER
 * and keep_iters > 0, only the keep_iters iter_* files with the highest N are kept (the one
 * just written always); older ones are deleted after the new one is published. A failure
 * before publishing leaves every existing checkpoint untouched and no temp file behind.
 * path_out (may be NULL) receives the path of the first name written. */
cluda_status cluda_checkpoint_save(const char *work_dir, int kinds, const cluda_train_state *state,
                                   int keep_iters, char *path_out, size_t path_cap);

/* For `--resume auto`: the checkpoint in <work_dir>/checkpoints/ with the highest stored
 * iteration among latest.h5, iter_*.h5 and best.h5 whose header reads (format, version,
 * iteration), preferring latest, then iter_*, then best on ties. A latest.h5 that is
 * truncated or not HDF5 is thus skipped in favour of the newest readable iter_ file.
 * Data corruption inside a file is only found by cluda_checkpoint_load. Fails with
 * CLUDA_ERR_IO when there is none. */
cluda_status cluda_checkpoint_find_latest(const char *work_dir, char *path_out, size_t path_cap);

/* Loads a checkpoint into `state` (see the field comments). Everything that can be checked
 * without reading the tensors is checked first (format and version, architecture, every
 * table name and shape, table hashes, teacher presence, optimizer config, seed, stream
 * length, series capacities); such a failure leaves every buffer and field untouched, with
 * a message naming what differs. Tensors are then read straight into the live buffers and
 * verified against their checksums; a read error or checksum mismatch found there may leave
 * the float buffers partly overwritten (the message says so): the caller must not train on.
 * The scalar fields (iteration, optimizer step, best, stream, series) are written only after
 * every tensor verified. */
cluda_status cluda_checkpoint_load(const char *path, cluda_train_state *state);

/* The header of a checkpoint, without a model: for `--resume` to show what it resumes and
 * to compare or adopt the stored config before building the network. */
typedef struct cluda_ckpt_info {
  int format_version;
  int64_t iteration;
  int64_t optimizer_step;
  uint64_t seed;
  double best_metric;
  int64_t best_iteration;
  uint64_t param_checksum;
  int has_teacher;
  char encoder_name[16];
  char *config_yaml; /* malloc'd; cluda_checkpoint_info_free releases it */
} cluda_ckpt_info;

cluda_status cluda_checkpoint_read_info(const char *path, cluda_ckpt_info *info);
void cluda_checkpoint_info_free(cluda_ckpt_info *info);

/* Reads the student (teacher = 0) or teacher (teacher = 1) parameters and BN buffers of a
 * checkpoint into params [model->params.total] and state [model->state.total] (the
 * evaluation and inference programs accept checkpoints as weights). The architecture and
 * every table are checked before the buffers are written. */
cluda_status cluda_checkpoint_load_weights(const char *ckpt_path, const cluda_segmentor *model,
                                           int teacher, float *params, float *state);

/* Writes the student (teacher = 0) or teacher (teacher = 1) parameters and BN buffers of a
 * checkpoint as a cluda weight file (cluda_weights_save_h5) for cluda_infer. */
cluda_status cluda_checkpoint_export_weights(const char *ckpt_path, const cluda_segmentor *model,
                                             int teacher, const char *weights_path);

/* Deletes stale "*.tmp.<pid>" files in <work_dir>/checkpoints/ left by a crashed save (pid
 * not alive and not ours). *removed (may be NULL) receives the count. Call at startup. */
cluda_status cluda_checkpoint_remove_stale(const char *work_dir, int *removed);

#ifdef __cplusplus
}
#endif
#endif

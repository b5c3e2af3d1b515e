/* Training logs: TensorBoard event files written by hand (TFRecord framing, CRC32C and the
 * few Event protobuf fields a scalar needs), a metrics.jsonl file with one JSON object per
 * iteration, and the console progress line. Wall times are always given by the caller, so
 * the bytes written are deterministic and testable. Nothing here holds global state. */
#ifndef CLUDA_LOGGING_H
#define CLUDA_LOGGING_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "cluda/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- CRC32C (Castagnoli, reflected polynomial 0x82F63B78) ---- */

/* Continues a CRC: start with crc = 0 and feed the data in pieces; the result equals
 * cluda_crc32c of the concatenation. */
uint32_t cluda_crc32c_extend(uint32_t crc, const void *data, size_t n);
static inline uint32_t cluda_crc32c(const void *data, size_t n) {
  return cluda_crc32c_extend(0, data, n);
}
/* The TFRecord mask: ((crc >> 15) | (crc << 17)) + 0xA282EAD8, and its inverse. */
uint32_t cluda_crc32c_mask(uint32_t crc);
uint32_t cluda_crc32c_unmask(uint32_t masked);

/* 1 when s is well-formed UTF-8 (no overlongs, surrogates or code points > U+10FFFF). Both
 * protobuf strings and JSON require it. */
int cluda_utf8_valid(const char *s);

/* ---- Event protobuf encoding ----
 * Both return the encoded size and write nothing when it exceeds cap (like snprintf), or 0
 * when the input is invalid (tag not valid UTF-8). Fields equal to their proto3 default
 * (wall_time +0.0, step 0) are omitted, as the reference serializer does. */

/* Event{wall_time, file_version = "brain.Event:2", source_metadata{writer}}; writer may be
 * NULL (no source_metadata). */
size_t cluda_tfevent_encode_version(uint8_t *buf, size_t cap, double wall_time,
                                    const char *source_writer);
/* Event{wall_time, step, summary{value{tag, simple_value}}}. */
size_t cluda_tfevent_encode_scalar(uint8_t *buf, size_t cap, double wall_time, int64_t step,
                                   const char *tag, float value);

/* Writes one TFRecord: u64 length, masked CRC of the length, data, masked CRC of the data.
 * `path` only names the file in the error message. */
cluda_status cluda_tfrecord_write(FILE *f, const char *path, const void *data, size_t n);

enum { CLUDA_TFEVENTS_MAX_TAG = 1024, CLUDA_TFEVENTS_PATH_BYTES = 4096 };

/* An open event file; rank 0 only, one per run directory. */
typedef struct cluda_tfevents {
  FILE *file;
  char path[CLUDA_TFEVENTS_PATH_BYTES];
} cluda_tfevents;

/* Creates "<dir>/events.out.tfevents.<%010 unix seconds of wall_time>.<hostname>" (hostname
 * NULL: gethostname()) and writes the file-version event with source writer "cluda". The
 * file is opened for appending, so an existing file is never truncated. */
cluda_status cluda_tfevents_open(cluda_tfevents *w, const char *dir, double wall_time,
                                 const char *hostname);
/* The same at an explicit path, with the version event's source writer given (NULL: none). */
cluda_status cluda_tfevents_open_path(cluda_tfevents *w, const char *path, double wall_time,
                                      const char *source_writer);
/* Appends one scalar (tag: UTF-8, at most CLUDA_TFEVENTS_MAX_TAG bytes). Buffered: call
 * cluda_tfevents_flush periodically so TensorBoard sees it. */
cluda_status cluda_tfevents_scalar(cluda_tfevents *w, const char *tag, int64_t step, float value,
                                   double wall_time);
/* fflush, and with sync != 0 also fsync. */
cluda_status cluda_tfevents_flush(cluda_tfevents *w, int sync);
/* Flushes and closes; safe on a writer that failed to open or is already closed. */
cluda_status cluda_tfevents_close(cluda_tfevents *w);

/* ---- metrics.jsonl ---- */

/* A named number, e.g. {"loss_src", 0.412}. */
typedef struct cluda_metric {
  const char *name;
  double value;
} cluda_metric;

/* One JSON object per line:
 *   {"iter":1200,"time":1700000000.25,"loss_src":0.412,"lr":6e-05}
 * Numbers are printed with the fewest digits that read back to the same double. JSON has no
 * NaN or Inf: such a field is written as null, and the line gets one more member, e.g.
 *   "nonfinite":{"loss_src":"nan","grad_norm":"-inf"}
 * so the value is not silently lost. Each line is written with one fwrite and flushed, so a
 * crash loses at most the line being written. */
typedef struct cluda_metrics_log {
  FILE *file;
  char path[CLUDA_TFEVENTS_PATH_BYTES];
  char *line; /* reused line buffer */
  size_t line_cap;
} cluda_metrics_log;

/* Opens path for appending (append = 0: truncates it, for a fresh run). */
cluda_status cluda_metrics_open(cluda_metrics_log *m, const char *path, int append);
/* Writes one line. Field names must be valid UTF-8, distinct, and not "iter", "time" or
 * "nonfinite". */
cluda_status cluda_metrics_write(cluda_metrics_log *m, int64_t iter, double wall_time,
                                 const cluda_metric *fields, int n_fields);
/* fsyncs the file (lines are already flushed to the OS). */
cluda_status cluda_metrics_sync(cluda_metrics_log *m);
cluda_status cluda_metrics_close(cluda_metrics_log *m);

/* Writes s as a JSON string literal (with the quotes) into buf; returns the full length like
 * snprintf, or 0 when s is not valid UTF-8. Control characters become \n, \t, ... or \u00XX;
 * other UTF-8 is kept as is. */
size_t cluda_json_string(char *buf, size_t size, const char *s);
/* Writes a finite double with the fewest significant digits (<= 17) that read back exactly;
 * returns the length like snprintf. */
size_t cluda_json_number(char *buf, size_t size, double v);

/* ---- console progress line ---- */

typedef struct cluda_progress {
  int64_t iter, max_iters;
  double its_per_sec;          /* <= 0 or not finite: rate and ETA shown as unknown */
  const cluda_metric *metrics; /* losses etc., shown in order */
  int n_metrics;
  double lr;        /* < 0: omitted */
  double gamma;     /* the Γ weight; NaN: omitted */
  double mem_bytes; /* < 0: omitted */
} cluda_progress;

/* "it 1200/40000 | 1.93 it/s | ETA 5:34:10 | loss_src 0.412 loss_trg 0.300 | lr 6.0e-05 |
 *  Γ 0.82 | mem 3.1 GiB". Pure; returns the full length like snprintf. */
size_t cluda_progress_format(char *buf, size_t size, const cluda_progress *p);
/* Seconds as h:mm:ss (hours unbounded, "--:--:--" when negative or not finite); returns
 * the full length like snprintf. */
size_t cluda_format_hms(char *buf, size_t size, double seconds);

#ifdef __cplusplus
}
#endif
#endif

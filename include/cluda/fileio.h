/* File helpers for "nothing lost": a file is written under a temporary name and published
 * by rename only once it is complete and on disk. */
#ifndef CLUDA_FILEIO_H
#define CLUDA_FILEIO_H

#include <stddef.h>

#include "cluda/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Writes "<path>.tmp.<pid>" into tmp (for the writer to create and fill). */
cluda_status cluda_temp_path(const char *path, char *tmp, size_t size);

/* fsyncs tmp, renames it to path, fsyncs the directory. On failure tmp is removed and path
 * is untouched (a previous version survives). */
cluda_status cluda_publish_file(const char *tmp, const char *path);

#ifdef __cplusplus
}
#endif
#endif

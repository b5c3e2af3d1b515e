#include "cluda/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

cluda_status cluda_temp_path(const char *path, char *tmp, size_t size) {
  int n = snprintf(tmp, size, "%s.tmp.%ld", path, (long)getpid());
  CLUDA_REQUIRE(n > 0 && (size_t)n < size, CLUDA_ERR_ARG, "temp_path: path too long: %s", path);
  return cluda_ok();
}

static cluda_status fsync_path(const char *path, int flags) {
  int fd = open(path, flags);
  CLUDA_REQUIRE(fd >= 0, CLUDA_ERR_IO, "cannot open %s: %s", path, strerror(errno));
  int rc = fsync(fd);
  int err = errno;
  close(fd);
  CLUDA_REQUIRE(rc == 0, CLUDA_ERR_IO, "fsync %s: %s", path, strerror(err));
  return cluda_ok();
}

cluda_status cluda_publish_file(const char *tmp, const char *path) {
  cluda_status s = fsync_path(tmp, O_RDONLY);
  if (s.code == CLUDA_OK && rename(tmp, path) != 0)
    s = CLUDA_FAIL(CLUDA_ERR_IO, "rename %s -> %s: %s", tmp, path, strerror(errno));
  if (s.code != CLUDA_OK) {
    unlink(tmp);
    return s;
  }
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  return fsync_path(dirname(dir), O_RDONLY | O_DIRECTORY);
}

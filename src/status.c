#include "cluda/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

cluda_status cluda_status_make(cluda_code code, const char *file, int line, const char *fmt, ...) {
  cluda_status s;
  s.code = code;
  const char *base = strrchr(file, '/');
  base = base ? base + 1 : file;
  int n = snprintf(s.message, sizeof s.message, "%s:%d: ", base, line);
  if (n < 0 || (size_t)n >= sizeof s.message) n = 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s.message + n, sizeof s.message - (size_t)n, fmt, ap);
  va_end(ap);
  return s;
}

const char *cluda_code_name(cluda_code code) {
  switch (code) {
  case CLUDA_OK: return "ok";
  case CLUDA_ERR_ARG: return "invalid argument";
  case CLUDA_ERR_SHAPE: return "shape mismatch";
  case CLUDA_ERR_DTYPE: return "unsupported dtype";
  case CLUDA_ERR_ALLOC: return "out of memory";
  case CLUDA_ERR_IO: return "i/o error";
  case CLUDA_ERR_UNSUPPORTED: return "unsupported";
  case CLUDA_ERR_DEVICE: return "device error";
  case CLUDA_ERR_COMM: return "communication error";
  }
  return "unknown error";
}

/* metrics.jsonl (one JSON object per iteration, flushed per line) and the console progress
 * line. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluda/logging.h"

/* ---- snprintf-style appending: writes what fits, always terminates, counts everything ---- */

typedef struct text_out {
  char *buf;
  size_t size, len;
} text_out;

static void out_bytes(text_out *o, const char *s, size_t n) {
  if (o->len < o->size) {
    size_t room = o->size - 1 - o->len;
    memcpy(o->buf + o->len, s, n < room ? n : room);
  }
  o->len += n;
  if (o->size) o->buf[o->len < o->size ? o->len : o->size - 1] = '\0';
}

__attribute__((format(printf, 2, 3))) static void out_fmt(text_out *o, const char *fmt, ...) {
  char tmp[128];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n > 0) out_bytes(o, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static text_out text_begin(char *buf, size_t size) {
  text_out o = {buf, size, 0};
  if (size) buf[0] = '\0';
  return o;
}

/* ---- JSON pieces ---- */

size_t cluda_json_string(char *buf, size_t size, const char *s) {
  text_out o = text_begin(buf, size);
  if (!s || !cluda_utf8_valid(s)) return 0;
  out_bytes(&o, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    switch (*p) {
    case '"': out_bytes(&o, "\\\"", 2); break;
    case '\\': out_bytes(&o, "\\\\", 2); break;
    case '\n': out_bytes(&o, "\\n", 2); break;
    case '\r': out_bytes(&o, "\\r", 2); break;
    case '\t': out_bytes(&o, "\\t", 2); break;
    case '\b': out_bytes(&o, "\\b", 2); break;
    case '\f': out_bytes(&o, "\\f", 2); break;
    default:
      if (*p < 0x20)
        out_fmt(&o, "\\u%04x", *p);
      else
        out_bytes(&o, (const char *)p, 1);
    }
  }
  out_bytes(&o, "\"", 1);
  return o.len;
}

size_t cluda_json_number(char *buf, size_t size, double v) {
  char tmp[40];
  int n = 0;
  /* Shortest round trip: 0.1 prints as 0.1, not 0.10000000000000001. */
  for (int prec = 1; prec <= 17; prec++) {
    n = snprintf(tmp, sizeof tmp, "%.*g", prec, v);
    if (strtod(tmp, NULL) == v) break;
  }
  text_out o = text_begin(buf, size);
  out_bytes(&o, tmp, (size_t)n);
  return o.len;
}

/* ---- metrics.jsonl ---- */

cluda_status cluda_metrics_open(cluda_metrics_log *m, const char *path, int append) {
  CLUDA_REQUIRE(m && path, CLUDA_ERR_ARG, "metrics_open: NULL argument");
  memset(m, 0, sizeof *m);
  int n = snprintf(m->path, sizeof m->path, "%s", path);
  CLUDA_REQUIRE(n > 0 && (size_t)n < sizeof m->path, CLUDA_ERR_ARG,
                "metrics_open: path too long: %.120s", path);
  m->file = fopen(path, append ? "a" : "w");
  CLUDA_REQUIRE(m->file, CLUDA_ERR_IO, "metrics: cannot open %s: %s", path, strerror(errno));
  return cluda_ok();
}

static int reserved_name(const char *name) {
  return !strcmp(name, "iter") || !strcmp(name, "time") || !strcmp(name, "nonfinite");
}

static void json_value(text_out *o, double v) {
  char tmp[40];
  if (isfinite(v)) {
    cluda_json_number(tmp, sizeof tmp, v);
    out_bytes(o, tmp, strlen(tmp));
  } else {
    out_bytes(o, "null", 4);
  }
}

static void json_key(text_out *o, const char *name) {
  size_t need = cluda_json_string(NULL, 0, name);
  /* Write straight into the output when it fits, else just count. */
  if (o->len + need < o->size) {
    cluda_json_string(o->buf + o->len, o->size - o->len, name);
    o->len += need;
  } else {
    o->len += need;
  }
  out_bytes(o, ":", 1);
}

static const char *nonfinite_name(double v) {
  return isnan(v) ? "\"nan\"" : v > 0 ? "\"inf\"" : "\"-inf\"";
}

/* Formats the whole line; returns its length (without the terminator). */
static size_t format_line(char *buf, size_t size, int64_t iter, double wall_time,
                          const cluda_metric *fields, int n_fields) {
  text_out o = text_begin(buf, size);
  out_fmt(&o, "{\"iter\":%lld,\"time\":", (long long)iter);
  json_value(&o, wall_time);
  int n_bad = 0;
  for (int i = 0; i < n_fields; i++) {
    out_bytes(&o, ",", 1);
    json_key(&o, fields[i].name);
    json_value(&o, fields[i].value);
    n_bad += !isfinite(fields[i].value);
  }
  if (n_bad || !isfinite(wall_time)) {
    out_bytes(&o, ",\"nonfinite\":{", 14);
    const char *sep = "";
    if (!isfinite(wall_time)) {
      out_fmt(&o, "\"time\":%s", nonfinite_name(wall_time));
      sep = ",";
    }
    for (int i = 0; i < n_fields; i++) {
      if (isfinite(fields[i].value)) continue;
      out_bytes(&o, sep, strlen(sep));
      json_key(&o, fields[i].name);
      const char *v = nonfinite_name(fields[i].value);
      out_bytes(&o, v, strlen(v));
      sep = ",";
    }
    out_bytes(&o, "}", 1);
  }
  out_bytes(&o, "}\n", 2);
  return o.len;
}

cluda_status cluda_metrics_write(cluda_metrics_log *m, int64_t iter, double wall_time,
                                 const cluda_metric *fields, int n_fields) {
  CLUDA_REQUIRE(m && m->file, CLUDA_ERR_ARG, "metrics_write: log is not open");
  CLUDA_REQUIRE(n_fields >= 0 && (fields || n_fields == 0), CLUDA_ERR_ARG,
                "metrics_write: bad field list for %s", m->path);
  for (int i = 0; i < n_fields; i++) {
    const char *name = fields[i].name;
    CLUDA_REQUIRE(name && *name && cluda_utf8_valid(name), CLUDA_ERR_ARG,
                  "metrics_write: field %d of %s has an empty or non-UTF-8 name", i, m->path);
    CLUDA_REQUIRE(!reserved_name(name), CLUDA_ERR_ARG,
                  "metrics_write: field name \"%s\" is reserved (%s)", name, m->path);
    for (int j = 0; j < i; j++)
      CLUDA_REQUIRE(strcmp(name, fields[j].name) != 0, CLUDA_ERR_ARG,
                    "metrics_write: duplicate field name \"%s\" (%s)", name, m->path);
  }
  size_t len = format_line(m->line, m->line_cap, iter, wall_time, fields, n_fields);
  if (len >= m->line_cap) {
    char *grown = realloc(m->line, len + 1);
    CLUDA_REQUIRE(grown, CLUDA_ERR_ALLOC, "metrics_write: %zu-byte line for %s", len + 1, m->path);
    m->line = grown;
    m->line_cap = len + 1;
    format_line(m->line, m->line_cap, iter, wall_time, fields, n_fields);
  }
  /* One fwrite + fflush per line: a reader (or a crash) sees whole lines only, except for
   * at most the one being written. */
  CLUDA_REQUIRE(fwrite(m->line, 1, len, m->file) == len && fflush(m->file) == 0, CLUDA_ERR_IO,
                "metrics: write %s: %s", m->path, strerror(errno));
  return cluda_ok();
}

cluda_status cluda_metrics_sync(cluda_metrics_log *m) {
  CLUDA_REQUIRE(m && m->file, CLUDA_ERR_ARG, "metrics_sync: log is not open");
  CLUDA_REQUIRE(fflush(m->file) == 0 && fsync(fileno(m->file)) == 0, CLUDA_ERR_IO,
                "metrics: fsync %s: %s", m->path, strerror(errno));
  return cluda_ok();
}

cluda_status cluda_metrics_close(cluda_metrics_log *m) {
  if (!m) return cluda_ok();
  free(m->line);
  m->line = NULL;
  m->line_cap = 0;
  if (!m->file) return cluda_ok();
  int rc = fclose(m->file);
  m->file = NULL;
  CLUDA_REQUIRE(rc == 0, CLUDA_ERR_IO, "metrics: close %s: %s", m->path, strerror(errno));
  return cluda_ok();
}

/* ---- progress line ---- */

size_t cluda_format_hms(char *buf, size_t size, double seconds) {
  text_out o = text_begin(buf, size);
  /* Beyond ~100 years an ETA is meaningless, and the cast below must not overflow. */
  if (!(seconds >= 0) || seconds > 3.6e12) {
    out_bytes(&o, "--:--:--", 8);
    return o.len;
  }
  long long s = llround(seconds);
  out_fmt(&o, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  return o.len;
}

/* Losses and the like: 3 decimals in the usual range, scientific outside it so that tiny
 * and huge values keep their significant digits. */
static void progress_number(text_out *o, double v) {
  double a = fabs(v);
  if (isnan(v))
    out_bytes(o, "nan", 3);
  else if (isinf(v))
    out_bytes(o, v > 0 ? "inf" : "-inf", v > 0 ? 3 : 4);
  else if (v == 0 || (a >= 1e-3 && a < 1e5))
    out_fmt(o, "%.3f", v);
  else
    out_fmt(o, "%.2e", v);
}

size_t cluda_progress_format(char *buf, size_t size, const cluda_progress *p) {
  text_out o = text_begin(buf, size);
  if (!p) return 0;
  out_fmt(&o, "it %lld/%lld", (long long)p->iter, (long long)p->max_iters);
  double rate = p->its_per_sec;
  char hms[32];
  if (rate > 0 && isfinite(rate)) {
    if (rate >= 0.01 && rate < 1000)
      out_fmt(&o, " | %.2f it/s", rate);
    else
      out_fmt(&o, " | %.2e it/s", rate);
    double left = (double)(p->max_iters - p->iter);
    cluda_format_hms(hms, sizeof hms, left > 0 ? left / rate : 0);
  } else {
    out_bytes(&o, " | - it/s", 9);
    cluda_format_hms(hms, sizeof hms, -1);
  }
  out_fmt(&o, " | ETA %s", hms);
  if (p->n_metrics > 0 && p->metrics) {
    out_bytes(&o, " |", 2);
    for (int i = 0; i < p->n_metrics; i++) {
      const char *name = p->metrics[i].name ? p->metrics[i].name : "?";
      out_bytes(&o, " ", 1);
      out_bytes(&o, name, strlen(name));
      out_bytes(&o, " ", 1);
      progress_number(&o, p->metrics[i].value);
    }
  }
  if (p->lr >= 0) out_fmt(&o, " | lr %.1e", p->lr);
  if (!isnan(p->gamma)) out_fmt(&o, " | \xce\x93 %.2f", p->gamma); /* Γ in UTF-8 */
  if (p->mem_bytes >= 0) out_fmt(&o, " | mem %.1f GiB", p->mem_bytes / (1024.0 * 1024 * 1024));
  return o.len;
}

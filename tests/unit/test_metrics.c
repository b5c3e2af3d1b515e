/* metrics.jsonl and the progress line: every line is checked by a small strict JSON parser
 * (RFC 8259 grammar, strings decoded, surrogate pairs joined), numbers must read back to the
 * same double, non-finite values become null plus a "nonfinite" note, and lines are on disk
 * as soon as cluda_metrics_write returns (read while the log is still open). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluda/logging.h"
#include "testing.h"

static char tmpdir[256];

/* ---- a strict JSON parser, enough to validate lines and pick out top-level members ---- */

typedef struct json_member {
  char key[256];
  const char *value, *value_end; /* raw text of the value */
} json_member;

typedef struct json_parser {
  const char *p;
  int bad;
} json_parser;

static void ws(json_parser *j) {
  while (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')
    j->p++;
}

static int hex4(const char *s, unsigned *v) {
  *v = 0;
  for (int i = 0; i < 4; i++) {
    char c = s[i];
    unsigned d = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
                 : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                 : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
                                        : 16u;
    if (d == 16) return 0;
    *v = *v * 16 + d;
  }
  return 1;
}

static size_t put_utf8(char *out, unsigned c) {
  if (c < 0x80) return out[0] = (char)c, 1;
  if (c < 0x800) return out[0] = (char)(0xc0 | c >> 6), out[1] = (char)(0x80 | (c & 0x3f)), 2;
  if (c < 0x10000)
    return out[0] = (char)(0xe0 | c >> 12), out[1] = (char)(0x80 | (c >> 6 & 0x3f)),
           out[2] = (char)(0x80 | (c & 0x3f)), 3;
  return out[0] = (char)(0xf0 | c >> 18), out[1] = (char)(0x80 | (c >> 12 & 0x3f)),
         out[2] = (char)(0x80 | (c >> 6 & 0x3f)), out[3] = (char)(0x80 | (c & 0x3f)), 4;
}

/* Parses a string literal; decodes it into out (may be NULL). */
static void parse_string(json_parser *j, char *out, size_t cap) {
  size_t n = 0;
  if (*j->p != '"') return (void)(j->bad = 1);
  j->p++;
  while (*j->p != '"') {
    char tmp[4];
    size_t k = 1;
    unsigned char c = (unsigned char)*j->p;
    if (c == '\0' || c < 0x20) return (void)(j->bad = 1); /* raw control characters */
    if (c == '\\') {
      j->p++;
      const char *esc = strchr("\"\\/bfnrt", *j->p);
      if (*j->p == 'u') {
        unsigned u, lo;
        if (!hex4(j->p + 1, &u)) return (void)(j->bad = 1);
        j->p += 4;
        if (u >= 0xd800 && u < 0xdc00) { /* a surrogate pair */
          if (j->p[1] != '\\' || j->p[2] != 'u' || !hex4(j->p + 3, &lo) || lo < 0xdc00 ||
              lo > 0xdfff)
            return (void)(j->bad = 1);
          u = 0x10000 + ((u - 0xd800) << 10) + (lo - 0xdc00);
          j->p += 6;
        } else if (u >= 0xdc00 && u <= 0xdfff) {
          return (void)(j->bad = 1);
        }
        k = put_utf8(tmp, u);
      } else if (esc && *j->p) {
        tmp[0] = "\"\\/\b\f\n\r\t"[esc - "\"\\/bfnrt"];
      } else {
        return (void)(j->bad = 1);
      }
    } else {
      tmp[0] = (char)c;
    }
    j->p++;
    if (out && n + k < cap) memcpy(out + n, tmp, k);
    n += k;
  }
  j->p++;
  if (out && cap) out[n < cap ? n : cap - 1] = '\0';
}

static void parse_number(json_parser *j) {
  const char *p = j->p;
  if (*p == '-') p++;
  if (*p == '0')
    p++;
  else if (*p >= '1' && *p <= '9')
    while (*p >= '0' && *p <= '9')
      p++;
  else
    return (void)(j->bad = 1);
  if (*p == '.') {
    if (!(*++p >= '0' && *p <= '9')) return (void)(j->bad = 1);
    while (*p >= '0' && *p <= '9')
      p++;
  }
  if (*p == 'e' || *p == 'E') {
    p++;
    if (*p == '+' || *p == '-') p++;
    if (!(*p >= '0' && *p <= '9')) return (void)(j->bad = 1);
    while (*p >= '0' && *p <= '9')
      p++;
  }
  j->p = p;
}

static void parse_value(json_parser *j, json_member *members, int *n_members, int depth);

static void parse_object(json_parser *j, json_member *members, int *n_members, int depth) {
  j->p++; /* { */
  ws(j);
  if (*j->p == '}') return (void)j->p++;
  for (;;) {
    char key[256];
    ws(j);
    parse_string(j, key, sizeof key);
    ws(j);
    if (j->bad || *j->p != ':') return (void)(j->bad = 1);
    j->p++;
    ws(j);
    const char *start = j->p;
    parse_value(j, NULL, NULL, depth + 1);
    if (j->bad) return;
    if (members && *n_members < 64) {
      json_member *m = &members[(*n_members)++];
      snprintf(m->key, sizeof m->key, "%s", key);
      m->value = start;
      m->value_end = j->p;
    }
    ws(j);
    if (*j->p == ',') {
      j->p++;
      continue;
    }
    if (*j->p == '}') return (void)j->p++;
    return (void)(j->bad = 1);
  }
}

static void parse_value(json_parser *j, json_member *members, int *n_members, int depth) {
  if (depth > 16) return (void)(j->bad = 1);
  ws(j);
  char c = *j->p;
  if (c == '{') {
    parse_object(j, members, n_members, depth);
  } else if (c == '[') {
    j->p++;
    ws(j);
    if (*j->p == ']') return (void)j->p++;
    for (;;) {
      parse_value(j, NULL, NULL, depth + 1);
      ws(j);
      if (j->bad) return;
      if (*j->p == ',') {
        j->p++;
      } else if (*j->p == ']') {
        return (void)j->p++;
      } else {
        return (void)(j->bad = 1);
      }
    }
  } else if (c == '"') {
    parse_string(j, NULL, 0);
  } else if (!strncmp(j->p, "true", 4) || !strncmp(j->p, "null", 4)) {
    j->p += 4;
  } else if (!strncmp(j->p, "false", 5)) {
    j->p += 5;
  } else {
    parse_number(j);
  }
}

/* Parses one line "{...}\n" into its top-level members; returns the member count or -1. */
static int parse_line(const char *line, json_member *members) {
  json_parser j = {line, 0};
  int n = 0;
  ws(&j);
  if (*j.p != '{') return -1;
  parse_value(&j, members, &n, 0);
  if (j.bad) return -1;
  while (*j.p == ' ' || *j.p == '\t' || *j.p == '\r' || *j.p == '\n')
    j.p++;
  return *j.p ? -1 : n;
}

static const json_member *find(const json_member *m, int n, const char *key) {
  for (int i = 0; i < n; i++)
    if (!strcmp(m[i].key, key)) return &m[i];
  return NULL;
}

static int raw_is(const json_member *m, const char *text) {
  return m && (size_t)(m->value_end - m->value) == strlen(text) &&
         !strncmp(m->value, text, strlen(text));
}

/* Splits a file into lines (in place); returns the count. */
static int read_lines(const char *path, char *buf, size_t cap, char **lines, int max) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  size_t n = fread(buf, 1, cap - 1, f);
  fclose(f);
  buf[n] = '\0';
  int count = 0;
  char *p = buf;
  while (*p && count < max) {
    char *nl = strchr(p, '\n');
    if (!nl) return -1; /* every line must be complete */
    *nl = '\0';
    lines[count++] = p;
    p = nl + 1;
  }
  return count;
}

/* ---- tests ---- */

static void test_json_pieces(void) {
  char buf[256];
  size_t n = cluda_json_string(buf, sizeof buf, "a\"b\\c\n\t\r\b\f\x01\x1f\x7f \xc3\xa9\xce\x93/");
  const char *want = "\"a\\\"b\\\\c\\n\\t\\r\\b\\f\\u0001\\u001f\x7f \xc3\xa9\xce\x93/\"";
  TEST_CHECK(n == strlen(want) && !strcmp(buf, want), "escaped string %s", buf);
  json_parser j = {buf, 0};
  char back[64];
  parse_string(&j, back, sizeof back);
  TEST_CHECK(!j.bad && !strcmp(back, "a\"b\\c\n\t\r\b\f\x01\x1f\x7f \xc3\xa9\xce\x93/"),
             "escaped string decodes to the original");
  TEST_CHECK(cluda_json_string(buf, sizeof buf, "bad\xc3") == 0, "invalid UTF-8 refused");
  memset(buf, '#', sizeof buf);
  n = cluda_json_string(buf, 5, "abcdef");
  TEST_CHECK(n == 8 && !strcmp(buf, "\"abc") && buf[5] == '#', "truncates like snprintf");

  struct {
    double v;
    const char *text;
  } nums[] = {{0.1, "0.1"},
              {0, "0"},
              {-0.0, "-0"},
              {1700000000.25, "1700000000.25"},
              {6e-05, "6e-05"},
              {123456789012.0, "123456789012"},
              {-2.5, "-2.5"},
              {1e300, "1e+300"},
              {5e-324, "5e-324"},
              {1.7976931348623157e308, "1.7976931348623157e+308"},
              {(double)0.412f, "0.41200000047683716"}};
  for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
    cluda_json_number(buf, sizeof buf, nums[i].v);
    TEST_CHECK(!strcmp(buf, nums[i].text), "number %s printed as %s", nums[i].text, buf);
  }
  /* Random doubles over many magnitudes: valid JSON and exact round trip. */
  float r[2000];
  test_fill_uniform(r, 2000, -1.0f, 1.0f, 7, 0);
  int exact = 1, valid = 1;
  for (int i = 0; i < 1000; i++) {
    double v = (double)r[2 * i] / 3.0 * pow(10.0, floor(r[2 * i + 1] * 300.0));
    cluda_json_number(buf, sizeof buf, v);
    exact &= strtod(buf, NULL) == v;
    json_parser p = {buf, 0};
    parse_number(&p);
    valid &= !p.bad && *p.p == '\0';
  }
  TEST_CHECK(exact, "numbers read back to the same double");
  TEST_CHECK(valid, "numbers are valid JSON numbers");
}

static void test_log(void) {
  char path[512], buf[1 << 16], *lines[16];
  json_member m[64];
  snprintf(path, sizeof path, "%s/metrics.jsonl", tmpdir);
  cluda_metrics_log log;
  if (!TEST_OK(cluda_metrics_open(&log, path, 0))) return;
  cluda_metric f1[] = {{"loss_src", 0.412}, {"lr", 6e-05}, {"name \"quoted\"\n\xce\x93", -3}};
  TEST_OK(cluda_metrics_write(&log, 1200, 1700000000.25, f1, 3));

  /* Still open: the line is already in the file, whole. */
  int n_lines = read_lines(path, buf, sizeof buf, lines, 16);
  TEST_CHECK(n_lines == 1, "line on disk before close (%d lines)", n_lines);
  if (n_lines == 1) {
    TEST_CHECK(!strcmp(lines[0], "{\"iter\":1200,\"time\":1700000000.25,\"loss_src\":0.412,"
                                 "\"lr\":6e-05,\"name \\\"quoted\\\"\\n\xce\x93\":-3}"),
               "line 1: %s", lines[0]);
    int n = parse_line(lines[0], m);
    TEST_CHECK(n == 5 && raw_is(find(m, n, "iter"), "1200") &&
                   raw_is(find(m, n, "name \"quoted\"\n\xce\x93"), "-3"),
               "line 1 parses with the escaped key decoded (%d members)", n);
  }

  cluda_metric f2[] = {{"a", NAN}, {"b", 1.5}, {"c", -INFINITY}, {"d", INFINITY}};
  TEST_OK(cluda_metrics_write(&log, 1201, 1700000001.5, f2, 4));
  TEST_OK(cluda_metrics_write(&log, 1202, NAN, NULL, 0));
  n_lines = read_lines(path, buf, sizeof buf, lines, 16);
  TEST_CHECK(n_lines == 3, "three lines (%d)", n_lines);
  if (n_lines == 3) {
    int n = parse_line(lines[1], m);
    TEST_CHECK(n == 7 && raw_is(find(m, n, "a"), "null") && raw_is(find(m, n, "b"), "1.5") &&
                   raw_is(find(m, n, "c"), "null") && raw_is(find(m, n, "d"), "null") &&
                   raw_is(find(m, n, "nonfinite"), "{\"a\":\"nan\",\"c\":\"-inf\",\"d\":\"inf\"}"),
               "non-finite values: null plus a note: %s", lines[1]);
    n = parse_line(lines[2], m);
    TEST_CHECK(n == 3 && raw_is(find(m, n, "time"), "null") &&
                   raw_is(find(m, n, "nonfinite"), "{\"time\":\"nan\"}"),
               "non-finite wall time: %s", lines[2]);
  }

  /* A line longer than any earlier one grows the buffer. */
  enum { MANY = 300 };
  cluda_metric many[MANY];
  char names[MANY][16];
  for (int i = 0; i < MANY; i++) {
    snprintf(names[i], sizeof names[i], "class_%03d", i);
    many[i] = (cluda_metric){names[i], i / 7.0};
  }
  TEST_OK(cluda_metrics_write(&log, 1203, 1700000002.0, many, MANY));
  n_lines = read_lines(path, buf, sizeof buf, lines, 16);
  if (TEST_CHECK(n_lines == 4, "long line written (%d lines)", n_lines)) {
    int n = parse_line(lines[3], m); /* keeps the first 64 members */
    TEST_CHECK(n == 64 && strtod(find(m, n, "class_061")->value, NULL) == 61 / 7.0,
               "long line parses, values exact");
  }

  /* Rejected field lists write nothing. */
  cluda_metric dup[] = {{"x", 1}, {"y", 2}, {"x", 3}};
  TEST_FAILS(cluda_metrics_write(&log, 1, 0, dup, 3), CLUDA_ERR_ARG, "duplicate");
  cluda_metric reserved[] = {{"iter", 1}};
  TEST_FAILS(cluda_metrics_write(&log, 1, 0, reserved, 1), CLUDA_ERR_ARG, "reserved");
  cluda_metric bad[] = {{"ok", 1}, {"bad\xff", 2}};
  TEST_FAILS(cluda_metrics_write(&log, 1, 0, bad, 2), CLUDA_ERR_ARG, "UTF-8");
  cluda_metric null_name[] = {{NULL, 2}};
  TEST_FAILS(cluda_metrics_write(&log, 1, 0, null_name, 1), CLUDA_ERR_ARG, "name");
  TEST_OK(cluda_metrics_sync(&log));
  TEST_OK(cluda_metrics_close(&log));
  TEST_OK(cluda_metrics_close(&log));
  TEST_FAILS(cluda_metrics_write(&log, 1, 0, NULL, 0), CLUDA_ERR_ARG, "not open");
  TEST_CHECK(read_lines(path, buf, sizeof buf, lines, 16) == 4, "failed writes left no lines");

  /* append = 1 keeps the file (resume); append = 0 starts it afresh. */
  if (TEST_OK(cluda_metrics_open(&log, path, 1))) {
    TEST_OK(cluda_metrics_write(&log, 1204, 1700000003.0, f1, 1));
    TEST_OK(cluda_metrics_close(&log));
  }
  TEST_CHECK(read_lines(path, buf, sizeof buf, lines, 16) == 5, "append keeps earlier lines");
  if (TEST_OK(cluda_metrics_open(&log, path, 0))) TEST_OK(cluda_metrics_close(&log));
  TEST_CHECK(read_lines(path, buf, sizeof buf, lines, 16) == 0, "fresh open truncates");

  snprintf(path, sizeof path, "%s/missing/metrics.jsonl", tmpdir);
  TEST_FAILS(cluda_metrics_open(&log, path, 1), CLUDA_ERR_IO, "missing/metrics.jsonl");
}

static void test_hms(void) {
  struct {
    double s;
    const char *text;
  } cases[] = {{0, "0:00:00"},         {59.4, "0:00:59"}, {59.5, "0:01:00"},
               {3599.4, "0:59:59"},    {3600, "1:00:00"}, {20103.6, "5:35:04"},
               {360000, "100:00:00"},  {-1, "--:--:--"},  {NAN, "--:--:--"},
               {INFINITY, "--:--:--"}, {1e20, "--:--:--"}};
  char buf[32];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    cluda_format_hms(buf, sizeof buf, cases[i].s);
    TEST_CHECK(!strcmp(buf, cases[i].text), "%g s -> %s (want %s)", cases[i].s, buf, cases[i].text);
  }
}

static void test_progress(void) {
  char buf[512];
  cluda_metric losses[] = {{"loss_src", 0.412}, {"loss_trg", 0.3}, {"loss_con", 0.0001234}};
  cluda_progress p = {.iter = 1200,
                      .max_iters = 40000,
                      .its_per_sec = 1.93,
                      .metrics = losses,
                      .n_metrics = 3,
                      .lr = 6e-05,
                      .gamma = 0.82,
                      .mem_bytes = 3.1 * 1024 * 1024 * 1024};
  const char *want = "it 1200/40000 | 1.93 it/s | ETA 5:35:04 | loss_src 0.412 loss_trg 0.300 "
                     "loss_con 1.23e-04 | lr 6.0e-05 | \xce\x93 0.82 | mem 3.1 GiB";
  size_t n = cluda_progress_format(buf, sizeof buf, &p);
  TEST_CHECK(n == strlen(want) && !strcmp(buf, want), "progress line:\n    %s", buf);

  /* Truncation like snprintf. */
  char small[21];
  memset(small, '#', sizeof small);
  TEST_CHECK(cluda_progress_format(small, 20, &p) == n && strlen(small) == 19 &&
                 !strncmp(small, want, 19) && small[20] == '#',
             "truncated to the buffer: %s", small);

  /* Large and small numbers, unknown rate, omitted fields. */
  cluda_metric odd[] = {{"big", 123456.0}, {"mid", 12345.678}, {"neg", -0.5},
                        {"zero", 0.0},     {"nan", NAN},       {"inf", -INFINITY}};
  cluda_progress q = {.iter = 0,
                      .max_iters = 40000,
                      .its_per_sec = 0,
                      .metrics = odd,
                      .n_metrics = 6,
                      .lr = -1,
                      .gamma = NAN,
                      .mem_bytes = -1};
  cluda_progress_format(buf, sizeof buf, &q);
  TEST_CHECK(!strcmp(buf, "it 0/40000 | - it/s | ETA --:--:-- | big 1.23e+05 mid 12345.678 "
                          "neg -0.500 zero 0.000 nan nan inf -inf"),
             "odd values:\n    %s", buf);
  q = (cluda_progress){.iter = 39990,
                       .max_iters = 40000,
                       .its_per_sec = 0.005,
                       .lr = 0.0,
                       .gamma = 1,
                       .mem_bytes = 80.0 * 1024 * 1024 * 1024};
  cluda_progress_format(buf, sizeof buf, &q);
  TEST_CHECK(!strcmp(buf, "it 39990/40000 | 5.00e-03 it/s | ETA 0:33:20 | lr 0.0e+00 | \xce\x93 "
                          "1.00 | mem 80.0 GiB"),
             "slow rate, no metrics:\n    %s", buf);
  q.iter = 40001;
  q.its_per_sec = 25000;
  cluda_progress_format(buf, sizeof buf, &q);
  TEST_CHECK(strstr(buf, "| 2.50e+04 it/s | ETA 0:00:00 |") != NULL, "past the end:\n    %s", buf);
}

static void remove_tmpdir(void) {
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) printf("could not remove %s\n", tmpdir);
}

int main(void) {
  const char *base = getenv("TMPDIR");
  snprintf(tmpdir, sizeof tmpdir, "%s/cluda_test_metrics_XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  test_json_pieces();
  test_log();
  test_hms();
  test_progress();
  remove_tmpdir();
  return test_finish("test_metrics");
}

/* safetensors reader: 8-byte little-endian header length, a JSON header
 * {name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}, then the raw data
 * (systems.md 5.2). The header is parsed by a small strict JSON parser; every tensor's byte
 * range is validated before anything is read, so a corrupt file fails at open time. */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include "cluda/weights.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the safetensors reader assumes a little-endian host"
#endif

/* The reference implementation caps the header at 100 MB; a larger length is corruption. */
enum { ST_HEADER_MAX = 100 * 1000 * 1000, ST_MAX_DIMS = 8, ST_MAX_TENSORS = 1 << 20 };

/* ---- a strict JSON parser over the header text ---- */

typedef struct json_cursor {
  const char *text;
  size_t len, pos;
  const char *path; /* for messages */
} json_cursor;

static cluda_status json_error(const json_cursor *c, const char *what) {
  return CLUDA_FAIL(CLUDA_ERR_IO, "safetensors %s: bad JSON header at byte %zu: %s", c->path,
                    c->pos, what);
}

static void json_skip_space(json_cursor *c) {
  while (c->pos < c->len && (c->text[c->pos] == ' ' || c->text[c->pos] == '\t' ||
                             c->text[c->pos] == '\n' || c->text[c->pos] == '\r'))
    c->pos++;
}

/* Consumes `ch` after optional whitespace; returns 0 when the next character differs. */
static int json_accept(json_cursor *c, char ch) {
  json_skip_space(c);
  if (c->pos < c->len && c->text[c->pos] == ch) {
    c->pos++;
    return 1;
  }
  return 0;
}

static int hex_value(char ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

static int json_read_hex4(json_cursor *c, unsigned *code) {
  if (c->len - c->pos < 4) return 0;
  unsigned v = 0;
  for (int i = 0; i < 4; i++) {
    int h = hex_value(c->text[c->pos + (size_t)i]);
    if (h < 0) return 0;
    v = v * 16 + (unsigned)h;
  }
  c->pos += 4;
  *code = v;
  return 1;
}

/* Appends one byte to out (capacity cap, NUL kept); sets *too_long instead of overflowing. */
static void put_byte(char *out, size_t cap, size_t *n, int *too_long, unsigned char b) {
  if (*n + 1 < cap)
    out[(*n)++] = (char)b;
  else
    *too_long = 1;
}

static void put_utf8(char *out, size_t cap, size_t *n, int *too_long, unsigned cp) {
  if (cp < 0x80) {
    put_byte(out, cap, n, too_long, (unsigned char)cp);
  } else if (cp < 0x800) {
    put_byte(out, cap, n, too_long, (unsigned char)(0xC0 | (cp >> 6)));
    put_byte(out, cap, n, too_long, (unsigned char)(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    put_byte(out, cap, n, too_long, (unsigned char)(0xE0 | (cp >> 12)));
    put_byte(out, cap, n, too_long, (unsigned char)(0x80 | ((cp >> 6) & 0x3F)));
    put_byte(out, cap, n, too_long, (unsigned char)(0x80 | (cp & 0x3F)));
  } else {
    put_byte(out, cap, n, too_long, (unsigned char)(0xF0 | (cp >> 18)));
    put_byte(out, cap, n, too_long, (unsigned char)(0x80 | ((cp >> 12) & 0x3F)));
    put_byte(out, cap, n, too_long, (unsigned char)(0x80 | ((cp >> 6) & 0x3F)));
    put_byte(out, cap, n, too_long, (unsigned char)(0x80 | (cp & 0x3F)));
  }
}

/* Parses a string into out (decoded, NUL-terminated). A string longer than cap - 1 bytes
 * sets *too_long but is still consumed, so the caller can name it. out may be NULL (skip). */
static cluda_status json_string(json_cursor *c, char *out, size_t cap, int *too_long) {
  char scratch[1];
  if (!out) {
    out = scratch;
    cap = 1;
  }
  size_t n = 0;
  int overflow = 0;
  if (!json_accept(c, '"')) return json_error(c, "expected a string");
  for (;;) {
    if (c->pos >= c->len) return json_error(c, "unterminated string");
    unsigned char ch = (unsigned char)c->text[c->pos++];
    if (ch == '"') break;
    if (ch < 0x20) return json_error(c, "control character inside a string");
    if (ch != '\\') {
      put_byte(out, cap, &n, &overflow, ch);
      continue;
    }
    if (c->pos >= c->len) return json_error(c, "unterminated escape");
    char esc = c->text[c->pos++];
    switch (esc) {
    case '"': put_byte(out, cap, &n, &overflow, '"'); break;
    case '\\': put_byte(out, cap, &n, &overflow, '\\'); break;
    case '/': put_byte(out, cap, &n, &overflow, '/'); break;
    case 'b': put_byte(out, cap, &n, &overflow, '\b'); break;
    case 'f': put_byte(out, cap, &n, &overflow, '\f'); break;
    case 'n': put_byte(out, cap, &n, &overflow, '\n'); break;
    case 'r': put_byte(out, cap, &n, &overflow, '\r'); break;
    case 't': put_byte(out, cap, &n, &overflow, '\t'); break;
    case 'u': {
      unsigned cp;
      if (!json_read_hex4(c, &cp)) return json_error(c, "bad \\u escape");
      if (cp >= 0xD800 && cp < 0xDC00) { /* high surrogate: a low one must follow */
        unsigned lo;
        if (c->len - c->pos < 2 || c->text[c->pos] != '\\' || c->text[c->pos + 1] != 'u')
          return json_error(c, "unpaired UTF-16 surrogate");
        c->pos += 2;
        if (!json_read_hex4(c, &lo) || lo < 0xDC00 || lo > 0xDFFF)
          return json_error(c, "unpaired UTF-16 surrogate");
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
      } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
        return json_error(c, "unpaired UTF-16 surrogate");
      }
      if (cp == 0) return json_error(c, "NUL character inside a string");
      put_utf8(out, cap, &n, &overflow, cp);
      break;
    }
    default: return json_error(c, "unknown escape in a string");
    }
  }
  out[n < cap ? n : cap - 1] = '\0';
  if (too_long) *too_long = overflow;
  return cluda_ok();
}

/* A non-negative integer without sign, fraction or exponent (shapes and offsets). */
static cluda_status json_uint(json_cursor *c, uint64_t *value) {
  json_skip_space(c);
  size_t start = c->pos;
  uint64_t v = 0;
  while (c->pos < c->len && c->text[c->pos] >= '0' && c->text[c->pos] <= '9') {
    unsigned d = (unsigned)(c->text[c->pos] - '0');
    if (v > (UINT64_MAX - d) / 10) return json_error(c, "integer too large");
    v = v * 10 + d;
    c->pos++;
  }
  if (c->pos == start) return json_error(c, "expected a non-negative integer");
  if (c->pos - start > 1 && c->text[start] == '0') return json_error(c, "leading zero in integer");
  if (c->pos < c->len &&
      (c->text[c->pos] == '.' || c->text[c->pos] == 'e' || c->text[c->pos] == 'E'))
    return json_error(c, "expected an integer, found a fraction or exponent");
  *value = v;
  return cluda_ok();
}

/* [uint, uint, ...] with at most max entries. */
static cluda_status json_uint_array(json_cursor *c, uint64_t *values, int max, int *count) {
  if (!json_accept(c, '[')) return json_error(c, "expected '['");
  int n = 0;
  if (!json_accept(c, ']')) {
    do {
      if (n == max) return json_error(c, "array has too many entries");
      CLUDA_TRY(json_uint(c, &values[n]));
      n++;
    } while (json_accept(c, ','));
    if (!json_accept(c, ']')) return json_error(c, "expected ',' or ']' in an array");
  }
  *count = n;
  return cluda_ok();
}

/* Skips any JSON value (for __metadata__); depth-limited so hostile input cannot recurse
 * deeply. */
static cluda_status json_skip_value(json_cursor *c, int depth) {
  if (depth > 64) return json_error(c, "nesting too deep");
  json_skip_space(c);
  if (c->pos >= c->len) return json_error(c, "unexpected end of header");
  char ch = c->text[c->pos];
  if (ch == '"') return json_string(c, NULL, 0, NULL);
  if (ch == '{' || ch == '[') {
    char close = ch == '{' ? '}' : ']';
    c->pos++;
    if (json_accept(c, close)) return cluda_ok();
    do {
      if (ch == '{') {
        CLUDA_TRY(json_string(c, NULL, 0, NULL));
        if (!json_accept(c, ':')) return json_error(c, "expected ':'");
      }
      CLUDA_TRY(json_skip_value(c, depth + 1));
    } while (json_accept(c, ','));
    if (!json_accept(c, close)) return json_error(c, "expected ',' or a closing bracket");
    return cluda_ok();
  }
  static const char *const literals[] = {"true", "false", "null"};
  for (int i = 0; i < 3; i++) {
    size_t n = strlen(literals[i]);
    if (c->len - c->pos >= n && memcmp(c->text + c->pos, literals[i], n) == 0) {
      c->pos += n;
      return cluda_ok();
    }
  }
  /* A number: -?digits(.digits)?([eE][+-]?digits)? */
  size_t start = c->pos;
  if (c->text[c->pos] == '-') c->pos++;
  size_t digits = c->pos;
  while (c->pos < c->len && c->text[c->pos] >= '0' && c->text[c->pos] <= '9')
    c->pos++;
  if (c->pos == digits) {
    c->pos = start;
    return json_error(c, "unexpected character");
  }
  if (c->pos < c->len && c->text[c->pos] == '.') {
    c->pos++;
    size_t frac = c->pos;
    while (c->pos < c->len && c->text[c->pos] >= '0' && c->text[c->pos] <= '9')
      c->pos++;
    if (c->pos == frac) return json_error(c, "bad number");
  }
  if (c->pos < c->len && (c->text[c->pos] == 'e' || c->text[c->pos] == 'E')) {
    c->pos++;
    if (c->pos < c->len && (c->text[c->pos] == '+' || c->text[c->pos] == '-')) c->pos++;
    size_t exp = c->pos;
    while (c->pos < c->len && c->text[c->pos] >= '0' && c->text[c->pos] <= '9')
      c->pos++;
    if (c->pos == exp) return json_error(c, "bad number");
  }
  return cluda_ok();
}

/* ---- header entries ---- */

/* Every dtype of the format, so byte ranges of all tensors can be validated; only the
 * first four convert to float32. */
static const struct {
  const char *name;
  cluda_st_dtype dtype;
  size_t size;
} st_dtypes[] = {
    {"F32", CLUDA_ST_F32, 4},    {"F16", CLUDA_ST_F16, 2},       {"BF16", CLUDA_ST_BF16, 2},
    {"F64", CLUDA_ST_F64, 8},    {"I64", CLUDA_ST_OTHER, 8},     {"I32", CLUDA_ST_OTHER, 4},
    {"I16", CLUDA_ST_OTHER, 2},  {"I8", CLUDA_ST_OTHER, 1},      {"U64", CLUDA_ST_OTHER, 8},
    {"U32", CLUDA_ST_OTHER, 4},  {"U16", CLUDA_ST_OTHER, 2},     {"U8", CLUDA_ST_OTHER, 1},
    {"BOOL", CLUDA_ST_OTHER, 1}, {"F8_E4M3", CLUDA_ST_OTHER, 1}, {"F8_E5M2", CLUDA_ST_OTHER, 1},
};

static size_t element_size(const cluda_st_tensor *t) {
  for (size_t i = 0; i < sizeof st_dtypes / sizeof st_dtypes[0]; i++)
    if (strcmp(st_dtypes[i].name, t->dtype_name) == 0) return st_dtypes[i].size;
  return 0;
}

/* One tensor entry {"dtype": ..., "shape": [...], "data_offsets": [b, e]} in any order. */
static cluda_status parse_tensor_entry(json_cursor *c, cluda_st_tensor *t) {
  int have_dtype = 0, have_shape = 0, have_offsets = 0;
  if (!json_accept(c, '{')) return json_error(c, "a tensor entry must be an object");
  if (json_accept(c, '}')) return json_error(c, "empty tensor entry");
  do {
    char field[32];
    int too_long = 0;
    CLUDA_TRY(json_string(c, field, sizeof field, &too_long));
    if (!json_accept(c, ':')) return json_error(c, "expected ':'");
    if (!too_long && strcmp(field, "dtype") == 0) {
      char dtype[32];
      CLUDA_TRY(json_string(c, dtype, sizeof dtype, &too_long));
      int known = 0;
      for (size_t k = 0; !too_long && k < sizeof st_dtypes / sizeof st_dtypes[0]; k++)
        if (strcmp(dtype, st_dtypes[k].name) == 0) {
          t->dtype = st_dtypes[k].dtype;
          strcpy(t->dtype_name, st_dtypes[k].name);
          known = 1;
        }
      if (!known)
        return CLUDA_FAIL(CLUDA_ERR_IO,
                          "safetensors %s: tensor '%s' has unknown dtype '%s%s' (float32 reads "
                          "support F32, F16, BF16, F64)",
                          c->path, t->name, dtype, too_long ? "..." : "");
      have_dtype++;
    } else if (!too_long && strcmp(field, "shape") == 0) {
      uint64_t dims[ST_MAX_DIMS];
      int n = 0;
      CLUDA_TRY(json_uint_array(c, dims, ST_MAX_DIMS, &n));
      for (int i = 0; i < n; i++) {
        if (dims[i] > (uint64_t)INT64_MAX) return json_error(c, "dimension too large");
        t->shape[i] = (int64_t)dims[i];
      }
      t->ndim = n;
      have_shape++;
    } else if (!too_long && strcmp(field, "data_offsets") == 0) {
      uint64_t offsets[2];
      int n = 0;
      CLUDA_TRY(json_uint_array(c, offsets, 2, &n));
      if (n != 2) return json_error(c, "data_offsets must hold two integers");
      t->begin = offsets[0];
      t->end = offsets[1];
      have_offsets++;
    } else {
      return CLUDA_FAIL(CLUDA_ERR_IO, "safetensors %s: tensor '%s' has an unknown field '%s%s'",
                        c->path, t->name, field, too_long ? "..." : "");
    }
  } while (json_accept(c, ','));
  if (!json_accept(c, '}')) return json_error(c, "expected ',' or '}' in a tensor entry");
  if (have_dtype != 1 || have_shape != 1 || have_offsets != 1)
    return CLUDA_FAIL(CLUDA_ERR_IO,
                      "safetensors %s: tensor '%s' needs exactly one dtype, shape and "
                      "data_offsets",
                      c->path, t->name);
  return cluda_ok();
}

static cluda_status parse_header(json_cursor *c, cluda_safetensors *st) {
  int capacity = 0;
  if (!json_accept(c, '{')) return json_error(c, "the header must be a JSON object");
  if (!json_accept(c, '}')) {
    do {
      char name[sizeof st->tensors[0].name];
      int too_long = 0;
      CLUDA_TRY(json_string(c, name, sizeof name, &too_long));
      if (too_long)
        return CLUDA_FAIL(CLUDA_ERR_IO, "safetensors %s: tensor name '%.60s...' is longer than %zu",
                          c->path, name, sizeof name - 1);
      if (!json_accept(c, ':')) return json_error(c, "expected ':'");
      if (strcmp(name, "__metadata__") == 0) {
        CLUDA_TRY(json_skip_value(c, 0));
        continue;
      }
      if (cluda_safetensors_find(st, name) >= 0)
        return CLUDA_FAIL(CLUDA_ERR_IO, "safetensors %s: duplicate tensor '%s'", c->path, name);
      if (st->count == capacity) {
        if (capacity >= ST_MAX_TENSORS) return json_error(c, "too many tensors");
        int grown = capacity ? 2 * capacity : 64;
        cluda_st_tensor *items = realloc(st->tensors, (size_t)grown * sizeof *items);
        CLUDA_REQUIRE(items != NULL, CLUDA_ERR_ALLOC, "safetensors %s: out of memory", c->path);
        st->tensors = items;
        capacity = grown;
      }
      cluda_st_tensor *t = &st->tensors[st->count];
      memset(t, 0, sizeof *t);
      strcpy(t->name, name);
      CLUDA_TRY(parse_tensor_entry(c, t));
      st->count++;
    } while (json_accept(c, ','));
    if (!json_accept(c, '}')) return json_error(c, "expected ',' or '}' after a tensor entry");
  }
  json_skip_space(c); /* writers pad the header with spaces for alignment */
  if (c->pos != c->len) return json_error(c, "trailing characters after the header object");
  return cluda_ok();
}

static int compare_begin(const void *a, const void *b) {
  const cluda_st_tensor *x = *(const cluda_st_tensor *const *)a;
  const cluda_st_tensor *y = *(const cluda_st_tensor *const *)b;
  return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

/* Sizes against byte ranges, ranges inside the data section, no two ranges overlapping. */
static cluda_status validate_ranges(cluda_safetensors *st) {
  uint64_t data_bytes = st->file_size - st->data_offset;
  for (int i = 0; i < st->count; i++) {
    const cluda_st_tensor *t = &st->tensors[i];
    uint64_t bytes = element_size(t);
    for (int d = 0; d < t->ndim; d++) {
      uint64_t dim = (uint64_t)t->shape[d];
      CLUDA_REQUIRE(dim == 0 || bytes <= UINT64_MAX / dim, CLUDA_ERR_IO,
                    "safetensors %s: tensor '%s' is impossibly large", st->path, t->name);
      bytes *= dim;
    }
    CLUDA_REQUIRE(t->begin <= t->end, CLUDA_ERR_IO,
                  "safetensors %s: tensor '%s' has data_offsets [%llu, %llu] with begin > end",
                  st->path, t->name, (unsigned long long)t->begin, (unsigned long long)t->end);
    CLUDA_REQUIRE(t->end - t->begin == bytes, CLUDA_ERR_IO,
                  "safetensors %s: tensor '%s' shape needs %llu bytes but data_offsets [%llu, "
                  "%llu] span %llu",
                  st->path, t->name, (unsigned long long)bytes, (unsigned long long)t->begin,
                  (unsigned long long)t->end, (unsigned long long)(t->end - t->begin));
    CLUDA_REQUIRE(t->end <= data_bytes, CLUDA_ERR_IO,
                  "safetensors %s: tensor '%s' ends at data byte %llu, past the end of the "
                  "data (%llu bytes; truncated file?)",
                  st->path, t->name, (unsigned long long)t->end, (unsigned long long)data_bytes);
  }
  if (st->count < 2) return cluda_ok();
  const cluda_st_tensor **order = malloc((size_t)st->count * sizeof *order);
  CLUDA_REQUIRE(order != NULL, CLUDA_ERR_ALLOC, "safetensors %s: out of memory", st->path);
  for (int i = 0; i < st->count; i++)
    order[i] = &st->tensors[i];
  qsort(order, (size_t)st->count, sizeof *order, compare_begin);
  cluda_status status = cluda_ok();
  for (int i = 1; i < st->count; i++) {
    const cluda_st_tensor *prev = order[i - 1], *cur = order[i];
    /* Empty tensors occupy no bytes and cannot overlap anything. */
    if (cur->begin < prev->end && cur->begin != cur->end) {
      status = CLUDA_FAIL(
          CLUDA_ERR_IO, "safetensors %s: tensors '%s' [%llu, %llu) and '%s' [%llu, %llu) overlap",
          st->path, prev->name, (unsigned long long)prev->begin, (unsigned long long)prev->end,
          cur->name, (unsigned long long)cur->begin, (unsigned long long)cur->end);
      break;
    }
    if (cur->end < prev->end) order[i] = prev; /* keep the furthest end for the next check */
  }
  free(order);
  return status;
}

static cluda_status open_checked(const char *path, cluda_safetensors *st) {
  FILE *f = fopen(path, "rb");
  CLUDA_REQUIRE(f != NULL, CLUDA_ERR_IO, "safetensors: cannot open %s: %s", path, strerror(errno));
  st->file = f;
  CLUDA_REQUIRE(fseeko(f, 0, SEEK_END) == 0, CLUDA_ERR_IO, "safetensors %s: cannot seek: %s", path,
                strerror(errno));
  off_t size = ftello(f);
  CLUDA_REQUIRE(size >= 0, CLUDA_ERR_IO, "safetensors %s: cannot tell its size", path);
  st->file_size = (uint64_t)size;
  CLUDA_REQUIRE(size > 0, CLUDA_ERR_IO, "safetensors %s: empty file", path);
  CLUDA_REQUIRE(size >= 8, CLUDA_ERR_IO,
                "safetensors %s: %lld bytes, too short for the 8-byte header length", path,
                (long long)size);
  unsigned char lenbuf[8];
  CLUDA_REQUIRE(fseeko(f, 0, SEEK_SET) == 0 && fread(lenbuf, 1, 8, f) == 8, CLUDA_ERR_IO,
                "safetensors %s: cannot read the header length", path);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; i--)
    header_len = header_len << 8 | lenbuf[i];
  CLUDA_REQUIRE(header_len <= ST_HEADER_MAX, CLUDA_ERR_IO,
                "safetensors %s: header length %llu is absurd (limit %d; not a safetensors file?)",
                path, (unsigned long long)header_len, ST_HEADER_MAX);
  CLUDA_REQUIRE(header_len <= st->file_size - 8, CLUDA_ERR_IO,
                "safetensors %s: header length %llu runs past the end of the %llu-byte file "
                "(truncated?)",
                path, (unsigned long long)header_len, (unsigned long long)st->file_size);
  CLUDA_REQUIRE(header_len >= 2, CLUDA_ERR_IO, "safetensors %s: header length %llu is too short",
                path, (unsigned long long)header_len);
  st->data_offset = 8 + header_len;
  char *header = malloc((size_t)header_len);
  CLUDA_REQUIRE(header != NULL, CLUDA_ERR_ALLOC, "safetensors %s: out of memory for the header",
                path);
  if (fread(header, 1, (size_t)header_len, f) != (size_t)header_len) {
    free(header);
    return CLUDA_FAIL(CLUDA_ERR_IO, "safetensors %s: cannot read the %llu-byte header", path,
                      (unsigned long long)header_len);
  }
  json_cursor cursor = {header, (size_t)header_len, 0, path};
  cluda_status s = parse_header(&cursor, st);
  free(header);
  CLUDA_TRY(s);
  return validate_ranges(st);
}

cluda_status cluda_safetensors_open(const char *path, cluda_safetensors *st) {
  CLUDA_REQUIRE(st != NULL && path != NULL, CLUDA_ERR_ARG, "safetensors_open: NULL argument");
  memset(st, 0, sizeof *st);
  CLUDA_REQUIRE(strlen(path) < sizeof st->path, CLUDA_ERR_ARG,
                "safetensors_open: path longer than %zu characters: %.80s...", sizeof st->path - 1,
                path);
  strcpy(st->path, path);
  cluda_status s = open_checked(path, st);
  if (s.code != CLUDA_OK) cluda_safetensors_close(st);
  return s;
}

void cluda_safetensors_close(cluda_safetensors *st) {
  if (!st) return;
  if (st->file) fclose((FILE *)st->file);
  free(st->tensors);
  st->file = NULL;
  st->tensors = NULL;
  st->count = 0;
}

int cluda_safetensors_find(const cluda_safetensors *st, const char *name) {
  for (int i = 0; i < st->count; i++)
    if (strcmp(st->tensors[i].name, name) == 0) return i;
  return -1;
}

/* IEEE half -> float, exact for every value (subnormals, infinities, NaN payload kept). */
static float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h >> 15) << 31;
  uint32_t exponent = (h >> 10) & 0x1F;
  uint32_t mantissa = h & 0x3FF;
  uint32_t bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13);
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {
    bits = sign;
  } else { /* subnormal half: normalise into a float */
    int shift = 0;
    while (!(mantissa & 0x400)) {
      mantissa <<= 1;
      shift++;
    }
    mantissa &= 0x3FF;
    bits = sign | ((uint32_t)(113 - shift) << 23) | (mantissa << 13);
  }
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

static void convert_chunk(cluda_st_dtype dtype, const unsigned char *src, float *dst, size_t n) {
  switch (dtype) {
  case CLUDA_ST_F32: memcpy(dst, src, n * sizeof(float)); break;
  case CLUDA_ST_F16:
    for (size_t i = 0; i < n; i++) {
      uint16_t h;
      memcpy(&h, src + 2 * i, 2);
      dst[i] = half_to_float(h);
    }
    break;
  case CLUDA_ST_BF16:
    for (size_t i = 0; i < n; i++) {
      uint16_t h;
      memcpy(&h, src + 2 * i, 2);
      uint32_t bits = (uint32_t)h << 16;
      memcpy(&dst[i], &bits, sizeof(float));
    }
    break;
  case CLUDA_ST_F64:
    for (size_t i = 0; i < n; i++) {
      double d;
      memcpy(&d, src + 8 * i, 8);
      dst[i] = (float)d;
    }
    break;
  case CLUDA_ST_OTHER: break; /* refused by the caller */
  }
}

cluda_status cluda_safetensors_read_f32(const cluda_safetensors *st, int index, float *dst,
                                        size_t count) {
  CLUDA_REQUIRE(st != NULL && st->file != NULL, CLUDA_ERR_ARG,
                "safetensors_read_f32: file not open");
  CLUDA_REQUIRE(index >= 0 && index < st->count, CLUDA_ERR_ARG,
                "safetensors_read_f32: %s: tensor index %d out of range [0, %d)", st->path, index,
                st->count);
  const cluda_st_tensor *t = &st->tensors[index];
  CLUDA_REQUIRE(t->dtype != CLUDA_ST_OTHER, CLUDA_ERR_DTYPE,
                "safetensors %s: tensor '%s' has dtype %s; only F32, F16, BF16 and F64 convert "
                "to float32",
                st->path, t->name, t->dtype_name);
  size_t esize = element_size(t);
  size_t elements = (size_t)((t->end - t->begin) / esize);
  CLUDA_REQUIRE(count == elements, CLUDA_ERR_SHAPE,
                "safetensors_read_f32: %s: tensor '%s' has %zu elements, caller expects %zu",
                st->path, t->name, elements, count);
  if (elements == 0) return cluda_ok();
  CLUDA_REQUIRE(dst != NULL, CLUDA_ERR_ARG, "safetensors_read_f32: dst is NULL");
  FILE *f = (FILE *)st->file;
  CLUDA_REQUIRE(fseeko(f, (off_t)(st->data_offset + t->begin), SEEK_SET) == 0, CLUDA_ERR_IO,
                "safetensors %s: cannot seek to tensor '%s': %s", st->path, t->name,
                strerror(errno));
  enum { CHUNK_BYTES = 1 << 16 };
  unsigned char buf[CHUNK_BYTES];
  size_t per_chunk = CHUNK_BYTES / esize, done = 0;
  while (done < elements) {
    size_t n = elements - done < per_chunk ? elements - done : per_chunk;
    CLUDA_REQUIRE(fread(buf, esize, n, f) == n, CLUDA_ERR_IO,
                  "safetensors %s: short read in tensor '%s' (file changed or truncated?)",
                  st->path, t->name);
    convert_chunk(t->dtype, buf, dst + done, n);
    done += n;
  }
  return cluda_ok();
}

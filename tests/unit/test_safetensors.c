/* safetensors reader: known values in every float dtype (written here byte by byte and by
 * the reference library in tests/fixtures/weights/dtypes.safetensors), and every kind of
 * malformed file rejected at open time with a CLUDA_ERR_IO message naming the file. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluda/weights.h"
#include "testing.h"

static char temp_dir[64];

static void temp_file(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", temp_dir, name);
}

static void write_bytes(const char *path, const void *bytes, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f || (n && fwrite(bytes, 1, n, f) != n)) {
    fprintf(stderr, "cannot write %s\n", path);
    exit(1);
  }
  fclose(f);
}

/* A safetensors file from a header text and a data section; header_len overrides the length
 * field when nonzero (for corrupt cases). */
static void write_st(const char *path, const char *header, const void *data, size_t data_len,
                     uint64_t header_len) {
  size_t h = strlen(header);
  uint64_t len = header_len ? header_len : h;
  unsigned char *buf = test_alloc(8 + h + data_len + 1);
  for (int i = 0; i < 8; i++)
    buf[i] = (unsigned char)(len >> (8 * i));
  memcpy(buf + 8, header, h);
  if (data_len) memcpy(buf + 8 + h, data, data_len);
  write_bytes(path, buf, 8 + h + data_len);
  free(buf);
}

static float bits_to_float(uint32_t bits) {
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

static uint32_t float_bits(float f) {
  uint32_t b;
  memcpy(&b, &f, sizeof b);
  return b;
}

/* Bitwise equality, so -0, inf and NaN payloads are checked exactly. */
static int same_bits(const float *a, const float *b, size_t n, size_t *where) {
  for (size_t i = 0; i < n; i++)
    if (float_bits(a[i]) != float_bits(b[i])) {
      *where = i;
      return 0;
    }
  return 1;
}

static void test_known_values(void) {
  char path[256];
  temp_file(path, sizeof path, "valid.safetensors");
  /* data: f32[3] @0, f16[10] @12, bf16[6] @32, f64[4] @44, empty f32[0,2] @76 */
  unsigned char data[76];
  float f32[3] = {1.5f, -0.0f, 3.0e38f};
  uint16_t f16[10] = {0x0001, 0x03FF, 0x0400, 0x7BFF, 0x7C00,
                      0xFC00, 0x7E00, 0x8000, 0x3C00, 0xC000};
  uint16_t bf16[6] = {0x3F80, 0xC049, 0x7F80, 0x0001, 0x8000, 0x7FC1};
  double f64[4] = {1.0 / 3.0, 1e-40, 1e300, -2.5};
  memcpy(data, f32, 12);
  memcpy(data + 12, f16, 20);
  memcpy(data + 32, bf16, 12);
  memcpy(data + 44, f64, 32);
  /* Escapes in a name, nested __metadata__, fields in any order, trailing padding. */
  const char *header =
      "{\"__metadata__\":{\"format\":\"pt\",\"nested\":{\"a\":[1,2.5e-3,true,null,\"x\"]}},"
      "\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
      "\"h\\u00e9\\\"q\\\\\\ud83d\\ude00\":{\"shape\":[2,5],\"dtype\":\"F16\","
      "\"data_offsets\":[12,32]},"
      "\"b\" : { \"dtype\" : \"BF16\" , \"shape\" : [ 6 ] , \"data_offsets\" : [ 32 , 44 ] },"
      "\"d\":{\"dtype\":\"F64\",\"shape\":[2,1,2],\"data_offsets\":[44,76]},"
      "\"e\":{\"dtype\":\"F32\",\"shape\":[0,2],\"data_offsets\":[76,76]}}      ";
  write_st(path, header, data, sizeof data, 0);

  cluda_safetensors st;
  if (!TEST_OK(cluda_safetensors_open(path, &st))) return;
  TEST_CHECK(st.count == 5, "5 tensors (metadata skipped), got %d", st.count);
  TEST_CHECK(st.data_offset == 8 + strlen(header), "data offset %llu",
             (unsigned long long)st.data_offset);
  int ih = cluda_safetensors_find(&st, "h\xc3\xa9\"q\\\xf0\x9f\x98\x80");
  TEST_CHECK(ih >= 0, "escaped name decoded to UTF-8");
  TEST_CHECK(cluda_safetensors_find(&st, "missing") == -1, "find of an absent name");
  int id = cluda_safetensors_find(&st, "d");
  TEST_CHECK(id >= 0 && st.tensors[id].ndim == 3 && st.tensors[id].shape[1] == 1 &&
                 st.tensors[id].dtype == CLUDA_ST_F64,
             "shape and dtype of d");

  float got[10];
  size_t where = 0;
  TEST_OK(cluda_safetensors_read_f32(&st, cluda_safetensors_find(&st, "a"), got, 3));
  TEST_CHECK(same_bits(got, f32, 3, &where), "F32 values bit-exact (element %zu)", where);

  float want16[10] = {ldexpf(1.0f, -24),
                      ldexpf(1023.0f, -24), /* largest subnormal */
                      ldexpf(1.0f, -14),    /* smallest normal */
                      65504.0f,
                      INFINITY,
                      -INFINITY,
                      bits_to_float(0x7FC00000u), /* quiet NaN, payload kept */
                      -0.0f,
                      1.0f,
                      -2.0f};
  TEST_OK(cluda_safetensors_read_f32(&st, ih, got, 10));
  TEST_CHECK(same_bits(got, want16, 10, &where), "F16 incl. subnormals/inf/nan (element %zu: %a)",
             where, (double)got[where]);

  float want_bf[6] = {
      1.0f, -3.140625f, INFINITY, bits_to_float(0x00010000u), -0.0f, bits_to_float(0x7FC10000u)};
  TEST_OK(cluda_safetensors_read_f32(&st, cluda_safetensors_find(&st, "b"), got, 6));
  TEST_CHECK(same_bits(got, want_bf, 6, &where), "BF16 values bit-exact (element %zu)", where);

  float want64[4] = {(float)(1.0 / 3.0), (float)1e-40, INFINITY, -2.5f};
  TEST_OK(cluda_safetensors_read_f32(&st, id, got, 4));
  TEST_CHECK(same_bits(got, want64, 4, &where), "F64 rounded to float (element %zu)", where);

  TEST_OK(cluda_safetensors_read_f32(&st, cluda_safetensors_find(&st, "e"), NULL, 0));
  TEST_FAILS(cluda_safetensors_read_f32(&st, id, got, 5), CLUDA_ERR_SHAPE, "'d' has 4 elements");
  TEST_FAILS(cluda_safetensors_read_f32(&st, 7, got, 1), CLUDA_ERR_ARG, "out of range");
  cluda_safetensors_close(&st);
  unlink(path);
}

/* Values written by the reference implementation (tools/make_weight_fixtures.py) against
 * torch's own float32 conversion of them. */
static void test_reference_fixture(void) {
  const char *path = CLUDA_FIXTURE_DIR "/weights/dtypes.safetensors";
  cluda_safetensors st;
  if (!TEST_OK(cluda_safetensors_open(path, &st))) return;
  static const char *const names[] = {"f16_edge", "bf16_edge", "f64_values", "f32_random",
                                      "f16_random"};
  for (int k = 0; k < 5; k++) {
    char expected_name[64];
    snprintf(expected_name, sizeof expected_name, "%s.expected", names[k]);
    int i = cluda_safetensors_find(&st, names[k]);
    int e = cluda_safetensors_find(&st, expected_name);
    if (!TEST_CHECK(i >= 0 && e >= 0, "fixture has %s and %s", names[k], expected_name)) continue;
    size_t n = 1;
    for (int d = 0; d < st.tensors[i].ndim; d++)
      n *= (size_t)st.tensors[i].shape[d];
    float got[64], want[64];
    TEST_OK(cluda_safetensors_read_f32(&st, i, got, n));
    TEST_OK(cluda_safetensors_read_f32(&st, e, want, n));
    size_t where = 0;
    TEST_CHECK(same_bits(got, want, n, &where), "%s matches torch's float32 (element %zu)",
               names[k], where);
  }
  int scalar = cluda_safetensors_find(&st, "scalar");
  float value = 0;
  TEST_CHECK(scalar >= 0 && st.tensors[scalar].ndim == 0, "0-d scalar");
  TEST_OK(cluda_safetensors_read_f32(&st, scalar, &value, 1));
  TEST_CHECK(value == 2.75f, "scalar value %g", (double)value);
  int empty = cluda_safetensors_find(&st, "empty");
  TEST_CHECK(empty >= 0 && st.tensors[empty].shape[0] == 0, "empty tensor listed");
  int quoted = cluda_safetensors_find(&st, "name with \"quotes\" \\ and \xc3\xa9");
  TEST_OK(cluda_safetensors_read_f32(&st, quoted, &value, 1));
  TEST_CHECK(value == 7.0f, "escaped name from the reference writer");
  cluda_safetensors_close(&st);
}

/* Opens must fail with CLUDA_ERR_IO, naming the file and the problem. */
static void expect_bad(const char *path, const char *needle, const char *what) {
  cluda_safetensors st;
  cluda_status s = cluda_safetensors_open(path, &st);
  if (s.code == CLUDA_OK) cluda_safetensors_close(&st);
  printf("  %s: %s\n", what, s.message);
  TEST_CHECK(s.code == CLUDA_ERR_IO, "%s: code %s", what, cluda_code_name(s.code));
  TEST_CHECK(strstr(s.message, path) != NULL, "%s: message names the file: %s", what, s.message);
  TEST_CHECK(strstr(s.message, needle) != NULL, "%s: message mentions \"%s\": %s", what, needle,
             s.message);
}

static void test_malformed(void) {
  char path[256];
  temp_file(path, sizeof path, "bad.safetensors");
  unsigned char data[64];
  memset(data, 0, sizeof data);
  const char *good = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";

  write_bytes(path, "", 0);
  expect_bad(path, "empty file", "empty file");
  write_bytes(path, "\x10\x00\x00", 3);
  expect_bad(path, "too short", "3-byte file");
  write_st(path, good, data, 16, strlen(good) + 100);
  expect_bad(path, "past the end", "header length beyond the file");
  write_st(path, good, data, 16, (uint64_t)1 << 40);
  expect_bad(path, "absurd", "absurd header length");

  /* A valid file cut inside its header, then inside its data. */
  write_st(path, good, data, 16, 0);
  if (truncate(path, 8 + 20) != 0) perror("truncate");
  expect_bad(path, "past the end", "truncated header");
  write_st(path, good, data, 16, 0);
  if (truncate(path, (off_t)(8 + strlen(good) + 10)) != 0) perror("truncate");
  expect_bad(path, "past the end of the data", "truncated data");

  static const struct {
    const char *header, *needle, *what;
  } json_cases[] = {
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}", "bad JSON",
       "missing closing brace"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},}", "bad JSON",
       "trailing comma"},
      {"{\"w\":{\"dtype\":\"F32", "unterminated string", "unterminated string"},
      {"{\"w\":{\"dtype\":\"F32,\"shape\":[2,2],\"data_offsets\":[0,16]}}", "unknown dtype 'F32,'",
       "quote missing after a string"},
      {"{\"w\\x\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}", "unknown escape",
       "bad escape"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2.0,2],\"data_offsets\":[0,16]}}", "fraction",
       "fractional dimension"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[-1,16]}}", "non-negative",
       "negative offset"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}} x", "trailing",
       "garbage after the header"},
      {"[1,2]", "must be a JSON object", "array at top level"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16],\"x\":1}}",
       "unknown field", "unknown field"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2]}}", "needs exactly one", "no data_offsets"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
       "\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[16,32]}}",
       "duplicate tensor 'w'", "duplicate name"},
      {"{\"w\":{\"dtype\":\"F17\",\"shape\":[2,2],\"data_offsets\":[0,16]}}",
       "'w' has unknown dtype 'F17'", "unknown dtype"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,16]}}", "needs 24 bytes",
       "shape/size mismatch"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[16,0]}}", "begin > end",
       "begin after end"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
       "\"v\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}",
       "overlap", "overlapping ranges"},
      {"{\"w\":{\"dtype\":\"F32\",\"shape\":[16],\"data_offsets\":[0,64]}}",
       "past the end of the data", "data past the end"},
  };
  for (size_t k = 0; k < sizeof json_cases / sizeof json_cases[0]; k++) {
    write_st(path, json_cases[k].header, data, 32, 0);
    expect_bad(path, json_cases[k].needle, json_cases[k].what);
  }

  /* An integer tensor (e.g. num_batches_tracked) opens, but is never read as float. */
  write_st(path,
           "{\"n\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]},"
           "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}",
           data, 16, 0);
  cluda_safetensors st;
  if (TEST_OK(cluda_safetensors_open(path, &st))) {
    float v[2];
    TEST_FAILS(cluda_safetensors_read_f32(&st, cluda_safetensors_find(&st, "n"), v, 1),
               CLUDA_ERR_DTYPE, "'n' has dtype I64");
    TEST_OK(cluda_safetensors_read_f32(&st, cluda_safetensors_find(&st, "w"), v, 2));
    cluda_safetensors_close(&st);
  }

  char missing[256];
  temp_file(missing, sizeof missing, "does_not_exist.safetensors");
  expect_bad(missing, "cannot open", "missing file");
  unlink(path);
}

int main(int argc, char **argv) {
  (void)argc;
  snprintf(temp_dir, sizeof temp_dir, "/tmp/cluda_test_safetensors_XXXXXX");
  if (!mkdtemp(temp_dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_known_values();
  test_reference_fixture();
  test_malformed();
  rmdir(temp_dir);
  return test_finish(argv[0]);
}

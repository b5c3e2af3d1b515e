/* TensorBoard event files: CRC32C known answers, the exact bytes of a file written by
 * TensorBoard's own writer (tests/fixtures/tfevents, from tools/make_tfevents_fixture.py),
 * and a small independent reader that checks the framing, both CRCs and the decoded Event
 * fields of what the C writer produced. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluda/logging.h"
#include "testing.h"

#define FIXTURE CLUDA_FIXTURE_DIR "/tfevents/torch_scalars.tfevents"
#define TB_WRITER "tensorboard.summary.writer.event_file_writer"

/* Must match SCALARS in tools/make_tfevents_fixture.py. */
static const double version_wall_time = 1700000000.125;
typedef struct scalar_case {
  const char *tag;
  int64_t step;
  float value;
  double wall_time;
} scalar_case;
static char long_tag[201];
static scalar_case cases[] = {
    {"loss/src", 1, 0.412f, 1700000001.5},
    {"loss/src", 2, -2.5f, 1700000002.75},
    {"train/\xce\x93_weight", 0, 1.0f / 3.0f, 1700000003.0},
    {"\xc3\xbcn\xc3\xaf"
     "c\xc3\xb6"
     "d\xc3\xa9/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e tag",
     1200, 1e-30f, 1700000004.0625},
    {"quote\"back\\slash", 40000, 1e-40f, 1700000005.0},
    {"huge", (INT64_C(1) << 40) + 3, 3.0e38f, 1700000006.5},
    {"zero", 7, 0.0f, 1700000007.0},
    {"negzero", 8, -0.0f, 1700000008.0},
    {"inf", 9, INFINITY, 1700000009.0},
    {"neginf", 10, -INFINITY, 1700000010.0},
    {"nan", 11, NAN, 1700000011.0},
    {"negative_step", -7, 6.0e-05f, 1700000012.0},
    {long_tag, 123456789, 1.5f, 1700000013.25},
};
enum { N_CASES = sizeof cases / sizeof cases[0] };

static char tmpdir[256];

static uint8_t *read_file(const char *path, size_t *n) {
  *n = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  uint8_t *buf = test_alloc(1 << 20);
  *n = fread(buf, 1, 1 << 20, f);
  fclose(f);
  return buf;
}

/* ---- an independent reader: TFRecord framing + the Event fields we write ---- */

static uint64_t get_le(const uint8_t *p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; i--)
    v = (v << 8) | p[i];
  return v;
}

typedef struct event {
  int has_wall_time, has_step, has_version, has_value;
  double wall_time;
  int64_t step;
  char version[64], source_writer[128], tag[1100];
  uint32_t value_bits;
} event;

typedef struct pb_in {
  const uint8_t *p, *end;
  int bad;
} pb_in;

static uint64_t rd_varint(pb_in *in) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (in->p >= in->end) break;
    uint8_t b = *in->p++;
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  in->bad = 1;
  return 0;
}

/* Reads one field; returns its number (0 at the end or on error). Length-delimited contents
 * are returned in *sub, fixed/varint values in *v. */
static int rd_field(pb_in *in, int *wire, uint64_t *v, pb_in *sub) {
  if (in->bad || in->p >= in->end) return 0;
  uint64_t key = rd_varint(in);
  *wire = (int)(key & 7);
  size_t n = *wire == 1 ? 8 : *wire == 5 ? 4 : 0;
  if (*wire == 0) {
    *v = rd_varint(in);
  } else if (*wire == 2) {
    n = (size_t)rd_varint(in);
    if ((size_t)(in->end - in->p) < n) return in->bad = 1, 0;
    *sub = (pb_in){in->p, in->p + n, 0};
    in->p += n;
  } else if (n) {
    if ((size_t)(in->end - in->p) < n) return in->bad = 1, 0;
    *v = get_le(in->p, (int)n);
    in->p += n;
  } else {
    return in->bad = 1, 0;
  }
  return in->bad ? 0 : (int)(key >> 3);
}

static void copy_str(char *dst, size_t cap, pb_in s) {
  size_t n = (size_t)(s.end - s.p);
  if (n >= cap) n = cap - 1;
  memcpy(dst, s.p, n);
  dst[n] = '\0';
}

static int decode_event(const uint8_t *data, size_t n, event *e) {
  memset(e, 0, sizeof *e);
  pb_in in = {data, data + n, 0}, sub, sub2, sub3;
  int wire, field;
  uint64_t v;
  while ((field = rd_field(&in, &wire, &v, &sub))) {
    if (field == 1 && wire == 1) {
      memcpy(&e->wall_time, &v, 8);
      e->has_wall_time = 1;
    } else if (field == 2 && wire == 0) {
      e->step = (int64_t)v;
      e->has_step = 1;
    } else if (field == 3 && wire == 2) {
      copy_str(e->version, sizeof e->version, sub);
      e->has_version = 1;
    } else if (field == 10 && wire == 2) {
      while ((field = rd_field(&sub, &wire, &v, &sub2)))
        if (field == 1 && wire == 2) copy_str(e->source_writer, sizeof e->source_writer, sub2);
    } else if (field == 5 && wire == 2) { /* Summary */
      while ((field = rd_field(&sub, &wire, &v, &sub2))) {
        if (field != 1 || wire != 2) continue;
        while ((field = rd_field(&sub2, &wire, &v, &sub3))) { /* Summary.Value */
          if (field == 1 && wire == 2) copy_str(e->tag, sizeof e->tag, sub3);
          if (field == 2 && wire == 5) e->value_bits = (uint32_t)v, e->has_value = 1;
        }
        if (sub2.bad) return 0;
      }
      if (sub.bad) return 0;
    }
  }
  return !in.bad;
}

typedef struct read_result {
  int records;      /* complete records with valid CRCs */
  int truncated;    /* the file ends inside a record */
  int bad_len_crc;  /* first record whose length CRC is wrong, or -1 */
  int bad_data_crc; /* first record whose data CRC is wrong, or -1 */
  int bad_proto;    /* first record that does not decode, or -1 */
  event events[32];
} read_result;

static void read_records(const uint8_t *buf, size_t n, read_result *r) {
  memset(r, 0, sizeof *r);
  r->bad_len_crc = r->bad_data_crc = r->bad_proto = -1;
  size_t pos = 0;
  for (int i = 0; pos < n; i++) {
    if (n - pos < 12) return (void)(r->truncated = 1);
    uint64_t len = get_le(buf + pos, 8);
    if (cluda_crc32c_unmask((uint32_t)get_le(buf + pos + 8, 4)) != cluda_crc32c(buf + pos, 8)) {
      r->bad_len_crc = i;
      return;
    }
    if (n - pos - 12 < len + 4) return (void)(r->truncated = 1);
    const uint8_t *data = buf + pos + 12;
    if (cluda_crc32c_unmask((uint32_t)get_le(data + len, 4)) != cluda_crc32c(data, len)) {
      if (r->bad_data_crc < 0) r->bad_data_crc = i;
    } else if (i < 32 && !decode_event(data, len, &r->events[i])) {
      if (r->bad_proto < 0) r->bad_proto = i;
    }
    r->records++;
    pos += 12 + len + 4;
  }
}

/* ---- tests ---- */

/* Bit-by-bit CRC32C, the textbook definition, to check the table. */
static uint32_t crc32c_bitwise(const uint8_t *p, size_t n) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++)
      c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
  }
  return ~c;
}

static void test_crc32c(void) {
  TEST_CHECK(cluda_crc32c("123456789", 9) == 0xe3069283u, "crc32c(\"123456789\") = %08x",
             cluda_crc32c("123456789", 9));
  TEST_CHECK(cluda_crc32c("", 0) == 0, "crc32c of nothing is 0");
  /* RFC 3720 (iSCSI) appendix B.4. */
  uint8_t v[32];
  memset(v, 0, sizeof v);
  TEST_CHECK(cluda_crc32c(v, 32) == 0x8a9136aau, "32 zeros: %08x", cluda_crc32c(v, 32));
  memset(v, 0xff, sizeof v);
  TEST_CHECK(cluda_crc32c(v, 32) == 0x62a8ab43u, "32 x 0xff: %08x", cluda_crc32c(v, 32));
  for (int i = 0; i < 32; i++)
    v[i] = (uint8_t)i;
  TEST_CHECK(cluda_crc32c(v, 32) == 0x46dd794eu, "0..31: %08x", cluda_crc32c(v, 32));
  for (int i = 0; i < 32; i++)
    v[i] = (uint8_t)(31 - i);
  TEST_CHECK(cluda_crc32c(v, 32) == 0x113fdb5cu, "31..0: %08x", cluda_crc32c(v, 32));

  /* Every table entry is exercised by random data of many lengths; extend() composes. */
  uint8_t data[1000];
  float r[1000];
  test_fill_uniform(r, 1000, 0.0f, 256.0f, 42, 0);
  for (int i = 0; i < 1000; i++)
    data[i] = (uint8_t)r[i];
  int same = 1, composes = 1;
  for (size_t n = 0; n <= 1000; n += 37) {
    same &= cluda_crc32c(data, n) == crc32c_bitwise(data, n);
    composes &= cluda_crc32c_extend(cluda_crc32c(data, n / 3), data + n / 3, n - n / 3) ==
                cluda_crc32c(data, n);
  }
  TEST_CHECK(same, "table CRC equals the bitwise definition");
  TEST_CHECK(composes, "crc32c_extend continues a CRC");

  uint32_t crc = 0xe3069283u;
  TEST_CHECK(cluda_crc32c_mask(crc) == 0xc78ab0e5u, "masked crc32c(\"123456789\") = %08x",
             cluda_crc32c_mask(crc));
  int inverse = 1;
  for (uint32_t c = 0; c < 0xffff0000u; c += 0x10001u * 977u)
    inverse &= cluda_crc32c_unmask(cluda_crc32c_mask(c)) == c;
  TEST_CHECK(inverse, "unmask inverts mask");
}

static void test_utf8(void) {
  TEST_CHECK(cluda_utf8_valid("plain ascii") && cluda_utf8_valid(""), "ascii");
  TEST_CHECK(cluda_utf8_valid("\xce\x93 \xe6\x97\xa5 \xf0\x9f\x98\x80"), "2-, 3- and 4-byte");
  TEST_CHECK(!cluda_utf8_valid("\xc0\xaf"), "overlong rejected");
  TEST_CHECK(!cluda_utf8_valid("\xed\xa0\x80"), "surrogate rejected");
  TEST_CHECK(!cluda_utf8_valid("\xf4\x90\x80\x80"), "above U+10FFFF rejected");
  TEST_CHECK(!cluda_utf8_valid("ab\xe6\x97"), "truncated sequence rejected");
  TEST_CHECK(!cluda_utf8_valid("\x80"), "stray continuation byte rejected");
  TEST_CHECK(!cluda_utf8_valid("\xff"), "0xff rejected");
}

static void path_in_tmp(char *buf, size_t size, const char *name) {
  snprintf(buf, size, "%s/%s", tmpdir, name);
}

/* The whole file, framing included, equals what TensorBoard's writer produced. */
static void test_reference_bytes(void) {
  size_t n_ref, n_got;
  uint8_t *ref = read_file(FIXTURE, &n_ref);
  if (!TEST_CHECK(ref && n_ref > 0, "fixture %s readable", FIXTURE)) return;

  char path[512];
  path_in_tmp(path, sizeof path, "same_as_torch.tfevents");
  cluda_tfevents w;
  if (!TEST_OK(cluda_tfevents_open_path(&w, path, version_wall_time, TB_WRITER))) return;
  for (int i = 0; i < N_CASES; i++)
    TEST_OK(
        cluda_tfevents_scalar(&w, cases[i].tag, cases[i].step, cases[i].value, cases[i].wall_time));
  TEST_OK(cluda_tfevents_close(&w));
  uint8_t *got = read_file(path, &n_got);
  size_t diff = 0;
  while (diff < n_got && diff < n_ref && got[diff] == ref[diff])
    diff++;
  TEST_CHECK(n_got == n_ref && diff == n_ref,
             "C file equals TensorBoard's (%zu vs %zu bytes, first difference at %zu)", n_got,
             n_ref, diff);

  /* The encoders alone, against the fixture's records. */
  read_result *r = test_alloc(sizeof *r);
  read_records(ref, n_ref, r);
  TEST_CHECK(r->records == N_CASES + 1 && !r->truncated && r->bad_len_crc < 0 &&
                 r->bad_data_crc < 0 && r->bad_proto < 0,
             "reader accepts the reference file (%d records)", r->records);
  uint8_t buf[2048];
  size_t len = cluda_tfevent_encode_version(buf, sizeof buf, version_wall_time, TB_WRITER);
  TEST_CHECK(len == get_le(ref, 8) && memcmp(buf, ref + 12, len) == 0,
             "version event encodes like TensorBoard's");
  TEST_CHECK(cluda_tfevent_encode_version(NULL, 0, version_wall_time, TB_WRITER) == len,
             "size query of the version event");
  size_t pos = 12 + len + 4;
  int all = 1, sizes = 1;
  for (int i = 0; i < N_CASES && pos + 12 <= n_ref; i++) {
    len = cluda_tfevent_encode_scalar(buf, sizeof buf, cases[i].wall_time, cases[i].step,
                                      cases[i].tag, cases[i].value);
    size_t ref_len = (size_t)get_le(ref + pos, 8);
    if (len != ref_len || memcmp(buf, ref + pos + 12, len) != 0) {
      printf("  scalar %d (%s) differs\n", i, cases[i].tag);
      all = 0;
    }
    sizes &= cluda_tfevent_encode_scalar(NULL, 0, cases[i].wall_time, cases[i].step, cases[i].tag,
                                         cases[i].value) == len;
    pos += 12 + ref_len + 4;
  }
  TEST_CHECK(all, "every scalar event encodes like TensorBoard's");
  TEST_CHECK(sizes, "size queries of the scalar events");
  /* A short buffer is not overrun. */
  memset(buf, 0xab, sizeof buf);
  len = cluda_tfevent_encode_scalar(buf, 10, 1.0, 1, "tag", 1.0f);
  TEST_CHECK(len > 10 && buf[10] == 0xab, "encoder stops at cap and reports the full size");
  free(r);
  free(got);
  free(ref);
}

/* The writer's own file read back by the independent reader. */
static void test_read_back(void) {
  cluda_tfevents w;
  if (!TEST_OK(cluda_tfevents_open(&w, tmpdir, 1712345678.9, "testhost"))) return;
  char want[512];
  snprintf(want, sizeof want, "%s/events.out.tfevents.1712345678.testhost", tmpdir);
  TEST_CHECK(strcmp(w.path, want) == 0, "file name %s", w.path);
  for (int i = 0; i < N_CASES; i++)
    TEST_OK(
        cluda_tfevents_scalar(&w, cases[i].tag, cases[i].step, cases[i].value, cases[i].wall_time));
  TEST_OK(cluda_tfevents_flush(&w, 1));

  /* Flushed: a reader sees everything before close. */
  size_t n;
  uint8_t *buf = read_file(w.path, &n);
  read_result *r = test_alloc(sizeof *r);
  read_records(buf, n, r);
  TEST_CHECK(r->records == N_CASES + 1 && !r->truncated && r->bad_len_crc < 0 &&
                 r->bad_data_crc < 0 && r->bad_proto < 0,
             "flushed file has %d valid records", r->records);
  const event *e = &r->events[0];
  TEST_CHECK(e->has_version && strcmp(e->version, "brain.Event:2") == 0 &&
                 strcmp(e->source_writer, "cluda") == 0 && e->wall_time == 1712345678.9 &&
                 !e->has_value,
             "first event: file_version, source writer \"%s\"", e->source_writer);
  int ok = 1;
  for (int i = 0; i < N_CASES; i++) {
    e = &r->events[i + 1];
    uint32_t bits;
    memcpy(&bits, &cases[i].value, 4);
    int good = e->has_value && e->value_bits == bits && strcmp(e->tag, cases[i].tag) == 0 &&
               e->wall_time == cases[i].wall_time && e->step == cases[i].step &&
               e->has_step == (cases[i].step != 0);
    if (!good) printf("  event %d (%s) read back wrong\n", i + 1, cases[i].tag);
    ok &= good;
  }
  TEST_CHECK(ok, "tags, steps, wall times and value bits read back exactly");
  TEST_OK(cluda_tfevents_close(&w));
  TEST_OK(cluda_tfevents_close(&w)); /* closing twice is harmless */

  /* Damage is detected: a flipped data byte, a flipped length byte, a cut-off tail. */
  buf[40] ^= 1;
  read_records(buf, n, r);
  TEST_CHECK(r->bad_data_crc == 0, "flipped byte in record 0 fails its data CRC");
  buf[40] ^= 1;
  size_t second = 12 + get_le(buf, 8) + 4;
  buf[second + 1] ^= 0x10;
  read_records(buf, n, r);
  TEST_CHECK(r->bad_len_crc == 1, "corrupt length of record 1 fails its length CRC");
  buf[second + 1] ^= 0x10;
  read_records(buf, n - 3, r);
  TEST_CHECK(r->truncated && r->records == N_CASES && r->bad_data_crc < 0,
             "truncated last record: the %d records before it survive", r->records);

  /* Opening again appends instead of truncating. */
  if (TEST_OK(cluda_tfevents_open(&w, tmpdir, 1712345678.9, "testhost"))) {
    TEST_OK(cluda_tfevents_close(&w));
    free(buf);
    buf = read_file(want, &n);
    read_records(buf, n, r);
    TEST_CHECK(r->records == N_CASES + 2 && r->events[N_CASES + 1].has_version,
               "reopening appends a second version event (%d records)", r->records);
  }
  free(r);
  free(buf);
}

static void test_errors(void) {
  cluda_tfevents w;
  char path[512];
  path_in_tmp(path, sizeof path, "no/such/dir");
  TEST_FAILS(cluda_tfevents_open(&w, path, 1e9, "h"), CLUDA_ERR_IO, "no/such/dir");
  TEST_CHECK(w.file == NULL, "failed open leaves no file handle");
  TEST_OK(cluda_tfevents_close(&w));
  TEST_FAILS(cluda_tfevents_open(&w, tmpdir, 1e9, "a/b"), CLUDA_ERR_ARG, "hostname");
  TEST_FAILS(cluda_tfevents_open(&w, tmpdir, -1.0, "h"), CLUDA_ERR_ARG, "wall_time");
  TEST_FAILS(cluda_tfevents_scalar(&w, "x", 1, 1.0f, 1.0), CLUDA_ERR_ARG, "not open");
  if (TEST_OK(cluda_tfevents_open(&w, tmpdir, 1e9, NULL))) {
    char host[CLUDA_TFEVENTS_PATH_BYTES];
    TEST_CHECK(strstr(w.path, "/events.out.tfevents.1000000000.") != NULL, "default hostname in %s",
               w.path);
    TEST_FAILS(cluda_tfevents_scalar(&w, "bad\xff", 1, 1.0f, 1.0), CLUDA_ERR_ARG, "UTF-8");
    TEST_FAILS(cluda_tfevents_scalar(&w, "", 1, 1.0f, 1.0), CLUDA_ERR_ARG, "empty tag");
    char *big = test_alloc(CLUDA_TFEVENTS_MAX_TAG + 2);
    memset(big, 'a', CLUDA_TFEVENTS_MAX_TAG + 1);
    big[CLUDA_TFEVENTS_MAX_TAG + 1] = '\0';
    TEST_FAILS(cluda_tfevents_scalar(&w, big, 1, 1.0f, 1.0), CLUDA_ERR_ARG, "longer");
    big[CLUDA_TFEVENTS_MAX_TAG] = '\0';
    TEST_OK(cluda_tfevents_scalar(&w, big, 1, 1.0f, 1.0));
    free(big);
    snprintf(host, sizeof host, "%s", w.path);
    TEST_OK(cluda_tfevents_close(&w));
    unlink(host);
  }
}

static void remove_tmpdir(void) {
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) printf("could not remove %s\n", tmpdir);
}

int main(void) {
  memset(long_tag, 'x', 200);
  const char *base = getenv("TMPDIR");
  snprintf(tmpdir, sizeof tmpdir, "%s/cluda_test_tfevents_XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  test_crc32c();
  test_utf8();
  test_reference_bytes();
  test_read_back();
  test_errors();
  remove_tmpdir();
  return test_finish("test_tfevents");
}

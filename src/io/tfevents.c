/* TensorBoard event files without a protobuf library: CRC32C, TFRecord framing and the
 * handful of Event fields a scalar summary needs (event.proto / summary.proto):
 *   Event:          wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
 *                   summary = 5 (message), source_metadata = 10 (message)
 *   Summary:        value = 1 (repeated message)
 *   Summary.Value:  tag = 1 (string), simple_value = 2 (float)
 *   SourceMetadata: writer = 1 (string)
 * The byte layout matches TensorBoard's own writer; tests/unit/test_tfevents.c compares
 * against a file it wrote. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cluda/logging.h"

/* ---- CRC32C ---- */

/* Byte-wise table for the reflected polynomial 0x82F63B78: table[i] is the CRC register
 * after shifting the byte i through it. A const literal, so there is no lazy init to race. */
static const uint32_t crc32c_table[256] = {
    0x00000000u, 0xf26b8303u, 0xe13b70f7u, 0x1350f3f4u, 0xc79a971fu, 0x35f1141cu, 0x26a1e7e8u,
    0xd4ca64ebu, 0x8ad958cfu, 0x78b2dbccu, 0x6be22838u, 0x9989ab3bu, 0x4d43cfd0u, 0xbf284cd3u,
    0xac78bf27u, 0x5e133c24u, 0x105ec76fu, 0xe235446cu, 0xf165b798u, 0x030e349bu, 0xd7c45070u,
    0x25afd373u, 0x36ff2087u, 0xc494a384u, 0x9a879fa0u, 0x68ec1ca3u, 0x7bbcef57u, 0x89d76c54u,
    0x5d1d08bfu, 0xaf768bbcu, 0xbc267848u, 0x4e4dfb4bu, 0x20bd8edeu, 0xd2d60dddu, 0xc186fe29u,
    0x33ed7d2au, 0xe72719c1u, 0x154c9ac2u, 0x061c6936u, 0xf477ea35u, 0xaa64d611u, 0x580f5512u,
    0x4b5fa6e6u, 0xb93425e5u, 0x6dfe410eu, 0x9f95c20du, 0x8cc531f9u, 0x7eaeb2fau, 0x30e349b1u,
    0xc288cab2u, 0xd1d83946u, 0x23b3ba45u, 0xf779deaeu, 0x05125dadu, 0x1642ae59u, 0xe4292d5au,
    0xba3a117eu, 0x4851927du, 0x5b016189u, 0xa96ae28au, 0x7da08661u, 0x8fcb0562u, 0x9c9bf696u,
    0x6ef07595u, 0x417b1dbcu, 0xb3109ebfu, 0xa0406d4bu, 0x522bee48u, 0x86e18aa3u, 0x748a09a0u,
    0x67dafa54u, 0x95b17957u, 0xcba24573u, 0x39c9c670u, 0x2a993584u, 0xd8f2b687u, 0x0c38d26cu,
    0xfe53516fu, 0xed03a29bu, 0x1f682198u, 0x5125dad3u, 0xa34e59d0u, 0xb01eaa24u, 0x42752927u,
    0x96bf4dccu, 0x64d4cecfu, 0x77843d3bu, 0x85efbe38u, 0xdbfc821cu, 0x2997011fu, 0x3ac7f2ebu,
    0xc8ac71e8u, 0x1c661503u, 0xee0d9600u, 0xfd5d65f4u, 0x0f36e6f7u, 0x61c69362u, 0x93ad1061u,
    0x80fde395u, 0x72966096u, 0xa65c047du, 0x5437877eu, 0x4767748au, 0xb50cf789u, 0xeb1fcbadu,
    0x197448aeu, 0x0a24bb5au, 0xf84f3859u, 0x2c855cb2u, 0xdeeedfb1u, 0xcdbe2c45u, 0x3fd5af46u,
    0x7198540du, 0x83f3d70eu, 0x90a324fau, 0x62c8a7f9u, 0xb602c312u, 0x44694011u, 0x5739b3e5u,
    0xa55230e6u, 0xfb410cc2u, 0x092a8fc1u, 0x1a7a7c35u, 0xe811ff36u, 0x3cdb9bddu, 0xceb018deu,
    0xdde0eb2au, 0x2f8b6829u, 0x82f63b78u, 0x709db87bu, 0x63cd4b8fu, 0x91a6c88cu, 0x456cac67u,
    0xb7072f64u, 0xa457dc90u, 0x563c5f93u, 0x082f63b7u, 0xfa44e0b4u, 0xe9141340u, 0x1b7f9043u,
    0xcfb5f4a8u, 0x3dde77abu, 0x2e8e845fu, 0xdce5075cu, 0x92a8fc17u, 0x60c37f14u, 0x73938ce0u,
    0x81f80fe3u, 0x55326b08u, 0xa759e80bu, 0xb4091bffu, 0x466298fcu, 0x1871a4d8u, 0xea1a27dbu,
    0xf94ad42fu, 0x0b21572cu, 0xdfeb33c7u, 0x2d80b0c4u, 0x3ed04330u, 0xccbbc033u, 0xa24bb5a6u,
    0x502036a5u, 0x4370c551u, 0xb11b4652u, 0x65d122b9u, 0x97baa1bau, 0x84ea524eu, 0x7681d14du,
    0x2892ed69u, 0xdaf96e6au, 0xc9a99d9eu, 0x3bc21e9du, 0xef087a76u, 0x1d63f975u, 0x0e330a81u,
    0xfc588982u, 0xb21572c9u, 0x407ef1cau, 0x532e023eu, 0xa145813du, 0x758fe5d6u, 0x87e466d5u,
    0x94b49521u, 0x66df1622u, 0x38cc2a06u, 0xcaa7a905u, 0xd9f75af1u, 0x2b9cd9f2u, 0xff56bd19u,
    0x0d3d3e1au, 0x1e6dcdeeu, 0xec064eedu, 0xc38d26c4u, 0x31e6a5c7u, 0x22b65633u, 0xd0ddd530u,
    0x0417b1dbu, 0xf67c32d8u, 0xe52cc12cu, 0x1747422fu, 0x49547e0bu, 0xbb3ffd08u, 0xa86f0efcu,
    0x5a048dffu, 0x8ecee914u, 0x7ca56a17u, 0x6ff599e3u, 0x9d9e1ae0u, 0xd3d3e1abu, 0x21b862a8u,
    0x32e8915cu, 0xc083125fu, 0x144976b4u, 0xe622f5b7u, 0xf5720643u, 0x07198540u, 0x590ab964u,
    0xab613a67u, 0xb831c993u, 0x4a5a4a90u, 0x9e902e7bu, 0x6cfbad78u, 0x7fab5e8cu, 0x8dc0dd8fu,
    0xe330a81au, 0x115b2b19u, 0x020bd8edu, 0xf0605beeu, 0x24aa3f05u, 0xd6c1bc06u, 0xc5914ff2u,
    0x37faccf1u, 0x69e9f0d5u, 0x9b8273d6u, 0x88d28022u, 0x7ab90321u, 0xae7367cau, 0x5c18e4c9u,
    0x4f48173du, 0xbd23943eu, 0xf36e6f75u, 0x0105ec76u, 0x12551f82u, 0xe03e9c81u, 0x34f4f86au,
    0xc69f7b69u, 0xd5cf889du, 0x27a40b9eu, 0x79b737bau, 0x8bdcb4b9u, 0x988c474du, 0x6ae7c44eu,
    0xbe2da0a5u, 0x4c4623a6u, 0x5f16d052u, 0xad7d5351u,
};

uint32_t cluda_crc32c_extend(uint32_t crc, const void *data, size_t n) {
  const uint8_t *p = data;
  /* The register is kept inverted (init ~0, final xor ~0); undoing and redoing the inversion
   * at the boundaries is what makes extend() composable. */
  uint32_t c = ~crc;
  for (size_t i = 0; i < n; i++)
    c = crc32c_table[(c ^ p[i]) & 0xffu] ^ (c >> 8);
  return ~c;
}

uint32_t cluda_crc32c_mask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

uint32_t cluda_crc32c_unmask(uint32_t masked) {
  uint32_t rot = masked - 0xa282ead8u;
  return (rot >> 17) | (rot << 15);
}

/* ---- UTF-8 ---- */

int cluda_utf8_valid(const char *str) {
  const uint8_t *s = (const uint8_t *)str;
  while (*s) {
    uint32_t c = *s;
    int extra;
    uint32_t min;
    if (c < 0x80) {
      s++;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      extra = 1, min = 0x80, c &= 0x1f;
    } else if ((c & 0xf0) == 0xe0) {
      extra = 2, min = 0x800, c &= 0x0f;
    } else if ((c & 0xf8) == 0xf0) {
      extra = 3, min = 0x10000, c &= 0x07;
    } else {
      return 0;
    }
    s++;
    for (int i = 0; i < extra; i++, s++) {
      if ((*s & 0xc0) != 0x80) return 0; /* also stops at the terminating NUL */
      c = (c << 6) | (*s & 0x3fu);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) return 0;
  }
  return 1;
}

/* ---- protobuf wire format ---- */

/* A bounded output cursor that keeps counting past the end, so callers learn the size. */
typedef struct pb_out {
  uint8_t *buf;
  size_t cap, len;
} pb_out;

static void pb_byte(pb_out *o, uint8_t b) {
  if (o->len < o->cap) o->buf[o->len] = b;
  o->len++;
}

static void pb_bytes(pb_out *o, const void *data, size_t n) {
  const uint8_t *p = data;
  for (size_t i = 0; i < n; i++)
    pb_byte(o, p[i]);
}

static void pb_varint(pb_out *o, uint64_t v) {
  while (v >= 0x80) {
    pb_byte(o, (uint8_t)(v | 0x80));
    v >>= 7;
  }
  pb_byte(o, (uint8_t)v);
}

static size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80)
    v >>= 7, n++;
  return n;
}

/* Little-endian regardless of the host, as the wire format requires. */
static void pb_fixed(pb_out *o, uint64_t bits, int bytes) {
  for (int i = 0; i < bytes; i++)
    pb_byte(o, (uint8_t)(bits >> (8 * i)));
}

static void pb_string(pb_out *o, uint8_t key, const char *s, size_t n) {
  pb_byte(o, key);
  pb_varint(o, n);
  pb_bytes(o, s, n);
}

static void pb_wall_time(pb_out *o, double wall_time) {
  uint64_t bits;
  memcpy(&bits, &wall_time, sizeof bits);
  /* proto3 omits a field equal to its default; the reference compares the raw bits, so -0.0
   * is still written. */
  if (bits == 0) return;
  pb_byte(o, 0x09); /* field 1, fixed64 */
  pb_fixed(o, bits, 8);
}

static const char version_string[] = "brain.Event:2";

size_t cluda_tfevent_encode_version(uint8_t *buf, size_t cap, double wall_time,
                                    const char *source_writer) {
  if (source_writer && !cluda_utf8_valid(source_writer)) return 0;
  pb_out o = {buf, cap, 0};
  pb_wall_time(&o, wall_time);
  pb_string(&o, 0x1a, version_string, sizeof version_string - 1); /* field 3 */
  if (source_writer && *source_writer) {
    size_t n = strlen(source_writer);
    pb_byte(&o, 0x52); /* field 10, length-delimited: SourceMetadata */
    pb_varint(&o, 1 + varint_size(n) + n);
    pb_string(&o, 0x0a, source_writer, n); /* SourceMetadata.writer */
  }
  return o.len;
}

size_t cluda_tfevent_encode_scalar(uint8_t *buf, size_t cap, double wall_time, int64_t step,
                                   const char *tag, float value) {
  if (!tag || !cluda_utf8_valid(tag)) return 0;
  pb_out o = {buf, cap, 0};
  size_t tag_len = strlen(tag);
  /* Sizes from the inside out: Value{tag, simple_value}, Summary{value}. */
  size_t value_len = (tag_len ? 1 + varint_size(tag_len) + tag_len : 0) + 5;
  size_t summary_len = 1 + varint_size(value_len) + value_len;
  pb_wall_time(&o, wall_time);
  if (step != 0) {
    pb_byte(&o, 0x10); /* field 2, varint; negative int64 takes 10 bytes */
    pb_varint(&o, (uint64_t)step);
  }
  pb_byte(&o, 0x2a); /* field 5: summary */
  pb_varint(&o, summary_len);
  pb_byte(&o, 0x0a); /* Summary.value */
  pb_varint(&o, value_len);
  if (tag_len) pb_string(&o, 0x0a, tag, tag_len); /* Value.tag */
  uint32_t bits;
  memcpy(&bits, &value, sizeof bits);
  pb_byte(&o, 0x15); /* Value.simple_value, field 2, fixed32 (oneof: always written) */
  pb_fixed(&o, bits, 4);
  return o.len;
}

/* ---- TFRecord ---- */

static void put_le(uint8_t *p, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; i++)
    p[i] = (uint8_t)(v >> (8 * i));
}

cluda_status cluda_tfrecord_write(FILE *f, const char *path, const void *data, size_t n) {
  CLUDA_REQUIRE(f && (data || n == 0), CLUDA_ERR_ARG, "tfrecord_write: NULL argument (%s)",
                path ? path : "?");
  uint8_t head[12], tail[4];
  put_le(head, (uint64_t)n, 8);
  put_le(head + 8, cluda_crc32c_mask(cluda_crc32c(head, 8)), 4);
  put_le(tail, cluda_crc32c_mask(cluda_crc32c(data, n)), 4);
  int ok = fwrite(head, 1, sizeof head, f) == sizeof head;
  ok = ok && (n == 0 || fwrite(data, 1, n, f) == n);
  ok = ok && fwrite(tail, 1, sizeof tail, f) == sizeof tail;
  CLUDA_REQUIRE(ok, CLUDA_ERR_IO, "tfevents: write %s: %s", path ? path : "?", strerror(errno));
  return cluda_ok();
}

/* ---- the writer ---- */

cluda_status cluda_tfevents_open_path(cluda_tfevents *w, const char *path, double wall_time,
                                      const char *source_writer) {
  CLUDA_REQUIRE(w && path, CLUDA_ERR_ARG, "tfevents_open: NULL argument");
  w->file = NULL;
  int n = snprintf(w->path, sizeof w->path, "%s", path);
  CLUDA_REQUIRE(n > 0 && (size_t)n < sizeof w->path, CLUDA_ERR_ARG,
                "tfevents_open: path too long: %.120s", path);
  uint8_t buf[256];
  size_t len = cluda_tfevent_encode_version(buf, sizeof buf, wall_time, source_writer);
  CLUDA_REQUIRE(len > 0 && len <= sizeof buf, CLUDA_ERR_ARG,
                "tfevents_open: bad source writer name for %s", path);
  /* Append: a second run that lands on the same name must not erase the first. */
  w->file = fopen(path, "ab");
  CLUDA_REQUIRE(w->file, CLUDA_ERR_IO, "tfevents: cannot open %s: %s", path, strerror(errno));
  cluda_status s = cluda_tfrecord_write(w->file, w->path, buf, len);
  if (s.code == CLUDA_OK) s = cluda_tfevents_flush(w, 0);
  if (s.code != CLUDA_OK) {
    fclose(w->file);
    w->file = NULL;
  }
  return s;
}

cluda_status cluda_tfevents_open(cluda_tfevents *w, const char *dir, double wall_time,
                                 const char *hostname) {
  CLUDA_REQUIRE(w && dir, CLUDA_ERR_ARG, "tfevents_open: NULL argument");
  w->file = NULL;
  char host[256];
  if (!hostname) {
    if (gethostname(host, sizeof host) != 0) snprintf(host, sizeof host, "localhost");
    host[sizeof host - 1] = '\0'; /* POSIX leaves truncation unterminated */
    hostname = host;
  }
  CLUDA_REQUIRE(*hostname && !strchr(hostname, '/'), CLUDA_ERR_ARG,
                "tfevents_open: hostname \"%s\" cannot be part of a file name", hostname);
  CLUDA_REQUIRE(wall_time >= 0 && wall_time < 1e15, CLUDA_ERR_ARG,
                "tfevents_open: wall_time %g is not a unix time", wall_time);
  char path[CLUDA_TFEVENTS_PATH_BYTES];
  int n = snprintf(path, sizeof path, "%s/events.out.tfevents.%010lld.%s", dir,
                   (long long)wall_time, hostname);
  CLUDA_REQUIRE(n > 0 && (size_t)n < sizeof path, CLUDA_ERR_ARG,
                "tfevents_open: directory name too long: %.120s", dir);
  return cluda_tfevents_open_path(w, path, wall_time, "cluda");
}

cluda_status cluda_tfevents_scalar(cluda_tfevents *w, const char *tag, int64_t step, float value,
                                   double wall_time) {
  CLUDA_REQUIRE(w && w->file, CLUDA_ERR_ARG, "tfevents_scalar: writer is not open");
  CLUDA_REQUIRE(tag && *tag, CLUDA_ERR_ARG, "tfevents_scalar: empty tag (%s)", w->path);
  CLUDA_REQUIRE(strlen(tag) <= CLUDA_TFEVENTS_MAX_TAG, CLUDA_ERR_ARG,
                "tfevents_scalar: tag longer than %d bytes: %.40s...", CLUDA_TFEVENTS_MAX_TAG, tag);
  uint8_t buf[CLUDA_TFEVENTS_MAX_TAG + 64];
  size_t len = cluda_tfevent_encode_scalar(buf, sizeof buf, wall_time, step, tag, value);
  CLUDA_REQUIRE(len > 0, CLUDA_ERR_ARG, "tfevents_scalar: tag is not valid UTF-8: %.40s", tag);
  return cluda_tfrecord_write(w->file, w->path, buf, len);
}

cluda_status cluda_tfevents_flush(cluda_tfevents *w, int sync) {
  CLUDA_REQUIRE(w && w->file, CLUDA_ERR_ARG, "tfevents_flush: writer is not open");
  CLUDA_REQUIRE(fflush(w->file) == 0, CLUDA_ERR_IO, "tfevents: flush %s: %s", w->path,
                strerror(errno));
  if (sync)
    CLUDA_REQUIRE(fsync(fileno(w->file)) == 0, CLUDA_ERR_IO, "tfevents: fsync %s: %s", w->path,
                  strerror(errno));
  return cluda_ok();
}

cluda_status cluda_tfevents_close(cluda_tfevents *w) {
  if (!w || !w->file) return cluda_ok();
  int rc = fclose(w->file); /* flushes; a full disk shows up here */
  w->file = NULL;
  CLUDA_REQUIRE(rc == 0, CLUDA_ERR_IO, "tfevents: close %s: %s", w->path, strerror(errno));
  return cluda_ok();
}

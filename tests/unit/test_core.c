/* Core pieces: the Philox generator against the Random123 known-answer vectors, stream
 * independence, status messages, tensor helpers and the arena. */
#include <math.h>
#include <string.h>

#include "cluda/arena.h"
#include "cluda/rng.h"
#include "testing.h"

static void test_philox_known_answers(void) {
  /* Known-answer vectors of philox4x32_10 from Random123's kat_vectors. */
  static const struct {
    uint32_t ctr[4], key[2], out[4];
  } kat[] = {
      {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u}},
      {{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
       {0xffffffffu, 0xffffffffu},
       {0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu}},
      {{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u},
       {0xa4093822u, 0x299f31d0u},
       {0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u}},
  };
  for (size_t i = 0; i < sizeof kat / sizeof kat[0]; i++) {
    uint32_t out[4];
    cluda_philox4x32_10(kat[i].ctr, kat[i].key, out);
    TEST_CHECK(memcmp(out, kat[i].out, sizeof out) == 0, "philox KAT %zu: got %08x %08x %08x %08x",
               i, out[0], out[1], out[2], out[3]);
  }
}

static void test_rng_streams(void) {
  cluda_rng_key a = cluda_rng_make_key(7, 0, 3, CLUDA_RNG_DROPOUT, 0);
  cluda_rng_key b = cluda_rng_make_key(7, 1, 3, CLUDA_RNG_DROPOUT, 0);
  cluda_rng_key c = cluda_rng_make_key(7, 0, 3, CLUDA_RNG_DROPOUT, 1);
  cluda_rng_key d = cluda_rng_make_key(8, 0, 3, CLUDA_RNG_DROPOUT, 0);
  int same_ab = 0, same_ac = 0, same_ad = 0, out_of_range = 0;
  double sum = 0.0, sum_sq = 0.0;
  const int n = 100000;
  for (int i = 0; i < n; i++) {
    float u = cluda_rng_uniform(a, (uint64_t)i);
    out_of_range += !(u >= 0.0f && u < 1.0f);
    same_ab += u == cluda_rng_uniform(b, (uint64_t)i);
    same_ac += u == cluda_rng_uniform(c, (uint64_t)i);
    same_ad += u == cluda_rng_uniform(d, (uint64_t)i);
    sum += u;
    sum_sq += (double)u * u;
  }
  TEST_CHECK(out_of_range == 0, "%d uniform draws outside [0,1)", out_of_range);
  /* 24-bit floats collide by chance about n / 2^24 times */
  TEST_CHECK(same_ab < 20 && same_ac < 20 && same_ad < 20,
             "streams overlap: rank %d, slot %d, seed %d equal draws", same_ab, same_ac, same_ad);
  double mean = sum / n, var = sum_sq / n - mean * mean;
  TEST_CHECK(fabs(mean - 0.5) < 0.005 && fabs(var - 1.0 / 12.0) < 0.002,
             "uniform moments: mean %g var %g", mean, var);
  /* a draw depends only on its index: recomputing out of order gives the same value */
  TEST_CHECK(cluda_rng_uniform(a, 12345) == cluda_rng_uniform(a, 12345), "draw not repeatable");
  double nsum = 0.0, nsq = 0.0;
  for (int i = 0; i < n; i++) {
    double z = cluda_rng_normal(a, (uint64_t)i);
    nsum += z;
    nsq += z * z;
  }
  TEST_CHECK(fabs(nsum / n) < 0.02 && fabs(nsq / n - 1.0) < 0.02, "normal moments: %g %g", nsum / n,
             nsq / n);
}

static cluda_status fails_on_purpose(int value) {
  CLUDA_REQUIRE(value > 0, CLUDA_ERR_ARG, "demo: value %d must be positive", value);
  return cluda_ok();
}

static cluda_status propagates(int value) {
  CLUDA_TRY(fails_on_purpose(value));
  return cluda_ok();
}

static void test_status(void) {
  cluda_status s = propagates(-3);
  TEST_CHECK(s.code == CLUDA_ERR_ARG, "code %d", s.code);
  TEST_CHECK(strstr(s.message, "test_core.c:") == s.message, "message lacks file: %s", s.message);
  TEST_CHECK(strstr(s.message, "value -3 must be positive") != NULL, "message: %s", s.message);
  TEST_CHECK(propagates(1).code == CLUDA_OK, "ok status");
}

static void test_tensor(void) {
  float data[24];
  cluda_tensor t = cluda_tensor_4d(CLUDA_F32, data, 1, 2, 3, 4);
  TEST_CHECK(cluda_tensor_numel(&t) == 24 && cluda_tensor_rows(&t) == 6 &&
                 cluda_tensor_cols(&t) == 4 && cluda_tensor_bytes(&t) == 96,
             "tensor helpers");
  char buf[64];
  TEST_CHECK(strcmp(cluda_tensor_describe(&t, buf, sizeof buf), "[1,2,3,4] f32") == 0, "%s", buf);
  TEST_FAILS(cluda_check_tensor("op", "w", &t, CLUDA_F32, 2), CLUDA_ERR_SHAPE, "op: w [1,2,3,4]");
  TEST_FAILS(cluda_check_tensor("op", "w", NULL, CLUDA_F32, 2), CLUDA_ERR_ARG, "w is NULL");
}

static void test_arena(void) {
  cluda_arena arena;
  TEST_OK(cluda_arena_create(&arena, 1000));
  void *a = NULL, *b = NULL;
  TEST_OK(cluda_arena_alloc(&arena, 10, "a", &a));
  size_t mark = cluda_arena_mark(&arena);
  TEST_OK(cluda_arena_alloc(&arena, 100, "b", &b));
  TEST_CHECK(((uintptr_t)a % CLUDA_ARENA_ALIGN) == 0 && ((uintptr_t)b % CLUDA_ARENA_ALIGN) == 0,
             "alignment");
  TEST_FAILS(cluda_arena_alloc(&arena, 5000, "im2col", &b), CLUDA_ERR_ALLOC, "im2col");
  cluda_arena_release(&arena, mark);
  TEST_CHECK(arena.used == mark && arena.peak >= 64 + 128, "mark/release/peak");
  cluda_arena_destroy(&arena);
}

int main(int argc, char **argv) {
  (void)argc;
  test_philox_known_answers();
  test_rng_streams();
  test_status();
  test_tensor();
  test_arena();
  return test_finish(argv[0]);
}

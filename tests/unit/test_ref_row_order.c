/* cl.ref_row_order (decisions.md 9, algorithm.md 6.3 "Row-ordering quirk"): the permutation
 * of the label/weight rows against a hand-built mapping, the identity for one image, and a
 * trainer step with the key on against off. */
#include <math.h>
#include <string.h>

#include "cluda/config.h"
#include "cluda/trainer.h"
#include "testing.h"

static void test_mapping_b2_n6(void) {
  /* Labels: image b, pixel k holds 10 b + k; weights 100 + the same. */
  enum { B = 2, N = 6, M = B * N };
  uint8_t lbl[M], out[M];
  float w[M], wout[M];
  for (int b = 0; b < B; b++)
    for (int k = 0; k < N; k++) {
      lbl[b * N + k] = (uint8_t)(10 * b + k);
      w[b * N + k] = (float)(100 + 10 * b + k);
    }
  cluda_ref_row_order_permute(B, N, lbl, out, w, wout);
  /* Image-0 feature k is reference row 2k, image-1 feature k row 2k + 1; reference label row r
   * is (image r / 6, pixel r % 6). k < 3: both from image 0 at pixels 2k, 2k + 1; k >= 3:
   * from image 1 at pixels 2k - 6, 2k - 5. */
  const uint8_t want[M] = {0, 2, 4, 10, 12, 14, /* image 0, features k = 0..5 */
                           1, 3, 5, 11, 13, 15 /* image 1 */};
  int same = 1;
  for (int i = 0; i < M; i++)
    same &= out[i] == want[i] && wout[i] == (float)(100 + want[i]);
  TEST_CHECK(same, "B = 2, N = 6: labels and weights follow algorithm.md 6.3");
  uint8_t again[M];
  cluda_ref_row_order_permute(B, N, lbl, again, NULL, NULL);
  TEST_CHECK(memcmp(again, want, M) == 0, "labels alone (weights NULL)");
}

static void test_identity_b1(void) {
  enum { N = 7 };
  uint8_t lbl[N], out[N];
  float w[N], wout[N];
  for (int k = 0; k < N; k++) {
    lbl[k] = (uint8_t)(3 * k + 1);
    w[k] = 0.5f * (float)k;
  }
  cluda_ref_row_order_permute(1, N, lbl, out, w, wout);
  TEST_CHECK(memcmp(lbl, out, N) == 0 && memcmp(w, wout, sizeof w) == 0, "B = 1: identity");
}

static const char *kTiny = "seed: 3\n"
                           "model: {encoder: tiny, embed_dims: 32, channels: 32}\n"
                           "train: {max_iters: 20, batch: 2, crop: [64, 64]}\n"
                           "optim: {warmup_iters: 2}\n"
                           "cl: {size: [12, 12]}\n"
                           "data: {size: [80, 96], train_images: 24, val_images: 4, "
                           "rcs_min_pixels: 4}\n";

static int one_step(const char *set, cluda_step_stats *st) {
  cluda_config cfg;
  if (!TEST_OK(cluda_config_init(&cfg))) return 0;
  int ok = TEST_OK(cluda_config_load_string(&cfg, kTiny, "tiny")) &&
           TEST_OK(cluda_config_set(&cfg, set));
  cluda_train_settings s;
  cluda_segmentor_config mc;
  cluda_trainer t;
  ok = ok && TEST_OK(cluda_train_settings_from_config(&cfg, &s)) &&
       TEST_OK(cluda_config_to_segmentor_config(&cfg, &mc));
  cluda_config_free(&cfg);
  if (ok && TEST_OK(cluda_trainer_init(&t, &s, &mc, NULL))) {
    ok = TEST_OK(cluda_trainer_step(&t, st));
    cluda_trainer_free(&t);
  } else {
    ok = 0;
  }
  return ok;
}

static void test_trainer_on_off(void) {
  cluda_step_stats off, on;
  if (!one_step("cl.ref_row_order=false", &off) || !one_step("cl.ref_row_order=true", &on)) return;
  TEST_CHECK(isfinite(on.loss_cl_src) && isfinite(on.loss_cl_mix) && on.loss_cl_src > 0,
             "key on: finite CL losses (src %g, mix %g)", on.loss_cl_src, on.loss_cl_mix);
  TEST_CHECK(on.loss_src == off.loss_src, "the CE term does not see the permutation (%g, %g)",
             on.loss_src, off.loss_src);
  TEST_CHECK(on.loss_cl_src != off.loss_cl_src,
             "source CL changes with the key (on %.9g, off %.9g)", on.loss_cl_src, off.loss_cl_src);
}

int main(void) {
  test_mapping_b2_n6();
  test_identity_b1();
  test_trainer_on_off();
  return test_finish("test_ref_row_order");
}

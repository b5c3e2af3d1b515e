/* The training pipeline and the prefetching loader (algorithm.md 4.3, 2.3): the resize against
 * OpenCV (tests/fixtures/loader_resize.h5, tools/make_loader_fixture.py), imrescale sizes of
 * the paper configurations, crop offsets and the cat_max_ratio rule on hand-built label maps,
 * flip, normalisation and padding values, the RCS re-crop rule, and the loader on a tiny GTA
 * tree on disk: samples equal the pipeline applied to the drawn image, identical for 0 and 3
 * workers and any prefetch depth, global slots, resume jumps, errors naming the file and
 * skip_bad. Expected crops come from the documented draw indices (loader.h) and the rules
 * worked out by hand here. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cluda/loader.h"
#include "fixture.h"
#include "testing.h"

static char temp_dir[128];

/* ---------------------------------------------------------------- helpers */

static int uniform_int(uint32_t word, int m) { return (int)(((uint64_t)word * (uint64_t)m) >> 32); }

/* The offset draw k of pipeline run r gives on an axis with margin + 1 choices. */
static int drawn_offset(cluda_rng_key key, int run, int k, int axis, int margin) {
  uint32_t w[4];
  cluda_rng_bits(key, (uint64_t)run * 256 + (uint64_t)k, w);
  return uniform_int(w[axis], margin + 1);
}

static int drawn_flip(cluda_rng_key key, int run) {
  return cluda_rng_uniform(key, (uint64_t)run * 256 + 255) < 0.5f;
}

static cluda_rng_key test_key(uint32_t i) {
  return cluda_rng_make_key(99, i, 7, CLUDA_RNG_DATA, 0);
}

/* Identity normalisation (outputs are the resized bytes), no resize, no flip, no check. */
static cluda_pipeline_config plain_config(int crop_h, int crop_w) {
  cluda_pipeline_config c;
  memset(&c, 0, sizeof c);
  c.crop_h = crop_h;
  c.crop_w = crop_w;
  c.cat_max_ratio = 1.0f;
  for (int i = 0; i < 3; i++)
    c.std[i] = 1.0f;
  return c;
}

static cluda_image view(int width, int height, int channels, uint8_t *pixels) {
  cluda_image img = {width, height, channels, pixels};
  return img;
}

/* An RGB image whose pixel (x, y) channel c is (7 x + 13 y + 61 c) mod 256. */
static void fill_pattern(cluda_image *img) {
  for (int y = 0; y < img->height; y++)
    for (int x = 0; x < img->width; x++)
      for (int c = 0; c < img->channels; c++)
        img->pixels[((size_t)y * img->width + x) * img->channels + c] =
            (uint8_t)((7 * x + 13 * y + 61 * c) % 256);
}

/* ---------------------------------------------------------------- resize vs cv2 */

static void check_resize_case(const fixture *f, const char *name) {
  char path[128];
  int scale_long, scale_short, out_w, out_h;
  if (!TEST_OK(fixture_attr_int(f, name, "scale_long", &scale_long)) ||
      !TEST_OK(fixture_attr_int(f, name, "scale_short", &scale_short)) ||
      !TEST_OK(fixture_attr_int(f, name, "out_w", &out_w)) ||
      !TEST_OK(fixture_attr_int(f, name, "out_h", &out_h)))
    return;
  cluda_tensor in = {0}, in_labels = {0}, want = {0}, want_labels = {0};
  snprintf(path, sizeof path, "%s/image_in", name);
  int ok = TEST_OK(fixture_read(f, path, CLUDA_U8, &in));
  snprintf(path, sizeof path, "%s/labels_in", name);
  ok = ok && TEST_OK(fixture_read(f, path, CLUDA_U8, &in_labels));
  snprintf(path, sizeof path, "%s/image_out", name);
  ok = ok && TEST_OK(fixture_read_shaped(f, path, CLUDA_U8, 3, (int[]){out_h, out_w, 3}, &want));
  snprintf(path, sizeof path, "%s/labels_out", name);
  ok =
      ok && TEST_OK(fixture_read_shaped(f, path, CLUDA_U8, 2, (int[]){out_h, out_w}, &want_labels));
  if (ok) {
    const int h = in.shape[0], w = in.shape[1];
    int got_w, got_h;
    TEST_OK(cluda_image_rescale_size(w, h, scale_long, scale_short, &got_w, &got_h));
    TEST_CHECK(got_w == out_w && got_h == out_h, "%s: imrescale %dx%d -> %dx%d, mmcv %dx%d", name,
               w, h, got_w, got_h, out_w, out_h);
    cluda_image rgb = view(w, h, 3, in.data), labels = view(w, h, 1, in_labels.data);
    const uint8_t *ref = want.data, *ref_labels = want_labels.data;

    /* The whole resized image: a crop of exactly its size. */
    cluda_pipeline_config cfg = plain_config(out_h, out_w);
    cfg.scale_long = scale_long;
    cfg.scale_short = scale_short;
    const size_t n = (size_t)out_w * out_h;
    float *image = test_alloc_f32((int64_t)n * 3);
    uint8_t *label_out = test_alloc(n);
    cluda_pipeline_record rec;
    if (TEST_OK(cluda_pipeline_apply(&cfg, &rgb, &labels, test_key(0), -1, 0, image, label_out,
                                     &rec))) {
      int worst = 0;
      size_t differ = 0;
      for (size_t i = 0; i < 3 * n; i++) {
        const int d = abs((int)image[i] - (int)ref[i]);
        differ += d != 0 || image[i] != floorf(image[i]);
        if (d > worst) worst = d;
      }
      TEST_CHECK(worst <= 1, "%s: image within 1 grey level of cv2 INTER_LINEAR (worst %d)", name,
                 worst);
      TEST_CHECK(differ == 0, "%s: image bit-exact to cv2 (%zu of %zu values differ)", name, differ,
                 3 * n);
      TEST_CHECK(memcmp(label_out, ref_labels, n) == 0, "%s: labels equal cv2 INTER_NEAREST", name);
      TEST_CHECK(rec.resized_w == out_w && rec.resized_h == out_h && rec.crop_x == 0 &&
                     rec.crop_y == 0,
                 "%s: record %dx%d at (%d, %d)", name, rec.resized_w, rec.resized_h, rec.crop_x,
                 rec.crop_y);
    }

    /* Small crops: only the window is resized, and it must be the same window of cv2's. */
    const int ch = out_h / 3 + 1, cw = out_w / 4 + 2;
    cfg.crop_h = ch;
    cfg.crop_w = cw;
    int windows_equal = 1;
    for (uint32_t k = 0; k < 12; k++) {
      if (!TEST_OK(cluda_pipeline_apply(&cfg, &rgb, &labels, test_key(k), -1, 0, image, label_out,
                                        &rec)))
        break;
      for (int y = 0; y < ch; y++)
        for (int x = 0; x < cw; x++) {
          const size_t at = (size_t)(rec.crop_y + y) * out_w + (size_t)(rec.crop_x + x);
          for (int c = 0; c < 3; c++)
            windows_equal &= image[((size_t)y * cw + x) * 3 + c] == (float)ref[at * 3 + c];
          windows_equal &= label_out[(size_t)y * cw + x] == ref_labels[at];
        }
    }
    TEST_CHECK(windows_equal, "%s: %dx%d crops equal the windows of cv2's full resize", name, cw,
               ch);
    free(image);
    free(label_out);
  }
  free(in.data);
  free(in_labels.data);
  free(want.data);
  free(want_labels.data);
}

static void test_resize_against_cv2(void) {
  fixture f;
  if (!TEST_OK(fixture_open("loader_resize", &f))) return;
  const char *cases[] = {"gta_like", "cityscapes_half", "upscale", "portrait", "hrda_up"};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
    check_resize_case(&f, cases[i]);
  fixture_close(&f);
}

/* ---------------------------------------------------------------- imrescale sizes */

static void test_imrescale_sizes(void) {
  /* algorithm.md 4.3: (image w, h, target long, short) -> (w, h). */
  const int cases[][6] = {
      {1914, 1052, 1280, 720, 1280, 704},   /* GTA, DAFormer */
      {2048, 1024, 1024, 512, 1024, 512},   /* Cityscapes, DAFormer */
      {1914, 1052, 2560, 1440, 2560, 1407}, /* GTA, HRDA */
      {2048, 1024, 2048, 1024, 2048, 1024}, /* Cityscapes, HRDA */
      {1280, 760, 1280, 760, 1280, 760},    /* SYNTHIA, DAFormer */
      {1280, 760, 2560, 1520, 2560, 1520},  /* SYNTHIA, HRDA */
      {1914, 1046, 1280, 720, 1280, 700},   /* a short GTA frame: 1046 * 1280 / 1914 = 699.52 */
      {1052, 1914, 1280, 720, 704, 1280},   /* portrait: the long side takes the long target */
  };
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const int *c = cases[i];
    int w, h, w2, h2;
    TEST_OK(cluda_image_rescale_size(c[0], c[1], c[2], c[3], &w, &h));
    TEST_OK(cluda_image_rescale_size(c[0], c[1], c[3], c[2], &w2, &h2));
    TEST_CHECK(w == c[4] && h == c[5], "%dx%d at (%d, %d) -> %dx%d, want %dx%d", c[0], c[1], c[2],
               c[3], w, h, c[4], c[5]);
    TEST_CHECK(w2 == w && h2 == h, "the order of the scale pair does not matter");
  }
  /* Through the pipeline on a full-size GTA frame. */
  cluda_image rgb, labels;
  if (TEST_OK(cluda_image_create(&rgb, 1914, 1052, 3)) &&
      TEST_OK(cluda_image_create(&labels, 1914, 1052, 1))) {
    cluda_pipeline_config cfg = plain_config(512, 512);
    cfg.scale_long = 1280;
    cfg.scale_short = 720;
    float *image = test_alloc_f32(512 * 512 * 3);
    uint8_t *out = test_alloc(512 * 512);
    cluda_pipeline_record rec;
    if (TEST_OK(cluda_pipeline_apply(&cfg, &rgb, &labels, test_key(1), -1, 0, image, out, &rec)))
      TEST_CHECK(rec.resized_w == 1280 && rec.resized_h == 704 && rec.crop_y <= 704 - 512 &&
                     rec.crop_x <= 1280 - 512,
                 "GTA frame resized to %dx%d, crop at (%d, %d)", rec.resized_w, rec.resized_h,
                 rec.crop_x, rec.crop_y);
    free(image);
    free(out);
  }
  cluda_image_free(&rgb);
  cluda_image_free(&labels);
}

/* ---------------------------------------------------------------- crop */

static void test_crop_offsets(void) {
  enum { W = 40, H = 30, CH = 16, CW = 12, KEYS = 3000 };
  cluda_image rgb, labels;
  if (!TEST_OK(cluda_image_create(&rgb, W, H, 3)) || !TEST_OK(cluda_image_create(&labels, W, H, 1)))
    return;
  fill_pattern(&rgb);
  for (int i = 0; i < W * H; i++)
    labels.pixels[i] = (uint8_t)(i % 19);
  cluda_pipeline_config cfg = plain_config(CH, CW);
  float image[CH * CW * 3];
  uint8_t out[CH * CW];
  int seen_y[H - CH + 1] = {0}, seen_x[W - CW + 1] = {0}, in_range = 1, content = 1, draws = 1;
  for (uint32_t k = 0; k < KEYS; k++) {
    cluda_pipeline_record rec;
    if (!TEST_OK(cluda_pipeline_apply(&cfg, &rgb, &labels, test_key(k), -1, 0, image, out, &rec)))
      break;
    in_range &= rec.crop_y >= 0 && rec.crop_y <= H - CH && rec.crop_x >= 0 && rec.crop_x <= W - CW;
    if (!in_range) break;
    seen_y[rec.crop_y]++;
    seen_x[rec.crop_x]++;
    draws &= rec.crop_y == drawn_offset(test_key(k), 0, 0, 0, H - CH) &&
             rec.crop_x == drawn_offset(test_key(k), 0, 0, 1, W - CW) && rec.crop_tries == 1 &&
             rec.runs == 1 && rec.rare_pixels == -1 && !rec.flipped;
    for (int y = 0; y < CH; y++)
      for (int x = 0; x < CW; x++) {
        const size_t at = (size_t)(rec.crop_y + y) * W + (size_t)(rec.crop_x + x);
        for (int c = 0; c < 3; c++)
          content &= image[(y * CW + x) * 3 + c] == (float)rgb.pixels[at * 3 + c];
        content &= out[y * CW + x] == labels.pixels[at];
      }
  }
  TEST_CHECK(in_range, "crop offsets within [0, H - crop] x [0, W - crop]");
  TEST_CHECK(draws, "offsets are draw 0 (word 0: y, word 1: x), one try, no RCS, no flip");
  TEST_CHECK(content, "the crop holds the image window at its offset");
  /* randint(0, margin + 1) includes both ends; each value expected KEYS / 15 or / 29 times. */
  int every_y = 1, every_x = 1;
  for (int v = 0; v <= H - CH; v++)
    every_y &= seen_y[v] > KEYS / (H - CH + 1) / 2 && seen_y[v] < 2 * KEYS / (H - CH + 1);
  for (int v = 0; v <= W - CW; v++)
    every_x &= seen_x[v] > KEYS / (W - CW + 1) / 2 && seen_x[v] < 2 * KEYS / (W - CW + 1);
  TEST_CHECK(every_y && every_x, "every offset 0..margin is drawn about equally often");
  /* A target scale that keeps the size (Cityscapes at HRDA's (2048, 1024)) changes nothing. */
  float same_size[CH * CW * 3];
  cluda_pipeline_config rescaled = cfg;
  rescaled.scale_long = W;
  rescaled.scale_short = H;
  if (TEST_OK(cluda_pipeline_apply(&cfg, &rgb, &labels, test_key(3), -1, 0, image, out, NULL)) &&
      TEST_OK(
          cluda_pipeline_apply(&rescaled, &rgb, &labels, test_key(3), -1, 0, same_size, out, NULL)))
    TEST_CHECK(memcmp(image, same_size, sizeof image) == 0, "imrescale to the same size is a copy");
  cluda_image_free(&rgb);
  cluda_image_free(&labels);
}

/* Rows 0..32: [0 0 0 1 255] (class 0 is 3/4 of the labelled pixels: not < 0.75, and 3/5 if
 * the ignore column were counted); rows 33..39: [0 0 1 1 255]. A 4 x 5 crop at row y passes
 * the cat_max_ratio test iff it reaches row 33: (12 - rows_from_33) / 16 < 0.75, i.e.
 * y >= 30 (7 of the 37 offsets, so all 10 checks fail for about 1 key in 8). */
static void test_cat_max_ratio(void) {
  enum { W = 5, H = 40, CH = 4, PASS_FROM = 30, KEYS = 400 };
  cluda_image rgb, labels;
  if (!TEST_OK(cluda_image_create(&rgb, W, H, 3)) || !TEST_OK(cluda_image_create(&labels, W, H, 1)))
    return;
  fill_pattern(&rgb);
  for (int y = 0; y < H; y++) {
    const uint8_t row[2][W] = {{0, 0, 0, 1, 255}, {0, 0, 1, 1, 255}};
    memcpy(labels.pixels + y * W, row[y >= 33], W);
  }
  cluda_pipeline_config cfg = plain_config(CH, W);
  cfg.cat_max_ratio = 0.75f;
  float image[CH * W * 3];
  uint8_t out[CH * W];
  int rule = 1, all_fail_seen = 0, first_pass_seen = 0, retry_seen = 0;
  for (uint32_t k = 0; k < KEYS && rule; k++) {
    const cluda_rng_key key = test_key(k);
    int want_try = CLUDA_CROP_MAX_DRAWS - 1; /* all 10 checks fail: the 11th draw is used */
    for (int t = 0; t < CLUDA_CROP_MAX_DRAWS - 1; t++)
      if (drawn_offset(key, 0, t, 0, H - CH) >= PASS_FROM) {
        want_try = t;
        break;
      }
    cluda_pipeline_record rec;
    if (!TEST_OK(cluda_pipeline_apply(&cfg, &rgb, &labels, key, -1, 0, image, out, &rec))) break;
    rule = rec.crop_y == drawn_offset(key, 0, want_try, 0, H - CH) &&
           rec.crop_tries == want_try + 1 && rec.crop_x == 0;
    if (!rule)
      printf("  key %u: crop y %d after %d tries, want draw %d (y %d)\n", k, rec.crop_y,
             rec.crop_tries, want_try, drawn_offset(key, 0, want_try, 0, H - CH));
    all_fail_seen |= want_try == CLUDA_CROP_MAX_DRAWS - 1 &&
                     drawn_offset(key, 0, want_try, 0, H - CH) < PASS_FROM;
    first_pass_seen |= want_try == 0;
    retry_seen |= want_try > 0 && want_try < CLUDA_CROP_MAX_DRAWS - 1;
  }
  TEST_CHECK(rule, "the crop is the first of 10 draws passing cat_max_ratio, else the 11th");
  TEST_CHECK(first_pass_seen && retry_seen && all_fail_seen,
             "the keys cover a first-try pass, a retry and 10 failures (%d %d %d)", first_pass_seen,
             retry_seen, all_fail_seen);

  /* One class plus ignore never passes (more than one class is needed): 11 draws. */
  memset(labels.pixels, 2, W * H);
  for (int y = 0; y < H; y++)
    labels.pixels[y * W + 4] = 255;
  cluda_pipeline_record rec;
  if (TEST_OK(cluda_pipeline_apply(&cfg, &rgb, &labels, test_key(5), -1, 0, image, out, &rec)))
    TEST_CHECK(rec.crop_tries == CLUDA_CROP_MAX_DRAWS &&
                   rec.crop_y == drawn_offset(test_key(5), 0, 10, 0, H - CH),
               "a single class never passes: %d draws, the last kept", rec.crop_tries);
  /* cat_max_ratio >= 1 disables the test. */
  cfg.cat_max_ratio = 1.0f;
  if (TEST_OK(cluda_pipeline_apply(&cfg, &rgb, &labels, test_key(5), -1, 0, image, out, &rec)))
    TEST_CHECK(rec.crop_tries == 1 && rec.crop_y == drawn_offset(test_key(5), 0, 0, 0, H - CH),
               "cat_max_ratio 1: one draw");
  cluda_image_free(&rgb);
  cluda_image_free(&labels);
}

/* ---------------------------------------------------------------- flip, normalise, pad */

static void test_flip(void) {
  enum { W = 9, H = 4, KEYS = 2000 };
  cluda_image rgb, labels;
  if (!TEST_OK(cluda_image_create(&rgb, W, H, 3)) || !TEST_OK(cluda_image_create(&labels, W, H, 1)))
    return;
  fill_pattern(&rgb);
  for (int i = 0; i < W * H; i++)
    labels.pixels[i] = (uint8_t)(i % W);
  cluda_pipeline_config cfg = plain_config(H, W);
  cfg.flip = 1;
  float image[W * H * 3];
  uint8_t out[W * H];
  int flips = 0, mirrored = 1, drawn = 1;
  for (uint32_t k = 0; k < KEYS; k++) {
    cluda_pipeline_record rec;
    if (!TEST_OK(cluda_pipeline_apply(&cfg, &rgb, &labels, test_key(k), -1, 0, image, out, &rec)))
      break;
    flips += rec.flipped;
    drawn &= rec.flipped == drawn_flip(test_key(k), 0);
    for (int y = 0; y < H; y++)
      for (int x = 0; x < W; x++) {
        const int from = rec.flipped ? W - 1 - x : x;
        for (int c = 0; c < 3; c++)
          mirrored &= image[(y * W + x) * 3 + c] == (float)rgb.pixels[(y * W + from) * 3 + c];
        mirrored &= out[y * W + x] == labels.pixels[y * W + from];
      }
  }
  TEST_CHECK(mirrored, "flipped samples mirror image and labels left-right, others do not");
  TEST_CHECK(drawn, "the flip is draw 255 of the run");
  /* p = 0.5: 2000 coins land within 4.5 standard deviations (22) of 1000. */
  TEST_CHECK(abs(flips - KEYS / 2) < 100, "%d of %d flipped", flips, KEYS);
  cluda_image_free(&rgb);
  cluda_image_free(&labels);
}

/* A 10 x 6 image, crop 8 x 12 (h x w): the crop is the image, padded by 2 rows and 2 columns
 * after the flip; normalisation is (v - mean) / std, padding image 0 and label 255. */
static void test_normalise_and_pad(void) {
  enum { W = 10, H = 6, CH = 8, CW = 12 };
  cluda_image rgb, labels;
  if (!TEST_OK(cluda_image_create(&rgb, W, H, 3)) || !TEST_OK(cluda_image_create(&labels, W, H, 1)))
    return;
  fill_pattern(&rgb);
  rgb.pixels[0] = 0;
  rgb.pixels[1] = 255;
  for (int i = 0; i < W * H; i++)
    labels.pixels[i] = (uint8_t)(i % 7);
  cluda_pipeline_config cfg = plain_config(CH, CW);
  cfg.flip = 1;
  for (int c = 0; c < 3; c++) {
    cfg.mean[c] = cluda_image_mean[c];
    cfg.std[c] = cluda_image_std[c];
  }
  const double mean[3] = {123.675, 116.28, 103.53}, std[3] = {58.395, 57.12, 57.375};
  float image[CH * CW * 3];
  uint8_t out[CH * CW];
  int seen[2] = {0, 0};
  for (uint32_t k = 0; k < 16; k++) {
    cluda_pipeline_record rec;
    if (!TEST_OK(cluda_pipeline_apply(&cfg, &rgb, &labels, test_key(k), -1, 0, image, out, &rec)))
      break;
    seen[rec.flipped] = 1;
    double worst = 0;
    int pad_ok = 1, labels_ok = 1;
    for (int y = 0; y < CH; y++)
      for (int x = 0; x < CW; x++) {
        const float *px = image + (y * CW + x) * 3;
        if (y >= H || x >= W) {
          pad_ok &= px[0] == 0.0f && px[1] == 0.0f && px[2] == 0.0f && out[y * CW + x] == 255;
          continue;
        }
        const int from = rec.flipped ? W - 1 - x : x;
        for (int c = 0; c < 3; c++) {
          const double want = (rgb.pixels[(y * W + from) * 3 + c] - mean[c]) / std[c];
          worst = fmax(worst, fabs(px[c] - want));
        }
        labels_ok &= out[y * CW + x] == labels.pixels[y * W + from];
      }
    TEST_CHECK(rec.crop_x == 0 && rec.crop_y == 0, "a crop larger than the image starts at 0");
    TEST_CHECK(worst < 1e-6, "normalised values (v - mean) / std, worst error %g", worst);
    TEST_CHECK(pad_ok, "padding after the flip: image 0 (after normalisation), label 255");
    TEST_CHECK(labels_ok, "labels inside the padded sample");
  }
  TEST_CHECK(seen[0] && seen[1], "both flipped and unflipped samples were padded");
  cluda_image_free(&rgb);
  cluda_image_free(&labels);
}

/* ---------------------------------------------------------------- RCS re-crop */

/* A 4 x 40 map: rows 30..39 hold the rare class 5 (4 pixels per row), rows 0..29 alternate
 * classes 0 and 1. A 4 x 4 crop at row y holds 4 * (min(y + 4, 40) - max(y, 30)) rare pixels
 * when positive: 12 at y = 29, 16 from y = 30 on; more than 12 (the threshold; 12 itself must
 * fail) exactly when y >= 30. */
static void test_rcs_recrop(void) {
  enum { W = 4, H = 40, CH = 4, RARE = 5, PASS_FROM = 30, KEYS = 300 };
  cluda_image rgb, labels;
  if (!TEST_OK(cluda_image_create(&rgb, W, H, 3)) || !TEST_OK(cluda_image_create(&labels, W, H, 1)))
    return;
  fill_pattern(&rgb);
  for (int i = 0; i < W * H; i++)
    labels.pixels[i] = i >= 30 * W ? RARE : (uint8_t)(i % 2);
  cluda_pipeline_config cfg = plain_config(CH, W);
  cfg.flip = 1;
  float image[CH * W * 3];
  uint8_t out[CH * W];
  int rule = 1, first = 0, later = 0, none = 0;
  for (uint32_t k = 0; k < KEYS && rule; k++) {
    const cluda_rng_key key = test_key(k);
    int want_run = CLUDA_RCS_MAX_RUNS - 1;
    for (int r = 0; r < CLUDA_RCS_MAX_RUNS - 1; r++)
      if (drawn_offset(key, r, 0, 0, H - CH) >= PASS_FROM) {
        want_run = r;
        break;
      }
    const int y = drawn_offset(key, want_run, 0, 0, H - CH);
    const int overlap = (y + CH < H ? y + CH : H) - (y > 30 ? y : 30);
    const int64_t want_rare = overlap > 0 ? (int64_t)W * overlap : 0;
    cluda_pipeline_record rec;
    if (!TEST_OK(cluda_pipeline_apply(&cfg, &rgb, &labels, key, RARE, 12.0, image, out, &rec)))
      break;
    int64_t in_output = 0;
    for (int i = 0; i < CH * W; i++)
      in_output += out[i] == RARE;
    rule = rec.runs == want_run + 1 && rec.crop_y == y && rec.rare_pixels == want_rare &&
           in_output == want_rare && rec.flipped == drawn_flip(key, want_run) &&
           rec.crop_tries == want_run + 1;
    if (!rule)
      printf("  key %u: runs %d y %d rare %lld flip %d; want runs %d y %d rare %lld\n", k, rec.runs,
             rec.crop_y, (long long)rec.rare_pixels, rec.flipped, want_run + 1, y,
             (long long)want_rare);
    first |= want_run == 0;
    later |= want_run > 0 && want_run < CLUDA_RCS_MAX_RUNS - 1;
    none |= want_run == CLUDA_RCS_MAX_RUNS - 1 && y < PASS_FROM;
  }
  TEST_CHECK(rule, "RCS keeps the first of 10 checked runs with > 12 rare pixels, else run 11; "
                   "each run redraws crop and flip");
  TEST_CHECK(first && later && none, "keys cover a first-run pass, a re-crop and 10 failures");
  cluda_image_free(&rgb);
  cluda_image_free(&labels);
}

static void test_bad_arguments(void) {
  uint8_t px[4 * 3 * 3] = {0}, lab[4 * 2] = {0};
  cluda_image rgb = view(4, 3, 3, px), labels = view(4, 2, 1, lab);
  cluda_pipeline_config cfg = plain_config(2, 2);
  float image[2 * 2 * 3];
  uint8_t out[4];
  TEST_FAILS(cluda_pipeline_apply(&cfg, &rgb, &labels, test_key(0), -1, 0, image, out, NULL),
             CLUDA_ERR_SHAPE, "4x3 and labels 4x2");
  labels.height = 3;
  cfg.std[1] = 0.0f;
  TEST_FAILS(cluda_pipeline_apply(&cfg, &rgb, &labels, test_key(0), -1, 0, image, out, NULL),
             CLUDA_ERR_ARG, "std[1]");
}

/* ---------------------------------------------------------------- the loader on disk */

enum { DS_W = 64, DS_H = 40, DS_ITEMS = 6 };

static void item_path(char *out, size_t size, const char *root, const char *dir, int i,
                      const char *suffix) {
  snprintf(out, size, "%s/%s/%05d%s.png", root, dir, i, suffix);
}

/* A GTA tree (images/NNNNN.png, labels/NNNNN_labelTrainIds.png) of DS_ITEMS 64 x 40 frames:
 * blocks of classes 0..18 (so crops pass cat_max_ratio), per-image colours. */
static int make_dataset(const char *root) {
  char path[512];
  snprintf(path, sizeof path, "%s/images", root);
  int ok = mkdir(root, 0755) == 0 && mkdir(path, 0755) == 0;
  snprintf(path, sizeof path, "%s/labels", root);
  ok = ok && mkdir(path, 0755) == 0;
  if (!TEST_CHECK(ok, "create %s", root)) return 0;
  cluda_image rgb, labels;
  if (!TEST_OK(cluda_image_create(&rgb, DS_W, DS_H, 3)) ||
      !TEST_OK(cluda_image_create(&labels, DS_W, DS_H, 1)))
    return 0;
  const cluda_rng_key key = cluda_rng_make_key(5, 0, 0, CLUDA_RNG_TEST, 0);
  for (int i = 0; i < DS_ITEMS && ok; i++) {
    for (int p = 0; p < DS_W * DS_H; p++) {
      const int x = p % DS_W, y = p / DS_W;
      for (int c = 0; c < 3; c++)
        rgb.pixels[3 * p + c] = (uint8_t)(40 * i + 3 * x + 5 * y + 90 * c +
                                          (int)(20 * cluda_rng_uniform(key, (uint64_t)p * 3 + c)));
      const int block = (x / 9 + 3 * (y / 7) + i) % 20;
      labels.pixels[p] = block == 19 ? 255 : (uint8_t)block;
    }
    item_path(path, sizeof path, root, "images", i, "");
    ok = TEST_OK(cluda_png_write(path, &rgb));
    item_path(path, sizeof path, root, "labels", i, "_labelTrainIds");
    ok = ok && TEST_OK(cluda_png_write(path, &labels));
  }
  cluda_image_free(&rgb);
  cluda_image_free(&labels);
  return ok;
}

static void remove_tree(const char *dir) {
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", dir);
}

static cluda_loader_config loader_config(const cluda_dataset *ds, int workers, int prefetch) {
  cluda_loader_config c;
  memset(&c, 0, sizeof c);
  c.dataset = ds;
  c.pipeline.scale_long = 48; /* 64 x 40 -> 48 x 30 */
  c.pipeline.scale_short = 36;
  c.pipeline.crop_h = 24;
  c.pipeline.crop_w = 24;
  c.pipeline.cat_max_ratio = 0.75f;
  c.pipeline.flip = 1;
  for (int i = 0; i < 3; i++) {
    c.pipeline.mean[i] = cluda_image_mean[i];
    c.pipeline.std[i] = cluda_image_std[i];
  }
  c.seed = 2024;
  c.domain = 0;
  c.first_slot = 0;
  c.slots = 2;
  c.workers = workers;
  c.prefetch = prefetch;
  return c;
}

typedef struct batch {
  float *images;
  uint8_t *labels;
  size_t image_values, label_values; /* whole batch */
} batch;

static batch batch_alloc(const cluda_loader_config *c) {
  batch b;
  b.label_values = (size_t)c->slots * c->pipeline.crop_h * c->pipeline.crop_w;
  b.image_values = 3 * b.label_values;
  b.images = test_alloc_f32((int64_t)b.image_values);
  b.labels = test_alloc(b.label_values);
  return b;
}

static void batch_free(batch *b) {
  free(b->images);
  free(b->labels);
}

static int batch_equal(const batch *a, const batch *b) {
  return memcmp(a->images, b->images, a->image_values * sizeof *a->images) == 0 &&
         memcmp(a->labels, b->labels, a->label_values) == 0;
}

enum { ITERATIONS = 8 };

/* Iterations 0..ITERATIONS-1 of a loader. */
static int load_all(const cluda_loader_config *c, batch out[ITERATIONS]) {
  cluda_loader *l = NULL;
  if (!TEST_OK(cluda_loader_create(&l, c))) return 0;
  int ok = 1;
  for (int it = 0; it < ITERATIONS && ok; it++) {
    out[it] = batch_alloc(c);
    ok = TEST_OK(cluda_loader_get(l, it, out[it].images, out[it].labels));
  }
  cluda_loader_destroy(l);
  return ok;
}

/* The sample of (iteration, global slot) recomputed from the documented draws. */
static int expected_sample(const cluda_dataset *ds, const cluda_loader_config *c, int64_t it,
                           int slot, float *image, uint8_t *labels) {
  const cluda_rng_key key =
      cluda_rng_make_key(c->seed, (uint32_t)slot, (uint32_t)it, CLUDA_RNG_DATA, c->domain);
  uint32_t w[4];
  cluda_rng_bits(key, (uint64_t)1 << 20, w);
  const int index = uniform_int(w[0], ds->count);
  cluda_image rgb = {0}, lab = {0};
  int ok = TEST_OK(cluda_dataset_read_image(ds, index, &rgb)) &&
           TEST_OK(cluda_dataset_read_labels(ds, index, &lab)) &&
           TEST_OK(cluda_pipeline_apply(&c->pipeline, &rgb, &lab, key, -1, 0, image, labels, NULL));
  cluda_image_free(&rgb);
  cluda_image_free(&lab);
  return ok;
}

static void test_loader_determinism(const cluda_dataset *ds) {
  batch base[ITERATIONS], other[ITERATIONS];
  const cluda_loader_config c0 = loader_config(ds, 0, 0);
  if (!load_all(&c0, base)) return;

  /* Each sample is the pipeline applied to the image its key draws. */
  float *image = test_alloc_f32(24 * 24 * 3);
  uint8_t *labels = test_alloc(24 * 24);
  int same = 1;
  for (int it = 0; it < ITERATIONS; it++)
    for (int s = 0; s < 2; s++) {
      if (!expected_sample(ds, &c0, it, s, image, labels)) break;
      same &= memcmp(image, base[it].images + (size_t)s * 24 * 24 * 3,
                     sizeof(float) * 24 * 24 * 3) == 0 &&
              memcmp(labels, base[it].labels + (size_t)s * 24 * 24, 24 * 24) == 0;
    }
  TEST_CHECK(same, "loader samples = pipeline(image drawn at 2^20, key (seed, slot, it, data, "
                   "domain))");
  free(image);
  free(labels);

  const int setups[][2] = {{3, 2}, {1, 1}, {2, 5}};
  for (size_t k = 0; k < sizeof setups / sizeof *setups; k++) {
    const cluda_loader_config c = loader_config(ds, setups[k][0], setups[k][1]);
    if (!load_all(&c, other)) continue;
    int equal = 1;
    for (int it = 0; it < ITERATIONS; it++) {
      equal &= batch_equal(&base[it], &other[it]);
      batch_free(&other[it]);
    }
    TEST_CHECK(equal, "%d workers, prefetch %d: byte-identical to 0 workers", setups[k][0],
               setups[k][1]);
  }

  /* Global slots: slots 1..2 of a 3-slot loader are slots 1..2 wherever they are loaded. */
  cluda_loader_config wide = loader_config(ds, 2, 2), part = loader_config(ds, 0, 0);
  wide.slots = 3;
  part.first_slot = 1;
  batch bw = batch_alloc(&wide), bp = batch_alloc(&part);
  cluda_loader *lw = NULL, *lp = NULL;
  if (TEST_OK(cluda_loader_create(&lw, &wide)) && TEST_OK(cluda_loader_create(&lp, &part)) &&
      TEST_OK(cluda_loader_get(lw, 3, bw.images, bw.labels)) &&
      TEST_OK(cluda_loader_get(lp, 3, bp.images, bp.labels)))
    TEST_CHECK(memcmp(bw.images + bw.image_values / 3, bp.images,
                      bp.image_values * sizeof *bp.images) == 0 &&
                   memcmp(bw.labels + bw.label_values / 3, bp.labels, bp.label_values) == 0,
               "a sample depends on its global slot only, not on the loader's first slot");
  cluda_loader_destroy(lw);
  cluda_loader_destroy(lp);
  batch_free(&bw);
  batch_free(&bp);

  /* The other domain draws other samples. */
  cluda_loader_config target = loader_config(ds, 0, 0);
  target.domain = 1;
  if (load_all(&target, other)) {
    int differ = 0;
    for (int it = 0; it < ITERATIONS; it++) {
      differ += !batch_equal(&base[it], &other[it]);
      batch_free(&other[it]);
    }
    TEST_CHECK(differ == ITERATIONS, "domain 1 differs from domain 0 in every iteration");
  }

  /* Resume: any order of iterations gives the same batches. */
  const int order[] = {0, 1, 6, 7, 2, 2, 5, 3, 4, 0};
  for (int workers = 0; workers <= 2; workers += 2) {
    cluda_loader_config c = loader_config(ds, workers, 3);
    cluda_loader *l = NULL;
    batch b = batch_alloc(&c);
    int equal = 1;
    if (TEST_OK(cluda_loader_create(&l, &c)))
      for (size_t i = 0; i < sizeof order / sizeof *order; i++)
        equal &= TEST_OK(cluda_loader_get(l, order[i], b.images, b.labels)) &&
                 batch_equal(&b, &base[order[i]]);
    TEST_CHECK(equal, "%d workers: jumps 1 -> 6, 7 -> 2, 2 -> 2, 5 -> 3, 4 -> 0 match", workers);
    cluda_loader_destroy(l);
    c.first_iteration = 5;
    if (TEST_OK(cluda_loader_create(&l, &c)))
      TEST_CHECK(TEST_OK(cluda_loader_get(l, 5, b.images, b.labels)) && batch_equal(&b, &base[5]),
                 "%d workers: first_iteration 5 then get(5)", workers);
    cluda_loader_destroy(l);
    batch_free(&b);
  }
  for (int it = 0; it < ITERATIONS; it++)
    batch_free(&base[it]);

  /* Destroy with workers mid-way (no get, and right after a jump): must not hang or leak. */
  cluda_loader_config c = loader_config(ds, 3, 4);
  cluda_loader *l = NULL;
  if (TEST_OK(cluda_loader_create(&l, &c))) cluda_loader_destroy(l);
  if (TEST_OK(cluda_loader_create(&l, &c))) {
    batch b = batch_alloc(&c);
    TEST_OK(cluda_loader_get(l, 100, b.images, b.labels));
    cluda_loader_destroy(l);
    batch_free(&b);
  }
}

static void test_loader_rcs(const cluda_dataset *ds) {
  enum { CLASSES = 19 };
  /* Per-image class counts from the label files, as sample_class_stats.json would hold. */
  int64_t stats[DS_ITEMS * CLASSES] = {0};
  for (int i = 0; i < DS_ITEMS; i++) {
    cluda_image lab = {0};
    if (!TEST_OK(cluda_dataset_read_labels(ds, i, &lab))) return;
    for (int p = 0; p < lab.width * lab.height; p++)
      if (lab.pixels[p] < CLASSES) stats[i * CLASSES + lab.pixels[p]]++;
    cluda_image_free(&lab);
  }
  cluda_rcs rcs;
  if (!TEST_OK(cluda_rcs_init(&rcs, stats, DS_ITEMS, CLASSES, 0.01, 40))) return;
  cluda_loader_config c = loader_config(ds, 2, 2);
  c.rcs = &rcs;
  c.rcs_min_crop_ratio = 0.5;
  cluda_loader *l = NULL;
  batch b = batch_alloc(&c);
  float *image = test_alloc_f32(24 * 24 * 3);
  uint8_t *labels = test_alloc(24 * 24);
  int same = 1;
  if (TEST_OK(cluda_loader_create(&l, &c)))
    for (int it = 0; it < 4 && same; it++) {
      if (!TEST_OK(cluda_loader_get(l, it, b.images, b.labels))) break;
      for (int s = 0; s < 2; s++) {
        const cluda_rng_key key =
            cluda_rng_make_key(c.seed, (uint32_t)s, (uint32_t)it, CLUDA_RNG_DATA, c.domain);
        int cls, index;
        cluda_image rgb = {0}, lab = {0};
        same &=
            TEST_OK(cluda_rcs_sample(&rcs, key, (uint64_t)1 << 20, &cls, &index)) &&
            TEST_OK(cluda_dataset_read_image(ds, index, &rgb)) &&
            TEST_OK(cluda_dataset_read_labels(ds, index, &lab)) &&
            TEST_OK(cluda_pipeline_apply(&c.pipeline, &rgb, &lab, key, cls, 40 * 0.5, image, labels,
                                         NULL)) &&
            memcmp(image, b.images + (size_t)s * 24 * 24 * 3, sizeof(float) * 24 * 24 * 3) == 0 &&
            memcmp(labels, b.labels + (size_t)s * 24 * 24, 24 * 24) == 0;
        cluda_image_free(&rgb);
        cluda_image_free(&lab);
      }
    }
  TEST_CHECK(same, "RCS loader samples = pipeline(rcs_sample image, its class, min_pixels x "
                   "ratio)");
  cluda_loader_destroy(l);
  batch_free(&b);
  free(image);
  free(labels);
  cluda_rcs_free(&rcs);
}

/* A bad item: images/00002.png is not a PNG; 00004's labels have the wrong size. */
static void test_loader_errors(const char *root) {
  char bad_png[512], bad_labels[512];
  item_path(bad_png, sizeof bad_png, root, "images", 2, "");
  item_path(bad_labels, sizeof bad_labels, root, "labels", 4, "_labelTrainIds");
  FILE *f = fopen(bad_png, "wb");
  if (!TEST_CHECK(f != NULL, "overwrite %s", bad_png)) return;
  fputs("this is not a PNG file", f);
  fclose(f);
  cluda_image small;
  if (!TEST_OK(cluda_image_create(&small, DS_W, DS_H - 1, 1)) ||
      !TEST_OK(cluda_png_write(bad_labels, &small)))
    return;
  cluda_image_free(&small);
  cluda_dataset ds;
  if (!TEST_OK(cluda_dataset_open(&ds, CLUDA_DATASET_GTA, root, NULL))) return;

  /* Which draws hit a bad item, from the documented draw indices. */
  enum { RUN = 12 };
  int first_bad_it = -1, first_bad_slot = -1, first_bad_item = -1;
  int64_t want_skips = 0;
  for (int it = 0; it < RUN; it++)
    for (int s = 0; s < 2; s++) {
      const cluda_rng_key key =
          cluda_rng_make_key(2024, (uint32_t)s, (uint32_t)it, CLUDA_RNG_DATA, 0);
      for (int a = 0;; a++) {
        uint32_t w[4];
        cluda_rng_bits(key, ((uint64_t)1 << 20) + (uint64_t)a, w);
        const int index = uniform_int(w[0], ds.count);
        if (index != 2 && index != 4) break;
        want_skips++;
        if (first_bad_it < 0) first_bad_it = it, first_bad_slot = s, first_bad_item = index;
      }
    }
  if (!TEST_CHECK(first_bad_it >= 0 && want_skips >= 2, "the run hits bad items (%lld)",
                  (long long)want_skips)) {
    cluda_dataset_free(&ds);
    return;
  }

  batch skip_ref[RUN];
  int refs = 0;
  for (int workers = 0; workers <= 3; workers += 3) {
    /* Without skip_bad: the first bad iteration fails naming the file; the others load. */
    cluda_loader_config c = loader_config(&ds, workers, 2);
    cluda_loader *l = NULL;
    batch b = batch_alloc(&c);
    if (TEST_OK(cluda_loader_create(&l, &c))) {
      for (int it = 0; it < first_bad_it; it++)
        TEST_OK(cluda_loader_get(l, it, b.images, b.labels));
      cluda_status s = cluda_loader_get(l, first_bad_it, b.images, b.labels);
      if (first_bad_item == 2)
        TEST_FAILS(s, CLUDA_ERR_IO, "00002.png");
      else
        TEST_FAILS(s, CLUDA_ERR_SHAPE, "00004_labelTrainIds.png");
      printf("  (iteration %d slot %d, %d workers)\n", first_bad_it, first_bad_slot, workers);
      TEST_FAILS(cluda_loader_get(l, first_bad_it, b.images, b.labels), s.code, "0000");
    }
    cluda_loader_destroy(l);

    /* With skip_bad: warnings, replacements, a deterministic count, and for 3 workers the
     * batches of 0 workers. */
    c.skip_bad = 1;
    int ok = TEST_OK(cluda_loader_create(&l, &c));
    for (int it = 0; it < RUN && ok; it++) {
      ok = TEST_OK(cluda_loader_get(l, it, b.images, b.labels));
      if (workers == 0) {
        skip_ref[it] = batch_alloc(&c);
        memcpy(skip_ref[it].images, b.images, b.image_values * sizeof *b.images);
        memcpy(skip_ref[it].labels, b.labels, b.label_values);
        refs = it + 1;
      } else {
        ok = ok && TEST_CHECK(it < refs && batch_equal(&b, &skip_ref[it]),
                              "skip_bad, iteration %d: 3 workers give the batch of 0 workers", it);
      }
    }
    if (ok)
      TEST_CHECK(cluda_loader_skipped(l) == want_skips, "%d workers: %lld skipped, want %lld",
                 workers, (long long)cluda_loader_skipped(l), (long long)want_skips);
    cluda_loader_destroy(l);
    batch_free(&b);
  }
  for (int it = 0; it < refs; it++)
    batch_free(&skip_ref[it]);
  cluda_dataset_free(&ds);

  /* Every item bad: skip_bad gives up after CLUDA_LOADER_MAX_ATTEMPTS. */
  char path[512];
  for (int i = 0; i < DS_ITEMS; i++) {
    item_path(path, sizeof path, root, "images", i, "");
    f = fopen(path, "wb");
    if (f) fclose(f);
  }
  if (TEST_OK(cluda_dataset_open(&ds, CLUDA_DATASET_GTA, root, NULL))) {
    cluda_loader_config c = loader_config(&ds, 1, 1);
    c.skip_bad = 1;
    cluda_loader *l = NULL;
    batch b = batch_alloc(&c);
    if (TEST_OK(cluda_loader_create(&l, &c)))
      TEST_FAILS(cluda_loader_get(l, 0, b.images, b.labels), CLUDA_ERR_IO, "bad samples in a row");
    cluda_loader_destroy(l);
    batch_free(&b);
    cluda_dataset_free(&ds);
  }
}

static void test_loader_bad_config(const cluda_dataset *ds) {
  cluda_loader *l = NULL;
  cluda_loader_config c = loader_config(ds, 2, 0);
  TEST_FAILS(cluda_loader_create(&l, &c), CLUDA_ERR_ARG, "prefetch");
  c = loader_config(ds, 0, 0);
  c.first_slot = 65535;
  TEST_FAILS(cluda_loader_create(&l, &c), CLUDA_ERR_ARG, "slots");
  c = loader_config(NULL, 0, 0);
  TEST_FAILS(cluda_loader_create(&l, &c), CLUDA_ERR_ARG, "dataset");
  TEST_CHECK(l == NULL, "no loader after a failed create");
  cluda_loader_destroy(NULL);
}

int main(int argc, char **argv) {
  (void)argc;
  test_resize_against_cv2();
  test_imrescale_sizes();
  test_crop_offsets();
  test_cat_max_ratio();
  test_flip();
  test_normalise_and_pad();
  test_rcs_recrop();
  test_bad_arguments();

  snprintf(temp_dir, sizeof temp_dir, "/tmp/cluda_test_loader_XXXXXX");
  if (!mkdtemp(temp_dir)) {
    perror("mkdtemp");
    return 1;
  }
  char root[256];
  snprintf(root, sizeof root, "%s/gta", temp_dir);
  cluda_dataset ds;
  if (make_dataset(root) && TEST_OK(cluda_dataset_open(&ds, CLUDA_DATASET_GTA, root, NULL))) {
    TEST_CHECK(ds.count == DS_ITEMS, "the tiny dataset has %d items", ds.count);
    test_loader_determinism(&ds);
    test_loader_rcs(&ds);
    test_loader_bad_config(&ds);
    cluda_dataset_free(&ds);
    test_loader_errors(root);
  }
  remove_tree(temp_dir);
  return test_finish(argv[0]);
}

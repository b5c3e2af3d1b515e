/* cluda_infer end to end: the test runs the built program (build/bin/cluda_infer, found from
 * this test's own path build/tests/test_infer_cli) on PNGs it writes, and checks exit codes,
 * messages and outputs: --help, a tiny random-init run (colour and train-id PNGs of the
 * image size, a dump with the right datasets and shapes whose logits reproduce the labels),
 * a directory of images of two sizes, weights round trips through cluda's HDF5 file and an
 * encoder-only safetensors file (outputs equal an in-process forward with the same
 * weights), and every bad input (non-zero exit and one line naming the file). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "cluda/config.h"
#include "cluda/image.h"
#include "cluda/segmentor.h"
#include "cluda/weights.h"
#include "fixture.h"
#include "testing.h"
#include "tiny_model.h"

/* A smooth colour pattern (so the network sees structure, not noise). */
static void write_test_image(const char *path, int width, int height, int channels) {
  cluda_image img;
  if (!TEST_OK(cluda_image_create(&img, width, height, channels))) return;
  for (int y = 0; y < height; y++)
    for (int x = 0; x < width; x++)
      for (int c = 0; c < channels; c++)
        img.pixels[((size_t)y * width + x) * channels + c] =
            (uint8_t)(127 + 120 * sin(0.21 * x * (c + 1) + 0.13 * y * (3 - c)));
  TEST_OK(cluda_png_write(path, &img));
  cluda_image_free(&img);
}

/* ---- an in-process model, to make weight files and reference outputs ---- */

/* Weights no seed reproduces: every parameter scaled, running statistics moved. */
static void perturb(model *m) {
  for (size_t i = 0; i < m->seg.params.total; i++)
    m->params[i] = 1.25f * m->params[i] + 1e-3f;
  for (int e = 0; e < m->seg.state.count; e++) {
    const cluda_param_info *info = &m->seg.state.items[e];
    int is_var = strstr(info->name, "running_var") != NULL;
    for (size_t i = 0; i < info->count; i++)
      m->state[info->offset + i] = is_var ? 1.5f + 0.01f * (float)(i % 7) : 0.05f * (float)(i % 5);
  }
}

/* Forward of one PNG in inference mode; logits copied into a malloc'ed buffer. */
static float *forward_logits(model *m, const char *png, int *h4, int *w4, int *classes) {
  cluda_image img;
  if (!TEST_OK(cluda_png_read_rgb(png, &img))) return NULL;
  float *x = test_alloc_f32((int64_t)img.width * img.height * 3);
  TEST_OK(cluda_image_normalize(&img, x));
  cluda_segmentor_plan plan;
  float *logits = NULL;
  if (TEST_OK(cluda_segmentor_plan_for(&m->seg, 1, img.height, img.width, &plan))) {
    void *acts = aligned_alloc(64, cluda_arena_align(plan.activation_bytes));
    cluda_ctx ctx = test_cpu_context(plan.scratch_bytes + 64);
    cluda_tensor xt = cluda_tensor_4d(CLUDA_F32, x, 1, img.height, img.width, 3);
    cluda_run_mode mode;
    memset(&mode, 0, sizeof mode);
    cluda_segmentor_outputs out;
    if (TEST_OK(cluda_segmentor_forward(&ctx, &m->seg, &plan, m->params, m->state, &mode, &xt, acts,
                                        &out))) {
      size_t n = (size_t)cluda_tensor_numel(&out.logits);
      logits = test_alloc_f32((int64_t)n);
      memcpy(logits, out.logits.data, n * sizeof(float));
      *h4 = out.logits.shape[1];
      *w4 = out.logits.shape[2];
      *classes = out.logits.shape[3];
    }
    test_context_free(&ctx);
    free(acts);
  }
  free(x);
  cluda_image_free(&img);
  return logits;
}

/* The dump's logits equal `want` (an in-process forward with the same weights). */
static void compare_dump_logits(const char *dump, const float *want, int h4, int w4, int k,
                                const char *what) {
  fixture f;
  if (!TEST_OK(fixture_open_path(dump, &f))) return;
  cluda_tensor t;
  if (TEST_OK(fixture_read_shaped(&f, "logits", CLUDA_F32, 4, (int[]){1, h4, w4, k}, &t))) {
    test_compare_f32(what, cluda_f32(&t), want, (int64_t)h4 * w4 * k, 1e-4, 1e-5);
    free(t.data);
  }
  fixture_close(&f);
}

/* ---- tests ---- */

static void test_help_and_usage(cli_runner *cr) {
  cli_result r;
  cli_run(cr, &r, "--help", NULL);
  const char *flags[] = {"--config",
                         "--set",
                         "--weights",
                         "--allow-missing-head",
                         "--seed",
                         "--input",
                         "--out",
                         "--dump",
                         "--print-config",
                         "--print-config-reference",
                         "--help",
                         "_color.png",
                         "_labelTrainIds.png"};
  int all = r.exit_code == 0;
  for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
    if (!strstr(r.out, flags[i])) {
      all = 0;
      printf("  --help does not mention %s\n", flags[i]);
    }
  TEST_CHECK(all, "--help exits 0 (got %d) and documents every flag", r.exit_code);

  cli_run(cr, &r, NULL);
  TEST_CHECK(r.exit_code == 2 && strstr(r.err, "--config is required"), "no arguments: %s", r.err);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--bogus", NULL);
  TEST_CHECK(r.exit_code == 2 && strstr(r.err, "unknown option '--bogus'"), "unknown option: %s",
             r.err);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--input", NULL);
  TEST_CHECK(r.exit_code == 2 && strstr(r.err, "--input needs a value"), "missing value: %s",
             r.err);
  cli_run(cr, &r, "--config", TINY_CONFIG, NULL);
  TEST_CHECK(r.exit_code == 2 && strstr(r.err, "--input and --out are required"),
             "missing --input: %s", r.err);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--config", TINY_CONFIG, NULL);
  TEST_CHECK(r.exit_code == 2 && strstr(r.err, "--config given twice"), "twice: %s", r.err);

  cli_run(cr, &r, "--print-config-reference", NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "| `model.encoder` | enum | `b5` |"),
             "--print-config-reference prints the key table");
  cli_run(cr, &r, "--config", TINY_CONFIG, "--print-config", "--set", "model.dropout=0.2",
          "--seed=9", NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "seed: 9  # --set 'seed=9'") &&
                 strstr(r.out, "  encoder: tiny  # ") && strstr(r.out, "  dropout: 0.2  # --set"),
             "--print-config shows the resolved config:\n%s%s", r.out, r.err);
}

static void test_tiny_run(cli_runner *cr) {
  const char *image = cli_path(cr, "street.png");
  write_test_image(image, 72, 40, 3);
  const char *out_dir = cli_path(cr, "out/nested");
  const char *dump = cli_path(cr, "street.h5");
  cli_result r;
  cli_run(cr, &r, "--config", TINY_CONFIG, "--seed", "3", "--input", image, "--out", out_dir,
          "--dump", dump, NULL);
  printf("%s", r.out);
  TEST_CHECK(r.exit_code == 0, "tiny random-init run exits 0 (stderr: %s)", r.err);
  TEST_CHECK(strstr(r.out, "random initialisation from seed 3") != NULL,
             "says that the weights are random");
  TEST_CHECK(strstr(r.out, "MiT-tiny + DAFormer head (E=64, channels=64, 19 classes)") != NULL,
             "model summary");

  cluda_image color, labels;
  char path[600];
  snprintf(path, sizeof path, "%s/street_color.png", out_dir);
  int have_color = TEST_OK(cluda_png_read_rgb(path, &color));
  snprintf(path, sizeof path, "%s/street_labelTrainIds.png", out_dir);
  int have_labels = TEST_OK(cluda_png_read_labels(path, &labels));
  if (have_color && have_labels) {
    TEST_CHECK(color.width == 72 && color.height == 40 && labels.width == 72 && labels.height == 40,
               "outputs have the image size (%dx%d, %dx%d)", color.width, color.height,
               labels.width, labels.height);
    int consistent = 1;
    for (int p = 0; p < 72 * 40; p++) {
      uint8_t rgb[3];
      cluda_label_color(labels.pixels[p], rgb);
      if (labels.pixels[p] >= 19 || memcmp(rgb, color.pixels + 3 * p, 3) != 0) consistent = 0;
    }
    TEST_CHECK(consistent, "train ids < 19 and the colour PNG is their Cityscapes palette");
  }

  fixture f;
  if (TEST_OK(fixture_open_path(dump, &f))) {
    const char *names[7] = {"input", "enc1", "enc2", "enc3", "enc4", "fused", "logits"};
    const int shapes[7][4] = {{1, 40, 72, 3}, {1, 10, 18, 16}, {1, 5, 9, 32},  {1, 3, 5, 64},
                              {1, 2, 3, 128}, {1, 10, 18, 64}, {1, 10, 18, 19}};
    cluda_tensor t[7];
    int ok[7];
    for (int i = 0; i < 7; i++)
      ok[i] = TEST_OK(fixture_read_shaped(&f, names[i], CLUDA_F32, 4, shapes[i], &t[i]));
    cluda_image img;
    if (ok[0] && TEST_OK(cluda_png_read_rgb(image, &img))) {
      float *want = test_alloc_f32(72 * 40 * 3);
      TEST_OK(cluda_image_normalize(&img, want));
      test_compare_f32("dump input = the normalised image", cluda_f32(&t[0]), want, 72 * 40 * 3, 0,
                       0);
      free(want);
      cluda_image_free(&img);
    }
    if (ok[6] && have_labels) {
      /* The labels are the argmax of the dumped logits upsampled to the image. */
      float *up = test_alloc_f32(72 * 40 * 19);
      cluda_tensor upt = cluda_tensor_4d(CLUDA_F32, up, 1, 40, 72, 19);
      cluda_ctx ctx = test_cpu_context(0);
      TEST_OK(cluda_resize_bilinear_forward(&ctx, 0, &t[6], &upt));
      int same = 1, classes_seen = 0, seen[19] = {0};
      for (int p = 0; p < 72 * 40; p++) {
        int best = 0;
        for (int k = 1; k < 19; k++)
          if (up[p * 19 + k] > up[p * 19 + best]) best = k;
        if (best != labels.pixels[p]) same = 0;
        if (!seen[best]++) classes_seen++;
      }
      TEST_CHECK(same, "labels = argmax of the bilinearly upsampled stride-4 logits");
      printf("  %d distinct classes predicted\n", classes_seen);
      test_context_free(&ctx);
      free(up);
    }
    for (int i = 0; i < 7; i++)
      if (ok[i]) free(t[i].data);
    fixture_close(&f);
  }
  if (have_color) cluda_image_free(&color);
  if (have_labels) cluda_image_free(&labels);

  /* Same seed, same outputs; another seed, other weights. */
  model m;
  if (make_model(&m, NULL, 3)) {
    int h4 = 0, w4 = 0, k = 0;
    float *want = forward_logits(&m, image, &h4, &w4, &k);
    if (want) compare_dump_logits(dump, want, h4, w4, k, "CLI logits = in-process forward, seed 3");
    cli_run(cr, &r, "--config", TINY_CONFIG, "--seed", "4", "--input", image, "--out", out_dir,
            "--dump", cli_path(cr, "seed4.h5"), NULL);
    TEST_CHECK(r.exit_code == 0, "seed 4 run (stderr: %s)", r.err);
    fixture f4;
    cluda_tensor t4;
    if (want && TEST_OK(fixture_open_path(cli_path(cr, "seed4.h5"), &f4))) {
      if (TEST_OK(fixture_read(&f4, "logits", CLUDA_F32, &t4))) {
        TEST_CHECK(memcmp(t4.data, want, sizeof(float) * (size_t)(h4 * w4 * k)) != 0,
                   "another seed gives other logits");
        free(t4.data);
      }
      fixture_close(&f4);
    }
    free(want);
    free_model(&m);
  }
}

static void test_directory(cli_runner *cr) {
  const char *dir = cli_path(cr, "images");
  mkdir(dir, 0755);
  char a[600], b[600], c[600];
  snprintf(a, sizeof a, "%s/b_gray.png", dir);
  snprintf(b, sizeof b, "%s/a_rgb.png", dir);
  snprintf(c, sizeof c, "%s/notes.txt", dir);
  write_test_image(a, 40, 48, 1); /* gray, read as RGB */
  write_test_image(b, 64, 33, 3);
  cli_write_bytes(c, "not an image", 12);
  cli_result r;
  const char *out_dir = cli_path(cr, "dir_out");
  cli_run(cr, &r, "--config", TINY_CONFIG, "--input", dir, "--out", out_dir, NULL);
  printf("%s", r.out);
  TEST_CHECK(r.exit_code == 0, "directory run exits 0 (stderr: %s)", r.err);
  const char *first = strstr(r.out, "a_rgb.png: 64x33");
  const char *second = strstr(r.out, "b_gray.png: 40x48");
  TEST_CHECK(first && second && first < second, "every .png, in name order, each at its size");
  const char *names[2] = {"a_rgb", "b_gray"};
  const int sizes[2][2] = {{64, 33}, {40, 48}};
  for (int i = 0; i < 2; i++) {
    char path[700];
    cluda_image img;
    snprintf(path, sizeof path, "%s/%s_color.png", out_dir, names[i]);
    if (TEST_OK(cluda_png_read_rgb(path, &img))) {
      TEST_CHECK(img.width == sizes[i][0] && img.height == sizes[i][1], "%s size", path);
      cluda_image_free(&img);
    }
  }
  cli_run(cr, &r, "--config", TINY_CONFIG, "--input", dir, "--out", out_dir, "--dump",
          cli_path(cr, "x.h5"), NULL);
  cli_expect_error(cr, &r, "--dump with several images", "--dump needs a single input image", dir);
  const char *empty = cli_path(cr, "empty_dir");
  mkdir(empty, 0755);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--input", empty, "--out", out_dir, NULL);
  cli_expect_error(cr, &r, "empty directory", "no .png files", empty);
}

/* Writes the encoder tensors of m as an mmseg-named safetensors file (conv weights back to
 * PyTorch's OIHW). */
static int write_encoder_safetensors(const char *path, const model *m) {
  const cluda_param_table *t = &m->seg.params;
  size_t header_cap = 1 << 20, used = 0, data_bytes = 0;
  char *header = test_alloc(header_cap);
  used += (size_t)snprintf(header + used, header_cap - used, "{");
  int first = 1;
  for (int e = 0; e < t->count; e++) {
    const cluda_param_info *p = &t->items[e];
    if (strncmp(p->name, "backbone.", 9) != 0) continue;
    char shape[80];
    if (p->ndim == 4)
      snprintf(shape, sizeof shape, "[%d,%d,%d,%d]", p->shape[0], p->shape[3], p->shape[1],
               p->shape[2]);
    else if (p->ndim == 2)
      snprintf(shape, sizeof shape, "[%d,%d]", p->shape[0], p->shape[1]);
    else
      snprintf(shape, sizeof shape, "[%d]", p->shape[0]);
    used +=
        (size_t)snprintf(header + used, header_cap - used,
                         "%s\"%s\":{\"dtype\":\"F32\",\"shape\":%s,\"data_offsets\":[%zu,%zu]}",
                         first ? "" : ",", p->name, shape, data_bytes, data_bytes + p->count * 4);
    data_bytes += p->count * 4;
    first = 0;
  }
  used += (size_t)snprintf(header + used, header_cap - used, "}");
  while (used % 8)
    header[used++] = ' ';
  FILE *f = fopen(path, "wb");
  if (!f) {
    free(header);
    return 0;
  }
  uint64_t len = used;
  unsigned char len_bytes[8];
  for (int i = 0; i < 8; i++)
    len_bytes[i] = (unsigned char)(len >> (8 * i));
  fwrite(len_bytes, 1, 8, f);
  fwrite(header, 1, used, f);
  for (int e = 0; e < t->count; e++) {
    const cluda_param_info *p = &t->items[e];
    if (strncmp(p->name, "backbone.", 9) != 0) continue;
    const float *src = m->params + p->offset;
    if (p->ndim == 4) { /* OHWI -> OIHW */
      int O = p->shape[0], H = p->shape[1], W = p->shape[2], I = p->shape[3];
      for (int o = 0; o < O; o++)
        for (int i = 0; i < I; i++)
          for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
              fwrite(&src[((size_t)(o * H + y) * W + x) * I + i], 4, 1, f);
    } else {
      fwrite(src, 4, p->count, f);
    }
  }
  free(header);
  return fclose(f) == 0;
}

static void test_weights(cli_runner *cr) {
  const char *image = cli_path(cr, "w.png");
  write_test_image(image, 48, 36, 3);
  model m;
  if (!make_model(&m, NULL, 11)) return;
  perturb(&m);
  int h4 = 0, w4 = 0, k = 0;
  float *want = forward_logits(&m, image, &h4, &w4, &k);
  cli_result r;

  /* cluda's HDF5 file: every parameter and running statistic comes back. */
  const char *h5 = cli_path(cr, "weights.h5");
  TEST_OK(cluda_weights_save_h5(h5, &m.seg, m.params, m.state));
  cli_run(cr, &r, "--config", TINY_CONFIG, "--weights", h5, "--input", image, "--out",
          cli_path(cr, "w_out"), "--dump", cli_path(cr, "w_h5.h5"), NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "(cluda HDF5)"), "--weights file.h5 (stderr: %s)",
             r.err);
  if (want)
    compare_dump_logits(cli_path(cr, "w_h5.h5"), want, h4, w4, k, "HDF5 weights round trip");
  /* The format is recognised by content, not by name. */
  const char *renamed = cli_path(cr, "weights.bin");
  if (rename(h5, renamed) == 0) {
    cli_run(cr, &r, "--config", TINY_CONFIG, "--weights", renamed, "--input", image, "--out",
            cli_path(cr, "w_out"), NULL);
    TEST_CHECK(r.exit_code == 0 && strstr(r.out, "(cluda HDF5)"), "HDF5 found by its signature");
  }

  /* Encoder-only safetensors: refused without --allow-missing-head, else a fresh head. */
  const char *st = cli_path(cr, "encoder.safetensors");
  TEST_CHECK(write_encoder_safetensors(st, &m), "wrote %s", st);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--weights", st, "--input", image, "--out",
          cli_path(cr, "w_out"), NULL);
  cli_expect_error(cr, &r, "encoder-only weights", "missing tensor for decode_head.", NULL);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--weights", st, "--allow-missing-head", "--seed", "11",
          "--input", image, "--out", cli_path(cr, "w_out"), "--dump", cli_path(cr, "w_st.h5"),
          NULL);
  printf("%s", r.out);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "safetensors, mmseg naming") &&
                 strstr(r.out, "decode-head tensors missing, kept from the random initialisation"),
             "--allow-missing-head (stderr: %s)", r.err);
  model fresh;
  if (make_model(&fresh, NULL, 11)) {
    /* the expected network: perturbed encoder, head as initialised from seed 11 */
    for (int e = 0; e < m.seg.params.count; e++) {
      const cluda_param_info *p = &m.seg.params.items[e];
      if (!strncmp(p->name, "backbone.", 9))
        memcpy(fresh.params + p->offset, m.params + p->offset, p->count * sizeof(float));
    }
    float *want_st = forward_logits(&fresh, image, &h4, &w4, &k);
    if (want_st)
      compare_dump_logits(cli_path(cr, "w_st.h5"), want_st, h4, w4, k,
                          "safetensors encoder (OIHW->OHWI) + fresh head");
    free(want_st);
    free_model(&fresh);
  }

  /* Weights of another architecture. */
  model other;
  if (make_model(&other, "model.num_classes=5", 1)) {
    const char *other_h5 = cli_path(cr, "other.h5");
    TEST_OK(cluda_weights_save_h5(other_h5, &other.seg, other.params, other.state));
    cli_run(cr, &r, "--config", TINY_CONFIG, "--weights", other_h5, "--input", image, "--out",
            cli_path(cr, "w_out"), NULL);
    cli_expect_error(cr, &r, "HDF5 weights of another architecture", "other.h5", NULL);
    free_model(&other);
  }
  cli_run(cr, &r, "--config", TINY_CONFIG, "--set", "model.encoder=b0", "--weights", st, "--input",
          image, "--out", cli_path(cr, "w_out"), NULL);
  cli_expect_error(cr, &r, "safetensors of another architecture", "encoder.safetensors",
                   "another encoder");

  /* Missing and malformed weight files. */
  cli_run(cr, &r, "--config", TINY_CONFIG, "--weights", cli_path(cr, "none.safetensors"), "--input",
          image, "--out", cli_path(cr, "w_out"), NULL);
  cli_expect_error(cr, &r, "missing weights", "none.safetensors", "No such file");
  const unsigned char huge[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, '{', '}'};
  cli_write_bytes(cli_path(cr, "huge.safetensors"), huge, 10);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--weights", cli_path(cr, "huge.safetensors"), "--input",
          image, "--out", cli_path(cr, "w_out"), NULL);
  cli_expect_error(cr, &r, "safetensors header length beyond the file", "huge.safetensors", NULL);
  cli_write_bytes(cli_path(cr, "json.safetensors"), "\x0c\0\0\0\0\0\0\0{\"a\": [1, }", 20);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--weights", cli_path(cr, "json.safetensors"), "--input",
          image, "--out", cli_path(cr, "w_out"), NULL);
  cli_expect_error(cr, &r, "safetensors with broken JSON", "json.safetensors", NULL);
  cli_write_bytes(cli_path(cr, "broken.h5"), "\x89HDF\r\n\x1a\n garbage garbage garbage", 32);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--weights", cli_path(cr, "broken.h5"), "--input", image,
          "--out", cli_path(cr, "w_out"), NULL);
  cli_expect_error(cr, &r, "malformed HDF5", "broken.h5", NULL);
  cli_write_bytes(cli_path(cr, "weights.txt"), "these are not weights", 21);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--weights", cli_path(cr, "weights.txt"), "--input",
          image, "--out", cli_path(cr, "w_out"), NULL);
  cli_expect_error(cr, &r, "unknown weight format", "weights.txt",
                   "neither a safetensors file nor an HDF5");
  free(want);
  free_model(&m);
}

static void test_bad_inputs(cli_runner *cr) {
  cli_result r;
  const char *out_dir = cli_path(cr, "bad_out");
  cli_run(cr, &r, "--config", TINY_CONFIG, "--input", cli_path(cr, "nowhere.png"), "--out", out_dir,
          NULL);
  cli_expect_error(cr, &r, "missing input", "nowhere.png", "No such file");
  cli_write_bytes(cli_path(cr, "text.png"), "plain text, not a PNG\n", 22);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--input", cli_path(cr, "text.png"), "--out", out_dir,
          NULL);
  cli_expect_error(cr, &r, "non-PNG input", "text.png", "not a PNG file");

  write_test_image(cli_path(cr, "whole.png"), 64, 64, 3);
  static unsigned char bytes[65536];
  FILE *f = fopen(cli_path(cr, "whole.png"), "rb");
  size_t n = f ? fread(bytes, 1, sizeof bytes, f) : 0;
  if (f) fclose(f);
  cli_write_bytes(cli_path(cr, "cut.png"), bytes, n / 2);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--input", cli_path(cr, "cut.png"), "--out", out_dir,
          NULL);
  cli_expect_error(cr, &r, "truncated PNG", "cut.png", "truncated or corrupt");

  write_test_image(cli_path(cr, "small.png"), 16, 40, 3);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--input", cli_path(cr, "small.png"), "--out", out_dir,
          NULL);
  cli_expect_error(cr, &r, "too small PNG", "small.png", "at least 32x32");
  uint8_t *wide = calloc(20000, 1);
  cluda_image big = {20000, 1, 1, wide};
  cluda_status s =
      cluda_png_write(cli_path(cr, "wide.png"), &big); /* the writer has no side limit */
  free(wide);
  if (s.code == CLUDA_OK) {
    cli_run(cr, &r, "--config", TINY_CONFIG, "--input", cli_path(cr, "wide.png"), "--out", out_dir,
            NULL);
    cli_expect_error(cr, &r, "unsupported PNG", "wide.png", "largest supported side");
  }

  cli_write_bytes(cli_path(cr, "bad.yaml"), "model:\n  encoder: tiny\n  encodr: b0\n", 36);
  cli_run(cr, &r, "--config", cli_path(cr, "bad.yaml"), "--input", cli_path(cr, "whole.png"),
          "--out", out_dir, NULL);
  cli_expect_error(cr, &r, "unknown config key", "bad.yaml:3", "unknown key 'model.encodr'");
  cli_run(cr, &r, "--config", TINY_CONFIG, "--set", "model.num_classes=many", "--input",
          cli_path(cr, "whole.png"), "--out", out_dir, NULL);
  cli_expect_error(cr, &r, "bad --set", "model.num_classes", "expects an integer");
  cli_run(cr, &r, "--config", cli_path(cr, "missing.yaml"), "--input", cli_path(cr, "whole.png"),
          "--out", out_dir, NULL);
  cli_expect_error(cr, &r, "missing config", "missing.yaml", "cannot open config file");
  cli_run(cr, &r, "--config", TINY_CONFIG, "--seed", "x", "--input", cli_path(cr, "whole.png"),
          "--out", out_dir, NULL);
  cli_expect_error(cr, &r, "bad seed", "seed", "expects an integer");
  cli_run(cr, &r, "--config", TINY_CONFIG, "--input", cli_path(cr, "whole.png"), "--out",
          cli_path(cr, "text.png"), NULL);
  cli_expect_error(cr, &r, "--out is a file", "text.png", NULL);
  cli_run(cr, &r, "--config", TINY_CONFIG, "--input", cli_path(cr, "whole.png"), "--out", out_dir,
          "--dump", cli_path(cr, "no/dir/d.h5"), NULL);
  cli_expect_error(cr, &r, "dump into a missing directory", "no/dir/d.h5", NULL);
}

int main(int argc, char **argv) {
  (void)argc;
  cli_runner cr;
  if (!cli_runner_init(&cr, argv[0], "cluda_infer")) return test_finish("test_infer_cli");
  test_help_and_usage(&cr);
  test_tiny_run(&cr);
  test_directory(&cr);
  test_weights(&cr);
  test_bad_inputs(&cr);
  cli_runner_cleanup(&cr);
  return test_finish("test_infer_cli");
}

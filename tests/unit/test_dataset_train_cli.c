/* Real-dataset layouts end to end (issue: "convert -> train -> eval run end to end on
 * synthetic data written in all three layouts"): cluda_data synth --layout writes GTA,
 * SYNTHIA and Cityscapes roots with raw label ids, cluda_data convert prepares them, cluda_train
 * trains GTA -> Cityscapes and SYNTHIA -> Cityscapes through the prefetching loader (RCS from
 * the converter's statistics) and evaluates on Cityscapes val, and cluda_eval on the
 * checkpoint reproduces the training run's mIoU. Bad data: a truncated image stops training
 * naming the file; with data.on_error = skip the run goes on and logs the skipped samples. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "testing.h"

typedef struct programs {
  cli_runner data, train, eval;
} programs;

static const char kConfig[] =
    "seed: 2\n"
    "model: {encoder: tiny, embed_dims: 16, channels: 16}\n"
    "train: {max_iters: 3, batch: 2, crop: [64, 64], eval_interval: 0}\n"
    "uda: {ema_alpha: 0.99}\n"
    "cl: {size: [16, 16]}\n"
    "optim: {warmup_iters: 1}\n"
    "data: {source_scale: [160, 96], target_scale: [192, 96], rcs_min_pixels: 0, "
    "val_images: 3, workers: 2}\n"
    "eval: {scale: [192, 96]}\n"
    "log: {interval: 1, tensorboard: false}\n"
    "checkpoint: {interval: 0, keep: 0}\n";

/* The number after "key": (optionally a space) in a JSON text (NAN when absent). */
static double json_number(const char *text, const char *key) {
  char k[64];
  snprintf(k, sizeof k, "\"%s\":", key);
  const char *at = strstr(text, k);
  return at ? strtod(at + strlen(k), NULL) : NAN;
}

static char *read_file(const char *path) {
  static char buf[4][1 << 16];
  static int next = 0;
  char *b = buf[next++ % 4];
  FILE *f = fopen(path, "rb");
  size_t n = f ? fread(b, 1, sizeof buf[0] - 1, f) : 0;
  b[n] = '\0';
  if (f) fclose(f);
  return b;
}

static void make_roots(programs *P, const char *gta, const char *synthia, const char *cs) {
  cli_result r;
  cli_run(&P->data, &r, "synth", "--layout", "gta", "--count", "10", "--size", "96x160", "--out",
          gta, NULL);
  TEST_CHECK(r.exit_code == 0, "synth gta: %s", r.err);
  cli_run(&P->data, &r, "synth", "--layout", "synthia", "--count", "10", "--size", "96x160",
          "--out", synthia, NULL);
  TEST_CHECK(r.exit_code == 0, "synth synthia: %s", r.err);
  cli_run(&P->data, &r, "synth", "--layout", "cityscapes", "--count", "6", "--val-count", "3",
          "--size", "96x192", "--out", cs, NULL);
  TEST_CHECK(r.exit_code == 0, "synth cityscapes: %s", r.err);
  const char *kinds[3] = {"gta", "synthia", "cityscapes"}, *roots[3] = {gta, synthia, cs};
  for (int i = 0; i < 3; i++) {
    cli_run(&P->data, &r, "convert", "--dataset", kinds[i], roots[i], "--no-progress", NULL);
    char stats[1100];
    snprintf(stats, sizeof stats, "%s/samples_with_class.json", roots[i]);
    struct stat st;
    TEST_CHECK(r.exit_code == 0 && stat(stats, &st) == 0,
               "convert %s: exit %d, statistics written: %s", kinds[i], r.exit_code, r.err);
  }
}

/* Trains source -> cityscapes and checks the run and its evaluation; returns the mIoU. */
static double train_and_eval(programs *P, const char *config, const char *source,
                             const char *source_root, const char *cs, const char *work) {
  char s1[64], s2[1200], s3[1200];
  snprintf(s1, sizeof s1, "data.source=%s", source);
  snprintf(s2, sizeof s2, "data.source_root=%s", source_root);
  snprintf(s3, sizeof s3, "data.target_root=%s", cs);
  cli_result r;
  cli_run(&P->train, &r, "--config", config, "--work-dir", work, "--set", s1, "--set", s2, "--set",
          s3, "--set", "data.target=cityscapes", NULL);
  TEST_CHECK(r.exit_code == 0, "train %s -> cityscapes: exit %d: %s", source, r.exit_code, r.err);
  char want[64];
  snprintf(want, sizeof want, "data: source %s: 10 images", source);
  TEST_CHECK(strstr(r.out, want) && strstr(r.out, "rare-class sampling") &&
                 strstr(r.out, "data: target cityscapes: 6 images") && strstr(r.out, "it 3/3") &&
                 strstr(r.out, "target-val mIoU") && strstr(r.out, "over 3 images"),
             "train %s: data sets, RCS, 3 steps, evaluation on 3 val images: %.900s", source,
             r.out);
  char path[1200];
  snprintf(path, sizeof path, "%s/eval.json", work);
  double miou = json_number(read_file(path), "miou");
  TEST_CHECK(isfinite(miou), "train %s: eval.json has the mIoU", source);
  return miou;
}

static void check_eval_matches(programs *P, const char *config, const char *cs, const char *work,
                               double train_miou) {
  char ckpt[1200], json[1200];
  snprintf(ckpt, sizeof ckpt, "%s/checkpoints/latest.h5", work);
  snprintf(json, sizeof json, "%s/cluda_eval.json", work);
  cli_result r;
  cli_run(&P->eval, &r, "--config", config, "--weights", ckpt, "--dataset", "cityscapes",
          "--data-root", cs, "--json", json, NULL);
  double miou = json_number(read_file(json), "miou");
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "student of a cluda_train checkpoint") &&
                 fabs(miou - train_miou) < 1e-12,
             "cluda_eval on the checkpoint: exit %d, mIoU %.6f equals the run's %.6f: %s",
             r.exit_code, miou, train_miou, r.err);
}

static void check_bad_image(programs *P, const char *config, const char *gta, const char *cs) {
  /* truncate one GTA image: training stops naming it, or skips it with on_error skip */
  char image[1200];
  snprintf(image, sizeof image, "%s/images/00003.png", gta);
  char *bytes = read_file(image);
  cli_write_bytes(image, bytes, 60);
  char s2[1200], s3[1200];
  snprintf(s2, sizeof s2, "data.source_root=%s", gta);
  snprintf(s3, sizeof s3, "data.target_root=%s", cs);
  cli_result r;
  const char *work = cli_path(&P->train, "bad_error");
  cli_run(&P->train, &r, "--config", config, "--work-dir", work, "--set", "data.source=gta",
          "--set", s2, "--set", s3, "--set", "data.target=cityscapes", "--set", "data.rcs=false",
          "--set", "train.max_iters=20", NULL);
  TEST_CHECK(r.exit_code == 1 && !strncmp(r.err, "cluda_train: error: ", 20) &&
                 strstr(r.err, "00003.png") && strstr(r.err, "truncated"),
             "a truncated image stops training naming the file: exit %d: %s", r.exit_code, r.err);
  work = cli_path(&P->train, "bad_skip");
  cli_run(&P->train, &r, "--config", config, "--work-dir", work, "--set", "data.source=gta",
          "--set", s2, "--set", s3, "--set", "data.target=cityscapes", "--set", "data.rcs=false",
          "--set", "train.max_iters=20", "--set", "data.on_error=skip", NULL);
  char metrics[1200];
  snprintf(metrics, sizeof metrics, "%s/metrics.jsonl", work);
  const char *log = read_file(metrics);
  const char *last = strstr(log, "\"iter\":20,");
  double skipped = last ? json_number(last, "skipped_samples") : NAN;
  TEST_CHECK(r.exit_code == 0 && strstr(r.err, "00003.png") && skipped >= 1,
             "data.on_error=skip: the run finishes, warns naming the file and logs %g skipped "
             "samples: exit %d %s",
             skipped, r.exit_code, r.err);
}

int main(int argc, char **argv) {
  (void)argc;
  programs P;
  memset(&P, 0, sizeof P);
  if (!cli_runner_init(&P.data, argv[0], "cluda_data") ||
      !cli_runner_init(&P.train, argv[0], "cluda_train") ||
      !cli_runner_init(&P.eval, argv[0], "cluda_eval"))
    return test_finish("test_dataset_train_cli");
  const char *gta = cli_path(&P.data, "data/gta"), *synthia = cli_path(&P.data, "data/synthia"),
             *cs = cli_path(&P.data, "data/cityscapes"), *config = cli_path(&P.data, "e2e.yaml");
  cli_write_bytes(config, kConfig, strlen(kConfig));
  make_roots(&P, gta, synthia, cs);
  const char *work = cli_path(&P.train, "gta2cs");
  double miou = train_and_eval(&P, config, "gta", gta, cs, work);
  check_eval_matches(&P, config, cs, work, miou);
  train_and_eval(&P, config, "synthia", synthia, cs, cli_path(&P.train, "syn2cs"));
  check_bad_image(&P, config, gta, cs);
  cli_runner_cleanup(&P.data);
  cli_runner_cleanup(&P.train);
  cli_runner_cleanup(&P.eval);
  return test_finish("test_dataset_train_cli");
}

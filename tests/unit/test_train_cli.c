/* cluda_train end to end: the test runs the built program (build/bin/cluda_train, found from
 * this test's own path build/tests/test_train_cli) and checks exit codes, messages and
 * outputs: --help, a 3-iteration tiny CLUDA run in a scratch work directory (config.yaml,
 * metrics.jsonl, TensorBoard events, checkpoints, eval.json), stopping early with
 * --max-iters and continuing with --resume auto, and bad inputs (non-zero exit and one line
 * naming the problem). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "testing.h"

/* The runner of every test below (tests/common/cli.h): the program and the scratch directory. */
static cli_runner runner;

static const char *tmp(const char *name) { return cli_path(&runner, name); }

#define cli(res, ...) cli_run(&runner, (res), __VA_ARGS__)

/* A failure the user can act on: the exit status and one line "cluda_train: error: ..."
 * naming every needle. */
static void expect_error(const cli_result *r, int code, const char *what, const char *needle1,
                         const char *needle2) {
  cli_expect_error_code(&runner, r, code, what, needle1, needle2);
}

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0;
}

/* Number of lines of a text file that contain needle (-1: unreadable). */
static int count_lines(const char *path, const char *needle) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char line[4096];
  int n = 0;
  while (fgets(line, sizeof line, f))
    if (strstr(line, needle)) n++;
  fclose(f);
  return n;
}

static int dir_has_prefix(const char *dir, const char *prefix) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  int found = 0;
  for (struct dirent *e = readdir(d); e && !found; e = readdir(d))
    found = strncmp(e->d_name, prefix, strlen(prefix)) == 0;
  closedir(d);
  return found;
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f) {
    fputs(text, f);
    fclose(f);
  }
}

/* The smallest full CLUDA run: tiny network, 64x64 synthetic images, 32x32 crops, every loss
 * term on (UDA, FD, source and mixed CL). */
static const char kTinyConfig[] = "seed: 3\n"
                                  "model:\n"
                                  "  encoder: tiny\n"
                                  "  embed_dims: 16\n"
                                  "  channels: 16\n"
                                  "train:\n"
                                  "  max_iters: 3\n"
                                  "  batch: 1\n"
                                  "  crop: [32, 32]\n"
                                  "  eval_interval: 0\n"
                                  "uda:\n"
                                  "  ema_alpha: 0.99\n"
                                  "cl:\n"
                                  "  size: [8, 8]\n"
                                  "optim:\n"
                                  "  warmup_iters: 1\n"
                                  "data:\n"
                                  "  size: [64, 64]\n"
                                  "  train_images: 8\n"
                                  "  val_images: 2\n"
                                  "  rcs: false\n"
                                  "log:\n"
                                  "  interval: 1\n"
                                  "checkpoint:\n"
                                  "  interval: 2\n"
                                  "  keep: 0\n";

static void test_help_and_usage(void) {
  cli_result r;
  cli(&r, "--help", NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "usage: cluda_train") &&
                 strstr(r.out, "--resume auto|FILE") && strstr(r.out, "--work-dir"),
             "--help: exit %d, stdout: %.200s", r.exit_code, r.out);
  cli(&r, NULL);
  expect_error(&r, 2, "no arguments", "--config and --work-dir are required", NULL);
  cli(&r, "--config", tmp("tiny.yaml"), NULL);
  expect_error(&r, 2, "no --work-dir", "--work-dir", NULL);
  cli(&r, "--bogus", NULL);
  expect_error(&r, 2, "unknown argument", "unknown argument", "--bogus");
  cli(&r, "--config", tmp("tiny.yaml"), "--work-dir", NULL);
  expect_error(&r, 2, "missing value", "--work-dir needs a value", NULL);
}

static void test_tiny_run(void) {
  const char *config = tmp("tiny.yaml"), *work = tmp("run");
  cli_result r;
  /* Iterations 1-2 of the 3 of the schedule; --max-iters stops early with a checkpoint. */
  cli(&r, "--config", config, "--work-dir", work, "--max-iters", "2", NULL);
  TEST_CHECK(r.exit_code == 0, "tiny run: exit %d, stderr: %s", r.exit_code, r.err);
  TEST_CHECK(strstr(r.out, "UDA + CL + FD") != NULL, "tiny run: banner: %.300s", r.out);
  TEST_CHECK(strstr(r.out, "it 2/2") != NULL, "tiny run: progress lines: %.600s", r.out);
  TEST_CHECK(strstr(r.out, "target-val mIoU") != NULL, "tiny run: no final evaluation");
  char path[1024];
  snprintf(path, sizeof path, "%s/config.yaml", work);
  TEST_CHECK(count_lines(path, "max_iters: 3") == 1 && count_lines(path, "encoder: tiny") == 1,
             "config.yaml: the resolved config (%s)", path);
  snprintf(path, sizeof path, "%s/metrics.jsonl", work);
  TEST_CHECK(count_lines(path, "\"loss_src\"") == 2 && count_lines(path, "\"loss_cl_mix\"") == 2 &&
                 count_lines(path, "\"gamma\"") == 2 && count_lines(path, "\"val_miou\"") == 1,
             "metrics.jsonl: 2 step records with every term and 1 evaluation (%s)", path);
  snprintf(path, sizeof path, "%s/eval.json", work);
  TEST_CHECK(count_lines(path, "\"miou\"") == 1, "eval.json: the final evaluation (%s)", path);
  snprintf(path, sizeof path, "%s/tb", work);
  TEST_CHECK(dir_has_prefix(path, "events.out.tfevents."), "tb/: no TensorBoard event file");
  snprintf(path, sizeof path, "%s/checkpoints/latest.h5", work);
  TEST_CHECK(file_exists(path), "no %s", path);
  snprintf(path, sizeof path, "%s/checkpoints/iter_00000002.h5", work);
  TEST_CHECK(file_exists(path), "no %s", path);

  /* --resume auto continues at iteration 2 and finishes the schedule. */
  cli(&r, "--config", config, "--work-dir", work, "--resume", "auto", NULL);
  TEST_CHECK(r.exit_code == 0, "resume: exit %d, stderr: %s", r.exit_code, r.err);
  TEST_CHECK(strstr(r.out, "resume: ") && strstr(r.out, "(iteration 2)"),
             "resume: did not continue from iteration 2: %.400s", r.out);
  TEST_CHECK(strstr(r.out, "it 3/3") != NULL && strstr(r.out, "it 1/3") == NULL &&
                 strstr(r.out, "it 2/3") == NULL,
             "resume: ran more than iteration 3: %.600s", r.out);
  snprintf(path, sizeof path, "%s/metrics.jsonl", work);
  TEST_CHECK(count_lines(path, "\"loss_src\"") == 3 && count_lines(path, "{\"iter\":3,") >= 1,
             "metrics.jsonl: appended iteration 3 (%s)", path);
  snprintf(path, sizeof path, "%s/checkpoints/iter_00000003.h5", work);
  TEST_CHECK(file_exists(path), "resume: no %s", path);

  /* Nothing left to do: a second --resume auto loads iteration 3 and runs no step. */
  cli(&r, "--config", config, "--work-dir", work, "--resume", "auto", NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "(iteration 3)") && !strstr(r.out, "it 3/3"),
             "finished resume: exit %d, stdout: %.400s, stderr: %s", r.exit_code, r.out, r.err);

  /* --resume auto in an empty work directory is a fresh start. */
  cli(&r, "--config", config, "--work-dir", tmp("fresh"), "--resume", "auto", "--max-iters", "1",
      NULL);
  TEST_CHECK(r.exit_code == 0 && strstr(r.out, "starting at iteration 0") &&
                 strstr(r.out, "it 1/1"),
             "fresh resume: exit %d, stdout: %.400s, stderr: %s", r.exit_code, r.out, r.err);
}

static void test_bad_inputs(void) {
  const char *config = tmp("tiny.yaml"), *work = tmp("bad");
  cli_result r;
  cli(&r, "--config", tmp("missing.yaml"), "--work-dir", work, NULL);
  expect_error(&r, 1, "missing config", "missing.yaml", "cannot open");
  write_text(tmp("broken.yaml"), "train:\n  max_iters: many\n");
  cli(&r, "--config", tmp("broken.yaml"), "--work-dir", work, NULL);
  expect_error(&r, 1, "bad value", "broken.yaml", "max_iters");
  cli(&r, "--config", config, "--work-dir", work, "--set", "train.max_iter=1", NULL);
  expect_error(&r, 1, "unknown key", "train.max_iter", "did you mean 'train.max_iters'");
  cli(&r, "--config", config, "--work-dir", work, "--set", "train.crop=[40, 40]", NULL);
  expect_error(&r, 1, "crop not a multiple of 32", "crop", NULL);
  cli(&r, "--config", config, "--work-dir", work, "--max-iters", "0", NULL);
  expect_error(&r, 1, "--max-iters 0", "--max-iters '0'", "positive integer");
  cli(&r, "--config", config, "--work-dir", work, "--max-iters", "2x", NULL);
  expect_error(&r, 1, "--max-iters 2x", "--max-iters '2x'", NULL);
  cli(&r, "--config", config, "--work-dir", work, "--resume", tmp("nothing.h5"), NULL);
  expect_error(&r, 1, "missing checkpoint", "nothing.h5", NULL);
  write_text(tmp("afile"), "x\n");
  cli(&r, "--config", config, "--work-dir", tmp("afile"), NULL);
  expect_error(&r, 1, "work dir is a file", "afile", "not a directory");
}

int main(int argc, char **argv) {
  (void)argc;
  if (!cli_runner_init(&runner, argv[0], "cluda_train")) return test_finish("test_train_cli");
  write_text(tmp("tiny.yaml"), kTinyConfig);
  test_help_and_usage();
  test_tiny_run();
  test_bad_inputs();
  cli_runner_cleanup(&runner);
  return test_finish("test_train_cli");
}

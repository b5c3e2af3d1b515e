/* cluda_train under mpirun, end to end (label mpi): the test itself launches mpirun (found at
 * configure time) with the root/oversubscription settings of tests/CMakeLists.txt.
 *  - a run on 2 ranks x 1 image equals one process x 2 images (model.sync_bn), step by step,
 *    and only rank 0 writes files and progress;
 *  - a checkpoint written by one process resumes on 2 ranks and continues the same run;
 *  - SIGUSR1 (Slurm preemption) writes a checkpoint and exits 75; --resume auto continues;
 *  - killing one of 2 ranks ends the whole job within 60 s with a non-zero status, and the last
 *    checkpoint loads;
 *  - an error on one rank (a missing --resume file on rank 0) ends every rank. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "testing.h"

extern char **environ;

static const char kConfig[] =
    "seed: 4\n"
    "model: {encoder: tiny, embed_dims: 16, channels: 16, sync_bn: true}\n"
    "train: {max_iters: 6, batch: 1, crop: [32, 32], eval_interval: 0}\n"
    "uda: {ema_alpha: 0.99, pseudo_threshold: 0.2}\n"
    "cl: {size: [8, 8]}\n"
    "optim: {warmup_iters: 1}\n"
    "data: {size: [64, 64], train_images: 8, val_images: 2, rcs: false}\n"
    "log: {interval: 1, tensorboard: false}\n"
    "checkpoint: {interval: 1, keep: 0}\n";

typedef struct launch {
  char train[1024]; /* build/bin/cluda_train */
  cli_runner cr;
} launch;

static void pause_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Starts `mpirun -np <np> cluda_train <args...>` (np 0: cluda_train alone) with stdout and
 * stderr to files in the scratch directory; returns the pid (-1 on failure). */
static pid_t start(launch *L, int np, const char *tag, const char *const *args) {
  const char *argv[64];
  int n = 0;
  char npbuf[16];
  if (np > 0) {
    snprintf(npbuf, sizeof npbuf, "%d", np);
    argv[n++] = CLUDA_MPIEXEC;
    argv[n++] = "-np";
    argv[n++] = npbuf;
    argv[n++] = "--oversubscribe";
  }
  argv[n++] = L->train;
  for (int i = 0; args[i] && n < 62; i++)
    argv[n++] = args[i];
  argv[n] = NULL;
  char out[64], err[64];
  snprintf(out, sizeof out, "%s.out", tag);
  snprintf(err, sizeof err, "%s.err", tag);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, cli_path(&L->cr, out), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  posix_spawn_file_actions_addopen(&fa, 2, cli_path(&L->cr, err), O_WRONLY | O_CREAT | O_TRUNC,
                                   0644);
  pid_t pid = -1;
  if (posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

/* Waits up to `seconds`; returns the exit status, -signal, or -1000 on timeout (the job is
 * then killed). */
static int wait_for(pid_t pid, double seconds) {
  double end = now() + seconds;
  int status = 0;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    if (r < 0 && errno != EINTR) return -1001;
    if (now() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return -1000;
    }
    pause_ms(20);
  }
}

static int run(launch *L, int np, const char *tag, const char *const *args) {
  pid_t pid = start(L, np, tag, args);
  return pid < 0 ? -1 : wait_for(pid, 240);
}

static char *slurp(launch *L, const char *name) {
  static char buf[8][65536];
  static int next = 0;
  char *b = buf[next++ % 8];
  FILE *f = fopen(cli_path(&L->cr, name), "rb");
  size_t n = f ? fread(b, 1, sizeof buf[0] - 1, f) : 0;
  b[n] = '\0';
  if (f) fclose(f);
  return b;
}

static int exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && st.st_size > 0;
}

/* The value of "key" on the metrics.jsonl line of iteration `iter` (NAN if absent). */
static double metric(const char *path, int iter, const char *key) {
  FILE *f = fopen(path, "r");
  if (!f) return NAN;
  char line[4096], want[32], k[64];
  snprintf(want, sizeof want, "{\"iter\":%d,", iter);
  snprintf(k, sizeof k, "\"%s\":", key);
  double v = NAN;
  while (fgets(line, sizeof line, f))
    if (!strncmp(line, want, strlen(want)) && strstr(line, k))
      v = strtod(strstr(line, k) + strlen(k), NULL);
  fclose(f);
  return v;
}

static void compare_losses(const char *what, const char *a, const char *b, int from, int to) {
  static const char *const keys[] = {"loss_src",    "loss_cl_src", "loss_mix",
                                     "loss_cl_mix", "gamma",       "grad_norm"};
  double worst = 0.0;
  int missing = 0;
  for (int it = from; it <= to; it++)
    for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++) {
      double x = metric(a, it, keys[k]), y = metric(b, it, keys[k]);
      if (isnan(x) || isnan(y))
        missing++;
      else
        worst = fmax(worst, fabs(x - y) / fmax(fabs(y), 1e-3));
    }
  TEST_CHECK(!missing && worst <= 1e-4,
             "%s: iterations %d-%d, worst relative difference %.3g (%d missing)", what, from, to,
             worst, missing);
}

static void test_equivalence_and_resume(launch *L, const char *config) {
  const char *one = cli_path(&L->cr, "one"), *two = cli_path(&L->cr, "two"),
             *mixed = cli_path(&L->cr, "mixed");
  const char *a1[] = {"--config",      config,        "--work-dir", one, "--set",
                      "train.batch=2", "--max-iters", "4",          NULL};
  int rc = run(L, 0, "one", a1);
  TEST_CHECK(rc == 0, "one process x 2 images: exit %d: %s", rc, slurp(L, "one.err"));
  const char *a2[] = {"--config", config, "--work-dir", two, "--max-iters", "4", NULL};
  rc = run(L, 2, "two", a2);
  TEST_CHECK(rc == 0, "2 ranks x 1 image: exit %d: %s", rc, slurp(L, "two.err"));
  const char *out = slurp(L, "two.out");
  TEST_CHECK(strstr(out, "x 2 ranks (mpi)") && strstr(out, "it 4/4"),
             "2 ranks: banner and progress from rank 0: %.300s", out);
  const char *first = strstr(out, "it 1/4");
  TEST_CHECK(first && !strstr(first + 1, "it 1/4"),
             "2 ranks: one progress line per step (rank 0 only)");
  TEST_CHECK(slurp(L, "two.err")[0] == '\0', "2 ranks: nothing on stderr: %s", slurp(L, "two.err"));
  char ma[1100], mb[1100], mc[1100];
  snprintf(ma, sizeof ma, "%s/metrics.jsonl", one);
  snprintf(mb, sizeof mb, "%s/metrics.jsonl", two);
  snprintf(mc, sizeof mc, "%s/metrics.jsonl", mixed);
  compare_losses("2 ranks x 1 = 1 process x 2", mb, ma, 1, 4);

  /* A checkpoint of one process resumes on 2 ranks and continues the same run. */
  const char *a3[] = {"--config",      config,        "--work-dir", mixed, "--set",
                      "train.batch=2", "--max-iters", "2",          NULL};
  rc = run(L, 0, "mixed1", a3);
  TEST_CHECK(rc == 0, "one process, iterations 1-2: exit %d: %s", rc, slurp(L, "mixed1.err"));
  const char *a4[] = {"--config", config,        "--work-dir", mixed, "--resume",
                      "auto",     "--max-iters", "4",          NULL};
  rc = run(L, 2, "mixed2", a4);
  out = slurp(L, "mixed2.out");
  TEST_CHECK(rc == 0 && strstr(out, "(iteration 2)") && strstr(out, "it 3/4") &&
                 !strstr(out, "it 2/4"),
             "2 ranks resume a 1-process checkpoint at iteration 2: exit %d: %.400s %s", rc, out,
             slurp(L, "mixed2.err"));
  compare_losses("1 process then 2 ranks = 1 process", mc, ma, 1, 4);
}

/* The iteration named by the last "<marker>... (iteration N)" or "after iteration N" line. */
static long long last_iteration(const char *out, const char *marker, const char *prefix) {
  const char *last = NULL;
  for (const char *p = strstr(out, marker); p; p = strstr(p + 1, marker))
    last = p;
  const char *at = last ? strstr(last, prefix) : NULL;
  return at ? atoll(at + strlen(prefix)) : 0;
}

/* Continues a run from its latest checkpoint for one iteration, in one process. */
static int resume_one_more(launch *L, const char *config, const char *work, long long it,
                           const char *tag) {
  char stop[32];
  snprintf(stop, sizeof stop, "%lld", it + 1);
  const char *a[] = {"--config", config, "--work-dir",  work, "--set", "train.max_iters=100000",
                     "--resume", "auto", "--max-iters", stop, NULL};
  return run(L, 0, tag, a);
}

static void test_preemption(launch *L, const char *config) {
  const char *work = cli_path(&L->cr, "preempt");
  const char *a[] = {"--config",   config,
                     "--work-dir", work,
                     "--set",      "train.max_iters=100000",
                     "--set",      "checkpoint.interval=0",
                     NULL};
  pid_t pid = start(L, 2, "preempt", a);
  /* once training runs, signal mpirun, which forwards SIGUSR1 to the ranks */
  double end = now() + 60;
  while (now() < end && !strstr(slurp(L, "preempt.out"), "it 3/"))
    pause_ms(50);
  kill(pid, SIGUSR1);
  int rc = wait_for(pid, 60);
  const char *out = slurp(L, "preempt.out");
  char latest[1100];
  snprintf(latest, sizeof latest, "%s/checkpoints/latest.h5", work);
  long long it = last_iteration(out, "stopped by a signal", "after iteration ");
  TEST_CHECK(rc == 75 && it >= 3 && exists(latest),
             "SIGUSR1: checkpoint at iteration %lld, then exit 75 (got %d): %s", it, rc,
             slurp(L, "preempt.err"));
  rc = resume_one_more(L, config, work, it, "preempt_resume");
  char want[64];
  snprintf(want, sizeof want, "(iteration %lld)", it);
  TEST_CHECK(rc == 0 && strstr(slurp(L, "preempt_resume.out"), want),
             "--resume auto continues at iteration %lld: exit %d %s", it, rc,
             slurp(L, "preempt_resume.err"));
}

/* The pid of rank `rank` among mpirun's children (OMPI_COMM_WORLD_RANK in its environment). */
static pid_t find_rank(pid_t mpirun, int rank) {
  DIR *d = opendir("/proc");
  pid_t found = -1;
  char want[48];
  snprintf(want, sizeof want, "OMPI_COMM_WORLD_RANK=%d", rank);
  for (struct dirent *e = d ? readdir(d) : NULL; e && found < 0; e = readdir(d)) {
    pid_t pid = (pid_t)atoi(e->d_name);
    if (pid <= 0) continue;
    char path[64], stat_line[512];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) continue;
    size_t n = fread(stat_line, 1, sizeof stat_line - 1, f);
    fclose(f);
    stat_line[n] = '\0';
    const char *close_paren = strrchr(stat_line, ')');
    int ppid = 0;
    if (!close_paren || sscanf(close_paren + 2, "%*c %d", &ppid) != 1 || ppid != mpirun) continue;
    static char env[1 << 16];
    snprintf(path, sizeof path, "/proc/%d/environ", pid);
    f = fopen(path, "rb");
    if (!f) continue;
    n = fread(env, 1, sizeof env - 1, f);
    fclose(f);
    for (size_t i = 0; i < n; i += strlen(env + i) + 1)
      if (!strcmp(env + i, want)) found = pid;
  }
  if (d) closedir(d);
  return found;
}

static void test_kill_one_rank(launch *L, const char *config) {
  const char *work = cli_path(&L->cr, "kill");
  const char *a[] = {"--config", config, "--work-dir", work, "--set", "train.max_iters=100000",
                     NULL};
  pid_t pid = start(L, 2, "kill", a);
  double end = now() + 60;
  while (now() < end && !strstr(slurp(L, "kill.out"), "checkpoint: "))
    pause_ms(50);
  pid_t victim = find_rank(pid, 1);
  TEST_CHECK(victim > 0, "found rank 1 among mpirun's children");
  double t0 = now();
  if (victim > 0) kill(victim, SIGKILL);
  int rc = wait_for(pid, 60);
  double took = now() - t0;
  printf("  killed rank 1: mpirun ended with status %d after %.2f s\n", rc, took);
  TEST_CHECK(rc != 0 && rc != -1000 && took < 60,
             "killing rank 1 ends the job: status %d after %.1f s", rc, took);
  /* the last checkpoint is whole: training continues from it */
  long long it = last_iteration(slurp(L, "kill.out"), "checkpoint: ", "(iteration ");
  rc = resume_one_more(L, config, work, it, "kill_resume");
  TEST_CHECK(it > 0 && rc == 0 && strstr(slurp(L, "kill_resume.out"), "resume: "),
             "the last checkpoint (iteration %lld) after the kill loads and training continues: "
             "exit %d %s",
             it, rc, slurp(L, "kill_resume.err"));
}

static void test_error_ends_all_ranks(launch *L, const char *config) {
  const char *a[] = {"--config",   config,
                     "--work-dir", cli_path(&L->cr, "err"),
                     "--resume",   cli_path(&L->cr, "no_such.h5"),
                     NULL};
  double t0 = now();
  int rc = run(L, 2, "err", a);
  const char *err = slurp(L, "err.err");
  TEST_CHECK(
      rc == 1 && now() - t0 < 60 && strstr(err, "cluda_train: error: rank 0: ") &&
          strstr(err, "no_such.h5"),
      "an error on rank 0 ends both ranks with status 1 naming the rank and the file (%d): %s", rc,
      err);
}

int main(int argc, char **argv) {
  (void)argc;
  launch L;
  memset(&L, 0, sizeof L);
  if (!cli_runner_init(&L.cr, argv[0], "cluda_train")) return test_finish("test_train_mpi_cli");
  snprintf(L.train, sizeof L.train, "%s", L.cr.binary);
  const char *config = cli_path(&L.cr, "tiny.yaml");
  cli_write_bytes(config, kConfig, strlen(kConfig));
  test_equivalence_and_resume(&L, config);
  test_preemption(&L, config);
  test_kill_one_rank(&L, config);
  test_error_ends_all_ranks(&L, config);
  cli_runner_cleanup(&L.cr);
  return test_finish("test_train_mpi_cli");
}

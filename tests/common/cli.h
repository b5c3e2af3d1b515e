/* Running one of the project's programs (build/bin/<program>) from a test, as a child
 * process: the runner finds the program from the test's own path (build/tests/<test>), owns
 * a scratch directory next to the test inside the build tree (/tmp proved unreliable on
 * some machines) and captures stdout and stderr of each run. The library keeps no global
 * state: everything lives in the cli_runner the test owns.
 *
 *   cli_runner cr;
 *   if (!cli_runner_init(&cr, argv[0], "cluda_infer")) return test_finish("test_infer_cli");
 *   cli_result r;
 *   cli_run(&cr, &r, "--config", cli_path(&cr, "bad.yaml"), NULL);
 *   cli_expect_error(&cr, &r, "unknown config key", "bad.yaml:3", NULL);
 *   cli_runner_cleanup(&cr);
 */
#ifndef CLUDA_TEST_CLI_H
#define CLUDA_TEST_CLI_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cli_runner {
  char program[64];  /* "cluda_infer": the name in "<program>: error: " lines */
  char binary[1024]; /* the program's path */
  char dir[512];     /* the scratch directory, removed by cli_runner_cleanup */
  char **paths;      /* every path cli_path returned, freed by cli_runner_cleanup */
  int path_count, path_cap;
} cli_runner;

typedef struct cli_result {
  int exit_code;              /* -N when killed by signal N, -1 when it could not start */
  char out[32768], err[4096]; /* captured stdout / stderr, truncated and NUL-terminated */
} cli_result;

/* Finds build/bin/<program> from the test's argv[0] (build/tests/<test>; /proc/self/exe
 * when argv[0] has no slash) and creates the scratch directory
 * build/tests/<test>_XXXXXX. Returns 1 on success; otherwise records a failed check saying
 * what is missing and returns 0 (the test should then end with test_finish). */
int cli_runner_init(cli_runner *r, const char *argv0, const char *program);
/* Removes the scratch directory and everything in it, and frees the paths. */
void cli_runner_cleanup(cli_runner *r);

/* "<scratch dir>/<name>" (name may hold subdirectories). The string stays valid, unchanged,
 * until cli_runner_cleanup, so it can be kept and passed around. */
const char *cli_path(cli_runner *r, const char *name);

/* Runs the program with the NULL-terminated string arguments (at most 62), waits for it and
 * fills *res. stdout and stderr go through <scratch dir>/stdout.txt and stderr.txt. */
void cli_run(const cli_runner *r, cli_result *res, ...) __attribute__((sentinel));

/* A failure the user can act on: exit 1 and exactly one line on stderr, starting with
 * "<program>: error: " and naming every non-NULL needle (the file, the problem). Records one
 * check named `what`; prints the line so the log shows what users see. */
void cli_expect_error(const cli_runner *r, const cli_result *res, const char *what,
                      const char *needle1, const char *needle2);
/* The same with another exit code (e.g. 2 for a bad command line). */
void cli_expect_error_code(const cli_runner *r, const cli_result *res, int exit_code,
                           const char *what, const char *needle1, const char *needle2);

/* Writes n bytes to path (replacing it). Returns 1 on success. */
int cli_write_bytes(const char *path, const void *data, size_t n);

#ifdef __cplusplus
}
#endif
#endif

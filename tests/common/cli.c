/* Running the project's programs from tests: see cli.h. */
#include "cli.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testing.h"

extern char **environ;

enum { CLI_MAX_ARGS = 64 };

int cli_runner_init(cli_runner *r, const char *argv0, const char *program) {
  memset(r, 0, sizeof *r);
  snprintf(r->program, sizeof r->program, "%s", program);
  char self[1024];
  if (strchr(argv0, '/')) {
    snprintf(self, sizeof self, "%s", argv0);
  } else {
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) {
      TEST_CHECK(0, "cannot find this test program's path to locate %s", program);
      return 0;
    }
    self[n] = '\0';
  }
  char *slash = strrchr(self, '/');
  const char *test_name = slash + 1;
  *slash = '\0';
  int len = snprintf(r->binary, sizeof r->binary, "%s/../bin/%s", self, program);
  if (len < 0 || (size_t)len >= sizeof r->binary || access(r->binary, X_OK) != 0) {
    TEST_CHECK(0, "%s not found at %s (build the %s target)", program, r->binary, program);
    return 0;
  }
  len = snprintf(r->dir, sizeof r->dir, "%s/%s_XXXXXX", self, test_name);
  /* room for the names the tests use under it */
  if (len < 0 || (size_t)len + 128 >= sizeof r->dir) {
    TEST_CHECK(0, "build directory path too long: %s", self);
    r->dir[0] = '\0';
    return 0;
  }
  if (!mkdtemp(r->dir)) {
    TEST_CHECK(0, "cannot create a scratch directory %s: %s", r->dir, strerror(errno));
    r->dir[0] = '\0';
    return 0;
  }
  return 1;
}

/* rm -rf without a shell: lstat, so symbolic links are removed, never followed. */
static int remove_tree(const char *path) {
  struct stat st;
  if (lstat(path, &st) != 0) return errno == ENOENT;
  int ok = 1;
  if (S_ISDIR(st.st_mode)) {
    DIR *d = opendir(path);
    if (!d) return 0;
    for (struct dirent *e = readdir(d); e; e = readdir(d)) {
      if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
      size_t n = strlen(path) + strlen(e->d_name) + 2;
      char *child = malloc(n);
      if (!child) {
        ok = 0;
        break;
      }
      snprintf(child, n, "%s/%s", path, e->d_name);
      ok &= remove_tree(child);
      free(child);
    }
    closedir(d);
    return ok && rmdir(path) == 0;
  }
  return unlink(path) == 0;
}

void cli_runner_cleanup(cli_runner *r) {
  if (r->dir[0] && !remove_tree(r->dir)) printf("could not remove %s\n", r->dir);
  for (int i = 0; i < r->path_count; i++)
    free(r->paths[i]);
  free(r->paths);
  memset(r, 0, sizeof *r);
}

const char *cli_path(cli_runner *r, const char *name) {
  if (r->path_count == r->path_cap) {
    r->path_cap = r->path_cap ? 2 * r->path_cap : 64;
    r->paths = realloc(r->paths, sizeof *r->paths * (size_t)r->path_cap);
    if (!r->paths) {
      fprintf(stderr, "cli_path: out of memory\n");
      abort();
    }
  }
  size_t n = strlen(r->dir) + strlen(name) + 2;
  char *p = test_alloc(n);
  snprintf(p, n, "%s/%s", r->dir, name);
  r->paths[r->path_count++] = p;
  return p;
}

static void read_capture(const char *path, char *buf, size_t size) {
  FILE *f = fopen(path, "rb");
  size_t n = f ? fread(buf, 1, size - 1, f) : 0;
  buf[n] = '\0';
  if (f) fclose(f);
}

void cli_run(const cli_runner *r, cli_result *res, ...) {
  const char *args[CLI_MAX_ARGS];
  int n = 0;
  args[n++] = r->binary;
  va_list ap;
  va_start(ap, res);
  int too_many = 0;
  for (const char *a = va_arg(ap, const char *); a; a = va_arg(ap, const char *)) {
    if (n < CLI_MAX_ARGS - 1)
      args[n++] = a;
    else
      too_many = 1;
  }
  va_end(ap);
  args[n] = NULL;
  if (too_many) TEST_CHECK(0, "cli_run: more than %d arguments", CLI_MAX_ARGS - 2);
  char out_path[1024], err_path[1024];
  snprintf(out_path, sizeof out_path, "%s/stdout.txt", r->dir);
  snprintf(err_path, sizeof err_path, "%s/stderr.txt", r->dir);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&actions, 2, err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid;
  int status = 0;
  res->exit_code = -1;
  if (posix_spawn(&pid, r->binary, &actions, NULL, (char *const *)args, environ) == 0) {
    /* a signal delivered to the test must not end the wait early: the captured output would
     * be read while the child is still writing it */
    pid_t w;
    while ((w = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
    }
    if (w == pid && WIFEXITED(status)) res->exit_code = WEXITSTATUS(status);
    if (w == pid && WIFSIGNALED(status)) res->exit_code = -WTERMSIG(status);
  }
  posix_spawn_file_actions_destroy(&actions);
  read_capture(out_path, res->out, sizeof res->out);
  read_capture(err_path, res->err, sizeof res->err);
}

void cli_expect_error_code(const cli_runner *r, const cli_result *res, int exit_code,
                           const char *what, const char *needle1, const char *needle2) {
  char prefix[96];
  snprintf(prefix, sizeof prefix, "%s: error: ", r->program);
  const char *newline = strchr(res->err, '\n');
  int one_line = newline && newline[1] == '\0' && !strncmp(res->err, prefix, strlen(prefix));
  int named = (!needle1 || strstr(res->err, needle1)) && (!needle2 || strstr(res->err, needle2));
  TEST_CHECK(res->exit_code == exit_code && one_line && named, "%s: exit %d, stderr: %s", what,
             res->exit_code, res->err);
  if (res->exit_code == exit_code) printf("  expected error (%s): %s", what, res->err);
}

void cli_expect_error(const cli_runner *r, const cli_result *res, const char *what,
                      const char *needle1, const char *needle2) {
  cli_expect_error_code(r, res, 1, what, needle1, needle2);
}

int cli_write_bytes(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return 0;
  int ok = !n || fwrite(data, 1, n, f) == n;
  return (fclose(f) == 0) && ok;
}

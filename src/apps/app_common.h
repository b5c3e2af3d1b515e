/* What the command-line programs share: value-flag parsing, the config with its --set / --seed
 * overrides, the network built from it with its weights (safetensors or cluda HDF5, by content),
 * output directories. Internal to src/apps (each program is one translation unit, so these are
 * static inline). Errors come back as cluda_status with one line naming the file. */
#ifndef CLUDA_APP_COMMON_H
#define CLUDA_APP_COMMON_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "cluda/arena.h"
#include "cluda/checkpoint.h"
#include "cluda/config.h"
#include "cluda/eval.h"
#include "cluda/segmentor.h"
#include "cluda/weights.h"

/* Matches argv[*i] against the value flags `names` ("--flag VALUE" or "--flag=VALUE").
 * Returns the index of the flag (advancing *i past a separate value and setting *value),
 * -1 when argv[*i] is not one of them, or -2 after printing "<program>: --flag needs a
 * value" (a usage error). */
static inline int app_value_flag(const char *program, int argc, char **argv, int *i,
                                 const char *const *names, int count, const char **value) {
  const char *arg = argv[*i];
  for (int n = 0; n < count; n++) {
    size_t len = strlen(names[n]);
    if (strncmp(arg, names[n], len) != 0 || (arg[len] != '\0' && arg[len] != '=')) continue;
    if (arg[len] == '=') {
      *value = arg + len + 1;
    } else if (*i + 1 < argc) {
      *value = argv[++*i];
    } else {
      fprintf(stderr, "%s: %s needs a value; see --help\n", program, names[n]);
      return -2;
    }
    return n;
  }
  return -1;
}

static inline void *app_alloc_aligned(size_t bytes) {
  return aligned_alloc(CLUDA_ARENA_ALIGN, cluda_arena_align(bytes ? bytes : 1));
}

static inline double app_seconds_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* mkdir -p; `what` prefixes the messages ("out", "save-pred"). */
static inline cluda_status app_make_dirs(const char *path, const char *what) {
  char buf[4096];
  CLUDA_REQUIRE(strlen(path) < sizeof buf, CLUDA_ERR_ARG, "%s: path too long: %s", what, path);
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || *p == '\0') {
      char saved = *p;
      *p = '\0';
      if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        return CLUDA_FAIL(CLUDA_ERR_IO, "%s: cannot create directory %s: %s", what, buf,
                          strerror(errno));
      *p = saved;
      if (saved == '\0') break;
    }
  }
  struct stat st;
  CLUDA_REQUIRE(stat(path, &st) == 0 && S_ISDIR(st.st_mode), CLUDA_ERR_IO,
                "%s: %s is not a directory", what, path);
  return cluda_ok();
}

/* The file, then the overrides in order, then --seed (same as --set seed=S). */
static inline cluda_status app_load_config(cluda_config *cfg, const char *path,
                                           const char *const *sets, int set_count,
                                           const char *seed_text) {
  CLUDA_TRY(cluda_config_init(cfg));
  CLUDA_TRY(cluda_config_load_file(cfg, path));
  for (int i = 0; i < set_count; i++)
    CLUDA_TRY(cluda_config_set(cfg, sets[i]));
  if (seed_text) {
    char assignment[128];
    snprintf(assignment, sizeof assignment, "seed=%s", seed_text);
    CLUDA_TRY(cluda_config_set(cfg, assignment));
  }
  return cluda_ok();
}

/* --print-config-reference: the Markdown reference of every config key on stdout; returns the
 * exit status. */
static inline int app_print_config_reference(const char *program) {
  int count = 0;
  const cluda_config_key *keys = cluda_config_registry(&count);
  cluda_status s = cluda_config_write_reference(keys, count, stdout);
  if (s.code != CLUDA_OK) fprintf(stderr, "%s: error: %s\n", program, s.message);
  return s.code == CLUDA_OK ? 0 : 1;
}

/* eval.num_classes_protocol: 19 (all classes), 16 or 13 (SYNTHIA conventions). */
static inline cluda_status app_read_protocol(const cluda_config *cfg,
                                             cluda_eval_protocol *protocol) {
  const char *proto = NULL;
  CLUDA_TRY(cluda_config_get_string(cfg, "eval.num_classes_protocol", &proto));
  int p = atoi(proto);
  *protocol = p == 16 ? CLUDA_PROTOCOL_16 : p == 13 ? CLUDA_PROTOCOL_13 : CLUDA_PROTOCOL_ALL;
  return cluda_ok();
}

/* ---- the network and its weights ---- */

typedef struct app_model {
  cluda_segmentor seg;
  int created;
  float *params, *state;
} app_model;

static inline void app_model_free(app_model *m) {
  if (m->created) cluda_segmentor_free(&m->seg);
  free(m->params);
  free(m->state);
  memset(m, 0, sizeof *m);
}

typedef enum app_weight_format { APP_WEIGHTS_SAFETENSORS, APP_WEIGHTS_HDF5 } app_weight_format;

/* By content: the HDF5 signature (at 0 or a user-block offset), or a safetensors header
 * (8-byte length, then JSON starting with '{'); by extension when the content is too
 * broken to tell, so the loader reports what is wrong. */
static inline cluda_status app_detect_weight_format(const char *path, app_weight_format *format) {
  static const unsigned char hdf5_signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
  FILE *f = fopen(path, "rb");
  CLUDA_REQUIRE(f != NULL, CLUDA_ERR_IO, "weights: cannot open %s: %s", path, strerror(errno));
  unsigned char head[9] = {0};
  size_t n = fread(head, 1, sizeof head, f);
  int is_hdf5 = n >= 8 && memcmp(head, hdf5_signature, 8) == 0;
  for (long offset = 512; !is_hdf5 && offset <= 8192; offset *= 2) {
    unsigned char sig[8];
    is_hdf5 = fseek(f, offset, SEEK_SET) == 0 && fread(sig, 1, 8, f) == 8 &&
              memcmp(sig, hdf5_signature, 8) == 0;
  }
  fclose(f);
  const char *dot = strrchr(path, '.');
  if (is_hdf5) {
    *format = APP_WEIGHTS_HDF5;
  } else if (n == 9 && head[8] == '{') {
    *format = APP_WEIGHTS_SAFETENSORS;
  } else if (dot && !strcasecmp(dot, ".safetensors")) {
    *format = APP_WEIGHTS_SAFETENSORS;
  } else if (dot && (!strcasecmp(dot, ".h5") || !strcasecmp(dot, ".hdf5"))) {
    *format = APP_WEIGHTS_HDF5;
  } else {
    return CLUDA_FAIL(CLUDA_ERR_IO,
                      "weights: %s is neither a safetensors file nor an HDF5 weight file "
                      "(unrecognised header%s)",
                      path, n == 0 ? ", empty file" : "");
  }
  return cluda_ok();
}

static inline const char *app_naming_name(cluda_naming naming) {
  switch (naming) {
  case CLUDA_NAMING_AUTO: return "auto";
  case CLUDA_NAMING_MMSEG: return "mmseg";
  case CLUDA_NAMING_NVLABS: return "NVlabs";
  case CLUDA_NAMING_HF: return "Hugging Face";
  }
  return "?";
}

/* Loads a weight file into params/state of seg, whatever its kind: a cluda_train checkpoint
 * (its student, the evaluated model: decisions.md 20), cluda's HDF5 weight file, or a
 * safetensors file (mmseg/DAFormer, NVlabs or Hugging Face naming; with allow_missing_head the
 * decode head may be absent and keeps its values). Prints one line starting with `who`. */
static inline cluda_status app_load_weight_file(const char *path, const cluda_segmentor *seg,
                                                float *params, float *state, int allow_missing_head,
                                                const char *who) {
  app_weight_format format = APP_WEIGHTS_SAFETENSORS;
  CLUDA_TRY(app_detect_weight_format(path, &format));
  if (format == APP_WEIGHTS_HDF5) {
    cluda_ckpt_info info;
    memset(&info, 0, sizeof info);
    if (cluda_checkpoint_read_info(path, &info).code == CLUDA_OK) {
      const long long iteration = (long long)info.iteration;
      cluda_checkpoint_info_free(&info);
      CLUDA_TRY(cluda_checkpoint_load_weights(path, seg, 0, params, state));
      printf("%s: %s (the student of a cluda_train checkpoint, iteration %lld)\n", who, path,
             iteration);
      return cluda_ok();
    }
    CLUDA_TRY(cluda_weights_load_h5(path, seg, params, state));
    printf("%s: %s (cluda HDF5)\n", who, path);
    return cluda_ok();
  }
  cluda_load_options load = {CLUDA_NAMING_AUTO, allow_missing_head};
  cluda_load_report report;
  memset(&report, 0, sizeof report);
  CLUDA_TRY(cluda_load_safetensors(path, seg, params, state, &load, &report));
  printf("%s: %s (safetensors, %s naming): %d tensors loaded, %d ignored", who, path,
         app_naming_name(report.naming), report.loaded, report.ignored);
  if (report.missing_head)
    printf("; %d decode-head tensors missing, kept from the random initialisation",
           report.missing_head);
  printf("\n");
  return cluda_ok();
}

/* Random initialisation from seed, then the weight file when one is given (a file of
 * another architecture fails with the loader's message naming the file). */
static inline cluda_status app_model_load_weights(app_model *m, const char *weights_path,
                                                  int allow_missing_head, uint64_t seed) {
  CLUDA_TRY(cluda_segmentor_init(&m->seg, m->params, m->state, seed));
  if (!weights_path) {
    printf("weights: none given; random initialisation from seed %llu\n", (unsigned long long)seed);
    return cluda_ok();
  }
  return app_load_weight_file(weights_path, &m->seg, m->params, m->state, allow_missing_head,
                              "weights");
}

/* The network of the config's model.* keys, its summary line, and its weights. `who`
 * prefixes the allocation message ("infer", "eval"). */
static inline cluda_status app_model_create(app_model *m, const cluda_config *cfg,
                                            const char *weights_path, int allow_missing_head,
                                            const char *who) {
  memset(m, 0, sizeof *m);
  int64_t seed = 0;
  CLUDA_TRY(cluda_config_get_int(cfg, "seed", &seed));
  cluda_segmentor_config model_cfg;
  CLUDA_TRY(cluda_config_to_segmentor_config(cfg, &model_cfg));
  CLUDA_TRY(cluda_segmentor_create(&m->seg, &model_cfg));
  m->created = 1;
  m->params = app_alloc_aligned(sizeof(float) * m->seg.params.total);
  m->state = app_alloc_aligned(sizeof(float) * (m->seg.state.total ? m->seg.state.total : 1));
  CLUDA_REQUIRE(m->params && m->state, CLUDA_ERR_ALLOC, "%s: cannot allocate %zu parameters", who,
                m->seg.params.total);
  memset(m->params, 0, sizeof(float) * m->seg.params.total);
  memset(m->state, 0, sizeof(float) * m->seg.state.total);
  const cluda_head_config *head = &model_cfg.head;
  printf("model: MiT-%s + %s head (E=%d, channels=%d, %d classes), %zu parameters\n",
         model_cfg.encoder_name, head->kind == CLUDA_HEAD_SEGFORMER ? "SegFormer" : "DAFormer",
         head->embed_dims, head->channels, head->num_classes,
         cluda_param_table_elements(&m->seg.params));
  return app_model_load_weights(m, weights_path, allow_missing_head, (uint64_t)seed);
}

#endif

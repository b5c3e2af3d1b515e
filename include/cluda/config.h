/* Run configuration: a typed key registry filled from a YAML file and `--set key=value`
 * overrides.
 *
 * Every key is declared once in a registry (src/io/config.c) with its type, default, range
 * or choices and a doc string; configs/README.md is generated from that table
 * (`cluda_infer --print-config-reference`, kept in sync by test_config). Keys are dotted
 * paths ("model.encoder"); in a YAML file nested mappings spell the same path
 * (`model: {encoder: b5}`), and a dotted key may also be written directly. Unknown keys,
 * values of the wrong type, values out of range and keys given twice in one file are
 * rejected with a message naming the file, the line and the key. A load that fails leaves
 * the configuration as it was.
 *
 * To add a key, append a row to the registry (keep each section's keys together) and
 * regenerate configs/README.md. */
#ifndef CLUDA_CONFIG_H
#define CLUDA_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "cluda/segmentor.h"
#include "cluda/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum cluda_config_type {
  CLUDA_CONFIG_INT,       /* 64-bit integer */
  CLUDA_CONFIG_FLOAT,     /* double */
  CLUDA_CONFIG_BOOL,      /* true / false */
  CLUDA_CONFIG_STRING,    /* free text (paths, names) */
  CLUDA_CONFIG_ENUM,      /* one of the key's choices */
  CLUDA_CONFIG_INT_LIST,  /* YAML sequence of integers */
  CLUDA_CONFIG_FLOAT_LIST /* YAML sequence of numbers */
} cluda_config_type;

enum {
  CLUDA_CONFIG_LIST_MAX = 32,    /* longest list value */
  CLUDA_CONFIG_STRING_MAX = 256, /* longest string value, terminator included */
  CLUDA_CONFIG_KEY_MAX = 96,     /* longest dotted key, terminator included */
  CLUDA_CONFIG_ORIGIN_MAX = 160  /* "file.yaml:12" or "--set" */
};

/* Range flags: a bound that is exclusive, or absent. */
enum {
  CLUDA_CONFIG_MIN_EXCLUSIVE = 1,
  CLUDA_CONFIG_MAX_EXCLUSIVE = 2,
  CLUDA_CONFIG_NO_MIN = 4,
  CLUDA_CONFIG_NO_MAX = 8
};

/* One registry row. Numeric ranges apply to ints, floats and every list element. */
typedef struct cluda_config_key {
  const char *name;
  cluda_config_type type;
  const char *default_text; /* YAML text, parsed like a value from a file */
  double min, max;
  unsigned range_flags;
  const char *choices;            /* ENUM: "b0|b1|b2" */
  int list_min_len, list_max_len; /* lists: allowed lengths */
  const char *doc;
} cluda_config_key;

typedef struct cluda_config_value {
  int64_t i;                       /* INT, BOOL */
  double f;                        /* FLOAT */
  char s[CLUDA_CONFIG_STRING_MAX]; /* STRING, ENUM */
  double list[CLUDA_CONFIG_LIST_MAX];
  int list_len;
  char origin[CLUDA_CONFIG_ORIGIN_MAX]; /* "" for the default */
} cluda_config_value;

typedef struct cluda_config {
  const cluda_config_key *keys;
  int count;
  cluda_config_value *values; /* one per key */
} cluda_config;

/* cluda's registry (every key any program reads). */
const cluda_config_key *cluda_config_registry(int *count);
/* Checks a registry: names valid and unique, no key also a section, sections contiguous,
 * ranges and choices well formed, every default parses and is in range. */
cluda_status cluda_config_check_registry(const cluda_config_key *keys, int count);

/* A configuration with every key at its default; init uses cluda's registry. */
cluda_status cluda_config_init(cluda_config *cfg);
cluda_status cluda_config_init_with(cluda_config *cfg, const cluda_config_key *keys, int count);
void cluda_config_free(cluda_config *cfg);

/* Applies a YAML file / YAML text (`name` labels the text in messages). */
cluda_status cluda_config_load_file(cluda_config *cfg, const char *path);
cluda_status cluda_config_load_string(cluda_config *cfg, const char *text, const char *name);
/* Applies one "key=value" assignment; value is YAML ("b0", "0.5", "[1, 6, 12, 18]", or a
 * mapping "{encoder: b0}" when key is a section). */
cluda_status cluda_config_set(cluda_config *cfg, const char *assignment);

/* Typed getters; fail for an unknown key or a key of another type. get_string serves STRING
 * and ENUM keys; the list getters fail when the list is longer than capacity. */
int cluda_config_find(const cluda_config *cfg, const char *key);
cluda_status cluda_config_get_int(const cluda_config *cfg, const char *key, int64_t *out);
cluda_status cluda_config_get_float(const cluda_config *cfg, const char *key, double *out);
cluda_status cluda_config_get_bool(const cluda_config *cfg, const char *key, int *out);
cluda_status cluda_config_get_string(const cluda_config *cfg, const char *key, const char **out);
cluda_status cluda_config_get_int_list(const cluda_config *cfg, const char *key, int *out,
                                       int capacity, int *count);
cluda_status cluda_config_get_float_list(const cluda_config *cfg, const char *key, double *out,
                                         int capacity, int *count);

/* Writes the configuration as nested YAML that loads back to the same values; values not
 * at their default carry a comment naming where they were set. */
cluda_status cluda_config_write_yaml(const cluda_config *cfg, FILE *out);
/* Writes the Markdown reference table of a registry (configs/README.md). */
cluda_status cluda_config_write_reference(const cluda_config_key *keys, int count, FILE *out);

/* The network the model.* keys describe: the encoder preset and head defaults of
 * cluda_segmentor_default_config, then every key that is set. model.embed_dims and
 * model.channels 0 keep the preset's value (SegFormer: channels follow embed_dims). */
cluda_status cluda_config_to_segmentor_config(const cluda_config *cfg, cluda_segmentor_config *out);

#ifdef __cplusplus
}
#endif
#endif

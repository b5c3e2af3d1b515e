/* The configuration: defaults, nested and dotted YAML keys, --set overrides, every error
 * kind (with file, line and key in the message), the resolved-config writer, the registry
 * checks, the shipped configs and the generated reference in configs/README.md. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/config.h"
#include "testing.h"

#define CONFIG_DIR CLUDA_FIXTURE_DIR "/../../configs"

static char tmpdir[256];

static const char *write_file(const char *name, const char *text) {
  static char path[512];
  snprintf(path, sizeof path, "%s/%s", tmpdir, name);
  FILE *f = fopen(path, "wb");
  if (f) {
    fputs(text, f);
    fclose(f);
  }
  return path;
}

static int64_t get_int(const cluda_config *cfg, const char *key) {
  int64_t v = -12345;
  TEST_OK(cluda_config_get_int(cfg, key, &v));
  return v;
}

static double get_float(const cluda_config *cfg, const char *key) {
  double v = NAN;
  TEST_OK(cluda_config_get_float(cfg, key, &v));
  return v;
}

static const char *get_string(const cluda_config *cfg, const char *key) {
  const char *v = "";
  TEST_OK(cluda_config_get_string(cfg, key, &v));
  return v;
}

static void test_defaults(void) {
  int count = 0;
  const cluda_config_key *keys = cluda_config_registry(&count);
  TEST_OK(cluda_config_check_registry(keys, count));
  cluda_config cfg;
  if (!TEST_OK(cluda_config_init(&cfg))) return;
  TEST_CHECK(cfg.count == count, "one value per key");
  TEST_CHECK(get_int(&cfg, "seed") == 0, "seed defaults to 0");
  TEST_CHECK(strcmp(get_string(&cfg, "model.encoder"), "b5") == 0, "encoder defaults to b5");
  TEST_CHECK(strcmp(get_string(&cfg, "model.head"), "daformer") == 0, "head defaults to daformer");
  TEST_CHECK(get_int(&cfg, "model.num_classes") == 19, "19 classes");
  TEST_CHECK(get_int(&cfg, "model.embed_dims") == 0 && get_int(&cfg, "model.channels") == 0,
             "widths default to the preset (0)");
  TEST_CHECK(get_float(&cfg, "model.dropout") == 0.1, "dropout 0.1");
  TEST_CHECK(get_float(&cfg, "model.drop_path_rate") == 0.1, "drop path 0.1");
  TEST_CHECK(get_float(&cfg, "model.block_norm_eps") == 1e-6, "block norm eps 1e-6 (mmseg)");
  TEST_CHECK(get_float(&cfg, "model.patch_norm_eps") == 1e-5, "patch norm eps 1e-5");
  TEST_CHECK(get_float(&cfg, "model.bn_eps") == 1e-5 && get_float(&cfg, "model.bn_momentum") == 0.1,
             "BN eps and momentum");
  int d[4] = {0}, n = 0;
  TEST_OK(cluda_config_get_int_list(&cfg, "model.dilations", d, 4, &n));
  TEST_CHECK(n == 4 && d[0] == 1 && d[1] == 6 && d[2] == 12 && d[3] == 18, "dilations 1/6/12/18");
  TEST_CHECK(cfg.values[cluda_config_find(&cfg, "seed")].origin[0] == '\0',
             "defaults have no origin");

  /* getters check the key and its type */
  int64_t i;
  double f;
  int b;
  const char *s;
  TEST_FAILS(cluda_config_get_int(&cfg, "model.seed", &i), CLUDA_ERR_ARG, "unknown key");
  TEST_FAILS(cluda_config_get_float(&cfg, "seed", &f), CLUDA_ERR_ARG, "seed is of type int");
  TEST_FAILS(cluda_config_get_bool(&cfg, "model.dropout", &b), CLUDA_ERR_ARG, "float");
  TEST_FAILS(cluda_config_get_string(&cfg, "model.num_classes", &s), CLUDA_ERR_ARG, "int");
  TEST_FAILS(cluda_config_get_int_list(&cfg, "model.dilations", d, 3, &n), CLUDA_ERR_ARG,
             "room for 3");
  cluda_config_free(&cfg);
}

static void test_nested_and_overrides(void) {
  cluda_config cfg;
  if (!TEST_OK(cluda_config_init(&cfg))) return;
  const char *path = write_file("good.yaml", "# a comment\n"
                                             "seed: 7\n"
                                             "model:\n"
                                             "  encoder: b0\n"
                                             "  head: segformer\n"
                                             "  embed_dims: 256\n"
                                             "  dilations:\n"
                                             "    - 1\n"
                                             "    - 2\n"
                                             "    - 3\n"
                                             "    - 4\n"
                                             "model.num_classes: 5\n"
                                             "model: {dropout: 0.25}\n");
  /* "model" appears twice as a mapping: its keys differ, so nothing is given twice. */
  if (TEST_OK(cluda_config_load_file(&cfg, path))) {
    TEST_CHECK(get_int(&cfg, "seed") == 7, "top-level key");
    TEST_CHECK(strcmp(get_string(&cfg, "model.encoder"), "b0") == 0, "nested key");
    TEST_CHECK(strcmp(get_string(&cfg, "model.head"), "segformer") == 0, "nested enum");
    TEST_CHECK(get_int(&cfg, "model.embed_dims") == 256, "nested int");
    TEST_CHECK(get_int(&cfg, "model.num_classes") == 5, "dotted key at the top level");
    TEST_CHECK(get_float(&cfg, "model.dropout") == 0.25, "flow mapping");
    int d[4] = {0};
    TEST_OK(cluda_config_get_int_list(&cfg, "model.dilations", d, 4, NULL));
    TEST_CHECK(d[0] == 1 && d[1] == 2 && d[2] == 3 && d[3] == 4, "block sequence");
    const char *origin = cfg.values[cluda_config_find(&cfg, "model.encoder")].origin;
    TEST_CHECK(strstr(origin, "good.yaml:4") != NULL, "origin names file and line: %s", origin);
    TEST_CHECK(get_float(&cfg, "model.bn_eps") == 1e-5, "untouched keys keep their default");
  }

  TEST_OK(cluda_config_set(&cfg, "model.encoder=tiny"));
  TEST_OK(cluda_config_set(&cfg, "model.dropout=0"));
  TEST_OK(cluda_config_set(&cfg, "model.block_norm_eps=1e-5"));
  TEST_OK(cluda_config_set(&cfg, "model.dilations=[1, 3, 5, 7]"));
  TEST_OK(cluda_config_set(&cfg, "seed=123456789012"));
  TEST_CHECK(strcmp(get_string(&cfg, "model.encoder"), "tiny") == 0, "--set enum");
  TEST_CHECK(get_float(&cfg, "model.dropout") == 0.0, "--set float from an integer text");
  TEST_CHECK(get_float(&cfg, "model.block_norm_eps") == 1e-5, "--set exponent float");
  TEST_CHECK(get_int(&cfg, "seed") == 123456789012LL, "--set 64-bit int");
  int d[4] = {0};
  TEST_OK(cluda_config_get_int_list(&cfg, "model.dilations", d, 4, NULL));
  TEST_CHECK(d[1] == 3 && d[3] == 7, "--set flow list");
  TEST_OK(cluda_config_set(&cfg, "model={encoder: b1, num_classes: 7}"));
  TEST_CHECK(strcmp(get_string(&cfg, "model.encoder"), "b1") == 0 &&
                 get_int(&cfg, "model.num_classes") == 7,
             "--set of a whole section");
  TEST_OK(cluda_config_set(&cfg, "model.encoder=b2"));
  TEST_OK(cluda_config_set(&cfg, "model.encoder=b3"));
  TEST_CHECK(strcmp(get_string(&cfg, "model.encoder"), "b3") == 0, "the last --set wins");
  TEST_CHECK(strcmp(cfg.values[cluda_config_find(&cfg, "model.encoder")].origin, "--set") != 0,
             "origin recorded");
  TEST_CHECK(strstr(cfg.values[cluda_config_find(&cfg, "model.encoder")].origin, "--set") != NULL,
             "origin of an override mentions --set");

  /* An empty file and a comment-only file change nothing. */
  TEST_OK(cluda_config_load_file(&cfg, write_file("empty.yaml", "")));
  TEST_OK(cluda_config_load_file(&cfg, write_file("comment.yaml", "# nothing\n")));
  TEST_CHECK(get_int(&cfg, "seed") == 123456789012LL, "empty files are no-ops");
  cluda_config_free(&cfg);
}

typedef struct bad_case {
  const char *yaml;
  const char *needles[3]; /* each must occur in the message */
} bad_case;

static void test_file_errors(void) {
  const bad_case cases[] = {
      {"model:\n  encodr: b0\n", {"bad.yaml:2", "unknown key 'model.encodr'", "'model.encoder'"}},
      {"sed: 3\n", {"bad.yaml:1", "unknown key 'sed'", "did you mean 'seed'"}},
      {"seed: 1\nmodel:\n  head:\n    kind: x\n", {"bad.yaml:3", "model.head", "mapping"}},
      {"trainer:\n  lr: 1\n", {"bad.yaml:1", "unknown key 'trainer'", NULL}},
      {"model:\n  num_classes: many\n", {"bad.yaml:2", "model.num_classes", "expects an integer"}},
      {"model:\n  num_classes: 2.5\n", {"bad.yaml:2", "model.num_classes", "integer"}},
      {"model:\n  num_classes: \"19\"\n", {"bad.yaml:2", "model.num_classes", "quoted string"}},
      {"model:\n  dropout: high\n", {"bad.yaml:2", "model.dropout", "expects a number"}},
      {"model:\n  dropout: .nan\n", {"bad.yaml:2", "model.dropout", "expects a number"}},
      {"model:\n  num_classes: 0\n", {"bad.yaml:2", "model.num_classes", "must be in [1, 254]"}},
      {"\n\nmodel.dropout: 1.0\n", {"bad.yaml:3", "model.dropout", "must be in [0, 1)"}},
      {"model:\n  block_norm_eps: 0\n", {"bad.yaml:2", "model.block_norm_eps", "(0, 0.1]"}},
      {"seed: -1\n", {"bad.yaml:1", "seed", "[0, inf)"}},
      {"seed: 99999999999999999999\n", {"bad.yaml:1", "seed", "expects an integer"}},
      {"model:\n  encoder: b9\n", {"bad.yaml:2", "model.encoder", "one of b0, b1, b2, b3"}},
      {"model:\n  dilations: [1, 6]\n", {"bad.yaml:2", "model.dilations", "list of 4 values"}},
      {"model:\n  dilations:\n    - 1\n    - 6\n    - x\n    - 18\n",
       {"bad.yaml:5", "model.dilations[2]", "expects an integer"}},
      {"model:\n  dilations: [1, 6, 12, 99]\n", {"bad.yaml:2", "model.dilations[3]", "[1, 64]"}},
      {"model:\n  dilations: 1\n", {"bad.yaml:2", "model.dilations", "list of integers"}},
      {"seed: [1, 2]\n", {"bad.yaml:1", "seed", "got a list"}},
      {"seed: {a: 1}\n", {"bad.yaml:1", "seed", "got a mapping"}},
      {"model: b0\n", {"bad.yaml:1", "'model' is a section", NULL}},
      {"seed:\n", {"bad.yaml:1", "seed has no value", NULL}},
      {"seed: 1\nseed: 2\n", {"bad.yaml:2", "seed is given twice", "first at line 1"}},
      {"model:\n  encoder: b0\nmodel.encoder: b1\n",
       {"bad.yaml:3", "model.encoder is given twice", "line 2"}},
      {"model:\n  encoder: [b0\n", {"bad.yaml:", "YAML syntax error", NULL}},
      {"model:\n\tencoder: b0\n", {"bad.yaml:", "YAML syntax error", NULL}},
      {"- seed\n- 1\n", {"bad.yaml:1", "top level must be a mapping", NULL}},
      {"seed: 1\n---\nseed: 2\n", {"bad.yaml:", "more than one YAML document", NULL}},
  };
  cluda_config cfg;
  if (!TEST_OK(cluda_config_init(&cfg))) return;
  TEST_OK(cluda_config_set(&cfg, "seed=42"));
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const char *path = write_file("bad.yaml", cases[i].yaml);
    cluda_status s = cluda_config_load_file(&cfg, path);
    int ok = s.code == CLUDA_ERR_ARG && strstr(s.message, path) != NULL;
    for (int j = 0; j < 3 && cases[i].needles[j]; j++)
      ok = ok && strstr(s.message, cases[i].needles[j]) != NULL;
    TEST_CHECK(ok, "case %zu: %s", i, s.code == CLUDA_OK ? "accepted" : s.message);
    if (ok) printf("  expected error: %s\n", s.message);
  }
  TEST_CHECK(get_int(&cfg, "seed") == 42, "failed loads leave the configuration unchanged");
  /* ...even when the error comes after valid keys */
  TEST_FAILS(cluda_config_load_file(&cfg, write_file("bad.yaml", "seed: 5\nmodel:\n  x: 1\n")),
             CLUDA_ERR_ARG, "model.x");
  TEST_CHECK(get_int(&cfg, "seed") == 42, "partial loads are not committed");

  TEST_FAILS(cluda_config_load_file(&cfg, "/nonexistent/dir/none.yaml"), CLUDA_ERR_IO,
             "cannot open config file /nonexistent/dir/none.yaml");
  char binary[512];
  snprintf(binary, sizeof binary, "%s/binary.yaml", tmpdir);
  FILE *f = fopen(binary, "wb");
  if (f) {
    fwrite("seed: 1\0\x01\x02", 1, 10, f);
    fclose(f);
  }
  TEST_FAILS(cluda_config_load_file(&cfg, binary), CLUDA_ERR_IO, "not a text file");
  TEST_FAILS(cluda_config_load_file(&cfg, tmpdir), CLUDA_ERR_IO, "cannot read config file");
  cluda_config_free(&cfg);
}

static void test_set_errors(void) {
  cluda_config cfg;
  if (!TEST_OK(cluda_config_init(&cfg))) return;
  TEST_FAILS(cluda_config_set(&cfg, "model.encoder"), CLUDA_ERR_ARG, "expects key=value");
  TEST_FAILS(cluda_config_set(&cfg, "=b0"), CLUDA_ERR_ARG, "expects key=value");
  TEST_FAILS(cluda_config_set(&cfg, "model.encodr=b0"), CLUDA_ERR_ARG,
             "unknown key 'model.encodr' (did you mean 'model.encoder'?)");
  TEST_FAILS(cluda_config_set(&cfg, "model.encoder=b9"), CLUDA_ERR_ARG,
             "--set 'model.encoder=b9': model.encoder expects one of");
  TEST_FAILS(cluda_config_set(&cfg, "seed="), CLUDA_ERR_ARG, "seed has no value");
  TEST_FAILS(cluda_config_set(&cfg, "seed=-3"), CLUDA_ERR_ARG, "must be in [0, inf)");
  TEST_FAILS(cluda_config_set(&cfg, "model.num_classes=300"), CLUDA_ERR_ARG, "model.num_classes");
  TEST_FAILS(cluda_config_set(&cfg, "model.dilations=[1, 2"), CLUDA_ERR_ARG, "YAML syntax error");
  TEST_FAILS(cluda_config_set(&cfg, "model=b0"), CLUDA_ERR_ARG, "'model' is a section");
  TEST_FAILS(cluda_config_set(&cfg, "model={encoder: b0, bogus: 1}"), CLUDA_ERR_ARG,
             "unknown key 'model.bogus'");
  TEST_CHECK(strcmp(get_string(&cfg, "model.encoder"), "b5") == 0,
             "a failed section --set changes nothing");
  cluda_config_free(&cfg);
}

/* A registry with every type, to test what cluda's own keys do not use yet. */
static const cluda_config_key custom_keys[] = {
    {"a.flag", CLUDA_CONFIG_BOOL, "false", 0, 0, 0, NULL, 0, 0, "A switch."},
    {"a.name", CLUDA_CONFIG_STRING, "\"x y\"", 0, 0, 0, NULL, 0, 0, "A name."},
    {"b.c.weights", CLUDA_CONFIG_FLOAT_LIST, "[0.5]", 0, 1, 0, NULL, 1, 3, "Weights."},
    {"b.c.temp", CLUDA_CONFIG_FLOAT, "1.0", 0, 0, CLUDA_CONFIG_MIN_EXCLUSIVE | CLUDA_CONFIG_NO_MAX,
     NULL, 0, 0, "A temperature."},
    {"b.offset", CLUDA_CONFIG_INT, "-5", 0, 10, CLUDA_CONFIG_NO_MIN, NULL, 0, 0, "An offset."},
    {"top", CLUDA_CONFIG_ENUM, "one", 0, 0, 0, "one|two", 0, 0, "A choice."},
};

static void test_all_types(void) {
  const int n = (int)(sizeof custom_keys / sizeof custom_keys[0]);
  cluda_config cfg;
  if (!TEST_OK(cluda_config_init_with(&cfg, custom_keys, n))) return;
  int flag = -1;
  TEST_OK(cluda_config_get_bool(&cfg, "a.flag", &flag));
  TEST_CHECK(flag == 0, "bool default");
  TEST_CHECK(strcmp(get_string(&cfg, "a.name"), "x y") == 0, "quoted string default");
  double w[3] = {0};
  int count = 0;
  TEST_OK(cluda_config_get_float_list(&cfg, "b.c.weights", w, 3, &count));
  TEST_CHECK(count == 1 && w[0] == 0.5, "float list default");
  TEST_CHECK(get_int(&cfg, "b.offset") == -5, "negative int without a lower bound");

  TEST_OK(cluda_config_load_string(&cfg,
                                   "a: {flag: true, name: 'it''s \"q\" \\\\'}\n"
                                   "b:\n  c:\n    weights: [0, 0.25, 1]\n    temp: 1e9\n"
                                   "top: two\n",
                                   "custom"));
  TEST_OK(cluda_config_get_bool(&cfg, "a.flag", &flag));
  TEST_CHECK(flag == 1, "bool true");
  TEST_CHECK(strcmp(get_string(&cfg, "a.name"), "it's \"q\" \\\\") == 0, "string with quotes: %s",
             get_string(&cfg, "a.name"));
  TEST_OK(cluda_config_get_float_list(&cfg, "b.c.weights", w, 3, &count));
  TEST_CHECK(count == 3 && w[1] == 0.25 && w[2] == 1.0, "float list of three");
  TEST_CHECK(get_float(&cfg, "b.c.temp") == 1e9, "float without an upper bound");
  TEST_CHECK(strcmp(get_string(&cfg, "top"), "two") == 0, "enum via get_string");

  TEST_FAILS(cluda_config_load_string(&cfg, "a:\n  flag: yes\n", "custom"), CLUDA_ERR_ARG,
             "custom:2: a.flag expects true or false");
  TEST_FAILS(cluda_config_load_string(&cfg, "b: {c: {weights: []}}\n", "custom"), CLUDA_ERR_ARG,
             "list of 1 to 3 values, got 0");
  TEST_FAILS(cluda_config_load_string(&cfg, "b: {c: {weights: [2]}}\n", "custom"), CLUDA_ERR_ARG,
             "b.c.weights[0] must be in [0, 1]");
  TEST_FAILS(cluda_config_load_string(&cfg, "b: {c: {temp: 0}}\n", "custom"), CLUDA_ERR_ARG,
             "(0, inf)");
  TEST_FAILS(cluda_config_load_string(&cfg, "b: {offset: 11}\n", "custom"), CLUDA_ERR_ARG,
             "(-inf, 10]");
  TEST_FAILS(cluda_config_load_string(&cfg, "b:\n  c: 1\n", "custom"), CLUDA_ERR_ARG,
             "'b.c' is a section");

  /* Resolved YAML loads back to the same values. */
  char *text = NULL;
  size_t size = 0;
  FILE *mem = open_memstream(&text, &size);
  TEST_OK(cluda_config_write_yaml(&cfg, mem));
  fclose(mem);
  printf("%s", text);
  TEST_CHECK(strstr(text, "a:\n  flag: true  # custom:1\n") != NULL, "nested YAML with origin");
  TEST_CHECK(strstr(text, "b:\n  c:\n    weights: [0, 0.25, 1]") != NULL, "two-level section");
  cluda_config back;
  TEST_OK(cluda_config_init_with(&back, custom_keys, n));
  if (TEST_OK(cluda_config_load_string(&back, text, "resolved"))) {
    int same = 1;
    for (int i = 0; i < n; i++) {
      const cluda_config_value *x = &cfg.values[i], *y = &back.values[i];
      same = same && x->i == y->i && x->f == y->f && strcmp(x->s, y->s) == 0 &&
             x->list_len == y->list_len &&
             memcmp(x->list, y->list, sizeof(double) * (size_t)x->list_len) == 0;
    }
    TEST_CHECK(same, "write_yaml round trip (all types)");
  }
  free(text);
  cluda_config_free(&back);
  cluda_config_free(&cfg);
}

static void test_registry_checks(void) {
  const cluda_config_key dup[] = {
      {"a.x", CLUDA_CONFIG_INT, "0", 0, 1, 0, NULL, 0, 0, "x"},
      {"a.x", CLUDA_CONFIG_INT, "0", 0, 1, 0, NULL, 0, 0, "x"},
  };
  TEST_FAILS(cluda_config_check_registry(dup, 2), CLUDA_ERR_ARG, "a.x declared twice");
  const cluda_config_key leaf_section[] = {
      {"a", CLUDA_CONFIG_INT, "0", 0, 1, 0, NULL, 0, 0, "x"},
      {"a.b", CLUDA_CONFIG_INT, "0", 0, 1, 0, NULL, 0, 0, "x"},
  };
  TEST_FAILS(cluda_config_check_registry(leaf_section, 2), CLUDA_ERR_ARG,
             "a is both a key and a section");
  const cluda_config_key split[] = {
      {"a.x", CLUDA_CONFIG_INT, "0", 0, 1, 0, NULL, 0, 0, "x"},
      {"b.y", CLUDA_CONFIG_INT, "0", 0, 1, 0, NULL, 0, 0, "x"},
      {"a.z", CLUDA_CONFIG_INT, "0", 0, 1, 0, NULL, 0, 0, "x"},
  };
  TEST_FAILS(cluda_config_check_registry(split, 3), CLUDA_ERR_ARG, "section 'a' is split");
  const cluda_config_key bad_default[] = {
      {"a.x", CLUDA_CONFIG_INT, "5", 0, 1, 0, NULL, 0, 0, "x"},
  };
  TEST_FAILS(cluda_config_check_registry(bad_default, 1), CLUDA_ERR_ARG, "default of a.x");
  const cluda_config_key bad_name[] = {
      {"Model.X", CLUDA_CONFIG_INT, "0", 0, 1, 0, NULL, 0, 0, "x"},
  };
  TEST_FAILS(cluda_config_check_registry(bad_name, 1), CLUDA_ERR_ARG, "bad key name");
  const cluda_config_key bad_doc[] = {
      {"a", CLUDA_CONFIG_INT, "0", 0, 1, 0, NULL, 0, 0, "x | y"},
  };
  TEST_FAILS(cluda_config_check_registry(bad_doc, 1), CLUDA_ERR_ARG, "doc string");
  const cluda_config_key bad_choices[] = {
      {"a", CLUDA_CONFIG_ENUM, "x", 0, 0, 0, "x||y", 0, 0, "x"},
  };
  TEST_FAILS(cluda_config_check_registry(bad_choices, 1), CLUDA_ERR_ARG, "choices");
  cluda_config cfg;
  TEST_FAILS(cluda_config_init_with(&cfg, bad_default, 1), CLUDA_ERR_ARG, "default of a.x");
}

static void test_resolved_round_trip(void) {
  cluda_config cfg, back;
  if (!TEST_OK(cluda_config_init(&cfg))) return;
  TEST_OK(cluda_config_load_file(&cfg, CONFIG_DIR "/model_tiny.yaml"));
  TEST_OK(cluda_config_set(&cfg, "model.dropout=0.3"));
  TEST_OK(cluda_config_set(&cfg, "model.block_norm_eps=1.5e-6"));
  char *text = NULL;
  size_t size = 0;
  FILE *mem = open_memstream(&text, &size);
  TEST_OK(cluda_config_write_yaml(&cfg, mem));
  fclose(mem);
  printf("%s", text);
  TEST_CHECK(strstr(text, "seed: 0") == text, "seed first");
  TEST_CHECK(strstr(text, "\nmodel:\n  encoder: tiny  # ") != NULL, "model section");
  TEST_CHECK(strstr(text, "  dropout: 0.3  # --set 'model.dropout=0.3'") != NULL,
             "override origin in a comment");
  TEST_CHECK(strstr(text, "  block_norm_eps: 1.5e-06") != NULL, "shortest float text");
  TEST_OK(cluda_config_init(&back));
  if (TEST_OK(cluda_config_load_string(&back, text, "resolved"))) {
    int same = 1;
    for (int i = 0; i < cfg.count; i++) {
      const cluda_config_value *x = &cfg.values[i], *y = &back.values[i];
      same = same && x->i == y->i && x->f == y->f && strcmp(x->s, y->s) == 0 &&
             x->list_len == y->list_len &&
             memcmp(x->list, y->list, sizeof(double) * (size_t)x->list_len) == 0;
    }
    TEST_CHECK(same, "resolved config loads back to the same values");
  }
  free(text);
  cluda_config_free(&back);
  cluda_config_free(&cfg);
}

static void test_reference_in_sync(void) {
  int count = 0;
  const cluda_config_key *keys = cluda_config_registry(&count);
  char *generated = NULL;
  size_t size = 0;
  FILE *mem = open_memstream(&generated, &size);
  TEST_OK(cluda_config_write_reference(keys, count, mem));
  fclose(mem);
  TEST_CHECK(strstr(generated, "| `model.encoder` | enum | `b5` | b0, b1, b2, b3, b4, b5, tiny |"),
             "reference row of model.encoder");
  TEST_CHECK(strstr(generated, "| `model.dropout` | float | `0.1` | [0, 1) |"),
             "reference row of model.dropout");
  char *readme = test_read_text(CONFIG_DIR "/README.md");
  TEST_CHECK(readme != NULL, "configs/README.md exists");
  if (readme) {
    const char *begin = "<!-- BEGIN cluda_infer --print-config-reference -->\n";
    const char *start = strstr(readme, begin);
    const char *end = strstr(readme, "<!-- END cluda_infer --print-config-reference -->");
    int in_sync = start && end && (size_t)(end - start) == strlen(begin) + strlen(generated) &&
                  strncmp(start + strlen(begin), generated, strlen(generated)) == 0;
    TEST_CHECK(in_sync, "configs/README.md holds the current reference; regenerate with "
                        "build/bin/cluda_infer --print-config-reference");
    free(readme);
  }
  free(generated);
}

static void test_shipped_configs(void) {
  const char *names[] = {"model_b0_daformer.yaml", "model_b5_daformer.yaml", "model_tiny.yaml"};
  const char *encoders[] = {"b0", "b5", "tiny"};
  const int embed[] = {512, 512, 64}, channels[] = {256, 256, 64};
  const int widths[3][4] = {{32, 64, 160, 256}, {64, 128, 320, 512}, {16, 32, 64, 128}};
  for (int i = 0; i < 3; i++) {
    cluda_config cfg;
    if (!TEST_OK(cluda_config_init(&cfg))) return;
    char path[512];
    snprintf(path, sizeof path, "%s/%s", CONFIG_DIR, names[i]);
    if (TEST_OK(cluda_config_load_file(&cfg, path))) {
      TEST_CHECK(strcmp(get_string(&cfg, "model.encoder"), encoders[i]) == 0, "%s encoder",
                 names[i]);
      cluda_segmentor_config sc;
      if (TEST_OK(cluda_config_to_segmentor_config(&cfg, &sc))) {
        TEST_CHECK(sc.head.kind == CLUDA_HEAD_DAFORMER && sc.head.embed_dims == embed[i] &&
                       sc.head.channels == channels[i] && sc.head.num_classes == 19,
                   "%s head E=%d Cf=%d K=%d", names[i], sc.head.embed_dims, sc.head.channels,
                   sc.head.num_classes);
        TEST_CHECK(memcmp(sc.encoder.embed_dims, widths[i], sizeof widths[i]) == 0 &&
                       memcmp(sc.head.in_channels, widths[i], sizeof widths[i]) == 0,
                   "%s encoder widths feed the head", names[i]);
        TEST_CHECK(sc.encoder.block_norm_eps == 1e-6f && sc.encoder.patch_norm_eps == 1e-5f &&
                       sc.head.dilations[3] == 18 && sc.head.dropout == 0.1f,
                   "%s numbers", names[i]);
      }
    }
    cluda_config_free(&cfg);
  }
}

static void test_segmentor_config(void) {
  cluda_config cfg;
  cluda_segmentor_config sc;
  if (!TEST_OK(cluda_config_init(&cfg))) return;
  TEST_OK(cluda_config_load_file(&cfg, CONFIG_DIR "/model_tiny.yaml"));
  TEST_OK(cluda_config_set(&cfg, "model.num_classes=7"));
  TEST_OK(cluda_config_set(&cfg, "model.block_norm_eps=1e-5"));
  TEST_OK(cluda_config_set(&cfg, "model.drop_path_rate=0.2"));
  TEST_OK(cluda_config_set(&cfg, "model.bn_momentum=0.05"));
  TEST_OK(cluda_config_set(&cfg, "model.dilations=[1, 2, 3, 4]"));
  if (TEST_OK(cluda_config_to_segmentor_config(&cfg, &sc))) {
    TEST_CHECK(sc.head.num_classes == 7 && sc.encoder.block_norm_eps == 1e-5f &&
                   sc.encoder.drop_path_rate == 0.2f && sc.head.bn_momentum == 0.05f &&
                   sc.head.dilations[1] == 2 && sc.head.dilations[3] == 4,
               "keys reach the segmentor config");
    TEST_CHECK(strcmp(sc.encoder_name, "tiny") == 0, "encoder name");
  }
  TEST_OK(cluda_config_set(&cfg, "model.dilations=[2, 6, 12, 18]"));
  TEST_FAILS(cluda_config_to_segmentor_config(&cfg, &sc), CLUDA_ERR_ARG, "model.dilations[0]");
  TEST_OK(cluda_config_set(&cfg, "model.dilations=[1, 6, 12, 18]"));

  TEST_OK(cluda_config_set(&cfg, "model.head=segformer"));
  TEST_OK(cluda_config_set(&cfg, "model.channels=32"));
  TEST_FAILS(cluda_config_to_segmentor_config(&cfg, &sc), CLUDA_ERR_ARG,
             "model.channels (32) must equal model.embed_dims (64)");
  TEST_OK(cluda_config_set(&cfg, "model.channels=0"));
  if (TEST_OK(cluda_config_to_segmentor_config(&cfg, &sc)))
    TEST_CHECK(sc.head.kind == CLUDA_HEAD_SEGFORMER && sc.head.channels == 64 &&
                   sc.head.embed_dims == 64,
               "SegFormer channels follow embed_dims");
  TEST_OK(cluda_config_set(&cfg, "model.embed_dims=0"));
  if (TEST_OK(cluda_config_to_segmentor_config(&cfg, &sc))) {
    cluda_segmentor_config preset;
    TEST_OK(cluda_segmentor_default_config("tiny", CLUDA_HEAD_SEGFORMER, &preset));
    TEST_CHECK(sc.head.embed_dims == preset.head.embed_dims &&
                   sc.head.channels == preset.head.embed_dims,
               "embed_dims 0 keeps the preset (%d)", preset.head.embed_dims);
  }
  cluda_config_free(&cfg);
}

int main(void) {
  const char *base = getenv("TMPDIR");
  snprintf(tmpdir, sizeof tmpdir, "%s/cluda_test_config_XXXXXX", base && *base ? base : "/tmp");
  if (!mkdtemp(tmpdir)) {
    perror("mkdtemp");
    return 1;
  }
  test_defaults();
  test_nested_and_overrides();
  test_file_errors();
  test_set_errors();
  test_all_types();
  test_registry_checks();
  test_resolved_round_trip();
  test_reference_in_sync();
  test_shipped_configs();
  test_segmentor_config();
  char cmd[400];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
  if (system(cmd) != 0) printf("could not remove %s\n", tmpdir);
  return test_finish("test_config");
}

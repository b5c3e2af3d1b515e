/* Weights in and out: safetensors files in every naming (written here from a model's own
 * buffers with an independent reverse name map, plus real Hugging Face files from
 * tools/make_weight_fixtures.py) load back into identical buffers; K/V fusion, OIHW -> OHWI
 * and the SegFormer linear_fuse block permutation are checked value by value; wrong files
 * are rejected naming key and shapes; the HDF5 weight file round-trips, rejects another
 * architecture and corrupt files, and is published atomically. */
#include <dirent.h>
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cluda/weights.h"
#include "testing.h"

static char temp_dir[64];

static void temp_file(char *out, size_t cap, const char *name) {
  snprintf(out, cap, "%s/%s", temp_dir, name);
}

/* ---- models ---- */

static cluda_status make_model(cluda_segmentor *model, const char *encoder, cluda_head_kind kind,
                               const cluda_mit_config *custom, int embed_dims, int channels,
                               int classes) {
  cluda_segmentor_config cfg;
  memset(&cfg, 0, sizeof cfg);
  if (custom) {
    cfg.encoder = *custom;
    snprintf(cfg.encoder_name, sizeof cfg.encoder_name, "custom");
  } else {
    CLUDA_TRY(cluda_mit_preset(encoder, &cfg.encoder));
    snprintf(cfg.encoder_name, sizeof cfg.encoder_name, "%s", encoder);
  }
  cluda_head_default_config(kind, cfg.encoder.embed_dims, &cfg.head);
  cfg.head.embed_dims = embed_dims;
  cfg.head.channels = channels;
  cfg.head.num_classes = classes;
  return cluda_segmentor_create(model, &cfg);
}

/* The encoder of tools/make_weight_fixtures.py's Hugging Face files. */
static cluda_mit_config hf_tiny_encoder(void) {
  cluda_mit_config cfg;
  cluda_mit_preset("tiny", &cfg);
  const int dims[4] = {8, 16, 24, 32}, depths[4] = {2, 1, 1, 1}, heads[4] = {1, 1, 2, 2};
  for (int i = 0; i < 4; i++) {
    cfg.embed_dims[i] = dims[i];
    cfg.depths[i] = depths[i];
    cfg.heads[i] = heads[i];
  }
  return cfg;
}

static float *alloc_table(const cluda_param_table *t, float fill) {
  float *x = test_alloc_f32((int64_t)(t->total ? t->total : 1));
  for (size_t i = 0; i < t->total; i++)
    x[i] = fill;
  return x;
}

static float *random_table(const cluda_param_table *t, uint64_t seed) {
  float *x = alloc_table(t, 0.0f);
  test_fill_uniform(x, (int64_t)t->total, -1.0f, 1.0f, seed, 0);
  return x;
}

/* Entry-by-entry equality over the given prefix ("" for all), padding ignored. */
static int same_entries(const cluda_param_table *t, const float *a, const float *b,
                        const char *prefix, const char *what) {
  for (int i = 0; i < t->count; i++) {
    const cluda_param_info *p = &t->items[i];
    if (strncmp(p->name, prefix, strlen(prefix)) != 0) continue;
    if (memcmp(a + p->offset, b + p->offset, p->count * sizeof(float)) != 0)
      return TEST_CHECK(0, "%s: %s differs", what, p->name);
  }
  return TEST_CHECK(1, "%s", what);
}

/* ---- a safetensors writer (tests only) ---- */

typedef struct st_entry {
  char name[192];
  const char *dtype;
  int ndim;
  int64_t shape[4];
  unsigned char *bytes;
  size_t size;
} st_entry;

typedef struct st_writer {
  st_entry items[2048];
  int count;
} st_writer;

static st_entry *st_add(st_writer *w, const char *name, const char *dtype, int ndim,
                        const int64_t *shape, size_t size) {
  st_entry *e = &w->items[w->count++];
  snprintf(e->name, sizeof e->name, "%.191s", name);
  e->dtype = dtype;
  e->ndim = ndim;
  for (int d = 0; d < ndim; d++)
    e->shape[d] = shape[d];
  e->size = size;
  e->bytes = test_alloc(size ? size : 1);
  return e;
}

static void st_add_f32(st_writer *w, const char *name, int ndim, const int64_t *shape,
                       const float *values) {
  size_t n = 1;
  for (int d = 0; d < ndim; d++)
    n *= (size_t)shape[d];
  st_entry *e = st_add(w, name, "F32", ndim, shape, n * 4);
  memcpy(e->bytes, values, n * 4);
}

static void st_add_i64_scalar(st_writer *w, const char *name) {
  st_entry *e = st_add(w, name, "I64", 0, NULL, 8);
  memset(e->bytes, 0, 8);
  e->bytes[0] = 42;
}

static void st_write(st_writer *w, const char *path) {
  size_t cap = 256 + (size_t)w->count * 320, n = 0, offset = 0;
  char *header = test_alloc(cap);
  n += (size_t)snprintf(header + n, cap - n, "{\"__metadata__\":{\"format\":\"pt\"}");
  for (int i = 0; i < w->count; i++) {
    st_entry *e = &w->items[i];
    n += (size_t)snprintf(header + n, cap - n, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", e->name,
                          e->dtype);
    for (int d = 0; d < e->ndim; d++)
      n += (size_t)snprintf(header + n, cap - n, "%s%lld", d ? "," : "", (long long)e->shape[d]);
    n += (size_t)snprintf(header + n, cap - n, "],\"data_offsets\":[%zu,%zu]}", offset,
                          offset + e->size);
    offset += e->size;
  }
  n += (size_t)snprintf(header + n, cap - n, "}");
  while (n % 8) /* pad like the reference writer */
    header[n++] = ' ';
  FILE *f = fopen(path, "wb");
  uint64_t len = n;
  unsigned char lenbuf[8];
  for (int i = 0; i < 8; i++)
    lenbuf[i] = (unsigned char)(len >> (8 * i));
  fwrite(lenbuf, 1, 8, f);
  fwrite(header, 1, n, f);
  for (int i = 0; i < w->count; i++) {
    fwrite(w->items[i].bytes, 1, w->items[i].size, f);
    free(w->items[i].bytes);
  }
  fclose(f);
  free(header);
  w->count = 0;
}

/* ---- an independent mmseg -> other naming map (model.md 7.3, written from the table) ---- */

typedef enum { NAMING_MMSEG, NAMING_UDA, NAMING_NVLABS, NAMING_HF, NAMING_NV_HEAD } file_naming;

/* PyTorch layout of a cluda entry (OHWI -> OIHW), optionally with linear_fuse input blocks
 * put into [c4, c3, c2, c1] order. */
static void to_torch(const cluda_param_info *p, const float *src, float *dst, int64_t *shape,
                     int reverse_blocks) {
  for (int d = 0; d < p->ndim; d++)
    shape[d] = p->shape[d];
  if (p->ndim != 4) {
    memcpy(dst, src, p->count * sizeof *dst);
    return;
  }
  int O = p->shape[0], H = p->shape[1], W = p->shape[2], I = p->shape[3], blk = I / 4;
  shape[1] = I;
  shape[2] = H;
  shape[3] = W;
  for (int o = 0; o < O; o++)
    for (int i = 0; i < I; i++)
      for (int h = 0; h < H; h++)
        for (int w = 0; w < W; w++) {
          int our_i = reverse_blocks ? (3 - i / blk) * blk + i % blk : i;
          dst[((o * I + i) * H + h) * W + w] = src[((o * H + h) * W + w) * I + our_i];
        }
}

/* Hugging Face (hub) name of an mmseg encoder/head name; kv is handled by the caller. */
static int hf_name(const char *mm, char *out, size_t cap) {
  int i, j, n = 0;
  char rest[128];
  if (sscanf(mm, "backbone.patch_embed%d.proj.%127s%n", &i, rest, &n) == 2)
    return snprintf(out, cap, "segformer.encoder.patch_embeddings.%d.proj.%s", i - 1, rest);
  if (sscanf(mm, "backbone.patch_embed%d.norm.%127s", &i, rest) == 2)
    return snprintf(out, cap, "segformer.encoder.patch_embeddings.%d.layer_norm.%s", i - 1, rest);
  if (sscanf(mm, "backbone.norm%d.%127s", &i, rest) == 2)
    return snprintf(out, cap, "segformer.encoder.layer_norm.%d.%s", i - 1, rest);
  if (sscanf(mm, "backbone.block%d.%d.%127s", &i, &j, rest) == 3) {
    static const char *const map[][2] = {
        {"norm1.", "layer_norm_1."},
        {"attn.q.", "attention.self.query."},
        {"attn.sr.", "attention.self.sr."},
        {"attn.norm.", "attention.self.layer_norm."},
        {"attn.proj.", "attention.output.dense."},
        {"norm2.", "layer_norm_2."},
        {"mlp.fc1.", "mlp.dense1."},
        {"mlp.dwconv.dwconv.", "mlp.dwconv.dwconv."},
        {"mlp.fc2.", "mlp.dense2."},
    };
    for (size_t k = 0; k < sizeof map / sizeof map[0]; k++)
      if (strncmp(rest, map[k][0], strlen(map[k][0])) == 0)
        return snprintf(out, cap, "segformer.encoder.block.%d.%d.%s%s", i - 1, j, map[k][1],
                        rest + strlen(map[k][0]));
    return 0;
  }
  if (sscanf(mm, "decode_head.linear_c.%d.proj.%127s", &i, rest) == 2)
    return snprintf(out, cap, "decode_head.linear_c.%d.proj.%s", i, rest);
  if (strcmp(mm, "decode_head.linear_fuse.conv.weight") == 0)
    return snprintf(out, cap, "decode_head.linear_fuse.weight");
  if (sscanf(mm, "decode_head.linear_fuse.bn.%127s", rest) == 1)
    return snprintf(out, cap, "decode_head.batch_norm.%s", rest);
  if (sscanf(mm, "decode_head.linear_pred.%127s", rest) == 1)
    return snprintf(out, cap, "decode_head.classifier.%s", rest);
  return 0;
}

static void add_entry_named(st_writer *w, const cluda_param_info *p, const float *base,
                            const char *name, int reverse_blocks) {
  float *tmp = test_alloc_f32((int64_t)p->count);
  int64_t shape[4];
  to_torch(p, base + p->offset, tmp, shape, reverse_blocks);
  st_add_f32(w, name, p->ndim, shape, tmp);
  free(tmp);
}

/* Writes the model's buffers as a checkpoint in `naming`. */
static void write_checkpoint(const cluda_segmentor *m, const float *params, const float *state,
                             file_naming naming, const char *path) {
  static st_writer w;
  const cluda_param_table *tables[2] = {&m->params, &m->state};
  const float *data[2] = {params, state};
  for (int t = 0; t < 2; t++)
    for (int k = 0; k < tables[t]->count; k++) {
      const cluda_param_info *p = &tables[t]->items[k];
      char name[256];
      int is_head = strncmp(p->name, "decode_head.", 12) == 0;
      switch (naming) {
      case NAMING_MMSEG: add_entry_named(&w, p, data[t], p->name, 0); break;
      case NAMING_UDA:
        snprintf(name, sizeof name, "model.%s", p->name);
        add_entry_named(&w, p, data[t], name, 0);
        snprintf(name, sizeof name, "ema_model.%s", p->name); /* must be ignored */
        st_add(&w, name, "F32", 1, (int64_t[]){1}, 4);
        memset(w.items[w.count - 1].bytes, 0xFF, 4);
        break;
      case NAMING_NVLABS:
        if (!is_head) add_entry_named(&w, p, data[t], p->name + strlen("backbone."), 0);
        break;
      case NAMING_NV_HEAD: {
        int level;
        if (sscanf(p->name, "decode_head.linear_c.%d.", &level) == 1) {
          snprintf(name, sizeof name, "decode_head.linear_c%d.%s", level + 1,
                   p->name + strlen("decode_head.linear_c.0."));
          add_entry_named(&w, p, data[t], name, 0);
        } else {
          add_entry_named(&w, p, data[t], p->name,
                          strcmp(p->name, "decode_head.linear_fuse.conv.weight") == 0);
        }
        break;
      }
      case NAMING_HF: {
        const char *kv = strstr(p->name, ".attn.kv.");
        if (kv) { /* split into key rows then value rows */
          char base[160];
          snprintf(base, sizeof base, "%.*s.attn.q.%s", (int)(kv - p->name), p->name,
                   kv + strlen(".attn.kv."));
          hf_name(base, name, sizeof name);
          char *q = strstr(name, "query");
          char tail[64];
          snprintf(tail, sizeof tail, "%s", q + strlen("query"));
          int64_t shape[2] = {p->shape[0] / 2, p->ndim == 2 ? p->shape[1] : 0};
          size_t half = p->count / 2;
          snprintf(q, sizeof name - (size_t)(q - name), "key%s", tail);
          st_add_f32(&w, name, p->ndim, shape, data[t] + p->offset);
          snprintf(q, sizeof name - (size_t)(q - name), "value%s", tail);
          st_add_f32(&w, name, p->ndim, shape, data[t] + p->offset + half);
        } else if (hf_name(p->name, name, sizeof name)) {
          add_entry_named(&w, p, data[t], name,
                          strcmp(p->name, "decode_head.linear_fuse.conv.weight") == 0);
        } else {
          TEST_CHECK(0, "no HF name for %s", p->name);
        }
        break;
      }
      }
    }
  /* What real checkpoints also hold, deliberately ignored by the loader. */
  if (naming == NAMING_MMSEG || naming == NAMING_NV_HEAD)
    st_add_i64_scalar(&w, "decode_head.fuse_layer.bottleneck.bn.num_batches_tracked");
  if (naming == NAMING_UDA) st_add_i64_scalar(&w, "model.decode_head.conv_seg.num_batches_tracked");
  if (naming == NAMING_NVLABS) {
    int c4 = m->cfg.encoder.embed_dims[3];
    float *head = test_alloc_f32(7 * c4);
    test_fill_uniform(head, 7 * c4, -1, 1, 5, 0);
    st_add_f32(&w, "head.weight", 2, (int64_t[]){7, c4}, head);
    st_add_f32(&w, "head.bias", 1, (int64_t[]){7}, head);
    free(head);
  }
  if (naming == NAMING_HF) {
    st_add_i64_scalar(&w, "decode_head.batch_norm.num_batches_tracked");
    st_add_f32(&w, "classifier.bias", 1, (int64_t[]){1}, params);
  }
  st_write(&w, path);
}

/* ---- safetensors loading ---- */

static void test_round_trips(void) {
  char path[256];
  temp_file(path, sizeof path, "ckpt.safetensors");
  cluda_load_report report;

  /* DAFormer head (tiny encoder, CLUDA-like E = 128): mmseg, UDA and NVlabs namings. */
  cluda_segmentor m;
  if (!TEST_OK(make_model(&m, "tiny", CLUDA_HEAD_DAFORMER, NULL, 128, 64, 19))) return;
  float *params = random_table(&m.params, 1), *state = random_table(&m.state, 2);
  float *got_p = alloc_table(&m.params, 0.0f), *got_s = alloc_table(&m.state, 0.0f);

  write_checkpoint(&m, params, state, NAMING_MMSEG, path);
  TEST_OK(cluda_load_safetensors(path, &m, got_p, got_s, NULL, &report));
  TEST_CHECK(report.naming == CLUDA_NAMING_MMSEG && report.ignored == 1 && report.missing_head == 0,
             "mmseg report: naming %d ignored %d missing_head %d", report.naming, report.ignored,
             report.missing_head);
  TEST_CHECK(report.loaded == m.params.count + m.state.count, "mmseg loaded %d", report.loaded);
  same_entries(&m.params, params, got_p, "", "mmseg round trip: params identical");
  same_entries(&m.state, state, got_s, "", "mmseg round trip: BN statistics identical");

  memset(got_p, 0, m.params.total * sizeof(float));
  memset(got_s, 0, m.state.total * sizeof(float));
  write_checkpoint(&m, params, state, NAMING_UDA, path);
  TEST_OK(cluda_load_safetensors(path, &m, got_p, got_s, NULL, &report));
  TEST_CHECK(report.naming == CLUDA_NAMING_MMSEG &&
                 report.ignored == m.params.count + m.state.count + 1,
             "UDA checkpoint: student loaded, ema_model.* and num_batches_tracked ignored (%d)",
             report.ignored);
  same_entries(&m.params, params, got_p, "", "UDA round trip: student params identical");
  same_entries(&m.state, state, got_s, "", "UDA round trip: BN statistics identical");

  /* NVlabs ImageNet encoder: the head keeps its values (here a sentinel). */
  float *fresh_p = alloc_table(&m.params, 0.5f), *fresh_s = alloc_table(&m.state, 0.25f);
  write_checkpoint(&m, params, state, NAMING_NVLABS, path);
  TEST_FAILS(cluda_load_safetensors(path, &m, fresh_p, fresh_s, NULL, NULL), CLUDA_ERR_SHAPE,
             "allow_missing_head");
  cluda_load_options opt = {CLUDA_NAMING_AUTO, 1};
  TEST_OK(cluda_load_safetensors(path, &m, fresh_p, fresh_s, &opt, &report));
  int head_entries = 0;
  for (int i = 0; i < m.params.count; i++)
    head_entries += strncmp(m.params.items[i].name, "decode_head.", 12) == 0;
  TEST_CHECK(report.naming == CLUDA_NAMING_NVLABS && report.ignored == 2 &&
                 report.missing_head == head_entries + m.state.count,
             "NVlabs report: ignored %d (head.*), missing_head %d", report.ignored,
             report.missing_head);
  same_entries(&m.params, params, fresh_p, "backbone.", "NVlabs round trip: encoder identical");
  float *sentinel = alloc_table(&m.params, 0.5f);
  same_entries(&m.params, sentinel, fresh_p, "decode_head.", "NVlabs: head left as it was");
  free(sentinel);

  /* A rejected file leaves the buffers untouched. */
  float *before = alloc_table(&m.params, 0.0f);
  memcpy(before, got_p, m.params.total * sizeof(float));
  write_checkpoint(&m, params, state, NAMING_NVLABS, path);
  TEST_FAILS(cluda_load_safetensors(path, &m, got_p, got_s, NULL, NULL), CLUDA_ERR_SHAPE,
             "missing tensor for decode_head.");
  TEST_CHECK(memcmp(before, got_p, m.params.total * sizeof(float)) == 0,
             "failed load wrote nothing");
  free(before);
  free(fresh_p);
  free(fresh_s);
  free(params);
  free(state);
  free(got_p);
  free(got_s);
  cluda_segmentor_free(&m);

  /* SegFormer head: Hugging Face naming (K/V split, permuted linear_fuse, batch_norm,
   * classifier) and mmseg naming with NVlabs' own head names and concat order. */
  if (!TEST_OK(make_model(&m, "tiny", CLUDA_HEAD_SEGFORMER, NULL, 32, 32, 19))) return;
  params = random_table(&m.params, 3);
  state = random_table(&m.state, 4);
  got_p = alloc_table(&m.params, 0.0f);
  got_s = alloc_table(&m.state, 0.0f);
  write_checkpoint(&m, params, state, NAMING_HF, path);
  TEST_OK(cluda_load_safetensors(path, &m, got_p, got_s, NULL, &report));
  TEST_CHECK(report.naming == CLUDA_NAMING_HF && report.ignored == 2, "HF report: ignored %d",
             report.ignored);
  same_entries(&m.params, params, got_p, "", "HF round trip: params identical");
  same_entries(&m.state, state, got_s, "", "HF round trip: BN statistics identical");
  memset(got_p, 0, m.params.total * sizeof(float));
  write_checkpoint(&m, params, state, NAMING_NV_HEAD, path);
  TEST_OK(cluda_load_safetensors(path, &m, got_p, got_s, NULL, &report));
  same_entries(&m.params, params, got_p, "",
               "mmseg + NVlabs SegFormer head (linear_c1..4, [c4..c1]) round trip");

  /* Naming forced by the caller, and the wrong one. */
  cluda_load_options forced = {CLUDA_NAMING_NVLABS, 1};
  write_checkpoint(&m, params, state, NAMING_HF, path);
  TEST_FAILS(cluda_load_safetensors(path, &m, got_p, got_s, &forced, NULL), CLUDA_ERR_SHAPE,
             "unexpected tensor");
  free(params);
  free(state);
  free(got_p);
  free(got_s);
  cluda_segmentor_free(&m);
}

static int64_t numel(const cluda_st_tensor *t) {
  int64_t n = 1;
  for (int d = 0; d < t->ndim; d++)
    n *= t->shape[d];
  return n;
}

static float *read_tensor(const cluda_safetensors *st, const char *name) {
  int i = cluda_safetensors_find(st, name);
  if (!TEST_CHECK(i >= 0, "fixture has %s", name)) return test_alloc_f32(1);
  float *x = test_alloc_f32(numel(&st->tensors[i]));
  TEST_OK(cluda_safetensors_read_f32(st, i, x, (size_t)numel(&st->tensors[i])));
  return x;
}

static const float *entry(const cluda_param_table *t, const float *base, const char *name) {
  int i = cluda_param_table_find(t, name);
  TEST_CHECK(i >= 0, "model has %s", name);
  return base + t->items[i < 0 ? 0 : i].offset;
}

/* Real Hugging Face files: every key maps, and the values land where model.md 7.3 says. */
static void test_hf_fixtures(void) {
  cluda_mit_config enc = hf_tiny_encoder();
  cluda_segmentor m;
  if (!TEST_OK(make_model(&m, NULL, CLUDA_HEAD_SEGFORMER, &enc, 16, 16, 5))) return;
  const char *hub = CLUDA_FIXTURE_DIR "/weights/hf_tiny_segformer.safetensors";
  const char *v5 = CLUDA_FIXTURE_DIR "/weights/hf_tiny_segformer_v5.safetensors";
  float *p = alloc_table(&m.params, 0.0f), *s = alloc_table(&m.state, 0.0f);
  float *p5 = alloc_table(&m.params, 1.0f), *s5 = alloc_table(&m.state, 1.0f);
  cluda_load_report report;
  TEST_OK(cluda_load_safetensors(hub, &m, p, s, NULL, &report));
  TEST_CHECK(report.naming == CLUDA_NAMING_HF && report.ignored == 1 && report.loaded == 145 &&
                 report.missing_head == 0,
             "hub-named HF file: naming %d loaded %d ignored %d", report.naming, report.loaded,
             report.ignored);
  TEST_OK(cluda_load_safetensors(v5, &m, p5, s5, NULL, &report));
  TEST_CHECK(report.naming == CLUDA_NAMING_HF && report.loaded == 145,
             "transformers-5-named HF file loaded %d", report.loaded);
  same_entries(&m.params, p, p5, "", "both HF namings give identical params");
  same_entries(&m.state, s, s5, "", "both HF namings give identical BN statistics");

  cluda_safetensors st;
  if (TEST_OK(cluda_safetensors_open(hub, &st))) {
    /* K/V fusion: key rows then value rows, weights and biases. */
    const char *pre = "segformer.encoder.block.0.1.attention.self.";
    char name[128];
    snprintf(name, sizeof name, "%skey.weight", pre);
    float *kw = read_tensor(&st, name);
    snprintf(name, sizeof name, "%svalue.weight", pre);
    float *vw = read_tensor(&st, name);
    snprintf(name, sizeof name, "%skey.bias", pre);
    float *kb = read_tensor(&st, name);
    snprintf(name, sizeof name, "%svalue.bias", pre);
    float *vb = read_tensor(&st, name);
    const float *kv_w = entry(&m.params, p, "backbone.block1.1.attn.kv.weight");
    const float *kv_b = entry(&m.params, p, "backbone.block1.1.attn.kv.bias");
    TEST_CHECK(memcmp(kv_w, kw, 64 * 4) == 0 && memcmp(kv_w + 64, vw, 64 * 4) == 0,
               "kv.weight = [key; value]");
    TEST_CHECK(memcmp(kv_b, kb, 8 * 4) == 0 && memcmp(kv_b + 8, vb, 8 * 4) == 0,
               "kv.bias = [key; value]");
    free(kw), free(vw), free(kb), free(vb);

    /* OIHW -> OHWI (patch_embed1 [8, 3, 7, 7] and the SR conv [8, 8, 8, 8]). */
    float *pe = read_tensor(&st, "segformer.encoder.patch_embeddings.0.proj.weight");
    const float *ours = entry(&m.params, p, "backbone.patch_embed1.proj.weight");
    int bad = 0;
    for (int o = 0; o < 8; o++)
      for (int i = 0; i < 3; i++)
        for (int h = 0; h < 7; h++)
          for (int w = 0; w < 7; w++)
            bad += ours[((o * 7 + h) * 7 + w) * 3 + i] != pe[((o * 3 + i) * 7 + h) * 7 + w];
    TEST_CHECK(bad == 0, "patch_embed1 OIHW -> OHWI (%d wrong)", bad);
    free(pe);

    /* linear_fuse: our input block b (c_{b+1}) is HF's block 3 - b. */
    float *fuse = read_tensor(&st, "decode_head.linear_fuse.weight");
    ours = entry(&m.params, p, "decode_head.linear_fuse.conv.weight");
    bad = 0;
    for (int o = 0; o < 16; o++)
      for (int b = 0; b < 4; b++)
        for (int e = 0; e < 16; e++)
          bad += ours[o * 64 + b * 16 + e] != fuse[o * 64 + (3 - b) * 16 + e];
    TEST_CHECK(bad == 0, "linear_fuse input blocks [c4..c1] -> [c1..c4] (%d wrong)", bad);
    free(fuse);

    float *rm = read_tensor(&st, "decode_head.batch_norm.running_mean");
    TEST_CHECK(memcmp(entry(&m.state, s, "decode_head.linear_fuse.bn.running_mean"), rm, 16 * 4) ==
                   0,
               "batch_norm.running_mean -> state linear_fuse.bn.running_mean");
    free(rm);
    float *cls = read_tensor(&st, "decode_head.classifier.weight");
    TEST_CHECK(memcmp(entry(&m.params, p, "decode_head.linear_pred.weight"), cls, 5 * 16 * 4) == 0,
               "classifier -> linear_pred (1x1: same bytes)");
    free(cls);
    float *lc = read_tensor(&st, "decode_head.linear_c.2.proj.weight");
    TEST_CHECK(memcmp(entry(&m.params, p, "decode_head.linear_c.2.proj.weight"), lc, 16 * 24 * 4) ==
                   0,
               "linear_c.2 -> linear_c.2");
    free(lc);
    cluda_safetensors_close(&st);
  }

  /* ImageNet classification file: encoder + ignored classifier.*. */
  const char *imnet = CLUDA_FIXTURE_DIR "/weights/hf_tiny_imagenet.safetensors";
  TEST_FAILS(cluda_load_safetensors(imnet, &m, p, s, NULL, NULL), CLUDA_ERR_SHAPE,
             "missing tensor for decode_head.");
  cluda_load_options opt = {CLUDA_NAMING_AUTO, 1};
  TEST_OK(cluda_load_safetensors(imnet, &m, p, s, &opt, &report));
  TEST_CHECK(report.ignored == 2 && report.loaded == 130 && report.missing_head > 0,
             "ImageNet HF file: loaded %d ignored %d missing_head %d", report.loaded,
             report.ignored, report.missing_head);
  same_entries(&m.params, p, p5, "decode_head.", "ImageNet file leaves the head as it was");
  if (TEST_OK(cluda_safetensors_open(imnet, &st))) {
    float *b = read_tensor(&st, "segformer.encoder.layer_norm.3.bias");
    TEST_CHECK(memcmp(entry(&m.params, p, "backbone.norm4.bias"), b, 32 * 4) == 0,
               "layer_norm.3 -> norm4");
    free(b);
    cluda_safetensors_close(&st);
  }
  free(p), free(s), free(p5), free(s5);
  cluda_segmentor_free(&m);
}

/* An encoder file (NVlabs naming) of the given model's shapes, all zeros. */
static void write_header_only_encoder(const cluda_segmentor *m, const char *path) {
  static st_writer w;
  for (int k = 0; k < m->params.count; k++) {
    const cluda_param_info *p = &m->params.items[k];
    if (strncmp(p->name, "backbone.", 9) != 0) continue;
    int64_t shape[4];
    for (int d = 0; d < p->ndim; d++)
      shape[d] = p->shape[d];
    if (p->ndim == 4) shape[1] = p->shape[3], shape[2] = p->shape[1], shape[3] = p->shape[2];
    st_add(&w, p->name + 9, "F32", p->ndim, shape, p->count * 4);
    memset(w.items[w.count - 1].bytes, 0, p->count * 4);
  }
  st_write(&w, path);
}

static void test_errors(void) {
  char path[256];
  temp_file(path, sizeof path, "bad.safetensors");
  cluda_segmentor b0, b1, m;
  if (!TEST_OK(make_model(&b0, "b0", CLUDA_HEAD_SEGFORMER, NULL, 32, 32, 19)) ||
      !TEST_OK(make_model(&b1, "b1", CLUDA_HEAD_SEGFORMER, NULL, 32, 32, 19)))
    return;
  float *p0 = alloc_table(&b0.params, 0.0f), *s0 = alloc_table(&b0.state, 0.0f);
  cluda_load_options opt = {CLUDA_NAMING_AUTO, 1};
  write_header_only_encoder(&b1, path); /* B1 ImageNet encoder (NVlabs naming) */
  TEST_FAILS(cluda_load_safetensors(path, &b0, p0, s0, &opt, NULL), CLUDA_ERR_SHAPE,
             "another encoder: embed dims [64,128,320,512]");
  free(p0), free(s0);
  cluda_segmentor_free(&b0);
  cluda_segmentor_free(&b1);

  if (!TEST_OK(make_model(&m, "tiny", CLUDA_HEAD_DAFORMER, NULL, 64, 64, 19))) return;
  float *params = random_table(&m.params, 7), *state = random_table(&m.state, 8);
  static st_writer w;
  /* A 5-class model reading a 19-class checkpoint. */
  cluda_segmentor five;
  TEST_OK(make_model(&five, "tiny", CLUDA_HEAD_DAFORMER, NULL, 64, 64, 5));
  float *fp = alloc_table(&five.params, 0.0f), *fs = alloc_table(&five.state, 0.0f);
  write_checkpoint(&m, params, state, NAMING_MMSEG, path);
  TEST_FAILS(cluda_load_safetensors(path, &five, fp, fs, NULL, NULL), CLUDA_ERR_SHAPE,
             "decode_head.conv_seg.weight: file has [19,64,1,1], model expects [5,1,1,64] (OHWI "
             "of [5,64,1,1])");
  free(fp), free(fs);
  cluda_segmentor_free(&five);

  /* A DAFormer checkpoint into a SegFormer model. */
  cluda_segmentor seg;
  TEST_OK(make_model(&seg, "tiny", CLUDA_HEAD_SEGFORMER, NULL, 64, 64, 19));
  fp = alloc_table(&seg.params, 0.0f);
  fs = alloc_table(&seg.state, 0.0f);
  TEST_FAILS(cluda_load_safetensors(path, &seg, fp, fs, NULL, NULL), CLUDA_ERR_SHAPE,
             "holds a DAFormer decode head");
  free(fp), free(fs);
  cluda_segmentor_free(&seg);

  float *got_p = alloc_table(&m.params, 0.0f), *got_s = alloc_table(&m.state, 0.0f);
  /* Unexpected, missing, duplicate, integer-typed and unnamed tensors. */
  cluda_safetensors st;

  int64_t one = 3;
  float three[3] = {1, 2, 3};
  w.count = 0;
  st_add_f32(&w, "backbone.block1.0.attn.extra.weight", 1, &one, three);
  for (int k = 0; k < m.params.count; k++)
    add_entry_named(&w, &m.params.items[k], params, m.params.items[k].name, 0);
  for (int k = 0; k < m.state.count; k++)
    add_entry_named(&w, &m.state.items[k], state, m.state.items[k].name, 0);
  st_write(&w, path);
  TEST_FAILS(cluda_load_safetensors(path, &m, got_p, got_s, NULL, NULL), CLUDA_ERR_SHAPE,
             "unexpected tensor 'backbone.block1.0.attn.extra.weight'");

  for (int k = 0; k < m.params.count; k++)
    if (strcmp(m.params.items[k].name, "backbone.block2.1.attn.q.bias") != 0)
      add_entry_named(&w, &m.params.items[k], params, m.params.items[k].name, 0);
  for (int k = 0; k < m.state.count; k++)
    add_entry_named(&w, &m.state.items[k], state, m.state.items[k].name, 0);
  st_write(&w, path);
  TEST_FAILS(cluda_load_safetensors(path, &m, got_p, got_s, &opt, NULL), CLUDA_ERR_SHAPE,
             "missing tensor for backbone.block2.1.attn.q.bias (1 missing in all)");

  for (int k = 0; k < m.params.count; k++) {
    add_entry_named(&w, &m.params.items[k], params, m.params.items[k].name, 0);
    if (k == 0) {
      char name[160];
      snprintf(name, sizeof name, "model.%s", m.params.items[0].name);
      add_entry_named(&w, &m.params.items[k], params, name, 0);
    }
  }
  for (int k = 0; k < m.state.count; k++)
    add_entry_named(&w, &m.state.items[k], state, m.state.items[k].name, 0);
  st_write(&w, path);
  TEST_FAILS(cluda_load_safetensors(path, &m, got_p, got_s, NULL, NULL), CLUDA_ERR_SHAPE,
             "both map to backbone.patch_embed1.proj.weight");

  for (int k = 0; k < m.params.count; k++) {
    const cluda_param_info *p = &m.params.items[k];
    if (strcmp(p->name, "backbone.norm4.bias") == 0) {
      st_add(&w, p->name, "I64", 1, (int64_t[]){p->shape[0]}, p->count * 8);
      memset(w.items[w.count - 1].bytes, 0, p->count * 8);
    } else {
      add_entry_named(&w, p, params, p->name, 0);
    }
  }
  for (int k = 0; k < m.state.count; k++)
    add_entry_named(&w, &m.state.items[k], state, m.state.items[k].name, 0);
  st_write(&w, path);
  TEST_FAILS(cluda_load_safetensors(path, &m, got_p, got_s, NULL, NULL), CLUDA_ERR_DTYPE,
             "'backbone.norm4.bias' has dtype I64");

  st_add_f32(&w, "encoder.layer1.weight", 1, &one, three);
  st_write(&w, path);
  TEST_FAILS(cluda_load_safetensors(path, &m, got_p, got_s, NULL, NULL), CLUDA_ERR_IO,
             "cannot tell the naming");

  char missing[256];
  temp_file(missing, sizeof missing, "absent.safetensors");
  TEST_FAILS(cluda_load_safetensors(missing, &m, got_p, got_s, NULL, NULL), CLUDA_ERR_IO,
             "cannot open");
  unlink(path);
  free(params), free(state), free(got_p), free(got_s);
  cluda_segmentor_free(&m);

  /* HF file missing one half of a kv pair. */
  cluda_mit_config enc = hf_tiny_encoder();
  if (TEST_OK(make_model(&m, NULL, CLUDA_HEAD_SEGFORMER, &enc, 16, 16, 5))) {
    const char *hub = CLUDA_FIXTURE_DIR "/weights/hf_tiny_segformer.safetensors";
    got_p = alloc_table(&m.params, 0.0f);
    got_s = alloc_table(&m.state, 0.0f);
    if (TEST_OK(cluda_safetensors_open(hub, &st))) {
      for (int i = 0; i < st.count; i++) {
        const cluda_st_tensor *t = &st.tensors[i];
        if (strcmp(t->name, "segformer.encoder.block.2.0.attention.self.value.weight") == 0 ||
            t->dtype != CLUDA_ST_F32)
          continue;
        st_entry *e = st_add(&w, t->name, "F32", t->ndim, t->shape, t->end - t->begin);
        cluda_safetensors_read_f32(&st, i, (float *)e->bytes, (t->end - t->begin) / 4);
      }
      cluda_safetensors_close(&st);
      st_write(&w, path);
      TEST_FAILS(cluda_load_safetensors(path, &m, got_p, got_s, NULL, NULL), CLUDA_ERR_SHAPE,
                 "missing tensor for backbone.block3.0.attn.kv.weight (value rows)");
    }
    free(got_p), free(got_s);
    cluda_segmentor_free(&m);
  }
  unlink(path);
}

/* ---- HDF5 weight file ---- */

static int count_temp_files(void) {
  DIR *d = opendir(temp_dir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)) != NULL)
    n += strstr(e->d_name, ".tmp.") != NULL;
  if (d) closedir(d);
  return n;
}

static void test_h5(void) {
  char path[256], other[256];
  temp_file(path, sizeof path, "weights.h5");
  temp_file(other, sizeof other, "other.h5");
  cluda_segmentor m;
  if (!TEST_OK(make_model(&m, "tiny", CLUDA_HEAD_DAFORMER, NULL, 128, 64, 19))) return;
  float *params = random_table(&m.params, 11), *state = random_table(&m.state, 12);
  float *got_p = alloc_table(&m.params, 0.0f), *got_s = alloc_table(&m.state, 0.0f);
  TEST_OK(cluda_weights_save_h5(path, &m, params, state));
  TEST_CHECK(count_temp_files() == 0, "no temp file left after saving");
  TEST_OK(cluda_weights_load_h5(path, &m, got_p, got_s));
  same_entries(&m.params, params, got_p, "", "HDF5 round trip: params identical");
  same_entries(&m.state, state, got_s, "", "HDF5 round trip: BN statistics identical");

  /* The layout as other tools see it. */
  hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
  if (TEST_CHECK(f >= 0, "h5 file opens")) {
    hid_t d = H5Dopen2(f, "/params/backbone.patch_embed1.proj.weight", H5P_DEFAULT);
    hid_t space = H5Dget_space(d);
    hsize_t dims[4];
    H5Sget_simple_extent_dims(space, dims, NULL);
    TEST_CHECK(dims[0] == 16 && dims[1] == 7 && dims[2] == 7 && dims[3] == 3,
               "patch_embed1 stored OHWI [16,7,7,3]");
    hid_t attr = H5Aopen(d, "layout", H5P_DEFAULT);
    hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    char *layout = NULL;
    H5Aread(attr, type, &layout);
    TEST_CHECK(layout && strcmp(layout, "OHWI") == 0, "layout attribute OHWI");
    H5free_memory(layout);
    H5Tclose(type), H5Aclose(attr), H5Sclose(space), H5Dclose(d);
    int dims_attr[4] = {0};
    attr = H5Aopen(f, "embed_dims", H5P_DEFAULT);
    H5Aread(attr, H5T_NATIVE_INT, dims_attr);
    H5Aclose(attr);
    TEST_CHECK(dims_attr[0] == 16 && dims_attr[3] == 128, "embed_dims attribute");
    TEST_CHECK(
        H5Lexists(f, "/state/decode_head.fuse_layer.bottleneck.bn.running_var", H5P_DEFAULT) > 0,
        "BN statistics under /state");
    H5Fclose(f);
  }
  if (system("command -v h5dump > /dev/null 2>&1") == 0) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "h5dump -H %s > /dev/null 2>&1", path);
    TEST_CHECK(system(cmd) == 0, "h5dump -H reads the file");
  }

  /* Another architecture, named by its attribute. */
  cluda_segmentor seg, wide;
  TEST_OK(make_model(&seg, "tiny", CLUDA_HEAD_SEGFORMER, NULL, 64, 64, 19));
  float *sp = alloc_table(&seg.params, 0.0f), *ss = alloc_table(&seg.state, 0.0f);
  TEST_FAILS(cluda_weights_load_h5(path, &seg, sp, ss), CLUDA_ERR_SHAPE,
             "head_kind is daformer in the file, segformer in the model");
  free(sp), free(ss);
  cluda_segmentor_free(&seg);
  TEST_OK(make_model(&wide, "b0", CLUDA_HEAD_DAFORMER, NULL, 128, 64, 19));
  sp = alloc_table(&wide.params, 0.0f);
  ss = alloc_table(&wide.state, 0.0f);
  TEST_FAILS(cluda_weights_load_h5(path, &wide, sp, ss), CLUDA_ERR_SHAPE,
             "embed_dims is [16,32,64,128] in the file, [32,64,160,256] in the model");
  free(sp), free(ss);
  cluda_segmentor_free(&wide);

  /* A missing and an extra dataset. */
  TEST_OK(cluda_weights_save_h5(other, &m, params, state));
  f = H5Fopen(other, H5F_ACC_RDWR, H5P_DEFAULT);
  H5Ldelete(f, "/params/backbone.block2.1.mlp.fc2.bias", H5P_DEFAULT);
  H5Fclose(f);
  TEST_FAILS(cluda_weights_load_h5(other, &m, got_p, got_s), CLUDA_ERR_SHAPE,
             "missing /params/backbone.block2.1.mlp.fc2.bias");
  TEST_OK(cluda_weights_save_h5(other, &m, params, state));
  f = H5Fopen(other, H5F_ACC_RDWR, H5P_DEFAULT);
  H5Lmove(f, "/params/backbone.norm4.bias", f, "/params/backbone.norm5.bias", H5P_DEFAULT,
          H5P_DEFAULT);
  H5Fclose(f);
  TEST_FAILS(cluda_weights_load_h5(other, &m, got_p, got_s), CLUDA_ERR_SHAPE,
             "unexpected /params/backbone.norm5.bias");

  /* Corrupt data (checksum), a truncated file and garbage. */
  TEST_OK(cluda_weights_save_h5(other, &m, params, state));
  f = H5Fopen(other, H5F_ACC_RDONLY, H5P_DEFAULT);
  hid_t d = H5Dopen2(f, "/params/backbone.block1.0.attn.q.weight", H5P_DEFAULT);
  haddr_t offset = H5Dget_offset(d);
  H5Dclose(d), H5Fclose(f);
  FILE *raw = fopen(other, "r+b");
  fseek(raw, (long)offset + 10, SEEK_SET);
  fputc(0x5A, raw);
  fclose(raw);
  TEST_FAILS(cluda_weights_load_h5(other, &m, got_p, got_s), CLUDA_ERR_IO,
             "backbone.block1.0.attn.q.weight fails its checksum");
  TEST_OK(cluda_weights_save_h5(other, &m, params, state));
  struct stat sb;
  stat(other, &sb);
  if (truncate(other, sb.st_size / 2) != 0) perror("truncate");
  TEST_FAILS(cluda_weights_load_h5(other, &m, got_p, got_s), CLUDA_ERR_IO,
             "not a readable HDF5 file");
  raw = fopen(other, "wb");
  fputs("this is not HDF5", raw);
  fclose(raw);
  TEST_FAILS(cluda_weights_load_h5(other, &m, got_p, got_s), CLUDA_ERR_IO,
             "not a readable HDF5 file");
  unlink(other);
  TEST_FAILS(cluda_weights_load_h5(other, &m, got_p, got_s), CLUDA_ERR_IO, "cannot open");

  /* Atomic save: a failing save never touches the published file nor leaves a temp. */
  char tmp[300];
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
  mkdir(tmp, 0700); /* the temp name is taken: creating the file fails */
  TEST_FAILS(cluda_weights_save_h5(path, &m, state, state), CLUDA_ERR_IO, "cannot create");
  rmdir(tmp);
  TEST_OK(cluda_weights_load_h5(path, &m, got_p, got_s));
  same_entries(&m.params, params, got_p, "", "failed save left the previous file intact");
  char dir_target[256];
  temp_file(dir_target, sizeof dir_target, "a_directory.h5");
  mkdir(dir_target, 0700); /* rename onto a directory fails after the temp is complete */
  TEST_FAILS(cluda_weights_save_h5(dir_target, &m, params, state), CLUDA_ERR_IO, "rename");
  TEST_CHECK(count_temp_files() == 0, "failed publish removed its temp file");
  rmdir(dir_target);
  char nodir[256];
  temp_file(nodir, sizeof nodir, "no/such/dir/w.h5");
  TEST_FAILS(cluda_weights_save_h5(nodir, &m, params, state), CLUDA_ERR_IO, "cannot create");

  unlink(path);
  free(params), free(state), free(got_p), free(got_s);
  cluda_segmentor_free(&m);
}

int main(int argc, char **argv) {
  (void)argc;
  snprintf(temp_dir, sizeof temp_dir, "/tmp/cluda_test_weights_XXXXXX");
  if (!mkdtemp(temp_dir)) {
    perror("mkdtemp");
    return 1;
  }
  test_round_trips();
  test_hf_fixtures();
  test_errors();
  test_h5();
  rmdir(temp_dir);
  return test_finish(argv[0]);
}

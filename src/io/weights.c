/* Loading safetensors weights into a segmentor: naming detection, the Hugging Face / NVlabs
 * -> mmseg name map (model.md 7.3), K/V fusion, OIHW -> OHWI and the SegFormer linear_fuse
 * block permutation. Everything is validated (names, architecture, shapes, coverage) before
 * the first value is written, so a rejected file leaves params and state untouched. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/weights.h"

enum { PART_WHOLE = 0, PART_KV_KEY = 1, PART_KV_VALUE = 2 };
enum { MAP_NONE = 0, MAP_OK = 1, MAP_IGNORED = 2 };
enum { TABLE_NONE = 0, TABLE_PARAMS = 1, TABLE_STATE = 2 };
enum { MAPPED_NAME_MAX = 192 };

/* What one file tensor becomes. */
typedef struct key_target {
  int status;       /* MAP_* */
  int table;        /* TABLE_* */
  int index;        /* entry in that table */
  int part;         /* PART_*: K/V halves of a fused kv entry */
  int permute_fuse; /* linear_fuse input blocks stored [c4, c3, c2, c1] */
  char name[MAPPED_NAME_MAX];
} key_target;

static int starts_with(const char *s, const char *prefix) {
  return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Reads "<digits>." at *p; advances past the dot. */
static int take_index(const char **p, int *value) {
  const char *s = *p;
  int v = 0, digits = 0;
  while (*s >= '0' && *s <= '9' && digits < 6) {
    v = v * 10 + (*s - '0');
    s++;
    digits++;
  }
  if (digits == 0 || *s != '.') return 0;
  *p = s + 1;
  *value = v;
  return 1;
}

/* Hugging Face encoder key (after "segformer.") -> mmseg key under "backbone.". Two HF
 * namings exist: the hub files' ("encoder.block.0.0.attention.self.key.weight") and the
 * module names of transformers >= 5 ("stages.0.blocks.0.attention.k_proj.weight"). */
static int map_hf_encoder(const char *key, char *out, size_t cap, int *part) {
  static const struct {
    const char *hf, *mmseg;
    int part;
  } block_parts[] = {
      {"layer_norm_1.", "norm1.", PART_WHOLE},
      {"attention.self.query.", "attn.q.", PART_WHOLE},
      {"attention.self.key.", "attn.kv.", PART_KV_KEY},
      {"attention.self.value.", "attn.kv.", PART_KV_VALUE},
      {"attention.self.sr.", "attn.sr.", PART_WHOLE},
      {"attention.self.layer_norm.", "attn.norm.", PART_WHOLE},
      {"attention.output.dense.", "attn.proj.", PART_WHOLE},
      {"layer_norm_2.", "norm2.", PART_WHOLE},
      {"mlp.dense1.", "mlp.fc1.", PART_WHOLE},
      {"mlp.dwconv.dwconv.", "mlp.dwconv.dwconv.", PART_WHOLE},
      {"mlp.dense2.", "mlp.fc2.", PART_WHOLE},
      /* transformers >= 5 */
      {"layernorm_before.", "norm1.", PART_WHOLE},
      {"attention.q_proj.", "attn.q.", PART_WHOLE},
      {"attention.k_proj.", "attn.kv.", PART_KV_KEY},
      {"attention.v_proj.", "attn.kv.", PART_KV_VALUE},
      {"attention.sequence_reduction.sequence_reduction.", "attn.sr.", PART_WHOLE},
      {"attention.sequence_reduction.layer_norm.", "attn.norm.", PART_WHOLE},
      {"attention.o_proj.", "attn.proj.", PART_WHOLE},
      {"layernorm_after.", "norm2.", PART_WHOLE},
      {"mlp.fc1.", "mlp.fc1.", PART_WHOLE},
      {"mlp.fc2.", "mlp.fc2.", PART_WHOLE},
  };
  const char *p = key;
  int stage, j;
  *part = PART_WHOLE;
  int have_block = 0;
  if (starts_with(p, "encoder.patch_embeddings.")) {
    p += strlen("encoder.patch_embeddings.");
    if (!take_index(&p, &stage)) return 0;
  } else if (starts_with(p, "encoder.layer_norm.")) {
    p += strlen("encoder.layer_norm.");
    if (!take_index(&p, &stage)) return 0;
    return snprintf(out, cap, "backbone.norm%d.%s", stage + 1, p) < (int)cap;
  } else if (starts_with(p, "encoder.block.")) {
    p += strlen("encoder.block.");
    if (!take_index(&p, &stage) || !take_index(&p, &j)) return 0;
    have_block = 1;
  } else if (starts_with(p, "stages.")) {
    p += strlen("stages.");
    if (!take_index(&p, &stage)) return 0;
    if (starts_with(p, "layer_norm."))
      return snprintf(out, cap, "backbone.norm%d.%s", stage + 1, p + strlen("layer_norm.")) <
             (int)cap;
    if (starts_with(p, "patch_embeddings.")) {
      p += strlen("patch_embeddings.");
    } else if (starts_with(p, "blocks.")) {
      p += strlen("blocks.");
      if (!take_index(&p, &j)) return 0;
      have_block = 1;
    } else {
      return 0;
    }
  } else {
    return 0;
  }
  if (!have_block) { /* patch embedding of `stage` */
    if (starts_with(p, "proj."))
      return snprintf(out, cap, "backbone.patch_embed%d.proj.%s", stage + 1, p + 5) < (int)cap;
    if (starts_with(p, "layer_norm."))
      return snprintf(out, cap, "backbone.patch_embed%d.norm.%s", stage + 1, p + 11) < (int)cap;
    return 0;
  }
  for (size_t k = 0; k < sizeof block_parts / sizeof block_parts[0]; k++) {
    if (!starts_with(p, block_parts[k].hf)) continue;
    *part = block_parts[k].part;
    return snprintf(out, cap, "backbone.block%d.%d.%s%s", stage + 1, j, block_parts[k].mmseg,
                    p + strlen(block_parts[k].hf)) < (int)cap;
  }
  return 0;
}

/* File key -> mmseg name in `out` (MAP_OK), MAP_IGNORED (deliberately dropped) or MAP_NONE.
 * nv_head: the file's SegFormer head uses NVlabs names "linear_c{k}" and [c4..c1] order. */
static int map_key(cluda_naming naming, const char *key, int nv_head, char *out, size_t cap,
                   int *part, int *permute_fuse) {
  *part = PART_WHOLE;
  *permute_fuse = 0;
  if (ends_with(key, ".num_batches_tracked")) return MAP_IGNORED;
  switch (naming) {
  case CLUDA_NAMING_MMSEG: {
    /* UDA checkpoints: the student is "model.*"; teacher and ImageNet copies are dropped. */
    if (starts_with(key, "ema_model.") || starts_with(key, "imnet_model.")) return MAP_IGNORED;
    if (starts_with(key, "model.")) key += strlen("model.");
    const char *nv = "decode_head.linear_c";
    if (starts_with(key, nv) && key[strlen(nv)] >= '1' && key[strlen(nv)] <= '4' &&
        key[strlen(nv) + 1] == '.') {
      int level = key[strlen(nv)] - '1';
      return snprintf(out, cap, "decode_head.linear_c.%d.%s", level, key + strlen(nv) + 2) <
                     (int)cap
                 ? MAP_OK
                 : MAP_NONE;
    }
    if (nv_head && strcmp(key, "decode_head.linear_fuse.conv.weight") == 0) *permute_fuse = 1;
    return snprintf(out, cap, "%s", key) < (int)cap ? MAP_OK : MAP_NONE;
  }
  case CLUDA_NAMING_NVLABS:
    if (starts_with(key, "head.")) return MAP_IGNORED; /* ImageNet classifier */
    return snprintf(out, cap, "backbone.%s", key) < (int)cap ? MAP_OK : MAP_NONE;
  case CLUDA_NAMING_HF:
    if (starts_with(key, "classifier.")) return MAP_IGNORED; /* ImageNet classifier */
    if (starts_with(key, "segformer."))
      return map_hf_encoder(key + strlen("segformer."), out, cap, part) ? MAP_OK : MAP_NONE;
    if (starts_with(key, "decode_head.linear_c."))
      return snprintf(out, cap, "%s", key) < (int)cap ? MAP_OK : MAP_NONE;
    if (starts_with(key, "decode_head.linear_projections.")) /* transformers >= 5 */
      return snprintf(out, cap, "decode_head.linear_c.%s",
                      key + strlen("decode_head.linear_projections.")) < (int)cap
                 ? MAP_OK
                 : MAP_NONE;
    if (strcmp(key, "decode_head.linear_fuse.weight") == 0) {
      *permute_fuse = 1; /* HF concatenates [c4, c3, c2, c1] */
      snprintf(out, cap, "decode_head.linear_fuse.conv.weight");
      return MAP_OK;
    }
    if (starts_with(key, "decode_head.batch_norm."))
      return snprintf(out, cap, "decode_head.linear_fuse.bn.%s",
                      key + strlen("decode_head.batch_norm.")) < (int)cap
                 ? MAP_OK
                 : MAP_NONE;
    if (starts_with(key, "decode_head.classifier."))
      return snprintf(out, cap, "decode_head.linear_pred.%s",
                      key + strlen("decode_head.classifier.")) < (int)cap
                 ? MAP_OK
                 : MAP_NONE;
    return MAP_NONE;
  case CLUDA_NAMING_AUTO: break;
  }
  return MAP_NONE;
}

static const char *naming_name(cluda_naming naming) {
  switch (naming) {
  case CLUDA_NAMING_AUTO: return "auto";
  case CLUDA_NAMING_MMSEG: return "mmseg";
  case CLUDA_NAMING_NVLABS: return "NVlabs";
  case CLUDA_NAMING_HF: return "Hugging Face";
  }
  return "?";
}

/* The tail of a long path, so messages keep room for the key and shapes. */
static const char *short_path(const char *path) {
  size_t n = strlen(path);
  return n > 48 ? path + n - 48 : path;
}

static cluda_status detect_naming(const cluda_safetensors *st, cluda_naming *naming) {
  int hf = 0, mmseg = 0, nvlabs = 0;
  for (int i = 0; i < st->count; i++) {
    const char *k = st->tensors[i].name;
    if (starts_with(k, "segformer.")) hf = 1;
    if (starts_with(k, "backbone.") || starts_with(k, "model.backbone.") ||
        starts_with(k, "model.decode_head.") || starts_with(k, "ema_model.backbone."))
      mmseg = 1;
    if (starts_with(k, "patch_embed1.")) nvlabs = 1;
  }
  /* HF segmentation files also carry "decode_head.*", so "segformer." decides first; a bare
   * "decode_head.*" file (head only) is mmseg. */
  if (hf)
    *naming = CLUDA_NAMING_HF;
  else if (mmseg)
    *naming = CLUDA_NAMING_MMSEG;
  else if (nvlabs)
    *naming = CLUDA_NAMING_NVLABS;
  else {
    for (int i = 0; i < st->count; i++)
      if (starts_with(st->tensors[i].name, "decode_head.")) mmseg = 1;
    if (!mmseg)
      return CLUDA_FAIL(CLUDA_ERR_IO,
                        "%s: cannot tell the naming: no key starts with backbone., model., "
                        "segformer. or patch_embed1. (first key '%.60s')",
                        short_path(st->path), st->count ? st->tensors[0].name : "");
    *naming = CLUDA_NAMING_MMSEG;
  }
  return cluda_ok();
}

static void format_shape(char *buf, size_t cap, int ndim, const int64_t *dims) {
  size_t n = (size_t)snprintf(buf, cap, "[");
  for (int i = 0; i < ndim && n < cap; i++)
    n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? "," : "", (long long)dims[i]);
  if (n < cap) snprintf(buf + n, cap - n, "]");
}

static void format_ints(char *buf, size_t cap, const int *v, int n) {
  int64_t dims[8];
  for (int i = 0; i < n; i++)
    dims[i] = v[i];
  format_shape(buf, cap, n, dims);
}

/* The shape the file must hold for a target: PyTorch layout (OIHW for 4-d), halved rows for
 * a K or V part of kv. */
static void expected_file_shape(const cluda_param_info *info, int part, int *ndim,
                                int64_t dims[4]) {
  *ndim = info->ndim;
  if (info->ndim == 4) {
    dims[0] = info->shape[0];
    dims[1] = info->shape[3];
    dims[2] = info->shape[1];
    dims[3] = info->shape[2];
  } else {
    for (int i = 0; i < info->ndim; i++)
      dims[i] = info->shape[i];
  }
  if (part != PART_WHOLE) dims[0] /= 2;
}

/* Encoder widths, depths and head kind found in the file, against the model: a file of
 * another architecture is named as such instead of failing on its first odd tensor. */
static cluda_status check_architecture(const cluda_safetensors *st, const key_target *targets,
                                       const cluda_segmentor *model, cluda_naming naming) {
  const cluda_mit_config *enc = &model->cfg.encoder;
  int dims[4] = {0, 0, 0, 0}, depths[4] = {0, 0, 0, 0}, seen_encoder = 0;
  int daformer_head = 0, segformer_head = 0;
  for (int i = 0; i < st->count; i++) {
    const key_target *t = &targets[i];
    if (t->status != MAP_OK) continue;
    int stage, block;
    const char *p;
    const char *embed = "backbone.patch_embed";
    size_t embed_len = strlen(embed);
    if (starts_with(t->name, embed) && t->name[embed_len] >= '1' && t->name[embed_len] <= '4' &&
        strcmp(t->name + embed_len + 1, ".proj.weight") == 0 && st->tensors[i].ndim >= 1) {
      dims[t->name[embed_len] - '1'] = (int)st->tensors[i].shape[0];
      seen_encoder = 1;
    }
    if (starts_with(t->name, "backbone.block") && t->name[14] >= '1' && t->name[14] <= '4' &&
        t->name[15] == '.') {
      stage = t->name[14] - '0';
      p = t->name + 16;
      if (take_index(&p, &block) && block + 1 > depths[stage - 1]) depths[stage - 1] = block + 1;
    }
    if (starts_with(t->name, "decode_head.embed_layers.") ||
        starts_with(t->name, "decode_head.fuse_layer."))
      daformer_head = 1;
    if (starts_with(t->name, "decode_head.linear_fuse.") ||
        starts_with(t->name, "decode_head.linear_pred."))
      segformer_head = 1;
  }
  if (seen_encoder) {
    int differs = 0;
    for (int s = 0; s < 4; s++)
      differs |= dims[s] != enc->embed_dims[s] || depths[s] != enc->depths[s];
    if (differs) {
      char fd[48], fdep[48], md[48], mdep[48];
      format_ints(fd, sizeof fd, dims, 4);
      format_ints(fdep, sizeof fdep, depths, 4);
      format_ints(md, sizeof md, enc->embed_dims, 4);
      format_ints(mdep, sizeof mdep, enc->depths, 4);
      return CLUDA_FAIL(CLUDA_ERR_SHAPE,
                        "%s holds another encoder: embed dims %s depths %s; model (%s) has %s "
                        "depths %s",
                        short_path(st->path), fd, fdep, model->cfg.encoder_name, md, mdep);
    }
  }
  int model_daformer = model->cfg.head.kind == CLUDA_HEAD_DAFORMER;
  if ((daformer_head && !model_daformer) || (segformer_head && model_daformer))
    return CLUDA_FAIL(
        CLUDA_ERR_SHAPE, "%s (%s naming) holds a %s decode head; the model has a %s head",
        short_path(st->path), naming_name(naming), daformer_head ? "DAFormer" : "SegFormer",
        model_daformer ? "DAFormer" : "SegFormer");
  return cluda_ok();
}

/* Copies a PyTorch-layout tensor into its cluda entry: OIHW -> OHWI for 4-d weights (with
 * the input-channel blocks of an NVlabs/HF linear_fuse reversed to [c1..c4]); halves of kv
 * land in rows [0, C) (key) or [C, 2C) (value). */
static void place_tensor(const cluda_param_info *info, int part, int permute_fuse, const float *src,
                         float *base) {
  float *dst = base + info->offset;
  if (part == PART_KV_VALUE) dst += info->count / 2;
  size_t count = part == PART_WHOLE ? info->count : info->count / 2;
  if (info->ndim != 4) {
    memcpy(dst, src, count * sizeof *dst);
    return;
  }
  int O = info->shape[0], H = info->shape[1], W = info->shape[2], I = info->shape[3];
  int block = I / 4;
  for (int o = 0; o < O; o++)
    for (int h = 0; h < H; h++)
      for (int w = 0; w < W; w++)
        for (int i = 0; i < I; i++) {
          int src_i = permute_fuse ? (3 - i / block) * block + i % block : i;
          dst[(((size_t)o * H + h) * W + w) * I + i] =
              src[(((size_t)o * I + src_i) * H + h) * W + w];
        }
}

static const cluda_param_info *target_info(const cluda_segmentor *model, const key_target *t) {
  return t->table == TABLE_PARAMS ? &model->params.items[t->index] : &model->state.items[t->index];
}

/* Maps every file key and finds its model entry. */
static cluda_status resolve_targets(const cluda_safetensors *st, const cluda_segmentor *model,
                                    cluda_naming naming, key_target *targets) {
  int nv_head = 0;
  if (naming == CLUDA_NAMING_MMSEG)
    for (int i = 0; i < st->count; i++) {
      const char *k = st->tensors[i].name;
      if (starts_with(k, "model.")) k += strlen("model.");
      if (starts_with(k, "decode_head.linear_c") && k[20] >= '1' && k[20] <= '4') nv_head = 1;
    }
  for (int i = 0; i < st->count; i++) {
    key_target *t = &targets[i];
    t->status = map_key(naming, st->tensors[i].name, nv_head, t->name, sizeof t->name, &t->part,
                        &t->permute_fuse);
    if (t->status != MAP_OK) continue;
    t->index = cluda_param_table_find(&model->params, t->name);
    t->table = TABLE_PARAMS;
    if (t->index < 0) {
      t->index = cluda_param_table_find(&model->state, t->name);
      t->table = TABLE_STATE;
    }
    if (t->index < 0) {
      t->table = TABLE_NONE;
      /* mmseg's SegFormerHead owns an unused conv_seg (model.md 3.7). */
      if (model->cfg.head.kind == CLUDA_HEAD_SEGFORMER &&
          starts_with(t->name, "decode_head.conv_seg."))
        t->status = MAP_IGNORED;
    }
    if (t->part != PART_WHOLE && t->table != TABLE_NONE) {
      const cluda_param_info *info = target_info(model, t);
      if (info->shape[0] % 2 != 0) t->table = TABLE_NONE; /* not a fused kv entry */
    }
  }
  return cluda_ok();
}

static cluda_status check_targets(const cluda_safetensors *st, const cluda_segmentor *model,
                                  cluda_naming naming, const key_target *targets) {
  const char *path = short_path(st->path);
  for (int i = 0; i < st->count; i++) {
    const key_target *t = &targets[i];
    const char *key = st->tensors[i].name;
    if (t->status == MAP_NONE)
      return CLUDA_FAIL(CLUDA_ERR_SHAPE, "%s: unexpected tensor '%s' (%s naming; no model name)",
                        path, key, naming_name(naming));
    if (t->status == MAP_OK && t->table == TABLE_NONE)
      return CLUDA_FAIL(CLUDA_ERR_SHAPE, "%s: unexpected tensor '%s' (the model has no %s)", path,
                        key, t->name);
  }
  for (int i = 0; i < st->count; i++) {
    const key_target *t = &targets[i];
    if (t->status != MAP_OK) continue;
    const cluda_st_tensor *ft = &st->tensors[i];
    const cluda_param_info *info = target_info(model, t);
    CLUDA_REQUIRE(ft->dtype != CLUDA_ST_OTHER, CLUDA_ERR_DTYPE,
                  "%s: tensor '%s' has dtype %s (F32, F16, BF16 or F64 needed)", path, ft->name,
                  ft->dtype_name);
    int ndim;
    int64_t want[4] = {0, 0, 0, 0};
    expected_file_shape(info, t->part, &ndim, want);
    int same = ft->ndim == ndim;
    for (int d = 0; same && d < ndim; d++)
      same = ft->shape[d] == want[d];
    if (!same) {
      char file_s[64], want_s[64], model_s[64];
      int64_t model_dims[4];
      for (int d = 0; d < info->ndim; d++)
        model_dims[d] = info->shape[d];
      format_shape(file_s, sizeof file_s, ft->ndim, ft->shape);
      format_shape(want_s, sizeof want_s, ndim, want);
      format_shape(model_s, sizeof model_s, info->ndim, model_dims);
      const char *key = ft->name;
      if (t->part != PART_WHOLE)
        return CLUDA_FAIL(CLUDA_ERR_SHAPE, "%s: file has %s, model expects %s (half of %s %s)", key,
                          file_s, want_s, t->name, model_s);
      if (info->ndim == 4)
        return CLUDA_FAIL(CLUDA_ERR_SHAPE, "%s: file has %s, model expects %s (OHWI of %s)", key,
                          file_s, model_s, want_s);
      return CLUDA_FAIL(CLUDA_ERR_SHAPE, "%s: file has %s, model expects %s", key, file_s, want_s);
    }
    if (t->permute_fuse && (info->ndim != 4 || info->shape[3] % 4 != 0))
      return CLUDA_FAIL(CLUDA_ERR_SHAPE, "%s: linear_fuse input %d is not 4 blocks", ft->name,
                        info->ndim == 4 ? info->shape[3] : -1);
  }
  return cluda_ok();
}

/* Every model entry covered exactly once (kv by both halves); head entries may be absent
 * when allowed. */
static cluda_status check_coverage(const cluda_safetensors *st, const cluda_segmentor *model,
                                   cluda_naming naming, const key_target *targets,
                                   int allow_missing_head, int *missing_head) {
  const char *path = short_path(st->path);
  int n_params = model->params.count, n_state = model->state.count;
  int *first_key = malloc(2 * (size_t)(n_params + n_state + 1) * sizeof *first_key);
  CLUDA_REQUIRE(first_key != NULL, CLUDA_ERR_ALLOC, "load_safetensors: out of memory");
  for (int i = 0; i < 2 * (n_params + n_state); i++)
    first_key[i] = -1;
  cluda_status s = cluda_ok();
  for (int i = 0; i < st->count && s.code == CLUDA_OK; i++) {
    const key_target *t = &targets[i];
    if (t->status != MAP_OK) continue;
    int slot = (t->table == TABLE_PARAMS ? t->index : n_params + t->index) * 2;
    for (int half = 0; half < 2; half++) {
      int covers = t->part == PART_WHOLE || (t->part == PART_KV_KEY) == (half == 0);
      if (!covers) continue;
      if (first_key[slot + half] >= 0) {
        s = CLUDA_FAIL(CLUDA_ERR_SHAPE, "%s: '%s' and '%s' both map to %s", path,
                       st->tensors[first_key[slot + half]].name, st->tensors[i].name, t->name);
        break;
      }
      first_key[slot + half] = i;
    }
  }
  int missing = 0, first_missing = -1, first_half = 0;
  *missing_head = 0;
  for (int e = 0; e < n_params + n_state && s.code == CLUDA_OK; e++) {
    int have_key = first_key[2 * e] >= 0, have_value = first_key[2 * e + 1] >= 0;
    if (have_key && have_value) continue;
    const cluda_param_info *info =
        e < n_params ? &model->params.items[e] : &model->state.items[e - n_params];
    if (allow_missing_head && starts_with(info->name, "decode_head.") && !have_key && !have_value) {
      (*missing_head)++;
      continue;
    }
    if (missing++ == 0) {
      first_missing = e;
      first_half = have_key ? 2 : have_value ? 1 : 0;
    }
  }
  if (s.code == CLUDA_OK && missing > 0) {
    const cluda_param_info *info = first_missing < n_params
                                       ? &model->params.items[first_missing]
                                       : &model->state.items[first_missing - n_params];
    static const char *const halves[] = {"", " (key rows)", " (value rows)"};
    s = CLUDA_FAIL(CLUDA_ERR_SHAPE, "%s (%s naming): missing tensor for %s%s (%d missing in all)%s",
                   path, naming_name(naming), info->name, halves[first_half], missing,
                   starts_with(info->name, "decode_head.") && !allow_missing_head
                       ? "; allow_missing_head keeps a fresh head"
                       : "");
  }
  free(first_key);
  return s;
}

static cluda_status read_all(const cluda_safetensors *st, const cluda_segmentor *model,
                             const key_target *targets, float *params, float *state, int *loaded) {
  size_t largest = 0;
  for (int i = 0; i < st->count; i++)
    if (targets[i].status == MAP_OK) {
      const cluda_param_info *info = target_info(model, &targets[i]);
      if (info->count > largest) largest = info->count;
    }
  float *buffer = malloc((largest ? largest : 1) * sizeof *buffer);
  CLUDA_REQUIRE(buffer != NULL, CLUDA_ERR_ALLOC, "load_safetensors: out of memory (%zu floats)",
                largest);
  cluda_status s = cluda_ok();
  *loaded = 0;
  for (int i = 0; i < st->count && s.code == CLUDA_OK; i++) {
    const key_target *t = &targets[i];
    if (t->status != MAP_OK) continue;
    const cluda_param_info *info = target_info(model, t);
    size_t count = t->part == PART_WHOLE ? info->count : info->count / 2;
    s = cluda_safetensors_read_f32(st, i, buffer, count);
    if (s.code != CLUDA_OK) break;
    place_tensor(info, t->part, t->permute_fuse, buffer, t->table == TABLE_PARAMS ? params : state);
    (*loaded)++;
  }
  free(buffer);
  return s;
}

cluda_status cluda_load_safetensors(const char *path, const cluda_segmentor *model, float *params,
                                    float *state, const cluda_load_options *opt,
                                    cluda_load_report *report) {
  CLUDA_REQUIRE(path != NULL && model != NULL && params != NULL, CLUDA_ERR_ARG,
                "load_safetensors: NULL path, model or params");
  CLUDA_REQUIRE(state != NULL || model->state.count == 0, CLUDA_ERR_ARG,
                "load_safetensors: state is NULL but the model has %d state tensors",
                model->state.count);
  cluda_load_options defaults = {CLUDA_NAMING_AUTO, 0};
  if (!opt) opt = &defaults;
  cluda_safetensors st;
  CLUDA_TRY(cluda_safetensors_open(path, &st));
  cluda_naming naming = opt->naming;
  cluda_status s = cluda_ok();
  if (naming == CLUDA_NAMING_AUTO) s = detect_naming(&st, &naming);
  key_target *targets = NULL;
  if (s.code == CLUDA_OK) {
    targets = calloc((size_t)st.count + 1, sizeof *targets);
    if (!targets) s = CLUDA_FAIL(CLUDA_ERR_ALLOC, "load_safetensors: out of memory");
  }
  int missing_head = 0, loaded = 0, ignored = 0;
  if (s.code == CLUDA_OK) s = resolve_targets(&st, model, naming, targets);
  if (s.code == CLUDA_OK) s = check_architecture(&st, targets, model, naming);
  if (s.code == CLUDA_OK) s = check_targets(&st, model, naming, targets);
  if (s.code == CLUDA_OK)
    s = check_coverage(&st, model, naming, targets, opt->allow_missing_head, &missing_head);
  if (s.code == CLUDA_OK) s = read_all(&st, model, targets, params, state, &loaded);
  if (s.code == CLUDA_OK && report) {
    for (int i = 0; i < st.count; i++)
      ignored += targets[i].status == MAP_IGNORED;
    report->naming = naming;
    report->loaded = loaded;
    report->missing_head = missing_head;
    report->ignored = ignored;
  }
  free(targets);
  cluda_safetensors_close(&st);
  return s;
}

/* Mix Transformer encoder (model.md section 1), composed only from the public ops so it runs
 * on whatever backend ctx names.
 *
 * Parameter order (mmseg state_dict order, model.md 7.2): patch_embed1..4 (proj.weight,
 * proj.bias, norm.weight, norm.bias), then per stage i its blocks block{i}.{j} (norm1, attn.q,
 * attn.kv, attn.proj, [attn.sr, attn.norm when sr_ratio > 1], norm2, mlp.fc1,
 * mlp.dwconv.dwconv, mlp.fc2; weight before bias) followed by the stage norm norm{i}.
 * describe_entry() is the single source of this order for declare, init and the layers.
 *
 * Activations: tokens [B, N, C] and maps [B, H, W, C] are the same NHWC memory, so every
 * view is 4-d and no permutes are needed. One function (make_layout) lays out the activation
 * buffer and the backward's scratch so plan, forward and backward cannot disagree. Per
 * stage the buffer holds the patch-embedding conv output, its LN output (the residual
 * stream x_0) and statistics; per block the LN1 output and statistics, the SR-attention
 * saved block, the stream after the attention residual (x_mid), the LN2 output and
 * statistics, the fc1, dwconv and GELU outputs, the stream after the MLP residual (x_next)
 * and the two drop-path masks; then the stage-norm statistics and output (= stage output).
 *
 * Residuals without copies: a branch writes its output straight into the next stream buffer
 * (through a scratch temporary and the drop-path op when drop path is active), then the
 * stream it started from is added with cluda_axpy. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cluda/mit.h"
#include "cluda/sr_attention.h"

enum { MIT_STAGES = 4 };

static const int kEmbedKernel[MIT_STAGES] = {7, 3, 3, 3};
static const int kEmbedStride[MIT_STAGES] = {4, 2, 2, 2};

/* ---- presets ---- */

typedef struct mit_preset {
  const char *name;
  int dims[4], depths[4], heads[4];
} mit_preset;

static const mit_preset kPresets[] = {
    {"b0", {32, 64, 160, 256}, {2, 2, 2, 2}, {1, 2, 5, 8}},
    {"b1", {64, 128, 320, 512}, {2, 2, 2, 2}, {1, 2, 5, 8}},
    {"b2", {64, 128, 320, 512}, {3, 4, 6, 3}, {1, 2, 5, 8}},
    {"b3", {64, 128, 320, 512}, {3, 4, 18, 3}, {1, 2, 5, 8}},
    {"b4", {64, 128, 320, 512}, {3, 8, 27, 3}, {1, 2, 5, 8}},
    {"b5", {64, 128, 320, 512}, {3, 6, 40, 3}, {1, 2, 5, 8}},
    {"tiny", {16, 32, 64, 128}, {2, 2, 2, 2}, {1, 1, 2, 4}},
};

cluda_status cluda_mit_preset(const char *name, cluda_mit_config *cfg) {
  CLUDA_REQUIRE(name != NULL && cfg != NULL, CLUDA_ERR_ARG, "mit_preset: name or cfg is NULL");
  for (size_t k = 0; k < sizeof kPresets / sizeof kPresets[0]; k++) {
    const mit_preset *p = &kPresets[k];
    if (strcmp(name, p->name) != 0) continue;
    memset(cfg, 0, sizeof *cfg);
    cfg->in_channels = 3;
    for (int i = 0; i < MIT_STAGES; i++) {
      cfg->embed_dims[i] = p->dims[i];
      cfg->depths[i] = p->depths[i];
      cfg->heads[i] = p->heads[i];
      cfg->sr_ratios[i] = 8 >> i; /* 8, 4, 2, 1 */
    }
    cfg->mlp_ratio = 4;
    cfg->drop_path_rate = 0.1f;
    cfg->patch_norm_eps = 1e-5f;
    cfg->block_norm_eps = 1e-6f;
    return cluda_ok();
  }
  return CLUDA_FAIL(CLUDA_ERR_ARG, "mit_preset: unknown encoder '%s' (b0..b5 or tiny)", name);
}

static cluda_status check_config(const char *op, const cluda_mit_config *cfg) {
  CLUDA_REQUIRE(cfg != NULL, CLUDA_ERR_ARG, "%s: cfg is NULL", op);
  CLUDA_REQUIRE(cfg->in_channels >= 1, CLUDA_ERR_ARG, "%s: cfg->in_channels = %d must be >= 1", op,
                cfg->in_channels);
  for (int i = 0; i < MIT_STAGES; i++) {
    CLUDA_REQUIRE(cfg->embed_dims[i] >= 1, CLUDA_ERR_ARG,
                  "%s: cfg->embed_dims[%d] = %d must be >= 1", op, i, cfg->embed_dims[i]);
    CLUDA_REQUIRE(cfg->depths[i] >= 1, CLUDA_ERR_ARG, "%s: cfg->depths[%d] = %d must be >= 1", op,
                  i, cfg->depths[i]);
    CLUDA_REQUIRE(cfg->heads[i] >= 1 && cfg->embed_dims[i] % cfg->heads[i] == 0, CLUDA_ERR_ARG,
                  "%s: cfg->heads[%d] = %d must be >= 1 and divide cfg->embed_dims[%d] = %d", op, i,
                  cfg->heads[i], i, cfg->embed_dims[i]);
    CLUDA_REQUIRE(cfg->sr_ratios[i] >= 1, CLUDA_ERR_ARG, "%s: cfg->sr_ratios[%d] = %d must be >= 1",
                  op, i, cfg->sr_ratios[i]);
  }
  CLUDA_REQUIRE(cfg->mlp_ratio >= 1, CLUDA_ERR_ARG, "%s: cfg->mlp_ratio = %d must be >= 1", op,
                cfg->mlp_ratio);
  /* written so that NaN fails too */
  CLUDA_REQUIRE(cfg->drop_path_rate >= 0.0f && cfg->drop_path_rate < 1.0f, CLUDA_ERR_ARG,
                "%s: cfg->drop_path_rate = %g must be in [0, 1)", op, (double)cfg->drop_path_rate);
  CLUDA_REQUIRE(cfg->patch_norm_eps > 0.0f && isfinite(cfg->patch_norm_eps), CLUDA_ERR_ARG,
                "%s: cfg->patch_norm_eps = %g must be positive and finite", op,
                (double)cfg->patch_norm_eps);
  CLUDA_REQUIRE(cfg->block_norm_eps > 0.0f && isfinite(cfg->block_norm_eps), CLUDA_ERR_ARG,
                "%s: cfg->block_norm_eps = %g must be positive and finite", op,
                (double)cfg->block_norm_eps);
  return cluda_ok();
}

/* ---- the parameter entries ---- */

typedef enum init_kind {
  INIT_TRUNC_NORMAL, /* linear weights: trunc_normal(std 0.02) as timm (bounds +-2 absolute) */
  INIT_CONV,         /* normal(0, sqrt(2 / fan_out)) */
  INIT_ONE,          /* LayerNorm weights */
  INIT_ZERO          /* biases */
} init_kind;

/* Entries of one block, in registration order (sr and attn.norm only when sr_ratio > 1). */
typedef enum block_part {
  BP_NORM1_W,
  BP_NORM1_B,
  BP_Q_W,
  BP_Q_B,
  BP_KV_W,
  BP_KV_B,
  BP_PROJ_W,
  BP_PROJ_B,
  BP_SR_W,
  BP_SR_B,
  BP_ANORM_W,
  BP_ANORM_B,
  BP_NORM2_W,
  BP_NORM2_B,
  BP_FC1_W,
  BP_FC1_B,
  BP_DW_W,
  BP_DW_B,
  BP_FC2_W,
  BP_FC2_B,
  BP_COUNT
} block_part;

/* Entries per patch embedding, per stage norm, and the SR entries (attn.sr and attn.norm
 * weights and biases) that blocks with sr_ratio == 1 do not have. */
enum { EMBED_ENTRIES = 4, NORM_ENTRIES = 2, SR_ENTRIES = 4 };

static int block_entries(const cluda_mit_config *cfg, int stage) {
  return cfg->sr_ratios[stage] > 1 ? BP_COUNT : BP_COUNT - SR_ENTRIES;
}

/* The block_part of entry k of a block of the given stage. */
static block_part block_part_at(const cluda_mit_config *cfg, int stage, int k) {
  if (cfg->sr_ratios[stage] > 1 || k < BP_SR_W) return (block_part)k;
  return (block_part)(k + SR_ENTRIES); /* skip the SR parts */
}

/* Where each stage's entries start, relative to the encoder's first entry. */
typedef struct mit_index {
  int blocks[MIT_STAGES]; /* entry of block{i}.0's first parameter */
  int per_block[MIT_STAGES];
  int norm[MIT_STAGES]; /* entry of norm{i}.weight */
  int total;
} mit_index;

static mit_index make_index(const cluda_mit_config *cfg) {
  mit_index ix;
  int at = MIT_STAGES * EMBED_ENTRIES; /* all patch embeddings come first */
  for (int i = 0; i < MIT_STAGES; i++) {
    ix.per_block[i] = block_entries(cfg, i);
    ix.blocks[i] = at;
    at += cfg->depths[i] * ix.per_block[i];
    ix.norm[i] = at;
    at += NORM_ENTRIES;
  }
  ix.total = at;
  return ix;
}

typedef struct mit_entry {
  char name[CLUDA_PARAM_NAME_MAX]; /* without the prefix */
  int ndim;
  int shape[CLUDA_MAX_DIMS];
  int no_decay;
  init_kind init;
  double std; /* INIT_TRUNC_NORMAL and INIT_CONV */
} mit_entry;

static void set_shape(mit_entry *e, int ndim, int d0, int d1, int d2, int d3) {
  const int d[4] = {d0, d1, d2, d3};
  e->ndim = ndim;
  for (int i = 0; i < CLUDA_MAX_DIMS; i++)
    e->shape[i] = i < ndim ? d[i] : 1;
}

static void set_linear(mit_entry *e, int out, int in) {
  set_shape(e, 2, out, in, 1, 1);
  e->init = INIT_TRUNC_NORMAL;
  e->std = 0.02;
}

/* OHWI conv weight; fan_out = kh kw C_out / groups (mmseg _init_weights). */
static void set_conv(mit_entry *e, int cout, int k, int cin_per_group, int groups) {
  set_shape(e, 4, cout, k, k, cin_per_group);
  e->init = INIT_CONV;
  e->std = sqrt(2.0 / ((double)k * k * cout / groups));
}

static void set_vector(mit_entry *e, int n, init_kind init, int no_decay) {
  set_shape(e, 1, n, 1, 1, 1);
  e->init = init;
  e->no_decay = no_decay;
}

/* Describes entry `local` (0 .. index.total - 1) of the encoder. */
static void describe_entry(const cluda_mit_config *cfg, const mit_index *ix, int local,
                           mit_entry *e) {
  memset(e, 0, sizeof *e);
  if (local < MIT_STAGES * EMBED_ENTRIES) {
    const int i = local / EMBED_ENTRIES, part = local % EMBED_ENTRIES;
    const int c = cfg->embed_dims[i], cin = i == 0 ? cfg->in_channels : cfg->embed_dims[i - 1];
    static const char *const kParts[EMBED_ENTRIES] = {"proj.weight", "proj.bias", "norm.weight",
                                                      "norm.bias"};
    snprintf(e->name, sizeof e->name, "patch_embed%d.%s", i + 1, kParts[part]);
    if (part == 0) set_conv(e, c, kEmbedKernel[i], cin, 1);
    if (part == 1) set_vector(e, c, INIT_ZERO, 0);
    if (part == 2) set_vector(e, c, INIT_ONE, 1);
    if (part == 3) set_vector(e, c, INIT_ZERO, 1);
    return;
  }
  int i = 0;
  while (i < MIT_STAGES - 1 && local >= ix->norm[i] + NORM_ENTRIES)
    i++;
  const int c = cfg->embed_dims[i], hidden = cfg->mlp_ratio * c, r = cfg->sr_ratios[i];
  if (local >= ix->norm[i]) {
    const int weight = local == ix->norm[i];
    snprintf(e->name, sizeof e->name, "norm%d.%s", i + 1, weight ? "weight" : "bias");
    set_vector(e, c, weight ? INIT_ONE : INIT_ZERO, 1);
    return;
  }
  const int j = (local - ix->blocks[i]) / ix->per_block[i];
  const block_part part = block_part_at(cfg, i, (local - ix->blocks[i]) % ix->per_block[i]);
  static const char *const kNames[BP_COUNT] = {"norm1.weight",
                                               "norm1.bias",
                                               "attn.q.weight",
                                               "attn.q.bias",
                                               "attn.kv.weight",
                                               "attn.kv.bias",
                                               "attn.proj.weight",
                                               "attn.proj.bias",
                                               "attn.sr.weight",
                                               "attn.sr.bias",
                                               "attn.norm.weight",
                                               "attn.norm.bias",
                                               "norm2.weight",
                                               "norm2.bias",
                                               "mlp.fc1.weight",
                                               "mlp.fc1.bias",
                                               "mlp.dwconv.dwconv.weight",
                                               "mlp.dwconv.dwconv.bias",
                                               "mlp.fc2.weight",
                                               "mlp.fc2.bias"};
  snprintf(e->name, sizeof e->name, "block%d.%d.%s", i + 1, j, kNames[part]);
  switch (part) {
  case BP_NORM1_W:
  case BP_ANORM_W:
  case BP_NORM2_W: set_vector(e, c, INIT_ONE, 1); break;
  case BP_NORM1_B:
  case BP_ANORM_B:
  case BP_NORM2_B: set_vector(e, c, INIT_ZERO, 1); break;
  case BP_Q_W:
  case BP_PROJ_W: set_linear(e, c, c); break;
  case BP_KV_W: set_linear(e, 2 * c, c); break;
  case BP_KV_B: set_vector(e, 2 * c, INIT_ZERO, 0); break;
  case BP_SR_W: set_conv(e, c, r, c, 1); break;
  case BP_FC1_W: set_linear(e, hidden, c); break;
  case BP_FC1_B:
  case BP_DW_B: set_vector(e, hidden, INIT_ZERO, 0); break;
  case BP_DW_W: set_conv(e, hidden, 3, 1, hidden); break;
  case BP_FC2_W: set_linear(e, c, hidden); break;
  default: set_vector(e, c, INIT_ZERO, 0); break; /* q, proj, sr and fc2 biases */
  }
}

cluda_status cluda_mit_declare(cluda_mit *mit, const cluda_mit_config *cfg, const char *prefix,
                               cluda_param_table *params) {
  const char *op = "mit_declare";
  CLUDA_REQUIRE(mit != NULL && params != NULL, CLUDA_ERR_ARG, "%s: mit or params is NULL", op);
  CLUDA_TRY(check_config(op, cfg));
  if (prefix == NULL) prefix = "";
  const mit_index ix = make_index(cfg);
  mit->cfg = *cfg;
  mit->first_param = params->count;
  mit->param_count = 0;
  for (int k = 0; k < ix.total; k++) {
    mit_entry e;
    char name[CLUDA_PARAM_NAME_MAX];
    describe_entry(cfg, &ix, k, &e);
    const int len = snprintf(name, sizeof name, "%s%s", prefix, e.name);
    CLUDA_REQUIRE(len >= 0 && len < (int)sizeof name, CLUDA_ERR_ARG,
                  "%s: prefix '%s' makes the name of %s longer than %d characters", op, prefix,
                  e.name, CLUDA_PARAM_NAME_MAX - 1);
    CLUDA_TRY(cluda_param_table_add(params, name, e.ndim, e.shape, CLUDA_GROUP_ENCODER, e.no_decay,
                                    NULL));
  }
  mit->param_count = ix.total;
  return cluda_ok();
}

/* The table holds the encoder's entries where declare put them. */
static cluda_status check_table(const char *op, const cluda_mit *mit,
                                const cluda_param_table *table) {
  CLUDA_REQUIRE(table != NULL, CLUDA_ERR_ARG, "%s: table is NULL", op);
  const int total = make_index(&mit->cfg).total;
  CLUDA_REQUIRE(mit->param_count == total && mit->first_param >= 0 &&
                    mit->first_param + total <= table->count,
                CLUDA_ERR_ARG,
                "%s: mit (entries %d..%d) does not fit the table of %d entries "
                "(declare it with cluda_mit_declare)",
                op, mit->first_param, mit->first_param + mit->param_count, table->count);
  return cluda_ok();
}

enum { INIT_PARALLEL_ELEMS = 1 << 14, INIT_MAX_REDRAWS = 64 };

cluda_status cluda_mit_init(const cluda_mit *mit, const cluda_param_table *params, float *data,
                            uint64_t seed) {
  const char *op = "mit_init";
  CLUDA_REQUIRE(mit != NULL && data != NULL, CLUDA_ERR_ARG, "%s: mit or data is NULL", op);
  CLUDA_TRY(check_config(op, &mit->cfg));
  CLUDA_TRY(check_table(op, mit, params));
  const mit_index ix = make_index(&mit->cfg);
  for (int k = 0; k < ix.total; k++) {
    const int index = mit->first_param + k;
    CLUDA_REQUIRE(index <= 0xffff, CLUDA_ERR_ARG,
                  "%s: parameter index %d does not fit the 16-bit RNG slot", op, index);
    mit_entry e;
    describe_entry(&mit->cfg, &ix, k, &e);
    const cluda_param_info *info = &params->items[index];
    float *v = data + info->offset;
    const int64_t n = (int64_t)info->count;
    if (e.init == INIT_ONE || e.init == INIT_ZERO) {
      const float value = e.init == INIT_ONE ? 1.0f : 0.0f;
      for (int64_t t = 0; t < n; t++)
        v[t] = value;
      continue;
    }
    /* one stream per parameter, one draw per element: independent of order and threads */
    const cluda_rng_key key = cluda_rng_make_key(seed, 0, 0, CLUDA_RNG_INIT, (uint32_t)index);
    const double std = e.std;
    const int truncate = e.init == INIT_TRUNC_NORMAL;
#pragma omp parallel for schedule(static) if (n > INIT_PARALLEL_ELEMS)
    for (int64_t t = 0; t < n; t++) {
      double z = std * cluda_rng_normal(key, (uint64_t)t);
      /* timm's trunc_normal_ bounds are absolute (-2, 2): redraw outside them */
      for (int redraw = 1; truncate && fabs(z) > 2.0 && redraw < INIT_MAX_REDRAWS; redraw++)
        z = std * cluda_rng_normal(key, (uint64_t)t + (uint64_t)redraw * (uint64_t)n);
      v[t] = (float)(truncate && fabs(z) > 2.0 ? 0.0 : z);
    }
  }
  return cluda_ok();
}

/* ---- layout of activations and scratch ---- */

/* Byte offsets of one block's buffers, relative to the block's start in acts. */
typedef struct block_layout {
  size_t ln1, ln1_mean, ln1_rstd, attn_saved, mid, ln2, ln2_mean, ln2_rstd, fc1, dw, gelu, next;
  size_t mask_attn, mask_mlp, bytes;
} block_layout;

typedef struct stage_layout {
  int in_h, in_w, in_c; /* the stage's input map */
  int h, w, c, hidden, depth;
  int first_block; /* global block index k of block 0 (drop-path rate and RNG slot) */
  cluda_conv2d_params embed;
  cluda_sr_attention_params attn;
  size_t attn_saved_bytes, attn_scratch_bytes;
  /* byte offsets into acts */
  size_t embed_out, embed_mean, embed_rstd, tokens, blocks, norm_mean, norm_rstd, out;
  block_layout blk;
} stage_layout;

typedef struct mit_layout {
  int batch, height, width;
  stage_layout st[MIT_STAGES];
  size_t activation_bytes;
  /* byte offsets into the encoder's own scratch block */
  size_t stage_grad[2], d_stream, d_branch, d_ln, d_tmp, d_hidden_a, d_hidden_b;
  size_t forward_scratch; /* the forward's own block: the branch temporary */
  size_t own_scratch;     /* the backward's own block */
  size_t nested_scratch;  /* the most one op takes on top of it */
  size_t scratch_bytes;
  double macs;
} mit_layout;

static size_t region(size_t *at, int64_t bytes) {
  size_t off = *at;
  *at += cluda_arena_align((size_t)bytes);
  return off;
}

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

static cluda_status make_layout(const char *op, const cluda_mit *mit, int batch, int height,
                                int width, mit_layout *L) {
  const cluda_mit_config *cfg = &mit->cfg;
  CLUDA_TRY(check_config(op, cfg));
  CLUDA_REQUIRE(batch >= 1 && height >= 1 && width >= 1, CLUDA_ERR_SHAPE,
                "%s: input [%d, %d, %d, %d] must have batch, height and width >= 1", op, batch,
                height, width, cfg->in_channels);
  memset(L, 0, sizeof *L);
  L->batch = batch;
  L->height = height;
  L->width = width;
  const int64_t b = batch;
  int in_h = height, in_w = width, in_c = cfg->in_channels, first_block = 0;
  size_t at = 0, largest_map = 0, largest_hidden = 0, nested = 0;
  for (int i = 0; i < MIT_STAGES; i++) {
    stage_layout *S = &L->st[i];
    const int k = kEmbedKernel[i], s = kEmbedStride[i], r = cfg->sr_ratios[i];
    S->in_h = in_h;
    S->in_w = in_w;
    S->in_c = in_c;
    S->h = cluda_conv2d_out_size(in_h, k, s, k / 2, 1);
    S->w = cluda_conv2d_out_size(in_w, k, s, k / 2, 1);
    S->c = cfg->embed_dims[i];
    S->hidden = cfg->mlp_ratio * S->c;
    S->depth = cfg->depths[i];
    S->first_block = first_block;
    first_block += S->depth;
    /* the SR conv (kernel = stride = r, no padding) needs at least r rows and columns */
    CLUDA_REQUIRE(S->h >= r && S->w >= r, CLUDA_ERR_SHAPE,
                  "%s: input %dx%d is too small: stage %d is %dx%d but its sr_ratio %d needs at "
                  "least %dx%d",
                  op, height, width, i + 1, S->h, S->w, r, r, r);
    const int64_t n = (int64_t)S->h * S->w;
    CLUDA_REQUIRE(b * n * S->hidden <= INT_MAX && b * in_h * (int64_t)in_w * in_c <= INT_MAX,
                  CLUDA_ERR_SHAPE,
                  "%s: input [%d, %d, %d, %d] is too large (stage %d's B*H*W*%d must fit in int)",
                  op, batch, height, width, cfg->in_channels, i + 1, S->hidden);
    cluda_conv2d_params ep = {k, k, s, s, k / 2, k / 2, 1, 1, 1};
    S->embed = ep;
    cluda_sr_attention_params ap = {S->c, cfg->heads[i], r, cfg->patch_norm_eps};
    S->attn = ap;
    CLUDA_TRY(cluda_sr_attention_plan(&S->attn, batch, S->h, S->w, &S->attn_saved_bytes,
                                      &S->attn_scratch_bytes));

    const int64_t map = b * n * S->c * (int64_t)sizeof(float);
    const int64_t hid = b * n * S->hidden * (int64_t)sizeof(float);
    const int64_t stats = b * n * (int64_t)sizeof(float);
    S->embed_out = region(&at, map);
    S->embed_mean = region(&at, stats);
    S->embed_rstd = region(&at, stats);
    S->tokens = region(&at, map);
    block_layout *B = &S->blk;
    size_t in_block = 0;
    B->ln1 = region(&in_block, map);
    B->ln1_mean = region(&in_block, stats);
    B->ln1_rstd = region(&in_block, stats);
    B->attn_saved = region(&in_block, (int64_t)S->attn_saved_bytes);
    B->mid = region(&in_block, map);
    B->ln2 = region(&in_block, map);
    B->ln2_mean = region(&in_block, stats);
    B->ln2_rstd = region(&in_block, stats);
    B->fc1 = region(&in_block, hid);
    B->dw = region(&in_block, hid);
    B->gelu = region(&in_block, hid);
    B->next = region(&in_block, map);
    B->mask_attn = region(&in_block, b); /* u8 [B] */
    B->mask_mlp = region(&in_block, b);
    B->bytes = in_block;
    S->blocks = at;
    at += (size_t)S->depth * B->bytes;
    S->norm_mean = region(&at, stats);
    S->norm_rstd = region(&at, stats);
    S->out = region(&at, map);

    largest_map = max_size(largest_map, (size_t)map);
    largest_hidden = max_size(largest_hidden, (size_t)hid);
    /* what the ops take from scratch on top of the encoder's own block */
    cluda_tensor ex = cluda_tensor_4d(CLUDA_F32, NULL, batch, in_h, in_w, in_c);
    cluda_tensor ew = cluda_tensor_4d(CLUDA_F32, NULL, S->c, k, k, in_c);
    cluda_tensor ey = cluda_tensor_4d(CLUDA_F32, NULL, batch, S->h, S->w, S->c);
    cluda_conv2d_params dp = {3, 3, 1, 1, 1, 1, 1, 1, S->hidden};
    cluda_tensor dx = cluda_tensor_4d(CLUDA_F32, NULL, batch, S->h, S->w, S->hidden);
    cluda_tensor dw = cluda_tensor_4d(CLUDA_F32, NULL, S->hidden, 3, 3, 1);
    nested = max_size(nested, cluda_arena_align(cluda_conv2d_scratch_bytes(&ep, &ex, &ew, &ey)));
    nested = max_size(nested, cluda_arena_align(cluda_conv2d_scratch_bytes(&dp, &dx, &dw, &dx)));
    nested = max_size(nested, S->attn_scratch_bytes);

    /* multiply-accumulates per image: convs, linears and the two attention matmuls */
    const double nn = (double)n, c = S->c, hd = S->hidden;
    const double nk = r > 1 ? (double)((S->h - r) / r + 1) * ((S->w - r) / r + 1) : nn;
    double block = nn * c * c * 2.0 /* q, proj */ + nk * 2.0 * c * c /* kv */ +
                   2.0 * nn * nk * c /* QK^T, PV */ + 2.0 * nn * c * hd /* fc1, fc2 */ +
                   nn * hd * 9.0 /* dwconv */;
    if (r > 1) block += nk * c * (double)r * r * c; /* sr conv */
    L->macs += nn * c * (double)k * k * in_c + S->depth * block;

    in_h = S->h;
    in_w = S->w;
    in_c = S->c;
  }
  L->activation_bytes = at;

  size_t own = 0;
  L->d_branch = region(&own, (int64_t)largest_map);
  L->forward_scratch = own; /* the forward needs only the branch temporary */
  L->stage_grad[0] = region(&own, (int64_t)largest_map);
  L->stage_grad[1] = region(&own, (int64_t)largest_map);
  L->d_stream = region(&own, (int64_t)largest_map);
  L->d_ln = region(&own, (int64_t)largest_map);
  L->d_tmp = region(&own, (int64_t)largest_map);
  L->d_hidden_a = region(&own, (int64_t)largest_hidden);
  L->d_hidden_b = region(&own, (int64_t)largest_hidden);
  L->own_scratch = own;
  L->nested_scratch = nested;
  L->scratch_bytes = own + nested;
  return cluda_ok();
}

cluda_status cluda_mit_plan_for(const cluda_mit *mit, int batch, int height, int width,
                                cluda_mit_plan *plan) {
  const char *op = "mit_plan_for";
  CLUDA_REQUIRE(mit != NULL && plan != NULL, CLUDA_ERR_ARG, "%s: mit or plan is NULL", op);
  mit_layout L;
  CLUDA_TRY(make_layout(op, mit, batch, height, width, &L));
  memset(plan, 0, sizeof *plan);
  plan->batch = batch;
  plan->height = height;
  plan->width = width;
  for (int i = 0; i < MIT_STAGES; i++) {
    plan->out_h[i] = L.st[i].h;
    plan->out_w[i] = L.st[i].w;
  }
  plan->activation_bytes = L.activation_bytes;
  plan->scratch_bytes = L.scratch_bytes;
  plan->macs = L.macs;
  return cluda_ok();
}

/* ---- weights as views into a flat buffer (parameters or gradients) ---- */

typedef struct embed_weights {
  cluda_tensor proj_w, proj_b, norm_w, norm_b;
} embed_weights;

typedef struct block_weights {
  cluda_tensor norm1_w, norm1_b;
  cluda_sr_attention_weights attn;
  cluda_tensor norm2_w, norm2_b, fc1_w, fc1_b, dw_w, dw_b, fc2_w, fc2_b;
} block_weights;

typedef struct stage_norm_weights {
  cluda_tensor w, b;
} stage_norm_weights;

static cluda_tensor view(const cluda_mit *mit, const cluda_param_table *t, int local, float *base) {
  return cluda_param_view(t, mit->first_param + local, base);
}

static embed_weights bind_embed(const cluda_mit *mit, const cluda_param_table *t, int stage,
                                float *base) {
  const int e = stage * EMBED_ENTRIES;
  embed_weights w = {view(mit, t, e, base), view(mit, t, e + 1, base), view(mit, t, e + 2, base),
                     view(mit, t, e + 3, base)};
  return w;
}

static stage_norm_weights bind_stage_norm(const cluda_mit *mit, const cluda_param_table *t,
                                          const mit_index *ix, int stage, float *base) {
  stage_norm_weights w = {view(mit, t, ix->norm[stage], base),
                          view(mit, t, ix->norm[stage] + 1, base)};
  return w;
}

static block_weights bind_block(const cluda_mit *mit, const cluda_param_table *t,
                                const mit_index *ix, int stage, int j, float *base) {
  cluda_tensor p[BP_COUNT];
  memset(p, 0, sizeof p);
  const int first = ix->blocks[stage] + j * ix->per_block[stage];
  for (int k = 0; k < ix->per_block[stage]; k++)
    p[block_part_at(&mit->cfg, stage, k)] = view(mit, t, first + k, base);
  block_weights w;
  w.norm1_w = p[BP_NORM1_W];
  w.norm1_b = p[BP_NORM1_B];
  w.attn.q_w = p[BP_Q_W];
  w.attn.q_b = p[BP_Q_B];
  w.attn.kv_w = p[BP_KV_W];
  w.attn.kv_b = p[BP_KV_B];
  w.attn.sr_w = p[BP_SR_W]; /* empty when sr_ratio == 1: the op ignores them then */
  w.attn.sr_b = p[BP_SR_B];
  w.attn.norm_w = p[BP_ANORM_W];
  w.attn.norm_b = p[BP_ANORM_B];
  w.attn.proj_w = p[BP_PROJ_W];
  w.attn.proj_b = p[BP_PROJ_B];
  w.norm2_w = p[BP_NORM2_W];
  w.norm2_b = p[BP_NORM2_B];
  w.fc1_w = p[BP_FC1_W];
  w.fc1_b = p[BP_FC1_B];
  w.dw_w = p[BP_DW_W];
  w.dw_b = p[BP_DW_B];
  w.fc2_w = p[BP_FC2_W];
  w.fc2_b = p[BP_FC2_B];
  return w;
}

/* ---- activation views ---- */

static void *at_offset(const void *base, size_t off) { return (char *)base + off; }

static cluda_tensor map_view(const void *base, size_t off, int b, int h, int w, int c) {
  return cluda_tensor_4d(CLUDA_F32, at_offset(base, off), b, h, w, c);
}

static cluda_tensor stats_view(const void *base, size_t off, int rows) {
  return cluda_tensor_1d(CLUDA_F32, at_offset(base, off), rows);
}

/* One block's saved activations; x is the block's input stream. */
typedef struct block_acts {
  cluda_tensor x, ln1, ln1_mean, ln1_rstd, mid, ln2, ln2_mean, ln2_rstd, fc1, dw, gelu, next;
  cluda_tensor mask_attn, mask_mlp;
  void *attn_saved;
} block_acts;

static void *block_base(const stage_layout *S, const void *acts, int j) {
  return at_offset(acts, S->blocks + (size_t)j * S->blk.bytes);
}

static block_acts block_views(const mit_layout *L, const stage_layout *S, const void *acts, int j) {
  const block_layout *B = &S->blk;
  const int b = L->batch, h = S->h, w = S->w, c = S->c, hd = S->hidden, rows = b * h * w;
  const void *base = block_base(S, acts, j);
  block_acts a;
  a.x = j == 0 ? map_view(acts, S->tokens, b, h, w, c)
               : map_view(block_base(S, acts, j - 1), B->next, b, h, w, c);
  a.ln1 = map_view(base, B->ln1, b, h, w, c);
  a.ln1_mean = stats_view(base, B->ln1_mean, rows);
  a.ln1_rstd = stats_view(base, B->ln1_rstd, rows);
  a.attn_saved = at_offset(base, B->attn_saved);
  a.mid = map_view(base, B->mid, b, h, w, c);
  a.ln2 = map_view(base, B->ln2, b, h, w, c);
  a.ln2_mean = stats_view(base, B->ln2_mean, rows);
  a.ln2_rstd = stats_view(base, B->ln2_rstd, rows);
  a.fc1 = map_view(base, B->fc1, b, h, w, hd);
  a.dw = map_view(base, B->dw, b, h, w, hd);
  a.gelu = map_view(base, B->gelu, b, h, w, hd);
  a.next = map_view(base, B->next, b, h, w, c);
  a.mask_attn = cluda_tensor_1d(CLUDA_U8, at_offset(base, B->mask_attn), b);
  a.mask_mlp = cluda_tensor_1d(CLUDA_U8, at_offset(base, B->mask_mlp), b);
  return a;
}

/* The stream entering the stage norm: the last block's output. */
static cluda_tensor stage_stream_out(const mit_layout *L, const stage_layout *S, const void *acts) {
  return map_view(block_base(S, acts, S->depth - 1), S->blk.next, L->batch, S->h, S->w, S->c);
}

/* ---- drop path ---- */

enum { BRANCH_ATTN = 0, BRANCH_MLP = 1 };

/* Block k of all sum(D) blocks: drop_path_rate * k / (sum(D) - 1) (torch.linspace). */
static float drop_path_rate(const cluda_mit_config *cfg, int k) {
  const int total = cfg->depths[0] + cfg->depths[1] + cfg->depths[2] + cfg->depths[3];
  if (total < 2) return 0.0f;
  return (float)((double)cfg->drop_path_rate * k / (double)(total - 1));
}

/* The drop-path op of one branch, or p = 0 when the branch is the identity. Each branch
 * draws from its own slot (2k + branch past the base slot) of the drop-path purpose, so
 * the masks never share draws with the head's dropout of the same base key. */
static cluda_dropout_params drop_path_params(const cluda_mit_config *cfg,
                                             const cluda_run_mode *mode, int k, int branch) {
  cluda_dropout_params p;
  memset(&p, 0, sizeof p);
  p.mode = CLUDA_DROPOUT_SAMPLE;
  p.p = mode->stochastic ? drop_path_rate(cfg, k) : 0.0f;
  p.key = mode->key;
  p.key.stream =
      (mode->key.stream & ~((uint64_t)0xffff << 32)) | ((uint64_t)CLUDA_RNG_DROPPATH << 32);
  p.key.slot = (mode->key.slot + 2u * (uint32_t)k + (uint32_t)branch) & 0xffffu;
  p.first_sample = mode->first_sample;
  return p;
}

/* ---- forward ---- */

static cluda_status block_forward(cluda_ctx *ctx, const cluda_mit_config *cfg,
                                  const stage_layout *S, const block_weights *w, block_acts *a,
                                  const cluda_run_mode *mode, int k, cluda_tensor *tmp) {
  const float eps = cfg->block_norm_eps;
  /* x_mid = x + DropPath(Attn(LN1(x))) */
  CLUDA_TRY(cluda_layernorm_forward(ctx, &a->x, &w->norm1_w, &w->norm1_b, eps, &a->ln1,
                                    &a->ln1_mean, &a->ln1_rstd));
  cluda_dropout_params dp = drop_path_params(cfg, mode, k, BRANCH_ATTN);
  cluda_tensor *branch = dp.p > 0.0f ? tmp : &a->mid;
  CLUDA_TRY(cluda_sr_attention_forward(ctx, &S->attn, &w->attn, &a->ln1, a->attn_saved,
                                       S->attn_saved_bytes, branch));
  if (dp.p > 0.0f) CLUDA_TRY(cluda_dropout_forward(ctx, &dp, tmp, &a->mid, &a->mask_attn));
  CLUDA_TRY(cluda_axpy(ctx, 1.0f, &a->x, &a->mid));

  /* x_next = x_mid + DropPath(fc2(GELU(DWConv(fc1(LN2(x_mid)))))) */
  CLUDA_TRY(cluda_layernorm_forward(ctx, &a->mid, &w->norm2_w, &w->norm2_b, eps, &a->ln2,
                                    &a->ln2_mean, &a->ln2_rstd));
  CLUDA_TRY(cluda_linear_forward(ctx, &a->ln2, &w->fc1_w, &w->fc1_b, &a->fc1));
  const cluda_conv2d_params dwp = {3, 3, 1, 1, 1, 1, 1, 1, S->hidden};
  CLUDA_TRY(cluda_conv2d_forward(ctx, &dwp, &a->fc1, &w->dw_w, &w->dw_b, &a->dw));
  CLUDA_TRY(cluda_gelu_forward(ctx, &a->dw, &a->gelu));
  dp = drop_path_params(cfg, mode, k, BRANCH_MLP);
  branch = dp.p > 0.0f ? tmp : &a->next;
  CLUDA_TRY(cluda_linear_forward(ctx, &a->gelu, &w->fc2_w, &w->fc2_b, branch));
  if (dp.p > 0.0f) CLUDA_TRY(cluda_dropout_forward(ctx, &dp, tmp, &a->next, &a->mask_mlp));
  return cluda_axpy(ctx, 1.0f, &a->mid, &a->next);
}

static cluda_status forward_body(cluda_ctx *ctx, const cluda_mit *mit, const mit_layout *L,
                                 const cluda_param_table *table, float *params,
                                 const cluda_run_mode *mode, const cluda_tensor *x, void *acts,
                                 void *own, cluda_tensor out[4]) {
  const cluda_mit_config *cfg = &mit->cfg;
  const mit_index ix = make_index(cfg);
  const int b = L->batch;
  const cluda_tensor *in = x;
  for (int i = 0; i < MIT_STAGES; i++) {
    const stage_layout *S = &L->st[i];
    const int rows = b * S->h * S->w;
    /* overlapping patch embedding: conv, then LayerNorm over channels */
    embed_weights ew = bind_embed(mit, table, i, params);
    cluda_tensor e_out = map_view(acts, S->embed_out, b, S->h, S->w, S->c);
    cluda_tensor e_mean = stats_view(acts, S->embed_mean, rows);
    cluda_tensor e_rstd = stats_view(acts, S->embed_rstd, rows);
    cluda_tensor tokens = map_view(acts, S->tokens, b, S->h, S->w, S->c);
    CLUDA_TRY(cluda_conv2d_forward(ctx, &S->embed, in, &ew.proj_w, &ew.proj_b, &e_out));
    CLUDA_TRY(cluda_layernorm_forward(ctx, &e_out, &ew.norm_w, &ew.norm_b, cfg->patch_norm_eps,
                                      &tokens, &e_mean, &e_rstd));
    cluda_tensor tmp = map_view(own, L->d_branch, b, S->h, S->w, S->c);
    for (int j = 0; j < S->depth; j++) {
      block_weights bw = bind_block(mit, table, &ix, i, j, params);
      block_acts a = block_views(L, S, acts, j);
      CLUDA_TRY(block_forward(ctx, cfg, S, &bw, &a, mode, S->first_block + j, &tmp));
    }
    stage_norm_weights nw = bind_stage_norm(mit, table, &ix, i, params);
    cluda_tensor stream = stage_stream_out(L, S, acts);
    cluda_tensor n_mean = stats_view(acts, S->norm_mean, rows);
    cluda_tensor n_rstd = stats_view(acts, S->norm_rstd, rows);
    out[i] = map_view(acts, S->out, b, S->h, S->w, S->c);
    CLUDA_TRY(cluda_layernorm_forward(ctx, &stream, &nw.w, &nw.b, cfg->block_norm_eps, &out[i],
                                      &n_mean, &n_rstd));
    in = &out[i];
  }
  return cluda_ok();
}

/* Arguments shared by forward and backward; fills the layout from the plan. */
static cluda_status check_call(const char *op, cluda_ctx *ctx, const cluda_mit *mit,
                               const cluda_mit_plan *plan, const cluda_param_table *table,
                               const float *params, const cluda_run_mode *mode,
                               const cluda_tensor *x, const void *acts, mit_layout *L) {
  CLUDA_REQUIRE(ctx != NULL, CLUDA_ERR_ARG, "%s: ctx is NULL", op);
  CLUDA_REQUIRE(mit != NULL && plan != NULL, CLUDA_ERR_ARG, "%s: mit or plan is NULL", op);
  CLUDA_REQUIRE(params != NULL, CLUDA_ERR_ARG, "%s: params is NULL", op);
  CLUDA_REQUIRE(mode != NULL, CLUDA_ERR_ARG, "%s: mode is NULL", op);
  CLUDA_REQUIRE(acts != NULL, CLUDA_ERR_ARG, "%s: acts is NULL (plan->activation_bytes = %zu)", op,
                plan->activation_bytes);
  CLUDA_TRY(check_table(op, mit, table));
  CLUDA_TRY(make_layout(op, mit, plan->batch, plan->height, plan->width, L));
  CLUDA_REQUIRE(plan->activation_bytes == L->activation_bytes &&
                    plan->scratch_bytes == L->scratch_bytes,
                CLUDA_ERR_ARG, "%s: plan was not made for this encoder (cluda_mit_plan_for)", op);
  char d[64];
  CLUDA_TRY(cluda_check_tensor(op, "x", x, CLUDA_F32, 4));
  CLUDA_REQUIRE(x->shape[0] == plan->batch && x->shape[1] == plan->height &&
                    x->shape[2] == plan->width && x->shape[3] == mit->cfg.in_channels,
                CLUDA_ERR_SHAPE, "%s: x %s must be the planned [%d, %d, %d, %d]", op,
                cluda_tensor_describe(x, d, sizeof d), plan->batch, plan->height, plan->width,
                mit->cfg.in_channels);
  CLUDA_REQUIRE(ctx->scratch != NULL, CLUDA_ERR_ARG,
                "%s: ctx->scratch is NULL (plan->scratch_bytes = %zu)", op, plan->scratch_bytes);
  return cluda_ok();
}

cluda_status cluda_mit_forward(cluda_ctx *ctx, const cluda_mit *mit, const cluda_mit_plan *plan,
                               const cluda_param_table *table, const float *params,
                               const cluda_run_mode *mode, const cluda_tensor *x, void *acts,
                               cluda_tensor out[4]) {
  const char *op = "mit_forward";
  mit_layout L;
  CLUDA_TRY(check_call(op, ctx, mit, plan, table, params, mode, x, acts, &L));
  CLUDA_REQUIRE(out != NULL, CLUDA_ERR_ARG, "%s: out is NULL", op);
  const size_t mark = cluda_arena_mark(ctx->scratch);
  void *own = NULL;
  cluda_status st = cluda_arena_alloc(ctx->scratch, L.forward_scratch, op, &own);
  /* the ops only read params; views are non-const by type */
  if (st.code == CLUDA_OK)
    st = forward_body(ctx, mit, &L, table, (float *)params, mode, x, acts, own, out);
  cluda_arena_release(ctx->scratch, mark); /* on failure too */
  return st;
}

cluda_status cluda_mit_stage_views(const cluda_mit *mit, const cluda_mit_plan *plan,
                                   const void *acts, cluda_tensor out[4]) {
  const char *op = "mit_stage_views";
  CLUDA_REQUIRE(mit != NULL && plan != NULL, CLUDA_ERR_ARG, "%s: mit or plan is NULL", op);
  CLUDA_REQUIRE(acts != NULL && out != NULL, CLUDA_ERR_ARG, "%s: acts or out is NULL", op);
  mit_layout L;
  CLUDA_TRY(make_layout(op, mit, plan->batch, plan->height, plan->width, &L));
  CLUDA_REQUIRE(plan->activation_bytes == L.activation_bytes, CLUDA_ERR_ARG,
                "%s: plan was not made for this encoder (cluda_mit_plan_for)", op);
  for (int i = 0; i < MIT_STAGES; i++)
    out[i] = map_view(acts, L.st[i].out, L.batch, L.st[i].h, L.st[i].w, L.st[i].c);
  return cluda_ok();
}

/* ---- backward ---- */

/* Scratch views of one stage's gradient temporaries. */
typedef struct stage_grads {
  cluda_tensor d_stream, d_branch, d_ln, d_tmp, d_hidden_a, d_hidden_b;
} stage_grads;

static stage_grads grad_views(const mit_layout *L, const stage_layout *S, void *own) {
  const int b = L->batch, h = S->h, w = S->w, c = S->c, hd = S->hidden;
  stage_grads g = {
      map_view(own, L->d_stream, b, h, w, c),    map_view(own, L->d_branch, b, h, w, c),
      map_view(own, L->d_ln, b, h, w, c),        map_view(own, L->d_tmp, b, h, w, c),
      map_view(own, L->d_hidden_a, b, h, w, hd), map_view(own, L->d_hidden_b, b, h, w, hd)};
  return g;
}

/* On entry g->d_stream holds dL/d(x_next); on return dL/d(x). */
static cluda_status block_backward(cluda_ctx *ctx, const cluda_mit_config *cfg,
                                   const stage_layout *S, const block_weights *w, block_weights *gw,
                                   const block_acts *a, const cluda_run_mode *mode, int k,
                                   stage_grads *g) {
  /* MLP branch: x_next = x_mid + DropPath(fc2(GELU(DWConv(fc1(LN2(x_mid)))))) */
  cluda_dropout_params dp = drop_path_params(cfg, mode, k, BRANCH_MLP);
  const cluda_tensor *dbranch = &g->d_stream;
  if (dp.p > 0.0f) {
    CLUDA_TRY(cluda_dropout_backward(ctx, &dp, &a->mask_mlp, &g->d_stream, &g->d_branch));
    dbranch = &g->d_branch;
  }
  CLUDA_TRY(cluda_linear_backward(ctx, &a->gelu, &w->fc2_w, dbranch, &g->d_hidden_a, &gw->fc2_w,
                                  &gw->fc2_b));
  CLUDA_TRY(cluda_gelu_backward(ctx, &a->dw, &g->d_hidden_a, &g->d_hidden_b));
  const cluda_conv2d_params dwp = {3, 3, 1, 1, 1, 1, 1, 1, S->hidden};
  CLUDA_TRY(cluda_conv2d_backward(ctx, &dwp, &a->fc1, &w->dw_w, &g->d_hidden_b, &g->d_hidden_a,
                                  &gw->dw_w, &gw->dw_b));
  CLUDA_TRY(cluda_linear_backward(ctx, &a->ln2, &w->fc1_w, &g->d_hidden_a, &g->d_ln, &gw->fc1_w,
                                  &gw->fc1_b));
  CLUDA_TRY(cluda_layernorm_backward(ctx, &a->mid, &w->norm2_w, &a->ln2_mean, &a->ln2_rstd,
                                     &g->d_ln, &g->d_tmp, &gw->norm2_w, &gw->norm2_b));
  CLUDA_TRY(cluda_axpy(ctx, 1.0f, &g->d_tmp, &g->d_stream)); /* + the residual path */

  /* attention branch: x_mid = x + DropPath(Attn(LN1(x))) */
  dp = drop_path_params(cfg, mode, k, BRANCH_ATTN);
  dbranch = &g->d_stream;
  if (dp.p > 0.0f) {
    CLUDA_TRY(cluda_dropout_backward(ctx, &dp, &a->mask_attn, &g->d_stream, &g->d_branch));
    dbranch = &g->d_branch;
  }
  CLUDA_TRY(cluda_sr_attention_backward(ctx, &S->attn, &w->attn, &a->ln1, a->attn_saved,
                                        S->attn_saved_bytes, dbranch, &g->d_ln, &gw->attn));
  CLUDA_TRY(cluda_layernorm_backward(ctx, &a->x, &w->norm1_w, &a->ln1_mean, &a->ln1_rstd, &g->d_ln,
                                     &g->d_tmp, &gw->norm1_w, &gw->norm1_b));
  return cluda_axpy(ctx, 1.0f, &g->d_tmp, &g->d_stream);
}

static cluda_status backward_body(cluda_ctx *ctx, const cluda_mit *mit, const mit_layout *L,
                                  const cluda_param_table *table, float *params, float *grads,
                                  const cluda_run_mode *mode, const cluda_tensor *x,
                                  const void *acts, const cluda_tensor *const dout[4],
                                  cluda_tensor *dx, void *own) {
  const cluda_mit_config *cfg = &mit->cfg;
  const mit_index ix = make_index(cfg);
  const int b = L->batch;
  int top = MIT_STAGES - 1; /* stages above the last given dout get no gradient */
  while (dout[top] == NULL)
    top--;
  for (int i = top; i >= 0; i--) {
    const stage_layout *S = &L->st[i];
    const int rows = b * S->h * S->w;
    /* dL/d(stage output): dout[i] plus what stage i + 1's patch embedding sent back */
    cluda_tensor from_next = map_view(own, L->stage_grad[i % 2], b, S->h, S->w, S->c);
    const cluda_tensor *dy = dout[i];
    if (i < top) {
      if (dout[i] != NULL) CLUDA_TRY(cluda_axpy(ctx, 1.0f, dout[i], &from_next));
      dy = &from_next;
    }
    stage_grads g = grad_views(L, S, own);
    stage_norm_weights nw = bind_stage_norm(mit, table, &ix, i, params);
    stage_norm_weights ngw = bind_stage_norm(mit, table, &ix, i, grads);
    cluda_tensor stream = stage_stream_out(L, S, acts);
    cluda_tensor n_mean = stats_view(acts, S->norm_mean, rows);
    cluda_tensor n_rstd = stats_view(acts, S->norm_rstd, rows);
    CLUDA_TRY(cluda_layernorm_backward(ctx, &stream, &nw.w, &n_mean, &n_rstd, dy, &g.d_stream,
                                       &ngw.w, &ngw.b));
    for (int j = S->depth - 1; j >= 0; j--) {
      block_weights bw = bind_block(mit, table, &ix, i, j, params);
      block_weights bg = bind_block(mit, table, &ix, i, j, grads);
      block_acts a = block_views(L, S, acts, j);
      CLUDA_TRY(block_backward(ctx, cfg, S, &bw, &bg, &a, mode, S->first_block + j, &g));
    }
    /* patch embedding: LayerNorm, then the conv back to the stage input */
    embed_weights ew = bind_embed(mit, table, i, params);
    embed_weights eg = bind_embed(mit, table, i, grads);
    cluda_tensor e_out = map_view(acts, S->embed_out, b, S->h, S->w, S->c);
    cluda_tensor e_mean = stats_view(acts, S->embed_mean, rows);
    cluda_tensor e_rstd = stats_view(acts, S->embed_rstd, rows);
    CLUDA_TRY(cluda_layernorm_backward(ctx, &e_out, &ew.norm_w, &e_mean, &e_rstd, &g.d_stream,
                                       &g.d_ln, &eg.norm_w, &eg.norm_b));
    if (i > 0) {
      const stage_layout *P = &L->st[i - 1];
      cluda_tensor prev_out = map_view(acts, P->out, b, P->h, P->w, P->c);
      cluda_tensor d_prev = map_view(own, L->stage_grad[(i - 1) % 2], b, P->h, P->w, P->c);
      CLUDA_TRY(cluda_conv2d_backward(ctx, &S->embed, &prev_out, &ew.proj_w, &g.d_ln, &d_prev,
                                      &eg.proj_w, &eg.proj_b));
    } else {
      CLUDA_TRY(cluda_conv2d_backward(ctx, &S->embed, x, &ew.proj_w, &g.d_ln, dx, &eg.proj_w,
                                      &eg.proj_b));
    }
  }
  return cluda_ok();
}

cluda_status cluda_mit_backward(cluda_ctx *ctx, const cluda_mit *mit, const cluda_mit_plan *plan,
                                const cluda_param_table *table, const float *params, float *grads,
                                const cluda_run_mode *mode, const cluda_tensor *x, const void *acts,
                                const cluda_tensor *const dout[4], cluda_tensor *dx) {
  const char *op = "mit_backward";
  mit_layout L;
  CLUDA_TRY(check_call(op, ctx, mit, plan, table, params, mode, x, acts, &L));
  CLUDA_REQUIRE(grads != NULL, CLUDA_ERR_ARG, "%s: grads is NULL", op);
  CLUDA_REQUIRE(dout != NULL, CLUDA_ERR_ARG, "%s: dout is NULL", op);
  int given = 0;
  char d[64];
  for (int i = 0; i < MIT_STAGES; i++) {
    if (dout[i] == NULL) continue;
    given++;
    const stage_layout *S = &L.st[i];
    char arg[16];
    snprintf(arg, sizeof arg, "dout[%d]", i);
    CLUDA_TRY(cluda_check_tensor(op, arg, dout[i], CLUDA_F32, 4));
    CLUDA_REQUIRE(dout[i]->shape[0] == L.batch && dout[i]->shape[1] == S->h &&
                      dout[i]->shape[2] == S->w && dout[i]->shape[3] == S->c,
                  CLUDA_ERR_SHAPE, "%s: %s %s must be stage %d's output shape [%d, %d, %d, %d]", op,
                  arg, cluda_tensor_describe(dout[i], d, sizeof d), i + 1, L.batch, S->h, S->w,
                  S->c);
  }
  /* no gradient: the parameter gradients stay as they are, but dx cannot be zeroed without
   * a fill op */
  CLUDA_REQUIRE(given > 0 || dx == NULL, CLUDA_ERR_ARG,
                "%s: dout[0..3] are all NULL, so there is no gradient to write into dx", op);
  if (given == 0) return cluda_ok();
  if (dx != NULL) {
    CLUDA_TRY(cluda_check_tensor(op, "dx", dx, CLUDA_F32, 4));
    CLUDA_REQUIRE(cluda_tensor_same_shape(dx, x), CLUDA_ERR_SHAPE,
                  "%s: dx %s must have x's shape [%d, %d, %d, %d]", op,
                  cluda_tensor_describe(dx, d, sizeof d), x->shape[0], x->shape[1], x->shape[2],
                  x->shape[3]);
  }
  const size_t mark = cluda_arena_mark(ctx->scratch);
  void *own = NULL;
  cluda_status st = cluda_arena_alloc(ctx->scratch, L.own_scratch, op, &own);
  if (st.code == CLUDA_OK)
    st = backward_body(ctx, mit, &L, table, (float *)params, grads, mode, x, acts, dout, dx, own);
  cluda_arena_release(ctx->scratch, mark); /* on failure too */
  return st;
}

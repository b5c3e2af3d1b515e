/* Decode heads (DAFormer sep-ASPP and SegFormer all-MLP), composed from the public ops so
 * they run on any backend. Layer by layer:
 *
 *   embed   e_i = feats[i] W_i^T + b_i; r_i = resize(e_i) to level 0 (i >= 1); cat = [e0 r1 r2 r3]
 *   fusion  DAFormer: ASPP branches + bottleneck (3x3 conv, BN, ReLU); SegFormer: 1x1 conv, BN,
 *           ReLU. Its output is `fused`.
 *   cls     Dropout2d (training only), 1x1 conv with bias = logits
 *
 * 1x1 convolutions run as linear ops on [rows, C] (an OHWI [O,1,1,I] weight is an [O, I]
 * matrix). BN + ReLU write the BN output and rectify it in place (the elementwise ReLU reads
 * element i before writing it), so only the post-ReLU map is kept; the ReLU backward masks
 * with it.
 *
 * One function (head_layout) places every saved activation in `acts` and every temporary in
 * the scratch block, so plan, forward and backward cannot disagree. */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "cluda/head.h"

#define DESC(t, buf) cluda_tensor_describe((t), (buf), sizeof(buf))

enum { NUM_LEVELS = 4, NUM_BRANCHES = 4, MAX_ENTRIES = 40 };

/* ---- the parameter and state entries, in table order ----
 * Both kinds start with the four level embeddings (weight, bias). */
enum { P_EMBED = 0 }; /* weight of level i at 2 i, bias at 2 i + 1 */
/* DAFormer */
enum {
  P_ASPP0 = 8, /* aspp_modules.0: conv.weight, bn.weight, bn.bias */
  P_SEP = 11,  /* aspp_modules.k (k = 1..3) at P_SEP + 6 (k - 1): depthwise conv, bn w, bn b,
                  pointwise conv, bn w, bn b */
  P_BOTTLENECK = 29,
  P_CONV_SEG = 32,
  DAFORMER_PARAMS = 34
};
/* SegFormer */
enum { P_FUSE = 8, P_PRED = 11, SEGFORMER_PARAMS = 13 };
/* BN order in the state table (running_mean at 2 j, running_var at 2 j + 1): DAFormer aspp0,
 * then dw1, pw1, dw2, pw2, dw3, pw3, then the bottleneck; SegFormer linear_fuse. */
enum { BN_ASPP0 = 0, BN_SEP = 1, BN_BOTTLENECK = 7, DAFORMER_BNS = 8, SEGFORMER_BNS = 1 };

typedef enum init_kind {
  INIT_UNIFORM_FAN_IN,  /* PyTorch Linear / Conv2d default: U(-1/sqrt(fan), 1/sqrt(fan)) */
  INIT_KAIMING_FAN_OUT, /* mmcv ConvModule: normal, std sqrt(2 / fan_out) */
  INIT_NORMAL_001,      /* conv_seg: normal(0, 0.01) */
  INIT_ONE,
  INIT_ZERO
} init_kind;

typedef struct entry_spec {
  char name[64]; /* after the prefix */
  int ndim;
  int shape[4];
  init_kind init;
  int fan; /* fan_in or fan_out for the init */
  int no_decay;
} entry_spec;

typedef struct entry_list {
  entry_spec params[MAX_ENTRIES];
  int n_params;
  entry_spec state[MAX_ENTRIES];
  int n_state;
} entry_list;

static void add_entry(entry_spec *list, int *n, const char *name, int ndim, int d0, int d1, int d2,
                      int d3, init_kind init, int fan) {
  entry_spec *e = &list[(*n)++];
  snprintf(e->name, sizeof e->name, "%s", name);
  e->ndim = ndim;
  e->shape[0] = d0;
  e->shape[1] = d1;
  e->shape[2] = d2;
  e->shape[3] = d3;
  e->init = init;
  e->fan = fan;
  /* The reference decays every decode-head parameter: mmcv's "norm" key does not match the
   * BN modules, which are named "bn" (algorithm.md 4.1). */
  e->no_decay = 0;
}

/* A conv (OHWI, no bias) followed by BN: "<base>.conv.weight", "<base>.bn.{weight,bias}" and
 * the running statistics. */
static void add_conv_bn(entry_list *l, const char *base, int out, int k, int in_per_group) {
  char name[64];
  snprintf(name, sizeof name, "%s.conv.weight", base);
  add_entry(l->params, &l->n_params, name, 4, out, k, k, in_per_group, INIT_KAIMING_FAN_OUT,
            out * k * k);
  snprintf(name, sizeof name, "%s.bn.weight", base);
  add_entry(l->params, &l->n_params, name, 1, out, 1, 1, 1, INIT_ONE, 0);
  snprintf(name, sizeof name, "%s.bn.bias", base);
  add_entry(l->params, &l->n_params, name, 1, out, 1, 1, 1, INIT_ZERO, 0);
  snprintf(name, sizeof name, "%s.bn.running_mean", base);
  add_entry(l->state, &l->n_state, name, 1, out, 1, 1, 1, INIT_ZERO, 0);
  snprintf(name, sizeof name, "%s.bn.running_var", base);
  add_entry(l->state, &l->n_state, name, 1, out, 1, 1, 1, INIT_ONE, 0);
}

/* Every entry of a head, in the order of the P_* / BN_* constants. */
static void head_entries(const cluda_head_config *cfg, entry_list *l) {
  const int e = cfg->embed_dims, cf = cfg->channels, k = cfg->num_classes;
  const int daformer = cfg->kind == CLUDA_HEAD_DAFORMER;
  char name[64];
  l->n_params = l->n_state = 0;
  for (int i = 0; i < NUM_LEVELS; i++) {
    const int c = cfg->in_channels[i];
    snprintf(name, sizeof name,
             daformer ? "embed_layers.%d.proj.weight" : "linear_c.%d.proj.weight", i);
    add_entry(l->params, &l->n_params, name, 2, e, c, 1, 1, INIT_UNIFORM_FAN_IN, c);
    snprintf(name, sizeof name, daformer ? "embed_layers.%d.proj.bias" : "linear_c.%d.proj.bias",
             i);
    add_entry(l->params, &l->n_params, name, 1, e, 1, 1, 1, INIT_UNIFORM_FAN_IN, c);
  }
  if (daformer) {
    add_conv_bn(l, "fuse_layer.aspp_modules.0", cf, 1, 4 * e);
    for (int b = 1; b < NUM_BRANCHES; b++) {
      snprintf(name, sizeof name, "fuse_layer.aspp_modules.%d.depthwise_conv", b);
      add_conv_bn(l, name, 4 * e, 3, 1);
      snprintf(name, sizeof name, "fuse_layer.aspp_modules.%d.pointwise_conv", b);
      add_conv_bn(l, name, cf, 1, 4 * e);
    }
    add_conv_bn(l, "fuse_layer.bottleneck", cf, 3, 4 * cf);
    add_entry(l->params, &l->n_params, "conv_seg.weight", 4, k, 1, 1, cf, INIT_NORMAL_001, 0);
    add_entry(l->params, &l->n_params, "conv_seg.bias", 1, k, 1, 1, 1, INIT_ZERO, 0);
  } else {
    add_conv_bn(l, "linear_fuse", e, 1, 4 * e);
    /* linear_pred is a plain nn.Conv2d: PyTorch's default init, not conv_seg's */
    add_entry(l->params, &l->n_params, "linear_pred.weight", 4, k, 1, 1, e, INIT_UNIFORM_FAN_IN, e);
    add_entry(l->params, &l->n_params, "linear_pred.bias", 1, k, 1, 1, 1, INIT_UNIFORM_FAN_IN, e);
  }
}

/* ---- configuration ---- */

void cluda_head_default_config(cluda_head_kind kind, const int in_channels[4],
                               cluda_head_config *cfg) {
  if (!cfg) return;
  memset(cfg, 0, sizeof *cfg);
  cfg->kind = kind;
  for (int i = 0; i < NUM_LEVELS; i++)
    cfg->in_channels[i] = in_channels ? in_channels[i] : 0;
  cfg->embed_dims = kind == CLUDA_HEAD_DAFORMER ? 512 : 256;
  cfg->channels = kind == CLUDA_HEAD_DAFORMER ? 256 : cfg->embed_dims;
  cfg->num_classes = 19;
  cfg->dilations[0] = 1;
  cfg->dilations[1] = 6;
  cfg->dilations[2] = 12;
  cfg->dilations[3] = 18;
  cfg->dropout = 0.1f;
  cfg->bn_eps = 1e-5f;
  cfg->bn_momentum = 0.1f;
}

static cluda_status check_config(const char *op, const cluda_head_config *cfg) {
  CLUDA_REQUIRE(cfg != NULL, CLUDA_ERR_ARG, "%s: cfg is NULL", op);
  CLUDA_REQUIRE(cfg->kind == CLUDA_HEAD_DAFORMER || cfg->kind == CLUDA_HEAD_SEGFORMER,
                CLUDA_ERR_ARG, "%s: cfg->kind = %d is not a cluda_head_kind", op, (int)cfg->kind);
  for (int i = 0; i < NUM_LEVELS; i++)
    CLUDA_REQUIRE(cfg->in_channels[i] >= 1, CLUDA_ERR_ARG,
                  "%s: cfg->in_channels[%d] = %d must be >= 1", op, i, cfg->in_channels[i]);
  CLUDA_REQUIRE(cfg->embed_dims >= 1, CLUDA_ERR_ARG, "%s: cfg->embed_dims = %d must be >= 1", op,
                cfg->embed_dims);
  CLUDA_REQUIRE(cfg->channels >= 1, CLUDA_ERR_ARG, "%s: cfg->channels = %d must be >= 1", op,
                cfg->channels);
  CLUDA_REQUIRE(cfg->num_classes >= 1, CLUDA_ERR_ARG, "%s: cfg->num_classes = %d must be >= 1", op,
                cfg->num_classes);
  /* channel counts are multiplied by 4 and by 9 x 4 in the weight shapes */
  CLUDA_REQUIRE(cfg->embed_dims <= (1 << 20) && cfg->channels <= (1 << 20), CLUDA_ERR_ARG,
                "%s: cfg->embed_dims = %d or cfg->channels = %d is too large", op, cfg->embed_dims,
                cfg->channels);
  if (cfg->kind == CLUDA_HEAD_DAFORMER) {
    CLUDA_REQUIRE(cfg->dilations[0] == 1, CLUDA_ERR_ARG,
                  "%s: cfg->dilations[0] = %d must be 1 (ASPP branch 0 is a 1x1 conv)", op,
                  cfg->dilations[0]);
    for (int i = 1; i < NUM_BRANCHES; i++)
      CLUDA_REQUIRE(cfg->dilations[i] >= 1, CLUDA_ERR_ARG,
                    "%s: cfg->dilations[%d] = %d must be >= 1", op, i, cfg->dilations[i]);
  } else {
    CLUDA_REQUIRE(cfg->channels == cfg->embed_dims, CLUDA_ERR_ARG,
                  "%s: SegFormer needs cfg->channels = %d equal to cfg->embed_dims = %d", op,
                  cfg->channels, cfg->embed_dims);
  }
  /* written so that NaN fails too */
  CLUDA_REQUIRE(cfg->dropout >= 0.0f && cfg->dropout < 1.0f, CLUDA_ERR_ARG,
                "%s: cfg->dropout = %g must be in [0, 1)", op, (double)cfg->dropout);
  CLUDA_REQUIRE(cfg->bn_eps > 0.0f && isfinite(cfg->bn_eps), CLUDA_ERR_ARG,
                "%s: cfg->bn_eps = %g must be positive and finite", op, (double)cfg->bn_eps);
  CLUDA_REQUIRE(cfg->bn_momentum >= 0.0f && cfg->bn_momentum <= 1.0f, CLUDA_ERR_ARG,
                "%s: cfg->bn_momentum = %g must be in [0, 1]", op, (double)cfg->bn_momentum);
  return cluda_ok();
}

cluda_status cluda_head_declare(cluda_head *head, const cluda_head_config *cfg, const char *prefix,
                                cluda_param_table *params, cluda_param_table *state) {
  const char *op = "head_declare";
  CLUDA_REQUIRE(head != NULL && params != NULL && state != NULL, CLUDA_ERR_ARG,
                "%s: head, params or state is NULL", op);
  CLUDA_TRY(check_config(op, cfg));
  if (!prefix) prefix = "";
  CLUDA_REQUIRE(strlen(prefix) + 64 <= CLUDA_PARAM_NAME_MAX, CLUDA_ERR_ARG,
                "%s: prefix \"%s\" is too long", op, prefix);
  entry_list l;
  head_entries(cfg, &l);
  memset(head, 0, sizeof *head);
  head->cfg = *cfg;
  head->first_param = params->count;
  head->first_state = state->count;
  char name[CLUDA_PARAM_NAME_MAX];
  for (int i = 0; i < l.n_params; i++) {
    const entry_spec *e = &l.params[i];
    snprintf(name, sizeof name, "%s%s", prefix, e->name);
    CLUDA_TRY(cluda_param_table_add(params, name, e->ndim, e->shape, CLUDA_GROUP_HEAD, e->no_decay,
                                    NULL));
  }
  for (int i = 0; i < l.n_state; i++) {
    const entry_spec *e = &l.state[i];
    snprintf(name, sizeof name, "%s%s", prefix, e->name);
    CLUDA_TRY(cluda_param_table_add(state, name, e->ndim, e->shape, CLUDA_GROUP_HEAD, 1, NULL));
  }
  head->param_count = l.n_params;
  head->state_count = l.n_state;
  return cluda_ok();
}

/* Fills one table entry from its init rule; draws use the entry's table index as the slot. */
static void init_entry(const entry_spec *e, float *data, size_t count, uint64_t seed, int index) {
  const cluda_rng_key key = cluda_rng_make_key(seed, 0, 0, CLUDA_RNG_INIT, (uint32_t)index);
  for (size_t j = 0; j < count; j++) {
    double v = 0.0;
    switch (e->init) {
    case INIT_UNIFORM_FAN_IN:
      v = (2.0 * cluda_rng_uniform(key, j) - 1.0) / sqrt((double)e->fan);
      break;
    case INIT_KAIMING_FAN_OUT: v = cluda_rng_normal(key, j) * sqrt(2.0 / e->fan); break;
    case INIT_NORMAL_001: v = 0.01 * cluda_rng_normal(key, j); break;
    case INIT_ONE: v = 1.0; break;
    case INIT_ZERO: v = 0.0; break;
    }
    data[j] = (float)v;
  }
}

/* Checks that the table holds the head's entries (names and shapes) at its range. */
static cluda_status check_table(const char *op, const char *table_name,
                                const cluda_param_table *table, int first, int count,
                                const entry_spec *specs, int n_specs) {
  CLUDA_REQUIRE(table != NULL, CLUDA_ERR_ARG, "%s: %s is NULL", op, table_name);
  CLUDA_REQUIRE(count == n_specs && first >= 0 && first + count <= table->count, CLUDA_ERR_ARG,
                "%s: the head's entries [%d, %d) of %s do not fit its %d entries (declared with "
                "another table or config?)",
                op, first, first + count, table_name, table->count);
  for (int i = 0; i < n_specs; i++) {
    const cluda_param_info *info = &table->items[first + i];
    const entry_spec *e = &specs[i];
    const size_t len = strlen(info->name), want_len = strlen(e->name);
    int ok = info->ndim == e->ndim && len >= want_len &&
             strcmp(info->name + len - want_len, e->name) == 0;
    for (int d = 0; ok && d < e->ndim; d++)
      ok = info->shape[d] == e->shape[d];
    CLUDA_REQUIRE(ok, CLUDA_ERR_SHAPE,
                  "%s: %s entry %d is \"%s\" (ndim %d, [%d,%d,%d,%d]) but the head expects "
                  "\"...%s\" [%d,%d,%d,%d]",
                  op, table_name, first + i, info->name, info->ndim, info->shape[0], info->shape[1],
                  info->shape[2], info->shape[3], e->name, e->shape[0], e->shape[1], e->shape[2],
                  e->shape[3]);
  }
  return cluda_ok();
}

cluda_status cluda_head_init(const cluda_head *head, const cluda_param_table *params,
                             float *param_data, const cluda_param_table *state, float *state_data,
                             uint64_t seed) {
  const char *op = "head_init";
  CLUDA_REQUIRE(head != NULL && param_data != NULL && state_data != NULL, CLUDA_ERR_ARG,
                "%s: head, param_data or state_data is NULL", op);
  CLUDA_TRY(check_config(op, &head->cfg));
  entry_list l;
  head_entries(&head->cfg, &l);
  CLUDA_TRY(check_table(op, "params", params, head->first_param, head->param_count, l.params,
                        l.n_params));
  CLUDA_TRY(
      check_table(op, "state", state, head->first_state, head->state_count, l.state, l.n_state));
  for (int i = 0; i < l.n_params; i++) {
    const cluda_param_info *info = &params->items[head->first_param + i];
    init_entry(&l.params[i], param_data + info->offset, info->count, seed, head->first_param + i);
  }
  for (int i = 0; i < l.n_state; i++) {
    const cluda_param_info *info = &state->items[head->first_state + i];
    init_entry(&l.state[i], state_data + info->offset, info->count, seed, 0);
  }
  return cluda_ok();
}

/* ---- memory layout ---- */

/* A conv's output before its BN, and the BN's saved statistics (byte offsets in acts). */
typedef struct bn_saved {
  size_t z, mean, rstd;
} bn_saved;

typedef struct head_layout {
  int daformer, dropout; /* dropout: a Dropout2d layer exists (cfg.dropout > 0) */
  int b, h[4], w[4], e, cf, k;
  int64_t rows;     /* B * H0 * W0 */
  int64_t level[4]; /* B * H_i * W_i */

  /* acts */
  size_t cat;            /* [rows, 4E] */
  bn_saved aspp0;        /* DAFormer branch 0 [rows, Cf] */
  bn_saved dw[3], pw[3]; /* separable branches: [rows, 4E] and [rows, Cf] */
  size_t dw_out[3];      /* ReLU(BN(depthwise)) [rows, 4E] */
  size_t aspp;           /* ReLU'd branch outputs, concatenated [rows, 4 Cf] */
  bn_saved fuse;         /* bottleneck (DAFormer) or linear_fuse (SegFormer) [rows, Cf] */
  size_t fused;          /* [rows, Cf] */
  size_t dropped, mask;  /* Dropout2d output [rows, Cf] and mask u8 [B, Cf] */
  size_t logits;         /* [rows, K] */
  size_t activation_bytes;

  /* forward scratch */
  size_t f_embed[4], f_resized[4]; /* e_i [level i, E]; r_i [rows, E] for i >= 1 */
  size_t f_branch[4];              /* branch outputs before the concat, reusing the above */
  size_t fwd_own;
  /* backward scratch */
  size_t d_cat;                    /* [rows, 4E] */
  size_t d_fused, d_tmp;           /* [rows, Cf] */
  size_t d_aspp, d_branch[4];      /* [rows, 4 Cf], 4 x [rows, Cf] */
  size_t d_wide1, d_wide2;         /* [rows, 4E] */
  size_t d_resized[4], d_embed[4]; /* embed phase, reusing the fusion phase's space */
  size_t bwd_own;
  size_t nested; /* the most a conv2d takes from the scratch on top of the own block */
  size_t scratch_bytes;
  double macs;
} head_layout;

/* Appends a region of `bytes` at *at (64-byte aligned) and returns its offset. */
static size_t region(size_t *at, size_t bytes) {
  size_t off = *at;
  *at += cluda_arena_align(bytes);
  return off;
}
static size_t floats(int64_t n) { return (size_t)n * sizeof(float); }
static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

static cluda_conv2d_params depthwise_params(int dilation, int channels) {
  cluda_conv2d_params p = {3, 3, 1, 1, dilation, dilation, dilation, dilation, channels};
  return p;
}
static cluda_conv2d_params bottleneck_params(void) {
  cluda_conv2d_params p = {3, 3, 1, 1, 1, 1, 1, 1, 1};
  return p;
}

static cluda_status head_layout_for(const char *op, const cluda_head_config *cfg, int batch,
                                    const int in_h[4], const int in_w[4], head_layout *L) {
  CLUDA_TRY(check_config(op, cfg));
  CLUDA_REQUIRE(in_h != NULL && in_w != NULL, CLUDA_ERR_ARG, "%s: in_h or in_w is NULL", op);
  CLUDA_REQUIRE(batch >= 1, CLUDA_ERR_SHAPE, "%s: batch = %d must be >= 1", op, batch);
  memset(L, 0, sizeof *L);
  L->daformer = cfg->kind == CLUDA_HEAD_DAFORMER;
  L->dropout = cfg->dropout > 0.0f;
  L->b = batch;
  L->e = cfg->embed_dims;
  L->cf = cfg->channels;
  L->k = cfg->num_classes;
  const int64_t e = L->e, cf = L->cf, k = L->k, wide = 4 * e;
  for (int i = 0; i < NUM_LEVELS; i++) {
    CLUDA_REQUIRE(in_h[i] >= 1 && in_w[i] >= 1, CLUDA_ERR_SHAPE,
                  "%s: input level %d is %dx%d; sizes must be >= 1", op, i, in_h[i], in_w[i]);
    L->h[i] = in_h[i];
    L->w[i] = in_w[i];
    L->level[i] = (int64_t)batch * in_h[i] * in_w[i];
    /* tensor views use int dimensions and element counts must fit them */
    CLUDA_REQUIRE(L->level[i] * (wide > cfg->in_channels[i] ? wide : cfg->in_channels[i]) <=
                      INT_MAX,
                  CLUDA_ERR_SHAPE, "%s: input level %d [%d, %d, %d, %d] is too large", op, i, batch,
                  in_h[i], in_w[i], cfg->in_channels[i]);
  }
  L->rows = L->level[0];
  const int64_t rows = L->rows;
  CLUDA_REQUIRE(rows * (wide > 4 * cf ? wide : 4 * cf) <= INT_MAX, CLUDA_ERR_SHAPE,
                "%s: level 0 [%d, %d, %d] with 4E = %lld or 4Cf = %lld channels is too large", op,
                batch, in_h[0], in_w[0], (long long)wide, (long long)(4 * cf));

  /* activations */
  size_t at = 0;
  L->cat = region(&at, floats(rows * wide));
  if (L->daformer) {
    L->aspp0.z = region(&at, floats(rows * cf));
    L->aspp0.mean = region(&at, floats(cf));
    L->aspp0.rstd = region(&at, floats(cf));
    for (int j = 0; j < 3; j++) {
      L->dw[j].z = region(&at, floats(rows * wide));
      L->dw[j].mean = region(&at, floats(wide));
      L->dw[j].rstd = region(&at, floats(wide));
      L->dw_out[j] = region(&at, floats(rows * wide));
      L->pw[j].z = region(&at, floats(rows * cf));
      L->pw[j].mean = region(&at, floats(cf));
      L->pw[j].rstd = region(&at, floats(cf));
    }
    L->aspp = region(&at, floats(rows * 4 * cf));
  }
  L->fuse.z = region(&at, floats(rows * cf));
  L->fuse.mean = region(&at, floats(cf));
  L->fuse.rstd = region(&at, floats(cf));
  L->fused = region(&at, floats(rows * cf));
  if (L->dropout) {
    L->dropped = region(&at, floats(rows * cf));
    L->mask = region(&at, (size_t)batch * cf);
  }
  L->logits = region(&at, floats(rows * k));
  L->activation_bytes = at;

  /* forward scratch: embeddings, then (reusing the space) the branch outputs */
  at = 0;
  for (int i = 0; i < NUM_LEVELS; i++) {
    L->f_embed[i] = region(&at, floats(L->level[i] * e));
    if (i > 0) L->f_resized[i] = region(&at, floats(rows * e));
  }
  size_t fwd_embed = at;
  at = 0;
  if (L->daformer)
    for (int j = 0; j < NUM_BRANCHES; j++)
      L->f_branch[j] = region(&at, floats(rows * cf));
  L->fwd_own = max_size(fwd_embed, at);

  /* backward scratch: d_cat lives throughout; the fusion phase's buffers and the embed
   * phase's buffers share the space after it */
  at = 0;
  L->d_cat = region(&at, floats(rows * wide));
  const size_t phase_start = at;
  L->d_fused = region(&at, floats(rows * cf));
  L->d_tmp = region(&at, floats(rows * cf));
  if (L->daformer) {
    L->d_aspp = region(&at, floats(rows * 4 * cf));
    for (int j = 0; j < NUM_BRANCHES; j++)
      L->d_branch[j] = region(&at, floats(rows * cf));
    L->d_wide1 = region(&at, floats(rows * wide));
    L->d_wide2 = region(&at, floats(rows * wide));
  }
  const size_t fusion_end = at;
  at = phase_start;
  for (int i = 0; i < NUM_LEVELS; i++) {
    L->d_resized[i] = region(&at, floats(rows * e));
    L->d_embed[i] = i == 0 ? L->d_resized[0] : region(&at, floats(L->level[i] * e));
  }
  L->bwd_own = max_size(fusion_end, at);

  /* nested conv2d scratch (the 1x1 convs are linear ops and take none) */
  L->nested = 0;
  if (L->daformer) {
    const int b = batch, h0 = in_h[0], w0 = in_w[0];
    cluda_tensor x = cluda_tensor_4d(CLUDA_F32, NULL, b, h0, w0, (int)wide);
    cluda_tensor wdw = cluda_tensor_4d(CLUDA_F32, NULL, (int)wide, 3, 3, 1);
    for (int j = 1; j < NUM_BRANCHES; j++) {
      cluda_conv2d_params p = depthwise_params(cfg->dilations[j], (int)wide);
      L->nested =
          max_size(L->nested, cluda_arena_align(cluda_conv2d_scratch_bytes(&p, &x, &wdw, &x)));
    }
    cluda_conv2d_params p = bottleneck_params();
    cluda_tensor xa = cluda_tensor_4d(CLUDA_F32, NULL, b, h0, w0, (int)(4 * cf));
    cluda_tensor wb = cluda_tensor_4d(CLUDA_F32, NULL, (int)cf, 3, 3, (int)(4 * cf));
    cluda_tensor y = cluda_tensor_4d(CLUDA_F32, NULL, b, h0, w0, (int)cf);
    L->nested =
        max_size(L->nested, cluda_arena_align(cluda_conv2d_scratch_bytes(&p, &xa, &wb, &y)));
  }
  L->scratch_bytes = max_size(L->fwd_own, L->bwd_own) + L->nested;

  /* multiply-accumulates per image */
  const double px = (double)in_h[0] * in_w[0];
  double macs = 0.0;
  for (int i = 0; i < NUM_LEVELS; i++)
    macs += (double)in_h[i] * in_w[i] * cfg->in_channels[i] * e;
  if (L->daformer) {
    macs += px * wide * cf;               /* branch 0 */
    macs += 3.0 * px * wide * (9.0 + cf); /* depthwise + pointwise */
    macs += px * 9.0 * 4.0 * cf * cf;     /* bottleneck */
  } else {
    macs += px * wide * cf; /* linear_fuse */
  }
  macs += px * cf * k; /* classifier */
  L->macs = macs;
  return cluda_ok();
}

cluda_status cluda_head_plan_for(const cluda_head *head, int batch, const int in_h[4],
                                 const int in_w[4], cluda_head_plan *plan) {
  const char *op = "head_plan_for";
  CLUDA_REQUIRE(head != NULL && plan != NULL, CLUDA_ERR_ARG, "%s: head or plan is NULL", op);
  head_layout L;
  CLUDA_TRY(head_layout_for(op, &head->cfg, batch, in_h, in_w, &L));
  memset(plan, 0, sizeof *plan);
  plan->batch = batch;
  for (int i = 0; i < NUM_LEVELS; i++) {
    plan->in_h[i] = in_h[i];
    plan->in_w[i] = in_w[i];
  }
  plan->out_h = in_h[0];
  plan->out_w = in_w[0];
  plan->activation_bytes = L.activation_bytes;
  plan->scratch_bytes = L.scratch_bytes;
  plan->macs = L.macs;
  return cluda_ok();
}

/* ---- binding tensors ---- */

/* A conv followed by BN: the conv weight, gamma, beta (params or their gradients). */
typedef struct conv_bn {
  cluda_tensor w, gamma, beta;
} conv_bn;

typedef struct head_weights {
  cluda_tensor embed_w[4], embed_b[4];
  conv_bn aspp0, dw[3], pw[3]; /* DAFormer */
  conv_bn fuse;                /* bottleneck (DAFormer) or linear_fuse (SegFormer) */
  cluda_tensor cls_w, cls_b;   /* conv_seg / linear_pred as an [K, Cf] matrix */
} head_weights;

typedef struct head_stats {
  cluda_tensor mean[DAFORMER_BNS], var[DAFORMER_BNS];
} head_stats;

static cluda_tensor entry_view(const cluda_param_table *t, int index, const float *base) {
  return cluda_param_view(t, index, (float *)base);
}

/* A 1x1 conv's OHWI weight [O,1,1,I] as the [O, I] matrix a linear op takes. */
static cluda_tensor as_matrix(cluda_tensor w) {
  return cluda_tensor_2d(CLUDA_F32, w.data, w.shape[0], w.shape[3]);
}

static conv_bn bind_conv_bn(const cluda_param_table *t, int first, const float *base, int matrix) {
  conv_bn u;
  u.w = entry_view(t, first, base);
  if (matrix) u.w = as_matrix(u.w);
  u.gamma = entry_view(t, first + 1, base);
  u.beta = entry_view(t, first + 2, base);
  return u;
}

/* Views of the head's parameters (or gradients: the same layout) in `base`; the table was
 * checked by check_table. */
static head_weights bind_weights(const cluda_head *head, const cluda_param_table *t,
                                 const float *base) {
  head_weights w;
  memset(&w, 0, sizeof w);
  const int f = head->first_param;
  for (int i = 0; i < NUM_LEVELS; i++) {
    w.embed_w[i] = entry_view(t, f + P_EMBED + 2 * i, base);
    w.embed_b[i] = entry_view(t, f + P_EMBED + 2 * i + 1, base);
  }
  if (head->cfg.kind == CLUDA_HEAD_DAFORMER) {
    w.aspp0 = bind_conv_bn(t, f + P_ASPP0, base, 1);
    for (int j = 0; j < 3; j++) {
      w.dw[j] = bind_conv_bn(t, f + P_SEP + 6 * j, base, 0);
      w.pw[j] = bind_conv_bn(t, f + P_SEP + 6 * j + 3, base, 1);
    }
    w.fuse = bind_conv_bn(t, f + P_BOTTLENECK, base, 0);
    w.cls_w = as_matrix(entry_view(t, f + P_CONV_SEG, base));
    w.cls_b = entry_view(t, f + P_CONV_SEG + 1, base);
  } else {
    w.fuse = bind_conv_bn(t, f + P_FUSE, base, 1);
    w.cls_w = as_matrix(entry_view(t, f + P_PRED, base));
    w.cls_b = entry_view(t, f + P_PRED + 1, base);
  }
  return w;
}

static head_stats bind_stats(const cluda_head *head, const cluda_param_table *t, float *base) {
  head_stats s;
  memset(&s, 0, sizeof s);
  const int n = head->cfg.kind == CLUDA_HEAD_DAFORMER ? DAFORMER_BNS : SEGFORMER_BNS;
  for (int j = 0; j < n; j++) {
    s.mean[j] = cluda_param_view(t, head->first_state + 2 * j, base);
    s.var[j] = cluda_param_view(t, head->first_state + 2 * j + 1, base);
  }
  return s;
}

static float *at_offset(const void *base, size_t off) { return (float *)((char *)base + off); }

/* [B, H0, W0, c] view at byte offset off of base. */
static cluda_tensor map_at(const head_layout *L, const void *base, size_t off, int64_t c) {
  return cluda_tensor_4d(CLUDA_F32, at_offset(base, off), L->b, L->h[0], L->w[0], (int)c);
}
static cluda_tensor level_at(const head_layout *L, int i, const void *base, size_t off) {
  return cluda_tensor_4d(CLUDA_F32, at_offset(base, off), L->b, L->h[i], L->w[i], L->e);
}
static cluda_tensor vec_at(const void *base, size_t off, int64_t c) {
  return cluda_tensor_1d(CLUDA_F32, at_offset(base, off), (int)c);
}

/* ---- validation shared by forward and backward ---- */

static cluda_status check_common(const char *op, cluda_ctx *ctx, const cluda_head *head,
                                 const cluda_head_plan *plan, const cluda_param_table *params,
                                 const void *param_data, const cluda_param_table *state,
                                 const void *state_data, const cluda_run_mode *mode,
                                 const cluda_tensor feats[4], const void *acts, head_layout *L) {
  CLUDA_REQUIRE(ctx != NULL && ctx->scratch != NULL, CLUDA_ERR_ARG,
                "%s: ctx or ctx->scratch is NULL", op);
  CLUDA_REQUIRE(head != NULL && plan != NULL, CLUDA_ERR_ARG, "%s: head or plan is NULL", op);
  CLUDA_REQUIRE(param_data != NULL && state_data != NULL, CLUDA_ERR_ARG,
                "%s: param_data or state_data is NULL", op);
  CLUDA_REQUIRE(mode != NULL && feats != NULL && acts != NULL, CLUDA_ERR_ARG,
                "%s: mode, feats or acts is NULL", op);
  CLUDA_REQUIRE(plan->out_h == plan->in_h[0] && plan->out_w == plan->in_w[0], CLUDA_ERR_ARG,
                "%s: plan output %dx%d differs from level 0 %dx%d (use cluda_head_plan_for)", op,
                plan->out_h, plan->out_w, plan->in_h[0], plan->in_w[0]);
  CLUDA_TRY(head_layout_for(op, &head->cfg, plan->batch, plan->in_h, plan->in_w, L));
  CLUDA_REQUIRE(plan->activation_bytes >= L->activation_bytes, CLUDA_ERR_ARG,
                "%s: plan->activation_bytes = %zu but this head needs %zu (cluda_head_plan_for)",
                op, plan->activation_bytes, L->activation_bytes);
  entry_list l;
  head_entries(&head->cfg, &l);
  CLUDA_TRY(check_table(op, "params", params, head->first_param, head->param_count, l.params,
                        l.n_params));
  CLUDA_TRY(
      check_table(op, "state", state, head->first_state, head->state_count, l.state, l.n_state));
  for (int i = 0; i < NUM_LEVELS; i++) {
    char name[16], d[64];
    snprintf(name, sizeof name, "feats[%d]", i);
    CLUDA_TRY(cluda_check_tensor(op, name, &feats[i], CLUDA_F32, 4));
    const cluda_tensor *f = &feats[i];
    CLUDA_REQUIRE(f->shape[0] == plan->batch && f->shape[1] == plan->in_h[i] &&
                      f->shape[2] == plan->in_w[i] && f->shape[3] == head->cfg.in_channels[i],
                  CLUDA_ERR_SHAPE,
                  "%s: %s %s must be [%d, %d, %d, %d] (plan batch and size, "
                  "cfg in_channels)",
                  op, name, DESC(f, d), plan->batch, plan->in_h[i], plan->in_w[i],
                  head->cfg.in_channels[i]);
  }
  return cluda_ok();
}

/* Fails unless t is an f32 [B, H0, W0, c] map. */
static cluda_status check_output_map(const char *op, const char *name, const cluda_tensor *t,
                                     const head_layout *L, int c) {
  char d[64];
  CLUDA_TRY(cluda_check_tensor(op, name, t, CLUDA_F32, 4));
  CLUDA_REQUIRE(t->shape[0] == L->b && t->shape[1] == L->h[0] && t->shape[2] == L->w[0] &&
                    t->shape[3] == c,
                CLUDA_ERR_SHAPE, "%s: %s %s must be [%d, %d, %d, %d]", op, name, DESC(t, d), L->b,
                L->h[0], L->w[0], c);
  return cluda_ok();
}

static cluda_batchnorm_params bn_params(const cluda_head_config *cfg, const cluda_run_mode *mode) {
  cluda_batchnorm_params p = {cfg->bn_eps, cfg->bn_momentum, mode->bn_batch_stats ? 1 : 0};
  return p;
}

/* Dropout2d draws from mode->key with the dropout purpose (the encoder's drop path forces
 * its own purpose), so the two never share draws whatever the base key. */
static cluda_dropout_params dropout_params(const cluda_head_config *cfg,
                                           const cluda_run_mode *mode) {
  cluda_dropout_params p = {cfg->dropout, CLUDA_DROPOUT_CHANNEL, mode->key, mode->first_sample};
  p.key.stream =
      (mode->key.stream & ~((uint64_t)0xffff << 32)) | ((uint64_t)CLUDA_RNG_DROPOUT << 32);
  return p;
}

/* ---- forward ---- */

/* y = ReLU(BN(z)), the BN statistics saved in s; y may be written in place afterwards. */
static cluda_status bn_relu_forward(cluda_ctx *ctx, const cluda_batchnorm_params *bp,
                                    const conv_bn *u, cluda_tensor *run_mean, cluda_tensor *run_var,
                                    const cluda_tensor *z, cluda_tensor *mean, cluda_tensor *rstd,
                                    cluda_tensor *y) {
  CLUDA_TRY(
      cluda_batchnorm_forward(ctx, bp, z, &u->gamma, &u->beta, run_mean, run_var, y, mean, rstd));
  return cluda_relu_forward(ctx, y, y);
}

/* cat = [e0, resize(e1), resize(e2), resize(e3)] with e_i = feats[i] W_i^T + b_i. */
static cluda_status embed_forward(cluda_ctx *ctx, const head_layout *L, const head_weights *w,
                                  const cluda_tensor feats[4], void *tmp, void *acts) {
  cluda_tensor embed[4], resized[4];
  const cluda_tensor *parts[4];
  for (int i = 0; i < NUM_LEVELS; i++) {
    embed[i] = level_at(L, i, tmp, L->f_embed[i]);
    CLUDA_TRY(cluda_linear_forward(ctx, &feats[i], &w->embed_w[i], &w->embed_b[i], &embed[i]));
    if (i == 0) {
      parts[0] = &embed[0];
      continue;
    }
    resized[i] = map_at(L, tmp, L->f_resized[i], L->e);
    CLUDA_TRY(cluda_resize_bilinear_forward(ctx, 0, &embed[i], &resized[i]));
    parts[i] = &resized[i];
  }
  cluda_tensor cat = map_at(L, acts, L->cat, 4 * (int64_t)L->e);
  return cluda_concat_forward(ctx, NUM_LEVELS, parts, &cat);
}

static cluda_status daformer_fusion_forward(cluda_ctx *ctx, const cluda_head_config *cfg,
                                            const head_layout *L, const cluda_batchnorm_params *bp,
                                            const head_weights *w, head_stats *st, void *tmp,
                                            void *acts) {
  const int64_t wide = 4 * (int64_t)L->e, cf = L->cf;
  cluda_tensor cat = map_at(L, acts, L->cat, wide);
  cluda_tensor branch[4];
  const cluda_tensor *parts[4];
  for (int j = 0; j < NUM_BRANCHES; j++) {
    branch[j] = map_at(L, tmp, L->f_branch[j], cf);
    parts[j] = &branch[j];
  }
  /* branch 0: 1x1 conv, BN, ReLU */
  {
    cluda_tensor z = map_at(L, acts, L->aspp0.z, cf);
    cluda_tensor mean = vec_at(acts, L->aspp0.mean, cf), rstd = vec_at(acts, L->aspp0.rstd, cf);
    CLUDA_TRY(cluda_linear_forward(ctx, &cat, &w->aspp0.w, NULL, &z));
    CLUDA_TRY(bn_relu_forward(ctx, bp, &w->aspp0, &st->mean[BN_ASPP0], &st->var[BN_ASPP0], &z,
                              &mean, &rstd, &branch[0]));
  }
  /* branches 1..3: depthwise 3x3 dilated, BN, ReLU; pointwise 1x1, BN, ReLU */
  for (int j = 0; j < 3; j++) {
    const int bn_dw = BN_SEP + 2 * j, bn_pw = BN_SEP + 2 * j + 1;
    cluda_conv2d_params cp = depthwise_params(cfg->dilations[j + 1], (int)wide);
    cluda_tensor dz = map_at(L, acts, L->dw[j].z, wide);
    cluda_tensor dmean = vec_at(acts, L->dw[j].mean, wide);
    cluda_tensor drstd = vec_at(acts, L->dw[j].rstd, wide);
    cluda_tensor dout = map_at(L, acts, L->dw_out[j], wide);
    CLUDA_TRY(cluda_conv2d_forward(ctx, &cp, &cat, &w->dw[j].w, NULL, &dz));
    CLUDA_TRY(bn_relu_forward(ctx, bp, &w->dw[j], &st->mean[bn_dw], &st->var[bn_dw], &dz, &dmean,
                              &drstd, &dout));
    cluda_tensor pz = map_at(L, acts, L->pw[j].z, cf);
    cluda_tensor pmean = vec_at(acts, L->pw[j].mean, cf);
    cluda_tensor prstd = vec_at(acts, L->pw[j].rstd, cf);
    CLUDA_TRY(cluda_linear_forward(ctx, &dout, &w->pw[j].w, NULL, &pz));
    CLUDA_TRY(bn_relu_forward(ctx, bp, &w->pw[j], &st->mean[bn_pw], &st->var[bn_pw], &pz, &pmean,
                              &prstd, &branch[j + 1]));
  }
  cluda_tensor aspp = map_at(L, acts, L->aspp, 4 * cf);
  CLUDA_TRY(cluda_concat_forward(ctx, NUM_BRANCHES, parts, &aspp));
  /* bottleneck: 3x3 p1 conv, BN, ReLU = fused */
  cluda_conv2d_params cp = bottleneck_params();
  cluda_tensor z = map_at(L, acts, L->fuse.z, cf), fused = map_at(L, acts, L->fused, cf);
  cluda_tensor mean = vec_at(acts, L->fuse.mean, cf), rstd = vec_at(acts, L->fuse.rstd, cf);
  CLUDA_TRY(cluda_conv2d_forward(ctx, &cp, &aspp, &w->fuse.w, NULL, &z));
  return bn_relu_forward(ctx, bp, &w->fuse, &st->mean[BN_BOTTLENECK], &st->var[BN_BOTTLENECK], &z,
                         &mean, &rstd, &fused);
}

static cluda_status segformer_fusion_forward(cluda_ctx *ctx, const head_layout *L,
                                             const cluda_batchnorm_params *bp,
                                             const head_weights *w, head_stats *st, void *acts) {
  const int64_t cf = L->cf;
  cluda_tensor cat = map_at(L, acts, L->cat, 4 * (int64_t)L->e);
  cluda_tensor z = map_at(L, acts, L->fuse.z, cf), fused = map_at(L, acts, L->fused, cf);
  cluda_tensor mean = vec_at(acts, L->fuse.mean, cf), rstd = vec_at(acts, L->fuse.rstd, cf);
  CLUDA_TRY(cluda_linear_forward(ctx, &cat, &w->fuse.w, NULL, &z));
  return bn_relu_forward(ctx, bp, &w->fuse, &st->mean[0], &st->var[0], &z, &mean, &rstd, &fused);
}

static cluda_status forward_body(cluda_ctx *ctx, const cluda_head *head, const head_layout *L,
                                 const head_weights *w, head_stats *st, const cluda_run_mode *mode,
                                 const cluda_tensor feats[4], void *tmp, void *acts) {
  const cluda_batchnorm_params bp = bn_params(&head->cfg, mode);
  CLUDA_TRY(embed_forward(ctx, L, w, feats, tmp, acts));
  if (L->daformer)
    CLUDA_TRY(daformer_fusion_forward(ctx, &head->cfg, L, &bp, w, st, tmp, acts));
  else
    CLUDA_TRY(segformer_fusion_forward(ctx, L, &bp, w, st, acts));
  /* classifier: Dropout2d (training only), then the 1x1 conv with bias */
  cluda_tensor fused = map_at(L, acts, L->fused, L->cf), logits = map_at(L, acts, L->logits, L->k);
  const cluda_tensor *cls_in = &fused;
  cluda_tensor dropped;
  if (L->dropout && mode->stochastic) {
    const cluda_dropout_params dp = dropout_params(&head->cfg, mode);
    dropped = map_at(L, acts, L->dropped, L->cf);
    cluda_tensor mask = cluda_tensor_2d(CLUDA_U8, (char *)acts + L->mask, L->b, L->cf);
    CLUDA_TRY(cluda_dropout_forward(ctx, &dp, &fused, &dropped, &mask));
    cls_in = &dropped;
  }
  return cluda_linear_forward(ctx, cls_in, &w->cls_w, &w->cls_b, &logits);
}

cluda_status cluda_head_forward(cluda_ctx *ctx, const cluda_head *head, const cluda_head_plan *plan,
                                const cluda_param_table *params, const float *param_data,
                                const cluda_param_table *state, float *state_data,
                                const cluda_run_mode *mode, const cluda_tensor feats[4], void *acts,
                                cluda_tensor *fused, cluda_tensor *logits) {
  const char *op = "head_forward";
  head_layout L;
  CLUDA_TRY(check_common(op, ctx, head, plan, params, param_data, state, state_data, mode, feats,
                         acts, &L));
  CLUDA_REQUIRE(fused != NULL && logits != NULL, CLUDA_ERR_ARG, "%s: fused or logits is NULL", op);
  const head_weights w = bind_weights(head, params, param_data);
  head_stats st = bind_stats(head, state, state_data);

  const size_t mark = cluda_arena_mark(ctx->scratch);
  void *tmp = NULL;
  cluda_status s = cluda_arena_alloc(ctx->scratch, L.fwd_own, op, &tmp);
  if (s.code == CLUDA_OK) s = forward_body(ctx, head, &L, &w, &st, mode, feats, tmp, acts);
  cluda_arena_release(ctx->scratch, mark); /* on failure too */
  CLUDA_TRY(s);
  *fused = map_at(&L, acts, L.fused, L.cf);
  *logits = map_at(&L, acts, L.logits, L.k);
  return cluda_ok();
}

/* ---- backward ---- */

/* BN backward of a conv_bn unit: dz from dy (the gradient after the ReLU was applied). */
static cluda_status bn_backward(cluda_ctx *ctx, const cluda_batchnorm_params *bp,
                                const head_layout *L, const void *acts, const bn_saved *sv,
                                int64_t c, const conv_bn *u, conv_bn *g, const cluda_tensor *dy,
                                cluda_tensor *dz) {
  cluda_tensor z = map_at(L, acts, sv->z, c);
  cluda_tensor mean = vec_at(acts, sv->mean, c), rstd = vec_at(acts, sv->rstd, c);
  return cluda_batchnorm_backward(ctx, bp, &z, &u->gamma, &mean, &rstd, dy, dz, &g->gamma,
                                  &g->beta);
}

/* From the gradient at `fused` (d_fused, already through the fused ReLU) back to d_cat. */
static cluda_status daformer_fusion_backward(cluda_ctx *ctx, const cluda_head_config *cfg,
                                             const head_layout *L, const cluda_batchnorm_params *bp,
                                             const head_weights *w, head_weights *g,
                                             const void *acts, void *tmp) {
  const int64_t wide = 4 * (int64_t)L->e, cf = L->cf;
  cluda_tensor cat = map_at(L, acts, L->cat, wide), aspp = map_at(L, acts, L->aspp, 4 * cf);
  cluda_tensor d_fused = map_at(L, tmp, L->d_fused, cf), d_tmp = map_at(L, tmp, L->d_tmp, cf);
  cluda_tensor d_aspp = map_at(L, tmp, L->d_aspp, 4 * cf), d_cat = map_at(L, tmp, L->d_cat, wide);
  cluda_tensor d_wide1 = map_at(L, tmp, L->d_wide1, wide);
  cluda_tensor d_wide2 = map_at(L, tmp, L->d_wide2, wide);
  cluda_tensor d_branch[4];
  cluda_tensor *d_parts[4];
  for (int j = 0; j < NUM_BRANCHES; j++) {
    d_branch[j] = map_at(L, tmp, L->d_branch[j], cf);
    d_parts[j] = &d_branch[j];
  }
  /* bottleneck */
  cluda_conv2d_params cp = bottleneck_params();
  CLUDA_TRY(bn_backward(ctx, bp, L, acts, &L->fuse, cf, &w->fuse, &g->fuse, &d_fused, &d_tmp));
  CLUDA_TRY(cluda_conv2d_backward(ctx, &cp, &aspp, &w->fuse.w, &d_tmp, &d_aspp, &g->fuse.w, NULL));
  /* the branch ReLUs, on the concatenation of their outputs */
  CLUDA_TRY(cluda_relu_backward(ctx, &aspp, &d_aspp, &d_aspp));
  CLUDA_TRY(cluda_concat_backward(ctx, NUM_BRANCHES, &d_aspp, d_parts));
  /* branch 0 writes d_cat; the others add to it */
  CLUDA_TRY(
      bn_backward(ctx, bp, L, acts, &L->aspp0, cf, &w->aspp0, &g->aspp0, &d_branch[0], &d_tmp));
  CLUDA_TRY(cluda_linear_backward(ctx, &cat, &w->aspp0.w, &d_tmp, &d_cat, &g->aspp0.w, NULL));
  for (int j = 0; j < 3; j++) {
    cluda_tensor dout = map_at(L, acts, L->dw_out[j], wide);
    CLUDA_TRY(bn_backward(ctx, bp, L, acts, &L->pw[j], cf, &w->pw[j], &g->pw[j], &d_branch[j + 1],
                          &d_tmp));
    CLUDA_TRY(cluda_linear_backward(ctx, &dout, &w->pw[j].w, &d_tmp, &d_wide1, &g->pw[j].w, NULL));
    CLUDA_TRY(cluda_relu_backward(ctx, &dout, &d_wide1, &d_wide1));
    CLUDA_TRY(
        bn_backward(ctx, bp, L, acts, &L->dw[j], wide, &w->dw[j], &g->dw[j], &d_wide1, &d_wide2));
    cluda_conv2d_params dp = depthwise_params(cfg->dilations[j + 1], (int)wide);
    CLUDA_TRY(
        cluda_conv2d_backward(ctx, &dp, &cat, &w->dw[j].w, &d_wide2, &d_wide1, &g->dw[j].w, NULL));
    CLUDA_TRY(cluda_axpy(ctx, 1.0f, &d_wide1, &d_cat));
  }
  return cluda_ok();
}

static cluda_status segformer_fusion_backward(cluda_ctx *ctx, const head_layout *L,
                                              const cluda_batchnorm_params *bp,
                                              const head_weights *w, head_weights *g,
                                              const void *acts, void *tmp) {
  const int64_t cf = L->cf;
  cluda_tensor cat = map_at(L, acts, L->cat, 4 * (int64_t)L->e);
  cluda_tensor d_fused = map_at(L, tmp, L->d_fused, cf), d_tmp = map_at(L, tmp, L->d_tmp, cf);
  cluda_tensor d_cat = map_at(L, tmp, L->d_cat, 4 * (int64_t)L->e);
  CLUDA_TRY(bn_backward(ctx, bp, L, acts, &L->fuse, cf, &w->fuse, &g->fuse, &d_fused, &d_tmp));
  return cluda_linear_backward(ctx, &cat, &w->fuse.w, &d_tmp, &d_cat, &g->fuse.w, NULL);
}

/* From d_cat to the embedding weights and the input features. */
static cluda_status embed_backward(cluda_ctx *ctx, const head_layout *L, const head_weights *w,
                                   head_weights *g, const cluda_tensor feats[4],
                                   cluda_tensor *const dfeats[4], void *tmp) {
  cluda_tensor d_cat = map_at(L, tmp, L->d_cat, 4 * (int64_t)L->e);
  cluda_tensor d_resized[4];
  cluda_tensor *d_parts[4];
  for (int i = 0; i < NUM_LEVELS; i++) {
    d_resized[i] = map_at(L, tmp, L->d_resized[i], L->e);
    d_parts[i] = &d_resized[i];
  }
  CLUDA_TRY(cluda_concat_backward(ctx, NUM_LEVELS, &d_cat, d_parts));
  for (int i = 0; i < NUM_LEVELS; i++) {
    cluda_tensor d_embed = level_at(L, i, tmp, L->d_embed[i]);
    if (i > 0) CLUDA_TRY(cluda_resize_bilinear_backward(ctx, 0, &d_resized[i], &d_embed));
    CLUDA_TRY(cluda_linear_backward(ctx, &feats[i], &w->embed_w[i], &d_embed, dfeats[i],
                                    &g->embed_w[i], &g->embed_b[i]));
  }
  return cluda_ok();
}

static cluda_status backward_body(cluda_ctx *ctx, const cluda_head *head, const head_layout *L,
                                  const head_weights *w, head_weights *g,
                                  const cluda_run_mode *mode, const cluda_tensor feats[4],
                                  const void *acts, const cluda_tensor *dlogits,
                                  const cluda_tensor *dfused, cluda_tensor *const dfeats[4],
                                  void *tmp) {
  const cluda_batchnorm_params bp = bn_params(&head->cfg, mode);
  const int64_t cf = L->cf;
  cluda_tensor fused = map_at(L, acts, L->fused, cf);
  cluda_tensor d_fused = map_at(L, tmp, L->d_fused, cf);
  /* the gradient at fused: classifier (and Dropout2d) path plus dfused, then the ReLU */
  if (dlogits) {
    const int dropout = L->dropout && mode->stochastic;
    cluda_tensor dropped = map_at(L, acts, L->dropped, cf);
    cluda_tensor d_tmp = map_at(L, tmp, L->d_tmp, cf);
    CLUDA_TRY(cluda_linear_backward(ctx, dropout ? &dropped : &fused, &w->cls_w, dlogits,
                                    dropout ? &d_tmp : &d_fused, &g->cls_w, &g->cls_b));
    if (dropout) {
      const cluda_dropout_params dp = dropout_params(&head->cfg, mode);
      cluda_tensor mask = cluda_tensor_2d(CLUDA_U8, (char *)acts + L->mask, L->b, L->cf);
      CLUDA_TRY(cluda_dropout_backward(ctx, &dp, &mask, &d_tmp, &d_fused));
    }
    if (dfused) CLUDA_TRY(cluda_axpy(ctx, 1.0f, dfused, &d_fused));
    CLUDA_TRY(cluda_relu_backward(ctx, &fused, &d_fused, &d_fused));
  } else {
    CLUDA_TRY(cluda_relu_backward(ctx, &fused, dfused, &d_fused));
  }
  if (L->daformer)
    CLUDA_TRY(daformer_fusion_backward(ctx, &head->cfg, L, &bp, w, g, acts, tmp));
  else
    CLUDA_TRY(segformer_fusion_backward(ctx, L, &bp, w, g, acts, tmp));
  return embed_backward(ctx, L, w, g, feats, dfeats, tmp);
}

cluda_status cluda_head_backward(cluda_ctx *ctx, const cluda_head *head,
                                 const cluda_head_plan *plan, const cluda_param_table *params,
                                 const float *param_data, float *grads,
                                 const cluda_param_table *state, const float *state_data,
                                 const cluda_run_mode *mode, const cluda_tensor feats[4],
                                 const void *acts, const cluda_tensor *dlogits,
                                 const cluda_tensor *dfused, cluda_tensor *const dfeats[4]) {
  const char *op = "head_backward";
  head_layout L;
  CLUDA_TRY(check_common(op, ctx, head, plan, params, param_data, state, state_data, mode, feats,
                         acts, &L));
  CLUDA_REQUIRE(grads != NULL, CLUDA_ERR_ARG, "%s: grads is NULL", op);
  CLUDA_REQUIRE(dlogits != NULL || dfused != NULL, CLUDA_ERR_ARG,
                "%s: dlogits and dfused are both NULL (nothing to back-propagate)", op);
  if (dlogits) CLUDA_TRY(check_output_map(op, "dlogits", dlogits, &L, L.k));
  if (dfused) CLUDA_TRY(check_output_map(op, "dfused", dfused, &L, L.cf));
  if (dfeats)
    for (int i = 0; i < NUM_LEVELS; i++) {
      if (!dfeats[i]) continue;
      char name[16], d[64], df[64];
      snprintf(name, sizeof name, "dfeats[%d]", i);
      CLUDA_TRY(cluda_check_tensor(op, name, dfeats[i], CLUDA_F32, 4));
      CLUDA_REQUIRE(cluda_tensor_same_shape(dfeats[i], &feats[i]), CLUDA_ERR_SHAPE,
                    "%s: %s %s must have the shape of feats[%d] %s", op, name, DESC(dfeats[i], d),
                    i, DESC(&feats[i], df));
    }
  cluda_tensor *const none[4] = {NULL, NULL, NULL, NULL};
  const head_weights w = bind_weights(head, params, param_data);
  head_weights g = bind_weights(head, params, grads);

  const size_t mark = cluda_arena_mark(ctx->scratch);
  void *tmp = NULL;
  cluda_status s = cluda_arena_alloc(ctx->scratch, L.bwd_own, op, &tmp);
  if (s.code == CLUDA_OK)
    s = backward_body(ctx, head, &L, &w, &g, mode, feats, acts, dlogits, dfused,
                      dfeats ? dfeats : none, tmp);
  cluda_arena_release(ctx->scratch, mark); /* on failure too */
  return s;
}

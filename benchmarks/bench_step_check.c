/* bench_step_check: one CLUDA training step of the tiny network on a fixed batch, written to
 * HDF5 so that benchmarks/pytorch_reference.py --check FILE can recompute every loss term in
 * PyTorch and report the differences (a by-hand agreement check; CI has no PyTorch).
 *
 * What runs: cluda_trainer_step, iteration 0, on the real trainer (src/train/trainer.c), with
 * everything random taken out or fixed so that the step is a pure function of the inputs:
 *   - weights: every parameter and BN statistic from the procedural generator "cluda-hash-v1"
 *     of tools/make_model_fixtures.py (seed GEN_SEED; scale and offset per array by the
 *     script's gen_kind rules, mirrored in gen_kind below). The teacher is the student (EMA
 *     copy at iteration 0); the frozen ImageNet encoder of FD gets the generator's values of
 *     seed IMNET_SEED, so that FD is not 0;
 *   - batch: 2 source + 2 target images of 64x64, procedural ("x_src", "x_tgt", U[-2, 2)),
 *     hand-made source labels (stuff, thing and ignored regions, FD cells above and below the
 *     0.75 ratio), fed through cluda_sample_source;
 *   - model.dropout = 0 and model.drop_path_rate = 0 (no masks), uda.jitter_p = uda.blur_p = 1
 *     (the coins are U[0, 1), so no colour jitter and no blur);
 *   - ClassMix: the masks are a function of the source labels and the seed; this program draws
 *     them with the key the trainer uses and stores them, so the check applies the same ones;
 *   - pseudo-labels: the teacher's max-probabilities are computed here first and
 *     uda.pseudo_threshold is set in the widest gap between them near the median, so that
 *     Gamma is near 0.5 and no pixel sits within rounding of the threshold.
 * The rest is the paper's defaults (decisions.md): CE mean over all pixels, FD lambda 0.005
 * with ratio 0.75 on the thing classes, CL with tau 1 and SEPARATE stuff/thing pairs on the
 * fused features resized to 13x13, mixed CL with target anchors x Gamma, margins 4 top and 8
 * bottom rows.
 *
 * Written (all NHWC, cluda layouts and names): the input batch (src_img, tgt_img, src_lbl,
 * mix_mask), the teacher's pseudo-labels and max-probabilities, the five loss terms, Gamma,
 * the FD cell count and the gradient norm of the step (root attributes), the generator table
 * (gen_names, gen_scale_offset) and every parameter's accumulated gradient (grad/<name>).
 *
 *   build/bin/bench_step_check --out /tmp/step_check.h5 [--threads N]
 *
 * Exit status 0, 1 on an error, 2 on a bad option. */
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "cluda/backend.h"
#include "cluda/config.h"
#include "cluda/trainer.h"

enum { BATCH = 2, CROP = 64, CL_SIZE = 13, GEN_SEED = 1, IMNET_SEED = 2 };

/* The generator's scale of the input images: U[-2, 2), as the model fixtures' x. */
#define X_SCALE 2.0

/* ---------------------------------------------------------------------------------------
 * Procedural values: generator "cluda-hash-v1" (tools/make_model_fixtures.py, gen_values;
 * tests/unit/test_model_parity.c, gen_fill). Element i (row-major, cluda layout) of array
 * `name` with seed s is (float)(offset + scale * m * 2^-23), m = (h >> 40) - 2^23,
 * h = splitmix64(fnv1a64(name) ^ splitmix64(s ^ i)); scale and offset are powers of two or 0,
 * so the double expression is exact and rounds to float like numpy's astype(float32).
 * --------------------------------------------------------------------------------------- */

static uint64_t fnv1a64(const char *s) {
  uint64_t h = 0xCBF29CE484222325ull;
  for (; *s; s++) {
    h ^= (uint64_t)(unsigned char)*s;
    h *= 0x100000001B3ull;
  }
  return h;
}

static uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

static void gen_fill(const char *name, uint64_t seed, double scale, double offset, float *dst,
                     int64_t n) {
  uint64_t hn = fnv1a64(name);
  for (int64_t i = 0; i < n; i++) {
    uint64_t h = splitmix64(hn ^ splitmix64(seed ^ (uint64_t)i));
    int64_t m = (int64_t)(h >> 40) - ((int64_t)1 << 23);
    dst[i] = (float)(offset + scale * ((double)m * 0x1p-23));
  }
}

/* The reference values the script and test_model_parity.c assert: a wrong port fails here
 * rather than as a loss difference. */
static cluda_status check_generator(void) {
  float v[2];
  gen_fill("x", 7, 1.0, 0.0, v, 1);
  CLUDA_REQUIRE(fnv1a64("x") == 0xAF63F54C86021707ull && splitmix64(0) == 0xE220A8397B1DCDAFull &&
                    v[0] == (float)(-5507529 * 0x1p-23),
                CLUDA_ERR_ARG, "generator cluda-hash-v1: reference values differ");
  return cluda_ok();
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Whether `stem` (a name without ".weight" / ".bias") is a LayerNorm or BN: the script's
 * regex (norm\d?|\.bn)$ (norm1, norm2, attn.norm, stage norms normN, BN modules "bn"). */
static int is_norm_stem(const char *stem, size_t len) {
  if (len >= 1 && stem[len - 1] >= '0' && stem[len - 1] <= '9') len--;
  return (len >= 4 && strncmp(stem + len - 4, "norm", 4) == 0) ||
         (len >= 3 && strncmp(stem + len - 3, ".bn", 3) == 0);
}

/* Whether `stem` ends with "patch_embed<digit><tail>", tail ".proj" or ".norm". */
static int is_patch_embed(const char *stem, size_t len, const char *tail) {
  return len >= 17 && strncmp(stem + len - 17, "patch_embed", 11) == 0 && stem[len - 6] >= '0' &&
         stem[len - 6] <= '9' && strncmp(stem + len - 5, tail, 5) == 0;
}

/* Whether `stem` is one of the script's small-weight modules
 * (patch_embed\d\.proj|attn\.sr|attn\.proj|mlp\.fc2)$. */
static int is_small_stem(const char *stem, size_t len) {
  static const char *const tails[] = {"attn.sr", "attn.proj", "mlp.fc2"};
  for (size_t k = 0; k < sizeof tails / sizeof tails[0]; k++) {
    size_t n = strlen(tails[k]);
    if (len >= n && strncmp(stem + len - n, tails[k], n) == 0) return 1;
  }
  return is_patch_embed(stem, len, ".proj");
}

/* tools/make_model_fixtures.py gen_kind: (scale, offset) of a parameter or BN statistic, with
 * e the smallest integer such that 4^e >= fan_in = prod(shape[1:]). */
static cluda_status gen_kind(const cluda_param_info *p, double *scale, double *offset) {
  int64_t fan = 1;
  for (int d = 1; d < p->ndim; d++)
    fan *= p->shape[d];
  int e = 0;
  while (((int64_t)1 << (2 * e)) < fan)
    e++;
  const char *n = p->name;
  *offset = 0.0;
  if (ends_with(n, ".running_mean")) {
    *scale = 0x1p-2;
    return cluda_ok();
  }
  if (ends_with(n, ".running_var")) {
    *scale = 0x1p-1;
    *offset = 1.0;
    return cluda_ok();
  }
  const int weight = ends_with(n, ".weight"), bias = ends_with(n, ".bias");
  CLUDA_REQUIRE(weight || bias, CLUDA_ERR_ARG, "gen_kind: no generator rule for %s", n);
  const size_t len = strlen(n) - (weight ? 7 : 5); /* the stem without .weight / .bias */
  if (is_patch_embed(n, len, ".norm")) {
    *scale = 0x1p-6;
    *offset = weight ? 0x1p-4 : 0.0;
  } else if (is_norm_stem(n, len)) {
    *scale = 0x1p-3;
    *offset = weight ? 1.0 : 0.0;
  } else if (is_small_stem(n, len)) {
    *scale = weight ? ldexp(1.0, -3 - e) : 0x1p-6;
  } else {
    *scale = weight ? ldexp(1.0, 1 - e) : 0x1p-3;
  }
  return cluda_ok();
}

/* The generator table written to the file: names in table order, [n, 2] scale / offset. */
typedef struct gen_table {
  char *names; /* comma-separated */
  size_t names_len, names_cap;
  double *so;
  int count;
} gen_table;

static cluda_status gen_table_add(gen_table *g, const char *name, double scale, double offset) {
  size_t need = g->names_len + strlen(name) + 2;
  if (need > g->names_cap) {
    size_t cap = need * 2;
    char *p = realloc(g->names, cap);
    CLUDA_REQUIRE(p != NULL, CLUDA_ERR_ALLOC, "out of memory for the generator table");
    g->names = p;
    g->names_cap = cap;
  }
  double *so = realloc(g->so, sizeof(double) * 2 * (size_t)(g->count + 1));
  CLUDA_REQUIRE(so != NULL, CLUDA_ERR_ALLOC, "out of memory for the generator table");
  g->so = so;
  g->names_len += (size_t)sprintf(g->names + g->names_len, "%s%s", g->count ? "," : "", name);
  g->so[2 * g->count] = scale;
  g->so[2 * g->count + 1] = offset;
  g->count++;
  return cluda_ok();
}

/* Fills every entry of `table` in `data` from the generator with `seed`; records the table
 * entries when g is not NULL. */
static cluda_status gen_params(const cluda_param_table *table, float *data, uint64_t seed,
                               gen_table *g) {
  for (int i = 0; i < table->count; i++) {
    double scale = 0.0, offset = 0.0;
    CLUDA_TRY(gen_kind(&table->items[i], &scale, &offset));
    cluda_tensor v = cluda_param_view(table, i, data);
    gen_fill(table->items[i].name, seed, scale, offset, cluda_f32(&v), cluda_tensor_numel(&v));
    if (g) CLUDA_TRY(gen_table_add(g, table->items[i].name, scale, offset));
  }
  return cluda_ok();
}

/* ---------------------------------------------------------------------------------------
 * The fixed batch
 * --------------------------------------------------------------------------------------- */

static void fill_rect(uint8_t *lbl, int y0, int y1, int x0, int x1, uint8_t c) {
  for (int y = y0; y < y1; y++)
    for (int x = x0; x < x1; x++)
      lbl[y * CROP + x] = c;
}

/* Source labels (Cityscapes train ids) laid out so that every loss path has work: stuff and
 * thing classes, ignored pixels, and 32x32 FD cells with a thing class at 100 %, 81 % and
 * 87.5 % (counted) and at 69 % and 56 % (below the 0.75 ratio, not counted). */
static void make_source_labels(uint8_t *lbl) {
  uint8_t *a = lbl, *b = lbl + CROP * CROP;
  fill_rect(a, 0, 32, 0, 32, 13);    /* car: a whole FD cell                 */
  fill_rect(a, 0, 32, 32, 64, 10);   /* sky                                  */
  fill_rect(a, 10, 14, 32, 64, 255); /* an ignored stripe                   */
  fill_rect(a, 32, 64, 0, 26, 11);   /* person on 26 / 32 of the cell: 81 % */
  fill_rect(a, 32, 64, 26, 32, 0);   /* road                                 */
  fill_rect(a, 32, 64, 32, 54, 13);  /* car on 22 / 32: 69 %, not counted    */
  fill_rect(a, 32, 64, 54, 64, 8);   /* vegetation                           */
  fill_rect(b, 0, 16, 0, 64, 2);     /* building                             */
  fill_rect(b, 16, 32, 0, 64, 8);    /* vegetation                           */
  fill_rect(b, 20, 28, 40, 48, 7);   /* traffic sign                         */
  fill_rect(b, 32, 64, 0, 32, 0);    /* road                                 */
  fill_rect(b, 36, 60, 4, 28, 18);   /* bicycle on 56 % of its cell          */
  fill_rect(b, 32, 64, 32, 64, 12);  /* rider                                */
  fill_rect(b, 60, 64, 0, 64, 255);  /* ignored bottom rows: rider cell 87.5 % */
}

typedef struct fixed_batch {
  float *src_img, *tgt_img;
  uint8_t *src_lbl;
} fixed_batch;

/* cluda_sample_source callbacks: the same batch at every iteration. */
static cluda_status get_source(void *ctx, int64_t iteration, float *images, uint8_t *labels) {
  (void)iteration;
  const fixed_batch *fb = ctx;
  memcpy(images, fb->src_img, sizeof(float) * BATCH * CROP * CROP * 3);
  memcpy(labels, fb->src_lbl, (size_t)BATCH * CROP * CROP);
  return cluda_ok();
}

static cluda_status get_target(void *ctx, int64_t iteration, float *images, uint8_t *labels) {
  (void)iteration;
  const fixed_batch *fb = ctx;
  memcpy(images, fb->tgt_img, sizeof(float) * BATCH * CROP * CROP * 3);
  memset(labels, 255, (size_t)BATCH * CROP * CROP); /* overwritten by the pseudo-labels */
  return cluda_ok();
}

/* ---------------------------------------------------------------------------------------
 * Teacher pass before the step: pseudo-labels, max-probabilities, the threshold
 * --------------------------------------------------------------------------------------- */

static int cmp_float(const void *a, const void *b) {
  float x = *(const float *)a, y = *(const float *)b;
  return (x > y) - (x < y);
}

/* The teacher forward of the trainer's pseudo_labels stage (same parameters, BN mode and
 * upsampling) on a copy of the teacher's BN state, so the step itself starts unchanged.
 * Fills labels and probabilities [B, H, W] and picks the threshold: the midpoint of the
 * widest gap between sorted max-probabilities in their middle fifth. */
static cluda_status teacher_pass(cluda_trainer *t, const float *tgt_img, uint8_t *pl, float *prob,
                                 float *threshold, float *gap) {
  const cluda_segmentor_plan *plan = &t->plan;
  const int K = t->model.cfg.head.num_classes;
  const size_t px = (size_t)BATCH * CROP * CROP;
  const size_t ns = t->model.state.total;
  float *state = malloc(ns * sizeof(float));
  void *acts = malloc(plan->activation_bytes);
  float *up = malloc(px * (size_t)K * sizeof(float));
  float *sorted = malloc(px * sizeof(float));
  cluda_arena arena;
  int arena_ok = 0;
  cluda_status st = cluda_ok();
  if (!state || !acts || !up || !sorted)
    st = CLUDA_FAIL(CLUDA_ERR_ALLOC, "teacher_pass: out of memory");
  if (st.code == CLUDA_OK) st = cluda_arena_create(&arena, plan->scratch_bytes + (1u << 20));
  arena_ok = st.code == CLUDA_OK;
  if (st.code == CLUDA_OK) {
    memcpy(state, t->teacher_state, ns * sizeof(float));
    cluda_ctx ctx = cluda_cpu_context(&arena);
    cluda_run_mode mode = {0, t->s.teacher_bn_batch,
                           cluda_rng_make_key(t->s.seed, 0, 0, CLUDA_RNG_DROPOUT, 0), 0};
    cluda_tensor x = cluda_tensor_4d(CLUDA_F32, (void *)tgt_img, BATCH, CROP, CROP, 3);
    cluda_segmentor_outputs out;
    st = cluda_segmentor_forward(&ctx, &t->model, plan, t->teacher, state, &mode, &x, acts, &out);
    cluda_tensor upt = cluda_tensor_4d(CLUDA_F32, up, BATCH, CROP, CROP, K);
    cluda_tensor lbl = cluda_tensor_3d(CLUDA_U8, pl, BATCH, CROP, CROP);
    cluda_tensor pr = cluda_tensor_3d(CLUDA_F32, prob, BATCH, CROP, CROP);
    int64_t confident = 0, total = 0;
    if (st.code == CLUDA_OK) st = cluda_resize_bilinear_forward(&ctx, 0, &out.logits, &upt);
    if (st.code == CLUDA_OK)
      st = cluda_dacs_pseudo_label(&upt, 0.0f, &lbl, &pr, &confident, &total);
  }
  if (st.code == CLUDA_OK) {
    memcpy(sorted, prob, px * sizeof(float));
    qsort(sorted, px, sizeof(float), cmp_float);
    size_t lo = px * 2 / 5, hi = px * 3 / 5, best = lo;
    for (size_t i = lo; i < hi; i++)
      if (sorted[i + 1] - sorted[i] > sorted[best + 1] - sorted[best]) best = i;
    *threshold = 0.5f * (sorted[best] + sorted[best + 1]);
    *gap = sorted[best + 1] - sorted[best];
  }
  if (arena_ok) cluda_arena_destroy(&arena);
  free(state);
  free(acts);
  free(up);
  free(sorted);
  return st;
}

/* ---------------------------------------------------------------------------------------
 * HDF5 output
 * --------------------------------------------------------------------------------------- */

static cluda_status h5_dataset(hid_t loc, const char *name, hid_t type, const void *data, int ndim,
                               const int *shape) {
  hsize_t dims[CLUDA_MAX_DIMS];
  for (int d = 0; d < ndim; d++)
    dims[d] = (hsize_t)shape[d];
  hid_t space = H5Screate_simple(ndim, dims, NULL);
  hid_t ds =
      space >= 0 ? H5Dcreate2(loc, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
  herr_t w = ds >= 0 ? H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) : -1;
  if (ds >= 0) H5Dclose(ds);
  if (space >= 0) H5Sclose(space);
  CLUDA_REQUIRE(w >= 0, CLUDA_ERR_IO, "cannot write dataset %s", name);
  return cluda_ok();
}

static cluda_status h5_attr(hid_t obj, const char *name, hid_t type, const void *values, int n) {
  hsize_t dims[1] = {(hsize_t)n};
  hid_t space = n == 1 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, dims, NULL);
  hid_t a = space >= 0 ? H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT) : -1;
  herr_t w = a >= 0 ? H5Awrite(a, type, values) : -1;
  if (a >= 0) H5Aclose(a);
  if (space >= 0) H5Sclose(space);
  CLUDA_REQUIRE(w >= 0, CLUDA_ERR_IO, "cannot write attribute %s", name);
  return cluda_ok();
}

static cluda_status h5_attr_f64(hid_t obj, const char *name, double v) {
  return h5_attr(obj, name, H5T_NATIVE_DOUBLE, &v, 1);
}

static cluda_status h5_attr_int(hid_t obj, const char *name, int v) {
  return h5_attr(obj, name, H5T_NATIVE_INT, &v, 1);
}

static cluda_status h5_attr_str(hid_t obj, const char *name, const char *v) {
  hid_t type = H5Tcopy(H5T_C_S1);
  CLUDA_REQUIRE(type >= 0, CLUDA_ERR_IO, "cannot make a string type for %s", name);
  H5Tset_size(type, strlen(v) + 1);
  cluda_status st = h5_attr(obj, name, type, v, 1);
  H5Tclose(type);
  return st;
}

typedef struct step_record {
  const fixed_batch *batch;
  const uint8_t *mix_mask, *pl;
  const float *prob;
  float threshold, gap;
  const cluda_step_stats *stats;
  const gen_table *gen;
} step_record;

static cluda_status write_attrs(hid_t f, const cluda_trainer *t, const step_record *r) {
  const cluda_segmentor_config *mc = &t->model.cfg;
  const cluda_train_settings *s = &t->s;
  CLUDA_TRY(h5_attr_str(f, "format", "cluda-step-check"));
  CLUDA_TRY(h5_attr_int(f, "format_version", 1));
  CLUDA_TRY(h5_attr_str(f, "generator", "benchmarks/bench_step_check.c"));
  CLUDA_TRY(h5_attr_str(f, "gen", "cluda-hash-v1"));
  CLUDA_TRY(h5_attr_int(f, "gen_seed", GEN_SEED));
  CLUDA_TRY(h5_attr_int(f, "imnet_seed", IMNET_SEED));
  CLUDA_TRY(h5_attr_str(f, "gen_names", r->gen->names));
  const int so_shape[2] = {r->gen->count, 2};
  CLUDA_TRY(h5_dataset(f, "gen_scale_offset", H5T_NATIVE_DOUBLE, r->gen->so, 2, so_shape));
  /* the network */
  CLUDA_TRY(h5_attr_str(f, "encoder", mc->encoder_name));
  CLUDA_TRY(h5_attr(f, "embed_dims", H5T_NATIVE_INT, mc->encoder.embed_dims, 4));
  CLUDA_TRY(h5_attr(f, "depths", H5T_NATIVE_INT, mc->encoder.depths, 4));
  CLUDA_TRY(h5_attr(f, "heads", H5T_NATIVE_INT, mc->encoder.heads, 4));
  CLUDA_TRY(h5_attr(f, "sr_ratios", H5T_NATIVE_INT, mc->encoder.sr_ratios, 4));
  CLUDA_TRY(h5_attr_f64(f, "patch_norm_eps", mc->encoder.patch_norm_eps));
  CLUDA_TRY(h5_attr_f64(f, "block_norm_eps", mc->encoder.block_norm_eps));
  CLUDA_TRY(h5_attr_int(f, "head_embed_dims", mc->head.embed_dims));
  CLUDA_TRY(h5_attr_int(f, "head_channels", mc->head.channels));
  CLUDA_TRY(h5_attr_int(f, "num_classes", mc->head.num_classes));
  CLUDA_TRY(h5_attr(f, "dilations", H5T_NATIVE_INT, mc->head.dilations, 4));
  CLUDA_TRY(h5_attr_f64(f, "bn_eps", mc->head.bn_eps));
  /* the step's settings */
  CLUDA_TRY(h5_attr_int(f, "batch", s->batch));
  CLUDA_TRY(h5_attr_int(f, "crop", s->crop_h));
  const int cl_size[2] = {s->cl_h, s->cl_w};
  CLUDA_TRY(h5_attr(f, "cl_size", H5T_NATIVE_INT, cl_size, 2));
  CLUDA_TRY(h5_attr_f64(f, "cl_tau", s->cl.tau));
  CLUDA_TRY(h5_attr_f64(f, "cl_loss_weight", s->cl.loss_weight));
  CLUDA_TRY(h5_attr_str(f, "cl_pairs",
                        s->cl.pairs == CLUDA_CL_PAIRS_SEPARATE ? "separate"
                        : s->cl.pairs == CLUDA_CL_PAIRS_ALL    ? "all"
                                                               : "stuff_only"));
  int things[256], nthings = 0;
  for (int c = 0; c < 256; c++)
    if (s->cl.thing[c]) things[nthings++] = c;
  CLUDA_TRY(h5_attr(f, "cl_thing_classes", H5T_NATIVE_INT, things, nthings));
  CLUDA_TRY(h5_attr_f64(f, "fd_lambda", s->fd_lambda));
  CLUDA_TRY(h5_attr_f64(f, "fd_min_ratio", s->fd_min_ratio));
  CLUDA_TRY(h5_attr(f, "fd_classes", H5T_NATIVE_INT, s->fd_classes, s->fd_class_count));
  CLUDA_TRY(h5_attr_f64(f, "pseudo_threshold", s->pseudo_threshold));
  CLUDA_TRY(h5_attr_f64(f, "pseudo_threshold_gap", r->gap));
  CLUDA_TRY(h5_attr_int(f, "ignore_top", s->ignore_top));
  CLUDA_TRY(h5_attr_int(f, "ignore_bottom", s->ignore_bottom));
  CLUDA_TRY(h5_attr_int(f, "teacher_bn_batch", s->teacher_bn_batch));
  /* what the step computed */
  const cluda_step_stats *st = r->stats;
  CLUDA_TRY(h5_attr_f64(f, "loss_src", st->loss_src));
  CLUDA_TRY(h5_attr_f64(f, "loss_fd", st->loss_fd));
  CLUDA_TRY(h5_attr_f64(f, "loss_cl_src", st->loss_cl_src));
  CLUDA_TRY(h5_attr_f64(f, "loss_mix", st->loss_mix));
  CLUDA_TRY(h5_attr_f64(f, "loss_cl_mix", st->loss_cl_mix));
  CLUDA_TRY(h5_attr_f64(f, "gamma", st->gamma));
  CLUDA_TRY(h5_attr_int(f, "fd_cells", (int)st->fd_cells));
  CLUDA_TRY(h5_attr_f64(f, "grad_norm", st->grad_norm));
  return cluda_ok();
}

static cluda_status write_file(const char *path, const cluda_trainer *t, const step_record *r) {
  hid_t f = -1;
  /* HDF5's own error stack would repeat the message below at length */
  H5E_BEGIN_TRY { f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT); }
  H5E_END_TRY;
  CLUDA_REQUIRE(f >= 0, CLUDA_ERR_IO, "cannot create %s", path);
  const int img[4] = {BATCH, CROP, CROP, 3}, lbl[3] = {BATCH, CROP, CROP};
  cluda_status st = write_attrs(f, t, r);
  if (st.code == CLUDA_OK)
    st = h5_dataset(f, "src_img", H5T_NATIVE_FLOAT, r->batch->src_img, 4, img);
  if (st.code == CLUDA_OK)
    st = h5_dataset(f, "tgt_img", H5T_NATIVE_FLOAT, r->batch->tgt_img, 4, img);
  if (st.code == CLUDA_OK)
    st = h5_dataset(f, "src_lbl", H5T_NATIVE_UINT8, r->batch->src_lbl, 3, lbl);
  if (st.code == CLUDA_OK) st = h5_dataset(f, "mix_mask", H5T_NATIVE_UINT8, r->mix_mask, 3, lbl);
  if (st.code == CLUDA_OK) st = h5_dataset(f, "teacher_pl", H5T_NATIVE_UINT8, r->pl, 3, lbl);
  if (st.code == CLUDA_OK) st = h5_dataset(f, "teacher_prob", H5T_NATIVE_FLOAT, r->prob, 3, lbl);
  hid_t g = st.code == CLUDA_OK ? H5Gcreate2(f, "grad", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT) : -1;
  if (st.code == CLUDA_OK && g < 0) st = CLUDA_FAIL(CLUDA_ERR_IO, "cannot create group grad");
  const cluda_param_table *table = &t->model.params;
  for (int i = 0; i < table->count && st.code == CLUDA_OK; i++) {
    cluda_tensor v = cluda_param_view(table, i, t->grads);
    st = h5_dataset(g, table->items[i].name, H5T_NATIVE_FLOAT, v.data, v.ndim, v.shape);
  }
  if (g >= 0) H5Gclose(g);
  if (H5Fclose(f) < 0 && st.code == CLUDA_OK)
    st = CLUDA_FAIL(CLUDA_ERR_IO, "cannot close %s", path);
  return st;
}

/* ---------------------------------------------------------------------------------------
 * The step
 * --------------------------------------------------------------------------------------- */

/* Overrides of the paper defaults (comments at the top of the file say why). */
static const char *const SETTINGS[] = {"model.encoder=tiny",
                                       "model.head=daformer",
                                       "model.dropout=0",
                                       "model.drop_path_rate=0",
                                       "train.batch=2",
                                       "train.crop=[64, 64]",
                                       "train.max_iters=1",
                                       "uda.enabled=true",
                                       "uda.ignore_top=4",
                                       "uda.ignore_bottom=8",
                                       "uda.jitter_p=1",
                                       "uda.blur_p=1",
                                       "uda.fd_lambda=0.005",
                                       "cl.source=true",
                                       "cl.mix=true",
                                       "cl.size=[13, 13]",
                                       "data.rcs=false",
                                       "data.size=[64, 64]",
                                       NULL};

static cluda_status load_settings(cluda_train_settings *s, cluda_segmentor_config *mc) {
  cluda_config cfg;
  CLUDA_TRY(cluda_config_init(&cfg));
  cluda_status st = cluda_ok();
  for (int i = 0; st.code == CLUDA_OK && SETTINGS[i]; i++)
    st = cluda_config_set(&cfg, SETTINGS[i]);
  if (st.code == CLUDA_OK) st = cluda_train_settings_from_config(&cfg, s);
  if (st.code == CLUDA_OK) st = cluda_config_to_segmentor_config(&cfg, mc);
  cluda_config_free(&cfg);
  /* the batch comes from the sample sources below, not from the synthetic scenes */
  s->source_synthetic = 0;
  s->target_synthetic = 0;
  return st;
}

/* The trainer's ClassMix masks of iteration 0 (trainer.c class_mix: the classes of the
 * batch's source labels, key (seed, 0, iteration, AUGMENT, CLASSMIX), first sample 0). */
static cluda_status classmix_masks(const cluda_trainer *t, const uint8_t *src_lbl, uint8_t *mask) {
  cluda_tensor lbl = cluda_tensor_3d(CLUDA_U8, (void *)src_lbl, BATCH, CROP, CROP);
  cluda_tensor m = cluda_tensor_3d(CLUDA_U8, mask, BATCH, CROP, CROP);
  uint8_t classes[256];
  int count = 0;
  CLUDA_TRY(cluda_dacs_batch_classes(&lbl, classes, &count));
  cluda_rng_key key =
      cluda_rng_make_key(t->s.seed, 0, 0, CLUDA_RNG_AUGMENT, CLUDA_DACS_SLOT_CLASSMIX);
  return cluda_dacs_classmix_masks(&lbl, classes, key, 0, &m, NULL);
}

static cluda_status run(const char *out_path) {
  CLUDA_TRY(check_generator());
  cluda_train_settings s;
  cluda_segmentor_config mc;
  CLUDA_TRY(load_settings(&s, &mc));
  const size_t px = (size_t)BATCH * CROP * CROP;
  fixed_batch fb = {malloc(px * 3 * sizeof(float)), malloc(px * 3 * sizeof(float)), malloc(px)};
  uint8_t *mix_mask = malloc(px), *pl = malloc(px);
  float *prob = malloc(px * sizeof(float));
  gen_table gen = {0};
  cluda_trainer t;
  int trainer_ok = 0;
  cluda_status st = cluda_ok();
  if (!fb.src_img || !fb.tgt_img || !fb.src_lbl || !mix_mask || !pl || !prob)
    st = CLUDA_FAIL(CLUDA_ERR_ALLOC, "out of memory for the batch");
  if (st.code == CLUDA_OK) {
    gen_fill("x_src", GEN_SEED, X_SCALE, 0.0, fb.src_img, (int64_t)px * 3);
    gen_fill("x_tgt", GEN_SEED, X_SCALE, 0.0, fb.tgt_img, (int64_t)px * 3);
    make_source_labels(fb.src_lbl);
    st = cluda_trainer_init(&t, &s, &mc, NULL);
    trainer_ok = st.code == CLUDA_OK;
  }
  step_record rec = {&fb, mix_mask, pl, prob, 0.0f, 0.0f, NULL, &gen};
  if (st.code == CLUDA_OK) st = gen_params(&t.model.params, t.student, GEN_SEED, &gen);
  if (st.code == CLUDA_OK) st = gen_params(&t.model.state, t.student_state, GEN_SEED, &gen);
  if (st.code == CLUDA_OK) st = cluda_trainer_adopt_student(&t);
  if (st.code == CLUDA_OK) st = gen_params(&t.model.params, t.imnet, IMNET_SEED, NULL);
  if (st.code == CLUDA_OK) {
    t.source = (cluda_sample_source){&fb, get_source};
    t.target = (cluda_sample_source){&fb, get_target};
    st = teacher_pass(&t, fb.tgt_img, pl, prob, &rec.threshold, &rec.gap);
  }
  if (st.code == CLUDA_OK) {
    t.s.pseudo_threshold = rec.threshold;
    st = classmix_masks(&t, fb.src_lbl, mix_mask);
  }
  cluda_step_stats stats;
  if (st.code == CLUDA_OK) st = cluda_trainer_step(&t, &stats);
  if (st.code == CLUDA_OK) {
    rec.stats = &stats;
    st = write_file(out_path, &t, &rec);
  }
  if (st.code == CLUDA_OK) {
    printf("bench_step_check: tiny MiT + DAFormer (E %d, Cf %d), batch %d+%d, %dx%d, CL %dx%d, "
           "procedural weights (seed %d, FD encoder seed %d)\n",
           mc.head.embed_dims, mc.head.channels, BATCH, BATCH, CROP, CROP, CL_SIZE, CL_SIZE,
           GEN_SEED, IMNET_SEED);
    printf("  pseudo_threshold %.6f (gap %.2e)  gamma %.6f  fd_cells %lld\n", (double)rec.threshold,
           (double)rec.gap, stats.gamma, (long long)stats.fd_cells);
    printf("  loss_src %.9g  loss_fd %.9g  loss_cl_src %.9g  loss_mix %.9g  loss_cl_mix %.9g  "
           "grad_norm %.9g\n",
           stats.loss_src, stats.loss_fd, stats.loss_cl_src, stats.loss_mix, stats.loss_cl_mix,
           stats.grad_norm);
    printf("  written to %s\n", out_path);
  }
  if (trainer_ok) cluda_trainer_free(&t);
  free(fb.src_img);
  free(fb.tgt_img);
  free(fb.src_lbl);
  free(mix_mask);
  free(pl);
  free(prob);
  free(gen.names);
  free(gen.so);
  return st;
}

static void usage(FILE *f) {
  fprintf(f, "usage: bench_step_check [--out FILE] [--threads N]\n"
             "  --out FILE    HDF5 file to write (default step_check.h5)\n"
             "  --threads N   OpenMP and OpenBLAS threads (default $OMP_NUM_THREADS, else 2)\n"
             "Then: python benchmarks/pytorch_reference.py --check FILE\n");
}

int main(int argc, char **argv) {
  const char *out = "step_check.h5";
  int threads = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      return 0;
    }
    if (!strcmp(a, "--out") && v) {
      out = v;
      i++;
    } else if (!strcmp(a, "--threads") && v && parse_int(v, 1, &threads)) {
      i++;
    } else {
      fprintf(stderr, "bench_step_check: bad option or value: %s\n", a);
      usage(stderr);
      return 2;
    }
  }
  setup_threads(threads);
  cluda_status st = run(out);
  if (st.code != CLUDA_OK) {
    fprintf(stderr, "bench_step_check: %s\n", st.message);
    return 1;
  }
  return 0;
}

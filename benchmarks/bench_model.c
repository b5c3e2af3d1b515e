/* bench_model: times one training-mode forward and backward of the whole segmentation network
 * on the CPU: a MiT encoder (default B0) + the DAFormer head (E = 256 as DAFormer, or 512 as
 * CLUDA with --embed-dims 512; Cf = 256, 19 classes), batch 2, 256x256 (spec model.md sections
 * 1, 2 and 8).
 *
 * Training mode: BatchNorm uses batch statistics (and updates its running statistics);
 * Dropout2d and drop path are off unless --stochastic (then both are on, as for the student).
 * The backward starts from a random dlogits (no loss) and needs no image gradient.
 *
 * Timed, each separately ("warm-up, then the median of repeated runs", as bench_ops):
 *   model   fwd   cluda_segmentor_forward
 *   model   bwd   cluda_segmentor_backward from dlogits (on the saved activations)
 *   model   step  forward + backward, back to back
 *   encoder fwd / bwd   cluda_mit_forward / cluda_mit_backward (dout = the head's dfeats)
 *   head    fwd / bwd   cluda_head_forward / cluda_head_backward (dlogits -> dfeats)
 * FLOPs are 2 x the plan's MACs for a forward, 2 x that for a backward (dx and dw), 3 x for a
 * step; the backward count is approximate (the first conv needs no dx, and LayerNorm, GELU,
 * BN, resize and softmax are not counted at all).
 *
 * Output: a table, then one machine-readable line per part and pass:
 *   RESULT name=model pass=fwd ms=123.4 gflops=56.7 gflop=7.0 runs=10 count=1 op=segmentor
 * benchmarks/bench_model_torch.py prints the same lines for PyTorch; compare_model.sh joins
 * them. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_common.h"
#include "cluda/arena.h"
#include "cluda/backend.h"
#include "cluda/segmentor.h"

/* OpenBLAS extensions (the build requires BLA_VENDOR OpenBLAS); see bench_ops.c. */
extern void openblas_set_num_threads(int num_threads);
extern int openblas_get_num_threads(void);
extern char *openblas_get_config(void);
extern char *openblas_get_corename(void);

enum { NUM_STAGES = 4, NUM_CLASSES = 19, FUSED_CHANNELS = 256 };

typedef struct options {
  int batch, size, repeats, warmup, min_runs;
  double max_seconds;
  int threads; /* 0: from the environment, default 2 */
  int embed_dims;
  int stochastic;
  const char *encoder;
  int verbose; /* print every timed run */
} options;

/* ---------------------------------------------------------------- helpers */

/* 64-byte aligned, zeroed memory of `bytes` (at least one line). */
static void *alloc_zero(size_t bytes) {
  size_t n = cluda_arena_align(bytes ? bytes : 1);
  void *p = aligned_alloc(CLUDA_ARENA_ALIGN, n);
  if (p) memset(p, 0, n);
  return p;
}

static size_t param_range_elements(const cluda_param_table *t, int first, int count) {
  size_t n = 0;
  for (int i = first; i < first + count; i++)
    n += t->items[i].count;
  return n;
}

/* ---------------------------------------------------------------- the network */

typedef struct bench {
  const options *opt;
  cluda_segmentor model;
  cluda_segmentor_plan plan;
  cluda_arena scratch;
  cluda_ctx ctx;
  cluda_run_mode mode;
  float *params, *grads, *state;
  cluda_tensor x, dlogits;
  /* whole model */
  void *acts;
  cluda_segmentor_outputs out;
  /* parts */
  void *enc_acts, *head_acts;
  cluda_tensor feats[NUM_STAGES], dfeats[NUM_STAGES], fused, logits;
  int iteration;
} bench;

typedef enum {
  P_MODEL_FWD,
  P_MODEL_BWD,
  P_MODEL_STEP,
  P_ENC_FWD,
  P_ENC_BWD,
  P_HEAD_FWD,
  P_HEAD_BWD,
  P_COUNT
} pass_id;

static const char *const PART_NAME[P_COUNT] = {"model",   "model", "model", "encoder",
                                               "encoder", "head",  "head"};
static const char *const PASS_NAME[P_COUNT] = {"fwd", "bwd", "step", "fwd", "bwd", "fwd", "bwd"};
static const char *const OP_NAME[P_COUNT] = {"segmentor", "segmentor", "segmentor", "mit",
                                             "mit",       "head",      "head"};

static cluda_status model_fwd(bench *b) {
  /* a new dropout / drop-path key per run, as a training step would draw */
  b->mode.key = cluda_rng_make_key(1234, 0, (uint32_t)b->iteration++, CLUDA_RNG_DROPOUT, 0);
  return cluda_segmentor_forward(&b->ctx, &b->model, &b->plan, b->params, b->state, &b->mode, &b->x,
                                 b->acts, &b->out);
}

static cluda_status model_bwd(bench *b) {
  return cluda_segmentor_backward(&b->ctx, &b->model, &b->plan, b->params, b->grads, b->state,
                                  &b->mode, &b->x, b->acts, &b->dlogits, NULL, NULL, NULL);
}

static cluda_status run_pass(bench *b, pass_id p) {
  cluda_segmentor *m = &b->model;
  switch (p) {
  case P_MODEL_FWD: return model_fwd(b);
  case P_MODEL_BWD: return model_bwd(b);
  case P_MODEL_STEP: {
    cluda_status s = model_fwd(b);
    return s.code == CLUDA_OK ? model_bwd(b) : s;
  }
  case P_ENC_FWD:
    b->mode.key = cluda_rng_make_key(1234, 0, (uint32_t)b->iteration++, CLUDA_RNG_DROPOUT, 0);
    return cluda_mit_forward(&b->ctx, &m->encoder, &b->plan.encoder, &m->params, b->params,
                             &b->mode, &b->x, b->enc_acts, b->feats);
  case P_ENC_BWD: {
    const cluda_tensor *dout[NUM_STAGES] = {&b->dfeats[0], &b->dfeats[1], &b->dfeats[2],
                                            &b->dfeats[3]};
    return cluda_mit_backward(&b->ctx, &m->encoder, &b->plan.encoder, &m->params, b->params,
                              b->grads, &b->mode, &b->x, b->enc_acts, dout, NULL);
  }
  case P_HEAD_FWD:
    return cluda_head_forward(&b->ctx, &m->head, &b->plan.head, &m->params, b->params, &m->state,
                              b->state, &b->mode, b->feats, b->head_acts, &b->fused, &b->logits);
  case P_HEAD_BWD: {
    cluda_tensor *dfeats[NUM_STAGES] = {&b->dfeats[0], &b->dfeats[1], &b->dfeats[2], &b->dfeats[3]};
    return cluda_head_backward(&b->ctx, &m->head, &b->plan.head, &m->params, b->params, b->grads,
                               &m->state, b->state, &b->mode, b->feats, b->head_acts, &b->dlogits,
                               NULL, dfeats);
  }
  default: return cluda_ok();
  }
}

/* Forward FLOPs (2 x MACs, whole batch) of the part a pass runs, times the pass's factor. */
static double pass_flops(const bench *b, pass_id p) {
  double macs = p <= P_MODEL_STEP ? b->plan.macs
                : p <= P_ENC_BWD  ? b->plan.encoder.macs
                                  : b->plan.head.macs;
  double fwd = 2.0 * macs * b->opt->batch;
  if (p == P_MODEL_STEP) return 3.0 * fwd;
  if (p == P_MODEL_BWD || p == P_ENC_BWD || p == P_HEAD_BWD) return 2.0 * fwd;
  return fwd;
}

typedef struct result {
  int ok;
  double median_ms, min_ms;
  int runs;
} result;

static result time_pass(bench *b, pass_id p, double *times) {
  const options *opt = b->opt;
  result r = {0, 0, 0, 0};
  for (int i = 0; i < opt->warmup; i++) {
    cluda_status s = run_pass(b, p);
    if (s.code != CLUDA_OK) {
      fprintf(stderr, "bench_model: %s %s: %s: %s\n", PART_NAME[p], PASS_NAME[p],
              cluda_code_name(s.code), s.message);
      return r;
    }
  }
  double total = 0;
  int runs = 0;
  while (runs < opt->repeats) {
    double t0 = now_s();
    cluda_status s = run_pass(b, p);
    double dt = now_s() - t0;
    if (s.code != CLUDA_OK) {
      fprintf(stderr, "bench_model: %s %s: %s: %s\n", PART_NAME[p], PASS_NAME[p],
              cluda_code_name(s.code), s.message);
      return r;
    }
    times[runs++] = dt;
    total += dt;
    if (opt->verbose)
      printf("  %s %s run %d: %.2f ms\n", PART_NAME[p], PASS_NAME[p], runs, 1e3 * dt);
    if (runs >= opt->min_runs && total >= opt->max_seconds) break;
  }
  qsort(times, (size_t)runs, sizeof *times, cmp_double);
  r.ok = 1;
  r.runs = runs;
  r.min_ms = 1e3 * times[0];
  r.median_ms = 1e3 * (runs % 2 ? times[runs / 2] : 0.5 * (times[runs / 2 - 1] + times[runs / 2]));
  return r;
}

static int all_finite(const cluda_tensor *t) {
  const float *p = cluda_f32(t);
  int64_t n = cluda_tensor_numel(t);
  for (int64_t i = 0; i < n; i++)
    if (!isfinite(p[i])) return 0;
  return 1;
}

/* ---------------------------------------------------------------- options */

static void usage(FILE *f) {
  fprintf(f,
          "usage: bench_model [options]\n"
          "Times a training-mode forward and backward of MiT + DAFormer head (Cf = %d, %d\n"
          "classes) on the CPU, whole and per part; prints a table and RESULT lines.\n"
          "  --encoder NAME    b0..b5 (default b0)\n"
          "  --embed-dims E    DAFormer head embedding width (default 256; CLUDA: 512)\n"
          "  --batch N         batch size (default 2)\n"
          "  --size S          input S x S (default 256)\n"
          "  --stochastic      Dropout2d and drop path on (default off)\n"
          "  --repeats N       at most N timed runs per pass (default 10)\n"
          "  --warmup N        untimed runs first (default 2)\n"
          "  --max-seconds S   stop repeating once the timed runs add up to S (default 3)\n"
          "  --min-runs N      but time at least N runs (default 3)\n"
          "  --threads N       OpenMP and OpenBLAS threads (default: OMP_NUM_THREADS and\n"
          "                    OPENBLAS_NUM_THREADS, else 2)\n"
          "  --verbose         print every timed run\n"
          "  --quick           a short run: --repeats 3 --warmup 1 --max-seconds 0.5 --min-runs 1\n"
          "  --help            this text\n"
          "Exit status: 0 when every pass ran, 1 on an error, 2 on a bad option.\n",
          FUSED_CHANNELS, NUM_CLASSES);
}

static int parse_args(int argc, char **argv, options *opt) {
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    int ok = 1;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
      usage(stdout);
      exit(0);
    } else if (!strcmp(a, "--quick")) {
      opt->repeats = 3;
      opt->warmup = 1;
      opt->max_seconds = 0.5;
      opt->min_runs = 1;
    } else if (!strcmp(a, "--verbose")) {
      opt->verbose = 1;
    } else if (!strcmp(a, "--stochastic")) {
      opt->stochastic = 1;
    } else if (!strcmp(a, "--batch") && v) {
      ok = parse_int(v, 1, &opt->batch), i++;
    } else if (!strcmp(a, "--size") && v) {
      ok = parse_int(v, 32, &opt->size), i++;
    } else if (!strcmp(a, "--repeats") && v) {
      ok = parse_int(v, 1, &opt->repeats), i++;
    } else if (!strcmp(a, "--warmup") && v) {
      ok = parse_int(v, 1, &opt->warmup), i++;
    } else if (!strcmp(a, "--min-runs") && v) {
      ok = parse_int(v, 1, &opt->min_runs), i++;
    } else if (!strcmp(a, "--threads") && v) {
      ok = parse_int(v, 1, &opt->threads), i++;
    } else if (!strcmp(a, "--embed-dims") && v) {
      ok = parse_int(v, 1, &opt->embed_dims), i++;
    } else if (!strcmp(a, "--encoder") && v) {
      opt->encoder = v, i++;
      ok = strlen(v) == 2 && v[0] == 'b' && v[1] >= '0' && v[1] <= '5';
    } else if (!strcmp(a, "--max-seconds") && v) {
      char *end;
      opt->max_seconds = strtod(v, &end);
      ok = *v != '\0' && *end == '\0' && opt->max_seconds >= 0, i++;
    } else {
      fprintf(stderr, "bench_model: unknown option or missing value: %s\n", a);
      ok = 0;
    }
    if (!ok) {
      fprintf(stderr, "bench_model: bad value for %s\n", a);
      usage(stderr);
      return 0;
    }
  }
  if (opt->min_runs > opt->repeats) opt->min_runs = opt->repeats;
  return 1;
}

/* ---------------------------------------------------------------- main */

#define CHECK(call)                                                                                \
  do {                                                                                             \
    cluda_status s_ = (call);                                                                      \
    if (s_.code != CLUDA_OK) {                                                                     \
      fprintf(stderr, "bench_model: %s: %s\n", cluda_code_name(s_.code), s_.message);              \
      goto fail;                                                                                   \
    }                                                                                              \
  } while (0)

#define CHECK_ALLOC(p)                                                                             \
  do {                                                                                             \
    if (!(p)) {                                                                                    \
      fprintf(stderr, "bench_model: out of memory (%s)\n", #p);                                    \
      goto fail;                                                                                   \
    }                                                                                              \
  } while (0)

static double mib(size_t bytes) { return (double)bytes / (1024.0 * 1024.0); }

int main(int argc, char **argv) {
  options opt = {2, 256, 10, 2, 3, 3.0, 0, 256, 0, "b0", 0};
  if (!parse_args(argc, argv, &opt)) return 2;
  setup_threads(opt.threads);
  setvbuf(stdout, NULL, _IOLBF, 0);

  bench b;
  memset(&b, 0, sizeof b);
  b.opt = &opt;
  int rc = 1;
  result res[P_COUNT];
  memset(res, 0, sizeof res);
  double *times = malloc((size_t)opt.repeats * sizeof *times);
  CHECK_ALLOC(times);

  cluda_segmentor_config cfg;
  CHECK(cluda_segmentor_default_config(opt.encoder, CLUDA_HEAD_DAFORMER, &cfg));
  cfg.head.embed_dims = opt.embed_dims;
  cfg.head.channels = FUSED_CHANNELS;
  cfg.head.num_classes = NUM_CLASSES;
  CHECK(cluda_segmentor_create(&b.model, &cfg));
  CHECK(cluda_segmentor_plan_for(&b.model, opt.batch, opt.size, opt.size, &b.plan));

  const cluda_segmentor *m = &b.model;
  b.params = alloc_zero(sizeof(float) * m->params.total);
  b.grads = alloc_zero(sizeof(float) * m->params.total);
  b.state = alloc_zero(sizeof(float) * (m->state.total ? m->state.total : 1));
  CHECK_ALLOC(b.params);
  CHECK_ALLOC(b.grads);
  CHECK_ALLOC(b.state);
  CHECK(cluda_segmentor_init(m, b.params, b.state, 42));
  CHECK(cluda_arena_create(&b.scratch, b.plan.scratch_bytes > 64 ? b.plan.scratch_bytes : 64));
  b.ctx = cluda_cpu_context(&b.scratch);
  b.mode.stochastic = opt.stochastic;
  b.mode.bn_batch_stats = 1;

  const int s = opt.size, oh = b.plan.head.out_h, ow = b.plan.head.out_w;
  b.x = cluda_tensor_4d(CLUDA_F32, alloc_zero(sizeof(float) * (size_t)opt.batch * s * s * 3),
                        opt.batch, s, s, 3);
  CHECK_ALLOC(b.x.data);
  fill_uniform(cluda_f32(&b.x), cluda_tensor_numel(&b.x), 2.0f, 0);
  b.dlogits = cluda_tensor_4d(CLUDA_F32,
                              alloc_zero(sizeof(float) * (size_t)opt.batch * oh * ow * NUM_CLASSES),
                              opt.batch, oh, ow, NUM_CLASSES);
  CHECK_ALLOC(b.dlogits.data);
  fill_uniform(cluda_f32(&b.dlogits), cluda_tensor_numel(&b.dlogits), 1.0f, 1);

  const size_t enc_params =
      param_range_elements(&m->params, m->encoder.first_param, m->encoder.param_count);
  const size_t head_params =
      param_range_elements(&m->params, m->head.first_param, m->head.param_count);
  const char *coretype = getenv("OPENBLAS_CORETYPE");
  const char *wait = getenv("OMP_WAIT_POLICY");
  printf("cluda bench_model: CPU backend, MiT-%s + DAFormer head (E=%d, Cf=%d, K=%d), %dx%d "
         "input, batch %d\n",
         opt.encoder, opt.embed_dims, FUSED_CHANNELS, NUM_CLASSES, s, s, opt.batch);
  printf("mode: training (BN batch statistics), stochastic %s (Dropout2d, drop path); backward "
         "from a random dlogits, no image gradient\n",
         opt.stochastic ? "on" : "off");
  printf("threads: OpenMP %d, OpenBLAS %d (%s; core %s; OPENBLAS_CORETYPE=%s)\n",
         omp_get_max_threads(), openblas_get_num_threads(), openblas_get_config(),
         openblas_get_corename(), coretype ? coretype : "(unset)");
  printf("OMP_WAIT_POLICY=%s\n", wait ? wait : "(unset)");
  if (!wait && !getenv("GOMP_SPINCOUNT") && !strstr(openblas_get_config(), "USE_OPENMP"))
    printf("note: spinning OpenMP threads compete with the pthread OpenBLAS's own threads; "
           "OMP_WAIT_POLICY=PASSIVE is often ~2x faster here (benchmarks/README.md)\n");
  printf("load average (1 min) at start: %.2f\n", load_average());
  printf("timing: median of up to %d runs after %d warm-up (stop after %.2f s, at least %d)\n",
         opt.repeats, opt.warmup, opt.max_seconds, opt.min_runs);
  printf("params: %zu (encoder %zu, head %zu); BN state %zu floats\n",
         cluda_param_table_elements(&m->params), enc_params, head_params,
         cluda_param_table_elements(&m->state));
  printf("MACs per image (plan): %.4f G (encoder %.4f G, head %.4f G)\n", b.plan.macs * 1e-9,
         b.plan.encoder.macs * 1e-9, b.plan.head.macs * 1e-9);
  printf("activation bytes (batch %d): %.1f MiB (encoder %.1f MiB, head %.1f MiB, + stage "
         "copies); scratch %.1f MiB\n",
         opt.batch, mib(b.plan.activation_bytes), mib(b.plan.encoder.activation_bytes),
         mib(b.plan.head.activation_bytes), mib(b.plan.scratch_bytes));
  printf("FLOP = 2 x MAC (forward); bwd = 2 x fwd, step (fwd+bwd) = 3 x fwd (approximate)\n\n");

  /* Phase 1: the whole model. */
  b.acts = alloc_zero(b.plan.activation_bytes);
  CHECK_ALLOC(b.acts);
  for (int p = P_MODEL_FWD; p <= P_MODEL_STEP; p++)
    res[p] = time_pass(&b, (pass_id)p, times);
  int finite = all_finite(&b.out.logits) && all_finite(&b.out.fused);
  free(b.acts);
  b.acts = NULL;

  /* Phase 2: the parts, each on its own buffers; the encoder's backward gets the head's
   * dfeats. */
  b.enc_acts = alloc_zero(b.plan.encoder.activation_bytes);
  b.head_acts = alloc_zero(b.plan.head.activation_bytes);
  CHECK_ALLOC(b.enc_acts);
  CHECK_ALLOC(b.head_acts);
  for (int i = 0; i < NUM_STAGES; i++) {
    const cluda_mit_plan *ep = &b.plan.encoder;
    const int c = cfg.encoder.embed_dims[i];
    b.dfeats[i] = cluda_tensor_4d(
        CLUDA_F32, alloc_zero(sizeof(float) * (size_t)opt.batch * ep->out_h[i] * ep->out_w[i] * c),
        opt.batch, ep->out_h[i], ep->out_w[i], c);
    CHECK_ALLOC(b.dfeats[i].data);
  }
  res[P_ENC_FWD] = time_pass(&b, P_ENC_FWD, times);
  res[P_HEAD_FWD] = time_pass(&b, P_HEAD_FWD, times);
  res[P_HEAD_BWD] = time_pass(&b, P_HEAD_BWD, times);
  res[P_ENC_BWD] = time_pass(&b, P_ENC_BWD, times);
  finite = finite && all_finite(&b.logits);
  for (int i = 0; i < NUM_STAGES; i++)
    finite = finite && all_finite(&b.dfeats[i]);
  {
    cluda_tensor g = cluda_tensor_1d(CLUDA_F32, b.grads, (int64_t)m->params.total);
    finite = finite && all_finite(&g);
  }

  /* Report. */
  printf("%-8s %-5s %10s %5s %10s %10s %9s\n", "part", "pass", "GFLOP", "runs", "median ms",
         "min ms", "GFLOP/s");
  int errors = 0;
  const pass_id order[P_COUNT] = {P_MODEL_FWD, P_MODEL_BWD, P_MODEL_STEP, P_ENC_FWD,
                                  P_ENC_BWD,   P_HEAD_FWD,  P_HEAD_BWD};
  for (int j = 0; j < P_COUNT; j++) {
    pass_id p = order[j];
    double flop = pass_flops(&b, p);
    if (!res[p].ok) {
      printf("%-8s %-5s %10.3f %5s %10s %10s %9s\n", PART_NAME[p], PASS_NAME[p], flop * 1e-9, "-",
             "error", "-", "-");
      errors++;
      continue;
    }
    printf("%-8s %-5s %10.3f %5d %10.2f %10.2f %9.1f\n", PART_NAME[p], PASS_NAME[p], flop * 1e-9,
           res[p].runs, res[p].median_ms, res[p].min_ms, flop / (res[p].median_ms * 1e-3) * 1e-9);
  }
  if (res[P_ENC_FWD].ok && res[P_HEAD_FWD].ok && res[P_MODEL_FWD].ok)
    printf(
        "\nparts: fwd %.2f ms (encoder %.0f %%), bwd %.2f ms (encoder %.0f %%); model - parts: "
        "fwd %+.2f ms, bwd %+.2f ms (stage copies, glue, noise)\n",
        res[P_ENC_FWD].median_ms + res[P_HEAD_FWD].median_ms,
        100.0 * res[P_ENC_FWD].median_ms / (res[P_ENC_FWD].median_ms + res[P_HEAD_FWD].median_ms),
        res[P_ENC_BWD].median_ms + res[P_HEAD_BWD].median_ms,
        100.0 * res[P_ENC_BWD].median_ms / (res[P_ENC_BWD].median_ms + res[P_HEAD_BWD].median_ms),
        res[P_MODEL_FWD].median_ms - res[P_ENC_FWD].median_ms - res[P_HEAD_FWD].median_ms,
        res[P_MODEL_BWD].median_ms - res[P_ENC_BWD].median_ms - res[P_HEAD_BWD].median_ms);
  if (!finite) printf("warning: NON-FINITE values in the outputs or gradients\n");
  printf("%d errors; load average (1 min) at end: %.2f\n\n", errors, load_average());
  for (int j = 0; j < P_COUNT; j++) {
    pass_id p = order[j];
    double flop = pass_flops(&b, p);
    if (res[p].ok)
      printf("RESULT name=%s pass=%s ms=%.3f gflops=%.2f gflop=%.4f runs=%d count=1 op=%s "
             "embed_dims=%d%s\n",
             PART_NAME[p], PASS_NAME[p], res[p].median_ms, flop / (res[p].median_ms * 1e-3) * 1e-9,
             flop * 1e-9, res[p].runs, OP_NAME[p], opt.embed_dims,
             finite ? "" : " warning=nonfinite");
    else
      printf("RESULT name=%s pass=%s status=error count=1 op=%s embed_dims=%d\n", PART_NAME[p],
             PASS_NAME[p], OP_NAME[p], opt.embed_dims);
  }
  printf("RESULT name=info params=%zu params_encoder=%zu params_head=%zu activation_bytes=%zu "
         "macs_per_image=%.0f\n",
         cluda_param_table_elements(&m->params), enc_params, head_params, b.plan.activation_bytes,
         b.plan.macs);
  rc = errors ? 1 : 0;

fail:
  free(times);
  free(b.acts);
  free(b.enc_acts);
  free(b.head_acts);
  for (int i = 0; i < NUM_STAGES; i++)
    free(b.dfeats[i].data);
  free(b.x.data);
  free(b.dlogits.data);
  free(b.params);
  free(b.grads);
  free(b.state);
  if (b.scratch.base) cluda_arena_destroy(&b.scratch);
  cluda_segmentor_free(&b.model);
  return rc;
}

/* bench_ops: times the forward and the backward of the CPU conv2d, linear and attention ops at
 * the MiT-B0 encoder shapes of a 256x256 input (spec model.md sections 1 and 8).
 *
 * Every op is run `warmup` times, then up to `repeats` more times (stopping early once the
 * timed runs add up to `max-seconds`, after at least `min-runs` of them); the median time is
 * reported. FLOPs are 2 x MACs; a backward counts 2 x the forward MACs (dx and dw), or 1 x
 * when the op skips dx (the first patch embedding, whose input is the image).
 *
 * Output: a table, then one machine-readable line per op and pass:
 *   RESULT name=s1.fc1 pass=fwd ms=1.234 gflops=56.7 gflop=0.070 runs=20 count=2 op=linear
 *   RESULT name=s1.fc1 pass=bwd status=unsupported count=2 op=linear
 * benchmarks/bench_ops_torch.py prints the same lines for PyTorch; compare_ops.sh joins them.
 *
 * An op that answers CLUDA_ERR_UNSUPPORTED is reported as such and skipped; any other failure
 * is printed and makes the exit status 1 once all ops have run. */
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
#include "cluda/ops.h"
#include "cluda/tensor.h"

/* OpenBLAS extensions (the build requires BLA_VENDOR OpenBLAS); declared here because the
 * cblas.h of the Debian packages is not on the default include path. */
extern void openblas_set_num_threads(int num_threads);
extern int openblas_get_num_threads(void);
extern char *openblas_get_config(void);
extern char *openblas_get_corename(void);

enum { IMG = 256, STAGES = 4, NAME_BYTES = 32, DESC_BYTES = 64 };

/* MiT-B0 (model.md 1.1) */
static const int EMBED[STAGES] = {32, 64, 160, 256};
static const int HEADS[STAGES] = {1, 2, 5, 8};
static const int SR[STAGES] = {8, 4, 2, 1};
static const int DEPTH[STAGES] = {2, 2, 2, 2};
enum { MLP_RATIO = 4 };

typedef enum { OP_CONV, OP_LINEAR, OP_ATTN } op_kind;
static const char *const KIND_NAME[] = {"conv2d", "linear", "attention"};

typedef struct bench_op {
  char name[NAME_BYTES];
  char desc[DESC_BYTES];
  op_kind kind;
  int count; /* how often this op (with these shapes) runs in one MiT-B0 encoder pass */
  int batch;
  /* conv2d: x [batch, h, w, cin] -> y [batch, oh, ow, cout] */
  int h, w, cin, cout, k, stride, pad, groups, need_dx;
  /* linear: x [batch, tokens, in] -> y [batch, tokens, out] */
  int tokens, in_f, out_f;
  /* attention: q [batch, nq, c], k and v [batch, nk, c] */
  int heads, nq, nk, c;
} bench_op;

typedef struct options {
  int batch;
  int repeats;
  int warmup;
  int min_runs;
  double max_seconds;
  int threads; /* 0: from the environment, default 2 */
  const char *filter;
} options;

/* ---------------------------------------------------------------- op list */

static int conv_out(int in, int k, int s, int p) { return cluda_conv2d_out_size(in, k, s, p, 1); }

static int build_ops(int batch, bench_op *ops, int max_ops) {
  int n = 0;
  int res[STAGES];
  int prev_c = 3, prev_h = IMG;
  for (int i = 0; i < STAGES; i++) {
    int k = i == 0 ? 7 : 3, s = i == 0 ? 4 : 2, p = k / 2;
    res[i] = conv_out(prev_h, k, s, p);
    bench_op *o = &ops[n++];
    memset(o, 0, sizeof *o);
    snprintf(o->name, NAME_BYTES, "s%d.patch_embed", i + 1);
    o->kind = OP_CONV;
    o->count = 1;
    o->batch = batch;
    o->h = o->w = prev_h;
    o->cin = prev_c;
    o->cout = EMBED[i];
    o->k = k;
    o->stride = s;
    o->pad = p;
    o->groups = 1;
    o->need_dx = i > 0; /* the image needs no gradient */
    snprintf(o->desc, DESC_BYTES, "%dx%d s%d %d->%d %dx%d->%dx%d", k, k, s, prev_c, EMBED[i],
             prev_h, prev_h, res[i], res[i]);
    prev_c = EMBED[i];
    prev_h = res[i];
  }
  for (int i = 0; i < STAGES; i++) {
    int c = EMBED[i], hw = res[i], tokens = hw * hw, hidden = MLP_RATIO * c;
    int nk = tokens;
    if (SR[i] > 1) {
      int r = SR[i], out = conv_out(hw, r, r, 0);
      nk = out * out;
      bench_op *o = &ops[n++];
      memset(o, 0, sizeof *o);
      snprintf(o->name, NAME_BYTES, "s%d.sr", i + 1);
      o->kind = OP_CONV;
      o->count = DEPTH[i];
      o->batch = batch;
      o->h = o->w = hw;
      o->cin = o->cout = c;
      o->k = o->stride = r;
      o->groups = 1;
      o->need_dx = 1;
      snprintf(o->desc, DESC_BYTES, "%dx%d s%d %d->%d %dx%d->%dx%d", r, r, r, c, c, hw, hw, out,
               out);
    }
    {
      bench_op *o = &ops[n++];
      memset(o, 0, sizeof *o);
      snprintf(o->name, NAME_BYTES, "s%d.dwconv", i + 1);
      o->kind = OP_CONV;
      o->count = DEPTH[i];
      o->batch = batch;
      o->h = o->w = hw;
      o->cin = o->cout = o->groups = hidden;
      o->k = 3;
      o->stride = 1;
      o->pad = 1;
      o->need_dx = 1;
      snprintf(o->desc, DESC_BYTES, "3x3 dw %d ch %dx%d", hidden, hw, hw);
    }
    struct {
      const char *name;
      int tokens, in_f, out_f;
    } lin[5] = {{"q", tokens, c, c},
                {"kv", nk, c, 2 * c},
                {"proj", tokens, c, c},
                {"fc1", tokens, c, hidden},
                {"fc2", tokens, hidden, c}};
    for (int j = 0; j < 5; j++) {
      bench_op *o = &ops[n++];
      memset(o, 0, sizeof *o);
      snprintf(o->name, NAME_BYTES, "s%d.%s", i + 1, lin[j].name);
      o->kind = OP_LINEAR;
      o->count = DEPTH[i];
      o->batch = batch;
      o->tokens = lin[j].tokens;
      o->in_f = lin[j].in_f;
      o->out_f = lin[j].out_f;
      snprintf(o->desc, DESC_BYTES, "%d tok %d->%d", lin[j].tokens, lin[j].in_f, lin[j].out_f);
    }
    {
      bench_op *o = &ops[n++];
      memset(o, 0, sizeof *o);
      snprintf(o->name, NAME_BYTES, "s%d.attn", i + 1);
      o->kind = OP_ATTN;
      o->count = DEPTH[i];
      o->batch = batch;
      o->heads = HEADS[i];
      o->nq = tokens;
      o->nk = nk;
      o->c = c;
      snprintf(o->desc, DESC_BYTES, "h%d d%d N%d Nk%d", HEADS[i], c / HEADS[i], tokens, nk);
    }
    if (n > max_ops - 8) break;
  }
  return n;
}

/* Forward multiply-accumulates of one call. */
static double op_macs(const bench_op *o) {
  switch (o->kind) {
  case OP_CONV: {
    double oh = conv_out(o->h, o->k, o->stride, o->pad),
           ow = conv_out(o->w, o->k, o->stride, o->pad);
    return (double)o->batch * oh * ow * o->cout * o->k * o->k * (o->cin / o->groups);
  }
  case OP_LINEAR: return (double)o->batch * o->tokens * o->in_f * o->out_f;
  case OP_ATTN: return 2.0 * o->batch * o->nq * o->nk * o->c; /* Q K^T and P V */
  }
  return 0;
}

static double op_flops(const bench_op *o, int backward) {
  double f = 2.0 * op_macs(o);
  if (!backward) return f;
  return (o->kind == OP_CONV && !o->need_dx) ? f : 2.0 * f;
}

/* ---------------------------------------------------------------- buffers */

typedef struct buffers {
  float *mem[12];
  int count;
  int failed;
} buffers;

/* A float buffer of n elements: random in [-scale, scale), or zero when scale == 0. */
static float *buf_new(buffers *b, int64_t n, float scale) {
  size_t bytes = cluda_arena_align((size_t)n * sizeof(float));
  float *p = aligned_alloc(CLUDA_ARENA_ALIGN, bytes);
  if (!p) {
    b->failed = 1;
    return NULL;
  }
  b->mem[b->count++] = p;
  if (scale == 0.0f)
    memset(p, 0, bytes);
  else
    fill_uniform(p, n, scale, (uint32_t)b->count);
  return p;
}

static void buf_free(buffers *b) {
  for (int i = 0; i < b->count; i++)
    free(b->mem[i]);
  b->count = 0;
}

/* The tensors of one op: conv and linear use x, w, b, y, dy, dx, dw, db; attention uses
 * x = q, w = k, b = v, y = out, dy = dout, dx = dq, dw = dk, db = dv and probs. */
typedef struct op_state {
  const bench_op *op;
  cluda_ctx ctx;
  cluda_arena *arena;
  cluda_conv2d_params conv;
  cluda_tensor x, w, b, y, dy, dx, dw, db, probs;
  int have_dx;
} op_state;

static int state_init(op_state *s, const bench_op *o, buffers *bufs) {
  memset(&s->conv, 0, sizeof s->conv);
  s->op = o;
  s->have_dx = 1;
  int bn = o->batch;
  switch (o->kind) {
  case OP_CONV: {
    int oh = conv_out(o->h, o->k, o->stride, o->pad), ow = conv_out(o->w, o->k, o->stride, o->pad);
    int cpg = o->cin / o->groups;
    float ws = 1.0f / sqrtf((float)(o->k * o->k * cpg));
    s->conv =
        (cluda_conv2d_params){o->k, o->k, o->stride, o->stride, o->pad, o->pad, 1, 1, o->groups};
    s->x = cluda_tensor_4d(CLUDA_F32, buf_new(bufs, (int64_t)bn * o->h * o->w * o->cin, 1.0f), bn,
                           o->h, o->w, o->cin);
    s->w = cluda_tensor_4d(CLUDA_F32, buf_new(bufs, (int64_t)o->cout * o->k * o->k * cpg, ws),
                           o->cout, o->k, o->k, cpg);
    s->b = cluda_tensor_1d(CLUDA_F32, buf_new(bufs, o->cout, 0.1f), o->cout);
    s->y = cluda_tensor_4d(CLUDA_F32, buf_new(bufs, (int64_t)bn * oh * ow * o->cout, 0.0f), bn, oh,
                           ow, o->cout);
    s->dy = cluda_tensor_4d(CLUDA_F32, buf_new(bufs, (int64_t)bn * oh * ow * o->cout, 1.0f), bn, oh,
                            ow, o->cout);
    s->have_dx = o->need_dx;
    if (o->need_dx)
      s->dx = cluda_tensor_4d(CLUDA_F32, buf_new(bufs, (int64_t)bn * o->h * o->w * o->cin, 0.0f),
                              bn, o->h, o->w, o->cin);
    s->dw = cluda_tensor_4d(CLUDA_F32, buf_new(bufs, (int64_t)o->cout * o->k * o->k * cpg, 0.0f),
                            o->cout, o->k, o->k, cpg);
    s->db = cluda_tensor_1d(CLUDA_F32, buf_new(bufs, o->cout, 0.0f), o->cout);
    break;
  }
  case OP_LINEAR: {
    float ws = 1.0f / sqrtf((float)o->in_f);
    s->x = cluda_tensor_3d(CLUDA_F32, buf_new(bufs, (int64_t)bn * o->tokens * o->in_f, 1.0f), bn,
                           o->tokens, o->in_f);
    s->w = cluda_tensor_2d(CLUDA_F32, buf_new(bufs, (int64_t)o->out_f * o->in_f, ws), o->out_f,
                           o->in_f);
    s->b = cluda_tensor_1d(CLUDA_F32, buf_new(bufs, o->out_f, 0.1f), o->out_f);
    s->y = cluda_tensor_3d(CLUDA_F32, buf_new(bufs, (int64_t)bn * o->tokens * o->out_f, 0.0f), bn,
                           o->tokens, o->out_f);
    s->dy = cluda_tensor_3d(CLUDA_F32, buf_new(bufs, (int64_t)bn * o->tokens * o->out_f, 1.0f), bn,
                            o->tokens, o->out_f);
    s->dx = cluda_tensor_3d(CLUDA_F32, buf_new(bufs, (int64_t)bn * o->tokens * o->in_f, 0.0f), bn,
                            o->tokens, o->in_f);
    s->dw = cluda_tensor_2d(CLUDA_F32, buf_new(bufs, (int64_t)o->out_f * o->in_f, 0.0f), o->out_f,
                            o->in_f);
    s->db = cluda_tensor_1d(CLUDA_F32, buf_new(bufs, o->out_f, 0.0f), o->out_f);
    break;
  }
  case OP_ATTN: {
    int64_t nq = (int64_t)bn * o->nq * o->c, nk = (int64_t)bn * o->nk * o->c;
    s->x = cluda_tensor_3d(CLUDA_F32, buf_new(bufs, nq, 1.0f), bn, o->nq, o->c);
    s->w = cluda_tensor_3d(CLUDA_F32, buf_new(bufs, nk, 1.0f), bn, o->nk, o->c);
    s->b = cluda_tensor_3d(CLUDA_F32, buf_new(bufs, nk, 1.0f), bn, o->nk, o->c);
    s->y = cluda_tensor_3d(CLUDA_F32, buf_new(bufs, nq, 0.0f), bn, o->nq, o->c);
    s->dy = cluda_tensor_3d(CLUDA_F32, buf_new(bufs, nq, 1.0f), bn, o->nq, o->c);
    s->dx = cluda_tensor_3d(CLUDA_F32, buf_new(bufs, nq, 0.0f), bn, o->nq, o->c);
    s->dw = cluda_tensor_3d(CLUDA_F32, buf_new(bufs, nk, 0.0f), bn, o->nk, o->c);
    s->db = cluda_tensor_3d(CLUDA_F32, buf_new(bufs, nk, 0.0f), bn, o->nk, o->c);
    int64_t np = (int64_t)bn * o->heads * o->nq * o->nk;
    float *p = buf_new(bufs, np, 0.0f);
    /* uniform probabilities, in case the backward runs without a working forward */
    if (p)
      for (int64_t i = 0; i < np; i++)
        p[i] = 1.0f / (float)o->nk;
    s->probs = cluda_tensor_3d(CLUDA_F32, p, bn * o->heads, o->nq, o->nk);
    break;
  }
  }
  return !bufs->failed;
}

/* Scratch bytes this op may take; conv2d says so itself, the others get a generous bound. */
static size_t state_scratch(const op_state *s) {
  size_t extra = (size_t)64 << 20;
  const bench_op *o = s->op;
  if (o->kind == OP_CONV) return cluda_conv2d_scratch_bytes(&s->conv, &s->x, &s->w, &s->y) + extra;
  if (o->kind == OP_ATTN)
    return 4 * sizeof(float) * (size_t)o->batch * o->heads * o->nq * o->nk + extra;
  return 2 * sizeof(float) * (size_t)o->batch * o->tokens * (o->in_f + o->out_f) + extra;
}

static cluda_status run_pass(op_state *s, int backward) {
  const bench_op *o = s->op;
  cluda_ctx *ctx = &s->ctx;
  size_t mark = cluda_arena_mark(s->arena);
  cluda_status st;
  switch (o->kind) {
  case OP_CONV:
    st = backward ? cluda_conv2d_backward(ctx, &s->conv, &s->x, &s->w, &s->dy,
                                          s->have_dx ? &s->dx : NULL, &s->dw, &s->db)
                  : cluda_conv2d_forward(ctx, &s->conv, &s->x, &s->w, &s->b, &s->y);
    break;
  case OP_LINEAR:
    st = backward ? cluda_linear_backward(ctx, &s->x, &s->w, &s->dy, &s->dx, &s->dw, &s->db)
                  : cluda_linear_forward(ctx, &s->x, &s->w, &s->b, &s->y);
    break;
  case OP_ATTN:
    st = backward ? cluda_attention_backward(ctx, o->heads, &s->x, &s->w, &s->b, &s->probs, &s->dy,
                                             &s->dx, &s->dw, &s->db)
                  : cluda_attention_forward(ctx, o->heads, &s->x, &s->w, &s->b, &s->y, &s->probs);
    break;
  default: st = cluda_ok();
  }
  cluda_arena_release(s->arena, mark);
  return st;
}

/* Whether the pass's outputs are all finite (a cheap guard against timing garbage). */
static int outputs_finite(const op_state *s, int backward) {
  const cluda_tensor *outs[3];
  int n = 0;
  if (!backward) {
    outs[n++] = &s->y;
  } else {
    if (s->have_dx) outs[n++] = &s->dx;
    outs[n++] = &s->dw;
    outs[n++] = &s->db;
  }
  for (int i = 0; i < n; i++) {
    const float *p = cluda_f32(outs[i]);
    int64_t len = cluda_tensor_numel(outs[i]);
    for (int64_t j = 0; j < len; j++)
      if (!isfinite(p[j])) return 0;
  }
  return 1;
}

/* ---------------------------------------------------------------- timing */

typedef enum { RES_OK, RES_UNSUPPORTED, RES_ERROR, RES_SKIPPED } res_code;

typedef struct result {
  res_code code;
  double median_ms, min_ms;
  int runs;
  int finite;
  char message[CLUDA_STATUS_MESSAGE_BYTES + 32];
} result;

static result time_pass(op_state *s, int backward, const options *opt, double *times) {
  result r;
  memset(&r, 0, sizeof r);
  cluda_status st = run_pass(s, backward);
  if (st.code == CLUDA_ERR_UNSUPPORTED) {
    r.code = RES_UNSUPPORTED;
    snprintf(r.message, sizeof r.message, "%s", st.message);
    return r;
  }
  if (st.code != CLUDA_OK) {
    r.code = RES_ERROR;
    snprintf(r.message, sizeof r.message, "%s: %s", cluda_code_name(st.code), st.message);
    return r;
  }
  for (int i = 1; i < opt->warmup; i++)
    run_pass(s, backward);
  double total = 0;
  int runs = 0;
  while (runs < opt->repeats) {
    double t0 = now_s();
    st = run_pass(s, backward);
    double dt = now_s() - t0;
    if (st.code != CLUDA_OK) {
      r.code = RES_ERROR;
      snprintf(r.message, sizeof r.message, "%s: %s", cluda_code_name(st.code), st.message);
      return r;
    }
    times[runs++] = dt;
    total += dt;
    if (runs >= opt->min_runs && total >= opt->max_seconds) break;
  }
  qsort(times, (size_t)runs, sizeof *times, cmp_double);
  r.code = RES_OK;
  r.runs = runs;
  r.min_ms = 1e3 * times[0];
  r.median_ms = 1e3 * (runs % 2 ? times[runs / 2] : 0.5 * (times[runs / 2 - 1] + times[runs / 2]));
  r.finite = outputs_finite(s, backward);
  return r;
}

/* ---------------------------------------------------------------- main */

static void usage(FILE *f) {
  fprintf(f,
          "usage: bench_ops [options]\n"
          "Times forward and backward of the CPU conv2d, linear and attention ops at the\n"
          "MiT-B0 encoder shapes of a %dx%d input; prints a table and RESULT lines.\n"
          "  --batch N        batch size (default 2)\n"
          "  --repeats N      at most N timed runs per op and pass (default 50)\n"
          "  --warmup N       untimed runs first (default 2)\n"
          "  --max-seconds S  stop repeating once the timed runs add up to S (default 0.5)\n"
          "  --min-runs N     but time at least N runs (default 3)\n"
          "  --threads N      OpenMP and OpenBLAS threads (default: OMP_NUM_THREADS and\n"
          "                   OPENBLAS_NUM_THREADS, else 2)\n"
          "  --filter TEXT    only ops whose name or kind contains TEXT (e.g. s1., attn, conv)\n"
          "  --quick          a short run: --repeats 5 --warmup 1 --max-seconds 0.15 --min-runs 1\n"
          "  --help           this text\n"
          "Exit status: 0 when every op ran or answered 'unsupported', 1 on another error,\n"
          "2 on a bad option.\n",
          IMG, IMG);
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
      opt->repeats = 5;
      opt->warmup = 1;
      opt->max_seconds = 0.15;
      opt->min_runs = 1;
    } else if (!strcmp(a, "--batch") && v) {
      ok = parse_int(v, 1, &opt->batch), i++;
    } else if (!strcmp(a, "--repeats") && v) {
      ok = parse_int(v, 1, &opt->repeats), i++;
    } else if (!strcmp(a, "--warmup") && v) {
      ok = parse_int(v, 1, &opt->warmup), i++;
    } else if (!strcmp(a, "--min-runs") && v) {
      ok = parse_int(v, 1, &opt->min_runs), i++;
    } else if (!strcmp(a, "--threads") && v) {
      ok = parse_int(v, 1, &opt->threads), i++;
    } else if (!strcmp(a, "--max-seconds") && v) {
      char *end;
      opt->max_seconds = strtod(v, &end);
      ok = *v != '\0' && *end == '\0' && opt->max_seconds >= 0, i++;
    } else if (!strcmp(a, "--filter") && v) {
      opt->filter = v, i++;
    } else {
      fprintf(stderr, "bench_ops: unknown option or missing value: %s\n", a);
      ok = 0;
    }
    if (!ok) {
      fprintf(stderr, "bench_ops: bad value for %s\n", a);
      usage(stderr);
      return 0;
    }
  }
  if (opt->min_runs > opt->repeats) opt->min_runs = opt->repeats;
  return 1;
}

int main(int argc, char **argv) {
  options opt = {2, 50, 2, 3, 0.5, 0, NULL};
  if (!parse_args(argc, argv, &opt)) return 2;
  setup_threads(opt.threads);
  setvbuf(stdout, NULL, _IOLBF, 0);

  bench_op ops[64];
  int nops = build_ops(opt.batch, ops, 64);

  const char *coretype = getenv("OPENBLAS_CORETYPE");
  printf("cluda bench_ops: CPU backend, MiT-B0 shapes, %dx%d input, batch %d\n", IMG, IMG,
         opt.batch);
  printf("threads: OpenMP %d, OpenBLAS %d (%s; core %s; OPENBLAS_CORETYPE=%s)\n",
         omp_get_max_threads(), openblas_get_num_threads(), openblas_get_config(),
         openblas_get_corename(), coretype ? coretype : "(unset)");
  const char *wait = getenv("OMP_WAIT_POLICY");
  printf("OMP_WAIT_POLICY=%s\n", wait ? wait : "(unset)");
  if (!wait && !getenv("GOMP_SPINCOUNT") && !strstr(openblas_get_config(), "USE_OPENMP"))
    printf("note: spinning OpenMP threads compete with the pthread OpenBLAS's own threads; "
           "OMP_WAIT_POLICY=PASSIVE is often ~2x faster here (benchmarks/README.md)\n");
  printf("load average (1 min) at start: %.2f\n", load_average());
  printf("timing: median of up to %d runs after %d warm-up (stop after %.2f s, at least %d)\n",
         opt.repeats, opt.warmup, opt.max_seconds, opt.min_runs);
  printf("FLOP = 2 x MAC; backward = 2 x forward MACs (1 x when dx is skipped: s1.patch_embed)\n");
  printf("x = times the op runs in one encoder pass (depth 2 per stage)\n\n");
  printf("%-16s %-9s %-28s %2s %4s %9s %5s %10s %10s %9s\n", "name", "op", "shape", "x", "pass",
         "GFLOP", "runs", "median ms", "min ms", "GFLOP/s");

  int errors = 0, unsupported = 0, measured = 0;
  double tot_ms[2] = {0, 0}, enc_ms[2] = {0, 0}, enc_macs = 0;
  int tot_complete[2] = {1, 1};
  char *lines = calloc((size_t)nops * 2, 256);
  int nlines = 0;
  double *times = malloc((size_t)opt.repeats * sizeof *times);
  if (!lines || !times) {
    fprintf(stderr, "bench_ops: out of memory\n");
    return 1;
  }

  for (int i = 0; i < nops; i++) {
    const bench_op *o = &ops[i];
    enc_macs += o->count * op_macs(o);
    if (opt.filter && !strstr(o->name, opt.filter) && !strstr(KIND_NAME[o->kind], opt.filter))
      continue;
    buffers bufs = {.count = 0, .failed = 0};
    op_state s;
    cluda_arena arena;
    int ready = state_init(&s, o, &bufs);
    cluda_status ast = cluda_ok();
    if (ready) {
      ast = cluda_arena_create(&arena, state_scratch(&s));
      ready = ast.code == CLUDA_OK;
    }
    if (!ready) {
      fprintf(stderr, "bench_ops: %s: cannot allocate buffers%s%s\n", o->name, ast.code ? ": " : "",
              ast.message);
      errors++;
      buf_free(&bufs);
      continue;
    }
    s.arena = &arena;
    s.ctx = cluda_cpu_context(&arena);
    for (int pass = 0; pass < 2; pass++) {
      const char *pname = pass ? "bwd" : "fwd";
      double flop = op_flops(o, pass);
      result r = time_pass(&s, pass, &opt, times);
      char *line = lines + 256 * (size_t)nlines++;
      if (r.code == RES_OK) {
        double rate = flop / (r.median_ms * 1e-3) * 1e-9;
        printf("%-16s %-9s %-28s %2d %4s %9.4f %5d %10.3f %10.3f %9.2f%s\n", o->name,
               KIND_NAME[o->kind], o->desc, o->count, pname, flop * 1e-9, r.runs, r.median_ms,
               r.min_ms, rate, r.finite ? "" : "  NON-FINITE OUTPUT");
        snprintf(
            line, 256,
            "RESULT name=%.31s pass=%s ms=%.4f gflops=%.3f gflop=%.5f runs=%d count=%d op=%s%s",
            o->name, pname, r.median_ms, rate, flop * 1e-9, r.runs, o->count, KIND_NAME[o->kind],
            r.finite ? "" : " warning=nonfinite");
        tot_ms[pass] += r.median_ms;
        enc_ms[pass] += o->count * r.median_ms;
        measured++;
      } else {
        const char *what = r.code == RES_UNSUPPORTED ? "unsupported" : "error";
        printf("%-16s %-9s %-28s %2d %4s %9.4f %5s %10s %10s %9s\n", o->name, KIND_NAME[o->kind],
               o->desc, o->count, pname, flop * 1e-9, "-", what, "-", "-");
        if (r.code == RES_ERROR) {
          fprintf(stderr, "bench_ops: %s %s: %s\n", o->name, pname, r.message);
          errors++;
        } else {
          unsupported++;
        }
        snprintf(line, 256, "RESULT name=%.31s pass=%s status=%s count=%d op=%s", o->name, pname,
                 what, o->count, KIND_NAME[o->kind]);
        tot_complete[pass] = 0;
      }
    }
    cluda_arena_destroy(&arena);
    buf_free(&bufs);
  }

  printf("\n");
  for (int pass = 0; pass < 2; pass++)
    printf("sum of medians, %s: %.3f ms (each op once); %.3f ms weighted by x (one MiT-B0 "
           "encoder %s)%s\n",
           pass ? "bwd" : "fwd", tot_ms[pass], enc_ms[pass], pass ? "backward" : "forward",
           !tot_complete[pass] ? " [incomplete: some ops did not run]"
           : opt.filter        ? " [filtered]"
                               : "");
  printf("encoder MACs counted (convs, linears, attention): %.3f G per image (spec 8.1: 0.61 G "
         "at 256x256)\n",
         enc_macs / opt.batch * 1e-9);
  printf("%d passes timed, %d unsupported, %d errors; load average (1 min) at end: %.2f\n\n",
         measured, unsupported, errors, load_average());
  for (int i = 0; i < nlines; i++)
    printf("%s\n", lines + 256 * (size_t)i);
  free(lines);
  free(times);
  return errors ? 1 : 0;
}

/* bench_train: times whole CLUDA training iterations (cluda_trainer_step: EMA teacher, data,
 * source forward/CE/FD/CL + backward, teacher pseudo-labels, ClassMix/augment, mixed
 * forward/CE/CL + backward, AdamW) on the CPU, split by stage via the trainer's optional
 * stage_seconds accumulator (trainer.h), for two cases:
 *   demo  the config as given (default configs/demo.yaml: tiny MiT, E = Cf = 64, 128x128
 *         crops, batch 2 source + 2 target, CL at 32x32, FD on)
 *   b0    the same config with MiT-B0 + the DAFormer head at CLUDA's size (E = 512,
 *         Cf = 256), 256x256 crops from 320x320 synthetic images, CL at the fused map's own
 *         size (64x64, as the demo does for its crops)
 * Each case: --warmup untimed iterations, then --iters timed ones; the median per stage and
 * the median whole iteration are reported ("other" = the median of iteration minus the sum
 * of its stages: the step's bookkeeping). The stage medians need not add up to the total.
 *
 * Output: a table per case, then one machine-readable line per case and stage:
 *   RESULT name=train case=demo stage=src_fwd ms=12.3 pct=10.5 iters=20
 * (stage=total for the whole iteration). Exit status 0, 1 on an error, 2 on a bad option. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "cluda/config.h"
#include "cluda/trainer.h"

/* OpenBLAS extensions (the build requires BLA_VENDOR OpenBLAS); see bench_ops.c. */
extern void openblas_set_num_threads(int num_threads);
extern char *openblas_get_config(void);
extern char *openblas_get_corename(void);

enum { NUM_CASES = 2 };

typedef struct options {
  const char *config;
  int iters, warmup; /* -1: the case's default */
  int threads;
  int quick;
  const char *only; /* NULL: both cases */
} options;

typedef struct bench_case {
  const char *name;
  const char *const *sets; /* config overrides, NULL-terminated */
  int iters, warmup;       /* defaults */
} bench_case;

static const char *const DEMO_SETS[] = {NULL};
static const char *const B0_SETS[] = {"model.encoder=b0",
                                      "model.embed_dims=512",
                                      "model.channels=256",
                                      "train.crop=[256, 256]",
                                      "data.size=[320, 320]",
                                      "cl.size=[64, 64]",
                                      NULL};
static const bench_case CASES[NUM_CASES] = {{"demo", DEMO_SETS, 20, 3}, {"b0", B0_SETS, 5, 1}};

static void usage(FILE *f) {
  fprintf(f, "usage: bench_train [options]\n"
             "  --config PATH  base config (default configs/demo.yaml)\n"
             "  --case NAME    only `demo` or `b0` (default both)\n"
             "  --iters N      timed iterations per case (default demo 20, b0 5)\n"
             "  --warmup N     untimed iterations first (default demo 3, b0 1)\n"
             "  --threads N    OpenMP and OpenBLAS threads (default $OMP_NUM_THREADS, else 2)\n"
             "  --quick        iters 3, warmup 1\n"
             "  --help         this text\n");
}

/* 0: ok, 1: --help, 2: bad option */
static int parse_options(int argc, char **argv, options *o) {
  *o = (options){"configs/demo.yaml", -1, -1, 0, 0, NULL};
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!strcmp(a, "--help") || !strcmp(a, "-h")) return 1;
    if (!strcmp(a, "--quick")) {
      o->quick = 1;
      continue;
    }
    if (!v) {
      fprintf(stderr, "bench_train: unknown option or missing value: %s\n", a);
      return 2;
    }
    int ok = 1;
    if (!strcmp(a, "--config"))
      o->config = v;
    else if (!strcmp(a, "--case")) {
      o->only = v;
      ok = !strcmp(v, "demo") || !strcmp(v, "b0");
    } else if (!strcmp(a, "--iters"))
      ok = parse_int(v, 1, &o->iters);
    else if (!strcmp(a, "--warmup"))
      ok = parse_int(v, 0, &o->warmup);
    else if (!strcmp(a, "--threads"))
      ok = parse_int(v, 1, &o->threads);
    else {
      fprintf(stderr, "bench_train: unknown option: %s\n", a);
      return 2;
    }
    if (!ok) {
      fprintf(stderr, "bench_train: bad value for %s: %s\n", a, v);
      return 2;
    }
    i++;
  }
  return 0;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static cluda_status load_settings(const options *o, const bench_case *c, int64_t max_iters,
                                  cluda_train_settings *s, cluda_segmentor_config *mc) {
  cluda_config cfg;
  CLUDA_TRY(cluda_config_init(&cfg));
  cluda_status st = cluda_config_load_file(&cfg, o->config);
  for (int i = 0; st.code == CLUDA_OK && c->sets[i]; i++)
    st = cluda_config_set(&cfg, c->sets[i]);
  char buf[64];
  snprintf(buf, sizeof buf, "train.max_iters=%lld", (long long)max_iters);
  if (st.code == CLUDA_OK) st = cluda_config_set(&cfg, buf);
  if (st.code == CLUDA_OK) st = cluda_train_settings_from_config(&cfg, s);
  if (st.code == CLUDA_OK) st = cluda_config_to_segmentor_config(&cfg, mc);
  cluda_config_free(&cfg);
  return st;
}

static cluda_status run_case(const options *o, const bench_case *c) {
  int iters = o->iters > 0 ? o->iters : o->quick ? 3 : c->iters;
  int warmup = o->warmup >= 0 ? o->warmup : o->quick ? 1 : c->warmup;
  cluda_train_settings s;
  cluda_segmentor_config mc;
  CLUDA_TRY(load_settings(o, c, (int64_t)iters + warmup, &s, &mc));
  cluda_trainer t;
  double t0 = now_s();
  CLUDA_TRY(cluda_trainer_init(&t, &s, &mc, NULL));
  double setup = now_s() - t0;
  printf("\n== case %s: %s encoder, E = %d, Cf = %d, %zu parameters, batch %d+%d, crop %dx%d, "
         "data %dx%d, CL %dx%d%s%s%s, FD %s (setup %.1f s)\n",
         c->name, mc.encoder_name, mc.head.embed_dims, mc.head.channels,
         cluda_param_table_elements(&t.model.params), s.batch, s.uda ? s.batch : 0, s.crop_h,
         s.crop_w, s.source_data.height, s.source_data.width, s.cl_h, s.cl_w,
         s.cl_source ? " source" : "", s.cl_mix ? " mixed" : "",
         s.cl_source || s.cl_mix ? "" : " off", s.fd_lambda > 0 ? "on" : "off", setup);
  printf("   %d warm-up + %d timed iterations\n", warmup, iters);
  fflush(stdout);

  double *per = calloc((size_t)iters * CLUDA_TRAIN_STAGES, sizeof(double));
  double *total = calloc((size_t)iters, sizeof(double));
  double *other = calloc((size_t)iters, sizeof(double));
  double *col = calloc((size_t)iters, sizeof(double));
  cluda_status st = cluda_ok();
  if (!per || !total || !other || !col) st = CLUDA_FAIL(CLUDA_ERR_ALLOC, "out of memory");
  double acc[CLUDA_TRAIN_STAGES];
  for (int i = 0; st.code == CLUDA_OK && i < warmup + iters; i++) {
    memset(acc, 0, sizeof acc);
    t.stage_seconds = acc;
    cluda_step_stats stats;
    double a = now_s();
    st = cluda_trainer_step(&t, &stats);
    double dt = now_s() - a;
    if (st.code != CLUDA_OK || i < warmup) continue;
    int k = i - warmup;
    double sum = 0;
    for (int j = 0; j < CLUDA_TRAIN_STAGES; j++) {
      per[(size_t)k * CLUDA_TRAIN_STAGES + (size_t)j] = acc[j];
      sum += acc[j];
    }
    total[k] = dt;
    other[k] = dt - sum;
  }
  t.stage_seconds = NULL;
  if (st.code == CLUDA_OK) {
    double tot = median(total, iters);
    double load = load_average();
    printf("   %-10s %10s %7s\n", "stage", "ms", "%");
    double cl = 0, stage_ms[CLUDA_TRAIN_STAGES];
    for (int j = 0; j < CLUDA_TRAIN_STAGES; j++) {
      for (int k = 0; k < iters; k++)
        col[k] = per[(size_t)k * CLUDA_TRAIN_STAGES + (size_t)j];
      stage_ms[j] = 1e3 * median(col, iters);
      if (j == CLUDA_STAGE_CL_SRC || j == CLUDA_STAGE_CL_MIX) cl += stage_ms[j];
      printf("   %-10s %10.1f %7.1f\n", cluda_train_stage_name(j), stage_ms[j],
             100 * stage_ms[j] / (1e3 * tot));
    }
    double oth = 1e3 * median(other, iters);
    printf("   %-10s %10.1f %7.1f\n", "other", oth, 100 * oth / (1e3 * tot));
    printf("   %-10s %10.1f %7.1f   (median iteration; min %.1f, max %.1f)\n", "total", 1e3 * tot,
           100.0, 1e3 * total[0], 1e3 * total[iters - 1]);
    printf("   %-10s %10.1f %7.1f   (cl_src + cl_mix)\n", "all CL", cl, 100 * cl / (1e3 * tot));
    printf("   load average %.2f\n", load);
    for (int j = 0; j < CLUDA_TRAIN_STAGES; j++)
      printf("RESULT name=train case=%s stage=%s ms=%.2f pct=%.2f iters=%d\n", c->name,
             cluda_train_stage_name(j), stage_ms[j], 100 * stage_ms[j] / (1e3 * tot), iters);
    printf("RESULT name=train case=%s stage=other ms=%.2f pct=%.2f iters=%d\n", c->name, oth,
           100 * oth / (1e3 * tot), iters);
    printf("RESULT name=train case=%s stage=total ms=%.2f pct=100.00 iters=%d load=%.2f\n", c->name,
           1e3 * tot, iters, load);
    fflush(stdout);
  }
  free(per);
  free(total);
  free(other);
  free(col);
  cluda_trainer_free(&t);
  return st;
}

int main(int argc, char **argv) {
  options o;
  int p = parse_options(argc, argv, &o);
  if (p == 1) {
    usage(stdout);
    return 0;
  }
  if (p == 2) {
    usage(stderr);
    return 2;
  }
  setup_threads(o.threads);
  printf("bench_train: config %s, %d OpenMP threads, OpenBLAS %s (core %s), load average %.2f\n",
         o.config, omp_get_max_threads(), openblas_get_config(), openblas_get_corename(),
         load_average());
  for (int i = 0; i < NUM_CASES; i++) {
    if (o.only && strcmp(o.only, CASES[i].name)) continue;
    cluda_status st = run_case(&o, &CASES[i]);
    if (st.code != CLUDA_OK) {
      fprintf(stderr, "bench_train: case %s: %s\n", CASES[i].name, st.message);
      return 1;
    }
  }
  return 0;
}

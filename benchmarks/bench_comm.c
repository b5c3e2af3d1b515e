/* Communication of one data-parallel training step (shared/spec/systems.md 2.4, 2.6;
 * docs/distributed.md).
 *
 * (a) The cost model: bytes each rank sends (= receives) per step with ring algorithms, the
 *     bus-bandwidth convention of nccl-tests: all-gather and reduce-scatter move (W-1)/W of the
 *     gathered size, all-reduce 2(W-1)/W of the buffer; for W in {1, 2, 4, 8, 16}, the CLUDA
 *     and demo contrast sizes, fp32 and bf16, and the gradient all-reduce of four models.
 * (b) Measured times of the MPI backend (comm/comm_mpi.c, host buffers) at the demo and
 *     CLUDA sizes, when run under mpirun: per collective `--warmup` untimed runs, then
 *     `--repeats` timed ones, each started after a barrier and timed as the slowest rank's;
 *     the median (and the minimum) is reported.
 *
 *   bench_comm [--model-only] [--case demo|cluda|all] [--repeats N] [--warmup N] [--quick]
 *   mpirun -np 4 --oversubscribe build/bin/bench_comm
 *
 * Exit status 0, 1 on an error, 2 on a bad option. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "cluda/comm_mpi.h"

/* A contrast setting: b images of P pixels per rank, D dims, and the model's parameters. */
typedef struct bench_case {
  const char *name;
  int images, height, width, dims;
  int64_t params;
  const char *model;
} bench_case;

/* Parameter counts: MiT-B5 + DAFormer head (E = 256), shared/spec/model.md 3; the demo's
 * MiT-tiny + DAFormer-tiny head (E = 64, Cf = 64), as cluda_train prints for
 * configs/demo.yaml. Contrast sizes: CLUDA's 65 x 65 map; the demo's 32 x 32 (cl.size). */
static const bench_case cases[] = {
    {"cluda", 2, 65, 65, 256, 85155000, "MiT-B5 + DAFormer head"},
    {"demo", 2, 32, 32, 64, 985907, "MiT-tiny + tiny head (configs/demo.yaml)"},
};
enum { NCASES = sizeof cases / sizeof cases[0] };

/* Further models for the gradient all-reduce table: cluda's MiT-B0 + DAFormer head (E = 256,
 * bench_model's count) and SegFormer-B0 (MiT-B0 + all-MLP head, model.md 1.6). */
static const struct {
  const char *name;
  int64_t params;
} extra_models[] = {{"MiT-B0 + DAFormer head", 6900595}, {"SegFormer-B0", 3750000}};

static const int model_ranks[] = {1, 2, 4, 8, 16};
enum { NRANKS = sizeof model_ranks / sizeof model_ranks[0] };

static double ring(int w) { return (double)(w - 1) / (double)w; }
static double mb(double bytes) { return bytes / 1e6; }

static void print_cost_model(void) {
  printf("== (a) cost model: MB (1e6 bytes) sent per rank; ring factors (W-1)/W for all-gather "
         "and reduce-scatter, 2(W-1)/W for all-reduce ==\n\n");
  for (int c = 0; c < NCASES; c++) {
    const bench_case *k = &cases[c];
    const int64_t n = (int64_t)k->images * k->height * k->width;
    printf("contrast term, case %s: n = %d x %d x %d = %lld anchors per rank, D = %d; each CL "
           "term (source, mixed: 2 per step) gathers and reduce-scatters once\n",
           k->name, k->images, k->height, k->width, (long long)n, k->dims);
    printf("%4s %9s | %12s %12s | %14s %14s | %12s %12s | %12s %12s\n", "W", "N = W n",
           "emb AG fp32", "emb AG bf16", "lbl+w AG fp32", "lbl+w AG bf16", "dX RS fp32",
           "dX RS bf16", "term fp32", "term bf16");
    for (int r = 0; r < NRANKS; r++) {
      const int w = model_ranks[r];
      const double gathered = (double)w * (double)n; /* rows in the gathered set */
      double emb[2], lw[2], rs[2];
      for (int s = 0; s < 2; s++) {
        const double es = s == 0 ? 4.0 : 2.0;
        emb[s] = ring(w) * gathered * k->dims * es;
        lw[s] = ring(w) * gathered * (1.0 + es); /* u8 labels + weights */
        rs[s] = emb[s];
      }
      printf("%4d %9.0f | %12.3f %12.3f | %14.3f %14.3f | %12.3f %12.3f | %12.3f %12.3f\n", w,
             gathered, mb(emb[0]), mb(emb[1]), mb(lw[0]), mb(lw[1]), mb(rs[0]), mb(rs[1]),
             mb(emb[0] + lw[0] + rs[0]), mb(emb[1] + lw[1] + rs[1]));
    }
    printf("\n");
  }

  printf("gradient all-reduce (once per step): MB sent per rank = 2(W-1)/W x params x bytes\n");
  printf("%4s", "W");
  for (int c = 0; c < NCASES; c++)
    printf(" | %10.2fM fp32 %8s", (double)cases[c].params / 1e6, "bf16");
  for (size_t m = 0; m < sizeof extra_models / sizeof extra_models[0]; m++)
    printf(" | %10.2fM fp32 %8s", (double)extra_models[m].params / 1e6, "bf16");
  printf("\n");
  for (int r = 0; r < NRANKS; r++) {
    const int w = model_ranks[r];
    printf("%4d", w);
    for (int c = 0; c < NCASES; c++)
      printf(" | %16.2f %8.2f", mb(2 * ring(w) * (double)cases[c].params * 4),
             mb(2 * ring(w) * (double)cases[c].params * 2));
    for (size_t m = 0; m < sizeof extra_models / sizeof extra_models[0]; m++)
      printf(" | %16.2f %8.2f", mb(2 * ring(w) * (double)extra_models[m].params * 4),
             mb(2 * ring(w) * (double)extra_models[m].params * 2));
    printf("\n");
  }
  printf("models: ");
  for (int c = 0; c < NCASES; c++)
    printf("%.2fM = %s; ", (double)cases[c].params / 1e6, cases[c].model);
  for (size_t m = 0; m < sizeof extra_models / sizeof extra_models[0]; m++)
    printf("%.2fM = %s%s", (double)extra_models[m].params / 1e6, extra_models[m].name,
           m + 1 < sizeof extra_models / sizeof extra_models[0] ? "; " : "\n");
  printf("scalars per step: ~5 small all-reduces (FD cell count, Gamma counts, present classes "
         "256 B, 6 logged losses) < 1 KB: latency, not bandwidth;\nthe replica check every "
         "log interval all-gathers one 64-bit fingerprint per state array.\n\n");
}

/* ---- (b) measurements ---- */

typedef enum kind { ALLGATHER, REDUCE_SCATTER, ALLREDUCE, RAW_ALLREDUCE, REPLICA_CHECK } kind;

typedef struct item {
  const char *name;
  kind what;
  cluda_comm_dtype dt;
  size_t count;     /* per rank (all-gather, reduce-scatter), else the buffer */
  cluda_comm_op op; /* all-reduce */
} item;

typedef struct bench {
  cluda_comm comm;
  int repeats, warmup;
  void *send, *recv; /* send: the same bytes on every rank (the replica check passes) */
} bench;

static cluda_status run_once(bench *b, const item *it) {
  switch (it->what) {
  case ALLGATHER: return cluda_comm_allgather(&b->comm, b->send, b->recv, it->count, it->dt);
  case REDUCE_SCATTER:
    return cluda_comm_reduce_scatter(&b->comm, b->send, b->recv, it->count, it->dt);
  case ALLREDUCE:
    return cluda_comm_allreduce(&b->comm, b->recv, b->recv, it->count, it->dt, it->op);
  case RAW_ALLREDUCE: {
    /* plain MPI, for the price of the backend's reduce-once (bit-identical) all-reduce */
    int err =
        MPI_Allreduce(MPI_IN_PLACE, b->recv, (int)it->count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    return err == MPI_SUCCESS ? cluda_ok() : CLUDA_FAIL(CLUDA_ERR_COMM, "MPI_Allreduce failed");
  }
  default:
    return cluda_comm_check_replicated(&b->comm, b->send, it->count * cluda_comm_dtype_size(it->dt),
                                       "bench state");
  }
}

/* Bytes of the operation's full buffer (the gathered set for all-gather / reduce-scatter) and
 * the ring factor that turns it into bytes sent per rank. */
static void traffic(const item *it, int w, double *full, double *factor) {
  const double es = (double)cluda_comm_dtype_size(it->dt);
  *full = (double)it->count * es;
  *factor = 2 * ring(w);
  if (it->what == ALLGATHER || it->what == REDUCE_SCATTER) {
    *full *= w;
    *factor = ring(w);
  } else if (it->what == REPLICA_CHECK) {
    *factor = 0; /* hashes the buffer locally; sends 8 bytes */
  }
}

static int measure(bench *b, const char *case_name, const item *it) {
  const int w = b->comm.size;
  double *t = malloc((size_t)b->repeats * sizeof *t);
  if (!t) return 1;
  for (int r = -b->warmup; r < b->repeats; r++) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = now_s();
    cluda_status s = run_once(b, it);
    double dt = now_s() - t0;
    if (s.code != CLUDA_OK) {
      fprintf(stderr, "bench_comm: %s: %s\n", it->name, s.message);
      free(t);
      return 1;
    }
    MPI_Allreduce(MPI_IN_PLACE, &dt, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (r >= 0) t[r] = dt;
  }
  qsort(t, (size_t)b->repeats, sizeof *t, cmp_double);
  const double median = t[b->repeats / 2], best = t[0];
  double full, factor;
  traffic(it, w, &full, &factor);
  const double busbw = median > 0 ? full * factor / median / 1e9 : 0;
  if (b->comm.rank == 0) {
    printf("%-6s %-30s %-4s %12zu %10.3f %10.3f %10.3f %9.3f\n", case_name, it->name,
           cluda_comm_dtype_name(it->dt), it->count, mb(full), median * 1e3, best * 1e3, busbw);
    printf("RESULT name=%s case=%s ranks=%d dtype=%s count=%zu mb=%.4f ms=%.4f min_ms=%.4f "
           "busbw_gbs=%.4f runs=%d\n",
           it->name, case_name, w, cluda_comm_dtype_name(it->dt), it->count, mb(full), median * 1e3,
           best * 1e3, busbw, b->repeats);
  }
  free(t);
  return 0;
}

static int measure_case(bench *b, const bench_case *k) {
  const size_t n = (size_t)k->images * k->height * k->width, nd = n * (size_t)k->dims;
  const item items[] = {
      {"embedding all-gather", ALLGATHER, CLUDA_COMM_F32, nd, CLUDA_COMM_SUM},
      {"label all-gather", ALLGATHER, CLUDA_COMM_U8, n, CLUDA_COMM_SUM},
      {"weight all-gather", ALLGATHER, CLUDA_COMM_F32, n, CLUDA_COMM_SUM},
      {"embedding-grad reduce-scatter", REDUCE_SCATTER, CLUDA_COMM_F32, nd, CLUDA_COMM_SUM},
      {"gradient all-reduce (avg)", ALLREDUCE, CLUDA_COMM_F32, (size_t)k->params, CLUDA_COMM_AVG},
      {"gradient MPI_Allreduce (raw)", RAW_ALLREDUCE, CLUDA_COMM_F32, (size_t)k->params,
       CLUDA_COMM_SUM},
      {"scalars all-reduce (6 x f64)", ALLREDUCE, CLUDA_COMM_F64, 6, CLUDA_COMM_AVG},
      {"replica check (params)", REPLICA_CHECK, CLUDA_COMM_F32, (size_t)k->params, CLUDA_COMM_SUM},
  };
  for (size_t i = 0; i < sizeof items / sizeof items[0]; i++)
    if (measure(b, k->name, &items[i])) return 1;
  return 0;
}

static int usage(void) {
  fprintf(stderr, "usage: bench_comm [--model-only] [--case demo|cluda|all] [--repeats N] "
                  "[--warmup N] [--quick]\n");
  return 2;
}

int main(int argc, char **argv) {
  int model_only = 0, repeats = 20, warmup = 3;
  const char *which = "all";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!strcmp(a, "--model-only")) {
      model_only = 1;
    } else if (!strcmp(a, "--quick")) {
      repeats = 5, warmup = 1, which = "demo";
    } else if (!strcmp(a, "--case") && i + 1 < argc) {
      which = argv[++i];
      if (strcmp(which, "demo") && strcmp(which, "cluda") && strcmp(which, "all")) return usage();
    } else if (!strcmp(a, "--repeats") && i + 1 < argc) {
      if (!parse_int(argv[++i], 1, &repeats)) return usage();
    } else if (!strcmp(a, "--warmup") && i + 1 < argc) {
      if (!parse_int(argv[++i], 0, &warmup)) return usage();
    } else {
      return usage();
    }
  }
  if (model_only) {
    print_cost_model();
    return 0;
  }

  bench b = {.repeats = repeats, .warmup = warmup};
  cluda_status s = cluda_comm_mpi_init(&b.comm, &argc, &argv);
  if (s.code != CLUDA_OK) {
    fprintf(stderr, "bench_comm: %s\n", s.message);
    return 1;
  }
  const int w = b.comm.size;
  if (b.comm.rank == 0) {
    print_cost_model();
    int major = 0, minor = 0, len = 0;
    char lib[MPI_MAX_LIBRARY_VERSION_STRING];
    MPI_Get_version(&major, &minor);
    MPI_Get_library_version(lib, &len);
    lib[strcspn(lib, ",\n")] = '\0';
    printf("== (b) measured: MPI backend, %d rank(s), %s (MPI %d.%d), median of %d after %d "
           "warm-up, load average %.2f ==\n",
           w, lib, major, minor, repeats, warmup, load_average());
    if (w == 1) printf("(one rank: every collective is a local copy; run under mpirun -np 2/4)\n");
    printf("%-6s %-30s %-4s %12s %10s %10s %10s %9s\n", "case", "collective", "type", "count",
           "full MB", "median ms", "min ms", "busbw GB/s");
  }
  /* the largest buffer: the CLUDA gradients, or W x the embeddings */
  size_t cap = 0;
  for (int c = 0; c < NCASES; c++) {
    const size_t n = (size_t)cases[c].images * cases[c].height * cases[c].width;
    const size_t g = (size_t)cases[c].params * sizeof(float);
    const size_t e = (size_t)w * n * (size_t)cases[c].dims * sizeof(float);
    if (strcmp(which, "all") && strcmp(which, cases[c].name)) continue;
    cap = g > cap ? g : cap;
    cap = e > cap ? e : cap;
  }
  b.send = malloc(cap);
  b.recv = malloc(cap);
  int rc = !b.send || !b.recv;
  if (rc) fprintf(stderr, "bench_comm: out of memory for 2 x %zu bytes\n", cap);
  if (!rc) {
    /* random finite values: no zero or denormal fast paths */
    fill_uniform(b.send, (int64_t)(cap / sizeof(float)), 1.0f, 0);
    fill_uniform(b.recv, (int64_t)(cap / sizeof(float)), 1.0f, 1u + (uint32_t)b.comm.rank);
  }
  for (int c = 0; c < NCASES && !rc; c++)
    if (!strcmp(which, "all") || !strcmp(which, cases[c].name)) rc = measure_case(&b, &cases[c]);
  free(b.send);
  free(b.recv);
  MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  cluda_comm_finalize(&b.comm);
  return rc;
}

/* AdamW + teacher EMA (+ the gradient's sum of squares) in one pass over the flat parameter
 * buffer on the GPU; semantics of include/cluda/optim.h (cluda_adamw_step, cluda_ema_update,
 * cluda_grad_norm), declared in include/cluda/cuda.h.
 *
 * Metadata (cluda_cuda_optim, built once per parameter table): the table's entries cut into
 * spans of at most kSpan consecutive elements that never cross an entry, uploaded as an array
 * of
 *     struct { uint64_t offset;  flat index of the span's first element
 *              uint32_t count;   elements, 1..kSpan
 *              uint32_t flags; } bit 0: HEAD group (lr group_lr[1], else group_lr[0]),
 *                                bit 1: no_decay
 * (16 bytes per span, about 4 bytes per 1000 parameters). One block updates one span
 * (grid-stride over spans), its threads striding over the span's elements, so reads and
 * writes are coalesced and padding between entries is never touched. The per-span double sum
 * of squares goes to partials[span]; a one-block kernel adds the partials in span order with a
 * fixed tree. Spans depend only on the table, so the norm is bitwise reproducible on any GPU.
 *
 * Arithmetic: the CPU's adamw_span operation for operation. The per-entry scalars are formed
 * on the host in double exactly as cluda_adamw_step does and rounded to float; each float
 * operation is an explicit round-to-nearest intrinsic (__fmul_rn, __fadd_rn, __fdiv_rn,
 * __fsqrt_rn) so that nvcc cannot contract a multiply and an add into an FMA the CPU does not
 * do, and the m and v updates round an exact double product plus a double add once to float,
 * as the CPU does. The EMA is fa teacher + fb student with two rounded products and a rounded
 * sum, as cluda_ema_update. Results are therefore expected to equal the CPU's bit for bit.
 *
 * Order of the fused step. The trainer (src/train/trainer.c) runs, for iteration it:
 *   EMA(teacher, student, it)  ->  forwards/backwards  ->  grad norm  ->  AdamW(it)
 * so the EMA of iteration it + 1 reads the student that AdamW(it) has just written, and nothing
 * reads the teacher between AdamW(it) and that EMA. The fused kernel therefore applies
 * AdamW(it) and then, per element and from the freshly updated parameter, the EMA that OPENS
 * iteration it + 1 (ema_t = it + 1): the same sequence of values, with one pass over memory
 * instead of two. The caller keeps the boundary cases unfused: cluda_cuda_ema_update for the
 * copy at iteration 0 (and after loading a checkpoint), and teacher = NULL on an iteration
 * after which the teacher is read before the next iteration starts (a checkpoint written at
 * that boundary stores the teacher of EMA(it), not EMA(it + 1); the last iteration has no
 * next EMA); the next iteration then opens with cluda_cuda_ema_update as on the CPU. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cluda/optim.h"
#include "ops/kernel_common.cuh"

using namespace cluda_kernels;

namespace {

constexpr int kSpan = 4096;       /* elements per span: 16 per thread of a 256-thread block */
constexpr int kOptimBlock = 256;  /* threads per span block (power of two) */
constexpr int kFinalBlock = 1024; /* the one block of the partial-sum reduction */

enum : uint32_t { kFlagHead = 1u, kFlagNoDecay = 2u };

} // namespace

/* One span of the metadata (outside the anonymous namespace: cluda_cuda_optim, which has
 * external linkage, holds a pointer to it). */
struct cluda_cuda_optim_span {
  uint64_t offset;
  uint32_t count;
  uint32_t flags;
};
typedef cluda_cuda_optim_span Span;

namespace {

/* Per-group float scalars of one step (the CPU's adamw_span_args per group). */
struct StepScalars {
  float decay[CLUDA_OPTIM_GROUPS];     /* 1 - lr wd, or 1 without decay */
  float step_size[CLUDA_OPTIM_GROUPS]; /* -lr / (1 - beta1^t) */
  float w1, b2, w2, bc2, eps;
  float grad_scale;   /* clipping coefficient, or 1 */
  float ema_a, ema_b; /* teacher = a teacher + b student */
  int ema_copy;       /* ema_t == 0: teacher = student */
};

/* Block-wide sum in a fixed tree; every thread must call it. Returns the sum in thread 0. */
__device__ double block_sum(double v, double *sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half >>= 1) {
    if ((int)threadIdx.x < half) sh[threadIdx.x] += sh[threadIdx.x + half];
    __syncthreads();
  }
  const double total = sh[0];
  __syncthreads(); /* sh is reused by the next span */
  return total;
}

/* AdamW (+ EMA) over every span; partials[span] = sum of squares of the raw gradients of the
 * span (NULL: not wanted). teacher NULL: no EMA. */
__global__ void __launch_bounds__(kOptimBlock)
    adamw_ema_kernel(const Span *spans, int64_t nspans, StepScalars sc, float *params,
                     const float *grads, float *m, float *v, float *teacher, double *partials) {
  __shared__ double sh[kOptimBlock];
  for (int64_t sidx = blockIdx.x; sidx < nspans; sidx += gridDim.x) {
    const Span sp = spans[sidx];
    const int g = (sp.flags & kFlagHead) ? 1 : 0;
    const float decay = (sp.flags & kFlagNoDecay) ? 1.0f : sc.decay[g];
    const float step_size = sc.step_size[g];
    double sq = 0.0;
    for (uint32_t k = threadIdx.x; k < sp.count; k += kOptimBlock) {
      const uint64_t i = sp.offset + k;
      const float graw = grads[i];
      sq += (double)graw * (double)graw;
      const float gi = __fmul_rn(graw, sc.grad_scale); /* grads *= clip coefficient */
      const float mo = m[i], vo = v[i];
      const float pi = __fmul_rn(params[i], decay); /* param.mul_(1 - lr wd) */
      /* exp_avg.lerp_(grad, 1 - beta1): an exact double product plus one rounding */
      const float diff = __fsub_rn(gi, mo);
      const float mi = (float)__dadd_rn(__dmul_rn((double)sc.w1, (double)diff), (double)mo);
      /* exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2) */
      const float vb = __fmul_rn(vo, sc.b2);
      const float wg = __fmul_rn(sc.w2, gi);
      const float vi = (float)__dadd_rn(__dmul_rn((double)wg, (double)gi), (double)vb);
      /* p += step_size m / (sqrt(v) / bc2 + eps) */
      const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), sc.bc2), sc.eps);
      const float num = __fmul_rn(step_size, mi);
      const float pn = __fadd_rn(pi, __fdiv_rn(num, denom));
      params[i] = pn;
      m[i] = mi;
      v[i] = vi;
      if (teacher)
        teacher[i] =
            sc.ema_copy ? pn : __fadd_rn(__fmul_rn(sc.ema_a, teacher[i]), __fmul_rn(sc.ema_b, pn));
    }
    if (partials) {
      const double total = block_sum(sq, sh);
      if (threadIdx.x == 0) partials[sidx] = total;
    }
  }
}

/* partials[span] = sum of squares of the span's gradients. */
__global__ void __launch_bounds__(kOptimBlock)
    sumsq_kernel(const Span *spans, int64_t nspans, const float *grads, double *partials) {
  __shared__ double sh[kOptimBlock];
  for (int64_t sidx = blockIdx.x; sidx < nspans; sidx += gridDim.x) {
    const Span sp = spans[sidx];
    double sq = 0.0;
    for (uint32_t k = threadIdx.x; k < sp.count; k += kOptimBlock) {
      const double x = grads[sp.offset + k];
      sq += x * x;
    }
    const double total = block_sum(sq, sh);
    if (threadIdx.x == 0) partials[sidx] = total;
  }
}

/* *out = sum of partials[0 .. n) (each thread a fixed strided set, then a fixed tree). */
__global__ void __launch_bounds__(kFinalBlock)
    partials_sum_kernel(const double *partials, int64_t n, double *out) {
  __shared__ double sh[kFinalBlock];
  double t = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kFinalBlock)
    t += partials[i];
  const double total = block_sum(t, sh);
  if (threadIdx.x == 0) *out = total;
}

/* The EMA alone: teacher = copy ? student : a teacher + b student. */
__global__ void __launch_bounds__(kOptimBlock)
    ema_kernel(const Span *spans, int64_t nspans, float a, float b, int copy, float *teacher,
               const float *student) {
  for (int64_t sidx = blockIdx.x; sidx < nspans; sidx += gridDim.x) {
    const Span sp = spans[sidx];
    for (uint32_t k = threadIdx.x; k < sp.count; k += kOptimBlock) {
      const uint64_t i = sp.offset + k;
      const float s = student[i];
      teacher[i] = copy ? s : __fadd_rn(__fmul_rn(a, teacher[i]), __fmul_rn(b, s));
    }
  }
}

} // namespace

/* The device metadata of one parameter table (see the top of this file). */
struct cluda_cuda_optim {
  size_t total;        /* floats of the flat buffer, padding included */
  int entries;         /* table->count */
  uint64_t table_hash; /* cluda_param_table_hash of the table */
  int64_t nspans;
  Span *spans;      /* device [nspans] */
  double *partials; /* device [nspans + 1]: per-span sums, then the total */
};

extern "C" void cluda_cuda_optim_destroy(cluda_cuda_optim *o) {
  if (!o) return;
  cluda_cuda_free(o->spans);
  cluda_cuda_free(o->partials);
  free(o);
}

extern "C" cluda_status cluda_cuda_optim_create(cluda_ctx *ctx, const cluda_param_table *table,
                                                cluda_cuda_optim **out) {
  static const char op[] = "cuda_optim_create";
  CLUDA_REQUIRE(out != NULL, CLUDA_ERR_ARG, "%s: out is NULL", op);
  *out = NULL;
  CLUDA_REQUIRE(cluda_cuda_context_is_cuda(ctx), CLUDA_ERR_ARG, "%s: not a CUDA context", op);
  CLUDA_REQUIRE(table != NULL && table->count > 0 && table->items != NULL, CLUDA_ERR_ARG,
                "%s: the parameter table is NULL or empty", op);
  int64_t nspans = 0;
  for (int e = 0; e < table->count; e++) {
    const cluda_param_info *p = &table->items[e];
    CLUDA_REQUIRE(p->offset + p->count <= table->total, CLUDA_ERR_ARG,
                  "%s: entry %s [%zu, +%zu) lies outside the %zu floats of the table", op, p->name,
                  p->offset, p->count, table->total);
    nspans += (int64_t)((p->count + kSpan - 1) / kSpan);
  }
  Span *host = (Span *)calloc((size_t)(nspans > 0 ? nspans : 1), sizeof(Span));
  cluda_cuda_optim *o = (cluda_cuda_optim *)calloc(1, sizeof *o);
  if (!host || !o) {
    free(host);
    free(o);
    return CLUDA_FAIL(CLUDA_ERR_ALLOC, "%s: out of host memory for %lld spans", op,
                      (long long)nspans);
  }
  int64_t n = 0;
  for (int e = 0; e < table->count; e++) {
    const cluda_param_info *p = &table->items[e];
    const uint32_t flags =
        (p->group == CLUDA_GROUP_HEAD ? kFlagHead : 0u) | (p->no_decay ? kFlagNoDecay : 0u);
    for (size_t at = 0; at < p->count; at += kSpan) {
      host[n].offset = (uint64_t)(p->offset + at);
      host[n].count = (uint32_t)(p->count - at < (size_t)kSpan ? p->count - at : (size_t)kSpan);
      host[n].flags = flags;
      n++;
    }
  }
  o->total = table->total;
  o->entries = table->count;
  o->table_hash = cluda_param_table_hash(table);
  o->nspans = nspans;
  cluda_status s =
      cluda_cuda_malloc((size_t)(nspans > 0 ? nspans : 1) * sizeof(Span), (void **)&o->spans);
  if (s.code == CLUDA_OK)
    s = cluda_cuda_malloc((size_t)(nspans + 1) * sizeof(double), (void **)&o->partials);
  if (s.code == CLUDA_OK && nspans > 0)
    s = cluda_cuda_upload(ctx, o->spans, host, (size_t)nspans * sizeof(Span));
  free(host);
  if (s.code != CLUDA_OK) {
    cluda_cuda_optim_destroy(o);
    return s;
  }
  *out = o;
  return cluda_ok();
}

namespace {

cluda_status check_meta(const char *op, cluda_ctx *ctx, const cluda_cuda_optim *meta) {
  CLUDA_REQUIRE(cluda_cuda_context_is_cuda(ctx), CLUDA_ERR_ARG, "%s: not a CUDA context", op);
  CLUDA_REQUIRE(meta != NULL, CLUDA_ERR_ARG, "%s: the optimizer metadata is NULL", op);
  return cluda_ok();
}

unsigned span_grid(const cluda_cuda_device *d, int64_t nspans) {
  return grid_size(nspans, 1, fill_cap(d) / 2);
}

/* Sums the partials on the device and reads the total (waits for the stream). */
cluda_status read_sum(const char *op, cluda_cuda_device *d, const cluda_cuda_optim *meta,
                      double *sum) {
  partials_sum_kernel<<<1, kFinalBlock, 0, d->stream>>>(meta->partials, meta->nspans,
                                                        meta->partials + meta->nspans);
  CLUDA_CUDA_CHECK_LAUNCH(op, "partials_sum_kernel");
  CLUDA_CUDA_TRY(cudaMemcpyAsync(sum, meta->partials + meta->nspans, sizeof *sum,
                                 cudaMemcpyDeviceToHost, d->stream));
  CLUDA_CUDA_TRY(cudaStreamSynchronize(d->stream));
  return cluda_ok();
}

} // namespace

extern "C" cluda_status cluda_cuda_grad_norm(cluda_ctx *ctx, const cluda_cuda_optim *meta,
                                             const float *grads, double *norm) {
  static const char op[] = "cuda_grad_norm";
  CLUDA_TRY(check_meta(op, ctx, meta));
  CLUDA_REQUIRE(grads != NULL && norm != NULL, CLUDA_ERR_ARG, "%s: grads or norm is NULL", op);
  cluda_cuda_device *d = cluda_cuda_dev(ctx);
  if (meta->nspans == 0) {
    *norm = 0.0;
    return cluda_ok();
  }
  sumsq_kernel<<<span_grid(d, meta->nspans), kOptimBlock, 0, d->stream>>>(meta->spans, meta->nspans,
                                                                          grads, meta->partials);
  CLUDA_CUDA_CHECK_LAUNCH(op, "sumsq_kernel");
  double sum = 0.0;
  CLUDA_TRY(read_sum(op, d, meta, &sum));
  *norm = sqrt(sum);
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_adamw_ema_step(cluda_ctx *ctx, const cluda_cuda_optim *meta,
                                                  const cluda_adamw_config *config,
                                                  const double group_lr[CLUDA_OPTIM_GROUPS],
                                                  int64_t step, float grad_scale, float *params,
                                                  const float *grads, float *m, float *v,
                                                  float *teacher, int64_t ema_t, double ema_alpha,
                                                  double *grad_norm) {
  static const char op[] = "cuda_adamw_ema_step";
  CLUDA_TRY(check_meta(op, ctx, meta));
  CLUDA_REQUIRE(config != NULL && group_lr != NULL, CLUDA_ERR_ARG, "%s: config or group_lr is NULL",
                op);
  CLUDA_REQUIRE(params && grads && m && v, CLUDA_ERR_ARG, "%s: params, grads, m or v is NULL", op);
  CLUDA_REQUIRE((const float *)params != grads && params != m && params != v && m != v &&
                    (const float *)m != grads && (const float *)v != grads,
                CLUDA_ERR_ARG, "%s: params, grads, m and v must be distinct buffers", op);
  CLUDA_REQUIRE(!teacher || (teacher != params && (const float *)teacher != grads && teacher != m &&
                             teacher != v),
                CLUDA_ERR_ARG, "%s: teacher aliases params, grads, m or v", op);
  CLUDA_REQUIRE(step >= 1, CLUDA_ERR_ARG, "%s: step %lld must be >= 1 (opt->step + 1)", op,
                (long long)step);
  const cluda_adamw_config *c = config;
  CLUDA_REQUIRE(isfinite(c->beta1) && c->beta1 >= 0.0 && c->beta1 < 1.0 && isfinite(c->beta2) &&
                    c->beta2 >= 0.0 && c->beta2 < 1.0 && isfinite(c->eps) && c->eps > 0.0 &&
                    isfinite(c->weight_decay) && c->weight_decay >= 0.0,
                CLUDA_ERR_ARG,
                "%s: config beta1 %g, beta2 %g must be in [0, 1), eps %g > 0, weight_decay %g >= 0",
                op, c->beta1, c->beta2, c->eps, c->weight_decay);
  for (int g = 0; g < CLUDA_OPTIM_GROUPS; g++)
    CLUDA_REQUIRE(isfinite(group_lr[g]) && group_lr[g] >= 0.0, CLUDA_ERR_ARG,
                  "%s: lr of group %s is %g (must be finite and >= 0)", op,
                  g == CLUDA_GROUP_HEAD ? "head" : "encoder", group_lr[g]);
  CLUDA_REQUIRE(grad_scale >= 0.0f && grad_scale <= 1.0f, CLUDA_ERR_ARG,
                "%s: grad_scale %g must be in [0, 1]", op, (double)grad_scale);
  if (teacher) {
    CLUDA_REQUIRE(ema_t >= 0, CLUDA_ERR_ARG, "%s: ema iteration %lld must be >= 0", op,
                  (long long)ema_t);
    CLUDA_REQUIRE(ema_alpha >= 0.0 && ema_alpha <= 1.0, CLUDA_ERR_ARG,
                  "%s: ema alpha %g must be in [0, 1]", op, ema_alpha);
  }

  /* the scalars exactly as cluda_adamw_step and cluda_ema_update form them */
  StepScalars sc;
  memset(&sc, 0, sizeof sc);
  const double bc1 = 1.0 - pow(c->beta1, (double)step);
  const double bc2_sqrt = pow(1.0 - pow(c->beta2, (double)step), 0.5);
  for (int g = 0; g < CLUDA_OPTIM_GROUPS; g++) {
    const double decay = 1.0 - group_lr[g] * c->weight_decay;
    sc.decay[g] = c->weight_decay != 0.0 ? (float)decay : 1.0f; /* no_decay: 1 in the kernel */
    sc.step_size[g] = (float)(-(group_lr[g] / bc1));
  }
  sc.w1 = (float)(1.0 - c->beta1);
  sc.b2 = (float)c->beta2;
  sc.w2 = (float)(1.0 - c->beta2);
  sc.bc2 = (float)bc2_sqrt;
  sc.eps = (float)c->eps;
  sc.grad_scale = grad_scale;
  if (teacher) {
    const double a = cluda_ema_alpha(ema_t, ema_alpha);
    sc.ema_a = (float)a;
    sc.ema_b = (float)(1.0 - a);
    sc.ema_copy = ema_t == 0;
  }

  cluda_cuda_device *d = cluda_cuda_dev(ctx);
  if (meta->nspans == 0) {
    if (grad_norm) *grad_norm = 0.0;
    return cluda_ok();
  }
  adamw_ema_kernel<<<span_grid(d, meta->nspans), kOptimBlock, 0, d->stream>>>(
      meta->spans, meta->nspans, sc, params, grads, m, v, teacher,
      grad_norm ? meta->partials : NULL);
  CLUDA_CUDA_CHECK_LAUNCH(op, "adamw_ema_kernel");
  if (grad_norm) {
    double sum = 0.0;
    CLUDA_TRY(read_sum(op, d, meta, &sum));
    *grad_norm = sqrt(sum);
  }
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_ema_update(cluda_ctx *ctx, const cluda_cuda_optim *meta,
                                              float *teacher, const float *student, int64_t t,
                                              double alpha) {
  static const char op[] = "cuda_ema_update";
  CLUDA_TRY(check_meta(op, ctx, meta));
  CLUDA_REQUIRE(teacher != NULL && student != NULL, CLUDA_ERR_ARG, "%s: teacher or student is NULL",
                op);
  CLUDA_REQUIRE((const float *)teacher != student, CLUDA_ERR_ARG, "%s: teacher and student alias",
                op);
  CLUDA_REQUIRE(t >= 0, CLUDA_ERR_ARG, "%s: iteration %lld must be >= 0", op, (long long)t);
  CLUDA_REQUIRE(alpha >= 0.0 && alpha <= 1.0, CLUDA_ERR_ARG, "%s: alpha %g must be in [0, 1]", op,
                alpha);
  if (meta->nspans == 0) return cluda_ok();
  const double a = cluda_ema_alpha(t, alpha);
  cluda_cuda_device *d = cluda_cuda_dev(ctx);
  ema_kernel<<<span_grid(d, meta->nspans), kOptimBlock, 0, d->stream>>>(
      meta->spans, meta->nspans, (float)a, (float)(1.0 - a), t == 0, teacher, student);
  CLUDA_CUDA_CHECK_LAUNCH(op, "ema_kernel");
  return cluda_ok();
}

extern "C" cluda_status cluda_cuda_optim_check_table(const cluda_cuda_optim *meta,
                                                     const cluda_param_table *table) {
  CLUDA_REQUIRE(meta != NULL && table != NULL, CLUDA_ERR_ARG,
                "cuda_optim_check_table: meta or table is NULL");
  CLUDA_REQUIRE(table->total == meta->total && table->count == meta->entries &&
                    cluda_param_table_hash(table) == meta->table_hash,
                CLUDA_ERR_ARG,
                "cuda_optim_check_table: the parameter table (%d entries, %zu floats) is not the "
                "one the metadata was built from (%d entries, %zu floats)",
                table->count, table->total, meta->entries, meta->total);
  return cluda_ok();
}

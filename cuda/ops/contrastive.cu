/* The CLUDA pixel-contrastive loss on the GPU, streamed over column tiles exactly as the CPU
 * version in src/nn/contrastive.c (include/cluda/contrastive.h has the semantics, the gradient
 * and the meaning of stats [Ma, 4]); the Ma x Mc similarity matrix is never formed.
 *
 * Per tile of tile_cols contrast rows (the CPU's tile size, so that the running row maxima
 * and the scratch budget of cluda_contrastive_scratch_bytes are the same):
 *  - S_t = A C_t^T / tau by one cuBLAS GEMM (fp32 compute, no TF32) into a [Ma, tile] scratch
 *    block from the context arena;
 *  - forward pass 1 (one warp per anchor row): the tile's maximum over the row's negatives,
 *    the running max m_i and S_i = sum e^{s - m_i} in double, rescaled when m_i grows; after
 *    the last tile log S_i = m_i + log S_i (-inf without negatives);
 *  - forward pass 2: |P_i|, C_i = sum_p v_p sigmoid(log S_i - s_ip) and T_i = sum_p v_p
 *    softplus(...) in double;
 *  - backward: the tile becomes dL/ds in place (and, for d_contrast_weights, a second block
 *    gets beta_i u_i l_ip), then d_anchors (+)= dS C_t / tau and d_contrast[t] = dS^T A / tau
 *    (two GEMMs) and the column sums of the second block.
 * Row statistics live in a [Ma, 5] double block (m or log S, S, |P|, C, T) as on the CPU; the
 * element arithmetic (float tile values, expf against the float running max, double sums,
 * softplus/sigmoid in double) is the CPU's, so only the GEMM's summation order, expf's last
 * bit and the order of the double sums differ.
 *
 * Determinism without float atomics: each anchor row is owned by one warp, which reduces its
 * lanes with a fixed butterfly; tiles are visited in a fixed order; column sums are computed
 * in a fixed order per column; the loss is one block's fixed-tree reduction in double. With
 * cuBLAS's default (atomics not allowed) GEMMs, results are bitwise reproducible.
 *
 * Labels live on the device: a first kernel finds the first label that is neither a class
 * nor ignore_index (atomicMin of the row index in the context's report words: deterministic),
 * the host reads the two words (one synchronisation per call) and fails with the CPU's
 * message before anything is written. dloss is read on the device. */
#include <math.h>
#include <string.h>

#include "cluda/contrastive.h"
#include "kernel_common.cuh"

using namespace cluda_kernels;

namespace {

constexpr unsigned long long kNoBadLabel = ~0ull;
constexpr int kLossBlock = 512; /* the one block of the loss reduction (power of two) */
constexpr int kColBlockY = 32;  /* row groups of the column-sum kernel */

/* What the key kernel needs of the parameters (passed by value: 264 bytes). */
struct KeyParams {
  uint8_t thing[256];
  int ignore_index;
  int ignore_as_class;
  int stuff_only;
};

/* src/nn/contrastive.c key_of: -1 for an ignored label, else label | group << 8. */
__device__ __forceinline__ int16_t key_of(const KeyParams &kp, int label) {
  if (label == kp.ignore_index && !kp.ignore_as_class) return -1;
  return (int16_t)(label | (kp.thing[label] ? 256 : 0));
}

__device__ __forceinline__ bool is_negative(int all, int16_t ka, int16_t kc) {
  return kc >= 0 && kc != ka && (all || ((kc ^ ka) & 256) == 0);
}

/* x = log S - s: softplus(x) and sigmoid(x) from one exp (the CPU's softplus_sigmoid). */
__device__ __forceinline__ void softplus_sigmoid(double x, double *sp, double *sig) {
  const double e = exp(-fabs(x));
  *sp = (x > 0.0 ? x : 0.0) + log1p(e);
  *sig = x >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
}

/* The smallest row index whose label is neither a class nor ignore_index -> *bad. */
__global__ void check_labels_kernel(const uint8_t *labels, int64_t n, int num_classes,
                                    int ignore_index, unsigned long long *bad) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    const int y = labels[i];
    if (y >= num_classes && y != ignore_index) atomicMin(bad, (unsigned long long)i);
  }
}

/* Row keys; anchors of STUFF_ONLY that are things get -1 (they do not contribute). */
__global__ void keys_kernel(const uint8_t *labels, int64_t n, KeyParams kp, int anchors,
                            int16_t *keys) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (int64_t)gridDim.x * blockDim.x) {
    int16_t k = key_of(kp, labels[i]);
    if (anchors && k >= 0 && kp.stuff_only && (k & 256)) k = -1;
    keys[i] = k;
  }
}

/* rows [ma, 5] = (-inf, 0, 0, 0, 0) */
__global__ void rows_init_kernel(double *rows, int64_t ma) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < ma;
       i += (int64_t)gridDim.x * blockDim.x) {
    double *r = rows + i * 5;
    r[0] = -INFINITY;
    r[1] = r[2] = r[3] = r[4] = 0.0;
  }
}

/* What the tile kernels share. */
struct TileArgs {
  const float *tile; /* [ma, nt] */
  const int16_t *akey, *ckey;
  double *rows;   /* [ma, 5] */
  int64_t ma, c0; /* anchors; first contrast row of the tile */
  int nt;         /* columns of this tile */
  int all;        /* pairs == ALL */
  int64_t self_offset;
};

/* Pass 1 (one warp per anchor row): running max and S_i over the tile's negatives. */
__global__ void pass_negatives_kernel(TileArgs t) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t i = global_warp(); i < t.ma; i += warp_count()) {
    const int16_t ka = t.akey[i];
    if (ka < 0) continue;
    const float *s = t.tile + i * t.nt;
    const int16_t *kc = t.ckey + t.c0;
    const int64_t js = t.self_offset >= 0 ? t.self_offset + i - t.c0 : -1;
    float tmax = -INFINITY;
    for (int j = lane; j < t.nt; j += kWarp)
      if (j != js && is_negative(t.all, ka, kc[j]) && s[j] > tmax) tmax = s[j];
    tmax = warp_max(tmax); /* the maximum is exact in any order */
    if (tmax == -INFINITY) continue;
    double *r = t.rows + i * 5;
    double m0 = r[0], sum0 = r[1];
    if ((double)tmax > m0) {
      sum0 *= exp(m0 - (double)tmax); /* m = -inf on the first tile: S = 0 stays 0 */
      m0 = tmax;
    }
    const float m = (float)m0;
    double sum = 0.0;
    for (int j = lane; j < t.nt; j += kWarp)
      if (j != js && is_negative(t.all, ka, kc[j])) sum += (double)expf(s[j] - m);
    sum = warp_sum(sum);
    if (lane == 0) {
      r[0] = m0;
      r[1] = sum0 + sum;
    }
  }
}

/* After pass 1: r[0] = log S_i (-inf without negatives). */
__global__ void finish_negatives_kernel(double *rows, int64_t ma) {
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < ma;
       i += (int64_t)gridDim.x * blockDim.x) {
    double *r = rows + i * 5;
    r[0] = r[1] > 0.0 ? r[0] + log(r[1]) : -INFINITY;
  }
}

/* Pass 2 (one warp per anchor row): |P_i|, C_i, T_i over the tile's positives. */
__global__ void pass_positives_kernel(TileArgs t, const float *cw) {
  const int lane = threadIdx.x % kWarp;
  for (int64_t i = global_warp(); i < t.ma; i += warp_count()) {
    const int16_t ka = t.akey[i];
    if (ka < 0) continue;
    const float *s = t.tile + i * t.nt;
    const int16_t *kc = t.ckey + t.c0;
    const int64_t js = t.self_offset >= 0 ? t.self_offset + i - t.c0 : -1;
    double *r = t.rows + i * 5;
    const double logs = r[0];
    double npos = 0.0, csum = 0.0, tsum = 0.0;
    for (int j = lane; j < t.nt; j += kWarp) {
      if (kc[j] != ka || j == js) continue;
      double sp, sig;
      softplus_sigmoid(logs - (double)s[j], &sp, &sig);
      const double v = cw ? (double)cw[t.c0 + j] : 1.0;
      npos += 1.0;
      csum += v * sig;
      tsum += v * sp;
    }
    npos = warp_sum(npos);
    csum = warp_sum(csum);
    tsum = warp_sum(tsum);
    if (lane == 0) {
      r[2] += npos;
      r[3] += csum;
      r[4] += tsum;
    }
  }
}

/* stats [ma, 4] from rows; loss[0] = scale sum_i u_i T_i / |P_i| (rows with positives), one
 * block: each thread sums a fixed strided set of rows, then a fixed tree. */
__global__ void finish_forward_kernel(const double *rows, const float *aw, int64_t ma, double scale,
                                      float *stats, float *loss) {
  __shared__ double sh[kLossBlock];
  double total = 0.0;
  for (int64_t i = threadIdx.x; i < ma; i += kLossBlock) {
    const double *r = rows + i * 5;
    if (r[2] > 0.0) total += (aw ? (double)aw[i] : 1.0) * r[4] / r[2];
    float *o = stats + i * 4;
    o[0] = (float)r[0];
    o[1] = (float)r[2];
    o[2] = (float)r[3];
    o[3] = (float)r[4];
  }
  sh[threadIdx.x] = total;
  __syncthreads();
  for (int half = kLossBlock / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) sh[threadIdx.x] += sh[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) loss[0] = (float)(scale * sh[0]);
}

/* d_anchor_weights[i] = g T_i / |P_i| for active anchors with positives, g = dloss scale. */
__global__ void anchor_weight_grad_kernel(const float *stats, const int16_t *akey,
                                          const float *dloss, double scale, int64_t ma, float *dw) {
  const double g = (double)dloss[0] * scale;
  for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < ma;
       i += (int64_t)gridDim.x * blockDim.x) {
    const float *r = stats + i * 4;
    dw[i] = akey[i] >= 0 && r[1] > 0.0f ? (float)(g * (double)r[3] / (double)r[1]) : 0.0f;
  }
}

/* The backward of one tile (one warp per anchor row): tile -> dL/ds in place; tile2 (may be
 * NULL) gets beta_i u_i l_ip at the positives and 0 elsewhere. src/nn/contrastive.c
 * tile_grad, term for term. */
__global__ void tile_grad_kernel(TileArgs t, float *tile, float *tile2, const float *stats,
                                 const float *aw, const float *cw, const float *dloss,
                                 double scale) {
  const int lane = threadIdx.x % kWarp;
  const double g = (double)dloss[0] * scale;
  for (int64_t i = global_warp(); i < t.ma; i += warp_count()) {
    float *s = tile + i * t.nt;
    float *t2 = tile2 ? tile2 + i * t.nt : NULL;
    const float *st = stats + i * 4;
    const int16_t ka = t.akey[i];
    const double u = aw ? (double)aw[i] : 1.0;
    if (ka < 0 || st[1] <= 0.0f || g == 0.0 || u == 0.0) {
      for (int j = lane; j < t.nt; j += kWarp) {
        s[j] = 0.0f;
        if (t2) t2[j] = 0.0f;
      }
      continue;
    }
    const double bu = g / (double)st[1] * u, logs = (double)st[0];
    const double cn = bu * (double)st[2];
    const int16_t *kc = t.ckey + t.c0;
    const int64_t js = t.self_offset >= 0 ? t.self_offset + i - t.c0 : -1;
    for (int j = lane; j < t.nt; j += kWarp) {
      float d = 0.0f, tv = 0.0f;
      if (j != js) {
        if (kc[j] == ka) {
          double sp, sig;
          softplus_sigmoid(logs - (double)s[j], &sp, &sig);
          const double v = cw ? (double)cw[t.c0 + j] : 1.0;
          d = (float)(-bu * v * sig);
          tv = (float)(bu * sp);
        } else if (is_negative(t.all, ka, kc[j])) {
          d = (float)(cn * exp((double)s[j] - logs));
        }
      }
      s[j] = d;
      if (t2) t2[j] = tv;
    }
  }
}

/* dcw[j] = sum_i tile2[i, j] for j < nt (double, a fixed order): block (32, kColBlockY) takes
 * 32 columns; thread row y sums rows y, y + kColBlockY, ... in order, then thread row 0 adds
 * the kColBlockY partials in order. */
__global__ void column_sums_kernel(const float *tile2, int64_t ma, int nt, float *dcw) {
  __shared__ double part[kColBlockY][kWarp + 1];
  const int j = blockIdx.x * kWarp + threadIdx.x;
  double acc = 0.0;
  if (j < nt)
    for (int64_t i = threadIdx.y; i < ma; i += kColBlockY)
      acc += (double)tile2[i * nt + j];
  part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < nt) {
    double total = 0.0;
    for (int y = 0; y < kColBlockY; y++)
      total += part[y][threadIdx.x];
    dcw[j] = (float)total;
  }
}

int tile_cols_of(const cluda_contrastive_params *p, int64_t mc) {
  int64_t t = p->tile_cols > 0 ? p->tile_cols : CLUDA_CL_DEFAULT_TILE_COLS;
  if (t > mc) t = mc;
  return t < 1 ? 1 : (int)t;
}

/* Everything one call of forward or backward works with. */
struct Plan {
  cluda_cuda_device *dev;
  int64_t ma, mc;
  int d, tc;
  int all;
  float inv_tau;
  double scale; /* loss_weight (x 0.5) / mean_count */
  int64_t self_offset;
  const float *a, *c, *aw, *cw;
  float *tile, *tile2;
  int16_t *akey, *ckey;
  double *rows;
};

/* Fails with the CPU's message when a label is neither a class nor ignore_index; anchors are
 * reported before contrast rows, as the CPU checks them in that order. Synchronises. */
cluda_status check_labels(cluda_cuda_device *dev, const char *op, const cluda_contrastive_params *p,
                          const cluda_tensor *al, const cluda_tensor *cl) {
  const int64_t n[2] = {al->shape[0], cl->shape[0]};
  const uint8_t *lab[2] = {cluda_u8(al), cluda_u8(cl)};
  static const char *const names[2] = {"anchor_labels", "contrast_labels"};
  CLUDA_CUDA_TRY(cudaMemsetAsync(dev->report, 0xFF, 2 * sizeof(unsigned long long), dev->stream));
  for (int w = 0; w < 2; w++) {
    if (n[w] == 0) continue;
    check_labels_kernel<<<grid_size(n[w], kBlock, fill_cap(dev)), kBlock, 0, dev->stream>>>(
        lab[w], n[w], p->num_classes, p->ignore_index, dev->report + w);
    CLUDA_CUDA_CHECK_LAUNCH(op, "check_labels_kernel");
  }
  unsigned long long first_bad[2] = {kNoBadLabel, kNoBadLabel};
  CLUDA_CUDA_TRY(cudaMemcpyAsync(first_bad, dev->report, sizeof first_bad, cudaMemcpyDeviceToHost,
                                 dev->stream));
  CLUDA_CUDA_TRY(cudaStreamSynchronize(dev->stream));
  for (int w = 0; w < 2; w++) {
    if (first_bad[w] == kNoBadLabel) continue;
    uint8_t value = 0;
    CLUDA_CUDA_TRY(
        cudaMemcpyAsync(&value, lab[w] + first_bad[w], 1, cudaMemcpyDeviceToHost, dev->stream));
    CLUDA_CUDA_TRY(cudaStreamSynchronize(dev->stream));
    return CLUDA_FAIL(CLUDA_ERR_ARG,
                      "%s: %s[%lld] = %d is neither a class (< num_classes = %d) nor "
                      "ignore_index %d",
                      op, names[w], (long long)first_bad[w], (int)value, p->num_classes,
                      p->ignore_index);
  }
  return cluda_ok();
}

/* Carves the scratch (a subset of what cluda_contrastive_scratch_bytes counts for the CPU)
 * and computes the keys. The caller releases the arena to its mark on every path. */
cluda_status plan_make(cluda_ctx *ctx, const char *op, const cluda_contrastive_params *p,
                       const cluda_tensor *a, const cluda_tensor *al, const cluda_tensor *aw,
                       const cluda_tensor *c, const cluda_tensor *cl, const cluda_tensor *cw,
                       int need_tile2, Plan *pl) {
  memset(pl, 0, sizeof *pl);
  pl->dev = cluda_cuda_dev(ctx);
  pl->ma = a->shape[0];
  pl->mc = c->shape[0];
  pl->d = a->shape[1];
  pl->tc = tile_cols_of(p, pl->mc);
  pl->all = p->pairs == CLUDA_CL_PAIRS_ALL;
  pl->inv_tau = 1.0f / p->tau;
  pl->scale = (double)p->loss_weight * (p->ref_half ? 0.5 : 1.0) /
              (double)(p->mean_count > 0 ? p->mean_count : (pl->ma > 0 ? pl->ma : 1));
  pl->self_offset = p->self_offset;
  pl->a = cluda_f32(a);
  pl->c = cluda_f32(c);
  pl->aw = aw ? cluda_f32(aw) : NULL;
  pl->cw = cw ? cluda_f32(cw) : NULL;
  cluda_arena *ar = ctx->scratch;
  const size_t tile_bytes = (size_t)pl->ma * (size_t)pl->tc * sizeof(float);
  void *q = NULL;
  CLUDA_TRY(cluda_arena_alloc(ar, tile_bytes, "contrastive similarity tile", &q));
  pl->tile = (float *)q;
  if (need_tile2) {
    CLUDA_TRY(cluda_arena_alloc(ar, tile_bytes, "contrastive positive-term tile", &q));
    pl->tile2 = (float *)q;
  }
  CLUDA_TRY(cluda_arena_alloc(ar, (size_t)pl->mc * sizeof(int16_t), "contrastive keys", &q));
  pl->ckey = (int16_t *)q;
  CLUDA_TRY(cluda_arena_alloc(ar, (size_t)pl->ma * sizeof(int16_t), "contrastive keys", &q));
  pl->akey = (int16_t *)q;
  CLUDA_TRY(cluda_arena_alloc(ar, (size_t)pl->ma * 5 * sizeof(double), "contrastive rows", &q));
  pl->rows = (double *)q;

  KeyParams kp;
  memcpy(kp.thing, p->thing, sizeof kp.thing);
  kp.ignore_index = p->ignore_index;
  kp.ignore_as_class = p->ref_ignore_as_class;
  kp.stuff_only = p->pairs == CLUDA_CL_PAIRS_STUFF_ONLY;
  cluda_cuda_device *dev = pl->dev;
  if (pl->mc > 0) {
    keys_kernel<<<grid_size(pl->mc, kBlock, fill_cap(dev)), kBlock, 0, dev->stream>>>(
        cluda_u8(cl), pl->mc, kp, 0, pl->ckey);
    CLUDA_CUDA_CHECK_LAUNCH(op, "keys_kernel");
  }
  if (pl->ma > 0) {
    keys_kernel<<<grid_size(pl->ma, kBlock, fill_cap(dev)), kBlock, 0, dev->stream>>>(
        cluda_u8(al), pl->ma, kp, 1, pl->akey);
    CLUDA_CUDA_CHECK_LAUNCH(op, "keys_kernel");
  }
  return cluda_ok();
}

TileArgs tile_args(const Plan *pl, int64_t c0, int nt) {
  TileArgs t;
  t.tile = pl->tile;
  t.akey = pl->akey;
  t.ckey = pl->ckey;
  t.rows = pl->rows;
  t.ma = pl->ma;
  t.c0 = c0;
  t.nt = nt;
  t.all = pl->all;
  t.self_offset = pl->self_offset;
  return t;
}

int tile_width(const Plan *pl, int64_t c0) {
  return (int)(pl->mc - c0 < pl->tc ? pl->mc - c0 : pl->tc);
}

/* tile[i, j] = <a_i, c_{c0 + j}> / tau, row-major [ma, nt]. cuBLAS (column-major) computes
 * tile^T [nt, ma] = C_t A^T: C_t is column-major [d, nt] (ld d), used transposed; A is
 * column-major [d, ma] (ld d). */
cluda_status tile_product(const char *op, const Plan *pl, int64_t c0, int nt) {
  const float beta = 0.0f;
  const cublasStatus_t st =
      cublasGemmEx(pl->dev->cublas, CUBLAS_OP_T, CUBLAS_OP_N, nt, (int)pl->ma, pl->d, &pl->inv_tau,
                   pl->c + c0 * pl->d, CUDA_R_32F, pl->d, pl->a, CUDA_R_32F, pl->d, &beta, pl->tile,
                   CUDA_R_32F, nt, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS)
    return CLUDA_FAIL(CLUDA_ERR_DEVICE, "%s: cublasGemmEx (similarity tile): %s: %s", op,
                      cublasGetStatusName(st), cublasGetStatusString(st));
  return cluda_ok();
}

cluda_status forward_run(cluda_ctx *ctx, const cluda_contrastive_params *p, const cluda_tensor *a,
                         const cluda_tensor *al, const cluda_tensor *aw, const cluda_tensor *c,
                         const cluda_tensor *cl, const cluda_tensor *cw, cluda_tensor *loss,
                         cluda_tensor *stats) {
  static const char op[] = "contrastive_forward";
  Plan pl;
  CLUDA_TRY(plan_make(ctx, op, p, a, al, aw, c, cl, cw, 0, &pl));
  cluda_cuda_device *dev = pl.dev;
  if (pl.ma == 0) { /* no anchors: loss 0, nothing else to write */
    CLUDA_CUDA_TRY(cudaMemsetAsync(cluda_f32(loss), 0, sizeof(float), dev->stream));
    return cluda_ok();
  }
  const unsigned row_grid = grid_size(pl.ma, kBlock, fill_cap(dev));
  const unsigned warp_grid = grid_size(pl.ma, kWarpsPerBlock, fill_cap(dev));
  rows_init_kernel<<<row_grid, kBlock, 0, dev->stream>>>(pl.rows, pl.ma);
  CLUDA_CUDA_CHECK_LAUNCH(op, "rows_init_kernel");
  if (pl.mc > 0) {
    for (int64_t c0 = 0; c0 < pl.mc; c0 += pl.tc) {
      const int nt = tile_width(&pl, c0);
      CLUDA_TRY(tile_product(op, &pl, c0, nt));
      pass_negatives_kernel<<<warp_grid, kBlock, 0, dev->stream>>>(tile_args(&pl, c0, nt));
      CLUDA_CUDA_CHECK_LAUNCH(op, "pass_negatives_kernel");
    }
    finish_negatives_kernel<<<row_grid, kBlock, 0, dev->stream>>>(pl.rows, pl.ma);
    CLUDA_CUDA_CHECK_LAUNCH(op, "finish_negatives_kernel");
    for (int64_t c0 = 0; c0 < pl.mc; c0 += pl.tc) {
      const int nt = tile_width(&pl, c0);
      CLUDA_TRY(tile_product(op, &pl, c0, nt));
      pass_positives_kernel<<<warp_grid, kBlock, 0, dev->stream>>>(tile_args(&pl, c0, nt), pl.cw);
      CLUDA_CUDA_CHECK_LAUNCH(op, "pass_positives_kernel");
    }
  }
  finish_forward_kernel<<<1, kLossBlock, 0, dev->stream>>>(pl.rows, pl.aw, pl.ma, pl.scale,
                                                           cluda_f32(stats), cluda_f32(loss));
  CLUDA_CUDA_CHECK_LAUNCH(op, "finish_forward_kernel");
  return cluda_ok();
}

cluda_status backward_run(cluda_ctx *ctx, const cluda_contrastive_params *p, const cluda_tensor *a,
                          const cluda_tensor *al, const cluda_tensor *aw, const cluda_tensor *c,
                          const cluda_tensor *cl, const cluda_tensor *cw, const cluda_tensor *stats,
                          const cluda_tensor *dloss, cluda_tensor *d_anchors,
                          cluda_tensor *d_contrast, cluda_tensor *d_anchor_weights,
                          cluda_tensor *d_contrast_weights) {
  static const char op[] = "contrastive_backward";
  Plan pl;
  CLUDA_TRY(plan_make(ctx, op, p, a, al, aw, c, cl, cw, d_contrast_weights != NULL, &pl));
  cluda_cuda_device *dev = pl.dev;
  const float *sv = cluda_f32(stats), *dl = cluda_f32(dloss);
  if (d_anchor_weights && pl.ma > 0) {
    anchor_weight_grad_kernel<<<grid_size(pl.ma, kBlock, fill_cap(dev)), kBlock, 0, dev->stream>>>(
        sv, pl.akey, dl, pl.scale, pl.ma, cluda_f32(d_anchor_weights));
    CLUDA_CUDA_CHECK_LAUNCH(op, "anchor_weight_grad_kernel");
  }
  float *da = d_anchors ? cluda_f32(d_anchors) : NULL;
  float *dc = d_contrast ? cluda_f32(d_contrast) : NULL;
  float *dcw = d_contrast_weights ? cluda_f32(d_contrast_weights) : NULL;
  const size_t d = (size_t)pl.d;
  /* outputs no tile reaches are zero, as on the CPU */
  if (da && pl.mc == 0 && pl.ma > 0)
    CLUDA_CUDA_TRY(cudaMemsetAsync(da, 0, (size_t)pl.ma * d * sizeof(float), dev->stream));
  if (dc && pl.ma == 0 && pl.mc > 0)
    CLUDA_CUDA_TRY(cudaMemsetAsync(dc, 0, (size_t)pl.mc * d * sizeof(float), dev->stream));
  if (dcw && pl.ma == 0 && pl.mc > 0)
    CLUDA_CUDA_TRY(cudaMemsetAsync(dcw, 0, (size_t)pl.mc * sizeof(float), dev->stream));
  if (!(da || dc || dcw) || pl.ma == 0) return cluda_ok();

  const unsigned warp_grid = grid_size(pl.ma, kWarpsPerBlock, fill_cap(dev));
  const float one = 1.0f, zero = 0.0f;
  for (int64_t c0 = 0; c0 < pl.mc; c0 += pl.tc) {
    const int nt = tile_width(&pl, c0);
    CLUDA_TRY(tile_product(op, &pl, c0, nt));
    tile_grad_kernel<<<warp_grid, kBlock, 0, dev->stream>>>(
        tile_args(&pl, c0, nt), pl.tile, pl.tile2, sv, pl.aw, pl.cw, dl, pl.scale);
    CLUDA_CUDA_CHECK_LAUNCH(op, "tile_grad_kernel");
    if (da) {
      /* d_anchors (+)= dS C_t / tau: row-major [ma, d] = [ma, nt] x [nt, d]; column-major
       * da^T [d, ma] = C_t^T dS^T with C_t column-major [d, nt] (ld d) and dS column-major
       * [nt, ma] (ld nt). beta 0 on the first tile: cuBLAS then never reads da. */
      const cublasStatus_t st = cublasGemmEx(
          dev->cublas, CUBLAS_OP_N, CUBLAS_OP_N, pl.d, (int)pl.ma, nt, &pl.inv_tau,
          pl.c + c0 * pl.d, CUDA_R_32F, pl.d, pl.tile, CUDA_R_32F, nt, c0 == 0 ? &zero : &one, da,
          CUDA_R_32F, pl.d, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      if (st != CUBLAS_STATUS_SUCCESS)
        return CLUDA_FAIL(CLUDA_ERR_DEVICE, "%s: cublasGemmEx (d_anchors): %s: %s", op,
                          cublasGetStatusName(st), cublasGetStatusString(st));
    }
    if (dc) {
      /* d_contrast[c0 : c0 + nt] = dS^T A / tau: row-major [nt, d] = [nt, ma] x [ma, d];
       * column-major dc_t^T [d, nt] = A^T dS with A column-major [d, ma] (ld d) and dS
       * column-major [nt, ma] (ld nt), used transposed. */
      const cublasStatus_t st =
          cublasGemmEx(dev->cublas, CUBLAS_OP_N, CUBLAS_OP_T, pl.d, nt, (int)pl.ma, &pl.inv_tau,
                       pl.a, CUDA_R_32F, pl.d, pl.tile, CUDA_R_32F, nt, &zero, dc + c0 * pl.d,
                       CUDA_R_32F, pl.d, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      if (st != CUBLAS_STATUS_SUCCESS)
        return CLUDA_FAIL(CLUDA_ERR_DEVICE, "%s: cublasGemmEx (d_contrast): %s: %s", op,
                          cublasGetStatusName(st), cublasGetStatusString(st));
    }
    if (dcw) {
      const dim3 block(kWarp, kColBlockY);
      column_sums_kernel<<<(unsigned)((nt + kWarp - 1) / kWarp), block, 0, dev->stream>>>(
          pl.tile2, pl.ma, nt, dcw + c0);
      CLUDA_CUDA_CHECK_LAUNCH(op, "column_sums_kernel");
    }
  }
  return cluda_ok();
}

/* What both entry points check before anything is queued: a CUDA context, the labels (on
 * the device) and a scratch arena. */
cluda_status check_entry(cluda_ctx *ctx, const char *op, const cluda_contrastive_params *p,
                         const cluda_tensor *anchors, const cluda_tensor *anchor_labels,
                         const cluda_tensor *contrast, const cluda_tensor *contrast_labels) {
  CLUDA_REQUIRE(cluda_cuda_context_is_cuda(ctx), CLUDA_ERR_ARG, "%s: not a CUDA context", op);
  CLUDA_TRY(check_labels(cluda_cuda_dev(ctx), op, p, anchor_labels, contrast_labels));
  CLUDA_REQUIRE(ctx->scratch != NULL, CLUDA_ERR_ALLOC,
                "%s: ctx->scratch is NULL; %zu bytes are needed (cluda_contrastive_scratch_bytes)",
                op, cluda_contrastive_scratch_bytes(p, anchors->shape[0], contrast->shape[0]));
  return cluda_ok();
}

} // namespace

/* The public functions (src/nn/contrastive.c) have validated everything that lives on the
 * host; labels are checked here, on the device, before anything is written. */
extern "C" cluda_status cluda_cuda_contrastive_forward(
    cluda_ctx *ctx, const cluda_contrastive_params *p, const cluda_tensor *anchors,
    const cluda_tensor *anchor_labels, const cluda_tensor *anchor_weights,
    const cluda_tensor *contrast, const cluda_tensor *contrast_labels,
    const cluda_tensor *contrast_weights, cluda_tensor *loss, cluda_tensor *stats) {
  static const char op[] = "contrastive_forward";
  CLUDA_TRY(check_entry(ctx, op, p, anchors, anchor_labels, contrast, contrast_labels));
  const size_t mark = cluda_arena_mark(ctx->scratch);
  /* queued work runs in stream order, so the scratch may be released once it is queued */
  const cluda_status st = forward_run(ctx, p, anchors, anchor_labels, anchor_weights, contrast,
                                      contrast_labels, contrast_weights, loss, stats);
  cluda_arena_release(ctx->scratch, mark);
  return st;
}

extern "C" cluda_status cluda_cuda_contrastive_backward(
    cluda_ctx *ctx, const cluda_contrastive_params *p, const cluda_tensor *anchors,
    const cluda_tensor *anchor_labels, const cluda_tensor *anchor_weights,
    const cluda_tensor *contrast, const cluda_tensor *contrast_labels,
    const cluda_tensor *contrast_weights, const cluda_tensor *stats, const cluda_tensor *dloss,
    cluda_tensor *d_anchors, cluda_tensor *d_contrast, cluda_tensor *d_anchor_weights,
    cluda_tensor *d_contrast_weights) {
  static const char op[] = "contrastive_backward";
  CLUDA_TRY(check_entry(ctx, op, p, anchors, anchor_labels, contrast, contrast_labels));
  const size_t mark = cluda_arena_mark(ctx->scratch);
  const cluda_status st = backward_run(ctx, p, anchors, anchor_labels, anchor_weights, contrast,
                                       contrast_labels, contrast_weights, stats, dloss, d_anchors,
                                       d_contrast, d_anchor_weights, d_contrast_weights);
  cluda_arena_release(ctx->scratch, mark);
  return st;
}

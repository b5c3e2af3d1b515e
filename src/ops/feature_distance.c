/* DAFormer's feature distance (masked_feat_dist): the mean over masked cells of the
 * per-cell Euclidean distance ||a - b||_2 over channels (not squared). An empty mask gives
 * loss 0 and count 0 (the reference would give NaN; the caller skips the term). */
#include <math.h>
#include <string.h>

#include "op_common.h"

/* The distance sum is formed in this many fixed cell ranges, each in double, added in
 * order: the result is the same for any thread count. */
enum { FD_CHUNKS = 256 };

static cluda_status check_scalar(const char *op, const char *name, const cluda_tensor *t) {
  char d[64];
  CLUDA_TRY(cluda_check_tensor(op, name, t, CLUDA_F32, -1));
  CLUDA_REQUIRE(cluda_tensor_numel(t) == 1, CLUDA_ERR_SHAPE,
                "%s: %s %s must have exactly one element", op, name,
                cluda_tensor_describe(t, d, sizeof d));
  return cluda_ok();
}

static cluda_status check_inputs(const char *op, const cluda_tensor *a, const cluda_tensor *b,
                                 const cluda_tensor *mask) {
  char da[64], dm[64];
  CLUDA_TRY(cluda_check_tensor(op, "a", a, CLUDA_F32, 4));
  CLUDA_TRY(cluda_check_tensor(op, "b", b, CLUDA_F32, 4));
  CLUDA_REQUIRE_SAME_SHAPE(op, "a", a, "b", b);
  CLUDA_TRY(cluda_check_tensor(op, "mask", mask, CLUDA_U8, 3));
  CLUDA_REQUIRE(mask->shape[0] == a->shape[0] && mask->shape[1] == a->shape[1] &&
                    mask->shape[2] == a->shape[2],
                CLUDA_ERR_SHAPE, "%s: mask %s must be [N,H,W] of a %s", op,
                cluda_tensor_describe(mask, dm, sizeof dm),
                cluda_tensor_describe(a, da, sizeof da));
  return cluda_ok();
}

cluda_status cluda_feature_distance_forward(cluda_ctx *ctx, const cluda_tensor *a,
                                            const cluda_tensor *b, const cluda_tensor *mask,
                                            cluda_tensor *loss, cluda_tensor *count) {
  static const char op[] = "feature_distance_forward";
  CLUDA_TRY(check_inputs(op, a, b, mask));
  CLUDA_TRY(check_scalar(op, "loss", loss));
  CLUDA_TRY(check_scalar(op, "count", count));
  CLUDA_DISPATCH(ctx, feature_distance_forward, a, b, mask, loss, count);
}

cluda_status cluda_feature_distance_backward(cluda_ctx *ctx, const cluda_tensor *a,
                                             const cluda_tensor *b, const cluda_tensor *mask,
                                             const cluda_tensor *dloss, cluda_tensor *da,
                                             cluda_tensor *db) {
  static const char op[] = "feature_distance_backward";
  CLUDA_TRY(check_inputs(op, a, b, mask));
  CLUDA_TRY(check_scalar(op, "dloss", dloss));
  CLUDA_TRY(cluda_check_tensor(op, "da", da, CLUDA_F32, 4));
  CLUDA_REQUIRE_SAME_SHAPE(op, "da", da, "a", a);
  if (db) {
    CLUDA_TRY(cluda_check_tensor(op, "db", db, CLUDA_F32, 4));
    CLUDA_REQUIRE_SAME_SHAPE(op, "db", db, "a", a);
  }
  CLUDA_DISPATCH(ctx, feature_distance_backward, a, b, mask, dloss, da, db);
}

/* ---- CPU implementations ---- */

/* ||a - b||_2 of one cell, accumulated in double (C is 512 in DAFormer) */
static inline double cell_distance(const float *a, const float *b, int c) {
  double s = 0.0;
  for (int k = 0; k < c; k++) {
    const double t = (double)a[k] - (double)b[k];
    s += t * t;
  }
  return sqrt(s);
}

cluda_status cluda_cpu_feature_distance_forward(cluda_ctx *ctx, const cluda_tensor *a,
                                                const cluda_tensor *b, const cluda_tensor *mask,
                                                cluda_tensor *loss, cluda_tensor *count) {
  (void)ctx;
  const int c = a->shape[3];
  const int64_t cells = cluda_tensor_numel(mask);
  const float *pa = cluda_f32(a), *pb = cluda_f32(b);
  const uint8_t *m = cluda_u8(mask);
  double total = 0.0;
  int64_t n = 0;
  if (cells > 0) {
    const int64_t chunk = (cells + FD_CHUNKS - 1) / FD_CHUNKS;
    const int chunks = (int)((cells + chunk - 1) / chunk);
    double partial[FD_CHUNKS];
    int64_t counted[FD_CHUNKS];
#pragma omp parallel for schedule(static) if (cells * c > 16384)
    for (int ci = 0; ci < chunks; ci++) {
      const int64_t begin = ci * chunk, end = begin + chunk < cells ? begin + chunk : cells;
      double sum = 0.0;
      int64_t cnt = 0;
      for (int64_t i = begin; i < end; i++) {
        if (!m[i]) continue;
        sum += cell_distance(pa + i * c, pb + i * c, c);
        cnt++;
      }
      partial[ci] = sum;
      counted[ci] = cnt;
    }
    for (int ci = 0; ci < chunks; ci++) {
      total += partial[ci];
      n += counted[ci];
    }
  }
  cluda_f32(loss)[0] = n > 0 ? (float)(total / (double)n) : 0.0f;
  cluda_f32(count)[0] = (float)n;
  return cluda_ok();
}

cluda_status cluda_cpu_feature_distance_backward(cluda_ctx *ctx, const cluda_tensor *a,
                                                 const cluda_tensor *b, const cluda_tensor *mask,
                                                 const cluda_tensor *dloss, cluda_tensor *da,
                                                 cluda_tensor *db) {
  (void)ctx;
  const int c = a->shape[3];
  const int64_t cells = cluda_tensor_numel(mask);
  const float *pa = cluda_f32(a), *pb = cluda_f32(b);
  const uint8_t *m = cluda_u8(mask);
  float *ga = cluda_f32(da), *gb = db ? cluda_f32(db) : NULL;
  /* the count is an integer sum, so the reduction is exact in any order */
  int64_t n = 0;
#pragma omp parallel for schedule(static) reduction(+ : n) if (cells > 262144)
  for (int64_t i = 0; i < cells; i++)
    n += m[i] != 0;
  const double g = n > 0 ? (double)cluda_f32(dloss)[0] / (double)n : 0.0;
  /* one cell per iteration: cells are independent */
#pragma omp parallel for schedule(static) if (cells * c > 16384)
  for (int64_t i = 0; i < cells; i++) {
    const float *ai = pa + i * c, *bi = pb + i * c;
    float *gai = ga + i * c;
    const double dist = m[i] ? cell_distance(ai, bi, c) : 0.0;
    /* unmasked cells and zero distance (where the norm has no gradient; PyTorch's norm
     * backward gives 0 there) get zero gradient */
    const float scale = dist > 0.0 ? (float)(g / dist) : 0.0f;
    if (scale == 0.0f) {
      memset(gai, 0, sizeof(float) * (size_t)c);
      if (gb) memset(gb + i * c, 0, sizeof(float) * (size_t)c);
      continue;
    }
    for (int k = 0; k < c; k++)
      gai[k] = (ai[k] - bi[k]) * scale;
    if (gb) {
      float *gbi = gb + i * c;
      for (int k = 0; k < c; k++)
        gbi[k] = -gai[k];
    }
  }
  return cluda_ok();
}

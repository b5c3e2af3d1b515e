/* Linear layer: CUDA (cuBLASLt, fp32 compute) against the CPU backend (OpenBLAS sgemm) on
 * the same random inputs: forward with and without bias, backward with dx and db optional,
 * dw and db accumulated onto random initial values; rows 1, 7, 1000 and 40000 (many db
 * chunks), in 0, 3, 33, 513, out 0, 1, 5, 257, batch > 1 (3-d x); tensors at 4-byte-aligned
 * offsets (cuBLASLt's alignment preferences and the bias-epilogue fallback); a context with
 * no scratch (no cuBLASLt workspace, single-pass db); every result bitwise reproducible;
 * bad shapes rejected before the GPU.
 *
 * Tolerances (|gpu - cpu| <= atol + rtol |cpu|), inputs uniform in [-1, 1]:
 *  - y, dx, dw: GEMMs over K = in, out, rows terms summed in another order (cuBLAS tiles vs
 *    OpenBLAS blocks, FMA in both): rtol 1e-4, atol 1e-5 sqrt(K). Each product is ~1/3 in
 *    size, a K-term sum ~sqrt(K)/3, and fp32 summation error grows like sqrt(K) ulp of that;
 *    a TF32 product (10-bit mantissa, ~5e-4 relative per term) would fail these bounds.
 *  - db: both backends sum the rows in double and round once: rtol 1e-5, atol 1e-6.
 *  - K = 0 (in 0, or out 0 for dx): exact (bias copies and zeros), atol 0. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gpu_testing.h"

/* A device buffer like `host` whose data starts `offset` floats into its allocation (0: the
 * 256-byte-aligned cudaMalloc pointer; 1: only 4-byte aligned). *base gets the allocation. */
static cluda_tensor dev_like(const cluda_tensor *host, int offset, void **base) {
  cluda_tensor t = *host;
  size_t bytes = cluda_tensor_bytes(host) + (size_t)offset * sizeof(float);
  *base = NULL;
  cluda_status s = cluda_cuda_malloc(bytes > 0 ? bytes : sizeof(float), base);
  if (s.code != CLUDA_OK) {
    fprintf(stderr, "dev_like: %s\n", s.message);
    abort();
  }
  t.data = (char *)*base + (size_t)offset * sizeof(float);
  return t;
}

static double gemm_atol(int k) { return k > 0 ? 1e-5 * sqrt((double)k) : 0.0; }

typedef struct linear_case {
  int batch, n, in, out;
  int bias, want_dx, want_db;
  int offset; /* 0 or 1: see dev_like */
} linear_case;

static void check_case(cluda_ctx *gpu, const char *ctx_name, linear_case lc) {
  cluda_ctx cpu = cluda_cpu_context(NULL);
  const int batch = lc.batch, n = lc.n, in = lc.in, out = lc.out;
  const int64_t rows = (int64_t)batch * n;
  const int64_t nx = rows * in, ny = rows * out, nw = (int64_t)out * in;
  const uint64_t seed = 4100 + (uint64_t)(nx + 3 * ny + 7 * nw) + (uint64_t)lc.bias;
  float *x = test_alloc_f32(nx + 1), *w = test_alloc_f32(nw + 1), *b = test_alloc_f32(out + 1),
        *y = test_alloc_f32(ny + 1), *dy = test_alloc_f32(ny + 1), *dx = test_alloc_f32(nx + 1),
        *dw = test_alloc_f32(nw + 1), *db = test_alloc_f32(out + 1), *dw0 = test_alloc_f32(nw + 1),
        *db0 = test_alloc_f32(out + 1);
  int64_t most = nx > ny ? nx : ny;
  if (nw > most) most = nw;
  float *got = test_alloc_f32(most + 1), *runs[2][3];
  for (int r = 0; r < 2; r++) {
    runs[r][0] = test_alloc_f32(ny + 1);
    runs[r][1] = test_alloc_f32(nw + 1);
    runs[r][2] = test_alloc_f32(out + 1);
  }
  test_fill_uniform(x, nx, -1.0f, 1.0f, seed, 0);
  test_fill_uniform(w, nw, -1.0f, 1.0f, seed, 1);
  test_fill_uniform(b, out, -1.0f, 1.0f, seed, 2);
  test_fill_uniform(dy, ny, -1.0f, 1.0f, seed, 3);
  test_fill_uniform(dw0, nw, -1.0f, 1.0f, seed, 4);
  test_fill_uniform(db0, out, -1.0f, 1.0f, seed, 5);
  memcpy(dw, dw0, sizeof(float) * (size_t)nw);
  memcpy(db, db0, sizeof(float) * (size_t)out);

  /* batch > 1: a 3-d x [batch, n, in] (leading dims flattened into rows) */
  cluda_tensor hx = batch > 1 ? cluda_tensor_3d(CLUDA_F32, x, batch, n, in)
                              : cluda_tensor_2d(CLUDA_F32, x, n, in);
  cluda_tensor hy = batch > 1 ? cluda_tensor_3d(CLUDA_F32, y, batch, n, out)
                              : cluda_tensor_2d(CLUDA_F32, y, n, out);
  cluda_tensor hdy = hy, hdx = hx;
  hdy.data = dy;
  hdx.data = dx;
  cluda_tensor hw = cluda_tensor_2d(CLUDA_F32, w, out, in);
  cluda_tensor hdw = cluda_tensor_2d(CLUDA_F32, dw, out, in);
  cluda_tensor hb = cluda_tensor_1d(CLUDA_F32, b, out), hdb = cluda_tensor_1d(CLUDA_F32, db, out);
  cluda_tensor hdw0 = cluda_tensor_2d(CLUDA_F32, dw0, out, in);
  cluda_tensor hdb0 = cluda_tensor_1d(CLUDA_F32, db0, out);
  TEST_OK(cluda_linear_forward(&cpu, &hx, &hw, lc.bias ? &hb : NULL, &hy));
  TEST_OK(cluda_linear_backward(&cpu, &hx, &hw, &hdy, lc.want_dx ? &hdx : NULL, &hdw,
                                lc.want_db ? &hdb : NULL));

  void *bases[8];
  cluda_tensor gx = dev_like(&hx, lc.offset, &bases[0]), gw = dev_like(&hw, lc.offset, &bases[1]),
               gb = dev_like(&hb, lc.offset, &bases[2]), gy = dev_like(&hy, lc.offset, &bases[3]),
               gdy = dev_like(&hdy, lc.offset, &bases[4]),
               gdx = dev_like(&hdx, lc.offset, &bases[5]),
               gdw = dev_like(&hdw, lc.offset, &bases[6]),
               gdb = dev_like(&hdb, lc.offset, &bases[7]);
  gpu_upload(gpu, &gx, &hx);
  gpu_upload(gpu, &gw, &hw);
  gpu_upload(gpu, &gb, &hb);
  gpu_upload(gpu, &gdy, &hdy);

  char what[160], shape[96];
  snprintf(shape, sizeof shape, "[%lld x %d] -> %d%s%s (%s)", (long long)rows, in, out,
           lc.bias ? " +b" : "", lc.offset ? " offset" : "", ctx_name);
  for (int run = 0; run < 2; run++) {
    gpu_poison(gpu, &gy);
    TEST_OK(cluda_linear_forward(gpu, &gx, &gw, lc.bias ? &gb : NULL, &gy));
    TEST_OK(cluda_cuda_download(gpu, runs[run][0], gy.data, sizeof(float) * (size_t)ny));
  }
  snprintf(what, sizeof what, "linear y %s", shape);
  gpu_compare(gpu, what, &gy, y, got, in > 0 ? 1e-4 : 0.0, gemm_atol(in));
  gpu_check_bitwise("linear y", runs[0][0], runs[1][0], sizeof(float) * (size_t)ny);

  for (int run = 0; run < 2; run++) {
    gpu_upload(gpu, &gdw, &hdw0);
    gpu_upload(gpu, &gdb, &hdb0);
    gpu_poison(gpu, &gdx);
    TEST_OK(cluda_linear_backward(gpu, &gx, &gw, &gdy, lc.want_dx ? &gdx : NULL, &gdw,
                                  lc.want_db ? &gdb : NULL));
    TEST_OK(cluda_cuda_download(gpu, runs[run][1], gdw.data, sizeof(float) * (size_t)nw));
    TEST_OK(cluda_cuda_download(gpu, runs[run][2], gdb.data, sizeof(float) * (size_t)out));
  }
  if (lc.want_dx) {
    snprintf(what, sizeof what, "linear dx %s", shape);
    gpu_compare(gpu, what, &gdx, dx, got, out > 0 ? 1e-4 : 0.0, gemm_atol(out));
  }
  snprintf(what, sizeof what, "linear dw (accumulated) %s", shape);
  gpu_compare(gpu, what, &gdw, dw, got, 1e-4, gemm_atol((int)rows));
  /* without db the GPU must leave it alone: it still holds db0 (== the CPU's db) */
  snprintf(what, sizeof what, "linear db (%s) %s", lc.want_db ? "accumulated" : "untouched", shape);
  gpu_compare(gpu, what, &gdb, db, got, 1e-5, 1e-6);
  gpu_check_bitwise("linear dw", runs[0][1], runs[1][1], sizeof(float) * (size_t)nw);
  gpu_check_bitwise("linear db", runs[0][2], runs[1][2], sizeof(float) * (size_t)out);

  /* bad shapes never reach the GPU */
  if (in > 0) {
    cluda_tensor narrow_w = gw;
    narrow_w.shape[1] = in + 1;
    TEST_FAILS(cluda_linear_forward(gpu, &gx, &narrow_w, NULL, &gy), CLUDA_ERR_SHAPE, "w");
    cluda_tensor long_b = gb;
    long_b.shape[0] = out + 1;
    TEST_FAILS(cluda_linear_backward(gpu, &gx, &gw, &gdy, NULL, &gdw, &long_b), CLUDA_ERR_SHAPE,
               "db");
  }
  TEST_OK(cluda_cuda_synchronize(gpu));

  for (size_t i = 0; i < sizeof bases / sizeof bases[0]; i++)
    cluda_cuda_free(bases[i]);
  float *hosts[] = {x, w, b, y, dy, dx, dw, db, dw0, db0, got};
  for (size_t i = 0; i < sizeof hosts / sizeof hosts[0]; i++)
    free(hosts[i]);
  for (int r = 0; r < 2; r++)
    for (int k = 0; k < 3; k++)
      free(runs[r][k]);
}

int main(int argc, char **argv) {
  (void)argc;
  cluda_ctx gpu;
  /* 64 MiB: room for the 32 MiB cuBLASLt workspace and the db partials */
  gpu_test_init(argv[0], 64 << 20, &gpu);
  /* batch, n, in, out, bias, dx, db, offset */
  const linear_case cases[] = {
      {1, 1, 3, 5, 1, 1, 1, 0},       /* one row */
      {1, 7, 33, 64, 1, 1, 1, 0},     /* odd rows and in */
      {1, 7, 513, 1, 1, 1, 1, 0},     /* one output */
      {2, 500, 513, 257, 1, 1, 1, 0}, /* 1000 rows, odd everything, batch 2 */
      {4, 250, 33, 5, 0, 1, 0, 0},    /* no bias, no db */
      {1, 1000, 3, 513, 1, 0, 1, 0},  /* no dx */
      {3, 7, 64, 64, 1, 1, 1, 0},     /* batch 3, MiT-like widths */
      {2, 20000, 32, 48, 1, 1, 1, 0}, /* 40000 rows: the db chunk count is capped */
      {1, 5, 0, 7, 1, 1, 1, 0},       /* in 0: y = b, dw empty */
      {1, 4, 9, 0, 0, 1, 1, 0},       /* out 0: y empty, dx = 0 */
      {1, 7, 33, 65, 1, 1, 1, 1},     /* 4-byte-aligned tensors */
      {2, 500, 513, 257, 1, 1, 1, 1},
  };
  const int ncases = (int)(sizeof cases / sizeof cases[0]);
  for (int i = 0; i < ncases; i++)
    check_case(&gpu, "scratch 64 MiB", cases[i]);

  /* a context without scratch: cuBLASLt without workspace, db in one pass per column */
  cluda_ctx bare;
  TEST_OK(cluda_cuda_context_create(0, 0, &bare));
  check_case(&bare, "no scratch", cases[1]);
  check_case(&bare, "no scratch", cases[3]);
  check_case(&bare, "no scratch", cases[7]);
  check_case(&bare, "no scratch", cases[10]);
  TEST_OK(cluda_cuda_synchronize(&bare));
  cluda_cuda_context_destroy(&bare);
  return gpu_test_finish(argv[0], &gpu);
}

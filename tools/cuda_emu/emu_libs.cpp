// cuda_emu: naive cuBLAS, cuBLASLt and cuDNN, written from NVIDIA's documented semantics
// (not from cluda's code), with argument checks where the real library returns an error.
//
//  cuBLAS: column-major C = alpha op(A) op(B) + beta C; A is m x k (lda >= max(1, m)) for
//    OP_N, k x m (lda >= max(1, k)) for OP_T; likewise B; ldc >= max(1, m); beta == 0: C is
//    not read (it may hold NaN). fp32 accumulation in k order with fmaf, like a GPU kernel.
//  cuBLASLt: D = alpha op(A) op(B) + beta C (+ bias[row] with EPILOGUE_BIAS), layouts
//    (rows, cols, ld) checked against the op, attribute sizes checked, pointer alignment
//    checked against the alignment the heuristic was told (256 bytes unless set).
//  cuDNN: NHWC tensors, KRSC (NHWC-format) filters, padding / stride / dilation / groups,
//    cross-correlation or convolution mode, y = alpha conv + beta y (beta 0: y not read).
//    The heuristics return a list whose leading entries a careful caller must skip
//    (tensor-op math, FFT, non-deterministic, failed), then a deterministic GEMM-type
//    algorithm with a workspace, so the algorithm picking and workspace paths are exercised.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cudnn.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <vector>

#include "emu_internal.h"
#include "emu_kernel.h"

using emu::report;

namespace {
struct DevScope {
  DevScope(const char *what) { emu::dev_enter(what, nullptr); }
  ~DevScope() { emu::dev_leave(); }
};

bool check_matrix(const char *fn, const char *what, const void *p, int64_t rows, int64_t cols, int64_t ld,
                  int64_t batch_stride = 0, int64_t batch = 1) {
  if (rows == 0 || cols == 0) return true;
  const size_t last = (size_t)((cols - 1) * ld + rows) * sizeof(float) +
                      (size_t)(batch > 1 ? (batch - 1) * batch_stride : 0) * sizeof(float);
  if (!emu::device_range(p, last)) {
    report("EMU LIBRARY OUT-OF-BOUNDS",
           "%s: %s (%lld x %lld, ld %lld%s) at %p does not fit in one device allocation (%zu bytes needed)", fn, what,
           (long long)rows, (long long)cols, (long long)ld, batch > 1 ? ", batched" : "", p, last);
    return false;
  }
  return true;
}

// C[i + j ldc] = alpha sum_l opA(i, l) opB(l, j) + beta C
void gemm_ref(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float *A, int64_t lda,
              const float *B, int64_t ldb, float beta, const float *C, int64_t ldc, float *D, int64_t ldd,
              const float *bias) {
  for (int64_t j = 0; j < n; j++)
    for (int64_t i = 0; i < m; i++) {
      float acc = 0.0f;
      for (int64_t l = 0; l < k; l++) {
        const float a = ta ? A[l + i * lda] : A[i + l * lda];
        const float b = tb ? B[j + l * ldb] : B[l + j * ldb];
        acc = fmaf(a, b, acc);
      }
      float r = alpha * acc;
      if (beta != 0.0f) r = fmaf(beta, C[i + j * ldc], r);
      if (bias) r += bias[i];
      D[i + j * ldd] = r;
    }
}
} // namespace

struct cublasContext {
  cudaStream_t stream;
};
struct cublasLtContext {
  int dummy;
};

extern "C" {

// ---------------------------------------------------------------- cuBLAS
cublasStatus_t cublasCreate_v2(cublasHandle_t *h) {
  *h = new cublasContext{nullptr};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy_v2(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetStream_v2(cublasHandle_t h, cudaStream_t s) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!emu::stream_valid(s)) report("EMU API MISUSE", "cublasSetStream: unknown stream");
  h->stream = s;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetProperty(libraryPropertyType type, int *v) {
  *v = type == MAJOR_VERSION ? CUBLAS_VER_MAJOR : type == MINOR_VERSION ? CUBLAS_VER_MINOR : CUBLAS_VER_PATCH;
  return CUBLAS_STATUS_SUCCESS;
}
const char *cublasGetStatusName(cublasStatus_t s) {
  switch (s) {
  case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
  case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
  case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
  case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
  default: return "CUBLAS_STATUS_(emu)";
  }
}
const char *cublasGetStatusString(cublasStatus_t s) { return cublasGetStatusName(s); }

static cublasStatus_t gemm_common(const char *fn, cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
                                  int64_t m, int64_t n, int64_t k, const float *alpha, const float *A, int64_t lda,
                                  long long sa, const float *B, int64_t ldb, long long sb, const float *beta,
                                  float *C, int64_t ldc, long long sc, int64_t batch) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if ((ta != CUBLAS_OP_N && ta != CUBLAS_OP_T) || (tb != CUBLAS_OP_N && tb != CUBLAS_OP_T)) {
    report("EMU UNSUPPORTED", "%s: transa %d transb %d", fn, (int)ta, (int)tb);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const int64_t arows = ta == CUBLAS_OP_N ? m : k, brows = tb == CUBLAS_OP_N ? k : n;
  const int64_t acols = ta == CUBLAS_OP_N ? k : m, bcols = tb == CUBLAS_OP_N ? n : k;
  if (m < 0 || n < 0 || k < 0 || batch < 0 || lda < std::max<int64_t>(1, arows) ||
      ldb < std::max<int64_t>(1, brows) || ldc < std::max<int64_t>(1, m)) {
    report("EMU LIBRARY ERROR",
           "%s: CUBLAS_STATUS_INVALID_VALUE: m %lld n %lld k %lld lda %lld (needs >= %lld) ldb %lld (>= %lld) "
           "ldc %lld (>= %lld)",
           fn, (long long)m, (long long)n, (long long)k, (long long)lda, (long long)std::max<int64_t>(1, arows),
           (long long)ldb, (long long)std::max<int64_t>(1, brows), (long long)ldc,
           (long long)std::max<int64_t>(1, m));
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  if (!emu::stream_valid(h->stream)) report("EMU API MISUSE", "%s on a destroyed stream", fn);
  DevScope scope(fn);
  const float a = *alpha, b = *beta;
  if (k > 0 && (!check_matrix(fn, "A", A, arows, acols, lda, sa, batch) ||
                !check_matrix(fn, "B", B, brows, bcols, ldb, sb, batch)))
    return CUBLAS_STATUS_EXECUTION_FAILED;
  if (!check_matrix(fn, "C", C, m, n, ldc, sc, batch)) return CUBLAS_STATUS_EXECUTION_FAILED;
  for (int64_t q = 0; q < batch; q++)
    gemm_ref(ta == CUBLAS_OP_T, tb == CUBLAS_OP_T, m, n, k, a, A + q * sa, lda, B + q * sb, ldb, b, C + q * sc, ldc,
             C + q * sc, ldc, nullptr);
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                              const float *alpha, const float *A, int lda, const float *B, int ldb,
                              const float *beta, float *C, int ldc) {
  return gemm_common("cublasSgemm", h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

static bool f32_only(const char *fn, cudaDataType at, cudaDataType bt, cudaDataType ct, cublasComputeType_t comp) {
  if (at != CUDA_R_32F || bt != CUDA_R_32F || ct != CUDA_R_32F ||
      (comp != CUBLAS_COMPUTE_32F && comp != CUBLAS_COMPUTE_32F_PEDANTIC)) {
    report("EMU UNSUPPORTED", "%s: types %d %d %d compute %d (only fp32 is emulated)", fn, (int)at, (int)bt, (int)ct,
           (int)comp);
    return false;
  }
  return true;
}

cublasStatus_t cublasGemmEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                            const void *alpha, const void *A, cudaDataType at, int lda, const void *B,
                            cudaDataType bt, int ldb, const void *beta, void *C, cudaDataType ct, int ldc,
                            cublasComputeType_t comp, cublasGemmAlgo_t) {
  if (!f32_only("cublasGemmEx", at, bt, ct, comp)) return CUBLAS_STATUS_NOT_SUPPORTED;
  return gemm_common("cublasGemmEx", h, ta, tb, m, n, k, (const float *)alpha, (const float *)A, lda, 0,
                     (const float *)B, ldb, 0, (const float *)beta, (float *)C, ldc, 0, 1);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                                          int n, int k, const void *alpha, const void *A, cudaDataType at, int lda,
                                          long long sa, const void *B, cudaDataType bt, int ldb, long long sb,
                                          const void *beta, void *C, cudaDataType ct, int ldc, long long sc,
                                          int batch, cublasComputeType_t comp, cublasGemmAlgo_t) {
  if (!f32_only("cublasGemmStridedBatchedEx", at, bt, ct, comp)) return CUBLAS_STATUS_NOT_SUPPORTED;
  return gemm_common("cublasGemmStridedBatchedEx", h, ta, tb, m, n, k, (const float *)alpha, (const float *)A, lda,
                     sa, (const float *)B, ldb, sb, (const float *)beta, (float *)C, ldc, sc, batch);
}

// ---------------------------------------------------------------- cuBLASLt
struct LtDesc {
  int32_t ta = CUBLAS_OP_N, tb = CUBLAS_OP_N;
  uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void *bias = nullptr;
  cublasComputeType_t comp;
  cudaDataType_t scale;
};
struct LtLayout {
  cudaDataType type;
  uint64_t rows, cols;
  int64_t ld;
};
struct LtPref {
  uint64_t max_ws = 0;
  uint32_t align[4] = {256, 256, 256, 256}; // A B C D
};

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
  *h = new cublasLtContext{0};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t comp, cudaDataType_t scale) {
  LtDesc *x = new LtDesc;
  x->comp = comp;
  x->scale = scale;
  *d = (cublasLtMatmulDesc_t)x;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
  delete (LtDesc *)d;
  return CUBLAS_STATUS_SUCCESS;
}
#define LT_ATTR(field, type)                                                                       \
  do {                                                                                             \
    if (n != sizeof(type)) {                                                                       \
      report("EMU LIBRARY ERROR", "%s: attribute %d takes %zu bytes, got %zu", __func__, (int)attr, sizeof(type), n); \
      return CUBLAS_STATUS_INVALID_VALUE;                                                          \
    }                                                                                              \
    memcpy(&(field), buf, sizeof(type));                                                           \
    return CUBLAS_STATUS_SUCCESS;                                                                  \
  } while (0)
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t attr,
                                              const void *buf, size_t n) {
  LtDesc *x = (LtDesc *)d;
  switch (attr) {
  case CUBLASLT_MATMUL_DESC_TRANSA: LT_ATTR(x->ta, int32_t);
  case CUBLASLT_MATMUL_DESC_TRANSB: LT_ATTR(x->tb, int32_t);
  case CUBLASLT_MATMUL_DESC_EPILOGUE: LT_ATTR(x->epilogue, uint32_t);
  case CUBLASLT_MATMUL_DESC_BIAS_POINTER: LT_ATTR(x->bias, void *);
  default: report("EMU UNSUPPORTED", "cublasLtMatmulDescSetAttribute(%d)", (int)attr); return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType type, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
  if (ld < (int64_t)std::max<uint64_t>(1, rows)) {
    report("EMU LIBRARY ERROR", "cublasLtMatrixLayoutCreate: ld %lld < rows %llu (column-major)", (long long)ld,
           (unsigned long long)rows);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  *l = (cublasLtMatrixLayout_t) new LtLayout{type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
  delete (LtLayout *)l;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) {
  *p = (cublasLtMatmulPreference_t) new LtPref;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
  delete (LtPref *)p;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t attr, const void *buf,
                                                    size_t n) {
  LtPref *x = (LtPref *)p;
  switch (attr) {
  case CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES: LT_ATTR(x->max_ws, uint64_t);
  case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES: LT_ATTR(x->align[0], uint32_t);
  case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES: LT_ATTR(x->align[1], uint32_t);
  case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES: LT_ATTR(x->align[2], uint32_t);
  case CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES: LT_ATTR(x->align[3], uint32_t);
  default: report("EMU UNSUPPORTED", "cublasLtMatmulPreferenceSetAttribute(%d)", (int)attr); return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

static bool lt_shapes(const char *fn, const LtDesc *d, const LtLayout *a, const LtLayout *b, const LtLayout *c,
                      const LtLayout *D, uint64_t *m, uint64_t *n, uint64_t *k) {
  const uint64_t am = d->ta == CUBLAS_OP_N ? a->rows : a->cols, ak = d->ta == CUBLAS_OP_N ? a->cols : a->rows;
  const uint64_t bk = d->tb == CUBLAS_OP_N ? b->rows : b->cols, bn = d->tb == CUBLAS_OP_N ? b->cols : b->rows;
  if (am != D->rows || bn != D->cols || ak != bk || c->rows != D->rows || c->cols != D->cols) {
    report("EMU LIBRARY ERROR",
           "%s: shapes do not agree: op(A) %llu x %llu, op(B) %llu x %llu, C %llu x %llu, D %llu x %llu", fn,
           (unsigned long long)am, (unsigned long long)ak, (unsigned long long)bk, (unsigned long long)bn,
           (unsigned long long)c->rows, (unsigned long long)c->cols, (unsigned long long)D->rows,
           (unsigned long long)D->cols);
    return false;
  }
  if (a->type != CUDA_R_32F || b->type != CUDA_R_32F || c->type != CUDA_R_32F || D->type != CUDA_R_32F ||
      d->comp != CUBLAS_COMPUTE_32F || d->scale != CUDA_R_32F) {
    report("EMU UNSUPPORTED", "%s: only fp32 layouts with CUBLAS_COMPUTE_32F are emulated", fn);
    return false;
  }
  if (d->epilogue != CUBLASLT_EPILOGUE_DEFAULT && d->epilogue != CUBLASLT_EPILOGUE_BIAS) {
    report("EMU UNSUPPORTED", "%s: epilogue %u", fn, d->epilogue);
    return false;
  }
  *m = am;
  *n = bn;
  *k = ak;
  return true;
}

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t, cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t A,
                                              cublasLtMatrixLayout_t Bl, cublasLtMatrixLayout_t C,
                                              cublasLtMatrixLayout_t D, cublasLtMatmulPreference_t pref, int req,
                                              cublasLtMatmulHeuristicResult_t res[], int *ret) {
  uint64_t m, n, k;
  *ret = 0;
  if (req < 1) return CUBLAS_STATUS_INVALID_VALUE;
  if (!lt_shapes("cublasLtMatmulAlgoGetHeuristic", (LtDesc *)op, (LtLayout *)A, (LtLayout *)Bl, (LtLayout *)C,
                 (LtLayout *)D, &m, &n, &k))
    return CUBLAS_STATUS_INVALID_VALUE;
  const LtPref *p = (const LtPref *)pref;
  static int noalgo = -1;
  if (noalgo < 0) noalgo = getenv("EMU_LT_NOALGO") && atoi(getenv("EMU_LT_NOALGO"));
  if (noalgo) return CUBLAS_STATUS_SUCCESS; // no algorithm: exercises the caller's fallback
  memset(&res[0], 0, sizeof res[0]);
  // the algorithm remembers the alignments it was chosen for; it wants no workspace
  for (int i = 0; i < 4; i++) res[0].algo.data[i] = p ? p->align[i] : 256;
  res[0].algo.data[7] = 0xE3E3;
  res[0].workspaceSize = 0;
  res[0].state = CUBLAS_STATUS_SUCCESS;
  res[0].wavesCount = 1.0f;
  *ret = 1;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t opd, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t Al, const void *B, cublasLtMatrixLayout_t Bl, const void *beta,
                              const void *C, cublasLtMatrixLayout_t Cl, void *D, cublasLtMatrixLayout_t Dl,
                              const cublasLtMatmulAlgo_t *algo, void *ws, size_t ws_bytes, cudaStream_t stream) {
  static const char fn[] = "cublasLtMatmul";
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  const LtDesc *d = (const LtDesc *)opd;
  const LtLayout *a = (const LtLayout *)Al, *b = (const LtLayout *)Bl, *c = (const LtLayout *)Cl,
                 *dl = (const LtLayout *)Dl;
  uint64_t m, n, k;
  if (!lt_shapes(fn, d, a, b, c, dl, &m, &n, &k)) return CUBLAS_STATUS_INVALID_VALUE;
  if (!emu::stream_valid(stream)) report("EMU API MISUSE", "%s on a destroyed stream", fn);
  if (C == D && (c->ld != dl->ld)) {
    report("EMU LIBRARY ERROR", "%s: in place (C == D) with different layouts", fn);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (algo) {
    if (algo->data[7] != 0xE3E3) {
      report("EMU LIBRARY ERROR", "%s: algo is not one returned by cublasLtMatmulAlgoGetHeuristic", fn);
      return CUBLAS_STATUS_INVALID_VALUE;
    }
    const void *ptrs[4] = {A, B, C, D};
    const char *names = "ABCD";
    for (int i = 0; i < 4; i++)
      if ((uintptr_t)ptrs[i] % algo->data[i]) {
        report("EMU LIBRARY ERROR",
               "%s: %c = %p is not aligned to the %llu bytes the heuristic was told (misaligned address on a GPU)",
               fn, names[i], ptrs[i], (unsigned long long)algo->data[i]);
        return CUBLAS_STATUS_EXECUTION_FAILED;
      }
  }
  if (ws_bytes > 0 && !emu::device_range(ws, ws_bytes)) {
    report("EMU LIBRARY OUT-OF-BOUNDS", "%s: workspace %p (%zu bytes) is not inside one device allocation", fn, ws,
           ws_bytes);
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  DevScope scope(fn);
  const float al = *(const float *)alpha, be = *(const float *)beta;
  if (k > 0 && (!check_matrix(fn, "A", A, a->rows, a->cols, a->ld) || !check_matrix(fn, "B", B, b->rows, b->cols, b->ld)))
    return CUBLAS_STATUS_EXECUTION_FAILED;
  if ((be != 0.0f && !check_matrix(fn, "C", C, c->rows, c->cols, c->ld)) ||
      !check_matrix(fn, "D", D, dl->rows, dl->cols, dl->ld))
    return CUBLAS_STATUS_EXECUTION_FAILED;
  const float *bias = nullptr;
  if (d->epilogue == CUBLASLT_EPILOGUE_BIAS) {
    bias = (const float *)d->bias;
    if (!emu::device_range(bias, m * sizeof(float))) {
      report("EMU LIBRARY OUT-OF-BOUNDS", "%s: EPILOGUE_BIAS pointer %p does not hold %llu floats (rows of D)", fn,
             bias, (unsigned long long)m);
      return CUBLAS_STATUS_EXECUTION_FAILED;
    }
  }
  gemm_ref(d->ta == CUBLAS_OP_T, d->tb == CUBLAS_OP_T, m, n, k, al, (const float *)A, a->ld, (const float *)B, b->ld, be,
           (const float *)C, c->ld, (float *)D, dl->ld, bias);
  return CUBLAS_STATUS_SUCCESS;
}

} // extern "C"

// ---------------------------------------------------------------- cuDNN
struct cudnnContext {
  cudaStream_t stream;
};
struct cudnnTensorStruct {
  cudnnTensorFormat_t fmt;
  cudnnDataType_t dt;
  int n, c, h, w;
  bool set;
};
struct cudnnFilterStruct {
  cudnnDataType_t dt;
  cudnnTensorFormat_t fmt;
  int k, c, h, w;
  bool set;
};
struct cudnnConvolutionStruct {
  int ph, pw, u, v, dh, dw;
  cudnnConvolutionMode_t mode;
  cudnnDataType_t ct;
  int groups;
  cudnnMathType_t math;
  bool set;
};

#define DNN_FAIL(...)                                                                              \
  do {                                                                                             \
    report("EMU LIBRARY ERROR", __VA_ARGS__);                                                      \
    return CUDNN_STATUS_BAD_PARAM;                                                                 \
  } while (0)

namespace {
// workspace of the emulated algorithms (non-zero for some, to exercise the workspace path)
size_t ws_for(int algo) { return algo == 1 ? 4096 + 256 : 0; }

cudnnStatus_t check_all(const char *fn, const cudnnTensorStruct *x, const cudnnFilterStruct *w,
                        const cudnnConvolutionStruct *c, const cudnnTensorStruct *y) {
  if (!x || !w || !c || !x->set || !w->set || !c->set || (y && !y->set)) DNN_FAIL("%s: descriptor not set", fn);
  if (x->dt != CUDNN_DATA_FLOAT || w->dt != CUDNN_DATA_FLOAT || c->ct != CUDNN_DATA_FLOAT ||
      (y && y->dt != CUDNN_DATA_FLOAT))
    DNN_FAIL("%s: only fp32 is emulated", fn);
  if (x->fmt != CUDNN_TENSOR_NHWC || w->fmt != CUDNN_TENSOR_NHWC || (y && y->fmt != CUDNN_TENSOR_NHWC))
    DNN_FAIL("%s: only NHWC tensors / filters are emulated", fn);
  if (c->groups < 1 || w->c * c->groups != x->c)
    DNN_FAIL("%s: filter C %d * groups %d != x C %d", fn, w->c, c->groups, x->c);
  if (w->k % c->groups) DNN_FAIL("%s: filter K %d not divisible by groups %d", fn, w->k, c->groups);
  if (c->u < 1 || c->v < 1 || c->dh < 1 || c->dw < 1 || c->ph < 0 || c->pw < 0) DNN_FAIL("%s: bad conv descriptor", fn);
  if (y) {
    const int oh = 1 + (x->h + 2 * c->ph - ((w->h - 1) * c->dh + 1)) / c->u;
    const int ow = 1 + (x->w + 2 * c->pw - ((w->w - 1) * c->dw + 1)) / c->v;
    if (y->n != x->n || y->c != w->k || y->h != oh || y->w != ow)
      DNN_FAIL("%s: y is [N %d C %d H %d W %d], the convolution gives [%d %d %d %d]", fn, y->n, y->c, y->h, y->w, x->n,
               w->k, oh, ow);
  }
  return CUDNN_STATUS_SUCCESS;
}

template <class P> void fill(P *perf, int *count, int req, int fft_algo, int gemm_algo, int nondet_algo) {
  P list[5];
  memset(list, 0, sizeof list);
  // 0: fastest but tensor-op math (TF32) 1: FFT 2: non-deterministic 3: failed 4: the good one
  list[0].algo = (decltype(list[0].algo))gemm_algo; list[0].mathType = CUDNN_TENSOR_OP_MATH; list[0].determinism = CUDNN_DETERMINISTIC;
  list[1].algo = (decltype(list[0].algo))fft_algo; list[1].mathType = CUDNN_FMA_MATH; list[1].determinism = CUDNN_DETERMINISTIC;
  list[2].algo = (decltype(list[0].algo))nondet_algo; list[2].mathType = CUDNN_FMA_MATH; list[2].determinism = CUDNN_NON_DETERMINISTIC;
  list[3].algo = (decltype(list[0].algo))gemm_algo; list[3].status = CUDNN_STATUS_NOT_SUPPORTED; list[3].mathType = CUDNN_FMA_MATH; list[3].determinism = CUDNN_DETERMINISTIC;
  list[4].algo = (decltype(list[0].algo))gemm_algo; list[4].mathType = CUDNN_FMA_MATH; list[4].determinism = CUDNN_DETERMINISTIC; list[4].memory = ws_for(gemm_algo);
  for (int i = 0; i < 5; i++) list[i].time = (float)(i + 1);
  *count = req < 5 ? req : 5;
  for (int i = 0; i < *count; i++) perf[i] = list[i];
}

cudnnStatus_t exec_checks(const char *fn, int algo, bool ok_algo, const cudnnConvolutionStruct *c, void *ws,
                          size_t wsb) {
  if (!ok_algo) DNN_FAIL("%s: algorithm %d is not one the emulated heuristics offer as usable", fn, algo);
  if (wsb < ws_for(algo)) DNN_FAIL("%s: workspace %zu bytes < the %zu algorithm %d needs", fn, wsb, ws_for(algo), algo);
  if (wsb > 0 && !emu::device_range(ws, wsb)) DNN_FAIL("%s: workspace %p (%zu bytes) not in one device allocation", fn, ws, wsb);
  if (wsb > 0) memset(ws, 0xAB, wsb); // the workspace is the library's to scribble on
  (void)c;
  return CUDNN_STATUS_SUCCESS;
}

bool fits(const char *fn, const char *what, const void *p, size_t n) {
  if (!emu::device_range(p, n)) {
    report("EMU LIBRARY OUT-OF-BOUNDS", "%s: %s %p (%zu bytes) is not inside one device allocation", fn, what, p, n);
    return false;
  }
  return true;
}

// visits every (output, input, filter) index triple of the convolution
template <class F>
void conv_loop(const cudnnTensorStruct *X, const cudnnFilterStruct *W, const cudnnConvolutionStruct *C,
               const cudnnTensorStruct *Y, F f) {
  const int kg = W->k / C->groups;
  for (int n = 0; n < Y->n; n++)
    for (int oh = 0; oh < Y->h; oh++)
      for (int ow = 0; ow < Y->w; ow++)
        for (int k = 0; k < Y->c; k++) {
          const int g = k / kg;
          const size_t yi = (((size_t)n * Y->h + oh) * Y->w + ow) * Y->c + k;
          for (int r = 0; r < W->h; r++)
            for (int s = 0; s < W->w; s++) {
              const int ih = oh * C->u - C->ph + r * C->dh, iw = ow * C->v - C->pw + s * C->dw;
              if (ih < 0 || ih >= X->h || iw < 0 || iw >= X->w) continue;
              // convolution mode flips the filter
              const int fr = C->mode == CUDNN_CONVOLUTION ? W->h - 1 - r : r;
              const int fs = C->mode == CUDNN_CONVOLUTION ? W->w - 1 - s : s;
              for (int c = 0; c < W->c; c++)
                f(yi, (((size_t)n * X->h + ih) * X->w + iw) * X->c + (size_t)g * W->c + c,
                  (((size_t)k * W->h + fr) * W->w + fs) * W->c + c);
            }
        }
}
size_t tsize(const cudnnTensorStruct *t) { return (size_t)t->n * t->c * t->h * t->w; }
size_t fsize(const cudnnFilterStruct *f) { return (size_t)f->k * f->c * f->h * f->w; }
} // namespace

extern "C" {
const char *cudnnGetErrorString(cudnnStatus_t s) {
  static char b[64];
  snprintf(b, sizeof b, s == CUDNN_STATUS_SUCCESS ? "CUDNN_STATUS_SUCCESS" : "CUDNN_STATUS_%d", (int)s);
  return b;
}
size_t cudnnGetVersion(void) { return CUDNN_VERSION; }
cudnnStatus_t cudnnCreate(cudnnHandle_t *h) {
  *h = new cudnnContext{nullptr};
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroy(cudnnHandle_t h) {
  delete h;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s) {
  h->stream = s;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *d) {
  *d = new cudnnTensorStruct();
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t f, cudnnDataType_t t, int n,
                                         int c, int h, int w) {
  if (n <= 0 || c <= 0 || h <= 0 || w <= 0) DNN_FAIL("cudnnSetTensor4dDescriptor: dims %d %d %d %d", n, c, h, w);
  *d = {f, t, n, c, h, w, true};
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *d) {
  *d = new cudnnFilterStruct();
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t t, cudnnTensorFormat_t f, int k,
                                         int c, int h, int w) {
  if (k <= 0 || c <= 0 || h <= 0 || w <= 0) DNN_FAIL("cudnnSetFilter4dDescriptor: dims %d %d %d %d", k, c, h, w);
  *d = {t, f, k, c, h, w, true};
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *d) {
  *d = new cudnnConvolutionStruct();
  (*d)->groups = 1;
  (*d)->math = CUDNN_DEFAULT_MATH;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int ph, int pw, int u, int v, int dh,
                                              int dw, cudnnConvolutionMode_t m, cudnnDataType_t ct) {
  if (ph < 0 || pw < 0 || u <= 0 || v <= 0 || dh <= 0 || dw <= 0)
    DNN_FAIL("cudnnSetConvolution2dDescriptor: pad %d %d stride %d %d dilation %d %d", ph, pw, u, v, dh, dw);
  d->ph = ph; d->pw = pw; d->u = u; d->v = v; d->dh = dh; d->dw = dw; d->mode = m; d->ct = ct; d->set = true;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionGroupCount(cudnnConvolutionDescriptor_t d, int g) {
  if (g < 1) DNN_FAIL("cudnnSetConvolutionGroupCount(%d)", g);
  d->groups = g;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t m) {
  d->math = m;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(const cudnnConvolutionDescriptor_t c,
                                                    const cudnnTensorDescriptor_t x, const cudnnFilterDescriptor_t w,
                                                    int *n, int *ch, int *h, int *wd) {
  cudnnStatus_t s = check_all("cudnnGetConvolution2dForwardOutputDim", x, w, c, nullptr);
  if (s) return s;
  *n = x->n;
  *ch = w->k;
  *h = 1 + (x->h + 2 * c->ph - ((w->h - 1) * c->dh + 1)) / c->u;
  *wd = 1 + (x->w + 2 * c->pw - ((w->w - 1) * c->dw + 1)) / c->v;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t, const cudnnTensorDescriptor_t x,
                                                     const cudnnFilterDescriptor_t w,
                                                     const cudnnConvolutionDescriptor_t c,
                                                     const cudnnTensorDescriptor_t y, const int req, int *cnt,
                                                     cudnnConvolutionFwdAlgoPerf_t *p) {
  cudnnStatus_t s = check_all(__func__, x, w, c, y);
  if (s) return s;
  fill(p, cnt, req, CUDNN_CONVOLUTION_FWD_ALGO_FFT, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
       CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnnHandle_t, const cudnnFilterDescriptor_t w,
                                                          const cudnnTensorDescriptor_t dy,
                                                          const cudnnConvolutionDescriptor_t c,
                                                          const cudnnTensorDescriptor_t dx, const int req, int *cnt,
                                                          cudnnConvolutionBwdDataAlgoPerf_t *p) {
  cudnnStatus_t s = check_all(__func__, dx, w, c, dy);
  if (s) return s;
  fill(p, cnt, req, CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT, CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
       CUDNN_CONVOLUTION_BWD_DATA_ALGO_0);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnnHandle_t, const cudnnTensorDescriptor_t x,
                                                            const cudnnTensorDescriptor_t dy,
                                                            const cudnnConvolutionDescriptor_t c,
                                                            const cudnnFilterDescriptor_t dw, const int req, int *cnt,
                                                            cudnnConvolutionBwdFilterAlgoPerf_t *p) {
  cudnnStatus_t s = check_all(__func__, x, dw, c, dy);
  if (s) return s;
  fill(p, cnt, req, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
       CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t, const cudnnTensorDescriptor_t x,
                                                      const cudnnFilterDescriptor_t w,
                                                      const cudnnConvolutionDescriptor_t c,
                                                      const cudnnTensorDescriptor_t y, cudnnConvolutionFwdAlgo_t a,
                                                      size_t *s) {
  cudnnStatus_t st = check_all(__func__, x, w, c, y);
  if (st) return st;
  *s = ws_for(a);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t, const cudnnFilterDescriptor_t w,
                                                           const cudnnTensorDescriptor_t dy,
                                                           const cudnnConvolutionDescriptor_t c,
                                                           const cudnnTensorDescriptor_t dx,
                                                           cudnnConvolutionBwdDataAlgo_t a, size_t *s) {
  cudnnStatus_t st = check_all(__func__, dx, w, c, dy);
  if (st) return st;
  *s = ws_for(a);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnnHandle_t, const cudnnTensorDescriptor_t x,
                                                             const cudnnTensorDescriptor_t dy,
                                                             const cudnnConvolutionDescriptor_t c,
                                                             const cudnnFilterDescriptor_t dw,
                                                             cudnnConvolutionBwdFilterAlgo_t a, size_t *s) {
  cudnnStatus_t st = check_all(__func__, x, dw, c, dy);
  if (st) return st;
  *s = ws_for(a);
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void *alpha, const cudnnTensorDescriptor_t X,
                                      const void *x, const cudnnFilterDescriptor_t W, const void *w,
                                      const cudnnConvolutionDescriptor_t C, cudnnConvolutionFwdAlgo_t algo, void *ws,
                                      size_t wsb, const void *beta, const cudnnTensorDescriptor_t Y, void *y) {
  static const char fn[] = "cudnnConvolutionForward";
  cudnnStatus_t s = check_all(fn, X, W, C, Y);
  if (s) return s;
  if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
  DevScope scope(fn);
  s = exec_checks(fn, algo, algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
                                algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
                  C, ws, wsb);
  if (s) return s;
  const float a = *(const float *)alpha, b = *(const float *)beta;
  if (!fits(fn, "x", x, tsize(X) * 4) || !fits(fn, "w", w, fsize(W) * 4) || !fits(fn, "y", y, tsize(Y) * 4))
    return CUDNN_STATUS_EXECUTION_FAILED;
  const float *xp = (const float *)x, *wp = (const float *)w;
  float *yp = (float *)y;
  std::vector<float> acc(tsize(Y), 0.0f);
  conv_loop(X, W, C, Y, [&](size_t yi, size_t xi, size_t wi) { acc[yi] = fmaf(xp[xi], wp[wi], acc[yi]); });
  for (size_t i = 0; i < acc.size(); i++) yp[i] = b != 0.0f ? fmaf(b, yp[i], a * acc[i]) : a * acc[i];
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void *alpha, const cudnnFilterDescriptor_t W,
                                           const void *w, const cudnnTensorDescriptor_t DY, const void *dy,
                                           const cudnnConvolutionDescriptor_t C, cudnnConvolutionBwdDataAlgo_t algo,
                                           void *ws, size_t wsb, const void *beta, const cudnnTensorDescriptor_t X,
                                           void *dx) {
  static const char fn[] = "cudnnConvolutionBackwardData";
  cudnnStatus_t s = check_all(fn, X, W, C, DY);
  if (s) return s;
  if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
  DevScope scope(fn);
  s = exec_checks(fn, algo, algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, C,
                  ws, wsb);
  if (s) return s;
  const float a = *(const float *)alpha, b = *(const float *)beta;
  if (!fits(fn, "dx", dx, tsize(X) * 4) || !fits(fn, "w", w, fsize(W) * 4) || !fits(fn, "dy", dy, tsize(DY) * 4))
    return CUDNN_STATUS_EXECUTION_FAILED;
  const float *wp = (const float *)w, *gp = (const float *)dy;
  float *xp = (float *)dx;
  std::vector<float> acc(tsize(X), 0.0f);
  conv_loop(X, W, C, DY, [&](size_t yi, size_t xi, size_t wi) { acc[xi] = fmaf(gp[yi], wp[wi], acc[xi]); });
  for (size_t i = 0; i < acc.size(); i++) xp[i] = b != 0.0f ? fmaf(b, xp[i], a * acc[i]) : a * acc[i];
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void *alpha, const cudnnTensorDescriptor_t X,
                                             const void *x, const cudnnTensorDescriptor_t DY, const void *dy,
                                             const cudnnConvolutionDescriptor_t C,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void *ws, size_t wsb,
                                             const void *beta, const cudnnFilterDescriptor_t W, void *dw) {
  static const char fn[] = "cudnnConvolutionBackwardFilter";
  cudnnStatus_t s = check_all(fn, X, W, C, DY);
  if (s) return s;
  if (!h) return CUDNN_STATUS_NOT_INITIALIZED;
  DevScope scope(fn);
  s = exec_checks(fn, algo,
                  algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, C, ws,
                  wsb);
  if (s) return s;
  const float a = *(const float *)alpha, b = *(const float *)beta;
  if (!fits(fn, "x", x, tsize(X) * 4) || !fits(fn, "dw", dw, fsize(W) * 4) || !fits(fn, "dy", dy, tsize(DY) * 4))
    return CUDNN_STATUS_EXECUTION_FAILED;
  const float *xp = (const float *)x, *gp = (const float *)dy;
  float *wp = (float *)dw;
  std::vector<float> acc(fsize(W), 0.0f);
  conv_loop(X, W, C, DY, [&](size_t yi, size_t xi, size_t wi) { acc[wi] = fmaf(gp[yi], xp[xi], acc[wi]); });
  for (size_t i = 0; i < acc.size(); i++) wp[i] = b != 0.0f ? fmaf(b, wp[i], a * acc[i]) : a * acc[i];
  return CUDNN_STATUS_SUCCESS;
}
} // extern "C"

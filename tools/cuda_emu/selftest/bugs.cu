// cuda_emu self-test: kernels with one deliberate bug each; the emulator must report every
// one (tools/cuda_emu/run.sh --selftest). Case "clean" must report nothing.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

__global__ void block_sum(const float *x, float *out, int n, int sync) {
  __shared__ float sh[256];
  sh[threadIdx.x] = threadIdx.x < (unsigned)n ? x[threadIdx.x] : 0.0f;
  if (sync) __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half >>= 1) {
    if ((int)threadIdx.x < half) sh[threadIdx.x] += sh[threadIdx.x + half];
    if (sync) __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = sh[0];
}
__global__ void write_one_past(float *y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) y[i] = 1.0f; // bug: <=
}
__global__ void read_far(const float *x, float *y, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i + 4096];
}
__global__ void uninit_shared(float *y) {
  __shared__ float sh[64];
  if (threadIdx.x < 32) sh[threadIdx.x] = 1.0f;
  __syncthreads();
  y[threadIdx.x] = sh[threadIdx.x]; // threads 32..63 read unwritten shared memory
}
__global__ void early_exit_barrier(float *y, int n) {
  if ((int)threadIdx.x >= n) return;
  __syncthreads();
  y[threadIdx.x] = 2.0f;
}
__global__ void divergent_shfl(float *y) {
  float v = (float)threadIdx.x;
  if ((threadIdx.x & 31) < 16) v += __shfl_xor_sync(0xffffffffu, v, 1);
  y[threadIdx.x] = v;
}
__global__ void warp_sum_ok(const float *x, float *y) {
  float v = x[threadIdx.x];
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  y[threadIdx.x] = v;
}

static float *dev(int n) {
  float *p;
  cudaMalloc((void **)&p, n * sizeof(float));
  return p;
}

int main(int argc, char **argv) {
  const char *c = argc > 1 ? argv[1] : "clean";
  const int n = 200;
  float *x = dev(n), *y = dev(n);
  float h[256];
  for (int i = 0; i < 256; i++)
    h[i] = (float)(i % 7);
  cudaMemcpy(x, h, n * sizeof(float), cudaMemcpyHostToDevice);
  if (!strcmp(c, "clean")) {
    block_sum<<<1, 256>>>(x, y, n, 1);
    float s;
    cudaMemcpy(&s, y, 4, cudaMemcpyDeviceToHost);
    float want = 0;
    for (int i = 0; i < n; i++)
      want += h[i];
    if (s != want) {
      printf("clean: block_sum %g != %g\n", s, want);
      return 1;
    }
    warp_sum_ok<<<1, 64>>>(x, y);
    float w[64];
    cudaMemcpy(w, y, sizeof w, cudaMemcpyDeviceToHost);
    float w0 = 0, w1 = 0;
    for (int i = 0; i < 32; i++) {
      w0 += h[i];
      w1 += h[32 + i];
    }
    if (w[5] != w0 || w[40] != w1) {
      printf("clean: warp sum %g %g != %g %g\n", w[5], w[40], w0, w1);
      return 1;
    }
    if (cudaGetLastError() != cudaSuccess) {
      printf("clean: launch error\n");
      return 1;
    }
  } else if (!strcmp(c, "missing_sync")) {
    block_sum<<<1, 256>>>(x, y, n, 0);
  } else if (!strcmp(c, "oob_write")) {
    write_one_past<<<(n + 255) / 256, 256>>>(y, n);
  } else if (!strcmp(c, "oob_read")) {
    read_far<<<1, 256>>>(x, y, n);
  } else if (!strcmp(c, "uninit_shared")) {
    uninit_shared<<<1, 64>>>(y);
  } else if (!strcmp(c, "divergent_barrier")) {
    early_exit_barrier<<<1, 256>>>(y, n);
  } else if (!strcmp(c, "divergent_shfl")) {
    divergent_shfl<<<1, 64>>>(y);
  } else if (!strcmp(c, "bad_launch")) {
    block_sum<<<1, 2048>>>(x, y, n, 1);
    if (cudaGetLastError() == cudaSuccess) {
      printf("bad_launch: no launch error\n");
      return 1;
    }
  } else if (!strcmp(c, "host_deref")) {
    printf("%g\n", x[3]); // host code reading device memory (needs EMU_PROTECT=1)
  } else if (!strcmp(c, "cublas_lda")) {
    cublasHandle_t hb;
    cublasCreate(&hb);
    const float one = 1, zero = 0;
    cublasSgemm(hb, CUBLAS_OP_N, CUBLAS_OP_N, 10, 10, 10, &one, x, 5, x, 10, &zero, y,
                10); // lda < m
  } else if (!strcmp(c, "memcpy_kind")) {
    cudaMemcpy(h, x, 16, cudaMemcpyHostToDevice); // direction swapped
  } else {
    printf("unknown case %s\n", c);
    return 2;
  }
  cudaFree(x);
  cudaFree(y);
  return 0;
}

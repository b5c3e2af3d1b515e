// cuda_emu: the device side of the CPU emulation of cluda's CUDA kernels.
//
// Force-included (g++ -include) before each cuda/*.cu file after transform.py has rewritten
// its launches (`k<<<g, b, s, st>>>(args)` -> emu::launch(...)) and its `__shared__`
// declarations (-> emu::shared_decl<T>(...), instrumented shared memory). Each CUDA thread of
// a block is a fiber (own stack) on one host thread; __syncthreads and the warp intrinsics
// are real barriers between those fibers (see emu_runtime.cpp). Nothing here "fixes" a
// kernel: shared memory starts as 0xFF bytes, and reads/writes of shared memory are checked
// for races between barriers.
#pragma once
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>
#include <vector_types.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>

#define __launch_bounds__(...)
#undef NULL
#define NULL nullptr /* NULL kernel arguments stay null pointer constants */
#undef __shared__
#define __shared__ __emu_shared_not_transformed__

namespace emu {

struct Fiber {
  void *sp;
  uint3 tid;
  int lin;   // linear thread index in the block
  int state; // see emu_runtime.cpp
};
extern thread_local Fiber *cur;
extern thread_local uint3 blk;
extern thread_local dim3 bdim, gdim;

// ---- launches ----
struct Cfg {
  dim3 grid, block;
  size_t shmem;
  cudaStream_t stream;
  Cfg(dim3 g, dim3 b, size_t s = 0, cudaStream_t st = 0)
      : grid(g), block(b), shmem(s), stream(st) {}
};
typedef void (*Thunk)(void *);
// Runs the grid; `body` runs one CUDA thread (reads emu::cur / blk).
void launch_raw(const char *name, const char *where, const Cfg &cfg, Thunk body, void *ctx);

// `call` is a captureless generic lambda calling the kernel with the launch's arguments,
// which are evaluated once on the host and copied into each thread (like kernel parameters).
template <class L, class... A>
void launch(const char *name, const char *where, const Cfg &cfg, L call, A &&...a) {
  auto args = std::make_tuple(std::forward<A>(a)...);
  using T = decltype(args);
  launch_raw(
      name, where, cfg,
      [](void *p) {
        T copy = *(T *)p;
        std::apply(L(), copy);
      },
      &args);
  (void)call;
}

// ---- barriers and warp exchange ----
void syncthreads(const char *where);
uint64_t warp_exchange(unsigned mask, uint64_t mine, int src_lane, bool valid, const char *where);
void syncwarp(unsigned mask, const char *where);
unsigned ballot(unsigned mask, bool pred, const char *where);
void report(const char *kind, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

// ---- instrumented shared memory ----
void *shared_alloc(int key, const char *name, size_t bytes, size_t align);
void shared_access(const void *p, size_t bytes, bool write, const char *name);

template <class E> struct SRef {
  E *p;
  const char *name;
  operator E() const {
    shared_access(p, sizeof(E), false, name);
    return *p;
  }
  E get() const { return (E) * this; }
  SRef &operator=(E v) {
    shared_access(p, sizeof(E), true, name);
    *p = v;
    return *this;
  }
  SRef &operator=(const SRef &o) { return *this = o.get(); }
  // clang-format off
#define EMU_CA(op)                                                                                 \
  template <class V> SRef &operator op##=(V v) {                                                   \
    E t = get();                                                                                   \
    t op##= v;                                                                                     \
    return *this = t;                                                                              \
  }
  EMU_CA(+) EMU_CA(-) EMU_CA(*) EMU_CA(/) EMU_CA(|) EMU_CA(&) EMU_CA(^)
#undef EMU_CA
  E *operator&() const { return p; } // escapes instrumentation
  // clang-format on
};

template <class E> struct SPtr {
  E *p;
  const char *name;
  auto operator[](int64_t i) const {
    if constexpr (std::is_array_v<E>) {
      using U = std::remove_extent_t<E>;
      return SPtr<U>{reinterpret_cast<U *>(p + i), name};
    } else {
      return SRef<E>{p + i, name};
    }
  }
  // Passing the array to a __device__ function that takes a plain pointer: accesses through
  // that pointer are no longer race-checked (still poisoned).
  template <class Q, class = std::enable_if_t<!std::is_array_v<E> && std::is_same_v<Q, E>>>
  operator Q *() const {
    return p;
  }
};

template <class T> auto shared_decl(int key, const char *name) {
  T *obj = (T *)shared_alloc(key, name, sizeof(T), alignof(T) < 16 ? 16 : alignof(T));
  if constexpr (std::is_array_v<T>) {
    using E = std::remove_extent_t<T>;
    return SPtr<E>{reinterpret_cast<E *>(obj), name};
  } else {
    return SRef<T>{obj, name};
  }
}

} // namespace emu

#define threadIdx (emu::cur->tid)
#define blockIdx (emu::blk)
#define blockDim (emu::bdim)
#define gridDim (emu::gdim)
#define EMU_STR2(x) #x
#define EMU_STR(x) EMU_STR2(x)
#define EMU_WHERE __FILE__ ":" EMU_STR(__LINE__)
#define __syncthreads() emu::syncthreads(EMU_WHERE)
inline void __syncwarp(unsigned mask = 0xffffffffu) { emu::syncwarp(mask, "__syncwarp"); }

// ---- warp shuffles (width 32 only; the project uses no other) ----
namespace emu {
template <class T> inline uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8, "shfl of a type wider than 8 bytes");
  uint64_t b = 0;
  memcpy(&b, &v, sizeof v);
  return b;
}
template <class T> inline T from_bits(uint64_t b) {
  T v;
  memcpy(&v, &b, sizeof v);
  return v;
}
inline int lane() { return cur->lin & 31; }
} // namespace emu
template <class T> inline T __shfl_xor_sync(unsigned mask, T v, int lm, int width = 32) {
  if (width != 32) emu::report("EMU UNSUPPORTED", "shfl width %d", width);
  return emu::from_bits<T>(
      emu::warp_exchange(mask, emu::to_bits(v), emu::lane() ^ lm, true, "__shfl_xor_sync"));
}
template <class T> inline T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32) {
  if (width != 32) emu::report("EMU UNSUPPORTED", "shfl width %d", width);
  const int src = emu::lane() + (int)d;
  return emu::from_bits<T>(emu::warp_exchange(mask, emu::to_bits(v), src < 32 ? src : emu::lane(),
                                              true, "__shfl_down_sync"));
}
template <class T> inline T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32) {
  if (width != 32) emu::report("EMU UNSUPPORTED", "shfl width %d", width);
  const int src = emu::lane() - (int)d;
  return emu::from_bits<T>(emu::warp_exchange(mask, emu::to_bits(v), src >= 0 ? src : emu::lane(),
                                              true, "__shfl_up_sync"));
}
template <class T> inline T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
  if (width != 32) emu::report("EMU UNSUPPORTED", "shfl width %d", width);
  return emu::from_bits<T>(
      emu::warp_exchange(mask, emu::to_bits(v), src & 31, true, "__shfl_sync"));
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  return emu::ballot(mask, pred != 0, "__ballot_sync");
}
inline int __any_sync(unsigned mask, int pred) {
  return emu::ballot(mask, pred != 0, "__any_sync") != 0;
}
inline int __all_sync(unsigned mask, int pred) {
  return emu::ballot(mask, pred != 0, "__all_sync") == emu::ballot(mask, true, "__all_sync");
}

// ---- arithmetic intrinsics: IEEE round-to-nearest on the host (SSE, no contraction) ----
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return sqrtf(a); }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline int __float2int_rn(float x) { return (int)nearbyintf(x); }
inline int __float2int_rz(float x) { return (int)x; }
inline int __float2int_rd(float x) { return (int)floorf(x); }
inline int __float2int_ru(float x) { return (int)ceilf(x); }
inline unsigned __umulhi(unsigned a, unsigned b) {
  return (unsigned)(((unsigned long long)a * b) >> 32);
}
inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
  return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
inline float __int_as_float(int i) {
  float f;
  memcpy(&f, &i, 4);
  return f;
}
inline int __float_as_int(float f) {
  int i;
  memcpy(&i, &f, 4);
  return i;
}
inline unsigned __float_as_uint(float f) {
  unsigned i;
  memcpy(&i, &f, 4);
  return i;
}
inline float __uint_as_float(unsigned i) {
  float f;
  memcpy(&f, &i, 4);
  return f;
}
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x ? __builtin_clz((unsigned)x) : 32; }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <class T> inline T __ldg(const T *p) { return *p; }

// ---- atomics (fibers of one host thread never interleave inside a call; __atomic anyway) ----
template <class T> inline T emu_atomic_add(T *p, T v) {
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline int atomicAdd(int *p, int v) { return emu_atomic_add(p, v); }
inline unsigned atomicAdd(unsigned *p, unsigned v) { return emu_atomic_add(p, v); }
inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
  return emu_atomic_add(p, v);
}
inline float atomicAdd(float *p, float v) {
  float old, nv;
  memcpy(&old, p, 4);
  for (;;) {
    nv = old + v;
    int o, n;
    memcpy(&o, &old, 4);
    memcpy(&n, &nv, 4);
    if (__atomic_compare_exchange_n((int *)p, &o, n, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
      return old;
    memcpy(&old, &o, 4);
  }
}
inline double atomicAdd(double *p, double v) {
  double old, nv;
  memcpy(&old, p, 8);
  for (;;) {
    nv = old + v;
    long long o, n;
    memcpy(&o, &old, 8);
    memcpy(&n, &nv, 8);
    if (__atomic_compare_exchange_n((long long *)p, &o, n, false, __ATOMIC_SEQ_CST,
                                    __ATOMIC_SEQ_CST))
      return old;
    memcpy(&old, &o, 8);
  }
}
template <class T> inline T emu_atomic_min(T *p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (v < old &&
         !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
template <class T> inline T emu_atomic_max(T *p, T v) {
  T old = __atomic_load_n(p, __ATOMIC_SEQ_CST);
  while (v > old &&
         !__atomic_compare_exchange_n(p, &old, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)) {
  }
  return old;
}
inline int atomicMin(int *p, int v) { return emu_atomic_min(p, v); }
inline unsigned atomicMin(unsigned *p, unsigned v) { return emu_atomic_min(p, v); }
inline unsigned long long atomicMin(unsigned long long *p, unsigned long long v) {
  return emu_atomic_min(p, v);
}
inline int atomicMax(int *p, int v) { return emu_atomic_max(p, v); }
inline unsigned atomicMax(unsigned *p, unsigned v) { return emu_atomic_max(p, v); }
inline unsigned long long atomicMax(unsigned long long *p, unsigned long long v) {
  return emu_atomic_max(p, v);
}
inline int atomicExch(int *p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicExch(unsigned *p, unsigned v) {
  return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
inline int atomicCAS(int *p, int c, int v) {
  __atomic_compare_exchange_n(p, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return c;
}
inline unsigned atomicCAS(unsigned *p, unsigned c, unsigned v) {
  __atomic_compare_exchange_n(p, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return c;
}
inline unsigned long long atomicCAS(unsigned long long *p, unsigned long long c,
                                    unsigned long long v) {
  __atomic_compare_exchange_n(p, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return c;
}
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

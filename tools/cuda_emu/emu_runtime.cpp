// cuda_emu: emulated CUDA runtime (memory, streams, launches) and the block scheduler.
//
// Device memory: every cudaMalloc is its own mmap, right-aligned (EMU_ALIGN, default 16
// bytes) against a 1 MiB PROT_NONE guard, with a 64 KiB guard in front, filled with 0xFF bytes
// (a real cudaMalloc returns garbage, not zeros); the few slack bytes before the end guard
// hold a canary checked after every kernel and library call. Outside kernels, memcpy/memset
// and library calls all device memory is PROT_NONE (EMU_PROTECT=0 turns that off), so a host
// dereference of a device pointer faults. Faults are reported with the allocation and kernel.
//
// Kernels: blocks run one after another (EMU_SCHED=random, the default, shuffles the block
// order and the thread order of every barrier phase; fwd / rev are fixed orders); the threads
// of a block are fibers with their own stacks switched by hand (no preemption inside a phase),
// so __syncthreads is a real barrier, warp intrinsics a real warp barrier. Shared memory is
// poisoned and every access through a __shared__ array is checked against the accesses of
// other threads since the last barrier (read-write / write-write races) and against reads of
// never-written shared memory.
#include <cuda_runtime_api.h>
#include <cublas_v2.h>
#include <cudnn.h>
#include <nccl.h>
#include <execinfo.h>
#include <signal.h>
#include <stdarg.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <set>
#include <vector>

#include "emu_kernel.h"
#include "emu_internal.h"

namespace emu {

thread_local Fiber *cur;
thread_local uint3 blk;
thread_local dim3 bdim, gdim;

// ------------------------------------------------------------------ reporting
static int n_errors = 0;
static std::set<std::string> reported;
static const char *cur_kernel = nullptr;      // kernel or library call running now
static const char *cur_kernel_where = nullptr; // launch site
static long long n_launches = 0;

void report(const char *kind, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  std::string key = std::string(kind) + "|" + (cur_kernel ? cur_kernel : "") + "|" + msg;
  n_errors++;
  if (reported.size() > 200 || !reported.insert(key).second) return;
  fprintf(stderr, "%s: %s [in %s launched at %s]\n", kind, msg, cur_kernel ? cur_kernel : "host code",
          cur_kernel_where ? cur_kernel_where : "-");
  fflush(stderr);
}
int error_count() { return n_errors; }

static int env_int(const char *name, int def) {
  const char *v = getenv(name);
  return v && *v ? atoi(v) : def;
}

// ------------------------------------------------------------------ device memory
struct Alloc {
  char *user;   // what cudaMalloc returned
  size_t size;  // requested
  char *map;    // mmap base (front guard first)
  size_t map_len;
  size_t id;
  size_t slack; // canary bytes after the user range, before the end guard
};
static std::map<uintptr_t, Alloc> allocs; // by user address
static size_t next_id = 1, live_bytes = 0;
static const size_t page = 4096;
static int protect_on = -1;
static int dev_depth = 0; // > 0: inside device work (memory accessible)

static size_t align_bytes() {
  static size_t a = 0;
  if (!a) {
    a = (size_t)env_int("EMU_ALIGN", 16);
    if (a < 1 || (a & (a - 1))) a = 16;
  }
  return a;
}
static bool protecting() {
  if (protect_on < 0) protect_on = env_int("EMU_PROTECT", 1);
  return protect_on != 0;
}
// PROT_NONE guards around every allocation: 64 KiB before, 1 MiB after (address space only)
static const size_t kGuardFront = 64 * 1024, kGuardBack = 1024 * 1024;
static void set_prot(const Alloc &a, int prot) {
  mprotect(a.map + kGuardFront, a.map_len - kGuardFront - kGuardBack, prot);
}

const Alloc *find_alloc(const void *p) {
  uintptr_t u = (uintptr_t)p;
  auto it = allocs.upper_bound(u);
  if (it == allocs.begin()) return nullptr;
  --it;
  const Alloc &a = it->second;
  if (u >= (uintptr_t)a.map && u < (uintptr_t)a.map + a.map_len) return &a;
  return nullptr;
}

// true when [p, p+n) lies inside one live allocation
bool device_range(const void *p, size_t n) {
  const Alloc *a = find_alloc(p);
  if (!a) return false;
  return (const char *)p >= a->user && (const char *)p + n <= a->user + a->size;
}

static void check_canaries() {
  for (auto &kv : allocs) {
    const Alloc &a = kv.second;
    for (size_t i = 0; i < a.slack; i++)
      if ((unsigned char)a.user[a.size + i] != 0xA5) {
        report("EMU OUT-OF-BOUNDS WRITE", "byte %zu past the end of cudaMalloc #%zu (%zu bytes) was overwritten",
               i, a.id, a.size);
        a.user[a.size + i] = (char)0xA5;
      }
  }
}

// EMU_VERBOSE: what ran on the "device" (never destroyed: read by the atexit handler)
static std::map<std::string, long> &call_counts = *new std::map<std::string, long>;
void dev_enter(const char *what, const char *where) {
  if (dev_depth++ == 0) {
    call_counts[what]++;
    if (protecting())
      for (auto &kv : allocs) set_prot(kv.second, PROT_READ | PROT_WRITE);
    cur_kernel = what;
    cur_kernel_where = where;
  }
}
void dev_leave() {
  if (--dev_depth == 0) {
    check_canaries();
    if (protecting())
      for (auto &kv : allocs) set_prot(kv.second, PROT_NONE);
    cur_kernel = nullptr;
    cur_kernel_where = nullptr;
  }
}

static cudaError_t dev_malloc(void **out, size_t size) {
  if (!out) return cudaErrorInvalidValue;
  *out = nullptr;
  if (size == 0) return cudaSuccess;
  const size_t al = align_bytes();
  const size_t body = (size + al - 1) / al * al;
  const size_t body_pages = (body + page - 1) / page * page;
  const size_t len = body_pages + kGuardFront + kGuardBack;
  if ((double)live_bytes + size > 64.0 * (1ull << 30)) return cudaErrorMemoryAllocation;
  char *m = (char *)mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return cudaErrorMemoryAllocation;
  mprotect(m + kGuardFront, body_pages, PROT_READ | PROT_WRITE);
  Alloc a;
  a.map = m;
  a.map_len = len;
  a.user = m + kGuardFront + body_pages - body;
  a.size = size;
  a.slack = body - size;
  a.id = next_id++;
  memset(a.user, 0xFF, size); // uninitialised device memory: NaN for floats
  memset(a.user + size, 0xA5, a.slack);
  if (protecting() && dev_depth == 0) set_prot(a, PROT_NONE);
  allocs[(uintptr_t)a.user] = a;
  live_bytes += size;
  *out = a.user;
  return cudaSuccess;
}

static cudaError_t dev_free(void *p) {
  if (!p) return cudaSuccess;
  auto it = allocs.find((uintptr_t)p);
  if (it == allocs.end()) {
    report("EMU API MISUSE", "cudaFree(%p): not a pointer returned by cudaMalloc (or freed twice)", p);
    return cudaErrorInvalidValue;
  }
  dev_enter("cudaFree", nullptr);
  check_canaries();
  dev_leave();
  live_bytes -= it->second.size;
  // keep the range reserved but inaccessible: a later use of the freed pointer faults
  mprotect(it->second.map, it->second.map_len, PROT_NONE);
  madvise(it->second.map, it->second.map_len, MADV_DONTNEED);
  allocs.erase(it);
  return cudaSuccess;
}

// ------------------------------------------------------------------ faults
static void describe_addr(const void *addr, char *buf, size_t n) {
  const char *p = (const char *)addr;
  const Alloc *a = find_alloc(p);
  if (!a) {
    // nearest allocations on either side
    uintptr_t u = (uintptr_t)p;
    auto it = allocs.upper_bound(u);
    if (it != allocs.begin()) {
      auto pv = std::prev(it);
      if (u >= (uintptr_t)pv->second.user && u < (uintptr_t)pv->second.map + pv->second.map_len + page) {
        snprintf(buf, n, "%zu bytes past the end of cudaMalloc #%zu (%zu bytes)",
                 (size_t)(u - (uintptr_t)(pv->second.user + pv->second.size)), pv->second.id, pv->second.size);
        return;
      }
    }
    if (it != allocs.end() && u + page >= (uintptr_t)it->second.map) {
      snprintf(buf, n, "%zu bytes before the start of cudaMalloc #%zu (%zu bytes)",
               (size_t)((uintptr_t)it->second.user - u), it->second.id, it->second.size);
      return;
    }
    snprintf(buf, n, "not in any live device allocation (freed memory, a host pointer or garbage)");
    return;
  }
  if (p < a->user)
    snprintf(buf, n, "%zu bytes before the start of cudaMalloc #%zu (%zu bytes)", (size_t)(a->user - p), a->id, a->size);
  else if (p >= a->user + a->size)
    snprintf(buf, n, "%zu bytes past the end of cudaMalloc #%zu (%zu bytes)", (size_t)(p - a->user - a->size), a->id, a->size);
  else
    snprintf(buf, n, "offset %zu of cudaMalloc #%zu (%zu bytes)%s", (size_t)(p - a->user), a->id, a->size,
             dev_depth == 0 ? ": host code dereferenced device memory" : "");
}

static void on_segv(int sig, siginfo_t *si, void *) {
  char where[256];
  describe_addr(si->si_addr, where, sizeof where);
  char msg[768];
  int len;
  if (cur_kernel && cur) {
    len = snprintf(msg, sizeof msg,
                   "EMU FAULT (signal %d): invalid access to %p: %s [in %s launched at %s, block (%u,%u,%u) thread (%u,%u,%u)]\n",
                   sig, si->si_addr, where, cur_kernel, cur_kernel_where ? cur_kernel_where : "-", blk.x, blk.y, blk.z,
                   cur->tid.x, cur->tid.y, cur->tid.z);
  } else {
    len = snprintf(msg, sizeof msg, "EMU FAULT (signal %d): invalid access to %p: %s [in %s]\n", sig, si->si_addr,
                   where, cur_kernel ? cur_kernel : "host code");
  }
  if (write(2, msg, (size_t)len) < 0) {
  }
  void *bt[32];
  int nb = backtrace(bt, 32);
  backtrace_symbols_fd(bt, nb, 2);
  _exit(3);
}

// ------------------------------------------------------------------ fibers
extern "C" void emu_ctx_switch(void **save_sp, void *new_sp);
asm(R"(
.text
.globl emu_ctx_switch
.type emu_ctx_switch,@function
emu_ctx_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size emu_ctx_switch,.-emu_ctx_switch
)");

enum { RUNNABLE = 0, AT_BARRIER = 1, AT_WARP = 2, DONE = 3 };
static const size_t kStack = 256 * 1024;

struct Warp {
  int waiting = 0;
  unsigned gen = 0;
  uint64_t slot[32];
  bool valid[32];
  unsigned vote;
};

struct Block {
  std::vector<Fiber> f;
  std::vector<char *> stacks;
  void *sched_sp = nullptr;
  Thunk body;
  void *ctx;
  int nt = 0, live = 0, at_barrier = 0;
  unsigned epoch = 1;
  std::vector<Warp> warps;
  std::vector<int> warp_live;
  const char *barrier_site = nullptr;
  // shared memory
  std::vector<char> shm;
  struct Shadow { int w_tid, r_tid; unsigned w_ep, r_ep; };
  std::vector<Shadow> shadow; // per 4-byte word
  struct Decl { int key; size_t off; };
  std::vector<Decl> decls;
  size_t shm_used = 0;
  bool deadlock = false;
};
static Block B;
static std::mt19937_64 rng;
static int sched_mode = -1; // 0 fwd 1 rev 2 random

static void fiber_entry() {
  B.body(B.ctx);
  cur->state = DONE;
  B.live--;
  B.warp_live[cur->lin / 32]--;
  emu_ctx_switch(&cur->sp, B.sched_sp);
  __builtin_trap();
}

static void yield_to_sched() { emu_ctx_switch(&cur->sp, B.sched_sp); }

void syncthreads(const char *where) {
  if (!cur) return;
  cur->state = AT_BARRIER;
  B.at_barrier++;
  if (!B.barrier_site) B.barrier_site = where;
  yield_to_sched();
}

// all live lanes of the warp in `mask` must arrive; returns after everyone has
static void warp_barrier(unsigned mask, const char *what) {
  const int w = cur->lin / 32;
  Warp &W = B.warps[w];
  const int lane = cur->lin & 31;
  if (!(mask >> lane & 1)) report("EMU WARP MISUSE", "%s called by lane %d not in mask 0x%08x", what, lane, mask);
  // lanes that exist in this warp
  const int first = w * 32, exist = std::min(32, B.nt - first);
  unsigned existing = exist == 32 ? 0xffffffffu : ((1u << exist) - 1);
  if (mask & ~existing)
    report("EMU WARP MISUSE", "%s mask 0x%08x names lanes that do not exist (block of %d threads)", what, mask, B.nt);
  for (int l = 0; l < exist; l++)
    if ((mask >> l & 1) && B.f[first + l].state == DONE)
      report("EMU WARP MISUSE", "%s mask 0x%08x includes lane %d which has already exited", what, mask, l);
  int expected = 0;
  for (int l = 0; l < exist; l++)
    if ((mask >> l & 1) && B.f[first + l].state != DONE) expected++;
  W.waiting++;
  if (W.waiting >= expected) { // last one: release the others
    W.waiting = 0;
    W.gen++;
    for (int l = 0; l < exist; l++)
      if (B.f[first + l].state == AT_WARP) B.f[first + l].state = RUNNABLE;
    return;
  }
  cur->state = AT_WARP;
  yield_to_sched();
}

uint64_t warp_exchange(unsigned mask, uint64_t mine, int src, bool, const char *where) {
  const int w = cur->lin / 32, lane = cur->lin & 31;
  Warp &W = B.warps[w];
  W.slot[lane] = mine;
  W.valid[lane] = true;
  warp_barrier(mask, where);
  uint64_t v;
  if (!(mask >> src & 1) || !W.valid[src]) {
    report("EMU WARP MISUSE", "%s: lane %d reads lane %d which is not taking part", where, lane, src);
    v = ~0ull;
  } else {
    v = W.slot[src];
  }
  warp_barrier(mask, where);
  W.valid[lane] = false;
  return v;
}

void syncwarp(unsigned mask, const char *where) { warp_barrier(mask, where); }

unsigned ballot(unsigned mask, bool pred, const char *where) {
  const int w = cur->lin / 32, lane = cur->lin & 31;
  Warp &W = B.warps[w];
  W.slot[lane] = pred;
  W.valid[lane] = true;
  warp_barrier(mask, where);
  unsigned v = 0;
  for (int l = 0; l < 32; l++)
    if ((mask >> l & 1) && W.valid[l] && W.slot[l]) v |= 1u << l;
  warp_barrier(mask, where);
  W.valid[lane] = false;
  return v;
}

// ------------------------------------------------------------------ shared memory
static const size_t kSharedMax = 48 * 1024;

void *shared_alloc(int key, const char *name, size_t bytes, size_t align) {
  for (auto &d : B.decls)
    if (d.key == key) return B.shm.data() + d.off;
  size_t off = (B.shm_used + align - 1) / align * align;
  if (off + bytes > kSharedMax) {
    report("EMU LAUNCH ERROR", "static shared memory %zu bytes (array '%s') exceeds 48 KiB", off + bytes, name);
    abort();
  }
  B.shm_used = off + bytes;
  B.decls.push_back({key, off});
  return B.shm.data() + off;
}

void shared_access(const void *p, size_t bytes, bool write, const char *name) {
  if (!cur) return;
  const size_t off = (size_t)((const char *)p - B.shm.data());
  if (off + bytes > B.shm_used) {
    report("EMU SHARED OUT-OF-BOUNDS", "access to '%s' at byte %zu beyond the %zu bytes of shared memory", name,
           off, B.shm_used);
    return;
  }
  const int me = cur->lin;
  const unsigned ep = B.epoch;
  for (size_t w = off / 4; w < (off + bytes + 3) / 4; w++) {
    Block::Shadow &s = B.shadow[w];
    if (!write) {
      if (s.w_ep == 0)
        report("EMU UNINITIALISED SHARED READ", "'%s' byte %zu read by thread %d before any thread wrote it", name,
               w * 4, me);
      else if (s.w_ep == ep && s.w_tid != me)
        report("EMU SHARED RACE", "'%s' byte %zu: thread %d reads what thread %d wrote with no __syncthreads between",
               name, w * 4, me, s.w_tid);
      if (s.r_ep != ep) {
        s.r_ep = ep;
        s.r_tid = me;
      } else if (s.r_tid != me) {
        s.r_tid = -2;
      }
    } else {
      if (s.w_ep == ep && s.w_tid != me && s.w_ep != 0)
        report("EMU SHARED RACE", "'%s' byte %zu: threads %d and %d both write with no __syncthreads between", name,
               w * 4, s.w_tid, me);
      if (s.r_ep == ep && s.r_tid != me)
        report("EMU SHARED RACE", "'%s' byte %zu: thread %d writes what thread %s read with no __syncthreads between",
               name, w * 4, me, s.r_tid == -2 ? "(several)" : std::to_string(s.r_tid).c_str());
      s.w_ep = ep;
      s.w_tid = me;
    }
  }
}

// ------------------------------------------------------------------ launches
static cudaError_t sticky_launch_error = cudaSuccess;

static void run_block(uint3 b) {
  blk = b;
  B.live = B.nt;
  B.at_barrier = 0;
  B.epoch = 1;
  B.barrier_site = nullptr;
  B.decls.clear();
  B.shm_used = 0;
  memset(B.shm.data(), 0xFF, B.shm.size());
  memset(B.shadow.data(), 0, B.shadow.size() * sizeof(Block::Shadow));
  for (int w = 0; w < (int)B.warps.size(); w++) {
    B.warps[w].waiting = 0;
    memset(B.warps[w].valid, 0, sizeof B.warps[w].valid);
    B.warp_live[w] = std::min(32, B.nt - w * 32);
  }
  for (int i = 0; i < B.nt; i++) {
    Fiber &f = B.f[i];
    f.state = RUNNABLE;
    f.lin = i;
    f.tid = uint3{(unsigned)(i % bdim.x), (unsigned)(i / bdim.x % bdim.y), (unsigned)(i / (bdim.x * bdim.y))};
    void **sp = (void **)(B.stacks[i] + kStack);
    *--sp = nullptr;                   // alignment / fake return address of fiber_entry
    *--sp = (void *)&fiber_entry;      // ret target
    for (int r = 0; r < 6; r++) *--sp = nullptr;
    f.sp = sp;
  }
  std::vector<int> order(B.nt);
  for (int i = 0; i < B.nt; i++) order[i] = i;
  while (B.live > 0) {
    if (sched_mode == 1)
      std::reverse(order.begin(), order.end());
    else if (sched_mode == 2)
      std::shuffle(order.begin(), order.end(), rng);
    bool ran = false;
    for (int i : order) {
      Fiber &f = B.f[i];
      if (f.state != RUNNABLE) continue;
      cur = &f;
      emu_ctx_switch(&B.sched_sp, f.sp);
      cur = nullptr;
      ran = true;
    }
    if (B.live == 0) break;
    bool any_runnable = false;
    for (auto &f : B.f)
      if (f.state == RUNNABLE) any_runnable = true;
    if (any_runnable) continue;
    if (B.at_barrier == B.live) { // everyone still alive waits at __syncthreads
      if (B.live != B.nt)
        report("EMU DIVERGENT BARRIER",
               "__syncthreads at %s reached by %d threads while %d threads of the block have already exited",
               B.barrier_site, B.live, B.nt - B.live);
      for (auto &f : B.f)
        if (f.state == AT_BARRIER) f.state = RUNNABLE;
      B.at_barrier = 0;
      B.barrier_site = nullptr;
      B.epoch++;
      continue;
    }
    (void)ran;
    // deadlock: some wait at a warp barrier, others at __syncthreads
    report("EMU DEADLOCK",
           "block (%u,%u,%u): %d threads wait at __syncthreads (%s), %d at a warp intrinsic; the kernel would hang",
           b.x, b.y, b.z, B.at_barrier, B.barrier_site ? B.barrier_site : "-", B.live - B.at_barrier);
    B.deadlock = true;
    return;
  }
}

void launch_raw(const char *name, const char *where, const Cfg &cfg, Thunk body, void *ctx) {
  if (sched_mode < 0) {
    const char *s = getenv("EMU_SCHED");
    sched_mode = !s || !strcmp(s, "random") ? 2 : !strcmp(s, "rev") ? 1 : 0;
    rng.seed((uint64_t)env_int("EMU_SEED", 1));
  }
  n_launches++;
  const dim3 g = cfg.grid, bl = cfg.block;
  const unsigned long long nt = (unsigned long long)bl.x * bl.y * bl.z;
  const char *bad = nullptr;
  if (g.x == 0 || g.y == 0 || g.z == 0 || bl.x == 0 || bl.y == 0 || bl.z == 0) bad = "a zero grid or block dimension";
  else if (nt > 1024) bad = "more than 1024 threads per block";
  else if (bl.z > 64) bad = "blockDim.z > 64";
  else if (g.y > 65535 || g.z > 65535) bad = "gridDim.y or gridDim.z > 65535";
  else if (g.x > 2147483647u) bad = "gridDim.x > 2^31 - 1";
  else if (cfg.shmem > kSharedMax) bad = "dynamic shared memory > 48 KiB without cudaFuncSetAttribute";
  if (bad) {
    cur_kernel = name;
    cur_kernel_where = where;
    report("EMU LAUNCH ERROR", "grid (%u,%u,%u) block (%u,%u,%u): %s (cudaErrorInvalidConfiguration)", g.x, g.y,
           g.z, bl.x, bl.y, bl.z, bad);
    cur_kernel = nullptr;
    sticky_launch_error = cudaErrorInvalidConfiguration;
    return;
  }
  if (cfg.stream && !stream_valid(cfg.stream)) report("EMU API MISUSE", "launch of %s on a destroyed or unknown stream", name);
  dev_enter(name, where);
  gdim = g;
  bdim = bl;
  B.nt = (int)nt;
  B.body = body;
  B.ctx = ctx;
  if (B.f.size() < nt) B.f.resize(nt);
  while (B.stacks.size() < nt) {
    char *s = (char *)mmap(nullptr, kStack + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                           -1, 0);
    mprotect(s, page, PROT_NONE); // stack overflow guard
    B.stacks.push_back(s + page);
  }
  B.warps.assign((nt + 31) / 32, Warp());
  B.warp_live.assign((nt + 31) / 32, 0);
  if (B.shm.empty()) {
    B.shm.resize(kSharedMax);
    B.shadow.resize(kSharedMax / 4);
  }
  B.deadlock = false;
  std::vector<uint3> blocks;
  blocks.reserve((size_t)g.x * g.y * g.z);
  for (unsigned z = 0; z < g.z; z++)
    for (unsigned y = 0; y < g.y; y++)
      for (unsigned x = 0; x < g.x; x++) blocks.push_back(uint3{x, y, z});
  if (sched_mode == 1) std::reverse(blocks.begin(), blocks.end());
  if (sched_mode == 2) std::shuffle(blocks.begin(), blocks.end(), rng);
  for (const uint3 &b : blocks) {
    run_block(b);
    if (B.deadlock) {
      sticky_launch_error = cudaErrorLaunchTimeout;
      break;
    }
  }
  dev_leave();
}

// ------------------------------------------------------------------ setup / exit
static void at_exit() {
  if (n_errors) {
    fprintf(stderr, "EMU SUMMARY: %d emulator error report(s), %lld kernel launches: exit status forced to 1\n", n_errors,
            n_launches);
    fflush(stderr);
    fflush(stdout);
    _exit(1);
  }
  if (getenv("EMU_VERBOSE")) {
    fprintf(stderr, "emu: clean, %lld kernel launches; device work by name:\n", n_launches);
    for (auto &kv : call_counts) fprintf(stderr, "emu:   %8ld  %s\n", kv.second, kv.first.c_str());
  }
}

__attribute__((constructor)) static void setup() {
  static char altstack[64 * 1024];
  stack_t ss = {};
  ss.ss_sp = altstack;
  ss.ss_size = sizeof altstack;
  sigaltstack(&ss, nullptr);
  struct sigaction sa = {};
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &sa, nullptr);
  sigaction(SIGBUS, &sa, nullptr);
  atexit(at_exit);
}

} // namespace emu

// ====================================================================== CUDA runtime API
using namespace emu;

namespace emu {
struct StreamRec { int alive; };
static std::set<void *> streams;
bool stream_valid(cudaStream_t s) { return !s || streams.count((void *)s); }
} // namespace emu

static thread_local cudaError_t last_error = cudaSuccess;
static cudaError_t ret(cudaError_t e) {
  if (e != cudaSuccess) last_error = e;
  return e;
}

extern "C" {

cudaError_t cudaGetDeviceCount(int *count) {
  if (!count) return ret(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : ret(cudaErrorInvalidDevice); }
cudaError_t cudaGetDevice(int *d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int *v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *v) {
  *v = CUDART_VERSION;
  return cudaSuccess;
}
int emu_sms() { return env_int("EMU_SMS", 4); }
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d) {
  if (d != 0) return ret(cudaErrorInvalidDevice);
  memset(p, 0, sizeof *p);
  snprintf(p->name, sizeof p->name, "cuda_emu CPU emulation");
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = emu_sms();
  p->totalGlobalMem = (size_t)64 << 30;
  p->sharedMemPerBlock = 48 * 1024;
  p->maxThreadsPerBlock = 1024;
  p->warpSize = 32;
  p->maxThreadsDim[0] = 1024;
  p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647;
  p->maxGridSize[1] = 65535;
  p->maxGridSize[2] = 65535;
  return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr a, int d) {
  if (d != 0) return ret(cudaErrorInvalidDevice);
  switch (a) {
  case cudaDevAttrMultiProcessorCount: *v = emu_sms(); return cudaSuccess;
  case cudaDevAttrMaxThreadsPerBlock: *v = 1024; return cudaSuccess;
  case cudaDevAttrWarpSize: *v = 32; return cudaSuccess;
  case cudaDevAttrComputeCapabilityMajor: *v = 9; return cudaSuccess;
  case cudaDevAttrComputeCapabilityMinor: *v = 0; return cudaSuccess;
  case cudaDevAttrMaxSharedMemoryPerBlock: *v = 48 * 1024; return cudaSuccess;
  default: report("EMU UNSUPPORTED", "cudaDeviceGetAttribute(%d)", (int)a); return ret(cudaErrorInvalidValue);
  }
}
cudaError_t cudaMemGetInfo(size_t *f, size_t *t) {
  *t = (size_t)64 << 30;
  *f = *t - live_bytes;
  return cudaSuccess;
}
cudaError_t cudaMalloc(void **p, size_t n) { return ret(dev_malloc(p, n)); }
cudaError_t cudaFree(void *p) { return ret(dev_free(p)); }
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int) {
  *s = (cudaStream_t)malloc(16);
  streams.insert((void *)*s);
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *s) { return cudaStreamCreateWithFlags(s, 0); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!streams.erase((void *)s)) return ret(cudaErrorInvalidResourceHandle);
  free((void *)s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (!stream_valid(s)) return ret(cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}
cudaError_t cudaGetLastError(void) {
  cudaError_t e = last_error != cudaSuccess ? last_error : sticky_launch_error;
  last_error = cudaSuccess;
  sticky_launch_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) { return last_error != cudaSuccess ? last_error : sticky_launch_error; }
const char *cudaGetErrorName(cudaError_t e) {
  switch (e) {
  case cudaSuccess: return "cudaSuccess";
  case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
  case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
  case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
  case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
  case cudaErrorLaunchTimeout: return "cudaErrorLaunchTimeout";
  case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
  default: return "cudaError(emu)";
  }
}
const char *cudaGetErrorString(cudaError_t e) { return cudaGetErrorName(e); }

static cudaError_t do_memcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind k, const char *fn) {
  if (n == 0) return cudaSuccess;
  if (!dst || !src) {
    report("EMU API MISUSE", "%s(dst %p, src %p, %zu bytes): null pointer (cudaErrorInvalidValue on a GPU)", fn, dst,
           src, n);
    return ret(cudaErrorInvalidValue);
  }
  bool dd = device_range(dst, n), sd = device_range(src, n);
  bool want_dd, want_sd;
  switch (k) {
  case cudaMemcpyHostToDevice: want_dd = true; want_sd = false; break;
  case cudaMemcpyDeviceToHost: want_dd = false; want_sd = true; break;
  case cudaMemcpyDeviceToDevice: want_dd = true; want_sd = true; break;
  case cudaMemcpyHostToHost: want_dd = false; want_sd = false; break;
  default: want_dd = dd; want_sd = sd; break; // cudaMemcpyDefault
  }
  if (want_dd != dd || want_sd != sd) {
    char a[200], b[200];
    describe_addr(dst, a, sizeof a);
    describe_addr(src, b, sizeof b);
    report("EMU API MISUSE", "%s(dst %p, src %p, %zu bytes, kind %d): dst is %s%s; src is %s%s", fn, dst, src, n,
           (int)k, want_dd ? "expected device memory: " : "host memory", want_dd && !dd ? a : "",
           want_sd ? "expected device memory: " : "host memory", want_sd && !sd ? b : "");
    return ret(cudaErrorInvalidValue);
  }
  dev_enter(fn, nullptr);
  memmove(dst, src, n);
  dev_leave();
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void *d, const void *s, size_t n, enum cudaMemcpyKind k) { return do_memcpy(d, s, n, k, "cudaMemcpy"); }
cudaError_t cudaMemcpyAsync(void *d, const void *s, size_t n, enum cudaMemcpyKind k, cudaStream_t st) {
  if (!stream_valid(st)) return ret(cudaErrorInvalidResourceHandle);
  return do_memcpy(d, s, n, k, "cudaMemcpyAsync");
}
static cudaError_t do_memset(void *d, int v, size_t n, const char *fn) {
  if (n == 0) return cudaSuccess;
  if (!device_range(d, n)) {
    char a[200];
    describe_addr(d, a, sizeof a);
    report("EMU API MISUSE", "%s(%p, %d, %zu bytes): the range is not inside one device allocation (%s)", fn, d, v, n, a);
    return ret(cudaErrorInvalidValue);
  }
  dev_enter(fn, nullptr);
  memset(d, v, n);
  dev_leave();
  return cudaSuccess;
}
cudaError_t cudaMemset(void *d, int v, size_t n) { return do_memset(d, v, n, "cudaMemset"); }
cudaError_t cudaMemsetAsync(void *d, int v, size_t n, cudaStream_t st) {
  if (!stream_valid(st)) return ret(cudaErrorInvalidResourceHandle);
  return do_memset(d, v, n, "cudaMemsetAsync");
}
cudaError_t cudaFuncSetAttribute(const void *, enum cudaFuncAttribute, int) { return cudaSuccess; }

// NCCL: only the version query of the probe (the NCCL backend is not emulated)
ncclResult_t ncclGetVersion(int *v) {
  *v = NCCL_VERSION_CODE;
  return ncclSuccess;
}

} // extern "C"

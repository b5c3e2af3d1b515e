#!/usr/bin/env bash
# cuda_emu: build cluda's CUDA kernels + host code against an emulated CUDA runtime / cuBLAS /
# cuBLASLt / cuDNN and run tests/gpu/test_gpu_*.c on the CPU. See tools/cuda_emu/README.md.
#
#   tools/cuda_emu/run.sh [test_name ...]      # default: every tests/gpu/test_gpu_*.c
#
# Environment: EMU_BUILD (default build-emu), EMU_CPU_BUILD (a build whose cluda_core, cluda_io
# and cluda_testing to link; default a CPU build under EMU_BUILD), CUDA_INC and
# EMU_INCLUDE_DIRS (headers), EMU_TIMEOUT (seconds per test, default 600),
# EMU_SKIP (space-separated test names not to run), JOBS (compile parallelism), and the
# emulator's own EMU_SCHED / EMU_SEED / EMU_SMS / EMU_ALIGN / EMU_PROTECT / EMU_LT_NOALGO
# (README). Exit status: 0 when every test that ran passed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
EMU="$ROOT/tools/cuda_emu"
B="${EMU_BUILD:-$ROOT/build-emu}"
JOBS="${JOBS:-$(nproc)}"
TIMEOUT="${EMU_TIMEOUT:-600}"
CUDA_INC="${CUDA_INC:-/usr/local/cuda/include}"
mkdir -p "$B/gen" "$B/obj" "$B/bin" "$B/logs"

# ---- 1. the CPU libraries (cluda_core, cluda_io, cluda_testing): those of an existing build
# (EMU_CPU_BUILD, as ctest passes; they contain no CUDA code) or a CPU build of our own ----
CPU="${EMU_CPU_BUILD:-$B/cpu}"
if [ ! -f "$CPU/CMakeCache.txt" ]; then
  cmake -S "$ROOT" -B "$CPU" -DCLUDA_CUDA=OFF -DCMAKE_BUILD_TYPE=Release >"$B/logs/cmake.log"
fi
cmake --build "$CPU" -j "$JOBS" --target cluda_core cluda_io cluda_testing >"$B/logs/cpu-build.log" 2>&1 ||
  { tail -30 "$B/logs/cpu-build.log"; exit 2; }

# ---- 2. kernels: transform + compile as host C++ ----
INC=(-I"$EMU" -I"$ROOT/include" -I"$ROOT/cuda" -I"$ROOT/cuda/ops" -isystem "$CUDA_INC")
# cuDNN / NCCL headers outside the toolkit (EMU_INCLUDE_DIRS, colon-separated; ctest passes
# the directories CMake found)
IFS=: read -r -a extra_inc <<<"${EMU_INCLUDE_DIRS:-}"
for d in "${extra_inc[@]}"; do [ -n "$d" ] && INC+=(-isystem "$d"); done
CXXFLAGS=(-std=c++20 -O2 -g -fno-omit-frame-pointer -ffp-contract=off -fno-strict-aliasing
          -Wall -Wno-unused-function -Wno-unknown-pragmas -Wno-unused-variable -Wno-deprecated-declarations)
CFLAGS=(-std=c11 -O2 -g -fno-omit-frame-pointer -ffp-contract=off -D_POSIX_C_SOURCE=200809L -Wall -Wextra
        -Wno-deprecated-declarations)
objs=()
compile_jobs=()
for cu in "$ROOT"/cuda/ops/*.cu "$ROOT"/cuda/optim.cu; do
  n=$(basename "$cu" .cu)
  gen="$B/gen/$n.cpp"
  obj="$B/obj/$n.o"
  objs+=("$obj")
  if [ ! -f "$obj" ] || [ "$cu" -nt "$obj" ] || [ "$EMU/emu_kernel.h" -nt "$obj" ] || [ "$EMU/transform.py" -nt "$obj" ] ||
    [ "$ROOT/cuda/ops/kernel_common.cuh" -nt "$obj" ] || [ "$ROOT/cuda/cuda_internal.h" -nt "$obj" ]; then
    python3 "$EMU/transform.py" "$cu" "$gen" 2>>"$B/logs/transform.log"
    compile_jobs+=("g++ ${CXXFLAGS[*]} ${INC[*]} -include emu_kernel.h -c $gen -o $obj")
  fi
done
for src in emu_runtime emu_libs; do
  obj="$B/obj/$src.o"
  objs+=("$obj")
  if [ ! -f "$obj" ] || [ "$EMU/$src.cpp" -nt "$obj" ] || [ "$EMU/emu_kernel.h" -nt "$obj" ] || [ "$EMU/emu_internal.h" -nt "$obj" ]; then
    compile_jobs+=("g++ ${CXXFLAGS[*]} ${INC[*]} -c $EMU/$src.cpp -o $obj")
  fi
done
# ---- 3. the project's CUDA host code, unchanged, against the emulated runtime ----
for c in "$ROOT"/cuda/*.c; do
  n=$(basename "$c" .c)
  obj="$B/obj/host_$n.o"
  objs+=("$obj")
  if [ ! -f "$obj" ] || [ "$c" -nt "$obj" ] || [ "$ROOT/cuda/cuda_internal.h" -nt "$obj" ]; then
    compile_jobs+=("gcc ${CFLAGS[*]} ${INC[*]} -c $c -o $obj")
  fi
done
if [ ${#compile_jobs[@]} -gt 0 ]; then
  printf '%s\n' "${compile_jobs[@]}" >"$B/logs/compile.cmds"
  if ! printf '%s\0' "${compile_jobs[@]}" | xargs -0 -P "$JOBS" -I{} bash -c '{}' >"$B/logs/compile.log" 2>&1; then
    grep -m 40 -B2 -A6 "error" "$B/logs/compile.log" || tail -40 "$B/logs/compile.log"
    echo "cuda_emu: compile failed (log: $B/logs/compile.log)"
    exit 2
  fi
fi
rm -f "$B/libcuda_emu.a"
ar rcs "$B/libcuda_emu.a" "${objs[@]}"

LIBS=("$CPU/tests/libcluda_testing.a" "$B/libcuda_emu.a" "$CPU/libcluda_io.a" "$CPU/libcluda_core.a"
      -lhdf5_serial -lpng -lz -lyaml -lopenblas -fopenmp -lm -lpthread)
LDPATH=(-L/usr/lib/x86_64-linux-gnu/hdf5/serial)
# Host-deref protection of device memory costs ~3x run time (mprotect per op): off unless asked.
export EMU_PROTECT="${EMU_PROTECT:-0}"

# ---- 4. self-test: the emulator must flag each deliberately buggy kernel ----
if [ "${1:-}" = "--selftest" ]; then
  python3 "$EMU/transform.py" "$EMU/selftest/bugs.cu" "$B/gen/selftest_bugs.cpp" 2>>"$B/logs/transform.log"
  g++ "${CXXFLAGS[@]}" "${INC[@]}" -include emu_kernel.h "$B/gen/selftest_bugs.cpp" -o "$B/bin/selftest_bugs" \
    "$B/libcuda_emu.a" -lpthread
  ok=0 bad=0
  while read -r case want; do
    set +e
    out=$(cd "$B" && EMU_PROTECT=$([ "$case" = host_deref ] && echo 1 || echo 0) timeout 60 "$B/bin/selftest_bugs" "$case" 2>&1)
    rc=$?
    set -e
    if [ "$case" = clean ]; then
      if [ $rc -eq 0 ] && ! grep -q "^EMU " <<<"$out"; then r=PASS; else r=FAIL; fi
    elif [ $rc -ne 0 ] && grep -qE "$want" <<<"$out"; then r=PASS; else r=FAIL; fi
    [ $r = PASS ] && ok=$((ok + 1)) || bad=$((bad + 1))
    printf '%s selftest %-18s %s\n' $r "$case" "$(grep -m1 '^EMU ' <<<"$out" | cut -c1-150)"
  done <<'CASES'
clean -
missing_sync ^EMU SHARED RACE
oob_write ^EMU (FAULT|OUT-OF-BOUNDS WRITE)
oob_read ^EMU FAULT
uninit_shared ^EMU UNINITIALISED SHARED READ
divergent_barrier ^EMU DIVERGENT BARRIER
divergent_shfl ^EMU (DEADLOCK|WARP MISUSE)
bad_launch ^EMU LAUNCH ERROR
host_deref ^EMU FAULT.*host code
cublas_lda ^EMU LIBRARY ERROR
memcpy_kind ^EMU API MISUSE
CASES
  echo "cuda_emu selftest: $ok passed, $bad failed"
  [ $bad -eq 0 ]
  exit
fi

# ---- 5. the tests ----
if [ $# -gt 0 ]; then
  tests=("$@")
else
  tests=()
  for t in "$ROOT"/tests/gpu/test_gpu_*.c; do tests+=("$(basename "$t" .c)"); done
fi
link_jobs=()
for t in "${tests[@]}"; do
  src="$ROOT/tests/gpu/$t.c"
  exe="$B/bin/$t"
  if [ ! -f "$exe" ] || [ "$src" -nt "$exe" ] || [ "$B/libcuda_emu.a" -nt "$exe" ] || [ "$ROOT/tests/gpu/gpu_testing.h" -nt "$exe" ]; then
    link_jobs+=("gcc ${CFLAGS[*]} -I$ROOT/tests/common -I$ROOT/tests/gpu ${INC[*]} $src -o $exe ${LDPATH[*]} ${LIBS[*]} -lstdc++")
  fi
done
if [ ${#link_jobs[@]} -gt 0 ]; then
  if ! printf '%s\0' "${link_jobs[@]}" | xargs -0 -P "$JOBS" -I{} bash -c '{}' >"$B/logs/link.log" 2>&1; then
    grep -m 40 -A4 "error\|undefined" "$B/logs/link.log" || tail -40 "$B/logs/link.log"
    echo "cuda_emu: test build failed (log: $B/logs/link.log)"
    exit 2
  fi
fi

pass=0 fail=0 skip=0
failed=()
for t in "${tests[@]}"; do
  if [[ " ${EMU_SKIP:-} " == *" $t "* ]]; then
    printf 'SKIP %-32s (EMU_SKIP)\n' "$t"
    skip=$((skip + 1))
    continue
  fi
  log="$B/logs/$t.log"
  start=$(date +%s.%N)
  set +e
  (cd "$B" && timeout "$TIMEOUT" "$B/bin/$t") >"$log" 2>&1
  rc=$?
  set -e
  secs=$(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  emu=$(grep -c "^EMU " "$log" || true)
  if [ $rc -eq 0 ] && [ "$emu" -eq 0 ]; then
    printf 'PASS %-32s %6.1f s\n' "$t" "$secs"
    pass=$((pass + 1))
  elif [ $rc -eq 124 ]; then
    printf 'FAIL %-32s %6.1f s  timeout after %s s (log %s)\n' "$t" "$secs" "$TIMEOUT" "$log"
    fail=$((fail + 1)); failed+=("$t")
  else
    first=$(grep -m1 -E "^EMU |FAIL|fail" "$log" | cut -c1-200 || true)
    printf 'FAIL %-32s %6.1f s  exit %d, %d emulator report(s): %s (log %s)\n' "$t" "$secs" $rc "$emu" "$first" "$log"
    fail=$((fail + 1)); failed+=("$t")
  fi
done
echo "cuda_emu summary: $pass passed, $fail failed, $skip skipped${failed:+ (failed: ${failed[*]})}"
[ $fail -eq 0 ]

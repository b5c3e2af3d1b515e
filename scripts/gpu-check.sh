#!/usr/bin/env bash
# gpu-check.sh: the one command for a GPU machine run. Prints what it finds (nvcc, the GPU,
# cuBLAS/cuDNN/NCCL under the CUDA toolkit or inside PyTorch's nvidia/* Python packages),
# unpacks the offline bundle of host libraries when one is there (.offline/debs, made by
# scripts/offline-bundle.sh download), configures cluda with the CUDA backend for sm_90,
# builds, runs `ctest -L gpu`, compute-sanitizer memcheck and racecheck over every GPU test,
# the whole ctest, then the GPU benchmarks (benchmarks/gpu_step.sh).
#
#   scripts/gpu-check.sh            # logs into $OUT when set, else build-gpu/gpu-logs
#   CLUDA_GPU_ARCH=80 scripts/gpu-check.sh
#   CLUDA_GPU_BUILD=build-x scripts/gpu-check.sh
#
# Logs (at most 8 files, so they all come back from a device run): summary.txt (the table
# printed last), gpu-check.log (everything), configure.log, build.log, ctest-gpu.log,
# sanitizer.log, ctest-all.log, bench.log. Exit status: 0 when every step passed.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo" || exit 1
build="${CLUDA_GPU_BUILD:-build-gpu}"
arch="${CLUDA_GPU_ARCH:-90}"
logs="${OUT:-$repo/$build/gpu-logs}"
mkdir -p "$logs"
exec > >(tee -a "$logs/gpu-check.log") 2>&1

declare -a summary=()
status=0
step() { # name rc
  local mark=PASS
  [ "$2" -ne 0 ] && mark="FAIL (rc $2)" && status=1
  summary+=("$(printf '%-28s %s' "$1" "$mark")")
}
say() { printf '\n==== %s ====\n' "$*"; }

say "machine"
date -u
uname -a
nproc
command -v nvidia-smi >/dev/null &&
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.sm,clocks.mem \
    --format=csv || echo "nvidia-smi: not found"

say "toolchain"
export PATH="$PATH:/usr/local/cuda/bin"
nvcc --version | tail -2 || echo "nvcc: not found"
cmake --version | head -1
ninja --version 2>/dev/null | sed 's/^/ninja /' || echo "ninja: not found"
gcc --version | head -1
python3 -c 'import sys; print("python", sys.version.split()[0])' 2>/dev/null
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
  "cudnn", torch.backends.cudnn.version(), "gpu", torch.cuda.is_available())' 2>/dev/null ||
  echo "torch: not importable"

# ---- CUDA libraries: the toolkit first, then PyTorch's nvidia/* packages ----
say "CUDA libraries"
if [ -x /usr/local/cuda/bin/nvcc ]; then
  cuda_root="$(readlink -f /usr/local/cuda)"
else
  cuda_root="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"
fi
nvcc_path="$cuda_root/bin/nvcc"
[ -x "$nvcc_path" ] || nvcc_path="$(command -v nvcc)"
nvidia_dirs=()
pydir="$(python3 - <<'EOF' 2>/dev/null
import os
try:
    import nvidia
    for p in nvidia.__path__:
        print(p)
except Exception:
    pass
EOF
)"
while IFS= read -r d; do [ -n "$d" ] && nvidia_dirs+=("$d"); done <<<"$pydir"
echo "CUDA toolkit: $cuda_root"
echo "python nvidia packages: ${nvidia_dirs[*]:-none}"

find_header() { # name -> directory holding it
  local h="$1" d
  for d in "$cuda_root/include" "$cuda_root/targets/x86_64-linux/include" /usr/include; do
    [ -f "$d/$h" ] && { echo "$d"; return; }
  done
  for d in "${nvidia_dirs[@]}"; do
    find "$d" -maxdepth 4 -name "$h" -printf '%h\n' 2>/dev/null | head -1 | grep . && return
  done
}
find_lib() { # soname stem (libcudnn.so) -> full path (unversioned link or versioned file)
  local l="$1" d f
  for d in "$cuda_root/lib64" "$cuda_root/lib" /usr/lib/x86_64-linux-gnu; do
    for f in "$d/$l" "$d/$l".[0-9]*; do [ -e "$f" ] && { echo "$f"; return; }; done
  done
  for d in "${nvidia_dirs[@]}"; do
    find "$d" -maxdepth 4 \( -name "$l" -o -name "$l.[0-9]*" \) 2>/dev/null | sort | head -1 |
      grep . && return
  done
}

cmake_hints=()
ld_dirs=()
for lib in cudnn nccl cublas cublasLt cudart; do
  case "$lib" in
  cudnn) hdr=cudnn.h ;;
  nccl) hdr=nccl.h ;;
  cublas) hdr=cublas_v2.h ;;
  cublasLt) hdr=cublasLt.h ;;
  cudart) hdr=cuda_runtime_api.h ;;
  esac
  inc="$(find_header "$hdr")"
  so="$(find_lib "lib$lib.so")"
  printf '%-9s header %-60s library %s\n' "$lib" "${inc:-NOT FOUND}" "${so:-NOT FOUND}"
  [ -n "$so" ] && ld_dirs+=("$(dirname "$so")")
  case "$lib" in
  cudnn | nccl)
    up="$(echo "$lib" | tr '[:lower:]' '[:upper:]')"
    [ -n "$inc" ] && cmake_hints+=("-D${up}_INCLUDE_DIR=$inc") && export "${up}_INCLUDE_DIR=$inc"
    [ -n "$so" ] && cmake_hints+=("-D${up}_LIBRARY=$so") && export "${up}_LIBRARY_DIR=$(dirname "$so")"
    ;;
  esac
done
for d in $(printf '%s\n' "${ld_dirs[@]}" | sort -u); do
  LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

# ---- host libraries: the offline bundle when present ----
say "host libraries"
offline_args=()
if ls .offline/debs/*.deb >/dev/null 2>&1; then
  # (re-)extract unless an extraction for this checkout's path is there
  if ! grep -qs "CLUDA_OFFLINE_PREFIX=\"$repo/.offline/prefix\"" .offline/env.sh ||
    [ ! -d .offline/prefix ]; then
    scripts/offline-bundle.sh extract 2>&1 | tail -5
    step "extract offline bundle" "${PIPESTATUS[0]}"
  fi
  # shellcheck disable=SC1091
  source .offline/env.sh
  read -r -a offline_args <<<"$CLUDA_OFFLINE_CMAKE_ARGS"
  echo "using the offline bundle in $CLUDA_OFFLINE_PREFIX"
else
  echo "no offline bundle (.offline/debs): using the system's libraries"
fi

# ---- configure, build ----
say "configure"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCLUDA_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" -DCMAKE_CUDA_COMPILER="$nvcc_path" \
  "${cmake_hints[@]}" "${offline_args[@]}" 2>&1 | tee "$logs/configure.log"
rc=${PIPESTATUS[0]}
step "configure (sm_$arch)" "$rc"
grep -E '^(CUDNN_|NCCL_|CUDAToolkit_(LIBRARY|INCLUDE)|HDF5_C_INCLUDE_DIR|MPI_C_HEADER_DIR|BLAS_LIBRARIES)' \
  "$build/CMakeCache.txt" 2>/dev/null | grep -v ADVANCED >>"$logs/configure.log"

if [ "$rc" -eq 0 ]; then
  say "build"
  cmake --build "$build" -j"$(nproc)" 2>&1 | tee "$logs/build.log" | grep -E 'warning|error|FAILED' |
    head -50
  rc=${PIPESTATUS[0]}
  step "build" "$rc"
  echo "warnings: $(grep -c 'warning' "$logs/build.log")"
fi

if [ "$rc" -eq 0 ]; then
  say "ctest -L gpu"
  ctest --test-dir "$build" -L 'gpu|cuda' --output-on-failure -V --timeout 600 2>&1 |
    tee "$logs/ctest-gpu.log" | sed -E 's/^[0-9]+: //' |
    grep -E '^(cluda:|  [a-z]|test_gpu|[0-9]+/[0-9]+ Test|FAIL|.*tests passed)' |
    grep -v 'expected error' | head -200
  step "ctest -L gpu" "${PIPESTATUS[0]}"
  grep -q 'Skipped' "$logs/ctest-gpu.log" && grep -q 'SKIP (no GPU)' "$logs/ctest-gpu.log" &&
    { echo "GPU tests were SKIPPED: no GPU visible"; step "GPU visible" 1; }

  # compute-sanitizer over every GPU test program: memcheck (out-of-bounds, misaligned and
  # uninitialised accesses, leaks) and racecheck (shared-memory races). Sanitized runs are
  # 10-100x slower, so each is capped (CLUDA_SANITIZER_RUN_SECONDS, 60) and the whole stage
  # has a budget (CLUDA_SANITIZER_SECONDS, 240): memcheck of every test first, then racecheck;
  # what the budget does not reach is listed as not run. rc 124 = the run hit its cap.
  sanitizer="$cuda_root/bin/compute-sanitizer"
  if [ -x "$sanitizer" ]; then
    say "compute-sanitizer"
    : >"$logs/sanitizer.log"
    budget_end=$(($(date +%s) + ${CLUDA_SANITIZER_SECONDS:-240}))
    for tool in memcheck racecheck; do
      for t in "$build"/tests/test_gpu_*; do
        [ -x "$t" ] || continue
        if [ "$(date +%s)" -ge "$budget_end" ]; then
          printf '%-10s %-32s not run (sanitizer budget spent)\n' "$tool" "$(basename "$t")" |
            tee -a "$logs/sanitizer.log"
          continue
        fi
        extra=()
        [ "$tool" = memcheck ] && extra=(--leak-check full)
        timeout "${CLUDA_SANITIZER_RUN_SECONDS:-60}" "$sanitizer" --tool "$tool" "${extra[@]}" \
          --error-exitcode 9 "$t" >>"$logs/sanitizer.log" 2>&1
        rc=$?
        printf '%-10s %-32s rc %d\n' "$tool" "$(basename "$t")" "$rc" | tee -a "$logs/sanitizer.log"
        [ "$rc" -eq 124 ] || step "$tool $(basename "$t")" "$rc"
      done
    done
  else
    echo "compute-sanitizer: not found under $cuda_root/bin"
    step "compute-sanitizer present" 1
  fi

  say "ctest (all)"
  ctest --test-dir "$build" --output-on-failure -j"$(nproc)" --timeout 600 -LE emu 2>&1 |
    tee "$logs/ctest-all.log" | tail -30
  step "ctest (all)" "${PIPESTATUS[0]}"

  # Only the GPU benchmarks: the CPU ones (bench_ops, bench_model, bench_train, bench_data,
  # bench_comm) measure this project's CPU path and are run on the CPU machines; device time
  # is scarce. CLUDA_GPU_BENCH=0 skips this step.
  say "GPU benchmarks"
  : >"$logs/bench.log"
  if [ "${CLUDA_GPU_BENCH:-1}" != 0 ] && [ -x benchmarks/gpu_step.sh ]; then
    BUILD="$build" timeout "${CLUDA_GPU_BENCH_SECONDS:-300}" benchmarks/gpu_step.sh 2>&1 |
      tee -a "$logs/bench.log" | tail -40
    step "gpu_step.sh" "${PIPESTATUS[0]}"
  else
    echo "skipped (CLUDA_GPU_BENCH=0 or no benchmarks/gpu_step.sh)"
  fi
fi

say "summary"
printf '%s\n' "${summary[@]}" | tee "$logs/summary.txt"
echo "logs in $logs"
exit "$status"

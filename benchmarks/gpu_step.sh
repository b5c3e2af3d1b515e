#!/usr/bin/env bash
# gpu_step.sh: one CLUDA training step on a GPU machine (H100 / H200, also offline): the
# PyTorch reference (benchmarks/pytorch_reference.py: Hugging Face MiT + DAFormer head, the
# losses of one step, AdamW) at MiT-B5, 512x512, batch 2 source + 2 target, CL 65x65, in bf16
# (autocast) and fp32; the bf16 GEMM rate of the GPU (a large torch matmul) for the model FLOP
# utilisation; and cluda's own step when cluda has a CUDA training step. Prints a table: step
# time, images/s, peak memory, TFLOP/s, MFU and the speed ratio torch_ms / cluda_ms.
#
#   benchmarks/gpu_step.sh            # scripts/gpu-check.sh runs it with BUILD=its build
#
# The step's FLOPs are counted on one PyTorch step with torch.utils.flop_counter (matmuls,
# convolutions with both backward gradients, attention; elementwise work is not counted), with
# the grouped-convolution backward fixed (pytorch_reference.py, conv_backward_flops). MFU =
# FLOPs / step time / the measured dense bf16 GEMM rate (an achieved rate, not the data sheet's
# peak, which is printed for reference). The fp32 run uses the same FLOPs and the same
# denominator, so its MFU says how far fp32 is from the machine's bf16 capability.
#
# cluda today trains on the CPU backend only (cluda_trainer_step uses cluda_cpu_context): the
# script says so and reports no cluda numbers. Once bench_train accepts `--device cuda`, the
# script runs it on the same network, crop, batch and CL size (a config written to LOG_DIR)
# and fills in the ratio.
#
# environment:
#   BUILD            cluda build directory (default build-gpu); configured and built here with
#                    the CUDA backend (sm_$CLUDA_GPU_ARCH) when it has no build.ninja
#   CLUDA_GPU_ARCH   CUDA architecture for that build (default 90)
#   TORCH_PYTHON     Python with CUDA torch and transformers (default python3)
#   WHEELHOUSE       a directory of wheels (transformers and its dependencies, made with `pip
#                    download transformers` elsewhere): installed with --no-index into
#                    LOG_DIR/pylib when transformers is missing (the machine is offline)
#   ENCODER (b5), CROP (512), BATCH (2, per domain), CL_SIZE (65), STEPS (20), WARMUP (5),
#   PRECISIONS ("bf16 fp32"), RUN_SECONDS (per PyTorch run, 240)
#   LOG_DIR          raw outputs (default $OUT/gpu_step when OUT is set, else a temporary dir)
# Exit status: 0 when every PyTorch run and the GEMM measurement worked, 1 otherwise, 2 when
# no GPU or no torch is there.
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 2
for a in "$@"; do
  if [[ $a == -h || $a == --help ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    exit 0
  fi
done
build=${BUILD:-build-gpu}
arch=${CLUDA_GPU_ARCH:-90}
py=${TORCH_PYTHON:-python3}
encoder=${ENCODER:-b5}
crop=${CROP:-512}
batch=${BATCH:-2}
cl=${CL_SIZE:-65}
steps=${STEPS:-20}
warmup=${WARMUP:-5}
precisions=${PRECISIONS:-bf16 fp32}
run_seconds=${RUN_SECONDS:-240}
if [[ -n ${LOG_DIR:-} ]]; then
  logs=$LOG_DIR
elif [[ -n ${OUT:-} ]]; then
  logs=$OUT/gpu_step
else
  logs=$(mktemp -d -t cluda-gpu-step.XXXXXX)
fi
mkdir -p "$logs"
status=0
say() { printf '\n==== %s ====\n' "$*"; }
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; } # key, a RESULT line

say "machine"
date -u
command -v nvidia-smi >/dev/null &&
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
if ! "$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_step: '$py' cannot import torch or sees no CUDA device (set TORCH_PYTHON)" >&2
  exit 2
fi
"$py" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN",
  torch.backends.cudnn.version(), "GPU", torch.cuda.get_device_name(0))'

# ---- transformers (pytorch_reference.py needs it) ----
if ! "$py" -c 'import transformers' 2>/dev/null; then
  if [[ -n ${WHEELHOUSE:-} && -d $WHEELHOUSE ]]; then
    echo "transformers missing: installing from $WHEELHOUSE into $logs/pylib"
    "$py" -m pip install -q --no-index --find-links "$WHEELHOUSE" --target "$logs/pylib" \
      transformers 2>&1 | tail -3
    export PYTHONPATH="$logs/pylib${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if ! "$py" -c 'import transformers' 2>/dev/null; then
    echo "gpu_step: '$py' cannot import transformers; on an offline machine set WHEELHOUSE to" \
      "a directory made elsewhere with: pip download transformers -d DIR" >&2
    exit 2
  fi
fi
"$py" -c 'import transformers; print("transformers", transformers.__version__)'

# ---- cluda: a CUDA build (libraries found as scripts/gpu-check.sh finds them) ----
say "cluda build ($build)"
build_ok=1
if [[ ! -f $build/build.ninja ]]; then
  nvcc=/usr/local/cuda/bin/nvcc
  [[ -x $nvcc ]] || nvcc=$(command -v nvcc || true)
  hints=()
  mapfile -t nv_dirs < <("$py" -c 'import nvidia; print("\n".join(nvidia.__path__))' 2>/dev/null)
  ((${#nv_dirs[@]})) || nv_dirs=(/nonexistent)  # find with no directory would search "."
  for lib in cudnn nccl; do
    inc=$(find "${nv_dirs[@]}" -maxdepth 4 -name "$lib.h" -printf '%h\n' 2>/dev/null | head -1)
    so=$(find "${nv_dirs[@]}" -maxdepth 4 -name "lib$lib.so*" 2>/dev/null | sort | head -1)
    up=${lib^^}
    [[ -n $inc ]] && hints+=("-D${up}_INCLUDE_DIR=$inc")
    if [[ -n $so ]]; then
      hints+=("-D${up}_LIBRARY=$so")
      so_dir=$(dirname "$so")
      export LD_LIBRARY_PATH="$so_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
  done
  offline=()
  if ls .offline/debs/*.deb >/dev/null 2>&1; then
    [[ -f .offline/env.sh ]] || scripts/offline-bundle.sh extract 2>&1 | tail -2
    # shellcheck disable=SC1091
    source .offline/env.sh && read -r -a offline <<<"$CLUDA_OFFLINE_CMAKE_ARGS"
  fi
  echo "nvcc: ${nvcc:-not found}; hints: ${hints[*]:-none}"
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCLUDA_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="$arch" ${nvcc:+-DCMAKE_CUDA_COMPILER="$nvcc"} "${hints[@]}" \
    "${offline[@]}" >"$logs/configure.log" 2>&1 || build_ok=0
fi
if ((build_ok)); then
  cmake --build "$build" -j"$(nproc)" --target bench_train >"$logs/build.log" 2>&1 || build_ok=0
fi
if ((build_ok)); then
  echo "built $build/bin/bench_train"
else
  echo "cluda build FAILED (logs in $logs/configure.log, $logs/build.log); PyTorch runs go on"
fi

# ---- the bf16 (and fp32) GEMM rate ----
say "GEMM rate"
timeout "$run_seconds" "$py" - >"$logs/gemm.log" 2>&1 <<'EOF'
import torch
n, reps = 8192, 100
for name, dt in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
    a = torch.randn(n, n, device="cuda", dtype=dt)
    b = torch.randn(n, n, device="cuda", dtype=dt)
    for _ in range(10):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    tflops = 2 * n ** 3 * reps / (start.elapsed_time(end) / 1e3) / 1e12
    print(f"RESULT name=gemm dtype={name} n={n} tflops={tflops:.1f} "
          f"tf32={torch.backends.cuda.matmul.allow_tf32}")
EOF
rc=$?
cat "$logs/gemm.log"
gemm_bf16=$(field tflops "$(grep '^RESULT name=gemm dtype=bf16' "$logs/gemm.log")")
[[ $rc -ne 0 || -z $gemm_bf16 ]] && { echo "GEMM measurement FAILED"; status=1; }
echo "data-sheet dense bf16 peak: 989 TFLOP/s for H100 / H200 SXM (756 for H100 PCIe)"

# ---- PyTorch reference ----
common=(--device cuda --encoder "$encoder" --crop "$crop" --batch "$batch"
  --cl-size "$cl" "$cl" --steps "$steps" --warmup "$warmup")
declare -A ms ips mem
gflop=""
for p in $precisions; do
  say "PyTorch $p"
  extra=()
  [[ -z $gflop ]] && extra=(--count-flops)
  timeout "$run_seconds" "$py" benchmarks/pytorch_reference.py "${common[@]}" --precision "$p" \
    "${extra[@]}" >"$logs/torch_$p.log" 2>&1
  rc=$?
  grep -v '^RESULT' "$logs/torch_$p.log" | tail -20
  total=$(grep '^RESULT name=pytorch_step .*stage=total' "$logs/torch_$p.log")
  if [[ $rc -ne 0 || -z $total ]]; then
    echo "PyTorch $p FAILED (rc $rc; log $logs/torch_$p.log)"
    status=1
    continue
  fi
  ms[$p]=$(field ms "$total")
  ips[$p]=$(field images_per_s "$total")
  mem[$p]=$(field peak_mib "$total")
  [[ -z $gflop ]] && gflop=$(field gflop_per_step "$(grep '^RESULT name=pytorch_flops' \
    "$logs/torch_$p.log")")
done

# ---- cluda ----
say "cluda"
cluda_ms=""
if ((build_ok)) && "$build/bin/bench_train" --help 2>&1 | grep -q -- '--device'; then
  cfg="$logs/cluda_step.yaml"
  cat >"$cfg" <<EOF
model: {encoder: $encoder, head: daformer, embed_dims: 512, channels: 256}
train: {batch: $batch, crop: [$crop, $crop]}
cl: {size: [$cl, $cl]}
data: {size: [$crop, $((2 * crop))]}
EOF
  timeout "$run_seconds" "$build/bin/bench_train" --device cuda --config "$cfg" --case demo \
    --iters "$steps" --warmup "$warmup" >"$logs/cluda.log" 2>&1
  tail -20 "$logs/cluda.log"
  cluda_ms=$(field ms "$(grep '^RESULT name=train case=demo stage=total' "$logs/cluda.log")")
  [[ -z $cluda_ms ]] && { echo "cluda's GPU step FAILED (log $logs/cluda.log)"; status=1; }
else
  echo "cluda has no CUDA training step yet: cluda_trainer_step runs on the CPU backend only" \
    "(bench_train has no --device option). Skipped: no cluda GPU numbers."
fi

# ---- table ----
say "summary: $encoder, ${crop}x$crop, batch $batch+$batch, CL ${cl}x$cl, median of $steps steps"
echo "step FLOPs (FlopCounterMode, one PyTorch step): ${gflop:-?} GFLOP; bf16 GEMM rate:" \
  "${gemm_bf16:-?} TFLOP/s"
printf '%-14s %10s %9s %10s %9s %7s %12s\n' run "step ms" images/s "peak MiB" TFLOP/s MFU \
  torch/cluda
row() { # name ms images/s peak_mib
  local tf=- mfu=- ratio=-
  if [[ -n $gflop && -n $2 ]]; then
    tf=$(awk -v g="$gflop" -v t="$2" 'BEGIN { printf "%.1f", g / t }')
    [[ -n $gemm_bf16 ]] && mfu=$(awk -v g="$gflop" -v t="$2" -v r="$gemm_bf16" \
      'BEGIN { printf "%.1f%%", 100 * g / t / r }')
  fi
  [[ -n $cluda_ms && -n $2 && $1 == pytorch* ]] &&
    ratio=$(awk -v a="$2" -v b="$cluda_ms" 'BEGIN { printf "%.2f", a / b }')
  printf '%-14s %10s %9s %10s %9s %7s %12s\n' "$1" "${2:--}" "${3:--}" "${4:--}" "$tf" "$mfu" \
    "$ratio"
}
for p in $precisions; do
  row "pytorch $p" "${ms[$p]:-}" "${ips[$p]:-}" "${mem[$p]:-}"
done
if [[ -n $cluda_ms ]]; then
  row cluda "$cluda_ms" "$(awk -v b="$batch" -v t="$cluda_ms" 'BEGIN { printf "%.3f", 2 * b / t * 1e3 }')" ""
else
  printf '%-14s %s\n' cluda "skipped: no CUDA training step in cluda yet"
fi
echo "images/s = source + target images per second; torch/cluda > 1: cluda is faster"
echo "raw outputs in $logs"
exit "$status"

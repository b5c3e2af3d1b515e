#!/usr/bin/env bash
# The CPU demo (`make demo`): trains the source-only baseline (configs/demo_source_only.yaml)
# and CLUDA (configs/demo.yaml) on the built-in synthetic street scenes, evaluates both on
# the target validation split, prints a table and writes <work-dir>/demo_result.json:
#   {"source_only_miou": <mIoU %>, "adapted_miou": <mIoU %>}
#
# usage: scripts/demo.sh [WORK_DIR]        (default work/demo)
#
# Environment: BUILD = the build directory holding bin/ (default build; the script builds
# nothing itself), DEMO_CONFIG / DEMO_SOURCE_ONLY_CONFIG = other configs, DEMO_SETS = extra
# `--set KEY=VALUE` overrides for both runs (space-separated; for experiments),
# DEMO_RANKS = MPI ranks (default 2; 1 = one process without mpirun).
#
# Data parallel: the configs' train.batch (2) is the GLOBAL batch; each of DEMO_RANKS ranks
# trains on 2 / DEMO_RANKS images per domain with BatchNorm synchronised over ranks
# (model.sync_bn), which computes the same function as one process on 2 images
# (docs/distributed.md; tests/mpi/test_train_parallel.c). As root, the Open MPI settings it
# needs (run as root, oversubscription on small machines) are set here.
#
# A finished source-only run in WORK_DIR/source_only whose resolved config equals the
# current one is reused; the CLUDA run always starts afresh. Each run's full output is in
# WORK_DIR/<run>/train.log, its metrics in metrics.jsonl and eval.json (the final
# target-validation evaluation, which the table reports).
set -euo pipefail

BUILD=${BUILD:-build}
WORK=${1:-work/demo}
CONFIG=${DEMO_CONFIG:-configs/demo.yaml}
SO_CONFIG=${DEMO_SOURCE_ONLY_CONFIG:-configs/demo_source_only.yaml}
read -r -a EXTRA_SETS <<<"${DEMO_SETS:-}"
# libgomp's spinning threads stall OpenBLAS on small machines (see GNUmakefile).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

die() {
  echo "demo: error: $*" >&2
  exit 1
}

[[ $# -le 1 ]] || die "usage: scripts/demo.sh [WORK_DIR]"
TRAIN=$BUILD/bin/cluda_train
INFER=$BUILD/bin/cluda_infer
for bin in "$TRAIN" "$INFER"; do
  [[ -x $bin ]] || die "$bin not found (build first: \`make build\`, or set BUILD=<build dir>)"
done
for cfg in "$CONFIG" "$SO_CONFIG"; do
  [[ -f $cfg ]] || die "config $cfg not found (run from the repository root)"
done
mkdir -p "$WORK" || die "cannot create work directory $WORK"

SETS=()
for s in "${EXTRA_SETS[@]}"; do SETS+=(--set "$s"); done

RANKS=${DEMO_RANKS:-2}
[[ $RANKS =~ ^[12]$ ]] || die "DEMO_RANKS=$RANKS: the demo's global batch of 2 splits over 1 or 2 ranks"
LAUNCH=()
RANK_SETS=()
if ((RANKS > 1)); then
  command -v mpirun >/dev/null || die "mpirun not found (Open MPI: scripts/install-deps.sh), or DEMO_RANKS=1"
  if [[ $(id -u) -eq 0 ]]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
  fi
  # more ranks than cores is fine for the demo; shared memory only, no network probing
  export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_pml=${OMPI_MCA_pml:-ob1}
  export OMPI_MCA_btl=${OMPI_MCA_btl:-self,vader}
  LAUNCH=(mpirun -np "$RANKS")
  RANK_SETS=(--set "train.batch=$((2 / RANKS))" --set model.sync_bn=true)
fi

# The resolved config of a file (values only, without the "where set" comments).
resolved() {
  "$INFER" --config "$1" "${SETS[@]}" --print-config | sed 's/  # .*$//'
}

# target-val mIoU (%) of a finished run, from its eval.json.
miou_of() {
  local json=$1/eval.json value
  [[ -f $json ]] || die "$json missing: the run did not evaluate"
  value=$(sed -n 's/.*"miou": \([-0-9.eE+]*\),.*/\1/p' "$json" | head -n 1)
  [[ -n $value ]] || die "no mIoU in $json"
  awk -v m="$value" 'BEGIN { printf "%.2f", 100 * m }'
}

fmt_time() { printf '%d:%02d' $(($1 / 60)) $(($1 % 60)); }

# train NAME CONFIG: a fresh run in WORK/NAME; prints progress, keeps the full log.
train() {
  local name=$1 config=$2 dir=$WORK/$1 status start
  rm -rf "$dir"
  mkdir -p "$dir"
  echo "demo: training $name ($config) in $dir"
  start=$(date +%s)
  set +e
  "${LAUNCH[@]}" "$TRAIN" --config "$config" --work-dir "$dir" "${SETS[@]}" "${RANK_SETS[@]}" 2>&1 |
    tee "$dir/train.log" |
    grep --line-buffered -E '^(cluda_train|it [0-9]+/[0-9]+ |eval @)'
  status=${PIPESTATUS[0]}
  set -e
  [[ $status -eq 0 ]] || die "training $name failed (exit $status); full log: $dir/train.log"
  echo $(($(date +%s) - start)) >"$dir/demo_seconds"
  resolved "$config" >"$dir/demo_config.yaml"
  echo "ranks: $RANKS" >>"$dir/demo_config.yaml"
}

total_start=$(date +%s)

# Source-only baseline: reuse a finished run with the same resolved config.
SO_DIR=$WORK/source_only
so_note=""
if [[ -f $SO_DIR/demo_seconds && -f $SO_DIR/eval.json && -f $SO_DIR/demo_config.yaml ]] &&
  { resolved "$SO_CONFIG"; echo "ranks: $RANKS"; } | cmp -s - "$SO_DIR/demo_config.yaml"; then
  echo "demo: reusing the finished source-only run in $SO_DIR (same config)"
  so_note=" (reused)"
else
  train source_only "$SO_CONFIG"
fi
so_miou=$(miou_of "$SO_DIR")
so_time=$(cat "$SO_DIR/demo_seconds")

train cluda "$CONFIG"
ad_miou=$(miou_of "$WORK/cluda")
ad_time=$(cat "$WORK/cluda/demo_seconds")

result=$WORK/demo_result.json
printf '{"source_only_miou": %s, "adapted_miou": %s}\n' "$so_miou" "$ad_miou" >"$result.tmp"
mv "$result.tmp" "$result"

gain=$(awk -v a="$ad_miou" -v s="$so_miou" 'BEGIN { printf "%+.2f", a - s }')
echo
echo "Target-validation mIoU (synthetic target style, $(sed -n 's/.*"images": \([0-9]*\),.*/\1/p' \
  "$WORK/cluda/eval.json") images, 19 classes):"
echo
printf '| %-28s | %15s | %10s |\n' "model" "target mIoU (%)" "train time"
printf '|%s|%s|%s|\n' "------------------------------" "----------------:" "-----------:"
printf '| %-28s | %15s | %10s |\n' "source only" "$so_miou" "$(fmt_time "$so_time")$so_note"
printf '| %-28s | %15s | %10s |\n' "CLUDA (adapted)" "$ad_miou" "$(fmt_time "$ad_time")"
echo
echo "adapted - source only: $gain mIoU points; total $(fmt_time $(($(date +%s) - total_start)))"
echo "wrote $result"

#!/usr/bin/env bash
# cluda_train on one machine without Slurm: Open MPI's mpirun, one rank per GPU
# (docs/distributed.md, jobs/README.md).
#
#   jobs/local_8gpu.sh [CONFIG [RUN_NAME]] 2>&1 | tee -a train-console.log
#
# CONFIG defaults to configs/gta2cs_daformer_cluda.yaml, RUN_NAME to the config's base name;
# the run directory is $RUN_ROOT/$RUN_NAME (RUN_ROOT default work/runs). Environment: NP
# (ranks; default the number of GPUs nvidia-smi lists), TRAIN (default build/bin/cluda_train),
# NCCL_DEBUG (default WARN; INFO also writes per-process NCCL logs into the run directory).
#
# Stopping with a checkpoint: `kill -USR1 <pid of this script>` (or -TERM) reaches mpirun as
# SIGUSR1, which it forwards to every rank; cluda_train writes a checkpoint and exits 75, and
# so does this script. Running it again resumes (--resume auto). Ctrl-C stops without one.
# As root (workstations, containers) Open MPI needs OMPI_ALLOW_RUN_AS_ROOT*, set below.
set -euo pipefail

readonly PREEMPTED=75 # cluda_train's status after a signal-triggered checkpoint

cd "$(dirname "$0")/.."
CONFIG=${1:-${CONFIG:-configs/gta2cs_daformer_cluda.yaml}}
RUN_NAME=${2:-${RUN_NAME:-$(basename "$CONFIG" .yaml)}}
RUN_ROOT=${RUN_ROOT:-work/runs}
RUN_DIR=$RUN_ROOT/$RUN_NAME
TRAIN=${TRAIN:-build/bin/cluda_train}
[[ -f $CONFIG ]] || { echo "error: config $CONFIG not found" >&2; exit 2; }
[[ -x $TRAIN ]] || { echo "error: $TRAIN not found (build first)" >&2; exit 2; }
if [[ -z ${NP:-} ]]; then
  NP=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  [[ $NP -gt 0 ]] || { echo "error: nvidia-smi lists no GPU; set NP" >&2; exit 2; }
fi
mkdir -p "$RUN_DIR"

echo "local run, $NP ranks, $(date -Is) on $(hostname)"
echo "git $(git rev-parse --verify -q HEAD || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (dirty)')"
echo "config $CONFIG -> run dir $RUN_DIR"
nvidia-smi -L || echo "nvidia-smi failed"
mpirun --version | head -n 1

# The cores are shared by NP ranks: an equal OpenMP share each.
OMP_NUM_THREADS=$(($(nproc) / NP > 0 ? $(nproc) / NP : 1))
export OMP_NUM_THREADS
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
if [[ $NCCL_DEBUG == INFO ]]; then
  mkdir -p "$RUN_DIR/nccl"
  export NCCL_DEBUG_FILE=$RUN_DIR/nccl/nccl.%h.%p.log
fi
if [[ $EUID -eq 0 ]]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
exports=()
for v in OMP_NUM_THREADS NCCL_DEBUG NCCL_DEBUG_FILE; do
  if [[ -n ${!v:-} ]]; then exports+=(-x "$v"); fi
done

# Every rank sees every GPU and takes the one of its node-local rank; --bind-to none leaves
# each rank's OpenMP threads free to spread over the cores.
mpirun -np "$NP" --bind-to none "${exports[@]}" \
  "$TRAIN" --config "$CONFIG" --work-dir "$RUN_DIR" --resume auto &
pid=$!
interrupted=0
# shellcheck disable=SC2317 # reached through the traps
forward() {
  interrupted=1
  kill -s USR1 "$pid" 2>/dev/null || true
}
# mpirun forwards SIGUSR1 to the ranks but answers SIGTERM by killing them: send USR1 for both.
trap forward USR1 TERM
# A trapped signal ends `wait` early: wait again for mpirun's own status.
while :; do
  interrupted=0
  status=0
  wait "$pid" || status=$?
  [[ $interrupted -eq 1 ]] || break
done

if [[ $status -eq $PREEMPTED ]]; then
  echo "stopped with a checkpoint in $RUN_DIR: run the same command again to resume"
else
  echo "cluda_train exited with status $status ($(date -Is))"
fi
exit "$status"

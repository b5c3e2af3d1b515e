#!/usr/bin/env bash
# Runs bench_model (cluda, CPU) and bench_model_torch.py (PyTorch, CPU) one after the other with
# the same thread count and options, for each head width in EMBED_DIMS, then prints per part and
# pass the two median times and torch_ms / cluda_ms (> 1: cluda is faster).
# With ROUNDS > 1 the pairs run ROUNDS times, alternating, and each row keeps the smallest of
# its per-round medians: on a shared 2-core machine this filters out bursts of other load.
#
# usage: benchmarks/compare_model.sh [bench options: --quick, --batch N, --repeats N, ...]
#        (not --embed-dims: use EMBED_DIMS)
# environment:
#   THREADS       threads for both (default 2): sets OMP_NUM_THREADS and OPENBLAS_NUM_THREADS
#   ROUNDS        how often to run the pairs (default 1)
#   EMBED_DIMS    DAFormer head widths to run (default "256 512": DAFormer and CLUDA)
#   BENCH_MODEL   the cluda binary (default build/bin/bench_model)
#   TORCH_PYTHON  a Python with torch (default /tmp/torchvenv/bin/python)
#   LOG_DIR       where the raw outputs are kept (default: a new temporary directory)
#   CLUDA_ENV, TORCH_ENV  extra VAR=value words for one side only; CLUDA_ENV defaults to
#                 "OMP_WAIT_POLICY=PASSIVE", cluda's recommended setting (torch is slower
#                 with it; set CLUDA_ENV=" " to measure without)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
threads=${THREADS:-2}
rounds=${ROUNDS:-1}
embeds=${EMBED_DIMS:-256 512}
bench=${BENCH_MODEL:-$root/build/bin/bench_model}
py=${TORCH_PYTHON:-/tmp/torchvenv/bin/python}
logs=${LOG_DIR:-$(mktemp -d -t cluda-compare-model.XXXXXX)}
mkdir -p "$logs"

for a in "$@"; do
  if [[ $a == -h || $a == --help ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    exit 0
  fi
  if [[ $a == --embed-dims ]]; then
    echo "compare_model: set EMBED_DIMS instead of passing --embed-dims" >&2
    exit 2
  fi
done
if [[ ! -x $bench ]]; then
  echo "compare_model: $bench not found; build first (cmake --build build) or set BENCH_MODEL" >&2
  exit 2
fi
if ! "$py" -c 'import torch' >/dev/null 2>&1; then
  echo "compare_model: '$py' cannot import torch; set TORCH_PYTHON to a venv with CPU torch" >&2
  exit 2
fi

export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
echo "compare_model: $threads threads; $rounds round(s); E = $embeds; options: ${*:-(none)};" \
  "raw output in $logs"
CLUDA_ENV=${CLUDA_ENV-OMP_WAIT_POLICY=PASSIVE}
echo "CLUDA_ENV: ${CLUDA_ENV:-(none)}; TORCH_ENV: ${TORCH_ENV:-(none)}"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
read -ra cluda_env <<<"${CLUDA_ENV:-}"
read -ra torch_env <<<"${TORCH_ENV:-}"
rc=0
for ((r = 1; r <= rounds; r++)); do
  for e in $embeds; do
    c_rc=0
    env "${cluda_env[@]}" "$bench" --embed-dims "$e" "$@" >"$logs/cluda.e$e.$r.txt" \
      2>"$logs/cluda.e$e.$r.err" || c_rc=$?
    if ((c_rc != 0)); then
      rc=1
      echo "compare_model: bench_model exited $c_rc (E=$e, round $r):" >&2
      cat "$logs/cluda.e$e.$r.err" >&2
    fi
    t_rc=0
    env "${torch_env[@]}" "$py" "$here/bench_model_torch.py" --embed-dims "$e" "$@" \
      >"$logs/torch.e$e.$r.txt" 2>"$logs/torch.e$e.$r.err" || t_rc=$?
    if ((t_rc != 0)); then
      rc=1
      echo "compare_model: bench_model_torch.py exited $t_rc (E=$e, round $r):" >&2
      cat "$logs/torch.e$e.$r.err" >&2
    fi
  done
done
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
first=$(set -- $embeds && echo "$1")
grep -E '^(threads|OMP_WAIT|mode:|timing|cluda bench_model)' "$logs/cluda.e$first.1.txt" |
  sed 's/^/cluda: /' || true
grep -E '^(threads|timing|torch bench_model)' "$logs/torch.e$first.1.txt" | sed 's/^/torch: /' || true
echo

awk '
function field(line, key,    n, i, kv) {
  n = split(line, kv, " ")
  for (i = 2; i <= n; i++) if (index(kv[i], key "=") == 1) return substr(kv[i], length(key) + 2)
  return ""
}
function better(old, new) {
  if (old == "") return new
  if (old !~ /^[0-9.]+$/) return new
  if (new !~ /^[0-9.]+$/) return old
  return (new + 0 < old + 0) ? new : old
}
/^RESULT name=info / {
  side = (FILENAME ~ /\/cluda\.e[0-9]+\.[0-9]+\.txt$/) ? "cluda" : "torch"
  match(FILENAME, /\.e[0-9]+\./); e = substr(FILENAME, RSTART + 2, RLENGTH - 3)
  info[side, e] = sprintf("params %s, activation bytes %.1f MiB, MACs/image %.3f G", \
                          field($0, "params"), field($0, "activation_bytes") / 1048576, \
                          field($0, "macs_per_image") * 1e-9)
  if (!((e) in eseen)) { eseen[e] = 1; eorder[++ne] = e }
  next
}
/^RESULT / {
  e = field($0, "embed_dims")
  k = e " " field($0, "name") " " field($0, "pass")
  if (!(k in seen)) { seen[k] = 1; order[++n] = k }
  gflop[k] = field($0, "gflop")
  ms = field($0, "ms")
  val = (ms != "") ? ms : field($0, "status")
  if (FILENAME ~ /\/cluda\.e[0-9]+\.[0-9]+\.txt$/) c[k] = better(c[k], val); else t[k] = better(t[k], val)
}
END {
  printf "%4s %-8s %-5s %9s %11s %11s %8s %9s %9s\n", "E", "part", "pass", "GFLOP", "cluda ms", \
         "torch ms", "torch/cluda", "cluda GF/s", "torch GF/s"
  for (i = 1; i <= n; i++) {
    k = order[i]; split(k, np, " ")
    cv = (k in c) ? c[k] : "missing"; tv = (k in t) ? t[k] : "missing"
    if ((cv ~ /^[0-9.]+$/) && (tv ~ /^[0-9.]+$/) && cv + 0 > 0 && tv + 0 > 0) {
      r = tv / cv
      printf "%4s %-8s %-5s %9.2f %11.2f %11.2f %8.2f %9.1f %9.1f%s\n", np[1], np[2], np[3], \
             gflop[k], cv, tv, r, gflop[k] / cv * 1e3, gflop[k] / tv * 1e3, \
             r < 0.5 ? "  << cluda >2x slower" : (r < 1 ? "  < slower" : "")
    } else {
      printf "%4s %-8s %-5s %9.2f %11s %11s %8s\n", np[1], np[2], np[3], gflop[k], cv, tv, "-"
    }
  }
  print ""
  for (j = 1; j <= ne; j++) {
    e = eorder[j]
    printf "E=%s cluda: %s\n", e, info["cluda", e]
    printf "E=%s torch: %s\n", e, info["torch", e]
  }
}' "$logs"/cluda.e*.txt "$logs"/torch.e*.txt

exit $rc

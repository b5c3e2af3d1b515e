#!/usr/bin/env bash
# Runs bench_ops (cluda, CPU) and bench_ops_torch.py (PyTorch, CPU) one after the other with the
# same thread count and options, then prints per op and pass the two median times and
# torch_ms / cluda_ms (> 1: cluda is faster), plus totals over the ops that both ran.
# With ROUNDS > 1 the pair runs ROUNDS times, alternating, and each op keeps the smallest of
# its per-round medians: on a shared 2-core machine this filters out bursts of other load.
#
# usage: benchmarks/compare_ops.sh [bench options: --quick, --batch N, --repeats N, ...]
# environment:
#   THREADS       threads for both (default 2): sets OMP_NUM_THREADS and OPENBLAS_NUM_THREADS
#   ROUNDS        how often to run the pair (default 1)
#   BENCH_OPS     the cluda binary (default build/bin/bench_ops)
#   TORCH_PYTHON  a Python with torch (default /tmp/torchvenv/bin/python)
#   LOG_DIR       where the two raw outputs are kept (default: a new temporary directory)
#   CLUDA_ENV, TORCH_ENV  extra VAR=value words for one side only; CLUDA_ENV defaults to
#                 "OMP_WAIT_POLICY=PASSIVE", cluda's recommended setting (torch is slower
#                 with it; set CLUDA_ENV=" " to measure without)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
threads=${THREADS:-2}
rounds=${ROUNDS:-1}
bench=${BENCH_OPS:-$root/build/bin/bench_ops}
py=${TORCH_PYTHON:-/tmp/torchvenv/bin/python}
logs=${LOG_DIR:-$(mktemp -d -t cluda-compare.XXXXXX)}
mkdir -p "$logs"

for a in "$@"; do
  if [[ $a == -h || $a == --help ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    exit 0
  fi
done
if [[ ! -x $bench ]]; then
  echo "compare_ops: $bench not found; build first (cmake --build build) or set BENCH_OPS" >&2
  exit 2
fi
if ! "$py" -c 'import torch' >/dev/null 2>&1; then
  echo "compare_ops: '$py' cannot import torch; set TORCH_PYTHON to a venv with CPU torch" >&2
  echo "  (e.g. python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch)" >&2
  exit 2
fi

export OMP_NUM_THREADS=$threads OPENBLAS_NUM_THREADS=$threads
echo "compare_ops: $threads threads; $rounds round(s); options: ${*:-(none)}; raw output in $logs"
CLUDA_ENV=${CLUDA_ENV-OMP_WAIT_POLICY=PASSIVE}
echo "CLUDA_ENV: ${CLUDA_ENV:-(none)}; TORCH_ENV: ${TORCH_ENV:-(none)}"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
read -ra cluda_env <<<"${CLUDA_ENV:-}"
read -ra torch_env <<<"${TORCH_ENV:-}"
rc=0 trc=0
for ((r = 1; r <= rounds; r++)); do
  c_rc=0
  env "${cluda_env[@]}" "$bench" "$@" >"$logs/cluda.$r.txt" 2>"$logs/cluda.$r.err" || c_rc=$?
  if ((c_rc != 0)); then
    rc=$c_rc
    echo "compare_ops: bench_ops exited $c_rc (round $r):" >&2
    cat "$logs/cluda.$r.err" >&2
  fi
  t_rc=0
  env "${torch_env[@]}" "$py" "$here/bench_ops_torch.py" "$@" >"$logs/torch.$r.txt" 2>"$logs/torch.$r.err" || t_rc=$?
  if ((t_rc != 0)); then
    trc=$t_rc
    echo "compare_ops: bench_ops_torch.py exited $t_rc (round $r):" >&2
    cat "$logs/torch.$r.err" >&2
  fi
done
echo "load average after:  $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)"
grep -E '^(threads|OMP_WAIT|timing|cluda bench_ops)' "$logs/cluda.1.txt" | sed 's/^/cluda: /' || true
grep -E '^(threads|timing|torch bench_ops)' "$logs/torch.1.txt" | sed 's/^/torch: /' || true
echo

# RESULT lines: name=... pass=... then either ms=... or status=...
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
/^RESULT / {
  k = field($0, "name") " " field($0, "pass")
  if (!(k in seen)) { seen[k] = 1; order[++n] = k }
  count[k] = field($0, "count")
  ms = field($0, "ms")
  val = (ms != "") ? ms : field($0, "status")
  # per tool: the smallest median over the rounds; a status only when no round measured it
  if (FILENAME ~ /cluda\.[0-9]+\.txt$/) c[k] = better(c[k], val); else t[k] = better(t[k], val)
}
END {
  printf "%-16s %4s %2s %11s %11s %8s\n", "op", "pass", "x", "cluda ms", "torch ms", "torch/cluda"
  for (i = 1; i <= n; i++) {
    k = order[i]; split(k, np, " ")
    cv = (k in c) ? c[k] : "missing"; tv = (k in t) ? t[k] : "missing"
    num = (cv ~ /^[0-9.]+$/) && (tv ~ /^[0-9.]+$/)
    if (num && cv + 0 > 0) {
      cv += 0; tv += 0; r = tv / cv
      printf "%-16s %4s %2s %11.3f %11.3f %8.2f%s\n", np[1], np[2], count[k], cv, tv, r, \
             r < 0.5 ? "  << cluda >2x slower" : (r < 1 ? "  < slower" : "")
      p = np[2]; sc[p] += cv; st[p] += tv; wc[p] += count[k] * cv; wt[p] += count[k] * tv
      both[p]++
    } else {
      printf "%-16s %4s %2s %11s %11s %8s\n", np[1], np[2], count[k], cv, tv, "-"
      skipped++
    }
  }
  print ""
  printf "%-34s %11s %11s %8s\n", "total (ops both ran)", "cluda ms", "torch ms", "torch/cluda"
  split("fwd bwd", ps, " ")
  for (j = 1; j <= 2; j++) {
    p = ps[j]
    if (both[p] == 0) continue
    printf "%-34s %11.3f %11.3f %8.2f\n", p " (" both[p] " ops, each once)", sc[p], st[p], st[p] / sc[p]
    printf "%-34s %11.3f %11.3f %8.2f\n", p " (weighted by x: one encoder)", wc[p], wt[p], wt[p] / wc[p]
  }
  if (both["fwd"] + both["bwd"] > 0)
    printf "%-34s %11.3f %11.3f %8.2f\n", "fwd+bwd (weighted by x)", wc["fwd"] + wc["bwd"], \
           wt["fwd"] + wt["bwd"], (wt["fwd"] + wt["bwd"]) / (wc["fwd"] + wc["bwd"])
  if (skipped) printf "%d op passes left out of the totals (unsupported, error or missing)\n", skipped
}' "$logs"/cluda.*.txt "$logs"/torch.*.txt

if ((rc != 0 || trc != 0)); then exit 1; fi

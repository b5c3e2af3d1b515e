#!/usr/bin/env bash
# Regenerates the config-key reference inside configs/README.md (between its BEGIN/END
# markers) from the registry, with a built cluda_infer: scripts/update-config-reference.sh [BUILD]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${1:-$root/build}"
readme="$root/configs/README.md"
begin='<!-- BEGIN cluda_infer --print-config-reference -->'
end='<!-- END cluda_infer --print-config-reference -->'
generated="$(mktemp)"
trap 'rm -f "$generated" "$readme.tmp"' EXIT
"$build/bin/cluda_infer" --print-config-reference >"$generated"
awk -v begin="$begin" -v end="$end" -v gen="$generated" '
  $0 == begin { print; while ((getline line < gen) > 0) print line; skipping = 1; next }
  $0 == end { skipping = 0 }
  !skipping { print }' "$readme" >"$readme.tmp"
mv "$readme.tmp" "$readme"

#!/usr/bin/env bash
# Fails when a tracked C/CUDA file is not clang-format clean (fix with `make format`).
set -euo pipefail
cd "$1"
mapfile -t files < <(git ls-files '*.c' '*.h' '*.cu' '*.cuh')
clang-format --dry-run -Werror "${files[@]}"
echo "clang-format: ${#files[@]} files clean"

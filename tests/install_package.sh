#!/usr/bin/env bash
# `cmake --install` gives a package that find_package(moejit) finds, and the examples build against it.
set -euo pipefail
build_dir=$1
source_dir=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" > "$work/install.log"
test -f "$work/prefix/include/moejit/grouped_gemm.hpp"
test -x "$work/prefix/bin/moejit"
cmake -S "$source_dir/examples" -B "$work/examples" -DCMAKE_PREFIX_PATH="$work/prefix" > "$work/configure.log"
cmake --build "$work/examples" > "$work/build.log"
test -x "$work/examples/example_grouped_gemm"
# The installed CLI runs from the prefix and finds its embedded templates.
"$work/prefix/bin/moejit" source fwd:bf16:n64:k64:e2:topk1:sm_80 | grep -q Sm80RowGroupedConfig
echo "installed package found by find_package(moejit); example built against it"

#!/usr/bin/env bash
# A/B of two trees on the GPU machine, where only same-machine, alternating runs are evidence:
#
#   bench/ab.sh TREE[,TREE...] ROUNDS "bench arguments" ["bench arguments" ...]
#
# Each TREE is a copy of a baseline's source (locally: git archive REV --prefix=ab-old/ | tar x,
# listed in .git/info/exclude and carried with the working tree). Builds each into
# /tmp/build-NAME (bench/device.sh builds this tree into build-device first), then runs
# `moejit bench` with each argument set on every tree and this one in turn, ROUNDS times.
# Output: $OUT/ab.log.
set -uo pipefail
baselines=$1 rounds=$2
shift 2
out=${OUT:-/tmp/moejit-out}
deps=/tmp/moejit-deps
IFS=, read -r -a trees <<< "$baselines"
for tree in "${trees[@]}"; do
  name=$(basename "$tree")
  cmake -S "$tree" -B "/tmp/build-$name" -G Ninja -DCMAKE_BUILD_TYPE=Release -DXXHASH_INCLUDE_DIR="$deps/usr/include" \
    > "$out/build-$name.log" 2>&1 && cmake --build "/tmp/build-$name" -j 16 --target moejit >> "$out/build-$name.log" 2>&1 ||
    { tail -30 "$out/build-$name.log"; exit 1; }
done
cublas=$(ls /usr/local/cuda/lib64/libcublas.so.* 2>/dev/null | head -1)
for ((round = 0; round < rounds; ++round)); do
  for arguments in "$@"; do
    for tree in "${trees[@]}" new; do
      name=$(basename "$tree")
      binary=/tmp/build-$name/moejit
      [ "$tree" = new ] && binary=./build-device/moejit
      echo "== round $round $name: $arguments"
      # Separate caches: the trees' kernels may share a key while their templates differ.
      MOEJIT_CACHE_DIR=/tmp/moejit-cache-$name timeout 300 $binary bench --cublas "$cublas" $arguments 2>&1 |
        grep -E '^\| (gate_up|down)'
    done
  done
done 2>&1 | tee "$out/ab.log"

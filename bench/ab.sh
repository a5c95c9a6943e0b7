#!/usr/bin/env bash
# A/B of two trees on the GPU machine, where only same-machine, alternating runs are evidence:
#
#   bench/ab.sh BASELINE_TREE ROUNDS "bench arguments" ["bench arguments" ...]
#
# BASELINE_TREE is a copy of the baseline source (locally: git archive REV --prefix=ab-old/ | tar x,
# and carried with the working tree; delete it before committing). Builds it into /tmp/build-old
# (bench/device.sh builds this tree into build-device first), then runs `moejit bench` with each
# argument set on old and new alternately, ROUNDS times. Output: $OUT/ab.log.
set -uo pipefail
old_tree=$1 rounds=$2
shift 2
out=${OUT:-/tmp/moejit-out}
deps=/tmp/moejit-deps
cmake -S "$old_tree" -B /tmp/build-old -G Ninja -DCMAKE_BUILD_TYPE=Release -DXXHASH_INCLUDE_DIR="$deps/usr/include" \
  > "$out/build-old.log" 2>&1 && cmake --build /tmp/build-old -j 16 --target moejit >> "$out/build-old.log" 2>&1 ||
  { tail -30 "$out/build-old.log"; exit 1; }
cublas=$(ls /usr/local/cuda/lib64/libcublas.so.* 2>/dev/null | head -1)
for ((round = 0; round < rounds; ++round)); do
  for arguments in "$@"; do
    for side in old new; do
      binary=./build-device/moejit
      [ $side = old ] && binary=/tmp/build-old/moejit
      echo "== round $round $side: $arguments"
      # Separate caches: the two trees' kernels may share a key while their templates differ.
      MOEJIT_CACHE_DIR=/tmp/moejit-cache-$side timeout 300 $binary bench --cublas "$cublas" $arguments 2>&1 |
        grep -E '^\| (gate_up|down)'
    done
  done
done 2>&1 | tee "$out/ab.log"

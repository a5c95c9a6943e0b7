#!/usr/bin/env bash
# Everything the GPU machine does, in one call (device time is short): unpack the carried .deb
# files, build, run the gpu tests, run the benchmark. Logs go to $OUT (or /tmp/moejit-out).
#
#   bench/device.sh [all|tests|bench|build] [bench arguments...]   (build: build only)
# e.g. from the device tool: bash bench/device.sh all --model qwen3-30b-a3b --tokens 8192
set -uo pipefail
mode=${1:-all}; shift || true
out=${OUT:-/tmp/moejit-out}
mkdir -p "$out"
deps=/tmp/moejit-deps
mkdir -p "$deps"
for deb in .deps/*.deb; do dpkg -x "$deb" "$deps"; done

nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv > "$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
echo "== build"
cmake -S . -B build-device -G Ninja -DCMAKE_BUILD_TYPE=Release -DXXHASH_INCLUDE_DIR="$deps/usr/include" \
  > "$out/build.log" 2>&1 &&
  cmake --build build-device -j 16 -- -k 0 >> "$out/build.log" 2>&1 ||
  { tail -40 "$out/build.log"; exit 1; }

export MOEJIT_CACHE_DIR=/tmp/moejit-cache
status=0
if [ "$mode" = all ] || [ "$mode" = tests ]; then
  echo "== gpu tests"
  # test_gpu on the default (fastest) path, gpu_portable_gemm the grouped GEMMs on the portable
  # kernels, and the gpu-labelled examples.
  ctest --test-dir build-device -L gpu --output-on-failure -j 1 2>&1 | tee "$out/gpu-tests.log" | tail -12
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  ./build-device/moejit sass --model qwen3-30b-a3b --gemm gate_up --arch sm_90a > "$out/sass.txt" 2>&1
  echo "sass: $(grep -c HGMMA "$out/sass.txt") HGMMA, $(grep -c -E 'LDL|STL' "$out/sass.txt") local-memory instructions"
fi
if [ "$mode" = all ] || [ "$mode" = bench ]; then
  echo "== benchmark"
  cublas=$(ls /usr/local/cuda/lib64/libcublas.so.* 2>/dev/null | head -1)
  [ -n "$cublas" ] || cublas=$(find / -name 'libcublas.so.1*' -not -path '*/proc/*' 2>/dev/null | head -1)
  ./build-device/moejit bench --cublas "$cublas" "$@" 2>&1 | tee "$out/bench.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
exit $status

#!/usr/bin/env bash
# Everything the GPU machine does, in one call (device time is short): unpack the carried .deb
# files, build, run the gpu tests, run the benchmark. Logs go to $OUT (or /tmp/moejit-out).
#
#   bench/device.sh MODES [bench arguments...]   MODES: all (tests and bench), build, or a comma list
#   of tests, bench, profile, pipes, sanitize
# profile: Nsight Compute on the first launch of the plain forward, the fused forward and dW of
# the model's gate_up GEMM while `moejit bench` runs (the bench times 23 launches per pass).
# pipes: Nsight Compute metrics of 12 launches (ours and the cuBLAS reference, after 40 skipped)
# while `moejit bench` runs: tensor-pipe activity, SM clock, L2 and DRAM rates. Pass --pass too.
# sanitize: compute-sanitizer's memcheck, racecheck and synccheck over the small GPU test cases that
# reach every Hopper kernel kind (kernels built with MOEJIT_LINEINFO, so reports name template lines);
# about 5 minutes from an empty cache. Logs: $OUT/sanitize.log.
# e.g. from the device tool: bash bench/device.sh all --model qwen3-30b-a3b --tokens 8192
set -uo pipefail
mode=${1:-all}; shift || true
bench_args=("$@")
wants() { [ "$mode" = all ] || [[ ",$mode," == *",$1,"* ]]; }
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
# The cuBLAS that bench and pipes compare with.
cublas=$(ls /usr/local/cuda/lib64/libcublas.so.* 2>/dev/null | head -1)
[ -n "$cublas" ] || cublas=$(find / -name 'libcublas.so.1*' -not -path '*/proc/*' 2>/dev/null | head -1)
status=0
if wants tests; then
  echo "== gpu tests"
  # test_gpu on the default (fastest) path in four shards at once (Catch2 v3's --shard-count; the
  # cold compiles run in parallel: about 250 s instead of 550 on an H100 machine), then the rest of
  # the gpu label: gpu_portable_gemm (the grouped GEMMs on the portable kernels) and the examples.
  # Where Catch2 cannot shard (v2), ctest runs test_gpu whole.
  rest=(-E '^gpu$')
  if ./build-device/tests/test_gpu --shard-count 4 --shard-index 0 --list-tests > /dev/null 2>&1; then
    for shard in 0 1 2 3; do
      ./build-device/tests/test_gpu --shard-count 4 --shard-index $shard > "$out/gpu-shard-$shard.log" 2>&1 &
    done
    for shard in 0 1 2 3; do
      wait -n || status=1
    done
    for shard in 0 1 2 3; do
      echo "test_gpu shard $shard: $(grep -E '^(All tests passed|test cases:)' "$out/gpu-shard-$shard.log" | tail -1)"
      grep -B3 -A15 FAILED "$out/gpu-shard-$shard.log" | head -30
    done
  else
    rest=()
  fi
  ctest --test-dir build-device -L gpu "${rest[@]}" --output-on-failure -j 1 2>&1 | tee "$out/gpu-tests.log" | tail -12
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
  ./build-device/moejit sass --model qwen3-30b-a3b --gemm gate_up --arch sm_90a > "$out/sass.txt" 2>&1
  echo "sass: $(grep -c HGMMA "$out/sass.txt") HGMMA, $(grep -c -E 'LDL|STL' "$out/sass.txt") local-memory instructions"
fi
if wants bench; then
  echo "== benchmark"
  ./build-device/moejit bench --cublas "$cublas" "${bench_args[@]}" 2>&1 | tee "$out/bench.log"
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
if [[ ",$mode," == *",sanitize,"* ]]; then
  echo "== compute-sanitizer"
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  # Catch2 splits filters at commas: name cases by a prefix and '*' where theirs have one.
  cases=("Qwen3MoeBlock forward and backward match float64 at tiny sizes"
         "Llama4TextMoe forward and backward match float64 at tiny sizes"
         "passes: qwen3-30b-a3b gate_up and down shapes*" "passes: deepseek-v3 down shape*"
         "forward handles empty*" "passes: swapped operands*" "passes: dW in CTA clusters*"
         "passes: dW in 32-row stages matches float64" "passes: 192x192 tiles*"
         "passes: a tile-claiming forward on two streams at once matches one on the default stream"
         "passes: tile-claiming kernels launched back to back*" "passes: one expert without m_sizes*"
         "passes: gated MoE MLP gradients*" "Qwen3MoeBlock built for inference*"
         "Llama4TextMoe built for inference*")
  for tool in ${SANITIZE_TOOLS:-memcheck racecheck synccheck}; do  # SANITIZE_TOOLS: a subset
    for case in "${cases[@]}"; do
      [ "$tool" != memcheck ] && [[ "$case" == *"tiles*" || "$case" == *"clusters*" ]] && continue
      echo "##### $tool: $case" >> "$out/sanitize.log"
      MOEJIT_LINEINFO=1 timeout 300 "$sanitizer" --tool "$tool" --print-limit 20 \
        ./build-device/tests/test_gpu "$case" > /tmp/sanitize-one.log 2>&1
      rc=$?
      cat /tmp/sanitize-one.log >> "$out/sanitize.log"
      summary=$(grep -E "(ERROR|RACECHECK) SUMMARY" /tmp/sanitize-one.log | tail -1 | sed 's/=* *//')
      echo "$tool '$case': rc $rc, $summary"
      { [ "$rc" = 0 ] && [[ "$summary" == *" 0 errors"* || "$summary" == *"(0 errors"* ]]; } || status=1
    done
  done
fi
if [[ ",$mode," == *",profile,"* ]]; then
  echo "== profile"
  sections="--section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section WarpStateStats --section SchedulerStats"
  for pick in "plain-fwd regex:sm90_row 0" "fused-fwd regex:sm90_row 23" "dw regex:sm90_grouped_gemm_dw 0"; do
    set -- $pick
    timeout 120 ncu --clock-control none -k "$2" -s "$3" -c 1 $sections ./build-device/moejit bench "${bench_args[@]}" \
      > "$out/ncu-$1.txt" 2>&1
    echo "ncu $1: rc $?"
    grep -E "Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|L2 Cache Throughput|L1/TEX Cache Throughput|Issue Slots Busy|No Eligible|Warp Cycles Per Issued" "$out/ncu-$1.txt" | head -12
  done
fi
if [[ ",$mode," == *",pipes,"* ]]; then
  echo "== pipes"
  metrics=sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_elapsed,gpc__cycles_elapsed.avg.per_second
  metrics=$metrics,lts__t_bytes.sum.per_second,dram__bytes.sum.per_second,gpu__time_duration.sum
  timeout 200 ncu --clock-control none --metrics "$metrics" -s 40 -c 12 ./build-device/moejit bench --cublas "$cublas" \
    "${bench_args[@]}" > "$out/ncu-pipes.txt" 2>&1
  echo "ncu pipes: rc $?"
  grep -E "^  [a-zA-Z_].*\(|hmma|gpc__|lts__|dram__|duration" "$out/ncu-pipes.txt" | sed 's/  */ /g' | cut -c1-120 | head -72
fi
exit $status

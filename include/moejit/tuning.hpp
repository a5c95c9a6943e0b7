#pragma once
// Autotuning the grouped GEMM: time every candidate tiling of each pass on this GPU and keep the
// fastest. Winners are stored per (problem, rows bucket, device, library version) in the cache
// directory (<cache>/tuning/), and every GroupedGemm created afterwards, in this process or a later
// one, uses them instead of the heuristic. MOEJIT_KERNEL_PATH=portable ignores them.
#include <moejit/problem.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace moejit {

struct TunedPass {
    Problem problem;             // the pass tuned, as its GroupedGemm runs it (op fwd, dx or dw; out_fp32)
    // The untuned choice and the winner, with their times: where they differ, the medians of
    // rounds that time the two in alternation after the sweep (the sweep's fastest time flatters it).
    std::string heuristic;
    double heuristic_ms = 0;
    std::string best;
    double best_ms = 0;
    int candidates = 0;          // tilings timed
    std::string stored;          // where the winner was written; empty with no cache directory
};

// Tunes forward, dX, dW and fp32 dW of `forward` (op fwd, with its fusion flags; no dW with
// fuse_mul_post) for `tokens` tokens of uniform random routing, on the current device. Each
// candidate is timed with CUDA events over inputs rotating among three sets (so caches do not
// flatter it); the median counts. The fastest, where it is not the heuristic's choice, is timed
// again against that choice in alternating rounds, and wins only if it is still faster there.
std::vector<TunedPass> tune_grouped_gemm(Problem forward, int64_t tokens);

// Tunes each of `passes` the same way, in their order: grouped-GEMM passes exactly as a GroupedGemm
// runs them, such as the fwd, dx and dw problems of Qwen3MoeBlock::kernels, so that the winners are
// stored under the problems a block launches. A dense GEMM (one expert, topk 1) gets `tokens` rows,
// a routed one tokens * topk. `on_tuned`, if given, sees each result as soon as it is stored.
std::vector<TunedPass> tune_grouped_gemm_passes(const std::vector<Problem>& passes, int64_t tokens,
                                                const std::function<void(const TunedPass&)>& on_tuned = {});

}  // namespace moejit

#pragma once
// Synthetic inputs for timing (the tuner, `moejit bench`): random 16-bit values and random routing.
#include <moejit/problem.hpp>

#include <cstdint>
#include <vector>

namespace moejit {

// Uniform values in [-1, 1) as bf16/fp16 bits, filled on all cores from a counter-based hash.
std::vector<uint16_t> random_halves(DType dtype, size_t count, uint64_t seed);

struct SyntheticRouting {
    std::vector<int> m_sizes;     // [E]
    std::vector<int> gather_idx;  // [M]: slots t*topk+j stably sorted by expert
};

// Each token picks topk distinct experts uniformly at random among the first `active_experts`
// (all of them by default; fewer skews every token onto a subset).
SyntheticRouting random_routing(int64_t tokens, int experts, int topk, uint64_t seed, int active_experts = 0);

}  // namespace moejit

#include "moe/synthetic.hpp"

#include <moejit/error.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>

namespace moejit {

namespace {

uint16_t to_half_bits(DType dtype, float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    if (dtype == DType::bf16) return uint16_t((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
    // fp16 for |value| < 1: normal or subnormal, round to nearest (ties away; good enough for noise).
    const uint32_t sign = (bits >> 16) & 0x8000;
    const float magnitude = std::fabs(value);
    if (magnitude < 6.1035156e-05f) return uint16_t(sign | uint32_t(magnitude * 16777216.0f + 0.5f));
    int exponent;
    const float mantissa = std::frexp(magnitude, &exponent);  // magnitude = mantissa * 2^exponent, [0.5, 1)
    uint32_t half = uint32_t((exponent + 14) << 10) + uint32_t((mantissa * 2.0f - 1.0f) * 1024.0f + 0.5f);
    return uint16_t(sign | half);
}

}  // namespace

std::vector<uint16_t> random_halves(DType dtype, size_t count, uint64_t seed) {
    std::vector<uint16_t> values(count);
    const unsigned workers = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < workers; ++t)
        threads.emplace_back([&, t] {
            for (size_t i = t; i < count; i += workers) {
                uint64_t z = seed + i * 0x9e3779b97f4a7c15ull;
                z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
                z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
                z ^= z >> 31;
                values[i] = to_half_bits(dtype, float(z >> 40) / float(1 << 23) - 1.0f);
            }
        });
    for (auto& thread : threads) thread.join();
    return values;
}

SyntheticRouting random_routing(int64_t tokens, int experts, int topk, uint64_t seed, int active_experts) {
    if (active_experts <= 0) active_experts = experts;
    if (topk > active_experts || active_experts > experts)
        throw Error("random_routing: need topk <= active experts <= experts");
    std::mt19937_64 rng(seed);
    std::vector<int> order(active_experts), expert_of_slot(size_t(tokens) * topk);
    std::iota(order.begin(), order.end(), 0);
    for (int64_t t = 0; t < tokens; ++t)
        for (int j = 0; j < topk; ++j) {
            std::uniform_int_distribution<int> pick(j, active_experts - 1);
            std::swap(order[j], order[pick(rng)]);
            expert_of_slot[size_t(t) * topk + j] = order[j];
        }
    SyntheticRouting routing;
    routing.m_sizes.assign(experts, 0);
    for (int expert : expert_of_slot) ++routing.m_sizes[expert];
    routing.gather_idx.resize(expert_of_slot.size());
    std::iota(routing.gather_idx.begin(), routing.gather_idx.end(), 0);
    std::stable_sort(routing.gather_idx.begin(), routing.gather_idx.end(),
                     [&](int a, int b) { return expert_of_slot[a] < expert_of_slot[b]; });
    return routing;
}

}  // namespace moejit

#pragma once
// Router top-k: logits [T, Experts] (the router GEMM's output) -> topk_ids [T, Topk] int32 and
// topk_weights [T, Topk] float32, one warp per token, all arithmetic in fp32.
//
//   score before top-k (Qwen3):  s = softmax(logits) over all E (or sigmoid); the k largest s, w = s[id]
//   score after top-k (Llama4):  the k largest logits; w = sigmoid(logit[id]) (or softmax over the k)
//   renormalize:                 w /= sum of the k weights (Qwen3 norm_topk_prob)
//
// Ids come out in decreasing order of the selection key; ties go to the lower expert id. NaN logits
// rank as -inf. Lane i of the warp holds experts i, i + 32, i + 64, ...
#include "common/dependent_launch.cuh"
#include "kernels/router_common.cuh"

namespace moejit {

struct RouteTopkArguments {
    const void* logits;   // [T, Experts] Element
    int* topk_ids;        // [T, Topk]
    float* topk_weights;  // [T, Topk]
    int64 tokens;         // T
    int mode;             // kRoute* bits
    int* cleared;         // nullptr, or a counter set to zero (the MoE blocks' routing error count)
};

template <class Element_, int Experts_, int Topk_>
struct RouteTopkConfig {
    using Element = Element_;
    static constexpr int Experts = Experts_, Topk = Topk_, Threads = 256;
    static constexpr int PerLane = (Experts + 31) / 32;
    static_assert(Experts >= 1 && Experts <= 1024, "route_topk: 1..1024 experts");
    static_assert(Topk >= 1 && Topk <= 32 && Topk <= Experts, "route_topk: topk in 1..min(32, experts)");
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads) route_topk(const RouteTopkArguments args) {
    wait_for_prior_kernels();
    if (args.cleared != nullptr && blockIdx.x == 0 && threadIdx.x == 0) *args.cleared = 0;
    using Element = typename Cfg::Element;
    constexpr int E = Cfg::Experts, K = Cfg::Topk, PerLane = Cfg::PerLane, Warps = Cfg::Threads / 32;
    const int lane = threadIdx.x % 32;
    const bool sigmoid = (args.mode & kRouteSigmoid) != 0;
    const bool renormalize = (args.mode & kRouteRenormalize) != 0;
    const bool score_first = (args.mode & kRouteScoreBeforeTopk) != 0;
    const float minus_inf = router_negative_infinity();
    const int64 warps = int64(gridDim.x) * Warps;
    for (int64 token = blockIdx.x * int64(Warps) + threadIdx.x / 32; token < args.tokens; token += warps) {
        const Element* row = static_cast<const Element*>(args.logits) + token * E;
        float key[PerLane];  // what the selection compares: scores or logits
        uint32 taken = 0;    // bit i: expert i * 32 + lane is chosen already, or does not exist
#pragma unroll
        for (int i = 0; i < PerLane; ++i) {
            const int expert = i * 32 + lane;
            float value = minus_inf;
            if (expert < E) {
                value = router_load(row, expert);
                if (value != value) value = minus_inf;
            } else {
                taken |= 1u << i;
            }
            key[i] = value;
        }
        if (score_first) {
            if (sigmoid) {
#pragma unroll
                for (int i = 0; i < PerLane; ++i) key[i] = router_sigmoid(key[i]);
            } else {
                float local_max = minus_inf;
#pragma unroll
                for (int i = 0; i < PerLane; ++i) local_max = key[i] > local_max ? key[i] : local_max;
                const float max = router_warp_max(local_max);
                float local_sum = 0.0f;
#pragma unroll
                for (int i = 0; i < PerLane; ++i) {
                    key[i] = expf(key[i] - max);  // missing experts: exp(-inf) = 0
                    local_sum += key[i];
                }
                const float sum = router_warp_sum(local_sum);
#pragma unroll
                for (int i = 0; i < PerLane; ++i) key[i] = key[i] / sum;
            }
        }

        // K rounds of a warp arg-max over the experts not taken yet; lane j keeps round j's winner.
        int chosen_id = 0;
        float chosen_key = 0.0f;
#pragma unroll 1
        for (int round = 0; round < K; ++round) {
            float best = minus_inf;
            int best_id = -1;
#pragma unroll
            for (int i = 0; i < PerLane; ++i)
                if (!((taken >> i) & 1u) && (best_id < 0 || key[i] > best)) {
                    best = key[i];
                    best_id = i * 32 + lane;
                }
#pragma unroll
            for (int offset = 16; offset > 0; offset /= 2) {
                const float other = __shfl_xor_sync(0xffffffffu, best, offset);
                const int other_id = __shfl_xor_sync(0xffffffffu, best_id, offset);
                if (other_id >= 0 && (best_id < 0 || other > best || (other == best && other_id < best_id))) {
                    best = other;
                    best_id = other_id;
                }
            }
            // At least E - round >= 1 experts remain, so best_id is a valid expert on every lane.
            if (best_id % 32 == lane) taken |= 1u << (best_id / 32);
            if (lane == round) {
                chosen_id = best_id;
                chosen_key = best;
            }
        }

        const bool holds_choice = lane < K;
        float weight = chosen_key;
        if (!score_first) {
            if (sigmoid) {
                weight = router_sigmoid(chosen_key);
            } else {
                // Round 0's logit is the largest of the k.
                const float top = __shfl_sync(0xffffffffu, chosen_key, 0);
                const float e = holds_choice ? expf(chosen_key - top) : 0.0f;
                weight = e / router_warp_sum(e);
            }
        }
        if (renormalize) weight = weight / router_warp_sum(holds_choice ? weight : 0.0f);
        if (holds_choice) {
            args.topk_ids[token * K + lane] = chosen_id;
            args.topk_weights[token * K + lane] = weight;
        }
    }
}

}  // namespace moejit

#pragma once
// Backward of route_topk's weights: logits [T, Experts], topk_ids [T, Topk], d topk_weights [T, Topk]
// float32 -> d logits [T, Experts] in the logits' dtype (what the router GEMM's dX and dW take).
// The selection itself has no gradient; the weights are recomputed from the logits in fp32:
//
//   s_j = score of chosen expert id_j:  softmax over all E (score before top-k), softmax over the k
//         chosen logits (after), or sigmoid(logit[id_j])
//   w_j = s_j / S with S = sum_k s_k when renormalizing, else s_j
//   renormalize:   ds_j = (dw_j - sum_k dw_k w_k) / S, else ds_j = dw_j
//   softmax over all E:    dl_i = p_i (g_i - sum_k s_k ds_k), g_i = sum of ds_j with id_j = i (all E get a gradient)
//   softmax over the k:    dl_{id_j} = s_j (ds_j - sum_k s_k ds_k), zero elsewhere
//   sigmoid:               dl_{id_j} = ds_j s_j (1 - s_j), zero elsewhere (Llama4: dw * w * (1 - w))
//
// One warp per token; lane j < Topk holds choice j. Ids outside [0, Experts) get no gradient and are
// never used as addresses.
#include "common/dependent_launch.cuh"
#include "kernels/router_common.cuh"

namespace moejit {

struct RouterBackwardArguments {
    const void* logits;              // [T, Experts] Element
    const int* topk_ids;             // [T, Topk]
    const float* grad_topk_weights;  // [T, Topk]
    void* grad_logits;               // [T, Experts] Element
    int64 tokens;                    // T
    int mode;                        // kRoute* bits, as in the forward
};

template <class Element_, int Experts_, int Topk_>
struct RouterBackwardConfig {
    using Element = Element_;
    static constexpr int Experts = Experts_, Topk = Topk_, Threads = 256;
    static constexpr int PerLane = (Experts + 31) / 32;
    static_assert(Experts >= 1 && Experts <= 1024, "router_backward: 1..1024 experts");
    static_assert(Topk >= 1 && Topk <= 32 && Topk <= Experts, "router_backward: topk in 1..min(32, experts)");
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads) router_backward(const RouterBackwardArguments args) {
    wait_for_prior_kernels();
    using Element = typename Cfg::Element;
    constexpr int E = Cfg::Experts, K = Cfg::Topk, PerLane = Cfg::PerLane, Warps = Cfg::Threads / 32;
    const int lane = threadIdx.x % 32;
    const bool sigmoid = (args.mode & kRouteSigmoid) != 0;
    const bool renormalize = (args.mode & kRouteRenormalize) != 0;
    const bool full_softmax = !sigmoid && (args.mode & kRouteScoreBeforeTopk) != 0;
    const float minus_inf = router_negative_infinity();
    const int64 warps = int64(gridDim.x) * Warps;
    for (int64 token = blockIdx.x * int64(Warps) + threadIdx.x / 32; token < args.tokens; token += warps) {
        const Element* row = static_cast<const Element*>(args.logits) + token * E;
        int id = -1;
        float grad_weight = 0.0f, logit = 0.0f;
        if (lane < K) {
            id = args.topk_ids[token * K + lane];
            if (id < 0 || id >= E) id = -1;
            if (id >= 0) {
                grad_weight = args.grad_topk_weights[token * K + lane];
                logit = router_load(row, id);
            }
        }
        const bool valid = id >= 0;

        // Softmax over all E: every lane needs p_i of its own experts.
        float p[PerLane] = {};
        float max = 0.0f, sum = 1.0f;
        if (full_softmax) {
            float local_max = minus_inf;
#pragma unroll
            for (int i = 0; i < PerLane; ++i) {
                const int expert = i * 32 + lane;
                p[i] = expert < E ? router_load(row, expert) : minus_inf;
                local_max = p[i] > local_max ? p[i] : local_max;
            }
            max = router_warp_max(local_max);
            float local_sum = 0.0f;
#pragma unroll
            for (int i = 0; i < PerLane; ++i) {
                p[i] = expf(p[i] - max);
                local_sum += p[i];
            }
            sum = router_warp_sum(local_sum);
#pragma unroll
            for (int i = 0; i < PerLane; ++i) p[i] = p[i] / sum;
        }

        // The chosen scores s_j.
        float score = 0.0f;
        if (sigmoid) {
            score = valid ? router_sigmoid(logit) : 0.0f;
        } else if (full_softmax) {
            score = valid ? expf(logit - max) / sum : 0.0f;
        } else {
            const float top = router_warp_max(valid ? logit : minus_inf);
            const float e = valid ? expf(logit - top) : 0.0f;
            score = e / router_warp_sum(e);
        }

        // Through the renormalization, then through the scoring.
        float grad_score = grad_weight;
        if (renormalize) {
            const float total = router_warp_sum(score);
            const float weight = valid ? score / total : 0.0f;
            const float dot = router_warp_sum(grad_weight * weight);
            grad_score = (grad_weight - dot) / total;
        }
        float contribution = 0.0f, shift = 0.0f;
        if (sigmoid) {
            contribution = grad_score * score * (1.0f - score);
        } else {
            shift = router_warp_sum(valid ? score * grad_score : 0.0f);  // sum_k s_k ds_k
            contribution = full_softmax ? score * grad_score : score * (grad_score - shift);
        }
        if (!valid) contribution = 0.0f;

        float grad[PerLane];
#pragma unroll
        for (int i = 0; i < PerLane; ++i) grad[i] = full_softmax ? -p[i] * shift : 0.0f;
#pragma unroll 1
        for (int j = 0; j < K; ++j) {
            const int id_j = __shfl_sync(0xffffffffu, id, j);
            const float contribution_j = __shfl_sync(0xffffffffu, contribution, j);
#pragma unroll
            for (int i = 0; i < PerLane; ++i)
                if (i * 32 + lane == id_j) grad[i] += contribution_j;
        }
        Element* out = static_cast<Element*>(args.grad_logits) + token * E;
#pragma unroll
        for (int i = 0; i < PerLane; ++i)
            if (i * 32 + lane < E) router_store(out, i * 32 + lane, grad[i]);
    }
}

}  // namespace moejit

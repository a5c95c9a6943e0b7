#pragma once
// Deterministic combine over top-k: out[t] = sum_j w[t * topk + j] * slots[t * topk + j], summed in fp32 in
// order j = 0..topk-1, with w = 1 when `weights` is null.
// slots [T * topk, Width] in routed-slot order (what dX writes with permute_x), out [T, Width].
#include "common/dependent_launch.cuh"
#include "common/types.cuh"

namespace moejit {

struct CombineTopkArguments {
    const void* slots;  // [T * topk, Width]
    void* out;          // [T, Width]
    int64 tokens;       // T
    const float* weights;  // [T * topk] slot order, or nullptr: unweighted
    const void* addend;    // [T, Width] added to each sum (e.g. the router's share of dX), or nullptr
};

template <class Element_, int Width_, int Topk_>
struct CombineTopkConfig {
    using Element = Element_;
    static constexpr int Width = Width_, Topk = Topk_, Threads = 256;
    static_assert(Width % 8 == 0, "16-byte rows");
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads) combine_topk(const CombineTopkArguments args) {
    wait_for_prior_kernels();
    using Element = typename Cfg::Element;
    constexpr int Vectors = Cfg::Width / 8;  // 8 elements = 16 bytes per thread step
    const int64 total = args.tokens * Vectors;
    for (int64 index = blockIdx.x * int64(blockDim.x) + threadIdx.x; index < total; index += int64(gridDim.x) * blockDim.x) {
        const int64 token = index / Vectors, vector = index % Vectors;
        float sum[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
        for (int j = 0; j < Cfg::Topk; ++j) {
            const float weight = args.weights != nullptr ? args.weights[token * Cfg::Topk + j] : 1.0f;
            const uint4 packed = reinterpret_cast<const uint4*>(
                static_cast<const Element*>(args.slots) + (token * Cfg::Topk + j) * Cfg::Width)[vector];
            const uint32 words[4] = {packed.x, packed.y, packed.z, packed.w};
#pragma unroll
            for (int v = 0; v < 4; ++v) {
                sum[2 * v] += weight * unpack_low<Element>(words[v]);
                sum[2 * v + 1] += weight * unpack_high<Element>(words[v]);
            }
        }
        if (args.addend != nullptr) {
            const uint4 packed = reinterpret_cast<const uint4*>(static_cast<const Element*>(args.addend) + token * Cfg::Width)[vector];
            const uint32 words[4] = {packed.x, packed.y, packed.z, packed.w};
#pragma unroll
            for (int v = 0; v < 4; ++v) {
                sum[2 * v] += unpack_low<Element>(words[v]);
                sum[2 * v + 1] += unpack_high<Element>(words[v]);
            }
        }
        uint4 result;
        result.x = pack2<Element>(sum[0], sum[1]);
        result.y = pack2<Element>(sum[2], sum[3]);
        result.z = pack2<Element>(sum[4], sum[5]);
        result.w = pack2<Element>(sum[6], sum[7]);
        reinterpret_cast<uint4*>(static_cast<Element*>(args.out) + token * Cfg::Width)[vector] = result;
    }
}

}  // namespace moejit

#pragma once
// Shared by route_topk.cuh and router_backward.cuh: the routing mode bits, one-warp reductions and
// scalar reads of 16-bit logits.
#include "common/types.cuh"

namespace moejit {

// Bits of RouteTopkArguments::mode and RouterBackwardArguments::mode (host: runtime/launch_arguments.hpp).
constexpr int kRouteSigmoid = 1;          // scoring is sigmoid (else softmax)
constexpr int kRouteRenormalize = 2;      // the k weights are divided by their sum
constexpr int kRouteScoreBeforeTopk = 4;  // score all E logits, then select on the scores (Qwen3);
                                          // else select on the raw logits and score the chosen k (Llama4)

// The maximum of one warp's values; every lane gets the same bits.
__device__ __forceinline__ float router_warp_max(float value) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) {
        const float other = __shfl_xor_sync(0xffffffffu, value, offset);
        value = other > value ? other : value;
    }
    return value;
}

// The sum of one warp's values. Butterfly order: each step adds the same two numbers on both
// partner lanes, so every lane gets the same bits (deterministic).
__device__ __forceinline__ float router_warp_sum(float value) {
#pragma unroll
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_xor_sync(0xffffffffu, value, offset);
    return value;
}

// Element `index` of a row of 16-bit values, widened to fp32 (exact).
template <class Element>
__device__ __forceinline__ float router_load(const Element* row, int64 index) {
    return unpack_low<Element>(static_cast<uint32>(reinterpret_cast<const unsigned short*>(row)[index]));
}

// fp32 rounded to nearest-even into element `index` of a row of 16-bit values.
template <class Element>
__device__ __forceinline__ void router_store(Element* row, int64 index, float value) {
    reinterpret_cast<unsigned short*>(row)[index] = static_cast<unsigned short>(pack2<Element>(value, 0.0f) & 0xffffu);
}

__device__ __forceinline__ float router_negative_infinity() { return __int_as_float(0xff800000); }

__device__ __forceinline__ float router_sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

}  // namespace moejit

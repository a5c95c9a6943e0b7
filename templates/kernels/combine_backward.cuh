#pragma once
// Backward of the weighted top-k combine out[t] = sum_j w[s] * y[s] (s = t*topk + j), arranged for the
// expert GEMMs that follow: one warp per routed row r, slot s = gather_idx[r], token t = s / topk:
//   grad_y[r] = w[s] * grad_out[t]        (expert order: what dX and dW of the down GEMM read)
//   grad_w[s] = <grad_out[t], y[s]>        (the routing-weight gradient, fp32)
// grad_out [T, Width], y [M, Width] in slot order (the unscaled down-GEMM output), grad_y [M, Width].
#include "common/dependent_launch.cuh"
#include "common/types.cuh"

namespace moejit {

struct CombineBackwardArguments {
    const void* grad_out;      // [T, Width]
    const void* y;             // [M, Width] slot order
    const int* gather_idx;     // [M]
    const float* weights;      // [M] slot order
    void* grad_y;              // [M, Width] expert order
    float* grad_weights;       // [M] slot order
    int64 rows;                // M
};

template <class Element_, int Width_, int Topk_>
struct CombineBackwardConfig {
    using Element = Element_;
    static constexpr int Width = Width_, Topk = Topk_, Threads = 256;
    static_assert(Width % 8 == 0, "16-byte rows");
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads) combine_backward(const CombineBackwardArguments args) {
    wait_for_prior_kernels();
    using Element = typename Cfg::Element;
    constexpr int Vectors = Cfg::Width / 8;
    const int lane = threadIdx.x % 32;
    const int64 warps = int64(gridDim.x) * (blockDim.x / 32);
    for (int64 row = blockIdx.x * int64(blockDim.x / 32) + threadIdx.x / 32; row < args.rows; row += warps) {
        const int64 slot = args.gather_idx[row], token = slot / Cfg::Topk;
        const float weight = args.weights[slot];
        const uint4* g = reinterpret_cast<const uint4*>(static_cast<const Element*>(args.grad_out) + token * Cfg::Width);
        const uint4* y = reinterpret_cast<const uint4*>(static_cast<const Element*>(args.y) + slot * Cfg::Width);
        uint4* out = reinterpret_cast<uint4*>(static_cast<Element*>(args.grad_y) + row * Cfg::Width);
        float dot = 0.0f;
        for (int vector = lane; vector < Vectors; vector += 32) {
            const uint4 gv = g[vector], yv = y[vector];
            const uint32 gw[4] = {gv.x, gv.y, gv.z, gv.w}, yw[4] = {yv.x, yv.y, yv.z, yv.w};
            uint32 scaled[4];
#pragma unroll
            for (int v = 0; v < 4; ++v) {
                const float g0 = unpack_low<Element>(gw[v]), g1 = unpack_high<Element>(gw[v]);
                dot += g0 * unpack_low<Element>(yw[v]) + g1 * unpack_high<Element>(yw[v]);
                scaled[v] = pack2<Element>(g0 * weight, g1 * weight);
            }
            out[vector] = make_uint4(scaled[0], scaled[1], scaled[2], scaled[3]);
        }
#pragma unroll
        for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, offset);
        if (lane == 0) args.grad_weights[slot] = dot;
    }
}

}  // namespace moejit

#pragma once
// Backward of the fused gated activation h = silu(gate) * up:
//   d_gate = dh * up * silu'(gate),  d_up = dh * silu(gate),  silu'(g) = s * (1 + g * (1 - s)), s = sigmoid(g)
// preactivation [M, N] = gate | up (what the gated forward saves), grad_h [M, N/2], grad_preactivation [M, N]:
// the dY that dX and dW of the gate_up GEMM take.
#include "common/dependent_launch.cuh"
#include "common/types.cuh"

namespace moejit {

struct GatedBackwardArguments {
    const void* preactivation;  // [M, N]
    const void* grad_h;         // [M, N/2]
    void* grad_preactivation;   // [M, N]
    int64 rows;                 // M
};

template <class Element_, int N_>
struct GatedBackwardConfig {
    using Element = Element_;
    static constexpr int N = N_, Half = N / 2, Threads = 256;
    static_assert(Half % 8 == 0, "N/2 must be a multiple of 8");
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads) gated_activation_backward(const GatedBackwardArguments args) {
    wait_for_prior_kernels();
    using Element = typename Cfg::Element;
    constexpr int Vectors = Cfg::Half / 8;
    const int64 total = args.rows * Vectors;
    for (int64 index = blockIdx.x * int64(blockDim.x) + threadIdx.x; index < total; index += int64(gridDim.x) * blockDim.x) {
        const int64 row = index / Vectors, col = (index % Vectors) * 8;
        const Element* pre = static_cast<const Element*>(args.preactivation) + row * Cfg::N;
        const uint4 gate = *reinterpret_cast<const uint4*>(pre + col);
        const uint4 up = *reinterpret_cast<const uint4*>(pre + Cfg::Half + col);
        const uint4 dh = *reinterpret_cast<const uint4*>(static_cast<const Element*>(args.grad_h) + row * Cfg::Half + col);
        const uint32 g[4] = {gate.x, gate.y, gate.z, gate.w}, u[4] = {up.x, up.y, up.z, up.w},
                     d[4] = {dh.x, dh.y, dh.z, dh.w};
        uint32 d_gate[4], d_up[4];
#pragma unroll
        for (int v = 0; v < 4; ++v) {
            float dg[2], du[2];
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const float gv = h ? unpack_high<Element>(g[v]) : unpack_low<Element>(g[v]);
                const float uv = h ? unpack_high<Element>(u[v]) : unpack_low<Element>(u[v]);
                const float dv = h ? unpack_high<Element>(d[v]) : unpack_low<Element>(d[v]);
                const float s = 1.0f / (1.0f + __expf(-gv));
                dg[h] = dv * uv * s * (1.0f + gv * (1.0f - s));
                du[h] = dv * gv * s;
            }
            d_gate[v] = pack2<Element>(dg[0], dg[1]);
            d_up[v] = pack2<Element>(du[0], du[1]);
        }
        Element* out = static_cast<Element*>(args.grad_preactivation) + row * Cfg::N;
        *reinterpret_cast<uint4*>(out + col) = make_uint4(d_gate[0], d_gate[1], d_gate[2], d_gate[3]);
        *reinterpret_cast<uint4*>(out + Cfg::Half + col) = make_uint4(d_up[0], d_up[1], d_up[2], d_up[3]);
    }
}

}  // namespace moejit

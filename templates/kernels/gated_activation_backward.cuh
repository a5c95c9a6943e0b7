#pragma once
// Backward of the fused gated activation h = silu(gate) * up (common/silu.cuh), as its own pass; a
// GEMM whose X is h does the same in its dX epilogue with kGatedInput.
// preactivation [M, N] = gate | up (what the gated forward saves), grad_h [M, N/2], grad_preactivation [M, N]:
// the dY that dX and dW of the gate_up GEMM take.
#include "common/dependent_launch.cuh"
#include "common/silu.cuh"
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
        uint4 d_gate, d_up;
        silu_backward_16<Element>(gate, up, dh, d_gate, d_up);
        Element* out = static_cast<Element*>(args.grad_preactivation) + row * Cfg::N;
        *reinterpret_cast<uint4*>(out + col) = d_gate;
        *reinterpret_cast<uint4*>(out + Cfg::Half + col) = d_up;
    }
}

}  // namespace moejit

#pragma once
// The gated activation h = silu(gate) * up and its backward, shared by the gated forward's
// epilogue, the dX epilogue of its output (kGatedInput) and gated_activation_backward.
#include "common/types.cuh"

namespace moejit {

// 1 / (1 + e^-x) with the approximate exponential and divide (one MUFU op each): the IEEE divide
// is a branchy sequence of about a dozen instructions, and the epilogues, which run while the
// tensor pipe waits, evaluate 64 of these per thread and tile. A 16-bit output hides their 2-ulp
// errors. For x < -88, e^-x is inf and the quotient 0, the limit; for x > 87 it flushes to 0.
__device__ __forceinline__ float sigmoid(float x) {
    float power;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(power) : "f"(x * -1.4426950408889634f));
    return __fdividef(1.0f, 1.0f + power);
}

// x / (1 + e^-x), one divide as in sigmoid; for x > 87 the quotient is x.
__device__ __forceinline__ float silu(float x) {
    float power;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(power) : "f"(x * -1.4426950408889634f));
    return __fdividef(x, 1.0f + power);
}

// d(silu(gate) * up) = dh, split over gate and up:
//   d_gate = dh * up * silu'(gate),  d_up = dh * silu(gate),  silu'(g) = s * (1 + g * (1 - s)), s = sigmoid(g)
__device__ __forceinline__ void silu_backward(float gate, float up, float dh, float& d_gate, float& d_up) {
    const float s = sigmoid(gate);
    d_gate = dh * up * s * (1.0f + gate * (1.0f - s));
    d_up = dh * gate * s;
}

// silu_backward of two packed 16-bit pairs: gate, up and dh each hold two elements.
template <class Element>
__device__ __forceinline__ void silu_backward_pair(uint32 gate, uint32 up, uint32 dh, uint32& d_gate, uint32& d_up) {
    float dg[2], du[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const float g = h ? unpack_high<Element>(gate) : unpack_low<Element>(gate);
        const float u = h ? unpack_high<Element>(up) : unpack_low<Element>(up);
        const float d = h ? unpack_high<Element>(dh) : unpack_low<Element>(dh);
        silu_backward(g, u, d, dg[h], du[h]);
    }
    d_gate = pack2<Element>(dg[0], dg[1]);
    d_up = pack2<Element>(du[0], du[1]);
}

// silu_backward_pair over 16 bytes (eight elements) each.
template <class Element>
__device__ __forceinline__ void silu_backward_16(const uint4& gate, const uint4& up, const uint4& dh, uint4& d_gate,
                                                 uint4& d_up) {
    silu_backward_pair<Element>(gate.x, up.x, dh.x, d_gate.x, d_up.x);
    silu_backward_pair<Element>(gate.y, up.y, dh.y, d_gate.y, d_up.y);
    silu_backward_pair<Element>(gate.z, up.z, dh.z, d_gate.z, d_up.z);
    silu_backward_pair<Element>(gate.w, up.w, dh.w, d_gate.w, d_up.w);
}

}  // namespace moejit

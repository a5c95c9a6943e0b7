#pragma once
// Element types and integer aliases without toolkit headers: NVRTC gets this file from memory,
// so a deployed program needs no CUDA include directory.

namespace moejit {

using int64 = long long;
using uint32 = unsigned int;
constexpr int kIntMax = 0x7fffffff;  // INT_MAX, without <climits>

// 16-bit storage types. Arithmetic happens in fp32 in registers; only conversions are needed.
struct alignas(2) bf16 { unsigned short bits; };
struct alignas(2) fp16 { unsigned short bits; };

template <class T> struct ElementTraits;
template <> struct ElementTraits<bf16> { static constexpr bool is_bf16 = true; };
template <> struct ElementTraits<fp16> { static constexpr bool is_bf16 = false; };

// Two fp32 values rounded to nearest-even into one 32-bit register, `low` in the low half.
template <class Element>
__device__ __forceinline__ uint32 pack2(float low, float high) {
    uint32 packed;
    if constexpr (ElementTraits<Element>::is_bf16)
        asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(high), "f"(low));
    else
        asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(packed) : "f"(high), "f"(low));
    return packed;
}

// The low / high 16-bit half of a packed pair, widened to fp32 (exact).
template <class Element>
__device__ __forceinline__ float unpack_low(uint32 packed) {
    float value;
    if constexpr (ElementTraits<Element>::is_bf16) {
        value = __uint_as_float(packed << 16);
    } else {
        const unsigned short half = static_cast<unsigned short>(packed & 0xffffu);
        asm("{ .reg .f16 h; mov.b16 h, %1; cvt.f32.f16 %0, h; }" : "=f"(value) : "h"(half));
    }
    return value;
}
template <class Element>
__device__ __forceinline__ float unpack_high(uint32 packed) {
    return unpack_low<Element>(packed >> 16);
}

template <bool Condition, class IfTrue, class IfFalse> struct conditional_type { using type = IfTrue; };
template <class IfTrue, class IfFalse> struct conditional_type<false, IfTrue, IfFalse> { using type = IfFalse; };

template <class T> __device__ __forceinline__ T max_of(T a, T b) { return a > b ? a : b; }
template <class T> __device__ __forceinline__ T min_of(T a, T b) { return a < b ? a : b; }
__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace moejit

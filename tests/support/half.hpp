#pragma once
// Host-side bf16 / fp16 conversions for references and benchmarks (round to nearest even).
#include <moejit/problem.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace moejit::testing {

inline uint16_t float_to_bf16(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    if (std::isnan(value)) return 0x7fc0;
    bits += 0x7fff + ((bits >> 16) & 1);
    return static_cast<uint16_t>(bits >> 16);
}

inline float bf16_to_float(uint16_t half) {
    const uint32_t bits = uint32_t(half) << 16;
    float value;
    std::memcpy(&value, &bits, 4);
    return value;
}

inline uint16_t float_to_fp16(float value) {
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    const uint32_t sign = (bits >> 16) & 0x8000;
    if (std::isnan(value)) return 0x7e00;
    const float magnitude = std::fabs(value);
    if (magnitude >= 65520.0f) return static_cast<uint16_t>(sign | 0x7c00);
    if (magnitude < 6.103515625e-05f) {  // subnormal: a multiple of 2^-24, rounded to nearest even
        const float scaled = magnitude * 16777216.0f;
        return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(scaled)));
    }
    uint32_t exponent = ((bits >> 23) & 0xff) - 127 + 15;
    uint32_t mantissa = bits & 0x7fffff;
    uint32_t result = (exponent << 10) | (mantissa >> 13);
    const uint32_t rest = mantissa & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (result & 1))) ++result;
    return static_cast<uint16_t>(sign | result);
}

inline float fp16_to_float(uint16_t half) {
    const uint32_t sign = uint32_t(half & 0x8000) << 16;
    const uint32_t exponent = (half >> 10) & 0x1f;
    const uint32_t mantissa = half & 0x3ff;
    if (exponent == 0) {
        const float value = std::ldexp(static_cast<float>(mantissa), -24);
        return sign ? -value : value;
    }
    uint32_t bits;
    if (exponent == 31) bits = sign | 0x7f800000 | (mantissa << 13);
    else bits = sign | ((exponent - 15 + 127) << 23) | (mantissa << 13);
    float value;
    std::memcpy(&value, &bits, 4);
    return value;
}

inline uint16_t to_half(DType dtype, float value) {
    return dtype == DType::bf16 ? float_to_bf16(value) : float_to_fp16(value);
}
inline float from_half(DType dtype, uint16_t half) {
    return dtype == DType::bf16 ? bf16_to_float(half) : fp16_to_float(half);
}

// A NaN in both formats' bit patterns: poison for outputs that must be overwritten.
constexpr uint16_t kPoison = 0xffff;

}  // namespace moejit::testing

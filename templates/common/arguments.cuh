#pragma once
// Run-time arguments of every grouped-GEMM kernel, passed by value as one parameter. The host
// mirrors this struct field for field (runtime/launch_arguments.hpp).
#include "common/types.cuh"

namespace moejit {

// Compile-time fusion flags, as the generated source spells them.
enum GemmFlags : int {
    kPermuteX = 1,     // A rows come from token order: X[gather_idx[r] / topk] (first GEMM)
    kPermuteY = 2,     // output row r goes to row gather_idx[r] of a token-ordered [M, *] (second GEMM)
    kFuseMulPost = 4,  // output row r is multiplied by topk_weights[gather_idx[r]]
    kGated = 8,        // gate_up epilogue writes silu(gate) * up, [M, N/2]
    kOutFp32 = 16,     // dW output in fp32
    kSavesPreactivation = 32,  // with kGated: gate|up [M, N] to args.preactivation too (training)
};

// Which row-grouped GEMM a kernel computes (both share the fwd/dX templates).
enum class RowGroupedPass { forward, dx };

// A row-grouped pass's indirect rows (the host's gathers_rows and scatters_rows, codegen/config.hpp):
// A's rows gathered (the forward's permute_x: token rows of X; dX's permute_y: slot rows of dY), C's
// rows scattered to slot order (the forward's permute_y, dX's permute_x).
__host__ __device__ constexpr bool gathers_rows(bool forward, int flags) {
    return (flags & (forward ? kPermuteX : kPermuteY)) != 0;
}
__host__ __device__ constexpr bool scatters_rows(bool forward, int flags) {
    return (flags & (forward ? kPermuteY : kPermuteX)) != 0;
}

struct GroupedGemmArguments {
    const void* a;              // fwd: X [M or T, K]; dX and dW: dY [M, N]
    const void* b;              // fwd and dX: W [E, N, K]; dW: X [M or T, K]
    void* c;                    // fwd: Y [M, N] or [M, N/2] (gated); dX: [M, K]; dW: [E, N, K]
    void* preactivation;        // kSavesPreactivation: [M, N] copy of gate|up for the backward pass
    const int* m_sizes;         // [E]
    const int* gather_idx;      // [M], needed by permute_x, permute_y, fuse_mul_post
    const float* topk_weights;  // [M] in routed-slot order t*topk+j, needed by fuse_mul_post
    int64 rows;                 // M; rows at or past it are never read or written
    int* tile_counters;         // [2]: zero at the launch, left zero (scheduler/tile_queue.cuh)
};

// Routed row -> the row of a gathered or scattered matrix.
template <int Topk>
__device__ __forceinline__ int64 token_row(const GroupedGemmArguments& args, int64 routed_row) {
    return static_cast<int64>(args.gather_idx[routed_row]) / Topk;
}
__device__ __forceinline__ int64 slot_row(const GroupedGemmArguments& args, int64 routed_row) {
    return static_cast<int64>(args.gather_idx[routed_row]);
}

// silu(x) = x / (1 + 2^(-x log2 e)), with the approximate exponential and divide (one MUFU op each):
// the IEEE divide is a branchy sequence of about a dozen instructions, and the gated epilogue, which
// runs while the tensor pipe waits, evaluates 64 of these per thread and tile. A 16-bit output hides
// their 2-ulp errors. For x < -88, 2^(-x log2 e) is inf and the quotient 0, the limit; for x > 87,
// it flushes to 0 and the quotient is x.
__device__ __forceinline__ float silu(float x) {
    float power;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(power) : "f"(x * -1.4426950408889634f));
    return __fdividef(x, 1.0f + power);
}

}  // namespace moejit

#pragma once
// A block-wide exclusive prefix sum, one value a thread: the tile scheduler scans m_sizes with it,
// the routing indices the experts' row totals.
#include "common/types.cuh"

namespace moejit {

// a + b, but at most `limit`; a, b and limit in [0, 2^31), so the sum fits 32 unsigned bits.
__device__ __forceinline__ int saturating_add(int a, int b, int limit) {
    const unsigned sum = static_cast<unsigned>(a) + static_cast<unsigned>(b);
    return sum > static_cast<unsigned>(limit) ? limit : static_cast<int>(sum);
}

// The sum of `value` over the block's lower-numbered threads (a block of Warps whole warps), cut
// at `limit`; `total`, where given, receives the sum over all of them, cut the same way. Values
// must lie in [0, limit]. Saturating addition is associative, so every prefix is exactly
// min(true prefix, limit), and no sum wraps however many values come near 2^31. `warp_totals`:
// shared memory for Warps values. Block-wide, with one __syncthreads, after which `warp_totals`
// may be read but not written until the next barrier.
template <int Warps>
__device__ __forceinline__ int exclusive_block_sum(int value, int* warp_totals, int limit, int* total = nullptr) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    int inclusive = value;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
        const int before = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive = saturating_add(inclusive, before, limit);
    }
    // Not inclusive - value: a saturated inclusive sum has lost what the subtraction needs.
    int exclusive = __shfl_up_sync(0xffffffffu, inclusive, 1);
    if (lane == 0) exclusive = 0;
    if (lane == 31) warp_totals[warp] = inclusive;
    __syncthreads();
    int sum = 0;
#pragma unroll
    for (int w = 0; w < Warps; ++w) {
        if (w < warp) exclusive = saturating_add(exclusive, warp_totals[w], limit);
        sum = saturating_add(sum, warp_totals[w], limit);
    }
    if (total != nullptr) *total = sum;
    return exclusive;
}

}  // namespace moejit

#pragma once
// A block-wide exclusive prefix sum, one value a thread: the tile scheduler scans m_sizes with it,
// the routing indices the experts' row totals.
#include "common/types.cuh"

namespace moejit {

// The sum of `value` over the block's lower-numbered threads (a block of Warps whole warps);
// `total`, where given, receives the sum over all of them. `warp_totals`: shared memory for Warps
// values. Block-wide, with one __syncthreads, after which `warp_totals` may be read but not
// written until the next barrier.
template <int Warps, class T>
__device__ __forceinline__ T exclusive_block_sum(T value, T* warp_totals, T* total = nullptr) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    T inclusive = value;
#pragma unroll
    for (int offset = 1; offset < 32; offset *= 2) {
        const T before = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += before;
    }
    if (lane == 31) warp_totals[warp] = inclusive;
    __syncthreads();
    T exclusive = inclusive - value, sum = 0;
#pragma unroll
    for (int w = 0; w < Warps; ++w) {
        if (w < warp) exclusive += warp_totals[w];
        sum += warp_totals[w];
    }
    if (total != nullptr) *total = sum;
    return exclusive;
}

}  // namespace moejit

#pragma once
// Routing indices, pass 1 of 2 (pass 2: routing_indices.cuh). The M = T * topk routed slots are cut
// into chunks of `chunk` consecutive slots, one block each; this pass counts, per chunk, the slots of
// every expert: counts[c * Experts + e] (all E entries written, zeros included). Expert ids outside
// [0, Experts) are not counted; their number is added to *error_count (one atomicAdd per block).
#include "common/dependent_launch.cuh"
#include "common/types.cuh"

namespace moejit {

struct RoutingIndicesArguments {
    const int* topk_ids;  // [M] expert of each slot t*topk + j
    int* m_sizes;         // [Experts] out: rows routed to each expert
    int* gather_idx;      // [M] out: slot of each routed row; -1 past sum(m_sizes)
    int* scatter_idx;     // [M] out: routed row of each slot; -1 for a dropped slot
    int* error_count;     // [1] incremented by the number of ids outside [0, Experts)
    int* counts;          // workspace [chunks, Experts]
    int64 rows;           // M
    int64 chunk;          // slots per block, a multiple of the block size; grid = ceil(M / chunk)
};

template <int Experts_>
struct RoutingIndicesConfig {
    static constexpr int Experts = Experts_, Threads = 256, Warps = Threads / 32;
    static_assert(Experts >= 1 && Experts <= 4096, "routing indices: 1..4096 experts");
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads) routing_histogram(const RoutingIndicesArguments args) {
    wait_for_prior_kernels();
    constexpr int E = Cfg::Experts;
    __shared__ int histogram[E];
    __shared__ int dropped;
    for (int e = threadIdx.x; e < E; e += Cfg::Threads) histogram[e] = 0;
    if (threadIdx.x == 0) dropped = 0;
    __syncthreads();

    const int lane = threadIdx.x % 32;
    const int64 begin = blockIdx.x * args.chunk;
    const int64 end = begin + args.chunk < args.rows ? begin + args.chunk : args.rows;
    int local_dropped = 0;
    // Whole warps iterate together so that __match_any_sync sees all 32 lanes.
    for (int64 base = begin; base < end; base += Cfg::Threads) {
        const int64 slot = base + threadIdx.x;
        const int id = slot < end ? args.topk_ids[slot] : -1;
        const bool in_range = slot < end && id >= 0 && id < E;
        if (slot < end && !in_range) ++local_dropped;
        // Lanes with the same expert add once, from the lowest lane of the group.
        const unsigned peers = __match_any_sync(0xffffffffu, in_range ? id : -1);
        if (in_range && lane == __ffs(peers) - 1) atomicAdd(&histogram[id], __popc(peers));
    }
    if (local_dropped) atomicAdd(&dropped, local_dropped);
    __syncthreads();
    int* counts = args.counts + int64(blockIdx.x) * E;
    for (int e = threadIdx.x; e < E; e += Cfg::Threads) counts[e] = histogram[e];
    if (threadIdx.x == 0 && dropped) atomicAdd(args.error_count, dropped);
}

}  // namespace moejit

#pragma once
// Routing indices, pass 2 of 2, after routing_histogram.cuh on the same chunks (same grid):
//   m_sizes[e]        rows routed to expert e (ids outside [0, Experts) are dropped)
//   gather_idx[r]     the slot s = t*topk + j of routed row r: slots stably sorted by expert, i.e.
//                     r = (rows of experts < e) + (slots of expert e before s); -1 for r >= sum(m_sizes)
//   scatter_idx[s]    the inverse: the routed row of slot s, or -1 for a dropped slot
// Deterministic: every position depends on the slot order only. Each block finds the rows of every
// expert in earlier chunks from the counts, scans the totals over experts, then places its slots
// 256 at a time, warp by warp in slot order.
#include "common/block_sum.cuh"
#include "common/dependent_launch.cuh"
#include "kernels/routing_histogram.cuh"

namespace moejit {

template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads) routing_indices(const RoutingIndicesArguments args) {
    wait_for_prior_kernels();
    constexpr int E = Cfg::Experts, Threads = Cfg::Threads, Warps = Cfg::Warps;
    constexpr int PerThread = (E + Threads - 1) / Threads;
    __shared__ int next_row[E];  // the next routed row of each expert for this block's slots
    __shared__ int totals[E];    // rows of each expert over all chunks
    __shared__ int warp_sums[Warps];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int chunks = gridDim.x, chunk_index = blockIdx.x;

    // 1. Per expert: its slots in earlier chunks, and in all chunks.
    for (int e = threadIdx.x; e < E; e += Threads) {
        int before = 0;
        for (int c = 0; c < chunk_index; ++c) before += args.counts[int64(c) * E + e];
        int total = before;
        for (int c = chunk_index; c < chunks; ++c) total += args.counts[int64(c) * E + e];
        next_row[e] = before;
        totals[e] = total;
    }
    __syncthreads();

    // 2. Exclusive prefix sum of the totals over experts; thread t owns experts t*PerThread .. +PerThread-1.
    int local = 0;
#pragma unroll
    for (int i = 0; i < PerThread; ++i) {
        const int e = threadIdx.x * PerThread + i;
        if (e < E) local += totals[e];
    }
    int routed;  // sum(m_sizes)
    int offset = exclusive_block_sum<Warps>(local, warp_sums, kIntMax, &routed);  // at most M < 2^31
#pragma unroll
    for (int i = 0; i < PerThread; ++i) {
        const int e = threadIdx.x * PerThread + i;
        if (e < E) {
            next_row[e] += offset;
            if (blockIdx.x == 0) args.m_sizes[e] = totals[e];
            offset += totals[e];
        }
    }
    __syncthreads();

    // 3. Stable placement: 256 slots per round; within a round, warp by warp, and within a warp,
    //    lanes of one expert by lane order.
    const int64 begin = chunk_index * args.chunk;
    const int64 end = begin + args.chunk < args.rows ? begin + args.chunk : args.rows;
    for (int64 base = begin; base < end; base += Threads) {
        const int64 slot = base + threadIdx.x;
        const bool active = slot < end;
        const int id = active ? args.topk_ids[slot] : -1;
        const bool in_range = active && id >= 0 && id < E;
        const unsigned peers = __match_any_sync(0xffffffffu, in_range ? id : -1);
        const int rank = __popc(peers & ((1u << lane) - 1u));
#pragma unroll 1
        for (int w = 0; w < Warps; ++w) {
            if (warp == w && in_range) {
                const int row = next_row[id] + rank;
                __syncwarp(peers);  // every peer has read next_row[id] before the first one moves it
                if (rank == 0) next_row[id] = row + __popc(peers);
                args.gather_idx[row] = static_cast<int>(slot);
                args.scatter_idx[slot] = row;
            }
            __syncthreads();
        }
        if (active && !in_range) args.scatter_idx[slot] = -1;
    }

    // 4. Rows past the routed ones (as many as dropped slots): -1.
    for (int64 row = routed + blockIdx.x * int64(Threads) + threadIdx.x; row < args.rows; row += int64(chunks) * Threads)
        args.gather_idx[row] = -1;
}

}  // namespace moejit

#pragma once
// The pieces every sm_90a grouped GEMM shares: the shared-memory stage ring with its full/empty
// mbarriers, the cp.async row gather that stands in for TMA where rows are indirect or must be
// masked, and one consumer step of four wgmma k16 instructions.
//
// Roles: warpgroup 0 produces (one thread issues TMA; all 128 gather), warpgroups 1.. consume.
// Slot s is free when `empty[s]` completes (one arrival per consumer warpgroup, of both CTAs in a
// pair: see StageBarriers) and filled when `full[s]` completes (the TMA bytes plus, for gathering
// kernels, one arrival per producer thread).
#include "common/sm90_ptx.cuh"
#include "mma/sm90_wgmma.cuh"

namespace moejit::sm90 {

constexpr int kSliceK = 64;             // reduction elements per stage: one 128-byte swizzled row
constexpr int kSliceBytesPerRow = 128;
constexpr int kWarpgroupThreads = 128;

// setmaxnreg only moves registers within the CTA's allocation, made at launch: at most 65536 /
// Threads a thread, in whole 8s (255 counts as 256). What warpgroup 0 (the producer) gives back
// must cover what the other warpgroups (the consumers) claim, or setmaxnreg.inc waits forever.
template <int Threads, int ProducerRegisters, int ConsumerRegisters>
constexpr bool registers_fit() {
    constexpr int launch = 65536 / Threads / 8 * 8;
    constexpr int warpgroups = Threads / kWarpgroupThreads;
    return ProducerRegisters <= launch && ConsumerRegisters >= launch &&
           ProducerRegisters + (warpgroups - 1) * ConsumerRegisters <= warpgroups * launch;
}

// What every sm_90a grouped-GEMM tile shape must satisfy.
template <class Element, int TileM, int TileN, int N, int K, int Stages>
struct TileRequirements {
    static_assert(sizeof(Element) == 2, "16-bit inputs");
    static_assert(TileM == 64 || TileM == 128 || TileM == 192, "one to three consumer warpgroups");
    static_assert(TileN == 64 || TileN == 128 || TileN == 192 || TileN == 256, "wgmma N");
    static_assert(N % 8 == 0 && K % 8 == 0, "N and K must be multiples of 8 (16-byte rows)");
    static_assert(Stages >= 3, "two slots loading while the consumers hold one");
    static constexpr bool met = true;
};

// Position in the ring; producer and consumers advance identical copies in the same order.
template <int Stages>
struct RingPosition {
    int stage = 0;
    int parity = 0;
    __device__ __forceinline__ void advance() {
        if (++stage == Stages) {
            stage = 0;
            parity ^= 1;
        }
    }
};

// In a cluster (a pair, or four CTAs in dW) each producer may multicast into the other CTAs' slot,
// so a slot is free only when the consumers of every CTA are done with it: empty barriers count the
// arrivals of all, and release() arrives on all. The cluster walks the ring in lockstep.
template <int Stages, int Cluster = 1>
struct StageBarriers {
    static_assert(Cluster == 1 || Cluster == 2 || Cluster == 4, "");
    unsigned long long full[Stages];
    unsigned long long empty[Stages];

    __device__ uint32 full_address(int stage) const { return ptx::shared_address(&full[stage]); }
    __device__ uint32 empty_address(int stage) const { return ptx::shared_address(&empty[stage]); }

    // A consumer warpgroup (one thread of it) hands slot `stage` back.
    __device__ __forceinline__ void release(int stage) const {
        mbarrier_arrive(empty_address(stage));
        if constexpr (Cluster > 1) {
            const uint32 rank = cluster_rank();
#pragma unroll
            for (uint32 other = 1; other < Cluster; ++other)
                mbarrier_arrive_remote(map_to_cta(empty_address(stage), rank ^ other));
        }
    }

    // One thread, before the block-wide barrier that precedes the role split.
    __device__ void init(int full_arrivals, int empty_arrivals) {
        for (int s = 0; s < Stages; ++s) {
            mbarrier_init(full_address(s), full_arrivals);
            mbarrier_init(empty_address(s), empty_arrivals);
        }
        fence_barrier_init();
    }
};

// A producer warpgroup gathering Rows rows x (Boxes x 64) columns of one slice into Boxes
// 128-byte-swizzled [Rows][64] boxes placed Rows*128 bytes apart. Thread t copies chunk t % 8
// of the rows and boxes that `row(t, i)` and `box(t, i)` name for i < Copies.
template <int Rows, int Boxes>
struct GatherPlan {
    static constexpr int Copies = Rows * Boxes * 8 / kWarpgroupThreads;
    static_assert(Copies * kWarpgroupThreads == Rows * Boxes * 8, "tile must split evenly over 128 threads");
    __device__ __forceinline__ static int row(int thread, int i) { return ((thread + i * kWarpgroupThreads) / 8) % Rows; }
    __device__ __forceinline__ static int box(int thread, int i) { return (thread + i * kWarpgroupThreads) / (8 * Rows); }
    __device__ __forceinline__ static uint32 offset(int thread, int i) {
        return uint32(box(thread, i)) * Rows * kSliceBytesPerRow + swizzled_offset(row(thread, i), thread % 8);
    }
};

// Gathering producers: every thread of the producer warpgroup issues its cp.async copies for a slice
// (or none) and then makes one cp_async_arrive_noinc on the slot's full barrier, so the copies of as
// many slices as the ring holds are in flight at once and no producer thread waits on memory. The
// copies are generic-proxy writes: consumers fence (fence_proxy_async) after the full barrier and
// before wgmma reads the slot.
constexpr int kGatherArrivals = kWarpgroupThreads;

// Consumer side of the ring: each slice's wgmma batch stays in flight while the previous batch
// retires, and only then is the previous slot handed back to the producer. `fragments`: the
// accumulator arrays the batches write (one, or the swapped-operand kernel's wide and tail).
template <int Stages>
struct SlotReleaser {
    int previous = -1;  // slot whose wgmma batch may still be reading it

    template <class Barriers, int... Registers>
    __device__ __forceinline__ void issued(const Barriers& barriers, int stage, bool leader,
                                           float (&... fragments)[Registers]) {
        wgmma_wait<1>();
        (fence_accumulators(fragments), ...);
        if (previous >= 0 && leader) barriers.release(previous);
        previous = stage;
    }
    // At the end of a tile: every batch retired, the last slot handed back.
    template <class Barriers, int... Registers>
    __device__ __forceinline__ void drain(const Barriers& barriers, bool leader, float (&... fragments)[Registers]) {
        wgmma_wait<0>();
        (fence_accumulators(fragments), ...);
        if (previous >= 0 && leader) barriers.release(previous);
        previous = -1;
    }
};

// A slot a consumer warpgroup walks past without reading it (no tile for it this round, or a
// cluster's longer tile): wait for it to fill, then hand it back. No wgmma holds the warps together
// here, so they meet first (named barrier `warpgroup_barrier`); otherwise the ring could lap a slow
// warp, which would then wait on the wrong phase while its warpgroup blocks in the next wgmma.
template <int Stages, class Barriers>
__device__ __forceinline__ void pass_slot(const Barriers& barriers, const RingPosition<Stages>& position,
                                          int warpgroup_barrier, bool leader) {
    mbarrier_wait(barriers.full_address(position.stage), position.parity);
    named_barrier(warpgroup_barrier, kWarpgroupThreads);
    if (leader) barriers.release(position.stage);
}

// One consumer step over a filled slot: SliceK / 16 k16 wgmma into `accumulators`. `a_step` / `b_step`
// are the descriptor advances per k16 (32 bytes along a K-major row, 2048 bytes = 16 rows MN-major);
// `a_stride` the bytes from one 8-row group of A to the next (0: every group reads the same 8 rows,
// as from the row-grouped kernel's zero rows).
template <class Mma, int SliceK = kSliceK, int Registers>
__device__ __forceinline__ void wgmma_slice(float (&accumulators)[Registers], uint32 a_address, uint32 a_leading,
                                            uint32 a_step, uint32 b_address, uint32 b_leading, uint32 b_step,
                                            bool accumulate, uint32 a_stride = 1024) {
    wgmma_fence();
#pragma unroll
    for (int k = 0; k < SliceK / 16; ++k) {
        const uint64 desc_a = smem_descriptor(a_address + k * a_step, a_leading, a_stride);
        const uint64 desc_b = smem_descriptor(b_address + k * b_step, b_leading, 1024);
        Mma::mma(accumulators, desc_a, desc_b, (accumulate || k > 0) ? 1 : 0);
    }
    wgmma_commit();
}

// The same over the slice's first `steps` k16 steps only (at least one): a tile's last slice holds
// rows past the expert's end, zeros, and whole k16 steps of them need no MMA. One unconditional
// batch per depth: a branch around single wgmma makes ptxas inject warpgroup.arrive (C7519).
template <class Mma, int SliceK = kSliceK, int Registers>
__device__ __forceinline__ void wgmma_slice_steps(float (&accumulators)[Registers], uint32 a_address, uint32 a_leading,
                                                  uint32 a_step, uint32 b_address, uint32 b_leading, uint32 b_step,
                                                  bool accumulate, int steps) {
    static_assert(SliceK == 32 || SliceK == 64, "");
    if (SliceK == 64 && steps >= 4)
        wgmma_slice<Mma, 64>(accumulators, a_address, a_leading, a_step, b_address, b_leading, b_step, accumulate);
    else if (SliceK == 64 && steps == 3)
        wgmma_slice<Mma, 48>(accumulators, a_address, a_leading, a_step, b_address, b_leading, b_step, accumulate);
    else if (steps >= 2)
        wgmma_slice<Mma, 32>(accumulators, a_address, a_leading, a_step, b_address, b_leading, b_step, accumulate);
    else
        wgmma_slice<Mma, 16>(accumulators, a_address, a_leading, a_step, b_address, b_leading, b_step, accumulate);
}

}  // namespace moejit::sm90

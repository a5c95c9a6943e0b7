#pragma once
// Run-time tile order for the persistent row-grouped Hopper kernels that claim tiles (A gathered,
// or operands swapped: codegen/config.cpp, claims_tiles): each CTA starts on tile blockIdx.x, and
// the producer's thread 0 then claims gridDim.x + counters[0]++ one round ahead (the atomic's
// round trip overlaps a tile's loads). Tiles thus start in the scheduler's order however unequal
// their costs; under a static stride a CTA whose gathers happen to be slow falls behind, and the
// CTAs sharing a weight tile (neighbouring m tiles of one expert) no longer meet in L2 at one time.
//
// counters: two ints in device memory, zero when a launch starts: [0] the claims, [1] the CTAs that
// have made their last claim. The CTA that makes the last of those puts both back to zero, so the
// next launch given the same pair finds them at zero with no memset in between (the host gives
// launches that may run at once different pairs: moe/grouped_gemm.cpp, TileCounters). A memset
// would be a launch of its own, and it ends the chain of dependent launches (dependent_launch.cuh)
// before every kernel that claims. The reset waits for every CTA
// rather than for the last tile, so that it happens even if CTAs disagree on the tile count (an
// m_sizes rewritten while the kernel reads it).
//
// Two slots hand each round's tile to the consumer warpgroups and to the other producer threads
// (which gather too): `full` when the index is written, `empty` when every consumer warp has read it.
#include "common/sm90_ptx.cuh"

namespace moejit::sm90 {

// Named barrier of the gathering producer warpgroup, through which its threads learn thread 0's
// tiles (consumer warpgroups use 1 + their index).
constexpr int kProducerBarrier = 7;

struct TileQueue {
    static constexpr int kSlots = 2;
    int index[kSlots];
    unsigned long long full[kSlots];
    unsigned long long empty[kSlots];

    __device__ uint32 full_address(int slot) const { return ptx::shared_address(&full[slot]); }
    __device__ uint32 empty_address(int slot) const { return ptx::shared_address(&empty[slot]); }

    // One thread, before the barrier initialization fence.
    __device__ void init(int consumer_warps) {
        for (int s = 0; s < kSlots; ++s) {
            mbarrier_init(full_address(s), 1);
            mbarrier_init(empty_address(s), consumer_warps);
        }
    }

    // Producer thread 0: a tile for a round after the first.
    __device__ __forceinline__ static int claim(int* counters) {
        return static_cast<int>(gridDim.x) + atomicAdd(&counters[0], 1);
    }

    // Producer thread 0, once, after the CTA's last claim (or in place of any).
    __device__ __forceinline__ static void retire(int* counters) {
        __threadfence();  // this CTA's claims are performed before its count
        const unsigned retired = atomicAdd(reinterpret_cast<unsigned*>(&counters[1]), 1u);
        if (retired + 1 == gridDim.x) {  // every other CTA has claimed its last
            __threadfence();
            atomicExch(&counters[0], 0);
            atomicExch(&counters[1], 0);
        }
    }

    // Producer thread 0: publishes `tile` as round `round`'s.
    __device__ __forceinline__ void publish(int round, int tile) {
        const int slot = round % kSlots, parity = (round / kSlots) & 1;
        mbarrier_wait(empty_address(slot), parity ^ 1);
        *reinterpret_cast<volatile int*>(&index[slot]) = tile;
        mbarrier_arrive(full_address(slot));  // release: the index is visible to whoever waits on full
    }
    // Producer threads, after a barrier with thread 0 that follows its publish of `round`.
    __device__ __forceinline__ int peek(int round) const {
        return *reinterpret_cast<const volatile int*>(&index[round % kSlots]);
    }
    // Consumer warps: the tile of round `round`. Lane 0 reads it, hands the slot back and passes it
    // to the warp: the thread whose arrival releases the slot is the one that read it, so the read
    // is ordered before thread 0's next write there by the mbarrier alone (compute-sanitizer's
    // racecheck reported lanes 1-31's reads, ordered only through __syncwarp, as races with it).
    __device__ __forceinline__ int receive(int round, int lane) {
        const int slot = round % kSlots, parity = (round / kSlots) & 1;
        int tile = 0;
        if (lane == 0) {
            mbarrier_wait(full_address(slot), parity);
            tile = peek(round);
            mbarrier_arrive(empty_address(slot));
        }
        return __shfl_sync(0xffffffffu, tile, 0);
    }
};

}  // namespace moejit::sm90

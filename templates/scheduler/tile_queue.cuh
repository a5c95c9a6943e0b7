#pragma once
// Dynamic tile order for the persistent row-grouped Hopper kernel: the producer's thread 0 claims
// tile indices from a global counter, so tiles start in the scheduler's order however unequal
// their costs. Under a static stride a CTA whose tiles happen to be slow falls behind, and the CTAs
// sharing a weight tile (neighbouring m tiles of one expert) no longer meet in L2 at one time.
//
// counter [2] (device memory, zeros at launch): [0] the next unclaimed tile, [1] the CTAs that
// have made their last claim. The last of those resets both, so the next launch in stream order
// finds zeros again; launches that use one counter must therefore not overlap (the library keeps
// one counter per stream).
//
// Two slots hand each claim to the consumer warpgroups (and, where the producers gather rows, to
// the other producer threads): `full` when the index is written, `empty` when every consumer warp
// has read it.
#include "common/sm90_ptx.cuh"

namespace moejit::sm90 {

// Named barrier of a gathering producer warpgroup, whose threads all learn thread 0's claims
// through it (consumer warpgroups use 1 + their index).
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

    // Producer thread 0: the next tile in the global order. Claimed one round ahead, so that the
    // atomic's round trip overlaps a tile's loads instead of delaying the next tile's first one.
    __device__ __forceinline__ static int claim(int* counter) { return atomicAdd(counter, 1); }

    // Producer thread 0: publishes `tile` as round `round`'s.
    __device__ __forceinline__ int publish(int round, int tile) {
        const int slot = round % kSlots, parity = (round / kSlots) & 1;
        mbarrier_wait(empty_address(slot), parity ^ 1);
        *reinterpret_cast<volatile int*>(&index[slot]) = tile;
        mbarrier_arrive(full_address(slot));  // release: the index is visible to whoever waits on full
        return tile;
    }
    // Other producer threads, after a barrier with thread 0 that follows its claim of `round`.
    __device__ __forceinline__ int peek(int round) const {
        return *reinterpret_cast<const volatile int*>(&index[round % kSlots]);
    }
    // Consumer warps: the tile of round `round`; lane 0 of each warp hands the slot back.
    __device__ __forceinline__ int receive(int round, int lane) {
        const int slot = round % kSlots, parity = (round / kSlots) & 1;
        mbarrier_wait(full_address(slot), parity);
        const int tile = peek(round);
        __syncwarp();
        if (lane == 0) mbarrier_arrive(empty_address(slot));
        return tile;
    }
    // Producer thread 0, after the claim that found no tile left.
    __device__ static void finish(int* counter) {
        if (atomicAdd(counter + 1, 1) == static_cast<int>(gridDim.x) - 1) {
            atomicExch(counter, 0);
            atomicExch(counter + 1, 0);
        }
    }
};

}  // namespace moejit::sm90

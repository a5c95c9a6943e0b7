#pragma once
// The cp.async ring every sm_80 GEMM kernel runs: `slices` 64-deep reduction slices stream through
// Stages shared-memory stages while each warp accumulates its tile with mma.sync.
#include "common/ptx.cuh"
#include "mma/sm80_operand.cuh"

namespace moejit::sm80 {

// load_slice(slice, stage) issues the cp.async copies of one slice into one stage (no commit).
// Ends with every copy landed and a barrier, so the caller may reuse shared memory at once.
template <class Element, class TileA, class TileB, int Stages, int FragmentsM, int FragmentsN, class LoadSlice>
__device__ __forceinline__ void mainloop(float (&accumulators)[FragmentsM][FragmentsN][4], uint32 sA, uint32 sB,
                                         int slices, int warp_row0, int warp_col0, const LoadSlice& load_slice) {
#pragma unroll
    for (int i = 0; i < FragmentsM; ++i)
#pragma unroll
        for (int j = 0; j < FragmentsN; ++j)
#pragma unroll
            for (int v = 0; v < 4; ++v) accumulators[i][j][v] = 0.0f;

    // Every iteration commits one group (maybe empty), so wait_group<Stages-2> always means
    // "the slice about to be read has landed".
#pragma unroll
    for (int stage = 0; stage < Stages - 1; ++stage) {
        if (stage < slices) load_slice(stage, stage);
        ptx::cp_async_commit();
    }
    for (int slice = 0; slice < slices; ++slice) {
        ptx::cp_async_wait<Stages - 2>();
        __syncthreads();  // the slice is visible to all, and the oldest stage is free to refill
        const int next = slice + Stages - 1;
        if (next < slices) load_slice(next, next % Stages);
        ptx::cp_async_commit();
        const int stage = slice % Stages;
        warp_mma_slice<Element, TileA, TileB>(accumulators, sA + stage * TileA::Bytes, sB + stage * TileB::Bytes,
                                              warp_row0, warp_col0);
    }
    ptx::cp_async_wait<0>();
    __syncthreads();  // no thread may start the next tile's loads while others still read this one
}

}  // namespace moejit::sm80

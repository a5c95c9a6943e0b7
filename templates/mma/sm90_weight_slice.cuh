#pragma once
// One slice of a row-grouped pass's weight tile by TMA, shared by the 128-row kernel
// (kernels/sm90_grouped_gemm.cuh) and the swapped-operand one (kernels/sm90_grouped_gemm_swap_ab.cuh).
// Cfg names Forward, Gated, Cluster, N, TileN and BytesB.
#include "common/sm90_ptx.cuh"
#include "mma/sm90_pipeline.cuh"

namespace moejit {

// One slice of the weight tile into sB: [TileN rows][64 k] K-major (forward), or TileN/64 boxes of
// [64 n][64 k] (dX). When the pair shares the tile, this CTA loads its half and multicasts it, and
// the partner's half arrives the same way; either way `full` receives BytesB.
template <class Cfg>
__device__ __forceinline__ void load_weight_slice(const sm90::TensorMap& map_b, uint32 sB, uint32 full, int k0,
                                                  int out_col0, int expert, bool shared, int rank) {
    constexpr unsigned short kBoth = 0x3;
    if constexpr (Cfg::Forward) {
        // Half boxes of TileN/2 rows when gated (the gate rows, then the up rows N/2 further on)
        // or when clustered; otherwise one box.
        if constexpr (!Cfg::Gated && Cfg::Cluster == 1) {
            sm90::tma_load_3d(sB, map_b, k0, out_col0, expert, full);
        } else {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int row0 = Cfg::Gated ? half * (Cfg::N / 2) + out_col0 : out_col0 + half * (Cfg::TileN / 2);
                const uint32 destination = sB + half * (Cfg::BytesB / 2);
                if (!shared) sm90::tma_load_3d(destination, map_b, k0, row0, expert, full);
                else if (half == rank) sm90::tma_load_3d_multicast(destination, map_b, k0, row0, expert, full, kBoth);
            }
        }
    } else {
        constexpr int Boxes = Cfg::TileN / 64;
#pragma unroll
        for (int box = 0; box < Boxes; ++box) {
            const uint32 destination = sB + box * 64 * sm90::kSliceBytesPerRow;
            if (!shared) sm90::tma_load_3d(destination, map_b, out_col0 + box * 64, k0, expert, full);
            else if (box / (Boxes / 2) == rank)
                sm90::tma_load_3d_multicast(destination, map_b, out_col0 + box * 64, k0, expert, full, kBoth);
        }
    }
}

}  // namespace moejit

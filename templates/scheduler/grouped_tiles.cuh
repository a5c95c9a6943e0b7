#pragma once
// Tile scheduler for grouped GEMMs whose group sizes live on the device.
//
// Every CTA scans m_sizes [E] once into shared memory (row offsets and tile offsets per expert),
// then maps a linear tile index to (expert, m tile, n tile) by binary search. Tiles are ordered
// expert-major, then in bands of m tiles (see kBandMTiles), so the CTAs resident at one time share
// one or two experts' weights and a few row blocks in L2.
#include "common/types.cuh"

namespace moejit {

struct GroupedTile {
    int expert;
    int m_tile;        // within the expert
    int n_tile;
    int row_begin;     // first row of this expert in the expert-ordered [M, *] matrices
    int expert_rows;   // m_sizes[expert]
};

template <int Experts, int Threads, int TileM, int NTiles>
struct GroupedTileScheduler {
    static_assert(Threads % 32 == 0, "whole warps");
    static constexpr int kWarps = Threads / 32;
    static constexpr int kExpertsPerThread = (Experts + Threads - 1) / Threads;
    // Within an expert, tiles go in bands of this many m tiles, m fastest, then n: the CTAs running
    // at one time share a few row blocks of A and a few column blocks of W, so both stay in L2 even
    // when one expert holds thousands of rows (m fastest over the whole expert re-read A per n tile).
    static constexpr int kBandMTiles = 8;

    struct Shared {
        int row_start[Experts + 1];   // exclusive prefix sum of m_sizes
        int tile_start[Experts + 1];  // exclusive prefix sum of tiles per expert
        int warp_rows[kWarps];
        int warp_tiles[kWarps];
    };

    Shared& shared;

    // Block-wide; ends with __syncthreads. Negative sizes count as empty.
    __device__ explicit GroupedTileScheduler(Shared& storage, const int* m_sizes) : shared(storage) {
        const int thread = threadIdx.x, lane = thread % 32, warp = thread / 32;
        const int first_expert = thread * kExpertsPerThread;
        int my_rows = 0, my_tiles = 0;
#pragma unroll
        for (int i = 0; i < kExpertsPerThread; ++i) {
            const int expert = first_expert + i;
            const int rows = expert < Experts ? max_of(m_sizes[expert], 0) : 0;
            my_rows += rows;
            my_tiles += ceil_div(rows, TileM) * NTiles;
        }
        int rows_inclusive = my_rows, tiles_inclusive = my_tiles;
#pragma unroll
        for (int offset = 1; offset < 32; offset *= 2) {
            const int rows_before = __shfl_up_sync(0xffffffffu, rows_inclusive, offset);
            const int tiles_before = __shfl_up_sync(0xffffffffu, tiles_inclusive, offset);
            if (lane >= offset) {
                rows_inclusive += rows_before;
                tiles_inclusive += tiles_before;
            }
        }
        if (lane == 31) {
            shared.warp_rows[warp] = rows_inclusive;
            shared.warp_tiles[warp] = tiles_inclusive;
        }
        __syncthreads();
        for (int w = 0; w < warp; ++w) {
            rows_inclusive += shared.warp_rows[w];
            tiles_inclusive += shared.warp_tiles[w];
        }
        int row = rows_inclusive - my_rows, tile = tiles_inclusive - my_tiles;
#pragma unroll
        for (int i = 0; i < kExpertsPerThread; ++i) {
            const int expert = first_expert + i;
            if (expert < Experts) {
                shared.row_start[expert] = row;
                shared.tile_start[expert] = tile;
                const int rows = max_of(m_sizes[expert], 0);
                row += rows;
                tile += ceil_div(rows, TileM) * NTiles;
            }
        }
        if (thread == Threads - 1) {
            shared.row_start[Experts] = rows_inclusive;
            shared.tile_start[Experts] = tiles_inclusive;
        }
        __syncthreads();
    }

    __device__ int total_tiles() const { return shared.tile_start[Experts]; }
    __device__ int row_begin(int expert) const { return shared.row_start[expert]; }
    __device__ int rows(int expert) const { return shared.row_start[expert + 1] - shared.row_start[expert]; }

    __device__ GroupedTile tile(int index) const {
        int low = 0, high = Experts - 1;  // last expert whose tile_start <= index
        while (low < high) {
            const int middle = (low + high + 1) / 2;
            if (shared.tile_start[middle] <= index) low = middle;
            else high = middle - 1;
        }
        GroupedTile result;
        result.expert = low;
        result.row_begin = shared.row_start[low];
        result.expert_rows = shared.row_start[low + 1] - result.row_begin;
        const int local = index - shared.tile_start[low];
        const int m_tiles = ceil_div(result.expert_rows, TileM);
        const int band = local / (kBandMTiles * NTiles);
        const int band_m_tiles = min_of(kBandMTiles, m_tiles - band * kBandMTiles);
        const int within = local - band * kBandMTiles * NTiles;
        result.n_tile = within / band_m_tiles;
        result.m_tile = band * kBandMTiles + (within - result.n_tile * band_m_tiles);
        return result;
    }
};

}  // namespace moejit

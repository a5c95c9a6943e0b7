#pragma once
// Tile scheduler for grouped GEMMs whose group sizes live on the device.
//
// Every CTA reads m_sizes [E] once and scans it into shared memory (row offsets, then tile offsets),
// then maps a linear tile index to (expert, m tile, n tile) by binary search. With NTiles 0 it
// keeps the row offsets only (dW walks its own tile grid): half the shared memory, which with 256
// experts is what leaves room for the dW epilogue's second staging box. Tiles are ordered
// expert-major, then in bands (band_order), so the CTAs resident at one time share one or two
// experts' weights and a few row blocks in L2.
#include "common/block_sum.cuh"

namespace moejit {

// Within one expert's grid of tiles, the CTAs running at one time (132 on H100) should share
// operands in L2: tiles go in bands of kBandTiles rows, rows fastest within a band, then columns.
// A round of C resident CTAs then reads kBandTiles row blocks and C / kBandTiles column blocks;
// with 128-row and 256-column blocks, 16 keeps that sum near its least (16 x 128 + 8 x 256 rows of
// operands against 8 x 128 + 16.5 x 256 for bands of 8), which matters where an expert's operands
// outgrow L2 (mixtral-8x7b: 2048 rows x 14336).
constexpr int kBandTiles = 16;

// Tile `local` of a `rows` x `columns` grid of tiles in band order.
__device__ __forceinline__ void band_order(int local, int rows, int columns, int& row, int& column) {
    const int band = local / (kBandTiles * columns);
    const int band_rows = min_of(kBandTiles, rows - band * kBandTiles);
    const int within = local - band * kBandTiles * columns;
    column = within / band_rows;
    row = band * kBandTiles + (within - column * band_rows);
}

struct GroupedTile {
    int expert;
    int m_tile;        // within the expert
    int n_tile;
    int row_begin;     // first row of this expert in the expert-ordered [M, *] matrices
    int expert_rows;   // m_sizes[expert], cut at M (GroupedTileScheduler)
};

template <int Experts, int Threads, int TileM, int NTiles>
struct GroupedTileScheduler {
    static_assert(Threads % 32 == 0, "whole warps");
    static constexpr int kWarps = Threads / 32;
    static constexpr int kExpertsPerThread = (Experts + Threads - 1) / Threads;
    static constexpr bool kTiles = NTiles > 0;

    struct Shared {
        int row_start[Experts + 1];                  // exclusive prefix sum of the cut m_sizes
        int tile_start[kTiles ? Experts + 1 : 1];    // exclusive prefix sum of tiles per expert
        int warp_rows[kWarps];
        int warp_tiles[kTiles ? kWarps : 1];
    };

    Shared& shared;

    // Block-wide; ends with __syncthreads. The experts' rows are laid end to end and cut at `rows`
    // (M): negative sizes count as empty, and rows at or past M belong to no expert, so every
    // expert's rows lie within [0, M) whatever m_sizes holds. The sums saturate at M, so a bad
    // m_sizes (a float32 tensor read as int32, say) cannot wrap them to negative rows. A null
    // m_sizes (a single-expert problem: the host allows no other) puts all M rows in expert 0.
    __device__ GroupedTileScheduler(Shared& storage, const int* m_sizes, int64 rows) : shared(storage) {
        const int thread = threadIdx.x;
        const int first_expert = thread * kExpertsPerThread;
        const int limit = static_cast<int>(rows);  // M < 2^31 (moe/row_limits.hpp)
        int cut[kExpertsPerThread + 1];  // this thread's experts' first rows, and the end of its last
        int my_rows = 0;
#pragma unroll
        for (int i = 0; i < kExpertsPerThread; ++i) {
            const int expert = first_expert + i;
            const int requested = expert >= Experts ? 0 : m_sizes != nullptr ? m_sizes[expert] : limit;
            const int size = min_of(max_of(requested, 0), limit);
            cut[i + 1] = size;  // for now
            my_rows = saturating_add(my_rows, size, limit);
        }
        cut[0] = exclusive_block_sum<kWarps>(my_rows, shared.warp_rows, limit);
#pragma unroll
        for (int i = 0; i < kExpertsPerThread; ++i) cut[i + 1] = saturating_add(cut[i], cut[i + 1], limit);
        int my_tiles = 0;
#pragma unroll
        for (int i = 0; i < kExpertsPerThread; ++i) {
            const int expert = first_expert + i;
            if (expert < Experts) shared.row_start[expert] = cut[i];
            if constexpr (kTiles) my_tiles += tiles_of(cut[i + 1] - cut[i]);
        }
        if (thread == Threads - 1) shared.row_start[Experts] = cut[kExpertsPerThread];
        if constexpr (kTiles) {
            // Tiles of rows within [0, M) fit an int for any M a device holds.
            int tile = exclusive_block_sum<kWarps>(my_tiles, shared.warp_tiles, kIntMax);
#pragma unroll
            for (int i = 0; i < kExpertsPerThread; ++i) {
                const int expert = first_expert + i;
                if (expert < Experts) shared.tile_start[expert] = tile;
                tile += tiles_of(cut[i + 1] - cut[i]);
            }
            if (thread == Threads - 1) shared.tile_start[Experts] = tile;
        }
        __syncthreads();
    }

    __device__ int total_tiles() const {
        static_assert(kTiles, "row offsets only");
        return shared.tile_start[Experts];
    }
    __device__ int row_begin(int expert) const { return shared.row_start[expert]; }
    __device__ int rows(int expert) const { return shared.row_start[expert + 1] - shared.row_start[expert]; }

    __device__ GroupedTile tile(int index) const {
        static_assert(kTiles, "row offsets only");
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
        band_order(index - shared.tile_start[low], ceil_div(result.expert_rows, TileM), NTiles, result.m_tile,
                   result.n_tile);
        return result;
    }

  private:
    // In 64 bits: an expert of nearly 2^31 rows would overflow ceil_div's int.
    static __device__ int tiles_of(int expert_rows) {
        return static_cast<int>((static_cast<int64>(expert_rows) + TileM - 1) / TileM) * NTiles;
    }
};

}  // namespace moejit

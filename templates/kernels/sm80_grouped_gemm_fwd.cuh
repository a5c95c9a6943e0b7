#pragma once
// Grouped GEMM forward on the portable tensor-core path (sm_80 and newer):
//   Y[rows of e] = X[rows of e] @ W[e]^T     X [M, K], W [E, N, K], Y [M, N], m_sizes [E] on device.
//
// Persistent CTAs walk (expert, m tile, n tile) through GroupedTileScheduler. Each tile streams
// K in TileK=64 slices through a Stages-deep cp.async ring in shared memory, swizzled so that
// ldmatrix reads and cp.async writes are free of bank conflicts, and accumulates in fp32 with
// mma.sync m16n8k16. Rows past an expert's end, N or K are zero-filled on load and masked on store.
#include "common/ptx.cuh"
#include "common/types.cuh"
#include "scheduler/grouped_tiles.cuh"

namespace moejit {

template <class Element_, int N_, int K_, int Experts_, int TileM_, int TileN_, int Stages_, int WarpsM_,
          int WarpsN_>
struct Sm80GroupedGemmConfig {
    using Element = Element_;
    static constexpr int N = N_, K = K_, Experts = Experts_;
    static constexpr int TileM = TileM_, TileN = TileN_, TileK = 64, Stages = Stages_;
    static constexpr int WarpsM = WarpsM_, WarpsN = WarpsN_;
    static constexpr int Threads = WarpsM * WarpsN * 32;
    static constexpr int WarpTileM = TileM / WarpsM, WarpTileN = TileN / WarpsN;
    static constexpr int FragmentsM = WarpTileM / 16, FragmentsN = WarpTileN / 8;
    static constexpr int NTiles = (N + TileN - 1) / TileN;
    static constexpr int KTiles = (K + TileK - 1) / TileK;
    // A shared-memory row of one K slice: 64 elements = 128 bytes = 8 chunks of 16 bytes.
    static constexpr int ChunksPerRow = TileK * 2 / 16;
    static constexpr int RowsPerLoadPass = Threads / ChunksPerRow;
    static constexpr int StageBytesA = TileM * TileK * 2, StageBytesB = TileN * TileK * 2;
    static constexpr int SharedBytes = Stages * (StageBytesA + StageBytesB);

    static_assert(sizeof(Element) == 2, "16-bit inputs");
    static_assert(N % 8 == 0 && K % 8 == 0, "N and K must be multiples of 8 (16-byte rows)");
    static_assert(WarpTileM % 16 == 0 && WarpTileN % 16 == 0, "warp tile must be a multiple of 16x16");
    static_assert(TileM % RowsPerLoadPass == 0 && TileN % RowsPerLoadPass == 0, "whole load passes");
    static_assert(Stages >= 2, "at least double buffering");
};

namespace sm80 {

// Byte offset of 16-byte chunk `chunk` of row `row` in a [rows, 64] bf16 tile. The XOR spreads the
// 8 rows an ldmatrix phase reads over all 32 banks.
__device__ __forceinline__ uint32 swizzled_offset(int row, int chunk) {
    return static_cast<uint32>(row * 128 + ((chunk ^ (row & 7)) << 4));
}

// Issues the cp.async copies of one [Rows, 64] slice; each thread owns one chunk column and
// Rows / RowsPerLoadPass rows, whose source pointers (or nullptr when out of range) are fixed per tile.
template <class Cfg, int Rows>
__device__ __forceinline__ void load_slice(uint32 shared_tile, const typename Cfg::Element* const (&row_source)[Rows / Cfg::RowsPerLoadPass],
                                           const typename Cfg::Element* fallback, int k_tile) {
    const int chunk = threadIdx.x % Cfg::ChunksPerRow;
    const int k = k_tile * Cfg::TileK + chunk * 8;
    const bool k_in_range = k < Cfg::K;
#pragma unroll
    for (int pass = 0; pass < Rows / Cfg::RowsPerLoadPass; ++pass) {
        const int row = threadIdx.x / Cfg::ChunksPerRow + pass * Cfg::RowsPerLoadPass;
        const bool valid = k_in_range && row_source[pass] != nullptr;
        ptx::cp_async_16(shared_tile + swizzled_offset(row, chunk), valid ? row_source[pass] + k : fallback, valid);
    }
}

}  // namespace sm80

template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads)
    sm80_grouped_gemm_fwd(const typename Cfg::Element* __restrict__ x,  // [M, K], rows grouped by expert
                          const typename Cfg::Element* __restrict__ w,  // [E, N, K]
                          typename Cfg::Element* __restrict__ y,        // [M, N]
                          const int* __restrict__ m_sizes,              // [E]
                          int64 total_rows) {                           // M: rows past it are never touched
    using Element = typename Cfg::Element;
    using Scheduler = GroupedTileScheduler<Cfg::Experts, Cfg::Threads, Cfg::TileM, Cfg::NTiles>;
    constexpr int PassesA = Cfg::TileM / Cfg::RowsPerLoadPass, PassesB = Cfg::TileN / Cfg::RowsPerLoadPass;

    __shared__ typename Scheduler::Shared scheduler_storage;
    extern __shared__ __align__(128) unsigned char shared_tiles[];  // [Stages][TileM + TileN][64]
    const uint32 sA = ptx::shared_address(shared_tiles);            // [Stages][TileM, 64]
    const uint32 sB = sA + Cfg::Stages * Cfg::StageBytesA;           // [Stages][TileN, 64]

    const Scheduler scheduler(scheduler_storage, m_sizes);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int warp_m = warp / Cfg::WarpsN, warp_n = warp % Cfg::WarpsN;

    for (int tile_index = blockIdx.x; tile_index < scheduler.total_tiles(); tile_index += gridDim.x) {
        const GroupedTile tile = scheduler.tile(tile_index);
        const int tile_row = tile.m_tile * Cfg::TileM;  // within the expert
        const int tile_col = tile.n_tile * Cfg::TileN;

        // Source rows of this tile, nullptr where the row lies outside the expert, M or N.
        const Element* gA[PassesA];  // rows of X
        const Element* gB[PassesB];  // rows of W[e]
#pragma unroll
        for (int pass = 0; pass < PassesA; ++pass) {
            const int row = tile_row + threadIdx.x / Cfg::ChunksPerRow + pass * Cfg::RowsPerLoadPass;
            const int64 global_row = static_cast<int64>(tile.row_begin) + row;
            gA[pass] = (row < tile.expert_rows && global_row < total_rows) ? x + global_row * Cfg::K : nullptr;
        }
        const Element* w_expert = w + static_cast<int64>(tile.expert) * Cfg::N * Cfg::K;
#pragma unroll
        for (int pass = 0; pass < PassesB; ++pass) {
            const int n = tile_col + threadIdx.x / Cfg::ChunksPerRow + pass * Cfg::RowsPerLoadPass;
            gB[pass] = n < Cfg::N ? w_expert + static_cast<int64>(n) * Cfg::K : nullptr;
        }

        float accumulators[Cfg::FragmentsM][Cfg::FragmentsN][4];
#pragma unroll
        for (int i = 0; i < Cfg::FragmentsM; ++i)
#pragma unroll
            for (int j = 0; j < Cfg::FragmentsN; ++j)
#pragma unroll
                for (int v = 0; v < 4; ++v) accumulators[i][j][v] = 0.0f;

        // Prologue: fill Stages-1 slices. Every iteration commits one group (maybe empty) so
        // that wait_group<Stages-2> always means "the slice about to be read has landed".
#pragma unroll
        for (int stage = 0; stage < Cfg::Stages - 1; ++stage) {
            if (stage < Cfg::KTiles) {
                sm80::load_slice<Cfg, Cfg::TileM>(sA + stage * Cfg::StageBytesA, gA, x, stage);
                sm80::load_slice<Cfg, Cfg::TileN>(sB + stage * Cfg::StageBytesB, gB, w, stage);
            }
            ptx::cp_async_commit();
        }

        for (int k_tile = 0; k_tile < Cfg::KTiles; ++k_tile) {
            ptx::cp_async_wait<Cfg::Stages - 2>();
            __syncthreads();  // the slice is visible to all, and the oldest stage is free to refill

            const int next = k_tile + Cfg::Stages - 1;
            if (next < Cfg::KTiles) {
                const int stage = next % Cfg::Stages;
                sm80::load_slice<Cfg, Cfg::TileM>(sA + stage * Cfg::StageBytesA, gA, x, next);
                sm80::load_slice<Cfg, Cfg::TileN>(sB + stage * Cfg::StageBytesB, gB, w, next);
            }
            ptx::cp_async_commit();

            const int stage = k_tile % Cfg::Stages;
            const uint32 sA_stage = sA + stage * Cfg::StageBytesA;
            const uint32 sB_stage = sB + stage * Cfg::StageBytesB;
#pragma unroll
            for (int k_step = 0; k_step < Cfg::TileK / 16; ++k_step) {
                uint32 rA[Cfg::FragmentsM][4];  // 16x16 A fragments
                uint32 rB[Cfg::FragmentsN][2];  // 16x8 B fragments
#pragma unroll
                for (int i = 0; i < Cfg::FragmentsM; ++i) {
                    const int row = warp_m * Cfg::WarpTileM + i * 16 + lane % 16;
                    ptx::ldmatrix_x4(rA[i], sA_stage + sm80::swizzled_offset(row, 2 * k_step + lane / 16));
                }
#pragma unroll
                for (int j = 0; j < Cfg::FragmentsN; j += 2) {
                    const int row = warp_n * Cfg::WarpTileN + j * 8 + lane % 8 + (lane / 16) * 8;
                    uint32 pair[4];
                    ptx::ldmatrix_x4(pair, sB_stage + sm80::swizzled_offset(row, 2 * k_step + (lane / 8) % 2));
                    rB[j][0] = pair[0];
                    rB[j][1] = pair[1];
                    rB[j + 1][0] = pair[2];
                    rB[j + 1][1] = pair[3];
                }
#pragma unroll
                for (int i = 0; i < Cfg::FragmentsM; ++i)
#pragma unroll
                    for (int j = 0; j < Cfg::FragmentsN; ++j) ptx::mma_16x8x16<Element>(accumulators[i][j], rA[i], rB[j]);
            }
        }
        ptx::cp_async_wait<0>();
        __syncthreads();  // no thread may start the next tile's prologue while others read this one

        // Epilogue: each quad of lanes owns 8 consecutive columns of a row; 4-byte stores.
#pragma unroll
        for (int i = 0; i < Cfg::FragmentsM; ++i) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int row = tile_row + warp_m * Cfg::WarpTileM + i * 16 + half * 8 + lane / 4;
                const int64 global_row = static_cast<int64>(tile.row_begin) + row;
                if (row >= tile.expert_rows || global_row >= total_rows) continue;
                Element* y_row = y + global_row * Cfg::N;
#pragma unroll
                for (int j = 0; j < Cfg::FragmentsN; ++j) {
                    const int col = tile_col + warp_n * Cfg::WarpTileN + j * 8 + (lane % 4) * 2;
                    if (col < Cfg::N)
                        *reinterpret_cast<uint32*>(y_row + col) =
                            pack2<Element>(accumulators[i][j][2 * half], accumulators[i][j][2 * half + 1]);
                }
            }
        }
    }
}

}  // namespace moejit

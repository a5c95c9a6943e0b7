#pragma once
// Row-grouped GEMMs on the portable tensor-core path (sm_80 and newer): the forward pass and dX.
//
//   forward: C[r] = A[r] @ W[e]^T   A = X [M or T, K] (K-major), W [E, N, K] K-major, C [M, N]
//   dX:      C[r] = A[r] @ W[e]     A = dY [M, N],  W read MN-major as [N][K], C [M, K]
//
// for every routed row r of expert e. Persistent CTAs walk (expert, m tile, n tile) through
// GroupedTileScheduler; each tile streams the reduction in 64-wide slices through a Stages-deep
// cp.async ring and accumulates in fp32 with mma.sync m16n8k16. The fusion flags (common/arguments.cuh)
// change only which global row a tile row reads or writes, the scale, and the gated epilogue.
#include "common/arguments.cuh"
#include "common/dependent_launch.cuh"
#include "common/ptx.cuh"
#include "mma/sm80_mainloop.cuh"
#include "mma/sm80_operand.cuh"
#include "scheduler/grouped_tiles.cuh"

namespace moejit {

template <class Element_, RowGroupedPass Pass_, int Flags_, int N_, int K_, int Experts_, int Topk_, int TileM_,
          int TileN_, int Stages_, int WarpsM_, int WarpsN_>
struct Sm80RowGroupedConfig {
    using Element = Element_;
    static constexpr RowGroupedPass Pass = Pass_;
    static constexpr int Flags = Flags_, N = N_, K = K_, Experts = Experts_, Topk = Topk_;
    static constexpr bool Forward = Pass == RowGroupedPass::forward;
    static constexpr bool Gated = Forward && (Flags & kGated);
    static constexpr bool SavesPreactivation = Gated && (Flags & kSavesPreactivation);
    static constexpr int TileM = TileM_, TileN = TileN_, Stages = Stages_, WarpsM = WarpsM_, WarpsN = WarpsN_;
    static constexpr int Threads = WarpsM * WarpsN * 32;
    static constexpr int WarpTileM = TileM / WarpsM, WarpTileN = TileN / WarpsN;
    static constexpr int FragmentsM = WarpTileM / 16, FragmentsN = WarpTileN / 8;

    static constexpr int Reduction = Forward ? K : N;                   // length of an A row
    static constexpr int OutCols = Forward ? (Gated ? N / 2 : N) : K;    // width of C
    static constexpr int TileOutCols = Gated ? TileN / 2 : TileN;       // C columns one tile writes
    static constexpr int NTiles = (OutCols + TileOutCols - 1) / TileOutCols;
    static constexpr int Slices = (Reduction + sm80::kSliceK - 1) / sm80::kSliceK;

    using TileA = sm80::KMajor<TileM, Threads>;
    using TileB = typename conditional_type<Forward, sm80::KMajor<TileN, Threads>, sm80::MNMajor<TileN, Threads>>::type;
    static constexpr int SharedBytes = Stages * (TileA::Bytes + TileB::Bytes);

    static_assert(sizeof(Element) == 2, "16-bit inputs");
    static_assert(N % 8 == 0 && K % 8 == 0, "N and K must be multiples of 8 (16-byte rows)");
    static_assert(!Gated || (N / 2) % 8 == 0, "gated: N/2 must be a multiple of 8");
    static_assert(WarpTileM % 16 == 0 && WarpTileN % 16 == 0, "warp tile must be a multiple of 16x16");
    static_assert(Stages >= 2, "at least double buffering");
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads) sm80_row_grouped_gemm(const GroupedGemmArguments args) {
    wait_for_prior_kernels();
    using Element = typename Cfg::Element;
    using TileA = typename Cfg::TileA;
    using TileB = typename Cfg::TileB;
    using Scheduler = GroupedTileScheduler<Cfg::Experts, Cfg::Threads, Cfg::TileM, Cfg::NTiles>;
    constexpr int Flags = Cfg::Flags;

    __shared__ typename Scheduler::Shared scheduler_storage;
    extern __shared__ __align__(128) unsigned char shared_tiles[];
    const uint32 sA = ptx::shared_address(shared_tiles);  // [Stages] x TileA
    const uint32 sB = sA + Cfg::Stages * TileA::Bytes;     // [Stages] x TileB

    const Element* a = static_cast<const Element*>(args.a);
    const Element* w = static_cast<const Element*>(args.b);
    Element* c = static_cast<Element*>(args.c);
    const Scheduler scheduler(scheduler_storage, args.m_sizes, args.rows);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int warp_m = warp / Cfg::WarpsN, warp_n = warp % Cfg::WarpsN;

    for (int tile_index = blockIdx.x; tile_index < scheduler.total_tiles(); tile_index += gridDim.x) {
        const GroupedTile tile = scheduler.tile(tile_index);
        const int tile_row = tile.m_tile * Cfg::TileM;  // within the expert
        const int out_col0 = tile.n_tile * Cfg::TileOutCols;
        const Element* w_expert = w + static_cast<int64>(tile.expert) * Cfg::N * Cfg::K;

        // A rows: fixed for the whole tile.
        const Element* gA[TileA::Passes];
#pragma unroll
        for (int pass = 0; pass < TileA::Passes; ++pass) {
            const int row = tile_row + TileA::row(pass);
            const int64 routed = static_cast<int64>(tile.row_begin) + row;
            int64 source = routed;
            if (Cfg::Forward && (Flags & kPermuteX)) source = row < tile.expert_rows ? token_row<Cfg::Topk>(args, routed) : 0;
            if (!Cfg::Forward && (Flags & kPermuteY)) source = row < tile.expert_rows ? slot_row(args, routed) : 0;
            gA[pass] = (row < tile.expert_rows && routed < args.rows) ? a + source * Cfg::Reduction : nullptr;
        }
        // Forward B rows (W rows n): fixed for the tile. The gated tile interleaves 8 gate rows and
        // the 8 matching up rows, so each thread ends up holding gate and up of the same columns.
        const Element* gB_fixed[Cfg::Forward ? TileB::Passes : 1];
        if constexpr (Cfg::Forward) {
#pragma unroll
            for (int pass = 0; pass < TileB::Passes; ++pass) {
                const int j = TileB::row(pass);
                int n, out_col;
                if constexpr (Cfg::Gated) {
                    out_col = out_col0 + (j / 16) * 8 + j % 8;
                    n = out_col + ((j % 16) >= 8 ? Cfg::N / 2 : 0);
                } else {
                    out_col = out_col0 + j;
                    n = out_col;
                }
                gB_fixed[pass] = out_col < Cfg::OutCols ? w_expert + static_cast<int64>(n) * Cfg::K : nullptr;
            }
        }

        auto load_slice = [&](int slice, int stage) {
            TileA::load(sA + stage * TileA::Bytes, gA, a, slice, Cfg::Reduction);
            if constexpr (Cfg::Forward) {
                TileB::load(sB + stage * TileB::Bytes, gB_fixed, w, slice, Cfg::Reduction);
            } else {  // dX: reduction rows are W rows n of this slice, columns are K
                const Element* gB[TileB::Passes];
#pragma unroll
                for (int pass = 0; pass < TileB::Passes; ++pass) {
                    const int n = slice * sm80::kSliceK + TileB::row(pass);
                    gB[pass] = n < Cfg::N ? w_expert + static_cast<int64>(n) * Cfg::K + out_col0 : nullptr;
                }
                TileB::load(sB + stage * TileB::Bytes, gB, w, Cfg::K - out_col0);
            }
        };

        float accumulators[Cfg::FragmentsM][Cfg::FragmentsN][4];
        sm80::mainloop<Element, TileA, TileB, Cfg::Stages>(accumulators, sA, sB, Cfg::Slices, warp_m * Cfg::WarpTileM,
                                                           warp_n * Cfg::WarpTileN, load_slice);

        // Epilogue: each quad of lanes owns 8 consecutive columns of a row; 4-byte stores.
#pragma unroll
        for (int i = 0; i < Cfg::FragmentsM; ++i) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int row = tile_row + warp_m * Cfg::WarpTileM + i * 16 + half * 8 + lane / 4;
                const int64 routed = static_cast<int64>(tile.row_begin) + row;
                if (row >= tile.expert_rows || routed >= args.rows) continue;
                const int64 out_row = scatters_rows(Cfg::Forward, Flags) ? slot_row(args, routed) : routed;
                const float scale = (Flags & kFuseMulPost) ? args.topk_weights[slot_row(args, routed)] : 1.0f;
                Element* c_row = c + out_row * Cfg::OutCols;
#pragma unroll
                for (int j = 0; j < Cfg::FragmentsN; j += (Cfg::Gated ? 2 : 1)) {
                    const float* v = &accumulators[i][j][2 * half];
                    if constexpr (Cfg::Gated) {
                        const int col = out_col0 + (warp_n * Cfg::WarpTileN + j * 8) / 2 + (lane % 4) * 2;
                        if (col >= Cfg::OutCols) continue;
                        const float* up = &accumulators[i][j + 1][2 * half];
                        *reinterpret_cast<uint32*>(c_row + col) =
                            pack2<Element>(silu(v[0]) * up[0], silu(v[1]) * up[1]);
                        if constexpr (Cfg::SavesPreactivation) {
                            Element* p_row = static_cast<Element*>(args.preactivation) + out_row * Cfg::N;
                            *reinterpret_cast<uint32*>(p_row + col) = pack2<Element>(v[0], v[1]);
                            *reinterpret_cast<uint32*>(p_row + Cfg::N / 2 + col) = pack2<Element>(up[0], up[1]);
                        }
                    } else {
                        const int col = out_col0 + warp_n * Cfg::WarpTileN + j * 8 + (lane % 4) * 2;
                        if (col < Cfg::OutCols)
                            *reinterpret_cast<uint32*>(c_row + col) = pack2<Element>(v[0] * scale, v[1] * scale);
                    }
                }
            }
        }
    }
}

}  // namespace moejit

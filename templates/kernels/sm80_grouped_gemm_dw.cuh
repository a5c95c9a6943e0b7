#pragma once
// k-grouped weight gradient on the portable tensor-core path (sm_80 and newer):
//
//   dW[e] = dY_e^T @ X_e      dY [M, N], X [M or T, K], dW [E, N, K]
//
// reducing over the routed rows of expert e. Every (expert, n tile, k tile) is its own output tile,
// so work is parallel over experts and tiles alike; empty experts write zeros. Both operands are
// read MN-major: each 64-row slice of routed rows lands as [64][TileM] of dY and [64][TileN] of X,
// with permute_x / permute_y gathering whole rows through gather_idx.
#include "common/arguments.cuh"
#include "common/dependent_launch.cuh"
#include "common/ptx.cuh"
#include "mma/sm80_mainloop.cuh"
#include "mma/sm80_operand.cuh"
#include "scheduler/grouped_tiles.cuh"

namespace moejit {

template <class Element_, int Flags_, int N_, int K_, int Experts_, int Topk_, int TileM_, int TileN_, int Stages_,
          int WarpsM_, int WarpsN_>
struct Sm80WeightGradConfig {
    using Element = Element_;
    static constexpr int Flags = Flags_, N = N_, K = K_, Experts = Experts_, Topk = Topk_;
    static constexpr int TileM = TileM_, TileN = TileN_, Stages = Stages_, WarpsM = WarpsM_, WarpsN = WarpsN_;
    static constexpr int Threads = WarpsM * WarpsN * 32;
    static constexpr int WarpTileM = TileM / WarpsM, WarpTileN = TileN / WarpsN;
    static constexpr int FragmentsM = WarpTileM / 16, FragmentsN = WarpTileN / 8;
    static constexpr int NTiles = (N + TileM - 1) / TileM, KTiles = (K + TileN - 1) / TileN;
    static constexpr int TilesPerExpert = NTiles * KTiles;

    using TileA = sm80::MNMajor<TileM, Threads>;  // dY^T slice: [64 routed rows][TileM of N]
    using TileB = sm80::MNMajor<TileN, Threads>;  // X^T slice:  [64 routed rows][TileN of K]
    static constexpr int SharedBytes = Stages * (TileA::Bytes + TileB::Bytes);

    static_assert(sizeof(Element) == 2, "16-bit inputs");
    static_assert(N % 8 == 0 && K % 8 == 0, "N and K must be multiples of 8 (16-byte rows)");
    static_assert(WarpTileM % 16 == 0 && WarpTileN % 16 == 0, "warp tile must be a multiple of 16x16");
    static_assert(Stages >= 2, "at least double buffering");
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads) sm80_grouped_gemm_dw(const GroupedGemmArguments args) {
    wait_for_prior_kernels();
    using Element = typename Cfg::Element;
    using TileA = typename Cfg::TileA;
    using TileB = typename Cfg::TileB;
    // Only the per-expert row offsets are used; tiles are a fixed grid per expert.
    using Scheduler = GroupedTileScheduler<Cfg::Experts, Cfg::Threads, 1, 0>;  // row offsets only
    constexpr int Flags = Cfg::Flags;
    constexpr bool OutFp32 = (Flags & kOutFp32) != 0;

    __shared__ typename Scheduler::Shared scheduler_storage;
    extern __shared__ __align__(128) unsigned char shared_tiles[];
    const uint32 sA = ptx::shared_address(shared_tiles);
    const uint32 sB = sA + Cfg::Stages * TileA::Bytes;

    const Element* dy = static_cast<const Element*>(args.a);
    const Element* x = static_cast<const Element*>(args.b);
    const Scheduler scheduler(scheduler_storage, args.m_sizes, args.rows);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int warp_m = warp / Cfg::WarpsN, warp_n = warp % Cfg::WarpsN;

    for (int tile_index = blockIdx.x; tile_index < Cfg::Experts * Cfg::TilesPerExpert; tile_index += gridDim.x) {
        const int expert = tile_index / Cfg::TilesPerExpert;
        const int within = tile_index - expert * Cfg::TilesPerExpert;
        const int n0 = (within / Cfg::KTiles) * Cfg::TileM;
        const int k0 = (within % Cfg::KTiles) * Cfg::TileN;
        const int row_begin = scheduler.row_begin(expert);
        const int expert_rows = scheduler.rows(expert);
        const int slices = (expert_rows + sm80::kSliceK - 1) / sm80::kSliceK;

        auto load_slice = [&](int slice, int stage) {
            const Element* gA[TileA::Passes];
            const Element* gB[TileB::Passes];
#pragma unroll
            for (int pass = 0; pass < TileA::Passes; ++pass) {
                const int row = slice * sm80::kSliceK + TileA::row(pass);
                const int64 routed = static_cast<int64>(row_begin) + row;
                const bool valid = row < expert_rows && routed < args.rows;
                const int64 source = !valid ? 0 : (Flags & kPermuteY) ? slot_row(args, routed) : routed;
                gA[pass] = valid ? dy + source * Cfg::N + n0 : nullptr;
            }
#pragma unroll
            for (int pass = 0; pass < TileB::Passes; ++pass) {
                const int row = slice * sm80::kSliceK + TileB::row(pass);
                const int64 routed = static_cast<int64>(row_begin) + row;
                const bool valid = row < expert_rows && routed < args.rows;
                const int64 source = !valid ? 0 : (Flags & kPermuteX) ? token_row<Cfg::Topk>(args, routed) : routed;
                gB[pass] = valid ? x + source * Cfg::K + k0 : nullptr;
            }
            TileA::load(sA + stage * TileA::Bytes, gA, dy, Cfg::N - n0);
            TileB::load(sB + stage * TileB::Bytes, gB, x, Cfg::K - k0);
        };

        float accumulators[Cfg::FragmentsM][Cfg::FragmentsN][4];
        sm80::mainloop<Element, TileA, TileB, Cfg::Stages>(accumulators, sA, sB, slices, warp_m * Cfg::WarpTileM,
                                                           warp_n * Cfg::WarpTileN, load_slice);

        // dW[expert] rows n (TileM side), columns k (TileN side).
        const int64 expert_offset = static_cast<int64>(expert) * Cfg::N * Cfg::K;
#pragma unroll
        for (int i = 0; i < Cfg::FragmentsM; ++i) {
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int n = n0 + warp_m * Cfg::WarpTileM + i * 16 + half * 8 + lane / 4;
                if (n >= Cfg::N) continue;
#pragma unroll
                for (int j = 0; j < Cfg::FragmentsN; ++j) {
                    const int k = k0 + warp_n * Cfg::WarpTileN + j * 8 + (lane % 4) * 2;
                    if (k >= Cfg::K) continue;
                    const float* v = &accumulators[i][j][2 * half];
                    const int64 offset = expert_offset + static_cast<int64>(n) * Cfg::K + k;
                    if constexpr (OutFp32) {
                        float2 pair;
                        pair.x = v[0];
                        pair.y = v[1];
                        *reinterpret_cast<float2*>(static_cast<float*>(args.c) + offset) = pair;
                    } else {
                        *reinterpret_cast<uint32*>(static_cast<Element*>(args.c) + offset) = pack2<Element>(v[0], v[1]);
                    }
                }
            }
        }
    }
}

}  // namespace moejit

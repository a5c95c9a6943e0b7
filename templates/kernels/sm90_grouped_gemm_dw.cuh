#pragma once
// k-grouped weight gradient on Hopper (sm_90a), warp-specialized and persistent:
//
//   dW[e] = dY_e^T @ X_e      dY [M, N], X [M or T, K], dW [E, N, K]
//
// reducing over the routed rows of expert e, SliceK (64 or 32) rows per stage. Both operands arrive
// MN-major: a slice is [SliceK routed rows][TileM of N] of dY and [SliceK routed rows][TileN of K]
// of X, stored as 64-column boxes with the 128-byte swizzle, and wgmma reads both transposed.
// (32-row stages: twice as many in the same ring, so that more of it is in flight while the
// consumers hold one or two stages.) Whole slices of direct rows come by TMA, the others are
// gathered by cp.async (mma/sm90_weight_grad_slice.cuh). Empty experts write zeros.
//
// In clusters (Cluster 2 or 4) the CTAs take neighbouring tiles: in band order, Cluster N tiles of
// one expert and one K tile, which read the same X slices. Each CTA then loads its share of every
// X slice and multicasts it to all, so that per 64 rows a pair reads 64 KB from L2 instead of 96 KB,
// four CTAs 96 KB instead of 192 KB. The cluster walks the ring in lockstep (a slot is free once
// the consumers of every CTA are done with it), each CTA through as many slices as the longest
// tile of the cluster.
#include "common/arguments.cuh"
#include "common/dependent_launch.cuh"
#include "epilogue/sm90_box_store.cuh"
#include "mma/sm90_pipeline.cuh"
#include "mma/sm90_weight_grad_slice.cuh"
#include "scheduler/grouped_tiles.cuh"

namespace moejit {

template <class Element_, int Flags_, int N_, int K_, int Experts_, int Topk_, int TileM_, int TileN_, int Stages_,
          int StagingBoxes_, int Cluster_, int SliceK_>
struct Sm90WeightGradConfig {
    using Element = Element_;
    static constexpr int Flags = Flags_, N = N_, K = K_, Experts = Experts_, Topk = Topk_;
    static constexpr int TileM = TileM_, TileN = TileN_, Stages = Stages_;
    static constexpr int Cluster = Cluster_;  // CTAs per cluster: 1, or 2 or 4 sharing X slices
    static constexpr int SliceK = SliceK_;    // routed rows a stage holds
    static_assert(SliceK == 32 || SliceK == 64, "whole 8-row swizzle periods, whole k16 steps");
    static constexpr int Consumers = TileM / 64;
    static constexpr int Threads = sm90::kWarpgroupThreads * (1 + Consumers);
    static constexpr int NTiles = (N + TileM - 1) / TileM, KTiles = (K + TileN - 1) / TileN;
    static constexpr int TilesPerExpert = NTiles * KTiles;

    static constexpr int BoxBytes = SliceK * sm90::kSliceBytesPerRow;  // [SliceK rows][64 columns]
    static constexpr int BytesA = TileM / 64 * BoxBytes;
    static constexpr int BytesB = TileN / 64 * BoxBytes;
    static constexpr int StageBytes = BytesA + BytesB;
    static constexpr bool OutFp32 = (Flags & kOutFp32) != 0;
    using Out = typename conditional_type<OutFp32, float, Element>::type;
    // The epilogue's staging boxes per consumer warpgroup, as the host chose them (as many as fit
    // beside the ring, up to a tile row's) and launches with: codegen/config.cpp, dw_staging_boxes.
    static constexpr int StagingBoxes = StagingBoxes_;
    static constexpr int StagingBytes = StagingBoxes * sm90::kBoxStoreBytes;
    // The ring, the staging, the alignment slack and the static shared memory (the scheduler's
    // row offsets and, within 320 bytes, the barriers and warp totals, rounded up to the ring's
    // 1024-byte alignment) fit in sm_90's 227 KB.
    static constexpr int SharedBytes = Stages * StageBytes + Consumers * StagingBytes + 1024;
    static_assert(SharedBytes + ((Experts + 1) * 4 + 320 + 1023) / 1024 * 1024 <= 227 * 1024, "shared memory");
    using Store = sm90::BoxStore<Out, TileN, StagingBoxes>;  // checks the count: 1, 2, 4 or 8, at most a row's

    static constexpr int ProducerRegisters = 56;
    static constexpr int ConsumerRegisters = Consumers == 1 ? 256 : 224;

    using Mma = sm90::Wgmma<Element, TileN, 1, 1>;
    using GatherA = sm90::GatherPlan<SliceK, TileM / 64>;
    using GatherB = sm90::GatherPlan<SliceK, TileN / 64>;

    static_assert(sm90::TileRequirements<Element, TileM, TileN, N, K, Stages>::met, "");
    static_assert(sm90::registers_fit<Threads, ProducerRegisters, ConsumerRegisters>(), "setmaxnreg budget");
    static_assert(TileM <= 128 && TileN != 192, "dW tiles are m64 or m128 by n64, n128 or n256 (check_config)");
    static_assert(Cluster == 1 || ((Cluster == 2 || Cluster == 4) && TileN / 64 % Cluster == 0),
                  "a cluster splits X slices into shares of whole 64-column boxes");
};

// The tiles of the cluster (or single CTA) in round `round`: tile Cluster * round + rank for each
// rank, expert-major. Every CTA of a cluster computes all of them, to walk the same number of
// slices. Where a single CTA's tile lies in its expert's dW depends on the expert's rows, so it is
// set apart, by `place`: the consumers need it only for the epilogue and set it under their last
// wgmma batch (set before the mainloop, the row lookup, the branch and band_order's division cost
// 1-3% on H100, bench/RESULTS.md, thirteenth session).
template <class Cfg>
struct WeightGradTile {
    // Single CTAs take the tiles of experts of at most this many rows K-fastest, larger ones in bands.
    static constexpr int kMaxRowsKFastest = 1024;

    bool exists = false;
    int expert = 0, local = 0;  // local: the tile's index within its expert
    int n0 = 0, k0 = 0;         // clusters: set here; single CTAs: set by place

    __device__ explicit WeightGradTile(int tile_index) {
        exists = tile_index < Cfg::Experts * Cfg::TilesPerExpert;
        if (!exists) return;
        expert = tile_index / Cfg::TilesPerExpert;
        local = tile_index - expert * Cfg::TilesPerExpert;
        // Neighbouring tiles of a cluster share the K tile whose X slices the cluster multicasts.
        if constexpr (Cfg::Cluster > 1) place_in_bands();
    }

    // Single CTAs. With few rows an expert, dW is bound by its DRAM writes: K tiles fastest, the CTAs
    // running at one time write whole rows of dW, contiguous in DRAM (H100: 1-11% faster at 256-512
    // rows an expert). With many rows the operands matter more: K-fastest, the resident CTAs read
    // X's columns for all of the expert's rows (58 MB at mixtral-8x7b down, past L2), which measured
    // 5-29% slower at 2048 rows, and equal at 1024.
    __device__ void place(int expert_rows) {
        static_assert(Cfg::Cluster == 1, "clusters place their tiles in the constructor");
        if (expert_rows > kMaxRowsKFastest) return place_in_bands();
        const int n_tile = local / Cfg::KTiles;
        set(n_tile, local - n_tile * Cfg::KTiles);
    }

  private:
    // Bands of N tiles, N fastest within a band (grouped_tiles.cuh).
    __device__ void place_in_bands() {
        int n_tile, k_tile;
        band_order(local, Cfg::NTiles, Cfg::KTiles, n_tile, k_tile);
        set(n_tile, k_tile);
    }
    __device__ void set(int n_tile, int k_tile) {
        n0 = n_tile * Cfg::TileM;
        k0 = k_tile * Cfg::TileN;
    }
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads, 1)
    sm90_grouped_gemm_dw(const GroupedGemmArguments args, const __grid_constant__ sm90::TensorMap map_dy,
                         const __grid_constant__ sm90::TensorMap map_x,
                         const __grid_constant__ sm90::TensorMap map_dw) {
    using Element = typename Cfg::Element;
    using Scheduler = GroupedTileScheduler<Cfg::Experts, Cfg::Threads, 1, 0>;  // row offsets only
    constexpr int Flags = Cfg::Flags;
    constexpr int Cluster = Cfg::Cluster;
    constexpr int Rounds = (Cfg::Experts * Cfg::TilesPerExpert + Cluster - 1) / Cluster;  // of Cluster tiles
    using Tile = WeightGradTile<Cfg>;
    using Slice = sm90::WeightGradSlice<Element, Flags, Cfg::Topk, Cfg::SliceK>;

    __shared__ typename Scheduler::Shared scheduler_storage;
    __shared__ sm90::StageBarriers<Cfg::Stages, Cluster> barriers;
    extern __shared__ __align__(1024) unsigned char shared_raw[];
    const uint32 ring = (ptx::shared_address(shared_raw) + 1023) & ~1023u;

    const int warpgroup = threadIdx.x / sm90::kWarpgroupThreads;
    const int thread = threadIdx.x % sm90::kWarpgroupThreads;
    if (threadIdx.x == 0) {
        barriers.init(1 + sm90::kGatherArrivals, Cfg::Consumers * Cluster);
        if (!(Flags & kPermuteY)) sm90::prefetch_tensor_map(map_dy);
        if (!(Flags & kPermuteX)) sm90::prefetch_tensor_map(map_x);
        sm90::prefetch_tensor_map(map_dw);
    }
    wait_for_prior_kernels();  // the set-up above touches no global memory: it overlaps the previous kernel
    const Scheduler scheduler(scheduler_storage, args.m_sizes, args.rows);  // block-wide; publishes the barriers too
    // The other CTAs' barriers are initialized before anything arrives on them or multicasts to them.
    if constexpr (Cluster > 1) sm90::cluster_sync();
    const int rank = Cluster > 1 ? static_cast<int>(sm90::cluster_rank()) : 0;
    const int first_round = blockIdx.x / Cluster, round_stride = gridDim.x / Cluster;
    auto rows_of = [&](const Tile& tile) { return tile.exists ? scheduler.rows(tile.expert) : 0; };
    auto slices_of = [&](const Tile& tile) { return (rows_of(tile) + Cfg::SliceK - 1) / Cfg::SliceK; };
    // Producer and consumers place a single CTA's tile from the same row count, so agree on it.
    auto place = [&](Tile& tile) {
        if constexpr (Cluster == 1) tile.place(rows_of(tile));
    };
    // Slices this CTA walks in a round: as many as the cluster's longest tile has.
    auto ring_slices = [&](int round, const Tile& own) {
        int slices = slices_of(own);
#pragma unroll
        for (int other = 1; other < Cluster; ++other)
            slices = max_of(slices, slices_of(Tile(round * Cluster + (rank ^ other))));
        return slices;
    };

    if (warpgroup == 0) {
        sm90::release_registers<Cfg::ProducerRegisters>();
        const Element* dy = static_cast<const Element*>(args.a);
        const Element* x = static_cast<const Element*>(args.b);
        sm90::RingPosition<Cfg::Stages> position;
        for (int round = first_round; round < Rounds; round += round_stride) {
            Tile tile(round * Cluster + rank);
            place(tile);
            const int expert = tile.expert, n0 = tile.n0, k0 = tile.k0;
            const int expert_rows = rows_of(tile);
            const int row_begin = scheduler.row_begin(expert);
            const int slices = slices_of(tile);
            // Where the cluster's tiles read the same X slices, each CTA loads its share and
            // multicasts it to all.
            bool shares_x = Cluster > 1 && tile.exists;
#pragma unroll
            for (int other = 1; other < Cluster; ++other) {
                const Tile neighbour(round * Cluster + (rank ^ other));
                shares_x = shares_x && neighbour.exists && neighbour.expert == expert && neighbour.k0 == k0;
            }
            const int walk = ring_slices(round, tile);
            for (int slice = 0; slice < walk; ++slice, position.advance()) {
                sm90::mbarrier_wait(barriers.empty_address(position.stage), position.parity ^ 1);
                const uint32 sA = ring + position.stage * Cfg::StageBytes;
                const uint32 sB = sA + Cfg::BytesA;
                const uint32 full = barriers.full_address(position.stage);
                const Slice piece{args, row_begin, expert_rows, slice * Cfg::SliceK, thread};
                const bool own = slice < slices;  // else only walking with the cluster: an empty slot
                const bool tma_a = own && piece.by_tma(false);
                const bool tma_b = own && piece.by_tma(true);
                if (thread == 0) {
                    sm90::mbarrier_arrive_expect_tx(full, (tma_a ? Cfg::BytesA : 0) + (tma_b ? Cfg::BytesB : 0));
                    const int row = row_begin + piece.slice_row;
                    if (tma_a)
#pragma unroll
                        for (int box = 0; box < Cfg::TileM / 64; ++box)
                            sm90::tma_load_2d(sA + box * Cfg::BoxBytes, map_dy, n0 + box * 64, row, full);
                    if (tma_b) {
                        constexpr int Boxes = Cfg::TileN / 64;
#pragma unroll
                        for (int box = 0; box < Boxes; ++box) {
                            const uint32 destination = sB + box * Cfg::BoxBytes;
                            if (!shares_x) sm90::tma_load_2d(destination, map_x, k0 + box * 64, row, full);
                            else if (box / (Boxes / Cluster) == rank)
                                sm90::tma_load_2d_multicast(destination, map_x, k0 + box * 64, row, full,
                                                            (1u << Cluster) - 1);
                        }
                    }
                }
                if (own && !tma_a) piece.template gather<typename Cfg::GatherA>(sA, dy, Cfg::N, n0, false);
                if (own && !tma_b) piece.template gather<typename Cfg::GatherB>(sB, x, Cfg::K, k0, true);
                sm90::cp_async_arrive_noinc(full);  // every producer thread, gathering this slice or not
            }
        }
    } else {
        sm90::claim_registers<Cfg::ConsumerRegisters>();
        const int consumer = warpgroup - 1;  // owns dW rows n0 + [64 * consumer, 64 * consumer + 64)
        float accumulators[Cfg::Mma::Registers];
        sm90::RingPosition<Cfg::Stages> position;
        sm90::SlotReleaser<Cfg::Stages> release;
        typename Cfg::Store store{ring + Cfg::Stages * Cfg::StageBytes + consumer * Cfg::StagingBytes,
                                  1 + consumer};
        // 16-bit dW: a tile's results wait, converted, until the next tile's wgmma batches are in
        // flight, and go out one box under each of its first batches (the rest after a tile of few
        // slices), so that the tensor pipe does not idle through the epilogue: 2-9% faster than
        // storing them at the end of their tile at 512 rows an expert and more, 2-3% slower at
        // deepseek-v3's 256 (bench/RESULTS.md, nineteenth session). A 64 x 256 fp32 fragment leaves
        // no room for a second one; its bf16 half does.
        // (Not in clusters, whose lockstep bookkeeping leaves no registers for it; nor for fp32.)
        constexpr bool Deferred = sizeof(typename Cfg::Out) == 2 && Cluster == 1;
        constexpr bool Packed = sizeof(typename Cfg::Out) == 2;
        uint32 pending[Packed ? Cfg::Store::PackedRegisters : 1];
        bool has_pending = false;
        int pending_k0 = 0, pending_row0 = 0, pending_expert = 0;
        auto store_pending = [&](int first_box, int end_box) {
            if constexpr (Packed) {
                if (has_pending)
                    store.store_packed(pending, map_dw, pending_k0, pending_row0, pending_expert, Cfg::K, thread,
                                       first_box, end_box);
            }
        };
        constexpr int Boxes = Cfg::Store::Boxes;
        for (int round = first_round; round < Rounds; round += round_stride) {
            Tile tile(round * Cluster + rank);
            const int rows = rows_of(tile);
            const int slices = slices_of(tile);
            const int walk = ring_slices(round, tile);
            // An empty expert's dW is zeros. Deferred, the first batch of other tiles overwrites
            // the accumulators; otherwise ptxas serializes the wgmma (C7514) unless they are zeroed.
            if (!Deferred || slices == 0)
#pragma unroll
                for (int i = 0; i < Cfg::Mma::Registers; ++i) accumulators[i] = 0.0f;
            for (int slice = 0; slice < slices; ++slice, position.advance()) {
                sm90::mbarrier_wait(barriers.full_address(position.stage), position.parity);
                sm90::fence_proxy_async();  // rows gathered by cp.async
                const uint32 sA = ring + position.stage * Cfg::StageBytes + consumer * Cfg::BoxBytes;
                const uint32 sB = ring + position.stage * Cfg::StageBytes + Cfg::BytesA;
                // The last slice: only the k16 steps that hold the expert's rows.
                const int steps = (rows - slice * Cfg::SliceK + 15) / 16;
                sm90::wgmma_slice_steps<typename Cfg::Mma, Cfg::SliceK>(
                    accumulators, sA, Cfg::BoxBytes, 16 * sm90::kSliceBytesPerRow, sB, Cfg::BoxBytes,
                    16 * sm90::kSliceBytesPerRow, !Deferred || slice > 0, steps);
                release.issued(barriers, position.stage, thread == 0, accumulators);
                if (Deferred && slice < Boxes) store_pending(slice, slice + 1);  // one box a batch
            }
            if (slices < Boxes) store_pending(slices, Boxes);  // a tile of few slices
            has_pending = false;
            place(tile);  // under the last wgmma batch
            release.drain(barriers, thread == 0, accumulators);
            // Walking on with the cluster through its longest tile: empty slots, handed straight
            // back. Apart from the loop above, since ptxas serializes every wgmma of a loop in which
            // one path leaves the accumulators untouched (C7520).
            for (int slice = slices; slice < walk; ++slice, position.advance())
                sm90::pass_slot(barriers, position, 1 + consumer, thread == 0);
            if (!tile.exists) continue;

            // dW[expert][n0 + 64 * consumer + row][k0 + column]; TMA clips rows past N and columns past K.
            if constexpr (Packed) {
                Cfg::Store::pack(accumulators, pending);
                has_pending = true;
                pending_k0 = tile.k0;
                pending_row0 = tile.n0 + consumer * 64;
                pending_expert = tile.expert;
                if constexpr (!Deferred) {
                    store_pending(0, Boxes);
                    has_pending = false;
                }
            } else {
                store.store(accumulators, map_dw, tile.k0, tile.n0 + consumer * 64, tile.expert, Cfg::K, thread);
            }
        }
        store_pending(0, Boxes);
        store.finish(thread);
    }
    // No CTA of a cluster leaves while another may still arrive on its barriers or multicast to it.
    if constexpr (Cluster > 1) sm90::cluster_sync();
}

}  // namespace moejit

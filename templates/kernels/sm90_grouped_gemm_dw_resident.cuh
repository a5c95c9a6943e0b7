#pragma once
// k-grouped weight gradient on Hopper (sm_90a) with X kept in shared memory:
//
//   dW[e] = dY_e^T @ X_e      dY [M, N], X [M or T, K], dW [E, N, K]
//
// for experts of few rows (deepseek-v3 at 8192 tokens: 256 an expert), where dW is bound by L2
// traffic rather than by its math: the plain dW kernel (sm90_grouped_gemm_dw.cuh) reads, per
// 128x256 tile, 64 rows x (128 + 256) columns of operands for 128 x 256 outputs, three times the
// bytes it writes, and the reads and the gradient's writes contend for L2.
//
// Here the work unit is one expert's K tile and a run of its N tiles. The CTA loads the expert's X
// columns of the K tile, [rows][TileN], once into Slots slices of shared memory, then for each N
// tile of the run streams dY slices [SliceK rows][TileM] through a ring of Stages and reduces them
// against the resident X. Per tile it reads TileM columns of dY instead of TileM + TileN columns of
// both. An expert with more rows than the slots hold streams its X as well, through the same slots
// used as a ring, slice by slice for every N tile.
//
// Units go expert-major, then runs, K tiles fastest: the CTAs running at one time work on a few
// experts' runs and read the same dY columns, and write whole rows of dW.
#include "common/arguments.cuh"
#include "epilogue/sm90_box_store.cuh"
#include "mma/sm90_pipeline.cuh"
#include "mma/sm90_weight_grad_slice.cuh"
#include "scheduler/grouped_tiles.cuh"

namespace moejit {

template <class Element_, int Flags_, int N_, int K_, int Experts_, int Topk_, int TileM_, int TileN_, int Stages_,
          int Slots_, int StagingBoxes_, int SliceK_, int RunTiles_>
struct Sm90WeightGradResidentConfig {
    using Element = Element_;
    static constexpr int Flags = Flags_, N = N_, K = K_, Experts = Experts_, Topk = Topk_;
    static constexpr int TileM = TileM_, TileN = TileN_;
    static constexpr int Stages = Stages_;      // the dY ring
    static constexpr int Slots = Slots_;        // X slices held: experts of up to Slots * SliceK rows stay resident
    static constexpr int SliceK = SliceK_;      // routed rows a slice holds
    static constexpr int RunTiles = RunTiles_;  // N tiles a unit walks with one X
    static_assert(SliceK == 32 || SliceK == 64, "whole 8-row swizzle periods, whole k16 steps");
    static_assert(Slots >= 2 && Slots <= 16, "barrier pairs in the static shared memory (codegen/config.cpp)");
    static constexpr int Consumers = TileM / 64;
    static constexpr int Threads = sm90::kWarpgroupThreads * (1 + Consumers);
    static constexpr int NTiles = (N + TileM - 1) / TileM, KTiles = (K + TileN - 1) / TileN;
    static constexpr int Runs = (NTiles + RunTiles - 1) / RunTiles;
    static constexpr int Units = Experts * Runs * KTiles;
    static constexpr int ResidentRows = Slots * SliceK;

    static constexpr int BoxBytes = SliceK * sm90::kSliceBytesPerRow;  // [SliceK rows][64 columns]
    static constexpr int BytesA = TileM / 64 * BoxBytes;               // a dY slice
    static constexpr int BytesX = TileN / 64 * BoxBytes;               // an X slice
    static constexpr bool OutFp32 = (Flags & kOutFp32) != 0;
    using Out = typename conditional_type<OutFp32, float, Element>::type;
    static constexpr int StagingBoxes = StagingBoxes_;  // per consumer: codegen/config.cpp, dw_staging_boxes
    static constexpr int StagingBytes = StagingBoxes * sm90::kBoxStoreBytes;
    // Ring, slots, staging and alignment slack; then the static part as in sm90_grouped_gemm_dw.cuh,
    // with room for Stages + Slots barrier pairs.
    static constexpr int SharedBytes = Stages * BytesA + Slots * BytesX + Consumers * StagingBytes + 1024;
    static_assert(StagingBoxes == 1 || StagingBoxes == 2 || StagingBoxes == 4 || StagingBoxes == 8, "");
    static_assert(SharedBytes + ((Experts + 1) * 4 + 320 + 16 * Slots + 1023) / 1024 * 1024 <= 227 * 1024,
                  "shared memory");
    static constexpr int BoxesPerRow = TileN * sizeof(Out) / sm90::kBoxStoreRowBytes;
    using Store = sm90::BoxStore<Out, TileN, (BoxesPerRow < StagingBoxes ? BoxesPerRow : StagingBoxes)>;

    static constexpr int ProducerRegisters = 56;
    static constexpr int ConsumerRegisters = Consumers == 1 ? 256 : 224;

    using Mma = sm90::Wgmma<Element, TileN, 1, 1>;
    using GatherA = sm90::GatherPlan<SliceK, TileM / 64>;
    using GatherX = sm90::GatherPlan<SliceK, TileN / 64>;

    static_assert(sm90::TileRequirements<Element, TileM, TileN, N, K, Stages>::met, "");
};

// Unit `index`: expert-major, then runs of N tiles, K tiles fastest.
template <class Cfg>
struct WeightGradUnit {
    int expert, n_tile_begin, n_tile_end, k0;
    __device__ explicit WeightGradUnit(int index) {
        expert = index / (Cfg::Runs * Cfg::KTiles);
        const int within = index - expert * (Cfg::Runs * Cfg::KTiles);
        const int run = within / Cfg::KTiles;
        k0 = (within - run * Cfg::KTiles) * Cfg::TileN;
        n_tile_begin = run * Cfg::RunTiles;
        n_tile_end = min_of(n_tile_begin + Cfg::RunTiles, Cfg::NTiles);
    }
};

// Where slice `slice` of a unit's X lives, and the fills of each slot (one parity bit a slot), as
// producer and consumers track them alike: a resident X takes slots 0 .. slices - 1, once a unit; a
// streamed one takes the slots in turn, once a tile.
template <int Slots>
struct XSlots {
    uint32 phases = 0;  // bit s: fills of slot s so far (producer: issued; consumers: used up), mod 2
    int next = 0;       // streamed X: the next slot in turn
    __device__ __forceinline__ int slot(bool resident, int slice) {
        if (resident) return slice;
        const int taken = next;
        next = next + 1 == Slots ? 0 : next + 1;
        return taken;
    }
    __device__ __forceinline__ int parity(int slot) const { return (phases >> slot) & 1; }
    __device__ __forceinline__ void flip(int slot) { phases ^= 1u << slot; }
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads, 1)
    sm90_grouped_gemm_dw_resident(const GroupedGemmArguments args, const __grid_constant__ sm90::TensorMap map_dy,
                                  const __grid_constant__ sm90::TensorMap map_x,
                                  const __grid_constant__ sm90::TensorMap map_dw) {
    using Element = typename Cfg::Element;
    using Scheduler = GroupedTileScheduler<Cfg::Experts, Cfg::Threads, 1, 0>;  // row offsets only
    using Slice = sm90::WeightGradSlice<Element, Cfg::Flags, Cfg::Topk, Cfg::SliceK>;
    using Unit = WeightGradUnit<Cfg>;

    __shared__ typename Scheduler::Shared scheduler_storage;
    __shared__ sm90::StageBarriers<Cfg::Stages> dy_barriers;
    __shared__ sm90::StageBarriers<Cfg::Slots> x_barriers;
    extern __shared__ __align__(1024) unsigned char shared_raw[];
    const uint32 ring = (ptx::shared_address(shared_raw) + 1023) & ~1023u;  // [Stages] dY slices
    const uint32 slots = ring + Cfg::Stages * Cfg::BytesA;                     // [Slots] X slices

    const int warpgroup = threadIdx.x / sm90::kWarpgroupThreads;
    const int thread = threadIdx.x % sm90::kWarpgroupThreads;
    if (threadIdx.x == 0) {
        dy_barriers.init(1 + sm90::kGatherArrivals, Cfg::Consumers);
        x_barriers.init(1 + sm90::kGatherArrivals, Cfg::Consumers);
        if (!(Cfg::Flags & kPermuteY)) sm90::prefetch_tensor_map(map_dy);
        if (!(Cfg::Flags & kPermuteX)) sm90::prefetch_tensor_map(map_x);
        sm90::prefetch_tensor_map(map_dw);
    }
    const Scheduler scheduler(scheduler_storage, args.m_sizes);  // block-wide; publishes the barriers too
    auto slices_of = [](int rows) { return (rows + Cfg::SliceK - 1) / Cfg::SliceK; };

    if (warpgroup == 0) {
        sm90::release_registers<Cfg::ProducerRegisters>();
        const Element* dy = static_cast<const Element*>(args.a);
        const Element* x = static_cast<const Element*>(args.b);
        sm90::RingPosition<Cfg::Stages> position;
        XSlots<Cfg::Slots> x_slots;
        // One slice of one side: TMA where it may (thread 0, counted in bytes), else gathered by
        // every thread; every thread arrives once either way.
        auto load = [&](const Slice& piece, bool x_side, uint32 destination, uint32 full, int col0) {
            const bool tma = piece.by_tma(x_side);
            constexpr int BoxesA = Cfg::TileM / 64, BoxesX = Cfg::TileN / 64;
            if (thread == 0) {
                sm90::mbarrier_arrive_expect_tx(full, tma ? (x_side ? Cfg::BytesX : Cfg::BytesA) : 0);
                if (tma) {
                    const int row = piece.row_begin + piece.slice_row;
#pragma unroll
                    for (int box = 0; box < (x_side ? BoxesX : BoxesA); ++box)
                        sm90::tma_load_2d(destination + box * Cfg::BoxBytes, x_side ? map_x : map_dy,
                                          col0 + box * 64, row, full);
                }
            }
            if (!tma) {
                if (x_side) piece.template gather<typename Cfg::GatherX>(destination, x, Cfg::K, col0, true);
                else piece.template gather<typename Cfg::GatherA>(destination, dy, Cfg::N, col0, false);
            }
            sm90::cp_async_arrive_noinc(full);
        };
        for (int index = blockIdx.x; index < Cfg::Units; index += gridDim.x) {
            const Unit unit(index);
            const int expert_rows = scheduler.rows(unit.expert);
            const int row_begin = scheduler.row_begin(unit.expert);
            const int slices = slices_of(expert_rows);
            const bool resident = expert_rows <= Cfg::ResidentRows;
            for (int n_tile = unit.n_tile_begin; n_tile < unit.n_tile_end; ++n_tile) {
                for (int slice = 0; slice < slices; ++slice) {
                    const Slice piece{args, row_begin, expert_rows, slice * Cfg::SliceK, thread};
                    if (!resident || n_tile == unit.n_tile_begin) {
                        const int slot = x_slots.slot(resident, slice);
                        sm90::mbarrier_wait(x_barriers.empty_address(slot), x_slots.parity(slot) ^ 1);
                        x_slots.flip(slot);
                        load(piece, true, slots + slot * Cfg::BytesX, x_barriers.full_address(slot), unit.k0);
                    }
                    sm90::mbarrier_wait(dy_barriers.empty_address(position.stage), position.parity ^ 1);
                    load(piece, false, ring + position.stage * Cfg::BytesA, dy_barriers.full_address(position.stage),
                         n_tile * Cfg::TileM);
                    position.advance();
                }
            }
        }
    } else {
        sm90::claim_registers<Cfg::ConsumerRegisters>();
        const int consumer = warpgroup - 1;  // owns dW rows n0 + [64 * consumer, 64 * consumer + 64)
        float accumulators[Cfg::Mma::Registers];
        sm90::RingPosition<Cfg::Stages> position;
        XSlots<Cfg::Slots> x_slots;
        // The dY stage and (on its last use) the X slot of the batch that may still be in flight.
        int previous_stage = -1, previous_slot = -1;
        auto release_previous = [&] {
            if (thread == 0 && previous_stage >= 0) dy_barriers.release(previous_stage);
            if (thread == 0 && previous_slot >= 0) x_barriers.release(previous_slot);
        };
        typename Cfg::Store store{slots + Cfg::Slots * Cfg::BytesX + consumer * Cfg::StagingBytes,
                                        1 + consumer};
        for (int index = blockIdx.x; index < Cfg::Units; index += gridDim.x) {
            const Unit unit(index);
            const int expert_rows = scheduler.rows(unit.expert);
            const int slices = slices_of(expert_rows);
            const bool resident = expert_rows <= Cfg::ResidentRows;
            for (int n_tile = unit.n_tile_begin; n_tile < unit.n_tile_end; ++n_tile) {
                const bool first = !resident || n_tile == unit.n_tile_begin;
                const bool last = !resident || n_tile + 1 == unit.n_tile_end;
#pragma unroll
                for (int i = 0; i < Cfg::Mma::Registers; ++i) accumulators[i] = 0.0f;  // empty experts: zeros
                for (int slice = 0; slice < slices; ++slice, position.advance()) {
                    const int slot = x_slots.slot(resident, slice);
                    if (first) sm90::mbarrier_wait(x_barriers.full_address(slot), x_slots.parity(slot));
                    if (last) x_slots.flip(slot);
                    sm90::mbarrier_wait(dy_barriers.full_address(position.stage), position.parity);
                    sm90::fence_proxy_async();  // rows gathered by cp.async
                    const uint32 sA = ring + position.stage * Cfg::BytesA + consumer * Cfg::BoxBytes;
                    const uint32 sX = slots + slot * Cfg::BytesX;
                    sm90::wgmma_slice<typename Cfg::Mma, Cfg::SliceK>(accumulators, sA, Cfg::BoxBytes,
                                                                      16 * sm90::kSliceBytesPerRow, sX, Cfg::BoxBytes,
                                                                      16 * sm90::kSliceBytesPerRow, true);
                    // This batch in flight, the one before it retired: its dY stage and X slot go back.
                    sm90::wgmma_wait<1>();
                    sm90::fence_accumulators(accumulators);
                    release_previous();
                    previous_stage = position.stage;
                    previous_slot = last ? slot : -1;
                }
                sm90::wgmma_wait<0>();
                sm90::fence_accumulators(accumulators);
                release_previous();
                previous_stage = previous_slot = -1;
                // dW[expert][n0 + 64 * consumer + row][k0 + column]; TMA clips rows past N and columns past K.
                store.store(accumulators, map_dw, unit.k0, n_tile * Cfg::TileM + consumer * 64, unit.expert, Cfg::K,
                            thread);
            }
        }
        store.finish(thread);
    }
}

}  // namespace moejit

#pragma once
// Row-grouped GEMMs on Hopper (sm_90a) with wgmma's operands swapped: the forward and dX where an
// expert has few rows, so that a 128-row m tile would mostly be padding (deepseek-v3 at 8192
// tokens: 256 +- 16 rows an expert, of which 128-row tiles issue 0.80 as real MMA).
//
//   forward: C[r]^T = W[e] @ A[r]^T     A = X [M, K], W [E, N, K] K-major, C [M, N]
//   dX:      C[r]^T = W[e]^T @ A[r]^T   A = dY [M, N], W read N-major as [64 n][64 k] boxes, C [M, K]
//
// with A's rows in routed order (by TMA); C's rows may scatter to slot order (the forward's
// permute_y, dX's permute_x) and be scaled by the routing weights (fuse_mul_post).
//
// wgmma's M side is the weights: each consumer warpgroup owns 64 output columns of a tile of
// TileN. Its N side is the expert's routed rows, up to TileTokens a tile: a 256-wide wgmma and,
// past 256 rows, a tail wgmma of 32 or (m320, past 288) 64. Rows past 256 are thus padded to 32
// (not to a 128-row tile), and an expert of up to TileTokens rows reads each weight tile once,
// in one CTA: no other CTA has to keep its pace to share the weights in L2, as the 128-row kernel's
// m tiles of one weight tile must (bench/RESULTS.md, sixteenth session). Larger experts split into
// equal blocks of rows, neighbours in the scheduler's band order. The epilogue turns each
// warpgroup's [64 columns][rows] fragment back into rows with transposing stmatrix.
// The default is m288 (four 52 KB stages beside 32-row staging), chosen by the heuristic for experts
// of 241-288 rows (codegen/config.cpp); three stages of m320 measured 5-12% slower (starved).
#include "common/arguments.cuh"
#include "common/dependent_launch.cuh"
#include "epilogue/sm90_staged_rows.cuh"
#include "mma/sm90_pipeline.cuh"
#include "mma/sm90_weight_slice.cuh"
#include "scheduler/grouped_tiles.cuh"
#include "scheduler/tile_queue.cuh"

namespace moejit {

template <class Element_, RowGroupedPass Pass_, int Flags_, int N_, int K_, int Experts_, int Topk_, int TileM_,
          int TileN_, int Stages_>
struct Sm90SwapAbConfig {
    using Element = Element_;
    static constexpr RowGroupedPass Pass = Pass_;
    static constexpr int Flags = Flags_, N = N_, K = K_, Experts = Experts_, Topk = Topk_;
    static constexpr bool Forward = Pass == RowGroupedPass::forward;
    static constexpr int TileTokens = TileM_;  // routed rows of one expert a tile holds at most
    static constexpr int TileN = TileN_;       // output columns, 64 a consumer warpgroup
    static constexpr int Stages = Stages_;
    static constexpr int Consumers = TileN / 64;
    static constexpr int Threads = sm90::kWarpgroupThreads * (1 + Consumers);

    static constexpr int Reduction = Forward ? K : N;
    static constexpr int OutCols = Forward ? N : K;
    static constexpr int NTiles = (OutCols + TileN - 1) / TileN;
    static constexpr int Slices = (Reduction + sm90::kSliceK - 1) / sm90::kSliceK;

    // Rows of A a TMA box holds (the host's map has the same): half a tile's, so that a slice takes
    // two loads, or one where a block has no more rows than that.
    static constexpr int TokenBox = TileTokens / 2;
    static constexpr int BytesW = TileN * sm90::kSliceBytesPerRow;  // [TileN][64 k], or TileN/64 boxes [64 n][64]
    static constexpr int BytesB = BytesW;  // for load_weight_slice (mma/sm90_weight_slice.cuh)
    static constexpr bool Gated = false;
    static constexpr int Cluster = 1;
    static constexpr int BytesA = TileTokens * sm90::kSliceBytesPerRow;
    static constexpr int StageBytes = BytesW + BytesA;
    // Staging rows a consumer warpgroup stores its output through: half the 128-row kernel's where
    // that leaves room for a fourth stage (m288: 4 x 52 KB). The host mirrors it (codegen/config.cpp).
    static constexpr int StagingRows = TileTokens <= 288 ? 32 : 64;
    static constexpr int StagingBytes = StagingRows * sm90::kStagingPitch;
    // Scattered output rows (the forward's permute_y, dX's permute_x) and routing weights
    // (fuse_mul_post) are the epilogue's: each consumer keeps the tile's destination rows and
    // weights in a table (TokenTable). Gathered rows and the gated epilogue are the 128-row kernel's
    // (gathered by every producer thread from a table of source rows, 288 rows a slice measured 2x
    // slower than 128-row tiles at deepseek-v3: bench/RESULTS.md, twenty-seventh session).
    static constexpr bool Scatter = scatters_rows(Forward, Flags);
    static constexpr bool Scale = (Flags & kFuseMulPost) != 0;
    static constexpr int TableBytes = Scatter || Scale ? TileTokens * 8 : 0;  // a consumer's; the host mirrors it
    static constexpr int SharedBytes =
        Stages * StageBytes + Consumers * (StagingBytes + TableBytes) + 1024;  // + ring alignment

    static constexpr int ProducerRegisters = 40;
    static constexpr int ConsumerRegisters = 232;  // 128 + 32 accumulators at most
    static constexpr int TransposeW = Forward ? 0 : 1;

    static_assert(sizeof(Element) == 2, "16-bit inputs");
    static_assert(sm90::registers_fit<Threads, ProducerRegisters, ConsumerRegisters>(), "setmaxnreg budget");
    static_assert((Flags & ~(kPermuteX | kPermuteY | kFuseMulPost)) == 0 && !gathers_rows(Forward, Flags),
                  "swapped operands: rows by TMA (no gather), no gated epilogue");
    static_assert(TileN == 128, "two consumer warpgroups of 64 output columns");
    static_assert(TileTokens == 288 || TileTokens == 320, "a 256-row wgmma and a tail of up to 32 (m288) or 64 (m320)");
    static_assert(N % 8 == 0 && K % 8 == 0, "N and K must be multiples of 8 (16-byte rows)");
    static_assert(Stages >= 3 && StageBytes % 1024 == 0, "");
};

// The widths of wgmma a tile of `tokens` rows issues: 256 over its first rows, Tail over the rest.
// Each is its own mainloop and epilogue, so each costs compile time. A 16-row tail for tiles of
// 257-272 rows took 30% of it (one host, A/B: m288 1.57 s against 1.10 without it, m320 3.25
// against 2.35), and the forward and dX of deepseek-v3 and gpt-oss-120b measured within 1-3% either
// way without it (bench/RESULTS.md, twenty-ninth session).
// Four variants of one wide width compile with no spill; a fifth, or a second wide width (160 or
// 192 for the halves of an expert of 273-320 rows), spills the consumers (640-2272 bytes, and
// ptxas serializes the wgmma, C7512).
template <int Tail_>
struct SwapWidths {
    static constexpr int Wide = 256, Tail = Tail_;
};

template <int TileTokens, class Body>
__device__ __forceinline__ void with_swap_widths(int tokens, Body&& body) {
    if (tokens <= 256) body(SwapWidths<0>{});
    else if (TileTokens <= 288 || tokens <= 288) body(SwapWidths<32>{});
    else if constexpr (TileTokens > 288) body(SwapWidths<64>{});
}

// A tile's routed rows: block `block` of its expert's rows cut into as few equal blocks (whole
// 16-row steps) of at most TileTokens as hold them. None is empty: with b blocks, rows exceed
// TileTokens * (b - 1), and a block, at most TileTokens (a multiple of 16), times b - 1 does not.
struct TokenBlock {
    int first;  // within the expert
    int count;
    __device__ TokenBlock(int rows, int block, int tile_tokens) {
        const int blocks = ceil_div(rows, tile_tokens);
        const int per_block = ceil_div(ceil_div(rows, blocks), 16) * 16;
        first = block * per_block;
        count = min_of(per_block, rows - first);
    }
};

// Scattered or scaled rows: the tile's destination rows (gather_idx) and routing weights. They are
// read into registers under the tile's first wgmma batches, the weights a batch after the rows they
// depend on, so that neither dependent global read holds up the epilogue, which the tensor pipe
// waits for, and kept in the warpgroup's table in shared memory for the epilogue, whose fragments
// hold each thread's values for two routed rows of every 8.
template <class Cfg>
struct TokenTable {
    static constexpr bool Used = Cfg::Scatter || Cfg::Scale;
    static constexpr int PerThread = Used ? ceil_div(Cfg::TileTokens, sm90::kWarpgroupThreads) : 1;
    uint32 slots;    // [TileTokens] int
    uint32 weights;  // [TileTokens] float
    int slot[PerThread];
    float weight[PerThread];

    __device__ explicit TokenTable(uint32 base) : slots(base), weights(base + Cfg::TileTokens * 4) {}

    __device__ __forceinline__ void load_slots(const GroupedGemmArguments& args, int64 row0, int tokens, int thread) {
#pragma unroll
        for (int i = 0; i < PerThread; ++i) {
            const int token = thread + i * sm90::kWarpgroupThreads;
            slot[i] = token < tokens && row0 + token < args.rows ? static_cast<int>(slot_row(args, row0 + token)) : -1;
        }
    }
    __device__ __forceinline__ void load_weights(const GroupedGemmArguments& args) {
        if constexpr (Cfg::Scale)
#pragma unroll
            for (int i = 0; i < PerThread; ++i) weight[i] = slot[i] >= 0 ? args.topk_weights[slot[i]] : 0.0f;
    }
    // Into the table, once the warpgroup's epilogue of the previous tile has read it (it has: its
    // last staging barrier), and visible to the whole warpgroup.
    __device__ __forceinline__ void publish(int thread, int barrier_id) const {
#pragma unroll
        for (int i = 0; i < PerThread; ++i) {
            const int token = thread + i * sm90::kWarpgroupThreads;
            if (token >= Cfg::TileTokens) continue;
            ptx::store_shared_32(slots + token * 4, static_cast<uint32>(slot[i]));
            if constexpr (Cfg::Scale) ptx::store_shared_32(weights + token * 4, __float_as_uint(weight[i]));
        }
        sm90::named_barrier(barrier_id, sm90::kWarpgroupThreads);
    }
    __device__ __forceinline__ int64 slot_of(int token) const { return static_cast<int>(ptx::load_shared_32(slots + token * 4)); }
    __device__ __forceinline__ float weight_of(int token) const {
        return __uint_as_float(ptx::load_shared_32(weights + token * 4));
    }
};

// A consumer warpgroup's fragments back to rows of C. Fragment of m64nW: the thread with lane l of
// warp w holds rows 16w + l/4 (+ 8) (output columns) and columns 8g + 2(l % 4) (+ 1) (routed rows)
// of each 8-column group g, registers 4g .. 4g + 3. Transposing stmatrix x4 stores groups 2q and
// 2q + 1 of both row halves as 16 rows of the staging (routed rows), each with 16 bytes of output
// columns 16w .. 16w + 15; lanes 8j .. 8j + 7 address matrix j. Then the staging rows go out as in
// the 128-row kernel, 128 bytes (this warpgroup's 64 columns) a routed row.
template <class Cfg>
struct SwapEpilogue {
    using Element = typename Cfg::Element;
    const GroupedGemmArguments& args;
    const sm90::StagedRows& staging;
    const TokenTable<Cfg>& table;
    int consumer, thread;
    int64 row0;  // the tile's first routed row
    int tokens;  // the tile's routed rows
    int col0;    // this warpgroup's first output column
    uint32 lane_row;

    __device__ SwapEpilogue(const GroupedGemmArguments& args_, const sm90::StagedRows& staging_,
                            const TokenTable<Cfg>& table_, int consumer_, int thread_, int64 row0_, int tokens_,
                            int out_col0)
        : args(args_), staging(staging_), table(table_), consumer(consumer_), thread(thread_), row0(row0_),
          tokens(tokens_), col0(out_col0 + 64 * consumer_) {
        const int warp = thread / 32, lane = thread % 32, matrix = lane / 8;
        lane_row = staging.base + (8 * (matrix / 2) + lane % 8) * sm90::kStagingPitch + (16 * warp + 8 * (matrix % 2)) * 2;
    }

    // Routed rows [token0, token0 + 8 * Groups) of the tile, from fragment registers first .. .
    template <int Groups, int Registers>
    __device__ __forceinline__ void store(const float (&d)[Registers], int first, int token0) const {
        static_assert(Groups % 2 == 0 && Groups * 8 <= Cfg::StagingRows, "whole stmatrix x4, within the staging rows");
#pragma unroll
        for (int q = 0; q < Groups / 2; ++q) {
            const int r = first + 8 * q;
            // Registers r .. r + 3 hold routed rows t, t + 1 (twice: two output columns), r + 4 .. r + 7
            // rows t + 8, t + 9.
            float scale[4] = {1.0f, 1.0f, 1.0f, 1.0f};
            if constexpr (Cfg::Scale) {
                const int t = token0 + 16 * q + 2 * (thread % 4);
                scale[0] = table.weight_of(t), scale[1] = table.weight_of(t + 1);
                scale[2] = table.weight_of(t + 8), scale[3] = table.weight_of(t + 9);
            }
            sm90::stmatrix_x4_trans(lane_row + 16 * q * sm90::kStagingPitch,
                                    pack2<Element>(d[r] * scale[0], d[r + 1] * scale[1]),
                                    pack2<Element>(d[r + 2] * scale[0], d[r + 3] * scale[1]),
                                    pack2<Element>(d[r + 4] * scale[2], d[r + 5] * scale[3]),
                                    pack2<Element>(d[r + 6] * scale[2], d[r + 7] * scale[3]));
        }
        Element* c = static_cast<Element*>(args.c);
        unsigned char* destination[sm90::kCopiesPerThread];
#pragma unroll
        for (int i = 0; i < sm90::kCopiesPerThread; ++i) {
            const int token = token0 + sm90::StagedRows::copy_row(thread, i);
            const int64 routed = row0 + token;
            const bool stored = sm90::StagedRows::copy_row(thread, i) < 8 * Groups && token < tokens && routed < args.rows;
            const int64 out_row = !stored ? 0 : Cfg::Scatter ? table.slot_of(token) : routed;
            destination[i] = stored ? reinterpret_cast<unsigned char*>(c + out_row * Cfg::OutCols + col0) : nullptr;
        }
        staging.copy_out(1 + consumer, destination, 0, thread, (Cfg::OutCols - col0) * 2);
    }
};

// One tile for a consumer warpgroup: the mainloop over every slice into [64 columns][Wide + Tail
// rows] fragments, then the epilogue.
template <class Cfg, int Wide, int Tail, class Barriers>
__device__ __forceinline__ void swap_ab_tile(const GroupedGemmArguments& args, const Barriers& barriers, uint32 ring,
                                             sm90::RingPosition<Cfg::Stages>& position,
                                             sm90::SlotReleaser<Cfg::Stages>& release, const sm90::StagedRows& staging,
                                             TokenTable<Cfg>& table, int consumer, int thread, int64 row0, int tokens,
                                             int out_col0) {
    using Element = typename Cfg::Element;
    using WideMma = sm90::Wgmma<Element, Wide, Cfg::TransposeW, 0>;
    using TailMma = sm90::Wgmma<Element, Tail == 0 ? 16 : Tail, Cfg::TransposeW, 0>;
    float wide[WideMma::Registers];
    float tail[TailMma::Registers];
    for (int slice = 0; slice < Cfg::Slices; ++slice, position.advance()) {
        sm90::mbarrier_wait(barriers.full_address(position.stage), position.parity);
        const uint32 stage = ring + position.stage * Cfg::StageBytes;
        const uint32 sW = stage + consumer * 64 * sm90::kSliceBytesPerRow;  // this warpgroup's 64 columns
        const uint32 sA = stage + Cfg::BytesW;
        sm90::wgmma_fence();
#pragma unroll
        for (int k = 0; k < sm90::kSliceK / 16; ++k) {
            // K-major weights: 32 bytes a k16 step; N-major (dX): 16 rows of 128 bytes.
            const sm90::uint64 desc_w = Cfg::Forward ? sm90::smem_descriptor(sW + k * 32, 0, 1024)
                                               : sm90::smem_descriptor(sW + k * 2048, 64 * sm90::kSliceBytesPerRow, 1024);
            const int accumulate = slice > 0 || k > 0;
            WideMma::mma(wide, desc_w, sm90::smem_descriptor(sA + k * 32, 0, 1024), accumulate);
            if constexpr (Tail > 0)
                TailMma::mma(tail, desc_w, sm90::smem_descriptor(sA + Wide * sm90::kSliceBytesPerRow + k * 32, 0, 1024),
                             accumulate);
        }
        sm90::wgmma_commit();
        if constexpr (Tail > 0) release.issued(barriers, position.stage, thread == 0, wide, tail);
        else release.issued(barriers, position.stage, thread == 0, wide);
        if constexpr (TokenTable<Cfg>::Used) {
            if (slice == 0) table.load_slots(args, row0, tokens, thread);
            if (slice == min_of(2, Cfg::Slices - 1)) table.load_weights(args);
        }
    }
    if constexpr (Tail > 0) release.drain(barriers, thread == 0, wide, tail);
    else release.drain(barriers, thread == 0, wide);
    if constexpr (TokenTable<Cfg>::Used) table.publish(thread, 1 + consumer);

    const SwapEpilogue<Cfg> epilogue(args, staging, table, consumer, thread, row0, tokens, out_col0);
    constexpr int ChunkGroups = Cfg::StagingRows / 8;  // of 8 routed rows, 4 registers
#pragma unroll
    for (int chunk = 0; chunk < Wide / Cfg::StagingRows; ++chunk)
        epilogue.template store<ChunkGroups>(wide, 4 * ChunkGroups * chunk, Cfg::StagingRows * chunk);
    if constexpr (Tail > 0) epilogue.template store<Tail / 8>(tail, 0, Wide);
}

// Tiles are claimed at run time (scheduler/tile_queue.cuh): tiles differ in width, and under a
// static stride the CTAs would drift apart, so that the n tiles of one expert, which share its
// rows in L2, would no longer run at one time.
template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads, 1)
    sm90_row_grouped_gemm_swap_ab(const GroupedGemmArguments args, const __grid_constant__ sm90::TensorMap map_a,
                                  const __grid_constant__ sm90::TensorMap map_b) {
    using Scheduler = GroupedTileScheduler<Cfg::Experts, Cfg::Threads, Cfg::TileTokens, Cfg::NTiles>;

    __shared__ typename Scheduler::Shared scheduler_storage;
    __shared__ sm90::StageBarriers<Cfg::Stages> barriers;
    __shared__ sm90::TileQueue queue;
    extern __shared__ __align__(1024) unsigned char shared_raw[];
    const uint32 ring = (ptx::shared_address(shared_raw) + 1023) & ~1023u;  // [Stages] x (weights, rows)

    const int warpgroup = threadIdx.x / sm90::kWarpgroupThreads;
    const int thread = threadIdx.x % sm90::kWarpgroupThreads;
    if (threadIdx.x == 0) {
        queue.init(Cfg::Consumers * sm90::kWarpgroupThreads / 32);
        barriers.init(1, Cfg::Consumers);
        sm90::prefetch_tensor_map(map_a);
        sm90::prefetch_tensor_map(map_b);
    }
    wait_for_prior_kernels();  // the set-up above touches no global memory: it overlaps the previous kernel
    const Scheduler scheduler(scheduler_storage, args.m_sizes, args.rows);  // block-wide; publishes the barriers too
    const int tiles = scheduler.total_tiles();

    if (warpgroup == 0) {
        sm90::release_registers<Cfg::ProducerRegisters>();
        if (thread != 0) return;
        sm90::RingPosition<Cfg::Stages> position;
        int index = blockIdx.x;
        for (int round = 0;; ++round) {
            queue.publish(round, index);
            if (index >= tiles) {
                sm90::TileQueue::retire(args.tile_counters);
                break;
            }
            const int upcoming = sm90::TileQueue::claim(args.tile_counters);  // its round trip overlaps the loads
            const GroupedTile tile = scheduler.tile(index);
            const TokenBlock block(tile.expert_rows, tile.m_tile, Cfg::TileTokens);
            const int row0 = tile.row_begin + block.first;
            const int out_col0 = tile.n_tile * Cfg::TileN;
            const int boxes = ceil_div(block.count, Cfg::TokenBox);
            for (int slice = 0; slice < Cfg::Slices; ++slice, position.advance()) {
                sm90::mbarrier_wait(barriers.empty_address(position.stage), position.parity ^ 1);
                const uint32 sW = ring + position.stage * Cfg::StageBytes;
                const uint32 sA = sW + Cfg::BytesW;
                const uint32 full = barriers.full_address(position.stage);
                const int k0 = slice * sm90::kSliceK;
                sm90::mbarrier_arrive_expect_tx(full, Cfg::BytesW + boxes * Cfg::TokenBox * sm90::kSliceBytesPerRow);
                load_weight_slice<Cfg>(map_b, sW, full, k0, out_col0, tile.expert, false, 0);
                for (int box = 0; box < boxes; ++box)
                    sm90::tma_load_2d(sA + box * Cfg::TokenBox * sm90::kSliceBytesPerRow, map_a, k0,
                                      row0 + box * Cfg::TokenBox, full);
            }
            index = upcoming;
        }
    } else {
        sm90::claim_registers<Cfg::ConsumerRegisters>();
        const int consumer = warpgroup - 1;
        const int lane = threadIdx.x % 32;
        sm90::RingPosition<Cfg::Stages> position;
        sm90::SlotReleaser<Cfg::Stages> release;
        const sm90::StagedRows staging{ring + Cfg::Stages * Cfg::StageBytes + consumer * Cfg::StagingBytes};
        TokenTable<Cfg> table{ring + Cfg::Stages * Cfg::StageBytes + Cfg::Consumers * Cfg::StagingBytes +
                              consumer * Cfg::TableBytes};
        for (int round = 0;; ++round) {
            const int index = queue.receive(round, lane);
            if (index >= tiles) break;
            const GroupedTile tile = scheduler.tile(index);
            const TokenBlock block(tile.expert_rows, tile.m_tile, Cfg::TileTokens);
            const int64 row0 = static_cast<int64>(tile.row_begin) + block.first;
            with_swap_widths<Cfg::TileTokens>(block.count, [&](auto widths) {
                using Widths = decltype(widths);
                swap_ab_tile<Cfg, Widths::Wide, Widths::Tail>(args, barriers, ring, position, release, staging, table,
                                                              consumer, thread, row0, block.count,
                                                              tile.n_tile * Cfg::TileN);
            });
        }
    }
}

}  // namespace moejit

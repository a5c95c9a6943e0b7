#pragma once
// Row-grouped GEMMs on Hopper (sm_90a): the forward pass and dX, warp-specialized and persistent.
//
//   forward: C[r] = A[r] @ W[e]^T   A = X [M or T, K] (K-major), W [E, N, K] K-major, C [M, N]
//   dX:      C[r] = A[r] @ W[e]     A = dY [M, N],  W read N-major as [N][K] boxes, C [M, K]
//
// Warpgroup 0 fills a Stages-deep ring of (A, B) slices 64 deep in the reduction: B always by TMA
// through one 3-D map over all experts' weights ([E][N][K], so reads past N are zeros, never the
// next expert), A by TMA over the routed rows, or, where the rows are indirect (permute_x forward,
// permute_y dX), gathered by all 128 producer threads with cp.async. (One TMA box per gathered row
// measured 1.25x slower than cp.async: 128 small requests per slice.) Warpgroups 1..TileM/64 each
// own 64 rows of the tile and issue m64 x TileN x k16 wgmma. Tiles come from GroupedTileScheduler:
// experts by prefix sums of m_sizes read on the device, in bands of m tiles so concurrently
// running CTAs share weight tiles in L2.
#include "common/arguments.cuh"
#include "common/dependent_launch.cuh"
#include "epilogue/sm90_staged_rows.cuh"
#include "mma/sm90_pipeline.cuh"
#include "mma/sm90_weight_slice.cuh"
#include "scheduler/grouped_tiles.cuh"
#include "scheduler/tile_queue.cuh"

namespace moejit {

template <class Element_, RowGroupedPass Pass_, int Flags_, int N_, int K_, int Experts_, int Topk_, int TileM_,
          int TileN_, int Stages_, int Cluster_>
struct Sm90RowGroupedConfig {
    using Element = Element_;
    static constexpr RowGroupedPass Pass = Pass_;
    static constexpr int Flags = Flags_, N = N_, K = K_, Experts = Experts_, Topk = Topk_;
    static constexpr bool Forward = Pass == RowGroupedPass::forward;
    static constexpr bool Gated = Forward && (Flags & kGated);
    static constexpr bool SavesPreactivation = Gated && (Flags & kSavesPreactivation);
    static constexpr bool GatherA = gathers_rows(Forward, Flags);
    static constexpr int TileM = TileM_, TileN = TileN_, Stages = Stages_;
    static constexpr int Cluster = Cluster_;  // CTAs per cluster (1, or a pair sharing weight tiles)
    // Where A is gathered into 128-row tiles, single CTAs claim tiles at run time (tile_queue.cuh):
    // the gathers' cost varies from tile to tile, and under a static stride the CTAs drift apart
    // (measured 8-14% faster on the gated permute_x forward, H100). With TMA-loaded A the static
    // stride measured 3-8% faster; CTA pairs walk it in lockstep; 64-row tiles (decode and small
    // calls) have few tiles a CTA. The host mirrors this (codegen/config.cpp, claims_tiles).
    static constexpr bool Dynamic = Cluster == 1 && GatherA && TileM == 128;
    static constexpr int Consumers = TileM / 64;
    static constexpr int Threads = sm90::kWarpgroupThreads * (1 + Consumers);

    static constexpr int Reduction = Forward ? K : N;
    static constexpr int OutCols = Forward ? (Gated ? N / 2 : N) : K;
    static constexpr int TileOutCols = Gated ? TileN / 2 : TileN;
    static constexpr int NTiles = (OutCols + TileOutCols - 1) / TileOutCols;
    static constexpr int Slices = (Reduction + sm90::kSliceK - 1) / sm90::kSliceK;

    static constexpr int BytesA = TileM * sm90::kSliceBytesPerRow;
    static constexpr int BytesB = TileN * sm90::kSliceBytesPerRow;
    static constexpr int StageBytes = BytesA + BytesB;
    // After the staging rows: zero rows, the A that a warpgroup past its expert's end reads. The
    // hardware reads only the first 8 rows (1 KB, stride 0), but compute-sanitizer models each k16
    // read as 64 rows x 32 bytes from its start (2 KB, up to 96 bytes in), so 3 KB keep it quiet.
    static constexpr int ZeroRowsOffset = Stages * StageBytes + Consumers * sm90::kStagingBytes;
    static constexpr int ZeroRowsBytes = 24 * sm90::kSliceBytesPerRow;
    static constexpr int SharedBytes = ZeroRowsOffset + ZeroRowsBytes + 1024;  // + ring alignment
    static_assert(ZeroRowsOffset % 1024 == 0, "the zero rows start on the swizzle period, as A tiles do");

    // The producer keeps only addresses (a gathering one, a row pointer per copy); consumers hold
    // TileN/2 accumulators each. Three consumers (192x192 tiles) hold 96 and share what is left of
    // the 65536 registers: 152 each, or 144 beside a producer gathering 12 rows a thread.
    static constexpr int ProducerRegisters = GatherA ? (Consumers == 3 ? 80 : 56) : 40;
    static constexpr int ConsumerRegisters =
        Consumers == 1 ? 256 : Consumers == 3 ? (GatherA ? 144 : 152) : (GatherA ? 224 : 232);

    using Mma = sm90::Wgmma<Element, TileN, 0, Forward ? 0 : 1>;
    using Gather = sm90::GatherPlan<TileM, 1>;

    static_assert(sm90::TileRequirements<Element, TileM, TileN, N, K, Stages>::met, "");
    static_assert(sm90::registers_fit<Threads, ProducerRegisters, ConsumerRegisters>(), "setmaxnreg budget");
    static_assert(!Gated || TileN >= 128, "gated tiles hold TileN/2 gate and TileN/2 up columns");
    static_assert(!Gated || (N / 2) % 8 == 0, "gated: N/2 must be a multiple of 8");
    static_assert(Cluster == 1 || (Cluster == 2 && TileN >= 128), "a pair splits weight tiles into halves of 64+ rows");
    static_assert(Consumers < 3 || TileN <= 192, "three consumers hold at most 96 accumulators each");
    static_assert(TileOutCols % 64 == 0, "the epilogue stages 64 output columns at a time");
};

// The tile a CTA of a pair works on in round `pair`: CTA `rank` takes tile 2 * pair + rank (one CTA
// per cluster: tile `pair`). Neighbouring tiles are neighbouring m tiles of one expert and n tile
// (the scheduler's band order), so a pair mostly needs one weight tile: then `shares_b` and each
// CTA loads half of it for both. A CTA past the last tile still walks the ring with its partner.
template <class Scheduler, int Cluster>
struct PairTile {
    GroupedTile tile;
    bool exists = false;
    bool shares_b = false;

    __device__ PairTile(const Scheduler& scheduler, int pair, int rank) {
        const int total = scheduler.total_tiles();
        const int index = pair * Cluster + rank;
        exists = index < total;
        if (exists) tile = scheduler.tile(index);
        if constexpr (Cluster == 2) {
            const int other = pair * Cluster + (rank ^ 1);
            if (exists && other < total) {
                const GroupedTile partner = scheduler.tile(other);
                shares_b = partner.expert == tile.expert && partner.n_tile == tile.n_tile;
            }
        }
    }
};

// Consumer warpgroup `consumer` (tile rows [64 * consumer, 64 * consumer + 64)): wgmma over the
// ring's slices, then the epilogue, 64 output columns at a time through the warpgroup's staging
// rows (epilogue/sm90_staged_rows.cuh) to their (possibly scattered) global rows.
template <class Cfg, class Scheduler, class Barriers>
__device__ __forceinline__ void consume_tiles(const GroupedGemmArguments& args, const Scheduler& scheduler,
                                              const Barriers& barriers, sm90::TileQueue& queue, uint32 ring,
                                              int consumer, int rank, int first_pair, int pair_stride, int pairs) {
    using Element = typename Cfg::Element;
    constexpr int Flags = Cfg::Flags;
    const int thread = threadIdx.x % sm90::kWarpgroupThreads;
    const int lane = threadIdx.x % 32;
    Element* c = static_cast<Element*>(args.c);
    float accumulators[Cfg::Mma::Registers];
    sm90::RingPosition<Cfg::Stages> position;
    sm90::SlotReleaser<Cfg::Stages> release;
    const sm90::StagedRows staging{ring + Cfg::Stages * Cfg::StageBytes + consumer * sm90::kStagingBytes};
    constexpr int BlocksPerChunk = sm90::kStagingRowBytes / 16;
    constexpr int Chunks = Cfg::TileOutCols / 64;  // of 64 output columns
    constexpr int PerChunk = 2 * BlocksPerChunk;   // packed registers a chunk: two rows of 8 blocks
    // A tile's output waits, converted and packed two to a register, until the next tile's first
    // wgmma batches are in flight, and goes out one chunk under each of them, so that the tensor
    // pipe does not idle through the epilogue. The destinations are the pending tile's until its
    // last chunk is out, then the current tile's.
    // Three consumers (96 accumulators each of 152 registers) have no room to hold it: they store
    // each chunk as it is converted.
    constexpr bool Deferred = Cfg::Consumers < 3;
    uint32 pending[Chunks * PerChunk];
    bool has_pending = false;
    int pending_row_bytes = 0;  // of the pending tile's output rows, from its first column
    // The global rows this thread copies out of the staging rows (null past the expert's end).
    unsigned char* destination[sm90::kCopiesPerThread];
    float scale[2] = {1.0f, 1.0f};  // per fragment row: the routing weight when fused
    auto store_chunk = [&](int chunk) {
#pragma unroll
        for (int static_chunk = 0; static_chunk < Chunks; ++static_chunk) {
            if (static_chunk != chunk) continue;
#pragma unroll
            for (int half = 0; half < 2; ++half)
#pragma unroll
                for (int b = 0; b < BlocksPerChunk; ++b)
                    staging.store_32(sm90::StagedRows::fragment_row(thread, half), b * 16 + (lane % 4) * 4,
                                     pending[static_chunk * PerChunk + half * BlocksPerChunk + b]);
            staging.copy_out(1 + consumer, destination, static_chunk, thread, pending_row_bytes);
        }
    };
    for (int round = 0;; ++round) {
        const int pair = Cfg::Dynamic ? queue.receive(round, lane) : first_pair + round * pair_stride;
        if (pair >= pairs) break;
        const PairTile<Scheduler, Cfg::Cluster> work(scheduler, pair, rank);
        const GroupedTile& tile = work.tile;
        constexpr int slices = Cfg::Slices;
        // A CTA with no tile this round only hands the slots back, in step with its partner. A
        // warpgroup whose rows all lie past its expert's end does not: skipping measured up to 2.1x
        // slower with the static stride and up to 1.2x with tiles claimed at run time (bench/RESULTS.md,
        // sixteenth and twentieth sessions), most likely because a tile that ends early runs its CTA
        // ahead of the CTAs reading the same weight slices, which then miss them in L2.
        if (!work.exists) {
            for (int slice = 0; slice < slices; ++slice, position.advance())
                sm90::pass_slot(barriers, position, 1 + consumer, thread == 0);
            continue;
        }
        const int out_col0 = tile.n_tile * Cfg::TileOutCols;
        const int tile_row0 = tile.m_tile * Cfg::TileM + consumer * 64;  // within the expert
        // The epilogue's destinations and routing weights, loaded while the mainloop runs, so that
        // the index and weight loads (two dependent global reads where rows scatter) do not hold up
        // the epilogue, which the tensor pipe waits for.
        auto load_destinations = [&]() {
#pragma unroll
            for (int i = 0; i < sm90::kCopiesPerThread; ++i) {
                const int row = tile_row0 + sm90::StagedRows::copy_row(thread, i);
                const int64 routed = static_cast<int64>(tile.row_begin) + row;
                constexpr bool scatter = scatters_rows(Cfg::Forward, Flags);
                destination[i] = nullptr;
                if (row < tile.expert_rows && routed < args.rows) {
                    const int64 out_row = scatter ? slot_row(args, routed) : routed;
                    destination[i] = reinterpret_cast<unsigned char*>(c + out_row * Cfg::OutCols + out_col0);
                }
            }
            if constexpr ((Flags & kFuseMulPost) != 0) {
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int row = tile_row0 + sm90::StagedRows::fragment_row(thread, half);
                    const int64 routed = static_cast<int64>(tile.row_begin) + row;
                    scale[half] = 1.0f;
                    if (row < tile.expert_rows && routed < args.rows)
                        scale[half] = args.topk_weights[slot_row(args, routed)];
                }
            }
        };
        // The pending tile's chunks under the first batches (all under the first where the tile
        // has fewer slices than chunks), then this tile's destinations.
        constexpr int SpreadChunks = slices >= Chunks ? Chunks : 1;
        // A warpgroup whose rows all lie past its expert's end reads its A from the kernel's zero
        // rows (every 8-row group from the same 1 KB) instead of the slot, where TMA put the next
        // expert's rows. The MMA still runs, which keeps the warpgroup in step (skipping it measured
        // slower: bench/RESULTS.md, sixteenth and twentieth sessions), but on zeros it draws less
        // power, and these kernels run at the board's power limit (thirty-seventh session). A
        // gathered A is zero-filled past the expert's end already.
        const bool zero_a = !Cfg::GatherA && tile_row0 >= tile.expert_rows;
        const uint32 a_stride = zero_a ? 0 : 1024;
        for (int slice = 0; slice < slices; ++slice, position.advance()) {
            sm90::mbarrier_wait(barriers.full_address(position.stage), position.parity);
            if constexpr (Cfg::GatherA) sm90::fence_proxy_async();  // the gathered rows were cp.async writes
            const uint32 slot = ring + position.stage * Cfg::StageBytes;
            const uint32 sA = zero_a ? ring + Cfg::ZeroRowsOffset : slot + consumer * 64 * sm90::kSliceBytesPerRow;
            const uint32 sB = slot + Cfg::BytesA;
            // B's descriptor: K-major (forward), or N-major (dX: 16 reduction rows per k step, the
            // next 64 output columns one box further).
            constexpr uint32 b_leading = Cfg::Forward ? 0 : 64 * sm90::kSliceBytesPerRow;
            constexpr uint32 b_step = Cfg::Forward ? 32 : 16 * sm90::kSliceBytesPerRow;
            sm90::wgmma_slice<typename Cfg::Mma>(accumulators, sA, 0, 32, sB, b_leading, b_step, slice > 0, a_stride);
            release.issued(barriers, position.stage, thread == 0, accumulators);
            if (slice < SpreadChunks) {
                if (has_pending) {
                    if constexpr (SpreadChunks == Chunks) {
                        store_chunk(slice);
                    } else {
#pragma unroll
                        for (int chunk = 0; chunk < Chunks; ++chunk) store_chunk(chunk);
                    }
                }
                if (slice == SpreadChunks - 1) load_destinations();
            }
        }
        release.drain(barriers, thread == 0, accumulators);

        // Training only: gate|up before the activation. Compiled out otherwise: without this code
        // the kernel runs 2.6-6% faster, while skipping the stores at run time measured no faster
        // (bench/RESULTS.md, thirty-second and thirty-third sessions).
        if constexpr (Cfg::SavesPreactivation) {
            // Through the staging rows like the output, 64 columns at a time: rows of 16-byte
            // stores instead of each thread's 4-byte fragment pairs scattered over 16 rows.
            // This tile's output rows (just loaded) give the preactivation rows: with
            // OutCols = N/2, output row r starts N/2 * r elements into c, preactivation row r N * r.
            unsigned char* preactivation_rows[sm90::kCopiesPerThread];
#pragma unroll
            for (int i = 0; i < sm90::kCopiesPerThread; ++i)
                preactivation_rows[i] =
                    destination[i] == nullptr
                        ? nullptr
                        : reinterpret_cast<unsigned char*>(
                              static_cast<Element*>(args.preactivation) +
                              2 * (reinterpret_cast<Element*>(destination[i]) - c - out_col0) + out_col0);
            constexpr int HalfChunks = Cfg::TileN / 128;  // of gate columns, and of up columns
            const int half_row_bytes = (Cfg::N / 2 - out_col0) * 2;
#pragma unroll
            for (int chunk = 0; chunk < 2 * HalfChunks; ++chunk) {
                const bool up = chunk >= HalfChunks;  // fragment blocks 8 * chunk.. are gate, then up columns
#pragma unroll
                for (int half = 0; half < 2; ++half)
#pragma unroll
                    for (int b = 0; b < BlocksPerChunk; ++b) {
                        const float* v = &accumulators[(chunk * BlocksPerChunk + b) * 4 + half * 2];
                        staging.store_32(sm90::StagedRows::fragment_row(thread, half), b * 16 + (lane % 4) * 4,
                                         pack2<Element>(v[0], v[1]));
                    }
                staging.copy_out(1 + consumer, preactivation_rows, up ? chunk - HalfChunks : chunk, thread,
                                 half_row_bytes, up ? Cfg::N : 0);
            }
        }
        // Fragment column block j holds output columns 8j..8j+7; chunk c blocks 8c..8c+7.
        pending_row_bytes = (Cfg::OutCols - out_col0) * 2;
#pragma unroll
        for (int chunk = 0; chunk < Chunks; ++chunk) {
#pragma unroll
            for (int half = 0; half < 2; ++half)
#pragma unroll
                for (int b = 0; b < BlocksPerChunk; ++b) {
                    const int j = chunk * BlocksPerChunk + b;
                    uint32& packed = pending[chunk * PerChunk + half * BlocksPerChunk + b];
                    if constexpr (Cfg::Gated) {  // gate columns j, up columns j + TileN/2 of the same output column
                        const float* gate = &accumulators[j * 4 + half * 2];
                        const float* up = &accumulators[(j + Cfg::TileN / 16) * 4 + half * 2];
                        packed = pack2<Element>(silu(gate[0]) * up[0], silu(gate[1]) * up[1]);
                    } else {
                        const float* v = &accumulators[j * 4 + half * 2];
                        packed = pack2<Element>(v[0] * scale[half], v[1] * scale[half]);
                    }
                }
            if constexpr (!Deferred) store_chunk(chunk);
        }
        has_pending = Deferred;
    }
    if (has_pending)
#pragma unroll
        for (int chunk = 0; chunk < Chunks; ++chunk) store_chunk(chunk);
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads, 1)
    sm90_row_grouped_gemm(const GroupedGemmArguments args, const __grid_constant__ sm90::TensorMap map_a,
                          const __grid_constant__ sm90::TensorMap map_b) {
    using Element = typename Cfg::Element;
    using Scheduler = GroupedTileScheduler<Cfg::Experts, Cfg::Threads, Cfg::TileM, Cfg::NTiles>;
    using Gather = typename Cfg::Gather;
    using Pair = PairTile<Scheduler, Cfg::Cluster>;
    constexpr int Cluster = Cfg::Cluster;

    __shared__ typename Scheduler::Shared scheduler_storage;
    __shared__ sm90::StageBarriers<Cfg::Stages, Cluster> barriers;
    __shared__ sm90::TileQueue queue;
    extern __shared__ __align__(1024) unsigned char shared_raw[];
    // TMA's 128-byte swizzle repeats every 1024 bytes; descriptors assume tiles start on that period.
    const uint32 ring = (ptx::shared_address(shared_raw) + 1023) & ~1023u;  // [Stages] x (A tile, B tile)

    const int warpgroup = threadIdx.x / sm90::kWarpgroupThreads;
    const int thread = threadIdx.x % sm90::kWarpgroupThreads;
    if (threadIdx.x < Cfg::ZeroRowsBytes / 16) {  // made visible to wgmma before the block-wide barrier below
        ptx::store_shared_zero_16(ring + Cfg::ZeroRowsOffset + threadIdx.x * 16);
        sm90::fence_proxy_async();
    }
    if (threadIdx.x == 0) {
        if constexpr (Cfg::Dynamic) queue.init(Cfg::Consumers * sm90::kWarpgroupThreads / 32);
        barriers.init(Cfg::GatherA ? 1 + sm90::kGatherArrivals : 1, Cfg::Consumers * Cluster);
        sm90::prefetch_tensor_map(map_b);
        if (!Cfg::GatherA) sm90::prefetch_tensor_map(map_a);
    }
    wait_for_prior_kernels();  // the set-up above touches no global memory: it overlaps the previous kernel
    const Scheduler scheduler(scheduler_storage, args.m_sizes, args.rows);  // block-wide; publishes the barriers too
    // The partner's barriers are initialized before anything arrives on them or multicasts to them.
    if constexpr (Cluster > 1) sm90::cluster_sync();
    const int rank = Cluster > 1 ? static_cast<int>(sm90::cluster_rank()) : 0;
    const int first_pair = blockIdx.x / Cluster, pair_stride = gridDim.x / Cluster;
    const int pairs = ceil_div(scheduler.total_tiles(), Cluster);

    if (warpgroup == 0) {
        sm90::release_registers<Cfg::ProducerRegisters>();
        // Thread 0 issues the TMA loads; with a gathered A every producer thread copies rows too.
        if (Cfg::GatherA || thread == 0) {
            const Element* a = static_cast<const Element*>(args.a);
            sm90::RingPosition<Cfg::Stages> position;
            int upcoming = 0;  // Dynamic: thread 0's claim for the next round
            for (int round = 0;; ++round) {
                int pair;
                if constexpr (Cfg::Dynamic) {  // every producer thread gathers: all learn the tile
                    if (thread == 0) queue.publish(round, round == 0 ? static_cast<int>(blockIdx.x) : upcoming);
                    sm90::named_barrier(sm90::kProducerBarrier, sm90::kWarpgroupThreads);
                    pair = queue.peek(round);
                    if (thread == 0 && pair < pairs) upcoming = sm90::TileQueue::claim(args.tile_counters);
                } else {
                    pair = first_pair + round * pair_stride;
                }
                if (pair >= pairs) {
                    if (Cfg::Dynamic && thread == 0) sm90::TileQueue::retire(args.tile_counters);
                    break;
                }
                const Pair work(scheduler, pair, rank);
                const GroupedTile& tile = work.tile;
                const int tile_row = tile.m_tile * Cfg::TileM;  // within the expert
                const int out_col0 = tile.n_tile * Cfg::TileOutCols;

                const Element* gA[Cfg::GatherA ? Gather::Copies : 1];  // this thread's gathered rows
                if constexpr (Cfg::GatherA) {
#pragma unroll
                    for (int i = 0; i < Gather::Copies; ++i) {
                        const int row = tile_row + Gather::row(thread, i);
                        const int64 routed = static_cast<int64>(tile.row_begin) + row;
                        const bool valid = work.exists && row < tile.expert_rows && routed < args.rows;
                        const int64 source =
                            !valid ? 0 : Cfg::Forward ? token_row<Cfg::Topk>(args, routed) : slot_row(args, routed);
                        gA[i] = valid ? a + source * Cfg::Reduction : nullptr;
                    }
                }
                for (int slice = 0; slice < Cfg::Slices; ++slice, position.advance()) {
                    sm90::mbarrier_wait(barriers.empty_address(position.stage), position.parity ^ 1);
                    const uint32 sA = ring + position.stage * Cfg::StageBytes;
                    const uint32 sB = sA + Cfg::BytesA;
                    const uint32 full = barriers.full_address(position.stage);
                    const int k0 = slice * sm90::kSliceK;
                    if (thread == 0) {
                        const int bytes = work.exists ? (Cfg::GatherA ? 0 : Cfg::BytesA) + Cfg::BytesB : 0;
                        sm90::mbarrier_arrive_expect_tx(full, bytes);
                        if (work.exists) {
                            if (!Cfg::GatherA) sm90::tma_load_2d(sA, map_a, k0, tile.row_begin + tile_row, full);
                            load_weight_slice<Cfg>(map_b, sB, full, k0, out_col0, tile.expert, work.shares_b, rank);
                        }
                    }
                    if constexpr (Cfg::GatherA) {
#pragma unroll
                        for (int i = 0; i < Gather::Copies; ++i) {
                            const int col = k0 + (thread % 8) * 8;
                            const bool valid = gA[i] != nullptr && col < Cfg::Reduction;
                            ptx::cp_async_16(sA + Gather::offset(thread, i), valid ? gA[i] + col : a, valid);
                        }
                        sm90::cp_async_arrive_noinc(full);
                    }
                }
            }
        }
    } else {
        sm90::claim_registers<Cfg::ConsumerRegisters>();
        consume_tiles<Cfg>(args, scheduler, barriers, queue, ring, warpgroup - 1, rank, first_pair, pair_stride, pairs);
    }
    // Neither CTA of a pair leaves while the other may still arrive on its barriers.
    if constexpr (Cluster > 1) sm90::cluster_sync();
}

}  // namespace moejit

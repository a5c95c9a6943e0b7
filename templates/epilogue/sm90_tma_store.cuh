#pragma once
// The sm_90a dW epilogue: dW is dense ([E][N][K]), so a consumer warpgroup's 64 output rows leave
// by TMA store, 128 bytes of each row (64 bf16 or 32 fp32 columns) per box. The warpgroup writes
// its accumulator fragments into up to four 128-byte-swizzled [64 rows][128 bytes] boxes, one
// named barrier, and one thread hands the boxes to the copy engine and goes on: the next tile's
// mainloop runs while the stores drain, where thread-issued stores (sm90_staged_rows.cuh) keep the
// warpgroup busy copying, with two barriers per 128 bytes of row. The 3-D map ([E][N][K]) clips
// rows past N and columns past K, so edge tiles need no masking.
#include "common/ptx.cuh"
#include "mma/sm90_pipeline.cuh"

namespace moejit::sm90 {

constexpr int kStoreBoxRows = 64;  // one consumer warpgroup's rows
constexpr int kStoreBoxRowBytes = 128;
constexpr int kStoreBoxBytes = kStoreBoxRows * kStoreBoxRowBytes;
constexpr int kMostStoreBoxes = 4;  // per warpgroup; the host's Config::shared_bytes mirrors this

// Boxes of one warpgroup for an output row of `RowBytes` bytes: the whole row if it fits in four.
template <int RowBytes>
struct TmaStoreStaging {
    static constexpr int Chunks = RowBytes / kStoreBoxRowBytes;
    static constexpr int Boxes = Chunks < kMostStoreBoxes ? Chunks : kMostStoreBoxes;
    static constexpr int Bytes = Boxes * kStoreBoxBytes;
    static_assert(Chunks * kStoreBoxRowBytes == RowBytes, "whole 128-byte chunks");

    uint32 base;  // this warpgroup's boxes, 1024-byte aligned (the swizzle period)

    // Fragment rows: thread `thread` holds rows 16 * warp + lane / 4 (half 0) and 8 further on (half 1).
    __device__ static int fragment_row(int thread, int half) { return (thread / 32) * 16 + half * 8 + (thread % 32) / 4; }

    __device__ __forceinline__ uint32 address(int chunk, int row, int bytes_in_row) const {
        return base + (chunk % Boxes) * kStoreBoxBytes + swizzled_offset(row, bytes_in_row / 16) + bytes_in_row % 16;
    }
    __device__ __forceinline__ void store_32(int chunk, int row, int bytes_in_row, uint32 value) const {
        ptx::store_shared_32(address(chunk, row, bytes_in_row), value);
    }
    __device__ __forceinline__ void store_64(int chunk, int row, int bytes_in_row, uint32 low, uint32 high) const {
        asm volatile("st.shared.v2.b32 [%0], {%1, %2};\n" ::"r"(address(chunk, row, bytes_in_row)), "r"(low), "r"(high)
                     : "memory");
    }

    // Before writing chunks [first, first + Boxes): the stores that read these boxes last are done
    // reading (thread 0 issued them, so thread 0 waits), and the whole warpgroup knows it.
    __device__ __forceinline__ void acquire(int barrier_id, int thread) const {
        if (thread == 0) bulk_wait_read();
        named_barrier(barrier_id, kWarpgroupThreads);
    }

    // After writing chunks [first, last): makes them visible to the copy engine, then thread 0
    // stores chunk c to columns (column0 + c * columns_per_chunk) of rows from `row0` of matrix `matrix`.
    __device__ __forceinline__ void store(int barrier_id, int thread, const TensorMap& map, int first, int last,
                                          int column0, int columns_per_chunk, int row0, int matrix) const {
        fence_proxy_async();
        named_barrier(barrier_id, kWarpgroupThreads);
        if (thread == 0) {
            for (int chunk = first; chunk < last; ++chunk)
                tma_store_3d(map, base + (chunk % Boxes) * kStoreBoxBytes, column0 + chunk * columns_per_chunk, row0,
                             matrix);
            bulk_commit();
        }
    }
};

}  // namespace moejit::sm90

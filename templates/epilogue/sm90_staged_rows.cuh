#pragma once
// The sm_90a forward and dX epilogue's staging: a consumer warpgroup turns its accumulator
// fragments into rows of global memory 128 bytes (64 16-bit columns) of each row at a time. The fragments go to
// this warpgroup's 64 staging rows, a named barrier, then every thread copies four 16-byte pieces
// to their global rows (which may scatter) with ordinary vector stores, and a second barrier frees
// the rows for the next chunk. One small buffer per warpgroup (9 KB) instead of a whole tile's rows
// (67 KB for 128x256) leaves room for a fourth ring stage next to 128x256 tiles; the stores are
// fire-and-forget, so nothing waits for them before the next tile's mainloop.
#include "common/ptx.cuh"
#include "mma/sm90_pipeline.cuh"

namespace moejit::sm90 {

constexpr int kStagingRows = 64;       // one consumer warpgroup's rows
constexpr int kStagingRowBytes = 128;  // per chunk
// 16 bytes of padding put the eight rows one warp's fragment store touches on different banks.
constexpr int kStagingPitch = kStagingRowBytes + 16;
constexpr int kStagingBytes = kStagingRows * kStagingPitch;  // per consumer warpgroup; the host mirrors it
constexpr int kPiecesPerRow = kStagingRowBytes / 16;
constexpr int kCopiesPerThread = kStagingRows * kPiecesPerRow / kWarpgroupThreads;

struct StagedRows {
    uint32 base;  // this warpgroup's staging rows

    // The staging row a fragment row lands in: thread `thread` of the warpgroup holds rows
    // 16 * warp + lane / 4 (half 0) and 8 further on (half 1) of its 64.
    __device__ static int fragment_row(int thread, int half) { return (thread / 32) * 16 + half * 8 + (thread % 32) / 4; }
    // Rows and the 16-byte piece of each that `thread` copies out.
    __device__ static int copy_row(int thread, int i) { return thread / kPiecesPerRow + i * (kWarpgroupThreads / kPiecesPerRow); }
    __device__ static int copy_piece(int thread) { return thread % kPiecesPerRow; }

    // Fragment store: `bytes_in_row` counts from the chunk's first column.
    __device__ __forceinline__ void store_32(int row, int bytes_in_row, uint32 value) const {
        ptx::store_shared_32(base + row * kStagingPitch + bytes_in_row, value);
    }

    // Waits for the fragments of the warpgroup (named barrier `barrier_id`), then copies chunk
    // `chunk` of each row (bytes [128 * chunk, 128 * chunk + 128) from destination[i] + skip_bytes)
    // where destination[i] is not null and this thread's piece lies in the first `row_bytes`, then
    // waits until every thread has read its pieces.
    __device__ __forceinline__ void copy_out(int barrier_id, unsigned char* const (&destination)[kCopiesPerThread],
                                             int chunk, int thread, int row_bytes, int skip_bytes = 0) const {
        named_barrier(barrier_id, kWarpgroupThreads);
        const int piece_bytes = copy_piece(thread) * 16;
        const int row_offset = chunk * kStagingRowBytes + piece_bytes;
#pragma unroll
        for (int i = 0; i < kCopiesPerThread; ++i) {
            if (destination[i] == nullptr || row_offset >= row_bytes) continue;
            uint32 v0, v1, v2, v3;
            asm volatile("ld.shared.v4.b32 {%0, %1, %2, %3}, [%4];\n"
                         : "=r"(v0), "=r"(v1), "=r"(v2), "=r"(v3)
                         : "r"(base + copy_row(thread, i) * kStagingPitch + piece_bytes));
            asm volatile("st.global.v4.b32 [%0], {%1, %2, %3, %4};\n"
                         ::"l"(destination[i] + skip_bytes + row_offset), "r"(v0), "r"(v1), "r"(v2), "r"(v3)
                         : "memory");
        }
        named_barrier(barrier_id, kWarpgroupThreads);
    }
};

}  // namespace moejit::sm90

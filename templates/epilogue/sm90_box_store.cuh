#pragma once
// The dW epilogue on sm_90a: a consumer warpgroup writes its 64 accumulator rows as 128-byte-
// swizzled [64 rows][128 bytes] boxes into shared memory (stmatrix for 16-bit output, eight bytes a
// store for fp32), and one thread hands each box to TMA, which writes it to global memory and clips
// the rows and columns past the expert's matrix. No thread waits for global memory during the
// tiles: the issuing thread waits, before a box buffer is rewritten, only until TMA has read it
// (and for the stores to complete once, before the block exits). That keeps the epilogue short,
// which matters in dW, where a tile holds as few as four slices of work; 16-bit results are stored
// from packed registers, a box at a time, while the next tile's wgmma run (the dW kernel).
#include "common/sm90_ptx.cuh"
#include "mma/sm90_pipeline.cuh"

namespace moejit::sm90 {

constexpr int kBoxStoreRows = 64;      // one consumer warpgroup's rows
constexpr int kBoxStoreRowBytes = 128;  // one swizzle period
constexpr int kBoxStoreBytes = kBoxStoreRows * kBoxStoreRowBytes;

// Out: the stored type (16-bit or float). TileN accumulator columns per row, `Buffers` boxes of
// shared memory (1024-byte aligned) at `base`, used in turn across boxes and tiles. With as many
// buffers as a tile's row has boxes, a tile's stores drain while the next tile's mainloop runs,
// and the consumers wait only if the previous tile's have not been read by then.
template <class Out, int TileN, int Buffers>
struct BoxStore {
    static constexpr int BoxCols = kBoxStoreRowBytes / sizeof(Out);
    static constexpr int Boxes = TileN / BoxCols;
    static_assert(Buffers == 1 || Buffers == 2 || Buffers == 4 || Buffers == 8, "");
    static_assert(Buffers <= Boxes, "no more buffers than boxes");

    uint32 base;
    int barrier_id;  // named barrier of this warpgroup
    int next = 0;    // the buffer the next box goes through

    // 16-bit output: the fragment converted, two columns a register, so that it can wait in half the
    // accumulators' registers while the next tile's wgmma run (see store_packed).
    static constexpr int PackedRegisters = TileN / 4;
    template <int Registers>
    __device__ __forceinline__ static void pack(const float (&accumulators)[Registers], uint32 (&packed)[PackedRegisters]) {
        static_assert(sizeof(Out) == 2 && Registers == TileN / 2, "m64 x TileN fp32 fragment, 16-bit output");
#pragma unroll
        for (int i = 0; i < PackedRegisters; ++i) packed[i] = pack2<Out>(accumulators[2 * i], accumulators[2 * i + 1]);
    }

    // A packed 16-bit fragment's columns [0, TileN) of this warpgroup's rows go to map coordinates
    // (col0 + column, row0 + row, matrix): boxes [first_box, end_box) of the row, except those
    // starting at or past `cols` (the same for every thread).
    __device__ __forceinline__ void store_packed(const uint32 (&packed)[PackedRegisters], const TensorMap& map,
                                                 int col0, int row0, int matrix, int cols, int thread,
                                                 int first_box = 0, int end_box = Boxes) {
        store_boxes(map, col0, row0, matrix, cols, thread, first_box, end_box,
                    [&](int box, uint32 buffer) { write_box_packed(packed, box, buffer, thread); });
    }

    // The same, every box, for an fp32 fragment (fp32 output, stored at the end of its tile).
    template <int Registers>
    __device__ __forceinline__ void store(const float (&accumulators)[Registers], const TensorMap& map, int col0,
                                          int row0, int matrix, int cols, int thread) {
        static_assert(sizeof(Out) == 4 && Registers == TileN / 2, "m64 x TileN fp32 fragment, fp32 output");
        store_boxes(map, col0, row0, matrix, cols, thread, 0, Boxes,
                    [&](int box, uint32 buffer) { write_box_fp32(accumulators, box, buffer, thread); });
    }

    // Before the block exits: the last stores of the issuing thread have completed.
    __device__ __forceinline__ void finish(int thread) const {
        if (thread == 0) bulk_wait_all();
    }

  private:
    template <class WriteBox>
    __device__ __forceinline__ void store_boxes(const TensorMap& map, int col0, int row0, int matrix, int cols,
                                                int thread, int first_box, int end_box, WriteBox&& write_box) {
#pragma unroll
        for (int box = 0; box < Boxes; ++box) {
            if (box < first_box || box >= end_box) continue;
            if (col0 + box * BoxCols >= cols) break;
            // The buffer is free: the store that last went through it, Buffers stores ago, has
            // been read (one bulk group a store).
            if (thread == 0) bulk_wait_read<Buffers - 1>();
            named_barrier(barrier_id, kWarpgroupThreads);
            const uint32 buffer = base + next * kBoxStoreBytes;
            next = next + 1 == Buffers ? 0 : next + 1;
            write_box(box, buffer);
            fence_proxy_async();  // the generic-proxy writes, before TMA reads them
            named_barrier(barrier_id, kWarpgroupThreads);
            if (thread == 0) {
                // dW is written once: evict-first, not to displace the dY and X rows in L2.
                tma_store_3d(map, buffer, col0 + box * BoxCols, row0, matrix, evict_first_policy());
                bulk_commit();
            }
        }
    }

    // Columns [box * BoxCols, box * BoxCols + BoxCols) into the box at `address`. The fragment of the
    // thread with lane l in warp w of the warpgroup holds rows 16w + l / 4 (+ 8) and columns
    // 8g + 2(l % 4) (+ 1) of each 8-column group g, as accumulator registers 4g .. 4g + 3 (packed:
    // 2g, 2g + 1).
    __device__ __forceinline__ static void write_box_packed(const uint32 (&packed)[PackedRegisters], int box,
                                                            uint32 address, int thread) {
        const int warp = thread / 32, lane = thread % 32;
        // stmatrix x4 over two column groups: matrices (rows 0-7 | 8-15) x (group g | g + 1).
        const int matrix = lane / 8;
        const int row = warp * 16 + (matrix % 2) * 8 + lane % 8;
#pragma unroll
        for (int pair = 0; pair < BoxCols / 16; ++pair) {
            const uint32* v = &packed[(box * BoxCols / 8 + pair * 2) * 2];
            stmatrix_x4(address + swizzled_offset(row, pair * 2 + matrix / 2), v[0], v[1], v[2], v[3]);
        }
    }

    template <int Registers>
    __device__ __forceinline__ static void write_box_fp32(const float (&accumulators)[Registers], int box,
                                                          uint32 address, int thread) {
        const int warp = thread / 32, lane = thread % 32;
#pragma unroll
        for (int group = 0; group < BoxCols / 8; ++group) {
            const float* v = &accumulators[(box * BoxCols / 8 + group) * 4];
            const int byte = group * 32 + (lane % 4) * 8;  // within the 128-byte row
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                const int row = warp * 16 + half * 8 + lane / 4;
                asm volatile("st.shared.v2.b32 [%0], {%1, %2};\n" ::"r"(address + swizzled_offset(row, byte / 16) +
                                                                      byte % 16),
                             "r"(__float_as_uint(v[half * 2])), "r"(__float_as_uint(v[half * 2 + 1]))
                             : "memory");
            }
        }
    }
};

}  // namespace moejit::sm90

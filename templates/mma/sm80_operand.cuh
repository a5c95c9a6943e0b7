#pragma once
// Shared-memory operand tiles of the sm_80 path, in the two layouts a grouped GEMM meets:
//
//   KMajor<Rows>:  [Rows][64]  one row per M (or N) index, the 64-wide reduction slice contiguous
//                  (X and W in the forward pass, dY in dX).
//   MNMajor<Cols>: [64][Cols]  one row per reduction index, M (or N) contiguous
//                  (W in dX; dY and X in dW, whose reduction runs over routed rows).
//
// Both swizzle 16-byte chunks by XOR with (row & 7), so that cp.async writes and the 8 row
// addresses of every ldmatrix phase hit distinct banks. Each loader gives each thread a fixed chunk
// column and a fixed set of rows; the caller supplies the global address of each row (or nullptr
// for rows outside the problem, which are zero-filled).
#include "common/ptx.cuh"

namespace moejit::sm80 {

constexpr int kSliceK = 64;  // reduction elements per pipeline stage

template <int RowBytes>
__device__ __forceinline__ uint32 swizzle(int row, int chunk) {
    return static_cast<uint32>(row * RowBytes + ((chunk ^ (row & 7)) << 4));
}

template <int Rows, int Threads>
struct KMajor {
    static constexpr int RowBytes = kSliceK * 2;
    static constexpr int Bytes = Rows * RowBytes;
    static constexpr int ChunksPerRow = RowBytes / 16;
    static constexpr int RowsPerPass = Threads / ChunksPerRow;
    static constexpr int Passes = Rows / RowsPerPass;
    static_assert(Rows % RowsPerPass == 0, "whole load passes");

    __device__ static int chunk() { return threadIdx.x % ChunksPerRow; }
    __device__ static int row(int pass) { return threadIdx.x / ChunksPerRow + pass * RowsPerPass; }

    // row_source[pass]: start of this thread's row `row(pass)` in global memory, or nullptr.
    template <class Element>
    __device__ static void load(uint32 tile, const Element* const (&row_source)[Passes], const Element* fallback,
                                int k_slice, int reduction_extent) {
        const int k = k_slice * kSliceK + chunk() * 8;
        const bool k_in_range = k < reduction_extent;
#pragma unroll
        for (int pass = 0; pass < Passes; ++pass) {
            const bool valid = k_in_range && row_source[pass] != nullptr;
            ptx::cp_async_16(tile + swizzle<RowBytes>(row(pass), chunk()), valid ? row_source[pass] + k : fallback, valid);
        }
    }

    // A fragment (16 rows x 16 k) at rows [row0, row0 + 16), k step `k_step` of the slice.
    __device__ static void fragment_a(uint32 (&a)[4], uint32 tile, int row0, int k_step) {
        const int lane = threadIdx.x % 32;
        ptx::ldmatrix_x4(a, tile + swizzle<RowBytes>(row0 + lane % 16, 2 * k_step + lane / 16));
    }
    // B fragments of two n8 blocks (16 rows of N) x 16 k: b[0] for rows row0.., b[1] for row0+8..
    __device__ static void fragment_b_pair(uint32 (&b)[2][2], uint32 tile, int row0, int k_step) {
        const int lane = threadIdx.x % 32;
        uint32 r[4];
        ptx::ldmatrix_x4(r, tile + swizzle<RowBytes>(row0 + lane % 8 + (lane / 16) * 8, 2 * k_step + (lane / 8) % 2));
        b[0][0] = r[0];
        b[0][1] = r[1];
        b[1][0] = r[2];
        b[1][1] = r[3];
    }
};

template <int Cols, int Threads>
struct MNMajor {
    static constexpr int RowBytes = Cols * 2;
    static constexpr int Bytes = kSliceK * RowBytes;
    static constexpr int ChunksPerRow = RowBytes / 16;
    static constexpr int RowsPerPass = Threads / ChunksPerRow;
    static constexpr int Passes = kSliceK / RowsPerPass;
    static_assert(Cols >= 64 && Threads % ChunksPerRow == 0 && kSliceK % RowsPerPass == 0, "whole load passes");

    __device__ static int chunk() { return threadIdx.x % ChunksPerRow; }
    __device__ static int row(int pass) { return threadIdx.x / ChunksPerRow + pass * RowsPerPass; }

    // row_source[pass]: the element at column 0 of this tile in reduction row `row(pass)`, or nullptr;
    // columns at or past `cols_left` are zero-filled.
    template <class Element>
    __device__ static void load(uint32 tile, const Element* const (&row_source)[Passes], const Element* fallback,
                                int cols_left) {
        const int col = chunk() * 8;
#pragma unroll
        for (int pass = 0; pass < Passes; ++pass) {
            const bool valid = col < cols_left && row_source[pass] != nullptr;
            ptx::cp_async_16(tile + swizzle<RowBytes>(row(pass), chunk()), valid ? row_source[pass] + col : fallback,
                             valid);
        }
    }

    // A fragment (16 M x 16 k) from the [k][M] tile, M columns [col0, col0 + 16).
    __device__ static void fragment_a(uint32 (&a)[4], uint32 tile, int col0, int k_step) {
        const int lane = threadIdx.x % 32;
        ptx::ldmatrix_x4_trans(
            a, tile + swizzle<RowBytes>(k_step * 16 + lane % 8 + (lane / 16) * 8, (col0 + ((lane / 8) % 2) * 8) / 8));
    }
    // B fragments of two n8 blocks from the [k][N] tile, N columns [col0, col0 + 16).
    __device__ static void fragment_b_pair(uint32 (&b)[2][2], uint32 tile, int col0, int k_step) {
        const int lane = threadIdx.x % 32;
        uint32 r[4];
        ptx::ldmatrix_x4_trans(
            r, tile + swizzle<RowBytes>(k_step * 16 + lane % 8 + ((lane / 8) % 2) * 8, (col0 + (lane / 16) * 8) / 8));
        b[0][0] = r[0];
        b[0][1] = r[1];
        b[1][0] = r[2];
        b[1][1] = r[3];
    }
};

// One warp's share of a 64-deep slice: Accumulators [FragmentsM][FragmentsN][4] += A x B.
template <class Element, class TileA, class TileB, int FragmentsM, int FragmentsN>
__device__ __forceinline__ void warp_mma_slice(float (&accumulators)[FragmentsM][FragmentsN][4], uint32 sA, uint32 sB,
                                               int warp_row0, int warp_col0) {
#pragma unroll
    for (int k_step = 0; k_step < kSliceK / 16; ++k_step) {
        uint32 rA[FragmentsM][4];
        uint32 rB[FragmentsN][2];
#pragma unroll
        for (int i = 0; i < FragmentsM; ++i) TileA::fragment_a(rA[i], sA, warp_row0 + i * 16, k_step);
#pragma unroll
        for (int j = 0; j < FragmentsN; j += 2)
            TileB::fragment_b_pair(*reinterpret_cast<uint32(*)[2][2]>(&rB[j]), sB, warp_col0 + j * 8, k_step);
#pragma unroll
        for (int i = 0; i < FragmentsM; ++i)
#pragma unroll
            for (int j = 0; j < FragmentsN; ++j) ptx::mma_16x8x16<Element>(accumulators[i][j], rA[i], rB[j]);
    }
}

}  // namespace moejit::sm80

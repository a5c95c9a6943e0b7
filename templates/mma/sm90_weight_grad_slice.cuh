#pragma once
// One slice of a dW operand as the producer warpgroup loads it: SliceK routed rows of one expert,
// as 64-column boxes (dY [SliceK][TileM columns from n0], X [SliceK][TileN columns from k0]).
// Used by kernels/sm90_grouped_gemm_dw.cuh.
//
// A slice comes by TMA where its rows are whole and direct. One whose rows are indirect
// (permute_y for dY, permute_x for X) or that runs past the expert's last row is gathered with
// cp.async instead, with zeros for the rows past the end, since TMA cannot stop at an expert boundary.
#include "common/arguments.cuh"
#include "mma/sm90_pipeline.cuh"

namespace moejit::sm90 {

template <class Element, int Flags, int Topk, int SliceK>
struct WeightGradSlice {
    const GroupedGemmArguments& args;
    int row_begin;    // the expert's first routed row
    int expert_rows;  // its rows
    int slice_row;    // the slice's first row within the expert
    int thread;       // within the producer warpgroup

    static constexpr int RowsPerThread = SliceK / 16;

    // All SliceK rows exist (within the expert and the routed rows the tensor maps cover).
    __device__ __forceinline__ bool whole() const {
        return slice_row + SliceK <= expert_rows && static_cast<int64>(row_begin) + slice_row + SliceK <= args.rows;
    }
    // Whether TMA loads the dY side (x_side false) or the X side.
    __device__ __forceinline__ bool by_tma(bool x_side) const {
        return whole() && !(Flags & (x_side ? kPermuteX : kPermuteY));
    }

    // This thread's share (Plan, a GatherPlan over the slice's boxes) of the slice's columns from
    // col0 of `matrix` (rows `pitch` long), into 128-byte-swizzled [SliceK][64] boxes at `destination`.
    template <class Plan>
    __device__ __forceinline__ void gather(uint32 destination, const Element* matrix, int pitch, int col0,
                                           bool x_side) const {
        // This thread's slice rows (t/8 + 16q): source rows, or -1 past the expert's end.
        int64 source[RowsPerThread];
#pragma unroll
        for (int q = 0; q < RowsPerThread; ++q) {
            const int row = slice_row + thread / 8 + 16 * q;
            const int64 routed = static_cast<int64>(row_begin) + row;
            const bool valid = row < expert_rows && routed < args.rows;
            source[q] = !valid                             ? -1
                        : (x_side && (Flags & kPermuteX))  ? token_row<Topk>(args, routed)
                        : (!x_side && (Flags & kPermuteY)) ? slot_row(args, routed)
                                                           : routed;
        }
#pragma unroll
        for (int i = 0; i < Plan::Copies; ++i) {
            const int col = col0 + Plan::box(thread, i) * 64 + (thread % 8) * 8;
            const int64 row = source[i % RowsPerThread];  // GatherPlan: row t/8 + 16i mod SliceK
            const bool valid = row >= 0 && col < pitch;
            ptx::cp_async_16(destination + Plan::offset(thread, i), valid ? matrix + row * pitch + col : matrix, valid);
        }
    }
};

}  // namespace moejit::sm90

#pragma once
// TMA tensor maps for the Hopper kernels: a row-major matrix (or a stack of them) seen as 64-wide,
// 128-byte-swizzled boxes, exactly the layout the templates' wgmma descriptors expect.
#include <moejit/problem.hpp>

#include "codegen/config.hpp"

#include <cuda.h>

#include <cstdint>

namespace moejit {

// `rows` rows of `cols` 16-bit elements, `cols` contiguous; boxes of box_rows x 64 elements.
// Rows and columns past the end read as zeros.
CUtensorMap matrix_tensor_map(DType dtype, CUdeviceptr base, int64_t cols, int64_t rows, int box_rows);

// `count` stacked [rows][cols] matrices (the experts' weights [E][N][K]): a 3-D map whose reads
// past `rows` are zeros instead of the next matrix.
CUtensorMap stacked_tensor_map(DType dtype, CUdeviceptr base, int64_t cols, int64_t rows, int64_t count, int box_rows);

// The dW output [count][rows][cols] (bf16, fp16, or fp32 where `fp32`) as the dW epilogue stores
// it (epilogue/sm90_box_store.cuh): [64 rows][128 bytes] boxes; writes past `rows` or `cols` are dropped.
CUtensorMap weight_gradient_tensor_map(DType dtype, bool fp32, CUdeviceptr base, int64_t cols, int64_t rows,
                                       int64_t count);

// The tensor maps of a Hopper grouped-GEMM kernel (templates/kernels/sm90_*.cuh) for a call with A
// at `a`, B at `b`, the output at `c` and `rows` routed rows: the two operands, and for dW the
// output. Operands the kernel gathers row by row with cp.async, and the row-grouped passes'
// output, get no map (an all-zero one that is never read).
struct HopperTensorMaps {
    CUtensorMap a{};
    CUtensorMap b{};
    CUtensorMap c{};
};
HopperTensorMaps hopper_tensor_maps(const Problem& problem, const Config& config, CUdeviceptr a, CUdeviceptr b,
                                    CUdeviceptr c, int64_t rows);

}  // namespace moejit

#pragma once
// TMA tensor maps for the Hopper kernels: a row-major matrix (or a stack of them) seen as 64-wide,
// 128-byte-swizzled boxes, exactly the layout the templates' wgmma descriptors expect.
#include <moejit/problem.hpp>

#include <cuda.h>

#include <cstdint>

namespace moejit {

// `rows` rows of `cols` 16-bit elements, `cols` contiguous; boxes of box_rows x 64 elements.
// Rows and columns past the end read as zeros.
CUtensorMap matrix_tensor_map(DType dtype, CUdeviceptr base, int64_t cols, int64_t rows, int box_rows);

// `count` stacked [rows][cols] matrices (the experts' weights [E][N][K]): a 3-D map whose reads
// past `rows` are zeros instead of the next matrix.
CUtensorMap stacked_tensor_map(DType dtype, CUdeviceptr base, int64_t cols, int64_t rows, int64_t count, int box_rows);

}  // namespace moejit

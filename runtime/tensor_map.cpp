#include "runtime/tensor_map.hpp"

#include "runtime/driver.hpp"

#include <moejit/error.hpp>

#include <algorithm>

namespace moejit {

namespace {

CUtensorMapDataType map_type(DType dtype) {
    return dtype == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
}

CUtensorMap encode(CUtensorMapDataType type, CUdeviceptr base, cuuint32_t rank, const cuuint64_t* dims,
                   const cuuint64_t* strides, const cuuint32_t* box) {
    if (base % 16 != 0) throw Error("TMA needs 16-byte aligned tensors (got address " + std::to_string(base) + ")");
    CUtensorMap map;
    const cuuint32_t element_strides[3] = {1, 1, 1};
    check_cuda(driver().cuTensorMapEncodeTiled(
                   &map, type, rank, reinterpret_cast<void*>(base), dims, strides, box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                   CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
               "cuTensorMapEncodeTiled");
    return map;
}

// `count` stacked [rows][cols] matrices of `element_bytes` elements in 128-byte-wide boxes of
// `box_rows` rows: a 3-D map, so that nothing past `rows` belongs to the next matrix.
CUtensorMap stacked(CUtensorMapDataType type, cuuint64_t element_bytes, CUdeviceptr base, int64_t cols, int64_t rows,
                    int64_t count, int box_rows) {
    const cuuint64_t dims[3] = {cuuint64_t(cols), cuuint64_t(rows), cuuint64_t(count)};
    const cuuint64_t strides[2] = {cuuint64_t(cols) * element_bytes, cuuint64_t(cols) * rows * element_bytes};
    const cuuint32_t box[3] = {cuuint32_t(128 / element_bytes), cuuint32_t(box_rows), 1};
    return encode(type, base, 3, dims, strides, box);
}

}  // namespace

CUtensorMap matrix_tensor_map(DType dtype, CUdeviceptr base, int64_t cols, int64_t rows, int box_rows) {
    // An empty matrix still needs a valid map; nothing reads it.
    const cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(std::max<int64_t>(rows, 1))};
    const cuuint64_t strides[1] = {cuuint64_t(cols) * 2};
    const cuuint32_t box[2] = {64, cuuint32_t(box_rows)};
    return encode(map_type(dtype), base, 2, dims, strides, box);
}

CUtensorMap stacked_tensor_map(DType dtype, CUdeviceptr base, int64_t cols, int64_t rows, int64_t count, int box_rows) {
    return stacked(map_type(dtype), 2, base, cols, rows, count, box_rows);
}

CUtensorMap weight_gradient_tensor_map(DType dtype, bool fp32, CUdeviceptr base, int64_t cols, int64_t rows,
                                       int64_t count) {
    return fp32 ? stacked(CU_TENSOR_MAP_DATA_TYPE_FLOAT32, 4, base, cols, rows, count, 64)
                : stacked(map_type(dtype), 2, base, cols, rows, count, 64);
}

HopperTensorMaps hopper_tensor_maps(const Problem& p, const Config& config, CUdeviceptr a, CUdeviceptr b,
                                    CUdeviceptr c, int64_t rows) {
    HopperTensorMaps maps;
    // Swapped operands (kernels/sm90_grouped_gemm_swap_ab.cuh): A in boxes of half a tile's rows.
    const int a_box_rows = config.swap_ab ? config.tile_m / 2 : config.tile_m;
    switch (p.op) {
        case Op::fwd:  // A = X [M, K] by m tiles; B = W [E][N][K] by n tiles (two half boxes when gated)
            if (!p.permute_x) maps.a = matrix_tensor_map(p.dtype, a, p.k, rows, a_box_rows);
            // Half-tile boxes when gated (gate rows, up rows) or when a CTA pair multicasts halves.
            maps.b = stacked_tensor_map(p.dtype, b, p.k, p.n, p.experts,
                                        p.gated || config.cluster > 1 ? config.tile_n / 2 : config.tile_n);
            break;
        case Op::dx:  // A = dY [M, N] by m tiles; B = W [E][N][K] as [64 n][64 k] boxes
            if (!p.permute_y) maps.a = matrix_tensor_map(p.dtype, a, p.n, rows, a_box_rows);
            maps.b = stacked_tensor_map(p.dtype, b, p.k, p.n, p.experts, 64);
            break;
        default:  // dW: A = dY [M, N], B = X [M, K], both as [slice_k rows][64 columns] boxes; C = dW [E][N][K]
            if (!p.permute_y) maps.a = matrix_tensor_map(p.dtype, a, p.n, rows, config.slice_k);
            if (!p.permute_x) maps.b = matrix_tensor_map(p.dtype, b, p.k, rows, config.slice_k);
            maps.c = weight_gradient_tensor_map(p.dtype, p.out_fp32, c, p.k, p.n, p.experts);
            break;
    }
    return maps;
}

}  // namespace moejit

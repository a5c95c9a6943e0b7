#pragma once
// Backward of the weighted top-k combine (templates/kernels/combine_backward.cuh), for the MoE blocks.
#include <moejit/problem.hpp>

#include <cuda.h>

namespace moejit {

// grad_out [T, width], y [M, width] slot order (unscaled), gather_idx [M], weights [M] slot order
// -> grad_y [M, width] expert order (= weight * grad_out of the row's token), grad_weights [M] slot order.
void combine_backward(DType dtype, int64_t width, int topk, CUdeviceptr grad_out, CUdeviceptr y,
                      CUdeviceptr gather_idx, CUdeviceptr weights, CUdeviceptr grad_y, CUdeviceptr grad_weights,
                      int64_t rows, CUstream stream);

}  // namespace moejit

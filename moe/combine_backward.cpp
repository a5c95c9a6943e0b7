#include "moe/combine_backward.hpp"

#include <moejit/error.hpp>

#include "codegen/kernel_problems.hpp"
#include "moe/elementwise_kernel.hpp"
#include "moe/pointer_checks.hpp"
#include "moe/row_limits.hpp"
#include "runtime/device.hpp"
#include "runtime/launch_arguments.hpp"

#include <algorithm>

namespace moejit {

void combine_backward(DType dtype, int64_t width, int topk, CUdeviceptr grad_out, CUdeviceptr y,
                      CUdeviceptr gather_idx, CUdeviceptr weights, CUdeviceptr grad_y, CUdeviceptr grad_weights,
                      int64_t rows, CUstream stream) {
    Problem problem = combine_backward_problem(dtype, width, topk);
    // Arguments first: a bad one is reported as such, also where there is no GPU.
    problem.validate();
    const auto spec = [&] { return to_spec(problem); };
    check_pointer(grad_out, 16, spec, "grad_out");
    check_pointer(y, 16, spec, "y");
    check_pointer(gather_idx, 4, spec, "gather_idx");
    check_pointer(weights, 4, spec, "weights");
    check_pointer(grad_y, 16, spec, "grad_y");
    check_pointer(grad_weights, 4, spec, "grad_weights");
    // gather_idx holds int32 slot rows.
    if (rows < 0 || rows > kMaxRows) throw Error(spec() + ": rows must be in [0, 2^31), got " + std::to_string(rows));
    const DeviceInfo& device = current_device();
    auto kernel = elementwise_kernel(problem, device);
    if (rows == 0) return;
    CombineBackwardArguments arguments{reinterpret_cast<const void*>(grad_out),  reinterpret_cast<const void*>(y),
                                       reinterpret_cast<const int*>(gather_idx), reinterpret_cast<const float*>(weights),
                                       reinterpret_cast<void*>(grad_y),          reinterpret_cast<float*>(grad_weights),
                                       rows};
    void* parameters[] = {&arguments};
    // One warp per routed row, 8 warps per block.
    const unsigned grid = static_cast<unsigned>(std::clamp<int64_t>((rows + 7) / 8, 1, int64_t(device.sm_count) * 16));
    kernel->launch(grid, stream, parameters);
}

}  // namespace moejit

#pragma once
// The kernels that are not GEMMs (combine, gated backward, routing, permutes, the routing check)
// have no tiling to choose: one function finds each on the current device.
#include <memory>
#include <utility>

#include <moejit/problem.hpp>

#include "codegen/config.hpp"
#include "runtime/device.hpp"
#include "runtime/module.hpp"

namespace moejit {

// The kernel of `problem` (an elementwise op) for `device`: JIT-compiled at its first use, then
// from the runtime's caches. Validates the problem for the device's arch.
std::shared_ptr<const Kernel> elementwise_kernel(Problem problem, const DeviceInfo& device);
// What elementwise_kernel loads: the problem on the device's arch (validated), and its tiling.
std::pair<Problem, Config> elementwise_key(Problem problem, const DeviceInfo& device);

}  // namespace moejit

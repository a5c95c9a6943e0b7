#include <moejit/error.hpp>
#include <moejit/prepare.hpp>

#include "codegen/config.hpp"
#include "moe/check_routing.hpp"
#include "moe/elementwise_kernel.hpp"
#include "moe/model_kernels.hpp"
#include "moe/row_limits.hpp"
#include "moe/tuning.hpp"
#include "runtime/device.hpp"
#include "runtime/runtime.hpp"

#include <utility>

namespace moejit {

void prepare_kernels(const std::vector<Problem>& kernels, int64_t tokens, unsigned jobs) {
    if (tokens <= 0 || tokens > kMaxRows)
        throw Error("prepare_kernels: tokens must be in [1, 2^31), got " + std::to_string(tokens));
    // A bad problem is reported as such, also where there is no GPU (the device's arch replaces theirs).
    for (Problem problem : kernels) {
        problem.arch = Arch{};
        problem.validate();
    }
    const DeviceInfo& device = current_device();
    // The tilings the calls pick (GroupedGemm for the GEMMs, elementwise_kernel for the others), so
    // that each compile here is the one a call would start. A kernel listed twice compiles once.
    std::vector<std::pair<Problem, Config>> work;
    for (Problem problem : kernels) {
        if (problem.op == Op::check_routing && !routing_checks_enabled()) continue;
        if (is_elementwise(problem.op)) {
            work.push_back(elementwise_key(problem, device));
            continue;
        }
        problem.arch = device.arch;
        problem.validate();
        const Config config = select_config(problem, layer_rows_bucket(problem, tokens), device);
        check_config(problem, config);
        work.emplace_back(problem, config);
    }
    Runtime::instance().preload(work, jobs);
}

}  // namespace moejit

#include <moejit/error.hpp>
#include <moejit/prepare.hpp>

#include "codegen/config.hpp"
#include "moe/check_routing.hpp"
#include "moe/model_kernels.hpp"
#include "moe/row_limits.hpp"
#include "moe/tuning.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"
#include "runtime/parallel.hpp"
#include "runtime/runtime.hpp"

#include <algorithm>
#include <utility>

namespace moejit {

void prepare_kernels(const std::vector<Problem>& kernels, int64_t tokens, unsigned jobs) {
    if (tokens <= 0 || tokens > kMaxRows)
        throw Error("prepare_kernels: tokens must be in [1, 2^31), got " + std::to_string(tokens));
    const DeviceInfo& device = current_device();
    // The tilings the calls pick (GroupedGemm for the GEMMs, elementwise_kernel for the others), so
    // that each compile here is the one a call would start.
    std::vector<std::pair<Problem, Config>> work;
    for (Problem problem : kernels) {
        problem.arch = device.arch;
        problem.validate();
        if (problem.op == Op::check_routing && !routing_checks_enabled()) continue;
        Config config;
        if (is_elementwise(problem.op)) {
            config = choose_config(problem);
        } else {
            config = select_config(problem, layer_rows_bucket(problem, tokens), device);
            check_config(problem, config);
        }
        const bool seen = std::any_of(work.begin(), work.end(), [&](const auto& job) {
            return job.first == problem && job.second == config;
        });
        if (!seen) work.emplace_back(problem, config);
    }
    // Each helper thread works in the caller's context, where the kernels are to be loaded.
    run_in_parallel(work.size(), jobs, [&](size_t i) {
        check_cuda(driver().cuCtxSetCurrent(device.context), "cuCtxSetCurrent");
        Runtime::instance().kernel(work[i].first, work[i].second);
    });
}

}  // namespace moejit

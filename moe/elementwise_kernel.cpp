#include "moe/elementwise_kernel.hpp"

#include "codegen/config.hpp"
#include "runtime/runtime.hpp"

namespace moejit {

std::pair<Problem, Config> elementwise_key(Problem problem, const DeviceInfo& device) {
    problem.arch = device.arch;
    problem.validate();
    return {problem, choose_config(problem)};
}

std::shared_ptr<const Kernel> elementwise_kernel(Problem problem, const DeviceInfo& device) {
    const auto [keyed, config] = elementwise_key(std::move(problem), device);
    return Runtime::instance().kernel(keyed, config);
}

}  // namespace moejit

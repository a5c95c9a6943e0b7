#include "moe/elementwise_kernel.hpp"

#include "codegen/config.hpp"
#include "runtime/runtime.hpp"

namespace moejit {

std::shared_ptr<const Kernel> elementwise_kernel(Problem problem, const DeviceInfo& device) {
    problem.arch = device.arch;
    problem.validate();
    return Runtime::instance().kernel(problem, choose_config(problem));
}

}  // namespace moejit

#include "runtime/runtime.hpp"

#include "runtime/device.hpp"
#include "runtime/driver.hpp"
#include "runtime/environment.hpp"
#include "runtime/parallel.hpp"

namespace moejit {

bool launches_dependent(const Arch& arch) {
    static const bool enabled = env::flag("MOEJIT_DEPENDENT_LAUNCH", true, true);
    return arch.sm() >= 90 && enabled;
}

Runtime& Runtime::instance() {
    static Runtime runtime;
    return runtime;
}

Runtime::Runtime() : compiler_(DiskCache::from_environment()) {}

std::shared_ptr<const Kernel> Runtime::kernel(const Problem& problem, const Config& config) {
    const DeviceInfo& device = current_device();
    const std::string key = std::to_string(reinterpret_cast<uintptr_t>(device.context)) + "|" + to_spec(problem) +
                            "|" + config.to_string();
    // Kernels of different keys compile at once on different threads: the Compiler and its
    // DiskCache are thread-safe (the disk cache is made for concurrent processes already).
    return loaded_.get_or_make(key, [&] {
        const Binary binary = compiler_.get(problem, config);
        auto module = std::make_shared<const Module>(binary.cubin);
        return std::make_shared<const Kernel>(module, binary.kernel_name, config.threads(),
                                              dynamic_shared_bytes(problem, config), config.cluster,
                                              launches_dependent(problem.arch));
    });
}

void Runtime::preload(const std::vector<std::pair<Problem, Config>>& kernels, unsigned jobs) {
    const CUcontext context = current_device().context;
    run_in_parallel(kernels.size(), jobs, [&](size_t i) {
        // Each helper thread works in the caller's context, where the kernels are to be loaded.
        check_cuda(driver().cuCtxSetCurrent(context), "cuCtxSetCurrent");
        kernel(kernels[i].first, kernels[i].second);
    });
}

}  // namespace moejit

#pragma once
// The process-wide JIT: memory cache -> disk cache -> NVRTC, then loaded into the current context.
#include <moejit/problem.hpp>

#include "cache/memory_cache.hpp"
#include "codegen/config.hpp"
#include "runtime/compiler.hpp"
#include "runtime/module.hpp"

#include <memory>
#include <utility>
#include <vector>

namespace moejit {

// Whether kernels built for `arch` are launched with programmatic stream serialization, that is
// as the kernel before them in the stream ends rather than after its completion is processed.
// Kernels built for sm_90 and later wait for that kernel themselves
// (templates/common/dependent_launch.cuh). MOEJIT_DEPENDENT_LAUNCH=0 (read once per process)
// launches them in plain stream order, for comparison and debugging.
bool launches_dependent(const Arch& arch);

class Runtime {
public:
    static Runtime& instance();

    // The kernel for (problem, config) in the current context; compiles or reads the disk cache once.
    std::shared_ptr<const Kernel> kernel(const Problem& problem, const Config& config);
    // kernel() for each of `kernels`, up to `jobs` at once (0: default_jobs), so that later calls
    // find them loaded. Throws the first failure by position, after the others finished.
    void preload(const std::vector<std::pair<Problem, Config>>& kernels, unsigned jobs);

    Compiler& compiler() { return compiler_; }

private:
    Runtime();
    Compiler compiler_;
    MemoryCache loaded_;
};

}  // namespace moejit

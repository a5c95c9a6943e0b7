#pragma once
// The GPU the calling thread works on, and the limits heuristics and launches need.
#include <moejit/problem.hpp>

#include <cuda.h>

#include <string>

namespace moejit {

struct DeviceInfo {
    int ordinal = 0;
    CUdevice device = 0;
    CUcontext context = nullptr;
    Arch arch;
    int sm_count = 0;
    std::string name;
};

// Uses the caller's current context if there is one (so moejit shares PyTorch's), else makes
// device 0's primary context current. Throws moejit::Error with no driver, no GPU, or an arch
// moejit has no kernels for.
const DeviceInfo& current_device();

}  // namespace moejit

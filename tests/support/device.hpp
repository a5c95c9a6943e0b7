#pragma once
// Device memory and streams for GPU tests and benchmarks, through the library's driver table.
#include "runtime/device.hpp"
#include "runtime/device_buffer.hpp"
#include "runtime/driver.hpp"

#include <cstdint>
#include <vector>

namespace moejit::testing {

using moejit::DeviceBuffer;

inline void synchronize() { check_cuda(driver().cuCtxSynchronize(), "cuCtxSynchronize"); }

}  // namespace moejit::testing

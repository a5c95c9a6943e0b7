#pragma once
// Tuned tilings: the winner of timing every candidate Config, stored per (Problem, rows bucket,
// device, library version) as a small text file in the cache directory, <root>/tuning/<key>.config,
// and preferred over the heuristic by every later GroupedGemm on that device.
#include <moejit/problem.hpp>

#include "codegen/config.hpp"
#include "runtime/device.hpp"

#include <optional>
#include <string>

namespace moejit {

// The stored winner for this problem and bucket on this device, if any (and still valid).
std::optional<Config> tuned_config(const Problem& problem, RowsBucket bucket, const DeviceInfo& device);

// Writes the winner (temp file + rename); returns the file's path, or "" with one warning per process
// when there is no cache directory (neither MOEJIT_CACHE_DIR, XDG_CACHE_HOME nor HOME). Throws
// moejit::Error on I/O failure.
std::string store_tuned_config(const Problem& problem, RowsBucket bucket, const DeviceInfo& device,
                               const Config& config);

// The kernel path MOEJIT_KERNEL_PATH asks for: hopper (the fastest available) when unset or
// "auto", portable for "portable" (any case); throws moejit::Error on any other value. Every place that picks
// a tiling (the library, the CLI) goes through this.
KernelPath preferred_path();

// tuned_config, else the heuristic's choose_config. MOEJIT_KERNEL_PATH=portable keeps every
// grouped GEMM on the portable kernels (for comparison and debugging); unset or "auto": fastest.
Config select_config(const Problem& problem, RowsBucket bucket, const DeviceInfo& device);

}  // namespace moejit

#pragma once
// The cache key: an XXH3-128 over every byte NVRTC sees plus what else changes its output.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "cache/hash.hpp"

namespace moejit {

// Bump when the key recipe or the on-disk entry layout changes: old entries then simply miss.
constexpr uint32_t kCacheFormatVersion = 1;

struct KeyInputs {
    std::string source;                                         // the generated translation unit
    std::vector<std::pair<std::string, std::string>> headers;  // every embedded header: name, contents
    std::vector<std::string> options;                           // NVRTC options
    std::string arch;                                           // e.g. "sm_90a" (the 'a' suffix is part of it)
    int nvrtc_major = 0, nvrtc_minor = 0;
};

// Trims surrounding whitespace from each option, drops empty ones, sorts and removes duplicates,
// so that option lists that mean the same to us hash the same.
std::vector<std::string> normalize_options(std::vector<std::string> options);

// XXH3-128 over: the domain tag "moejit-cache-key", kCacheFormatVersion, the NVRTC version, arch,
// the normalized options (count, then each), the source, and the headers sorted by name (count,
// then name and contents of each). Every field is length-prefixed. No file paths go in.
Hash128 make_key(const KeyInputs& inputs);

}  // namespace moejit

#pragma once
// Which moejit this is. Kernel cache entries are keyed by the NVRTC version and the cache format;
// tuned tilings also by the library version (and every template byte).

namespace moejit {

// The project version, "0.1.0".
const char* library_version();

}  // namespace moejit

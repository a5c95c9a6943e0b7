#pragma once
// The most routed rows (M = tokens * topk) any call takes. m_sizes, gather_idx and scatter_idx are
// int32 on the device, so every row index, and M itself, must fit in an int32.
#include <cstdint>
#include <limits>

namespace moejit {

constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max();  // 2^31 - 1

}  // namespace moejit

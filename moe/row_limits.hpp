#pragma once
// The most routed rows (M = tokens * topk) any call takes. m_sizes, gather_idx and scatter_idx are
// int32 on the device, so every row index, and M itself, must fit in an int32.
#include <cstdint>
#include <limits>

namespace moejit {

constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max();  // 2^31 - 1

// Whether `tokens` tokens, each routed to `topk` experts (topk >= 1), make at most kMaxRows rows;
// no negative count does. Without the multiplication, which could overflow.
constexpr bool routed_rows_fit(int64_t tokens, int topk) { return tokens >= 0 && tokens <= kMaxRows / topk; }

}  // namespace moejit

#pragma once
// Device workspace of the MoE blocks: offsets planned once, memory owned or borrowed.
#include <moejit/error.hpp>

#include "moe/row_limits.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

namespace moejit {

// The blocks plan their workspace for max_tokens tokens, max_tokens * topk routed rows: each a
// positive count the routing kernels can index (at most kMaxRows).
inline void check_max_tokens(int64_t max_tokens, int topk, const char* block) {
    if (max_tokens <= 0 || !routed_rows_fit(max_tokens, topk))
        throw Error(std::string(block) + ": max_tokens must be positive and max_tokens * topk below 2^31, got " +
                    std::to_string(max_tokens));
}

// Hands out 256-byte aligned offsets, each for a buffer of the product of `factors` bytes. A
// size past 2^64 (dimensions no device holds) throws rather than wrapping to a small workspace
// that the blocks would then write past.
class WorkspaceLayout {
public:
    explicit WorkspaceLayout(const char* block) : block_(block) {}

    template <class... Factors>
    size_t take(Factors... factors) {
        size_t bytes = 1;
        const bool overflow = (... || __builtin_mul_overflow(bytes, size_t(factors), &bytes)) ||
                              __builtin_add_overflow(bytes, size_t(255), &bytes) ||
                              __builtin_add_overflow(size_, bytes / 256 * 256, &bytes);
        if (overflow)
            throw Error(std::string(block_) +
                        ": the workspace size overflows 64 bits (dimensions or max_tokens too large)");
        const size_t at = size_;
        size_ = bytes;
        return at;
    }
    size_t size() const { return size_; }

private:
    const char* block_;
    size_t size_ = 0;
};

class DeviceWorkspace {
public:
    // Borrows `external` when non-zero (it must be 256-byte aligned), else allocates `bytes`.
    DeviceWorkspace(size_t bytes, CUdeviceptr external) : pointer_(external), owned_(external == 0) {
        if (external % 256 != 0) throw Error("workspace must be 256-byte aligned");
        if (owned_) {
            current_device();
            check_cuda(driver().cuMemAlloc(&pointer_, bytes ? bytes : 256), "cuMemAlloc (MoE block workspace)");
        }
    }
    ~DeviceWorkspace() {
        if (owned_ && pointer_) driver().cuMemFree(pointer_);
    }
    DeviceWorkspace(const DeviceWorkspace&) = delete;
    DeviceWorkspace& operator=(const DeviceWorkspace&) = delete;

    CUdeviceptr pointer() const { return pointer_; }

private:
    CUdeviceptr pointer_ = 0;
    bool owned_ = false;
};

}  // namespace moejit

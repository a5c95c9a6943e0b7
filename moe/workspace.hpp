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
    if (max_tokens <= 0 || max_tokens > kMaxRows / topk)
        throw Error(std::string(block) + ": max_tokens must be positive and max_tokens * topk below 2^31, got " +
                    std::to_string(max_tokens));
}

// Hands out 256-byte aligned offsets.
class WorkspaceLayout {
public:
    size_t take(size_t bytes) {
        const size_t at = size_;
        size_ += (bytes + 255) / 256 * 256;
        return at;
    }
    size_t size() const { return size_; }

private:
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

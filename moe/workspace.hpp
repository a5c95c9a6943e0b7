#pragma once
// Device workspace of the MoE blocks: offsets planned once, memory owned or borrowed.
#include <moejit/error.hpp>

#include "runtime/device.hpp"
#include "runtime/driver.hpp"

#include <cstddef>

namespace moejit {

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

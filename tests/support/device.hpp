#pragma once
// Device memory and streams for GPU tests and benchmarks, through the library's driver table.
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

#include <cstdint>
#include <vector>

namespace moejit::testing {

class DeviceBuffer {
public:
    DeviceBuffer() = default;
    explicit DeviceBuffer(size_t bytes) : bytes_(bytes) {
        current_device();
        if (bytes > 0) check_cuda(driver().cuMemAlloc(&pointer_, bytes), "cuMemAlloc");
    }
    ~DeviceBuffer() {
        if (pointer_) driver().cuMemFree(pointer_);
    }
    DeviceBuffer(DeviceBuffer&& other) noexcept : pointer_(other.pointer_), bytes_(other.bytes_) { other.pointer_ = 0; }
    DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
        std::swap(pointer_, other.pointer_);
        std::swap(bytes_, other.bytes_);
        return *this;
    }
    DeviceBuffer(const DeviceBuffer&) = delete;

    template <class T>
    static DeviceBuffer from(const std::vector<T>& host) {
        DeviceBuffer buffer(host.size() * sizeof(T));
        if (!host.empty()) check_cuda(driver().cuMemcpyHtoD(buffer.pointer_, host.data(), buffer.bytes_), "HtoD");
        return buffer;
    }
    template <class T>
    std::vector<T> to_host() const {
        std::vector<T> host(bytes_ / sizeof(T));
        if (!host.empty()) check_cuda(driver().cuMemcpyDtoH(host.data(), pointer_, bytes_), "DtoH");
        return host;
    }
    void fill16(uint16_t value) {
        if (bytes_) check_cuda(driver().cuMemsetD16(pointer_, value, bytes_ / 2), "cuMemsetD16");
    }

    CUdeviceptr get() const { return pointer_; }
    size_t bytes() const { return bytes_; }

private:
    CUdeviceptr pointer_ = 0;
    size_t bytes_ = 0;
};

inline void synchronize() { check_cuda(driver().cuCtxSynchronize(), "cuCtxSynchronize"); }

}  // namespace moejit::testing

#pragma once
// Device memory and CUDA-event timing through the library's driver table: what the tuner, the
// benchmarks and the GPU tests allocate and time with.
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace moejit {

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
        finish_legacy_stream();
        return buffer;
    }
    template <class T>
    std::vector<T> to_host() const {
        std::vector<T> host(bytes_ / sizeof(T));
        if (!host.empty()) check_cuda(driver().cuMemcpyDtoH(host.data(), pointer_, bytes_), "DtoH");
        return host;
    }
    void fill16(uint16_t value) {
        if (!bytes_) return;
        check_cuda(driver().cuMemsetD16(pointer_, value, bytes_ / 2), "cuMemsetD16");
        finish_legacy_stream();
    }

    CUdeviceptr get() const { return pointer_; }
    size_t bytes() const { return bytes_; }

private:
    // Uploads and fills are done when they return. They run on the legacy stream, and may still be
    // in flight after the call (cuMemsetD16 on device memory; cuMemcpyHtoD's DMA from a pageable
    // staging copy), which work on a non-blocking stream does not wait for: a CUDA-graph test once
    // read a fill that landed after its replay.
    static void finish_legacy_stream() {
        check_cuda(driver().cuStreamSynchronize(nullptr), "legacy stream: synchronize");
    }

    CUdeviceptr pointer_ = 0;
    size_t bytes_ = 0;
};

// The middle value (the upper of the two middle ones for an even count); `values` not empty.
inline double median_of(std::vector<double> values) {
    std::sort(values.begin(), values.end());
    return values[values.size() / 2];
}

// Median milliseconds of device work between two events on the default stream.
class EventTimer {
public:
    EventTimer() {
        check_cuda(driver().cuEventCreate(&start_, CU_EVENT_DEFAULT), "cuEventCreate");
        check_cuda(driver().cuEventCreate(&stop_, CU_EVENT_DEFAULT), "cuEventCreate");
    }
    ~EventTimer() {
        driver().cuEventDestroy(start_);
        driver().cuEventDestroy(stop_);
    }
    EventTimer(const EventTimer&) = delete;

    // `run(i)` for i = 0.., `warmup` times untimed, then `iterations` timed calls one by one.
    template <class F>
    double median_ms(F&& run, int warmup = 3, int iterations = 20) {
        int call = 0;
        for (int i = 0; i < warmup; ++i) run(call++);
        std::vector<double> times;
        for (int i = 0; i < iterations; ++i) {
            check_cuda(driver().cuEventRecord(start_, nullptr), "cuEventRecord");
            run(call++);
            check_cuda(driver().cuEventRecord(stop_, nullptr), "cuEventRecord");
            check_cuda(driver().cuEventSynchronize(stop_), "cuEventSynchronize");
            float ms = 0;
            check_cuda(driver().cuEventElapsedTime(&ms, start_, stop_), "cuEventElapsedTime");
            times.push_back(ms);
        }
        return median_of(std::move(times));
    }

private:
    CUevent start_ = nullptr, stop_ = nullptr;
};

}  // namespace moejit

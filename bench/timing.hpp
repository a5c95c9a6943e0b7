#pragma once
// What the benchmarks share: CUDA-event timing (medians), fast random inputs, argument lookup.
#include <moejit/problem.hpp>

#include "runtime/driver.hpp"
#include "tests/support/half.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace moejit::bench {

using moejit::testing::to_half;

inline double now_ms() {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Uniform values in [-1, 1), filled on all cores from a counter-based hash (fast for 1e9 elements).
inline std::vector<uint16_t> random_halves(DType dtype, size_t count, uint64_t seed) {
    std::vector<uint16_t> values(count);
    const unsigned workers = std::max(1u, std::thread::hardware_concurrency());
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < workers; ++t)
        threads.emplace_back([&, t] {
            for (size_t i = t; i < count; i += workers) {
                uint64_t z = seed + i * 0x9e3779b97f4a7c15ull;
                z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
                z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
                z ^= z >> 31;
                values[i] = to_half(dtype, float(z >> 40) / float(1 << 23) - 1.0f);
            }
        });
    for (auto& thread : threads) thread.join();
    return values;
}

// Each token picks topk distinct experts uniformly at random.
class Events {
public:
    Events() {
        check_cuda(driver().cuEventCreate(&start_, CU_EVENT_DEFAULT), "event");
        check_cuda(driver().cuEventCreate(&stop_, CU_EVENT_DEFAULT), "event");
    }
    ~Events() {
        driver().cuEventDestroy(start_);
        driver().cuEventDestroy(stop_);
    }
    // Median milliseconds of `run` over `iterations`, after `warmup` untimed calls.
    template <class F>
    double median_ms(F&& run, int warmup = 3, int iterations = 20) {
        for (int i = 0; i < warmup; ++i) run();
        std::vector<double> times;
        for (int i = 0; i < iterations; ++i) {
            check_cuda(driver().cuEventRecord(start_, nullptr), "record");
            run();
            check_cuda(driver().cuEventRecord(stop_, nullptr), "record");
            check_cuda(driver().cuEventSynchronize(stop_), "sync");
            float ms = 0;
            check_cuda(driver().cuEventElapsedTime(&ms, start_, stop_), "elapsed");
            times.push_back(ms);
        }
        std::sort(times.begin(), times.end());
        return times[times.size() / 2];
    }

private:
    CUevent start_ = nullptr, stop_ = nullptr;
};

inline std::string argument(int argc, char** argv, const char* name, const std::string& fallback) {
    for (int i = 1; i + 1 < argc; ++i)
        if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
    return fallback;
}

}  // namespace moejit::bench

#pragma once
// What the benchmarks share: CUDA-event timing (medians), fast random inputs, argument lookup.
#include <moejit/problem.hpp>

#include "moe/synthetic.hpp"
#include "runtime/device_buffer.hpp"
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

using moejit::random_halves;

// CUDA-event medians of a call that takes no arguments.
class Events {
public:
    template <class F>
    double median_ms(F&& run, int warmup = 3, int iterations = 20) {
        return timer_.median_ms([&](int) { run(); }, warmup, iterations);
    }

private:
    EventTimer timer_;
};

inline std::string argument(int argc, char** argv, const char* name, const std::string& fallback) {
    for (int i = 1; i + 1 < argc; ++i)
        if (std::strcmp(argv[i], name) == 0) return argv[i + 1];
    return fallback;
}

}  // namespace moejit::bench

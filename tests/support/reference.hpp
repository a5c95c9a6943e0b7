#pragma once
// Float64 host references and error measures for GPU tests.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <thread>
#include <vector>

namespace moejit::testing {

// Runs body(begin, end) over [0, count) on all hardware threads.
inline void parallel_for(int64_t count, const std::function<void(int64_t, int64_t)>& body) {
    const int64_t workers = std::max(1u, std::thread::hardware_concurrency());
    const int64_t chunk = (count + workers - 1) / workers;
    std::vector<std::thread> threads;
    for (int64_t begin = 0; begin < count; begin += chunk)
        threads.emplace_back(body, begin, std::min(count, begin + chunk));
    for (auto& thread : threads) thread.join();
}

// ||out - ref||_F / ||scale||_F: the error against the size of the terms that made ref (where
// they cancel, ||ref|| understates how large a rounding error is fair). NaN if any output is NaN or
// infinite.
inline double relative_error(const std::vector<float>& out, const std::vector<double>& ref,
                             const std::vector<double>& scale) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < out.size(); ++i) {
        if (!std::isfinite(out[i])) return NAN;
        diff += (out[i] - ref[i]) * (out[i] - ref[i]);
        norm += scale[i] * scale[i];
    }
    return norm == 0 ? std::sqrt(diff) : std::sqrt(diff / norm);
}

// ||out - ref||_F / ||ref||_F.
inline double relative_error(const std::vector<float>& out, const std::vector<double>& ref) {
    return relative_error(out, ref, ref);
}

}  // namespace moejit::testing

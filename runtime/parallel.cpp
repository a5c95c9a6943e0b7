#include "runtime/parallel.hpp"

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>
#include <vector>

namespace moejit {

unsigned default_jobs(size_t jobs) {
    const unsigned hardware = std::max(1u, std::thread::hardware_concurrency());
    return static_cast<unsigned>(std::max<size_t>(1, std::min<size_t>(hardware, jobs)));
}

void run_in_parallel(size_t count, unsigned jobs, const std::function<void(size_t)>& task) {
    if (count == 0) return;
    const size_t threads = std::min<size_t>(count, jobs == 0 ? default_jobs(count) : jobs);
    std::vector<std::exception_ptr> errors(count);
    std::atomic<size_t> next{0};
    auto work = [&] {
        for (size_t i = next++; i < count; i = next++) {
            try {
                task(i);
            } catch (...) {
                errors[i] = std::current_exception();
            }
        }
    };
    std::vector<std::thread> helpers;
    helpers.reserve(threads - 1);
    try {
        for (size_t t = 1; t < threads; ++t) helpers.emplace_back(work);
    } catch (...) {
        // No more threads to be had (std::system_error): the ones started and this one do the work.
    }
    work();
    for (std::thread& helper : helpers) helper.join();
    for (const std::exception_ptr& error : errors)
        if (error) std::rethrow_exception(error);
}

}  // namespace moejit

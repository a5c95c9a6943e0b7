#include "runtime/parallel.hpp"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <exception>
#include <thread>
#include <vector>

namespace moejit {

namespace {

// The CPUs this process may run on (taskset, a container's cpuset), which can be far fewer than
// the machine's; each compile holds about 100 MB, so more threads than CPUs only cost memory.
unsigned usable_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0) return static_cast<unsigned>(CPU_COUNT(&set));
    return std::max(1u, std::thread::hardware_concurrency());
}

}  // namespace

unsigned default_jobs(size_t jobs) {
    return static_cast<unsigned>(std::max<size_t>(1, std::min<size_t>(usable_cpus(), jobs)));
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

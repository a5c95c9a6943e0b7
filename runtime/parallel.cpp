#include "runtime/parallel.hpp"

#include <pthread.h>
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

void* run_work(void* work) {
    (*static_cast<const std::function<void()>*>(work))();
    return nullptr;
}

}  // namespace

unsigned default_jobs(size_t tasks) {
    return static_cast<unsigned>(std::max<size_t>(1, std::min<size_t>({usable_cpus(), kMaxDefaultJobs, tasks})));
}

size_t run_in_parallel(size_t count, unsigned jobs, const std::function<void(size_t)>& task) {
    if (count == 0) return 0;
    const size_t threads = std::min<size_t>(count, jobs == 0 ? default_jobs(count) : jobs);
    std::vector<std::exception_ptr> errors(count);
    std::atomic<size_t> next{0};
    const std::function<void()> work = [&] {
        for (size_t i = next++; i < count; i = next++) {
            try {
                task(i);
            } catch (...) {
                errors[i] = std::current_exception();
            }
        }
    };
    // Helpers that cannot be started (no memory, a thread limit) leave their share to the others.
    std::vector<pthread_t> helpers;
    pthread_attr_t attributes;
    if (threads > 1 && pthread_attr_init(&attributes) == 0) {
        pthread_attr_setstacksize(&attributes, kHelperStackBytes);
        for (size_t t = 1; t < threads; ++t) {
            pthread_t helper;
            if (pthread_create(&helper, &attributes, run_work, const_cast<std::function<void()>*>(&work)) != 0) break;
            helpers.push_back(helper);
        }
        pthread_attr_destroy(&attributes);
    }
    work();
    for (pthread_t helper : helpers) pthread_join(helper, nullptr);
    for (const std::exception_ptr& error : errors)
        if (error) std::rethrow_exception(error);
    return 1 + helpers.size();
}

}  // namespace moejit

// Compiling several kernels at once: run_in_parallel (runtime/parallel.hpp) runs every task once on
// its threads and rethrows the first failure by task number; the loaded-kernel cache
// (cache/memory_cache.hpp) makes a key's kernel once while other keys' are made at the same time,
// and forgets a key whose make failed.
#include "tests/catch.hpp"

#include <moejit/error.hpp>

#include "cache/memory_cache.hpp"
#include "runtime/parallel.hpp"

#include <pthread.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace moejit;

namespace {

const std::thread::id main_thread = std::this_thread::get_id();  // Catch2 runs the tests on it

// The cache holds shared_ptr<const Kernel>; Kernel is opaque here, so each "kernel" is a distinct
// non-null pointer that is never dereferenced.
MemoryCache::Value fake_kernel(int id) {
    static int storage[64];
    return MemoryCache::Value(reinterpret_cast<const Kernel*>(&storage[id]), [](const Kernel*) {});
}

// A gate `count` threads must all reach: each waits at most `limit` for the others, so a cache that
// ran makes one at a time fails the test instead of hanging it.
class Rendezvous {
public:
    explicit Rendezvous(int count) : left_(count) {}
    bool arrive_and_wait(std::chrono::seconds limit) {
        std::unique_lock<std::mutex> lock(mutex_);
        if (--left_ == 0) changed_.notify_all();
        return changed_.wait_for(lock, limit, [&] { return left_ <= 0; });
    }

private:
    std::mutex mutex_;
    std::condition_variable changed_;
    int left_;
};

}  // namespace

TEST_CASE("run_in_parallel runs each task once at any thread count", "[cpu][parallel]") {
    for (unsigned jobs : {0u, 1u, 3u, 64u}) {
        for (size_t count : {size_t(0), size_t(1), size_t(7), size_t(200)}) {
            std::vector<std::atomic<int>> runs(count);
            std::mutex mutex;
            std::set<std::thread::id> threads;
            run_in_parallel(count, jobs, [&](size_t i) {
                runs[i]++;
                std::lock_guard<std::mutex> lock(mutex);
                threads.insert(std::this_thread::get_id());
            });
            INFO(jobs << " jobs, " << count << " tasks");
            for (size_t i = 0; i < count; ++i) CHECK(runs[i] == 1);
            if (jobs == 1 && count > 0) {
                CHECK(threads.size() == 1);
                CHECK(threads.count(std::this_thread::get_id()) == 1);
            }
            if (jobs > 0) CHECK(threads.size() <= jobs);
        }
    }
    CHECK(default_jobs(1) == 1);
    CHECK(default_jobs(0) == 1);
    CHECK(default_jobs(100000) >= 1);
    CHECK(default_jobs(100000) <= kMaxDefaultJobs);
}

TEST_CASE("run_in_parallel's helper threads have a deep stack for NVRTC", "[cpu][parallel]") {
    // The calling thread keeps its own; every other thread that runs a task has kHelperStackBytes.
    std::mutex mutex;
    std::vector<size_t> helper_stacks;
    Rendezvous all(4);  // four tasks at once: three of them on helpers
    run_in_parallel(4, 4, [&](size_t) {
        all.arrive_and_wait(std::chrono::seconds(20));
        if (std::this_thread::get_id() == main_thread) return;
        pthread_attr_t attributes;
        REQUIRE(pthread_getattr_np(pthread_self(), &attributes) == 0);
        size_t bytes = 0;
        pthread_attr_getstacksize(&attributes, &bytes);
        pthread_attr_destroy(&attributes);
        std::lock_guard<std::mutex> lock(mutex);
        helper_stacks.push_back(bytes);
    });
    CHECK(helper_stacks.size() == 3);
    for (size_t bytes : helper_stacks) CHECK(bytes >= kHelperStackBytes);
}

TEST_CASE("run_in_parallel runs tasks at the same time", "[cpu][parallel]") {
    // Three tasks that each wait for the other two: they finish only if all three run at once.
    Rendezvous all(3);
    std::atomic<int> met{0};
    run_in_parallel(3, 3, [&](size_t) { met += all.arrive_and_wait(std::chrono::seconds(20)) ? 1 : 0; });
    CHECK(met == 3);
}

TEST_CASE("run_in_parallel finishes every task, then rethrows the lowest-numbered failure", "[cpu][parallel]") {
    for (unsigned jobs : {1u, 4u}) {
        std::atomic<int> ran{0};
        try {
            run_in_parallel(40, jobs, [&](size_t i) {
                ran++;
                if (i == 31) throw std::runtime_error("task 31");
                if (i == 17) throw Error("task 17", "its compile log");
            });
            FAIL("no exception");
        } catch (const Error& error) {
            CHECK(std::string(error.what()).rfind("task 17", 0) == 0);  // what() adds the log
            CHECK(error.log() == "its compile log");
        }
        CHECK(ran == 40);
    }
}

TEST_CASE("the loaded-kernel cache makes each key once and different keys at once", "[cpu][parallel]") {
    MemoryCache cache;
    // Four threads, two keys: "a" and "b" are each made once, and both makes run at the same time
    // (each waits for the other to start), so one kernel's compile does not hold up another's.
    Rendezvous both_makes(2);
    std::atomic<int> makes_a{0}, makes_b{0}, met{0};
    std::vector<MemoryCache::Value> got(4);
    run_in_parallel(4, 4, [&](size_t i) {
        const bool a = i % 2 == 0;
        got[i] = cache.get_or_make(a ? "a" : "b", [&] {
            (a ? makes_a : makes_b)++;
            met += both_makes.arrive_and_wait(std::chrono::seconds(20)) ? 1 : 0;
            return fake_kernel(a ? 1 : 2);
        });
    });
    CHECK(makes_a == 1);
    CHECK(makes_b == 1);
    CHECK(met == 2);
    CHECK(got[0] == fake_kernel(1));
    CHECK(got[2] == got[0]);
    CHECK(got[1] == fake_kernel(2));
    CHECK(got[3] == got[1]);
    // Found, not made again.
    CHECK(cache.get_or_make("a", [&]() -> MemoryCache::Value { FAIL("made twice"); return nullptr; }) == got[0]);
}

TEST_CASE("the loaded-kernel cache passes a failed make to its waiters and tries again later", "[cpu][parallel]") {
    MemoryCache cache;
    // The first make fails while three more threads wait on the same key: all four see its error,
    // and it is made once (a cache that let every caller make it would make it four times: the
    // make outlasts the others' arrival by far).
    std::atomic<int> makes{0}, failures{0};
    Rendezvous waiting(4);
    run_in_parallel(4, 4, [&](size_t) {
        waiting.arrive_and_wait(std::chrono::seconds(20));
        try {
            cache.get_or_make("k", [&]() -> MemoryCache::Value {
                makes++;
                std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the others queue behind it
                throw Error("NVRTC could not compile", "log");
            });
        } catch (const Error& error) {
            if (std::string(error.what()).rfind("NVRTC could not compile", 0) == 0) failures++;
        }
    });
    CHECK(failures == 4);
    CHECK(makes == 1);
    // The failure is not cached: the next call makes the kernel.
    CHECK(cache.get_or_make("k", [] { return fake_kernel(3); }) == fake_kernel(3));
    CHECK(cache.get_or_make("k", [&]() -> MemoryCache::Value { FAIL("made twice"); return nullptr; }) == fake_kernel(3));
}

#pragma once
// Loaded kernels of this process, by (context, Problem, Config). Thread-safe; entries live until exit
// (a few hundred at most, each a CUmodule), so a caller may keep the shared_ptr it got.
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace moejit {

class Kernel;

class MemoryCache {
public:
    using Value = std::shared_ptr<const Kernel>;

    // Returns the cached kernel for `key`, or the result of `make()`, stored. The first caller of a
    // key runs `make` outside the lock, so that kernels of different keys compile at once (NVRTC is
    // thread-safe); later callers of that key wait for it and share its kernel, or its exception.
    // A key whose `make` threw is forgotten: the next call tries again.
    Value get_or_make(const std::string& key, const std::function<Value()>& make) {
        std::promise<Value> promise;
        std::shared_future<Value> made;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            auto found = kernels_.find(key);
            if (found != kernels_.end()) {
                made = found->second;
            } else {
                kernels_.emplace(key, promise.get_future().share());
            }
        }
        if (made.valid()) return made.get();  // rethrows the maker's exception
        try {
            Value kernel = make();
            promise.set_value(kernel);
            return kernel;
        } catch (...) {
            // The waiters get the error first, whatever happens after.
            promise.set_exception(std::current_exception());
            std::lock_guard<std::mutex> lock(mutex_);
            kernels_.erase(key);
            throw;
        }
    }

private:
    std::mutex mutex_;
    std::unordered_map<std::string, std::shared_future<Value>> kernels_;
};

}  // namespace moejit

#pragma once
// Loaded kernels of this process, by (context, Problem, Config). Thread-safe; entries live until exit
// (a few hundred at most, each a CUmodule), so a caller may keep the shared_ptr it got.
#include <cuda.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

namespace moejit {

class Kernel;

class MemoryCache {
public:
    // Returns the cached kernel for `key`, or the result of `make()`, stored. `make` runs under the
    // lock: two threads asking for one kernel compile it once.
    std::shared_ptr<const Kernel> get_or_make(const std::string& key,
                                              const std::function<std::shared_ptr<const Kernel>()>& make) {
        std::lock_guard<std::mutex> lock(mutex_);
        auto found = kernels_.find(key);
        if (found != kernels_.end()) return found->second;
        auto kernel = make();
        kernels_.emplace(key, kernel);
        return kernel;
    }

    size_t size() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return kernels_.size();
    }

private:
    mutable std::mutex mutex_;
    std::unordered_map<std::string, std::shared_ptr<const Kernel>> kernels_;
};

}  // namespace moejit

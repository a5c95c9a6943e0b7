#pragma once
// A loaded cubin and a kernel in it, as RAII types, and the one launch path (cuLaunchKernelEx).
#include <cuda.h>

#include <memory>
#include <string>
#include <vector>

namespace moejit {

class Module {
public:
    explicit Module(const std::vector<char>& cubin);  // into the current context
    ~Module();
    Module(const Module&) = delete;
    Module& operator=(const Module&) = delete;

    CUfunction function(const std::string& lowered_name) const;

private:
    CUmodule module_ = nullptr;
};

struct LaunchShape {
    unsigned grid = 1;
    unsigned threads = 1;
    unsigned shared_bytes = 0;
};

class Kernel {
public:
    // Raises the dynamic shared-memory limit to `shared_bytes` and reads occupancy once.
    Kernel(std::shared_ptr<const Module> module, const std::string& lowered_name, int threads, size_t shared_bytes);

    void launch(unsigned grid, CUstream stream, void** arguments) const;

    int threads() const { return threads_; }
    size_t shared_bytes() const { return shared_bytes_; }
    int blocks_per_sm() const { return blocks_per_sm_; }
    int registers() const { return registers_; }

private:
    std::shared_ptr<const Module> module_;
    CUfunction function_ = nullptr;
    int threads_ = 0;
    size_t shared_bytes_ = 0;
    int blocks_per_sm_ = 0;
    int registers_ = 0;
};

}  // namespace moejit

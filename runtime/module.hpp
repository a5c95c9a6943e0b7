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
    // Raises the dynamic shared-memory limit to `shared_bytes` and reads occupancy once. A kernel
    // with cluster > 1 is launched in clusters of that many consecutive blocks along x. With
    // `dependent_launch` it is launched with programmatic stream serialization, as the previous
    // kernel in the stream ends rather than after its completion: only for kernels that wait for
    // that kernel themselves (templates/common/dependent_launch.cuh), on sm_90 and later.
    Kernel(std::shared_ptr<const Module> module, const std::string& lowered_name, int threads, size_t shared_bytes,
           int cluster = 1, bool dependent_launch = false);

    // `grid` must be a multiple of cluster().
    void launch(unsigned grid, CUstream stream, void** arguments) const;

    int threads() const { return threads_; }
    size_t shared_bytes() const { return shared_bytes_; }
    int blocks_per_sm() const { return blocks_per_sm_; }
    int cluster() const { return cluster_; }
    // Blocks that can run at once on the whole device (whole clusters only), given `sm_count`.
    int64_t resident_blocks(int sm_count) const;
    int registers() const { return registers_; }

private:
    std::shared_ptr<const Module> module_;
    CUfunction function_ = nullptr;
    int threads_ = 0;
    size_t shared_bytes_ = 0;
    int blocks_per_sm_ = 0;
    int registers_ = 0;
    int cluster_ = 1;
    int resident_clusters_ = 0;  // cluster kernels: clusters the device holds at once
    bool dependent_launch_ = false;
};

}  // namespace moejit

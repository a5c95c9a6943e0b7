#pragma once
// Grouped GEMM over experts whose row counts live on the device:
//   Y[rows of e] = X[rows of e] @ W[e]^T  for every expert e,
// with X [M, K] and Y [M, N] grouped by expert (expert 0's m_sizes[0] rows first, then expert 1's, ...),
// W [E, N, K] (K contiguous) and m_sizes [E] int32. bf16 or fp16 in, fp32 accumulation.
//
// The kernel is generated for (dtype, N, K, E, topk, GPU arch), compiled by NVRTC on first use (or
// read from the disk cache) and launched on the caller's stream with no host synchronization, so
// calls can be captured in a CUDA graph. sum(m_sizes) must equal M; rows past M are never touched.
#include <moejit/problem.hpp>

#include <cuda.h>

#include <memory>
#include <string>

namespace moejit {

class Kernel;

class GroupedGemm {
public:
    // problem.arch is replaced by the arch of the current device (a GPU is needed from here on).
    explicit GroupedGemm(Problem problem);
    // With an explicit tiling instead of the heuristic's, e.g. "m128n128s3w2x4" (tuning, benchmarks).
    GroupedGemm(Problem problem, const std::string& config);

    // x [M, K], w [E, N, K], y [M, N]: 16-byte aligned device pointers; m_sizes [E] int32, 4-byte aligned.
    void forward(CUdeviceptr x, CUdeviceptr w, CUdeviceptr y, CUdeviceptr m_sizes, int64_t rows,
                 CUstream stream) const;

    // JIT now rather than at the first call.
    void prepare() const;

    const Problem& problem() const { return problem_; }
    const std::string& config() const { return config_name_; }  // the chosen tiling, e.g. "m128n128s4w2x4"

private:
    Problem problem_;
    int sm_count_ = 0;
    int tile_m_ = 0, tile_n_ = 0;  // of the chosen config, to size the grid
    std::string config_name_;
    mutable std::shared_ptr<const Kernel> kernel_;  // set at the first call
};

}  // namespace moejit

#pragma once
// Grouped GEMMs over experts whose row counts live on the device, forward and backward, with the
// MoE fusions. Semantics (DESIGN.md): W [E, N, K] K contiguous; M = tokens * topk routed rows,
// grouped by expert (expert 0's m_sizes[0] rows first, then expert 1's, ...);
// gather_idx [M] int32 holds, for routed row r, its slot t*topk + j (a permutation of 0..M-1,
// stably sorted by expert).
//
//   forward:  Y[r] = X[r] @ W[e]^T          X [M, K], or [T, K] with permute_x; Y [M, N] (or [M, N/2] gated),
//                                          scattered to token-slot order with permute_y
//   dx:       dX[r] = dY[r] @ W[e]          dY [M, N], gathered from slot order with permute_y;
//                                          dX [M, K], scattered to slot order with permute_x
//                                          (sum over topk with combine_topk)
//   dw:       dW[e] = dY_e^T @ X_e          [E, N, K]; zeros for empty experts
//
// Each pass is a kernel generated for (dtype, N, K, E, topk, flags, GPU arch), compiled by NVRTC
// on first use (or read from the disk cache) and launched on the caller's stream with no host
// synchronization, so calls can be captured in a CUDA graph. No workspace is needed. The kernels
// that claim tiles at run time count claims in memory the GroupedGemm owns: a pair per stream (256
// streams), and one per captured launch, so that two launches running at once never share one. Two
// instantiations of one captured graph must not run at the same time.
#include <moejit/problem.hpp>

#include <cuda.h>

#include <memory>
#include <string>

namespace moejit {

class Kernel;

// Where routing put the rows. Only m_sizes is always needed.
struct Routing {
    CUdeviceptr m_sizes = 0;       // [E] int32; sum must equal rows. May be 0 when E = 1: all rows are the expert's
    CUdeviceptr gather_idx = 0;    // [M] int32; needed by permute_x, permute_y, fuse_mul_post
    CUdeviceptr topk_weights = 0;  // [M] float32 in slot order t*topk+j; needed by fuse_mul_post
    int64_t rows = 0;              // M
};

class GroupedGemm {
public:
    // `forward` describes the forward GEMM (op fwd, its fusion flags); dx and dw differentiate it.
    // forward.arch is replaced by the arch of the current device (a GPU is needed from here on).
    explicit GroupedGemm(Problem forward);
    // With an explicit tiling for every pass and row count instead of the heuristic's (or the
    // tuned one), e.g. "m128n128s3w2x4" (portable path) or "h:m128n256s4" (Hopper path), or
    // "h:m128n256s4c2": CTA pairs that share weight tiles (forward, dX) or X slices (dW). Each pass
    // takes the cluster as far as it allows (c4: dW in fours, forward and dX in pairs; dW with
    // permute_x unclustered); config() reports what each pass runs.
    GroupedGemm(Problem forward, const std::string& config);
    ~GroupedGemm();

    // x, w, y, preactivation: 16-byte aligned. With `saves_preactivation` (a gated forward for
    // training), `preactivation` [M, N] receives gate|up, which gated_activation_backward needs;
    // without it, it must be 0.
    void forward(CUdeviceptr x, CUdeviceptr w, CUdeviceptr y, const Routing& routing, CUstream stream,
                 CUdeviceptr preactivation = 0) const;
    // For a gated forward, dy is d(gate|up) [M, N] from gated_activation_backward.
    void dx(CUdeviceptr dy, CUdeviceptr w, CUdeviceptr dx, const Routing& routing, CUstream stream) const;
    // dw [E, N, K] in the input dtype, or fp32 with `fp32_output`.
    void dw(CUdeviceptr dy, CUdeviceptr x, CUdeviceptr dw, const Routing& routing, CUstream stream,
            bool fp32_output = false) const;

    // JIT the forward kernel now rather than at its first call; with `backward`, dX's and dW's too
    // (16-bit and fp32 output; no dW with fuse_mul_post), and MOEJIT_CHECK_ROUTING's kernel where
    // that is on, all at once on up to `jobs` host threads (0: one a pass). Each in the tiling for
    // `rows` routed rows (any negative value: many).
    void prepare(bool backward = false, int64_t rows = -1, unsigned jobs = 0) const;

    const Problem& problem() const { return forward_; }
    // The tiling a pass uses for `rows` routed rows (default: many), e.g. "h:m128n256s4" on the
    // Hopper path (sm_90a), "m128n128s3w2x4" on the portable one; for dW, of the fp32-output
    // kernel with `fp32_output`.
    std::string config(Op op = Op::fwd, int64_t rows = -1, bool fp32_output = false) const;

private:
    struct Pass;
    struct TileCounters;
    // A pass compiles its kernel at its first call, also through a const GroupedGemm.
    Pass& pass(Op op, bool fp32_output = false) const;
    void launch(Pass& pass, CUdeviceptr a, CUdeviceptr b, CUdeviceptr c, CUdeviceptr preactivation,
                const Routing& routing, CUstream stream) const;

    Problem forward_;
    std::string config_override_;
    int sm_count_ = 0;
    std::unique_ptr<Pass> passes_[4];  // fwd, dx, dw, dw fp32; each compiled at its first use
    std::unique_ptr<TileCounters> tile_counters_;  // for the kernels that claim tiles at run time
};

// out[t] = sum_j w[t*topk + j] * slots[t*topk + j] (fp32, fixed order j = 0..topk-1, deterministic).
// slots [T*topk, width], out [T, width]; weights [T*topk] float32 in slot order, or 0: w = 1;
// addend [T, width], or 0: added to each token's sum in the same pass.
void combine_topk(DType dtype, int64_t width, int topk, CUdeviceptr slots, CUdeviceptr out, int64_t tokens,
                  CUstream stream, CUdeviceptr weights = 0, CUdeviceptr addend = 0);

// d(gate|up) [M, N] from gate|up [M, N] and dh = d(silu(gate) * up) [M, N/2].
void gated_activation_backward(DType dtype, int64_t n, CUdeviceptr preactivation, CUdeviceptr grad_h,
                               CUdeviceptr grad_preactivation, int64_t rows, CUstream stream);

}  // namespace moejit

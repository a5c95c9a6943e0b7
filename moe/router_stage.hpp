#pragma once
// The routing every MoE block runs, forward and backward, in one place:
//   forward:  router GEMM (hidden [T, H] x router [E, H]^T, one "expert" of T rows) -> logits [T, E]
//             -> top-k ids and weights -> m_sizes, gather_idx, scatter_idx
//   backward: d(top-k weights) -> d(logits) -> the router GEMM's dX [T, H] and dW [E, H]
// Its buffers live in the block's workspace; nothing here allocates or synchronizes.
#include <moejit/grouped_gemm.hpp>
#include <moejit/routing.hpp>

#include "codegen/kernel_problems.hpp"
#include "moe/workspace.hpp"

namespace moejit {

class RouterStage {
public:
    struct Buffers {  // offsets into the block's workspace
        size_t topk_ids, topk_weights, m_sizes, gather_idx, scatter_idx, errors, scratch, grad_logits;
        size_t scratch_bytes;
    };
    // Without `training` (a block built for inference), backward's buffer is not planned.
    static Buffers plan(WorkspaceLayout& layout, DType dtype, int experts, int topk, int64_t max_tokens,
                        bool training);

    // Throws moejit::Error, naming `block`, unless the stage can run `router`: the routing kernels'
    // limits, and experts a multiple of 8 (the router GEMM's N). Blocks call it before they touch
    // the device; the constructor does not repeat it.
    static void validate(const RouterConfig& router, const char* block);
    // Adds every kernel forward() launches, and with `training` every kernel backward() does
    // (fp32_weight_gradient: dW in fp32, else in `dtype`).
    static void add_kernels(KernelList& list, DType dtype, int64_t hidden, const RouterConfig& router, bool training,
                            bool fp32_weight_gradient);

    // `workspace`: the block's workspace, which `buffers` index.
    RouterStage(DType dtype, int64_t hidden, const RouterConfig& router, bool fp32_weight_gradient,
                const Buffers& buffers, CUdeviceptr workspace);

    void forward(CUdeviceptr hidden, CUdeviceptr router_weight, CUdeviceptr logits, int64_t tokens,
                 CUstream stream) const;
    // grad_topk_weights [T * topk] fp32 -> router_grad_x [T, H] (block dtype), grad_router [E, H]
    // (fp32 or the block dtype, as constructed).
    void backward(CUdeviceptr hidden, CUdeviceptr router_weight, CUdeviceptr logits, CUdeviceptr grad_topk_weights,
                  CUdeviceptr router_grad_x, CUdeviceptr grad_router, int64_t tokens, CUstream stream) const;

    // The routed experts' Routing (M = tokens * topk rows, weights in slot order).
    Routing routing(int64_t tokens) const;
    // One "expert" of all T rows: the router GEMM, and dense layers such as a shared expert.
    Routing dense_routing(int64_t tokens) const;
    // Throws moejit::Error when the last forward saw expert ids out of range. Synchronizes.
    void check_errors(CUstream stream) const;

private:
    CUdeviceptr at(size_t offset) const { return workspace_at(workspace_, offset, "MoE block router"); }

    DType dtype_;
    RouterConfig config_;
    bool fp32_weight_gradient_;
    Buffers buffers_;
    CUdeviceptr workspace_;
    GroupedGemm router_;
};

}  // namespace moejit

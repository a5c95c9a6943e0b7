#include "moe/router_stage.hpp"

#include "moe/route_topk.hpp"
#include "moe/router_limits.hpp"
#include "runtime/driver.hpp"

namespace moejit {

namespace {

// hidden [T, H] x router [E, H]^T: one "expert" of T rows, E outputs.
Problem router_gemm(DType dtype, int64_t hidden, const RouterConfig& router) {
    return expert_gemm(dtype, /*n=*/router.experts, /*k=*/hidden, /*experts=*/1, /*topk=*/1);
}

}  // namespace

RouterStage::Buffers RouterStage::plan(WorkspaceLayout& layout, DType dtype, int experts, int topk,
                                       int64_t max_tokens, bool training) {
    const size_t T = size_t(max_tokens), M = T * size_t(topk), E = size_t(experts);
    Buffers b;
    b.topk_ids = layout.take(M, 4);
    b.topk_weights = layout.take(M, 4);
    b.m_sizes = layout.take(E, 4);
    b.gather_idx = layout.take(M, 4);
    b.scatter_idx = layout.take(M, 4);
    b.errors = layout.take(4);
    b.scratch_bytes = routing_workspace_bytes(experts, max_tokens, topk);
    b.scratch = layout.take(b.scratch_bytes);
    b.grad_logits = training ? layout.take(T, E, element_bytes(dtype)) : kNotPlanned;
    return b;
}

RouterStage::RouterStage(DType dtype, int64_t hidden, const RouterConfig& router, bool fp32_weight_gradient,
                         const Buffers& buffers, CUdeviceptr workspace)
    : dtype_(dtype),
      config_(router),
      fp32_weight_gradient_(fp32_weight_gradient),
      buffers_(buffers),
      workspace_(workspace),
      router_(router_gemm(dtype, hidden, router)) {}

void RouterStage::validate(const RouterConfig& router, const char* block) {
    check_router(router, [&] { return std::string(block); });
    if (router.experts % 8 != 0)
        throw Error(std::string(block) + ": the router GEMM needs experts to be a multiple of 8, got " +
                    std::to_string(router.experts));
}

void RouterStage::add_kernels(KernelList& list, DType dtype, int64_t hidden, const RouterConfig& router,
                              bool training, bool fp32_weight_gradient) {
    const Problem gemm = router_gemm(dtype, hidden, router);
    list.add_gemm(gemm, {GemmPass::fwd});
    list.add_routing(router.experts, router.topk, dtype, training);
    if (training) list.add_gemm(gemm, {GemmPass::dx, dw_pass(fp32_weight_gradient)});
}

void RouterStage::forward(CUdeviceptr hidden, CUdeviceptr router_weight, CUdeviceptr logits, int64_t tokens,
                          CUstream stream) const {
    const Buffers& b = buffers_;
    // The error count restarts with every forward: route_topk clears it, where it runs.
    if (tokens == 0)
        check_cuda(driver().cuMemsetD32Async(at(b.errors), 0, 1, stream), "MoE block: routing error count");
    router_.forward(hidden, router_weight, logits, dense_routing(tokens), stream);
    route_topk_clearing(config_, dtype_, logits, at(b.topk_ids), at(b.topk_weights), tokens, at(b.errors), stream);
    routing_indices(config_.experts, config_.topk, at(b.topk_ids), tokens, at(b.m_sizes), at(b.gather_idx),
                    at(b.scatter_idx), at(b.errors), at(b.scratch), b.scratch_bytes, stream);
}

void RouterStage::backward(CUdeviceptr hidden, CUdeviceptr router_weight, CUdeviceptr logits,
                           CUdeviceptr grad_topk_weights, CUdeviceptr router_grad_x, CUdeviceptr grad_router,
                           int64_t tokens, CUstream stream) const {
    const Buffers& b = buffers_;
    router_backward(config_, dtype_, logits, at(b.topk_ids), grad_topk_weights, at(b.grad_logits), tokens, stream);
    router_.dx(at(b.grad_logits), router_weight, router_grad_x, dense_routing(tokens), stream);
    router_.dw(at(b.grad_logits), hidden, grad_router, dense_routing(tokens), stream, fp32_weight_gradient_);
}

Routing RouterStage::routing(int64_t tokens) const {
    return Routing{at(buffers_.m_sizes), at(buffers_.gather_idx), at(buffers_.topk_weights), tokens * config_.topk};
}

// No m_sizes: the router GEMM has one expert, which holds every row.
Routing RouterStage::dense_routing(int64_t tokens) const { return Routing{0, 0, 0, tokens}; }

void RouterStage::check_errors(CUstream stream) const {
    check_routing_errors(at(buffers_.errors), config_.experts, stream);
}

}  // namespace moejit

#include "codegen/kernel_problems.hpp"

#include <moejit/error.hpp>

#include <algorithm>

namespace moejit {

Problem expert_gemm(DType dtype, int64_t n, int64_t k, int experts, int topk) {
    Problem problem;
    problem.dtype = dtype;
    problem.n = n;
    problem.k = k;
    problem.experts = experts;
    problem.topk = topk;
    return problem;
}

Problem gemm_pass(const Problem& forward, GemmPass pass) {
    Problem problem = forward;
    problem.op = pass == GemmPass::fwd ? Op::fwd : pass == GemmPass::dx ? Op::dx : Op::dw;
    problem.gated = forward.gated && pass == GemmPass::fwd;
    problem.saves_preactivation = forward.saves_preactivation && pass == GemmPass::fwd;
    problem.out_fp32 = pass == GemmPass::dw_fp32;
    return problem;
}

namespace {

// An elementwise kernel over rows of `width` elements; experts and topk carry what it specializes on.
Problem elementwise(Op op, DType dtype, int64_t width, int experts, int topk) {
    Problem problem = expert_gemm(dtype, width, width, experts, topk);
    problem.op = op;
    return problem;
}

constexpr int64_t kUnusedWidth = 8;  // the routing kernels specialize on experts and topk only

}  // namespace

Problem combine_problem(DType dtype, int64_t width, int topk) {
    return elementwise(Op::combine, dtype, width, topk, topk);
}

Problem gated_backward_problem(DType dtype, int64_t n) { return elementwise(Op::gated_backward, dtype, n, 1, 1); }

Problem combine_backward_problem(DType dtype, int64_t width, int topk) {
    return elementwise(Op::combine_backward, dtype, width, topk, topk);
}

Problem router_problem(Op op, int experts, int topk, DType dtype) {
    return elementwise(op, dtype, kUnusedWidth, experts, topk);
}

Problem routing_indices_problem(Op op, int experts) {
    // The kernels see only the flat slots (topk 1) and int32 ids (no dtype of their own).
    return elementwise(op, DType::bf16, kUnusedWidth, experts, 1);
}

Problem permute_rows_problem(DType dtype, int64_t width, int topk) {
    return elementwise(Op::permute_rows, dtype, width, topk, topk);
}

Problem unpermute_rows_problem(DType dtype, int64_t width) {
    return elementwise(Op::unpermute_rows, dtype, width, 1, 1);
}

Problem check_routing_problem(int experts) {
    return elementwise(Op::check_routing, DType::bf16, kUnusedWidth, experts, 1);
}

void KernelList::add(const Problem& problem) {
    if (std::find(problems_.begin(), problems_.end(), problem) == problems_.end()) problems_.push_back(problem);
}

void KernelList::add_gemm(const Problem& forward, std::initializer_list<GemmPass> passes) {
    for (GemmPass pass : passes) add(gemm_pass(forward, pass));
    add(check_routing_problem(forward.experts));
}

void KernelList::add_routing(int experts, int topk, DType dtype, bool backward) {
    add(router_problem(Op::route_topk, experts, topk, dtype));
    add(routing_indices_problem(Op::routing_histogram, experts));
    add(routing_indices_problem(Op::routing_indices, experts));
    if (backward) add(router_problem(Op::router_backward, experts, topk, dtype));
}

std::vector<Problem> KernelList::for_arch(const Arch& arch) const {
    std::vector<Problem> kernels;
    for (Problem problem : problems_) {
        problem.arch = arch;
        problem.validate();
        // Two problems equal but for the arch they were added with are one kernel here.
        if (std::find(kernels.begin(), kernels.end(), problem) == kernels.end()) kernels.push_back(problem);
    }
    return kernels;
}

void KernelList::validate(const char* owner) const {
    try {
        for_arch(Arch{});
    } catch (const Error& error) {
        throw Error(std::string(owner) + ": " + error.what());
    }
}

}  // namespace moejit

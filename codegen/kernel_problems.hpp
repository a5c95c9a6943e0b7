#pragma once
// The Problem of every kernel the library launches, built from the arguments of the call that
// launches it. The calls (moe/*.cpp) and the lists of what a block or a model compiles
// (Qwen3MoeBlock::kernels, Llama4TextMoe::kernels, model_kernels, so `moejit precompile`) build
// their Problems here and nowhere else: a precompiled cache then holds exactly the kernels a run
// asks for, down to each fusion flag.
#include <moejit/problem.hpp>

#include <initializer_list>
#include <vector>

namespace moejit {

// The forward of one grouped GEMM over W [experts, n, k], with no fusions yet.
Problem expert_gemm(DType dtype, int64_t n, int64_t k, int experts, int topk);

// The passes a GroupedGemm keeps, in its order; each compiles its own kernel at its first call.
enum class GemmPass { fwd, dx, dw, dw_fp32 };
// A block's weight-gradient pass: fp32 output, or the GEMM's dtype.
inline GemmPass dw_pass(bool fp32_output) { return fp32_output ? GemmPass::dw_fp32 : GemmPass::dw; }
// The pass of the GroupedGemm built on `forward`: dx and dw keep the forward's flags (they
// differentiate that GEMM) except `gated` and `saves_preactivation`, since they take d(gate|up).
Problem gemm_pass(const Problem& forward, GemmPass pass);

// The elementwise and routing kernels, named by the call that launches them.
Problem combine_problem(DType dtype, int64_t width, int topk);           // combine_topk
Problem gated_backward_problem(DType dtype, int64_t n);                  // gated_activation_backward
Problem combine_backward_problem(DType dtype, int64_t width, int topk);  // combine_backward
// route_topk, router_backward: scoring and renormalization are run-time arguments, so one kernel
// serves every RouterConfig mode of `experts` and `topk`.
Problem router_problem(Op op, int experts, int topk, DType dtype);
Problem routing_indices_problem(Op op, int experts);  // routing_indices' two kernels: routing_histogram, routing_indices
Problem permute_rows_problem(DType dtype, int64_t width, int topk);
Problem unpermute_rows_problem(DType dtype, int64_t width);
Problem check_routing_problem(int experts);  // MOEJIT_CHECK_ROUTING, before a GEMM over `experts`

// The kernels a block or a layer compiles, each once, in the order first added.
class KernelList {
public:
    void add(const Problem& problem);
    // The passes of the GroupedGemm over `forward` that the caller runs (a pass never called never
    // compiles), and the routing check that MOEJIT_CHECK_ROUTING runs before each of them.
    void add_gemm(const Problem& forward, std::initializer_list<GemmPass> passes);
    // route_topk and routing_indices (two kernels) for a router over `experts`, and with
    // `backward` router_backward.
    void add_routing(int experts, int topk, DType dtype, bool backward);
    // Every kernel, compiled for `arch`; throws moejit::Error naming the first invalid one.
    std::vector<Problem> for_arch(const Arch& arch) const;
    // Every kernel's own limits, before anything touches a device: throws moejit::Error that names
    // `owner` (the block whose configuration they come from) and the first invalid kernel.
    void validate(const char* owner) const;

private:
    std::vector<Problem> problems_;
};

}  // namespace moejit

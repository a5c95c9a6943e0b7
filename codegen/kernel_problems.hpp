#pragma once
// The Problem of every kernel the library launches, built from the arguments of the call that
// launches it, here and nowhere else: whatever lists the kernels a run will ask for (to
// precompile them) builds the same Problems, down to each fusion flag.
#include <moejit/problem.hpp>
#include <moejit/routing.hpp>

namespace moejit {

// The forward of one grouped GEMM over W [experts, n, k], with no fusions yet.
Problem expert_gemm(DType dtype, int64_t n, int64_t k, int experts, int topk);

// The passes a GroupedGemm keeps, in its order; each compiles its own kernel at its first call.
enum class GemmPass { fwd, dx, dw, dw_fp32 };
// The pass of the GroupedGemm built on `forward`: dx and dw keep the forward's flags (they
// differentiate that GEMM) except `gated`, since they take d(gate|up).
Problem gemm_pass(const Problem& forward, GemmPass pass);

// The elementwise and routing kernels, named by the call that launches them.
Problem combine_problem(DType dtype, int64_t width, int topk);           // combine_topk
Problem gated_backward_problem(DType dtype, int64_t n);                  // gated_activation_backward
Problem combine_backward_problem(DType dtype, int64_t width, int topk);  // combine_backward
Problem router_problem(Op op, const RouterConfig& router, DType dtype);  // route_topk, router_backward
Problem routing_indices_problem(Op op, int experts);  // routing_indices' two kernels: routing_histogram, routing_indices
Problem permute_rows_problem(DType dtype, int64_t width, int topk);
Problem unpermute_rows_problem(DType dtype, int64_t width);
Problem check_routing_problem(int experts);  // MOEJIT_CHECK_ROUTING, before a GEMM over `experts`

}  // namespace moejit

// What the MoE blocks compile, with no GPU: each block's kernel list names exactly the kernels its
// forward and backward launch.
#include <moejit/llama4_moe.hpp>
#include <moejit/qwen3_moe.hpp>

#include "codegen/kernel_problems.hpp"
#include "tests/catch.hpp"

#include <set>
#include <string>
#include <vector>

using namespace moejit;

namespace {

std::set<std::string> specs_of(const std::vector<Problem>& problems) {
    std::set<std::string> specs;
    for (const Problem& problem : problems) specs.insert(to_spec(problem));
    return specs;
}

const Arch kHopper = Arch::parse("sm_90a");

}  // namespace

TEST_CASE("Qwen3MoeBlock::kernels names each kernel forward and backward launch, and no other", "[cpu][blocks]") {
    const Qwen3MoeConfig config{/*hidden=*/256, /*moe_intermediate=*/128, /*experts=*/16, /*topk=*/4, true, DType::bf16};
    const std::vector<Problem> kernels = Qwen3MoeBlock::kernels(config, kHopper);
    CHECK(kernels.size() == specs_of(kernels).size());  // each once
    const std::set<std::string> expected = {
        // router GEMM: hidden [T, 256] x router [16, 256]^T, one "expert" of T rows; dX, dW fp32
        "fwd:bf16:n16:k256:e1:topk1:sm_90a",
        "dx:bf16:n16:k256:e1:topk1:sm_90a",
        "dw:bf16:n16:k256:e1:topk1:out_fp32:sm_90a",
        "route_topk:bf16:n8:k8:e16:topk4:sm_90a",
        "routing_histogram:bf16:n8:k8:e16:topk1:sm_90a",
        "routing_indices:bf16:n8:k8:e16:topk1:sm_90a",
        "router_backward:bf16:n8:k8:e16:topk4:sm_90a",
        // gate_up gathers token rows with the gated activation; its dX and dW (fp32) drop `gated`
        "fwd:bf16:n256:k256:e16:topk4:permute_x:gated:sm_90a",
        "dx:bf16:n256:k256:e16:topk4:permute_x:sm_90a",
        "dw:bf16:n256:k256:e16:topk4:permute_x:out_fp32:sm_90a",
        // down scatters unscaled rows (the combine weights them): no mul_post; its backward has no fusions
        "fwd:bf16:n256:k128:e16:topk4:permute_y:sm_90a",
        "dx:bf16:n256:k128:e16:topk4:sm_90a",
        "dw:bf16:n256:k128:e16:topk4:out_fp32:sm_90a",
        "combine:bf16:n256:k256:e4:topk4:sm_90a",
        "combine_backward:bf16:n256:k256:e4:topk4:sm_90a",
        "gated_backward:bf16:n256:k256:e1:topk1:sm_90a",
        // MOEJIT_CHECK_ROUTING before the router GEMM (one expert) and the experts' GEMMs
        "check_routing:bf16:n8:k8:e1:topk1:sm_90a",
        "check_routing:bf16:n8:k8:e16:topk1:sm_90a",
    };
    CHECK(specs_of(kernels) == expected);
    for (const Problem& problem : kernels) CHECK(problem.arch == kHopper);

    // The dtype reaches every kernel but the routing indices' (int32 ids only) and the routing check's.
    Qwen3MoeConfig half = config;
    half.dtype = DType::fp16;
    for (const Problem& problem : Qwen3MoeBlock::kernels(half, Arch::parse("sm_80"))) {
        INFO(to_spec(problem));
        const bool dtype_free = problem.op == Op::routing_histogram || problem.op == Op::routing_indices ||
                                problem.op == Op::check_routing;
        CHECK(problem.dtype == (dtype_free ? DType::bf16 : DType::fp16));
        CHECK(problem.arch.name() == "sm_80");
    }
}

TEST_CASE("Llama4TextMoe::kernels names each kernel forward and backward launch, and no other", "[cpu][blocks]") {
    const Llama4MoeConfig config{/*hidden=*/256, /*intermediate=*/128, /*shared_intermediate=*/64, /*experts=*/16,
                                 /*topk=*/1, DType::bf16};
    const std::vector<Problem> kernels = Llama4TextMoe::kernels(config, kHopper);
    CHECK(kernels.size() == specs_of(kernels).size());
    const std::set<std::string> expected = {
        "fwd:bf16:n16:k256:e1:topk1:sm_90a",
        "dx:bf16:n16:k256:e1:topk1:sm_90a",
        "dw:bf16:n16:k256:e1:topk1:out_fp32:sm_90a",
        "route_topk:bf16:n8:k8:e16:topk1:sm_90a",
        "routing_histogram:bf16:n8:k8:e16:topk1:sm_90a",
        "routing_indices:bf16:n8:k8:e16:topk1:sm_90a",
        "router_backward:bf16:n8:k8:e16:topk1:sm_90a",
        // the score-scaled input (forward) and d(score) (backward)
        "combine_backward:bf16:n256:k256:e1:topk1:sm_90a",
        // gate_up on the scaled input in expert order: fwd and dW; its dX gathers (permute_x)
        "fwd:bf16:n256:k256:e16:topk1:gated:sm_90a",
        "dw:bf16:n256:k256:e16:topk1:out_fp32:sm_90a",
        "dx:bf16:n256:k256:e16:topk1:permute_x:sm_90a",
        "fwd:bf16:n256:k128:e16:topk1:permute_y:sm_90a",
        "dx:bf16:n256:k128:e16:topk1:sm_90a",
        "dw:bf16:n256:k128:e16:topk1:out_fp32:sm_90a",
        // the shared expert: dense GEMMs of one "expert", Is = 64
        "fwd:bf16:n128:k256:e1:topk1:gated:sm_90a",
        "dx:bf16:n128:k256:e1:topk1:sm_90a",
        "dw:bf16:n128:k256:e1:topk1:out_fp32:sm_90a",
        "fwd:bf16:n256:k64:e1:topk1:sm_90a",
        "dx:bf16:n256:k64:e1:topk1:sm_90a",
        "dw:bf16:n256:k64:e1:topk1:out_fp32:sm_90a",
        "combine:bf16:n256:k256:e1:topk1:sm_90a",
        "gated_backward:bf16:n128:k128:e1:topk1:sm_90a",
        "gated_backward:bf16:n256:k256:e1:topk1:sm_90a",
        "permute_rows:bf16:n256:k256:e1:topk1:sm_90a",
        "check_routing:bf16:n8:k8:e1:topk1:sm_90a",
        "check_routing:bf16:n8:k8:e16:topk1:sm_90a",
    };
    CHECK(specs_of(kernels) == expected);

    // topk 2: the combines of the routed slots and of dHidden's partial sum become two kernels.
    Llama4MoeConfig two = config;
    two.topk = 2;
    const std::set<std::string> specs = specs_of(Llama4TextMoe::kernels(two, kHopper));
    CHECK(specs.count("combine:bf16:n256:k256:e2:topk2:sm_90a") == 1);
    CHECK(specs.count("combine:bf16:n256:k256:e1:topk1:sm_90a") == 1);
    CHECK(specs.count("permute_rows:bf16:n256:k256:e2:topk2:sm_90a") == 1);
}

TEST_CASE("gemm_pass derives dX and dW the way GroupedGemm documents", "[cpu][blocks]") {
    Problem forward = expert_gemm(DType::bf16, 256, 128, 16, 4);
    forward.permute_x = true;
    forward.gated = true;
    CHECK(to_spec(gemm_pass(forward, GemmPass::fwd)) == "fwd:bf16:n256:k128:e16:topk4:permute_x:gated:sm_90a");
    CHECK(to_spec(gemm_pass(forward, GemmPass::dx)) == "dx:bf16:n256:k128:e16:topk4:permute_x:sm_90a");
    CHECK(to_spec(gemm_pass(forward, GemmPass::dw)) == "dw:bf16:n256:k128:e16:topk4:permute_x:sm_90a");
    CHECK(to_spec(gemm_pass(forward, GemmPass::dw_fp32)) == "dw:bf16:n256:k128:e16:topk4:permute_x:out_fp32:sm_90a");
}


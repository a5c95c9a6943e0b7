// What the MoE blocks compile and accept, with no GPU: each block's kernel list (the list
// `moejit precompile` compiles for a preset) names exactly the kernels its forward and backward
// launch, and every bad config is rejected by workspace_bytes and the constructor before the
// device is touched. gpu_block_kernels.cpp runs the blocks against a cache holding only these lists.
#include <moejit/error.hpp>
#include <moejit/llama4_moe.hpp>
#include <moejit/qwen3_moe.hpp>

#include "codegen/kernel_problems.hpp"
#include "codegen/models.hpp"
#include "moe/model_kernels.hpp"
#include "tests/catch.hpp"
#include "tests/support/errors.hpp"

#include <algorithm>
#include <set>
#include <string>
#include <vector>

using namespace moejit;
using moejit::testing::error_message;
using moejit::testing::mentions;

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
        // gate_up gathers token rows with the gated activation, saving gate|up for the backward;
        // its dX and dW (fp32) drop `gated` and the preactivation
        "fwd:bf16:n256:k256:e16:topk4:permute_x:gated:preactivation:sm_90a",
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
        "fwd:bf16:n256:k256:e16:topk1:gated:preactivation:sm_90a",
        "dw:bf16:n256:k256:e16:topk1:out_fp32:sm_90a",
        "dx:bf16:n256:k256:e16:topk1:permute_x:sm_90a",
        "fwd:bf16:n256:k128:e16:topk1:permute_y:sm_90a",
        "dx:bf16:n256:k128:e16:topk1:sm_90a",
        "dw:bf16:n256:k128:e16:topk1:out_fp32:sm_90a",
        // the shared expert: dense GEMMs of one "expert", Is = 64
        "fwd:bf16:n128:k256:e1:topk1:gated:preactivation:sm_90a",
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

TEST_CASE("Blocks without fp32_weight_gradients compile every weight gradient in the block's dtype instead",
          "[cpu][blocks]") {
    // The same list but for the dW kernels' output option: each out_fp32 dW becomes the plain one.
    auto without_fp32_dw = [](const std::vector<Problem>& fp32_list) {
        std::set<std::string> specs;
        for (Problem problem : fp32_list) {
            if (problem.op == Op::dw) {
                CHECK(problem.out_fp32);
                problem.out_fp32 = false;
            }
            specs.insert(to_spec(problem));
        }
        return specs;
    };
    const Qwen3MoeConfig qwen3{256, 128, 16, 4, true, DType::bf16};
    Qwen3MoeConfig qwen3_low = qwen3;
    qwen3_low.fp32_weight_gradients = false;
    const std::vector<Problem> qwen3_kernels = Qwen3MoeBlock::kernels(qwen3_low, kHopper);
    CHECK(specs_of(qwen3_kernels) == without_fp32_dw(Qwen3MoeBlock::kernels(qwen3, kHopper)));
    CHECK(std::count_if(qwen3_kernels.begin(), qwen3_kernels.end(), [](const Problem& p) { return p.op == Op::dw; }) ==
          3);  // router, gate_up, down
    CHECK(specs_of(qwen3_kernels).count("dw:bf16:n256:k256:e16:topk4:permute_x:sm_90a") == 1);

    const Llama4MoeConfig llama4{256, 128, 64, 16, 1, DType::bf16};
    Llama4MoeConfig llama4_low = llama4;
    llama4_low.fp32_weight_gradients = false;
    const std::vector<Problem> llama4_kernels = Llama4TextMoe::kernels(llama4_low, kHopper);
    CHECK(specs_of(llama4_kernels) == without_fp32_dw(Llama4TextMoe::kernels(llama4, kHopper)));
    CHECK(std::count_if(llama4_kernels.begin(), llama4_kernels.end(),
                        [](const Problem& p) { return p.op == Op::dw; }) == 5);  // router, 2 routed, 2 shared
    // The workspace does not depend on it: the gradients are the caller's buffers.
    CHECK(Qwen3MoeBlock::workspace_bytes(qwen3_low, 64) == Qwen3MoeBlock::workspace_bytes(qwen3, 64));
}

TEST_CASE("model_kernels: the qwen3 and llama4 presets compile their block's list", "[cpu][blocks]") {
    for (const ModelPreset& model : model_presets()) {
        INFO(model.name);
        const std::vector<Problem> kernels = model_kernels(model, kHopper, DType::bf16);
        if (model.block == ModelBlock::qwen3)
            CHECK(kernels == Qwen3MoeBlock::kernels(qwen3_moe_config(model, DType::bf16), kHopper));
        if (model.block == ModelBlock::llama4)
            CHECK(kernels == Llama4TextMoe::kernels(llama4_moe_config(model, DType::bf16), kHopper));
        CHECK((model.block == ModelBlock::qwen3) == (model.name.rfind("qwen3-", 0) == 0));
        CHECK((model.block == ModelBlock::llama4) == (model.name == "llama4-scout"));
        for (const Problem& problem : kernels) CHECK_NOTHROW(problem.validate());
    }
    const std::set<std::string> qwen3 = specs_of(model_kernels(find_model("qwen3-30b-a3b"), kHopper, DType::bf16));
    CHECK(qwen3.count("fwd:bf16:n128:k2048:e1:topk1:sm_90a") == 1);  // the router GEMM
    CHECK(qwen3.count("fwd:bf16:n2048:k768:e128:topk8:permute_y:sm_90a") == 1);
    CHECK(qwen3.count("fwd:bf16:n2048:k768:e128:topk8:permute_y:mul_post:sm_90a") == 0);
    CHECK(qwen3.count("dw:bf16:n1536:k2048:e128:topk8:permute_x:out_fp32:sm_90a") == 1);
    CHECK(qwen3.count("route_topk:bf16:n8:k8:e128:topk8:sm_90a") == 1);
}

TEST_CASE("model_kernels: presets with no block get every GroupedGemm pass of an MoE MLP", "[cpu][blocks]") {
    const std::set<std::string> specs = specs_of(model_kernels(find_model("mixtral-8x7b"), kHopper, DType::bf16));
    const std::set<std::string> expected = {
        "route_topk:bf16:n8:k8:e8:topk2:sm_90a",
        "routing_histogram:bf16:n8:k8:e8:topk1:sm_90a",
        "routing_indices:bf16:n8:k8:e8:topk1:sm_90a",
        "router_backward:bf16:n8:k8:e8:topk2:sm_90a",
        "fwd:bf16:n28672:k4096:e8:topk2:permute_x:gated:preactivation:sm_90a",
        "dx:bf16:n28672:k4096:e8:topk2:permute_x:sm_90a",
        "dw:bf16:n28672:k4096:e8:topk2:permute_x:sm_90a",
        "dw:bf16:n28672:k4096:e8:topk2:permute_x:out_fp32:sm_90a",
        // down weighting rows as it scatters them: no dW (GroupedGemm rejects dW with mul_post)
        "fwd:bf16:n4096:k14336:e8:topk2:permute_y:mul_post:sm_90a",
        "dx:bf16:n4096:k14336:e8:topk2:permute_y:mul_post:sm_90a",
        // down scattering unweighted rows, every pass
        "fwd:bf16:n4096:k14336:e8:topk2:permute_y:sm_90a",
        "dx:bf16:n4096:k14336:e8:topk2:permute_y:sm_90a",
        "dw:bf16:n4096:k14336:e8:topk2:permute_y:sm_90a",
        "dw:bf16:n4096:k14336:e8:topk2:permute_y:out_fp32:sm_90a",
        "gated_backward:bf16:n28672:k28672:e1:topk1:sm_90a",
        "combine:bf16:n4096:k4096:e2:topk2:sm_90a",
        "check_routing:bf16:n8:k8:e8:topk1:sm_90a",
    };
    CHECK(specs == expected);
    // The passes agree with the ones `moejit source --model ... --pass` names, whose gated forward
    // is the inference kernel (it saves no preactivation: the training one adds the output).
    for (Op op : model_passes())
        for (ModelGemm gemm : model_gemms()) {
            Problem problem = model_gemm(find_model("mixtral-8x7b"), gemm, op, DType::bf16, kHopper);
            CHECK(!problem.saves_preactivation);
            problem.saves_preactivation = problem.gated;
            CHECK(specs.count(to_spec(problem)) == 1);
        }

    // For inference: the forward alone, the gated GEMM saving nothing.
    const std::set<std::string> inference =
        specs_of(model_kernels(find_model("mixtral-8x7b"), kHopper, DType::bf16, LayerOptions{false, true}));
    CHECK(inference == std::set<std::string>{
                           "route_topk:bf16:n8:k8:e8:topk2:sm_90a",
                           "routing_histogram:bf16:n8:k8:e8:topk1:sm_90a",
                           "routing_indices:bf16:n8:k8:e8:topk1:sm_90a",
                           "fwd:bf16:n28672:k4096:e8:topk2:permute_x:gated:sm_90a",
                           "fwd:bf16:n4096:k14336:e8:topk2:permute_y:mul_post:sm_90a",
                           "combine:bf16:n4096:k4096:e2:topk2:sm_90a",
                           "check_routing:bf16:n8:k8:e8:topk1:sm_90a",
                       });
}

TEST_CASE("Blocks built for inference compile their forward's kernels only, the gated GEMMs saving nothing",
          "[cpu][blocks]") {
    // The training list's forward kernels (what forward() launches), with the gated forwards
    // replaced by the ones without the preactivation output.
    auto forward_only = [](const std::vector<Problem>& training_list, bool llama4) {
        std::set<std::string> specs;
        for (Problem problem : training_list) {
            const bool forward = problem.op == Op::fwd || problem.op == Op::route_topk ||
                                 problem.op == Op::routing_histogram || problem.op == Op::routing_indices ||
                                 problem.op == Op::check_routing || (problem.op == Op::combine && problem.topk > 1) ||
                                 (llama4 && problem.op == Op::combine_backward);  // the scaled input
            if (!forward) continue;
            CHECK(problem.saves_preactivation == problem.gated);
            problem.saves_preactivation = false;
            specs.insert(to_spec(problem));
        }
        return specs;
    };
    Qwen3MoeConfig qwen3{256, 128, 16, 4, true, DType::bf16};
    const std::set<std::string> qwen3_forward = forward_only(Qwen3MoeBlock::kernels(qwen3, kHopper), false);
    qwen3.training = false;
    const std::vector<Problem> qwen3_kernels = Qwen3MoeBlock::kernels(qwen3, kHopper);
    CHECK(specs_of(qwen3_kernels) == qwen3_forward);
    CHECK(qwen3_kernels.size() == 9);  // router GEMM, 3 routing, gate_up, down, combine, 2 routing checks
    CHECK(specs_of(qwen3_kernels).count("fwd:bf16:n256:k256:e16:topk4:permute_x:gated:sm_90a") == 1);

    Llama4MoeConfig llama4{256, 128, 64, 16, 2, DType::bf16};
    const std::set<std::string> llama4_forward = forward_only(Llama4TextMoe::kernels(llama4, kHopper), true);
    llama4.training = false;
    const std::vector<Problem> llama4_kernels = Llama4TextMoe::kernels(llama4, kHopper);
    CHECK(specs_of(llama4_kernels) == llama4_forward);
    CHECK(specs_of(llama4_kernels).count("fwd:bf16:n256:k256:e16:topk2:gated:sm_90a") == 1);
    CHECK(specs_of(llama4_kernels).count("fwd:bf16:n128:k256:e1:topk1:gated:sm_90a") == 1);
    CHECK(specs_of(llama4_kernels).count("combine:bf16:n256:k256:e2:topk2:sm_90a") == 1);

    // model_kernels and model_grouped_gemms follow the option.
    for (const ModelPreset& model : model_presets()) {
        INFO(model.name);
        const LayerOptions inference{false, true};
        const std::vector<Problem> kernels = model_kernels(model, kHopper, DType::bf16, inference);
        if (model.block == ModelBlock::qwen3)
            CHECK(kernels == Qwen3MoeBlock::kernels(qwen3_moe_config(model, DType::bf16, inference), kHopper));
        if (model.block == ModelBlock::llama4)
            CHECK(kernels == Llama4TextMoe::kernels(llama4_moe_config(model, DType::bf16, inference), kHopper));
        for (const Problem& problem : model_grouped_gemms(model, kHopper, DType::bf16, inference)) {
            CHECK(problem.op == Op::fwd);
            CHECK(!problem.saves_preactivation);
        }
    }
}

TEST_CASE("A block built for inference plans the forward's buffers only", "[cpu][blocks]") {
    // T = 64 tokens, M = 256 routed rows, H = 256, I = 128, E = 16, bf16: every buffer below is a
    // multiple of 256 bytes, so the layout's rounding adds nothing. The training block's own:
    // router d(logits) T*E*2; preactivation and d(gate|up) M*2I*2 each; d(y), d(x) slots M*H*2 each;
    // d(topk weights) M*4; d(h) M*I*2; the router's dX T*H*2.
    const size_t T = 64, M = 256, H = 256, I = 128, E = 16;
    const size_t qwen3_training_only = T * E * 2 + 2 * (M * 2 * I * 2) + 2 * (M * H * 2) + M * 4 + M * I * 2 + T * H * 2;
    Qwen3MoeConfig qwen3{256, 128, 16, 4, true, DType::bf16};
    const size_t qwen3_training = Qwen3MoeBlock::workspace_bytes(qwen3, 64);
    qwen3.training = false;
    CHECK(Qwen3MoeBlock::workspace_bytes(qwen3, 64) == qwen3_training - qwen3_training_only);

    // Llama4 (topk 4, shared Is = 64) adds the shared expert's preactivation T*2Is*2, d(h) T*Is*2,
    // d(gate|up) T*2Is*2, d(x) T*H*2 and dHidden's partial sum T*H*2.
    const size_t Is = 64;
    const size_t llama4_training_only =
        qwen3_training_only + T * 2 * Is * 2 + T * Is * 2 + T * 2 * Is * 2 + 2 * (T * H * 2);
    Llama4MoeConfig llama4{256, 128, 64, 16, 4, DType::bf16};
    const size_t llama4_training = Llama4TextMoe::workspace_bytes(llama4, 64);
    llama4.training = false;
    CHECK(Llama4TextMoe::workspace_bytes(llama4, 64) == llama4_training - llama4_training_only);
}

TEST_CASE("gemm_pass derives dX and dW the way GroupedGemm documents", "[cpu][blocks]") {
    Problem forward = expert_gemm(DType::bf16, 256, 128, 16, 4);
    forward.permute_x = true;
    forward.gated = true;
    CHECK(to_spec(gemm_pass(forward, GemmPass::fwd)) == "fwd:bf16:n256:k128:e16:topk4:permute_x:gated:sm_90a");
    forward.saves_preactivation = true;
    CHECK(to_spec(gemm_pass(forward, GemmPass::fwd)) ==
          "fwd:bf16:n256:k128:e16:topk4:permute_x:gated:preactivation:sm_90a");
    CHECK(to_spec(gemm_pass(forward, GemmPass::dx)) == "dx:bf16:n256:k128:e16:topk4:permute_x:sm_90a");
    CHECK(to_spec(gemm_pass(forward, GemmPass::dw)) == "dw:bf16:n256:k128:e16:topk4:permute_x:sm_90a");
    CHECK(to_spec(gemm_pass(forward, GemmPass::dw_fp32)) == "dw:bf16:n256:k128:e16:topk4:permute_x:out_fp32:sm_90a");
}

TEST_CASE("layer_rows_bucket: routed GEMMs see tokens * topk rows over their experts, dense ones tokens", "[cpu][blocks]") {
    const Problem routed = expert_gemm(DType::bf16, 256, 128, 128, 8);  // 16 tokens: 1 row per expert
    const Problem dense = expert_gemm(DType::bf16, 128, 256, 1, 1);     // 16 tokens: 16 rows
    CHECK(layer_rows_bucket(routed, 16) == RowsBucket::decode);
    CHECK(layer_rows_bucket(routed, 1024) == RowsBucket::small);   // 64 rows per expert
    CHECK(layer_rows_bucket(routed, 8192) == RowsBucket::large);
    CHECK(layer_rows_bucket(routed, 4096) == RowsBucket::medium);  // 256 rows per expert
    CHECK(layer_rows_bucket(dense, 16) == RowsBucket::decode);
    CHECK(layer_rows_bucket(dense, 64) == RowsBucket::small);
    CHECK(layer_rows_bucket(dense, 1024) == RowsBucket::large);
}

TEST_CASE("workspace_bytes rejects what the block constructors reject", "[cpu][blocks]") {
    const Qwen3MoeConfig qwen3{2048, 768, 128, 8, true, DType::bf16};
    const Llama4MoeConfig llama4{5120, 8192, 0, 16, 1, DType::bf16};
    const size_t small = Qwen3MoeBlock::workspace_bytes(qwen3, 16), large = Qwen3MoeBlock::workspace_bytes(qwen3, 4096);
    CHECK(small > 0);
    CHECK(large > small);
    CHECK(Llama4TextMoe::workspace_bytes(llama4, 16) > 0);

    auto bad_qwen3 = [&](auto&& change, int64_t max_tokens, const char* mention) {
        Qwen3MoeConfig c = qwen3;
        change(c);
        const std::string message = error_message([&] { Qwen3MoeBlock::workspace_bytes(c, max_tokens); });
        INFO(message);
        CHECK(mentions(message, "Qwen3MoeBlock"));
        CHECK(mentions(message, mention));
    };
    bad_qwen3([](Qwen3MoeConfig& c) { c.hidden = -2048; }, 16, "hidden");
    bad_qwen3([](Qwen3MoeConfig& c) { c.moe_intermediate = 0; }, 16, "moe_intermediate");
    bad_qwen3([](Qwen3MoeConfig& c) { c.hidden = 2044; }, 16, "multiples of 8");
    bad_qwen3([](Qwen3MoeConfig&) {}, 0, "max_tokens");
    bad_qwen3([](Qwen3MoeConfig&) {}, -5, "max_tokens");
    bad_qwen3([](Qwen3MoeConfig&) {}, int64_t{1} << 28, "max_tokens");  // 2^31 routed rows
    bad_qwen3([](Qwen3MoeConfig& c) { c.topk = 33; }, 16, "topk");
    bad_qwen3([](Qwen3MoeConfig& c) { c.topk = 0; }, 16, "topk");
    bad_qwen3([](Qwen3MoeConfig& c) { c.experts = 2048; }, 16, "experts");
    bad_qwen3([](Qwen3MoeConfig& c) { c.experts = 12; }, 16, "multiple of 8");
    // Each dimension within its limits, the workspace past 2^64 bytes (about 1.8e19): an error, not
    // a wrapped size of 1.7 GB that the block would write past.
    bad_qwen3([](Qwen3MoeConfig& c) { c.hidden = 1073741816; c.moe_intermediate = 8; c.experts = 8;
                                      c.topk = 1; }, 2147483647, "overflows");
    // Past what a GEMM counts in int: the block names itself and the kernel.
    bad_qwen3([](Qwen3MoeConfig& c) { c.hidden = 2147450848; c.moe_intermediate = 1073741816; c.experts = 8;
                                      c.topk = 1; }, 16, "below 2^30");

    auto bad_llama4 = [&](auto&& change, int64_t max_tokens, const char* mention) {
        Llama4MoeConfig c = llama4;
        change(c);
        const std::string message = error_message([&] { Llama4TextMoe::workspace_bytes(c, max_tokens); });
        INFO(message);
        CHECK(mentions(message, "Llama4TextMoe"));
        CHECK(mentions(message, mention));
    };
    bad_llama4([](Llama4MoeConfig& c) { c.hidden = -2048; }, 16, "hidden");
    bad_llama4([](Llama4MoeConfig& c) { c.shared_intermediate = -8; }, 16, "shared_intermediate");
    bad_llama4([](Llama4MoeConfig& c) { c.shared_intermediate = 12; }, 16, "shared_intermediate");
    bad_llama4([](Llama4MoeConfig&) {}, 0, "max_tokens");
    bad_llama4([](Llama4MoeConfig& c) { c.topk = 17; }, 16, "topk");
    bad_llama4([](Llama4MoeConfig& c) { c.experts = 1032; c.topk = 1; }, 16, "experts");
    bad_llama4([](Llama4MoeConfig& c) { c.hidden = 1073741816; c.intermediate = 8; c.experts = 8; }, 2147483647,
               "overflows");
    bad_llama4([](Llama4MoeConfig& c) { c.hidden = 2147450848; c.intermediate = 1073741816; c.experts = 8; }, 16,
               "below 2^30");

    // The kernel lists take the same checks.
    Qwen3MoeConfig wide = qwen3;
    wide.topk = 33;
    CHECK(mentions(error_message([&] { Qwen3MoeBlock::kernels(wide, kHopper); }), "topk"));
    CHECK(mentions(error_message([&] { Qwen3MoeBlock::kernels(qwen3, Arch{7, 5, false}); }), "unsupported arch sm_75"));
    CHECK(mentions(error_message([&] { Llama4TextMoe::kernels(llama4, Arch{7, 5, false}); }), "unsupported arch sm_75"));
}

TEST_CASE("block constructors reject router limits before touching the device", "[cpu][blocks]") {
    // On a machine with no driver, a constructor that reached the device would throw the driver's
    // error instead; with one, it would allocate first. Either way the message names the block.
    const CUdeviceptr external = 1 << 20;  // a caller's workspace: 256-byte aligned, never dereferenced
    for (CUdeviceptr workspace : {CUdeviceptr{0}, external}) {
        Qwen3MoeConfig qwen3{256, 128, 64, 33, true, DType::bf16};
        std::string message = error_message([&] { Qwen3MoeBlock block(qwen3, 64, workspace); });
        CHECK(mentions(message, "Qwen3MoeBlock: topk must be in 1..min(32, experts), got 33"));
        qwen3.topk = 8;
        qwen3.experts = 2048;
        message = error_message([&] { Qwen3MoeBlock block(qwen3, 64, workspace); });
        CHECK(mentions(message, "Qwen3MoeBlock: experts must be in 1..1024, got 2048"));
        qwen3.experts = 64;
        message = error_message([&] { Qwen3MoeBlock block(qwen3, 0, workspace); });
        CHECK(mentions(message, "Qwen3MoeBlock: max_tokens"));

        Llama4MoeConfig llama4{256, 128, 0, 1032, 1, DType::bf16};
        message = error_message([&] { Llama4TextMoe block(llama4, 64, workspace); });
        CHECK(mentions(message, "Llama4TextMoe: experts must be in 1..1024, got 1032"));
        llama4.experts = 16;
        llama4.topk = 17;
        message = error_message([&] { Llama4TextMoe block(llama4, 64, workspace); });
        CHECK(mentions(message, "Llama4TextMoe: topk must be in 1..min(32, experts), got 17"));
        llama4.topk = 1;
        llama4.experts = 12;
        message = error_message([&] { Llama4TextMoe block(llama4, 64, workspace); });
        CHECK(mentions(message, "Llama4TextMoe: the router GEMM needs experts to be a multiple of 8"));
    }
}

TEST_CASE("model_grouped_gemms: `moejit tune` times the grouped GEMMs the layer launches, flags and all",
          "[cpu][blocks]") {
    // A tuned tiling is looked up by the exact Problem of the pass: one tuned under other flags than
    // the block launches would never be used.
    const std::vector<Problem> qwen3 = model_grouped_gemms(find_model("qwen3-30b-a3b"), kHopper, DType::bf16);
    CHECK(qwen3.size() == specs_of(qwen3).size());  // each once
    const std::set<std::string> expected = {
        "fwd:bf16:n128:k2048:e1:topk1:sm_90a",  // the router GEMM
        "dx:bf16:n128:k2048:e1:topk1:sm_90a",
        "dw:bf16:n128:k2048:e1:topk1:out_fp32:sm_90a",
        "fwd:bf16:n1536:k2048:e128:topk8:permute_x:gated:preactivation:sm_90a",
        "dx:bf16:n1536:k2048:e128:topk8:permute_x:sm_90a",
        "dw:bf16:n1536:k2048:e128:topk8:permute_x:out_fp32:sm_90a",
        "fwd:bf16:n2048:k768:e128:topk8:permute_y:sm_90a",  // unscaled: the combine applies the weights
        "dx:bf16:n2048:k768:e128:topk8:sm_90a",
        "dw:bf16:n2048:k768:e128:topk8:out_fp32:sm_90a",
    };
    CHECK(specs_of(qwen3) == expected);

    // For every preset: exactly the GEMMs among the layer's kernels (for qwen3 and llama4, the block's).
    for (const ModelPreset& model : model_presets()) {
        INFO(model.name);
        std::vector<Problem> launched;
        for (const Problem& kernel : model_kernels(model, kHopper, DType::fp16))
            if (kernel.op == Op::fwd || kernel.op == Op::dx || kernel.op == Op::dw) launched.push_back(kernel);
        const std::vector<Problem> tuned = model_grouped_gemms(model, kHopper, DType::fp16);
        CHECK(tuned == launched);
        for (const Problem& problem : tuned) CHECK(problem.dtype == DType::fp16);
    }
    std::vector<Problem> llama4;
    for (const Problem& kernel : Llama4TextMoe::kernels(llama4_moe_config(find_model("llama4-scout"), DType::bf16),
                                                        kHopper))
        if (kernel.op == Op::fwd || kernel.op == Op::dx || kernel.op == Op::dw) llama4.push_back(kernel);
    CHECK(model_grouped_gemms(find_model("llama4-scout"), kHopper, DType::bf16) == llama4);
}

#include "moe/model_kernels.hpp"

#include "codegen/kernel_problems.hpp"

namespace moejit {

Qwen3MoeConfig qwen3_moe_config(const ModelPreset& model, DType dtype, LayerOptions options) {
    Qwen3MoeConfig config{model.hidden, model.intermediate, model.experts, model.topk, /*norm_topk_prob=*/true, dtype};
    config.fp32_weight_gradients = options.fp32_weight_gradients;
    config.training = options.training;
    return config;
}

Llama4MoeConfig llama4_moe_config(const ModelPreset& model, DType dtype, LayerOptions options) {
    Llama4MoeConfig config{model.hidden, model.intermediate, /*shared_intermediate=*/0, model.experts, model.topk, dtype};
    config.fp32_weight_gradients = options.fp32_weight_gradients;
    config.training = options.training;
    return config;
}

namespace {

std::vector<Problem> layer_kernels(const ModelPreset& model, Arch arch, DType dtype, bool training) {
    Problem gate_up = model_gemm(model, ModelGemm::gate_up, Op::fwd, dtype, arch);
    gate_up.saves_preactivation = training;
    const Problem weighted_down = model_gemm(model, ModelGemm::down, Op::fwd, dtype, arch);
    KernelList list;
    list.add_routing(model.experts, model.topk, dtype, /*backward=*/training);
    list.add_gemm(gate_up, {GemmPass::fwd});
    list.add_gemm(weighted_down, {GemmPass::fwd});
    list.add(combine_problem(dtype, model.hidden, model.topk));
    if (!training) return list.for_arch(arch);
    Problem down = weighted_down;
    down.fuse_mul_post = false;
    list.add_gemm(gate_up, {GemmPass::dx, GemmPass::dw, GemmPass::dw_fp32});
    list.add_gemm(weighted_down, {GemmPass::dx});  // GroupedGemm has no dw with fuse_mul_post
    list.add_gemm(down, {GemmPass::fwd, GemmPass::dx, GemmPass::dw, GemmPass::dw_fp32});
    list.add(gated_backward_problem(dtype, gate_up.n));
    return list.for_arch(arch);
}

}  // namespace

std::vector<Problem> model_kernels(const ModelPreset& model, Arch arch, DType dtype, LayerOptions options) {
    switch (model.block) {
        case ModelBlock::qwen3: return Qwen3MoeBlock::kernels(qwen3_moe_config(model, dtype, options), arch);
        case ModelBlock::llama4: return Llama4TextMoe::kernels(llama4_moe_config(model, dtype, options), arch);
        case ModelBlock::none: break;
    }
    return layer_kernels(model, arch, dtype, options.training);
}

std::vector<Problem> model_grouped_gemms(const ModelPreset& model, Arch arch, DType dtype, LayerOptions options) {
    std::vector<Problem> gemms;
    for (const Problem& kernel : model_kernels(model, arch, dtype, options))
        if (!is_elementwise(kernel.op)) gemms.push_back(kernel);
    return gemms;
}

RowsBucket layer_rows_bucket(const Problem& kernel, int64_t tokens) {
    return rows_bucket(tokens * kernel.topk, kernel.experts);
}

}  // namespace moejit

#include "codegen/models.hpp"

#include <moejit/error.hpp>

#include "codegen/kernel_problems.hpp"

namespace moejit {

const std::vector<ModelPreset>& model_presets() {
    // name, hidden H, expert intermediate I, experts E, topk, block
    static const std::vector<ModelPreset> presets = {
        {"qwen3-30b-a3b", 2048, 768, 128, 8, ModelBlock::qwen3},
        {"qwen3-235b-a22b", 4096, 1536, 128, 8, ModelBlock::qwen3},
        {"deepseek-v3", 7168, 2048, 256, 8, ModelBlock::none},
        {"mixtral-8x7b", 4096, 14336, 8, 2, ModelBlock::none},
        {"llama4-scout", 5120, 8192, 16, 1, ModelBlock::llama4},  // and a shared expert of I
        {"gpt-oss-120b", 2880, 2880, 128, 4, ModelBlock::none},
    };
    return presets;
}

const ModelPreset& find_model(std::string_view name) {
    std::string known;
    for (const ModelPreset& preset : model_presets()) {
        if (preset.name == name) return preset;
        known += (known.empty() ? "" : ", ") + preset.name;
    }
    throw Error("unknown model '" + std::string(name) + "': known models are " + known);
}

const char* to_string(ModelGemm gemm) { return gemm == ModelGemm::gate_up ? "gate_up" : "down"; }

ModelGemm parse_model_gemm(std::string_view name) {
    for (ModelGemm gemm : model_gemms())
        if (name == to_string(gemm)) return gemm;
    throw Error("unknown gemm '" + std::string(name) + "': expected gate_up or down");
}

const std::vector<ModelGemm>& model_gemms() {
    static const std::vector<ModelGemm> gemms = {ModelGemm::gate_up, ModelGemm::down};
    return gemms;
}

const std::vector<Op>& model_passes() {
    static const std::vector<Op> passes = {Op::fwd, Op::dx, Op::dw};
    return passes;
}

Problem model_gemm(const ModelPreset& model, ModelGemm gemm, Op op, DType dtype, Arch arch) {
    // W is [E, N, K]: the problem is named by the weight's shape, whatever the pass computes with it.
    Problem forward = gemm == ModelGemm::gate_up
                          ? expert_gemm(dtype, 2 * model.intermediate, model.hidden, model.experts, model.topk)
                          : expert_gemm(dtype, model.hidden, model.intermediate, model.experts, model.topk);
    forward.arch = arch;
    if (gemm == ModelGemm::gate_up) {
        forward.permute_x = true;
        forward.gated = true;
    } else {
        forward.permute_y = true;
        forward.fuse_mul_post = op != Op::dw;  // not a dw fusion: its dY comes scaled
    }
    Problem problem;
    switch (op) {
        case Op::fwd: problem = gemm_pass(forward, GemmPass::fwd); break;
        case Op::dx: problem = gemm_pass(forward, GemmPass::dx); break;
        case Op::dw: problem = gemm_pass(forward, GemmPass::dw); break;
        default: throw Error(std::string("a model GEMM has no pass ") + to_string(op) + ": expected fwd, dx or dw");
    }
    problem.validate();
    return problem;
}

Problem model_gemm(const ModelPreset& model, std::string_view gemm, Op op, DType dtype, Arch arch) {
    return model_gemm(model, parse_model_gemm(gemm), op, dtype, arch);
}

}  // namespace moejit

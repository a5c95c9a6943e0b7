#pragma once
// Model presets: the MoE layer shapes of well-known models, and the grouped GEMMs of their experts.
//
// One expert MLP is two grouped GEMMs over W [E, N, K] (K contiguous):
//   gate_up: N = 2*I, K = H   (rows 0..I-1 gate, I..2I-1 up)
//   down:    N = H,   K = I
// model_gemm() names one of them in one pass (`moejit source --model ... --gemm ... --pass ...`,
// bench, tune). Every kernel a model's MoE layer compiles, the block's routing and elementwise
// kernels included, is model_kernels() (moe/model_kernels.hpp), which `moejit precompile` compiles.
#include <moejit/problem.hpp>

#include <string>
#include <string_view>
#include <vector>

namespace moejit {

// The MoE block a preset runs as: Qwen3MoeBlock, Llama4TextMoe (with a dense shared expert), or
// none of the library's blocks (a layer built from GroupedGemm and the routing calls).
enum class ModelBlock { none, qwen3, llama4 };

struct ModelPreset {
    std::string name;           // "qwen3-30b-a3b"
    int64_t hidden = 0;         // H
    int64_t intermediate = 0;   // I, per expert
    int experts = 0;            // E (routed experts)
    int topk = 1;
    ModelBlock block = ModelBlock::none;
};

// Every preset, in a fixed order.
const std::vector<ModelPreset>& model_presets();

// The preset called `name`; throws moejit::Error naming the known presets when there is none.
const ModelPreset& find_model(std::string_view name);

// The two GEMMs of an expert MLP.
enum class ModelGemm { gate_up, down };
const char* to_string(ModelGemm gemm);
// "gate_up" or "down"; throws moejit::Error otherwise.
ModelGemm parse_model_gemm(std::string_view name);
const std::vector<ModelGemm>& model_gemms();  // gate_up, down

// The passes model_gemm() takes: fwd, dx, dw.
const std::vector<Op>& model_passes();

// The Problem of one GEMM of `model` in one pass (validated), with the fusions of an MoE layer
// that weights the experts' outputs in the down GEMM (examples/moe_mlp.cpp): gate_up gathers token
// rows (permute_x) with the gated activation; down scatters to token order (permute_y) scaled by
// the routing weights (fuse_mul_post), except in dw, which takes a dY the caller already scaled.
// The gated forward is the inference kernel (no saves_preactivation): what `moejit bench` times
// and `moejit source --model` shows; a training layer's adds the preactivation output
// (model_kernels, moe/model_kernels.hpp).
Problem model_gemm(const ModelPreset& model, ModelGemm gemm, Op op, DType dtype, Arch arch);
Problem model_gemm(const ModelPreset& model, std::string_view gemm, Op op, DType dtype, Arch arch);

}  // namespace moejit

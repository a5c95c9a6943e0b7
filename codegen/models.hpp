#pragma once
// Model presets: the MoE layer shapes of well-known models, and the grouped GEMMs each one needs.
//
// One expert MLP is two grouped GEMMs over W [E, N, K] (K contiguous):
//   gate_up: N = 2*I, K = H   (rows 0..I-1 gate, I..2I-1 up)
//   down:    N = H,   K = I
// A kernel is one (gemm, pass) pair: today only the forward pass (Op::fwd) exists. When a pass
// such as dX or dW gets its template, add it to model_passes() and every user of model_kernels()
// (`moejit precompile`, tests) picks it up.
#include <moejit/problem.hpp>

#include <string>
#include <string_view>
#include <vector>

namespace moejit {

struct ModelPreset {
    std::string name;           // "qwen3-30b-a3b"
    int64_t hidden = 0;         // H
    int64_t intermediate = 0;   // I, per expert
    int experts = 0;            // E (routed experts)
    int topk = 1;
    bool has_shared_expert = false;  // a dense expert every token also goes through (Llama 4)
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

// The passes a model needs kernels for, in order. Today: fwd.
const std::vector<Op>& model_passes();

// The Problem of one GEMM of `model` in one pass (validated).
Problem model_gemm(const ModelPreset& model, ModelGemm gemm, Op op, DType dtype, Arch arch);
Problem model_gemm(const ModelPreset& model, std::string_view gemm, Op op, DType dtype, Arch arch);

// Every kernel the model's routed experts need: each pass of model_passes() for each GEMM of
// model_gemms(), pass-major, then gated_backward and combine.
std::vector<Problem> model_kernels(const ModelPreset& model, Arch arch, DType dtype);

}  // namespace moejit

#pragma once
// What `moejit precompile --model` compiles: every kernel a model preset's MoE layer launches,
// forward and backward (or the forward alone, for inference), from the same lists the MoE blocks
// build their kernels from.
#include <moejit/llama4_moe.hpp>
#include <moejit/qwen3_moe.hpp>

#include "codegen/config.hpp"
#include "codegen/models.hpp"

#include <vector>

namespace moejit {

// What a preset's MoE layer runs: the blocks' options of these names. `training`: forward and
// backward, or the forward alone (inference); `fp32_weight_gradients` (training only): weight
// gradients in fp32 or the dtype.
struct LayerOptions {
    bool training = true;
    bool fp32_weight_gradients = true;
};

// The block configuration of a preset: Qwen3 with norm_topk_prob, Llama4 with a shared expert of I.
Qwen3MoeConfig qwen3_moe_config(const ModelPreset& model, DType dtype, LayerOptions options = {});
Llama4MoeConfig llama4_moe_config(const ModelPreset& model, DType dtype, LayerOptions options = {});

// Every kernel of the model's MoE layer for `arch`, each once:
//   ModelBlock::qwen3   Qwen3MoeBlock::kernels(qwen3_moe_config(model, dtype, options))
//   ModelBlock::llama4  Llama4TextMoe::kernels(llama4_moe_config(model, dtype, options))
//   ModelBlock::none    a layer built from the public calls (examples/moe_mlp.cpp). Training:
//                       route_topk, routing_indices and router_backward; gate_up (permute_x, gated,
//                       saving its preactivation) in every GroupedGemm pass (fwd, dx, dw, dw fp32:
//                       the layer launches both kinds of dW); down weighting rows as it scatters them
//                       (permute_y, fuse_mul_post: fwd, dx) and down scattering them unweighted
//                       (permute_y: fwd, dx, dw, dw fp32); gated_activation_backward; combine_topk.
//                       Inference: route_topk, routing_indices, the gate_up forward that saves
//                       nothing, the weighting down forward, combine_topk.
// Each grouped GEMM also brings the MOEJIT_CHECK_ROUTING kernel for its expert count.
std::vector<Problem> model_kernels(const ModelPreset& model, Arch arch, DType dtype, LayerOptions options = {});

// The grouped GEMMs among model_kernels (op fwd, dx or dw), in its order, each with the flags its
// layer launches it with: what `moejit tune --model` times, so that its winners are stored under
// the problems the layer's GroupedGemms look them up by.
std::vector<Problem> model_grouped_gemms(const ModelPreset& model, Arch arch, DType dtype, LayerOptions options = {});

// The rows bucket (the tiling) a kernel of an MoE layer runs in for `tokens` tokens: the routed
// GEMMs see tokens * topk rows over their experts; the dense ones (the router's, a shared
// expert's: one expert, topk 1) tokens rows. Elementwise kernels have one tiling for all.
RowsBucket layer_rows_bucket(const Problem& kernel, int64_t tokens);

}  // namespace moejit

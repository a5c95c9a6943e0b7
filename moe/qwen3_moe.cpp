#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>
#include <moejit/prepare.hpp>
#include <moejit/qwen3_moe.hpp>
#include <moejit/routing.hpp>

#include "codegen/kernel_problems.hpp"
#include "moe/combine_backward.hpp"
#include "moe/pointer_checks.hpp"
#include "moe/router_stage.hpp"
#include "moe/workspace.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

namespace moejit {

namespace {

const char* const kBlock = "Qwen3MoeBlock";

RouterConfig router_config(const Qwen3MoeConfig& c) { return RouterConfig::qwen3(c.experts, c.topk, c.norm_topk_prob); }

// The forward problems of the block's grouped GEMMs (the router's is RouterStage's).
struct Gemms {
    Problem gate_up;        // permute_x + gated
    Problem down;           // permute_y: unscaled rows in slot order (the combine applies the weights)
    Problem down_backward;  // no fusions: backward reads and writes expert order
};

Gemms gemms(const Qwen3MoeConfig& c) {
    Gemms g;
    g.gate_up = expert_gemm(c.dtype, 2 * c.moe_intermediate, c.hidden, c.experts, c.topk);
    g.gate_up.permute_x = true;
    g.gate_up.gated = true;
    g.gate_up.saves_preactivation = c.training;
    g.down = expert_gemm(c.dtype, c.hidden, c.moe_intermediate, c.experts, c.topk);
    g.down.permute_y = true;
    g.down_backward = expert_gemm(c.dtype, c.hidden, c.moe_intermediate, c.experts, c.topk);
    return g;
}

// What forward() and backward() launch, in their order; keep it in step with them.
KernelList block_kernels(const Qwen3MoeConfig& c) {
    const Gemms g = gemms(c);
    KernelList list;
    RouterStage::add_kernels(list, c.dtype, c.hidden, router_config(c), c.training, c.fp32_weight_gradients);
    list.add_gemm(g.gate_up, {GemmPass::fwd});
    list.add_gemm(g.down, {GemmPass::fwd});
    list.add(combine_problem(c.dtype, c.hidden, c.topk));  // the output, and in backward dHidden
    if (!c.training) return list;
    const GemmPass dw = dw_pass(c.fp32_weight_gradients);
    list.add(combine_backward_problem(c.dtype, c.hidden, c.topk));
    list.add_gemm(g.down_backward, {GemmPass::dx, dw});
    list.add(gated_backward_problem(c.dtype, 2 * c.moe_intermediate));
    list.add_gemm(g.gate_up, {GemmPass::dx, dw});
    return list;
}

// forward's and backward's weights, as check_block_pointers checks a call's tensors.
void check_weights(const char* call, const Qwen3MoeWeights& w) {
    check_block_pointers(call, {{"weights.router", w.router}, {"weights.gate_up", w.gate_up}, {"weights.down", w.down}});
}

// Everything the constructor needs to hold before it touches the device.
void validate(const Qwen3MoeConfig& c) {
    if (c.hidden <= 0 || c.moe_intermediate <= 0 || c.hidden % 8 != 0 || c.moe_intermediate % 8 != 0)
        throw Error(std::string(kBlock) + ": hidden and moe_intermediate must be positive multiples of 8, got " +
                    std::to_string(c.hidden) + " and " + std::to_string(c.moe_intermediate));
    RouterStage::validate(router_config(c), kBlock);
    block_kernels(c).validate(kBlock);
}

void validate(const Qwen3MoeConfig& c, int64_t max_tokens) {
    validate(c);
    check_max_tokens(max_tokens, c.topk, kBlock);
}

// Where each intermediate lives in the workspace, for up to max_tokens tokens.
struct Buffers {
    RouterStage::Buffers routing;
    RoutedMlpBuffers mlp;
    size_t total;
};

Buffers plan(const Qwen3MoeConfig& c, int64_t tokens) {
    const size_t T = size_t(tokens), M = T * size_t(c.topk);
    const size_t H = size_t(c.hidden), I = size_t(c.moe_intermediate), bytes = element_bytes(c.dtype);
    WorkspaceLayout layout(kBlock);
    Buffers b;
    b.routing = RouterStage::plan(layout, c.dtype, c.experts, c.topk, tokens, c.training);
    b.mlp = RoutedMlpBuffers::plan(layout, T, M, H, I, bytes, c.training);
    b.total = layout.size();
    return b;
}

}  // namespace

struct Qwen3MoeBlock::State {
    Qwen3MoeConfig config;
    int64_t max_tokens;
    Buffers buffers;
    DeviceWorkspace workspace;
    RouterStage router;  // router GEMM, top-k, routing indices, and their backward
    GroupedGemm gate_up, down, down_backward;  // over gemms(config)
    // Saved by forward for backward.
    CUdeviceptr hidden = 0, router_logits = 0;
    int64_t tokens = -1;

    State(const Qwen3MoeConfig& c, int64_t max_tokens_, CUdeviceptr external)
        : config(c),
          max_tokens(max_tokens_),
          buffers(plan(c, max_tokens_)),
          workspace(buffers.total, external),
          router(c.dtype, c.hidden, router_config(c), c.fp32_weight_gradients, buffers.routing, workspace.pointer()),
          gate_up(gemms(c).gate_up),
          down(gemms(c).down),
          down_backward(gemms(c).down_backward) {}

    CUdeviceptr at(size_t offset) const { return workspace_at(workspace.pointer(), offset, kBlock); }
};

size_t Qwen3MoeBlock::workspace_bytes(const Qwen3MoeConfig& config, int64_t max_tokens) {
    validate(config, max_tokens);
    return plan(config, max_tokens).total;
}

std::vector<Problem> Qwen3MoeBlock::kernels(const Qwen3MoeConfig& config, const Arch& arch) {
    validate(config);
    return block_kernels(config).for_arch(arch);
}

Qwen3MoeBlock::Qwen3MoeBlock(const Qwen3MoeConfig& config, int64_t max_tokens)
    : Qwen3MoeBlock(config, max_tokens, CUdeviceptr{0}) {}

Qwen3MoeBlock::Qwen3MoeBlock(const Qwen3MoeConfig& config, int64_t max_tokens, CUdeviceptr workspace) {
    validate(config, max_tokens);
    state_ = std::make_unique<State>(config, max_tokens, workspace);
}

Qwen3MoeBlock::~Qwen3MoeBlock() = default;

void Qwen3MoeBlock::forward(CUdeviceptr hidden, const Qwen3MoeWeights& weights, CUdeviceptr output,
                            CUdeviceptr router_logits, int64_t tokens, CUstream stream) {
    State& s = *state_;
    const Qwen3MoeConfig& c = s.config;
    if (tokens < 0 || tokens > s.max_tokens)
        throw Error("Qwen3MoeBlock::forward: tokens must be in [0, " + std::to_string(s.max_tokens) + "], got " +
                    std::to_string(tokens));
    check_weights("Qwen3MoeBlock::forward", weights);
    check_block_pointers("Qwen3MoeBlock::forward",
                         {{"hidden", hidden}, {"output", output}, {"router_logits", router_logits}});
    check_forward_tensors("Qwen3MoeBlock::forward", hidden, output, router_logits, tokens, c.hidden, c.experts,
                          element_bytes(c.dtype), c.training);
    // A call refused above launched nothing, so backward may still differentiate the last forward.
    // From here until this forward has launched every step it has nothing to differentiate: a
    // forward that throws midway (a compile or driver error) leaves the routing of its own tokens
    // beside the activations of the last.
    s.tokens = -1;
    const Buffers& b = s.buffers;
    s.router.forward(hidden, weights.router, router_logits, tokens, stream);
    const Routing routing = s.router.routing(tokens);
    const CUdeviceptr preactivation = c.training ? s.at(b.mlp.preactivation) : 0;
    s.gate_up.forward(hidden, weights.gate_up, s.at(b.mlp.h), routing, stream, preactivation);
    s.down.forward(s.at(b.mlp.h), weights.down, s.at(b.mlp.y_slots), routing, stream);
    combine_topk(c.dtype, c.hidden, c.topk, s.at(b.mlp.y_slots), output, tokens, stream, routing.topk_weights);
    s.hidden = hidden;
    s.router_logits = router_logits;
    s.tokens = tokens;
}

void Qwen3MoeBlock::backward(CUdeviceptr grad_output, const Qwen3MoeWeights& weights,
                             const Qwen3MoeGradients& gradients, CUstream stream) {
    State& s = *state_;
    const Qwen3MoeConfig& c = s.config;
    if (!c.training) throw Error("Qwen3MoeBlock::backward: the block was built for inference (config.training = false)");
    if (s.tokens < 0) throw Error("Qwen3MoeBlock::backward needs a forward that succeeded first");
    check_weights("Qwen3MoeBlock::backward", weights);
    check_block_pointers("Qwen3MoeBlock::backward", {{"grad_output", grad_output},
                                                      {"gradients.hidden", gradients.hidden},
                                                      {"gradients.router", gradients.router},
                                                      {"gradients.gate_up", gradients.gate_up},
                                                      {"gradients.down", gradients.down}});
    const Buffers& b = s.buffers;
    const int64_t tokens = s.tokens;
    const Routing routing = s.router.routing(tokens);
    // out = sum_j w * y: gradients of the down GEMM's rows (scaled, expert order) and of the weights.
    combine_backward(c.dtype, c.hidden, c.topk, grad_output, s.at(b.mlp.y_slots), routing.gather_idx,
                     routing.topk_weights, s.at(b.mlp.grad_y), s.at(b.mlp.grad_weights), routing.rows, stream);
    s.down_backward.dx(s.at(b.mlp.grad_y), weights.down, s.at(b.mlp.grad_h), routing, stream);
    const bool fp32 = c.fp32_weight_gradients;
    s.down_backward.dw(s.at(b.mlp.grad_y), s.at(b.mlp.h), gradients.down, routing, stream, fp32);
    gated_activation_backward(c.dtype, 2 * c.moe_intermediate, s.at(b.mlp.preactivation), s.at(b.mlp.grad_h),
                              s.at(b.mlp.grad_gate_up), routing.rows, stream);
    s.gate_up.dx(s.at(b.mlp.grad_gate_up), weights.gate_up, s.at(b.mlp.grad_x_slots), routing, stream);
    s.gate_up.dw(s.at(b.mlp.grad_gate_up), s.hidden, gradients.gate_up, routing, stream, fp32);
    // Router: d(weights) -> d(logits) through top-k and softmax, then both router GEMM gradients.
    s.router.backward(s.hidden, weights.router, s.router_logits, s.at(b.mlp.grad_weights), s.at(b.mlp.router_grad_x),
                      gradients.router, tokens, stream);
    // dHidden = sum over the token's slots + the router's share, in one deterministic pass.
    combine_topk(c.dtype, c.hidden, c.topk, s.at(b.mlp.grad_x_slots), gradients.hidden, tokens, stream, 0,
                 s.at(b.mlp.router_grad_x));
}

void Qwen3MoeBlock::prepare(int64_t tokens, unsigned jobs) const {
    if (tokens <= 0 || tokens > state_->max_tokens)
        throw Error(std::string(kBlock) + ": prepare takes 1 to max_tokens (" + std::to_string(state_->max_tokens) +
                    ") tokens, got " + std::to_string(tokens));
    prepare_kernels(kernels(state_->config, current_device().arch), tokens, jobs);
}

void Qwen3MoeBlock::check_routing_errors(CUstream stream) const {
    // The count is the last forward's, cleared by it: before one it is whatever the workspace held.
    if (state_->tokens < 0)
        throw Error("Qwen3MoeBlock::check_routing_errors: no forward has completed, so there is no count to read");
    state_->router.check_errors(stream);
}

}  // namespace moejit

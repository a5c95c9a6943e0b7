#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>
#include <moejit/prepare.hpp>
#include <moejit/llama4_moe.hpp>
#include <moejit/routing.hpp>

#include "codegen/kernel_problems.hpp"
#include "moe/combine_backward.hpp"
#include "moe/pointer_checks.hpp"
#include "moe/router_stage.hpp"
#include "moe/workspace.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

namespace moejit {

// The score multiplies the expert's input. The kernel of the weighted-combine backward
// (moe/combine_backward.hpp) computes exactly the two things this needs, one warp per routed row r
// of slot s and token t:
//   rows[r] = w[s] * a[t]  (expert order)    and    dots[s] = <a[t], b[s]>  (b in slot order)
// forward:  a = hidden, w = scores              -> rows = the scaled expert input (dots unused)
// backward: a = hidden, b = d(scaled input) in slot order -> dots = d(scores) (rows unused)
// and d(hidden) through the scaling is the score-weighted combine of d(scaled input).

namespace {

const char* const kBlock = "Llama4TextMoe";

struct Buffers {
    RouterStage::Buffers routing;
    RoutedMlpBuffers mlp;
    size_t unused_dots;                   // forward scratch
    size_t x_scaled, shared_h, shared_y;  // the forward's, saved for the backward
    // Training only (kNotPlanned in an inference block): saved by forward, and the backward's.
    size_t shared_preactivation = kNotPlanned;
    size_t shared_grad_h = kNotPlanned, shared_grad_gate_up = kNotPlanned, shared_grad_x = kNotPlanned,
           grad_x_partial = kNotPlanned;
    size_t total;
};

Buffers plan(const Llama4MoeConfig& c, int64_t tokens) {
    const size_t T = size_t(tokens), M = T * size_t(c.topk);
    const size_t H = size_t(c.hidden), I = size_t(c.intermediate), Is = size_t(c.shared());
    const size_t bytes = element_bytes(c.dtype);
    WorkspaceLayout layout(kBlock);
    Buffers b;
    b.routing = RouterStage::plan(layout, c.dtype, c.experts, c.topk, tokens, c.training);
    b.mlp = RoutedMlpBuffers::plan(layout, T, M, H, I, bytes, c.training);
    b.unused_dots = layout.take(M, 4);
    b.x_scaled = layout.take(M, H, bytes);
    b.shared_h = layout.take(T, Is, bytes);
    b.shared_y = layout.take(T, H, bytes);
    if (!c.training) {
        b.total = layout.size();
        return b;
    }
    b.shared_preactivation = layout.take(T, 2 * Is, bytes);
    b.shared_grad_h = layout.take(T, Is, bytes);
    b.shared_grad_gate_up = layout.take(T, 2 * Is, bytes);
    b.shared_grad_x = layout.take(T, H, bytes);
    b.grad_x_partial = layout.take(T, H, bytes);
    b.total = layout.size();
    return b;
}

RouterConfig router_config(const Llama4MoeConfig& c) { return RouterConfig::llama4(c.experts, c.topk); }

// The forward problems of the block's grouped GEMMs (the router's is RouterStage's).
struct Gemms {
    Problem gate_up;         // gated, on the scaled input already in expert order (forward, dW)
    Problem gate_up_dx;      // gated + permute_x: its dX lands in slot order
    Problem down;            // permute_y: rows in slot order, combined unweighted
    Problem down_backward;   // no fusions: backward reads and writes expert order
    Problem shared_gate_up;  // dense: one "expert" of T rows, gated
    Problem shared_down;
};

Gemms gemms(const Llama4MoeConfig& c) {
    Gemms g;
    g.gate_up = expert_gemm(c.dtype, 2 * c.intermediate, c.hidden, c.experts, c.topk);
    g.gate_up.gated = true;
    g.gate_up.saves_preactivation = c.training;
    g.gate_up_dx = g.gate_up;
    g.gate_up_dx.permute_x = true;
    g.down = expert_gemm(c.dtype, c.hidden, c.intermediate, c.experts, c.topk);
    g.down.permute_y = true;
    g.down_backward = expert_gemm(c.dtype, c.hidden, c.intermediate, c.experts, c.topk);
    g.shared_gate_up = expert_gemm(c.dtype, 2 * c.shared(), c.hidden, 1, 1);
    g.shared_gate_up.gated = true;
    g.shared_gate_up.saves_preactivation = c.training;
    g.shared_down = expert_gemm(c.dtype, c.hidden, c.shared(), 1, 1);
    return g;
}

// What forward() and backward() launch, in their order; keep it in step with them.
KernelList block_kernels(const Llama4MoeConfig& c) {
    const Gemms g = gemms(c);
    KernelList list;
    RouterStage::add_kernels(list, c.dtype, c.hidden, router_config(c), c.training, c.fp32_weight_gradients);
    list.add(combine_backward_problem(c.dtype, c.hidden, c.topk));  // the scaled input, and in backward d(score)
    list.add_gemm(g.gate_up, {GemmPass::fwd});
    list.add_gemm(g.down, {GemmPass::fwd});
    list.add_gemm(g.shared_gate_up, {GemmPass::fwd});
    list.add_gemm(g.shared_down, {GemmPass::fwd});
    list.add(combine_problem(c.dtype, c.hidden, c.topk));  // the output, and in backward dHidden
    if (!c.training) return list;
    const GemmPass dw = dw_pass(c.fp32_weight_gradients);
    list.add_gemm(g.shared_down, {GemmPass::dx, dw});
    list.add(gated_backward_problem(c.dtype, 2 * c.shared()));
    list.add_gemm(g.shared_gate_up, {GemmPass::dx, dw});
    list.add(permute_rows_problem(c.dtype, c.hidden, c.topk));
    list.add_gemm(g.down_backward, {GemmPass::dx, dw});
    list.add(gated_backward_problem(c.dtype, 2 * c.intermediate));
    list.add_gemm(g.gate_up_dx, {GemmPass::dx});
    list.add_gemm(g.gate_up, {dw});
    list.add(combine_problem(c.dtype, c.hidden, 1));  // the shared expert's and the router's dHidden
    return list;
}

// forward's and backward's weights, as check_block_pointers checks a call's tensors.
void check_weights(const char* call, const Llama4MoeWeights& w) {
    check_block_pointers(call, {{"weights.router", w.router},
                                {"weights.gate_up", w.gate_up},
                                {"weights.down", w.down},
                                {"weights.shared_gate_up", w.shared_gate_up},
                                {"weights.shared_down", w.shared_down}});
}

// Everything the constructor needs to hold before it touches the device.
void validate(const Llama4MoeConfig& c) {
    if (c.hidden <= 0 || c.intermediate <= 0 || c.shared_intermediate < 0 || c.hidden % 8 != 0 ||
        c.intermediate % 8 != 0 || c.shared_intermediate % 8 != 0)
        throw Error(std::string(kBlock) + ": hidden and intermediate must be positive multiples of 8, "
                    "shared_intermediate 0 (the same as intermediate) or one too; got " + std::to_string(c.hidden) +
                    ", " + std::to_string(c.intermediate) + " and " + std::to_string(c.shared_intermediate));
    RouterStage::validate(router_config(c), kBlock);
    block_kernels(c).validate(kBlock);
}

void validate(const Llama4MoeConfig& c, int64_t max_tokens) {
    validate(c);
    check_max_tokens(max_tokens, c.topk, kBlock);
}

}  // namespace

struct Llama4TextMoe::State {
    Llama4MoeConfig config;
    int64_t max_tokens;
    Buffers buffers;
    DeviceWorkspace workspace;
    RouterStage router;  // router GEMM, top-k, routing indices, and their backward
    GroupedGemm gate_up, gate_up_dx, down, down_backward, shared_gate_up, shared_down;  // over gemms(config)
    // Saved by forward for backward.
    CUdeviceptr hidden = 0, router_logits = 0;
    int64_t tokens = -1;

    State(const Llama4MoeConfig& c, int64_t max_tokens_, CUdeviceptr external)
        : config(c),
          max_tokens(max_tokens_),
          buffers(plan(c, max_tokens_)),
          workspace(buffers.total, external),
          router(c.dtype, c.hidden, router_config(c), c.fp32_weight_gradients, buffers.routing, workspace.pointer()),
          gate_up(gemms(c).gate_up),
          gate_up_dx(gemms(c).gate_up_dx),
          down(gemms(c).down),
          down_backward(gemms(c).down_backward),
          shared_gate_up(gemms(c).shared_gate_up),
          shared_down(gemms(c).shared_down) {}

    CUdeviceptr at(size_t offset) const { return workspace_at(workspace.pointer(), offset, kBlock); }
};

size_t Llama4TextMoe::workspace_bytes(const Llama4MoeConfig& config, int64_t max_tokens) {
    validate(config, max_tokens);
    return plan(config, max_tokens).total;
}

std::vector<Problem> Llama4TextMoe::kernels(const Llama4MoeConfig& config, const Arch& arch) {
    validate(config);
    return block_kernels(config).for_arch(arch);
}

Llama4TextMoe::Llama4TextMoe(const Llama4MoeConfig& config, int64_t max_tokens)
    : Llama4TextMoe(config, max_tokens, CUdeviceptr{0}) {}

Llama4TextMoe::Llama4TextMoe(const Llama4MoeConfig& config, int64_t max_tokens, CUdeviceptr workspace) {
    validate(config, max_tokens);
    state_ = std::make_unique<State>(config, max_tokens, workspace);
}

Llama4TextMoe::~Llama4TextMoe() = default;

void Llama4TextMoe::forward(CUdeviceptr hidden, const Llama4MoeWeights& weights, CUdeviceptr output,
                            CUdeviceptr router_logits, int64_t tokens, CUstream stream) {
    State& s = *state_;
    const Llama4MoeConfig& c = s.config;
    if (tokens < 0 || tokens > s.max_tokens)
        throw Error("Llama4TextMoe::forward: tokens must be in [0, " + std::to_string(s.max_tokens) + "], got " +
                    std::to_string(tokens));
    check_weights("Llama4TextMoe::forward", weights);
    check_block_pointers("Llama4TextMoe::forward",
                         {{"hidden", hidden}, {"output", output}, {"router_logits", router_logits}});
    check_forward_tensors("Llama4TextMoe::forward", hidden, output, router_logits, tokens, c.hidden, c.experts,
                          element_bytes(c.dtype), c.training);
    // A call refused above launched nothing, so backward may still differentiate the last forward.
    // From here until this forward has launched every step it has nothing to differentiate: a
    // forward that throws midway (a compile or driver error) leaves the routing of its own tokens
    // beside the activations of the last.
    s.tokens = -1;
    const Buffers& b = s.buffers;
    s.router.forward(hidden, weights.router, router_logits, tokens, stream);
    const Routing dense = s.router.dense_routing(tokens);  // the shared expert: one "expert" of T rows
    const Routing routing = s.router.routing(tokens);
    // x_scaled[r] = score[s] * hidden[t], expert order (the dot products it also computes are unused;
    // y_slots is only read for them and is overwritten below).
    combine_backward(c.dtype, c.hidden, c.topk, hidden, s.at(b.mlp.y_slots), routing.gather_idx, routing.topk_weights,
                     s.at(b.x_scaled), s.at(b.unused_dots), routing.rows, stream);
    // The gate|up values only a training block's backward reads.
    const auto saved = [&](size_t offset) { return c.training ? s.at(offset) : CUdeviceptr{0}; };
    s.gate_up.forward(s.at(b.x_scaled), weights.gate_up, s.at(b.mlp.h), routing, stream, saved(b.mlp.preactivation));
    s.down.forward(s.at(b.mlp.h), weights.down, s.at(b.mlp.y_slots), routing, stream);
    s.shared_gate_up.forward(hidden, weights.shared_gate_up, s.at(b.shared_h), dense, stream,
                             saved(b.shared_preactivation));
    s.shared_down.forward(s.at(b.shared_h), weights.shared_down, s.at(b.shared_y), dense, stream);
    combine_topk(c.dtype, c.hidden, c.topk, s.at(b.mlp.y_slots), output, tokens, stream, 0, s.at(b.shared_y));
    s.hidden = hidden;
    s.router_logits = router_logits;
    s.tokens = tokens;
}

void Llama4TextMoe::backward(CUdeviceptr grad_output, const Llama4MoeWeights& weights,
                             const Llama4MoeGradients& gradients, CUstream stream) {
    State& s = *state_;
    const Llama4MoeConfig& c = s.config;
    if (!c.training) throw Error("Llama4TextMoe::backward: the block was built for inference (config.training = false)");
    if (s.tokens < 0) throw Error("Llama4TextMoe::backward needs a forward that succeeded first");
    check_weights("Llama4TextMoe::backward", weights);
    check_block_pointers("Llama4TextMoe::backward", {{"grad_output", grad_output},
                                                      {"gradients.hidden", gradients.hidden},
                                                      {"gradients.router", gradients.router},
                                                      {"gradients.gate_up", gradients.gate_up},
                                                      {"gradients.down", gradients.down},
                                                      {"gradients.shared_gate_up", gradients.shared_gate_up},
                                                      {"gradients.shared_down", gradients.shared_down}});
    const Buffers& b = s.buffers;
    const int64_t tokens = s.tokens;
    const Routing routing = s.router.routing(tokens);
    const Routing dense = s.router.dense_routing(tokens);
    const bool fp32 = c.fp32_weight_gradients;
    // Shared expert.
    s.shared_down.dx(grad_output, weights.shared_down, s.at(b.shared_grad_h), dense, stream);
    s.shared_down.dw(grad_output, s.at(b.shared_h), gradients.shared_down, dense, stream, fp32);
    gated_activation_backward(c.dtype, 2 * c.shared(), s.at(b.shared_preactivation), s.at(b.shared_grad_h),
                              s.at(b.shared_grad_gate_up), tokens, stream);
    s.shared_gate_up.dx(s.at(b.shared_grad_gate_up), weights.shared_gate_up, s.at(b.shared_grad_x), dense, stream);
    s.shared_gate_up.dw(s.at(b.shared_grad_gate_up), s.hidden, gradients.shared_gate_up, dense, stream, fp32);
    // Routed experts: the unweighted combine hands every slot its token's gradient.
    permute_rows(c.dtype, c.hidden, c.topk, grad_output, routing.gather_idx, s.at(b.mlp.grad_y), tokens, stream);
    s.down_backward.dx(s.at(b.mlp.grad_y), weights.down, s.at(b.mlp.grad_h), routing, stream);
    s.down_backward.dw(s.at(b.mlp.grad_y), s.at(b.mlp.h), gradients.down, routing, stream, fp32);
    gated_activation_backward(c.dtype, 2 * c.intermediate, s.at(b.mlp.preactivation), s.at(b.mlp.grad_h),
                              s.at(b.mlp.grad_gate_up), routing.rows, stream);
    s.gate_up_dx.dx(s.at(b.mlp.grad_gate_up), weights.gate_up, s.at(b.mlp.grad_x_slots), routing, stream);
    s.gate_up.dw(s.at(b.mlp.grad_gate_up), s.at(b.x_scaled), gradients.gate_up, routing, stream, fp32);
    // d score[s] = <d x_scaled[s], hidden[t]> (the scaled rows it writes again land in grad_y, unused).
    combine_backward(c.dtype, c.hidden, c.topk, s.hidden, s.at(b.mlp.grad_x_slots), routing.gather_idx,
                     routing.topk_weights, s.at(b.mlp.grad_y), s.at(b.mlp.grad_weights), routing.rows, stream);
    s.router.backward(s.hidden, weights.router, s.router_logits, s.at(b.mlp.grad_weights), s.at(b.mlp.router_grad_x),
                      gradients.router, tokens, stream);
    // dHidden = sum_j score * d x_scaled + shared + router, deterministic.
    combine_topk(c.dtype, c.hidden, 1, s.at(b.shared_grad_x), s.at(b.grad_x_partial), tokens, stream, 0,
                 s.at(b.mlp.router_grad_x));
    combine_topk(c.dtype, c.hidden, c.topk, s.at(b.mlp.grad_x_slots), gradients.hidden, tokens, stream,
                 routing.topk_weights, s.at(b.grad_x_partial));
}

void Llama4TextMoe::prepare(int64_t tokens, unsigned jobs) const {
    if (tokens <= 0 || tokens > state_->max_tokens)
        throw Error(std::string(kBlock) + ": prepare takes 1 to max_tokens (" + std::to_string(state_->max_tokens) +
                    ") tokens, got " + std::to_string(tokens));
    prepare_kernels(kernels(state_->config, current_device().arch), tokens, jobs);
}

void Llama4TextMoe::check_routing_errors(CUstream stream) const {
    // The count is the last forward's, cleared by it: before one it is whatever the workspace held.
    if (state_->tokens < 0)
        throw Error("Llama4TextMoe::check_routing_errors: no forward has completed, so there is no count to read");
    state_->router.check_errors(stream);
}

}  // namespace moejit

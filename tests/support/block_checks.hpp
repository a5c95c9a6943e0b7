#pragma once
// What the Qwen3MoeBlock and Llama4TextMoe tests check alike.
#include <moejit/error.hpp>

#include "tests/catch.hpp"
#include "tests/support/device.hpp"
#include "tests/support/errors.hpp"
#include "tests/support/half.hpp"

#include <algorithm>
#include <string>
#include <vector>

namespace moejit::testing {

// Every pointer a block call takes is checked before it launches anything:
// - backward before any forward refuses;
// - a call with a null or misaligned tensor throws, naming the argument as the caller wrote it;
// - a forward refused so leaves the last good forward in place: backward after it writes the same
//   gradients, bit for bit, as right after that forward.
// `run` (each test's BlockRun) holds inputs for `tokens` tokens and gradient buffers.
template <class Block, class Run>
void check_refused_calls_launch_nothing(Block& block, Run& run, int64_t tokens) {
    const std::string early =
        error_message([&] { block.backward(run.d_grad_out.get(), run.weights(), run.gradients(), nullptr); });
    CHECK(mentions(early, "needs a forward that succeeded first"));
    // Before any forward the error count is whatever the workspace held: nothing to report.
    CHECK(mentions(error_message([&] { block.check_routing_errors(nullptr); }), "no forward has completed"));

    block.forward(run.d_x.get(), run.weights(), run.d_out.get(), run.d_logits.get(), tokens, nullptr);
    block.backward(run.d_grad_out.get(), run.weights(), run.gradients(), nullptr);
    synchronize();
    const std::vector<uint16_t> grad_x = run.g_x.template to_host<uint16_t>();
    const std::vector<float> grad_gate_up = run.g_gu.template to_host<float>();

    // A forward refused after a good one, with other inputs that would change every gradient.
    const std::string null_output = error_message(
        [&] { block.forward(run.d_grad_out.get(), run.weights(), 0, run.d_logits.get(), tokens, nullptr); });
    CHECK(mentions(null_output, "::forward: output is a null pointer"));
    const std::string misaligned = error_message([&] {
        block.forward(run.d_grad_out.get() + 2, run.weights(), run.d_out.get(), run.d_logits.get(), tokens, nullptr);
    });
    CHECK(mentions(misaligned, "::forward: hidden must be 16-byte aligned"));
    // Tensors that share memory where the block would read what it has overwritten: output over
    // hidden (a training block's backward reads hidden again), router_logits over hidden or output.
    const CUdeviceptr other_hidden = run.d_grad_out.get();
    CHECK(mentions(error_message([&] {
                       block.forward(other_hidden, run.weights(), other_hidden, run.d_logits.get(), tokens, nullptr);
                   }),
                   "::forward: hidden and output overlap; backward reads hidden again"));
    CHECK(mentions(error_message([&] {
                       block.forward(other_hidden, run.weights(), run.d_out.get(), other_hidden + 16, tokens, nullptr);
                   }),
                   "::forward: hidden and router_logits overlap"));
    CHECK(mentions(error_message([&] {
                       block.forward(other_hidden, run.weights(), run.d_out.get(), run.d_out.get() + 256, tokens, nullptr);
                   }),
                   "::forward: output and router_logits overlap"));
    auto weights = run.weights();
    weights.down = 0;
    CHECK(mentions(error_message([&] {
                       block.forward(run.d_x.get(), weights, run.d_out.get(), run.d_logits.get(), tokens, nullptr);
                   }),
                   "::forward: weights.down is a null pointer"));
    auto gradients = run.gradients();
    gradients.router = 0;
    CHECK(mentions(error_message([&] { block.backward(run.d_grad_out.get(), run.weights(), gradients, nullptr); }),
                   "::backward: gradients.router is a null pointer"));
    gradients = run.gradients();
    gradients.gate_up += 4;
    CHECK(mentions(error_message([&] { block.backward(run.d_grad_out.get(), run.weights(), gradients, nullptr); }),
                   "::backward: gradients.gate_up must be 16-byte aligned"));

    run.g_x.fill16(kPoison);
    run.g_gu.fill16(kPoison);
    block.backward(run.d_grad_out.get(), run.weights(), run.gradients(), nullptr);
    synchronize();
    CHECK(run.g_x.template to_host<uint16_t>() == grad_x);
    CHECK(run.g_gu.template to_host<float>() == grad_gate_up);
}

// A block built for inference (config.training = false) writes the same output and logits, bit
// for bit, as the training block of the same config (the same kernels but the gated GEMMs', which
// only leave out the preactivation), in a workspace the size of the forward's buffers alone; its
// backward refuses.
template <class Block, class Config, class Run>
void check_inference_block(Config config, Run& run, int64_t tokens) {
    config.training = true;
    const size_t training_bytes = Block::workspace_bytes(config, tokens);
    Block training(config, tokens);
    training.forward(run.d_x.get(), run.weights(), run.d_out.get(), run.d_logits.get(), tokens, nullptr);
    synchronize();
    const std::vector<uint16_t> output = run.d_out.template to_host<uint16_t>();
    const std::vector<uint16_t> logits = run.d_logits.template to_host<uint16_t>();
    CHECK(std::none_of(output.begin(), output.end(), [](uint16_t b) { return b == kPoison; }));

    config.training = false;
    // The caller's workspace of exactly workspace_bytes: an inference block that wrote past its
    // (smaller) plan would show as a sanitizer error, or here as a changed guard beyond it.
    const size_t bytes = Block::workspace_bytes(config, tokens);
    CHECK(bytes < training_bytes);
    DeviceBuffer workspace(bytes + 4096);
    workspace.fill16(kPoison);
    Block inference(config, tokens, workspace.get());
    run.d_out.fill16(kPoison);
    run.d_logits.fill16(kPoison);
    inference.forward(run.d_x.get(), run.weights(), run.d_out.get(), run.d_logits.get(), tokens, nullptr);
    synchronize();
    CHECK(run.d_out.template to_host<uint16_t>() == output);
    CHECK(run.d_logits.template to_host<uint16_t>() == logits);
    // An inference block may write output over hidden: every read of hidden comes first.
    DeviceBuffer in_place = DeviceBuffer::from(run.d_x.template to_host<uint16_t>());
    inference.forward(in_place.get(), run.weights(), in_place.get(), run.d_logits.get(), tokens, nullptr);
    synchronize();
    CHECK(in_place.template to_host<uint16_t>() == output);
    const std::vector<uint16_t> after = workspace.template to_host<uint16_t>();
    CHECK(std::all_of(after.begin() + bytes / 2, after.end(), [](uint16_t b) { return b == kPoison; }));
    CHECK(mentions(
        error_message([&] { inference.backward(run.d_grad_out.get(), run.weights(), run.gradients(), nullptr); }),
        "::backward: the block was built for inference (config.training = false)"));
}

// The `count` values of a weight gradient the block wrote to `buffer`: fp32, or bf16 for a block
// without fp32_weight_gradients. `buffer` has room for fp32 and was filled with kPoison, so a bf16
// gradient must have left the rest of it untouched.
inline std::vector<float> weight_gradient(const DeviceBuffer& buffer, size_t count, bool fp32) {
    if (fp32) {
        std::vector<float> values = buffer.to_host<float>();
        REQUIRE(values.size() >= count);
        values.resize(count);
        return values;
    }
    const std::vector<uint16_t> bits = buffer.to_host<uint16_t>();
    REQUIRE(bits.size() >= count);
    CHECK(std::all_of(bits.begin() + count, bits.end(), [](uint16_t b) { return b == kPoison; }));
    std::vector<float> values(count);
    for (size_t i = 0; i < count; ++i) values[i] = bf16_to_float(bits[i]);
    return values;
}

}  // namespace moejit::testing

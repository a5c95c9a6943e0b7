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

// A forward that throws midway, at its null output after it routed `tokens - 16` tokens and ran
// the expert GEMMs, leaves backward refusing: a backward after it must not mix those routing
// buffers with the last good forward's activations. A forward that succeeds makes it possible
// again. `run` (each test's BlockRun) holds inputs for `tokens` tokens.
template <class Block, class Run>
void check_failed_forward_leaves_backward_refusing(Block& block, const Run& run, int64_t tokens) {
    block.forward(run.d_x.get(), run.weights(), run.d_out.get(), run.d_logits.get(), tokens, nullptr);
    CHECK_THROWS_AS(block.forward(run.d_x.get(), run.weights(), 0, run.d_logits.get(), tokens - 16, nullptr), Error);
    const std::string refusal =
        error_message([&] { block.backward(run.d_grad_out.get(), run.weights(), run.gradients(), nullptr); });
    CHECK(mentions(refusal, "needs a forward that succeeded first"));
    block.forward(run.d_x.get(), run.weights(), run.d_out.get(), run.d_logits.get(), tokens, nullptr);
    CHECK_NOTHROW(block.backward(run.d_grad_out.get(), run.weights(), run.gradients(), nullptr));
    synchronize();
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

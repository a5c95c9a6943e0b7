#pragma once
// What the Qwen3MoeBlock and Llama4TextMoe tests check alike.
#include <moejit/error.hpp>

#include "tests/catch.hpp"
#include "tests/support/device.hpp"
#include "tests/support/errors.hpp"

#include <string>

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

}  // namespace moejit::testing

// MoE block (Llama4TextMoe for llama4-scout, Qwen3MoeBlock for the other presets) forward and
// forward+backward milliseconds beside cuBLAS dense GEMMs of the same shapes (the same FLOPs, with
// none of the routing work).
//
//   bench_moe_block --model qwen3-30b-a3b --tokens 8192,16 [--cublas PATH] [--weight-grads fp32|bf16]
//   bench_moe_block --model qwen3-30b-a3b --tokens 8192 --jit first-call|prepare
// --jit times the JIT instead, with the cache it finds (point MOEJIT_CACHE_DIR at an empty
// directory): the block's first forward and backward compiling each kernel at its first launch
// (first-call), or prepare() compiling them all at once and then that first forward and backward.
// --weight-grads bf16 runs the blocks without fp32_weight_gradients (default fp32). The forward is
// also timed on the block built for inference (training = false).
#include <moejit/error.hpp>
#include <moejit/llama4_moe.hpp>
#include <moejit/qwen3_moe.hpp>

#include "bench/cublas.hpp"
#include "bench/timing.hpp"
#include "codegen/models.hpp"
#include "moe/model_kernels.hpp"
#include "runtime/device.hpp"
#include "tests/support/device.hpp"

#include <chrono>
#include <cstdio>
#include <sstream>
#include <thread>

using namespace moejit;
using namespace moejit::bench;
using moejit::testing::DeviceBuffer;

namespace {

struct Gemm {
    int64_t m, n, k;  // C [m, n] = A [m, k] B [n, k]^T
};

}  // namespace

int main(int argc, char** argv) try {
    const ModelPreset& model = find_model(argument(argc, argv, "--model", "qwen3-30b-a3b"));
    Cublas cublas(argument(argc, argv, "--cublas", ""));
    const DeviceInfo& device = current_device();
    std::vector<int64_t> token_counts;
    std::stringstream list(argument(argc, argv, "--tokens", "8192,16"));
    for (std::string item; std::getline(list, item, ',');) token_counts.push_back(std::stoll(item));

    const DType dtype = DType::bf16;
    const int64_t H = model.hidden, I = model.intermediate, E = model.experts;
    // llama4-scout runs Llama4TextMoe (a shared expert of I); every other preset Qwen3MoeBlock.
    const bool llama4 = model.block == ModelBlock::llama4;
    const std::string weight_grads = argument(argc, argv, "--weight-grads", "fp32");
    if (weight_grads != "fp32" && weight_grads != "bf16")
        throw Error("bad --weight-grads '" + weight_grads + "': expected fp32 or bf16");
    const Qwen3MoeConfig qwen3_config = qwen3_moe_config(model, dtype, LayerOptions{true, weight_grads == "fp32"});
    const Llama4MoeConfig llama4_config = llama4_moe_config(model, dtype, LayerOptions{true, weight_grads == "fp32"});
    // The same block built for inference (training = false): its forward saves nothing.
    Qwen3MoeConfig qwen3_inference = qwen3_config;
    qwen3_inference.training = false;
    Llama4MoeConfig llama4_inference = llama4_config;
    llama4_inference.training = false;
    DeviceBuffer router = DeviceBuffer::from(random_halves(dtype, E * H, 11));
    DeviceBuffer gate_up = DeviceBuffer::from(random_halves(dtype, E * 2 * I * H, 12));
    DeviceBuffer down = DeviceBuffer::from(random_halves(dtype, E * H * I, 13));
    DeviceBuffer grad_router(E * H * 4), grad_gate_up(E * 2 * I * H * 4), grad_down(E * H * I * 4);
    const int64_t shared_experts = llama4 ? 1 : 0;  // the shared expert's weights, when there is one
    DeviceBuffer shared_gate_up = DeviceBuffer::from(random_halves(dtype, shared_experts * 2 * I * H + 8, 14));
    DeviceBuffer shared_down = DeviceBuffer::from(random_halves(dtype, shared_experts * H * I + 8, 15));
    DeviceBuffer grad_shared_gate_up(shared_experts * 2 * I * H * 4 + 16), grad_shared_down(shared_experts * H * I * 4 + 16);
    const Qwen3MoeWeights qwen3_weights{router.get(), gate_up.get(), down.get()};
    const Llama4MoeWeights llama4_weights{router.get(), gate_up.get(), down.get(), shared_gate_up.get(),
                                          shared_down.get()};
    Events events;

    std::printf("device %s (%d SMs); model %s (H %lld, I %lld, E %lld, topk %d); %s weight gradients\n\n",
                device.name.c_str(), device.sm_count, model.name.c_str(), (long long)H, (long long)I, (long long)E,
                model.topk, weight_grads.c_str());
    const std::string jit = argument(argc, argv, "--jit", "");
    if (!jit.empty() && jit != "first-call" && jit != "prepare")
        throw Error("bad --jit '" + jit + "': expected first-call or prepare");
    if (jit.empty())
        std::printf("| tokens | pass | moejit ms | cuBLAS dense ms (same GEMM shapes) | ratio |\n|---|---|---|---|---|\n");
    for (int64_t T : token_counts) {
        const int64_t M = T * model.topk;
        // Hidden scaled down so the softmax router is not saturated by random weights.
        DeviceBuffer hidden = DeviceBuffer::from(random_halves(dtype, T * H, 21));
        DeviceBuffer grad_out = DeviceBuffer::from(random_halves(dtype, T * H, 22));
        DeviceBuffer output(T * H * 2), logits(T * E * 2), grad_hidden(T * H * 2);
        double forward_ms = 0, inference_ms = 0, training_ms = 0;
        size_t training_bytes = 0, inference_bytes = 0;
        if (!jit.empty()) {  // host wall time of the first calls, compiles included
            auto seconds_since = [](std::chrono::steady_clock::time_point start) {
                return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
            };
            auto first_calls = [&](auto& block, const auto& weights, const auto& gradients) {
                const auto start = std::chrono::steady_clock::now();
                double prepare_s = 0;
                if (jit == "prepare") {
                    block.prepare(T);
                    prepare_s = seconds_since(start);
                }
                block.forward(hidden.get(), weights, output.get(), logits.get(), T, nullptr);
                block.backward(grad_out.get(), weights, gradients, nullptr);
                moejit::testing::synchronize();
                std::printf("jit %s, %lld tokens: prepare %.2f s, first forward+backward done at %.2f s (%u hardware "
                            "threads)\n",
                            jit.c_str(), (long long)T, prepare_s, seconds_since(start),
                            std::thread::hardware_concurrency());
            };
            if (llama4) {
                Llama4TextMoe block(llama4_config, T);
                first_calls(block, llama4_weights,
                            Llama4MoeGradients{grad_hidden.get(), grad_router.get(), grad_gate_up.get(), grad_down.get(),
                                               grad_shared_gate_up.get(), grad_shared_down.get()});
            } else {
                Qwen3MoeBlock block(qwen3_config, T);
                first_calls(block, qwen3_weights,
                            Qwen3MoeGradients{grad_hidden.get(), grad_router.get(), grad_gate_up.get(), grad_down.get()});
            }
            continue;
        }
        // The two forwards in alternating rounds (the board's clock drifts with its power and heat,
        // so one timed after the other would carry the drift), then forward+backward.
        auto time_blocks = [&](auto& block, auto& inference, const auto& weights, const auto& gradients) {
            std::vector<double> training_rounds, inference_rounds;
            for (int round = 0; round < 5; ++round) {
                training_rounds.push_back(events.median_ms(
                    [&] { block.forward(hidden.get(), weights, output.get(), logits.get(), T, nullptr); }));
                inference_rounds.push_back(events.median_ms(
                    [&] { inference.forward(hidden.get(), weights, output.get(), logits.get(), T, nullptr); }));
            }
            forward_ms = median_of(training_rounds);
            inference_ms = median_of(inference_rounds);
            training_ms = events.median_ms([&] {
                block.forward(hidden.get(), weights, output.get(), logits.get(), T, nullptr);
                block.backward(grad_out.get(), weights, gradients, nullptr);
            });
        };
        if (llama4) {
            const Llama4MoeGradients gradients{grad_hidden.get(),        grad_router.get(),        grad_gate_up.get(),
                                               grad_down.get(),          grad_shared_gate_up.get(), grad_shared_down.get()};
            Llama4TextMoe block(llama4_config, T), inference(llama4_inference, T);
            time_blocks(block, inference, llama4_weights, gradients);
            training_bytes = Llama4TextMoe::workspace_bytes(llama4_config, T);
            inference_bytes = Llama4TextMoe::workspace_bytes(llama4_inference, T);
        } else {
            const Qwen3MoeGradients gradients{grad_hidden.get(), grad_router.get(), grad_gate_up.get(), grad_down.get()};
            Qwen3MoeBlock block(qwen3_config, T), inference(qwen3_inference, T);
            time_blocks(block, inference, qwen3_weights, gradients);
            training_bytes = Qwen3MoeBlock::workspace_bytes(qwen3_config, T);
            inference_bytes = Qwen3MoeBlock::workspace_bytes(qwen3_inference, T);
        }

        // The routed experts' GEMMs over M rows, the router's, and the shared expert's over T rows.
        std::vector<Gemm> forward = {{T, E, H}, {M, 2 * I, H}, {M, H, I}};
        std::vector<Gemm> backward = {{T, H, E}, {E, H, T}, {M, I, H}, {H, I, M}, {M, H, 2 * I}, {2 * I, H, M}};
        if (llama4) {
            forward.insert(forward.end(), {{T, 2 * I, H}, {T, H, I}});
            backward.insert(backward.end(), {{T, I, H}, {H, I, T}, {T, H, 2 * I}, {2 * I, H, T}});
        }
        int64_t largest = 0;
        for (const auto* list : {&forward, &backward})
            for (const Gemm& g : *list) largest = std::max({largest, g.m * g.k, g.n * g.k, g.m * g.n});
        DeviceBuffer a = DeviceBuffer::from(random_halves(dtype, largest, 31));
        DeviceBuffer b = DeviceBuffer::from(random_halves(dtype, largest, 32));
        DeviceBuffer c(largest * 2);
        auto dense_ms = [&](const std::vector<Gemm>& gemms) {
            double total = 0;
            for (const Gemm& g : gemms)
                total += events.median_ms([&] {
                    cublas.gemm(true, int(g.m), int(g.n), int(g.k), reinterpret_cast<void*>(a.get()),
                                reinterpret_cast<void*>(b.get()), reinterpret_cast<void*>(c.get()), nullptr);
                });
            return total;
        };
        const double dense_forward = dense_ms(forward), dense_training = dense_forward + dense_ms(backward);
        std::printf("| %lld | forward | %.3f | %.3f | %.2f |\n", (long long)T, forward_ms, dense_forward,
                    dense_forward / forward_ms);
        std::printf("| %lld | forward, inference block | %.3f | %.3f | %.2f |\n", (long long)T, inference_ms,
                    dense_forward, dense_forward / inference_ms);
        std::printf("| %lld | forward+backward | %.3f | %.3f | %.2f |\n", (long long)T, training_ms, dense_training,
                    dense_training / training_ms);
        std::printf("| %lld | workspace MiB, training / inference block | %.1f / %.1f | | |\n", (long long)T,
                    training_bytes / 1048576.0, inference_bytes / 1048576.0);
        std::fflush(stdout);
    }
    return 0;
} catch (const std::exception& error) {
    std::fprintf(stderr, "bench_moe_block: %s\n", error.what());
    return 1;
}

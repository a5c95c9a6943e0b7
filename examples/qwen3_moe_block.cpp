// A Qwen3 sparse MoE block (Hugging Face Qwen3MoeSparseMoeBlock) end to end: forward, backward,
// then the forward captured in a CUDA graph and replayed. Everything (router GEMM, softmax top-k,
// routing indices, expert GEMMs, combine) runs on the GPU with no host synchronization until the
// end. A float64 host reference of the forward checks the output; the exit code is 0 only when it
// matches and the graph replay reproduces the eager result bit for bit.
#include <moejit/error.hpp>
#include <moejit/qwen3_moe.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

namespace {

uint16_t to_bf16(float value) {  // round to nearest even
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    return static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

float from_bf16(uint16_t half) {
    const uint32_t bits = uint32_t(half) << 16;
    float value;
    std::memcpy(&value, &bits, 4);
    return value;
}

void check(cudaError_t status) {
    if (status != cudaSuccess) throw std::runtime_error(cudaGetErrorString(status));
}

// Device copy of bf16 values drawn uniformly from [-scale, scale]; `host` gets the rounded values.
CUdeviceptr upload_random(std::vector<float>& host, size_t count, float scale, std::mt19937& rng) {
    std::uniform_real_distribution<float> uniform(-scale, scale);
    std::vector<uint16_t> bits(count);
    host.resize(count);
    for (size_t i = 0; i < count; ++i) {
        bits[i] = to_bf16(uniform(rng));
        host[i] = from_bf16(bits[i]);
    }
    void* device = nullptr;
    check(cudaMalloc(&device, count * 2));
    check(cudaMemcpy(device, bits.data(), count * 2, cudaMemcpyHostToDevice));
    return reinterpret_cast<CUdeviceptr>(device);
}

CUdeviceptr allocate(size_t bytes) {
    void* device = nullptr;
    check(cudaMalloc(&device, bytes));
    return reinterpret_cast<CUdeviceptr>(device);
}

std::vector<float> download_bf16(CUdeviceptr device, size_t count) {
    std::vector<uint16_t> bits(count);
    check(cudaMemcpy(bits.data(), reinterpret_cast<void*>(device), count * 2, cudaMemcpyDeviceToHost));
    std::vector<float> values(count);
    for (size_t i = 0; i < count; ++i) values[i] = from_bf16(bits[i]);
    return values;
}

}  // namespace

int main() try {
    const moejit::Qwen3MoeConfig config{/*hidden=*/256, /*moe_intermediate=*/128, /*experts=*/16, /*topk=*/4,
                                        /*norm_topk_prob=*/true};
    const int64_t T = 96, H = config.hidden, I = config.moe_intermediate, E = config.experts;
    std::mt19937 rng(3);
    std::vector<float> x, router, gate_up, down, grad_out;
    const CUdeviceptr d_x = upload_random(x, T * H, 1.0f, rng);                                  // [T, H]
    const moejit::Qwen3MoeWeights weights{upload_random(router, E * H, 1.0f / 16, rng),          // [E, H]
                                          upload_random(gate_up, E * 2 * I * H, 1.0f / 8, rng),  // [E, 2I, H]
                                          upload_random(down, E * H * I, 1.0f / 6, rng)};        // [E, H, I]
    const CUdeviceptr d_grad_out = upload_random(grad_out, T * H, 1.0f, rng);                    // [T, H]
    const CUdeviceptr d_out = allocate(T * H * 2), d_logits = allocate(T * E * 2);
    const moejit::Qwen3MoeGradients gradients{allocate(T * H * 2), allocate(E * H * 4), allocate(E * 2 * I * H * 4),
                                              allocate(E * H * I * 4)};
    cudaStream_t stream;
    check(cudaStreamCreate(&stream));
    const CUstream cu_stream = reinterpret_cast<CUstream>(stream);

    moejit::Qwen3MoeBlock block(config, T);
    block.prepare(T);  // every kernel of forward and backward JIT-compiled now, several at once
    block.forward(d_x, weights, d_out, d_logits, T, cu_stream);
    block.backward(d_grad_out, weights, gradients, cu_stream);
    check(cudaStreamSynchronize(stream));
    block.check_routing_errors(cu_stream);
    const std::vector<float> out = download_bf16(d_out, T * H), logits = download_bf16(d_logits, T * E);

    // Host forward in float64, routing on the device's logits (top-k is discontinuous).
    double diff = 0, norm = 0;
    for (int64_t t = 0; t < T; ++t) {
        std::vector<double> p(E);
        const double top = *std::max_element(logits.begin() + t * E, logits.begin() + (t + 1) * E);
        double total = 0;
        for (int64_t e = 0; e < E; ++e) total += p[e] = std::exp(logits[t * E + e] - top);
        std::vector<int> order(E);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
        double chosen = 0;
        for (int j = 0; j < config.topk; ++j) chosen += p[order[j]];
        std::vector<double> y(H, 0);
        for (int j = 0; j < config.topk; ++j) {
            const int64_t e = order[j];
            std::vector<double> a(I);
            for (int64_t i = 0; i < I; ++i) {
                double g = 0, u = 0;
                for (int64_t h = 0; h < H; ++h) {
                    g += gate_up[(e * 2 * I + i) * H + h] * x[t * H + h];
                    u += gate_up[(e * 2 * I + I + i) * H + h] * x[t * H + h];
                }
                a[i] = g / (1 + std::exp(-g)) * u;
            }
            for (int64_t h = 0; h < H; ++h) {
                double sum = 0;
                for (int64_t i = 0; i < I; ++i) sum += down[(e * H + h) * I + i] * a[i];
                y[h] += p[e] / chosen * sum;
            }
        }
        for (int64_t h = 0; h < H; ++h) {
            diff += (out[t * H + h] - y[h]) * (out[t * H + h] - y[h]);
            norm += y[h] * y[h];
        }
    }
    const double error = std::sqrt(diff / norm);

    // Capture the forward in a graph, replay it, and compare with the eager output.
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    check(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    block.forward(d_x, weights, d_out, d_logits, T, cu_stream);
    check(cudaStreamEndCapture(stream, &graph));
    check(cudaGraphInstantiate(&exec, graph, 0));
    check(cudaMemset(reinterpret_cast<void*>(d_out), 0xff, T * H * 2));
    check(cudaGraphLaunch(exec, stream));
    check(cudaStreamSynchronize(stream));
    const std::vector<float> replayed = download_bf16(d_out, T * H);
    const bool same = std::memcmp(replayed.data(), out.data(), out.size() * sizeof(float)) == 0;

    std::printf("Qwen3 MoE block: %lld tokens, H %lld, I %lld, %lld experts, top-%d: forward error vs float64 %.2e, "
                "graph replay %s\n",
                (long long)T, (long long)H, (long long)I, (long long)E, config.topk, error,
                same ? "identical" : "DIFFERENT");
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaStreamDestroy(stream);
    return error < 2e-2 && same ? 0 : 1;
} catch (const std::exception& error) {
    std::fprintf(stderr, "example_qwen3_moe_block: %s\n", error.what());
    return 1;
}

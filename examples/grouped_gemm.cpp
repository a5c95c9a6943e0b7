// Grouped GEMM forward for the qwen3-30b-a3b gate_up shape: 128 experts, W [128, 1536, 2048],
// 256 tokens routed top-8. Checks a sample of outputs on the host and prints the JIT's choices.
#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>

#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
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

}  // namespace

int main() try {
    const int experts = 128, topk = 8, tokens = 256;
    const int64_t n = 1536, k = 2048, rows = int64_t(tokens) * topk;

    std::mt19937 rng(7);
    std::uniform_real_distribution<float> uniform(-1, 1);
    std::vector<uint16_t> x(rows * k), w(experts * n * k);  // X [M, K] grouped by expert, W [E, N, K]
    for (auto& value : x) value = to_bf16(uniform(rng));
    for (auto& value : w) value = to_bf16(uniform(rng));
    std::vector<int> m_sizes(experts, rows / experts);  // [E], here 16 rows each

    void *dx, *dw, *dy, *dm;
    check(cudaMalloc(&dx, x.size() * 2));
    check(cudaMalloc(&dw, w.size() * 2));
    check(cudaMalloc(&dy, rows * n * 2));
    check(cudaMalloc(&dm, experts * 4));
    check(cudaMemcpy(dx, x.data(), x.size() * 2, cudaMemcpyHostToDevice));
    check(cudaMemcpy(dw, w.data(), w.size() * 2, cudaMemcpyHostToDevice));
    check(cudaMemcpy(dm, m_sizes.data(), experts * 4, cudaMemcpyHostToDevice));

    moejit::Problem problem;  // fwd, bf16
    problem.n = n;
    problem.k = k;
    problem.experts = experts;
    problem.topk = topk;
    moejit::GroupedGemm gemm(problem);  // JIT at the first call, cached on disk after
    gemm.forward(reinterpret_cast<CUdeviceptr>(dx), reinterpret_cast<CUdeviceptr>(dw),
                 reinterpret_cast<CUdeviceptr>(dy), moejit::Routing{reinterpret_cast<CUdeviceptr>(dm), 0, 0, rows},
                 /*stream=*/nullptr);
    check(cudaDeviceSynchronize());

    std::vector<uint16_t> y(rows * n);  // Y [M, N]
    check(cudaMemcpy(y.data(), dy, y.size() * 2, cudaMemcpyDeviceToHost));
    double worst = 0;
    for (int64_t r = 0; r < rows; r += 97) {
        const int64_t expert = r / (rows / experts);
        for (int64_t col = 0; col < n; col += 31) {
            double sum = 0;
            for (int64_t i = 0; i < k; ++i) sum += double(from_bf16(x[r * k + i])) * from_bf16(w[(expert * n + col) * k + i]);
            worst = std::fmax(worst, std::fabs(from_bf16(y[r * n + col]) - sum) / (std::fabs(sum) + 1.0));
        }
    }
    std::printf("%s with config %s: worst sampled relative error %.2e\n", moejit::to_spec(gemm.problem()).c_str(),
                gemm.config().c_str(), worst);
    cudaFree(dx);
    cudaFree(dw);
    cudaFree(dy);
    cudaFree(dm);
    return worst < 2e-2 ? 0 : 1;
} catch (const std::exception& error) {
    std::fprintf(stderr, "example_grouped_gemm: %s\n", error.what());
    return 1;
}

// Grouped GEMM forward beside cuBLAS dense at equal FLOPs, plus the JIT's own costs: cold NVRTC
// compile, disk-cache hit in a new process, host cost of a cached call.
//
//   bench_grouped_gemm --model qwen3-30b-a3b --tokens 8192 [--configs m128n128s3w2x4,...] [--cublas PATH]
//   bench_grouped_gemm --cache-hit SPEC   (run by the main mode in a child process)
#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>

#include "bench/cublas.hpp"
#include "bench/timing.hpp"
#include "codegen/config.hpp"
#include "codegen/models.hpp"
#include "runtime/compiler.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"
#include "runtime/module.hpp"
#include "runtime/launch_arguments.hpp"
#include "runtime/runtime.hpp"
#include "runtime/tensor_map.hpp"
#include "tests/support/device.hpp"
#include "tests/support/half.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using namespace moejit;
using namespace moejit::testing;
using namespace moejit::bench;

namespace {

struct HostRouting {
    std::vector<int> m_sizes;     // [E]
    std::vector<int> gather_idx;  // [M]: slots t*topk+j stably sorted by expert
};

// Each token picks topk distinct experts uniformly at random.
HostRouting uniform_routing(int tokens, int experts, int topk, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<int> order(experts), expert_of_slot(size_t(tokens) * topk);
    std::iota(order.begin(), order.end(), 0);
    for (int t = 0; t < tokens; ++t) {
        for (int j = 0; j < topk; ++j) {
            std::uniform_int_distribution<int> pick(j, experts - 1);
            std::swap(order[j], order[pick(rng)]);
            expert_of_slot[size_t(t) * topk + j] = order[j];
        }
    }
    HostRouting routing;
    routing.m_sizes.assign(experts, 0);
    for (int expert : expert_of_slot) ++routing.m_sizes[expert];
    routing.gather_idx.resize(expert_of_slot.size());
    std::iota(routing.gather_idx.begin(), routing.gather_idx.end(), 0);
    std::stable_sort(routing.gather_idx.begin(), routing.gather_idx.end(),
                     [&](int a, int b) { return expert_of_slot[a] < expert_of_slot[b]; });
    return routing;
}

std::vector<std::string> split(const std::string& text) {
    std::vector<std::string> parts;
    std::stringstream stream(text);
    for (std::string part; std::getline(stream, part, ',');)
        if (!part.empty()) parts.push_back(part);
    return parts;
}

// Child mode: one disk-cache hit and one module load in a fresh process.
int cache_hit_probe(const std::string& spec) {
    const DeviceInfo& device = current_device();  // driver + context outside the timed region
    Problem problem = parse_spec(spec);
    problem.arch = device.arch;
    const Config config = choose_config(problem);
    const double start = now_ms();
    Compiler compiler(DiskCache::from_environment());
    const Binary binary = compiler.get(problem, config);
    const double read = now_ms();
    auto module = std::make_shared<const Module>(binary.cubin);
    Kernel kernel(module, binary.kernel_name, config.threads(), config.shared_bytes());
    const double loaded = now_ms();
    std::printf("cache-hit %s from_disk=%d read_ms=%.3f load_ms=%.3f total_ms=%.3f\n", spec.c_str(),
                binary.from_disk ? 1 : 0, read - start, loaded - read, loaded - start);
    return binary.from_disk ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) try {
    if (argc >= 3 && std::strcmp(argv[1], "--cache-hit") == 0) return cache_hit_probe(argv[2]);

    const ModelPreset& model = find_model(argument(argc, argv, "--model", "qwen3-30b-a3b"));
    const int tokens = std::stoi(argument(argc, argv, "--tokens", "8192"));
    const std::vector<std::string> configs = split(argument(argc, argv, "--configs", ""));
    Cublas cublas(argument(argc, argv, "--cublas", ""));
    const DeviceInfo& device = current_device();
    const DType dtype = DType::bf16;
    const int64_t rows = int64_t(tokens) * model.topk;
    const HostRouting host_routing = uniform_routing(tokens, model.experts, model.topk, 1234);
    std::printf("device %s (%s, %d SMs); model %s, %d tokens, M = %lld routed rows\n", device.name.c_str(),
                device.arch.name().c_str(), device.sm_count, model.name.c_str(), tokens, (long long)rows);

    // JIT costs, measured on the first kernel: cold NVRTC compile, then a disk hit in a new process.
    Compiler compiler(DiskCache::from_environment());
    std::printf("\n| kernel | config | cold NVRTC compile ms |\n|---|---|---|\n");
    for (const Problem& base : model_kernels(model, device.arch, dtype)) {
        const Binary binary = compiler.get(base, choose_config(base), /*recompile=*/true);
        std::printf("| %s | %s | %.1f |\n", to_spec(base).c_str(), choose_config(base).to_string().c_str(),
                    binary.milliseconds);
    }
    const std::string first_spec = to_spec(model_kernels(model, device.arch, dtype).front());
    std::fflush(stdout);
    const std::string probe = "\"" + std::string(argv[0]) + "\" --cache-hit " + first_spec;
    for (int i = 0; i < 3; ++i)
        if (std::system(probe.c_str()) != 0) std::printf("cache-hit probe failed\n");

    std::printf("\n| gemm | pass | fusions | M | N | K | E | config | moejit ms | moejit TFLOP/s | cuBLAS dense ms | "
                "cuBLAS TFLOP/s | ratio |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    Events events;
    DeviceBuffer d_sizes = DeviceBuffer::from(host_routing.m_sizes), d_gather = DeviceBuffer::from(host_routing.gather_idx);
    std::vector<float> weights(rows, 0.5f);
    DeviceBuffer d_weights = DeviceBuffer::from(weights);
    const Routing routing{d_sizes.get(), d_gather.get(), d_weights.get(), rows};
    for (ModelGemm which : model_gemms()) {
        const Problem fused = model_gemm(model, which, Op::fwd, dtype, device.arch);
        Problem plain = fused;
        plain.permute_x = plain.permute_y = plain.fuse_mul_post = plain.gated = false;
        const int64_t n = plain.n, k = plain.k;
        // X [M, K] (also read as [T, K] by permute_x), W [E, N, K], Y and dY [M, N], dX [M, K], dW [E, N, K].
        DeviceBuffer x = DeviceBuffer::from(random_halves(dtype, size_t(rows) * k, 1));
        DeviceBuffer w = DeviceBuffer::from(random_halves(dtype, size_t(plain.experts) * n * k, 2));
        DeviceBuffer dy = DeviceBuffer::from(random_halves(dtype, size_t(rows) * n, 3));
        DeviceBuffer y(size_t(rows) * n * 2), dx(size_t(rows) * k * 2), dw(size_t(plain.experts) * n * k * 2);
        const double flops = 2.0 * double(rows) * double(n) * double(k);
        // C [m_, n_] = A [m_, k_] @ B [n_, k_]^T on buffers large enough for each orientation; same FLOPs.
        auto cublas_ms = [&](int64_t m_, int64_t n_, int64_t k_, const DeviceBuffer& a, const DeviceBuffer& b,
                             const DeviceBuffer& c) {
            return events.median_ms([&] {
                cublas.gemm(dtype == DType::bf16, int(m_), int(n_), int(k_), reinterpret_cast<void*>(a.get()),
                            reinterpret_cast<void*>(b.get()), reinterpret_cast<void*>(c.get()), nullptr);
            });
        };
        const double dense_fwd = cublas_ms(rows, n, k, x, w, y), dense_dx = cublas_ms(rows, k, n, dy, w, dx),
                     dense_dw = cublas_ms(n, k, rows, dy, x, dw);
        auto report = [&](const char* pass, const Problem& problem, const std::string& config, double ms, double dense) {
            std::string fusions = to_spec(problem);
            fusions = fusions.substr(fusions.find(":topk") + 1);
            fusions = fusions.substr(fusions.find(':') + 1);
            fusions = fusions.find(':') == std::string::npos ? "" : fusions.substr(0, fusions.rfind(':'));
            std::printf("| %s | %s | %s | %lld | %lld | %lld | %d | %s | %.3f | %.1f | %.3f | %.1f | %.2f |\n",
                        to_string(which), pass, fusions.empty() ? "-" : fusions.c_str(), (long long)rows, (long long)n,
                        (long long)k, plain.experts, config.c_str(), ms, flops / ms / 1e9, dense, flops / dense / 1e9,
                        dense / ms);
            std::fflush(stdout);
        };
        std::vector<std::string> tried = configs;
        if (tried.empty()) tried.push_back("");
        for (const std::string& config : tried) {
            GroupedGemm gemm(plain, config), model_gemm_fused(fused, config);
            const double fwd_ms = events.median_ms([&] { gemm.forward(x.get(), w.get(), y.get(), routing, nullptr); });
            report("fwd", plain, gemm.config(Op::fwd), fwd_ms, dense_fwd);
            const double fused_ms =
                events.median_ms([&] { model_gemm_fused.forward(x.get(), w.get(), y.get(), routing, nullptr); });
            report("fwd", fused, model_gemm_fused.config(Op::fwd), fused_ms, dense_fwd);
            const double dx_ms = events.median_ms([&] { gemm.dx(dy.get(), w.get(), dx.get(), routing, nullptr); });
            Problem dx_problem = plain;
            dx_problem.op = Op::dx;
            report("dx", dx_problem, gemm.config(Op::dx), dx_ms, dense_dx);
            const double dw_ms = events.median_ms([&] { gemm.dw(dy.get(), x.get(), dw.get(), routing, nullptr); });
            Problem dw_problem = plain;
            dw_problem.op = Op::dw;
            report("dw", dw_problem, gemm.config(Op::dw), dw_ms, dense_dw);
        }
    }

    // Host cost of a cached call: enqueue-only time of batches of 200 small calls.
    {
        Problem small = model_gemm(model, ModelGemm::gate_up, Op::fwd, dtype, device.arch);
        small.permute_x = small.gated = false;
        GroupedGemm gemm(small);
        gemm.prepare();
        std::vector<int> one(small.experts, 0);
        one[0] = 16;
        DeviceBuffer dx(size_t(16) * small.k * 2), dw(size_t(small.experts) * small.n * small.k * 2),
            dy(size_t(16) * small.n * 2), dm = DeviceBuffer::from(one);
        auto per_call_us = [&](auto&& call) {
            std::vector<double> per_call;
            for (int batch = 0; batch < 20; ++batch) {
                const double start = now_ms();
                for (int i = 0; i < 200; ++i) call();
                per_call.push_back((now_ms() - start) * 1000.0 / 200);
                synchronize();
            }
            std::sort(per_call.begin(), per_call.end());
            return per_call[per_call.size() / 2];
        };
        const double api_us = per_call_us([&] { gemm.forward(dx.get(), dw.get(), dy.get(), Routing{dm.get(), 0, 0, 16}, nullptr); });
        // The floor: the same kernel through cuLaunchKernelEx alone, no validation or lookup.
        const Config config = Config::parse(gemm.config(Op::fwd, 16));
        auto kernel = Runtime::instance().kernel(gemm.problem(), config);
        CUdeviceptr x = dx.get(), w = dw.get(), y = dy.get(), m = dm.get();
        long long total_rows = 16;
        GroupedGemmArguments packed{reinterpret_cast<const void*>(x), reinterpret_cast<const void*>(w),
                                    reinterpret_cast<void*>(y), nullptr, reinterpret_cast<const int*>(m), nullptr,
                                    nullptr, total_rows};
        HopperTensorMaps maps;
        if (config.hopper()) maps = hopper_tensor_maps(gemm.problem(), config, x, w, total_rows);
        void* arguments[] = {&packed, &maps.a, &maps.b};
        const double raw_us = per_call_us([&] { kernel->launch(132, nullptr, arguments); });
        std::printf("\nhost cost of a cached forward call (median of 20 batches of 200): %.2f us "
                    "(cuLaunchKernelEx alone: %.2f us)\n", api_us, raw_us);
    }
    return 0;
} catch (const std::exception& error) {
    std::fprintf(stderr, "bench_grouped_gemm: %s\n", error.what());
    return 1;
}

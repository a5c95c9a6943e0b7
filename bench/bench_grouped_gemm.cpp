// The JIT's own costs for a model's kernels: cold NVRTC compile, disk-cache hit in a new process,
// host cost of a cached call. (Kernel speed beside cuBLAS: `moejit bench`.)
//
//   bench_grouped_gemm --model qwen3-30b-a3b
//   bench_grouped_gemm --cache-hit SPEC   (run by the main mode in a child process)
#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>

#include "bench/timing.hpp"
#include "codegen/config.hpp"
#include "codegen/models.hpp"
#include "moe/model_kernels.hpp"
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
#include <string>
#include <thread>
#include <vector>

using namespace moejit;
using namespace moejit::testing;
using namespace moejit::bench;

namespace {

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
    Kernel kernel(module, binary.kernel_name, config.threads(), dynamic_shared_bytes(problem, config));
    const double loaded = now_ms();
    std::printf("cache-hit %s from_disk=%d read_ms=%.3f load_ms=%.3f total_ms=%.3f\n", spec.c_str(),
                binary.from_disk ? 1 : 0, read - start, loaded - read, loaded - start);
    return binary.from_disk ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) try {
    if (argc >= 3 && std::strcmp(argv[1], "--cache-hit") == 0) return cache_hit_probe(argv[2]);

    const ModelPreset& model = find_model(argument(argc, argv, "--model", "qwen3-30b-a3b"));
    const DeviceInfo& device = current_device();
    const DType dtype = DType::bf16;
    std::printf("device %s (%s, %d SMs); model %s\n", device.name.c_str(), device.arch.name().c_str(),
                device.sm_count, model.name.c_str());

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
                                    nullptr, total_rows, nullptr};  // a plain forward claims no tiles
        HopperTensorMaps maps;
        if (config.hopper()) maps = hopper_tensor_maps(gemm.problem(), config, x, w, y, total_rows);
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

// Energy per launch of a model's grouped GEMM passes, beside dense cuBLAS at equal FLOPs and beside
// the memory traffic the pass cannot avoid, from NVML's energy counter over a steady window of
// back-to-back launches, with the SM clock and how often the software power cap held it. On a board
// that runs GEMMs at its power limit, time is energy over the limit: these numbers say where a
// pass's joules go that cuBLAS's do not.
//
//   bench_energy --model deepseek-v3 [--tokens 8192] [--gemm gate_up|down] [--pass dw|fwd|dx]
//                [--seconds 2] [--config C[,C2...]] [--floor 0] [--cublas PATH]
//
// Several configs (comma-separated) each get their own window, in the order given, beside one
// cuBLAS window: the way to compare tilings by joules, which is what sets their time on a board
// held at its power limit. `--floor 0` skips the floor.
// Floors: dW writes every expert's gradient once (a memset of those bytes); the forward and dX read
// every expert's weights once (a 16-row cuBLAS GEMM over all of them). A floor's energy is its own
// kernel's, clocks included: not what the same bytes add inside a GEMM (measure that with a
// diagnostic build that skips them).
#include <moejit/grouped_gemm.hpp>

#include "bench/cublas.hpp"
#include "bench/nvml.hpp"
#include "bench/timing.hpp"
#include "codegen/models.hpp"
#include "moe/model_kernels.hpp"
#include "runtime/device.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <deque>
#include <cstdio>
#include <functional>
#include <string>
#include <thread>
#include <vector>

using namespace moejit;
using namespace moejit::bench;

namespace {

struct Steady {
    double ms = 0;          // per launch, CUDA events over the whole run
    double watts = 0;       // mean board power over the window
    double joules = 0;      // per launch: watts x ms
    unsigned sm_mhz = 0;    // median over the window
    double capped = 0;      // share of the window's samples with the software power cap active
};

// Launches `run` back to back for lead + window + tail seconds; a sampler thread reads the energy
// counter at the window's two ends (after the lead, so that clocks and power have settled) and the
// SM clock every 20 ms between them.
Steady measure(const Nvml& nvml, EventTimer& timer, const std::function<void()>& run, double window_s) {
    const double lead_s = 0.4, tail_s = 0.3;
    const double single_ms = timer.median_ms([&](int) { run(); }, 2, 5);
    const long launches = std::max(1L, long(std::ceil((lead_s + window_s + tail_s) * 1000.0 / single_ms)));
    std::atomic<bool> started{false};
    double joules = 0, seconds = 0;
    std::vector<unsigned> clocks;
    int capped = 0;
    std::thread sampler([&] {
        while (!started) std::this_thread::yield();
        std::this_thread::sleep_for(std::chrono::duration<double>(lead_s));
        const double start_j = nvml.joules(), start_ms = now_ms();
        while (now_ms() - start_ms < window_s * 1000.0) {
            clocks.push_back(nvml.sm_mhz());
            capped += (nvml.clock_reasons() & Nvml::kSoftwarePowerCap) != 0;
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        }
        joules = nvml.joules() - start_j;
        seconds = (now_ms() - start_ms) / 1000.0;
    });
    CUevent begin = nullptr, end = nullptr;
    check_cuda(driver().cuEventCreate(&begin, CU_EVENT_DEFAULT), "cuEventCreate");
    check_cuda(driver().cuEventCreate(&end, CU_EVENT_DEFAULT), "cuEventCreate");
    try {
        check_cuda(driver().cuEventRecord(begin, nullptr), "cuEventRecord");
        for (long i = 0; i < launches; ++i) {
            run();
            started = true;
        }
        check_cuda(driver().cuEventRecord(end, nullptr), "cuEventRecord");
        check_cuda(driver().cuEventSynchronize(end), "cuEventSynchronize");
    } catch (...) {
        started = true;  // the sampler must not wait for launches that will not come
        sampler.join();
        throw;
    }
    sampler.join();
    float total_ms = 0;
    check_cuda(driver().cuEventElapsedTime(&total_ms, begin, end), "cuEventElapsedTime");
    driver().cuEventDestroy(begin);
    driver().cuEventDestroy(end);
    if (total_ms < (lead_s + window_s) * 1000.0)
        std::fprintf(stderr, "warning: the launches ended before the window did (%.0f ms)\n", total_ms);
    Steady steady;
    steady.ms = total_ms / double(launches);
    steady.watts = joules / seconds;
    steady.joules = steady.watts * steady.ms / 1000.0;
    std::sort(clocks.begin(), clocks.end());
    steady.sm_mhz = clocks.empty() ? 0 : clocks[clocks.size() / 2];
    steady.capped = clocks.empty() ? 0 : double(capped) / double(clocks.size());
    return steady;
}

}  // namespace

int main(int argc, char** argv) try {
    const ModelPreset& model = find_model(argument(argc, argv, "--model", "qwen3-30b-a3b"));
    const int64_t tokens = std::stoll(argument(argc, argv, "--tokens", "8192"));
    const std::string only_gemm = argument(argc, argv, "--gemm", ""), only_pass = argument(argc, argv, "--pass", "");
    std::vector<std::string> configs;
    {
        const std::string list = argument(argc, argv, "--config", "");
        for (size_t begin = 0;;) {
            const size_t comma = list.find(',', begin);
            configs.push_back(list.substr(begin, comma == std::string::npos ? std::string::npos : comma - begin));
            if (comma == std::string::npos) break;
            begin = comma + 1;
        }
    }
    const bool with_floor = argument(argc, argv, "--floor", "1") != "0";
    const double window_s = std::stod(argument(argc, argv, "--seconds", "2"));
    const DeviceInfo& device = current_device();
    const DType dtype = DType::bf16;
    Cublas cublas(argument(argc, argv, "--cublas", ""));
    Nvml nvml(device);
    EventTimer timer;

    const SyntheticRouting synthetic = random_routing(tokens, model.experts, model.topk, 1234);
    const int64_t rows = tokens * model.topk;
    int used_experts = 0;
    for (int size : synthetic.m_sizes) used_experts += size > 0;
    DeviceBuffer m_sizes = DeviceBuffer::from(synthetic.m_sizes), gather = DeviceBuffer::from(synthetic.gather_idx);
    DeviceBuffer topk_weights = DeviceBuffer::from(std::vector<float>(size_t(rows), 0.5f));
    const Routing routing{m_sizes.get(), gather.get(), topk_weights.get(), rows};

    // The board at rest: no kernel for a second.
    check_cuda(driver().cuCtxSynchronize(), "cuCtxSynchronize");
    const double idle_j = nvml.joules(), idle_start = now_ms();
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const double idle_watts = (nvml.joules() - idle_j) / ((now_ms() - idle_start) / 1000.0);
    const double limit = nvml.power_limit_watts();
    std::printf("device %s, power limit %.0f W, idle %.0f W; %s, %lld tokens, %d of %d experts used\n\n",
                device.name.c_str(), limit, idle_watts, model.name.c_str(), (long long)tokens, used_experts,
                model.experts);
    std::printf("| gemm | pass | workload | ms | W | J a launch | SM MHz | power-capped |\n"
                "|---|---|---|---|---|---|---|---|\n");
    auto row = [&](const char* gemm, const char* pass, const std::string& what, const Steady& s) {
        std::printf("| %s | %s | %s | %.3f | %.0f | %.3f | %u | %.0f%% |\n", gemm, pass, what.c_str(), s.ms, s.watts,
                    s.joules, s.sm_mhz, 100.0 * s.capped);
        std::fflush(stdout);
    };
    for (ModelGemm which : model_gemms()) {
        if (!only_gemm.empty() && only_gemm != to_string(which)) continue;
        Problem plain = model_gemm(model, which, Op::fwd, dtype, device.arch);
        plain.permute_x = plain.permute_y = plain.fuse_mul_post = plain.gated = false;
        const int64_t n = plain.n, k = plain.k;
        DeviceBuffer x = DeviceBuffer::from(random_halves(dtype, size_t(rows) * k, 1));
        DeviceBuffer w = DeviceBuffer::from(random_halves(dtype, size_t(plain.experts) * n * k, 2));
        DeviceBuffer dy = DeviceBuffer::from(random_halves(dtype, size_t(rows) * n, 3));
        DeviceBuffer y(size_t(rows) * n * 2), dx(size_t(rows) * k * 2), dw(size_t(plain.experts) * n * k * 2);
        DeviceBuffer read_floor_out(size_t(16) * plain.experts * n * 2);
        std::deque<GroupedGemm> gemms;  // neither copied nor moved
        for (const std::string& config : configs) gemms.emplace_back(plain, config);
        // Row-major C [m_, n_] = A [m_, k_] B [n_, k_]^T by cublasGemmEx.
        auto dense = [&](int64_t m_, int64_t n_, int64_t k_, CUdeviceptr a, CUdeviceptr b, CUdeviceptr c) {
            if (std::max({m_, n_, k_}) > INT32_MAX) throw std::runtime_error("dense GEMM dimension past int");
            return [&, m_, n_, k_, a, b, c] {
                cublas.gemm(dtype == DType::bf16, int(m_), int(n_), int(k_), reinterpret_cast<void*>(a),
                            reinterpret_cast<void*>(b), reinterpret_cast<void*>(c), nullptr);
            };
        };
        const size_t weight_bytes = size_t(plain.experts) * n * k * 2;
        for (const char* pass : {"fwd", "dx", "dw"}) {
            if (!only_pass.empty() && only_pass != pass) continue;
            const std::string p = pass;
            const Op op = p == "fwd" ? Op::fwd : p == "dx" ? Op::dx : Op::dw;
            // Each config's pass, compiled before any window opens.
            std::vector<std::function<void()>> ours;
            std::function<void()> reference, floor;
            for (const GroupedGemm& gemm : gemms) {
                if (op == Op::fwd) ours.push_back([&] { gemm.forward(x.get(), w.get(), y.get(), routing, nullptr); });
                else if (op == Op::dx) ours.push_back([&] { gemm.dx(dy.get(), w.get(), dx.get(), routing, nullptr); });
                else ours.push_back([&] { gemm.dw(dy.get(), x.get(), dw.get(), routing, nullptr); });
                ours.back()();
            }
            if (op == Op::fwd) reference = dense(rows, n, k, x.get(), w.get(), y.get());
            else if (op == Op::dx) reference = dense(rows, k, n, dy.get(), w.get(), dx.get());
            else reference = dense(n, k, rows, dy.get(), x.get(), dw.get());
            std::string floor_name;
            if (op == Op::dw) {  // every expert's gradient written once, in 4-byte words
                floor = [&] {
                    check_cuda(driver().cuMemsetD32Async(dw.get(), 0, weight_bytes / 4, nullptr), "cuMemsetD32Async");
                };
                floor_name = "floor: write the gradient (" + std::to_string(weight_bytes >> 20) + " MiB)";
            } else {  // every expert's weights read once: Y [16, E*N] = X [16, K] W [E*N, K]^T
                floor = dense(16, plain.experts * n, k, x.get(), w.get(), read_floor_out.get());
                floor_name = "floor: read the weights (" + std::to_string(weight_bytes >> 20) + " MiB)";
            }
            std::vector<Steady> s_ours;
            for (size_t i = 0; i < gemms.size(); ++i) {
                s_ours.push_back(measure(nvml, timer, ours[i], window_s));
                row(to_string(which), pass, "moejit " + gemms[i].config(op, rows), s_ours.back());
            }
            const Steady s_dense = measure(nvml, timer, reference, window_s);
            row(to_string(which), pass, "cuBLAS dense, equal FLOPs", s_dense);
            if (with_floor) row(to_string(which), pass, floor_name, measure(nvml, timer, floor, window_s));
            for (size_t i = 0; i < gemms.size(); ++i)
                std::printf("| %s | %s | moejit %s / cuBLAS | %.2fx | | %.2fx | | |\n", to_string(which), pass,
                            gemms[i].config(op, rows).c_str(), s_ours[i].ms / s_dense.ms,
                            s_ours[i].joules / s_dense.joules);
        }
    }
    return 0;
} catch (const std::exception& error) {
    std::fprintf(stderr, "bench_energy: %s\n", error.what());
    return 1;
}

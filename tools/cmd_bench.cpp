// `moejit bench` and `moejit tune`: the grouped GEMMs of a model preset on this GPU, timed beside
// cuBLAS (bench), or every candidate tiling of those its MoE layer launches timed and the winners
// stored (tune).
#include "tools/cli.hpp"

#include <moejit/grouped_gemm.hpp>
#include <moejit/tuning.hpp>

#include "bench/cublas.hpp"
#include "codegen/kernel_problems.hpp"
#include "codegen/models.hpp"
#include "moe/model_kernels.hpp"
#include "moe/row_limits.hpp"
#include "moe/synthetic.hpp"
#include "runtime/device_buffer.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <cstdio>
#include <memory>
#include <optional>
#include <sstream>
#include <vector>

namespace moejit::cli {

namespace {

// --tokens, whose routed rows (tokens * topk) the device's int32 routing must index.
int64_t parse_tokens(const Args& args, const ModelPreset& model) {
    const int64_t tokens = parse_token_count(args.value("--tokens").value_or("8192"));
    if (!routed_rows_fit(tokens, model.topk))
        throw Error("--tokens " + std::to_string(tokens) + ": " + model.name + " routes each token to " +
                    std::to_string(model.topk) + " experts, and tokens * topk must be below 2^31");
    return tokens;
}

// --skew: the share of the experts that get tokens, in (0, 1]; the whole text must be the number.
double parse_skew(const Args& args) {
    const std::string text = args.value("--skew").value_or("1");
    char* end = nullptr;
    const double skew = std::strtod(text.c_str(), &end);
    const bool whole = !text.empty() && !std::isspace(static_cast<unsigned char>(text[0])) &&
                       end == text.c_str() + text.size();
    if (!whole || !(skew > 0 && skew <= 1))
        throw Error("--skew must be a number in (0, 1] (the share of the experts that get tokens), got '" + text + "'");
    return skew;
}

// --fusions: the fused rows' fusions instead of the model's (each GEMM's own), e.g. "gated" or
// "permute_x,gated", or "none"; to tell what each fusion of a fused kernel costs. Nothing where
// the option is absent.
std::optional<std::vector<bool Problem::*>> parse_fusions(const Args& args) {
    const std::optional<std::string> text = args.value("--fusions");
    if (!text) return std::nullopt;
    std::vector<bool Problem::*> fusions;
    if (*text == "none") return fusions;
    // Every comma separates two names: "gated," and "" name an empty fusion and are refused.
    for (size_t begin = 0, end = 0; end != std::string::npos; begin = end + 1) {
        end = text->find(',', begin);
        const std::string flag = text->substr(begin, end == std::string::npos ? std::string::npos : end - begin);
        bool Problem::*field = fusion_flag(flag);
        if (field == nullptr)
            throw Error("--fusions: expected 'none' or a comma list of permute_x, permute_y, mul_post, gated; got '" +
                        *text + "'");
        fusions.push_back(field);
    }
    return fusions;
}

// The device's memory rates over 1 GiB: copy, counting bytes read plus bytes written (the ceiling
// for weight reads), and fill, write-only (the ceiling for dW, which writes every expert's weight
// gradient once and reads far fewer bytes).
struct MemoryRates {
    double copy_gb_per_s = 0, fill_gb_per_s = 0;
};

MemoryRates memory_rates(EventTimer& timer) {
    const size_t bytes = size_t(1) << 30;
    DeviceBuffer from(bytes), to(bytes);
    auto gb_per_s = [&](double counted_bytes, auto&& run) {
        return counted_bytes / timer.median_ms([&](int) { run(); }, 2, 10) / 1e6;
    };
    MemoryRates rates;
    rates.copy_gb_per_s = gb_per_s(2.0 * bytes, [&] {
        check_cuda(driver().cuMemcpyDtoD(to.get(), from.get(), bytes), "copy");
    });
    rates.fill_gb_per_s = gb_per_s(double(bytes), [&] {
        check_cuda(driver().cuMemsetD32Async(to.get(), 0, bytes / 4, nullptr), "fill");
    });
    return rates;
}

// Our kernel and its cuBLAS reference timed in alternating rounds (CUDA-event medians of 10 calls
// each), so that clock and temperature drift within a run touch both alike; the ratio reported is
// the median of the rounds' ratios, with their range.
struct Paired {
    double ms = 0, reference_ms = 0, ratio = 0, lowest_ratio = 0, highest_ratio = 0;
};

template <class Ours, class Reference>
Paired time_paired(EventTimer& timer, Ours&& ours, Reference&& reference, int rounds = 5) {
    std::vector<double> ms, reference_ms, ratios;
    for (int round = 0; round < rounds; ++round) {
        ms.push_back(timer.median_ms([&](int) { ours(); }, 2, 10));
        reference_ms.push_back(timer.median_ms([&](int) { reference(); }, 2, 10));
        ratios.push_back(reference_ms.back() / ms.back());
    }
    Paired paired;
    paired.ms = median_of(ms);
    paired.reference_ms = median_of(reference_ms);
    paired.ratio = median_of(ratios);
    paired.lowest_ratio = *std::min_element(ratios.begin(), ratios.end());
    paired.highest_ratio = *std::max_element(ratios.begin(), ratios.end());
    return paired;
}

}  // namespace

int cmd_bench(const std::vector<std::string>& argv) {
    const Args args("bench", argv,
                    {{"--model", true}, {"--tokens", true}, {"--dtype", true}, {"--skew", true},
                     {"--config", true}, {"--cublas", true}, {"--pass", true}, {"--fusions", true}});
    if (print_command_help(args, "--model NAME [--tokens T]",
                   "Times forward, dX and dW of the model's two expert GEMMs on this GPU at T tokens (default\n"
                   "8192) of random routing, plain and with the model's fusions (dW also as the MoE blocks\n"
                   "launch it: fp32 output, X gathered where the forward gathers it), and prints TFLOP/s beside\n"
                   "cuBLAS: dense cublasGemmEx at the same FLOPs, and cublasGemmGroupedBatchedEx doing the plain\n"
                   "pass's own work (one group per expert; for dW the empty experts' zeros too). Each pass and its\n"
                   "dense reference are timed in 5 alternating rounds; the ratio is the median of the rounds'\n"
                   "ratios (range beside it). Weight GB/s: bytes of the experts' weights over the time, against\n"
                   "the measured copy rate where the pass reads them (fwd, dX: the number that matters at\n"
                   "decode), against the measured fill (write-only) rate where it writes them (dW: at few rows\n"
                   "an expert, the floor under its time).\n"
                   "  --pass P       time only pass P (fwd, dx or dw)\n"
                   "  --skew F       route every token to the first F of the experts only (e.g. 0.25)\n"
                   "  --config C     force one tiling for every pass instead of the library's choice\n"
                   "  --fusions F    the fused rows' fusions instead of the model's: none, or a comma list of\n"
                   "                 permute_x, permute_y, mul_post, gated (gated beside the model's\n"
                   "                 permute_x,gated: what the gather costs)\n"
                   "  --dtype D      bf16 (default) or fp16\n"
                   "  --cublas PATH  libcublas.so to compare with (default: the usual sonames)\n"))
        return 0;
    args.expect_positionals(0, 0, "");
    if (!args.value("--model")) throw Error("'moejit bench' needs --model NAME (see moejit bench --help)");
    const ModelPreset& model = find_model(*args.value("--model"));
    const int64_t tokens = parse_tokens(args, model);
    const DType dtype = parse_dtype(args.value("--dtype").value_or("bf16"));
    const double skew = parse_skew(args);
    const std::optional<std::vector<bool Problem::*>> fusion_override = parse_fusions(args);
    const std::string config = args.value("--config").value_or("");
    if (!config.empty()) Config::parse(config);  // a typo is reported before the device is set up
    const std::string only_pass = args.value("--pass").value_or("");
    if (!only_pass.empty() && only_pass != "fwd" && only_pass != "dx" && only_pass != "dw")
        throw Error("--pass must be fwd, dx or dw, got '" + only_pass + "'");
    auto wants = [&](const char* pass) { return only_pass.empty() || only_pass == pass; };
    const DeviceInfo& device = current_device();
    bench::Cublas cublas(args.value("--cublas").value_or(""));
    EventTimer timer;

    const int active = std::max(model.topk, int(model.experts * skew + 0.5));
    const SyntheticRouting synthetic = random_routing(tokens, model.experts, model.topk, 1234, active);
    const int64_t rows = tokens * model.topk;
    int used_experts = 0;
    for (int size : synthetic.m_sizes) used_experts += size > 0;
    const MemoryRates rates = memory_rates(timer);
    const double copy_rate = rates.copy_gb_per_s, fill_rate = rates.fill_gb_per_s;
    std::printf("device %s (%s, %d SMs), copy %.0f GB/s, fill %.0f GB/s; %s, %lld tokens, M = %lld routed rows on %d "
                "of %d experts\n\n",
                device.name.c_str(), device.arch.name().c_str(), device.sm_count, copy_rate, fill_rate,
                model.name.c_str(), (long long)tokens, (long long)rows, used_experts, model.experts);
    std::printf("| gemm | pass | fusions | config | ms | TFLOP/s | cuBLAS dense TFLOP/s | ratio (range) | cuBLAS grouped "
                "TFLOP/s | weights GB/s | of copy (dW: of fill) |\n|---|---|---|---|---|---|---|---|---|---|---|\n");

    DeviceBuffer m_sizes = DeviceBuffer::from(synthetic.m_sizes), gather = DeviceBuffer::from(synthetic.gather_idx);
    DeviceBuffer topk_weights = DeviceBuffer::from(std::vector<float>(size_t(rows), 0.5f));
    const Routing routing{m_sizes.get(), gather.get(), topk_weights.get(), rows};
    for (ModelGemm which : model_gemms()) {
        const Problem model_fused = model_gemm(model, which, Op::fwd, dtype, device.arch);
        Problem plain = model_fused;
        plain.permute_x = plain.permute_y = plain.fuse_mul_post = plain.gated = false;
        Problem fused = fusion_override ? plain : model_fused;
        if (fusion_override)
            for (bool Problem::*flag : *fusion_override) fused.*flag = true;
        const int64_t n = plain.n, k = plain.k;
        DeviceBuffer x = DeviceBuffer::from(random_halves(dtype, size_t(rows) * k, 1));
        DeviceBuffer w = DeviceBuffer::from(random_halves(dtype, size_t(plain.experts) * n * k, 2));
        DeviceBuffer dy = DeviceBuffer::from(random_halves(dtype, size_t(rows) * n, 3));
        DeviceBuffer y(size_t(rows) * n * 2), dx(size_t(rows) * k * 2), dw(size_t(plain.experts) * n * k * 4);
        const double flops = 2.0 * double(rows) * double(n) * double(k);
        const double weight_bytes = double(used_experts) * double(n) * double(k) * 2;
        // Dense C [m, n] = A [m, k] @ B [n, k]^T at the same FLOPs, in each pass's orientation.
        auto dense = [&](int64_t m_, int64_t n_, int64_t k_, const DeviceBuffer& a, const DeviceBuffer& b,
                         const DeviceBuffer& c) {
            return [&, m_, n_, k_] {
                cublas.gemm(dtype == DType::bf16, int(m_), int(n_), int(k_), reinterpret_cast<void*>(a.get()),
                            reinterpret_cast<void*>(b.get()), reinterpret_cast<void*>(c.get()), nullptr);
            };
        };
        const auto dense_fwd = dense(rows, n, k, x, w, y), dense_dx = dense(rows, k, n, dy, w, dx),
                   dense_dw = dense(n, k, rows, dy, x, dw);
        auto report = [&](const char* pass, const Problem& problem, const std::string& tiling, const Paired& t,
                          double grouped) {
            const bool writes_weights = std::string(pass) == "dw";  // dW writes them; fwd and dX read them
            std::string spec = to_spec(problem), fusions;
            for (const char* flag : {"permute_x", "permute_y", "mul_post", "gated", "out_fp32"})
                if (spec.find(flag) != std::string::npos) fusions += (fusions.empty() ? "" : ":") + std::string(flag);
            char grouped_text[32] = "-", weights_text[32] = "-", share_text[32] = "-";
            if (grouped > 0) std::snprintf(grouped_text, sizeof grouped_text, "%.1f", flops / grouped / 1e9);
            // dW writes every expert's gradient, empty experts' zeros too, in the output's dtype.
            const double gradient_bytes = double(plain.experts) * double(n) * double(k) * (problem.out_fp32 ? 4 : 2);
            const double gb_per_s = (writes_weights ? gradient_bytes : weight_bytes) / t.ms / 1e6;
            std::snprintf(weights_text, sizeof weights_text, "%.0f", gb_per_s);
            std::snprintf(share_text, sizeof share_text, "%.0f%%",
                          100.0 * gb_per_s / (writes_weights ? fill_rate : copy_rate));
            std::printf("| %s | %s | %s | %s | %.3f | %.1f | %.1f | %.2f (%.2f-%.2f) | %s | %s | %s |\n",
                        to_string(which), pass, fusions.empty() ? "-" : fusions.c_str(), tiling.c_str(), t.ms,
                        flops / t.ms / 1e9, flops / t.reference_ms / 1e9, t.ratio, t.lowest_ratio, t.highest_ratio,
                        grouped_text, weights_text, share_text);
            std::fflush(stdout);
        };
        // cuBLAS's grouped GEMM doing the same work as the plain pass (dW: the empty experts' zeros too).
        auto grouped_ms = [&](bench::Cublas::GroupedPass pass, const DeviceBuffer& out) {
            if (!cublas.has_grouped()) return 0.0;
            const bench::Cublas::GroupedBatch batch = bench::Cublas::grouped_batch(
                pass, synthetic.m_sizes, int(n), int(k), x.get(), w.get(), dy.get(), out.get());
            return timer.median_ms([&](int) { cublas.run_grouped(dtype == DType::bf16, batch, nullptr); }, 2, 10);
        };
        const GroupedGemm gemm(plain, config), fused_gemm(fused, config);
        if (wants("fwd")) {
            report("fwd", plain, gemm.config(Op::fwd, rows),
                   time_paired(timer, [&] { gemm.forward(x.get(), w.get(), y.get(), routing, nullptr); }, dense_fwd),
                   grouped_ms(bench::Cublas::GroupedPass::fwd, y));
            report("fwd", fused, fused_gemm.config(Op::fwd, rows),
                   time_paired(timer, [&] { fused_gemm.forward(x.get(), w.get(), y.get(), routing, nullptr); },
                               dense_fwd),
                   0);
        }
        if (wants("dx")) {
            report("dx", plain, gemm.config(Op::dx, rows),
                   time_paired(timer, [&] { gemm.dx(dy.get(), w.get(), dx.get(), routing, nullptr); }, dense_dx),
                   grouped_ms(bench::Cublas::GroupedPass::dx, dx));
            // dX with the fusions that reach it (gate_up: permute_x scatters dX to slot order; down:
            // permute_y gathers dY, mul_post scales), where they do.
            const Problem fused_dx = gemm_pass(fused, GemmPass::dx);
            if (fused_dx != gemm_pass(plain, GemmPass::dx))
                report("dx", fused_dx, fused_gemm.config(Op::dx, rows),
                       time_paired(timer, [&] { fused_gemm.dx(dy.get(), w.get(), dx.get(), routing, nullptr); },
                                   dense_dx),
                       0);
        }
        if (wants("dw")) {
            report("dw", plain, gemm.config(Op::dw, rows),
                   time_paired(timer, [&] { gemm.dw(dy.get(), x.get(), dw.get(), routing, nullptr); }, dense_dw),
                   grouped_ms(bench::Cublas::GroupedPass::dw, dw));
            // The weight gradient the MoE blocks launch: fp32, with X gathered where the forward
            // gathers it (permute_x); the down GEMM's dY arrives in expert order (combine_backward).
            const GroupedGemm& block_gemm = fused.permute_x ? fused_gemm : gemm;
            const Problem block_dw = gemm_pass(block_gemm.problem(), GemmPass::dw_fp32);
            report("dw", block_dw, block_gemm.config(Op::dw, rows, /*fp32_output=*/true),
                   time_paired(timer, [&] { block_gemm.dw(dy.get(), x.get(), dw.get(), routing, nullptr, true); },
                               dense_dw),
                   0);
        }
    }
    return 0;
}

int cmd_tune(const std::vector<std::string>& argv) {
    const Args args("tune", argv, {{"--model", true}, {"--tokens", true}, {"--dtype", true}, {"--weight-grads", true},
                                     {"--inference", false}});
    if (print_command_help(args, "--model NAME [--tokens T] [--weight-grads fp32|dtype | --inference]",
                   "Times every candidate tiling of each grouped GEMM the model's MoE layer launches, forward and\n"
                   "backward, with the fusions it launches them with (the GEMMs of `moejit precompile --model`'s\n"
                   "list: for qwen3 and llama4 presets their block's, router GEMM included), at T tokens (default\n"
                   "8192) of uniform random routing on this GPU, with CUDA events over rotating inputs, times the\n"
                   "fastest again against the heuristic's choice in five alternating rounds (the times printed),\n"
                   "and stores each winner in the cache directory (<cache>/tuning/), keyed by problem, token-count\n"
                   "bucket, device and library version. Later processes on this device use the winners instead of\n"
                   "the heuristic. --weight-grads dtype: the dW of blocks built with fp32_weight_gradients = false;\n"
                   "--inference: the forward GEMMs of blocks built with training = false (no preactivation saved).\n"))
        return 0;
    args.expect_positionals(0, 0, "");
    if (!args.value("--model")) throw Error("'moejit tune' needs --model NAME (see moejit tune --help)");
    const ModelPreset& model = find_model(*args.value("--model"));
    const int64_t tokens = parse_tokens(args, model);
    const DType dtype = parse_dtype(args.value("--dtype").value_or("bf16"));
    const LayerOptions layer = parse_layer_options(args);
    const DeviceInfo& device = current_device();
    std::printf("device %s (%s); %s, %lld tokens\n\n| kernel | candidates | heuristic | ms | tuned | ms | "
                "heuristic / tuned |\n|---|---|---|---|---|---|---|\n",
                device.name.c_str(), device.arch.name().c_str(), model.name.c_str(), (long long)tokens);
    std::string stored;
    tune_grouped_gemm_passes(model_grouped_gemms(model, device.arch, dtype, layer), tokens, [&](const TunedPass& pass) {
        std::printf("| %s | %d | %s | %.3f | %s | %.3f | %.3f |\n", to_spec(pass.problem).c_str(), pass.candidates,
                    pass.heuristic.c_str(), pass.heuristic_ms, pass.best.c_str(), pass.best_ms,
                    pass.heuristic_ms / pass.best_ms);
        std::fflush(stdout);
        stored = pass.stored;
    });
    if (!stored.empty()) std::printf("\nwinners stored beside %s\n", stored.c_str());
    return 0;
}

}  // namespace moejit::cli

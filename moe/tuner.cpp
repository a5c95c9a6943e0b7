#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>
#include <moejit/tuning.hpp>

#include "codegen/config.hpp"
#include "moe/synthetic.hpp"
#include "moe/tuning.hpp"
#include "runtime/device_buffer.hpp"
#include "runtime/log.hpp"

#include <limits>
#include <memory>

namespace moejit {

namespace {

constexpr int kInputSets = 3;  // activations rotate among these; weights are far larger than L2

struct Inputs {
    DeviceBuffer x[kInputSets], dy[kInputSets], w, y, dx, dw;
    DeviceBuffer m_sizes, gather_idx, topk_weights;
    Routing routing;
};

Inputs make_inputs(const Problem& forward, int64_t tokens) {
    const SyntheticRouting synthetic = random_routing(tokens, forward.experts, forward.topk, 1234);
    const int64_t rows = tokens * forward.topk;
    const int64_t x_rows = forward.permute_x ? tokens : rows;
    const int64_t y_cols = forward.gated ? forward.n / 2 : forward.n;
    Inputs inputs;
    for (int i = 0; i < kInputSets; ++i) {
        inputs.x[i] = DeviceBuffer::from(random_halves(forward.dtype, size_t(x_rows) * forward.k, 10 + i));
        inputs.dy[i] = DeviceBuffer::from(random_halves(forward.dtype, size_t(rows) * forward.n, 20 + i));
    }
    inputs.w = DeviceBuffer::from(random_halves(forward.dtype, size_t(forward.experts) * forward.n * forward.k, 30));
    inputs.y = DeviceBuffer(size_t(rows) * y_cols * 2);
    inputs.dx = DeviceBuffer(size_t(rows) * forward.k * 2);
    inputs.dw = DeviceBuffer(size_t(forward.experts) * forward.n * forward.k * 4);
    inputs.m_sizes = DeviceBuffer::from(synthetic.m_sizes);
    inputs.gather_idx = DeviceBuffer::from(synthetic.gather_idx);
    inputs.topk_weights = DeviceBuffer::from(std::vector<float>(size_t(rows), 0.5f));
    inputs.routing = Routing{inputs.m_sizes.get(), inputs.gather_idx.get(), inputs.topk_weights.get(), rows};
    return inputs;
}

// Median ms of one pass of `gemm` over rotating inputs.
double time_pass(const GroupedGemm& gemm, int pass, Inputs& in, EventTimer& timer) {
    return timer.median_ms([&](int call) {
        const int set = call % kInputSets;
        switch (pass) {
            case 0: gemm.forward(in.x[set].get(), in.w.get(), in.y.get(), in.routing, nullptr); break;
            case 1: gemm.dx(in.dy[set].get(), in.w.get(), in.dx.get(), in.routing, nullptr); break;
            default: gemm.dw(in.dy[set].get(), in.x[set].get(), in.dw.get(), in.routing, nullptr, pass == 3); break;
        }
    });
}

}  // namespace

std::vector<TunedPass> tune_grouped_gemm(Problem forward, int64_t tokens) {
    if (tokens < 1) throw Error("tune_grouped_gemm: tokens must be at least 1");
    const DeviceInfo& device = current_device();
    forward.arch = device.arch;
    forward.op = Op::fwd;
    forward.validate();
    Inputs inputs = make_inputs(forward, tokens);
    EventTimer timer;
    const int64_t rows = tokens * forward.topk;
    const RowsBucket bucket = rows_bucket(rows, forward.experts);

    std::vector<TunedPass> results;
    const char* names[4] = {"fwd", "dx", "dw", "dw fp32"};
    const Op ops[4] = {Op::fwd, Op::dx, Op::dw, Op::dw};
    for (int pass = 0; pass < 4; ++pass) {
        if (ops[pass] == Op::dw && forward.fuse_mul_post) continue;  // no dW for an inference fusion
        Problem problem = forward;
        problem.op = ops[pass];
        problem.gated = forward.gated && pass == 0;
        problem.out_fp32 = pass == 3;
        TunedPass result;
        result.pass = names[pass];
        // The heuristic's choice, ignoring earlier tuning, as the baseline.
        result.heuristic = choose_config(problem, bucket).to_string();
        result.best_ms = std::numeric_limits<double>::infinity();
        for (const Config& candidate : candidate_configs(problem)) {
            std::unique_ptr<GroupedGemm> gemm;
            try {
                check_config(problem, candidate);
                gemm = std::make_unique<GroupedGemm>(forward, candidate.to_string());
            } catch (const Error& error) {  // a tiling this pass cannot use
                log::debug("tune: skipping " + candidate.to_string() + ": " + error.what());
                continue;
            }
            const double ms = time_pass(*gemm, pass, inputs, timer);
            ++result.candidates;
            if (candidate.to_string() == result.heuristic) result.heuristic_ms = ms;
            if (ms < result.best_ms) {
                result.best_ms = ms;
                result.best = candidate.to_string();
            }
        }
        if (result.candidates == 0) throw Error("tune: no candidate tiling fits " + to_spec(problem));
        if (result.heuristic_ms == 0)  // the heuristic's choice is not among the candidates: time it too
            result.heuristic_ms = time_pass(GroupedGemm(forward, result.heuristic), pass, inputs, timer);
        if (result.heuristic_ms <= result.best_ms) {
            result.best = result.heuristic;
            result.best_ms = result.heuristic_ms;
        }
        result.stored = store_tuned_config(problem, bucket, device, Config::parse(result.best));
        results.push_back(result);
    }
    return results;
}

}  // namespace moejit

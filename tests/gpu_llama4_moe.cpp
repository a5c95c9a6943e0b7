// Llama4TextMoe forward and backward against an independent float64 host implementation of the
// same math (Hugging Face Llama4TextMoe: sigmoid of the top-k logits scales the expert input, plus
// a dense shared expert), plus CUDA-graph capture and replay.
#include "tests/catch.hpp"
#include "tests/support/block_checks.hpp"
#include "tests/support/device.hpp"
#include "tests/support/half.hpp"
#include "tests/support/moe_reference.hpp"
#include "tests/support/reference.hpp"

#include <moejit/error.hpp>
#include <moejit/llama4_moe.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

using namespace moejit;
using namespace moejit::testing;

namespace {

// bf16 bits uniform in [-scale, scale] and the same values as floats (exact).
struct Tensor {
    std::vector<uint16_t> bits;
    std::vector<float> values;
};
Tensor random_tensor(size_t count, double scale) {
    Tensor t;
    t.bits = moe::random_halves(DType::bf16, count, float(-scale), float(scale));
    t.values = moe::to_floats(DType::bf16, t.bits);
    return t;
}

std::vector<float> bf16_floats(const std::vector<uint16_t>& bits) { return moe::to_floats(DType::bf16, bits); }

double silu(double x) { return x / (1 + std::exp(-x)); }
double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

struct Reference {
    std::vector<double> logits, output, grad_hidden, grad_router, grad_gate_up, grad_down, grad_shared_gate_up,
        grad_shared_down;
    // grad_router with every product of the score's dot product taken by magnitude: the scale of
    // its rounding error. A router gradient is one dot product per token (H terms that cancel), so
    // at T = 1 its relative error alone says little: 5% was seen on one seed of 7 with every other
    // output of the block within 1%.
    std::vector<double> grad_router_scale;
};

// The block in float64 from the rounded inputs. Routing decisions (top-k) and the scores are taken
// from `device_logits` (the bf16 logits the block computed), because top-k is discontinuous; the
// reference logits are compared separately.
Reference reference(const Llama4MoeConfig& c, int64_t T, const std::vector<float>& x, const std::vector<float>& wr,
                    const std::vector<float>& wgu, const std::vector<float>& wd, const std::vector<float>& sgu,
                    const std::vector<float>& sd, const std::vector<float>& device_logits,
                    const std::vector<float>& grad_out) {
    const int64_t H = c.hidden, I = c.intermediate, Is = c.shared(), E = c.experts, K = c.topk, M = T * K;
    Reference r;
    r.logits.assign(T * E, 0);
    r.output.assign(T * H, 0);
    r.grad_hidden.assign(T * H, 0);
    // Per slot: expert, score, activation [I], d(gate|up) [2I]; per token: the shared expert's.
    std::vector<int> expert(M);
    std::vector<double> score(M), act(M * I), dgu(M * 2 * I), shared_act(T * Is), shared_dgu(T * 2 * Is);
    std::vector<double> grad_logits(T * E, 0);
    std::vector<double> grad_logits_scale(T * E, 0);
    parallel_for(T, [&](int64_t begin, int64_t end) {
        for (int64_t t = begin; t < end; ++t) {
            const float* xt = &x[t * H];
            const float* go = &grad_out[t * H];
            double* dxt = &r.grad_hidden[t * H];
            double* out = &r.output[t * H];
            for (int64_t e = 0; e < E; ++e) {
                double sum = 0;
                for (int64_t h = 0; h < H; ++h) sum += double(xt[h]) * wr[e * H + h];
                r.logits[t * E + e] = sum;
            }
            // top-k of the device logits, ties to the lower id; score = sigmoid of the chosen logit.
            std::vector<int> order(E);
            std::iota(order.begin(), order.end(), 0);
            std::stable_sort(order.begin(), order.end(),
                             [&](int a, int b) { return device_logits[t * E + a] > device_logits[t * E + b]; });
            for (int j = 0; j < K; ++j) {
                const int64_t slot = t * K + j;
                const int e = order[j];
                const double sc = sigmoid(device_logits[t * E + e]);
                expert[slot] = e;
                score[slot] = sc;
                const float* gu = &wgu[int64_t(e) * 2 * I * H];
                const float* dn = &wd[int64_t(e) * H * I];
                std::vector<double> g(I), u(I);
                double* a = &act[slot * I];
                for (int64_t i = 0; i < I; ++i) {
                    double gs = 0, us = 0;
                    for (int64_t h = 0; h < H; ++h) {
                        gs += double(gu[i * H + h]) * xt[h];
                        us += double(gu[(I + i) * H + h]) * xt[h];
                    }
                    g[i] = gs * sc;  // the expert sees x * score
                    u[i] = us * sc;
                    a[i] = silu(g[i]) * u[i];
                }
                for (int64_t h = 0; h < H; ++h) {
                    double sum = 0;
                    for (int64_t i = 0; i < I; ++i) sum += double(dn[h * I + i]) * a[i];
                    out[h] += sum;
                }
                // Backward: the output gradient reaches every slot unweighted.
                std::vector<double> da(I, 0), dxs(H, 0);
                for (int64_t h = 0; h < H; ++h)
                    for (int64_t i = 0; i < I; ++i) da[i] += double(dn[h * I + i]) * go[h];
                double* d = &dgu[slot * 2 * I];
                for (int64_t i = 0; i < I; ++i) {
                    const double s = sigmoid(g[i]);
                    d[i] = da[i] * u[i] * s * (1 + g[i] * (1 - s));
                    d[I + i] = da[i] * silu(g[i]);
                    for (int64_t h = 0; h < H; ++h) dxs[h] += double(gu[i * H + h]) * d[i] + double(gu[(I + i) * H + h]) * d[I + i];
                }
                double grad_score = 0, grad_score_scale = 0;
                for (int64_t h = 0; h < H; ++h) {
                    grad_score += dxs[h] * xt[h];
                    grad_score_scale += std::abs(dxs[h] * xt[h]);
                }
                const double gl = grad_score * sc * (1 - sc);
                grad_logits[t * E + e] = gl;
                grad_logits_scale[t * E + e] = grad_score_scale * sc * (1 - sc);
                for (int64_t h = 0; h < H; ++h) dxt[h] += sc * dxs[h] + gl * wr[e * H + h];
            }
            // Shared expert.
            std::vector<double> g(Is), u(Is), da(Is, 0);
            double* a = &shared_act[t * Is];
            for (int64_t i = 0; i < Is; ++i) {
                double gs = 0, us = 0;
                for (int64_t h = 0; h < H; ++h) {
                    gs += double(sgu[i * H + h]) * xt[h];
                    us += double(sgu[(Is + i) * H + h]) * xt[h];
                }
                g[i] = gs;
                u[i] = us;
                a[i] = silu(gs) * us;
            }
            for (int64_t h = 0; h < H; ++h) {
                double sum = 0;
                for (int64_t i = 0; i < Is; ++i) {
                    sum += double(sd[h * Is + i]) * a[i];
                    da[i] += double(sd[h * Is + i]) * go[h];
                }
                out[h] += sum;
            }
            double* d = &shared_dgu[t * 2 * Is];
            for (int64_t i = 0; i < Is; ++i) {
                const double s = sigmoid(g[i]);
                d[i] = da[i] * u[i] * s * (1 + g[i] * (1 - s));
                d[Is + i] = da[i] * silu(g[i]);
                for (int64_t h = 0; h < H; ++h) dxt[h] += double(sgu[i * H + h]) * d[i] + double(sgu[(Is + i) * H + h]) * d[Is + i];
            }
        }
    });
    // Weight gradients, parallel over their rows.
    std::vector<std::vector<int64_t>> slots_of(E);
    for (int64_t s = 0; s < M; ++s) slots_of[expert[s]].push_back(s);
    r.grad_down.assign(E * H * I, 0);
    parallel_for(E * H, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
            const int64_t e = row / H, h = row % H;
            double* out = &r.grad_down[row * I];
            for (int64_t s : slots_of[e]) {
                const double coef = grad_out[(s / K) * H + h];
                for (int64_t i = 0; i < I; ++i) out[i] += coef * act[s * I + i];
            }
        }
    });
    r.grad_gate_up.assign(E * 2 * I * H, 0);
    parallel_for(E * 2 * I, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
            const int64_t e = row / (2 * I), n = row % (2 * I);
            double* out = &r.grad_gate_up[row * H];
            for (int64_t s : slots_of[e]) {
                const double coef = dgu[s * 2 * I + n] * score[s];
                const float* xt = &x[(s / K) * H];
                for (int64_t h = 0; h < H; ++h) out[h] += coef * xt[h];
            }
        }
    });
    r.grad_shared_down.assign(H * Is, 0);
    parallel_for(H, [&](int64_t begin, int64_t end) {
        for (int64_t h = begin; h < end; ++h)
            for (int64_t t = 0; t < T; ++t) {
                const double coef = grad_out[t * H + h];
                for (int64_t i = 0; i < Is; ++i) r.grad_shared_down[h * Is + i] += coef * shared_act[t * Is + i];
            }
    });
    r.grad_shared_gate_up.assign(2 * Is * H, 0);
    parallel_for(2 * Is, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n)
            for (int64_t t = 0; t < T; ++t) {
                const double coef = shared_dgu[t * 2 * Is + n];
                for (int64_t h = 0; h < H; ++h) r.grad_shared_gate_up[n * H + h] += coef * x[t * H + h];
            }
    });
    r.grad_router.assign(E * H, 0);
    r.grad_router_scale.assign(E * H, 0);
    for (int64_t t = 0; t < T; ++t)
        for (int64_t e = 0; e < E; ++e)
            if (grad_logits[t * E + e] != 0)
                for (int64_t h = 0; h < H; ++h) {
                    r.grad_router[e * H + h] += grad_logits[t * E + e] * x[t * H + h];
                    r.grad_router_scale[e * H + h] += grad_logits_scale[t * E + e] * std::abs(x[t * H + h]);
                }
    return r;
}

struct BlockRun {
    Llama4MoeConfig config;
    int64_t tokens;
    Tensor x, wr, wgu, wd, sgu, sd, grad_out;
    DeviceBuffer d_x, d_wr, d_wgu, d_wd, d_sgu, d_sd, d_out, d_logits, d_grad_out, g_x, g_r, g_gu, g_d, g_sgu, g_sd;

    BlockRun(const Llama4MoeConfig& c, int64_t T) : config(c), tokens(T) {
        const int64_t H = c.hidden, I = c.intermediate, Is = c.shared(), E = c.experts;
        x = random_tensor(T * H, 1.0);
        wr = random_tensor(E * H, 1.0 / std::sqrt(double(H)));
        wgu = random_tensor(E * 2 * I * H, 2.0 / std::sqrt(double(H)));
        wd = random_tensor(E * H * I, 2.0 / std::sqrt(double(I)));
        sgu = random_tensor(2 * Is * H, 2.0 / std::sqrt(double(H)));
        sd = random_tensor(H * Is, 2.0 / std::sqrt(double(Is)));
        grad_out = random_tensor(T * H, 1.0);
        d_x = DeviceBuffer::from(x.bits);
        d_wr = DeviceBuffer::from(wr.bits);
        d_wgu = DeviceBuffer::from(wgu.bits);
        d_wd = DeviceBuffer::from(wd.bits);
        d_sgu = DeviceBuffer::from(sgu.bits);
        d_sd = DeviceBuffer::from(sd.bits);
        d_grad_out = DeviceBuffer::from(grad_out.bits);
        d_out = DeviceBuffer(std::max<size_t>(16, T * H * 2));
        d_logits = DeviceBuffer(std::max<size_t>(16, T * E * 2));
        g_x = DeviceBuffer(std::max<size_t>(16, T * H * 2));
        g_r = DeviceBuffer(E * H * 4);
        g_gu = DeviceBuffer(E * 2 * I * H * 4);
        g_d = DeviceBuffer(E * H * I * 4);
        g_sgu = DeviceBuffer(2 * Is * H * 4);
        g_sd = DeviceBuffer(H * Is * 4);
        for (DeviceBuffer* b : {&d_out, &d_logits, &g_x, &g_r, &g_gu, &g_d, &g_sgu, &g_sd}) b->fill16(kPoison);
    }
    Llama4MoeWeights weights() const { return {d_wr.get(), d_wgu.get(), d_wd.get(), d_sgu.get(), d_sd.get()}; }
    Llama4MoeGradients gradients() const {
        return {g_x.get(), g_r.get(), g_gu.get(), g_d.get(), g_sgu.get(), g_sd.get()};
    }
};

void check_block(const Llama4MoeConfig& c, int64_t T) {
    INFO("H=" << c.hidden << " I=" << c.intermediate << " Is=" << c.shared() << " E=" << c.experts
              << " topk=" << c.topk << " T=" << T);
    BlockRun run(c, T);
    Llama4TextMoe block(c, T);
    block.forward(run.d_x.get(), run.weights(), run.d_out.get(), run.d_logits.get(), T, nullptr);
    block.backward(run.d_grad_out.get(), run.weights(), run.gradients(), nullptr);
    synchronize();
    block.check_routing_errors(nullptr);

    const auto logits = bf16_floats(run.d_logits.to_host<uint16_t>());
    const Reference ref = reference(c, T, run.x.values, run.wr.values, run.wgu.values, run.wd.values,
                                    run.sgu.values, run.sd.values, logits, run.grad_out.values);
    CHECK(relative_error(logits, ref.logits) < 2e-2);
    CHECK(relative_error(bf16_floats(run.d_out.to_host<uint16_t>()), ref.output) < 2e-2);
    CHECK(relative_error(bf16_floats(run.g_x.to_host<uint16_t>()), ref.grad_hidden) < 2e-2);
    const bool fp32 = c.fp32_weight_gradients;
    auto gradient = [&](const DeviceBuffer& buffer, const std::vector<double>& expected) {
        return relative_error(weight_gradient(buffer, expected.size(), fp32), expected);
    };
    const std::vector<float> grad_router = weight_gradient(run.g_r, ref.grad_router.size(), fp32);
    CHECK(relative_error(grad_router, ref.grad_router, ref.grad_router_scale) < 2e-2);
    CHECK(gradient(run.g_gu, ref.grad_gate_up) < 2e-2);
    CHECK(gradient(run.g_d, ref.grad_down) < 2e-2);
    CHECK(gradient(run.g_sgu, ref.grad_shared_gate_up) < 2e-2);
    CHECK(gradient(run.g_sd, ref.grad_shared_down) < 2e-2);
}

}  // namespace

TEST_CASE("Llama4TextMoe forward and backward match float64 at tiny sizes", "[gpu]") {
    check_block(Llama4MoeConfig{64, 32, 0, 8, 1}, 40);
    check_block(Llama4MoeConfig{64, 32, 64, 8, 2}, 40);   // top-2, shared intermediate != I
    check_block(Llama4MoeConfig{128, 64, 0, 16, 1}, 1);   // T = 1
}

TEST_CASE("Llama4TextMoe at the llama4-scout shape, 128 tokens", "[gpu]") {
    check_block(Llama4MoeConfig{5120, 8192, 8192, 16, 1}, 128);
}

TEST_CASE("Llama4TextMoe writes bf16 weight gradients without fp32_weight_gradients", "[gpu]") {
    Llama4MoeConfig c{64, 32, 64, 8, 2};
    c.fp32_weight_gradients = false;
    check_block(c, 40);
    c = Llama4MoeConfig{1024, 512, 0, 16, 1};
    c.fp32_weight_gradients = false;
    check_block(c, 600);
}

TEST_CASE("Llama4TextMoe forward and backward captured in a CUDA graph replay with new inputs", "[gpu]") {
    const Llama4MoeConfig c{128, 64, 96, 16, 2};
    const int64_t T = 48;
    BlockRun run(c, T);
    Llama4TextMoe block(c, T);
    const Driver& cu = driver();
    CUstream stream = nullptr;
    check_cuda(cu.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "stream");
    // Warm up once eagerly so every kernel is compiled and loaded before capture.
    auto step = [&] {
        block.forward(run.d_x.get(), run.weights(), run.d_out.get(), run.d_logits.get(), T, stream);
        block.backward(run.d_grad_out.get(), run.weights(), run.gradients(), stream);
    };
    step();
    check_cuda(cu.cuStreamSynchronize(stream), "sync");

    CUgraph graph = nullptr;
    CUgraphExec exec = nullptr;
    check_cuda(cu.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_GLOBAL), "begin capture");
    step();
    check_cuda(cu.cuStreamEndCapture(stream, &graph), "end capture");
    check_cuda(cu.cuGraphInstantiate(&exec, graph, 0), "instantiate");

    for (int round = 0; round < 2; ++round) {
        // New hidden states and output gradients in the same buffers, then replay; compare with eager.
        const Tensor x = random_tensor(T * c.hidden, 1.0), go = random_tensor(T * c.hidden, 1.0);
        check_cuda(cu.cuMemcpyHtoD(run.d_x.get(), x.bits.data(), x.bits.size() * 2), "upload");
        check_cuda(cu.cuMemcpyHtoD(run.d_grad_out.get(), go.bits.data(), go.bits.size() * 2), "upload");
        run.d_out.fill16(kPoison);
        run.g_x.fill16(kPoison);
        check_cuda(cu.cuGraphLaunch(exec, stream), "graph launch");
        check_cuda(cu.cuStreamSynchronize(stream), "sync");
        const auto replayed = run.d_out.to_host<uint16_t>();
        const auto replayed_gx = run.g_x.to_host<uint16_t>();
        const auto replayed_gu = run.g_gu.to_host<float>();
        step();
        check_cuda(cu.cuStreamSynchronize(stream), "sync");
        const auto eager = run.d_out.to_host<uint16_t>();
        CHECK(replayed == eager);
        CHECK(replayed_gx == run.g_x.to_host<uint16_t>());
        CHECK(replayed_gu == run.g_gu.to_host<float>());
        CHECK(std::none_of(eager.begin(), eager.end(), [](uint16_t b) { return b == kPoison; }));
    }
    cu.cuGraphExecDestroy(exec);
    cu.cuGraphDestroy(graph);
    cu.cuStreamDestroy(stream);
}

TEST_CASE("Llama4TextMoe built for inference: the training block's output in a smaller workspace, no backward",
          "[gpu]") {
    const auto c = Llama4MoeConfig{256, 128, 64, 16, 2};
    BlockRun run(c, 96);
    check_inference_block<Llama4TextMoe>(c, run, 96);
}

TEST_CASE("Llama4TextMoe refuses a bad pointer before it launches anything", "[gpu]") {
    const auto c = Llama4MoeConfig{64, 32, 0, 8, 1};
    BlockRun run(c, 40);
    Llama4TextMoe block(c, 40);
    check_refused_calls_launch_nothing(block, run, 40);
}

// Qwen3MoeBlock forward and backward against an independent float64 host implementation of the
// same math (Hugging Face Qwen3MoeSparseMoeBlock), plus CUDA-graph capture and replay.
#include "tests/catch.hpp"
#include "tests/support/block_checks.hpp"
#include "tests/support/device.hpp"
#include "tests/support/half.hpp"
#include "tests/support/moe_reference.hpp"
#include "tests/support/reference.hpp"

#include <moejit/error.hpp>
#include <moejit/qwen3_moe.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <mutex>
#include <random>

using namespace moejit;
using namespace moejit::testing;

namespace {

using moe::rng;

// Uniform in [-scale, scale), rounded to bf16; returns the bits and the rounded values.
struct Tensor {
    std::vector<uint16_t> bits;
    std::vector<double> values;
};
Tensor random_tensor(size_t count, double scale) {
    std::uniform_real_distribution<double> uniform(-scale, scale);
    Tensor t;
    for (size_t i = 0; i < count; ++i) {
        t.bits.push_back(float_to_bf16(float(uniform(rng()))));
        t.values.push_back(bf16_to_float(t.bits.back()));
    }
    return t;
}

std::vector<float> to_floats(const std::vector<uint16_t>& bits) {
    std::vector<float> out(bits.size());
    for (size_t i = 0; i < bits.size(); ++i) out[i] = bf16_to_float(bits[i]);
    return out;
}

double silu(double x) { return x / (1 + std::exp(-x)); }
double sigmoid(double x) { return 1 / (1 + std::exp(-x)); }

struct Reference {
    std::vector<double> logits, output, grad_hidden, grad_router, grad_gate_up, grad_down;
};

// The block in float64. Routing decisions are taken from `device_logits` (the bf16 logits the
// block computed), because top-k is discontinuous: the reference logits are compared separately.
Reference reference(const Qwen3MoeConfig& c, int64_t T, const std::vector<double>& x, const std::vector<double>& wr,
                    const std::vector<double>& wgu, const std::vector<double>& wd,
                    const std::vector<double>& device_logits, const std::vector<double>& grad_out) {
    const int64_t H = c.hidden, I = c.moe_intermediate, E = c.experts, K = c.topk;
    Reference r;
    r.logits.assign(T * E, 0);
    r.output.assign(T * H, 0);
    r.grad_hidden.assign(T * H, 0);
    r.grad_router.assign(E * H, 0);
    r.grad_gate_up.assign(E * 2 * I * H, 0);
    r.grad_down.assign(E * H * I, 0);
    std::vector<std::vector<double>> grad_logits(T, std::vector<double>(E, 0));
    std::mutex weight_mutex;
    parallel_for(T, [&](int64_t begin, int64_t end) {
        std::vector<double> local_gu(E * 2 * I * H, 0), local_d(E * H * I, 0);
        for (int64_t t = begin; t < end; ++t) {
            const double* xt = &x[t * H];
            for (int64_t e = 0; e < E; ++e) {
                double sum = 0;
                for (int64_t h = 0; h < H; ++h) sum += xt[h] * wr[e * H + h];
                r.logits[t * E + e] = sum;
            }
            // softmax over E (of the device logits), top-k with ties to the lower id, renormalize.
            std::vector<double> p(E);
            double max_logit = -INFINITY, total = 0;
            for (int64_t e = 0; e < E; ++e) max_logit = std::max(max_logit, device_logits[t * E + e]);
            for (int64_t e = 0; e < E; ++e) total += p[e] = std::exp(device_logits[t * E + e] - max_logit);
            for (auto& v : p) v /= total;
            std::vector<int> order(E);
            std::iota(order.begin(), order.end(), 0);
            std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
            double chosen_sum = 0;
            for (int j = 0; j < K; ++j) chosen_sum += p[order[j]];
            std::vector<double> grad_w(K);
            std::vector<double> dxt(H, 0);
            for (int j = 0; j < K; ++j) {
                const int e = order[j];
                const double w = c.norm_topk_prob ? p[e] / chosen_sum : p[e];
                const double* gu = &wgu[int64_t(e) * 2 * I * H];
                const double* dn = &wd[int64_t(e) * H * I];
                std::vector<double> g(I), u(I), a(I), y(H, 0);
                for (int64_t i = 0; i < I; ++i) {
                    double gs = 0, us = 0;
                    for (int64_t h = 0; h < H; ++h) {
                        gs += gu[i * H + h] * xt[h];
                        us += gu[(I + i) * H + h] * xt[h];
                    }
                    g[i] = gs;
                    u[i] = us;
                    a[i] = silu(gs) * us;
                }
                for (int64_t h = 0; h < H; ++h) {
                    double sum = 0;
                    for (int64_t i = 0; i < I; ++i) sum += dn[h * I + i] * a[i];
                    y[h] = sum;
                    r.output[t * H + h] += w * sum;
                }
                // Backward through this expert.
                const double* go = &grad_out[t * H];
                double gw = 0;
                std::vector<double> dy(H), da(I, 0);
                for (int64_t h = 0; h < H; ++h) {
                    gw += go[h] * y[h];
                    dy[h] = w * go[h];
                }
                grad_w[j] = gw;
                for (int64_t h = 0; h < H; ++h)
                    for (int64_t i = 0; i < I; ++i) {
                        da[i] += dn[h * I + i] * dy[h];
                        local_d[(int64_t(e) * H + h) * I + i] += dy[h] * a[i];
                    }
                for (int64_t i = 0; i < I; ++i) {
                    const double s = sigmoid(g[i]);
                    const double dg = da[i] * u[i] * s * (1 + g[i] * (1 - s)), du = da[i] * silu(g[i]);
                    for (int64_t h = 0; h < H; ++h) {
                        local_gu[(int64_t(e) * 2 * I + i) * H + h] += dg * xt[h];
                        local_gu[(int64_t(e) * 2 * I + I + i) * H + h] += du * xt[h];
                        dxt[h] += gu[i * H + h] * dg + gu[(I + i) * H + h] * du;
                    }
                }
            }
            // Router: d w -> d p (through the renormalization) -> d logits (softmax backward).
            std::vector<double> grad_p(E, 0);
            double weighted = 0;
            for (int j = 0; j < K; ++j) weighted += grad_w[j] * (c.norm_topk_prob ? p[order[j]] / chosen_sum : 0);
            for (int j = 0; j < K; ++j)
                grad_p[order[j]] = c.norm_topk_prob ? (grad_w[j] - weighted) / chosen_sum : grad_w[j];
            double dot = 0;
            for (int64_t e = 0; e < E; ++e) dot += p[e] * grad_p[e];
            for (int64_t e = 0; e < E; ++e) {
                const double gl = p[e] * (grad_p[e] - dot);
                grad_logits[t][e] = gl;
                for (int64_t h = 0; h < H; ++h) dxt[h] += gl * wr[e * H + h];
            }
            for (int64_t h = 0; h < H; ++h) r.grad_hidden[t * H + h] = dxt[h];
        }
        std::lock_guard<std::mutex> lock(weight_mutex);
        for (size_t i = 0; i < local_gu.size(); ++i) r.grad_gate_up[i] += local_gu[i];
        for (size_t i = 0; i < local_d.size(); ++i) r.grad_down[i] += local_d[i];
    });
    for (int64_t t = 0; t < T; ++t)
        for (int64_t e = 0; e < E; ++e)
            for (int64_t h = 0; h < H; ++h) r.grad_router[e * H + h] += grad_logits[t][e] * x[t * H + h];
    return r;
}

struct BlockRun {
    Qwen3MoeConfig config;
    int64_t tokens;
    Tensor x, wr, wgu, wd, grad_out;
    DeviceBuffer d_x, d_wr, d_wgu, d_wd, d_out, d_logits, d_grad_out, g_x, g_r, g_gu, g_d;

    BlockRun(const Qwen3MoeConfig& c, int64_t T) : config(c), tokens(T) {
        const int64_t H = c.hidden, I = c.moe_intermediate, E = c.experts;
        x = random_tensor(T * H, 1.0);
        wr = random_tensor(E * H, 1.0 / std::sqrt(double(H)));
        wgu = random_tensor(E * 2 * I * H, 2.0 / std::sqrt(double(H)));
        wd = random_tensor(E * H * I, 2.0 / std::sqrt(double(I)));
        grad_out = random_tensor(T * H, 1.0);
        d_x = DeviceBuffer::from(x.bits);
        d_wr = DeviceBuffer::from(wr.bits);
        d_wgu = DeviceBuffer::from(wgu.bits);
        d_wd = DeviceBuffer::from(wd.bits);
        d_grad_out = DeviceBuffer::from(grad_out.bits);
        d_out = DeviceBuffer(std::max<size_t>(16, T * H * 2));
        d_logits = DeviceBuffer(std::max<size_t>(16, T * E * 2));
        g_x = DeviceBuffer(std::max<size_t>(16, T * H * 2));
        g_r = DeviceBuffer(E * H * 4);
        g_gu = DeviceBuffer(E * 2 * I * H * 4);
        g_d = DeviceBuffer(E * H * I * 4);
        for (DeviceBuffer* b : {&d_out, &d_logits, &g_x, &g_r, &g_gu, &g_d}) b->fill16(kPoison);
    }
    Qwen3MoeWeights weights() const { return {d_wr.get(), d_wgu.get(), d_wd.get()}; }
    Qwen3MoeGradients gradients() const { return {g_x.get(), g_r.get(), g_gu.get(), g_d.get()}; }
};

void check_block(const Qwen3MoeConfig& c, int64_t T) {
    INFO("H=" << c.hidden << " I=" << c.moe_intermediate << " E=" << c.experts << " topk=" << c.topk << " T=" << T);
    BlockRun run(c, T);
    Qwen3MoeBlock block(c, T);
    block.forward(run.d_x.get(), run.weights(), run.d_out.get(), run.d_logits.get(), T, nullptr);
    block.backward(run.d_grad_out.get(), run.weights(), run.gradients(), nullptr);
    synchronize();
    block.check_routing_errors(nullptr);

    const auto logits = to_floats(run.d_logits.to_host<uint16_t>());
    const std::vector<double> device_logits(logits.begin(), logits.end());
    const Reference ref = reference(c, T, run.x.values, run.wr.values, run.wgu.values, run.wd.values, device_logits,
                                    run.grad_out.values);
    CHECK(relative_error(logits, ref.logits) < 2e-2);
    CHECK(relative_error(to_floats(run.d_out.to_host<uint16_t>()), ref.output) < 2e-2);
    CHECK(relative_error(to_floats(run.g_x.to_host<uint16_t>()), ref.grad_hidden) < 2e-2);
    const bool fp32 = c.fp32_weight_gradients;
    CHECK(relative_error(weight_gradient(run.g_r, ref.grad_router.size(), fp32), ref.grad_router) < 2e-2);
    CHECK(relative_error(weight_gradient(run.g_gu, ref.grad_gate_up.size(), fp32), ref.grad_gate_up) < 2e-2);
    CHECK(relative_error(weight_gradient(run.g_d, ref.grad_down.size(), fp32), ref.grad_down) < 2e-2);
}

Qwen3MoeConfig with_low_precision_weight_gradients(Qwen3MoeConfig c) {
    c.fp32_weight_gradients = false;
    return c;
}

}  // namespace

TEST_CASE("Qwen3MoeBlock forward and backward match float64 at tiny sizes", "[gpu]") {
    check_block(Qwen3MoeConfig{64, 32, 8, 2, true}, 40);
    check_block(Qwen3MoeConfig{64, 32, 8, 2, false}, 40);
    check_block(Qwen3MoeConfig{128, 64, 16, 4, true}, 1);  // T = 1
    check_block(Qwen3MoeConfig{64, 32, 8, 1, true}, 33);   // top-1
}

TEST_CASE("Qwen3MoeBlock at the qwen3-30b-a3b shape, 128 tokens", "[gpu]") {
    check_block(Qwen3MoeConfig{2048, 768, 128, 8, true}, 128);
}

TEST_CASE("Qwen3MoeBlock writes bf16 weight gradients without fp32_weight_gradients", "[gpu]") {
    check_block(with_low_precision_weight_gradients(Qwen3MoeConfig{64, 32, 8, 2, true}), 40);
    // 64 rows an expert, so each bf16 output sums many products (the reference's per-thread copies of
    // the weight gradients keep the qwen3-30b-a3b shape to 128 tokens above).
    check_block(with_low_precision_weight_gradients(Qwen3MoeConfig{1024, 384, 32, 4, true}), 512);
}

TEST_CASE("Qwen3MoeBlock routes every token to one expert", "[gpu]") {
    // A router whose expert 5 row matches a component every token shares: expert 5 always wins.
    const Qwen3MoeConfig c{64, 32, 8, 1, true};
    const int64_t T = 24;
    BlockRun run(c, T);
    std::vector<uint16_t> x_bits(run.x.bits), wr_bits(c.experts * c.hidden, float_to_bf16(0.0f));
    for (int64_t t = 0; t < T; ++t) x_bits[t * c.hidden] = float_to_bf16(4.0f);
    wr_bits[5 * c.hidden] = float_to_bf16(4.0f);
    run.d_x = DeviceBuffer::from(x_bits);
    run.d_wr = DeviceBuffer::from(wr_bits);
    Qwen3MoeBlock block(c, T);
    block.forward(run.d_x.get(), run.weights(), run.d_out.get(), run.d_logits.get(), T, nullptr);
    synchronize();
    // Top-1 with renormalization: weight 1, so the output is expert 5's MLP of each token.
    const auto out = to_floats(run.d_out.to_host<uint16_t>());
    std::vector<double> ref(T * c.hidden, 0);
    const int64_t H = c.hidden, I = c.moe_intermediate;
    for (int64_t t = 0; t < T; ++t) {
        std::vector<double> a(I);
        for (int64_t i = 0; i < I; ++i) {
            double g = 0, u = 0;
            for (int64_t h = 0; h < H; ++h) {
                const double xv = bf16_to_float(x_bits[t * H + h]);
                g += run.wgu.values[(5 * 2 * I + i) * H + h] * xv;
                u += run.wgu.values[(5 * 2 * I + I + i) * H + h] * xv;
            }
            a[i] = silu(g) * u;
        }
        for (int64_t h = 0; h < H; ++h)
            for (int64_t i = 0; i < I; ++i) ref[t * H + h] += run.wd.values[(5 * H + h) * I + i] * a[i];
    }
    CHECK(relative_error(out, ref) < 2e-2);
}

TEST_CASE("Qwen3MoeBlock forward captured in a CUDA graph replays with new inputs", "[gpu]") {
    const Qwen3MoeConfig c{128, 64, 16, 4, true};
    const int64_t T = 48;
    BlockRun run(c, T);
    Qwen3MoeBlock block(c, T);
    const Driver& cu = driver();
    CUstream stream = nullptr;
    check_cuda(cu.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "stream");
    // Warm up once eagerly so every kernel is compiled and loaded before capture.
    block.forward(run.d_x.get(), run.weights(), run.d_out.get(), run.d_logits.get(), T, stream);
    check_cuda(cu.cuStreamSynchronize(stream), "sync");

    CUgraph graph = nullptr;
    CUgraphExec exec = nullptr;
    check_cuda(cu.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_GLOBAL), "begin capture");
    block.forward(run.d_x.get(), run.weights(), run.d_out.get(), run.d_logits.get(), T, stream);
    check_cuda(cu.cuStreamEndCapture(stream, &graph), "end capture");
    check_cuda(cu.cuGraphInstantiate(&exec, graph, 0), "instantiate");

    for (int round = 0; round < 2; ++round) {
        // New hidden states in the same buffer, then replay; compare with an eager forward.
        const Tensor x = random_tensor(T * c.hidden, 1.0);
        check_cuda(cu.cuMemcpyHtoD(run.d_x.get(), x.bits.data(), x.bits.size() * 2), "upload");
        run.d_out.fill16(kPoison);
        check_cuda(cu.cuGraphLaunch(exec, stream), "graph launch");
        check_cuda(cu.cuStreamSynchronize(stream), "sync");
        const auto replayed = run.d_out.to_host<uint16_t>();
        block.forward(run.d_x.get(), run.weights(), run.d_out.get(), run.d_logits.get(), T, stream);
        check_cuda(cu.cuStreamSynchronize(stream), "sync");
        const auto eager = run.d_out.to_host<uint16_t>();
        CHECK(replayed == eager);
        CHECK(std::none_of(eager.begin(), eager.end(), [](uint16_t b) { return b == kPoison; }));
    }
    cu.cuGraphExecDestroy(exec);
    cu.cuGraphDestroy(graph);
    cu.cuStreamDestroy(stream);
}

TEST_CASE("Qwen3MoeBlock built for inference: the training block's output in a smaller workspace, no backward",
          "[gpu]") {
    const auto c = Qwen3MoeConfig{256, 128, 16, 4, true};
    BlockRun run(c, 96);
    check_inference_block<Qwen3MoeBlock>(c, run, 96);
}

TEST_CASE("Qwen3MoeBlock refuses a bad pointer before it launches anything", "[gpu]") {
    const auto c = Qwen3MoeConfig{64, 32, 8, 2, true};
    BlockRun run(c, 40);
    Qwen3MoeBlock block(c, 40);
    check_refused_calls_launch_nothing(block, run, 40);
}

TEST_CASE("Qwen3MoeBlock called back to back on one stream: each kernel waits for the kernels before it", "[gpu]") {
    // On sm_90 every kernel may start before the one before it has completed (templates/common/
    // dependent_launch.cuh). The block reuses one workspace, so a kernel that read its inputs too
    // early would see the other call's routing, activations or gradients. Calls alternate between
    // two inputs with no synchronization between them; each must reproduce its input's result,
    // taken alone, bit for bit.
    Qwen3MoeConfig c{1024, 384, 32, 4, true};
    c.fp32_weight_gradients = false;
    const int64_t T = 512, H = c.hidden, I = c.moe_intermediate, E = c.experts;
    BlockRun run(c, T);
    const DeviceBuffer x_other = DeviceBuffer::from(random_tensor(T * H, 1.0).bits);
    const CUdeviceptr inputs[2] = {run.d_x.get(), x_other.get()};
    Qwen3MoeBlock block(c, T);
    const Driver& cu = driver();
    CUstream stream = nullptr;
    check_cuda(cu.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "stream");

    const auto call = [&](int input, CUdeviceptr output, CUdeviceptr grad_hidden) {
        block.forward(inputs[input], run.weights(), output, run.d_logits.get(), T, stream);
        Qwen3MoeGradients gradients = run.gradients();
        gradients.hidden = grad_hidden;
        block.backward(run.d_grad_out.get(), run.weights(), gradients, stream);
    };
    std::vector<uint16_t> alone_output[2], alone_grad_hidden[2], alone_grad_down[2];
    for (int input = 0; input < 2; ++input) {
        call(input, run.d_out.get(), run.g_x.get());
        check_cuda(cu.cuStreamSynchronize(stream), "sync");
        alone_output[input] = run.d_out.to_host<uint16_t>();
        alone_grad_hidden[input] = run.g_x.to_host<uint16_t>();
        alone_grad_down[input] = run.g_d.to_host<uint16_t>();
        alone_grad_down[input].resize(size_t(E * H * I));
    }
    REQUIRE(alone_output[0] != alone_output[1]);

    constexpr int kCalls = 12;
    std::vector<DeviceBuffer> outputs, grad_hiddens;
    for (int i = 0; i < kCalls; ++i) {
        outputs.emplace_back(size_t(T * H * 2));
        grad_hiddens.emplace_back(size_t(T * H * 2));
        outputs.back().fill16(kPoison);
        grad_hiddens.back().fill16(kPoison);
    }
    for (int i = 0; i < kCalls; ++i) call(i % 2, outputs[i].get(), grad_hiddens[i].get());
    check_cuda(cu.cuStreamSynchronize(stream), "sync");
    for (int i = 0; i < kCalls; ++i) {
        INFO("call " << i << " of input " << i % 2);
        CHECK(outputs[i].to_host<uint16_t>() == alone_output[i % 2]);
        CHECK(grad_hiddens[i].to_host<uint16_t>() == alone_grad_hidden[i % 2]);
    }
    std::vector<uint16_t> last_grad_down = run.g_d.to_host<uint16_t>();
    last_grad_down.resize(size_t(E * H * I));
    CHECK(last_grad_down == alone_grad_down[(kCalls - 1) % 2]);
    cu.cuStreamDestroy(stream);
}

// Routing ops on the GPU (include/moejit/routing.hpp) against float64 or exact host references, on
// fresh random data with every output poisoned first: route_topk, routing_indices (skew, one expert,
// T = 1, out-of-range ids), permute / unpermute, the weighted combine, router_backward against
// central finite differences, and the chain captured in a CUDA graph.
#include "tests/catch.hpp"
#include "tests/support/device.hpp"
#include "tests/support/half.hpp"
#include "tests/support/reference.hpp"

#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>
#include <moejit/routing.hpp>

#include <dlfcn.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <functional>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

using namespace moejit;
using namespace moejit::testing;

namespace {

std::mt19937_64& rng() {
    static std::mt19937_64 generator(std::random_device{}());
    return generator;
}

// The first index where two vectors differ, or -1 (Catch would print whole vectors).
template <class T>
int64_t first_mismatch(const std::vector<T>& a, const std::vector<T>& b) {
    if (a.size() != b.size()) return int64_t(std::min(a.size(), b.size()));
    for (size_t i = 0; i < a.size(); ++i)
        if (!(a[i] == b[i])) return int64_t(i);
    return -1;
}

std::string router_text(const RouterConfig& r) {
    return "experts " + std::to_string(r.experts) + " topk " + std::to_string(r.topk) +
           (r.scoring == Scoring::sigmoid ? " sigmoid" : " softmax") + (r.score_before_topk ? " before" : " after") +
           (r.renormalize ? " renormalized" : "");
}

// Logits [T, E]: within a token, distinct multiples of 1/64 in [-4, 4] (8 significant bits: exact in
// bf16 and fp16), or of 1/256 when E > 511 (fp16 only). Neighbours differ by at least 1/256, so
// fp32 softmax or sigmoid cannot make two of them tie: the top-k is unambiguous.
std::vector<uint16_t> distinct_logits(DType dtype, int64_t tokens, int experts) {
    const int steps = experts <= 511 ? 64 : 256;
    REQUIRE((experts <= 511 || dtype == DType::fp16));
    REQUIRE(experts <= 8 * steps - 1);
    std::vector<int> grid(8 * steps - 1);
    std::iota(grid.begin(), grid.end(), -(4 * steps - 1));
    std::vector<uint16_t> logits(size_t(tokens) * experts);
    for (int64_t t = 0; t < tokens; ++t) {
        std::shuffle(grid.begin(), grid.end(), rng());
        for (int e = 0; e < experts; ++e) {
            const float value = float(grid[e]) / float(steps);
            logits[t * experts + e] = to_half(dtype, value);
            REQUIRE(from_half(dtype, logits[t * experts + e]) == value);
        }
    }
    return logits;
}

std::vector<double> widen(DType dtype, const std::vector<uint16_t>& halves) {
    std::vector<double> out(halves.size());
    for (size_t i = 0; i < halves.size(); ++i) {
        const float value = from_half(dtype, halves[i]);
        out[i] = std::isnan(value) ? -INFINITY : value;  // NaN logits rank lowest
    }
    return out;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

// The routing weights of a token's chosen ids, in float64. Ids outside [0, E) take no part (weight 0).
std::vector<double> host_weights(const RouterConfig& r, const double* logits, const int* ids) {
    const int E = r.experts, K = r.topk;
    auto valid = [&](int j) { return ids[j] >= 0 && ids[j] < E; };
    std::vector<double> w(K, 0.0);
    if (r.scoring == Scoring::sigmoid) {
        for (int j = 0; j < K; ++j)
            if (valid(j)) w[j] = sigmoid(logits[ids[j]]);
    } else if (r.score_before_topk) {
        const double max = *std::max_element(logits, logits + E);
        double sum = 0;
        for (int e = 0; e < E; ++e) sum += std::exp(logits[e] - max);
        for (int j = 0; j < K; ++j)
            if (valid(j)) w[j] = std::exp(logits[ids[j]] - max) / sum;
    } else {
        double max = -INFINITY, sum = 0;
        for (int j = 0; j < K; ++j)
            if (valid(j)) max = std::max(max, logits[ids[j]]);
        for (int j = 0; j < K; ++j)
            if (valid(j)) sum += (w[j] = std::exp(logits[ids[j]] - max));
        for (double& value : w) value /= sum;
    }
    if (r.renormalize) {
        const double sum = std::accumulate(w.begin(), w.end(), 0.0);
        for (double& value : w) value /= sum;
    }
    return w;
}

struct HostRoute {
    std::vector<int> ids;
    std::vector<double> weights;
};

// Top-k in float64: select on the scores (before) or the logits (after); ties to the lower id.
HostRoute host_route(const RouterConfig& r, const std::vector<double>& logits, int64_t tokens) {
    const int E = r.experts, K = r.topk;
    HostRoute route;
    route.ids.resize(size_t(tokens) * K);
    route.weights.resize(size_t(tokens) * K);
    std::vector<double> key(E);
    std::vector<int> order(E);
    for (int64_t t = 0; t < tokens; ++t) {
        const double* row = logits.data() + t * E;
        if (!r.score_before_topk) {
            std::copy(row, row + E, key.begin());
        } else if (r.scoring == Scoring::sigmoid) {
            for (int e = 0; e < E; ++e) key[e] = sigmoid(row[e]);
        } else {
            const double max = *std::max_element(row, row + E);
            double sum = 0;
            for (int e = 0; e < E; ++e) sum += (key[e] = std::exp(row[e] - max));
            for (double& value : key) value /= sum;
        }
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return key[a] > key[b]; });
        std::copy(order.begin(), order.begin() + K, route.ids.begin() + t * K);
        const std::vector<double> w = host_weights(r, row, route.ids.data() + t * K);
        std::copy(w.begin(), w.end(), route.weights.begin() + t * K);
    }
    return route;
}

void check_route(const RouterConfig& r, DType dtype, int64_t tokens, bool with_nan = false) {
    INFO(router_text(r) << " " << to_string(dtype) << " tokens " << tokens);
    std::vector<uint16_t> logits = distinct_logits(dtype, tokens, r.experts);
    if (with_nan)  // one NaN logit per token; topk < E keeps it out of the choice
        for (int64_t t = 0; t < tokens; ++t) logits[t * r.experts + rng()() % r.experts] = to_half(dtype, NAN);
    const HostRoute expected = host_route(r, widen(dtype, logits), tokens);

    DeviceBuffer d_logits = DeviceBuffer::from(logits);
    DeviceBuffer ids(size_t(tokens) * r.topk * 4), weights(size_t(tokens) * r.topk * 4);
    ids.fill16(kPoison);
    weights.fill16(kPoison);
    route_topk(r, dtype, d_logits.get(), ids.get(), weights.get(), tokens, nullptr);
    synchronize();
    const std::vector<int> got_ids = ids.to_host<int>();
    const std::vector<float> got_weights = weights.to_host<float>();
    const int64_t mismatch = first_mismatch(got_ids, expected.ids);
    INFO("first id mismatch at " << mismatch << " (token " << mismatch / r.topk << ")");
    REQUIRE(mismatch == -1);
    double worst = 0;
    for (size_t i = 0; i < got_weights.size(); ++i)
        worst = std::max(worst, std::isfinite(got_weights[i]) ? std::abs(got_weights[i] - expected.weights[i]) : INFINITY);
    CHECK(worst <= 1e-5);
}

// ---- routing indices ----

struct HostIndices {
    std::vector<int> m_sizes, gather, scatter;
    int dropped = 0;
};

HostIndices host_indices(int experts, const std::vector<int>& ids) {
    const int64_t rows = int64_t(ids.size());
    HostIndices h;
    h.m_sizes.assign(experts, 0);
    h.gather.assign(rows, -1);
    h.scatter.assign(rows, -1);
    for (int id : ids) {
        if (id >= 0 && id < experts) ++h.m_sizes[id];
        else ++h.dropped;
    }
    std::vector<int> next(experts, 0);
    for (int e = 1; e < experts; ++e) next[e] = next[e - 1] + h.m_sizes[e - 1];
    for (int64_t s = 0; s < rows; ++s) {
        const int id = ids[s];
        if (id < 0 || id >= experts) continue;
        const int r = next[id]++;
        h.gather[r] = int(s);
        h.scatter[s] = r;
    }
    return h;
}

struct DeviceIndices {
    DeviceBuffer m_sizes, gather, scatter, errors, workspace;
    size_t workspace_bytes = 0;
};

// Runs routing_indices on poisoned outputs, with a zeroed error counter and a garbage workspace.
DeviceIndices run_indices(int experts, int topk, const DeviceBuffer& ids, int64_t tokens, CUstream stream = nullptr) {
    const int64_t rows = tokens * topk;
    DeviceIndices d;
    d.m_sizes = DeviceBuffer(size_t(experts) * 4);
    d.gather = DeviceBuffer(std::max<int64_t>(rows, 1) * 4);
    d.scatter = DeviceBuffer(std::max<int64_t>(rows, 1) * 4);
    d.errors = DeviceBuffer::from(std::vector<int>{0});
    d.workspace_bytes = routing_workspace_bytes(experts, tokens, topk);
    d.workspace = DeviceBuffer(std::max<size_t>(d.workspace_bytes, 4));
    for (DeviceBuffer* buffer : {&d.m_sizes, &d.gather, &d.scatter, &d.workspace}) buffer->fill16(0x7777);
    routing_indices(experts, topk, ids.get(), tokens, d.m_sizes.get(), d.gather.get(), d.scatter.get(), d.errors.get(),
                    d.workspace.get(), d.workspace_bytes, stream);
    return d;
}

void check_indices(int experts, int topk, const std::vector<int>& ids) {
    const int64_t tokens = int64_t(ids.size()) / topk;
    INFO("experts " << experts << " topk " << topk << " tokens " << tokens);
    const HostIndices expected = host_indices(experts, ids);
    DeviceBuffer d_ids = DeviceBuffer::from(ids);
    DeviceIndices d = run_indices(experts, topk, d_ids, tokens);
    synchronize();
    const int64_t m_mismatch = first_mismatch(d.m_sizes.to_host<int>(), expected.m_sizes);
    INFO("first m_sizes mismatch at " << m_mismatch);
    CHECK(m_mismatch == -1);
    std::vector<int> gather = d.gather.to_host<int>(), scatter = d.scatter.to_host<int>();
    gather.resize(ids.size());
    scatter.resize(ids.size());
    const int64_t g_mismatch = first_mismatch(gather, expected.gather);
    INFO("first gather_idx mismatch at " << g_mismatch);
    CHECK(g_mismatch == -1);
    const int64_t s_mismatch = first_mismatch(scatter, expected.scatter);
    INFO("first scatter_idx mismatch at " << s_mismatch);
    CHECK(s_mismatch == -1);
    CHECK(d.errors.to_host<int>()[0] == expected.dropped);
}

std::vector<int> uniform_ids(int experts, int64_t rows) {
    std::uniform_int_distribution<int> expert(0, experts - 1);
    std::vector<int> ids(rows);
    for (int& id : ids) id = expert(rng());
    return ids;
}

// What a router produces: topk distinct experts per token.
std::vector<int> distinct_ids(int experts, int topk, int64_t tokens) {
    std::vector<int> all(experts), ids;
    std::iota(all.begin(), all.end(), 0);
    ids.reserve(size_t(tokens) * topk);
    for (int64_t t = 0; t < tokens; ++t) {
        std::shuffle(all.begin(), all.end(), rng());
        ids.insert(ids.end(), all.begin(), all.begin() + topk);
    }
    return ids;
}

// Replaces about `fraction` of the ids by values outside [0, E); returns how many.
int corrupt(std::vector<int>& ids, int experts, double fraction) {
    const int bad[] = {-1, experts, experts + 7, -experts, INT_MIN, INT_MAX};
    std::uniform_real_distribution<double> uniform(0, 1);
    int count = 0;
    for (int& id : ids)
        if (uniform(rng()) < fraction) {
            id = bad[rng()() % 6];
            ++count;
        }
    return count;
}

std::vector<uint16_t> random_halves(DType dtype, size_t count) {
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    std::vector<uint16_t> values(count);
    for (auto& value : values) value = to_half(dtype, uniform(rng()));
    return values;
}

// ---- router backward ----

// d/dlogits of L = sum_j dw_j * w_j(logits) in float64 (the selection held fixed), one token.
std::vector<double> analytic_gradient(const RouterConfig& r, const double* logits, const int* ids, const float* dw) {
    const int E = r.experts, K = r.topk;
    auto valid = [&](int j) { return ids[j] >= 0 && ids[j] < E; };
    RouterConfig raw = r;
    raw.renormalize = false;
    const std::vector<double> s = host_weights(raw, logits, ids);  // scores before renormalization
    std::vector<double> ds(K, 0.0);
    if (r.renormalize) {
        const double S = std::accumulate(s.begin(), s.end(), 0.0);
        double dot = 0;
        for (int j = 0; j < K; ++j) dot += dw[j] * s[j] / S;
        for (int j = 0; j < K; ++j) ds[j] = valid(j) ? (dw[j] - dot) / S : 0.0;
    } else {
        for (int j = 0; j < K; ++j) ds[j] = valid(j) ? dw[j] : 0.0;
    }
    std::vector<double> grad(E, 0.0);
    if (r.scoring == Scoring::sigmoid) {
        for (int j = 0; j < K; ++j)
            if (valid(j)) grad[ids[j]] += ds[j] * s[j] * (1 - s[j]);
    } else if (r.score_before_topk) {
        const double max = *std::max_element(logits, logits + E);
        std::vector<double> p(E), g(E, 0.0);
        double sum = 0;
        for (int e = 0; e < E; ++e) sum += (p[e] = std::exp(logits[e] - max));
        for (double& value : p) value /= sum;
        for (int j = 0; j < K; ++j)
            if (valid(j)) g[ids[j]] += ds[j];
        double pg = 0;
        for (int e = 0; e < E; ++e) pg += p[e] * g[e];
        for (int e = 0; e < E; ++e) grad[e] = p[e] * (g[e] - pg);
    } else {
        double qd = 0;
        for (int j = 0; j < K; ++j) qd += s[j] * ds[j];
        for (int j = 0; j < K; ++j)
            if (valid(j)) grad[ids[j]] += s[j] * (ds[j] - qd);
    }
    return grad;
}

std::vector<double> finite_difference_gradient(const RouterConfig& r, const double* logits, const int* ids,
                                               const float* dw) {
    const int E = r.experts, K = r.topk;
    const double h = 1e-5;
    std::vector<double> l(logits, logits + E), grad(E);
    auto loss = [&] {
        const std::vector<double> w = host_weights(r, l.data(), ids);
        double sum = 0;
        for (int j = 0; j < K; ++j) sum += dw[j] * w[j];
        return sum;
    };
    for (int e = 0; e < E; ++e) {
        l[e] = logits[e] + h;
        const double up = loss();
        l[e] = logits[e] - h;
        const double down = loss();
        l[e] = logits[e];
        grad[e] = (up - down) / (2 * h);
    }
    return grad;
}

void check_router_backward(const RouterConfig& r, DType dtype, int64_t tokens, bool invalid_ids = false) {
    INFO(router_text(r) << " " << to_string(dtype) << " tokens " << tokens << (invalid_ids ? " with invalid ids" : ""));
    const int E = r.experts, K = r.topk;
    const std::vector<uint16_t> logits = distinct_logits(dtype, tokens, E);
    const std::vector<double> wide = widen(dtype, logits);
    HostRoute route = host_route(r, wide, tokens);
    if (invalid_ids)  // every third token: its last choice is out of range
        for (int64_t t = 0; t < tokens; t += 3) route.ids[t * K + K - 1] = t % 2 ? E : -1;
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    std::vector<float> dw(size_t(tokens) * K);
    for (float& value : dw) value = uniform(rng());

    DeviceBuffer d_logits = DeviceBuffer::from(logits), d_ids = DeviceBuffer::from(route.ids),
                 d_dw = DeviceBuffer::from(dw), d_grad(size_t(tokens) * E * 2);
    d_grad.fill16(kPoison);
    router_backward(r, dtype, d_logits.get(), d_ids.get(), d_dw.get(), d_grad.get(), tokens, nullptr);
    synchronize();
    const std::vector<uint16_t> grad = d_grad.to_host<uint16_t>();

    const double rounding = dtype == DType::bf16 ? 1.0 / 256 : 1.0 / 1024;  // twice the half-ulp
    double worst_analytic = 0, worst_gpu = 0;
    for (int64_t t = 0; t < tokens; ++t) {
        const double* row = wide.data() + t * E;
        const int* ids = route.ids.data() + t * K;
        const std::vector<double> fd = finite_difference_gradient(r, row, ids, dw.data() + t * K);
        const std::vector<double> exact = analytic_gradient(r, row, ids, dw.data() + t * K);
        double scale = 1e-3;
        for (double value : fd) scale = std::max(scale, std::abs(value));
        for (int e = 0; e < E; ++e) {
            worst_analytic = std::max(worst_analytic, std::abs(exact[e] - fd[e]) / scale);
            const double gpu = from_half(dtype, grad[t * E + e]);
            const double allowed = rounding * std::abs(exact[e]) + 1e-5 * scale + 1e-7;
            const double excess = std::isfinite(gpu) ? std::abs(gpu - fd[e]) / allowed : INFINITY;
            worst_gpu = std::max(worst_gpu, excess);
            if (excess > 1) {
                INFO("token " << t << " expert " << e << ": gpu " << gpu << " finite difference " << fd[e]
                              << " analytic " << exact[e]);
                CHECK(excess <= 1);
                return;
            }
        }
    }
    CHECK(worst_analytic <= 1e-7);
    CHECK(worst_gpu <= 1);
}

}  // namespace

TEST_CASE("route_topk matches float64 for Qwen3, Llama4 and the other scoring modes", "[gpu]") {
    for (DType dtype : {DType::bf16, DType::fp16}) {
        for (bool norm : {true, false}) {
            check_route(RouterConfig::qwen3(128, 8, norm), dtype, 300);
            check_route(RouterConfig::qwen3(60, 4, norm), dtype, 77);
        }
        check_route(RouterConfig::llama4(16), dtype, 300);
        check_route(RouterConfig::llama4(16, 2), dtype, 5);
        check_route(RouterConfig{256, 8, Scoring::sigmoid, true, true}, dtype, 200);    // DeepSeek-style, no bias
        check_route(RouterConfig{8, 2, Scoring::softmax, false, false}, dtype, 100);   // softmax over the chosen
        check_route(RouterConfig{8, 2, Scoring::softmax, true, false}, dtype, 100);
        check_route(RouterConfig{33, 3, Scoring::sigmoid, false, true}, dtype, 100);
        check_route(RouterConfig::qwen3(1, 1, true), dtype, 3);
        check_route(RouterConfig::qwen3(1, 1, false), dtype, 3);
        check_route(RouterConfig::llama4(1), dtype, 3);
        check_route(RouterConfig::qwen3(32, 32, true), dtype, 9);  // every expert chosen
        check_route(RouterConfig::qwen3(128, 8, true), dtype, 1);  // T = 1
    }
}

TEST_CASE("route_topk with many tokens (grid-stride), up to 1024 experts, and NaN logits", "[gpu]") {
    check_route(RouterConfig::qwen3(128, 8, true), DType::bf16, 20000);
    check_route(RouterConfig::qwen3(1024, 32, true), DType::fp16, 50);
    check_route(RouterConfig::llama4(1000, 3), DType::fp16, 50);
    check_route(RouterConfig{1024, 8, Scoring::sigmoid, false, true}, DType::fp16, 50);
    check_route(RouterConfig::qwen3(64, 8, true), DType::bf16, 100, /*with_nan=*/true);
    check_route(RouterConfig::llama4(64, 1), DType::fp16, 100, /*with_nan=*/true);
}

TEST_CASE("route_topk with no tokens writes nothing; bad arguments are rejected before launching", "[gpu]") {
    DeviceBuffer buffer(1 << 16);
    const CUdeviceptr p = buffer.get();
    buffer.fill16(kPoison);
    route_topk(RouterConfig::qwen3(64, 8, true), DType::bf16, p, p + 4096, p + 8192, 0, nullptr);
    synchronize();
    for (uint16_t bits : buffer.to_host<uint16_t>()) REQUIRE(bits == kPoison);

    const RouterConfig good = RouterConfig::qwen3(64, 8, true);
    CHECK_THROWS_AS(route_topk(good, DType::bf16, 0, p, p, 4, nullptr), Error);
    CHECK_THROWS_AS(route_topk(good, DType::bf16, p + 1, p, p, 4, nullptr), Error);
    CHECK_THROWS_AS(route_topk(good, DType::bf16, p, p + 2, p, 4, nullptr), Error);
    CHECK_THROWS_AS(route_topk(good, DType::bf16, p, p, 0, 4, nullptr), Error);
    CHECK_THROWS_AS(route_topk(good, DType::bf16, p, p, p, -1, nullptr), Error);
    CHECK_THROWS_AS(route_topk(RouterConfig::qwen3(0, 1, true), DType::bf16, p, p, p, 4, nullptr), Error);
    CHECK_THROWS_AS(route_topk(RouterConfig::qwen3(2048, 8, true), DType::bf16, p, p, p, 4, nullptr), Error);
    CHECK_THROWS_AS(route_topk(RouterConfig::qwen3(64, 33, true), DType::bf16, p, p, p, 4, nullptr), Error);
    CHECK_THROWS_AS(route_topk(RouterConfig::qwen3(4, 5, true), DType::bf16, p, p, p, 4, nullptr), Error);
    CHECK_THROWS_AS(route_topk(RouterConfig::qwen3(4, 0, true), DType::bf16, p, p, p, 4, nullptr), Error);
    CHECK_THROWS_AS(router_backward(good, DType::bf16, p, p, p, p + 1, 4, nullptr), Error);
    CHECK_THROWS_AS(router_backward(good, DType::bf16, p, p, 0, p, 4, nullptr), Error);
    CHECK_THROWS_AS(router_backward(RouterConfig::qwen3(64, 40, true), DType::bf16, p, p, p, p, 4, nullptr), Error);
    for (uint16_t bits : buffer.to_host<uint16_t>()) REQUIRE(bits == kPoison);
}

TEST_CASE("routing_indices: random ids, topk 1/2/8, 1..256 experts, T = 1", "[gpu]") {
    for (int experts : {1, 2, 7, 64, 128, 256})
        for (int topk : {1, 2, 8})
            for (int64_t tokens : {int64_t{1}, int64_t{5}, int64_t{1000}, int64_t{8192}}) {
                check_indices(experts, topk, uniform_ids(experts, tokens * topk));
                if (topk <= experts) check_indices(experts, topk, distinct_ids(experts, topk, tokens));
            }
}

TEST_CASE("routing_indices: every token to one expert, skew, many chunks, many experts", "[gpu]") {
    for (int topk : {1, 2, 8}) {
        check_indices(128, topk, std::vector<int>(size_t(4096) * topk, 77));
        check_indices(128, topk, std::vector<int>(size_t(4096) * topk, 0));
        check_indices(128, topk, std::vector<int>(size_t(4096) * topk, 127));
        check_indices(1, topk, std::vector<int>(size_t(3000) * topk, 0));
    }
    // 90% of the slots to expert 3, the rest uniform.
    std::vector<int> skewed = uniform_ids(64, 8 * 5000);
    for (int& id : skewed)
        if (rng()() % 10 != 0) id = 3;
    check_indices(64, 8, skewed);
    // Hundreds of chunks (the second pass reads every chunk's counts).
    check_indices(128, 8, distinct_ids(128, 8, 70000));
    check_indices(256, 8, uniform_ids(256, 8 * 40000));
    check_indices(4096, 8, uniform_ids(4096, 8 * 20000));
    check_indices(4096, 1, uniform_ids(4096, 3));
}

TEST_CASE("routing_indices: out-of-range ids are counted and dropped, never used as addresses", "[gpu]") {
    for (int experts : {1, 8, 128})
        for (int topk : {1, 2, 8})
            for (int64_t tokens : {int64_t{1}, int64_t{700}, int64_t{9000}}) {
                std::vector<int> ids = uniform_ids(experts, tokens * topk);
                const int bad = corrupt(ids, experts, 0.05);
                INFO(bad << " bad ids");
                check_indices(experts, topk, ids);
            }
    // Every id out of range: no rows routed, the whole gather_idx is -1.
    std::vector<int> all_bad(64, 9);
    check_indices(8, 8, all_bad);

    // check_routing_errors reads the counter and names the count.
    std::vector<int> ids = uniform_ids(16, 4 * 100);
    ids[5] = -1;
    ids[17] = 16;
    ids[399] = 1000;
    DeviceBuffer d_ids = DeviceBuffer::from(ids);
    DeviceIndices d = run_indices(16, 4, d_ids, 100);
    std::string message;
    try {
        check_routing_errors(d.errors.get(), 16, nullptr);
    } catch (const Error& error) {
        message = error.what();
    }
    CHECK(message == "routing: 3 expert ids out of range [0, 16)");
    DeviceBuffer clean_ids = DeviceBuffer::from(uniform_ids(16, 4 * 100));
    DeviceIndices clean = run_indices(16, 4, clean_ids, 100);
    CHECK_NOTHROW(check_routing_errors(clean.errors.get(), 16, nullptr));
}

TEST_CASE("routing_indices: no tokens zeroes m_sizes; workspace and argument checks", "[gpu]") {
    DeviceBuffer m_sizes(64 * 4), errors = DeviceBuffer::from(std::vector<int>{0}), scratch(1 << 16);
    m_sizes.fill16(0x7777);
    routing_indices(64, 8, 0, 0, m_sizes.get(), 0, 0, errors.get(), 0, routing_workspace_bytes(64, 0, 8), nullptr);
    synchronize();
    CHECK(m_sizes.to_host<int>() == std::vector<int>(64, 0));
    CHECK(errors.to_host<int>()[0] == 0);

    // The workspace only grows with the token count, so one sized for the most tokens always fits.
    for (int experts : {1, 8, 128, 256, 4096}) {
        size_t previous = 0;
        for (int64_t tokens = 0; tokens < 300000; tokens = tokens * 5 / 4 + 1) {
            const size_t bytes = routing_workspace_bytes(experts, tokens, 8);
            CHECK(bytes >= previous);
            previous = bytes;
        }
    }
    const CUdeviceptr p = scratch.get();
    const size_t bytes = routing_workspace_bytes(8, 1000, 2);
    REQUIRE(bytes > 0);
    REQUIRE(bytes <= (1 << 15));
    CHECK_THROWS_AS(routing_indices(8, 2, p, 1000, p, p, p, p, p, bytes - 4, nullptr), Error);
    CHECK_THROWS_AS(routing_indices(8, 2, p, 1000, p, p, p, 0, p, bytes, nullptr), Error);
    CHECK_THROWS_AS(routing_indices(8, 2, p + 2, 1000, p, p, p, p, p, bytes, nullptr), Error);
    CHECK_THROWS_AS(routing_indices(8, 2, p, 1000, p, 0, p, p, p, bytes, nullptr), Error);
    CHECK_THROWS_AS(routing_indices(0, 2, p, 1000, p, p, p, p, p, bytes, nullptr), Error);
    CHECK_THROWS_AS(routing_indices(5000, 2, p, 1000, p, p, p, p, p, bytes, nullptr), Error);
    CHECK_THROWS_AS(routing_indices(8, 0, p, 1000, p, p, p, p, p, bytes, nullptr), Error);
    CHECK_THROWS_AS(routing_indices(8, 2, p, -1, p, p, p, p, p, bytes, nullptr), Error);
    CHECK_THROWS_AS(routing_indices(8, 8, p, int64_t{1} << 28, p, p, p, p, p, bytes, nullptr), Error);
    CHECK_THROWS_AS(routing_workspace_bytes(0, 10, 1), Error);
}

TEST_CASE("permute_rows and unpermute_rows move rows exactly, skipping dropped slots", "[gpu]") {
    for (DType dtype : {DType::bf16, DType::fp16})
        for (int64_t width : {8, 136, 2048})
            for (int topk : {1, 2, 8})
                for (int64_t tokens : {int64_t{1}, int64_t{333}})
                    for (bool dropped : {false, true}) {
                        INFO(to_string(dtype) << " width " << width << " topk " << topk << " tokens " << tokens
                                              << (dropped ? " with dropped slots" : ""));
                        const int64_t rows = tokens * topk;
                        std::vector<int> ids = uniform_ids(16, rows);
                        if (dropped) corrupt(ids, 16, 0.1);
                        const HostIndices routing = host_indices(16, ids);
                        DeviceBuffer gather = DeviceBuffer::from(routing.gather);

                        const std::vector<uint16_t> x = random_halves(dtype, size_t(tokens) * width);
                        DeviceBuffer d_x = DeviceBuffer::from(x), d_xp(size_t(rows) * width * 2);
                        d_xp.fill16(kPoison);
                        permute_rows(dtype, width, topk, d_x.get(), gather.get(), d_xp.get(), tokens, nullptr);

                        const std::vector<uint16_t> y = random_halves(dtype, size_t(rows) * width);
                        DeviceBuffer d_y = DeviceBuffer::from(y), d_ys(size_t(rows) * width * 2);
                        d_ys.fill16(kPoison);
                        unpermute_rows(dtype, width, d_y.get(), gather.get(), d_ys.get(), rows, nullptr);
                        synchronize();

                        std::vector<uint16_t> expected_xp(size_t(rows) * width, 0), expected_ys(size_t(rows) * width, kPoison);
                        for (int64_t r = 0; r < rows; ++r) {
                            const int slot = routing.gather[r];
                            if (slot < 0) continue;  // permute writes zeros there; unpermute writes nothing
                            std::copy_n(x.begin() + (slot / topk) * width, width, expected_xp.begin() + r * width);
                            std::copy_n(y.begin() + r * width, width, expected_ys.begin() + int64_t(slot) * width);
                        }
                        const int64_t xp_mismatch = first_mismatch(d_xp.to_host<uint16_t>(), expected_xp);
                        INFO("permute: first mismatch at element " << xp_mismatch);
                        CHECK(xp_mismatch == -1);
                        const int64_t ys_mismatch = first_mismatch(d_ys.to_host<uint16_t>(), expected_ys);
                        INFO("unpermute: first mismatch at element " << ys_mismatch);
                        CHECK(ys_mismatch == -1);
                    }
    DeviceBuffer buffer(1 << 16);
    const CUdeviceptr p = buffer.get();
    CHECK_THROWS_AS(permute_rows(DType::bf16, 12, 2, p, p, p, 4, nullptr), Error);
    CHECK_THROWS_AS(permute_rows(DType::bf16, 64, 2, p + 8, p, p, 4, nullptr), Error);
    CHECK_THROWS_AS(permute_rows(DType::bf16, 64, 2, p, p + 2, p, 4, nullptr), Error);
    CHECK_THROWS_AS(permute_rows(DType::bf16, 64, 0, p, p, p, 4, nullptr), Error);
    CHECK_THROWS_AS(permute_rows(DType::bf16, 64, 2, p, p, p, -4, nullptr), Error);
    CHECK_THROWS_AS(unpermute_rows(DType::bf16, 64, p, p, 0, 4, nullptr), Error);
    CHECK_THROWS_AS(unpermute_rows(DType::bf16, 64, p, p, p, -1, nullptr), Error);
}

TEST_CASE("combine_topk with weights: out[t] = sum_j w * slot in fixed order; unweighted unchanged", "[gpu]") {
    std::uniform_real_distribution<float> uniform(-1.5f, 1.5f);
    for (DType dtype : {DType::bf16, DType::fp16})
        for (int64_t width : {8, 72, 1024})
            for (int topk : {1, 2, 8})
                for (int64_t tokens : {int64_t{1}, int64_t{257}})
                    for (bool weighted : {true, false}) {
                        INFO(to_string(dtype) << " width " << width << " topk " << topk << " tokens " << tokens
                                              << (weighted ? " weighted" : " unweighted"));
                        const int64_t rows = tokens * topk;
                        const std::vector<uint16_t> slots = random_halves(dtype, size_t(rows) * width);
                        std::vector<float> weights(rows);
                        for (float& w : weights) w = uniform(rng());
                        DeviceBuffer d_slots = DeviceBuffer::from(slots), d_weights = DeviceBuffer::from(weights),
                                     d_out(size_t(tokens) * width * 2);
                        d_out.fill16(kPoison);
                        combine_topk(dtype, width, topk, d_slots.get(), d_out.get(), tokens, nullptr,
                                     weighted ? d_weights.get() : 0);
                        synchronize();
                        const std::vector<uint16_t> out = d_out.to_host<uint16_t>();
                        const double rounding = dtype == DType::bf16 ? 1.0 / 256 : 1.0 / 1024;
                        double worst = 0;
                        for (int64_t t = 0; t < tokens; ++t)
                            for (int64_t c = 0; c < width; ++c) {
                                double sum = 0, magnitude = 0;
                                for (int j = 0; j < topk; ++j) {
                                    const double w = weighted ? weights[t * topk + j] : 1.0;
                                    const double term = w * from_half(dtype, slots[(t * topk + j) * width + c]);
                                    sum += term;
                                    magnitude += std::abs(term);
                                }
                                const double got = from_half(dtype, out[t * width + c]);
                                const double allowed = rounding * std::abs(sum) + 1e-6 * magnitude + 1e-7;
                                worst = std::max(worst, std::isfinite(got) ? std::abs(got - sum) / allowed : INFINITY);
                            }
                        CHECK(worst <= 1);
                    }
    DeviceBuffer buffer(1 << 16);
    CHECK_THROWS_AS(combine_topk(DType::bf16, 64, 2, buffer.get(), buffer.get(), 4, nullptr, buffer.get() + 2), Error);
}

TEST_CASE("router_backward matches finite differences of float64 routing weights", "[gpu]") {
    for (DType dtype : {DType::bf16, DType::fp16}) {
        for (bool norm : {true, false}) {
            check_router_backward(RouterConfig::qwen3(128, 8, norm), dtype, 64);
            check_router_backward(RouterConfig::qwen3(60, 4, norm), dtype, 33);
        }
        check_router_backward(RouterConfig::llama4(16), dtype, 64);
        check_router_backward(RouterConfig::llama4(16, 2), dtype, 64);
        check_router_backward(RouterConfig{64, 4, Scoring::sigmoid, true, true}, dtype, 64);
        check_router_backward(RouterConfig{60, 4, Scoring::softmax, false, false}, dtype, 64);
        check_router_backward(RouterConfig{60, 4, Scoring::softmax, true, false}, dtype, 64);
        check_router_backward(RouterConfig::qwen3(1, 1, true), dtype, 4);
        check_router_backward(RouterConfig::qwen3(128, 8, true), dtype, 1);
    }
    check_router_backward(RouterConfig::qwen3(1024, 32, true), DType::fp16, 8);
    check_router_backward(RouterConfig::qwen3(1024, 8, false), DType::fp16, 8);
    check_router_backward(RouterConfig::qwen3(128, 8, true), DType::bf16, 20000 / 64);
    // Ids outside [0, E) get no gradient and take no part in the weights.
    check_router_backward(RouterConfig::qwen3(128, 8, true), DType::bf16, 30, /*invalid_ids=*/true);
    check_router_backward(RouterConfig::qwen3(128, 8, false), DType::bf16, 30, /*invalid_ids=*/true);
    check_router_backward(RouterConfig{32, 4, Scoring::softmax, true, false}, DType::fp16, 30, /*invalid_ids=*/true);
    check_router_backward(RouterConfig{32, 4, Scoring::sigmoid, true, false}, DType::fp16, 30, /*invalid_ids=*/true);
}

namespace {

// cuGraphInstantiateWithFlags straight from libcuda: the driver table's cuGraphInstantiate is looked up
// by that name at API version 12000, which returns the five-argument cuGraphInstantiate_v2 (seen on
// the H100 with CUDA 13), not the three-argument function cuda.h declares under that name.
CUresult instantiate_graph(CUgraphExec* exec, CUgraph graph) {
    using Instantiate = CUresult (*)(CUgraphExec*, CUgraph, unsigned long long);
    void* library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    REQUIRE(library != nullptr);
    auto instantiate = reinterpret_cast<Instantiate>(dlsym(library, "cuGraphInstantiateWithFlags"));
    REQUIRE(instantiate != nullptr);
    return instantiate(exec, graph, 0);
}

}  // namespace

TEST_CASE("routing captured in a CUDA graph and replayed with new logits matches eager results", "[gpu]") {
    const Driver& cu = driver();
    const RouterConfig router = RouterConfig::qwen3(64, 8, true);
    const DType dtype = DType::bf16;
    const int64_t tokens = 500, rows = tokens * router.topk, width = 64;
    DeviceBuffer logits(size_t(tokens) * router.experts * 2), ids(rows * 4), weights(rows * 4),
        m_sizes(router.experts * 4), gather(rows * 4), scatter(rows * 4), errors(4),
        workspace(std::max<size_t>(routing_workspace_bytes(router.experts, tokens, router.topk), 4)),
        x(size_t(tokens) * width * 2), xp(size_t(rows) * width * 2);
    const std::vector<uint16_t> x_host = random_halves(dtype, size_t(tokens) * width);
    check_cuda(cu.cuMemcpyHtoD(x.get(), x_host.data(), x.bytes()), "HtoD");

    CUstream stream = nullptr;
    check_cuda(cu.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    auto forward = [&] {
        check_cuda(cu.cuMemsetD32Async(errors.get(), 0, 1, stream), "clear the error counter");
        route_topk(router, dtype, logits.get(), ids.get(), weights.get(), tokens, stream);
        routing_indices(router.experts, router.topk, ids.get(), tokens, m_sizes.get(), gather.get(), scatter.get(),
                        errors.get(), workspace.get(), workspace.bytes(), stream);
        permute_rows(dtype, width, router.topk, x.get(), gather.get(), xp.get(), tokens, stream);
    };
    // Eager once (compiles every kernel), then capture.
    const std::vector<uint16_t> first = distinct_logits(dtype, tokens, router.experts);
    check_cuda(cu.cuMemcpyHtoD(logits.get(), first.data(), logits.bytes()), "HtoD");
    forward();
    check_cuda(cu.cuStreamSynchronize(stream), "sync");
    CUgraph graph = nullptr;
    CUgraphExec exec = nullptr;
    check_cuda(cu.cuStreamBeginCapture(stream, CU_STREAM_CAPTURE_MODE_GLOBAL), "cuStreamBeginCapture");
    forward();
    check_cuda(cu.cuStreamEndCapture(stream, &graph), "cuStreamEndCapture");
    check_cuda(instantiate_graph(&exec, graph), "cuGraphInstantiateWithFlags");

    for (int replay = 0; replay < 3; ++replay) {
        const std::vector<uint16_t> fresh = distinct_logits(dtype, tokens, router.experts);
        check_cuda(cu.cuMemcpyHtoD(logits.get(), fresh.data(), logits.bytes()), "HtoD");
        for (DeviceBuffer* buffer : {&ids, &weights, &m_sizes, &gather, &scatter, &xp}) buffer->fill16(0x7777);
        check_cuda(cu.cuGraphLaunch(exec, stream), "cuGraphLaunch");
        check_cuda(cu.cuStreamSynchronize(stream), "sync");
        const HostRoute route = host_route(router, widen(dtype, fresh), tokens);
        const HostIndices expected = host_indices(router.experts, route.ids);
        CHECK(first_mismatch(ids.to_host<int>(), route.ids) == -1);
        CHECK(first_mismatch(m_sizes.to_host<int>(), expected.m_sizes) == -1);
        CHECK(first_mismatch(gather.to_host<int>(), expected.gather) == -1);
        CHECK(first_mismatch(scatter.to_host<int>(), expected.scatter) == -1);
        CHECK(errors.to_host<int>()[0] == 0);
        std::vector<uint16_t> expected_xp(size_t(rows) * width);
        for (int64_t r = 0; r < rows; ++r)
            std::copy_n(x_host.begin() + (expected.gather[r] / router.topk) * width, width,
                        expected_xp.begin() + r * width);
        CHECK(first_mismatch(xp.to_host<uint16_t>(), expected_xp) == -1);
    }
    cu.cuGraphExecDestroy(exec);
    cu.cuGraphDestroy(graph);
    cu.cuStreamDestroy(stream);
}

// Not run by default: `test_gpu "[routing-timing]"` prints microseconds per call at Qwen3-30B-A3B's
// routing shape (E 128, topk 8, H 2048) for prefill and decode token counts.
TEST_CASE("routing timings", "[.][routing-timing]") {
    const Driver& cu = driver();
    const RouterConfig router = RouterConfig::qwen3(128, 8, true);
    const DType dtype = DType::bf16;
    const int64_t width = 2048;
    for (int64_t tokens : {int64_t{16}, int64_t{8192}}) {
        const int64_t rows = tokens * router.topk;
        DeviceBuffer logits = DeviceBuffer::from(distinct_logits(dtype, tokens, router.experts)), ids(rows * 4),
                     weights(rows * 4), m_sizes(router.experts * 4), gather(rows * 4), scatter(rows * 4), errors(4),
                     workspace(std::max<size_t>(routing_workspace_bytes(router.experts, tokens, router.topk), 4)),
                     x(size_t(tokens) * width * 2), xp(size_t(rows) * width * 2), ys(size_t(rows) * width * 2), out(size_t(tokens) * width * 2),
                     grad_logits(size_t(tokens) * router.experts * 2);
        check_cuda(cu.cuMemsetD32Async(errors.get(), 0, 1, nullptr), "clear");
        x.fill16(0x3f80);
        auto time = [&](const char* name, const std::function<void()>& call) {
            call();
            CUevent start = nullptr, stop = nullptr;
            check_cuda(cu.cuEventCreate(&start, 0), "cuEventCreate");
            check_cuda(cu.cuEventCreate(&stop, 0), "cuEventCreate");
            const int iterations = 200;
            check_cuda(cu.cuEventRecord(start, nullptr), "cuEventRecord");
            for (int i = 0; i < iterations; ++i) call();
            check_cuda(cu.cuEventRecord(stop, nullptr), "cuEventRecord");
            check_cuda(cu.cuEventSynchronize(stop), "cuEventSynchronize");
            float ms = 0;
            check_cuda(cu.cuEventElapsedTime(&ms, start, stop), "cuEventElapsedTime");
            std::printf("tokens %6lld  %-16s %8.2f us\n", static_cast<long long>(tokens), name, 1000.0 * ms / iterations);
            cu.cuEventDestroy(start);
            cu.cuEventDestroy(stop);
        };
        time("route_topk", [&] { route_topk(router, dtype, logits.get(), ids.get(), weights.get(), tokens, nullptr); });
        time("routing_indices", [&] {
            routing_indices(router.experts, router.topk, ids.get(), tokens, m_sizes.get(), gather.get(), scatter.get(),
                            errors.get(), workspace.get(), workspace.bytes(), nullptr);
        });
        time("permute_rows", [&] { permute_rows(dtype, width, router.topk, x.get(), gather.get(), xp.get(), tokens, nullptr); });
        time("unpermute_rows", [&] { unpermute_rows(dtype, width, xp.get(), gather.get(), ys.get(), rows, nullptr); });
        time("combine_topk", [&] {
            combine_topk(dtype, width, router.topk, xp.get(), out.get(), tokens, nullptr, weights.get());
        });
        time("router_backward", [&] {
            router_backward(router, dtype, logits.get(), ids.get(), weights.get(), grad_logits.get(), tokens, nullptr);
        });
    }
}

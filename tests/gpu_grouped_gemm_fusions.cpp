// Forward fusions, dX and dW against float64 host references on small random problems: every
// allowed flag set, both dtypes. Fresh random data, outputs poisoned first.
#include "tests/catch.hpp"
#include "tests/support/device.hpp"
#include "tests/support/half.hpp"
#include "tests/support/reference.hpp"

#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

using namespace moejit;
using namespace moejit::testing;

namespace {

std::mt19937_64& rng() {
    static std::mt19937_64 generator(std::random_device{}());
    return generator;
}

struct HostRouting {
    int tokens, topk, experts;
    std::vector<int> m_sizes, gather_idx, expert_of_row;
    std::vector<float> weights;  // [M] slot order
    int64_t rows() const { return int64_t(tokens) * topk; }
};

HostRouting make_routing(int tokens, int experts, int topk) {
    HostRouting r{tokens, topk, experts, {}, {}, {}, {}};
    std::vector<int> expert_of_slot(size_t(tokens) * topk), order(experts);
    std::iota(order.begin(), order.end(), 0);
    for (int t = 0; t < tokens; ++t)
        for (int j = 0; j < topk; ++j) {
            std::uniform_int_distribution<int> pick(j, experts - 1);
            std::swap(order[j], order[pick(rng())]);
            expert_of_slot[size_t(t) * topk + j] = order[j];
        }
    r.m_sizes.assign(experts, 0);
    for (int e : expert_of_slot) ++r.m_sizes[e];
    r.gather_idx.resize(expert_of_slot.size());
    std::iota(r.gather_idx.begin(), r.gather_idx.end(), 0);
    std::stable_sort(r.gather_idx.begin(), r.gather_idx.end(),
                     [&](int a, int b) { return expert_of_slot[a] < expert_of_slot[b]; });
    for (int g : r.gather_idx) r.expert_of_row.push_back(expert_of_slot[g]);
    std::uniform_real_distribution<float> uniform(0.1f, 1.0f);
    for (size_t i = 0; i < expert_of_slot.size(); ++i) r.weights.push_back(uniform(rng()));
    return r;
}

std::vector<uint16_t> random_halves(DType dtype, size_t count) {
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    std::vector<uint16_t> values(count);
    for (auto& v : values) v = to_half(dtype, uniform(rng()));
    return values;
}

std::vector<double> widen(DType dtype, const std::vector<uint16_t>& bits) {
    std::vector<double> out(bits.size());
    for (size_t i = 0; i < bits.size(); ++i) out[i] = from_half(dtype, bits[i]);
    return out;
}

double silu(double x) { return x / (1.0 + std::exp(-x)); }

struct Case {
    DType dtype;
    int64_t n, k;
    HostRouting routing;
    bool permute_x = false, permute_y = false, mul_post = false, gated = false;
};

Problem problem_of(const Case& c) {
    Problem p;
    p.dtype = c.dtype;
    p.n = c.n;
    p.k = c.k;
    p.experts = c.routing.experts;
    p.topk = c.routing.topk;
    p.permute_x = c.permute_x;
    p.permute_y = c.permute_y;
    p.fuse_mul_post = c.mul_post;
    p.gated = c.gated;
    return p;
}

double tolerance(DType dtype) { return dtype == DType::bf16 ? 1e-2 : 3e-3; }

// Runs fwd, dx and dw of one case on the GPU and returns their errors against float64.
void check_case(const Case& c) {
    const HostRouting& r = c.routing;
    const int64_t M = r.rows(), T = r.tokens, n = c.n, k = c.k, E = r.experts;
    const GroupedGemm gemm(problem_of(c));
    const auto x = random_halves(c.dtype, size_t(c.permute_x ? T : M) * k);
    const auto w = random_halves(c.dtype, size_t(E) * n * k);
    const auto dy = random_halves(c.dtype, size_t(M) * n);
    const auto xd = widen(c.dtype, x), wd = widen(c.dtype, w), dyd = widen(c.dtype, dy);
    DeviceBuffer d_x = DeviceBuffer::from(x), d_w = DeviceBuffer::from(w), d_dy = DeviceBuffer::from(dy);
    DeviceBuffer d_sizes = DeviceBuffer::from(r.m_sizes), d_gather = DeviceBuffer::from(r.gather_idx),
                 d_weights = DeviceBuffer::from(r.weights);
    const Routing routing{d_sizes.get(), d_gather.get(), d_weights.get(), M};
    auto x_row = [&](int64_t row) { return (c.permute_x ? int64_t(r.gather_idx[row]) / r.topk : row) * k; };
    auto w_at = [&](int64_t row, int64_t col, int64_t i) { return wd[(int64_t(r.expert_of_row[row]) * n + col) * k + i]; };

    // Forward.
    const int64_t out_cols = c.gated ? n / 2 : n;
    DeviceBuffer d_y(size_t(M) * out_cols * 2), d_pre(size_t(M) * n * 2);
    d_y.fill16(kPoison);
    gemm.forward(d_x.get(), d_w.get(), d_y.get(), routing, nullptr, c.gated ? d_pre.get() : 0);
    std::vector<double> y_ref(size_t(M) * out_cols), pre_ref(size_t(M) * n);
    parallel_for(M, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
            std::vector<double> acc(n);
            for (int64_t col = 0; col < n; ++col) {
                double sum = 0;
                for (int64_t i = 0; i < k; ++i) sum += xd[x_row(row) + i] * w_at(row, col, i);
                acc[col] = sum;
            }
            const int64_t out_row = c.permute_y ? r.gather_idx[row] : row;
            const double scale = c.mul_post ? r.weights[r.gather_idx[row]] : 1.0;
            for (int64_t col = 0; col < out_cols; ++col)
                y_ref[out_row * out_cols + col] = c.gated ? silu(acc[col]) * acc[n / 2 + col] : acc[col] * scale;
            for (int64_t col = 0; col < n; ++col) pre_ref[row * n + col] = acc[col];
        }
    });
    synchronize();
    std::vector<float> y(y_ref.size());
    const auto y_bits = d_y.to_host<uint16_t>();
    for (size_t i = 0; i < y.size(); ++i) y[i] = from_half(c.dtype, y_bits[i]);
    INFO(to_spec(gemm.problem()) << " M=" << M);
    CHECK(relative_error(y, y_ref) < tolerance(c.dtype));
    if (c.gated) {
        const auto pre_bits = d_pre.to_host<uint16_t>();
        std::vector<float> pre(pre_bits.size());
        for (size_t i = 0; i < pre.size(); ++i) pre[i] = from_half(c.dtype, pre_bits[i]);
        CHECK(relative_error(pre, pre_ref) < tolerance(c.dtype));
    }

    // dX: dy is [M, n] (slot order with permute_y); output per slot with permute_x.
    DeviceBuffer d_dx(size_t(M) * k * 2);
    d_dx.fill16(kPoison);
    gemm.dx(d_dy.get(), d_w.get(), d_dx.get(), routing, nullptr);
    std::vector<double> dx_ref(size_t(M) * k);
    parallel_for(M, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
            const int64_t dy_row = c.permute_y ? r.gather_idx[row] : row;
            const int64_t out_row = c.permute_x ? r.gather_idx[row] : row;
            const double scale = c.mul_post ? r.weights[r.gather_idx[row]] : 1.0;
            for (int64_t i = 0; i < k; ++i) {
                double sum = 0;
                for (int64_t col = 0; col < n; ++col) sum += dyd[dy_row * n + col] * w_at(row, col, i);
                dx_ref[out_row * k + i] = sum * scale;
            }
        }
    });
    synchronize();
    const auto dx_bits = d_dx.to_host<uint16_t>();
    std::vector<float> dxv(dx_bits.size());
    for (size_t i = 0; i < dxv.size(); ++i) dxv[i] = from_half(c.dtype, dx_bits[i]);
    CHECK(relative_error(dxv, dx_ref) < tolerance(c.dtype));

    // dW (not with fuse_mul_post), in fp32.
    if (c.mul_post) {
        CHECK_THROWS_AS(gemm.dw(d_dy.get(), d_x.get(), d_dx.get(), routing, nullptr), Error);
        return;
    }
    DeviceBuffer d_dw(size_t(E) * n * k * 4);
    check_cuda(driver().cuMemsetD8(d_dw.get(), 0xff, d_dw.bytes()), "poison");
    gemm.dw(d_dy.get(), d_x.get(), d_dw.get(), routing, nullptr, /*fp32_output=*/true);
    std::vector<double> dw_ref(size_t(E) * n * k, 0.0);
    parallel_for(E, [&](int64_t begin, int64_t end) {
        for (int64_t e = begin; e < end; ++e)
            for (int64_t row = 0; row < M; ++row) {
                if (r.expert_of_row[row] != e) continue;
                const int64_t dy_row = c.permute_y ? r.gather_idx[row] : row;
                for (int64_t col = 0; col < n; ++col)
                    for (int64_t i = 0; i < k; ++i)
                        dw_ref[(e * n + col) * k + i] += dyd[dy_row * n + col] * xd[x_row(row) + i];
            }
    });
    synchronize();
    const auto dw = d_dw.to_host<float>();
    CHECK(relative_error(dw, dw_ref) < tolerance(c.dtype));
    for (int e = 0; e < E; ++e)
        if (r.m_sizes[e] == 0)
            for (int64_t i = 0; i < n * k; ++i) REQUIRE(dw[size_t(e) * n * k + i] == 0.0f);
}

}  // namespace

TEST_CASE("fused forward, dX and dW match float64 for every flag set", "[gpu]") {
    for (DType dtype : {DType::bf16, DType::fp16}) {
        for (int flags = 0; flags < 6; ++flags) {
            Case c{dtype, 192, 136, make_routing(45, 12, 3)};
            c.permute_x = flags == 1 || flags == 5;
            c.permute_y = flags == 2 || flags == 3;
            c.mul_post = flags == 3;
            c.gated = flags == 4 || flags == 5;
            check_case(c);
        }
    }
}

TEST_CASE("dX and dW with topk 1, 2, 8, many experts, and skew", "[gpu]") {
    for (auto [tokens, experts, topk] : {std::tuple{37, 1, 1}, {64, 8, 2}, {50, 64, 8}, {9, 256, 8}}) {
        Case c{DType::bf16, 256, 128, make_routing(tokens, experts, topk)};
        c.permute_x = true;
        check_case(c);
        Case d{DType::bf16, 128, 256, make_routing(tokens, experts, topk)};
        d.permute_y = true;
        check_case(d);
    }
}

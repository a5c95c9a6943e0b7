// Grouped GEMM forward on the GPU against a float64 host reference, on fresh random data with the
// output poisoned first: empty and skewed experts, M not a multiple of the tile, E*N*K > 2^31; and
// GroupedGemm::prepare compiling every pass before the calls.
#include "tests/catch.hpp"
#include "tests/support/compile_log.hpp"
#include "tests/support/device.hpp"
#include "tests/support/env_var.hpp"
#include "tests/support/half.hpp"
#include "tests/support/moe_reference.hpp"
#include "tests/support/process.hpp"
#include "tests/support/reference.hpp"

#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>
#include <moejit/tuning.hpp>

#include "codegen/kernel_problems.hpp"
#include "runtime/device.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>

using namespace moejit;
using namespace moejit::testing;

namespace {

using moe::random_halves;
using moe::rng;

// Y[r] = X[r] @ W[e]^T over the expert-ordered rows, in float64 from the rounded inputs.
std::vector<double> reference_forward(DType dtype, int64_t n, int64_t k, const std::vector<int>& m_sizes,
                                      const std::vector<uint16_t>& x, const std::vector<uint16_t>& w) {
    const int64_t rows = std::accumulate(m_sizes.begin(), m_sizes.end(), int64_t{0});
    std::vector<int> expert_of_row;
    for (size_t e = 0; e < m_sizes.size(); ++e) expert_of_row.insert(expert_of_row.end(), m_sizes[e], int(e));
    std::vector<double> xd(x.size()), y(size_t(rows) * n);
    for (size_t i = 0; i < x.size(); ++i) xd[i] = from_half(dtype, x[i]);
    parallel_for(rows, [&](int64_t begin, int64_t end) {
        std::vector<double> w_row(k);
        for (int64_t r = begin; r < end; ++r) {
            const uint16_t* w_expert = w.data() + int64_t(expert_of_row[r]) * n * k;
            for (int64_t col = 0; col < n; ++col) {
                double sum = 0;
                const uint16_t* w_row_bits = w_expert + col * k;
                const double* x_row = xd.data() + r * k;
                for (int64_t i = 0; i < k; ++i) sum += x_row[i] * from_half(dtype, w_row_bits[i]);
                y[r * n + col] = sum;
            }
        }
    });
    return y;
}

double run_forward(DType dtype, int64_t n, int64_t k, const std::vector<int>& m_sizes) {
    const int experts = static_cast<int>(m_sizes.size());
    const int64_t rows = std::accumulate(m_sizes.begin(), m_sizes.end(), int64_t{0});
    Problem problem;
    problem.dtype = dtype;
    problem.n = n;
    problem.k = k;
    problem.experts = experts;
    GroupedGemm gemm(problem);

    const auto x = random_halves(dtype, size_t(rows) * k);
    const auto w = random_halves(dtype, size_t(experts) * n * k);
    DeviceBuffer dx = DeviceBuffer::from(x), dw = DeviceBuffer::from(w), dm = DeviceBuffer::from(m_sizes);
    DeviceBuffer dy(std::max<size_t>(16, size_t(rows) * n * 2));
    dy.fill16(kPoison);
    gemm.forward(dx.get(), dw.get(), dy.get(), Routing{dm.get(), 0, 0, rows}, nullptr);
    synchronize();

    const auto y_bits = dy.to_host<uint16_t>();
    std::vector<float> y(size_t(rows) * n);
    for (size_t i = 0; i < y.size(); ++i) y[i] = from_half(dtype, y_bits[i]);
    return relative_error(y, reference_forward(dtype, n, k, m_sizes, x, w));
}

std::vector<int> random_sizes(int experts, int rows, double empty_fraction) {
    std::uniform_real_distribution<double> uniform(0, 1);
    std::vector<double> weight(experts);
    for (auto& value : weight) value = uniform(rng()) < empty_fraction ? 0.0 : uniform(rng());
    if (std::accumulate(weight.begin(), weight.end(), 0.0) == 0) weight[0] = 1;
    std::discrete_distribution<int> pick(weight.begin(), weight.end());
    std::vector<int> sizes(experts, 0);
    for (int r = 0; r < rows; ++r) ++sizes[pick(rng())];
    return sizes;
}

}  // namespace

TEST_CASE("forward matches float64 on random routing, both dtypes", "[gpu][gemm]") {
    for (DType dtype : {DType::bf16, DType::fp16}) {
        for (auto shape : {std::pair<int64_t, int64_t>{256, 512}, {1536, 2048}, {56, 776}, {8, 8}, {392, 136}}) {
            const auto sizes = random_sizes(16, 1000, 0.25);
            INFO(to_string(dtype) << " n" << shape.first << " k" << shape.second);
            const double error = run_forward(dtype, shape.first, shape.second, sizes);
            CHECK(error < (dtype == DType::bf16 ? 1e-2 : 2e-3));
        }
    }
}

TEST_CASE("forward handles empty, skewed and tile-straddling experts", "[gpu][gemm]") {
    const DType dtype = DType::bf16;
    SECTION("all rows on one expert") {
        std::vector<int> sizes(32, 0);
        sizes[17] = 777;
        CHECK(run_forward(dtype, 384, 256, sizes) < 1e-2);
    }
    SECTION("sizes around the tile edge") {
        CHECK(run_forward(dtype, 640, 320, {1, 127, 128, 129, 0, 255, 256, 257, 0, 3}) < 1e-2);
    }
    SECTION("one expert") { CHECK(run_forward(dtype, 512, 384, {300}) < 1e-2); }
    SECTION("many experts, mostly empty") { CHECK(run_forward(dtype, 128, 128, random_sizes(256, 200, 0.9)) < 1e-2); }
    SECTION("qwen3-30b-a3b gate_up shape, 64 tokens x top8") {
        CHECK(run_forward(dtype, 1536, 2048, random_sizes(128, 64 * 8, 0.0)) < 1e-2);
    }
}

TEST_CASE("forward with no rows launches nothing and leaves the output alone", "[gpu][gemm]") {
    Problem problem;
    problem.n = 64;
    problem.k = 64;
    problem.experts = 4;
    GroupedGemm gemm(problem);
    DeviceBuffer dx(64 * 2), dw(4 * 64 * 64 * 2), dm = DeviceBuffer::from(std::vector<int>{0, 0, 0, 0}), dy(64 * 2);
    dy.fill16(kPoison);
    gemm.forward(dx.get(), dw.get(), dy.get(), Routing{dm.get(), 0, 0, 0}, nullptr);
    synchronize();
    for (uint16_t bits : dy.to_host<uint16_t>()) REQUIRE(bits == kPoison);
}

TEST_CASE("forward rejects bad pointers and sizes before launching", "[gpu][gemm]") {
    Problem problem;
    problem.n = 64;
    problem.k = 64;
    problem.experts = 2;
    GroupedGemm gemm(problem);
    DeviceBuffer buffer(1 << 16);
    const CUdeviceptr p = buffer.get();
    CHECK_THROWS_AS(gemm.forward(0, p, p, Routing{p, 0, 0, 4}, nullptr), Error);
    CHECK_THROWS_AS(gemm.forward(p + 2, p, p, Routing{p, 0, 0, 4}, nullptr), Error);
    CHECK_THROWS_AS(gemm.forward(p, p, p, Routing{p + 2, 0, 0, 4}, nullptr), Error);
    CHECK_THROWS_AS(gemm.forward(p, p, p, Routing{p, 0, 0, -1}, nullptr), Error);
    Problem odd = problem;
    odd.k = 60;
    CHECK_THROWS_AS(GroupedGemm(odd), Error);
}

TEST_CASE("forward indexes experts past 2^31 weight elements in 64 bits", "[gpu][gemm]") {
    // E*N*K = 129 * 4096 * 4096 > 2^31. Only experts 0 and 128 hold data; every other expert is NaN,
    // so a wrapped offset shows up as NaN in the output.
    const DType dtype = DType::bf16;
    const int experts = 129;
    const int64_t n = 4096, k = 4096;
    std::vector<int> sizes(experts, 0);
    sizes[0] = 24;
    sizes[128] = 40;
    const int64_t rows = 64;
    Problem problem;
    problem.n = n;
    problem.k = k;
    problem.experts = experts;
    GroupedGemm gemm(problem);

    const auto x = random_halves(dtype, size_t(rows) * k);
    const auto w_first = random_halves(dtype, size_t(n) * k), w_last = random_halves(dtype, size_t(n) * k);
    DeviceBuffer dw(size_t(experts) * n * k * 2);
    dw.fill16(kPoison);
    const size_t expert_bytes = size_t(n) * k * 2;
    check_cuda(driver().cuMemcpyHtoD(dw.get(), w_first.data(), expert_bytes), "HtoD");
    check_cuda(driver().cuMemcpyHtoD(dw.get() + 128 * expert_bytes, w_last.data(), expert_bytes), "HtoD");
    DeviceBuffer dx = DeviceBuffer::from(x), dm = DeviceBuffer::from(sizes), dy(size_t(rows) * n * 2);
    dy.fill16(kPoison);
    gemm.forward(dx.get(), dw.get(), dy.get(), Routing{dm.get(), 0, 0, rows}, nullptr);
    synchronize();

    // Reference over the two populated experts only: a compact W with just them.
    std::vector<uint16_t> w_compact(w_first);
    w_compact.insert(w_compact.end(), w_last.begin(), w_last.end());
    const auto ref = reference_forward(dtype, n, k, {24, 40}, x, w_compact);
    const auto y_bits = dy.to_host<uint16_t>();
    std::vector<float> y(y_bits.size());
    for (size_t i = 0; i < y.size(); ++i) y[i] = bf16_to_float(y_bits[i]);
    CHECK(relative_error(y, ref) < 1e-2);
}

namespace {
const char* const kPrepareChild = "GROUPED_GEMM_PREPARE_CHILD";
const char* const kPreparedMarker = "grouped gemm prepared";  // on stderr, between the logged compiles
}  // namespace

TEST_CASE("GroupedGemm::prepare(backward) compiles every pass before its call", "[gpu][gemm]") {
    // fwd, dx, dw and fp32 dw, each compiled once, and with MOEJIT_CHECK_ROUTING the check's kernel
    // that runs before each call: all before the calls.
    for (const auto& [check_routing, kernels] : {std::pair<const char*, size_t>{"0", 4}, {"1", 5}}) {
        INFO("MOEJIT_CHECK_ROUTING=" << check_routing);
        TempDir cache;
        const ProcessResult child = run_child_tests("grouped gemm child prepares and calls every pass",
                                                    {{"MOEJIT_CACHE_DIR", cache.path},
                                                     {"MOEJIT_LOG", "info"},
                                                     {"MOEJIT_CHECK_ROUTING", check_routing},
                                                     {kPrepareChild, "1"}});
        INFO("child stdout:\n" << child.out << "\nchild stderr:\n" << child.err);
        CHECK(child.status == 0);
        CHECK(child.out.find("grouped gemm child done") != std::string::npos);
        const size_t marker = child.err.find(kPreparedMarker);
        REQUIRE(marker != std::string::npos);
        const LoggedCompiles compiles = logged_compiles(child.err, kPreparedMarker);
        CHECK(compiles.before == kernels);
        CHECK(compiles.after == 0);
        for (const char* pass : {"compiled fwd:", "compiled dx:", "compiled dw:"}) CHECK(child.err.find(pass) < marker);
    }
}

// Run by the test above in a child process only.
TEST_CASE("grouped gemm child prepares and calls every pass", "[.][gemm-child]") {
    REQUIRE(std::getenv(kPrepareChild) != nullptr);
    Problem problem;
    problem.n = 64;
    problem.k = 64;
    problem.experts = 2;
    problem.permute_x = true;
    const GroupedGemm gemm(problem);
    const int64_t rows = 64;
    gemm.prepare(/*backward=*/true, rows);
    std::fprintf(stderr, "%s\n", kPreparedMarker);
    std::vector<int> gather(rows);
    std::iota(gather.begin(), gather.end(), 0);
    DeviceBuffer m_sizes = DeviceBuffer::from(std::vector<int>{int(rows), 0});
    DeviceBuffer gather_idx = DeviceBuffer::from(gather);
    DeviceBuffer x(rows * 64 * 2), w(2 * 64 * 64 * 2), y(rows * 64 * 2), dw(2 * 64 * 64 * 4);
    const Routing routing{m_sizes.get(), gather_idx.get(), 0, rows};
    gemm.forward(x.get(), w.get(), y.get(), routing, nullptr);
    gemm.dx(y.get(), w.get(), x.get(), routing, nullptr);
    gemm.dw(y.get(), x.get(), dw.get(), routing, nullptr);
    gemm.dw(y.get(), x.get(), dw.get(), routing, nullptr, /*fp32_output=*/true);
    synchronize();
    std::printf("grouped gemm child done\n");
}

// Not [gemm]: gpu_portable_gemm runs those with MOEJIT_KERNEL_PATH=portable, which ignores tunings.
TEST_CASE("tune: the training gated forward (preactivation saved) and the inference one tune, and are used",
          "[gpu][tuning]") {
    Problem training = expert_gemm(DType::bf16, 256, 128, 8, 2);
    training.permute_x = training.gated = training.saves_preactivation = true;
    training.arch = current_device().arch;
    Problem inference = training;
    inference.saves_preactivation = false;
    const int64_t tokens = 64;
    // The winners go to a cache directory of the test's own (read at each store and lookup).
    TempDir cache;
    EnvVar dir("MOEJIT_CACHE_DIR", cache.path);
    // The training pass runs its kernel with a preactivation buffer: GroupedGemm refuses it without one.
    const std::vector<TunedPass> results = tune_grouped_gemm_passes({training, inference}, tokens);
    REQUIRE(results.size() == 2);
    for (const TunedPass& result : results) {
        INFO(to_spec(result.problem) << ": heuristic " << result.heuristic << " " << result.heuristic_ms << " ms, best "
                                     << result.best << " " << result.best_ms << " ms, stored at " << result.stored);
        CHECK(result.candidates > 1);
        CHECK(result.heuristic_ms > 0);
        CHECK(result.best_ms > 0);
        CHECK(result.best_ms <= result.heuristic_ms);
        // Later GroupedGemms of the problem run the winner (cpu_cache checks the two keys apart).
        CHECK(result.stored.rfind(cache.path, 0) == 0);
        CHECK(GroupedGemm(result.problem).config(Op::fwd, tokens * 2) == result.best);
    }
}

// Every grouped-GEMM pass (forward, dX, dW) with every allowed fusion flag set, combine_topk and
// gated_activation_backward, against float64 host references on fresh random data, outputs
// poisoned (NaN) first: routing edge cases (top-1/2/8, 1..256 experts, empty and skewed experts,
// M off the tile, M = 0), model shapes at small token counts, 64-bit expert offsets, a gradient
// check of a whole gated MoE MLP, and argument validation before any launch.
// MOEJIT_TEST_SEED=<n> replays the random data of a run (its seed is printed with any failure).
#include "tests/catch.hpp"
#include "tests/support/device.hpp"
#include "tests/support/errors.hpp"
#include "tests/support/half.hpp"
#include "tests/support/moe_reference.hpp"
#include "tests/support/reference.hpp"

#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>

#include "codegen/config.hpp"
#include "codegen/kernel_problems.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <numeric>
#include <optional>
#include <random>
#include <tuple>
#include <utility>
#include <vector>

using namespace moejit;
using namespace moejit::testing;
using namespace moejit::testing::moe;

namespace {

struct Flags {
    const char* name;
    bool permute_x, permute_y, fuse_mul_post, gated;
};
const Flags kNone{"none", false, false, false, false};
const Flags kPermuteX{"permute_x", true, false, false, false};
const Flags kPermuteY{"permute_y", false, true, false, false};
const Flags kPermuteYMulPost{"permute_y+fuse_mul_post", false, true, true, false};
const Flags kGated{"gated", false, false, false, true};
const Flags kGatedPermuteX{"gated+permute_x", true, false, false, true};
// Every forward flag set Problem::validate allows.
const Flags kAllFlagSets[] = {kNone, kPermuteX, kPermuteY, kPermuteYMulPost, kGated, kGatedPermuteX};

enum Passes : unsigned { kFwd = 1, kDx = 2, kDw = 4, kDw32 = 8 };

double tolerance(DType dtype) { return dtype == DType::bf16 ? 1e-2 : 3e-3; }
// fp32 dW: products of 16-bit inputs are exact in fp32 and the sums are fp32, so the only error is
// fp32 accumulation (~1e-6); a result rounded through bf16/fp16 on the way would be ~1e-3.
constexpr double kFp32Tolerance = 1e-4;

Problem with_flags(Problem problem, const Flags& flags) {
    problem.permute_x = flags.permute_x;
    problem.permute_y = flags.permute_y;
    problem.fuse_mul_post = flags.fuse_mul_post;
    problem.gated = flags.gated;
    return problem;
}

Problem make_problem(DType dtype, int64_t n, int64_t k, int experts, int topk, const Flags& flags) {
    return with_flags(expert_gemm(dtype, n, k, experts, topk), flags);
}

// How many of the first `count` 16-bit elements are no longer kPoison.
int64_t count_not_poison(const DeviceBuffer& buffer, size_t count) {
    const auto bits = download<uint16_t>(buffer, 0, count);
    return std::count_if(bits.begin(), bits.end(), [](uint16_t value) { return value != kPoison; });
}

void check_output(const char* what, const std::vector<float>& out, const std::vector<double>& ref, double limit) {
    const ErrorSum error = compare(out, ref);
    INFO(what << ": relative error " << error.relative() << " (limit " << limit << "), non-finite " << error.nonfinite
              << " of " << error.count);
    CHECK(error.nonfinite == 0);
    CHECK(error.relative() < limit);
}

// The first ref.size() elements of a 16-bit device tensor against ref.
void check_half_output(const char* what, DType dtype, const DeviceBuffer& buffer, const std::vector<double>& ref,
                       double limit) {
    check_output(what, to_floats(dtype, download<uint16_t>(buffer, 0, ref.size())), ref, limit);
}

// dW [E, N, K]: experts with rows fully against the reference; experts without rows exactly zero
// (all of them when dW is small, else three rows of each).
void check_dw(const Problem& problem, const HostRouting& routing, const DeviceBuffer& out, bool fp32,
              const std::vector<double>& dy, const std::vector<double>& x) {
    const int64_t n = problem.n, k = problem.k;
    const size_t expert_elements = size_t(n) * k;
    const bool read_all_empty = size_t(routing.experts) * expert_elements * (fp32 ? 4 : 2) <= (size_t(256) << 20);
    auto read = [&](size_t offset, size_t count) {
        if (fp32) return download<float>(out, offset, count);
        return to_floats(problem.dtype, download<uint16_t>(out, offset, count));
    };
    ErrorSum error;
    std::mutex mutex;
    int64_t empty_experts = 0, empty_checked = 0, empty_nonzero = 0;
    for (int e = 0; e < routing.experts; ++e) {
        const size_t base = size_t(e) * expert_elements;
        if (routing.m_sizes[e] == 0) {
            ++empty_experts;
            std::vector<float> values;
            if (read_all_empty) {
                values = read(base, expert_elements);
            } else {
                for (int64_t row : {int64_t(0), n / 2, n - 1}) {
                    const auto part = read(base + size_t(row) * k, size_t(k));
                    values.insert(values.end(), part.begin(), part.end());
                }
            }
            empty_checked += int64_t(values.size());
            for (float value : values) empty_nonzero += value != 0.0f;  // NaN counts too
            continue;
        }
        const std::vector<float> values = read(base, expert_elements);
        parallel_for(n, [&](int64_t begin, int64_t end) {
            ErrorSum local;
            std::vector<double> ref(k);
            for (int64_t c = begin; c < end; ++c) {
                reference_dw_row(problem, routing, dy, x, e, c, ref.data());
                for (int64_t i = 0; i < k; ++i) local.add(values[c * k + i], ref[i]);
            }
            std::lock_guard lock(mutex);
            error.merge(local);
        });
    }
    const double limit = fp32 ? kFp32Tolerance : tolerance(problem.dtype);
    INFO((fp32 ? "dw fp32" : "dw") << ": relative error " << error.relative() << " (limit " << limit
                                   << "), non-finite " << error.nonfinite << " of " << error.count << "; "
                                   << empty_experts << " empty experts, " << empty_nonzero << " of " << empty_checked
                                   << " checked elements not zero");
    CHECK(error.nonfinite == 0);
    CHECK(error.relative() < limit);
    CHECK(empty_nonzero == 0);
}

// Runs the requested passes of GroupedGemm(forward problem with `flags`) on fresh random data and
// checks each against float64. A set with fuse_mul_post expects dw to throw.
// `config` forces one tiling (and with it the kernel path) on every pass; empty: the library's choice.
// `device_m_sizes`, where given, goes to the device in place of routing.m_sizes (bad sizes that
// must act as the routing's own); given empty, the call passes no m_sizes (one expert).
void check_passes(DType dtype, int64_t n, int64_t k, const HostRouting& routing, const Flags& flags, unsigned passes,
                  const std::string& config = "", const std::vector<int>* device_m_sizes = nullptr) {
    const Problem problem = make_problem(dtype, n, k, routing.experts, routing.topk, flags);
    const GroupedGemm gemm(problem, config);
    const int64_t rows = routing.rows(), tokens = routing.tokens;
    INFO(to_spec(gemm.problem()) << " [" << flags.name << "] T " << tokens << ", M " << rows << ", seed "
                                 << test_seed() << ", fwd config " << gemm.config(Op::fwd, rows) << ", dw config "
                                 << gemm.config(Op::dw, rows));
    const double limit = tolerance(dtype);

    const bool gathers = flags.permute_x || flags.permute_y || flags.fuse_mul_post;
    const DeviceBuffer m_sizes = upload(device_m_sizes ? *device_m_sizes : routing.m_sizes),
                       gather_idx = upload(routing.gather_idx),
                       topk_weights = upload(routing.topk_weights);
    const bool no_m_sizes = device_m_sizes != nullptr && device_m_sizes->empty();
    const Routing device_routing{no_m_sizes ? 0 : m_sizes.get(), gathers ? gather_idx.get() : 0,
                                 flags.fuse_mul_post ? topk_weights.get() : 0, rows};

    // X [T, K] with permute_x, else [M, K] in routed order; dY [M, N] (slot order with permute_y).
    const int64_t x_rows = flags.permute_x ? tokens : rows;
    const auto x_bits = random_halves(dtype, size_t(x_rows) * k);
    const auto x = to_doubles(dtype, x_bits);
    const DeviceBuffer x_device = upload(x_bits);
    HostWeights weights;
    DeviceBuffer w_device;
    if (passes & (kFwd | kDx)) {
        weights = random_weights(dtype, n, k, routing);
        w_device = upload_weights(weights);
    }
    std::vector<double> dy;
    DeviceBuffer dy_device;
    if (passes & (kDx | kDw | kDw32)) {
        const auto dy_bits = random_halves(dtype, size_t(rows) * n);
        dy = to_doubles(dtype, dy_bits);
        dy_device = upload(dy_bits);
    }

    if (passes & kFwd) {
        const int64_t y_cols = flags.gated ? n / 2 : n;
        const ForwardReference ref = rows > 0 ? reference_forward(problem, routing, weights, x) : ForwardReference{};
        // Gated: the inference kernel, and the training kernel that also saves the preactivation.
        for (int with_preactivation = 0; with_preactivation <= (flags.gated ? 1 : 0); ++with_preactivation) {
            std::optional<GroupedGemm> saving_gemm;
            if (with_preactivation) {
                Problem saving = problem;
                saving.saves_preactivation = true;
                saving_gemm.emplace(saving, config);
            }
            const GroupedGemm& forward_gemm = with_preactivation ? *saving_gemm : gemm;
            DeviceBuffer y = poisoned(size_t(rows) * y_cols), preactivation = poisoned(size_t(rows) * n);
            forward_gemm.forward(x_device.get(), w_device.get(), y.get(), device_routing, nullptr,
                                 with_preactivation ? preactivation.get() : 0);
            synchronize();
            if (rows == 0) {
                CHECK(count_not_poison(y, 8) == 0);
                CHECK(count_not_poison(preactivation, 8) == 0);
                continue;
            }
            check_half_output(with_preactivation ? "forward y (with preactivation)" : "forward y", dtype, y, ref.y,
                              limit);
            if (with_preactivation) check_half_output("forward preactivation", dtype, preactivation, ref.preactivation, limit);
        }
    }

    if (passes & kDx) {
        DeviceBuffer dx = poisoned(size_t(rows) * k);
        gemm.dx(dy_device.get(), w_device.get(), dx.get(), device_routing, nullptr);
        synchronize();
        if (rows == 0) {
            CHECK(count_not_poison(dx, 8) == 0);
        } else {
            const auto ref = reference_dx(problem, routing, weights, dy);
            check_half_output("dx", dtype, dx, ref, limit);
            if (flags.permute_x) {  // per-slot dX, summed over top-k
                DeviceBuffer combined = poisoned(size_t(tokens) * k);
                combine_topk(dtype, k, routing.topk, dx.get(), combined.get(), tokens, nullptr);
                synchronize();
                check_half_output("combine_topk(dx)", dtype, combined, reference_combine(ref, tokens, routing.topk, k),
                                  limit);
            }
        }
    }

    for (bool fp32 : {false, true}) {
        if (!(passes & (fp32 ? kDw32 : kDw))) continue;
        INFO("dw, fp32 output " << fp32);
        const size_t halves = size_t(routing.experts) * n * k * (fp32 ? 2 : 1);
        DeviceBuffer dw = poisoned(halves);
        if (flags.fuse_mul_post) {  // an inference fusion: the caller scales dY instead
            CHECK_THROWS_AS(gemm.dw(dy_device.get(), x_device.get(), dw.get(), device_routing, nullptr, fp32), Error);
            synchronize();
            CHECK(count_not_poison(dw, std::min<size_t>(halves, 4096)) == 0);
            continue;
        }
        gemm.dw(dy_device.get(), x_device.get(), dw.get(), device_routing, nullptr, fp32);
        synchronize();
        check_dw(problem, routing, dw, fp32, dy, x);
    }
}

// The flag sets of a training step: first GEMM (gated, permute_x), second GEMM (permute_y with
// fuse_mul_post for inference; dw of permute_y alone), and the plain GEMM.
void check_training_flag_sets(DType dtype, int64_t n, int64_t k, const HostRouting& routing) {
    check_passes(dtype, n, k, routing, kNone, kFwd | kDx | kDw);
    check_passes(dtype, n, k, routing, kGatedPermuteX, kFwd | kDx | kDw | kDw32);
    check_passes(dtype, n, k, routing, kPermuteYMulPost, kFwd | kDx | kDw);  // dw: expects the throw
    check_passes(dtype, n, k, routing, kPermuteY, kDw);
}

// 8 experts, top-2, 301 tokens (M = 602); expert 5 never chosen (an empty expert); about half of
// the tokens put expert 0 first.
HostRouting routing_with_an_empty_expert() {
    std::vector<int> allowed = all_experts(8);
    allowed.erase(allowed.begin() + 5);
    return make_routing(8, 2, random_choices(301, 2, allowed, 0, 0.5));
}

// The device's arch where the Hopper kernels are to be tested (sm_90a); elsewhere a warning and
// nothing. gpu_portable_gemm (the portable kernels forced by MOEJIT_KERNEL_PATH) skips the cases
// that name Hopper configs: a named config ignores the path, so they would run the Hopper kernels a
// second time (and compile them cold).
std::optional<Arch> hopper_device_arch() {
    const char* forced = std::getenv("MOEJIT_KERNEL_PATH");
    if (forced != nullptr && std::string(forced) == "portable") {
        WARN("MOEJIT_KERNEL_PATH=portable: the Hopper kernels are tested by the default run");
        return std::nullopt;
    }
    const Arch arch = GroupedGemm(make_problem(DType::bf16, 208, 136, 8, 2, kNone)).problem().arch;
    if (arch.sm() == 90) return arch;
    WARN("not an sm_90a device: no Hopper kernels to test");
    return std::nullopt;
}

}  // namespace

TEST_CASE("passes: every allowed flag combination, forward, dX and dW, bf16 and fp16", "[gpu][gemm]") {
    for (DType dtype : {DType::bf16, DType::fp16}) {
        // N and K are not multiples of the tiles.
        const HostRouting routing = routing_with_an_empty_expert();
        for (const Flags& flags : kAllFlagSets) check_passes(dtype, 208, 136, routing, flags, kFwd | kDx | kDw | kDw32);
    }
}

TEST_CASE("passes: the Hopper path is chosen on sm_90a for every pass and row count", "[gpu][gemm][hopper]") {
    const Problem problem = make_problem(DType::bf16, 1536, 2048, 128, 8, kGatedPermuteX);
    const GroupedGemm gemm(problem);
    const bool hopper_device = gemm.problem().arch.sm() == 90;
    const char* forced = std::getenv("MOEJIT_KERNEL_PATH");
    const bool portable_forced = forced != nullptr && std::string(forced) == "portable";
    for (Op op : {Op::fwd, Op::dx, Op::dw})
        for (int64_t rows : {int64_t(16), int64_t(512), int64_t(8192 * 8)}) {
            const std::string config = gemm.config(op, rows);
            INFO(to_string(op) << " with " << rows << " rows: " << config << " on " << gemm.problem().arch.name());
            CHECK((config.rfind("h:", 0) == 0) == (hopper_device && !portable_forced));
        }
    if (hopper_device && !portable_forced) {  // decode-sized calls take the narrow, deep-ring variant
        CHECK(gemm.config(Op::fwd, 16).rfind("h:m64", 0) == 0);
        CHECK(gemm.config(Op::fwd, 8192 * 8).rfind("h:m128", 0) == 0);
    }
}

TEST_CASE("passes: every Hopper tuning candidate matches float64", "[gpu][gemm][hopper]") {
    const std::optional<Arch> hopper = hopper_device_arch();
    if (!hopper) return;
    const HostRouting routing = routing_with_an_empty_expert();
    Problem forward = make_problem(DType::bf16, 208, 136, 8, 2, kGatedPermuteX);
    forward.arch = *hopper;
    for (const Config& config : candidate_configs(forward)) {
        INFO("config " << config.to_string());
        check_passes(DType::bf16, 208, 136, routing, kGatedPermuteX, kFwd | kDx | kDw | kDw32, config.to_string());
        check_passes(DType::bf16, 208, 136, routing, kPermuteYMulPost, kFwd | kDx, config.to_string());
        check_passes(DType::bf16, 208, 136, routing, kPermuteY, kDw, config.to_string());
        check_passes(DType::fp16, 208, 136, routing, kNone, kFwd | kDx | kDw32, config.to_string());
    }
}

TEST_CASE("passes: 64-wide tiles (at most 64 output columns: routers) match float64", "[gpu][gemm][hopper]") {
    const std::optional<Arch> hopper = hopper_device_arch();
    if (!hopper) return;
    // A router's forward ([T, H] x [H, E], one "expert", top-1) with 16 and 40 outputs (TMA fills
    // the weight box's rows past N with zeros), and grouped experts with scattered outputs.
    const HostRouting router = make_routing(1, 1, random_choices(300, 1, all_experts(1)));
    const HostRouting grouped = make_routing(8, 2, random_choices(150, 2, all_experts(8)));
    Problem forward = make_problem(DType::bf16, 16, 136, 1, 1, kNone);
    forward.arch = *hopper;
    bool offered = false;  // the tuner offers n64 for such outputs
    for (const Config& config : candidate_configs(forward)) offered = offered || config.tile_n == 64;
    CHECK(offered);
    for (const char* config : {"h:m64n64s8", "h:m128n64s4"}) {
        INFO("config " << config);
        check_passes(DType::bf16, 16, 136, router, kNone, kFwd | kDx, config);
        check_passes(DType::fp16, 40, 200, router, kNone, kFwd, config);
        check_passes(DType::bf16, 64, 72, grouped, kPermuteYMulPost, kFwd | kDx, config);
    }
}

TEST_CASE("passes: 192x192 tiles (three consumer warpgroups) match float64", "[gpu][gemm][hopper]") {
    if (!hopper_device_arch()) return;
    // About 86 rows an expert (one partial m tile each) and about 430 (three m tiles, the last
    // partial, so some tiles leave a consumer's 64 rows past the expert's end); n208 and k136 leave
    // a partial n tile of 16 columns in both passes.
    std::vector<int> allowed = all_experts(8);
    allowed.erase(allowed.begin() + 5);
    const HostRouting few_rows = routing_with_an_empty_expert();
    const HostRouting more_rows = make_routing(8, 2, random_choices(1501, 2, allowed, 0, 0.5));
    for (const char* config : {"h:m192n192s4", "h:m192n192s3"}) {
        INFO("config " << config);
        for (const Flags& flags : {kNone, kPermuteX, kPermuteY, kPermuteYMulPost})
            check_passes(DType::bf16, 208, 136, few_rows, flags, kFwd | kDx, config);
        check_passes(DType::fp16, 400, 200, more_rows, kNone, kFwd | kDx, config);
        check_passes(DType::bf16, 400, 200, more_rows, kPermuteX, kFwd | kDx, config);
        check_passes(DType::bf16, 400, 200, more_rows, kPermuteYMulPost, kFwd | kDx, config);
    }
}

TEST_CASE("passes: swapped operands (routed rows on wgmma's N side) match float64", "[gpu][gemm][hopper]") {
    if (!hopper_device_arch()) return;
    // Experts of every wgmma width the kernels issue (256 alone, then tails of 32 and, m320, 64
    // rows), at each width's edges, split into two to six blocks of rows (530, 700, 1500), empty and
    // single-row experts; n208 and k136 leave partial tiles of output columns and reduction in both
    // passes. m288 loads rows in boxes of 144 and stages its output 32 rows at a time.
    const std::vector<int> sizes{0,   1,   17,  136, 137, 200, 256, 257, 272, 273, 288,
                                 289, 300, 305, 320, 321, 530, 700, 1500};
    const HostRouting routing = make_routing(int(sizes.size()), 1, choices_from_sizes(sizes));
    const HostRouting top2 = make_routing(8, 2, random_choices(1501, 2, all_experts(8)));
    for (const char* config : {"h:m320n128s3swap", "h:m288n128s4swap"}) {
        INFO("config " << config);
        const GroupedGemm gemm(make_problem(DType::bf16, 208, 136, routing.experts, 1, kNone), config);
        CHECK(gemm.config(Op::fwd, routing.rows()) == config);
        CHECK(gemm.config(Op::dx, routing.rows()) == config);
        check_passes(DType::bf16, 208, 136, routing, kNone, kFwd | kDx, config);
        check_passes(DType::fp16, 208, 136, routing, kNone, kFwd | kDx, config);
        check_passes(DType::bf16, 136, 72, routing, kNone, kFwd | kDx, config);
        // Scattered and scaled rows (the routed rows are shuffled tokens, so slot order is a
        // permutation of them): the forward's permute_y, with and without the routing weights, and
        // dX's permute_x swap too; the other pass of each gathers and keeps 128-row tiles. Top-2
        // routing (about 190 rows a block) has slots apart from tokens.
        for (const Flags& flags : {kPermuteX, kPermuteY, kPermuteYMulPost}) {
            const GroupedGemm fused(make_problem(DType::bf16, 208, 136, routing.experts, 1, flags), config);
            CHECK((fused.config(Op::fwd, routing.rows()) == config) == !flags.permute_x);
            CHECK((fused.config(Op::dx, routing.rows()) == config) == flags.permute_x);
            check_passes(DType::bf16, 208, 136, routing, flags, kFwd | kDx, config);
            check_passes(DType::fp16, 136, 72, top2, flags, kFwd | kDx, config);
        }
    }
    // More tiles than multiprocessors (40 experts of 250-288 rows by five n tiles in both passes), so
    // that CTAs run several tiles and each refills its row tables after the last tile's epilogue.
    std::vector<int> many(40);
    for (size_t e = 0; e < many.size(); ++e) many[e] = 250 + int(e * 37 % 39);
    const HostRouting many_tiles = make_routing(int(many.size()), 1, choices_from_sizes(many));
    for (const Flags& flags : {kPermuteX, kPermuteYMulPost})
        check_passes(DType::bf16, 520, 520, many_tiles, flags, kFwd | kDx, "h:m288n128s4swap");
    // The heuristic takes them by itself at 241-288 rows an expert (mean), for the passes whose
    // rows come by TMA: not the forward's permute_x (gated or not), not dX's permute_y.
    const std::vector<int> medium{250, 300, 230, 280, 290, 260, 240, 270};  // 2120 rows: 265 an expert
    const HostRouting routed = make_routing(int(medium.size()), 1, choices_from_sizes(medium));
    for (const Flags& flags : {kNone, kPermuteX, kPermuteYMulPost, kGatedPermuteX}) {
        const GroupedGemm gemm(make_problem(DType::bf16, 208, 136, routed.experts, 1, flags));
        CHECK((gemm.config(Op::fwd, routed.rows()) == "h:m288n128s4swap") == !flags.permute_x);
        CHECK((gemm.config(Op::dx, routed.rows()) == "h:m288n128s4swap") == !flags.permute_y);
        if (!flags.permute_x) CHECK(gemm.config(Op::fwd, 2 * routed.rows()) == "h:m128n256s4");
        check_passes(DType::bf16, 208, 136, routed, flags, kFwd | kDx);
    }
}

TEST_CASE("passes: dW in CTA clusters (pairs and fours along N) matches float64", "[gpu][gemm][hopper]") {
    const std::optional<Arch> hopper = hopper_device_arch();
    if (!hopper) return;
    const HostRouting routing = routing_with_an_empty_expert();
    // n512: four N tiles of 128 an expert, so a cluster's tiles share X slices (the second K tile
    // is 8 columns wide). n208: two N tiles an expert, so a cluster of four spans two experts with
    // different row counts and walks the ring through the longer one's slices.
    for (int64_t n : {512, 208}) {
        Problem dw = make_problem(DType::bf16, n, 264, 8, 2, kNone);
        dw.op = Op::dw;
        dw.arch = *hopper;
        for (const char* cluster : {"c2", "c4"}) {
            const Config config = Config::parse(std::string("h:m128n256s4") + cluster);
            REQUIRE_NOTHROW(check_config(dw, config));
            INFO("config " << config.to_string());
            check_passes(DType::bf16, n, 264, routing, kNone, kDw | kDw32, config.to_string());
            check_passes(DType::bf16, n, 264, routing, kPermuteY, kDw, config.to_string());
            check_passes(DType::fp16, n, 264, routing, kNone, kDw32, config.to_string());
        }
    }
}

TEST_CASE("passes: dW in 32-row stages matches float64", "[gpu][gemm][hopper]") {
    const std::optional<Arch> hopper = hopper_device_arch();
    if (!hopper) return;
    // About 75 rows an expert: every expert ends inside a 32-row stage, gathered with zeros past its end.
    const HostRouting routing = routing_with_an_empty_expert();
    for (const char* config : {"h:m128n256s8k32", "h:m64n128s8k32", "h:m128n256s8k32c2"}) {
        INFO("config " << config);
        check_passes(DType::bf16, 512, 264, routing, kNone, kDw | kDw32, config);
        check_passes(DType::bf16, 512, 264, routing, kPermuteY, kDw, config);
        check_passes(DType::fp16, 512, 264, routing, kNone, kDw32, config);
        if (Config::parse(config).cluster == 1) check_passes(DType::bf16, 208, 136, routing, kGatedPermuteX, kDw, config);
    }
}

TEST_CASE("passes: dW tiles in both orders (experts above and below the K-fastest row limit) match float64",
          "[gpu][gemm][hopper]") {
    // Single CTAs take an expert's tiles K-fastest up to 1024 rows and in bands of 16 N tiles
    // beyond (sm90_grouped_gemm_dw.cuh, WeightGradTile), so experts of 1025 and 1500 rows take
    // bands and those of 1024 and 300 rows K-fastest, in one launch. n520 x k520: 5 x 3 tiles of
    // 128x256 or 9 x 5 of 64x128 an expert, one band; n2120 x k264: 17 x 2 or 34 x 3, a full band
    // and a partial one.
    const std::optional<Arch> hopper = hopper_device_arch();
    if (!hopper) return;
    const HostRouting routing = make_routing(5, 1, choices_from_sizes({1025, 1024, 300, 0, 1500}));
    for (const auto& [n, k] : {std::pair<int64_t, int64_t>{520, 520}, {2120, 264}})
        for (const char* config : {"h:m64n128s8", "h:m128n256s4"}) {
            INFO("config " << config);
            check_passes(DType::bf16, n, k, routing, kNone, kDw | kDw32, config);
            check_passes(DType::bf16, n, k, routing, kPermuteY, kDw, config);
        }
}

TEST_CASE("passes: fp32 dW staging a whole tile row beside 32-row stages matches float64", "[gpu][gemm][hopper]") {
    // Four or three 24 KB stages leave room for eight 8 KB staging boxes a consumer: a 64 x 256 fp32
    // row goes out without waiting on its own boxes. 512 experts of about 9 rows (dozens of tiles a
    // CTA, so every box buffer is reused, and empty experts' zero tiles), then about 75 rows with an
    // empty expert; n520 x k264 leaves partial tiles.
    const std::optional<Arch> hopper = hopper_device_arch();
    if (!hopper) return;
    for (const HostRouting& routing :
         {make_routing(512, 8, random_choices(600, 8, all_experts(512))), routing_with_an_empty_expert()})
        for (const char* config : {"h:m128n256s4k32", "h:m128n256s3k32"}) {
            INFO("config " << config << ", " << routing.experts << " experts");
            check_passes(DType::bf16, 520, 264, routing, kNone, kDw32, config);
            check_passes(DType::fp16, 520, 264, routing, kPermuteX, kDw32, config);
        }
}

TEST_CASE("passes: dW with 512 experts (one staging box a warpgroup) matches float64", "[gpu][gemm][hopper]") {
    // 512 experts' row offsets leave room for one 8 KB staging box beside four 128x256 stages, not
    // two (codegen/config.cpp, dw_staging_boxes); 256 experts take two.
    const HostRouting routing = make_routing(512, 8, random_choices(600, 8, all_experts(512)));
    check_passes(DType::bf16, 512, 264, routing, kNone, kDw | kDw32);
    check_passes(DType::bf16, 208, 136, routing, kGatedPermuteX, kDw);
}

TEST_CASE("passes: a tile-claiming forward on two streams at once matches one on the default stream", "[gpu][gemm][hopper]") {
    // Hopper kernels that gather A into 128-row tiles claim tiles from a counter the library keeps
    // per stream (templates/scheduler/tile_queue.cuh); launches on two streams must not share one.
    const DType dtype = DType::bf16;
    const int64_t n = 1024, k = 256;
    const HostRouting routing = make_routing(16, 4, random_choices(2048, 4, all_experts(16)));
    const Problem problem = make_problem(dtype, n, k, routing.experts, routing.topk, kPermuteX);
    if (GroupedGemm(problem).problem().arch.sm() != 90) {
        WARN("not an sm_90a device: no Hopper kernels to test");
        return;
    }
    const GroupedGemm gemm(problem, "h:m128n256s3");
    const int64_t rows = routing.rows();
    REQUIRE(claims_tiles(gemm.problem(), Config::parse(gemm.config(Op::fwd, rows))));
    INFO("seed " << test_seed() << ": about " << rows / 128 * (n / 256) / 132 << " tiles a CTA");
    const DeviceBuffer m_sizes = upload(routing.m_sizes), gather_idx = upload(routing.gather_idx);
    const Routing device_routing{m_sizes.get(), gather_idx.get(), 0, rows};
    const DeviceBuffer x = upload(random_halves(dtype, size_t(routing.tokens) * k));
    const DeviceBuffer w = upload_weights(random_weights(dtype, n, k, routing));

    DeviceBuffer expected = poisoned(size_t(rows) * n);
    gemm.forward(x.get(), w.get(), expected.get(), device_routing, nullptr);
    synchronize();
    const auto expected_bits = expected.to_host<uint16_t>();

    const Driver& cu = driver();
    CUstream streams[2] = {nullptr, nullptr};
    for (CUstream& stream : streams) check_cuda(cu.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING), "stream");
    std::vector<DeviceBuffer> outputs;
    for (int launch = 0; launch < 8; ++launch) outputs.push_back(poisoned(size_t(rows) * n));
    for (int launch = 0; launch < 8; ++launch)  // alternating, nothing waits in between
        gemm.forward(x.get(), w.get(), outputs[launch].get(), device_routing, streams[launch % 2]);
    for (CUstream stream : streams) check_cuda(cu.cuStreamSynchronize(stream), "cuStreamSynchronize");
    for (CUstream stream : streams) cu.cuStreamDestroy(stream);
    for (int launch = 0; launch < 8; ++launch) {
        INFO("launch " << launch);
        CHECK(outputs[launch].to_host<uint16_t>() == expected_bits);  // one CTA per output, fixed order: bitwise
    }
}

namespace {

// A tile-claiming GroupedGemm's inputs for routings over 4 experts (X and W sized for routings[1],
// the largest), and each routing's output from a launch of its own, bit for bit.
struct ClaimingRuns {
    static constexpr DType kDtype = DType::bf16;
    DeviceBuffer x, w;
    std::vector<DeviceBuffer> m_sizes, gather_idx;
    std::vector<Routing> routings;              // device routings, as `host`
    std::vector<std::vector<uint16_t>> alone;   // [routing] its output, [M of routings[1], N]
    size_t out_halves = 0;

    ClaimingRuns(const GroupedGemm& gemm, const std::vector<HostRouting>& host) {
        const int64_t n = gemm.problem().n, k = gemm.problem().k;
        REQUIRE(claims_tiles(gemm.problem(), Config::parse(gemm.config(Op::fwd, host[1].rows()))));
        x = upload(random_halves(kDtype, size_t(host[1].rows()) * k));
        w = upload_weights(random_weights(kDtype, n, k, host[1]));
        for (const HostRouting& routing : host) {
            m_sizes.push_back(upload(routing.m_sizes));
            gather_idx.push_back(upload(routing.gather_idx.empty() ? std::vector<int>{0} : routing.gather_idx));
            routings.push_back(Routing{m_sizes.back().get(), gather_idx.back().get(), 0, routing.rows()});
        }
        out_halves = size_t(host[1].rows()) * n;
        for (const Routing& routing : routings) {
            DeviceBuffer y = poisoned(out_halves);
            gemm.forward(x.get(), w.get(), y.get(), routing, nullptr);
            synchronize();
            alone.push_back(y.to_host<uint16_t>());
        }
    }
};

}  // namespace

TEST_CASE("passes: tile-claiming kernels launched back to back with different tile counts match each alone",
          "[gpu][gemm][hopper]") {
    // Each launch leaves its claim counters at zero for the next (templates/scheduler/tile_queue.cuh):
    // nothing clears them in between. Two routings of one GroupedGemm with different tile counts,
    // and one with no rows, alternate on one stream with no synchronization; every output must be
    // the one its routing gives in a launch of its own. A counter left over from the launch before
    // makes the CTAs skip tiles (their outputs stay poisoned) or claim past the end.
    if (!hopper_device_arch()) return;
    const DType dtype = DType::bf16;
    const int64_t n = 2072, k = 264;  // "many": more tiles than multiprocessors in both kernels, so CTAs claim
    struct Case {
        const char* config;
        Flags flags;
    };
    for (const Case& c : {Case{"h:m128n256s3", kPermuteX}, Case{"h:m288n128s4swap", kNone}}) {
        INFO("config " << c.config);
        const std::vector<int> few{300, 0, 280, 17}, many{900, 260, 1000, 290};
        const std::vector<HostRouting> routings{make_routing(4, 1, choices_from_sizes(few)),
                                                make_routing(4, 1, choices_from_sizes(many)),
                                                make_routing(4, 1, choices_from_sizes({0, 0, 0, 0}))};
        const GroupedGemm gemm(make_problem(dtype, n, k, 4, 1, c.flags), c.config);
        const ClaimingRuns runs(gemm, routings);
        const std::vector<std::vector<uint16_t>>& expected = runs.alone;
        const std::vector<int> order{0, 1, 1, 0, 2, 0, 1, 2, 2, 1, 0, 0};
        std::vector<DeviceBuffer> outputs;
        for (size_t i = 0; i < order.size(); ++i) outputs.push_back(poisoned(runs.out_halves));
        for (size_t i = 0; i < order.size(); ++i)
            gemm.forward(runs.x.get(), runs.w.get(), outputs[i].get(), runs.routings[order[i]], nullptr);
        synchronize();
        for (size_t i = 0; i < order.size(); ++i) {
            INFO("launch " << i << ", routing " << order[i]);
            CHECK(outputs[i].to_host<uint16_t>() == expected[order[i]]);
        }
        // The launches of their own wrote every routed row and nothing past them (their values
        // against float64 are the other test cases' business).
        for (int r = 0; r < 3; ++r) {
            const auto written = std::count_if(expected[r].begin(), expected[r].end(),
                                               [](uint16_t value) { return value != kPoison; });
            CHECK(written == routings[r].rows() * n);
        }
    }
}

TEST_CASE("passes: a captured tile-claiming launch replayed beside eager launches of the same GroupedGemm matches "
          "each alone",
          "[gpu][gemm][hopper]") {
    // A captured launch takes claim counters of its own (moe/grouped_gemm.cpp, TileCounters): the
    // graph, replayed on another stream while the GroupedGemm runs eagerly on the stream it was
    // captured on, must give each launch its whole output, with its counters back at zero after
    // every replay. (Before, the captured launch kept that stream's counters. This case passed on
    // that code too, three runs: each CTA's first tile is static, and full grids, one CTA a
    // multiprocessor, mostly wait for each other's CTAs to leave, which they do after their last
    // claim. So two launches sharing a pair rarely interleave their claims; rarely is not never.)
    if (!hopper_device_arch()) return;
    const DType dtype = DType::bf16;
    const int64_t n = 2072, k = 264;  // more tiles than multiprocessors for the graph's routing: its CTAs claim
    const std::vector<int> few{300, 0, 280, 17}, many{900, 260, 1000, 290};
    const GroupedGemm gemm(make_problem(dtype, n, k, 4, 1, kPermuteX), "h:m128n256s3");
    const ClaimingRuns runs(gemm, {make_routing(4, 1, choices_from_sizes(few)),
                                   make_routing(4, 1, choices_from_sizes(many))});
    const std::vector<std::vector<uint16_t>>& expected = runs.alone;
    const size_t out_halves = runs.out_halves;

    const Driver& cu = driver();
    CUstream captured_on = nullptr, replayed_on = nullptr;
    check_cuda(cu.cuStreamCreate(&captured_on, CU_STREAM_NON_BLOCKING), "stream");
    check_cuda(cu.cuStreamCreate(&replayed_on, CU_STREAM_NON_BLOCKING), "stream");
    DeviceBuffer graph_out = poisoned(out_halves);
    CUgraph graph = nullptr;
    CUgraphExec exec = nullptr;
    check_cuda(cu.cuStreamBeginCapture(captured_on, CU_STREAM_CAPTURE_MODE_GLOBAL), "begin capture");
    gemm.forward(runs.x.get(), runs.w.get(), graph_out.get(), runs.routings[1], captured_on);
    check_cuda(cu.cuStreamEndCapture(captured_on, &graph), "end capture");
    check_cuda(cu.cuGraphInstantiate(&exec, graph, 0), "instantiate");

    constexpr int kRounds = 8;
    std::vector<DeviceBuffer> eager_out;
    for (int i = 0; i < kRounds; ++i) eager_out.push_back(poisoned(out_halves));
    std::vector<std::vector<uint16_t>> replayed;
    for (int i = 0; i < kRounds; ++i) {
        graph_out.fill16(kPoison);
        synchronize();
        check_cuda(cu.cuGraphLaunch(exec, replayed_on), "graph launch");
        gemm.forward(runs.x.get(), runs.w.get(), eager_out[i].get(), runs.routings[i % 2], captured_on);
        check_cuda(cu.cuStreamSynchronize(replayed_on), "sync");
        check_cuda(cu.cuStreamSynchronize(captured_on), "sync");
        replayed.push_back(graph_out.to_host<uint16_t>());
    }
    for (int i = 0; i < kRounds; ++i) {
        INFO("round " << i);
        CHECK(replayed[i] == expected[1]);
        CHECK(eager_out[i].to_host<uint16_t>() == expected[i % 2]);
    }
    cu.cuGraphExecDestroy(exec);
    cu.cuGraphDestroy(graph);
    cu.cuStreamDestroy(captured_on);
    cu.cuStreamDestroy(replayed_on);
}

TEST_CASE("passes: routing edge cases, top-1/2/8, 1 to 256 experts, empty experts, M = 0", "[gpu][gemm]") {
    const DType dtype = DType::bf16;
    const int64_t n = 208, k = 136;
    SECTION("one expert, top-1, 37 tokens") {
        check_training_flag_sets(dtype, n, k, make_routing(1, 1, random_choices(37, 1, all_experts(1))));
    }
    SECTION("8 experts, top-2, 37 tokens") {
        check_training_flag_sets(dtype, n, k, make_routing(8, 2, random_choices(37, 2, all_experts(8))));
    }
    SECTION("64 experts, top-8, every first choice expert 0, experts 10..19 never chosen") {
        std::vector<int> allowed;
        for (int e = 0; e < 64; ++e)
            if (e < 10 || e > 19) allowed.push_back(e);
        check_training_flag_sets(dtype, n, k, make_routing(64, 8, random_choices(100, 8, allowed, 0)));
    }
    SECTION("256 experts, top-8, 5 tokens: most experts empty") {
        check_training_flag_sets(dtype, n, k, make_routing(256, 8, random_choices(5, 8, all_experts(256))));
    }
    SECTION("64 experts, top-2, 2048 tokens on the first 16: most of dW is empty experts' zeros") {
        // About 256 rows for each of the first 16 experts, dW tiles clipped at N = 528 and K = 1032;
        // the 48 empty experts' zero tiles follow the busy ones in every CTA's rounds.
        std::vector<int> first_quarter;
        for (int e = 0; e < 16; ++e) first_quarter.push_back(e);
        check_training_flag_sets(dtype, 528, 1032, make_routing(64, 2, random_choices(2048, 2, first_quarter)));
    }
    SECTION("every token on one expert, top-1, 777 tokens") {
        check_training_flag_sets(dtype, n, k, make_routing(16, 1, std::vector<int>(777, 9)));
    }
    SECTION("expert sizes around the tile edge, top-1, fp16") {
        const std::vector<int> sizes{1, 127, 128, 129, 0, 255, 256, 257, 0, 3};
        check_training_flag_sets(DType::fp16, n, k, make_routing(10, 1, choices_from_sizes(sizes)));
    }
    SECTION("no tokens (M = 0): forward and dX write nothing, dW writes zeros") {
        check_training_flag_sets(dtype, n, k, make_routing(8, 2, {}));
    }
}

TEST_CASE("passes: m_sizes past M, even past 2^31 in all, are cut at M", "[gpu][gemm]") {
    // Experts 3, 6 and 7 get no tokens. On the device expert 3's size is -5, and the sizes from
    // the last busy expert (5) on are INT32_MAX, so that they sum past 2^31: a wrapping prefix sum
    // gave negative rows, written some 2^31 rows before Y (an illegal address, which fails the
    // test). The kernels lay the rows end to end and cut them at M (MOEJIT_CHECK_ROUTING=1 would
    // throw instead), which leaves exactly the true routing: expert 5 keeps its rows, 6 and 7 none.
    const HostRouting routing = make_routing(8, 2, random_choices(157, 2, {0, 1, 2, 4, 5}));
    REQUIRE(routing.m_sizes[3] == 0);
    REQUIRE(routing.m_sizes[5] > 0);
    std::vector<int> device_m_sizes = routing.m_sizes;
    device_m_sizes[3] = -5;
    for (int e : {5, 6, 7}) device_m_sizes[e] = std::numeric_limits<int>::max();
    for (const Flags& flags : kAllFlagSets)
        check_passes(DType::bf16, 208, 136, routing, flags, kFwd | kDx | kDw | kDw32, "", &device_m_sizes);
}

TEST_CASE("passes: one expert without m_sizes (a dense GEMM, as the blocks' router runs) matches float64",
          "[gpu][gemm]") {
    // Every pass and flag set on the library's path (Hopper on sm_90a) and on the portable one.
    const HostRouting routing = make_routing(1, 1, random_choices(300, 1, all_experts(1)));
    const std::vector<int> none;
    for (const char* config : {"", "m64n64s4w1x2"})
        for (const Flags& flags : kAllFlagSets)
            check_passes(DType::bf16, 208, 136, routing, flags, kFwd | kDx | kDw | kDw32, config, &none);
}

TEST_CASE("passes: qwen3-30b-a3b gate_up and down shapes, 64 tokens x top-8 of 128", "[gpu][gemm][model]") {
    const HostRouting routing = make_routing(128, 8, random_choices(64, 8, all_experts(128)));
    SECTION("gate_up N 1536 K 2048") { check_passes(DType::bf16, 1536, 2048, routing, kGatedPermuteX, kFwd | kDx | kDw); }
    SECTION("down N 2048 K 768") {
        check_passes(DType::bf16, 2048, 768, routing, kPermuteYMulPost, kFwd | kDx);
        check_passes(DType::bf16, 2048, 768, routing, kPermuteY, kDw32);
    }
}

TEST_CASE("passes: mixtral-8x7b gate_up shape, 12 tokens x top-2 of 8", "[gpu][gemm][model]") {
    // M*N*K = 24 * 28672 * 4096 = 2.8e9 multiply-adds per host reference.
    const HostRouting routing = make_routing(8, 2, random_choices(12, 2, all_experts(8)));
    check_passes(DType::bf16, 28672, 4096, routing, kGatedPermuteX, kFwd | kDx | kDw);
}

TEST_CASE("passes: deepseek-v3 down shape, 8 tokens x top-8 of 256", "[gpu][gemm][model]") {
    // W and dW are [256, 7168, 2048] = 3.8e9 elements: 64-bit offsets on every pass.
    const HostRouting routing = make_routing(256, 8, random_choices(8, 8, all_experts(256)));
    check_passes(DType::bf16, 7168, 2048, routing, kPermuteYMulPost, kFwd | kDx);
    check_passes(DType::bf16, 7168, 2048, routing, kPermuteY, kDw);
}

TEST_CASE("passes: dX and dW index experts past 2^31 weight elements in 64 bits", "[gpu][gemm][model]") {
    // E*N*K = 129 * 4096 * 4096 = 2.16e9 > 2^31. Only experts 0 and 128 have rows; every other
    // expert's W is NaN, so a wrapped offset shows up as NaN, and their dW must be exactly zero.
    std::vector<int> sizes(129, 0);
    sizes[0] = 24;
    sizes[128] = 40;
    const HostRouting routing = make_routing(129, 1, choices_from_sizes(sizes));
    check_passes(DType::bf16, 4096, 4096, routing, kNone, kFwd | kDx | kDw);
}

TEST_CASE("passes: combine_topk sums the top-k slots, deterministically", "[gpu][gemm]") {
    INFO("seed " << test_seed());
    for (DType dtype : {DType::bf16, DType::fp16}) {
        for (const auto& [width, topk, tokens] :
             {std::tuple<int64_t, int, int64_t>{2048, 8, 37}, {776, 2, 300}, {136, 1, 5}, {4096, 8, 1}, {64, 2, 0}}) {
            INFO(to_string(dtype) << " width " << width << " topk " << topk << " tokens " << tokens);
            const auto slots = random_halves(dtype, size_t(tokens) * topk * width);
            const DeviceBuffer slots_device = upload(slots);
            DeviceBuffer first = poisoned(size_t(tokens) * width), second = poisoned(size_t(tokens) * width);
            combine_topk(dtype, width, topk, slots_device.get(), first.get(), tokens, nullptr);
            combine_topk(dtype, width, topk, slots_device.get(), second.get(), tokens, nullptr);
            synchronize();
            if (tokens == 0) {
                CHECK(count_not_poison(first, 8) == 0);
                continue;
            }
            const auto first_bits = download<uint16_t>(first, 0, size_t(tokens) * width);
            const auto second_bits = download<uint16_t>(second, 0, size_t(tokens) * width);
            const bool identical = first_bits == second_bits;  // two runs, bit for bit
            CHECK(identical);
            const auto out = to_floats(dtype, first_bits);
            check_output("combine_topk", out, reference_combine(to_doubles(dtype, slots), tokens, topk, width),
                         tolerance(dtype));
            if (topk == 1) {  // a sum of one term is exact
                const bool exact = out == to_floats(dtype, slots);
                CHECK(exact);
            }
        }
    }
}

TEST_CASE("passes: gated_activation_backward matches float64", "[gpu][gemm]") {
    INFO("seed " << test_seed());
    for (DType dtype : {DType::bf16, DType::fp16}) {
        for (const auto& [half, rows] : {std::pair<int64_t, int64_t>{8, 1}, {768, 37}, {1536, 300}, {104, 0}}) {
            const int64_t n = 2 * half;
            INFO(to_string(dtype) << " N " << n << " rows " << rows);
            const auto preactivation = random_halves(dtype, size_t(rows) * n, -4.0f, 4.0f);
            const auto grad_h = random_halves(dtype, size_t(rows) * half);
            const DeviceBuffer preactivation_device = upload(preactivation), grad_h_device = upload(grad_h);
            DeviceBuffer out = poisoned(size_t(rows) * n);
            gated_activation_backward(dtype, n, preactivation_device.get(), grad_h_device.get(), out.get(), rows,
                                      nullptr);
            synchronize();
            if (rows == 0) {
                CHECK(count_not_poison(out, 8) == 0);
                continue;
            }
            check_half_output("d(gate|up)", dtype, out,
                              reference_gated_backward(to_doubles(dtype, preactivation), to_doubles(dtype, grad_h), rows, n),
                              tolerance(dtype));
        }
    }
}

namespace {

// A gated MoE MLP in float64: out[t] = sum_j topk_weight[s] * W_down[e] @ (silu(g) * up),
// gate|up = W_gate_up[e] @ X[t], s = t*topk + j, e = the expert of slot s; loss = sum(out * R).
struct Mlp {
    const HostRouting* routing;
    int64_t hidden, inter;
    std::vector<double> topk_weights;  // [M] slot order
    std::vector<double> r;             // [T, H]
};
struct MlpTensors {
    std::vector<double> x;          // [T, H]
    std::vector<double> w_gate_up;  // [E, 2I, H]
    std::vector<double> w_down;     // [E, H, I]
};

// gate|up [2I] and h [I] of slot s.
void mlp_slot(const Mlp& mlp, const MlpTensors& p, int64_t s, std::vector<double>& a, std::vector<double>& h) {
    const int64_t H = mlp.hidden, I = mlp.inter, t = s / mlp.routing->topk;
    const int e = mlp.routing->choice[s];
    for (int64_t c = 0; c < 2 * I; ++c) {
        double sum = 0;
        for (int64_t i = 0; i < H; ++i) sum += p.w_gate_up[(e * 2 * I + c) * H + i] * p.x[t * H + i];
        a[c] = sum;
    }
    for (int64_t c = 0; c < I; ++c) h[c] = silu(a[c]) * a[I + c];
}

std::vector<double> mlp_forward(const Mlp& mlp, const MlpTensors& p) {
    const int64_t H = mlp.hidden, I = mlp.inter, topk = mlp.routing->topk;
    std::vector<double> out(size_t(mlp.routing->tokens) * H, 0.0), a(2 * I), h(I);
    for (int64_t s = 0; s < mlp.routing->rows(); ++s) {
        mlp_slot(mlp, p, s, a, h);
        const int e = mlp.routing->choice[s];
        for (int64_t c = 0; c < H; ++c) {
            double y = 0;
            for (int64_t i = 0; i < I; ++i) y += p.w_down[(e * H + c) * I + i] * h[i];
            out[(s / topk) * H + c] += mlp.topk_weights[s] * y;
        }
    }
    return out;
}

double mlp_loss(const Mlp& mlp, const MlpTensors& p) {
    const auto out = mlp_forward(mlp, p);
    double loss = 0;
    for (size_t i = 0; i < out.size(); ++i) loss += out[i] * mlp.r[i];
    return loss;
}

// d loss / d(x, w_gate_up, w_down), analytically.
MlpTensors mlp_gradients(const Mlp& mlp, const MlpTensors& p) {
    const int64_t H = mlp.hidden, I = mlp.inter, topk = mlp.routing->topk;
    MlpTensors grad{std::vector<double>(p.x.size(), 0.0), std::vector<double>(p.w_gate_up.size(), 0.0),
                    std::vector<double>(p.w_down.size(), 0.0)};
    std::vector<double> a(2 * I), h(I), dy(H), dh(I), da(2 * I);
    for (int64_t s = 0; s < mlp.routing->rows(); ++s) {
        const int64_t t = s / topk;
        const int e = mlp.routing->choice[s];
        mlp_slot(mlp, p, s, a, h);
        for (int64_t c = 0; c < H; ++c) dy[c] = mlp.topk_weights[s] * mlp.r[t * H + c];
        std::fill(dh.begin(), dh.end(), 0.0);
        for (int64_t c = 0; c < H; ++c)
            for (int64_t i = 0; i < I; ++i) {
                grad.w_down[(e * H + c) * I + i] += dy[c] * h[i];
                dh[i] += p.w_down[(e * H + c) * I + i] * dy[c];
            }
        for (int64_t c = 0; c < I; ++c) {
            const double g = a[c], up = a[I + c], sg = 1.0 / (1.0 + std::exp(-g));
            da[c] = dh[c] * up * sg * (1.0 + g * (1.0 - sg));
            da[I + c] = dh[c] * g * sg;
        }
        for (int64_t c = 0; c < 2 * I; ++c)
            for (int64_t i = 0; i < H; ++i) {
                grad.w_gate_up[(e * 2 * I + c) * H + i] += da[c] * p.x[t * H + i];
                grad.x[t * H + i] += p.w_gate_up[(e * 2 * I + c) * H + i] * da[c];
            }
    }
    return grad;
}

// Largest |fd - grad| / (|grad| + rms(grad)) over `samples` random entries, fd the 4-point central
// difference of the float64 loss (truncation O(eps^4)).
double worst_finite_difference(const Mlp& mlp, MlpTensors p, int tensor, const std::vector<double>& grad, int samples) {
    std::vector<double>& values = tensor == 0 ? p.x : tensor == 1 ? p.w_gate_up : p.w_down;
    double rms = 0;
    for (double value : grad) rms += value * value;
    rms = std::sqrt(rms / double(grad.size()));
    const double eps = 1e-3;
    double worst = 0;
    std::uniform_int_distribution<size_t> pick(0, values.size() - 1);
    for (int sample = 0; sample < samples; ++sample) {
        const size_t index = pick(rng());
        const double saved = values[index];
        auto loss_at = [&](double delta) {
            values[index] = saved + delta;
            return mlp_loss(mlp, p);
        };
        const double fd =
            (8.0 * (loss_at(eps) - loss_at(-eps)) - (loss_at(2 * eps) - loss_at(-2 * eps))) / (12.0 * eps);
        values[index] = saved;
        worst = std::max(worst, std::abs(fd - grad[index]) / (std::abs(grad[index]) + rms));
    }
    return worst;
}

}  // namespace

TEST_CASE("passes: gated MoE MLP gradients through the library match float64 and finite differences", "[gpu][gemm]") {
    // gate_up GroupedGemm (permute_x, gated, preactivation saved) -> down GroupedGemm (permute_y,
    // fuse_mul_post) into slot order -> combine_topk; loss = sum(out * R). Backward with the library:
    // down.dx (gathers dY = R per slot, scales by topk_weights) -> gated_activation_backward ->
    // gate_up.dx (per slot) -> combine_topk = dX; gate_up.dw; down dW through a permute_y GroupedGemm
    // with dY pre-scaled by topk_weights (dw has no fuse_mul_post).
    const int experts = 4, topk = 2;
    const int64_t tokens = 6, H = 32, I = 16, rows = tokens * topk;
    for (DType dtype : {DType::bf16, DType::fp16}) {
        INFO(to_string(dtype) << ", seed " << test_seed());
        const HostRouting routing = make_routing(experts, topk, random_choices(tokens, topk, all_experts(experts)));
        const auto x_bits = random_halves(dtype, size_t(tokens) * H);
        const auto w_gate_up_bits = random_halves(dtype, size_t(experts) * 2 * I * H);
        const auto w_down_bits = random_halves(dtype, size_t(experts) * H * I);
        const auto r_bits = random_halves(dtype, size_t(tokens) * H);
        Mlp mlp{&routing, H, I, std::vector<double>(routing.topk_weights.begin(), routing.topk_weights.end()),
                to_doubles(dtype, r_bits)};
        const MlpTensors tensors{to_doubles(dtype, x_bits), to_doubles(dtype, w_gate_up_bits),
                                 to_doubles(dtype, w_down_bits)};

        Problem gate_up = make_problem(dtype, 2 * I, H, experts, topk, kGatedPermuteX);
        gate_up.saves_preactivation = true;
        Problem down = make_problem(dtype, H, I, experts, topk, kPermuteYMulPost);
        Problem down_for_dw = make_problem(dtype, H, I, experts, topk, kPermuteY);
        const GroupedGemm gate_up_gemm(gate_up), down_gemm(down), down_dw_gemm(down_for_dw);

        const DeviceBuffer m_sizes = upload(routing.m_sizes), gather_idx = upload(routing.gather_idx),
                           topk_weights = upload(routing.topk_weights);
        const Routing device_routing{m_sizes.get(), gather_idx.get(), topk_weights.get(), rows};
        const DeviceBuffer x = upload(x_bits), w_gate_up = upload(w_gate_up_bits), w_down = upload(w_down_bits);

        // Forward.
        DeviceBuffer h = poisoned(rows * I), preactivation = poisoned(rows * 2 * I), y_slots = poisoned(rows * H),
                     out = poisoned(tokens * H);
        gate_up_gemm.forward(x.get(), w_gate_up.get(), h.get(), device_routing, nullptr, preactivation.get());
        down_gemm.forward(h.get(), w_down.get(), y_slots.get(), device_routing, nullptr);
        combine_topk(dtype, H, topk, y_slots.get(), out.get(), tokens, nullptr);

        // Backward. dOut = R; per slot s: dY[s] = R[s / topk], and pre-scaled for dW_down.
        std::vector<uint16_t> dy_slots(rows * H), dy_slots_scaled(rows * H);
        for (int64_t s = 0; s < rows; ++s)
            for (int64_t c = 0; c < H; ++c) {
                dy_slots[s * H + c] = r_bits[(s / topk) * H + c];
                dy_slots_scaled[s * H + c] = to_half(dtype, float(mlp.r[(s / topk) * H + c] * mlp.topk_weights[s]));
            }
        const DeviceBuffer dy_slots_device = upload(dy_slots), dy_slots_scaled_device = upload(dy_slots_scaled);
        DeviceBuffer dh = poisoned(rows * I), d_gate_up = poisoned(rows * 2 * I), dx_slots = poisoned(rows * H),
                     dx = poisoned(tokens * H), dw_gate_up = poisoned(experts * 2 * I * H),
                     dw_down = poisoned(experts * H * I * 2);  // fp32
        down_gemm.dx(dy_slots_device.get(), w_down.get(), dh.get(), device_routing, nullptr);
        gated_activation_backward(dtype, 2 * I, preactivation.get(), dh.get(), d_gate_up.get(), rows, nullptr);
        gate_up_gemm.dx(d_gate_up.get(), w_gate_up.get(), dx_slots.get(), device_routing, nullptr);
        combine_topk(dtype, H, topk, dx_slots.get(), dx.get(), tokens, nullptr);
        gate_up_gemm.dw(d_gate_up.get(), x.get(), dw_gate_up.get(), device_routing, nullptr);
        down_dw_gemm.dw(dy_slots_scaled_device.get(), h.get(), dw_down.get(), device_routing, nullptr, true);
        synchronize();

        const MlpTensors grad = mlp_gradients(mlp, tensors);
        check_half_output("out", dtype, out, mlp_forward(mlp, tensors), tolerance(dtype));
        check_half_output("dX", dtype, dx, grad.x, 2e-2);
        check_half_output("dW_gate_up", dtype, dw_gate_up, grad.w_gate_up, 2e-2);
        check_output("dW_down (fp32)", download<float>(dw_down, 0, grad.w_down.size()), grad.w_down, 2e-2);

        // The float64 gradients themselves, against finite differences of the float64 loss.
        const char* names[] = {"x", "w_gate_up", "w_down"};
        const std::vector<double>* grads[] = {&grad.x, &grad.w_gate_up, &grad.w_down};
        for (int tensor = 0; tensor < 3; ++tensor) {
            const double worst = worst_finite_difference(mlp, tensors, tensor, *grads[tensor], 32);
            INFO("finite differences of " << names[tensor] << ": worst relative deviation " << worst);
            CHECK(worst < 1e-6);
        }
    }
}

namespace {

void construct(const Problem& problem) { GroupedGemm gemm(problem); }

const char* pass_name(Op op) { return to_string(op); }

void call_pass(const GroupedGemm& gemm, Op op, CUdeviceptr a, CUdeviceptr b, CUdeviceptr c, const Routing& routing,
               CUdeviceptr preactivation = 0) {
    switch (op) {
        case Op::fwd: gemm.forward(a, b, c, routing, nullptr, preactivation); break;
        case Op::dx: gemm.dx(a, b, c, routing, nullptr); break;
        default: gemm.dw(a, b, c, routing, nullptr); break;
    }
}

}  // namespace

TEST_CASE("passes: bad problems and arguments throw moejit::Error before any launch", "[gpu][gemm]") {
    Problem base;
    base.n = 64;
    base.k = 64;
    base.experts = 4;
    base.topk = 2;

    SECTION("problems") {
        for (const Flags& flags : kAllFlagSets) {
            INFO(flags.name);
            CHECK_NOTHROW(construct(with_flags(base, flags)));
        }
        std::vector<std::pair<const char*, Problem>> bad;
        Problem p = base;
        p.permute_x = p.permute_y = true;
        bad.emplace_back("permute_x with permute_y", p);
        p = base;
        p.fuse_mul_post = true;
        bad.emplace_back("fuse_mul_post without permute_y", p);
        p.permute_x = true;
        bad.emplace_back("fuse_mul_post with permute_x", p);
        p = base;
        p.gated = p.permute_y = true;
        bad.emplace_back("gated with permute_y", p);
        p.fuse_mul_post = true;
        bad.emplace_back("gated with permute_y and fuse_mul_post", p);
        p = base;
        p.n = 60;
        bad.emplace_back("N not a multiple of 8", p);
        p = base;
        p.k = 60;
        bad.emplace_back("K not a multiple of 8", p);
        p = base;
        p.n = 0;
        bad.emplace_back("N = 0", p);
        p = base;
        p.n = 24;
        p.gated = true;
        bad.emplace_back("gated with N/2 not a multiple of 8", p);
        p = base;
        p.topk = 5;
        bad.emplace_back("topk above experts", p);
        p = base;
        p.op = Op::dx;
        bad.emplace_back("a problem that is not the forward", p);
        for (const auto& [name, problem] : bad) {
            INFO(name);
            CHECK_THROWS_AS(construct(problem), Error);
        }
    }

    SECTION("pointers, rows and dw with fuse_mul_post") {
        // A valid routing (4 tokens x top-2 over 4 experts) and large buffers, so that a call that
        // wrongly went ahead would read and write only memory it owns.
        const HostRouting routing = make_routing(4, 2, {0, 1, 2, 3, 1, 0, 3, 2});
        const DeviceBuffer m_sizes = upload(routing.m_sizes), gather_idx = upload(routing.gather_idx),
                           topk_weights = upload(routing.topk_weights);
        DeviceBuffer a(1 << 20), b(1 << 20);
        a.fill16(0);
        b.fill16(0);
        const size_t out_halves = size_t(1) << 19;
        DeviceBuffer c = poisoned(out_halves), preactivation = poisoned(out_halves);
        const Routing good{m_sizes.get(), gather_idx.get(), topk_weights.get(), 8};
        const CUdeviceptr A = a.get(), B = b.get(), C = c.get();

        for (const Flags& flags : kAllFlagSets) {
            INFO(flags.name);
            const GroupedGemm gemm(with_flags(base, flags));
            for (Op op : {Op::fwd, Op::dx, Op::dw}) {
                INFO(pass_name(op));
                if (op == Op::dw && flags.fuse_mul_post) {
                    CHECK_THROWS_AS(call_pass(gemm, op, A, B, C, good), Error);
                    CHECK_THROWS_AS(gemm.dw(A, B, C, good, nullptr, true), Error);
                    continue;
                }
                CHECK_THROWS_AS(call_pass(gemm, op, 0, B, C, good), Error);
                CHECK_THROWS_AS(call_pass(gemm, op, A + 8, B, C, good), Error);
                CHECK_THROWS_AS(call_pass(gemm, op, A, 0, C, good), Error);
                CHECK_THROWS_AS(call_pass(gemm, op, A, B + 8, C, good), Error);
                CHECK_THROWS_AS(call_pass(gemm, op, A, B, 0, good), Error);
                CHECK_THROWS_AS(call_pass(gemm, op, A, B, C + 8, good), Error);
                Routing bad = good;
                bad.m_sizes = 0;  // allowed only with one expert
                CHECK_THROWS_AS(call_pass(gemm, op, A, B, C, bad), Error);
                bad.m_sizes = m_sizes.get() + 2;
                CHECK_THROWS_AS(call_pass(gemm, op, A, B, C, bad), Error);
                bad = good;
                bad.rows = -1;
                CHECK_THROWS_AS(call_pass(gemm, op, A, B, C, bad), Error);
                bad.rows = int64_t(1) << 31;
                CHECK_THROWS_AS(call_pass(gemm, op, A, B, C, bad), Error);
                if (flags.permute_x || flags.permute_y || flags.fuse_mul_post) {
                    bad = good;
                    bad.gather_idx = 0;
                    CHECK_THROWS_AS(call_pass(gemm, op, A, B, C, bad), Error);
                    bad.gather_idx = gather_idx.get() + 2;
                    CHECK_THROWS_AS(call_pass(gemm, op, A, B, C, bad), Error);
                }
                if (flags.fuse_mul_post) {
                    bad = good;
                    bad.topk_weights = 0;
                    CHECK_THROWS_AS(call_pass(gemm, op, A, B, C, bad), Error);
                    bad.topk_weights = topk_weights.get() + 2;
                    CHECK_THROWS_AS(call_pass(gemm, op, A, B, C, bad), Error);
                }
                // Only a forward built to save the preactivation takes one.
                if (op == Op::fwd) CHECK_THROWS_AS(call_pass(gemm, op, A, B, C, good, preactivation.get()), Error);
            }
            if (flags.gated) {  // the training forward needs its preactivation, 16-byte aligned
                Problem saving = with_flags(base, flags);
                saving.saves_preactivation = true;
                const GroupedGemm training(saving);
                CHECK(mentions(error_message([&] { call_pass(training, Op::fwd, A, B, C, good); }),
                               "preactivation is a null pointer"));
                CHECK_THROWS_AS(call_pass(training, Op::fwd, A, B, C, good, preactivation.get() + 8), Error);
            }
        }
        synchronize();
        CHECK(count_not_poison(c, out_halves) == 0);
        CHECK(count_not_poison(preactivation, out_halves) == 0);

        // The same calls with good arguments go through.
        for (const Flags& flags : kAllFlagSets) {
            INFO(flags.name);
            const GroupedGemm gemm(with_flags(base, flags));
            for (Op op : {Op::fwd, Op::dx, Op::dw}) {
                if (op == Op::dw && flags.fuse_mul_post) continue;
                INFO(pass_name(op));
                CHECK_NOTHROW(call_pass(gemm, op, A, B, C, good));
            }
            if (flags.gated) {
                Problem saving = with_flags(base, flags);
                saving.saves_preactivation = true;
                CHECK_NOTHROW(call_pass(GroupedGemm(saving), Op::fwd, A, B, C, good, preactivation.get()));
            }
        }
        synchronize();
    }

    SECTION("combine_topk and gated_activation_backward") {
        DeviceBuffer a(1 << 16), b(1 << 16);
        a.fill16(0);
        b.fill16(0);
        const size_t out_halves = size_t(1) << 15;
        DeviceBuffer out = poisoned(out_halves);
        const CUdeviceptr A = a.get(), B = b.get(), O = out.get();
        const DType bf16 = DType::bf16;
        CHECK_THROWS_AS(combine_topk(bf16, 64, 2, 0, O, 4, nullptr), Error);
        CHECK_THROWS_AS(combine_topk(bf16, 64, 2, A + 8, O, 4, nullptr), Error);
        CHECK_THROWS_AS(combine_topk(bf16, 64, 2, A, 0, 4, nullptr), Error);
        CHECK_THROWS_AS(combine_topk(bf16, 64, 2, A, O + 8, 4, nullptr), Error);
        CHECK_THROWS_AS(combine_topk(bf16, 64, 2, A, O, -1, nullptr), Error);
        CHECK_THROWS_AS(combine_topk(bf16, 60, 2, A, O, 4, nullptr), Error);
        CHECK_THROWS_AS(combine_topk(bf16, 64, 0, A, O, 4, nullptr), Error);
        CHECK_THROWS_AS(gated_activation_backward(bf16, 24, A, B, O, 4, nullptr), Error);  // N/2 = 12
        CHECK_THROWS_AS(gated_activation_backward(bf16, 60, A, B, O, 4, nullptr), Error);
        CHECK_THROWS_AS(gated_activation_backward(bf16, 64, 0, B, O, 4, nullptr), Error);
        CHECK_THROWS_AS(gated_activation_backward(bf16, 64, A + 8, B, O, 4, nullptr), Error);
        CHECK_THROWS_AS(gated_activation_backward(bf16, 64, A, 0, O, 4, nullptr), Error);
        CHECK_THROWS_AS(gated_activation_backward(bf16, 64, A, B + 8, O, 4, nullptr), Error);
        CHECK_THROWS_AS(gated_activation_backward(bf16, 64, A, B, 0, 4, nullptr), Error);
        CHECK_THROWS_AS(gated_activation_backward(bf16, 64, A, B, O + 8, 4, nullptr), Error);
        CHECK_THROWS_AS(gated_activation_backward(bf16, 64, A, B, O, -1, nullptr), Error);
        synchronize();
        CHECK(count_not_poison(out, out_halves) == 0);
        CHECK_NOTHROW(combine_topk(bf16, 64, 2, A, O, 4, nullptr));
        CHECK_NOTHROW(gated_activation_backward(bf16, 64, A, B, O, 4, nullptr));
        synchronize();
    }
}

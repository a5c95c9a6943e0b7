#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>

#include "codegen/config.hpp"
#include "codegen/kernel_problems.hpp"
#include "moe/check_routing.hpp"
#include "moe/elementwise_kernel.hpp"
#include "moe/pointer_checks.hpp"
#include "moe/row_limits.hpp"
#include "runtime/device.hpp"
#include "runtime/device_buffer.hpp"
#include "runtime/launch_arguments.hpp"
#include "runtime/log.hpp"
#include "runtime/runtime.hpp"
#include "runtime/tensor_map.hpp"
#include "moe/tuning.hpp"

#include <algorithm>
#include <iterator>
#include <map>
#include <optional>
#include <mutex>
#include <thread>

namespace moejit {

namespace {

void check_rows(int64_t rows, const Problem& problem) {
    if (rows < 0 || rows > kMaxRows)
        throw Error(to_spec(problem) + ": rows (M) must be in [0, 2^31), got " + std::to_string(rows));
}

// The row count that stands for "many" where a caller names none: the large calls' tiling.
constexpr int64_t kManyRows = int64_t(1) << 30;

unsigned elementwise_grid(int64_t work_items, int sm_count) {
    return static_cast<unsigned>(std::clamp<int64_t>((work_items + 255) / 256, 1, int64_t(sm_count) * 16));
}

}  // namespace

// One kernel per rows bucket: decode-sized calls take a weight-streaming tiling, large ones the
// biggest tiles. Each is compiled at its first use.
struct GroupedGemm::Pass {
    struct Variant {
        Config config;
        std::once_flag compiled;
        std::shared_ptr<const Kernel> kernel;

        // Hopper only: the tensor maps of the last call. Steady-state callers (a training loop, a
        // captured graph's rebuild) pass the same buffers every time, and encoding the maps costs
        // more than the rest of the host path. Only dW has a map over its output.
        std::mutex maps_mutex;
        CUdeviceptr maps_a = 0, maps_b = 0, maps_c = 0;
        int64_t maps_rows = -1;
        HopperTensorMaps maps;

        HopperTensorMaps tensor_maps(const Problem& problem, CUdeviceptr a, CUdeviceptr b, CUdeviceptr c, int64_t rows) {
            if (problem.op != Op::dw) c = 0;
            std::lock_guard<std::mutex> lock(maps_mutex);
            if (a != maps_a || b != maps_b || c != maps_c || rows != maps_rows) {
                maps = hopper_tensor_maps(problem, config, a, b, c, rows);
                maps_a = a;
                maps_b = b;
                maps_c = c;
                maps_rows = rows;
            }
            return maps;
        }
    };
    Problem problem;
    Variant variants[std::size(kRowsBuckets)];  // indexed by RowsBucket

    Variant& variant(int64_t rows) { return variants[static_cast<int>(rows_bucket(rows, problem.experts))]; }

    // JITs (or finds) the kernel once; later calls cost one atomic load.
    const Kernel& compile(Variant& v) {
        std::call_once(v.compiled, [&] { v.kernel = Runtime::instance().kernel(problem, v.config); });
        return *v.kernel;
    }
};

// Counters of the kernels that claim tiles at run time (claims_tiles), a pair per launch site:
// launches that use one pair must never overlap, and each leaves its pair at zero for the next
// (templates/scheduler/tile_queue.cuh), so one pair, zeroed once here, serves them all.
// - Eager launches take their stream's pair: launches on one stream never overlap, launches on two
//   streams use two. A stream beyond the kStreamSlots-th takes over the pair assigned longest ago.
// - A launch captured into a graph takes a pair of its own, so that replaying the graph on any
//   stream, while the GroupedGemm runs eagerly or in other graphs, shares nothing. Replays of one
//   graph are ordered by CUDA; only two instantiations of one captured graph replayed at the same
//   time share a pair. Past kCaptureSlots captured launches the oldest capture's pair is reused
//   (with a warning).
// Allocated with the GroupedGemm, never during a call (which may be under graph capture).
struct GroupedGemm::TileCounters {
    using Key = std::pair<CUstream, std::thread::id>;
    static constexpr int kStreamSlots = 256;
    static constexpr int kCaptureSlots = 1024;
    static constexpr size_t kSlotBytes = 2 * sizeof(int);  // claims, retired CTAs
    DeviceBuffer counters{(kStreamSlots + kCaptureSlots) * kSlotBytes};  // streams' pairs, then captures'
    std::mutex mutex;
    std::map<Key, int> slots;
    Key owners[kStreamSlots] = {};  // the key each assigned stream slot belongs to
    int assigned = 0;               // stream slots handed out so far; the next goes to assigned % kStreamSlots
    int captured = 0;               // captured launches so far; the next takes captured % kCaptureSlots

    TileCounters() { counters.fill16(0); }

    CUdeviceptr for_launch(CUstream stream) {
        CUstreamCaptureStatus capture = CU_STREAM_CAPTURE_STATUS_NONE;
        check_cuda(driver().cuStreamIsCapturing(stream, &capture), "cuStreamIsCapturing");
        std::lock_guard<std::mutex> lock(mutex);
        if (capture == CU_STREAM_CAPTURE_STATUS_ACTIVE) {
            if (captured == kCaptureSlots)
                log::warn_once("tile-counters-capture",
                               "a GroupedGemm has captured more than " + std::to_string(kCaptureSlots) +
                                   " tile-claiming launches; later captures reuse the earliest captures' counters, "
                                   "so do not replay those graphs at the same time as the new ones");
            return counters.get() + size_t(kStreamSlots + captured++ % kCaptureSlots) * kSlotBytes;
        }
        // The per-thread default stream is one handle for a different stream on each host thread.
        const Key key(stream, stream == CU_STREAM_PER_THREAD ? std::this_thread::get_id() : std::thread::id());
        auto found = slots.find(key);
        if (found == slots.end()) {
            const int slot = assigned++ % kStreamSlots;
            if (assigned > kStreamSlots) slots.erase(owners[slot]);
            owners[slot] = key;
            found = slots.emplace(key, slot).first;
        }
        return counters.get() + size_t(found->second) * kSlotBytes;
    }
};

GroupedGemm::GroupedGemm(Problem forward) : GroupedGemm(forward, std::string()) {}

GroupedGemm::GroupedGemm(Problem forward, const std::string& config) : forward_(forward), config_override_(config) {
    if (forward_.op != Op::fwd) throw Error("GroupedGemm takes the forward problem (op fwd); got " + to_spec(forward_));
    // A bad argument is reported as such, also where there is no GPU. The arch is not the caller's
    // to get wrong: the device's replaces it.
    Problem checked = forward_;
    checked.arch = Arch{};
    checked.validate();
    // So is a config string that does not parse; whether its tiles suit the device is checked below.
    const std::optional<Config> forced =
        config_override_.empty() ? std::nullopt : std::optional<Config>(Config::parse(config_override_));
    const DeviceInfo& device = current_device();
    forward_.arch = device.arch;
    sm_count_ = device.sm_count;
    tile_counters_ = std::make_unique<TileCounters>();
    for (int i = 0; i < 4; ++i) {
        auto pass = std::make_unique<Pass>();
        pass->problem = gemm_pass(forward_, static_cast<GemmPass>(i));
        for (RowsBucket bucket : kRowsBuckets) {
            Config& chosen = pass->variants[static_cast<int>(bucket)].config;
            if (config_override_.empty()) {
                chosen = select_config(pass->problem, bucket, device);
            } else {  // the same tiles in every pass, as far as the pass allows
                chosen = adapt_to_pass(pass->problem, *forced);
            }
            check_config(pass->problem, chosen);
        }
        passes_[i] = std::move(pass);
    }
}

GroupedGemm::~GroupedGemm() = default;

std::string GroupedGemm::config(Op op, int64_t rows, bool fp32_output) const {
    Pass& p = pass(op, fp32_output);
    return p.variant(rows < 0 ? kManyRows : rows).config.to_string();
}

GroupedGemm::Pass& GroupedGemm::pass(Op op, bool fp32_output) const {
    switch (op) {
        case Op::fwd: return *passes_[0];
        case Op::dx: return *passes_[1];
        case Op::dw: return *passes_[fp32_output ? 3 : 2];
        default: throw Error("GroupedGemm has no pass " + std::string(to_string(op)));
    }
}

void GroupedGemm::prepare(bool backward, int64_t rows, unsigned jobs) const {
    if (rows >= 0) check_rows(rows, forward_);
    std::vector<Pass*> passes{passes_[0].get()};
    if (backward) {
        passes.push_back(passes_[1].get());
        if (!forward_.fuse_mul_post) passes.insert(passes.end(), {passes_[2].get(), passes_[3].get()});
    }
    const int64_t variant_rows = rows < 0 ? kManyRows : rows;
    std::vector<std::pair<Problem, Config>> kernels;
    for (Pass* pass : passes) kernels.emplace_back(pass->problem, pass->variant(variant_rows).config);
    if (routing_checks_enabled())  // its kernel runs before each pass
        kernels.push_back(elementwise_key(check_routing_problem(forward_.experts), current_device()));
    Runtime::instance().preload(kernels, jobs);
}

void GroupedGemm::launch(Pass& pass, CUdeviceptr a, CUdeviceptr b, CUdeviceptr c,
                         CUdeviceptr preactivation, const Routing& routing, CUstream stream) const {
    const Problem& problem = pass.problem;
    const auto spec = [&] { return to_spec(problem); };
    check_rows(routing.rows, problem);
    const bool forward = problem.op == Op::fwd, dx = problem.op == Op::dx;
    check_pointer(a, 16, spec, forward ? "x" : "dy");
    check_pointer(b, 16, spec, forward || dx ? "w" : "x");
    check_pointer(c, 16, spec, forward ? "y" : dx ? "dx" : "dw");
    if (routing.m_sizes != 0 || problem.experts != 1) check_pointer(routing.m_sizes, 4, spec, "routing.m_sizes");
    if (problem.permute_x || problem.permute_y || problem.fuse_mul_post)
        check_pointer(routing.gather_idx, 4, spec, "routing.gather_idx");
    if (problem.fuse_mul_post) check_pointer(routing.topk_weights, 4, spec, "routing.topk_weights");
    if (problem.saves_preactivation)
        check_pointer(preactivation, 16, spec, "preactivation");
    else if (preactivation != 0)
        throw Error(spec() + ": a preactivation output needs a gated forward with saves_preactivation (the "
                             "kernel without it has no code to write one)");
    Pass::Variant& variant = pass.variant(routing.rows);
    const Kernel& kernel = pass.compile(variant);
    if (routing_checks_enabled())
        check_routing(problem, routing, problem.permute_x || problem.permute_y || problem.fuse_mul_post, stream);
    // dW must write zeros even with no rows; the row-grouped passes have nothing to do.
    if (routing.rows == 0 && problem.op != Op::dw) return;

    const Config& config = variant.config;
    int64_t tiles;
    if (problem.op == Op::dw) {
        tiles = int64_t(problem.experts) * ((problem.n + config.tile_m - 1) / config.tile_m) *
                ((problem.k + config.tile_n - 1) / config.tile_n);
    } else {
        // Upper bound without reading m_sizes: each non-empty expert adds at most one partial m tile.
        const int64_t out_cols = forward ? (problem.gated ? problem.n / 2 : problem.n) : problem.k;
        const int64_t tile_out_cols = problem.gated ? config.tile_n / 2 : config.tile_n;
        const int64_t m_tiles = (routing.rows + config.tile_m - 1) / config.tile_m +
                                std::min<int64_t>(problem.experts, routing.rows);
        tiles = m_tiles * ((out_cols + tile_out_cols - 1) / tile_out_cols);
    }
    // Persistent: no more blocks than run at once, in whole clusters.
    const int64_t cluster = kernel.cluster();
    const int64_t blocks = std::min(tiles, kernel.resident_blocks(sm_count_));
    const unsigned grid = static_cast<unsigned>(std::max<int64_t>(1, (blocks + cluster - 1) / cluster) * cluster);

    GroupedGemmArguments arguments{reinterpret_cast<const void*>(a),
                                   reinterpret_cast<const void*>(b),
                                   reinterpret_cast<void*>(c),
                                   reinterpret_cast<void*>(preactivation),
                                   reinterpret_cast<const int*>(routing.m_sizes),
                                   reinterpret_cast<const int*>(routing.gather_idx),
                                   reinterpret_cast<const float*>(routing.topk_weights),
                                   routing.rows,
                                   nullptr};
    if (!config.hopper()) {
        void* parameters[] = {&arguments};
        kernel.launch(grid, stream, parameters);
        return;
    }
    if (claims_tiles(problem, config)) {
        arguments.tile_counters = reinterpret_cast<int*>(tile_counters_->for_launch(stream));
    }
    HopperTensorMaps maps = variant.tensor_maps(problem, a, b, c, routing.rows);
    void* parameters[] = {&arguments, &maps.a, &maps.b, &maps.c};  // the row-grouped kernels take two maps
    kernel.launch(grid, stream, parameters);
}

void GroupedGemm::forward(CUdeviceptr x, CUdeviceptr w, CUdeviceptr y, const Routing& routing, CUstream stream,
                          CUdeviceptr preactivation) const {
    launch(pass(Op::fwd), x, w, y, preactivation, routing, stream);
}

void GroupedGemm::dx(CUdeviceptr dy, CUdeviceptr w, CUdeviceptr dx, const Routing& routing, CUstream stream) const {
    launch(pass(Op::dx), dy, w, dx, 0, routing, stream);
}

void GroupedGemm::dw(CUdeviceptr dy, CUdeviceptr x, CUdeviceptr dw, const Routing& routing, CUstream stream,
                     bool fp32_output) const {
    launch(pass(Op::dw, fp32_output), dy, x, dw, 0, routing, stream);
}

void combine_topk(DType dtype, int64_t width, int topk, CUdeviceptr slots, CUdeviceptr out, int64_t tokens,
                  CUstream stream, CUdeviceptr weights, CUdeviceptr addend) {
    if (topk < 1) throw Error("combine_topk: topk must be at least 1, got " + std::to_string(topk));
    const Problem problem = combine_problem(dtype, width, topk);
    const auto spec = [&] { return to_spec(problem); };
    // Arguments first: a bad one is reported as such, also where there is no GPU.
    problem.validate();
    check_pointer(slots, 16, spec, "slots");
    check_pointer(out, 16, spec, "out");
    if (weights != 0) check_pointer(weights, 4, spec, "weights");
    if (addend != 0) check_pointer(addend, 16, spec, "addend");
    if (!routed_rows_fit(tokens, topk))
        throw Error(spec() + ": tokens must be in [0, 2^31 / topk) (tokens * topk slot rows), got " +
                    std::to_string(tokens));
    const DeviceInfo& device = current_device();
    auto kernel = elementwise_kernel(problem, device);
    if (tokens == 0) return;
    CombineTopkArguments arguments{reinterpret_cast<const void*>(slots), reinterpret_cast<void*>(out), tokens,
                                   reinterpret_cast<const float*>(weights), reinterpret_cast<const void*>(addend)};
    void* parameters[] = {&arguments};
    kernel->launch(elementwise_grid(tokens * (width / 8), device.sm_count), stream, parameters);
}

void gated_activation_backward(DType dtype, int64_t n, CUdeviceptr preactivation, CUdeviceptr grad_h,
                               CUdeviceptr grad_preactivation, int64_t rows, CUstream stream) {
    const Problem problem = gated_backward_problem(dtype, n);
    const auto spec = [&] { return to_spec(problem); };
    // Arguments first: a bad one is reported as such, also where there is no GPU.
    if (n % 16 != 0) throw Error(spec() + ": N = 2*I needs I to be a multiple of 8");
    problem.validate();
    check_pointer(preactivation, 16, spec, "preactivation");
    check_pointer(grad_h, 16, spec, "grad_h");
    check_pointer(grad_preactivation, 16, spec, "grad_preactivation");
    check_rows(rows, problem);
    const DeviceInfo& device = current_device();
    auto kernel = elementwise_kernel(problem, device);
    if (rows == 0) return;
    GatedBackwardArguments arguments{reinterpret_cast<const void*>(preactivation),
                                     reinterpret_cast<const void*>(grad_h),
                                     reinterpret_cast<void*>(grad_preactivation), rows};
    void* parameters[] = {&arguments};
    kernel->launch(elementwise_grid(rows * (n / 16), device.sm_count), stream, parameters);
}

}  // namespace moejit

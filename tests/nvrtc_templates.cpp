// Every kernel variant compiles under NVRTC for the portable archs, without spills, and the PTX
// holds the instructions the template is built on. Needs NVRTC, no GPU.
#include "tests/catch.hpp"

#include "codegen/config.hpp"
#include "codegen/emit.hpp"
#include "runtime/nvrtc.hpp"

#include <moejit/error.hpp>

#include <regex>

using namespace moejit;

namespace {

// "N bytes spill stores, M bytes spill loads" from ptxas -v.
void require_no_spills(const std::string& log) {
    const std::regex spill(R"((\d+) bytes spill stores, (\d+) bytes spill loads)");
    std::smatch match;
    REQUIRE(std::regex_search(log, match, spill));
    CHECK(match[1] == "0");
    CHECK(match[2] == "0");
    const std::regex stack(R"((\d+) bytes stack frame)");
    REQUIRE(std::regex_search(log, match, stack));
    CHECK(match[1] == "0");
}

// templates/common/dependent_launch.cuh: on sm_90 and later the host launches every kernel before
// the previous one has completed, so each waits before its first global load, store or copy (the PTX
// lists the straight-line start of a kernel in program order); sm_80 has no such instruction.
void require_dependent_launch_contract(const std::string& ptx, const Arch& arch) {
    const size_t wait = ptx.find("griddepcontrol.wait");
    if (arch.sm() < 90) {
        CHECK(wait == std::string::npos);
        CHECK(ptx.find("griddepcontrol") == std::string::npos);
        return;
    }
    REQUIRE(wait != std::string::npos);
    // Dependents launch as our blocks exit, never early (the header says why).
    CHECK(ptx.find("griddepcontrol.launch_dependents") == std::string::npos);
    const std::regex global_access(R"(\b(?:(?:ld|st|atom|red)\.(?!param|shared|local|const)|cp\.async\.(?:ca|cg|bulk)))");
    std::smatch first;
    REQUIRE(std::regex_search(ptx, first, global_access));
    INFO("first global access: " << first.str() << " at " << first.position() << ", wait at " << wait);
    CHECK(size_t(first.position()) > wait);
}

}  // namespace

namespace {

// Every kernel variant the codegen can emit for one shape: each pass with each allowed flag set
// and output option.
std::vector<Problem> all_variants(const char* arch, DType dtype) {
    Problem base;
    base.dtype = dtype;
    base.n = 1536;
    base.k = 2048;
    base.experts = 128;
    base.topk = 8;
    base.arch = Arch::parse(arch);
    std::vector<Problem> variants;
    auto add = [&](Op op, bool permute_x, bool permute_y, bool mul_post, bool gated, bool out_fp32) {
        Problem p = base;
        p.op = op;
        p.permute_x = permute_x;
        p.permute_y = permute_y;
        p.fuse_mul_post = mul_post;
        p.gated = gated;
        p.out_fp32 = out_fp32;
        variants.push_back(p);
    };
    for (Op op : {Op::fwd, Op::dx}) {
        add(op, false, false, false, false, false);
        add(op, true, false, false, false, false);
        add(op, false, true, false, false, false);
        add(op, false, true, true, false, false);
    }
    add(Op::fwd, false, false, false, true, false);
    add(Op::fwd, true, false, false, true, false);
    // The training gated forwards, which also store gate|up: the most register pressure.
    for (bool permute_x : {false, true}) {
        add(Op::fwd, permute_x, false, false, true, false);
        variants.back().saves_preactivation = true;
    }
    for (bool out_fp32 : {false, true}) {
        add(Op::dw, false, false, false, false, out_fp32);
        add(Op::dw, true, false, false, false, out_fp32);
        add(Op::dw, false, true, false, false, out_fp32);
    }
    // dW with 512 experts: the scheduler's row offsets leave room for one staging box, not two.
    base.experts = 512;
    for (bool out_fp32 : {false, true}) add(Op::dw, false, false, false, false, out_fp32);
    add(Op::combine, false, false, false, false, false);
    add(Op::gated_backward, false, false, false, false, false);
    add(Op::check_routing, false, false, false, false, false);
    add(Op::combine_backward, false, false, false, false, false);
    for (Op op : {Op::route_topk, Op::router_backward, Op::routing_histogram, Op::routing_indices, Op::permute_rows,
                  Op::unpermute_rows})
        add(op, false, false, false, false, false);
    return variants;
}

}  // namespace

TEST_CASE("every template variant compiles for sm_80 and sm_90a with no spills", "[nvrtc]") {
    for (const char* arch : {"sm_80", "sm_90a"}) {
        for (DType dtype : {DType::bf16, DType::fp16}) {
            for (const Problem& problem : all_variants(arch, dtype)) {
                const bool gemm = problem.op == Op::fwd || problem.op == Op::dx || problem.op == Op::dw;
                // Every tuning candidate for the plain forward; the heuristic's choice elsewhere,
                // and in dW the CTA pairs too (their skip path once serialized wgmma).
                const bool plain_forward = problem.op == Op::fwd && !problem.permute_x && !problem.permute_y && !problem.gated;
                std::vector<Config> configs =
                    plain_forward ? candidate_configs(problem) : std::vector<Config>{choose_config(problem)};
                // Three consumer warpgroups share fewer registers, the more so beside a gathering producer.
                if (takes_192_tiles(problem) && !plain_forward && configs.front().hopper())
                    configs.push_back(Config::parse("h:m192n192s4"));
                // Swapped operands where the heuristic takes them (241-288 rows an expert): the
                // plain dX, and the scattered and scaled passes, whose row tables take registers.
                if (takes_swap_ab(problem) && !plain_forward && configs.front().hopper())
                    configs.push_back(choose_config(problem, RowsBucket::medium));
                if (problem.op == Op::dw) {  // clusters are accepted by override, though not offered
                    for (int cluster : {2, 4})
                        if (cluster <= max_cluster(problem, configs.front())) {
                            Config clustered = configs.front();
                            clustered.cluster = cluster;
                            configs.push_back(clustered);
                        }
                    if (configs.front().hopper()) {  // the same ring in the other stage depth, alone and in pairs
                        Config other_depth = configs.front();
                        const bool halve = other_depth.slice_k == 64;
                        other_depth.slice_k = halve ? 32 : 64;
                        other_depth.stages = halve ? other_depth.stages * 2 : other_depth.stages / 2;
                        configs.push_back(other_depth);
                        if (max_cluster(problem, other_depth) >= 2) {
                            other_depth.cluster = 2;
                            configs.push_back(other_depth);
                        }
                    }
                }
                for (const Config& config : configs) {
                    INFO(to_spec(problem) << " " << config.to_string());
                    const NvrtcOutput output = nvrtc_compile(emit_source(problem, config), nvrtc_options(problem.arch));
                    CHECK(!output.cubin.empty());
                    require_no_spills(output.log);
                    require_dependent_launch_contract(output.ptx, problem.arch);
                    if (!gemm) continue;
                    if (config.hopper()) {
                        // wgmma on TMA-loaded tiles. The epilogue: dW stores boxes by TMA, the
                        // row-grouped passes (swapped ones too) 16-byte row stores from staging.
                        CHECK(output.ptx.find(dtype == DType::bf16 ? "wgmma.mma_async.sync.aligned.m64n" : "f32.f16.f16") !=
                              std::string::npos);
                        const bool dw = problem.op == Op::dw;
                        CHECK((output.ptx.find("st.global.v4.b32") != std::string::npos) == !dw);
                        CHECK((output.ptx.find("cp.async.bulk.tensor.3d.global.shared::cta") != std::string::npos) == dw);
                        // stmatrix: dW's 16-bit boxes, and the swapped kernel's transposing staging.
                        CHECK((output.ptx.find("stmatrix.sync.aligned") != std::string::npos) ==
                              ((dw && !problem.out_fp32) || config.swap_ab));
                        const bool any_tma = !(problem.op == Op::dw && problem.permute_x && problem.permute_y);
                        CHECK((output.ptx.find("cp.async.bulk.tensor.2d.shared::cluster.global") != std::string::npos ||
                               output.ptx.find("cp.async.bulk.tensor.3d.shared::cluster.global") != std::string::npos) ==
                              any_tma);
                        CHECK(output.ptx.find("setmaxnreg.inc.sync.aligned.u32") != std::string::npos);
                        CHECK(output.log.find("C7508") == std::string::npos);  // setmaxnreg honoured
                        // No wgmma serialized by ptxas (insufficient registers, accumulators read
                        // in flight, compiler-inserted arrives on divergent paths).
                        for (const char* serialized : {"C7510", "C7511", "C7514", "C7517", "C7520"})
                            CHECK(output.log.find(serialized) == std::string::npos);
                        // Clustered CTAs load a shared operand tile once, multicast to all.
                        CHECK((output.ptx.find(".multicast::cluster") != std::string::npos) == (config.cluster > 1));
                        // Kernels that gather A into 128-row tiles claim their tiles from a global counter.
                        CHECK((output.ptx.find("atom.global.add") != std::string::npos) == claims_tiles(problem, config));
                        continue;
                    }
                    CHECK(output.ptx.find(dtype == DType::bf16 ? "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
                                                               : "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32") !=
                          std::string::npos);
                    CHECK(output.ptx.find("cp.async.cg.shared.global") != std::string::npos);
                    // dX reads W, and dW reads both operands, reduction-major: transposing ldmatrix.
                    const bool transposed = problem.op != Op::fwd;
                    CHECK((output.ptx.find("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16") != std::string::npos) ==
                          transposed);
                }
            }
        }
    }
}

TEST_CASE("the heuristic's choice compiles for every supported arch and odd shapes", "[nvrtc]") {
    for (const char* arch : {"sm_80", "sm_86", "sm_89", "sm_90a", "sm_100a"}) {
        for (auto shape : {std::pair<int64_t, int64_t>{8, 8}, {56, 776}, {14336, 4096}}) {
            Problem problem;
            problem.n = shape.first;
            problem.k = shape.second;
            problem.experts = 3;
            problem.arch = Arch::parse(arch);
            const Config config = choose_config(problem);
            INFO(to_spec(problem) << " " << config.to_string());
            CHECK(dynamic_shared_bytes(problem, config) <= max_shared_bytes(problem.arch));
            const NvrtcOutput output = nvrtc_compile(emit_source(problem, config), nvrtc_options(problem.arch));
            CHECK(!output.cubin.empty());
            require_no_spills(output.log);
        }
    }
}

TEST_CASE("a compile error comes back as moejit::Error with the log and numbered source", "[nvrtc]") {
    Source broken;
    broken.program_name = "broken.cu";
    broken.text = "#include \"common/types.cuh\"\n__global__ void broken() { undefined_name(); }\n";
    broken.name_expression = "broken";
    try {
        nvrtc_compile(broken, nvrtc_options(Arch::parse("sm_90a")));
        FAIL("expected a compile error");
    } catch (const Error& error) {
        const std::string log = error.log();
        CHECK(log.find("broken.cu(2)") != std::string::npos);
        CHECK(log.find("undefined_name") != std::string::npos);
        CHECK(log.find("   2 | __global__ void broken()") != std::string::npos);
    }
}

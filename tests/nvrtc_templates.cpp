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

}  // namespace

TEST_CASE("every forward variant compiles for sm_80 and sm_90a with no spills", "[nvrtc]") {
    for (const char* arch : {"sm_80", "sm_90a"}) {
        for (DType dtype : {DType::bf16, DType::fp16}) {
            Problem problem;
            problem.dtype = dtype;
            problem.n = 1536;
            problem.k = 2048;
            problem.experts = 128;
            problem.topk = 8;
            problem.arch = Arch::parse(arch);
            for (const Config& config : candidate_configs(problem)) {
                INFO(to_spec(problem) << " " << config.to_string());
                const NvrtcOutput output = nvrtc_compile(emit_source(problem, config), nvrtc_options(problem.arch));
                CHECK(!output.cubin.empty());
                CHECK(output.lowered_name.find("sm80_grouped_gemm_fwd") != std::string::npos);
                require_no_spills(output.log);
                CHECK(output.ptx.find(dtype == DType::bf16 ? "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
                                                           : "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32") !=
                      std::string::npos);
                CHECK(output.ptx.find("cp.async.cg.shared.global") != std::string::npos);
                CHECK(output.ptx.find("ldmatrix.sync.aligned.m8n8.x4.shared.b16") != std::string::npos);
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
            CHECK(config.shared_bytes() <= max_shared_bytes(problem.arch));
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

// Kernel spec strings and Problem::validate at the edges: numbers that do not fit their field,
// repeated and missing fields, and N or K too large for the kernels' int arithmetic.
#include <moejit/error.hpp>
#include <moejit/problem.hpp>

#include "codegen/kernel_problems.hpp"
#include "tests/catch.hpp"
#include "tests/support/errors.hpp"

#include <string>

using namespace moejit;
using moejit::testing::error_message;
using moejit::testing::mentions;

namespace {

// The message of the moejit::Error that parse_spec throws, or "" when it accepts the spec.
std::string spec_error(const std::string& spec) {
    return error_message([&] { parse_spec(spec); });
}

std::string validate_error(const Problem& problem) {
    return error_message([&] { problem.validate(); });
}

}  // namespace

TEST_CASE("spec numbers that do not fit their field are rejected, not wrapped", "[cpu][spec]") {
    // 4294967304 = 2^32 + 8 and 4294967424 = 2^32 + 128 once became topk8 and e128.
    const std::pair<const char*, const char*> bad[] = {
        {"fwd:bf16:n1536:k2048:e128:topk4294967304:sm_90a", "topk 4294967304 is out of range"},
        {"fwd:bf16:n1536:k2048:e4294967424:topk8:sm_90a", "experts (e) 4294967424 is out of range"},
        {"fwd:bf16:n1536:k2048:e2147483648:topk8:sm_90a", "experts (e) 2147483648 is out of range"},
        {"fwd:bf16:n99999999999999999999:k2048:e128:topk8:sm_90a", "n 99999999999999999999 is out of range"},
        {"fwd:bf16:n1536:k9223372036854775808:e128:topk8:sm_90a", "k 9223372036854775808 is out of range"},
        // Within their fields but beyond what the kernels take: validate names the limit.
        {"fwd:bf16:n1536:k2048:e2147483647:topk8:sm_90a", "experts must be in 1..4096"},
        {"fwd:bf16:n1536:k2048:e128:topk2147483647:sm_90a", "topk must be in 1..experts"},
        // A GEMM counts its tiles in int: N 2^31 - 256 once compiled into an NVRTC overflow error, and
        // dW at N = K = 2^31 - 8 over 4096 experts into a kernel whose tile counts had wrapped.
        {"fwd:bf16:n2147483400:k8:e1:topk1:sm_90a", "a GEMM's N and K must each be below 2^30"},
        {"dx:bf16:n8:k1073741824:e1:topk1:sm_90a", "a GEMM's N and K must each be below 2^30"},
        {"dw:bf16:n2147483640:k2147483640:e4096:topk8:sm_90a", "a GEMM's N and K must each be below 2^30"},
        {"dw:bf16:n65536:k65536:e64:topk8:sm_90a", "a GEMM's E * N * K must be below 2^38 elements"},
    };
    for (const auto& [spec, mention] : bad) {
        const std::string error = spec_error(spec);
        INFO(spec << " -> " << error);
        CHECK(mentions(error, mention));
    }
    // The largest values the fields hold still parse exactly (in an op that takes them all).
    Problem widest;
    widest.op = Op::permute_rows;
    widest.n = widest.k = 2147483640;
    widest.experts = 4096;
    widest.topk = 4096;
    CHECK(parse_spec(to_spec(widest)) == widest);
    // The largest GEMMs still pass: N = K = 2^30 - 8, and E * N * K just below 2^38.
    CHECK(spec_error("fwd:bf16:n1073741816:k8:e1:topk1:sm_90a").empty());
    CHECK(spec_error("dw:bf16:n65536:k65528:e64:topk8:sm_90a").empty());
}

TEST_CASE("a spec names each field once", "[cpu][spec]") {
    const std::pair<const char*, const char*> bad[] = {
        {"fwd:dx:bf16:n1536:k2048:e128:topk8:sm_90a", "op given twice (again in 'dx')"},
        {"fwd:bf16:n1536:k2048:e128:topk8:sm_90a:sm_80", "arch given twice (again in 'sm_80')"},
        {"fwd:bf16:fp16:n1536:k2048:e128:topk8:sm_90a", "dtype given twice"},
        {"fwd:bf16:n1536:n2048:k2048:e128:topk8:sm_90a", "n given twice"},
        {"fwd:bf16:n1536:k2048:k2048:e128:topk8:sm_90a", "k given twice"},
        {"fwd:bf16:n1536:k2048:e128:e64:topk8:sm_90a", "e given twice"},
        {"fwd:bf16:n1536:k2048:e128:topk8:topk8:sm_90a", "topk given twice"},
        {"fwd:bf16:n1536:k2048:e128:topk8:permute_x:permute_x:sm_90a", "permute_x given twice"},
    };
    for (const auto& [spec, mention] : bad) {
        const std::string error = spec_error(spec);
        INFO(spec << " -> " << error);
        CHECK(mentions(error, mention));
    }
}

TEST_CASE("a spec without topk is rejected instead of meaning topk1", "[cpu][spec]") {
    CHECK(mentions(spec_error("fwd:bf16:n1536:k2048:e128:sm_90a"), "missing topk"));
    CHECK(mentions(spec_error("combine:bf16:n2048:k2048:e8:sm_90a"), "missing topk"));
    CHECK(mentions(spec_error("fwd:bf16:n1536:e128:topk8:sm_90a"), "missing k<K>"));
    CHECK(mentions(spec_error("fwd:bf16:n1536:k2048:topk8:sm_90a"), "missing e<experts>"));
    // Every op's spec as to_spec writes it (topk included) parses back to the same problem.
    for (Op op : {Op::fwd, Op::dx, Op::dw, Op::combine, Op::gated_backward, Op::check_routing, Op::combine_backward,
                  Op::route_topk, Op::router_backward, Op::routing_histogram, Op::routing_indices, Op::permute_rows,
                  Op::unpermute_rows}) {
        Problem problem;
        problem.op = op;
        problem.n = problem.k = 64;
        problem.experts = 8;
        problem.topk = 2;
        INFO(to_spec(problem));
        CHECK(parse_spec(to_spec(problem)) == problem);
    }
}

TEST_CASE("N and K must fit the kernels' int: 2^31 - 8 passes, 2^31 does not", "[cpu][spec]") {
    // The elementwise kernels take such widths; the GEMMs stop at 2^30 (the case above).
    Problem problem;
    problem.op = Op::permute_rows;
    problem.n = 1536;
    problem.k = 2048;
    problem.experts = 8;
    problem.topk = 2;
    problem.n = int64_t{1} << 31;
    CHECK(mentions(validate_error(problem), "N and K must each be below 2^31"));
    CHECK(mentions(validate_error(problem), "N = 2147483648"));
    problem.n = (int64_t{1} << 31) - 8;
    CHECK_NOTHROW(problem.validate());
    problem.k = int64_t{1} << 31;
    CHECK(mentions(validate_error(problem), "K = 2147483648"));
    CHECK(mentions(spec_error("fwd:bf16:n2147483648:k2048:e8:topk2:sm_90a"), "below 2^31"));
    CHECK(mentions(spec_error("fwd:bf16:n2048:k2147483648:e8:topk2:sm_90a"), "below 2^31"));
    CHECK(spec_error("permute_rows:bf16:n2147483640:k2147483640:e8:topk2:sm_90a").empty());
}

TEST_CASE("elementwise and routing kernels take no GEMM fusion flags", "[cpu][spec]") {
    // Each flag would otherwise make a second cache key for the same kernel.
    for (const char* op : {"combine", "gated_backward", "check_routing", "combine_backward", "route_topk",
                           "router_backward", "routing_histogram", "routing_indices", "permute_rows",
                           "unpermute_rows"}) {
        const std::string base = std::string(op) + ":bf16:n16:k16:e16:topk4";
        INFO(base);
        CHECK(spec_error(base + ":sm_90a").empty());
        for (const char* flag : {"permute_x", "permute_y", "gated"})
            CHECK(mentions(spec_error(base + ":" + flag + ":sm_90a"), "takes no fusion flags"));
    }
}

TEST_CASE("kernel limits are argument errors, not compile errors", "[cpu][spec]") {
    // The router kernels' templates assert 1..1024 experts and topk 1..32; gated_backward's, N = 2*I
    // with I a multiple of 8. validate says so before NVRTC runs (prepare_kernels checks every
    // problem before compiling any).
    for (const char* op : {"route_topk", "router_backward"}) {
        INFO(op);
        const std::string base = std::string(op) + ":bf16:n8:k8:";
        CHECK(spec_error(base + "e1024:topk32:sm_90a").empty());
        CHECK(mentions(spec_error(base + "e2048:topk8:sm_90a"), "1..1024 experts and topk 1..32"));
        CHECK(mentions(spec_error(base + "e64:topk40:sm_90a"), "1..1024 experts and topk 1..32"));
    }
    CHECK(spec_error("gated_backward:bf16:n16:k16:e1:topk1:sm_90a").empty());
    CHECK(mentions(spec_error("gated_backward:bf16:n8:k8:e1:topk1:sm_90a"), "I a multiple of 8"));
    // The routing indices take up to 4096 experts, as the GEMMs do.
    CHECK(spec_error("routing_histogram:bf16:n8:k8:e4096:topk1:sm_90a").empty());
}

TEST_CASE("a dtype, op or arch cast from an integer outside its values is rejected", "[cpu][spec]") {
    // Unchecked, DType(7) compiled as fp16 and printed so; Arch{7, 5} named 18 kernels "sm_75".
    Problem problem = expert_gemm(DType::bf16, 1536, 2048, 8, 2);
    CHECK_NOTHROW(problem.validate());
    Problem bad = problem;
    bad.dtype = static_cast<DType>(7);
    CHECK(mentions(validate_error(bad), "dtype must be bf16 or fp16, got the value 7"));
    bad = problem;
    bad.op = static_cast<Op>(99);
    CHECK(mentions(validate_error(bad), "op must be a value of moejit::Op, got 99"));
    bad = problem;
    bad.arch = Arch{7, 5, false};
    CHECK(mentions(validate_error(bad), "unsupported arch sm_75"));
    bad.arch = Arch{9, 0, false};  // sm_90 without the 'a': no wgmma
    CHECK(mentions(validate_error(bad), "unsupported arch sm_90:"));
    for (const char* name : {"sm_80", "sm_86", "sm_89", "sm_90a", "sm_100a"}) {
        problem.arch = Arch::parse(name);
        CHECK_NOTHROW(problem.validate());
    }
}

TEST_CASE("preactivation is an output of the gated forward only, and a key of its own", "[cpu][spec]") {
    const std::string training = "fwd:bf16:n256:k128:e16:topk4:permute_x:gated:preactivation:sm_90a";
    const Problem problem = parse_spec(training);
    CHECK(problem.saves_preactivation);
    CHECK(to_spec(problem) == training);
    Problem inference = problem;
    inference.saves_preactivation = false;
    CHECK(inference != problem);  // two kernels, two cache keys
    CHECK(to_spec(inference) == "fwd:bf16:n256:k128:e16:topk4:permute_x:gated:sm_90a");

    const std::string why = "is an output of the gated fwd only";
    CHECK(mentions(spec_error("fwd:bf16:n256:k128:e16:topk4:permute_x:preactivation:sm_90a"), why));
    CHECK(mentions(spec_error("dx:bf16:n256:k128:e16:topk4:gated:preactivation:sm_90a"), why));
    CHECK(mentions(spec_error("dw:bf16:n256:k128:e16:topk4:preactivation:sm_90a"), why));
    CHECK(mentions(spec_error(training.substr(0, training.size() - 7) + ":preactivation:sm_90a"), "given twice"));
    // An output option like out_fp32, not a fusion that `moejit bench --fusions` varies.
    CHECK(fusion_flag("preactivation") == nullptr);
    CHECK(fusion_flag("gated") == &Problem::gated);
}

#include <moejit/error.hpp>
#include <moejit/problem.hpp>

#include "codegen/config.hpp"  // is_elementwise

#include <algorithm>
#include <cstdlib>
#include <iterator>
#include <limits>
#include <optional>
#include <set>
#include <vector>

namespace moejit {

const char* to_string(DType dtype) { return dtype == DType::bf16 ? "bf16" : "fp16"; }
const char* to_string(Op op) {
    switch (op) {
        case Op::fwd: return "fwd";
        case Op::dx: return "dx";
        case Op::dw: return "dw";
        case Op::combine: return "combine";
        case Op::gated_backward: return "gated_backward";
        case Op::check_routing: return "check_routing";
        case Op::combine_backward: return "combine_backward";
        case Op::route_topk: return "route_topk";
        case Op::router_backward: return "router_backward";
        case Op::routing_histogram: return "routing_histogram";
        case Op::routing_indices: return "routing_indices";
        case Op::permute_rows: return "permute_rows";
        case Op::unpermute_rows: return "unpermute_rows";
    }
    return "?";
}

namespace {

const Op kOps[] = {Op::fwd, Op::dx, Op::dw, Op::combine, Op::gated_backward, Op::check_routing, Op::combine_backward,
                   Op::route_topk, Op::router_backward, Op::routing_histogram, Op::routing_indices,
                   Op::permute_rows, Op::unpermute_rows};

struct FlagName {
    const char* name;
    bool Problem::*field;
    bool fusion;  // false: an output option (which buffers a pass writes), not a fusion
};
const FlagName kFlags[] = {{"permute_x", &Problem::permute_x, true},
                           {"permute_y", &Problem::permute_y, true},
                           {"mul_post", &Problem::fuse_mul_post, true},
                           {"gated", &Problem::gated, true},
                           {"preactivation", &Problem::saves_preactivation, false},
                           {"out_fp32", &Problem::out_fp32, false}};

}  // namespace
size_t element_bytes(DType) { return 2; }

namespace {

const Arch kSupportedArchs[] = {{8, 0, false}, {8, 6, false}, {8, 9, false}, {9, 0, true}, {10, 0, true}};

}  // namespace

std::string Arch::supported_names() {
    std::string names;
    for (const Arch& arch : kSupportedArchs) names += (names.empty() ? "" : ", ") + arch.name();
    return names;
}

Arch Arch::parse(std::string_view name) {
    for (const Arch& arch : kSupportedArchs)
        if (arch.name() == name) return arch;
    throw Error("unsupported arch '" + std::string(name) + "': expected one of " + Arch::supported_names());
}

std::string Arch::name() const {
    return "sm_" + std::to_string(major) + std::to_string(minor) + (arch_specific ? "a" : "");
}

void Problem::validate() const {
    auto fail = [&](const std::string& what) { throw Error("invalid problem " + to_spec(*this) + ": " + what); };
    // Enum values cast from integers: to_spec would print a wrong dtype as fp16 and compile it so.
    if (dtype != DType::bf16 && dtype != DType::fp16)
        fail("dtype must be bf16 or fp16, got the value " + std::to_string(static_cast<int>(dtype)));
    if (std::string(to_string(op)) == "?")  // to_string names every value of Op
        fail("op must be a value of moejit::Op, got " + std::to_string(static_cast<int>(op)));
    if (std::find(std::begin(kSupportedArchs), std::end(kSupportedArchs), arch) == std::end(kSupportedArchs))
        fail("unsupported arch " + arch.name() + ": expected one of " + Arch::supported_names());
    if (n <= 0 || n % 8 != 0) fail("N must be a positive multiple of 8 (16-byte rows), got " + std::to_string(n));
    if (k <= 0 || k % 8 != 0) fail("K must be a positive multiple of 8 (16-byte rows), got " + std::to_string(k));
    // The kernels take N and K as int template arguments and index with int within a row.
    if (n > std::numeric_limits<int>::max() || k > std::numeric_limits<int>::max())
        fail("N and K must each be below 2^31 (the kernels hold them in int), got N = " + std::to_string(n) +
             ", K = " + std::to_string(k));
    if (experts < 1 || experts > 4096) fail("experts must be in 1..4096, got " + std::to_string(experts));
    // The GEMM templates count tiles in int (tiles of a row or column: N / 16 rounded up, and dW's
    // experts x tiles of [N, K] of 16 x 16 at the smallest), so N + 1023 and E * N * K / 256 must fit.
    const bool gemm = op == Op::fwd || op == Op::dx || op == Op::dw;
    if (gemm && (n >= (int64_t{1} << 30) || k >= (int64_t{1} << 30)))
        fail("a GEMM's N and K must each be below 2^30 (its tile counts are int), got N = " + std::to_string(n) +
             ", K = " + std::to_string(k));
    if (gemm && static_cast<long double>(experts) * n * k >= static_cast<long double>(int64_t{1} << 38))
        fail("a GEMM's E * N * K must be below 2^38 elements (512 GiB of 16-bit weights; its tile counts are int), "
             "got " + std::to_string(experts) + " * " + std::to_string(n) + " * " + std::to_string(k));
    if (topk < 1 || topk > experts) fail("topk must be in 1..experts, got " + std::to_string(topk));
    if (permute_x && permute_y)
        fail("permute_x (first GEMM: gather token rows) and permute_y (second GEMM: scatter to token order) "
             "cannot both apply to one GEMM");
    if (fuse_mul_post && !permute_y) fail("fuse_mul_post needs permute_y (it scales rows as they are scattered)");
    if (gated && (permute_y || fuse_mul_post))
        fail("the gated activation belongs to the first GEMM (gate_up); permute_y and fuse_mul_post to the second");
    if (gated && n % 16 != 0) fail("gated needs N = 2*I with I a multiple of 8, got N = " + std::to_string(n));
    if (out_fp32 && op != Op::dw) fail("out_fp32 applies to dw only");
    if (saves_preactivation && !(gated && op == Op::fwd))
        fail("preactivation (gate|up saved for the backward) is an output of the gated fwd only");
    if (fuse_mul_post && op == Op::dw)
        fail("dw with fuse_mul_post is not supported: the scale is an inference fusion; scale dY by topk_weights first");
    // The router kernels give each token a warp whose lanes hold its top-k, and a block its experts'
    // scores; their templates assert the same limits (moe/router_limits.hpp checks the calls).
    if ((op == Op::route_topk || op == Op::router_backward) && (experts > 1024 || topk > 32))
        fail(std::string(to_string(op)) + " takes 1..1024 experts and topk 1..32, got " + std::to_string(experts) +
             " and " + std::to_string(topk));
    if (op == Op::gated_backward && n % 16 != 0)
        fail("gated_backward needs N = 2*I with I a multiple of 8, got N = " + std::to_string(n));
    if (is_elementwise(op) && (permute_x || permute_y || fuse_mul_post || gated))
        fail(std::string(to_string(op)) + " takes no fusion flags");
}

std::string to_spec(const Problem& p) {
    std::string spec = std::string(to_string(p.op)) + ":" + to_string(p.dtype) + ":n" + std::to_string(p.n) + ":k" +
                       std::to_string(p.k) + ":e" + std::to_string(p.experts) + ":topk" + std::to_string(p.topk);
    for (const FlagName& flag : kFlags)
        if (p.*flag.field) spec += std::string(":") + flag.name;
    return spec + ":" + p.arch.name();
}

bool Problem::*fusion_flag(std::string_view name) {
    for (const FlagName& flag : kFlags)
        if (name == flag.name && flag.fusion) return flag.field;
    return nullptr;
}

static std::vector<std::string_view> split(std::string_view text, char separator) {
    std::vector<std::string_view> parts;
    size_t start = 0;
    while (true) {
        const size_t end = text.find(separator, start);
        parts.push_back(text.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start));
        if (end == std::string_view::npos) return parts;
        start = end + 1;
    }
}

// `field` is `prefix` followed by decimal digits only ("n1536"); the digits go to `digits`.
static bool numeric_field(std::string_view field, std::string_view prefix, std::string_view& digits) {
    if (field.size() <= prefix.size() || field.substr(0, prefix.size()) != prefix) return false;
    digits = field.substr(prefix.size());
    return digits.find_first_not_of("0123456789") == std::string_view::npos;
}

// The digits' value, or nullopt when it exceeds `most`: a value that does not fit its field must
// fail here rather than wrap around to another, valid-looking number.
static std::optional<int64_t> bounded_value(std::string_view digits, int64_t most) {
    int64_t value = 0;
    for (char c : digits) {
        const int digit = c - '0';
        if (value > (most - digit) / 10) return std::nullopt;
        value = value * 10 + digit;
    }
    return value;
}

Problem parse_spec(std::string_view spec) {
    auto fail = [&](const std::string& why) {
        throw Error("bad kernel spec '" + std::string(spec) + "': " + why +
                    " (expected e.g. fwd:bf16:n1536:k2048:e128:topk8:sm_90a)");
    };
    // A spec names each field once: a second op or arch is a contradiction, never an override.
    std::set<std::string> seen;
    auto first_time = [&](const std::string& name, std::string_view field) {
        if (!seen.insert(name).second) fail(name + " given twice (again in '" + std::string(field) + "')");
    };
    auto number = [&](std::string_view digits, const char* name, int64_t most) {
        const std::optional<int64_t> value = bounded_value(digits, most);
        if (!value) fail(std::string(name) + " " + std::string(digits) + " is out of range (at most " +
                         std::to_string(most) + ")");
        return *value;
    };
    constexpr int64_t kMostInt = std::numeric_limits<int>::max();
    Problem problem;
    for (std::string_view field : split(spec, ':')) {
        std::string_view digits;
        const Op* op = std::find_if(std::begin(kOps), std::end(kOps), [&](Op o) { return field == to_string(o); });
        const FlagName* flag =
            std::find_if(std::begin(kFlags), std::end(kFlags), [&](const FlagName& f) { return field == f.name; });
        if (op != std::end(kOps)) {
            first_time("op", field);
            problem.op = *op;
        } else if (flag != std::end(kFlags)) {
            first_time(flag->name, field);
            problem.*flag->field = true;
        } else if (field == "bf16" || field == "fp16") {
            first_time("dtype", field);
            problem.dtype = field == "bf16" ? DType::bf16 : DType::fp16;
        } else if (field.substr(0, 3) == "sm_") {
            first_time("arch", field);
            problem.arch = Arch::parse(field);
        } else if (numeric_field(field, "topk", digits)) {
            first_time("topk", field);
            problem.topk = static_cast<int>(number(digits, "topk", kMostInt));
        } else if (numeric_field(field, "n", digits)) {
            first_time("n", field);
            problem.n = number(digits, "n", std::numeric_limits<int64_t>::max());
        } else if (numeric_field(field, "k", digits)) {
            first_time("k", field);
            problem.k = number(digits, "k", std::numeric_limits<int64_t>::max());
        } else if (numeric_field(field, "e", digits)) {
            first_time("e", field);
            problem.experts = static_cast<int>(number(digits, "experts (e)", kMostInt));
        } else {
            fail("unknown field '" + std::string(field) + "'");
        }
    }
    // Every field is required: a default (topk 1, say) would silently name another kernel.
    const std::pair<const char*, const char*> required[] = {{"op", "op (fwd, dx, dw, combine, ...)"},
                                                            {"dtype", "dtype (bf16 or fp16)"},
                                                            {"n", "n<N>"},
                                                            {"k", "k<K>"},
                                                            {"e", "e<experts>"},
                                                            {"topk", "topk<experts per token>"},
                                                            {"arch", "arch (e.g. sm_90a)"}};
    for (const auto& [name, what] : required)
        if (!seen.count(name)) fail(std::string("missing ") + what);
    problem.validate();
    return problem;
}

}  // namespace moejit

// The `moejit` command line where it needs neither NVRTC nor a GPU: how it picks tilings, which
// kernels it can show, how it parses options and how it reports failures.
#include "tests/catch.hpp"
#include "tests/support/errors.hpp"
#include "tests/support/process.hpp"

#include <regex>
#include <string>

using namespace moejit::testing;

namespace {

const char* const kHopperSpec = "fwd:bf16:n1536:k2048:e128:topk8:sm_90a";

// The first line of `moejit source`: "// moejit kernel SPEC with config CONFIG".
std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

}  // namespace

TEST_CASE("the CLI picks tilings on MOEJIT_KERNEL_PATH's path, as the library does", "[cpu][cli]") {
    const ProcessResult automatic = run_cli({"source", kHopperSpec});
    INFO(automatic.err);
    REQUIRE(automatic.status == 0);
    CHECK(mentions(first_line(automatic.out), "with config h:m128n256s4"));

    const ProcessResult portable = run_cli({"source", kHopperSpec}, {{"MOEJIT_KERNEL_PATH", "portable"}});
    INFO(portable.err);
    REQUIRE(portable.status == 0);
    CHECK(mentions(first_line(portable.out), "with config m128n128s3w2x2"));
    CHECK(mentions(portable.out, "kernels/sm80_grouped_gemm.cuh"));

    for (const std::vector<std::string>& command :
         {std::vector<std::string>{"source", kHopperSpec}, {"precompile", "--model", "qwen3-30b-a3b"}}) {
        TempDir cache;
        const ProcessResult bogus =
            run_cli(command, {{"MOEJIT_KERNEL_PATH", "bogus"}, {"MOEJIT_CACHE_DIR", cache.path}});
        INFO(command[0] << ": " << bogus.err);
        CHECK(bogus.status == 1);
        CHECK(mentions(bogus.err, "moejit: MOEJIT_KERNEL_PATH must be auto or portable, got 'bogus'"));
        CHECK(bogus.out.empty());
        CHECK(std::filesystem::is_empty(cache.path));  // nothing compiled on a path nobody asked for
    }
}

TEST_CASE("the CLI shows the elementwise kernels its parser names, and takes no --config for them", "[cpu][cli]") {
    const std::pair<const char*, const char*> kernels[] = {
        {"combine", "kernels/combine_topk.cuh"},
        {"gated_backward", "kernels/gated_activation_backward.cuh"},
        {"check_routing", "kernels/check_routing.cuh"},
        {"combine_backward", "kernels/combine_backward.cuh"},
        {"route_topk", "kernels/route_topk.cuh"},
        {"router_backward", "kernels/router_backward.cuh"},
        {"routing_histogram", "kernels/routing_histogram.cuh"},
        {"routing_indices", "kernels/routing_indices.cuh"},
        {"permute_rows", "kernels/permute_rows.cuh"},
        {"unpermute_rows", "kernels/permute_rows.cuh"},
    };
    for (const auto& [op, header] : kernels) {
        const std::string spec = std::string(op) + ":bf16:n2048:k2048:e8:topk8:sm_90a";
        const ProcessResult source = run_cli({"source", spec});
        INFO(spec << ": " << source.err);
        CHECK(source.status == 0);
        CHECK(mentions(first_line(source.out), "// moejit kernel " + spec));
        CHECK(mentions(source.out, std::string("#include \"") + header + "\""));
    }
    const ProcessResult forced = run_cli({"source", "combine:bf16:n2048:k2048:e8:topk8:sm_90a", "--config",
                                          "m128n128s3w2x4"});
    INFO(forced.err);
    CHECK(forced.status == 1);
    CHECK(mentions(forced.err, "--config does not apply to combine:bf16:n2048:k2048:e8:topk8:sm_90a: combine is an "
                               "elementwise kernel"));
    CHECK(forced.out.empty());
}

TEST_CASE("moejit bench --skew takes a whole number in (0, 1] and says so otherwise", "[cpu][cli]") {
    // --pass bogus fails after --skew is read and before any GPU work, so an accepted --skew shows
    // as the --pass error on any machine.
    for (const char* skew : {"abc", "0.5abc", "", " 0.5", "0", "1.5", "-0.25", "nan"}) {
        const ProcessResult bench = run_cli({"bench", "--model", "qwen3-30b-a3b", "--skew", skew, "--pass", "bogus"});
        INFO("--skew '" << skew << "': " << bench.err);
        CHECK(bench.status == 1);
        CHECK(mentions(bench.err, std::string("--skew must be a number in (0, 1]") +
                                      " (the share of the experts that get tokens), got '" + skew + "'"));
        CHECK_FALSE(mentions(bench.err, "internal error"));
    }
    for (const char* skew : {"0.5", "1", "0.0625"}) {
        const ProcessResult bench = run_cli({"bench", "--model", "qwen3-30b-a3b", "--skew", skew, "--pass", "bogus"});
        INFO("--skew '" << skew << "': " << bench.err);
        CHECK(bench.status == 1);
        CHECK(mentions(bench.err, "--pass must be fwd, dx or dw, got 'bogus'"));
    }
}

TEST_CASE("moejit bench and tune refuse more routed rows than int32 indexes, before any GPU work", "[cpu][cli]") {
    // 268435455 * 8 = 2^31 - 8 rows pass (then --pass bogus fails); 268435456 * 8 = 2^31 do not.
    for (const char* command : {"bench", "tune"}) {
        const ProcessResult over = run_cli({command, "--model", "qwen3-30b-a3b", "--tokens", "268435456"});
        INFO(command << ": " << over.err);
        CHECK(over.status == 1);
        CHECK(mentions(over.err, "--tokens 268435456: qwen3-30b-a3b routes each token to 8 experts, and tokens * "
                                 "topk must be below 2^31"));
    }
    const ProcessResult within =
        run_cli({"bench", "--model", "qwen3-30b-a3b", "--tokens", "268435455", "--pass", "bogus"});
    CHECK(mentions(within.err, "--pass must be fwd, dx or dw, got 'bogus'"));
}

TEST_CASE("moejit tune and precompile take --weight-grads fp32 or dtype, or --inference, and say so otherwise",
          "[cpu][cli]") {
    for (const char* command : {"tune", "precompile"}) {
        const ProcessResult bad = run_cli({command, "--model", "qwen3-30b-a3b", "--weight-grads", "bf16"});
        INFO(command << ": " << bad.err);
        CHECK(bad.status == 1);
        CHECK(mentions(bad.err, "bad --weight-grads 'bf16': expected fp32 or dtype"));
        // --inference compiles or tunes the forward alone: weight gradients do not apply.
        const ProcessResult both =
            run_cli({command, "--model", "qwen3-30b-a3b", "--inference", "--weight-grads", "dtype"});
        CHECK(both.status == 1);
        CHECK(mentions(both.err, "--weight-grads is an option of training: not with --inference"));
        const ProcessResult valued = run_cli({command, "--model", "qwen3-30b-a3b", "--inference=yes"});
        CHECK(valued.status == 1);
        CHECK(mentions(valued.err, "--inference takes no value"));
    }
}

TEST_CASE("moejit bench --fusions takes none or a list of known fusions and says so otherwise", "[cpu][cli]") {
    // Read before --pass, so --pass bogus shows an accepted list, as for --skew.
    for (const char* fusions : {"foo", "gated,", "permute_x,,gated", "", "Gated"}) {
        const ProcessResult bench =
            run_cli({"bench", "--model", "qwen3-30b-a3b", "--fusions", fusions, "--pass", "bogus"});
        INFO("--fusions '" << fusions << "': " << bench.err);
        CHECK(bench.status == 1);
        CHECK(mentions(bench.err, std::string("--fusions: expected 'none' or a comma list of permute_x, permute_y, "
                                              "mul_post, gated; got '") + fusions + "'"));
    }
    for (const char* fusions : {"none", "gated", "permute_x,gated", "permute_y,mul_post"}) {
        const ProcessResult bench =
            run_cli({"bench", "--model", "qwen3-30b-a3b", "--fusions", fusions, "--pass", "bogus"});
        INFO("--fusions '" << fusions << "': " << bench.err);
        CHECK(bench.status == 1);
        CHECK(mentions(bench.err, "--pass must be fwd, dx or dw, got 'bogus'"));
    }
}

TEST_CASE("--tokens takes the same positive integers in bench and precompile", "[cpu][cli]") {
    // Both read --tokens before any GPU or NVRTC work; --pass bogus then shows an accepted value.
    for (const char* tokens : {"+12", " 12", "12 ", "0", "1e3", "99999999999", ""}) {
        INFO("--tokens '" << tokens << "'");
        const ProcessResult bench = run_cli({"bench", "--model", "qwen3-30b-a3b", "--tokens", tokens, "--pass", "bogus"});
        CHECK(bench.status == 1);
        CHECK(mentions(bench.err, std::string("bad --tokens '") + tokens + "': expected a positive integer"));
        const ProcessResult precompile =
            run_cli({"precompile", "--model", "qwen3-30b-a3b", "--tokens", std::string("16,") + tokens});
        CHECK(precompile.status == 1);
        CHECK(mentions(precompile.err, std::string("bad --tokens '") + tokens + "': expected a positive integer"));
    }
    // The largest count parsed; llama4-scout's top-1 routes no more rows than int32 indexes.
    const ProcessResult accepted = run_cli({"bench", "--model", "llama4-scout", "--tokens", "999999999", "--pass", "bogus"});
    CHECK(mentions(accepted.err, "--pass must be fwd, dx or dw, got 'bogus'"));
}

TEST_CASE("an option whose value is missing says so, also where the next word is an option", "[cpu][cli]") {
    const ProcessResult source = run_cli({"source", "--model", "--gemm", "down"});
    CHECK(source.status == 1);
    CHECK(mentions(source.err, "--model needs a value, got the option '--gemm'"));
    const ProcessResult last = run_cli({"source", "--model"});
    CHECK(last.status == 1);
    CHECK(mentions(last.err, "--model needs a value"));
    // A value may still be anything after '='.
    const ProcessResult equals = run_cli({"source", "--model=--gemm", "--gemm", "down"});
    CHECK(equals.status == 1);
    CHECK(mentions(equals.err, "unknown model '--gemm'"));
}

TEST_CASE("moejit --version names the library, NVRTC and cache format versions", "[cpu][cli]") {
    const ProcessResult version = run_cli({"--version"});
    CHECK(version.status == 0);
    CHECK(std::regex_search(version.out, std::regex(R"(^moejit \d+\.\d+\.\d+ \(NVRTC \d+\.\d+, cache format \d+\)\n$)")));
}

TEST_CASE("moejit bench reports a bad --config before it needs a GPU", "[cpu][cli]") {
    const ProcessResult bench = run_cli({"bench", "--model", "qwen3-30b-a3b", "--config", "zzz"});
    CHECK(bench.status == 1);
    CHECK(mentions(bench.err, "bad config 'zzz'"));
}

TEST_CASE("precompile --jobs takes 1 to 256 and nothing else", "[cpu][cli]") {
    // Read before any NVRTC work; a bad --tokens after it then shows an accepted value.
    for (const char* jobs : {"0", "257", "-1", "+2", "2 ", "x", "", "1000"}) {
        INFO("--jobs '" << jobs << "'");
        const ProcessResult precompile = run_cli({"precompile", "--model", "qwen3-30b-a3b", "--jobs", jobs});
        CHECK(precompile.status == 1);
        CHECK(mentions(precompile.err, std::string("bad --jobs '") + jobs + "': expected 1 to 256 compiles at once"));
    }
    for (const char* jobs : {"1", "256"}) {
        const ProcessResult accepted = run_cli({"precompile", "--model", "qwen3-30b-a3b", "--jobs", jobs, "--tokens", "x"});
        CHECK(accepted.status == 1);
        CHECK(mentions(accepted.err, "bad --tokens 'x'"));
    }
}

TEST_CASE("output that cannot be written fails the command", "[cpu][cli]") {
    if (!std::filesystem::exists("/dev/full")) {
        WARN("no /dev/full on this machine: not tested");
        return;
    }
    const std::string spec = "fwd:bf16:n1536:k2048:e128:topk8:sm_90a";
    // Short output stays in stdout's buffer until the final flush; --expand's fails on the way.
    for (const std::vector<std::string>& command :
         {std::vector<std::string>{"source", spec}, {"source", spec, "--expand"}, {"--help"}}) {
        const ProcessResult full = run_cli(command, {}, "/dev/full");
        INFO(command[0] << (command.size() > 2 ? " " + command[2] : "") << ": " << full.err);
        CHECK(full.status == 1);
        CHECK(mentions(full.err, "moejit: cannot write output: "));
    }
    const ProcessResult full = run_cli({"source", spec}, {}, "/dev/full");
    CHECK(mentions(full.err, "moejit: cannot write output: No space left on device"));
    // The same commands succeed where the output has room.
    CHECK(run_cli({"source", spec}).status == 0);
}

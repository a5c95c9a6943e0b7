// Tiling strings and the checks every Config passes before code is generated (no GPU, no NVRTC).
#include "codegen/config.hpp"

#include <moejit/error.hpp>

#include "tests/catch.hpp"

using namespace moejit;

TEST_CASE("config strings round trip, with and without a CTA pair", "[cpu]") {
    for (const char* text : {"m128n128s3w2x4", "m64n64s4w1x2", "h:m128n256s3", "h:m64n128s8", "h:m128n256s3c2",
                             "h:m128n128s6c2"}) {
        const Config config = Config::parse(text);
        CHECK(config.to_string() == text);
    }
    CHECK(Config::parse("h:m128n256s3c2").cluster == 2);
    CHECK(Config::parse("h:m128n256s3").cluster == 1);
    CHECK_FALSE(Config::parse("h:m128n256s3") == Config::parse("h:m128n256s3c2"));
    for (const char* bad : {"h:m128n256s3c", "h:m128n256s3c2x", "h:m128n256s3c02", "m128n128s3w2x4c2", "h:m128n256",
                            "m128n128s3", ""})
        CHECK_THROWS_AS(Config::parse(bad), Error);
}

TEST_CASE("check_config accepts CTA pairs only for Hopper forward and dX tiles of n128 or more", "[cpu]") {
    Problem forward = parse_spec("fwd:bf16:n1536:k2048:e128:topk8:sm_90a");
    Problem dx = forward, dw = forward;
    dx.op = Op::dx;
    dw.op = Op::dw;
    CHECK_NOTHROW(check_config(forward, Config::parse("h:m128n256s3c2")));
    CHECK_NOTHROW(check_config(dx, Config::parse("h:m128n128s4c2")));
    CHECK_THROWS_AS(check_config(dw, Config::parse("h:m128n256s3c2")), Error);
    CHECK_THROWS_AS(check_config(forward, Config::parse("h:m128n64s4c2")), Error);
    CHECK_THROWS_AS(check_config(forward, Config::parse("h:m128n256s3c3")), Error);
    // The static shared memory counts too: 9 stages of 64x128 plus staging fit in the 227 KB alone,
    // not next to the scheduler's prefix sums over 128 experts.
    CHECK_THROWS_AS(check_config(forward, Config::parse("h:m64n128s9")), Error);
    CHECK_NOTHROW(check_config(forward, Config::parse("h:m64n128s8")));
    CHECK_THROWS_AS(check_config(forward, Config::parse("h:m128n256s5")), Error);
    CHECK_NOTHROW(check_config(forward, Config::parse("h:m128n256s4")));
    Problem ampere = forward;
    ampere.arch = Arch::parse("sm_80");
    CHECK_THROWS_AS(check_config(ampere, Config::parse("h:m128n256s3")), Error);
}

TEST_CASE("claims_tiles: Hopper kernels that gather A into 128-row tiles, without clusters", "[cpu]") {
    const Problem plain = parse_spec("fwd:bf16:n1536:k2048:e128:topk8:sm_90a");
    Problem gathered = plain, scattered = plain, dx_gathered = plain, dw = plain;
    gathered.permute_x = true;
    scattered.permute_y = true;  // the forward scatters its output rows: A is read by TMA
    dx_gathered.op = Op::dx;
    dx_gathered.permute_y = true;  // dX reads dY rows through gather_idx
    dw.op = Op::dw;
    dw.permute_x = true;
    const Config big = Config::parse("h:m128n256s3");
    CHECK(claims_tiles(gathered, big));
    CHECK(claims_tiles(dx_gathered, big));
    CHECK_FALSE(claims_tiles(plain, big));
    CHECK_FALSE(claims_tiles(scattered, big));
    CHECK_FALSE(claims_tiles(dw, big));
    CHECK_FALSE(claims_tiles(gathered, Config::parse("h:m128n256s3c2")));
    CHECK_FALSE(claims_tiles(gathered, Config::parse("h:m64n128s8")));
    CHECK_FALSE(claims_tiles(gathered, Config::parse("m128n128s3w2x4")));
}

TEST_CASE("every Hopper candidate passes check_config; pairs only for the row-grouped passes", "[cpu]") {
    for (const char* spec : {"fwd:bf16:n1536:k2048:e128:topk8:sm_90a", "dx:bf16:n2048:k768:e128:topk8:sm_90a",
                             "dw:bf16:n2048:k768:e128:topk8:sm_90a", "fwd:bf16:n14336:k4096:e8:topk2:sm_90a"}) {
        const Problem problem = parse_spec(spec);
        bool paired = false;
        for (const Config& config : candidate_configs(problem)) {
            INFO(spec << " " << config.to_string());
            CHECK(config.hopper());
            CHECK_NOTHROW(check_config(problem, config));
            paired = paired || config.cluster == 2;
        }
        CHECK(paired == (problem.op != Op::dw));
    }
}

TEST_CASE("dW's 128x256 heuristic keeps four stages, staging two boxes a warpgroup where they fit", "[cpu]") {
    constexpr size_t kRing = 4 * (128 + 256) * 64 * 2, kBox = 8192;
    // 128 experts: two boxes for each of the two consumer warpgroups.
    const Problem qwen3 = parse_spec("dw:bf16:n1536:k2048:e128:topk8:sm_90a");
    CHECK(choose_config(qwen3).to_string() == "h:m128n256s4");
    CHECK(dynamic_shared_bytes(qwen3, choose_config(qwen3)) == kRing + 2 * 2 * kBox + 1024);
    // 256 experts' prefix sums leave room for one box each, not for a second beside four stages.
    const Problem deepseek = parse_spec("dw:bf16:n4096:k7168:e256:topk8:sm_90a");
    CHECK(choose_config(deepseek).to_string() == "h:m128n256s4");
    CHECK(dynamic_shared_bytes(deepseek, choose_config(deepseek)) == kRing + 2 * kBox + 1024);
    CHECK(dynamic_shared_bytes(deepseek, Config::parse("h:m128n256s3")) == kRing * 3 / 4 + 2 * 2 * kBox + 1024);
    CHECK_NOTHROW(check_config(deepseek, choose_config(deepseek)));
}

// Tiling strings and the checks every Config passes before code is generated (no GPU, no NVRTC).
#include "codegen/config.hpp"

#include <moejit/error.hpp>

#include "tests/catch.hpp"
#include "tests/support/errors.hpp"

#include <algorithm>
#include <string>
#include <vector>

using namespace moejit;
using moejit::testing::error_message;
using moejit::testing::mentions;

TEST_CASE("config strings round trip, with and without a CTA pair", "[cpu]") {
    for (const char* text : {"m128n128s3w2x4", "m64n64s4w1x2", "h:m128n256s3", "h:m64n128s8", "h:m128n256s3c2",
                             "h:m128n128s6c2", "h:m128n256s8k32", "h:m128n256s8k32c2"}) {
        const Config config = Config::parse(text);
        CHECK(config.to_string() == text);
    }
    CHECK(Config::parse("h:m128n256s3c2").cluster == 2);
    CHECK(Config::parse("h:m128n256s3").cluster == 1);
    CHECK_FALSE(Config::parse("h:m128n256s3") == Config::parse("h:m128n256s3c2"));
    CHECK(Config::parse("h:m128n256s8k32c2").slice_k == 32);
    CHECK(Config::parse("h:m128n256s8k32c2").cluster == 2);
    CHECK(Config::parse("h:m128n256s4").slice_k == 64);
    CHECK_FALSE(Config::parse("h:m128n256s8") == Config::parse("h:m128n256s8k32"));
    for (const char* bad : {"h:m128n256s3c", "h:m128n256s3c2x", "h:m128n256s3c02", "m128n128s3w2x4c2", "h:m128n256",
                            "m128n128s3", "", "h:m128n256s8k", "h:m128n256s8c2k32", "h:m128n256s8k64",
                            "m128n128s3w2x4k32"})
        CHECK_THROWS_AS(Config::parse(bad), Error);
}

TEST_CASE("dW staging: as many boxes as fit beside the ring, up to a tile row's", "[cpu]") {
    // (The heuristic's four 128x256 stages: the next test case.)
    Problem dw = parse_spec("dw:bf16:n4096:k7168:e256:topk8:permute_x:sm_90a");  // deepseek-v3 gate_up
    CHECK(dw_staging_boxes(dw, Config::parse("h:m128n256s3")) == 4);      // a whole 256-column row
    CHECK(dw_staging_boxes(dw, Config::parse("h:m128n256s6k32")) == 4);  // the same ring bytes
    CHECK(dw_staging_boxes(dw, Config::parse("h:m64n128s8")) == 2);       // 128 columns: two boxes a row
    dw.out_fp32 = true;                                                   // eight boxes a row; four fit
    CHECK(dw_staging_boxes(dw, Config::parse("h:m128n256s3")) == 4);
}

TEST_CASE("check_config accepts CTA pairs only for Hopper tiles of n128 or more that share an operand", "[cpu]") {
    Problem forward = parse_spec("fwd:bf16:n1536:k2048:e128:topk8:sm_90a");
    Problem dx = forward, dw = forward;
    dx.op = Op::dx;
    dw.op = Op::dw;
    CHECK_NOTHROW(check_config(forward, Config::parse("h:m128n256s3c2")));
    CHECK_NOTHROW(check_config(dx, Config::parse("h:m128n128s4c2")));
    CHECK_NOTHROW(check_config(dw, Config::parse("h:m128n256s4c2")));
    CHECK_THROWS_AS(check_config(dw, Config::parse("h:m128n64s4c2")), Error);
    Problem dw_gathered = dw;  // X rows gathered by cp.async: nothing for a pair to multicast
    dw_gathered.permute_x = true;
    CHECK_THROWS_AS(check_config(dw_gathered, Config::parse("h:m128n256s4c2")), Error);
    // Four CTAs: only in dW, each loading one 64-column box of an n256 X slice.
    CHECK_NOTHROW(check_config(dw, Config::parse("h:m128n256s4c4")));
    CHECK_THROWS_AS(check_config(dw, Config::parse("h:m128n128s4c4")), Error);
    CHECK_THROWS_AS(check_config(forward, Config::parse("h:m128n256s3c4")), Error);
    CHECK(max_cluster(dw, Config::parse("h:m128n256s4")) == 4);
    CHECK(max_cluster(dw, Config::parse("h:m128n128s4")) == 2);
    CHECK(max_cluster(forward, Config::parse("h:m128n256s4")) == 2);
    CHECK(max_cluster(dw_gathered, Config::parse("h:m128n256s4")) == 1);
    CHECK(max_cluster(forward, Config::parse("m128n128s4w2x4")) == 1);
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

TEST_CASE("check_config: 192x192 tiles (three consumers) only in the row-grouped passes, not gated", "[cpu]") {
    const Problem forward = parse_spec("fwd:bf16:n1536:k2048:e128:topk8:sm_90a");
    Problem dx = forward, dw = forward, gated = forward;
    dx.op = Op::dx;
    dw.op = Op::dw;
    gated.gated = true;
    CHECK_NOTHROW(check_config(forward, Config::parse("h:m192n192s4")));
    CHECK_NOTHROW(check_config(dx, Config::parse("h:m192n192s3")));
    CHECK_NOTHROW(check_config(forward, Config::parse("h:m128n192s4")));
    // 96 accumulators a consumer at most beside two others; 4 stages of 48 KB plus three consumers' staging.
    CHECK_THROWS_AS(check_config(forward, Config::parse("h:m192n256s3")), Error);
    CHECK_THROWS_AS(check_config(forward, Config::parse("h:m192n192s5")), Error);
    CHECK_THROWS_AS(check_config(dw, Config::parse("h:m192n192s4")), Error);
    CHECK_THROWS_AS(check_config(dw, Config::parse("h:m128n192s4")), Error);
    CHECK_THROWS_AS(check_config(gated, Config::parse("h:m192n192s4")), Error);
    // Three 64-column boxes do not split over a pair.
    CHECK(max_cluster(forward, Config::parse("h:m192n192s4")) == 1);
    CHECK_THROWS_AS(check_config(dx, Config::parse("h:m192n192s4c2")), Error);
    // A tiling forced on every pass (GroupedGemm's override) falls back to 128x256 where 192 is not allowed.
    CHECK(adapt_to_pass(dw, Config::parse("h:m192n192s4")).to_string() == "h:m128n256s4");
    CHECK(adapt_to_pass(gated, Config::parse("h:m192n192s3")).to_string() == "h:m128n256s3");
    CHECK(adapt_to_pass(dx, Config::parse("h:m192n192s4")).to_string() == "h:m192n192s4");
    bool offered = false;
    for (const Config& config : candidate_configs(forward)) offered = offered || config.tile_m == 192;
    CHECK(offered);
    for (const Config& config : candidate_configs(gated)) CHECK(config.tile_n != 192);
    for (const Config& config : candidate_configs(dw)) CHECK(config.tile_m != 192);
}

TEST_CASE("check_config: 32-row stages only in Hopper dW, and at most 8 stages", "[cpu]") {
    const Problem forward = parse_spec("fwd:bf16:n1536:k2048:e128:topk8:sm_90a");
    Problem dx = forward, dw = forward;
    dx.op = Op::dx;
    dw.op = Op::dw;
    // Eight stages of [32 rows] x (128 + 256 columns) take the ring bytes of four of 64 rows.
    CHECK_NOTHROW(check_config(dw, Config::parse("h:m128n256s8k32")));
    CHECK_NOTHROW(check_config(dw, Config::parse("h:m128n256s8k32c2")));
    CHECK(dynamic_shared_bytes(dw, Config::parse("h:m128n256s8k32")) ==
          dynamic_shared_bytes(dw, Config::parse("h:m128n256s4")));
    CHECK(mentions(error_message([&] { check_config(forward, Config::parse("h:m128n256s8k32")); }), "only in dW"));
    CHECK_THROWS_AS(check_config(dx, Config::parse("h:m128n256s8k32")), Error);
    CHECK(mentions(error_message([&] { check_config(dw, Config::parse("h:m128n256s8k16")); }), "only in dW"));
    CHECK(mentions(error_message([&] { check_config(dw, Config::parse("h:m64n64s9k32")); }), "3 to 8 stages"));
    CHECK_THROWS_AS(check_config(dw, Config::parse("h:m128n256s9k32")), Error);
    // An override for every pass: dW keeps its 32-row stages, the others take the same ring in 64-row ones.
    CHECK(adapt_to_pass(dw, Config::parse("h:m128n256s8k32c4")).to_string() == "h:m128n256s8k32c4");
    CHECK(adapt_to_pass(forward, Config::parse("h:m128n256s8k32c4")).to_string() == "h:m128n256s4c2");
    CHECK(adapt_to_pass(dx, Config::parse("h:m128n128s8k32")).to_string() == "h:m128n128s4");
    CHECK(adapt_to_pass(forward, Config::parse("h:m128n256s3")).to_string() == "h:m128n256s3");
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

TEST_CASE("every Hopper candidate passes check_config, CTA pairs among them for forward and dX", "[cpu]") {
    for (const char* spec : {"fwd:bf16:n1536:k2048:e128:topk8:sm_90a", "dx:bf16:n2048:k768:e128:topk8:sm_90a",
                             "dw:bf16:n2048:k768:e128:topk8:sm_90a", "fwd:bf16:n14336:k4096:e8:topk2:sm_90a",
                             "dw:bf16:n2048:k768:e128:topk8:permute_x:sm_90a"}) {
        const Problem problem = parse_spec(spec);
        bool paired = false, fours = false, short_stages = false;
        for (const Config& config : candidate_configs(problem)) {
            INFO(spec << " " << config.to_string());
            CHECK(config.hopper());
            CHECK_NOTHROW(check_config(problem, config));
            paired = paired || config.cluster == 2;
            fours = fours || config.cluster == 4;
            short_stages = short_stages || config.slice_k == 32;
        }
        CHECK(paired == (problem.op != Op::dw));  // dW clusters measured slower: accepted, not offered
        CHECK_FALSE(fours);
        CHECK(short_stages == (problem.op == Op::dw));
    }
}

TEST_CASE("dW heuristic: 128x256 tiles in four stages, two staging boxes where they fit; 64x128 where few", "[cpu]") {
    constexpr size_t kRing = 4 * (128 + 256) * 64 * 2, kBox = 8192;
    // 128 experts: two boxes for each of the two consumer warpgroups.
    const Problem qwen3 = parse_spec("dw:bf16:n1536:k2048:e128:topk8:sm_90a");
    CHECK(choose_config(qwen3).to_string() == "h:m128n256s4");
    CHECK(dynamic_shared_bytes(qwen3, choose_config(qwen3)) == kRing + 2 * 2 * kBox + 1024);
    // 256 experts: dW keeps row offsets only (4 bytes an expert), 2 KB of static shared memory
    // once aligned, which leaves exactly room for two boxes beside four stages.
    const Problem deepseek = parse_spec("dw:bf16:n4096:k7168:e256:topk8:sm_90a");
    CHECK(choose_config(deepseek).to_string() == "h:m128n256s4");
    CHECK(dynamic_shared_bytes(deepseek, choose_config(deepseek)) == kRing + 2 * 2 * kBox + 1024);
    CHECK(dynamic_shared_bytes(deepseek, choose_config(deepseek)) + 2048 == 227 * 1024);
    CHECK_NOTHROW(check_config(deepseek, choose_config(deepseek)));
    // 512 experts' offsets (3 KB aligned) leave room for one box each, not for a second.
    const Problem many = parse_spec("dw:bf16:n4096:k7168:e512:topk8:sm_90a");
    CHECK(choose_config(many).to_string() == "h:m128n256s4");
    CHECK(dynamic_shared_bytes(many, choose_config(many)) == kRing + 2 * kBox + 1024);
    // Three stages leave room for a whole 256-column row of boxes each (four).
    CHECK(dynamic_shared_bytes(many, Config::parse("h:m128n256s3")) == kRing * 3 / 4 + 2 * 4 * kBox + 1024);
    CHECK_NOTHROW(check_config(many, choose_config(many)));
    // Fewer 128x256 tiles than multiprocessors (a router's dW: 8 of them): 64x128 tiles, four times as many.
    const Problem router = parse_spec("dw:bf16:n128:k2048:e1:topk1:out_fp32:sm_90a");
    CHECK(choose_config(router).to_string() == "h:m64n128s8");
    CHECK_NOTHROW(check_config(router, choose_config(router)));
    CHECK(choose_config(parse_spec("dw:bf16:n1024:k4096:e1:topk1:sm_90a")).to_string() == "h:m64n128s8");  // 128
    CHECK(choose_config(parse_spec("dw:bf16:n2048:k4096:e1:topk1:sm_90a")).to_string() == "h:m128n256s4");  // 256
}

TEST_CASE("forward heuristic: one 128-column tile of outputs takes 64-row tiles at every row count", "[cpu]") {
    // The router's forward: [T, 2048] x [2048, 128]; the rows are read once whatever the tile height.
    const Problem router = parse_spec("fwd:bf16:n128:k2048:e1:topk1:sm_90a");
    for (RowsBucket bucket : kRowsBuckets) {
        INFO(to_string(bucket));
        CHECK(choose_config(router, bucket).to_string() == "h:m64n128s8");
    }
    CHECK_NOTHROW(check_config(router, choose_config(router)));
    // 129 output columns need two tiles of 128 (or one of 256): the row-count rules apply again.
    CHECK(choose_config(parse_spec("fwd:bf16:n136:k2048:e1:topk1:sm_90a")).to_string() == "h:m128n256s4");
    // The gated forward's outputs are N/2 wide.
    CHECK(choose_config(parse_spec("fwd:bf16:n256:k2048:e8:topk2:gated:sm_90a")).to_string() == "h:m64n128s8");
    // dX of the router writes K = 2048 columns: not narrow.
    CHECK(choose_config(parse_spec("dx:bf16:n128:k2048:e1:topk1:sm_90a")).tile_m == 128);
}

TEST_CASE("forward heuristic: at most 64 output columns take 64-wide tiles at many rows", "[cpu]") {
    // llama4-scout's router: [T, 5120] x [5120, 16].
    const Problem router = parse_spec("fwd:bf16:n16:k5120:e1:topk1:sm_90a");
    CHECK(choose_config(router, RowsBucket::large).to_string() == "h:m128n64s8");
    CHECK_NOTHROW(check_config(router, choose_config(router, RowsBucket::large)));
    CHECK(choose_config(router, RowsBucket::decode).to_string() == "h:m64n128s8");
    // The tuner offers 64-wide tiles there, and only there.
    auto offers_n64 = [](const Problem& problem) {
        for (const Config& config : candidate_configs(problem))
            if (config.tile_n == 64) return true;
        return false;
    };
    CHECK(offers_n64(router));
    CHECK_FALSE(offers_n64(parse_spec("fwd:bf16:n128:k2048:e1:topk1:sm_90a")));
    CHECK_FALSE(offers_n64(parse_spec("dx:bf16:n16:k5120:e1:topk1:sm_90a")));
    // A gated forward of 64 outputs keeps 128-wide tiles: its epilogue pairs gate and up columns.
    const Problem gated = parse_spec("fwd:bf16:n128:k2048:e8:topk2:gated:sm_90a");
    CHECK(choose_config(gated, RowsBucket::large).to_string() == "h:m64n128s8");
    CHECK_FALSE(offers_n64(gated));
}

TEST_CASE("dX heuristic: a reduction of one slice takes 64x256 tiles in three stages at many rows", "[cpu]") {
    // llama4-scout's router dX: [T, 16] x [16, 5120].
    const Problem router_dx = parse_spec("dx:bf16:n16:k5120:e1:topk1:sm_90a");
    CHECK(choose_config(router_dx, RowsBucket::large).to_string() == "h:m64n256s3");
    CHECK_NOTHROW(check_config(router_dx, choose_config(router_dx, RowsBucket::large)));
    CHECK(choose_config(router_dx, RowsBucket::small).to_string() == "h:m64n256s5");
    CHECK(choose_config(parse_spec("dx:bf16:n64:k5120:e1:topk1:sm_90a")).to_string() == "h:m64n256s3");
    // A reduction of two slices (the Qwen3 routers' dX), or one that gathers, keeps 128-row tiles.
    CHECK(choose_config(parse_spec("dx:bf16:n128:k4096:e1:topk1:sm_90a")).to_string() == "h:m128n256s4");
    CHECK(choose_config(parse_spec("dx:bf16:n72:k5120:e1:topk1:sm_90a")).to_string() == "h:m128n256s4");
    CHECK(choose_config(parse_spec("dx:bf16:n16:k5120:e4:topk1:permute_y:sm_90a")).to_string() == "h:m128n256s4c2");
}

TEST_CASE("heuristic: experts just past two 128-row tiles swap operands in the forward and dX of rows loaded by TMA",
          "[cpu]") {
    // Mean rows per expert (rounded up): 241-288 are the medium bucket, inside the large range.
    CHECK(rows_bucket(240 * 256, 256) == RowsBucket::large);
    CHECK(rows_bucket(240 * 256 + 1, 256) == RowsBucket::medium);
    CHECK(rows_bucket(8192 * 8, 256) == RowsBucket::medium);  // deepseek-v3 at 8192 tokens
    CHECK(rows_bucket(288 * 256, 256) == RowsBucket::medium);
    CHECK(rows_bucket(288 * 256 + 1, 256) == RowsBucket::large);
    CHECK(std::string(to_string(RowsBucket::medium)) == "medium");

    // Plain rows, and rows that scatter or scale (deepseek-v3's fused down forward and gate_up dX).
    for (const char* spec : {"fwd:bf16:n4096:k7168:e256:topk8:sm_90a", "dx:bf16:n4096:k7168:e256:topk8:sm_90a",
                             "fwd:bf16:n7168:k2048:e256:topk8:permute_y:mul_post:sm_90a",
                             "fwd:bf16:n7168:k2048:e256:topk8:permute_y:sm_90a",
                             "dx:bf16:n4096:k7168:e256:topk8:permute_x:sm_90a"}) {
        const Problem problem = parse_spec(spec);
        INFO(spec);
        const Config chosen = choose_config(problem, RowsBucket::medium);
        CHECK(chosen.to_string() == "h:m288n128s4swap");
        CHECK_NOTHROW(check_config(problem, chosen));
        CHECK(choose_config(problem, RowsBucket::large).to_string() == "h:m128n256s4");
        CHECK(choose_config(problem, RowsBucket::medium, KernelPath::portable).path == KernelPath::portable);
        const std::vector<Config> candidates = candidate_configs(problem);
        CHECK(std::find(candidates.begin(), candidates.end(), chosen) != candidates.end());
    }
    // The host's shared memory mirrors the kernel's SharedBytes: four 52 KB stages, 32 staging rows
    // of 144 bytes a consumer, and where rows scatter or scale a consumer's 288 x 8-byte row table.
    const Config m288 = Config::parse("h:m288n128s4swap");
    constexpr size_t kSwapRing = 4 * (288 + 128) * 128, kSwapStaging = 2 * 32 * 144, kSwapTables = 2 * 288 * 8;
    CHECK(dynamic_shared_bytes(parse_spec("fwd:bf16:n4096:k7168:e256:topk8:sm_90a"), m288) == kSwapRing + kSwapStaging + 1024);
    for (const char* spec : {"fwd:bf16:n7168:k2048:e256:topk8:permute_y:sm_90a",
                             "fwd:bf16:n7168:k2048:e256:topk8:permute_y:mul_post:sm_90a",
                             "dx:bf16:n4096:k7168:e256:topk8:permute_x:sm_90a"})
        CHECK(dynamic_shared_bytes(parse_spec(spec), m288) == kSwapRing + kSwapStaging + kSwapTables + 1024);
    // Where the operands cannot swap (gathered or gated rows; dW), medium is large.
    for (const char* spec : {"fwd:bf16:n4096:k7168:e256:topk8:permute_x:gated:sm_90a",
                             "fwd:bf16:n4096:k7168:e256:topk8:permute_x:sm_90a",
                             "dx:bf16:n7168:k2048:e256:topk8:permute_y:mul_post:sm_90a",
                             "dx:bf16:n4096:k7168:e256:topk8:permute_y:sm_90a", "dw:bf16:n4096:k7168:e256:topk8:sm_90a"}) {
        const Problem problem = parse_spec(spec);
        INFO(spec);
        CHECK_FALSE(choose_config(problem, RowsBucket::medium).swap_ab);
        CHECK(choose_config(problem, RowsBucket::medium) == choose_config(problem, RowsBucket::large));
        for (const Config& candidate : candidate_configs(problem)) CHECK_FALSE(candidate.swap_ab);
    }
    // Swapped tiles take four stages where they fit, three where many experts' row offsets leave
    // no room for four (2048 experts: 17 KB of static shared memory).
    CHECK(choose_config(parse_spec("fwd:bf16:n4096:k7168:e2048:topk8:sm_90a"), RowsBucket::medium).to_string() ==
          "h:m288n128s3swap");
}

TEST_CASE("heuristic: dX of gathered rows in CTA pairs; fp32 dW in 32-row stages only for long gathered medium rows",
          "[cpu]") {
    // dX that gathers dY (permute_y) takes pairs sharing the weight tile, at any row count.
    for (const char* spec : {"dx:bf16:n7168:k2048:e256:topk8:permute_y:sm_90a",           // deepseek-v3 down
                             "dx:bf16:n7168:k2048:e256:topk8:permute_y:mul_post:sm_90a",  //
                             "dx:bf16:n4096:k14336:e8:topk2:permute_y:sm_90a"}) {         // mixtral-8x7b down
        const Problem gathered = parse_spec(spec);
        INFO(spec);
        for (RowsBucket bucket : {RowsBucket::medium, RowsBucket::large}) {
            const Config chosen = choose_config(gathered, bucket);
            CHECK(chosen.to_string() == "h:m128n256s4c2");
            CHECK_NOTHROW(check_config(gathered, chosen));
            const std::vector<Config> candidates = candidate_configs(gathered);
            CHECK(std::find(candidates.begin(), candidates.end(), chosen) != candidates.end());
        }
        CHECK(choose_config(gathered, RowsBucket::large, KernelPath::portable).cluster == 1);
    }
    // Other row-grouped passes keep single CTAs (pairs measured equal or slower there).
    for (const char* spec : {"dx:bf16:n4096:k7168:e256:topk8:permute_x:sm_90a", "dx:bf16:n1536:k2048:e128:topk8:sm_90a",
                             "fwd:bf16:n4096:k7168:e256:topk8:permute_x:gated:sm_90a",
                             "fwd:bf16:n7168:k2048:e256:topk8:permute_y:mul_post:sm_90a"}) {
        INFO(spec);
        CHECK(choose_config(parse_spec(spec), RowsBucket::large).cluster == 1);
    }
    // fp32 dW: four 64-row stages, except gathered X (permute_x) rows of 6144 or more at 241-288 rows an expert.
    const Problem direct = parse_spec("dw:bf16:n2048:k768:e128:topk8:out_fp32:sm_90a");
    const Problem gathered = parse_spec("dw:bf16:n4096:k7168:e256:topk8:permute_x:out_fp32:sm_90a");
    for (RowsBucket bucket : {RowsBucket::medium, RowsBucket::large})
        CHECK(choose_config(direct, bucket).to_string() == "h:m128n256s4");
    CHECK(choose_config(gathered, RowsBucket::medium).to_string() == "h:m128n256s8k32");
    CHECK_NOTHROW(check_config(gathered, choose_config(gathered, RowsBucket::medium)));
    CHECK(choose_config(gathered, RowsBucket::large).to_string() == "h:m128n256s4");
    for (const char* spec : {"dw:bf16:n5760:k2880:e128:topk4:permute_x:out_fp32:sm_90a",    // gpt-oss-120b gate_up
                             "dw:bf16:n16384:k5120:e16:topk1:permute_x:out_fp32:sm_90a",    // llama4-scout gate_up
                             "dw:bf16:n4096:k6136:e256:topk8:permute_x:out_fp32:sm_90a"}) {  // a row short of 6144
        INFO(spec);
        CHECK(choose_config(parse_spec(spec), RowsBucket::medium).to_string() == "h:m128n256s4");
    }
    CHECK(choose_config(parse_spec("dw:bf16:n4096:k6144:e256:topk8:permute_x:out_fp32:sm_90a"), RowsBucket::medium)
              .to_string() == "h:m128n256s8k32");
    Problem gathered_bf16 = gathered;
    gathered_bf16.out_fp32 = false;
    CHECK(choose_config(gathered_bf16, RowsBucket::medium).to_string() == "h:m128n256s4");
}

namespace {

std::string config_error(const Problem& problem, const std::string& config) {
    return error_message([&] { check_config(problem, Config::parse(config)); });
}

}  // namespace

TEST_CASE("portable check_config counts the scheduler's static shared memory", "[cpu]") {
    // 512 experts: the scheduler keeps 8 * 513 bytes of prefix sums and 8 per warp (4136 with four
    // warps, 4224 after the ring's 128-byte alignment) beside 3 x 32 KB of ring: over sm_86's 99 KB.
    const Problem many = parse_spec("fwd:bf16:n1536:k2048:e512:topk8:sm_86");
    const std::string error = config_error(many, "m128n128s3w2x2");
    INFO(error);
    CHECK(mentions(error, "needs 102528 bytes of shared memory; sm_86 allows 101376"));
    CHECK(config_error(many, "m128n128s2w2x2").empty());
    // The heuristic then takes fewer stages rather than a tiling that does not fit.
    CHECK(choose_config(many).to_string() == "m128n128s2w2x2");
    // With 128 experts three stages still fit (98304 + 1152 bytes).
    const Problem qwen3 = parse_spec("fwd:bf16:n1536:k2048:e128:topk8:sm_86");
    CHECK(choose_config(qwen3).to_string() == "m128n128s3w2x2");
    CHECK(config_error(qwen3, "m128n128s3w2x2").empty());
}

TEST_CASE("the portable heuristic and candidates fit on every arch, for every expert count", "[cpu]") {
    for (const char* arch : {"sm_80", "sm_86", "sm_89", "sm_90a", "sm_100a"})
        for (int experts : {1, 8, 128, 256, 512, 1024, 4096})
            for (const char* pass : {"fwd", "dx", "dw", "fwd_gated"}) {
                Problem problem;
                problem.op = pass[1] == 'x' ? Op::dx : pass[1] == 'w' ? Op::dw : Op::fwd;
                problem.gated = std::string(pass) == "fwd_gated";
                problem.n = 1536;
                problem.k = 2048;
                problem.experts = experts;
                problem.topk = 1;
                problem.arch = Arch::parse(arch);
                const Config chosen = choose_config(problem, RowsBucket::large, KernelPath::portable);
                INFO(to_spec(problem) << " " << chosen.to_string());
                CHECK_FALSE(chosen.hopper());
                CHECK(chosen.stages >= 2);
                CHECK_NOTHROW(check_config(problem, chosen));
                if (problem.arch.sm() != 90)
                    for (const Config& candidate : candidate_configs(problem))
                        CHECK_NOTHROW(check_config(problem, candidate));
            }
}

TEST_CASE("portable check_config rejects what the templates' static_asserts would, before NVRTC", "[cpu]") {
    const Problem forward = parse_spec("fwd:bf16:n1536:k2048:e128:topk8:sm_80");
    Problem dx = forward, dw = forward;
    dx.op = Op::dx;
    dw.op = Op::dw;
    const struct {
        const Problem& problem;
        const char* config;
        const char* mention;
    } bad[] = {
        // Warp tiles of whole 16x16 blocks (WarpTileM % 16 == 0 in kernels/sm80_grouped_gemm.cuh).
        {forward, "m17n16s2w1x1", "tile M must be a multiple of 16 x warps M (16)"},
        {forward, "m128n128s3w3x1", "multiple of 16 x warps M (48)"},
        {forward, "m128n40s3w1x1", "tile N a multiple of 16 x warps N (16)"},
        // Whole load passes (static_assert "whole load passes" in mma/sm80_operand.cuh).
        {forward, "m16n48s2w1x3", "the X tile's 16 rows are not a whole number of load passes"},
        {forward, "m256n64s2w8x4", "the W tile's 64 rows"},
        {dx, "m128n80s3w2x1", "the W tile's 80 columns"},
        {dx, "m128n64s2w8x4", "1024 threads must copy its 64 rows of 8 chunks"},
        {dw, "m96n64s2w2x1", "the dY tile's 96 columns"},
        // A [64][96] tile would compile, but its swizzle would spill chunks into the next row.
        {dx, "m96n96s2w2x3", "the W tile's 96 columns"},
        // Sizes that once overflowed int in the shared-memory arithmetic.
        {forward, "m2147483647n16s2w1x1", "portable tile sides are 16 to 1024"},
        {forward, "m2147483632n16s2w1x1", "portable tile sides are 16 to 1024"},
        {forward, "m128n128s2w2147483647x1", "1 to 32 warps"},
        {forward, "m128n128s2w8x8", "1 to 32 warps"},
        {forward, "m128n128s1w2x2", "at least 2 stages"},
        {forward, "m128n128s2147483647w2x2", "bytes of shared memory"},
    };
    for (const auto& [problem, config, mention] : bad) {
        const std::string error = config_error(problem, config);
        INFO(to_spec(problem) << " " << config << " -> " << error);
        CHECK(mentions(error, mention));
    }
    for (const auto& [problem, config] : {std::pair<const Problem&, const char*>{forward, "m48n48s2w1x3"},
                                          {forward, "m32n32s2w2x2"},
                                          {forward, "m64n64s2w4x1"},
                                          {dx, "m64n64s2w1x1"},
                                          {dx, "m128n128s4w2x2"},
                                          {dw, "m128n256s2w2x4"},
                                          {dw, "m128n128s4w2x4"}}) {
        const std::string error = config_error(problem, config);
        INFO(to_spec(problem) << " " << config << " -> " << error);
        CHECK(error.empty());
    }
}

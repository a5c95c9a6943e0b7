#include "codegen/config.hpp"

#include <moejit/error.hpp>

#include <algorithm>
#include <cstdio>
#include <optional>

namespace moejit {

std::string Config::to_string() const {
    const std::string tiles = "m" + std::to_string(tile_m) + "n" + std::to_string(tile_n) + "s" + std::to_string(stages);
    if (hopper())
        return "h:" + tiles + (slice_k != 64 ? "k" + std::to_string(slice_k) : "") +
               (cluster > 1 ? "c" + std::to_string(cluster) : "") + (swap_ab ? "swap" : "");
    return tiles + "w" + std::to_string(warps_m) + "x" + std::to_string(warps_n);
}

Config Config::parse(const std::string& text) {
    Config config;
    int consumed = 0;
    bool parsed;
    if (text.rfind("h:", 0) == 0) {
        config.path = KernelPath::hopper;
        parsed = std::sscanf(text.c_str(), "h:m%dn%ds%d%n", &config.tile_m, &config.tile_n, &config.stages,
                             &consumed) == 3;
        // Optional suffixes, in this order: "k<slice_k>", "c<cluster>".
        for (const auto& [format, field] : {std::pair{"k%d%n", &config.slice_k}, std::pair{"c%d%n", &config.cluster}}) {
            int suffix = 0;
            if (parsed && static_cast<size_t>(consumed) < text.size() && text[consumed] == format[0]) {
                parsed = std::sscanf(text.c_str() + consumed, format, field, &suffix) == 1;
                consumed += suffix;
            }
        }
        if (parsed && text.compare(consumed, std::string::npos, "swap") == 0) {
            config.swap_ab = true;
            consumed += 4;
        }
    } else {
        parsed = std::sscanf(text.c_str(), "m%dn%ds%dw%dx%d%n", &config.tile_m, &config.tile_n, &config.stages,
                             &config.warps_m, &config.warps_n, &consumed) == 5;
    }
    if (!parsed || static_cast<size_t>(consumed) != text.size() || config.to_string() != text)
        throw Error("bad config '" + text +
                    "': expected e.g. m128n128s4w2x4 (portable: tile M, tile N, stages, warps) or h:m128n256s4 "
                    "(hopper: tile M, tile N, stages; dW may add k32, 32-row stages; a c2 suffix pairs CTAs in clusters, c4 "
                    "in dW clusters of four; h:m288n128s4swap swaps the operands of the forward and dX)");
    return config;
}

size_t max_shared_bytes(const Arch& arch) {
    switch (arch.sm()) {
        case 80: return 163 * 1024;
        case 86:
        case 89: return 99 * 1024;
        default: return 227 * 1024;  // sm_90, sm_100
    }
}

bool gathers_rows(const Problem& problem) {
    return (problem.op == Op::fwd && problem.permute_x) || (problem.op == Op::dx && problem.permute_y);
}

bool scatters_rows(const Problem& problem) {
    return (problem.op == Op::fwd && problem.permute_y) || (problem.op == Op::dx && problem.permute_x);
}

bool claims_tiles(const Problem& problem, const Config& config) {
    return config.hopper() && config.cluster == 1 && (config.swap_ab || (config.tile_m == 128 && gathers_rows(problem)));
}

bool hopper_path_available(const Problem& problem) {
    const bool gemm = problem.op == Op::fwd || problem.op == Op::dx || problem.op == Op::dw;
    return gemm && problem.arch.sm() == 90 && problem.arch.arch_specific;
}

RowsBucket rows_bucket(int64_t rows, int experts) {
    const int64_t per_expert = (rows + std::max(experts, 1) - 1) / std::max(experts, 1);
    if (per_expert <= 16) return RowsBucket::decode;
    if (per_expert <= 96) return RowsBucket::small;
    if (per_expert > 240 && per_expert <= 288) return RowsBucket::medium;
    return RowsBucket::large;
}

const char* to_string(RowsBucket bucket) {
    switch (bucket) {
        case RowsBucket::decode: return "decode";
        case RowsBucket::small: return "small";
        case RowsBucket::medium: return "medium";
        case RowsBucket::large: return "large";
    }
    return "?";
}

namespace {

Config hopper_config(int tile_m, int tile_n, int stages, int slice_k = 64) {
    Config config;
    config.path = KernelPath::hopper;
    config.tile_m = tile_m;
    config.tile_n = tile_n;
    config.stages = stages;
    config.slice_k = slice_k;
    return config;
}

// The Hopper kernels' static shared memory, which shares the block's budget with the dynamic
// part: the scheduler's prefix sums over the experts (rows and tiles, 8 bytes each; dW keeps the
// rows only, 4), then at most 8 stages of barrier pairs, 12 warps of totals and the tile queue's
// two slots (264 bytes), rounded up to the 1024-byte alignment of the dynamic ring that follows
// (ptxas reports 2048 bytes for dW with 256 experts, whose static variables take 1148).
size_t hopper_static_bytes(const Problem& problem) {
    const size_t bytes = size_t(problem.experts + 1) * (problem.op == Op::dw ? 4 : 8) + 320;
    return (bytes + 1023) / 1024 * 1024;
}

size_t ring_bytes(const Config& config) {
    return size_t(config.stages) * (config.tile_m + config.tile_n) * config.slice_k * 2;
}

// The Hopper kernels' dynamic shared memory: the ring, the epilogue's staging, swapped tiles' row
// tables, the row-grouped kernel's zero rows and 1 KB to align the ring to the 1024-byte swizzle
// period. The row-grouped passes stage 64 rows of 128 + 16 bytes per consumer
// (epilogue/sm90_staged_rows.cuh); dW `dw_boxes` 8 KB boxes per consumer (sm90_box_store.cuh).
size_t hopper_dynamic_bytes(const Problem& problem, const Config& config, int dw_boxes) {
    // Swapped m288 tiles stage 32 rows a consumer (kernels/sm90_grouped_gemm_swap_ab.cuh, StagingRows).
    const size_t staging_rows = config.swap_ab && config.tile_m <= 288 ? 32 : 64;
    const size_t staging = problem.op == Op::dw ? size_t(config.consumers()) * dw_boxes * kStagingBoxBytes
                                                : size_t(config.consumers()) * staging_rows * 144;
    // The row-grouped kernel's 3 KB of zero rows (the A of warpgroups past their expert's end).
    const size_t zero_rows = problem.op != Op::dw && !config.swap_ab ? 3072 : 0;
    return ring_bytes(config) + staging + swap_ab_table_bytes(problem, config) + zero_rows + 1024;
}

// The portable kernels' static shared memory: the scheduler's prefix sums over the experts and its
// per-warp totals (templates/scheduler/grouped_tiles.cuh: rows and tiles, 8 bytes each; dW keeps
// the rows only, 4, beside one unused int of each tile array), rounded up to the 128-byte
// alignment of the dynamic ring that follows them.
size_t portable_static_bytes(const Problem& problem, const Config& config) {
    const size_t per_item = problem.op == Op::dw ? 4 : 8, unused = problem.op == Op::dw ? 8 : 0;
    const size_t warps = size_t(config.warps_m) * config.warps_n;
    const size_t scheduler = size_t(problem.experts + 1) * per_item + warps * per_item + unused;
    return (scheduler + 127) / 128 * 128;
}

size_t block_shared_bytes(const Problem& problem, const Config& config) {
    return dynamic_shared_bytes(problem, config) +
           (config.hopper() ? hopper_static_bytes(problem) : portable_static_bytes(problem, config));
}

// As many stages as fit next to the static shared memory.
int hopper_stages(const Problem& problem, int tile_m, int tile_n, int most, int slice_k = 64) {
    const size_t stage_bytes = ring_bytes(hopper_config(tile_m, tile_n, 1, slice_k));
    // A ring with no stages: the smallest output staging (dW: one box), the alignment slack and the static part.
    const Config empty = hopper_config(tile_m, tile_n, 0, slice_k);
    const size_t room =
        max_shared_bytes(problem.arch) - hopper_dynamic_bytes(problem, empty, 1) - hopper_static_bytes(problem);
    return static_cast<int>(std::min<size_t>(most, room / stage_bytes));
}

// The forward or dX of plain rows: no gated epilogue, no gathered or scattered rows, no fused
// routing weights.
bool plain_rows(const Problem& problem) {
    const bool row_grouped = problem.op == Op::fwd || problem.op == Op::dx;
    return row_grouped && !problem.gated && !problem.permute_x && !problem.permute_y && !problem.fuse_mul_post;
}

// Elements each output of the row-grouped passes sums over: K in the forward, N in dX.
int64_t reduction_length(const Problem& problem) {
    return problem.op == Op::fwd ? problem.k : problem.n;
}

// Columns of the row-grouped passes' output (dW: of X, the tile's inner side).
int64_t output_columns(const Problem& problem) {
    return problem.op == Op::fwd ? (problem.gated ? problem.n / 2 : problem.n) : problem.k;
}

// Swapped operands (kernels/sm90_grouped_gemm_swap_ab.cuh): four stages of 288 routed rows by 128
// output columns, or three where the experts' static shared memory (and, where rows scatter or
// scale, the row tables) leaves no room for four (three
// stages of 320 rows measured 5-12% slower than four of 288 at deepseek-v3, H100).
std::optional<Config> swapped_config(const Problem& problem) {
    for (int stages : {4, 3}) {
        Config config = hopper_config(288, 128, stages);
        config.swap_ab = true;
        if (block_shared_bytes(problem, config) <= max_shared_bytes(problem.arch)) return config;
    }
    return std::nullopt;
}

// Hopper tiles 64 wide: where at most 64 columns are output (routers of up to 64 experts), so that
// the MMA is not mostly zero weight rows that TMA fills in; not for the gated epilogue, which pairs
// gate and up columns in tiles of 128 or 256.
bool takes_64_wide_tiles(const Problem& problem) {
    return output_columns(problem) <= 64 && !(problem.gated && problem.op == Op::fwd);
}

Config choose_portable(const Problem& problem) {
    Config config;
    // Narrow outputs waste half of a 128-wide tile; 64 keeps every column busy.
    if (output_columns(problem) <= 64) config.tile_n = 64;
    // Row-grouped passes: four warps of 64x64 (fewer ldmatrix per mma) measured 5-15% faster than
    // eight warps of 64x32 on H100 (qwen3-30b-a3b, 8192 tokens); dW measured the same either way.
    // Not for the gated epilogue: at 64x64 it needs 255 registers and ptxas takes ~0.9 s.
    if (problem.op != Op::dw && !problem.gated && config.tile_n == 128) config.warps_n = 2;
    // Three stages where two CTAs then fit on a multiprocessor (sm_90: 2 x 96 KB; measured 10% faster
    // than one CTA with four stages on H100), else as many stages as fit beside the scheduler's
    // static part (many experts leave room for fewer), up to four.
    const size_t stage_bytes = size_t(config.tile_m + config.tile_n) * config.slice_k * 2;
    const size_t static_bytes = portable_static_bytes(problem, config);
    const size_t capacity = max_shared_bytes(problem.arch);
    config.stages = 2 * (3 * stage_bytes + static_bytes) <= capacity
                        ? 3
                        : static_cast<int>(std::min<size_t>(4, (capacity - static_bytes) / stage_bytes));
    return config;
}

// Gathered X rows this long (deepseek-v3's hidden 7168; the other presets' reach 5120) take fp32 dW
// in 32-row stages at 241-288 rows an expert (choose_hopper; measured on both sides of it).
constexpr int64_t kLongGatheredRow = 6144;

// sm_90a's multiprocessors on H100 and H200 SXM, where the dW heuristic was measured.
constexpr int64_t kHopperMultiprocessors = 132;

Config choose_hopper(const Problem& problem, RowsBucket bucket) {
    // dW tiles are (N, K) blocks of one expert, whatever the token count: the largest tile, unless
    // its tiles would leave multiprocessors idle (the router's dW: [1][128][2048] is 8 tiles of
    // 128x256; `moejit tune` measured 64x128 tiles 2.0x faster on H100).
    if (problem.op == Op::dw) {
        const int64_t large_tiles = problem.experts * ((problem.n + 127) / 128) * ((problem.k + 255) / 256);
        if (large_tiles < kHopperMultiprocessors) return hopper_config(64, 128, hopper_stages(problem, 64, 128, 8));
        // fp32 dW stores its tiles at their end (no registers to defer them). Where X comes by TMA,
        // four stages of 64 rows measured fastest or within 2.5% (`moejit tune` on H100: llama4-scout,
        // mixtral-8x7b and deepseek-v3, where 32-row stages were 1.04-1.22x slower, and the Qwen3
        // block's down dW, 0.473-0.487 ms in 32-row stages against 0.484-0.512). Gathered X at a few
        // hundred rows an expert takes the same ring in 32-row stages: deepseek-v3 gate_up 12.3 ms
        // against 14.4 (s4) and 13.4 (s3); at 512 rows (the Qwen3 blocks) s4 tuned fastest
        // (bench/RESULTS.md, twenty-third session).
        // Only for rows as long as deepseek-v3's: at K 2048-5120 (qwen3 at 4096 tokens, llama4-scout
        // at 4608, gpt-oss-120b at 8192) four 64-row stages measured 2-10% faster (twenty-ninth session).
        if (problem.out_fp32 && problem.permute_x && bucket == RowsBucket::medium && problem.k >= kLongGatheredRow)
            return hopper_config(128, 256, hopper_stages(problem, 128, 256, 8, 32), 32);
        return hopper_config(128, 256, hopper_stages(problem, 128, 256, 4));
    }
    const int64_t out_cols = output_columns(problem);
    // 128-wide wgmma where a 256-wide tile would be mostly padding (gated tiles hold half as many outputs).
    const int tile_out_cols_256 = problem.gated ? 128 : 256;
    const int tile_n = out_cols <= tile_out_cols_256 / 2 ? 128 : 256;
    // At most 64 output columns (a router of up to 64 experts, llama4-scout's 16), many rows: 64-wide
    // tiles, 128 rows high (`moejit tune`, llama4-scout router at 8192 tokens, H100, two runs:
    // h:m128n64s8 0.037 / 0.039 ms, h:m64n64s8 0.040 / 0.041, h:m64n128s8 0.049 / 0.050:
    // bench/RESULTS.md, eighteenth session). Fewer rows keep the rule below (n64 not measured there).
    if (takes_64_wide_tiles(problem) && bucket == RowsBucket::large)
        return hopper_config(128, 64, hopper_stages(problem, 128, 64, 8));
    // At most 128 output columns (the router's [T, H] x [H, E] forward): A's traffic does not
    // depend on the tile height, so 64-row tiles give twice the multiprocessors work for the same
    // traffic (`moejit tune`, qwen3-30b-a3b router at 8192 tokens: 0.020 against 0.024 ms). A gated
    // forward's 128-wide tile holds 64 outputs, so there this means up to two tiles across.
    if (out_cols <= 128) return hopper_config(64, 128, hopper_stages(problem, 64, 128, 8));
    // A reduction of one 64-wide slice or less (dX of a router of up to 64 experts: [T, E] x [E, H]):
    // a tile is one wgmma batch and its output store, so the kernel streams its output, and no ring
    // depth helps. `moejit tune`, llama4-scout router dX (reduction 16) at 8192 tokens, H100, ms:
    // h:m64n256s3 0.0378 in the sweep, 0.0367 against h:m128n256s4's 0.0388 in the confirmation;
    // every tiling measured faster at s3 than at s4. At a reduction of 128 (qwen3 routers) 64-row
    // tiles measured 7-8% slower, so the rule stops at one slice (bench/RESULTS.md, 24th session).
    // Plain rows only, where it was measured.
    if (reduction_length(problem) <= 64 && bucket == RowsBucket::large && plain_rows(problem))
        return hopper_config(64, 256, hopper_stages(problem, 64, 256, 3));
    switch (bucket) {
        case RowsBucket::decode:  // weight streaming: one 64-row tile per expert, a deep ring of weight slices
            return hopper_config(64, 128, hopper_stages(problem, 64, 128, 8));
        case RowsBucket::small: return hopper_config(64, tile_n, hopper_stages(problem, 64, tile_n, 6));
        case RowsBucket::medium:
            // Experts of 241-288 rows: 128-row tiles issue 384 rows of MMA for most of them, swapped
            // operands 256-288. H100, deepseek-v3 plain rows, 128x256 against swapped m288 (ms,
            // gate_up fwd): 224 rows an expert 5.85-5.97 against 6.11-6.23 (hence not below 241),
            // 256: 7.05-7.32 against 6.71-6.83, 288: 9.94-10.38 against 9.17-9.27, 320 (two blocks
            // of 160, each issuing 256): 8.60-9.00 against 11.97-12.08; qwen3-235b-a22b at 256
            // rows: 1.56-1.59 against 1.44-1.46 (bench/RESULTS.md, twenty-second session). Rows that
            // scatter or scale too: deepseek-v3 permute_y:mul_post down fwd 3.53-3.54 against
            // 3.80-3.92, permute_x gate_up dX 6.67-6.76 against 7.15-7.62 (twenty-seventh session).
            if (takes_swap_ab(problem))
                if (const std::optional<Config> swapped = swapped_config(problem)) return *swapped;
            break;
        case RowsBucket::large: break;
    }
    // Four stages, the gathering forward (permute_x) included. It once measured faster at three
    // (0.90 against 0.98 ms, qwen3-30b-a3b gated, fourth session), but since its epilogue lost the
    // IEEE divide, four measured 0-4% faster (gated permute_x gate_up on H100: qwen3-30b-a3b 0.691
    // against 0.708 ms, qwen3-235b-a22b 2.897 against 3.004, llama4-scout equal; `moejit tune`
    // picked four for qwen3-30b-a3b too: bench/RESULTS.md, seventeenth session).
    Config config = hopper_config(128, tile_n, hopper_stages(problem, 128, tile_n, 4));
    // dX that gathers its dY rows (permute_y): CTA pairs, which share each weight tile by multicast
    // and take their tiles by a static stride. `moejit tune` on H100 (ms, s4 / s3 / c2): deepseek-v3
    // down 4.86-5.26 / 3.99-4.20 / 3.63-3.88, mixtral-8x7b down 3.02-3.08 / 2.84-3.10 / 2.89-2.99
    // (bench/RESULTS.md, twenty-third session). Elsewhere single CTAs and pairs measured within
    // each other's spread, which way round changing from call to call (gpt-oss-120b, qwen3-30b-a3b,
    // qwen3-235b-a22b down: twenty-ninth session).
    if (problem.op == Op::dx && problem.permute_y && max_cluster(problem, config) >= 2) config.cluster = 2;
    return config;
}

// Mirrors the portable templates' static_asserts (kernels/sm80_*.cuh, mma/sm80_operand.cuh), so a
// tiling they reject fails here with a clear message instead of inside NVRTC.
void check_portable_tiling(const Problem& problem, const Config& config, const std::string& what) {
    if (config.cluster != 1) throw Error(what + ": only hopper kernels run in clusters");
    // Warps and tile sides are bounded first, so that no product below can overflow.
    if (config.warps_m < 1 || config.warps_n < 1 || int64_t(config.warps_m) * config.warps_n > 32)
        throw Error(what + ": portable kernels run 1 to 32 warps (warps M x warps N)");
    // Two stages of 64-wide slices of a side over 1024 rows exceed every arch's shared memory.
    if (config.tile_m < 16 || config.tile_n < 16 || config.tile_m > 1024 || config.tile_n > 1024)
        throw Error(what + ": portable tile sides are 16 to 1024");
    // Each warp takes an equal block of whole 16x16 mma.sync tiles.
    if (config.tile_m % (16 * config.warps_m) != 0 || config.tile_n % (16 * config.warps_n) != 0)
        throw Error(what + ": tile M must be a multiple of 16 x warps M (" + std::to_string(16 * config.warps_m) +
                    ") and tile N a multiple of 16 x warps N (" + std::to_string(16 * config.warps_n) +
                    "): each warp computes a whole number of 16x16 blocks");
    // Each operand tile is copied in whole passes, every thread one 16-byte chunk per pass.
    const int threads = config.threads();
    auto k_major = [&](int rows, const char* operand) {  // [rows][64]: a 128-byte row is 8 chunks
        const int rows_per_pass = threads / 8;
        if (rows % rows_per_pass != 0)
            throw Error(what + ": the " + operand + " tile's " + std::to_string(rows) + " rows are not a whole number "
                        "of load passes (" + std::to_string(threads) + " threads copy " +
                        std::to_string(rows_per_pass) + " rows a pass)");
    };
    auto mn_major = [&](int columns, const char* operand) {  // [64][columns]
        // Whole 128-byte swizzle periods per row: the XOR swizzle of chunks stays within its row.
        const int chunks = columns / 8;
        if (columns % 64 != 0 || threads % chunks != 0 || 64 % (threads / chunks) != 0)
            throw Error(what + ": the " + operand + " tile's " + std::to_string(columns) + " columns are not a whole "
                        "number of load passes (they must be a multiple of 64, and " + std::to_string(threads) +
                        " threads must copy its 64 rows of " + std::to_string(chunks) + " chunks in whole passes)");
    };
    switch (problem.op) {
        case Op::fwd:
            k_major(config.tile_m, "X");
            k_major(config.tile_n, "W");
            break;
        case Op::dx:
            k_major(config.tile_m, "dY");
            mn_major(config.tile_n, "W");
            break;
        case Op::dw:
            mn_major(config.tile_m, "dY");
            mn_major(config.tile_n, "X");
            break;
        default: throw Error(what + ": tilings are for the grouped GEMMs (fwd, dx, dw)");
    }
}

}  // namespace

bool takes_192_tiles(const Problem& problem) {
    return problem.op == Op::dx || (problem.op == Op::fwd && !problem.gated);
}

bool takes_swap_ab(const Problem& problem) {
    const bool row_grouped = problem.op == Op::fwd || problem.op == Op::dx;
    return row_grouped && !problem.gated && !gathers_rows(problem);
}

size_t swap_ab_table_bytes(const Problem& problem, const Config& config) {
    return config.swap_ab && (scatters_rows(problem) || problem.fuse_mul_post) ? size_t(config.consumers()) * config.tile_m * 8
                                                                                : 0;
}

int max_cluster(const Problem& problem, const Config& config) {
    if (!config.hopper() || config.swap_ab || (problem.op == Op::dw && problem.permute_x)) return 1;
    // Each CTA loads a share of whole 64-column boxes: of the weight tile's TileN rows, or in dW of
    // the X slice's TileN columns.
    const int shares = config.tile_n / 64;
    if (shares % 2 != 0) return 1;  // n192: three boxes do not halve
    return std::min(problem.op == Op::dw ? 4 : 2, shares);
}

Config adapt_to_pass(const Problem& problem, Config config) {
    // Where the operands cannot swap, the 128-row tiles of the same ring depth.
    if (config.swap_ab && !takes_swap_ab(problem)) {
        config.swap_ab = false;
        config.tile_m = 128;
        config.tile_n = 256;
    }
    // Where 192 tiles do not exist, the nearest tiles of equal stage bytes.
    if (!takes_192_tiles(problem)) {
        if (config.tile_m == 192) config.tile_m = 128;
        if (config.tile_n == 192) config.tile_n = 256;
    }
    config.cluster = std::min(config.cluster, max_cluster(problem, config));
    if (config.slice_k == 32 && problem.op != Op::dw) {
        config.slice_k = 64;
        config.stages = std::max(3, config.stages / 2);
    }
    return config;
}

int dw_staging_boxes(const Problem& problem, const Config& config) {
    const int out_bytes = problem.out_fp32 ? 4 : 2;
    const int boxes_per_row = std::max(1, config.tile_n * out_bytes / 128);
    for (int boxes = std::min(boxes_per_row, 8); boxes > 1; boxes /= 2)
        if (hopper_dynamic_bytes(problem, config, boxes) + hopper_static_bytes(problem) <= max_shared_bytes(problem.arch))
            return boxes;
    return 1;
}

size_t dynamic_shared_bytes(const Problem& problem, const Config& config) {
    if (!config.hopper()) return ring_bytes(config);
    return hopper_dynamic_bytes(problem, config, problem.op == Op::dw ? dw_staging_boxes(problem, config) : 0);
}

Config choose_config(const Problem& problem, RowsBucket bucket, KernelPath path) {
    if (is_elementwise(problem.op)) {
        Config config;
        config.stages = 0;  // elementwise: 256 threads, no shared tiles
        return config;
    }
    const bool hopper = path == KernelPath::hopper && hopper_path_available(problem);
    return hopper ? choose_hopper(problem, bucket) : choose_portable(problem);
}

std::vector<Config> candidate_configs(const Problem& problem) {
    if (is_elementwise(problem.op)) return {choose_config(problem)};
    std::vector<Config> configs;
    if (hopper_path_available(problem)) {
        std::vector<int> tile_ns = {128, 256};
        if (takes_64_wide_tiles(problem)) tile_ns.insert(tile_ns.begin(), 64);
        for (int tile_m : {64, 128})
            for (int tile_n : tile_ns) {
                const Config deepest = hopper_config(tile_m, tile_n, hopper_stages(problem, tile_m, tile_n, 8));
                configs.push_back(deepest);
                for (int fewer : {4, 3})  // the deepest ring is not always fastest (gathered rows: 3 of 128x256)
                    if (fewer < deepest.stages) configs.push_back(hopper_config(tile_m, tile_n, fewer));
                // The same tiles in CTA pairs. Not in dW: its pairs and fours (h:...c2, c4, still
                // accepted) measured 5-25% slower than single CTAs on H100 (bench/RESULTS.md, eighth
                // session), the lockstep ring costing more than the X traffic they save.
                if (tile_m == 128 && problem.op != Op::dw && max_cluster(problem, deepest) >= 2) {
                    Config paired = deepest;
                    paired.cluster = 2;
                    configs.push_back(paired);
                }
                // dW: the same ring bytes in twice the stages of 32 rows.
                if (problem.op == Op::dw && tile_m == 128)
                    configs.push_back(hopper_config(tile_m, tile_n, hopper_stages(problem, tile_m, tile_n, 8, 32), 32));
            }
        // Swapped operands, for experts of a few hundred rows.
        if (takes_swap_ab(problem))
            if (const std::optional<Config> swapped = swapped_config(problem)) configs.push_back(*swapped);
        // Three consumer warpgroups on 192x192 tiles.
        if (takes_192_tiles(problem)) {
            const Config deepest = hopper_config(192, 192, hopper_stages(problem, 192, 192, 8));
            if (deepest.stages >= 3) configs.push_back(deepest);
            if (deepest.stages > 3) configs.push_back(hopper_config(192, 192, 3));
        }
        return configs;
    }
    for (int tile_n : {64, 128})
        for (int stages : {3, 4}) {
            Config config;
            config.tile_n = tile_n;
            config.stages = stages;
            if (block_shared_bytes(problem, config) <= max_shared_bytes(problem.arch)) configs.push_back(config);
        }
    return configs;
}

void check_config(const Problem& problem, const Config& config) {
    const std::string what = "config " + config.to_string() + " for " + to_spec(problem);
    if (config.slice_k != 64 && !(config.hopper() && config.slice_k == 32 && problem.op == Op::dw))
        throw Error(what + ": stages hold 64 reduction elements (k32, 32 rows a stage, only in dW on hopper)");
    if (config.hopper()) {
        if (!hopper_path_available(problem))
            throw Error(what + ": hopper kernels need a grouped GEMM on sm_90a");
        if (config.swap_ab) {
            if (!takes_swap_ab(problem))
                throw Error(what + ": swapped operands are for the forward and dX of rows loaded by TMA (no gated "
                                   "epilogue, no gathered rows: permute_x forward, permute_y dX)");
            if (config.tile_n != 128 || (config.tile_m != 288 && config.tile_m != 320))
                throw Error(what + ": swapped tiles are m288 or m320 (routed rows) by n128 (output columns)");
            if (config.cluster != 1) throw Error(what + ": swapped tiles run in single CTAs");
        } else if ((config.tile_m != 64 && config.tile_m != 128 && config.tile_m != 192) ||
            (config.tile_n != 64 && config.tile_n != 128 && config.tile_n != 192 && config.tile_n != 256))
            throw Error(what + ": hopper tiles are m64, m128 or m192 by n64, n128, n192 or n256");
        if ((config.tile_m == 192 || config.tile_n == 192) && !takes_192_tiles(problem))
            throw Error(what + ": m192 and n192 tiles are for dX and the forward that is not gated only (dW tiles are "
                               "m64 or m128 by n64, n128 or n256; the gated epilogue needs n128 or n256)");
        if (config.tile_m == 192 && config.tile_n > 192)
            throw Error(what + ": three consumer warpgroups (m192) hold at most n192 accumulators");
        if (problem.gated && problem.op == Op::fwd && config.tile_n < 128)
            throw Error(what + ": the gated epilogue needs n128 or n256");
        // The static shared memory (hopper_static_bytes) has room for 8 stages' barriers.
        if (config.stages < 3 || config.stages > 8) throw Error(what + ": hopper kernels run 3 to 8 stages");
        if (config.cluster != 1 && config.cluster != 2 && config.cluster != 4)
            throw Error(what + ": clusters are of 1, 2 or 4 CTAs");
        if (config.cluster > max_cluster(problem, config))
            throw Error(what + ": at most " + std::to_string(max_cluster(problem, config)) +
                        " CTA(s) a cluster here (pairs need n128 or more; clusters of four only dW with n256; "
                        "dW clusters multicast X slices loaded by TMA, which permute_x gathers instead)");
    } else {
        check_portable_tiling(problem, config, what);
    }
    if (config.stages < 2) throw Error(what + ": at least 2 stages");
    if (block_shared_bytes(problem, config) > max_shared_bytes(problem.arch))
        throw Error(what + " needs " + std::to_string(block_shared_bytes(problem, config)) + " bytes of shared memory; " +
                    problem.arch.name() + " allows " + std::to_string(max_shared_bytes(problem.arch)));
}

}  // namespace moejit

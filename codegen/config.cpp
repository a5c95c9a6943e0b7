#include "codegen/config.hpp"

#include <moejit/error.hpp>

#include <algorithm>
#include <cstdio>

namespace moejit {

std::string Config::to_string() const {
    return "m" + std::to_string(tile_m) + "n" + std::to_string(tile_n) + "s" + std::to_string(stages) + "w" +
           std::to_string(warps_m) + "x" + std::to_string(warps_n);
}

Config Config::parse(const std::string& text) {
    Config config;
    char tail = 0;
    if (std::sscanf(text.c_str(), "m%dn%ds%dw%dx%d%c", &config.tile_m, &config.tile_n, &config.stages, &config.warps_m,
                    &config.warps_n, &tail) != 5 ||
        config.to_string() != text)
        throw Error("bad config '" + text + "': expected e.g. m128n128s4w2x4");
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

Config choose_config(const Problem& problem) {
    Config config;
    if (is_elementwise(problem.op)) {
        config.stages = 0;  // elementwise: 256 threads, no shared tiles
        return config;
    }
    // Narrow outputs waste half of a 128-wide tile; 64 keeps every column busy.
    const int64_t out_cols = problem.op == Op::fwd ? (problem.gated ? problem.n / 2 : problem.n) : problem.k;
    if (out_cols <= 64) config.tile_n = 64;
    // Row-grouped passes: four warps of 64x64 (fewer ldmatrix per mma) measured 5-15% faster than
    // eight warps of 64x32 on H100 (qwen3-30b-a3b, 8192 tokens); dW measured the same either way.
    // Not for the gated epilogue: at 64x64 it needs 255 registers and ptxas takes ~0.9 s.
    if (problem.op != Op::dw && !problem.gated && config.tile_n == 128) config.warps_n = 2;
    // Three stages where two CTAs then fit on a multiprocessor (sm_90: 2 x 96 KB; measured 10% faster
    // than one CTA with four stages on H100), else as many stages as fit, up to four.
    const size_t stage_bytes = size_t(config.tile_m + config.tile_n) * Config::tile_k * 2;
    const size_t capacity = max_shared_bytes(problem.arch);
    config.stages = 2 * 3 * stage_bytes <= capacity ? 3 : static_cast<int>(std::min<size_t>(4, capacity / stage_bytes));
    return config;
}

std::vector<Config> candidate_configs(const Problem& problem) {
    if (is_elementwise(problem.op)) return {choose_config(problem)};
    std::vector<Config> configs;
    for (int tile_n : {64, 128})
        for (int stages : {3, 4}) {
            Config config;
            config.tile_n = tile_n;
            config.stages = stages;
            if (config.shared_bytes() <= max_shared_bytes(problem.arch)) configs.push_back(config);
        }
    return configs;
}

}  // namespace moejit

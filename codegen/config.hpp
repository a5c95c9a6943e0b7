#pragma once
// How a Problem is tiled: everything the kernel template takes beyond the Problem itself.
#include <moejit/problem.hpp>

#include <string>
#include <vector>

namespace moejit {

struct Config {
    int tile_m = 128;
    int tile_n = 128;
    int stages = 3;
    int warps_m = 2;
    int warps_n = 4;
    static constexpr int tile_k = 64;  // fixed by the template's 128-byte swizzled rows

    int threads() const { return warps_m * warps_n * 32; }
    size_t shared_bytes() const { return size_t(stages) * (tile_m + tile_n) * tile_k * 2; }
    std::string to_string() const;  // "m128n128s3w2x4"
    static Config parse(const std::string& text);  // inverse of to_string; throws moejit::Error
    bool operator==(const Config& o) const {
        return tile_m == o.tile_m && tile_n == o.tile_n && stages == o.stages && warps_m == o.warps_m &&
               warps_n == o.warps_n;
    }
};

// Dynamic shared memory one block may opt into on each supported arch.
size_t max_shared_bytes(const Arch& arch);

// Kernels that are not GEMMs: 256 threads, no shared tiles, a grid-stride loop over their elements.
inline bool is_elementwise(Op op) { return op == Op::combine || op == Op::gated_backward || op == Op::check_routing ||
           op == Op::combine_backward || op == Op::route_topk || op == Op::router_backward ||
           op == Op::routing_histogram || op == Op::routing_indices || op == Op::permute_rows ||
           op == Op::unpermute_rows;
}

// The heuristic: a pure function of the Problem (and its arch).
Config choose_config(const Problem& problem);

// Every Config the template is instantiated with somewhere (heuristic outcomes and tuning candidates).
std::vector<Config> candidate_configs(const Problem& problem);

}  // namespace moejit

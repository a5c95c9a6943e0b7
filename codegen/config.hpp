#pragma once
// How a Problem is tiled: everything the kernel template takes beyond the Problem itself.
#include <moejit/problem.hpp>

#include <string>
#include <vector>

namespace moejit {

// Which grouped-GEMM templates a Config instantiates: the portable mma.sync kernels (sm_80 and
// newer) or the Hopper kernels (sm_90a: TMA, mbarrier ring, warp-specialized wgmma).
enum class KernelPath { portable, hopper };

struct Config {
    KernelPath path = KernelPath::portable;
    int tile_m = 128;
    int tile_n = 128;
    int stages = 3;
    int warps_m = 2;  // portable only; a hopper tile has tile_m/64 consumer warpgroups
    int warps_n = 4;
    // Hopper only: CTAs per cluster (2; dW also 4). The CTAs of a cluster take neighbouring tiles
    // and, where all need the same operand tile (forward and dX: weights; dW: X), each loads its
    // share of it for all (TMA multicast).
    int cluster = 1;
    // Reduction elements a stage holds: 64 (one 128-byte swizzled row of a K-major slice). Hopper
    // dW may take 32: its operands are MN-major, so a stage is [32 rows][64 columns] boxes, and
    // twice the stages fit in the same ring; the consumers then hold a smaller share of it while
    // more of it is in flight.
    int slice_k = 64;
    // Hopper forward and dX only: wgmma's operands swapped (kernels/sm90_grouped_gemm_swap_ab.cuh).
    // tile_n output columns (weight rows) on wgmma's M side, up to tile_m routed rows of one expert
    // on its N side, padded to 16 instead of to the m tile: for experts of few rows.
    bool swap_ab = false;

    bool hopper() const { return path == KernelPath::hopper; }
    // Hopper: one producer warpgroup plus one consumer warpgroup per 64 tile rows (swapped: per 64
    // output columns).
    int consumers() const { return (swap_ab ? tile_n : tile_m) / 64; }
    int threads() const { return hopper() ? 128 * (1 + consumers()) : warps_m * warps_n * 32; }
    // "m128n128s3w2x4" (portable), "h:m128n256s4", "h:m128n256s3c2", "h:m128n256s8k32",
    // "h:m288n128s4swap" (hopper)
    std::string to_string() const;
    static Config parse(const std::string& text);  // inverse of to_string; throws moejit::Error
    bool operator==(const Config& o) const {
        return path == o.path && tile_m == o.tile_m && tile_n == o.tile_n && stages == o.stages && cluster == o.cluster &&
               slice_k == o.slice_k && swap_ab == o.swap_ab && (hopper() || (warps_m == o.warps_m && warps_n == o.warps_n));
    }
};

// Whether the kernel claims its tiles at run time from counters that it leaves at zero: the
// Hopper row-grouped kernels that gather A into 128-row tiles, without clusters (mirrors `Dynamic`
// in templates/kernels/sm90_grouped_gemm.cuh), and the swapped-operand kernels, whose tiles differ
// in width (kernels/sm90_grouped_gemm_swap_ab.cuh).
bool claims_tiles(const Problem& problem, const Config& config);

// 192-row and 192-column tiles (three consumer warpgroups) exist only in the row-grouped kernels,
// and not where the gated epilogue needs whole 64-column chunks of outputs.
bool takes_192_tiles(const Problem& problem);

// The row-grouped passes whose A rows are gathered (the forward's permute_x, dX's permute_y), and
// those whose output rows scatter to slot order (the forward's permute_y, dX's permute_x).
bool gathers_rows(const Problem& problem);
bool scatters_rows(const Problem& problem);

// Swapped operands (Config::swap_ab) exist for the forward and dX of rows loaded by TMA: no gated
// epilogue, no gathered rows (the forward's permute_x, dX's permute_y). Rows may scatter (the
// forward's permute_y, dX's permute_x) and take the routing weights (fuse_mul_post).
bool takes_swap_ab(const Problem& problem);

// The shared memory of swapped tiles' row tables (kernels/sm90_grouped_gemm_swap_ab.cuh): each
// consumer's destinations and weights where rows scatter or scale (TableBytes); 0 for other configs.
size_t swap_ab_table_bytes(const Problem& problem, const Config& config);

// The most CTAs a cluster of `config`'s tiles may have for `problem`: 2 in the row-grouped
// passes (n128 or more), 4 in dW (n256), 1 on the portable path and in dW with permute_x (nothing
// to multicast: X rows are gathered by cp.async).
int max_cluster(const Problem& problem, const Config& config);

// A config given for all passes (an override), adapted to `problem`'s pass: clustered as far as
// max_cluster allows, and 32-row stages (dW only) as half as many 64-row stages elsewhere.
Config adapt_to_pass(const Problem& problem, Config config);

// Dynamic shared memory one block may opt into on each supported arch.
size_t max_shared_bytes(const Arch& arch);

// dW on Hopper: the epilogue's staging boxes (epilogue/sm90_box_store.cuh, 8 KB each) per consumer
// warpgroup, passed to the template: as many as fit beside the config's ring, in powers of two up
// to the boxes of a tile's row (4 for 16-bit n256: its stores then drain during the next tile's
// mainloop), rather than a shallower ring. Four 128x256 stages leave room for two, with 256 experts
// exactly (their row offsets and the barriers take 2 KB of static shared memory).
constexpr size_t kStagingBoxBytes = 8192;
int dw_staging_boxes(const Problem& problem, const Config& config);

// The dynamic shared memory the kernel of `problem` with `config` launches with. Portable: the
// ring of A and B slices. Hopper: the ring, the epilogue's staging of each consumer warpgroup
// and 1 KB to align the ring to the 1024-byte swizzle period.
size_t dynamic_shared_bytes(const Problem& problem, const Config& config);

// Kernels that are not GEMMs: 256 threads, no shared tiles, a grid-stride loop over their elements.
inline bool is_elementwise(Op op) { return op == Op::combine || op == Op::gated_backward || op == Op::check_routing ||
           op == Op::combine_backward || op == Op::route_topk || op == Op::router_backward ||
           op == Op::routing_histogram || op == Op::routing_indices || op == Op::permute_rows ||
           op == Op::unpermute_rows;
}

// Whether the Hopper templates can run this problem: a grouped GEMM on an sm_90a target.
bool hopper_path_available(const Problem& problem);

// Token-count buckets a Config is chosen (and tuned) for, by the mean rows per expert at launch.
// Decode-sized work (a few rows per expert) reads weights and wants narrow m tiles with deep
// pipelines; prefill and training want large tiles. `medium` (241-288 rows, a part of the large
// range) is where experts run just past two 128-row tiles, so that a third tile would be mostly
// padding: there the forward and dX of rows loaded by TMA swap operands (Config::swap_ab).
enum class RowsBucket { decode, small, medium, large };
RowsBucket rows_bucket(int64_t rows, int experts);
const char* to_string(RowsBucket bucket);
constexpr RowsBucket kRowsBuckets[] = {RowsBucket::decode, RowsBucket::small, RowsBucket::medium, RowsBucket::large};

// The heuristic: a pure function of the Problem (and its arch) and the rows bucket. With `path`
// portable it stays on the portable kernels even where the Hopper ones are available.
Config choose_config(const Problem& problem, RowsBucket bucket = RowsBucket::large,
                     KernelPath path = KernelPath::hopper);

// Every Config worth timing for this problem (the tuner's candidates); each fits in shared memory.
std::vector<Config> candidate_configs(const Problem& problem);

// Throws moejit::Error unless `config` can instantiate `problem`'s template on its arch.
void check_config(const Problem& problem, const Config& config);

}  // namespace moejit

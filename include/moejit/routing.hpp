#pragma once
// MoE routing on the device, each step a JIT-specialized kernel (compile-time: experts, topk,
// widths; run-time: token counts). None of these calls synchronizes the host or allocates, so
// they can be captured in a CUDA graph; only check_routing_errors (a debugging aid) synchronizes.
//
// Shapes (T tokens, E experts, M = T * topk routed slots, slot s = t * topk + j):
//
//   route_topk:        logits [T, E] (bf16/fp16, the router GEMM's output)
//                        -> topk_ids [T, topk] int32, topk_weights [T, topk] float32
//   routing_indices:   topk_ids [M] -> m_sizes [E], gather_idx [M], scatter_idx [M] (all int32)
//                        gather_idx[r]: the slot of routed row r, slots stably sorted by expert
//                        scatter_idx[s]: the routed row of slot s (the inverse)
//   permute_rows:      X [T, W] -> Xp [M, W], Xp[r] = X[gather_idx[r] / topk]
//   unpermute_rows:    Y [M, W] expert order -> Ys [M, W] slot order, Ys[gather_idx[r]] = Y[r]
//   combine_topk:      (include/moejit/grouped_gemm.hpp) out[t] = sum_j w[t*topk+j] * slots[t*topk+j]
//   router_backward:   logits, topk_ids, d topk_weights [T, topk] float32 -> d logits [T, E] (logits dtype)
#include <moejit/problem.hpp>

#include <cuda.h>

#include <cstddef>
#include <cstdint>

namespace moejit {

enum class Scoring { softmax, sigmoid };

// How router logits become top-k expert ids and weights. All arithmetic is fp32; ties go to the
// lower expert id (deterministic); NaN logits rank lowest.
struct RouterConfig {
    int experts = 0;  // E, 1..1024
    int topk = 1;     // 1..min(32, E)
    Scoring scoring = Scoring::softmax;
    bool renormalize = false;  // divide the k weights by their sum (Qwen3's norm_topk_prob)
    // true: score all E logits, then take the k best scores (Qwen3: softmax over E, then top-k).
    // false: take the k largest logits, then score only those (Llama4: sigmoid of the chosen logit;
    // with softmax: softmax over the k chosen logits).
    bool score_before_topk = true;

    // Qwen3MoeSparseMoeBlock: softmax over E, top-k, renormalize when norm_topk_prob.
    static RouterConfig qwen3(int experts, int topk, bool norm_topk_prob) {
        return RouterConfig{experts, topk, Scoring::softmax, norm_topk_prob, true};
    }
    // Llama4TextMoe: top-k of the logits, sigmoid of the chosen ones, no renormalization.
    static RouterConfig llama4(int experts, int topk = 1) {
        return RouterConfig{experts, topk, Scoring::sigmoid, false, false};
    }
};

// logits [T, E] in `dtype` (2-byte aligned) -> topk_ids [T, topk] int32 and topk_weights
// [T, topk] float32 (4-byte aligned). Within a token, ids come in decreasing order of the score
// (or logit) they were selected on.
void route_topk(const RouterConfig& router, DType dtype, CUdeviceptr logits, CUdeviceptr topk_ids,
                CUdeviceptr topk_weights, int64_t tokens, CUstream stream);

// Gradient of the routing weights with respect to the logits, recomputing the weights from the
// logits: logits [T, E] in `dtype`, topk_ids [T, topk] int32 (what route_topk chose),
// grad_topk_weights [T, topk] float32 -> grad_logits [T, E] in `dtype` (every entry written).
// Softmax over all E gives every logit a gradient; sigmoid, or softmax over the chosen k, only the
// chosen ones. Ids outside [0, E) get no gradient.
void router_backward(const RouterConfig& router, DType dtype, CUdeviceptr logits, CUdeviceptr topk_ids,
                     CUdeviceptr grad_topk_weights, CUdeviceptr grad_logits, int64_t tokens, CUstream stream);

// Device scratch that routing_indices needs for `tokens * topk` slots. Non-decreasing in `tokens`,
// so a workspace sized for the largest batch serves every smaller one.
size_t routing_workspace_bytes(int experts, int64_t tokens, int topk);

// topk_ids [T * topk] int32 -> m_sizes [E], gather_idx [M], scatter_idx [M] (int32, 4-byte aligned),
// by a histogram and a prefix sum on the device; stable (each expert's rows hold its slots in
// increasing slot order) and deterministic. E in 1..4096; M < 2^31.
// Expert ids outside [0, E) are never used as addresses: their slots are dropped (not counted in
// m_sizes, scatter_idx[s] = -1, and gather_idx holds -1 from sum(m_sizes) to M), and *error_count
// (one int32 on the device) is incremented by their number. The counter is only ever added to:
// zero it (e.g. cuMemsetD32Async) when a new count should start.
// workspace: routing_workspace_bytes(experts, tokens, topk) bytes, 4-byte aligned (0 is accepted
// when that size is 0).
void routing_indices(int experts, int topk, CUdeviceptr topk_ids, int64_t tokens, CUdeviceptr m_sizes,
                     CUdeviceptr gather_idx, CUdeviceptr scatter_idx, CUdeviceptr error_count,
                     CUdeviceptr workspace, size_t workspace_bytes, CUstream stream);

// Synchronizes `stream`, reads the counter routing_indices adds to, and throws
// moejit::Error("routing: N expert ids out of range [0, E)") when it is not zero. For tests and
// debugging, not the hot path. Does not reset the counter.
void check_routing_errors(CUdeviceptr error_count, int experts, CUstream stream);

// x [T, width] -> xp [M, width] in expert order: xp[r] = x[gather_idx[r] / topk]; rows whose
// gather_idx is outside [0, M) (dropped slots) are zero. width a positive multiple of 8 below 2^31;
// x, xp 16-byte aligned.
void permute_rows(DType dtype, int64_t width, int topk, CUdeviceptr x, CUdeviceptr gather_idx, CUdeviceptr xp,
                  int64_t tokens, CUstream stream);

// y [rows, width] in expert order -> ys [rows, width] in slot order: ys[gather_idx[r]] = y[r]; rows
// whose gather_idx is outside [0, rows) are skipped (those rows of ys are left as they were).
// width as in permute_rows.
void unpermute_rows(DType dtype, int64_t width, CUdeviceptr y, CUdeviceptr gather_idx, CUdeviceptr ys, int64_t rows,
                    CUstream stream);

}  // namespace moejit

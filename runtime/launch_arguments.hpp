#pragma once
// Host mirrors of the kernels' by-value argument structs (templates/common/arguments.cuh,
// templates/kernels/combine_topk.cuh, gated_activation_backward.cuh, check_routing.cuh): same
// fields, same order, so the bytes cuLaunchKernelEx copies are what the kernel reads.
#include <cstdint>

namespace moejit {

struct GroupedGemmArguments {
    const void* a;
    const void* b;
    void* c;
    void* preactivation;
    const int* m_sizes;
    const int* gather_idx;
    const float* topk_weights;
    long long rows;
    int* tile_counters;
};

struct CombineTopkArguments {
    const void* slots;
    void* out;
    long long tokens;
    const float* weights;  // nullptr: unweighted
    const void* addend;    // nullptr: nothing added
};

struct GatedBackwardArguments {
    const void* preactivation;
    const void* grad_h;
    void* grad_preactivation;
    long long rows;
};

struct CombineBackwardArguments {
    const void* grad_out;
    const void* y;
    const int* gather_idx;
    const float* weights;
    void* grad_y;
    float* grad_weights;
    long long rows;
};

// templates/kernels/router_common.cuh: RouteTopkArguments::mode and RouterBackwardArguments::mode bits.
constexpr int kRouteSigmoid = 1;
constexpr int kRouteRenormalize = 2;
constexpr int kRouteScoreBeforeTopk = 4;

struct RouteTopkArguments {
    const void* logits;
    int* topk_ids;
    float* topk_weights;
    long long tokens;
    int mode;
    int* cleared;
};

struct RouterBackwardArguments {
    const void* logits;
    const int* topk_ids;
    const float* grad_topk_weights;
    void* grad_logits;
    long long tokens;
    int mode;
};

// routing_histogram.cuh and routing_indices.cuh (both passes take the same arguments).
struct RoutingIndicesArguments {
    const int* topk_ids;
    int* m_sizes;
    int* gather_idx;
    int* scatter_idx;
    int* error_count;
    int* counts;
    long long rows;
    long long chunk;
};

struct PermuteRowsArguments {
    const void* src;
    void* dst;
    const int* gather_idx;
    long long rows;
};

struct CheckRoutingArguments {
    const int* m_sizes;
    const int* gather_idx;
    long long rows;
    int* seen;
    long long* report;
};

}  // namespace moejit

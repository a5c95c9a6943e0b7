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
};

struct CombineTopkArguments {
    const void* slots;
    void* out;
    long long tokens;
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

struct CheckRoutingArguments {
    const int* m_sizes;
    const int* gather_idx;
    long long rows;
    int* seen;
    long long* report;
};

}  // namespace moejit

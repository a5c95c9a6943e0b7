#pragma once
// Debug-mode check of the routing a grouped GEMM is about to read (MOEJIT_CHECK_ROUTING=1):
// m_sizes [E] non-negative and summing to M, gather_idx [M] a permutation of 0..M-1. Finds the
// first (lowest) offending index of each kind; the host turns the report into a moejit::Error
// before the GEMM runs, so a bad input is reported instead of read out of bounds.
#include "common/dependent_launch.cuh"
#include "common/types.cuh"

namespace moejit {

struct CheckRoutingArguments {
    const int* m_sizes;     // [E], or nullptr for one expert of all M rows
    const int* gather_idx;  // [M] or nullptr when the GEMM does not use it
    int64 rows;             // M
    int* seen;              // [M] zeroed scratch: how often each slot index occurs
    int64* report;          // [4] sum of m_sizes, first negative expert, first out-of-range row, first repeated row
};

template <int Experts_>
struct CheckRoutingConfig {
    static constexpr int Experts = Experts_, Threads = 256;
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads) check_routing(const CheckRoutingArguments args) {
    wait_for_prior_kernels();
    if (blockIdx.x == 0 && args.m_sizes != nullptr) {  // null: one expert of all M rows (sum preset to M)
        for (int expert = threadIdx.x; expert < Cfg::Experts; expert += blockDim.x) {
            const int rows = args.m_sizes[expert];
            atomicAdd(reinterpret_cast<unsigned long long*>(&args.report[0]), static_cast<unsigned long long>(static_cast<int64>(rows)));
            if (rows < 0) atomicMin(&args.report[1], static_cast<int64>(expert));
        }
    }
    if (args.gather_idx == nullptr) return;
    for (int64 row = blockIdx.x * int64(blockDim.x) + threadIdx.x; row < args.rows; row += int64(gridDim.x) * blockDim.x) {
        const int slot = args.gather_idx[row];
        if (slot < 0 || slot >= args.rows) atomicMin(&args.report[2], row);
        else if (atomicAdd(&args.seen[slot], 1) != 0) atomicMin(&args.report[3], row);
    }
}

}  // namespace moejit

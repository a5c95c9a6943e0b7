#pragma once
// Row permutations between token order and expert order, 16 bytes per thread step:
//   permute   (Unpermute = false):  dst [M, Width] expert order,  dst[r] = src[gather_idx[r] / Topk],  src [T, Width]
//   unpermute (Unpermute = true):   dst [M, Width] slot order,    dst[gather_idx[r]] = src[r],         src [M, Width]
// A gather_idx entry outside [0, M) (the -1 tail routing_indices leaves for dropped slots) is never
// used as an address: permute writes a zero row, unpermute writes nothing.
#include "common/dependent_launch.cuh"
#include "common/types.cuh"

namespace moejit {

struct PermuteRowsArguments {
    const void* src;
    void* dst;
    const int* gather_idx;  // [M]
    int64 rows;             // M
};

template <class Element_, int Width_, int Topk_, bool Unpermute_>
struct PermuteRowsConfig {
    using Element = Element_;
    static constexpr int Width = Width_, Topk = Topk_, Threads = 256;
    static constexpr bool Unpermute = Unpermute_;
    static_assert(Width % 8 == 0, "16-byte rows");
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::Threads) permute_rows(const PermuteRowsArguments args) {
    wait_for_prior_kernels();
    constexpr int Vectors = Cfg::Width / 8;
    const int64 total = args.rows * Vectors;
    for (int64 index = blockIdx.x * int64(blockDim.x) + threadIdx.x; index < total; index += int64(gridDim.x) * blockDim.x) {
        const int64 row = index / Vectors, vector = index % Vectors;
        const int64 slot = args.gather_idx[row];
        const bool valid = slot >= 0 && slot < args.rows;
        const uint4* src = reinterpret_cast<const uint4*>(args.src);
        uint4* dst = reinterpret_cast<uint4*>(args.dst);
        if constexpr (Cfg::Unpermute) {
            if (valid) dst[slot * Vectors + vector] = src[row * Vectors + vector];
        } else {
            dst[row * Vectors + vector] = valid ? src[(slot / Cfg::Topk) * Vectors + vector] : make_uint4(0, 0, 0, 0);
        }
    }
}

}  // namespace moejit

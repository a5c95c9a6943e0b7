#pragma once
// The pointer checks of every public call, in one place: non-null, aligned as its kernels read
// the memory (16 bytes where they move 16-byte vectors or TMA boxes), and, for the block forwards,
// tensors that must not share memory.
#include <moejit/error.hpp>

#include <cuda.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace moejit {

// `where()` names the call in the message; it is only built when a check fails (no string on the
// hot path).
template <class Where>
void check_pointer(CUdeviceptr pointer, unsigned alignment, const Where& where, const char* name) {
    if (pointer == 0) throw Error(where() + ": " + name + " is a null pointer");
    if (pointer % alignment != 0)
        throw Error(where() + ": " + name + " must be " + std::to_string(alignment) + "-byte aligned (got address " +
                    std::to_string(pointer) + ")");
}

// A block's tensors, each checked for 16 bytes (every kernel of the blocks moves 16-byte vectors
// or TMA boxes) before the call launches anything: a bad argument is named as the caller wrote it
// and leaves no kernel half run.
struct NamedPointer {
    const char* name;
    CUdeviceptr pointer;
};
inline void check_block_pointers(const char* call, std::initializer_list<NamedPointer> pointers) {
    for (const NamedPointer& p : pointers) check_pointer(p.pointer, 16, [&] { return std::string(call); }, p.name);
}

// A block forward's own tensors: hidden [T, H] and output [T, H] in the block's dtype, router_logits
// [T, E] (block dtype). The router GEMM reads hidden while it writes router_logits, and output and
// router_logits are both results, so router_logits may share memory with neither. output may take
// hidden's place (written last, after every read of it) only in an inference block: a training
// block's backward reads hidden again.
inline void check_forward_tensors(const char* call, CUdeviceptr hidden, CUdeviceptr output, CUdeviceptr router_logits,
                                  int64_t tokens, int64_t hidden_width, int experts, size_t element_bytes,
                                  bool training) {
    struct Range {
        const char* name;
        CUdeviceptr begin;
        size_t bytes;
    };
    const size_t rows = static_cast<size_t>(tokens);
    const Range hidden_range{"hidden", hidden, rows * size_t(hidden_width) * element_bytes};
    const Range output_range{"output", output, rows * size_t(hidden_width) * element_bytes};
    const Range logits_range{"router_logits", router_logits, rows * size_t(experts) * element_bytes};
    auto refuse_overlap = [&](const Range& a, const Range& b, const char* why) {
        if (a.bytes != 0 && b.bytes != 0 && a.begin < b.begin + b.bytes && b.begin < a.begin + a.bytes)
            throw Error(std::string(call) + ": " + a.name + " and " + b.name + " overlap; " + why);
    };
    refuse_overlap(hidden_range, logits_range, "the router GEMM reads hidden while it writes router_logits");
    refuse_overlap(output_range, logits_range, "both are results of the forward");
    if (training)
        refuse_overlap(hidden_range, output_range,
                       "backward reads hidden again (an inference block, config.training = false, may write output "
                       "over hidden)");
}

}  // namespace moejit

#pragma once
// The pointer check of every public call, in one place: non-null, and aligned as its kernels read
// the memory (16 bytes where they move 16-byte vectors or TMA boxes).
#include <moejit/error.hpp>

#include <cuda.h>

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

}  // namespace moejit

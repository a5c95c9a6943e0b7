#pragma once
// What the caller asks for: one grouped-GEMM kernel, independent of how it is tiled.
//
// Compile-time (baked into the kernel): op, dtype, N, K, experts, topk, fusion flags, arch.
// Run-time (read on the device): M and everything routing decides (m_sizes, gather_idx).
#include <cstdint>
#include <string>
#include <string_view>

namespace moejit {

enum class DType { bf16, fp16 };
enum class Op { fwd };  // Y_e = X_e @ W[e]^T

struct Arch {
    int major = 9;
    int minor = 0;
    bool arch_specific = true;  // the 'a' suffix: wgmma / setmaxnreg need it

    // Accepts sm_80, sm_86, sm_89, sm_90a, sm_100a; throws moejit::Error otherwise.
    static Arch parse(std::string_view name);
    std::string name() const;  // "sm_90a"
    int sm() const { return major * 10 + minor; }
    bool operator==(const Arch& o) const {
        return major == o.major && minor == o.minor && arch_specific == o.arch_specific;
    }
};

struct Problem {
    Op op = Op::fwd;
    DType dtype = DType::bf16;
    int64_t n = 0;      // output dim of W [E, N, K]
    int64_t k = 0;      // reduction dim, contiguous
    int experts = 0;    // E
    int topk = 1;
    Arch arch;

    // Throws moejit::Error naming the first field that is out of range.
    void validate() const;
    bool operator==(const Problem& o) const {
        return op == o.op && dtype == o.dtype && n == o.n && k == o.k && experts == o.experts &&
               topk == o.topk && arch == o.arch;
    }
    bool operator!=(const Problem& o) const { return !(*this == o); }
};

// Readable kernel spec, e.g. "fwd:bf16:n1536:k2048:e128:topk8:sm_90a".
// parse_spec(to_spec(p)) == p for every valid p; parse_spec throws moejit::Error on bad text.
std::string to_spec(const Problem& problem);
Problem parse_spec(std::string_view spec);

const char* to_string(DType dtype);
const char* to_string(Op op);
size_t element_bytes(DType dtype);

}  // namespace moejit

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
enum class Op {
    fwd,             // Y_e = X_e @ W[e]^T
    dx,              // dX_e = dY_e @ W[e]
    dw,              // dW[e] = dY_e^T @ X_e (k-grouped)
    combine,         // out[t] = sum_j slots[t*topk + j], width k
    gated_backward,  // d(gate|up) [M, n] from gate|up and d(silu(gate) * up)
    check_routing,   // debug mode: m_sizes sum to M, gather_idx is a permutation
    combine_backward,  // backward of the weighted combine: scaled rows in expert order, weight gradients
    route_topk,         // router logits [T, E] -> topk ids and weights (include/moejit/routing.hpp)
    router_backward,    // d topk weights -> d router logits
    routing_histogram,  // routing indices pass 1: slots per expert per chunk
    routing_indices,    // routing indices pass 2: m_sizes, gather_idx, scatter_idx
    permute_rows,       // [T, k] token rows -> [M, k] expert order
    unpermute_rows,     // [M, k] expert order -> [M, k] slot order
};

struct Arch {
    int major = 9;
    int minor = 0;
    bool arch_specific = true;  // the 'a' suffix: wgmma / setmaxnreg need it

    // Accepts sm_80, sm_86, sm_89, sm_90a, sm_100a; throws moejit::Error otherwise.
    static Arch parse(std::string_view name);
    static std::string supported_names();  // "sm_80, sm_86, sm_89, sm_90a, sm_100a"
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
    // Fusions (compile-time). For fwd they describe the GEMM itself; dx and dw take the flags of
    // the forward they differentiate (see DESIGN.md's semantics table).
    bool permute_x = false;      // X is [T, K] in token order, row r reads X[gather_idx[r] / topk]
    bool permute_y = false;      // Y row r is row gather_idx[r] of a token-ordered [M, N]
    bool fuse_mul_post = false;  // with permute_y: Y row r is scaled by topk_weights[gather_idx[r]]
    bool gated = false;          // gate_up: the forward writes silu(gate) * up, [M, N/2]
    // gated fwd: also writes gate|up [M, N], what gated_activation_backward reads. A training
    // forward's output; without it (inference) the kernel has no code for it, and runs 2.6-6% faster.
    bool saves_preactivation = false;
    bool out_fp32 = false;       // dw: gradient in fp32 instead of the input dtype
    Arch arch;

    // Throws moejit::Error naming the first field that is out of range.
    void validate() const;
    bool operator==(const Problem& o) const {
        return op == o.op && dtype == o.dtype && n == o.n && k == o.k && experts == o.experts &&
               topk == o.topk && permute_x == o.permute_x && permute_y == o.permute_y &&
               fuse_mul_post == o.fuse_mul_post && gated == o.gated &&
               saves_preactivation == o.saves_preactivation && out_fp32 == o.out_fp32 && arch == o.arch;
    }
    bool operator!=(const Problem& o) const { return !(*this == o); }
};

// Readable kernel spec, e.g. "fwd:bf16:n1536:k2048:e128:topk8:permute_x:gated:sm_90a" (a training
// forward adds ":preactivation" after ":gated").
// parse_spec(to_spec(p)) == p for every valid p. parse_spec needs op, dtype, n, k, e, topk and arch,
// each once (fusion flags are optional, at most once), and throws moejit::Error on an unknown,
// repeated, missing or out-of-range field.
std::string to_spec(const Problem& problem);
Problem parse_spec(std::string_view spec);

// The fusion flag that a spec names `name` (permute_x, permute_y, mul_post or gated; not the output
// options out_fp32 of dW and preactivation of the gated forward), or nullptr.
bool Problem::*fusion_flag(std::string_view name);

const char* to_string(DType dtype);
const char* to_string(Op op);
size_t element_bytes(DType dtype);

}  // namespace moejit

#pragma once
// Llama4-style MoE block (Hugging Face Llama4TextMoe), forward and backward, on the device with no
// host synchronization (capturable in a CUDA graph):
//
//   logits = hidden @ router^T                                   [T, E]
//   top-k of the logits (k = 1 in Llama4); score = sigmoid(chosen logit), no renormalization
//   in[t, j] = hidden[t] * score[t, j]            (rounded to the dtype, as HF does in bf16)
//   out[t] = sum_j down_e(silu(gate_e(in)) * up_e(in))           e = the j-th chosen expert
//          + shared_down(silu(shared_gate(hidden[t])) * shared_up(hidden[t]))
//
// The score scales the expert's input, not its output, so the combine is unweighted. The shared
// expert is a dense gated MLP run as a grouped GEMM of one "expert" of T rows. backward() uses what
// the last forward() saved.
#include <moejit/problem.hpp>

#include <cuda.h>

#include <memory>
#include <vector>

namespace moejit {

struct Llama4MoeConfig {
    int64_t hidden = 0;               // H
    int64_t intermediate = 0;         // I, of each routed expert
    int64_t shared_intermediate = 0;  // Is, of the shared expert; 0: the same as I
    int experts = 0;                  // E, a multiple of 8 (the router GEMM)
    int topk = 1;
    DType dtype = DType::bf16;
    // Weight gradients in fp32, or, when false, in `dtype` (half the bytes written).
    bool fp32_weight_gradients = true;
    // false: a block for inference. Its forward saves nothing for a backward (its gated GEMMs have
    // no code for gate|up), its workspace holds only the forward's buffers, kernels() lists only
    // the forward's, and backward() refuses.
    bool training = true;

    int64_t shared() const { return shared_intermediate > 0 ? shared_intermediate : intermediate; }
};

struct Llama4MoeWeights {
    CUdeviceptr router = 0;          // [E, H]
    CUdeviceptr gate_up = 0;         // [E, 2I, H], rows 0..I-1 gate, I..2I-1 up
    CUdeviceptr down = 0;            // [E, H, I]
    CUdeviceptr shared_gate_up = 0;  // [2Is, H]
    CUdeviceptr shared_down = 0;     // [H, Is]
};

// Weight gradients are fp32 (the block's dtype without Llama4MoeConfig::fp32_weight_gradients);
// the input gradient has the block's dtype.
struct Llama4MoeGradients {
    CUdeviceptr hidden = 0;          // [T, H]
    CUdeviceptr router = 0;          // [E, H]
    CUdeviceptr gate_up = 0;         // [E, 2I, H]
    CUdeviceptr down = 0;            // [E, H, I]
    CUdeviceptr shared_gate_up = 0;  // [2Is, H]
    CUdeviceptr shared_down = 0;     // [H, Is]
};

class Llama4TextMoe {
public:
    // Device memory for up to max_tokens tokens, forward and backward (the forward alone without
    // config.training). Throws moejit::Error for what the constructor rejects.
    static size_t workspace_bytes(const Llama4MoeConfig& config, int64_t max_tokens);
    // Every kernel the block compiles for `arch`, forward and backward (the forward alone without
    // config.training): each grouped-GEMM pass it runs, and its routing and elementwise kernels. `moejit
    // precompile` puts these in a deployment cache, so a process running the block on that arch never
    // JIT-compiles. Throws moejit::Error for what the constructor rejects.
    static std::vector<Problem> kernels(const Llama4MoeConfig& config, const Arch& arch);

    // Owns a workspace of workspace_bytes(config, max_tokens). Every argument is checked before the
    // device is touched: hidden, intermediate and a non-zero shared_intermediate positive multiples
    // of 8, experts a multiple of 8 in 8..1024, 1 <= topk <= min(32, experts), 0 < max_tokens * topk < 2^31.
    Llama4TextMoe(const Llama4MoeConfig& config, int64_t max_tokens);
    // Uses the caller's workspace (at least workspace_bytes, 256-byte aligned); allocates nothing.
    Llama4TextMoe(const Llama4MoeConfig& config, int64_t max_tokens, CUdeviceptr workspace);
    ~Llama4TextMoe();
    Llama4TextMoe(const Llama4TextMoe&) = delete;
    Llama4TextMoe& operator=(const Llama4TextMoe&) = delete;

    // hidden [T, H] and output [T, H] in the block's dtype; router_logits [T, E] (block dtype) is
    // written as well. hidden and router_logits must stay unchanged until backward().
    // router_logits may overlap neither hidden nor output; output may take hidden's place only in
    // a block built for inference (a training block's backward reads hidden again).
    void forward(CUdeviceptr hidden, const Llama4MoeWeights& weights, CUdeviceptr output, CUdeviceptr router_logits,
                 int64_t tokens, CUstream stream);
    // grad_output [T, H] of the last forward's output.
    void backward(CUdeviceptr grad_output, const Llama4MoeWeights& weights, const Llama4MoeGradients& gradients,
                  CUstream stream);

    // Compiles (or reads from the disk cache) every kernel that forward() and backward() launch for
    // `tokens` tokens (1..max_tokens), several at once on up to `jobs` host threads (0: one per CPU
    // the process may use, at most 32): prepare_kernels (moejit/prepare.hpp) over kernels(). The
    // calls then compile nothing. Without it each kernel compiles at its first launch, one after
    // another.
    void prepare(int64_t tokens, unsigned jobs = 0) const;

    // Reads the device's count of routed expert ids outside [0, E) of the last forward (throws
    // moejit::Error if no forward has completed) and throws moejit::Error if any. Synchronizes
    // the stream: for checks, not the hot path.
    void check_routing_errors(CUstream stream) const;

private:
    struct State;
    std::unique_ptr<State> state_;
};

}  // namespace moejit

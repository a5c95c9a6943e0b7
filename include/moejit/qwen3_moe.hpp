#pragma once
// Qwen3-style sparse MoE block (Hugging Face Qwen3MoeSparseMoeBlock), forward and backward, on the
// device with no host synchronization (capturable in a CUDA graph):
//
//   logits = hidden @ router^T                      [T, E]
//   p = softmax(logits); top-k of p; renormalize the k weights when norm_topk_prob
//   out[t] = sum_j w[t,j] * down_e(silu(gate_e(hidden[t])) * up_e(hidden[t]))   e = the j-th chosen expert
//
// Every step is a JIT-specialized kernel: the router GEMM, top-k, routing indices, the gate_up GEMM
// gathering token rows with the gated activation fused, the down GEMM scattering to token-slot order,
// and a deterministic weighted combine. backward() uses what the last forward() saved.
#include <moejit/problem.hpp>

#include <cuda.h>

#include <memory>
#include <vector>

namespace moejit {

struct Qwen3MoeConfig {
    int64_t hidden = 0;            // H
    int64_t moe_intermediate = 0;  // I
    int experts = 0;               // E
    int topk = 0;
    bool norm_topk_prob = true;
    DType dtype = DType::bf16;
    // Weight gradients (router, gate_up, down) in fp32, or, when false, in `dtype`: half the bytes
    // written, for trainers that keep low-precision gradients (the fp32 dW are a third of the
    // backward's time at qwen3-30b-a3b).
    bool fp32_weight_gradients = true;
    // false: a block for inference. Its forward saves nothing for a backward (the gated GEMM's
    // kernel has no code for gate|up: 6% faster at qwen3-30b-a3b), its workspace holds only the
    // forward's buffers (a quarter of a training block's), kernels() lists only the forward's, and
    // backward() refuses.
    bool training = true;
};

struct Qwen3MoeWeights {
    CUdeviceptr router = 0;   // [E, H]
    CUdeviceptr gate_up = 0;  // [E, 2I, H], rows 0..I-1 gate, I..2I-1 up
    CUdeviceptr down = 0;     // [E, H, I]
};

// Weight gradients are fp32 (the block's dtype without Qwen3MoeConfig::fp32_weight_gradients);
// the input gradient has the block's dtype.
struct Qwen3MoeGradients {
    CUdeviceptr hidden = 0;   // [T, H]
    CUdeviceptr router = 0;   // [E, H]
    CUdeviceptr gate_up = 0;  // [E, 2I, H]
    CUdeviceptr down = 0;     // [E, H, I]
};

class Qwen3MoeBlock {
public:
    // Device memory for up to max_tokens tokens, forward and backward (the forward alone without
    // config.training). Throws moejit::Error for what the constructor rejects.
    static size_t workspace_bytes(const Qwen3MoeConfig& config, int64_t max_tokens);
    // Every kernel the block compiles for `arch`, forward and backward (the forward alone without
    // config.training): each grouped-GEMM pass it runs, and its routing and elementwise kernels. `moejit
    // precompile` puts these in a deployment cache, so a process running the block on that arch never
    // JIT-compiles. Throws moejit::Error for what the constructor rejects.
    static std::vector<Problem> kernels(const Qwen3MoeConfig& config, const Arch& arch);

    // Owns a workspace of workspace_bytes(config, max_tokens). Every argument is checked before the
    // device is touched: hidden and moe_intermediate positive multiples of 8, experts a multiple of 8
    // in 8..1024, 1 <= topk <= min(32, experts), 0 < max_tokens * topk < 2^31.
    Qwen3MoeBlock(const Qwen3MoeConfig& config, int64_t max_tokens);
    // Uses the caller's workspace (at least workspace_bytes, 256-byte aligned); allocates nothing.
    Qwen3MoeBlock(const Qwen3MoeConfig& config, int64_t max_tokens, CUdeviceptr workspace);
    ~Qwen3MoeBlock();
    Qwen3MoeBlock(const Qwen3MoeBlock&) = delete;
    Qwen3MoeBlock& operator=(const Qwen3MoeBlock&) = delete;

    // hidden [T, H] and output [T, H] in the block's dtype; router_logits [T, E] (block dtype) is
    // written as well. hidden and router_logits must stay unchanged until backward().
    // router_logits may overlap neither hidden nor output; output may take hidden's place only in
    // a block built for inference (a training block's backward reads hidden again).
    void forward(CUdeviceptr hidden, const Qwen3MoeWeights& weights, CUdeviceptr output, CUdeviceptr router_logits,
                 int64_t tokens, CUstream stream);
    // grad_output [T, H] of the last forward's output.
    void backward(CUdeviceptr grad_output, const Qwen3MoeWeights& weights, const Qwen3MoeGradients& gradients,
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

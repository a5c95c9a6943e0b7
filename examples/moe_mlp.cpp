// A Qwen3-style Mixture-of-Experts MLP layer, one training step (forward and backward), written
// against the public moejit API and the CUDA runtime only:
//
//   for every token t and each of its topk chosen experts e (slot s = t*topk + j, router weight w[s]):
//     h[s]   = silu(x[t] @ W_gate[e]^T) * (x[t] @ W_up[e]^T)          W_gate_up [E, 2I, H]
//     out[t] = sum_j w[s] * (h[s] @ W_down[e]^T)                      W_down    [E, H, I]
//
// Routing (softmax, top-2, renormalize) runs on the host to keep the program short; the GEMMs, the
// top-k combine and the activation backward are JIT-compiled kernels on the GPU, launched on one
// stream with no host synchronization in between. A float64 host reference, computed straight from
// the formulas above, checks out, dX, dW_gate_up and dW_down; the exit code is 0 only when all match.
#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

namespace {

uint16_t to_bf16(float value) {  // round to nearest even
    uint32_t bits;
    std::memcpy(&bits, &value, 4);
    return static_cast<uint16_t>((bits + 0x7fff + ((bits >> 16) & 1)) >> 16);
}

float from_bf16(uint16_t half) {
    const uint32_t bits = uint32_t(half) << 16;
    float value;
    std::memcpy(&value, &bits, 4);
    return value;
}

void check(cudaError_t status) {
    if (status != cudaSuccess) throw std::runtime_error(cudaGetErrorString(status));
}

// Device memory that frees itself. Outputs start as all-ones bytes (NaN in bf16 and fp32), so a row
// the library failed to write shows up in the check instead of passing as stale zeros.
class DeviceBuffer {
public:
    explicit DeviceBuffer(size_t bytes) {
        check(cudaMalloc(&pointer_, bytes));
        check(cudaMemset(pointer_, 0xff, bytes));
    }
    template <class T>
    explicit DeviceBuffer(const std::vector<T>& host) {
        check(cudaMalloc(&pointer_, host.size() * sizeof(T)));
        check(cudaMemcpy(pointer_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
    }
    ~DeviceBuffer() { cudaFree(pointer_); }
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;

    CUdeviceptr get() const { return reinterpret_cast<CUdeviceptr>(pointer_); }

    std::vector<float> download_bf16(size_t count) const {
        std::vector<uint16_t> raw(count);
        check(cudaMemcpy(raw.data(), pointer_, count * 2, cudaMemcpyDeviceToHost));
        std::vector<float> values(count);
        for (size_t i = 0; i < count; ++i) values[i] = from_bf16(raw[i]);
        return values;
    }
    std::vector<float> download_fp32(size_t count) const {
        std::vector<float> values(count);
        check(cudaMemcpy(values.data(), pointer_, count * 4, cudaMemcpyDeviceToHost));
        return values;
    }

private:
    void* pointer_ = nullptr;
};

// ||got - want||_F / ||want||_F; NaN (an unwritten output) fails any threshold.
double relative_error(const std::vector<float>& got, const std::vector<double>& want) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < want.size(); ++i) {
        diff += (got[i] - want[i]) * (got[i] - want[i]);
        norm += want[i] * want[i];
    }
    return std::sqrt(diff / norm);
}

}  // namespace

int main() try {
    const int64_t T = 64;   // tokens
    const int64_t H = 256;  // hidden size
    const int64_t I = 128;  // expert intermediate size
    const int E = 8, topk = 2;
    const int64_t M = T * topk;  // routed rows, one per (token, choice) slot s = t*topk + j
    const moejit::DType bf16 = moejit::DType::bf16;

    // ---- Inputs, rounded to bf16 once; the host reference reads the same rounded values ----
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> uniform(-1, 1);
    auto random_bf16 = [&](int64_t count, double scale) {
        std::vector<uint16_t> values(count);
        for (auto& value : values) value = to_bf16(float(scale * uniform(rng)));
        return values;
    };
    // Weights scaled by 1/sqrt(reduction length) keep activations O(1).
    const std::vector<uint16_t> x_host = random_bf16(T * H, 1);                                  // [T, H]
    const std::vector<uint16_t> w_gate_up_host = random_bf16(E * 2 * I * H, 1 / std::sqrt(H));  // [E, 2I, H]
    const std::vector<uint16_t> w_down_host = random_bf16(E * H * I, 1 / std::sqrt(I));         // [E, H, I]
    const std::vector<uint16_t> d_out_host = random_bf16(T * H, 1);  // [T, H] gradient arriving at out
    std::vector<float> router_logits(T * E);                         // [T, E]
    for (auto& logit : router_logits) logit = 2 * uniform(rng);

    // ---- Routing, Qwen3 style: softmax over experts, top-k, renormalize the k weights (norm_topk_prob) ----
    std::vector<int> expert_of(M);       // [M] expert chosen in slot s = t*topk + j
    std::vector<float> topk_weights(M);  // [M] float32 router weight of slot s (the layout moejit reads)
    for (int64_t t = 0; t < T; ++t) {
        const float* logits = &router_logits[t * E];
        const float max_logit = *std::max_element(logits, logits + E);
        std::vector<double> probability(E);
        double total = 0;
        for (int e = 0; e < E; ++e) total += probability[e] = std::exp(double(logits[e]) - max_logit);
        for (int e = 0; e < E; ++e) probability[e] /= total;
        std::vector<int> order(E);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return probability[a] > probability[b]; });
        double chosen = 0;
        for (int j = 0; j < topk; ++j) chosen += probability[order[j]];
        for (int j = 0; j < topk; ++j) {
            expert_of[t * topk + j] = order[j];
            topk_weights[t * topk + j] = float(probability[order[j]] / chosen);
        }
    }
    // gather_idx: the slots stably sorted by expert, so routed row r (expert-ordered) is slot gather_idx[r].
    std::vector<int> gather_idx;    // [M] int32
    std::vector<int> m_sizes(E, 0);  // [E] int32, routed rows per expert
    for (int e = 0; e < E; ++e)
        for (int64_t s = 0; s < M; ++s)
            if (expert_of[s] == e) {
                gather_idx.push_back(int(s));
                ++m_sizes[e];
            }
    std::printf("rows per expert:");
    for (int rows : m_sizes) std::printf(" %d", rows);
    std::printf("\n");

    const DeviceBuffer m_sizes_dev(m_sizes), gather_idx_dev(gather_idx), topk_weights_dev(topk_weights);
    const moejit::Routing routing{m_sizes_dev.get(), gather_idx_dev.get(), topk_weights_dev.get(), M};

    // ---- The two grouped GEMMs, described by their forward pass; dx and dw differentiate it ----
    moejit::Problem gate_up_problem;  // fwd, bf16: [M, H] -> gate|up [M, 2I] -> h [M, I]
    gate_up_problem.n = 2 * I;
    gate_up_problem.k = H;
    gate_up_problem.experts = E;
    gate_up_problem.topk = topk;
    gate_up_problem.permute_x = true;  // read x [T, H] in token order through gather_idx: no permuted copy
    gate_up_problem.gated = true;      // epilogue writes silu(gate) * up
    gate_up_problem.saves_preactivation = true;  // and gate|up, for the backward (training)
    moejit::Problem down_problem;  // fwd, bf16: h [M, I] -> [M, H]
    down_problem.n = H;
    down_problem.k = I;
    down_problem.experts = E;
    down_problem.topk = topk;
    down_problem.permute_y = true;      // write rows back to slot order t*topk + j
    down_problem.fuse_mul_post = true;  // scaled by topk_weights as they are written
    // dW_down reduces over a dY that must already carry the router weight (dw has no fuse_mul_post):
    // the same GEMM without the scale, used only for its dw pass.
    moejit::Problem down_grad_problem = down_problem;
    down_grad_problem.fuse_mul_post = false;

    const moejit::GroupedGemm gate_up(gate_up_problem);  // kernels JIT-compiled at first use, cached on disk
    const moejit::GroupedGemm down(down_problem);
    const moejit::GroupedGemm down_grad(down_grad_problem);

    cudaStream_t stream;  // the same handle as a CUstream
    check(cudaStreamCreate(&stream));

    // ---- Forward ----
    const DeviceBuffer x(x_host);                  // [T, H]
    const DeviceBuffer w_gate_up(w_gate_up_host);  // [E, 2I, H]
    const DeviceBuffer w_down(w_down_host);        // [E, H, I]
    const DeviceBuffer gate_up_pre(M * 2 * I * 2);  // [M, 2I] expert order: gate|up, saved for the backward
    const DeviceBuffer h(M * I * 2);                // [M, I] expert order: silu(gate) * up
    const DeviceBuffer y_slots(M * H * 2);          // [M, H] slot order, already scaled by topk_weights
    const DeviceBuffer out(T * H * 2);              // [T, H]
    gate_up.forward(x.get(), w_gate_up.get(), h.get(), routing, stream, gate_up_pre.get());
    down.forward(h.get(), w_down.get(), y_slots.get(), routing, stream);
    moejit::combine_topk(bf16, H, topk, y_slots.get(), out.get(), T, stream);  // out[t] = sum_j y_slots[t*topk + j]

    // ---- Backward ----
    // The combine's backward hands each slot its token's gradient: dY_slots[s] = dOut[s / topk].
    // down.dx applies the router weight itself (its forward had fuse_mul_post); down_grad.dw needs
    // it applied already. Built on the host here for brevity; in training it is a small device kernel.
    std::vector<uint16_t> dy_slots_host(M * H), dy_scaled_slots_host(M * H);
    for (int64_t s = 0; s < M; ++s)
        for (int64_t c = 0; c < H; ++c) {
            const uint16_t grad = d_out_host[(s / topk) * H + c];
            dy_slots_host[s * H + c] = grad;
            dy_scaled_slots_host[s * H + c] = to_bf16(from_bf16(grad) * topk_weights[s]);
        }
    const DeviceBuffer dy_slots(dy_slots_host);                // [M, H] slot order, not scaled
    const DeviceBuffer dy_scaled_slots(dy_scaled_slots_host);  // [M, H] slot order, times topk_weights
    const DeviceBuffer dh(M * I * 2);                          // [M, I] expert order
    const DeviceBuffer dgate_up(M * 2 * I * 2);                // [M, 2I] expert order: d(gate|up)
    const DeviceBuffer dx_slots(M * H * 2);                    // [M, H] slot order, one row per (token, choice)
    const DeviceBuffer dx(T * H * 2);                          // [T, H]
    const DeviceBuffer dw_gate_up(E * 2 * I * H * 4);          // [E, 2I, H] fp32
    const DeviceBuffer dw_down(E * H * I * 4);                 // [E, H, I] fp32
    down.dx(dy_slots.get(), w_down.get(), dh.get(), routing, stream);  // gathers dY by gather_idx, scales
    down_grad.dw(dy_scaled_slots.get(), h.get(), dw_down.get(), routing, stream, /*fp32_output=*/true);
    moejit::gated_activation_backward(bf16, 2 * I, gate_up_pre.get(), dh.get(), dgate_up.get(), M, stream);
    gate_up.dx(dgate_up.get(), w_gate_up.get(), dx_slots.get(), routing, stream);  // scattered to slot order
    moejit::combine_topk(bf16, H, topk, dx_slots.get(), dx.get(), T, stream);       // dX[t] = sum over t's slots
    gate_up.dw(dgate_up.get(), x.get(), dw_gate_up.get(), routing, stream, /*fp32_output=*/true);
    check(cudaStreamSynchronize(stream));  // the only synchronization of the step
    check(cudaStreamDestroy(stream));

    // ---- float64 host reference from the formulas, independent of the library's intermediates ----
    auto value = [](const std::vector<uint16_t>& tensor, int64_t index) { return double(from_bf16(tensor[index])); };
    std::vector<double> want_out(T * H, 0), want_dx(T * H, 0);                    // [T, H]
    std::vector<double> want_dw_gate_up(E * 2 * I * H, 0), want_dw_down(E * H * I, 0);  // [E, 2I, H], [E, H, I]
    std::vector<double> gate(I), up(I), hidden(I), dy(H), dhidden(I);
    for (int64_t t = 0; t < T; ++t)
        for (int j = 0; j < topk; ++j) {
            const int64_t s = t * topk + j, e = expert_of[s];
            const double weight = topk_weights[s];
            const int64_t gate_row = e * 2 * I, down_row = e * H;  // first row of expert e in W_gate_up, W_down
            for (int64_t i = 0; i < I; ++i) {
                gate[i] = up[i] = 0;
                for (int64_t c = 0; c < H; ++c) {
                    gate[i] += value(x_host, t * H + c) * value(w_gate_up_host, (gate_row + i) * H + c);
                    up[i] += value(x_host, t * H + c) * value(w_gate_up_host, (gate_row + I + i) * H + c);
                }
                hidden[i] = gate[i] / (1 + std::exp(-gate[i])) * up[i];
            }
            for (int64_t c = 0; c < H; ++c) {
                double y = 0;
                for (int64_t i = 0; i < I; ++i) y += hidden[i] * value(w_down_host, (down_row + c) * I + i);
                want_out[t * H + c] += weight * y;
                dy[c] = weight * value(d_out_host, t * H + c);  // d(expert output) of this slot
            }
            for (int64_t i = 0; i < I; ++i) {
                dhidden[i] = 0;
                for (int64_t c = 0; c < H; ++c) {
                    dhidden[i] += dy[c] * value(w_down_host, (down_row + c) * I + i);
                    want_dw_down[(down_row + c) * I + i] += dy[c] * hidden[i];
                }
                const double sigmoid = 1 / (1 + std::exp(-gate[i]));
                const double dgate = dhidden[i] * up[i] * sigmoid * (1 + gate[i] * (1 - sigmoid));
                const double dup = dhidden[i] * gate[i] * sigmoid;
                for (int64_t c = 0; c < H; ++c) {
                    want_dx[t * H + c] += dgate * value(w_gate_up_host, (gate_row + i) * H + c) +
                                          dup * value(w_gate_up_host, (gate_row + I + i) * H + c);
                    want_dw_gate_up[(gate_row + i) * H + c] += dgate * value(x_host, t * H + c);
                    want_dw_gate_up[(gate_row + I + i) * H + c] += dup * value(x_host, t * H + c);
                }
            }
        }

    // ---- Compare: relative Frobenius error per quantity ----
    struct Result {
        const char* name;
        double error;
    };
    const Result results[] = {
        {"out        [T, H]    ", relative_error(out.download_bf16(T * H), want_out)},
        {"dX         [T, H]    ", relative_error(dx.download_bf16(T * H), want_dx)},
        {"dW_gate_up [E, 2I, H]", relative_error(dw_gate_up.download_fp32(E * 2 * I * H), want_dw_gate_up)},
        {"dW_down    [E, H, I] ", relative_error(dw_down.download_fp32(E * H * I), want_dw_down)},
    };
    const double tolerance = 3e-2;  // bf16 inputs and intermediates, fp32 accumulation
    bool all_pass = true;
    for (const Result& result : results) {
        const bool pass = result.error < tolerance;  // false for NaN
        all_pass = all_pass && pass;
        std::printf("%s relative error %.2e  %s\n", result.name, result.error, pass ? "ok" : "FAIL");
    }
    return all_pass ? 0 : 1;
} catch (const std::exception& error) {
    std::fprintf(stderr, "example_moe_mlp: %s\n", error.what());
    return 1;
}

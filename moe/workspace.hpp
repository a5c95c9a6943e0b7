#pragma once
// Device workspace of the MoE blocks: offsets planned once, memory owned or borrowed.
#include <moejit/error.hpp>

#include "moe/row_limits.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

namespace moejit {

// The blocks plan their workspace for max_tokens tokens, max_tokens * topk routed rows: each a
// positive count the routing kernels can index (at most kMaxRows).
inline void check_max_tokens(int64_t max_tokens, int topk, const char* block) {
    if (max_tokens <= 0 || !routed_rows_fit(max_tokens, topk))
        throw Error(std::string(block) + ": max_tokens must be positive and max_tokens * topk below 2^31, got " +
                    std::to_string(max_tokens));
}

// Hands out 256-byte aligned offsets, each for a buffer of the product of `factors` bytes. A
// size past 2^64 (dimensions no device holds) throws rather than wrapping to a small workspace
// that the blocks would then write past.
class WorkspaceLayout {
public:
    explicit WorkspaceLayout(const char* block) : block_(block) {}

    template <class... Factors>
    size_t take(Factors... factors) {
        size_t bytes = 1;
        const bool overflow = (... || __builtin_mul_overflow(bytes, size_t(factors), &bytes)) ||
                              __builtin_add_overflow(bytes, size_t(255), &bytes) ||
                              __builtin_add_overflow(size_, bytes / 256 * 256, &bytes);
        if (overflow)
            throw Error(std::string(block_) +
                        ": the workspace size overflows 64 bits (dimensions or max_tokens too large)");
        const size_t at = size_;
        size_ = bytes;
        return at;
    }
    size_t size() const { return size_; }

private:
    const char* block_;
    size_t size_ = 0;
};

// The offset of a buffer that a block built for inference (training = false) does not plan: those
// that only its backward, which refuses, would read or write. Blocks::at throws on it.
constexpr size_t kNotPlanned = SIZE_MAX;

// A block's workspace address of `offset`.
inline CUdeviceptr workspace_at(CUdeviceptr workspace, size_t offset, const char* block) {
    if (offset == kNotPlanned)
        throw Error(std::string(block) + ": internal error: a training buffer used by a block built for inference");
    return workspace + offset;
}

// What both blocks keep of their routed experts' gated MLP, for M routed rows of T tokens (hidden
// H, intermediate I, `bytes` an element): the forward's, saved for the backward, and the
// backward's own. Without `training` only the forward's own (h, y_slots).
struct RoutedMlpBuffers {
    size_t h = kNotPlanned, y_slots = kNotPlanned;  // forward
    size_t preactivation = kNotPlanned;             // training: saved by forward
    size_t grad_y = kNotPlanned, grad_weights = kNotPlanned, grad_h = kNotPlanned, grad_gate_up = kNotPlanned,
           grad_x_slots = kNotPlanned;     // backward
    size_t router_grad_x = kNotPlanned;    // backward: the router's share of dX

    static RoutedMlpBuffers plan(WorkspaceLayout& layout, size_t T, size_t M, size_t H, size_t I, size_t bytes,
                                 bool training) {
        RoutedMlpBuffers b;
        b.h = layout.take(M, I, bytes);
        b.y_slots = layout.take(M, H, bytes);
        if (!training) return b;
        b.preactivation = layout.take(M, 2 * I, bytes);
        b.grad_y = layout.take(M, H, bytes);
        b.grad_weights = layout.take(M, 4);
        b.grad_h = layout.take(M, I, bytes);
        b.grad_gate_up = layout.take(M, 2 * I, bytes);
        b.grad_x_slots = layout.take(M, H, bytes);
        b.router_grad_x = layout.take(T, H, bytes);
        return b;
    }
};

class DeviceWorkspace {
public:
    // Borrows `external` when non-zero (it must be 256-byte aligned), else allocates `bytes`.
    DeviceWorkspace(size_t bytes, CUdeviceptr external) : pointer_(external), owned_(external == 0) {
        if (external % 256 != 0) throw Error("workspace must be 256-byte aligned");
        if (owned_) {
            current_device();
            check_cuda(driver().cuMemAlloc(&pointer_, bytes ? bytes : 256), "cuMemAlloc (MoE block workspace)");
        }
    }
    ~DeviceWorkspace() {
        if (owned_ && pointer_) driver().cuMemFree(pointer_);
    }
    DeviceWorkspace(const DeviceWorkspace&) = delete;
    DeviceWorkspace& operator=(const DeviceWorkspace&) = delete;

    CUdeviceptr pointer() const { return pointer_; }

private:
    CUdeviceptr pointer_ = 0;
    bool owned_ = false;
};

}  // namespace moejit

// Host side of the routing ops (include/moejit/routing.hpp): argument checks, then one launch (two
// for routing_indices) of a JIT-specialized kernel on the caller's stream. Nothing here synchronizes
// or allocates, except check_routing_errors.
#include <moejit/error.hpp>
#include <moejit/routing.hpp>

#include "codegen/kernel_problems.hpp"
#include "moe/elementwise_kernel.hpp"
#include "moe/pointer_checks.hpp"
#include "moe/route_topk.hpp"
#include "moe/router_limits.hpp"
#include "moe/row_limits.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"
#include "runtime/launch_arguments.hpp"

#include <algorithm>
#include <string>

namespace moejit {

namespace {

constexpr int kTokensPerBlock = 8;  // route_topk and router_backward: one warp per token, 256 threads

// `where()` names the call in an error message; it is only built when a check fails (cheap hot path).
template <class Where>
void check_dtype(DType dtype, const Where& where) {
    if (dtype != DType::bf16 && dtype != DType::fp16) throw Error(where() + ": dtype must be bf16 or fp16");
}

unsigned grid_for(int64_t blocks, int sm_count) {
    return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, int64_t(sm_count) * 16));
}

std::string router_name(const char* op, const RouterConfig& router) {
    return std::string(op) + " (experts " + std::to_string(router.experts) + ", topk " + std::to_string(router.topk) +
           ", " + (router.scoring == Scoring::sigmoid ? "sigmoid" : "softmax") +
           (router.score_before_topk ? " before" : " after") + " top-k" + (router.renormalize ? ", renormalized" : "") +
           ")";
}

int router_mode(const RouterConfig& router) {
    return (router.scoring == Scoring::sigmoid ? kRouteSigmoid : 0) | (router.renormalize ? kRouteRenormalize : 0) |
           (router.score_before_topk ? kRouteScoreBeforeTopk : 0);
}

template <class Where>
void check_tokens(int64_t tokens, const Where& where) {
    if (tokens < 0 || tokens > kMaxRows)
        throw Error(where() + ": tokens must be in [0, 2^31), got " + std::to_string(tokens));
}

// routing_indices: blocks of `chunk` consecutive slots (a multiple of 256). At most `bound` blocks,
// where `bound` only grows with the slot count: the workspace holds bound * experts counts. Each
// block of the second pass reads the counts of all blocks, so the bound shrinks as experts grow.
struct Chunking {
    int64_t chunk = 256;
    int64_t chunks = 0;
    int64_t bound = 0;
};

Chunking routing_chunking(int experts, int64_t rows) {
    Chunking c;
    if (rows <= 0) return c;
    const int64_t most = std::clamp<int64_t>((int64_t{1} << 18) / std::max(experts, 1), 16, 256);
    c.bound = std::min<int64_t>(most, (rows + 1023) / 1024);
    c.chunk = std::max<int64_t>(256, ((rows + c.bound - 1) / c.bound + 255) / 256 * 256);
    c.chunks = (rows + c.chunk - 1) / c.chunk;
    return c;
}

}  // namespace

void route_topk(const RouterConfig& router, DType dtype, CUdeviceptr logits, CUdeviceptr topk_ids,
                CUdeviceptr topk_weights, int64_t tokens, CUstream stream) {
    route_topk_clearing(router, dtype, logits, topk_ids, topk_weights, tokens, 0, stream);
}

void route_topk_clearing(const RouterConfig& router, DType dtype, CUdeviceptr logits, CUdeviceptr topk_ids,
                         CUdeviceptr topk_weights, int64_t tokens, CUdeviceptr counter, CUstream stream) {
    const auto where = [&] { return router_name("route_topk", router); };
    check_router(router, where);
    check_dtype(dtype, where);
    check_pointer(logits, 2, where, "logits");
    check_pointer(topk_ids, 4, where, "topk_ids");
    check_pointer(topk_weights, 4, where, "topk_weights");
    check_tokens(tokens, where);
    if (counter != 0) check_pointer(counter, 4, where, "the cleared counter");
    const DeviceInfo& device = current_device();
    auto kernel = elementwise_kernel(router_problem(Op::route_topk, router.experts, router.topk, dtype), device);
    if (tokens == 0) return;
    RouteTopkArguments arguments{reinterpret_cast<const void*>(logits), reinterpret_cast<int*>(topk_ids),
                                 reinterpret_cast<float*>(topk_weights), tokens, router_mode(router),
                                 reinterpret_cast<int*>(counter)};
    void* parameters[] = {&arguments};
    kernel->launch(grid_for((tokens + kTokensPerBlock - 1) / kTokensPerBlock, device.sm_count), stream, parameters);
}

void router_backward(const RouterConfig& router, DType dtype, CUdeviceptr logits, CUdeviceptr topk_ids,
                     CUdeviceptr grad_topk_weights, CUdeviceptr grad_logits, int64_t tokens, CUstream stream) {
    const auto where = [&] { return router_name("router_backward", router); };
    check_router(router, where);
    check_dtype(dtype, where);
    check_pointer(logits, 2, where, "logits");
    check_pointer(topk_ids, 4, where, "topk_ids");
    check_pointer(grad_topk_weights, 4, where, "grad_topk_weights");
    check_pointer(grad_logits, 2, where, "grad_logits");
    check_tokens(tokens, where);
    const DeviceInfo& device = current_device();
    auto kernel = elementwise_kernel(router_problem(Op::router_backward, router.experts, router.topk, dtype), device);
    if (tokens == 0) return;
    RouterBackwardArguments arguments{reinterpret_cast<const void*>(logits), reinterpret_cast<const int*>(topk_ids),
                                      reinterpret_cast<const float*>(grad_topk_weights),
                                      reinterpret_cast<void*>(grad_logits), tokens, router_mode(router)};
    void* parameters[] = {&arguments};
    kernel->launch(grid_for((tokens + kTokensPerBlock - 1) / kTokensPerBlock, device.sm_count), stream, parameters);
}

size_t routing_workspace_bytes(int experts, int64_t tokens, int topk) {
    if (experts < 1 || experts > 4096)
        throw Error("routing_workspace_bytes: experts must be in 1..4096, got " + std::to_string(experts));
    if (topk < 1) throw Error("routing_workspace_bytes: topk must be positive, got " + std::to_string(topk));
    if (!routed_rows_fit(tokens, topk))
        throw Error("routing_workspace_bytes: tokens * topk must be in [0, 2^31), got tokens " +
                    std::to_string(tokens) + ", topk " + std::to_string(topk));
    return size_t(routing_chunking(experts, tokens * topk).bound) * size_t(experts) * sizeof(int);
}

void routing_indices(int experts, int topk, CUdeviceptr topk_ids, int64_t tokens, CUdeviceptr m_sizes,
                     CUdeviceptr gather_idx, CUdeviceptr scatter_idx, CUdeviceptr error_count,
                     CUdeviceptr workspace, size_t workspace_bytes, CUstream stream) {
    const auto where = [&] {
        return "routing_indices (experts " + std::to_string(experts) + ", topk " + std::to_string(topk) + ")";
    };
    if (experts < 1 || experts > 4096) throw Error(where() + ": experts must be in 1..4096");
    if (topk < 1) throw Error(where() + ": topk must be positive");
    if (!routed_rows_fit(tokens, topk))
        throw Error(where() + ": tokens * topk must be in [0, 2^31), got tokens " + std::to_string(tokens));
    const int64_t rows = tokens * topk;
    const size_t needed = routing_workspace_bytes(experts, tokens, topk);
    check_pointer(m_sizes, 4, where, "m_sizes");
    check_pointer(error_count, 4, where, "error_count");
    if (rows > 0) {
        check_pointer(topk_ids, 4, where, "topk_ids");
        check_pointer(gather_idx, 4, where, "gather_idx");
        check_pointer(scatter_idx, 4, where, "scatter_idx");
        check_pointer(workspace, 4, where, "workspace");
    }
    if (workspace_bytes < needed)
        throw Error(where() + ": workspace of " + std::to_string(workspace_bytes) + " bytes is too small for " +
                    std::to_string(tokens) + " tokens; routing_workspace_bytes gives " + std::to_string(needed));
    const DeviceInfo& device = current_device();
    auto histogram = elementwise_kernel(routing_indices_problem(Op::routing_histogram, experts), device);
    auto indices = elementwise_kernel(routing_indices_problem(Op::routing_indices, experts), device);
    if (rows == 0) {  // no slots: every expert gets zero rows
        check_cuda(driver().cuMemsetD32Async(m_sizes, 0, size_t(experts), stream), "routing_indices: clear m_sizes");
        return;
    }
    const Chunking chunking = routing_chunking(experts, rows);
    RoutingIndicesArguments arguments{reinterpret_cast<const int*>(topk_ids),
                                      reinterpret_cast<int*>(m_sizes),
                                      reinterpret_cast<int*>(gather_idx),
                                      reinterpret_cast<int*>(scatter_idx),
                                      reinterpret_cast<int*>(error_count),
                                      reinterpret_cast<int*>(workspace),
                                      rows,
                                      chunking.chunk};
    void* parameters[] = {&arguments};
    const unsigned grid = static_cast<unsigned>(chunking.chunks);
    histogram->launch(grid, stream, parameters);
    indices->launch(grid, stream, parameters);
}

void check_routing_errors(CUdeviceptr error_count, int experts, CUstream stream) {
    check_pointer(error_count, 4, [] { return std::string("check_routing_errors"); }, "error_count");
    const Driver& cu = driver();
    check_cuda(cu.cuStreamSynchronize(stream), "check_routing_errors: synchronize");
    int count = 0;
    check_cuda(cu.cuMemcpyDtoH(&count, error_count, sizeof count), "check_routing_errors: read the counter");
    if (count != 0)
        throw Error("routing: " + std::to_string(count) + " expert ids out of range [0, " + std::to_string(experts) +
                    ")");
}

void permute_rows(DType dtype, int64_t width, int topk, CUdeviceptr x, CUdeviceptr gather_idx, CUdeviceptr xp,
                  int64_t tokens, CUstream stream) {
    const auto where = [&] {
        return "permute_rows (width " + std::to_string(width) + ", topk " + std::to_string(topk) + ")";
    };
    check_dtype(dtype, where);
    if (topk < 1 || topk > 4096) throw Error(where() + ": topk must be in 1..4096");
    // The width's limits are the kernel's (16-byte rows, an int template argument): its Problem's.
    const Problem problem = permute_rows_problem(dtype, width, topk);
    problem.validate();
    if (!routed_rows_fit(tokens, topk))
        throw Error(where() + ": tokens * topk must be in [0, 2^31), got tokens " + std::to_string(tokens));
    check_pointer(x, 16, where, "x");
    check_pointer(gather_idx, 4, where, "gather_idx");
    check_pointer(xp, 16, where, "xp");
    const DeviceInfo& device = current_device();
    auto kernel = elementwise_kernel(problem, device);
    const int64_t rows = tokens * topk;
    if (rows == 0) return;
    PermuteRowsArguments arguments{reinterpret_cast<const void*>(x), reinterpret_cast<void*>(xp),
                                   reinterpret_cast<const int*>(gather_idx), rows};
    void* parameters[] = {&arguments};
    kernel->launch(grid_for((rows * (width / 8) + 255) / 256, device.sm_count), stream, parameters);
}

void unpermute_rows(DType dtype, int64_t width, CUdeviceptr y, CUdeviceptr gather_idx, CUdeviceptr ys, int64_t rows,
                    CUstream stream) {
    const auto where = [&] { return "unpermute_rows (width " + std::to_string(width) + ")"; };
    check_dtype(dtype, where);
    const Problem problem = unpermute_rows_problem(dtype, width);  // the width's limits, as in permute_rows
    problem.validate();
    if (rows < 0 || rows > kMaxRows) throw Error(where() + ": rows must be in [0, 2^31), got " + std::to_string(rows));
    check_pointer(y, 16, where, "y");
    check_pointer(gather_idx, 4, where, "gather_idx");
    check_pointer(ys, 16, where, "ys");
    const DeviceInfo& device = current_device();
    auto kernel = elementwise_kernel(problem, device);
    if (rows == 0) return;
    PermuteRowsArguments arguments{reinterpret_cast<const void*>(y), reinterpret_cast<void*>(ys),
                                   reinterpret_cast<const int*>(gather_idx), rows};
    void* parameters[] = {&arguments};
    kernel->launch(grid_for((rows * (width / 8) + 255) / 256, device.sm_count), stream, parameters);
}

}  // namespace moejit

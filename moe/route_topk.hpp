#pragma once
// route_topk (include/moejit/routing.hpp) that also sets one int32 counter on the device to zero
// before any later kernel on the stream runs. The MoE blocks restart their routing error count with
// it at every forward: a memset of its own would be one more launch, and it would end the chain of
// dependent launches (templates/common/dependent_launch.cuh). With no tokens nothing is launched and
// the counter is left as it is. counter: 0 (none), or 4-byte aligned.
#include <moejit/routing.hpp>

namespace moejit {

void route_topk_clearing(const RouterConfig& router, DType dtype, CUdeviceptr logits, CUdeviceptr topk_ids,
                         CUdeviceptr topk_weights, int64_t tokens, CUdeviceptr counter, CUstream stream);

}  // namespace moejit

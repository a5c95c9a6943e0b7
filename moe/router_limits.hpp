#pragma once
// What the routing kernels (route_topk, router_backward) accept, checked by them at every call and
// by the MoE blocks before they touch the device.
#include <moejit/error.hpp>
#include <moejit/routing.hpp>

#include <string>

namespace moejit {

// `where()` names the caller in the message; it is only built when a check fails (cheap hot path).
template <class Where>
void check_router(const RouterConfig& router, const Where& where) {
    if (router.experts < 1 || router.experts > 1024)
        throw Error(where() + ": experts must be in 1..1024, got " + std::to_string(router.experts));
    if (router.topk < 1 || router.topk > 32 || router.topk > router.experts)
        throw Error(where() + ": topk must be in 1..min(32, experts), got " + std::to_string(router.topk));
    if (router.scoring != Scoring::softmax && router.scoring != Scoring::sigmoid)
        throw Error(where() + ": scoring must be softmax or sigmoid");
}

}  // namespace moejit

#pragma once
// Debug mode (MOEJIT_CHECK_ROUTING=1): before a grouped GEMM runs, check on the device that
// m_sizes sum to M and that gather_idx is a permutation, and throw moejit::Error naming the first
// violation. Synchronizes the stream, so it is off by default.
#include <moejit/grouped_gemm.hpp>

namespace moejit {

bool routing_checks_enabled();  // read once from MOEJIT_CHECK_ROUTING (1/on/true/yes, 0/off/false/no)

// `uses_gather`: whether the GEMM about to run reads gather_idx.
void check_routing(const Problem& problem, const Routing& routing, bool uses_gather, CUstream stream);

}  // namespace moejit

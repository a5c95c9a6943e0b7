#pragma once
// The Problem of one grouped GEMM inside an MoE block: W [experts, n, k], no fusions yet.
#include <moejit/problem.hpp>

namespace moejit {

inline Problem gemm_problem(DType dtype, int64_t n, int64_t k, int experts, int topk) {
    Problem problem;
    problem.dtype = dtype;
    problem.n = n;
    problem.k = k;
    problem.experts = experts;
    problem.topk = topk;
    return problem;
}

}  // namespace moejit

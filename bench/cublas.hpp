#pragma once
// cuBLAS opened at run time, for side-by-side baselines only: the library never depends on it.
#include <cublas_v2.h>

#include <dlfcn.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace moejit::bench {

class Cublas {
public:
    // Tries `path` (if given), then the usual sonames.
    explicit Cublas(const std::string& path) {
        std::vector<std::string> candidates;
        if (!path.empty()) candidates.push_back(path);
        for (const char* name : {"libcublas.so.13", "libcublas.so.12", "libcublas.so"}) candidates.push_back(name);
        for (const auto& candidate : candidates)
            if ((library_ = dlopen(candidate.c_str(), RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
        if (library_ == nullptr) throw std::runtime_error("cuBLAS not found (pass --cublas /path/to/libcublas.so)");
        create_ = reinterpret_cast<decltype(create_)>(dlsym(library_, "cublasCreate_v2"));
        set_stream_ = reinterpret_cast<decltype(set_stream_)>(dlsym(library_, "cublasSetStream_v2"));
        gemm_ex_ = reinterpret_cast<decltype(gemm_ex_)>(dlsym(library_, "cublasGemmEx"));
        if (!create_ || !set_stream_ || !gemm_ex_) throw std::runtime_error("cuBLAS lacks cublasGemmEx");
        if (create_(&handle_) != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasCreate failed");
    }

    // Row-major Y[M, N] = X[M, K] @ W[N, K]^T with fp32 accumulation (column-major: Y^T = W^T' X^T).
    void gemm(bool bf16, int m, int n, int k, const void* x, const void* w, void* y, CUstream stream) {
        const float alpha = 1.0f, beta = 0.0f;
        const cudaDataType type = bf16 ? CUDA_R_16BF : CUDA_R_16F;
        set_stream_(handle_, reinterpret_cast<cudaStream_t>(stream));
        const cublasStatus_t status = gemm_ex_(handle_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w, type, k, x, type,
                                               k, &beta, y, type, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
        if (status != CUBLAS_STATUS_SUCCESS) throw std::runtime_error("cublasGemmEx failed: " + std::to_string(status));
    }

private:
    void* library_ = nullptr;
    cublasHandle_t handle_ = nullptr;
    decltype(&cublasCreate_v2) create_ = nullptr;
    decltype(&cublasSetStream_v2) set_stream_ = nullptr;
    using GemmEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                      const void*, const void*, cudaDataType, int, const void*, cudaDataType, int,
                                      const void*, void*, cudaDataType, int, cublasComputeType_t, cublasGemmAlgo_t);
    GemmEx gemm_ex_ = nullptr;
};

}  // namespace moejit::bench

#pragma once
// cuBLAS opened at run time, for side-by-side baselines only: the library never depends on it.
#include <cublas_v2.h>

#include "runtime/driver.hpp"

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
        grouped_ = reinterpret_cast<decltype(grouped_)>(dlsym(library_, "cublasGemmGroupedBatchedEx"));  // 12.5+
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

    bool has_grouped() const { return grouped_ != nullptr; }

    // Row-major Y_e [m_e, N] = X_e [m_e, K] @ W_e [N, K]^T for every expert with m_e > 0, as one
    // cublasGemmGroupedBatchedEx call (one group per expert). `pointer_arrays` are three device
    // arrays of `experts` pointers (A, B, C), filled here from the host offsets.
    void grouped_forward(bool bf16, const std::vector<int>& m_sizes, int n, int k, CUdeviceptr x, CUdeviceptr w,
                         CUdeviceptr y, const std::vector<CUdeviceptr>& pointer_arrays) {
        const cudaDataType type = bf16 ? CUDA_R_16BF : CUDA_R_16F;
        std::vector<cublasOperation_t> transa, transb;
        std::vector<int> ms, ns, ks, ldas, ldbs, ldcs, sizes;
        std::vector<float> alphas, betas;
        std::vector<const void*> a, b;
        std::vector<void*> c;
        long long row = 0;
        for (size_t e = 0; e < m_sizes.size(); ++e) {
            if (m_sizes[e] > 0) {
                transa.push_back(CUBLAS_OP_T);
                transb.push_back(CUBLAS_OP_N);
                ms.push_back(n);
                ns.push_back(m_sizes[e]);
                ks.push_back(k);
                ldas.push_back(k);
                ldbs.push_back(k);
                ldcs.push_back(n);
                sizes.push_back(1);
                alphas.push_back(1.0f);
                betas.push_back(0.0f);
                a.push_back(reinterpret_cast<const void*>(w + e * size_t(n) * k * 2));
                b.push_back(reinterpret_cast<const void*>(x + row * k * 2));
                c.push_back(reinterpret_cast<void*>(y + row * n * 2));
            }
            row += m_sizes[e];
        }
        const int groups = int(sizes.size());
        if (groups == 0) return;
        // Pointer arrays live on the device.
        moejit::check_cuda(moejit::driver().cuMemcpyHtoD(pointer_arrays[0], a.data(), groups * sizeof(void*)), "HtoD");
        moejit::check_cuda(moejit::driver().cuMemcpyHtoD(pointer_arrays[1], b.data(), groups * sizeof(void*)), "HtoD");
        moejit::check_cuda(moejit::driver().cuMemcpyHtoD(pointer_arrays[2], c.data(), groups * sizeof(void*)), "HtoD");
        const cublasStatus_t status = grouped_(
            handle_, transa.data(), transb.data(), ms.data(), ns.data(), ks.data(), alphas.data(),
            reinterpret_cast<const void* const*>(pointer_arrays[0]), type, ldas.data(),
            reinterpret_cast<const void* const*>(pointer_arrays[1]), type, ldbs.data(), betas.data(),
            reinterpret_cast<void* const*>(pointer_arrays[2]), type, ldcs.data(), groups, sizes.data(),
            CUBLAS_COMPUTE_32F);
        if (status != CUBLAS_STATUS_SUCCESS)
            throw std::runtime_error("cublasGemmGroupedBatchedEx failed: " + std::to_string(status));
    }

private:
    decltype(&cublasGemmGroupedBatchedEx) grouped_ = nullptr;
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

#pragma once
// cuBLAS opened at run time, for side-by-side baselines only: the library never depends on it.
#include <cublas_v2.h>

#include "runtime/device_buffer.hpp"
#include "runtime/driver.hpp"

#include <dlfcn.h>

#include <cstdint>
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

    // One cublasGemmGroupedBatchedEx call of a grouped pass, one group per expert, each group in
    // cuBLAS's column-major terms C [m, n] = op_a(A) @ op_b(B). The device pointer arrays are
    // uploaded once, when the batch is made, so that timing `run_grouped` times the GEMMs alone.
    struct GroupedBatch {
        std::vector<cublasOperation_t> transa, transb;
        std::vector<int> ms, ns, ks, ldas, ldbs, ldcs, sizes;
        std::vector<float> alphas, betas;
        DeviceBuffer a, b, c;  // [groups] device pointers each
        int groups() const { return int(sizes.size()); }
    };

    // The three passes of row-major X [M, K] (rows grouped by expert, m_e = m_sizes[e] of them),
    // W [E, N, K], Y and dY [M, N], dX [M, K], dW [E, N, K]. Row-major P [r, c] is column-major
    // P^T [c, r] with ld c.
    enum class GroupedPass { fwd, dx, dw };
    static GroupedBatch grouped_batch(GroupedPass pass, const std::vector<int>& m_sizes, int n, int k,
                                      CUdeviceptr x, CUdeviceptr w, CUdeviceptr dy, CUdeviceptr out) {
        GroupedBatch batch;
        std::vector<CUdeviceptr> a, b, c;
        auto add = [&](cublasOperation_t ta, cublasOperation_t tb, int m, int n_, int k_, CUdeviceptr pa, int lda,
                       CUdeviceptr pb, int ldb, CUdeviceptr pc, int ldc) {
            batch.transa.push_back(ta);
            batch.transb.push_back(tb);
            batch.ms.push_back(m);
            batch.ns.push_back(n_);
            batch.ks.push_back(k_);
            batch.ldas.push_back(lda);
            batch.ldbs.push_back(ldb);
            batch.ldcs.push_back(ldc);
            batch.sizes.push_back(1);
            batch.alphas.push_back(1.0f);
            batch.betas.push_back(0.0f);
            a.push_back(pa);
            b.push_back(pb);
            c.push_back(pc);
        };
        const size_t element_bytes = 2;  // bf16 and fp16
        int64_t row = 0;
        for (size_t e = 0; e < m_sizes.size(); ++e) {
            const int rows = m_sizes[e];
            const size_t expert_offset = e * size_t(n) * k * element_bytes;
            const CUdeviceptr w_e = w + expert_offset, dw_e = out + expert_offset;
            const CUdeviceptr x_e = x + row * k * element_bytes, dy_e = dy + row * n * element_bytes;
            switch (pass) {
            case GroupedPass::fwd:  // Y_e^T [N, m_e] = W_e [N, K] X_e^T [K, m_e]
                if (rows > 0)
                    add(CUBLAS_OP_T, CUBLAS_OP_N, n, rows, k, w_e, k, x_e, k, out + row * n * element_bytes, n);
                break;
            case GroupedPass::dx:  // dX_e^T [K, m_e] = W_e^T [K, N] dY_e^T [N, m_e]
                if (rows > 0)
                    add(CUBLAS_OP_N, CUBLAS_OP_N, k, rows, n, w_e, k, dy_e, n, out + row * k * element_bytes, k);
                break;
            // m_e = 0: a reduction over nothing, C = beta C with beta 0 by BLAS rules, the zeros ours writes.
            case GroupedPass::dw:  // dW_e^T [K, N] = X_e^T [K, m_e] dY_e [m_e, N]
                add(CUBLAS_OP_N, CUBLAS_OP_T, k, n, rows, x_e, k, dy_e, n, dw_e, k);
                break;
            }
            row += rows;
        }
        auto upload = [&](const std::vector<CUdeviceptr>& pointers) {
            return DeviceBuffer::from(std::vector<uint64_t>(pointers.begin(), pointers.end()));
        };
        batch.a = upload(a);
        batch.b = upload(b);
        batch.c = upload(c);
        return batch;
    }

    void run_grouped(bool bf16, const GroupedBatch& batch, CUstream stream) {
        if (batch.groups() == 0) return;
        const cudaDataType type = bf16 ? CUDA_R_16BF : CUDA_R_16F;
        set_stream_(handle_, reinterpret_cast<cudaStream_t>(stream));
        const cublasStatus_t status = grouped_(
            handle_, batch.transa.data(), batch.transb.data(), batch.ms.data(), batch.ns.data(), batch.ks.data(),
            batch.alphas.data(), reinterpret_cast<const void* const*>(batch.a.get()), type, batch.ldas.data(),
            reinterpret_cast<const void* const*>(batch.b.get()), type, batch.ldbs.data(), batch.betas.data(),
            reinterpret_cast<void* const*>(batch.c.get()), type, batch.ldcs.data(), batch.groups(),
            batch.sizes.data(), CUBLAS_COMPUTE_32F);
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

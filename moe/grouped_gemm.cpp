#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>

#include "codegen/config.hpp"
#include "runtime/device.hpp"
#include "runtime/runtime.hpp"

#include <algorithm>

namespace moejit {

namespace {

void check_pointer(CUdeviceptr pointer, unsigned alignment, const char* name) {
    if (pointer == 0) throw Error(std::string("grouped GEMM: ") + name + " is a null pointer");
    if (pointer % alignment != 0)
        throw Error(std::string("grouped GEMM: ") + name + " must be " + std::to_string(alignment) +
                    "-byte aligned (got address " + std::to_string(pointer) + ")");
}

}  // namespace

GroupedGemm::GroupedGemm(Problem problem) : GroupedGemm(problem, std::string()) {}

GroupedGemm::GroupedGemm(Problem problem, const std::string& config_name) : problem_(problem) {
    const DeviceInfo& device = current_device();
    problem_.arch = device.arch;
    sm_count_ = device.sm_count;
    problem_.validate();
    const Config config = config_name.empty() ? choose_config(problem_) : Config::parse(config_name);
    if (config.shared_bytes() > max_shared_bytes(problem_.arch))
        throw Error("config " + config_name + " needs more shared memory than " + problem_.arch.name() + " has");
    tile_m_ = config.tile_m;
    tile_n_ = config.tile_n;
    config_name_ = config.to_string();
}

void GroupedGemm::prepare() const {
    if (!kernel_) kernel_ = Runtime::instance().kernel(problem_, Config::parse(config_name_));
}

void GroupedGemm::forward(CUdeviceptr x, CUdeviceptr w, CUdeviceptr y, CUdeviceptr m_sizes, int64_t rows,
                          CUstream stream) const {
    if (rows < 0 || rows >= (int64_t{1} << 31))
        throw Error("grouped GEMM: rows (M) must be in [0, 2^31), got " + std::to_string(rows));
    check_pointer(x, 16, "x");
    check_pointer(w, 16, "w");
    check_pointer(y, 16, "y");
    check_pointer(m_sizes, 4, "m_sizes");
    prepare();
    if (rows == 0) return;

    // Upper bound on tiles without reading m_sizes: each non-empty expert adds at most one partial tile.
    const int64_t m_tiles = (rows + tile_m_ - 1) / tile_m_ + std::min<int64_t>(problem_.experts, rows);
    const int64_t n_tiles = (problem_.n + tile_n_ - 1) / tile_n_;
    const int64_t resident = int64_t(sm_count_) * kernel_->blocks_per_sm();
    const unsigned grid = static_cast<unsigned>(std::max<int64_t>(1, std::min(m_tiles * n_tiles, resident)));

    long long total_rows = rows;
    void* arguments[] = {&x, &w, &y, &m_sizes, &total_rows};
    kernel_->launch(grid, stream, arguments);
}

}  // namespace moejit

#include "runtime/module.hpp"

#include "runtime/log.hpp"

#include <moejit/error.hpp>

#include "runtime/driver.hpp"

namespace moejit {

Module::Module(const std::vector<char>& cubin) {
    check_cuda(driver().cuModuleLoadData(&module_, cubin.data()), "cuModuleLoadData");
}

Module::~Module() {
    if (module_ != nullptr) driver().cuModuleUnload(module_);
}

CUfunction Module::function(const std::string& lowered_name) const {
    CUfunction function = nullptr;
    check_cuda(driver().cuModuleGetFunction(&function, module_, lowered_name.c_str()),
               ("cuModuleGetFunction(" + lowered_name + ")").c_str());
    return function;
}

namespace {

CUlaunchConfig launch_config(unsigned grid, int threads, size_t shared_bytes, CUstream stream,
                             CUlaunchAttribute* cluster_attribute, int cluster) {
    CUlaunchConfig config{};
    config.gridDimX = grid;
    config.gridDimY = 1;
    config.gridDimZ = 1;
    config.blockDimX = static_cast<unsigned>(threads);
    config.blockDimY = 1;
    config.blockDimZ = 1;
    config.sharedMemBytes = static_cast<unsigned>(shared_bytes);
    config.hStream = stream;
    if (cluster > 1) {
        cluster_attribute->id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        cluster_attribute->value.clusterDim.x = static_cast<unsigned>(cluster);
        cluster_attribute->value.clusterDim.y = 1;
        cluster_attribute->value.clusterDim.z = 1;
        config.attrs = cluster_attribute;
        config.numAttrs = 1;
    }
    return config;
}

}  // namespace

Kernel::Kernel(std::shared_ptr<const Module> module, const std::string& lowered_name, int threads,
               size_t shared_bytes, int cluster)
    : module_(std::move(module)), threads_(threads), shared_bytes_(shared_bytes), cluster_(cluster) {
    const Driver& cu = driver();
    function_ = module_->function(lowered_name);
    check_cuda(cu.cuFuncSetAttribute(function_, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                     static_cast<int>(shared_bytes)),
               "cuFuncSetAttribute(max dynamic shared memory)");
    check_cuda(cu.cuOccupancyMaxActiveBlocksPerMultiprocessor(&blocks_per_sm_, function_, threads, shared_bytes),
               "cuOccupancyMaxActiveBlocksPerMultiprocessor");
    if (blocks_per_sm_ < 1)
        throw Error("kernel " + lowered_name + " cannot run: " + std::to_string(threads) + " threads with " +
                    std::to_string(shared_bytes) + " bytes of shared memory do not fit one multiprocessor");
    cu.cuFuncGetAttribute(&registers_, CU_FUNC_ATTRIBUTE_NUM_REGS, function_);
    if (cluster_ > 1) {
        CUlaunchAttribute attribute{};
        const CUlaunchConfig config = launch_config(unsigned(cluster_), threads_, shared_bytes_, nullptr,
                                                    &attribute, cluster_);
        check_cuda(cu.cuOccupancyMaxActiveClusters(&resident_clusters_, function_, &config),
                   "cuOccupancyMaxActiveClusters");
        if (resident_clusters_ < 1)
            throw Error("kernel " + lowered_name + " cannot run: no cluster of " + std::to_string(cluster_) +
                        " blocks fits the device");
    }
    log::debug("kernel " + lowered_name + ": " + std::to_string(blocks_per_sm_) + " block(s) per multiprocessor" +
               (cluster_ > 1 ? ", " + std::to_string(resident_clusters_) + " resident clusters of " + std::to_string(cluster_)
                             : std::string()));
}

int64_t Kernel::resident_blocks(int sm_count) const {
    return cluster_ > 1 ? int64_t(resident_clusters_) * cluster_ : int64_t(sm_count) * blocks_per_sm_;
}

void Kernel::launch(unsigned grid, CUstream stream, void** arguments) const {
    CUlaunchAttribute attribute{};
    const CUlaunchConfig config = launch_config(grid, threads_, shared_bytes_, stream, &attribute, cluster_);
    check_cuda(driver().cuLaunchKernelEx(&config, function_, arguments, nullptr), "cuLaunchKernelEx");
}

}  // namespace moejit

#include "runtime/module.hpp"

#include "runtime/log.hpp"

#include <moejit/error.hpp>

#include "runtime/driver.hpp"

#include <array>

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

// Room for every attribute a launch may carry: cluster shape, programmatic serialization.
using LaunchAttributes = std::array<CUlaunchAttribute, 2>;

CUlaunchConfig launch_config(unsigned grid, int threads, size_t shared_bytes, CUstream stream,
                             LaunchAttributes& attributes, int cluster, bool dependent_launch) {
    CUlaunchConfig config{};
    config.gridDimX = grid;
    config.gridDimY = 1;
    config.gridDimZ = 1;
    config.blockDimX = static_cast<unsigned>(threads);
    config.blockDimY = 1;
    config.blockDimZ = 1;
    config.sharedMemBytes = static_cast<unsigned>(shared_bytes);
    config.hStream = stream;
    config.attrs = attributes.data();
    config.numAttrs = 0;
    if (cluster > 1) {
        CUlaunchAttribute& attribute = attributes[config.numAttrs++];
        attribute = CUlaunchAttribute{};
        attribute.id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
        attribute.value.clusterDim.x = static_cast<unsigned>(cluster);
        attribute.value.clusterDim.y = 1;
        attribute.value.clusterDim.z = 1;
    }
    if (dependent_launch) {
        CUlaunchAttribute& attribute = attributes[config.numAttrs++];
        attribute = CUlaunchAttribute{};
        attribute.id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attribute.value.programmaticStreamSerializationAllowed = 1;
    }
    return config;
}

}  // namespace

Kernel::Kernel(std::shared_ptr<const Module> module, const std::string& lowered_name, int threads,
               size_t shared_bytes, int cluster, bool dependent_launch)
    : module_(std::move(module)),
      threads_(threads),
      shared_bytes_(shared_bytes),
      cluster_(cluster),
      dependent_launch_(dependent_launch) {
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
        LaunchAttributes attributes;
        const CUlaunchConfig config =
            launch_config(unsigned(cluster_), threads_, shared_bytes_, nullptr, attributes, cluster_, false);
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
    LaunchAttributes attributes;
    const CUlaunchConfig config =
        launch_config(grid, threads_, shared_bytes_, stream, attributes, cluster_, dependent_launch_);
    check_cuda(driver().cuLaunchKernelEx(&config, function_, arguments, nullptr), "cuLaunchKernelEx");
}

}  // namespace moejit

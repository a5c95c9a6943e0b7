#include "runtime/device.hpp"

#include <moejit/error.hpp>

#include "runtime/driver.hpp"

#include <map>
#include <memory>
#include <mutex>

namespace moejit {

namespace {

Arch arch_of(int major, int minor) {
    const std::string name = "sm_" + std::to_string(major) + std::to_string(minor) + (major >= 9 ? "a" : "");
    try {
        return Arch::parse(name);
    } catch (const Error&) {
        throw Error("this GPU has compute capability " + std::to_string(major) + "." + std::to_string(minor) +
                    "; moejit has kernels for " + Arch::supported_names());
    }
}

DeviceInfo query(CUcontext context) {
    const Driver& cu = driver();
    DeviceInfo info;
    info.context = context;
    check_cuda(cu.cuCtxGetDevice(&info.device), "cuCtxGetDevice");
    info.ordinal = static_cast<int>(info.device);
    int major = 0, minor = 0;
    check_cuda(cu.cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, info.device), "cc");
    check_cuda(cu.cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, info.device), "cc");
    check_cuda(cu.cuDeviceGetAttribute(&info.sm_count, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, info.device),
               "multiprocessor count");
    char name[256] = {};
    cu.cuDeviceGetName(name, sizeof name, info.device);
    info.name = name;
    info.arch = arch_of(major, minor);
    return info;
}

}  // namespace

const DeviceInfo& current_device() {
    const Driver& cu = driver();
    CUcontext context = nullptr;
    check_cuda(cu.cuCtxGetCurrent(&context), "cuCtxGetCurrent");
    if (context == nullptr) {
        int count = 0;
        check_cuda(cu.cuDeviceGetCount(&count), "cuDeviceGetCount");
        if (count == 0) throw Error("no CUDA device is visible to this process");
        CUdevice device = 0;
        check_cuda(cu.cuDeviceGet(&device, 0), "cuDeviceGet");
        check_cuda(cu.cuDevicePrimaryCtxRetain(&context, device), "cuDevicePrimaryCtxRetain");
        check_cuda(cu.cuCtxSetCurrent(context), "cuCtxSetCurrent");
    }
    // One entry per context, never freed: the info is tiny and contexts are few.
    static std::mutex mutex;
    static std::map<CUcontext, std::unique_ptr<DeviceInfo>> known;
    std::lock_guard<std::mutex> lock(mutex);
    auto& slot = known[context];
    if (!slot) slot = std::make_unique<DeviceInfo>(query(context));
    return *slot;
}

}  // namespace moejit

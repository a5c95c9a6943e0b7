#pragma once
// The CUDA driver, opened at run time (dlopen + cuGetProcAddress) so that the library, the CLI and
// every non-GPU test load and run on machines with no driver. A GPU call there fails with one Error.
#include <cuda.h>

#include <string>

namespace moejit {

// Each entry's type comes from cuda.h, so versioned names (cuMemAlloc -> cuMemAlloc_v2) resolve to
// the signature this header declares and cuGetProcAddress returns the matching version.
#define MOEJIT_DRIVER_FUNCTIONS(X)                                                                          \
    X(cuInit) X(cuDriverGetVersion) X(cuGetErrorName) X(cuGetErrorString) X(cuDeviceGet)                 \
    X(cuDeviceGetCount) X(cuDeviceGetAttribute) X(cuDeviceGetName) X(cuDevicePrimaryCtxRetain)           \
    X(cuCtxGetCurrent) X(cuCtxSetCurrent) X(cuCtxGetDevice) X(cuCtxSynchronize) X(cuModuleLoadData)      \
    X(cuModuleUnload) X(cuModuleGetFunction) X(cuFuncSetAttribute) X(cuFuncGetAttribute)                 \
    X(cuOccupancyMaxActiveBlocksPerMultiprocessor) X(cuOccupancyMaxActiveClusters) X(cuLaunchKernelEx) X(cuMemAlloc) X(cuMemFree)        \
    X(cuMemcpyHtoD) X(cuMemcpyDtoH) X(cuMemcpyDtoD) X(cuMemsetD8) X(cuMemsetD16) X(cuMemsetD32Async) X(cuStreamCreate)       \
    X(cuStreamDestroy) X(cuStreamSynchronize) X(cuEventCreate) X(cuEventDestroy) X(cuEventRecord)        \
    X(cuEventSynchronize) X(cuEventElapsedTime) X(cuStreamBeginCapture) X(cuStreamEndCapture) X(cuStreamIsCapturing)             \
    X(cuGraphInstantiateWithFlags) X(cuGraphLaunch) X(cuGraphDestroy) X(cuGraphExecDestroy)   \
    X(cuTensorMapEncodeTiled)

struct Driver {
#define MOEJIT_DRIVER_MEMBER(name) decltype(&::name) name = nullptr;
    MOEJIT_DRIVER_FUNCTIONS(MOEJIT_DRIVER_MEMBER)
#undef MOEJIT_DRIVER_MEMBER
};

// Opens libcuda.so.1 and runs cuInit once per process. Throws moejit::Error when there is no
// driver, or no usable GPU; the same Error again on every later call.
const Driver& driver();

// Throws moejit::Error "<what>: CUDA_ERROR_X (text)" unless result is CUDA_SUCCESS.
void check_cuda(CUresult result, const char* what);

}  // namespace moejit

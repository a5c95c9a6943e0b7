#include "runtime/driver.hpp"

#include <moejit/error.hpp>

#include <dlfcn.h>

#include <mutex>

namespace moejit {

namespace {

// The API version whose signatures cuda.h declares under the plain names. Asking for CUDA_VERSION
// (13000) instead returns e.g. cuCtxGetDevice_v2(CUdevice*, CUcontext), a different signature.
constexpr int kDriverApiVersion = 12000;

using GetProcAddress = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);

Driver load_driver() {
    void* library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr)
        throw Error(std::string("no CUDA driver: cannot open libcuda.so.1 (") + dlerror() +
                    "). Kernels can still be generated and compiled (moejit source|ptx|compile|precompile), "
                    "but running them needs an NVIDIA GPU and its driver.");
    auto get_proc = reinterpret_cast<GetProcAddress>(dlsym(library, "cuGetProcAddress_v2"));
    if (get_proc == nullptr)
        throw Error("the CUDA driver is too old: libcuda.so.1 has no cuGetProcAddress_v2 (need CUDA 12 or newer)");

    Driver table;
    std::string missing;
#define MOEJIT_DRIVER_LOOKUP(name)                                                                           \
    {                                                                                                        \
        void* pointer = nullptr;                                                                             \
        CUdriverProcAddressQueryResult status{};                                                             \
        if (get_proc(#name, &pointer, kDriverApiVersion, CU_GET_PROC_ADDRESS_DEFAULT, &status) != CUDA_SUCCESS || \
            pointer == nullptr)                                                                              \
            missing += std::string(" ") + #name;                                                             \
        table.name = reinterpret_cast<decltype(table.name)>(pointer);                                        \
    }
    MOEJIT_DRIVER_FUNCTIONS(MOEJIT_DRIVER_LOOKUP)
#undef MOEJIT_DRIVER_LOOKUP
    if (!missing.empty()) throw Error("the CUDA driver lacks entry points this build needs:" + missing);

    const CUresult init = table.cuInit(0);
    if (init != CUDA_SUCCESS) {
        const char* name = nullptr;
        table.cuGetErrorName(init, &name);
        throw Error(std::string("no usable CUDA GPU: cuInit failed with ") + (name ? name : "an unknown error") +
                    (init == CUDA_ERROR_NO_DEVICE ? " (no device is visible to this process)" : ""));
    }
    return table;
}

}  // namespace

const Driver& driver() {
    static std::once_flag once;
    static Driver table;
    static std::string failure;
    std::call_once(once, [] {
        try {
            table = load_driver();
        } catch (const Error& error) {
            failure = error.what();
        }
    });
    if (!failure.empty()) throw Error(failure);
    return table;
}

void check_cuda(CUresult result, const char* what) {
    if (result == CUDA_SUCCESS) return;
    const Driver& cu = driver();
    const char* name = nullptr;
    const char* text = nullptr;
    cu.cuGetErrorName(result, &name);
    cu.cuGetErrorString(result, &text);
    throw Error(std::string(what) + ": " + (name ? name : "CUDA error") + " (" + (text ? text : "") + ")");
}

}  // namespace moejit

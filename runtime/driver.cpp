#include "runtime/driver.hpp"

#include <moejit/error.hpp>

#include <dlfcn.h>
#include <link.h>

#include <filesystem>
#include <mutex>

namespace moejit {

namespace {

// The API version whose signatures cuda.h declares under the plain names. Asking for CUDA_VERSION
// (13000) instead returns e.g. cuCtxGetDevice_v2(CUdevice*, CUcontext), a different signature.
constexpr int kDriverApiVersion = 12000;

using GetProcAddress = CUresult (*)(const char*, void**, int, cuuint64_t, CUdriverProcAddressQueryResult*);

const char* const kCompileOnly =
    "Kernels can still be generated and compiled (moejit source|ptx|compile|precompile), but running them "
    "needs an NVIDIA GPU and its driver.";

// Where the dynamic loader found `library` (and the file a symlink there names), for messages.
std::string loaded_path(void* library) {
    const link_map* map = nullptr;
    if (dlinfo(library, RTLD_DI_LINKMAP, &map) != 0 || map == nullptr || map->l_name == nullptr) return "";
    const std::string path = map->l_name;
    std::error_code error;
    const std::string target = std::filesystem::canonical(path, error).string();
    return error || target == path ? path : path + " -> " + target;
}

Driver load_driver() {
    void* library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (library == nullptr)
        throw Error(std::string("no CUDA driver: cannot open libcuda.so.1 (") + dlerror() + "). " + kCompileOnly);
    auto get_proc = reinterpret_cast<GetProcAddress>(dlsym(library, "cuGetProcAddress_v2"));
    if (get_proc == nullptr)
        throw Error("the CUDA driver is too old: libcuda.so.1 has no cuGetProcAddress_v2 (need CUDA 12 or newer)");

    // The toolkit's stub libcuda (lib64/stubs) exists for linking; every call into it returns
    // CUDA_ERROR_STUB_LIBRARY. Loaded in place of a driver, it would read as one that lacks everything.
    void* probe = nullptr;
    CUdriverProcAddressQueryResult probe_status{};
    if (get_proc("cuInit", &probe, kDriverApiVersion, CU_GET_PROC_ADDRESS_DEFAULT, &probe_status) ==
        CUDA_ERROR_STUB_LIBRARY) {
        const std::string path = loaded_path(library);
        throw Error("no CUDA driver: the libcuda.so.1 that was loaded" + (path.empty() ? "" : " (" + path + ")") +
                    " is the CUDA toolkit's stub library (CUDA_ERROR_STUB_LIBRARY), not a real driver: no NVIDIA "
                    "driver is installed, or LD_LIBRARY_PATH points at the toolkit's .../stubs directory. " +
                    kCompileOnly);
    }

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

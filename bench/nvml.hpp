#pragma once
// NVML opened at run time, for the energy benchmark only: the energy counter, the SM clock and the
// reasons the clock is held down, of the GPU the current CUDA context runs on.
#include "runtime/device.hpp"
#include "runtime/driver.hpp"

#include <dlfcn.h>

#include <cstdio>
#include <stdexcept>
#include <string>

namespace moejit::bench {

class Nvml {
public:
    // The clock-event reason bit of the software power cap (nvml.h's nvmlClocksEventReasonSwPowerCap).
    static constexpr unsigned long long kSoftwarePowerCap = 0x4;

    explicit Nvml(const DeviceInfo& device) {
        library_ = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
        if (library_ == nullptr) throw std::runtime_error("NVML (libnvidia-ml.so.1) not found");
        load(init_, "nvmlInit_v2");
        load(shutdown_, "nvmlShutdown");
        load(by_bus_id_, "nvmlDeviceGetHandleByPciBusId_v2");
        load(energy_, "nvmlDeviceGetTotalEnergyConsumption");
        load(clock_, "nvmlDeviceGetClockInfo");
        load(reasons_, "nvmlDeviceGetCurrentClocksThrottleReasons");
        load(power_limit_, "nvmlDeviceGetEnforcedPowerLimit");
        check(init_(), "nvmlInit");
        // NVML numbers GPUs its own way; the PCI address names the one CUDA runs on.
        auto attribute = [&](CUdevice_attribute which) {
            int value = 0;
            check_cuda(driver().cuDeviceGetAttribute(&value, which, device.device), "cuDeviceGetAttribute");
            return value;
        };
        char bus_id[32];
        std::snprintf(bus_id, sizeof bus_id, "%08x:%02x:%02x.0", attribute(CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID),
                      attribute(CU_DEVICE_ATTRIBUTE_PCI_BUS_ID), attribute(CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID));
        check(by_bus_id_(bus_id, &handle_), "nvmlDeviceGetHandleByPciBusId");
    }
    ~Nvml() { shutdown_(); }
    Nvml(const Nvml&) = delete;

    // Energy the board has drawn since the driver loaded, in joules (NVML counts millijoules).
    double joules() const {
        unsigned long long millijoules = 0;
        check(energy_(handle_, &millijoules), "nvmlDeviceGetTotalEnergyConsumption");
        return double(millijoules) / 1000.0;
    }
    unsigned sm_mhz() const {
        unsigned mhz = 0;
        check(clock_(handle_, /*NVML_CLOCK_SM*/ 1, &mhz), "nvmlDeviceGetClockInfo");
        return mhz;
    }
    unsigned long long clock_reasons() const {
        unsigned long long reasons = 0;
        check(reasons_(handle_, &reasons), "nvmlDeviceGetCurrentClocksThrottleReasons");
        return reasons;
    }
    double power_limit_watts() const {
        unsigned milliwatts = 0;
        check(power_limit_(handle_, &milliwatts), "nvmlDeviceGetEnforcedPowerLimit");
        return milliwatts / 1000.0;
    }

private:
    struct Device;
    template <class F>
    void load(F& function, const char* name) {
        function = reinterpret_cast<F>(dlsym(library_, name));
        if (function == nullptr) throw std::runtime_error(std::string("NVML lacks ") + name);
    }
    static void check(int status, const char* what) {
        if (status != 0) throw std::runtime_error(std::string(what) + " failed: NVML error " + std::to_string(status));
    }

    void* library_ = nullptr;
    Device* handle_ = nullptr;
    int (*init_)() = nullptr;
    int (*shutdown_)() = nullptr;
    int (*by_bus_id_)(const char*, Device**) = nullptr;
    int (*energy_)(Device*, unsigned long long*) = nullptr;
    int (*clock_)(Device*, int, unsigned*) = nullptr;
    int (*reasons_)(Device*, unsigned long long*) = nullptr;
    int (*power_limit_)(Device*, unsigned*) = nullptr;
};

}  // namespace moejit::bench

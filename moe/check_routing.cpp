#include "moe/check_routing.hpp"

#include <moejit/error.hpp>

#include "codegen/kernel_problems.hpp"
#include "moe/elementwise_kernel.hpp"
#include "runtime/device.hpp"
#include "runtime/driver.hpp"
#include "runtime/environment.hpp"
#include "runtime/launch_arguments.hpp"

#include <limits>
#include <string>

namespace moejit {

bool routing_checks_enabled() {
    // A value nobody understands was still set to ask for the checks: they run (and it warns).
    static const bool enabled = env::flag("MOEJIT_CHECK_ROUTING", /*unset=*/false, /*unrecognized=*/true);
    return enabled;
}

namespace {

// Device scratch for one check, freed on every path out.
struct Scratch {
    CUdeviceptr pointer = 0;
    explicit Scratch(size_t bytes) { check_cuda(driver().cuMemAlloc(&pointer, bytes), "cuMemAlloc (routing check)"); }
    ~Scratch() { driver().cuMemFree(pointer); }
};

}  // namespace

void check_routing(const Problem& gemm, const Routing& routing, bool uses_gather, CUstream stream) {
    const Driver& cu = driver();
    const DeviceInfo& device = current_device();
    auto kernel = elementwise_kernel(check_routing_problem(gemm.experts), device);

    const int64_t rows = routing.rows;
    const long long unset = std::numeric_limits<long long>::max();
    // Without m_sizes (one expert) the rows are all the expert's: their sum is M by definition.
    long long report[4] = {routing.m_sizes ? 0 : rows, unset, unset, unset};
    Scratch scratch(sizeof report + size_t(rows) * 4 + 16);
    const CUdeviceptr report_pointer = scratch.pointer, seen_pointer = scratch.pointer + sizeof report;
    check_cuda(cu.cuMemcpyHtoD(report_pointer, report, sizeof report), "routing check: upload");
    if (rows > 0) check_cuda(cu.cuMemsetD8(seen_pointer, 0, size_t(rows) * 4), "routing check: clear");
    CheckRoutingArguments arguments{reinterpret_cast<const int*>(routing.m_sizes),
                                    uses_gather ? reinterpret_cast<const int*>(routing.gather_idx) : nullptr, rows,
                                    reinterpret_cast<int*>(seen_pointer), reinterpret_cast<long long*>(report_pointer)};
    void* parameters[] = {&arguments};
    const unsigned grid = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((rows + 255) / 256, 1024)));
    kernel->launch(grid, stream, parameters);
    check_cuda(cu.cuStreamSynchronize(stream), "routing check: synchronize");
    check_cuda(cu.cuMemcpyDtoH(report, report_pointer, sizeof report), "routing check: download");

    const std::string where = to_spec(gemm) + ": routing check (MOEJIT_CHECK_ROUTING): ";
    if (report[1] != unset)
        throw Error(where + "m_sizes[" + std::to_string(report[1]) + "] is negative");
    if (report[0] != rows)
        throw Error(where + "m_sizes sum to " + std::to_string(report[0]) + " but rows (M) is " + std::to_string(rows));
    auto value_at = [&](long long row) {
        int value = 0;
        check_cuda(cu.cuMemcpyDtoH(&value, routing.gather_idx + row * 4, 4), "routing check: read gather_idx");
        return value;
    };
    if (report[2] != unset)
        throw Error(where + "gather_idx[" + std::to_string(report[2]) + "] = " + std::to_string(value_at(report[2])) +
                    " is outside [0, " + std::to_string(rows) + ")");
    if (report[3] != unset)
        throw Error(where + "gather_idx is not a permutation: gather_idx[" + std::to_string(report[3]) + "] = " +
                    std::to_string(value_at(report[3])) + " appears more than once");
}

}  // namespace moejit

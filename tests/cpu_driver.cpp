// Without a GPU the library still loads; the first GPU call fails with one clear moejit::Error.
#include "tests/catch.hpp"
#include "tests/support/errors.hpp"
#include "tests/support/process.hpp"

#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>
#include <moejit/prepare.hpp>
#include <moejit/routing.hpp>

#include "moe/combine_backward.hpp"
#include "runtime/driver.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>

using namespace moejit;
using moejit::testing::error_message;
using moejit::testing::mentions;

namespace {


}  // namespace

TEST_CASE("a GPU call either works or explains why there is no GPU", "[cpu]") {
    void* library = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    Problem problem;
    problem.n = 64;
    problem.k = 64;
    problem.experts = 2;
    if (library == nullptr) {
        try {
            GroupedGemm gemm(problem);
            FAIL("expected moejit::Error without a driver");
        } catch (const Error& error) {
            CHECK(std::string(error.what()).find("no CUDA driver") != std::string::npos);
        }
        // The same error every time, not a crash on the second call.
        CHECK_THROWS_AS(driver(), Error);
    } else {
        dlclose(library);
        try {
            driver();
            SUCCEED("driver loaded");
        } catch (const Error& error) {
            // A real driver without a usable GPU, or the toolkit's stub in its place.
            const std::string message = error.what();
            INFO(message);
            CHECK((mentions(message, "no usable CUDA GPU") || mentions(message, "stub library")));
        }
    }
}

TEST_CASE("the toolkit's stub libcuda is named as such, not as a driver lacking entry points", "[cpu]") {
    const std::string stub = MOEJIT_CUDA_STUB_LIBRARY;
    if (!std::filesystem::exists(stub)) {
        WARN("no stub libcuda at " << stub << ": not tested");
        return;
    }
    // A directory holding the stub as libcuda.so.1, first in LD_LIBRARY_PATH: as on a machine whose
    // LD_LIBRARY_PATH names .../lib64/stubs. bench opens the driver right after its arguments.
    testing::TempDir dir;
    std::filesystem::create_symlink(stub, dir / "libcuda.so.1");
    const char* inherited = std::getenv("LD_LIBRARY_PATH");
    const std::string search = dir.path + (inherited != nullptr && *inherited != 0 ? ":" + std::string(inherited) : "");
    const testing::ProcessResult bench =
        testing::run_cli({"bench", "--model", "qwen3-30b-a3b", "--pass", "fwd"}, {{"LD_LIBRARY_PATH", search}});
    INFO(bench.err);
    CHECK(bench.status == 1);
    CHECK(mentions(bench.err, "moejit: no CUDA driver: the libcuda.so.1 that was loaded (" + dir.path +
                                  "/libcuda.so.1 -> "));
    CHECK(mentions(bench.err, "is the CUDA toolkit's stub library (CUDA_ERROR_STUB_LIBRARY), not a real driver"));
    CHECK(mentions(bench.err, "LD_LIBRARY_PATH"));
    CHECK_FALSE(mentions(bench.err, "lacks entry points"));
}

TEST_CASE("argument errors are reported before the device is looked up", "[cpu]") {
    // Whether or not this machine has a GPU, a bad argument must be what is reported (here, with no
    // driver, the device lookup would otherwise say "no CUDA driver" first).
    const CUdeviceptr buffer = 1 << 20;  // aligned and non-null: never dereferenced, the checks fail first
    Problem odd;
    odd.n = 7;
    odd.k = 64;
    odd.experts = 2;
    Problem even = odd;
    even.n = 64;
    const std::pair<std::string, std::string> cases[] = {
        {error_message([&] { GroupedGemm gemm(odd); }), "N must be a positive multiple of 8"},
        {error_message([&] { GroupedGemm gemm(even, "zzz"); }), "bad config 'zzz'"},
        {error_message([&] { prepare_kernels({odd}, 16); }), "N must be a positive multiple of 8"},
        {error_message([&] { gated_activation_backward(DType::bf16, 24, buffer, buffer, buffer, 8, nullptr); }),
         "N = 2*I needs I to be a multiple of 8"},
        {error_message([&] { gated_activation_backward(DType::bf16, 32, buffer, buffer, 0, 8, nullptr); }),
         "grad_preactivation is a null pointer"},
        {error_message([&] { gated_activation_backward(DType::bf16, 32, buffer, buffer, buffer, -1, nullptr); }),
         "rows (M) must be in [0, 2^31)"},
        {error_message([&] { combine_topk(DType::bf16, 7, 2, buffer, buffer, 4, nullptr); }),
         "N must be a positive multiple of 8"},
        {error_message([&] { combine_topk(DType::bf16, 64, 2, buffer + 8, buffer, 4, nullptr); }),
         "slots must be 16-byte aligned"},
        {error_message([&] { combine_topk(DType::bf16, 64, 2, buffer, buffer, -4, nullptr); }),
         "tokens must be in [0, 2^31 / topk)"},
        // tokens * topk slot rows past 2^31 (and tokens * width past 2^63 further on): refused, not wrapped.
        {error_message([&] { combine_topk(DType::bf16, 64, 2, buffer, buffer, int64_t{1} << 30, nullptr); }),
         "tokens must be in [0, 2^31 / topk)"},
        {error_message([&] { combine_topk(DType::bf16, 64, 1, buffer, buffer, int64_t{1} << 62, nullptr); }),
         "tokens must be in [0, 2^31 / topk)"},
        {error_message([&] {
             combine_backward(DType::bf16, 64, 2, buffer, buffer, buffer, buffer, buffer, buffer, int64_t{1} << 31, nullptr);
         }),
         "rows must be in [0, 2^31)"},
        {error_message([&] {
             combine_backward(DType::bf16, 64, 2, buffer, buffer, buffer, buffer, buffer, buffer, -1, nullptr);
         }),
         "rows must be in [0, 2^31)"},
        {error_message([&] {
             combine_backward(DType::bf16, 7, 2, buffer, buffer, buffer, buffer, buffer, buffer, 8, nullptr);
         }),
         "N must be a positive multiple of 8"},
        {error_message([&] {
             combine_backward(DType::bf16, 64, 2, buffer, 0, buffer, buffer, buffer, buffer, 8, nullptr);
         }),
         "y is a null pointer"},
        {error_message([&] {
             combine_backward(DType::bf16, 64, 2, buffer, buffer, buffer, buffer, buffer + 8, buffer, 8, nullptr);
         }),
         "grad_y must be 16-byte aligned"},
        {error_message([&] { permute_rows(DType::bf16, 12, 2, buffer, buffer, buffer, 4, nullptr); }),
         "N must be a positive multiple of 8"},
        {error_message([&] { permute_rows(DType::bf16, int64_t{1} << 31, 2, buffer, buffer, buffer, 4, nullptr); }),
         "N and K must each be below 2^31"},
        {error_message([&] { unpermute_rows(DType::bf16, 12, buffer, buffer, buffer, 8, nullptr); }),
         "N must be a positive multiple of 8"},
        {error_message([&] { unpermute_rows(DType::bf16, int64_t{1} << 31, buffer, buffer, buffer, 8, nullptr); }),
         "N and K must each be below 2^31"},
    };
    for (const auto& [error, mention] : cases) {
        INFO(error);
        CHECK(mentions(error, mention));
        CHECK_FALSE(mentions(error, "CUDA driver"));
    }
}

TEST_CASE("GroupedGemm ignores the arch it is given: the device's replaces it", "[cpu]") {
    // An arch no kernel supports, or none at all, is no argument error; on a GPU the GEMM is built
    // for the device, and without one the device lookup is what fails.
    for (const Arch arch : {Arch{8, 7, false}, Arch{0, 0, false}}) {
        Problem problem;
        problem.n = 64;
        problem.k = 64;
        problem.experts = 2;
        problem.arch = arch;
        const std::string error = error_message([&] { GroupedGemm gemm(problem); });
        INFO(error);
        CHECK_FALSE(mentions(error, "unsupported arch"));
    }
}

TEST_CASE("permute_rows and unpermute_rows take every width their kernel holds in an int, up to 2^31 - 8",
          "[cpu]") {
    // The kernel indexes in 64 bits and takes the width as an int template argument, as the GEMMs
    // take N and K. No rows: on a GPU the kernel is compiled and nothing launched; without one the
    // device lookup fails. Either way no argument error names the call.
    const CUdeviceptr buffer = 1 << 20;
    for (const int64_t width : {(int64_t{1} << 30) + 8, (int64_t{1} << 31) - 8}) {
        for (const std::string& error :
             {error_message([&] { permute_rows(DType::bf16, width, 2, buffer, buffer, buffer, 0, nullptr); }),
              error_message([&] { unpermute_rows(DType::bf16, width, buffer, buffer, buffer, 0, nullptr); })}) {
            INFO("width " << width << ": " << error);
            CHECK_FALSE(mentions(error, "permute_rows"));
            CHECK_FALSE(mentions(error, "width"));
        }
    }
}

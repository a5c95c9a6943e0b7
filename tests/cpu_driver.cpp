// Without a GPU the library still loads; the first GPU call fails with one clear moejit::Error.
#include "tests/catch.hpp"

#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>

#include "runtime/driver.hpp"

#include <dlfcn.h>

using namespace moejit;

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
            CHECK(std::string(error.what()).find("no usable CUDA GPU") != std::string::npos);
        }
    }
}

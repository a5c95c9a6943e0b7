// Debug mode MOEJIT_CHECK_ROUTING=1: bad m_sizes or gather_idx are reported as moejit::Error
// before the GEMM reads them. The checks run in a child process, because the variable is read
// once per process.
#include "tests/catch.hpp"
#include "tests/support/device.hpp"

#include <moejit/error.hpp>
#include <moejit/grouped_gemm.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

using namespace moejit;
using namespace moejit::testing;

namespace {

// Runs `gemm.forward` with the given routing and returns the Error text, or "" when it ran.
std::string forward_error(const std::vector<int>& m_sizes, const std::vector<int>& gather_idx, int64_t rows) {
    Problem problem;
    problem.n = 64;
    problem.k = 64;
    problem.experts = static_cast<int>(m_sizes.size());
    problem.topk = 2;
    problem.permute_x = true;
    GroupedGemm gemm(problem);
    DeviceBuffer x(4096 * 64 * 2), w(m_sizes.size() * 64 * 64 * 2), y(4096 * 64 * 2);
    DeviceBuffer sizes = DeviceBuffer::from(m_sizes), gather = DeviceBuffer::from(gather_idx);
    try {
        gemm.forward(x.get(), w.get(), y.get(), Routing{sizes.get(), gather.get(), 0, rows}, nullptr);
        synchronize();
        return "";
    } catch (const Error& error) {
        return error.what();
    }
}

}  // namespace

TEST_CASE("routing check child", "[.][check-routing-child]") {
    std::vector<int> permutation(12);
    std::iota(permutation.begin(), permutation.end(), 0);
    CHECK(forward_error({4, 4, 4}, permutation, 12).empty());

    const std::string short_sum = forward_error({4, 4, 3}, permutation, 12);
    CHECK(short_sum.find("m_sizes sum to 11 but rows (M) is 12") != std::string::npos);

    const std::string negative = forward_error({8, -1, 5}, permutation, 12);
    CHECK(negative.find("m_sizes[1] is negative") != std::string::npos);

    std::vector<int> out_of_range = permutation;
    out_of_range[7] = 12;
    CHECK(forward_error({4, 4, 4}, out_of_range, 12).find("gather_idx[7] = 12 is outside [0, 12)") != std::string::npos);

    std::vector<int> repeated = permutation;
    repeated[9] = 3;
    CHECK(forward_error({4, 4, 4}, repeated, 12).find("not a permutation") != std::string::npos);
}

TEST_CASE("MOEJIT_CHECK_ROUTING reports bad routing instead of reading out of bounds", "[gpu]") {
    const std::string command = "MOEJIT_CHECK_ROUTING=1 /proc/" + std::to_string(getpid()) +
                                "/exe \"[check-routing-child]\" > /dev/null 2>&1";
    // Without the variable the same child would not throw, so its checks would fail: the parent
    // also runs it that way and expects failure, proving the variable is what turns checks on.
    const int with_checks = std::system(command.c_str());
    CHECK(WIFEXITED(with_checks));
    CHECK(WEXITSTATUS(with_checks) == 0);
    const std::string without = "MOEJIT_CHECK_ROUTING=0 /proc/" + std::to_string(getpid()) +
                                "/exe \"[check-routing-child]\" > /dev/null 2>&1";
    const int without_checks = std::system(without.c_str());
    CHECK(WIFEXITED(without_checks));
    CHECK(WEXITSTATUS(without_checks) != 0);
}

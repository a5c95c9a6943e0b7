// MOEJIT_LOG, MOEJIT_CHECK_ROUTING, MOEJIT_KERNEL_PATH and MOEJIT_DEPENDENT_LAUNCH take their
// documented values in any case and warn once about any other. Each is read once per process, so
// every value is tried in a fresh copy of this test binary (the hidden test case below).
#include "tests/catch.hpp"
#include "tests/support/process.hpp"
#include "tests/support/errors.hpp"

#include <moejit/error.hpp>

#include "codegen/config.hpp"
#include "moe/check_routing.hpp"
#include "moe/tuning.hpp"
#include "runtime/log.hpp"
#include "runtime/runtime.hpp"

#include <cstdio>
#include <optional>
#include <string>

using namespace moejit;
using moejit::testing::count_of;

namespace {

// What a fresh process made of `variable`=`value`: the child's "read: ..." line and its stderr.
struct Reading {
    std::string line, err;
};

Reading read_in_child(const char* variable, std::optional<std::string> value) {
    const testing::ProcessResult child = testing::run_child_tests("[env-child]", {{variable, std::move(value)}});
    INFO(child.out << child.err);
    REQUIRE(child.status == 0);
    const size_t begin = child.out.find("read: ");
    REQUIRE(begin != std::string::npos);
    return {child.out.substr(begin, child.out.find('\n', begin) - begin), child.err};
}

}  // namespace

// Run only by the tests below, in a fresh process (hidden: "[.]"). Each reader runs twice: the
// second read must neither differ nor warn again.
TEST_CASE("environment: what this process read, child process", "[.][env-child]") {
    for (int pass = 0; pass < 2; ++pass) {
        std::string path;
        try {
            path = preferred_path() == KernelPath::portable ? "portable" : "auto";
        } catch (const Error&) {
            path = "error";
        }
        std::printf("read: log=%d check_routing=%d kernel_path=%s dependent_launch=%d%d\n",
                    static_cast<int>(log::level()), routing_checks_enabled() ? 1 : 0, path.c_str(),
                    launches_dependent(Arch::parse("sm_90a")) ? 1 : 0, launches_dependent(Arch::parse("sm_80")) ? 1 : 0);
    }
}

TEST_CASE("MOEJIT_LOG takes off, info and debug in any case and warns once about anything else", "[cpu][env]") {
    const std::pair<std::optional<std::string>, int> known[] = {
        {std::nullopt, 0}, {"", 0}, {"off", 0}, {"OFF", 0}, {"info", 1}, {"INFO", 1},
        {"Info", 1},       {"1", 1}, {"debug", 2}, {"DEBUG", 2}, {"0", 0}};
    for (const auto& [value, level] : known) {
        const Reading reading = read_in_child("MOEJIT_LOG", value);
        INFO("MOEJIT_LOG=" << value.value_or("(unset)") << ": " << reading.line << "\n" << reading.err);
        CHECK(count_of(reading.line, "log=" + std::to_string(level) + " ") == 1);
        CHECK(reading.err.find("MOEJIT_LOG") == std::string::npos);
    }
    for (const char* value : {"verbose", "2", "trace", "onn"}) {
        const Reading reading = read_in_child("MOEJIT_LOG", value);
        INFO("MOEJIT_LOG=" << value << ": " << reading.line << "\n" << reading.err);
        CHECK(count_of(reading.line, "log=0 ") == 1);
        CHECK(count_of(reading.err, std::string("[moejit warning] MOEJIT_LOG=") + value +
                                        " is not understood (expected off, info or debug); using off") == 1);
    }
}

TEST_CASE("MOEJIT_CHECK_ROUTING is a boolean: off, false, 0 and no turn the checks off, an unknown value on", "[cpu][env]") {
    for (const char* value : {"1", "on", "ON", "true", "True", "yes", "YES"}) {
        const Reading reading = read_in_child("MOEJIT_CHECK_ROUTING", std::string(value));
        INFO("MOEJIT_CHECK_ROUTING=" << value << ": " << reading.line << "\n" << reading.err);
        CHECK(count_of(reading.line, "check_routing=1") == 1);
        CHECK(reading.err.find("MOEJIT_CHECK_ROUTING") == std::string::npos);
    }
    for (std::optional<std::string> value : {std::optional<std::string>(), std::optional<std::string>(""),
                                             std::optional<std::string>("0"), std::optional<std::string>("off"),
                                             std::optional<std::string>("OFF"), std::optional<std::string>("false"),
                                             std::optional<std::string>("False"), std::optional<std::string>("no")}) {
        const Reading reading = read_in_child("MOEJIT_CHECK_ROUTING", value);
        INFO("MOEJIT_CHECK_ROUTING=" << value.value_or("(unset)") << ": " << reading.line << "\n" << reading.err);
        CHECK(count_of(reading.line, "check_routing=0") == 1);
        CHECK(reading.err.find("MOEJIT_CHECK_ROUTING") == std::string::npos);
    }
    const Reading unknown = read_in_child("MOEJIT_CHECK_ROUTING", std::string("sometimes"));
    INFO(unknown.line << "\n" << unknown.err);
    // Set to something: the checks were asked for, so they run, with one warning.
    CHECK(count_of(unknown.line, "check_routing=1") == 1);
    CHECK(count_of(unknown.err, "[moejit warning] MOEJIT_CHECK_ROUTING=sometimes is not understood (expected 1, on, "
                                "true, yes or 0, off, false, no); using on") == 1);
}

TEST_CASE("MOEJIT_KERNEL_PATH takes auto and portable in any case and rejects anything else", "[cpu][env]") {
    const std::pair<std::optional<std::string>, std::string> values[] = {
        {std::nullopt, "auto"}, {"auto", "auto"},         {"AUTO", "auto"},
        {"portable", "portable"}, {"Portable", "portable"}, {"bogus", "error"}};
    for (const auto& [value, path] : values) {
        const Reading reading = read_in_child("MOEJIT_KERNEL_PATH", value);
        INFO("MOEJIT_KERNEL_PATH=" << value.value_or("(unset)") << ": " << reading.line);
        CHECK(count_of(reading.line, "kernel_path=" + path) == 1);
    }
}

TEST_CASE("MOEJIT_DEPENDENT_LAUNCH is a boolean, on by default, and only ever on for sm_90 and later", "[cpu][env]") {
    // dependent_launch=XY: X for sm_90a, Y for sm_80.
    for (std::optional<std::string> value : {std::optional<std::string>(), std::optional<std::string>(""),
                                             std::optional<std::string>("1"), std::optional<std::string>("ON")}) {
        const Reading reading = read_in_child("MOEJIT_DEPENDENT_LAUNCH", value);
        INFO("MOEJIT_DEPENDENT_LAUNCH=" << value.value_or("(unset)") << ": " << reading.line << "\n" << reading.err);
        CHECK(count_of(reading.line, "dependent_launch=10") == 1);
        CHECK(reading.err.find("MOEJIT_DEPENDENT_LAUNCH") == std::string::npos);
    }
    for (const char* value : {"0", "off", "False", "no"}) {
        const Reading reading = read_in_child("MOEJIT_DEPENDENT_LAUNCH", std::string(value));
        INFO("MOEJIT_DEPENDENT_LAUNCH=" << value << ": " << reading.line << "\n" << reading.err);
        CHECK(count_of(reading.line, "dependent_launch=00") == 1);
        CHECK(reading.err.find("MOEJIT_DEPENDENT_LAUNCH") == std::string::npos);
    }
    const Reading unknown = read_in_child("MOEJIT_DEPENDENT_LAUNCH", std::string("maybe"));
    INFO(unknown.line << "\n" << unknown.err);
    CHECK(count_of(unknown.line, "dependent_launch=10") == 1);
    CHECK(count_of(unknown.err, "[moejit warning] MOEJIT_DEPENDENT_LAUNCH=maybe is not understood") == 1);
}

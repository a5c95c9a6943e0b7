#pragma once
// A fresh directory under /tmp for one test, removed with everything in it at scope exit, and the
// text of a file a test (or a child process) wrote. A test that takes permissions away inside the
// directory gives them back through ScopedMode, or the removal cannot descend.
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <system_error>
#include <utility>

#include "tests/catch.hpp"

namespace moejit::testing {

struct TempDir {
    std::string path;
    TempDir() {
        char name[] = "/tmp/moejit-test-XXXXXX";
        REQUIRE(::mkdtemp(name) != nullptr);
        path = name;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    std::string operator/(const std::string& child) const { return path + "/" + child; }
};

// chmod(path, mode) for one scope; 0755 again at scope exit, however the test ends.
struct ScopedMode {
    std::string path;
    ScopedMode(std::string target, mode_t mode) : path(std::move(target)) {
        REQUIRE(::chmod(path.c_str(), mode) == 0);
    }
    ~ScopedMode() { ::chmod(path.c_str(), 0755); }
    ScopedMode(const ScopedMode&) = delete;
    ScopedMode& operator=(const ScopedMode&) = delete;
};

// The whole file, byte for byte; empty if it cannot be read.
inline std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace moejit::testing

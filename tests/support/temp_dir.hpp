#pragma once
// A fresh directory under /tmp for one test, removed with everything in it at scope exit. A test
// that takes permissions away inside it must give them back, or the removal cannot descend.
#include <stdlib.h>

#include <filesystem>
#include <string>
#include <system_error>

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

}  // namespace moejit::testing

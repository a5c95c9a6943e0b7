#pragma once
// Sets (or, with nullopt, unsets) an environment variable for one scope, restoring the old value.
#include <stdlib.h>

#include <optional>
#include <string>

namespace moejit::testing {

struct EnvVar {
    std::string name;
    std::optional<std::string> old;
    EnvVar(const char* variable, std::optional<std::string> value) : name(variable) {
        if (const char* current = ::getenv(variable)) old = current;
        if (value) ::setenv(variable, value->c_str(), 1);
        else ::unsetenv(variable);
    }
    ~EnvVar() {
        if (old) ::setenv(name.c_str(), old->c_str(), 1);
        else ::unsetenv(name.c_str());
    }
    EnvVar(const EnvVar&) = delete;
    EnvVar& operator=(const EnvVar&) = delete;
};

}  // namespace moejit::testing

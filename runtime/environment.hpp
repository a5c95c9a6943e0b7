#pragma once
// The MOEJIT_* variables, read one way everywhere: values in any case, and a value nobody
// understands warned about (once per variable) instead of silently meaning "off".
#include <optional>
#include <string>

namespace moejit::env {

// The variable's value in lower case; nullopt when it is unset or empty.
std::optional<std::string> lowercase_value(const char* name);

// Warns, once per variable, that its value is none of `expected` and that `fallback` applies.
void warn_unrecognized(const char* name, const std::string& expected, const std::string& fallback);

// 1, on, true, yes: true; 0, off, false, no: false (any case). Unset or empty: `unset`; anything
// else warns once and gives `unrecognized`.
bool flag(const char* name, bool unset, bool unrecognized);

}  // namespace moejit::env

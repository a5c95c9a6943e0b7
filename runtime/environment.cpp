#include "runtime/environment.hpp"

#include "runtime/log.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>

namespace moejit::env {

std::optional<std::string> lowercase_value(const char* name) {
    const char* value = std::getenv(name);
    if (value == nullptr || *value == '\0') return std::nullopt;
    std::string text(value);
    std::transform(text.begin(), text.end(), text.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return text;
}

void warn_unrecognized(const char* name, const std::string& expected, const std::string& fallback) {
    const char* value = std::getenv(name);
    const std::string setting = std::string(name) + "=" + (value != nullptr ? value : "");
    log::warn_once(std::string("environment ") + name,
                   setting + " is not understood (expected " + expected + "); using " + fallback);
}

bool flag(const char* name, bool unset, bool unrecognized) {
    const std::optional<std::string> value = lowercase_value(name);
    if (!value) return unset;
    if (*value == "1" || *value == "on" || *value == "true" || *value == "yes") return true;
    if (*value == "0" || *value == "off" || *value == "false" || *value == "no") return false;
    warn_unrecognized(name, "1, on, true, yes or 0, off, false, no", unrecognized ? "on" : "off");
    return unrecognized;
}

}  // namespace moejit::env

#include "runtime/log.hpp"

#include "runtime/environment.hpp"

#include <cstdio>
#include <mutex>
#include <optional>
#include <set>

namespace moejit::log {

Level level() {
    static const Level parsed = [] {
        const std::optional<std::string> value = env::lowercase_value("MOEJIT_LOG");
        if (!value || *value == "off" || *value == "0") return Level::off;
        if (*value == "info" || *value == "1") return Level::info;  // 0 and 1: earlier spellings, kept
        if (*value == "debug") return Level::debug;
        env::warn_unrecognized("MOEJIT_LOG", "off, info or debug", "off");
        return Level::off;
    }();
    return parsed;
}

static void emit(const char* tag, const std::string& message) {
    std::fprintf(stderr, "[moejit %s] %s\n", tag, message.c_str());
}

void info(const std::string& message) {
    if (level() >= Level::info) emit("info", message);
}

void debug(const std::string& message) {
    if (level() >= Level::debug) emit("debug", message);
}

void warn(const std::string& message) { emit("warning", message); }

void warn_once(const std::string& tag, const std::string& message) {
    static std::mutex mutex;
    static std::set<std::string> seen;
    std::lock_guard<std::mutex> lock(mutex);
    if (seen.insert(tag).second) warn(message);
}

}  // namespace moejit::log

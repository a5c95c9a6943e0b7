#include "runtime/log.hpp"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <set>

namespace moejit::log {

Level level() {
    static const Level parsed = [] {
        const char* value = std::getenv("MOEJIT_LOG");
        if (value == nullptr) return Level::off;
        const std::string text(value);
        if (text == "debug") return Level::debug;
        if (text == "info" || text == "1") return Level::info;
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

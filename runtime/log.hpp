#pragma once
// MOEJIT_LOG=off|info|debug (any case): diagnostic lines on stderr. Warnings always print.
#include <string>

namespace moejit::log {

enum class Level { off = 0, info = 1, debug = 2 };

Level level();  // read once from MOEJIT_LOG
void info(const std::string& message);
void debug(const std::string& message);
void warn(const std::string& message);
// Prints `message` as a warning only the first time `tag` is seen in this process.
void warn_once(const std::string& tag, const std::string& message);

}  // namespace moejit::log

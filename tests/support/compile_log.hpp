#pragma once
// The compiles a child process with MOEJIT_LOG=info logged on its stderr, counted on either side of
// a marker line the child wrote to stderr too (so that the two keep their order).
#include <cstddef>
#include <string>

namespace moejit::testing {

struct LoggedCompiles {
    size_t before = 0, after = 0;  // with no marker, every compile counts as after
};

inline LoggedCompiles logged_compiles(const std::string& err, const std::string& marker) {
    const size_t at_marker = err.find(marker);
    LoggedCompiles counts;
    const std::string line = "[moejit info] compiled";
    for (size_t at = err.find(line); at != std::string::npos; at = err.find(line, at + 1))
        ++(at_marker != std::string::npos && at < at_marker ? counts.before : counts.after);
    return counts;
}

}  // namespace moejit::testing

#pragma once
// What a test checks of a moejit::Error or a command's output: the message, the words it must
// contain, and how often.
#include <moejit/error.hpp>

#include <cstddef>
#include <string>

namespace moejit::testing {

// The message of the moejit::Error `call` throws, or "" when it throws none.
template <class Call>
std::string error_message(Call&& call) {
    try {
        call();
    } catch (const Error& error) {
        return error.what();
    }
    return "";
}

// Whether `text` contains `part` (Catch2 v2 and v3 spell their string matchers differently).
inline bool mentions(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// How many times `needle` occurs in `text` (overlapping occurrences included).
inline size_t count_of(const std::string& text, const std::string& needle) {
    size_t count = 0;
    for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++count;
    return count;
}

}  // namespace moejit::testing

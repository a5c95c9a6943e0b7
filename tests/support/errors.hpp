#pragma once
// What a test checks of a moejit::Error: its message, and the words the message must contain.
#include <moejit/error.hpp>

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

}  // namespace moejit::testing

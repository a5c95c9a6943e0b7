#pragma once
// The one exception type that crosses the public boundary.
#include <stdexcept>
#include <string>

namespace moejit {

class Error : public std::runtime_error {
public:
    explicit Error(const std::string& message, std::string log = {})
        : std::runtime_error(log.empty() ? message : message + "\n" + log), log_(std::move(log)) {}

    // The NVRTC compile log (with the numbered generated source) when a compile failed; else empty.
    const std::string& log() const noexcept { return log_; }

private:
    std::string log_;
};

}  // namespace moejit

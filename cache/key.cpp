#include "cache/key.hpp"

#include <algorithm>

namespace moejit {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

std::string trim(const std::string& text) {
    size_t begin = 0, end = text.size();
    while (begin < end && is_space(text[begin])) ++begin;
    while (end > begin && is_space(text[end - 1])) --end;
    return text.substr(begin, end - begin);
}

}  // namespace

std::vector<std::string> normalize_options(std::vector<std::string> options) {
    std::vector<std::string> out;
    out.reserve(options.size());
    for (const std::string& option : options) {
        std::string trimmed = trim(option);
        if (!trimmed.empty()) out.push_back(std::move(trimmed));
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    return out;
}

Hash128 make_key(const KeyInputs& inputs) {
    Hasher hasher;
    // The domain tag keeps this hash apart from any other use of the same hash function.
    hasher.field(std::string_view("moejit-cache-key"));
    hasher.field(static_cast<uint64_t>(kCacheFormatVersion));
    // Casting through uint32_t keeps the encoding of a (never expected) negative version fixed.
    hasher.field(static_cast<uint64_t>(static_cast<uint32_t>(inputs.nvrtc_major)));
    hasher.field(static_cast<uint64_t>(static_cast<uint32_t>(inputs.nvrtc_minor)));
    hasher.field(inputs.arch);

    const std::vector<std::string> options = normalize_options(inputs.options);
    hasher.field(static_cast<uint64_t>(options.size()));
    for (const std::string& option : options) hasher.field(option);

    hasher.field(inputs.source);

    // Header order does not matter to NVRTC (they are looked up by name), so it must not matter
    // here. Sorting by contents too makes even a (nonsensical) duplicate name deterministic.
    std::vector<const std::pair<std::string, std::string>*> headers;
    headers.reserve(inputs.headers.size());
    for (const auto& header : inputs.headers) headers.push_back(&header);
    std::sort(headers.begin(), headers.end(), [](const auto* a, const auto* b) { return *a < *b; });
    hasher.field(static_cast<uint64_t>(headers.size()));
    for (const auto* header : headers) {
        hasher.field(header->first);
        hasher.field(header->second);
    }
    return hasher.digest();
}

}  // namespace moejit

#pragma once
// xxHash3 wrappers: 128-bit keys and 64-bit checksums.
#include <cstdint>
#include <string>
#include <string_view>

namespace moejit {

struct Hash128 {
    uint64_t high = 0;
    uint64_t low = 0;

    std::string hex() const;  // 32 lowercase hex digits, high word first
    static bool from_hex(std::string_view text, Hash128& out);
    bool operator==(const Hash128& other) const { return high == other.high && low == other.low; }
    bool operator!=(const Hash128& other) const { return !(*this == other); }
};

// Streaming XXH3-128. Each field is length-prefixed so that field boundaries are part of the hash.
class Hasher {
public:
    Hasher();
    ~Hasher();
    Hasher(const Hasher&) = delete;
    Hasher& operator=(const Hasher&) = delete;

    Hasher& field(std::string_view bytes);
    Hasher& field(uint64_t value);
    Hash128 digest() const;

private:
    void* state_;  // XXH3_state_t*
};

uint64_t checksum64(const void* data, size_t size);

}  // namespace moejit

#include "cache/hash.hpp"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <cstdio>

namespace moejit {

std::string Hash128::hex() const {
    char text[33];
    std::snprintf(text, sizeof text, "%016llx%016llx", static_cast<unsigned long long>(high),
                  static_cast<unsigned long long>(low));
    return text;
}

bool Hash128::from_hex(std::string_view text, Hash128& out) {
    if (text.size() != 32) return false;
    uint64_t words[2] = {0, 0};
    for (size_t i = 0; i < 32; ++i) {
        const char c = text[i];
        int digit;
        if (c >= '0' && c <= '9') digit = c - '0';
        else if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
        else return false;
        words[i / 16] = (words[i / 16] << 4) | static_cast<uint64_t>(digit);
    }
    out.high = words[0];
    out.low = words[1];
    return true;
}

Hasher::Hasher() : state_(XXH3_createState()) { XXH3_128bits_reset(static_cast<XXH3_state_t*>(state_)); }

Hasher::~Hasher() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }

Hasher& Hasher::field(std::string_view bytes) {
    field(static_cast<uint64_t>(bytes.size()));
    XXH3_128bits_update(static_cast<XXH3_state_t*>(state_), bytes.data(), bytes.size());
    return *this;
}

Hasher& Hasher::field(uint64_t value) {
    unsigned char little_endian[8];
    for (int i = 0; i < 8; ++i) little_endian[i] = static_cast<unsigned char>(value >> (8 * i));
    XXH3_128bits_update(static_cast<XXH3_state_t*>(state_), little_endian, sizeof little_endian);
    return *this;
}

Hash128 Hasher::digest() const {
    const XXH128_hash_t hash = XXH3_128bits_digest(static_cast<XXH3_state_t*>(state_));
    return Hash128{hash.high64, hash.low64};
}

uint64_t checksum64(const void* data, size_t size) { return XXH3_64bits(data, size); }

}  // namespace moejit

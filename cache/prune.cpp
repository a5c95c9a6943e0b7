#include "cache/prune.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <tuple>

#include <moejit/error.hpp>

namespace moejit {

uint64_t parse_cache_size(const std::string& text) {
    const Error bad("bad size '" + text + "': expected a number of bytes, or with a suffix K, M, G or T (powers of "
                    "1024), such as 500M or 2G");
    size_t end = text.find_first_not_of("0123456789");
    if (end == 0 || text.empty()) throw bad;
    if (end != std::string::npos && text[end] == '.') {
        const size_t fraction = text.find_first_not_of("0123456789", end + 1);
        if (fraction == end + 1 || end + 1 == text.size()) throw bad;  // "1." or "1.M": digits must follow
        end = fraction;
    }
    const std::string number = text.substr(0, end);
    std::string unit = end == std::string::npos ? "" : text.substr(end);
    for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    // "500M", "500MB" and "500MiB" all mean 500 MiB: nobody sizes a cache in powers of 1000.
    if (unit.size() == 3 && unit.compare(1, 2, "ib") == 0) unit.erase(1);
    else if (!unit.empty() && unit.back() == 'b') unit.pop_back();
    const std::string units = "kmgt";
    int shift = 0;
    if (!unit.empty()) {
        const size_t index = units.find(unit);
        if (unit.size() != 1 || index == std::string::npos) throw bad;
        shift = 10 * static_cast<int>(index + 1);
    }
    // At most 24 characters: stold cannot overflow, and anything longer is past any disk anyway.
    if (number.size() > 24) throw bad;
    const long double bytes = std::stold(number) * static_cast<long double>(uint64_t{1} << shift);
    if (bytes >= 9.2e18L) throw bad;  // past what a uint64_t (and any disk) holds
    // "0.1" (bytes) would round to 0, which means "no cap" to MOEJIT_CACHE_MAX_SIZE and "remove
    // everything" to prune: only a written zero means zero.
    if (bytes < 1 && number.find_first_of("123456789") != std::string::npos) throw bad;
    return static_cast<uint64_t>(bytes);
}

namespace {

void remove_abandoned_temporaries(const std::vector<CacheTemporaryInfo>& temporaries, PruneResult& result) {
    const int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
    for (const CacheTemporaryInfo& temporary : temporaries) {
        if (now_ns - temporary.mtime_ns < kAbandonedTemporarySeconds * 1000000000) continue;  // maybe in use
        if (::unlink(temporary.path.c_str()) != 0) {
            if (errno != ENOENT)  // ENOENT: someone else removed it
                result.errors.push_back("cannot remove " + temporary.path + ": " + std::strerror(errno));
            continue;
        }
        ++result.removed_temporaries;
        result.removed_temporary_bytes += temporary.bytes;
    }
}

}  // namespace

PruneResult prune(const DiskCache& cache, uint64_t max_bytes, const std::string& keep) {
    PruneResult result;
    CacheListing listing = cache.list(/*verify=*/false, CacheRoots::writable);
    result.errors = std::move(listing.errors);
    remove_abandoned_temporaries(listing.temporaries, result);
    std::vector<CacheEntryInfo>& entries = listing.entries;
    // Invalid entries are misses anyway; then the oldest use. The path breaks ties so that equal
    // mtimes (a precompiled batch) are pruned in a reproducible order.
    std::sort(entries.begin(), entries.end(), [](const CacheEntryInfo& a, const CacheEntryInfo& b) {
        return std::make_tuple(a.valid, a.mtime_ns, a.path) < std::make_tuple(b.valid, b.mtime_ns, b.path);
    });

    uint64_t total = 0;
    for (const CacheEntryInfo& info : entries) total += info.bytes;
    result.kept = entries.size();
    for (const CacheEntryInfo& info : entries) {
        if (total <= max_bytes) break;
        if (info.path == keep) continue;
        if (::unlink(info.path.c_str()) != 0 && errno != ENOENT) {  // ENOENT: someone else removed it
            result.errors.push_back("cannot remove " + info.path + ": " + std::strerror(errno));
            continue;
        }
        // "<key>.cubin" -> "<key>.cu": the source is only for people, and useless without its entry.
        const std::string source = info.path.substr(0, info.path.size() - 3);
        ::unlink(source.c_str());
        total -= info.bytes;
        result.removed_bytes += info.bytes;
        ++result.removed;
        --result.kept;
    }
    result.kept_bytes = total;
    return result;
}

}  // namespace moejit

#include "cache/prune.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <tuple>

namespace moejit {

PruneResult prune(const DiskCache& cache, uint64_t max_bytes) {
    PruneResult result;
    CacheListing listing = cache.list(/*verify=*/false);
    result.errors = std::move(listing.errors);
    std::vector<CacheEntryInfo> entries;
    for (CacheEntryInfo& info : listing.entries)
        if (!info.read_only_root) entries.push_back(std::move(info));
    // Invalid entries are misses anyway; then the oldest use. The path breaks ties so that equal
    // mtimes (a precompiled batch) are pruned in a reproducible order.
    std::sort(entries.begin(), entries.end(), [](const CacheEntryInfo& a, const CacheEntryInfo& b) {
        return std::make_tuple(a.valid, a.mtime, a.path) < std::make_tuple(b.valid, b.mtime, b.path);
    });

    uint64_t total = 0;
    for (const CacheEntryInfo& info : entries) total += info.bytes;
    result.kept = entries.size();
    for (const CacheEntryInfo& info : entries) {
        if (total <= max_bytes) break;
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

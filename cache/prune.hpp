#pragma once
// Size-capping the writable cache root: least-recently-used entries go first. DiskCache::load
// refreshes an entry's mtime on every hit, so the mtime is its last use. Temporary files that
// crashed stores left behind go too.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cache/disk_cache.hpp"

namespace moejit {

// How long a store's temporary file must have gone unwritten before prune takes it for a crashed
// writer's. A store writes its file in one go, then fsyncs and renames it: seconds, even for the
// largest entry (256 MiB) on a slow disk. An hour leaves room for a stalled network file system and
// for skew between its clock (which stamps the mtime) and ours; a leftover costs only its bytes
// until then. (A store whose file went all the same fails its rename and writes the entry again.)
constexpr int64_t kAbandonedTemporarySeconds = 3600;

struct PruneResult {
    size_t removed = 0;  // entries, each with its source
    uint64_t removed_bytes = 0;
    size_t kept = 0;  // entries left in the writable root
    uint64_t kept_bytes = 0;
    size_t removed_temporaries = 0;  // abandoned temporary files (not counted in the sizes above)
    uint64_t removed_temporary_bytes = 0;
    std::vector<std::string> errors;  // "cannot read directory ...", "cannot remove <path>: <reason>"
};

// "4096", "500M", "2G", "1.5GiB": K, M, G, T are powers of 1024; a trailing B or iB is optional.
// Throws moejit::Error on anything else.
uint64_t parse_cache_size(const std::string& text);

// Removes entries of the writable root (never of a read-only root, which it does not even list)
// until their sizes (as list() reports them: the entry files, not the sources beside them) add up
// to at most `max_bytes`: first those list() marks invalid without reading them (not regular files,
// over the size cap), then the least recently used. Never removes the entry at `keep` (a path as
// list() gives it). Also removes the root's temporary files unwritten for
// kAbandonedTemporarySeconds, whatever `max_bytes`. Nothing else: what classify_cache_file calls
// foreign is never listed, so never removed. Goes on past failures; each is named in `errors`.
PruneResult prune(const DiskCache& cache, uint64_t max_bytes, const std::string& keep = "");

}  // namespace moejit

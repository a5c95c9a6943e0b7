#pragma once
// The on-disk kernel cache: one file per key holding a cubin behind a self-checking header.
//
// Layout: <root>/<first two hex digits of the key>/<32-hex key>.cubin, and the generated source
// beside it as <key>.cu; `moejit tune`'s winners go to <root>/tuning/<key>.config (moe/tuning.cpp).
// A root may be a directory that holds other things too: classify_cache_file() says which names
// are the cache's, and nothing else is ever listed or removed.
// An entry file is
//     "MOEJITCB" | u32 format version | u32 reserved (0) | u64 key.high | u64 key.low
//     | u64 payload size | u64 checksum64(payload) | payload
// with payload = u32 name length | name bytes | cubin bytes, all integers little-endian. A file
// larger than 256 MiB is never read (it is no entry of ours, maybe a sparse file).
//
// Entries are written to a unique temporary file, fsynced and renamed into place, so readers and
// concurrent writers of the same key never see a partial file and need no locks (lock_key's only
// saves processes compiling the same kernel at once the duplicate work). A reader treats
// anything wrong with a file as a miss; the caller recompiles and store() replaces the file.
#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cache/hash.hpp"

namespace moejit {

// The subdirectory of a root that holds the tuned tilings. list() reports its records (for ls and
// stats) and its temporary files as it does the entries', so that prune removes those that a
// crashed `moejit tune` left behind.
inline constexpr const char* kTuningDirectory = "tuning";

// The name of a store's temporary file for `final_name`, unique to this process and thread:
// "<final_name>.<pid>-<thread>-<random>.tmp" (decimal pid, hex thread, 16 hex digits). Written,
// then renamed to `final_name`.
std::string temporary_file_name(const std::string& final_name);

// The name of the tuned tiling record for `key` in the tuning directory: "<32 hex>.config".
std::string tuning_record_file_name(const Hash128& key);

// What a file in a cache root is to the cache: the one place that knows the names the cache writes.
enum class CacheFileKind {
    foreign,        // not the cache's: never listed, never removed
    entry,          // <key>.cubin
    source,         // <key>.cu
    lock,           // <key>.lock (lock_key)
    tuning_record,  // <key>.config
    temporary,      // temporary_file_name() of an entry, a source or a tuning record
};

struct CacheFileName {
    CacheFileKind kind = CacheFileKind::foreign;
    std::string key_hex;  // the 32 lowercase hex digits of the key the file belongs to; "" if foreign
};

// Classifies `name`, a file in the directory named `directory` directly under a root: a shard
// ("3f"), or kTuningDirectory. Entries, sources, locks and their temporaries are the cache's only in
// the shard named by their key's first two hex digits; tuning records and theirs only in the
// tuning directory. Everything else, however much it looks like ours (upper-case hex, "x.tmp",
// "notes.cu"), is foreign.
CacheFileName classify_cache_file(const std::string& directory, const std::string& name);

// Writes `data` to dir/final_name atomically: a temporary file beside it, written, fsynced and
// renamed, so that readers see the old file or the whole new one. Returns "" on success, else
// "<path>: <reason>". The kernel cache's entries and the tuned tilings are written this way.
std::string write_file_atomically(const std::string& dir, const std::string& final_name, const std::string& data);

// Reads the whole of `path` into `bytes` if it is a regular file of at most 256 MB, without
// blocking on a FIFO or device at that path. Returns "" on success, else the reason ("missing",
// "not a regular file", ...). The kernel cache's entries and the tuned tilings are read this way.
// `fd_out`, if given, receives the open fd (the caller closes it), so that the caller can touch
// the very file it read.
std::string read_regular_file(const std::string& path, std::vector<char>& bytes, int* fd_out = nullptr);

// What to say where no writable cache directory could be found.
inline constexpr const char* kNoCacheDirectory = "no cache directory (set MOEJIT_CACHE_DIR, XDG_CACHE_HOME or HOME)";

struct CacheEntry {
    std::string kernel_name;  // lowered name
    std::vector<char> cubin;
};

struct CacheEntryInfo {
    std::string path;
    std::string key_hex;
    uint64_t bytes = 0;   // file size
    int64_t mtime = 0;     // seconds since the epoch; load() refreshes it (its last use)
    int64_t mtime_ns = 0;  // the same in nanoseconds: LRU order for pruning, where seconds tie
    bool read_only_root = false;
    bool valid = true;    // false for files that are no entry (not regular, oversized); list(verify) reads the rest
    std::string problem;  // why invalid, empty if valid
};

// A tuned tiling record of some root (moe/tuning.hpp), as ls and stats show them.
struct TuningRecordInfo {
    std::string path;
    std::string key_hex;
    uint64_t bytes = 0;
    int64_t mtime = 0;  // seconds since the epoch: when it was tuned
    bool read_only_root = false;
};

// A store's temporary file (temporary_file_name, beside the entry or tuned tiling it becomes). It
// exists only while the store writes it; one left behind is a crashed writer's.
struct CacheTemporaryInfo {
    std::string path;
    uint64_t bytes = 0;
    int64_t mtime_ns = 0;  // its last write, in nanoseconds since the epoch
};

struct CacheListing {
    std::vector<CacheEntryInfo> entries;          // sorted by path, read-only roots first
    std::vector<TuningRecordInfo> tuning_records;  // regular files only, sorted by path, read-only roots first
    std::vector<CacheTemporaryInfo> temporaries;  // of the writable root only, sorted by path
    std::vector<std::string> errors;              // "cannot read directory <path>: <reason>", ...
};

// Which roots list() walks: all (ls, stats, verify), or the writable one alone (prune, which
// never removes anything from a read-only root).
enum class CacheRoots { all, writable };

struct ClearResult {
    size_t removed = 0;                 // entries (.cubin files)
    size_t removed_tuning_records = 0;  // tuned tilings (.config files)
    std::vector<std::string> errors;    // "cannot remove <path>: <reason>", "cannot read directory ..."
};

// Holds a key's lock file (DiskCache::lock_key) until it goes out of scope. Move-only.
class KeyLock {
public:
    KeyLock() = default;
    KeyLock(KeyLock&& other) noexcept;
    KeyLock& operator=(KeyLock&& other) noexcept;
    KeyLock(const KeyLock&) = delete;
    KeyLock& operator=(const KeyLock&) = delete;
    ~KeyLock();

    // False where the lock could not be taken: the caller goes on without it.
    bool held() const { return fd_ >= 0; }
    // Gives the lock up now rather than at scope exit.
    void release();

private:
    friend class DiskCache;
    KeyLock(int fd, std::string path) : fd_(fd), path_(std::move(path)) {}

    int fd_ = -1;
    std::string path_;
};

class DiskCache {
public:
    // size_cap: the most bytes of entries the writable root keeps (0: no cap); store() prunes the
    // least recently used beyond it (cache/prune.hpp), checking on the first store of the process
    // and every kStoresPerPruneCheck-th after, so the root may overshoot by a few entries.
    DiskCache(std::string writable_root, std::vector<std::string> read_only_roots, uint64_t size_cap = 0);
    DiskCache(const DiskCache& other);
    DiskCache& operator=(const DiskCache& other);

    // Writable root: MOEJIT_CACHE_DIR, else $XDG_CACHE_HOME/moejit, else $HOME/.cache/moejit.
    // Read-only roots: MOEJIT_CACHE_PATH (colon-separated), searched before the writable root.
    // Size cap: MOEJIT_CACHE_MAX_SIZE (500M, 2G; 0 or off: none), else kDefaultSizeCap.
    static DiskCache from_environment();
    static constexpr uint64_t kDefaultSizeCap = uint64_t{4} << 30;
    static constexpr unsigned kStoresPerPruneCheck = 16;

    const std::string& root() const { return root_; }
    uint64_t size_cap() const { return size_cap_; }
    const std::vector<std::string>& read_only_roots() const { return read_only_roots_; }

    // Read-only roots first, then the writable root. Anything wrong with a file is a miss (the
    // reason goes to log::debug); never throws, never returns an entry for another key.
    std::optional<CacheEntry> load(const Hash128& key) const;

    // Writes the entry (and the source, best effort) into the writable root; never throws for I/O.
    // A failure of the root itself (none configured, cannot be created, read-only, full, not ours:
    // EROFS, EACCES, EPERM, ENOSPC, EDQUOT) switches this cache to memory-only mode with one warning
    // per process. A failure of one entry's path (a directory in its place, EISDIR) warns once for
    // that entry and leaves the others going to disk.
    void store(const Hash128& key, const CacheEntry& entry, const std::string& source);

    // Takes key's lock, <writable root>/<shard>/<key>.lock (flock(2), exclusive), waiting while
    // another process or DiskCache holds it. A caller that found key missing takes it, looks again
    // and compiles only if the entry is still missing: then processes that need the same kernel at
    // once (a host's training ranks) compile it once. The lock only saves that work, since
    // concurrent stores of a key are safe without it, so anything that stands in its way (no
    // writable root, a read-only or memory-only cache, a file system without flock) gives a guard
    // that holds nothing, quietly; never throws. The guard removes the lock file when it lets go.
    KeyLock lock_key(const Hash128& key) const;

    // Every entry file and tuning record of every root (or of the writable root only), and the
    // temporary files of the writable root. verify = true reads and checks each entry fully. A root
    // that does not exist is empty; a directory that cannot be read is named in `errors`, never
    // skipped quietly.
    CacheListing list(bool verify, CacheRoots roots = CacheRoots::all) const;

    // Removes entries, sources, lock files, tuning records and temporary files of the writable root
    // (never a read-only root, never a file classify_cache_file calls foreign), going on past
    // failures; each is named in `errors`.
    ClearResult clear();

    // True once a store failed for a reason that concerns the whole root: further stores do nothing.
    bool memory_only() const { return memory_only_.load(std::memory_order_relaxed); }

    std::string entry_path(const Hash128& key) const;  // in the writable root
    // Whether the writable root holds key's entry as a regular file (a store that failed left none;
    // a directory in its place is none).
    bool has_entry_in_root(const Hash128& key) const;

private:
    void keep_under_size_cap(const std::string& just_stored) const;

    std::string root_;
    std::vector<std::string> read_only_roots_;
    std::atomic<bool> memory_only_{false};
    uint64_t size_cap_ = 0;
    std::atomic<unsigned> stores_{0};  // entries written by this object, for the size cap's checks
};

}  // namespace moejit

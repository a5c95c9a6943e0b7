#include "cache/disk_cache.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string_view>
#include <system_error>
#include <thread>

#include <filesystem>

#include "cache/key.hpp"
#include "cache/prune.hpp"
#include "runtime/environment.hpp"
#include "runtime/log.hpp"

#include <moejit/error.hpp>

namespace moejit {

namespace {

constexpr char kMagic[8] = {'M', 'O', 'E', 'J', 'I', 'T', 'C', 'B'};
// magic 8 + version 4 + reserved 4 + key 16 + payload size 8 + checksum 8
constexpr size_t kHeaderSize = 48;
// No cubin comes near this; a larger file (a sparse or foreign one) is refused before its size is
// allocated, so it cannot exhaust memory or throw std::bad_alloc out of load().
constexpr uint64_t kMaxEntryBytes = uint64_t{256} << 20;

std::string too_large(uint64_t bytes) {
    return "too large (" + std::to_string(bytes) + " bytes; an entry is at most " +
           std::to_string(kMaxEntryBytes >> 20) + " MiB)";
}

std::string errno_text(int error) { return std::strerror(error); }

// "/a/b/" and "/a/b" must name the same root (for de-duplication and for tidy paths).
std::string strip_trailing_slashes(std::string path) {
    while (path.size() > 1 && path.back() == '/') path.pop_back();
    return path;
}

bool ends_with(const std::string& text, const std::string& suffix) {
    return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_hex_digit(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

// Shard directories are exactly two lowercase hex digits; nothing else in a root is ours.
bool is_shard_name(const std::string& name) {
    return name.size() == 2 && is_hex_digit(name[0]) && is_hex_digit(name[1]);
}

std::string shard_dir(const std::string& root, const std::string& hex) { return root + "/" + hex.substr(0, 2); }

void put_u32(std::vector<char>& out, uint32_t value) {
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(value >> (8 * i)));
}
void put_u64(std::vector<char>& out, uint64_t value) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(value >> (8 * i)));
}
uint32_t get_u32(const char* p) {
    uint32_t value = 0;
    for (int i = 0; i < 4; ++i) value |= static_cast<uint32_t>(static_cast<unsigned char>(p[i])) << (8 * i);
    return value;
}
uint64_t get_u64(const char* p) {
    uint64_t value = 0;
    for (int i = 0; i < 8; ++i) value |= static_cast<uint64_t>(static_cast<unsigned char>(p[i])) << (8 * i);
    return value;
}

std::vector<char> encode_entry(const Hash128& key, const CacheEntry& entry) {
    std::vector<char> payload;
    payload.reserve(4 + entry.kernel_name.size() + entry.cubin.size());
    put_u32(payload, static_cast<uint32_t>(entry.kernel_name.size()));
    payload.insert(payload.end(), entry.kernel_name.begin(), entry.kernel_name.end());
    payload.insert(payload.end(), entry.cubin.begin(), entry.cubin.end());

    // Built from the magic rather than inserted into an empty vector: GCC 12 warns (falsely,
    // -Wstringop-overflow) about the insert.
    std::vector<char> file(kMagic, kMagic + sizeof kMagic);
    file.reserve(kHeaderSize + payload.size());
    put_u32(file, kCacheFormatVersion);
    put_u32(file, 0);
    put_u64(file, key.high);
    put_u64(file, key.low);
    put_u64(file, payload.size());
    put_u64(file, checksum64(payload.data(), payload.size()));
    file.insert(file.end(), payload.begin(), payload.end());
    return file;
}

// Checks every field of an entry file against `key`; returns why it is unusable, or "" when it is
// good (then fills `out` if given). Cheap checks come first; the checksum covers the payload.
std::string decode_entry(const std::vector<char>& file, const Hash128& key, CacheEntry* out) {
    if (file.size() < kHeaderSize)
        return "truncated header (" + std::to_string(file.size()) + " bytes)";
    const char* p = file.data();
    if (std::memcmp(p, kMagic, sizeof kMagic) != 0) return "bad magic";
    const uint32_t version = get_u32(p + 8);
    if (version != kCacheFormatVersion)
        return "format version " + std::to_string(version) + ", expected " + std::to_string(kCacheFormatVersion);
    if (get_u32(p + 12) != 0) return "nonzero reserved field";
    const Hash128 stored{get_u64(p + 16), get_u64(p + 24)};
    if (stored != key) return "key mismatch (file holds " + stored.hex() + ")";
    const uint64_t payload_size = get_u64(p + 32);
    if (payload_size != file.size() - kHeaderSize)
        return "payload size " + std::to_string(payload_size) + " but file has " +
               std::to_string(file.size() - kHeaderSize) + " payload bytes";
    const char* payload = p + kHeaderSize;
    if (checksum64(payload, payload_size) != get_u64(p + 40)) return "checksum mismatch";
    if (payload_size < 4) return "payload too short for the name length";
    const uint32_t name_size = get_u32(payload);
    if (name_size > payload_size - 4) return "name length past the end of the payload";
    if (out != nullptr) {
        out->kernel_name.assign(payload + 4, name_size);
        out->cubin.assign(payload + 4 + name_size, payload + payload_size);
    }
    return "";
}

bool write_all(int fd, const char* data, size_t size) {
    while (size > 0) {
        const ssize_t n = ::write(fd, data, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;  // errno is set (ENOSPC, EIO, ...)
        data += n;
        size -= static_cast<size_t>(n);
    }
    return true;
}

// The endings of the names the cache writes after the key's 32 hex digits, and of its temporaries.
constexpr char kEntrySuffix[] = ".cubin";
constexpr char kSourceSuffix[] = ".cu";
constexpr char kLockSuffix[] = ".lock";
constexpr char kTuningRecordSuffix[] = ".config";
constexpr char kTemporarySuffix[] = ".tmp";

}  // namespace

// Reads a whole regular file of at most kMaxEntryBytes (disk_cache.hpp).
std::string read_regular_file(const std::string& path, std::vector<char>& bytes, int* fd_out) {
    // A blocking open of a FIFO waits for a writer that never comes (and a serial device for its
    // carrier): O_NONBLOCK returns at once, and fstat then refuses whatever is not a regular file.
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0 && errno == ENXIO) return "not a regular file";  // a socket, or a device with nothing behind it
    if (fd < 0) return errno == ENOENT ? "missing" : "open: " + errno_text(errno);
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        return "not a regular file";
    }
    if (static_cast<uint64_t>(st.st_size) > kMaxEntryBytes) {
        ::close(fd);
        return too_large(static_cast<uint64_t>(st.st_size));
    }
    bytes.resize(static_cast<size_t>(st.st_size));
    size_t done = 0;
    while (done < bytes.size()) {
        const ssize_t n = ::read(fd, bytes.data() + done, bytes.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            const int error = errno;
            ::close(fd);
            return "read: " + errno_text(error);
        }
        if (n == 0) break;  // shrank under us: the size check in decode_entry catches it
        done += static_cast<size_t>(n);
    }
    bytes.resize(done);
    if (fd_out != nullptr) *fd_out = fd;
    else ::close(fd);
    return "";
}

// A name no other process or thread can pick: pid + thread id + a random number. classify_cache_file
// knows temporaries by exactly this form: keep the two in step.
std::string temporary_file_name(const std::string& final_name) {
    thread_local std::mt19937_64 random(std::random_device{}() ^
                                        static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()));
    const size_t tid = std::hash<std::thread::id>{}(std::this_thread::get_id());
    char suffix[96];
    std::snprintf(suffix, sizeof suffix, ".%ld-%zx-%016llx%s", static_cast<long>(::getpid()), tid,
                  static_cast<unsigned long long>(random()), kTemporarySuffix);
    return final_name + suffix;
}

std::string tuning_record_file_name(const Hash128& key) { return key.hex() + kTuningRecordSuffix; }

namespace {

bool is_digit_run(std::string_view text, size_t min_size, size_t max_size, bool hex) {
    if (text.size() < min_size || text.size() > max_size) return false;
    return std::all_of(text.begin(), text.end(),
                       [&](char c) { return hex ? is_hex_digit(c) : (c >= '0' && c <= '9'); });
}

// A name the cache gives a finished file: "<32 lowercase hex><suffix>", where that suffix belongs.
CacheFileName classify_final_name(const std::string& directory, const std::string& name) {
    if (name.size() <= 32 || !is_digit_run(std::string_view(name).substr(0, 32), 32, 32, true)) return {};
    const std::string suffix = name.substr(32);
    CacheFileKind kind = CacheFileKind::foreign;
    if (directory == kTuningDirectory) {
        if (suffix == kTuningRecordSuffix) kind = CacheFileKind::tuning_record;
    } else if (is_shard_name(directory) && name.compare(0, 2, directory) == 0) {
        if (suffix == kEntrySuffix) kind = CacheFileKind::entry;
        else if (suffix == kSourceSuffix) kind = CacheFileKind::source;
        else if (suffix == kLockSuffix) kind = CacheFileKind::lock;
    }
    if (kind == CacheFileKind::foreign) return {};
    return {kind, name.substr(0, 32)};
}

// The part temporary_file_name() puts between the final name and ".tmp": "<pid>-<thread>-<random>".
bool is_temporary_tag(std::string_view tag) {
    const size_t first = tag.find('-');
    if (first == std::string_view::npos) return false;
    const size_t second = tag.find('-', first + 1);
    if (second == std::string_view::npos) return false;
    return is_digit_run(tag.substr(0, first), 1, 19, false) &&
           is_digit_run(tag.substr(first + 1, second - first - 1), 1, 16, true) &&
           is_digit_run(tag.substr(second + 1), 16, 16, true);
}

}  // namespace

CacheFileName classify_cache_file(const std::string& directory, const std::string& name) {
    CacheFileName final_name = classify_final_name(directory, name);
    if (final_name.kind != CacheFileKind::foreign) return final_name;
    if (!ends_with(name, kTemporarySuffix)) return {};
    const std::string stem = name.substr(0, name.size() - (sizeof kTemporarySuffix - 1));
    const size_t dot = stem.rfind('.');
    if (dot == std::string::npos || !is_temporary_tag(std::string_view(stem).substr(dot + 1))) return {};
    CacheFileName becomes = classify_final_name(directory, stem.substr(0, dot));
    // Lock files are opened in place, never written through a temporary.
    if (becomes.kind != CacheFileKind::entry && becomes.kind != CacheFileKind::source &&
        becomes.kind != CacheFileKind::tuning_record)
        return {};
    becomes.kind = CacheFileKind::temporary;
    return becomes;
}

namespace {

// A failed file system call: which path, and errno (to tell a full or read-only disk from one bad file).
struct IoFailure {
    std::string path;
    int error = 0;
    std::string text() const { return path + ": " + errno_text(error); }
};

// Writes `data` to dir/final_name atomically: temporary file, write, fsync, close, rename.
// Readers see either the old file or the complete new one, never a partial file; concurrent
// writers of one key write identical bytes, so whichever rename lands last is equally right.
std::optional<IoFailure> write_atomically(const std::string& dir, const std::string& final_name, const char* data,
                                          size_t size) {
    const std::string final_path = dir + "/" + final_name;
    const std::string temp_path = dir + "/" + temporary_file_name(final_name);
    const int fd = ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return IoFailure{temp_path, errno};
    // fsync before rename: otherwise a crash can leave the new name pointing at an empty file.
    bool ok = write_all(fd, data, size) && ::fsync(fd) == 0;
    int error = ok ? 0 : errno;
    if (::close(fd) != 0 && ok) {
        ok = false;
        error = errno;
    }
    if (ok && ::rename(temp_path.c_str(), final_path.c_str()) != 0) {
        ok = false;
        error = errno;
    }
    if (!ok) {
        ::unlink(temp_path.c_str());
        return IoFailure{final_path, error != 0 ? error : EIO};  // a write of 0 bytes sets no errno
    }
    return std::nullopt;
}

}  // namespace

std::string write_file_atomically(const std::string& dir, const std::string& final_name, const std::string& data) {
    const std::optional<IoFailure> failure = write_atomically(dir, final_name, data.data(), data.size());
    return failure ? failure->text() : "";
}

namespace {

std::optional<IoFailure> make_directories(const std::string& path) {
    std::error_code ec;
    std::filesystem::create_directories(path, ec);
    if (ec) return IoFailure{path, ec.value()};
    return std::nullopt;
}

// Whether a failed store means the whole writable root is unusable (read-only, full, not ours, or
// not there at all), rather than one entry's path being in the way (a directory at the entry's
// name, a file where its shard directory belongs).
bool failure_concerns_root(const std::string& root, int error) {
    if (error == EROFS || error == EACCES || error == EPERM || error == ENOSPC || error == EDQUOT) return true;
    struct stat st {};
    return ::stat(root.c_str(), &st) != 0 || !S_ISDIR(st.st_mode);
}

// The names in `dir`, sorted. A directory that does not exist has none (an empty cache, or a shard
// a concurrent clear() removed); any other failure is added to `errors`, so that a cache nobody may
// read is not mistaken for an empty one.
std::vector<std::string> directory_names(const std::string& dir, std::vector<std::string>& errors) {
    std::vector<std::string> names;
    DIR* handle = ::opendir(dir.c_str());
    if (handle == nullptr) {
        if (errno != ENOENT) errors.push_back("cannot read directory " + dir + ": " + errno_text(errno));
        return names;
    }
    for (;;) {
        errno = 0;
        const dirent* item = ::readdir(handle);
        if (item == nullptr) {
            if (errno != 0) errors.push_back("cannot read directory " + dir + ": " + errno_text(errno));
            break;
        }
        const std::string name = item->d_name;
        if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(handle);
    std::sort(names.begin(), names.end());
    return names;
}

int64_t mtime_ns(const struct stat& st) {
    return static_cast<int64_t>(st.st_mtime) * 1000000000 + static_cast<int64_t>(st.st_mtim.tv_nsec);
}

bool same_file(const struct stat& a, const struct stat& b) { return a.st_dev == b.st_dev && a.st_ino == b.st_ino; }

// How often lock_key takes a lock file that its holder removed meanwhile before it gives up and goes
// on without: each round means another process finished with that key, so a few always suffice
// unless something removes lock files as fast as they are made.
constexpr int kLockAttempts = 64;

// An exclusive flock(2) on fd, waiting while another holds it. False where the file system or the
// kernel refuses (ENOLCK on some network file systems, EINVAL, ...).
bool lock_exclusively(int fd, const std::string& path) {
    if (::flock(fd, LOCK_EX | LOCK_NB) == 0) return true;
    if (errno != EWOULDBLOCK && errno != EINTR) return false;
    // Worth a line when a process seems to hang: it waits for another's compile of the same kernel.
    log::debug("cache: waiting for another compile of the same kernel (" + path + ")");
    while (::flock(fd, LOCK_EX) != 0)
        if (errno != EINTR) return false;
    return true;
}

}  // namespace

DiskCache::DiskCache(std::string writable_root, std::vector<std::string> read_only_roots, uint64_t size_cap)
    : root_(strip_trailing_slashes(std::move(writable_root))), size_cap_(size_cap) {
    for (std::string& path : read_only_roots) {
        path = strip_trailing_slashes(std::move(path));
        // The writable root is searched anyway; listing it twice would double-count in list().
        if (path.empty() || path == root_) continue;
        if (std::find(read_only_roots_.begin(), read_only_roots_.end(), path) != read_only_roots_.end()) continue;
        read_only_roots_.push_back(std::move(path));
    }
}

DiskCache::DiskCache(const DiskCache& other)
    : root_(other.root_),
      read_only_roots_(other.read_only_roots_),
      memory_only_(other.memory_only()),
      size_cap_(other.size_cap_) {}

DiskCache& DiskCache::operator=(const DiskCache& other) {
    root_ = other.root_;
    read_only_roots_ = other.read_only_roots_;
    memory_only_.store(other.memory_only());
    size_cap_ = other.size_cap_;
    return *this;
}

namespace {

uint64_t size_cap_from_environment() {
    const std::optional<std::string> value = env::lowercase_value("MOEJIT_CACHE_MAX_SIZE");
    if (!value) return DiskCache::kDefaultSizeCap;
    if (*value == "off" || *value == "none") return 0;
    try {
        return parse_cache_size(*value);  // "0" too: no cap
    } catch (const Error&) {
        env::warn_unrecognized("MOEJIT_CACHE_MAX_SIZE", "a size such as 500M or 2G, 0 or off",
                               "the default cap of 4 GiB");
        return DiskCache::kDefaultSizeCap;
    }
}

}  // namespace

DiskCache DiskCache::from_environment() {
    auto env = [](const char* name) -> std::string {
        const char* value = std::getenv(name);
        return value != nullptr ? value : "";
    };
    std::string root = env("MOEJIT_CACHE_DIR");
    if (root.empty()) {
        const std::string xdg = env("XDG_CACHE_HOME");
        // The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
        if (!xdg.empty() && xdg[0] == '/') root = strip_trailing_slashes(xdg) + "/moejit";
    }
    if (root.empty()) {
        const std::string home = env("HOME");
        if (!home.empty()) root = strip_trailing_slashes(home) + "/.cache/moejit";
    }
    // With no root at all the first store fails and the cache degrades to memory-only, warning once.

    std::vector<std::string> read_only;
    const std::string path = env("MOEJIT_CACHE_PATH");
    size_t begin = 0;
    while (begin <= path.size()) {
        size_t end = path.find(':', begin);
        if (end == std::string::npos) end = path.size();
        if (end > begin) read_only.push_back(path.substr(begin, end - begin));
        begin = end + 1;
    }
    return DiskCache(std::move(root), std::move(read_only), size_cap_from_environment());
}

std::string DiskCache::entry_path(const Hash128& key) const {
    const std::string hex = key.hex();
    return shard_dir(root_, hex) + "/" + hex + ".cubin";
}

bool DiskCache::has_entry_in_root(const Hash128& key) const {
    struct stat st {};
    return !root_.empty() && ::stat(entry_path(key).c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

KeyLock::KeyLock(KeyLock&& other) noexcept : fd_(other.fd_), path_(std::move(other.path_)) { other.fd_ = -1; }

KeyLock& KeyLock::operator=(KeyLock&& other) noexcept {
    if (this != &other) {
        release();
        fd_ = other.fd_;
        path_ = std::move(other.path_);
        other.fd_ = -1;
    }
    return *this;
}

KeyLock::~KeyLock() { release(); }

void KeyLock::release() {
    if (fd_ < 0) return;
    // Removed before it is unlocked, so that no lock files pile up beside the entries: a waiter
    // that then gets the removed file's lock sees that the path no longer names it and takes the
    // path anew (DiskCache::lock_key). Only while the path is still our file: a clear() may have
    // removed it meanwhile and another process may hold the file now there.
    struct stat held {}, current {};
    if (::fstat(fd_, &held) == 0 && ::stat(path_.c_str(), &current) == 0 && same_file(held, current))
        ::unlink(path_.c_str());
    ::close(fd_);
    fd_ = -1;
}

KeyLock DiskCache::lock_key(const Hash128& key) const {
    if (root_.empty() || memory_only()) return {};
    const std::string hex = key.hex();
    const std::string dir = shard_dir(root_, hex);
    const std::string path = dir + "/" + hex + kLockSuffix;
    auto without_lock = [&](const std::string& why) {
        log::debug("cache: going on without the lock " + path + ": " + why);
        return KeyLock();
    };
    if (const std::optional<IoFailure> failure = make_directories(dir)) return without_lock(failure->text());
    for (int attempt = 0; attempt < kLockAttempts; ++attempt) {
        // O_NONBLOCK: a FIFO at the name would block the open forever; O_NOFOLLOW: a link there is
        // not ours to create a file through. Both are then refused, and we go on without the lock.
        const int fd = ::open(path.c_str(), O_RDONLY | O_CREAT | O_NONBLOCK | O_NOFOLLOW | O_NOCTTY | O_CLOEXEC, 0644);
        if (fd < 0) return without_lock(errno_text(errno));
        struct stat held {};
        if (::fstat(fd, &held) != 0 || !S_ISREG(held.st_mode)) {
            ::close(fd);
            return without_lock("not a regular file");
        }
        if (!lock_exclusively(fd, path)) {
            const int error = errno;
            ::close(fd);
            return without_lock("flock: " + errno_text(error));
        }
        struct stat current {};
        if (::stat(path.c_str(), &current) == 0 && same_file(held, current)) return KeyLock(fd, path);
        ::close(fd);  // its holder removed that file as it let go: whoever holds the path's file is next
    }
    return without_lock("lock files removed as fast as they were made");
}

std::optional<CacheEntry> DiskCache::load(const Hash128& key) const {
    const std::string hex = key.hex();
    std::vector<std::string> roots = read_only_roots_;
    roots.push_back(root_);
    std::vector<char> bytes;
    for (const std::string& root : roots) {
        if (root.empty()) continue;
        const std::string path = shard_dir(root, hex) + "/" + hex + ".cubin";
        int fd = -1;
        std::string problem = read_regular_file(path, bytes, &fd);
        CacheEntry entry;
        if (problem.empty()) problem = decode_entry(bytes, key, &entry);
        if (problem.empty()) {
            // Refresh the mtime so a size-capped prune evicts least-recently-used entries. Best
            // effort: a read-only root or someone else's file simply keeps its old time.
            ::futimens(fd, nullptr);
            ::close(fd);
            return entry;
        }
        if (fd >= 0) ::close(fd);
        if (problem != "missing") log::debug("cache: ignoring " + path + ": " + problem);
    }
    return std::nullopt;
}

void DiskCache::store(const Hash128& key, const CacheEntry& entry, const std::string& source) {
    if (memory_only()) return;
    if (root_.empty()) {
        memory_only_.store(true);
        log::warn_once("cache-unwritable",
                       std::string("cannot write the kernel cache: ") + kNoCacheDirectory + "; caching in memory only");
        return;
    }
    const std::string hex = key.hex();
    const std::string dir = shard_dir(root_, hex);
    const std::vector<char> file = encode_entry(key, entry);

    std::optional<IoFailure> failure = make_directories(dir);
    if (!failure) {
        failure = write_atomically(dir, hex + ".cubin", file.data(), file.size());
        // A concurrent clear() may have removed the shard directory between mkdir and open.
        if (failure && !make_directories(dir))
            failure = write_atomically(dir, hex + ".cubin", file.data(), file.size());
    }
    if (failure && failure_concerns_root(root_, failure->error)) {
        memory_only_.store(true);
        log::warn_once("cache-unwritable",
                       "cannot write the kernel cache: " + failure->text() + "; caching in memory only");
        return;
    }
    if (failure) {  // this entry only: the others still go to disk
        log::warn_once("cache-entry " + dir + "/" + hex + ".cubin",
                       "cannot write a kernel cache entry: " + failure->text() +
                           "; that kernel is cached in memory only (remove what is in the way)");
        return;
    }
    // The source is only for people inspecting the cache: a failure here loses nothing.
    const std::optional<IoFailure> source_failure = write_atomically(dir, hex + ".cu", source.data(), source.size());
    if (source_failure) log::debug("cache: could not write source " + source_failure->text());
    if (size_cap_ > 0 && stores_.fetch_add(1, std::memory_order_relaxed) % kStoresPerPruneCheck == 0)
        keep_under_size_cap(dir + "/" + hex + ".cubin");
}

void DiskCache::keep_under_size_cap(const std::string& just_stored) const {
    // The entry just written stays, even where the clock's granularity makes it look no newer.
    const PruneResult pruned = prune(*this, size_cap_, just_stored);
    if (pruned.removed > 0)
        log::info("cache: removed " + std::to_string(pruned.removed) + " least recently used entries (" +
                  std::to_string(pruned.removed_bytes) + " bytes) to stay under the " +
                  std::to_string(size_cap_) + "-byte cap (MOEJIT_CACHE_MAX_SIZE)");
    if (pruned.removed_temporaries > 0)
        log::info("cache: removed " + std::to_string(pruned.removed_temporaries) +
                  " temporary files that crashed stores left behind (" +
                  std::to_string(pruned.removed_temporary_bytes) + " bytes)");
    // A cap that cannot be kept (an entry that cannot be removed) is worth one warning, not silence.
    if (!pruned.errors.empty())
        log::warn_once("cache-size-cap", "cannot keep the kernel cache under its size cap (MOEJIT_CACHE_MAX_SIZE): " +
                                             pruned.errors.front());
}

CacheListing DiskCache::list(bool verify, CacheRoots roots) const {
    CacheListing listing;
    // stat()s path; false (and an error unless it is gone meanwhile) where it cannot.
    auto stat_or_note = [&](const std::string& path, struct stat& st) {
        if (::stat(path.c_str(), &st) == 0) return true;
        if (errno != ENOENT) listing.errors.push_back("cannot stat " + path + ": " + errno_text(errno));
        return false;
    };
    // A temporary file of the writable root; one gone meanwhile was renamed into place.
    auto add_temporary = [&](const std::string& path) {
        struct stat st {};
        if (!stat_or_note(path, st)) return;
        if (!S_ISREG(st.st_mode)) return;  // no store writes anything else
        listing.temporaries.push_back({path, static_cast<uint64_t>(st.st_size), mtime_ns(st)});
    };
    auto add_tuning_record = [&](const std::string& path, const std::string& hex, bool read_only) {
        struct stat st {};
        if (!stat_or_note(path, st)) return;
        if (!S_ISREG(st.st_mode)) return;  // tuned_config reads regular files only
        listing.tuning_records.push_back(
            {path, hex, static_cast<uint64_t>(st.st_size), static_cast<int64_t>(st.st_mtime), read_only});
    };
    auto scan = [&](const std::string& root, bool read_only) {
        if (root.empty()) return;
        const std::string tuning = root + "/" + kTuningDirectory;
        if (::access(tuning.c_str(), F_OK) == 0) {
            for (const std::string& name : directory_names(tuning, listing.errors)) {
                const CacheFileName file = classify_cache_file(kTuningDirectory, name);
                if (file.kind == CacheFileKind::tuning_record)
                    add_tuning_record(tuning + "/" + name, file.key_hex, read_only);
                else if (file.kind == CacheFileKind::temporary && !read_only) add_temporary(tuning + "/" + name);
            }
        }
        for (const std::string& shard : directory_names(root, listing.errors)) {
            if (!is_shard_name(shard)) continue;
            const std::string dir = root + "/" + shard;
            for (const std::string& name : directory_names(dir, listing.errors)) {
                const CacheFileName file = classify_cache_file(shard, name);
                if (file.kind == CacheFileKind::temporary && !read_only) add_temporary(dir + "/" + name);
                if (file.kind != CacheFileKind::entry) continue;
                CacheEntryInfo info;
                info.path = dir + "/" + name;
                info.key_hex = file.key_hex;
                info.read_only_root = read_only;
                struct stat st {};
                if (!stat_or_note(info.path, st)) continue;
                info.bytes = static_cast<uint64_t>(st.st_size);
                info.mtime = static_cast<int64_t>(st.st_mtime);
                info.mtime_ns = mtime_ns(st);
                if (!S_ISREG(st.st_mode)) {
                    info.valid = false;
                    info.problem = "not a regular file";
                } else if (info.bytes > kMaxEntryBytes) {
                    info.valid = false;
                    info.problem = too_large(info.bytes);
                } else if (verify) {
                    Hash128 key;
                    Hash128::from_hex(info.key_hex, key);
                    std::vector<char> bytes;
                    info.problem = read_regular_file(info.path, bytes);
                    if (info.problem.empty()) info.problem = decode_entry(bytes, key, nullptr);
                    info.valid = info.problem.empty();
                }
                listing.entries.push_back(std::move(info));
            }
        }
    };
    if (roots == CacheRoots::all)
        for (const std::string& root : read_only_roots_) scan(root, true);
    scan(root_, false);
    return listing;
}

ClearResult DiskCache::clear() {
    ClearResult result;
    if (root_.empty()) return result;
    // Removes <root>/<directory>/<name> if the cache wrote it; returns what it removed (foreign: nothing).
    auto remove_if_ours = [&](const std::string& directory, const std::string& name) {
        const CacheFileKind kind = classify_cache_file(directory, name).kind;
        if (kind == CacheFileKind::foreign) return kind;
        const std::string path = root_ + "/" + directory + "/" + name;
        if (::unlink(path.c_str()) == 0) return kind;
        if (errno != ENOENT)  // ENOENT: a concurrent clear() was first
            result.errors.push_back("cannot remove " + path + ": " + errno_text(errno));
        return CacheFileKind::foreign;
    };
    const std::string tuning = root_ + "/" + kTuningDirectory;
    if (::access(tuning.c_str(), F_OK) == 0) {
        for (const std::string& name : directory_names(tuning, result.errors))
            if (remove_if_ours(kTuningDirectory, name) == CacheFileKind::tuning_record) ++result.removed_tuning_records;
        ::rmdir(tuning.c_str());  // fails harmlessly when something is left in it
    }
    for (const std::string& shard : directory_names(root_, result.errors)) {
        if (!is_shard_name(shard)) continue;  // leave anything that is not ours alone
        const std::string dir = root_ + "/" + shard;
        for (const std::string& name : directory_names(dir, result.errors))
            if (remove_if_ours(shard, name) == CacheFileKind::entry) ++result.removed;
        // Fails harmlessly when something is left in it (foreign files, or what could not be removed).
        ::rmdir(dir.c_str());
    }
    return result;
}

}  // namespace moejit

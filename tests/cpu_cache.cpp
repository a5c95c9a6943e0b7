// Cache key and disk cache: keys, round trips, corruption, FIFOs and other non-files at entry
// paths, oversized entries, directories that cannot be read and entries that cannot be removed,
// pruning to a size and of abandoned temporary files, read-only roots, an unwritable root,
// concurrent writers in separate processes, key locks, files in the cache's directories that are
// not the cache's, the environment variables, and tuning records (stored in the cache directory).
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <moejit/error.hpp>
#include <moejit/tuning.hpp>

#include "cache/disk_cache.hpp"
#include "cache/key.hpp"
#include "cache/prune.hpp"
#include "codegen/config.hpp"
#include "moe/tuning.hpp"
#include "runtime/device.hpp"
#include "tests/catch.hpp"
#include "tests/support/env_var.hpp"
#include "tests/support/errors.hpp"
#include "tests/support/temp_dir.hpp"

using namespace moejit;
using namespace moejit::testing;
namespace fs = std::filesystem;

namespace {

std::vector<char> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(out.good());
}

CacheEntry make_entry(const std::string& name, size_t size, unsigned seed) {
    CacheEntry entry;
    entry.kernel_name = name;
    entry.cubin.resize(size);
    unsigned state = seed * 2654435761u + 1;
    for (char& c : entry.cubin) {
        state = state * 1664525u + 1013904223u;
        c = static_cast<char>(state >> 24);
    }
    return entry;
}

Hash128 key_of(const std::string& text) {
    KeyInputs inputs;
    inputs.source = text;
    inputs.arch = "sm_90a";
    return make_key(inputs);
}

KeyInputs base_inputs() {
    KeyInputs inputs;
    inputs.source = "#include \"kernels/sm90_fwd.cuh\"\ntemplate __global__ void k<Cfg>();\n";
    inputs.headers = {{"kernels/sm90_fwd.cuh", "// kernel\n"}, {"common/types.cuh", "// types\n"}};
    inputs.options = {"-std=c++17", "-arch=sm_90a", "--use_fast_math"};
    inputs.arch = "sm_90a";
    inputs.nvrtc_major = 13;
    inputs.nvrtc_minor = 0;
    return inputs;
}

size_t count_files(const std::string& dir, const std::string& suffix) {
    size_t count = 0;
    for (const auto& item : fs::recursive_directory_iterator(dir)) {
        const std::string name = item.path().filename().string();
        if (name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
            ++count;
    }
    return count;
}

// Puts something that is not a regular file at `path`: kind is "fifo", "directory" or "socket".
void make_special_file(const std::string& kind, const std::string& path) {
    if (kind == "fifo") {
        REQUIRE(::mkfifo(path.c_str(), 0644) == 0);
    } else if (kind == "directory") {
        REQUIRE(fs::create_directory(path));
    } else {
        const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        REQUIRE(fd >= 0);
        sockaddr_un address{};
        address.sun_family = AF_UNIX;
        REQUIRE(path.size() < sizeof address.sun_path);
        std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
        REQUIRE(::bind(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) == 0);
        ::close(fd);  // the socket file stays, with nobody listening
    }
}

// Runs `body` in a forked child that SIGALRM kills after `seconds`. True if it returned true in time:
// code under test that blocks then fails its test instead of stalling the suite.
bool finishes_in_time(const std::function<bool()>& body, unsigned seconds) {
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        ::alarm(seconds);
        ::_exit(body() ? 0 : 1);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    INFO("child " << (WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                          : "exited " + std::to_string(WEXITSTATUS(status))));
    CHECK_FALSE(WIFSIGNALED(status));
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

// Keys whose entries land in `count` different shard directories.
std::vector<Hash128> keys_in_distinct_shards(size_t count) {
    std::vector<Hash128> keys;
    std::vector<std::string> shards;
    for (int i = 0; keys.size() < count; ++i) {
        const Hash128 key = key_of("shard " + std::to_string(i));
        const std::string shard = key.hex().substr(0, 2);
        if (std::find(shards.begin(), shards.end(), shard) != shards.end()) continue;
        shards.push_back(shard);
        keys.push_back(key);
    }
    return keys;
}

bool contains(const std::vector<std::string>& lines, const std::string& line) {
    return std::find(lines.begin(), lines.end(), line) != lines.end();
}

// Runs the hidden test case `tag` in a fresh copy of this test program, with MOEJIT_TEST_DIR = dir,
// and returns its stderr. Warnings are printed once per process, and a fork would inherit this
// process's record of them: hence the exec.
std::string stderr_of_hidden_test(const std::string& tag, const std::string& dir) {
    const std::string log_path = dir + "/stderr.txt";
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        const int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        const int null = ::open("/dev/null", O_WRONLY);
        if (fd < 0 || null < 0 || ::dup2(fd, 2) < 0 || ::dup2(null, 1) < 0) ::_exit(2);
        ::setenv("MOEJIT_TEST_DIR", dir.c_str(), 1);
        ::execl("/proc/self/exe", "test_cpu", tag.c_str(), static_cast<char*>(nullptr));
        ::_exit(3);
    }
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    const std::vector<char> bytes = read_bytes(log_path);
    const std::string log(bytes.begin(), bytes.end());
    INFO("child stderr: " << log);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
    return log;
}

// Sets a file's access and modification times to `seconds` since the epoch (entries' last use,
// temporary files' last write).
void set_file_time(const std::string& path, time_t seconds) {
    const struct timespec times[2] = {{seconds, 0}, {seconds, 0}};
    REQUIRE(::utimensat(AT_FDCWD, path.c_str(), times, 0) == 0);
}

}  // namespace

TEST_CASE("cache key changes with every input and nothing else", "[cache]") {
    const Hash128 base = make_key(base_inputs());
    CHECK(base.hex().size() == 32);

    SECTION("equal inputs built separately give the same key") {
        CHECK(make_key(base_inputs()) == base);
    }
    SECTION("option order, whitespace, duplicates and empty options do not matter") {
        KeyInputs inputs = base_inputs();
        inputs.options = {" --use_fast_math", "", "-arch=sm_90a\t", "-std=c++17", "-std=c++17 ", "  "};
        CHECK(make_key(inputs) == base);
    }
    SECTION("header order does not matter") {
        KeyInputs inputs = base_inputs();
        std::swap(inputs.headers[0], inputs.headers[1]);
        CHECK(make_key(inputs) == base);
    }
    SECTION("one byte of the source") {
        KeyInputs inputs = base_inputs();
        inputs.source[10] ^= 1;
        CHECK(make_key(inputs) != base);
    }
    SECTION("one byte of an embedded header") {
        KeyInputs inputs = base_inputs();
        inputs.headers[1].second[3] ^= 1;
        CHECK(make_key(inputs) != base);
    }
    SECTION("a header name") {
        KeyInputs inputs = base_inputs();
        inputs.headers[1].first = "common/types2.cuh";
        CHECK(make_key(inputs) != base);
    }
    SECTION("an added header") {
        KeyInputs inputs = base_inputs();
        inputs.headers.push_back({"extra.cuh", ""});
        CHECK(make_key(inputs) != base);
    }
    SECTION("an added option") {
        KeyInputs inputs = base_inputs();
        inputs.options.push_back("-lineinfo");
        CHECK(make_key(inputs) != base);
    }
    SECTION("arch sm_90 vs sm_90a") {
        KeyInputs inputs = base_inputs();
        inputs.arch = "sm_90";
        CHECK(make_key(inputs) != base);
    }
    SECTION("nvrtc version") {
        KeyInputs minor = base_inputs();
        minor.nvrtc_minor = 1;
        CHECK(make_key(minor) != base);
        KeyInputs major = base_inputs();
        major.nvrtc_major = 12;
        CHECK(make_key(major) != base);
    }
    SECTION("moving bytes between source and a header changes the key (fields are delimited)") {
        KeyInputs a = base_inputs(), b = base_inputs();
        a.source += "x";
        b.headers[0].second = "x" + b.headers[0].second;
        CHECK(make_key(a) != make_key(b));
    }
}

TEST_CASE("normalize_options trims, drops empties, sorts and dedupes", "[cache]") {
    const std::vector<std::string> normalized = normalize_options({" -b ", "", "-a", "\t-b", "  ", "-c\n", "-a"});
    CHECK(normalized == std::vector<std::string>{"-a", "-b", "-c"});
    CHECK(normalize_options({}).empty());
}

TEST_CASE("disk cache: store then load round trips", "[cache]") {
    TempDir tmp;
    DiskCache cache(tmp / "root", {});
    const Hash128 key = key_of("round trip");
    const CacheEntry entry = make_entry("_Z6kernelILi128EEvv", 100000, 1);

    CHECK_FALSE(cache.load(key).has_value());
    cache.store(key, entry, "// the source\n");
    CHECK_FALSE(cache.memory_only());

    const std::string hex = key.hex();
    CHECK(cache.entry_path(key) == tmp.path + "/root/" + hex.substr(0, 2) + "/" + hex + ".cubin");
    REQUIRE(fs::is_regular_file(cache.entry_path(key)));
    CHECK(fs::file_size(cache.entry_path(key)) == 48 + 4 + entry.kernel_name.size() + entry.cubin.size());
    const std::vector<char> source = read_bytes(tmp.path + "/root/" + hex.substr(0, 2) + "/" + hex + ".cu");
    CHECK(std::string(source.begin(), source.end()) == "// the source\n");

    const std::optional<CacheEntry> loaded = cache.load(key);
    REQUIRE(loaded.has_value());
    CHECK(loaded->kernel_name == entry.kernel_name);
    CHECK(loaded->cubin == entry.cubin);

    // Another key is a miss, even though the directory has entries.
    CHECK_FALSE(cache.load(key_of("other")).has_value());

    // Empty name and empty cubin are representable.
    const Hash128 empty_key = key_of("empty");
    cache.store(empty_key, CacheEntry{}, "");
    const std::optional<CacheEntry> empty = cache.load(empty_key);
    REQUIRE(empty.has_value());
    CHECK(empty->kernel_name.empty());
    CHECK(empty->cubin.empty());

    // A hit refreshes the mtime (LRU order for pruning).
    set_file_time(cache.entry_path(key), 1000);
    REQUIRE(cache.load(key).has_value());
    struct stat st {};
    REQUIRE(::stat(cache.entry_path(key).c_str(), &st) == 0);
    CHECK(st.st_mtime > 1000000000);
}

TEST_CASE("disk cache: corrupt entries are misses and are replaced by the next store", "[cache]") {
    TempDir tmp;
    DiskCache cache(tmp / "root", {});
    const Hash128 key = key_of("corruption");
    const CacheEntry entry = make_entry("kernel_name", 4096, 2);
    cache.store(key, entry, "src");
    const std::string path = cache.entry_path(key);
    const std::vector<char> good = read_bytes(path);
    REQUIRE(good.size() == 48 + 4 + 11 + 4096);
    REQUIRE(cache.load(key).has_value());

    SECTION("truncated") {
        for (size_t length : {size_t{0}, size_t{7}, size_t{20}, size_t{47}, size_t{48}, size_t{50}, size_t{60},
                              good.size() / 2, good.size() - 1}) {
            INFO("truncated to " << length << " bytes");
            write_bytes(path, std::vector<char>(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(length)));
            CHECK_FALSE(cache.load(key).has_value());
        }
        // Trailing garbage is wrong too.
        std::vector<char> longer = good;
        longer.push_back('x');
        write_bytes(path, longer);
        CHECK_FALSE(cache.load(key).has_value());
    }
    SECTION("a flipped bit") {
        // magic, version, reserved, key high, key low, payload size, checksum, name length, name,
        // first and last cubin byte.
        for (size_t offset : {size_t{0}, size_t{7}, size_t{8}, size_t{12}, size_t{16}, size_t{31}, size_t{32},
                              size_t{40}, size_t{48}, size_t{52}, size_t{63}, good.size() - 1}) {
            for (int bit : {0, 7}) {
                INFO("bit " << bit << " of byte " << offset);
                std::vector<char> bad = good;
                bad[offset] = static_cast<char>(bad[offset] ^ (1 << bit));
                write_bytes(path, bad);
                CHECK_FALSE(cache.load(key).has_value());
            }
        }
    }
    SECTION("an entry of another key under this key's name") {
        const Hash128 other = key_of("other key");
        cache.store(other, entry, "src");
        fs::copy_file(cache.entry_path(other), path, fs::copy_options::overwrite_existing);
        CHECK_FALSE(cache.load(key).has_value());
    }

    // After any miss the caller recompiles and stores: the entry is whole again.
    cache.store(key, entry, "src");
    CHECK_FALSE(cache.memory_only());
    CHECK(read_bytes(path) == good);
    const std::optional<CacheEntry> loaded = cache.load(key);
    REQUIRE(loaded.has_value());
    CHECK(loaded->kernel_name == entry.kernel_name);
    CHECK(loaded->cubin == entry.cubin);
    CHECK(count_files(tmp.path, ".tmp") == 0);
}

TEST_CASE("disk cache: a FIFO, directory or socket at an entry path is a miss, never a hang", "[cache]") {
    TempDir tmp;
    const Hash128 key = key_of("special file");
    const CacheEntry entry = make_entry("whole_entry", 256, 10);
    DiskCache(tmp / "rw", {}).store(key, entry, "src");
    // The read-only root is searched first: its bad copy must fall through to the whole entry.
    const DiskCache cache(tmp / "rw", {tmp / "ro"});
    const DiskCache read_only(tmp / "ro", {});
    const std::string bad_path = read_only.entry_path(key);
    fs::create_directories(fs::path(bad_path).parent_path());

    for (const std::string kind : {"fifo", "directory", "socket"}) {
        INFO(kind << " at " << bad_path);
        make_special_file(kind, bad_path);
        REQUIRE(finishes_in_time(
            [&] {
                const std::optional<CacheEntry> loaded = cache.load(key);
                return loaded && loaded->kernel_name == "whole_entry" && !read_only.load(key) &&
                       read_only.list(true).entries.size() == 1;
            },
            10));
        // It did not block (else REQUIRE stopped here): safe to look closer in this process.
        CHECK_FALSE(read_only.load(key).has_value());
        for (bool verify : {false, true}) {
            const std::vector<CacheEntryInfo> infos = read_only.list(verify).entries;
            REQUIRE(infos.size() == 1);
            CHECK(infos[0].path == bad_path);
            CHECK_FALSE(infos[0].valid);
            CHECK(infos[0].problem == "not a regular file");
        }
        fs::remove_all(bad_path);
    }

    // In the writable root a FIFO or socket is a miss, and the next store replaces it.
    const DiskCache writable(tmp / "rw", {});
    for (const std::string kind : {"fifo", "socket"}) {
        INFO(kind << " at " << writable.entry_path(key));
        fs::remove(writable.entry_path(key));
        make_special_file(kind, writable.entry_path(key));
        REQUIRE(finishes_in_time([&] { return !DiskCache(tmp / "rw", {}).load(key); }, 10));
        DiskCache fresh(tmp / "rw", {});
        fresh.store(key, entry, "src");
        CHECK_FALSE(fresh.memory_only());
        CHECK(fs::is_regular_file(writable.entry_path(key)));
        const std::optional<CacheEntry> loaded = fresh.load(key);
        REQUIRE(loaded.has_value());
        CHECK(loaded->cubin == entry.cubin);
    }
}

TEST_CASE("disk cache: an oversized (sparse) entry is a miss, refused before it is allocated", "[cache]") {
    TempDir tmp;
    DiskCache cache(tmp / "root", {});
    const Hash128 key = key_of("oversized");
    const CacheEntry entry = make_entry("kernel", 1024, 11);
    cache.store(key, entry, "src");
    const std::string path = cache.entry_path(key);

    // A whole entry with a hole after it: the header is right, only the size is wrong. 200 GiB
    // would throw std::bad_alloc if it were allocated; just past the 256 MiB cap is refused too.
    const std::vector<char> good = read_bytes(path);
    for (const uint64_t size : {uint64_t{200} << 30, (uint64_t{256} << 20) + 1}) {
        INFO("sparse entry of " << size << " bytes");
        write_bytes(path, good);
        REQUIRE(::truncate(path.c_str(), static_cast<off_t>(size)) == 0);
        REQUIRE(fs::file_size(path) == size);

        std::optional<CacheEntry> loaded;
        CHECK_NOTHROW(loaded = cache.load(key));
        CHECK_FALSE(loaded.has_value());
        for (bool verify : {false, true}) {
            std::vector<CacheEntryInfo> infos;
            CHECK_NOTHROW(infos = cache.list(verify).entries);
            REQUIRE(infos.size() == 1);
            CHECK(infos[0].bytes == size);
            CHECK_FALSE(infos[0].valid);
            CHECK(infos[0].problem.find("too large (" + std::to_string(size) + " bytes") == 0);
        }
    }

    // The next store replaces it with the whole entry.
    cache.store(key, entry, "src");
    CHECK(read_bytes(path) == good);
    const std::optional<CacheEntry> loaded = cache.load(key);
    REQUIRE(loaded.has_value());
    CHECK(loaded->cubin == entry.cubin);
}

TEST_CASE("disk cache: list(verify) reports corrupt entries and clear() removes ours only", "[cache]") {
    TempDir tmp;
    DiskCache cache(tmp / "root", {});
    const Hash128 keys[3] = {key_of("a"), key_of("b"), key_of("c")};
    for (int i = 0; i < 3; ++i) cache.store(keys[i], make_entry("k" + std::to_string(i), 1000 + 10 * i, i), "src");

    // Corrupt the payload of the second entry.
    const std::string bad_path = cache.entry_path(keys[1]);
    std::vector<char> bytes = read_bytes(bad_path);
    bytes[bytes.size() - 5] ^= 0x10;
    write_bytes(bad_path, bytes);

    // Files that are not entries: a leftover temp file and a lock file (ours), and a foreign file.
    const std::string shard = fs::path(cache.entry_path(keys[0])).parent_path().string();
    write_bytes(shard + "/" + keys[0].hex() + ".cubin.123-abc-0000000000000000.tmp", {'x'});
    write_bytes(shard + "/" + keys[0].hex() + ".lock", {});
    write_bytes(tmp / "root/tuning.json", {'{', '}'});

    const CacheListing unverified = cache.list(false);
    CHECK(unverified.entries.size() == 3);
    CHECK(unverified.errors.empty());

    const std::vector<CacheEntryInfo> infos = cache.list(true).entries;
    REQUIRE(infos.size() == 3);
    int invalid = 0;
    for (const CacheEntryInfo& info : infos) {
        Hash128 key;
        REQUIRE(Hash128::from_hex(info.key_hex, key));
        CHECK(info.path == cache.entry_path(key));
        CHECK(info.bytes == fs::file_size(info.path));
        CHECK(info.mtime > 1000000000);
        CHECK_FALSE(info.read_only_root);
        if (key == keys[1]) {
            ++invalid;
            CHECK_FALSE(info.valid);
            CHECK(info.problem.find("checksum") != std::string::npos);
        } else {
            CHECK(info.valid);
            CHECK(info.problem.empty());
        }
    }
    CHECK(invalid == 1);

    const ClearResult cleared = cache.clear();
    CHECK(cleared.removed == 3);
    CHECK(cleared.errors.empty());
    CHECK(cache.list(true).entries.empty());
    CHECK(count_files(tmp.path, ".cu") == 0);
    CHECK(count_files(tmp.path, ".tmp") == 0);
    CHECK(count_files(tmp.path, ".lock") == 0);
    CHECK(fs::exists(tmp / "root/tuning.json"));
    for (const Hash128& key : keys) CHECK_FALSE(cache.load(key).has_value());
    CHECK(cache.clear().removed == 0);

    // The cache still works after clear().
    cache.store(keys[0], make_entry("again", 10, 9), "src");
    CHECK(cache.load(keys[0]).has_value());
}

TEST_CASE("disk cache: list() and clear() name the directories they cannot read and files they cannot remove",
          "[cache]") {
    TempDir tmp;
    const auto shard_of = [](const DiskCache& cache, const Hash128& key) {
        return fs::path(cache.entry_path(key)).parent_path().string();
    };
    SECTION("a missing root is an empty cache, not an error") {
        DiskCache cache(tmp / "missing", {});
        const CacheListing listing = cache.list(true);
        CHECK(listing.entries.empty());
        CHECK(listing.errors.empty());
        const ClearResult cleared = cache.clear();
        CHECK(cleared.removed == 0);
        CHECK(cleared.errors.empty());
    }
    SECTION("a root under a regular file (ENOTDIR, which holds for root too)") {
        write_bytes(tmp / "file", {'x'});
        DiskCache cache(tmp / "file/cache", {tmp / "file"});
        const CacheListing listing = cache.list(true);
        CHECK(listing.entries.empty());
        const std::string not_a_directory = std::strerror(ENOTDIR);
        CHECK(listing.errors == std::vector<std::string>{"cannot read directory " + (tmp / "file") + ": " +
                                                             not_a_directory,
                                                         "cannot read directory " + (tmp / "file/cache") + ": " +
                                                             not_a_directory});
        const ClearResult cleared = cache.clear();  // the writable root only
        CHECK(cleared.removed == 0);
        CHECK(cleared.errors == std::vector<std::string>{listing.errors[1]});
    }
    SECTION("a shard that is a regular file, and a directory at an entry path") {
        DiskCache cache(tmp / "root", {});
        const std::vector<Hash128> keys = keys_in_distinct_shards(3);
        for (const Hash128& key : keys) cache.store(key, make_entry("k", 64, 12), "src");
        const std::string file_shard = shard_of(cache, keys[0]);
        fs::remove_all(file_shard);
        write_bytes(file_shard, {'x'});
        const std::string directory_entry = cache.entry_path(keys[1]);
        fs::remove(directory_entry);
        fs::create_directories(directory_entry + "/inside");

        const CacheListing listing = cache.list(true);
        CHECK(listing.errors ==
              std::vector<std::string>{"cannot read directory " + file_shard + ": " + std::strerror(ENOTDIR)});
        REQUIRE(listing.entries.size() == 2);  // keys[1] (invalid) and keys[2], in shard order
        for (const CacheEntryInfo& info : listing.entries)
            CHECK(info.valid == (info.path == cache.entry_path(keys[2])));

        const ClearResult cleared = cache.clear();
        CHECK(cleared.removed == 1);
        CHECK(cleared.errors.size() == 2);
        CHECK(contains(cleared.errors, listing.errors[0]));
        CHECK(contains(cleared.errors, "cannot remove " + directory_entry + ": " + std::strerror(EISDIR)));
        CHECK(fs::is_regular_file(file_shard));
        CHECK(fs::is_directory(directory_entry + "/inside"));
        CHECK_FALSE(fs::exists(cache.entry_path(keys[2])));
    }
    SECTION("permission denied") {
        if (::geteuid() == 0) {
            WARN("running as root, whom chmod cannot deny: the permission case is skipped");
            return;
        }
        DiskCache cache(tmp / "root", {});
        const std::vector<Hash128> keys = keys_in_distinct_shards(2);
        for (const Hash128& key : keys) cache.store(key, make_entry("k", 64, 13), "src");
        const std::string unreadable = shard_of(cache, keys[0]), unwritable = shard_of(cache, keys[1]);
        const std::string denied = std::strerror(EACCES);
        {
            const ScopedMode no_access(unreadable, 0), read_only(unwritable, 0555);
            const CacheListing listing = cache.list(true);
            CHECK(listing.errors == std::vector<std::string>{"cannot read directory " + unreadable + ": " + denied});
            REQUIRE(listing.entries.size() == 1);
            CHECK(listing.entries[0].path == cache.entry_path(keys[1]));

            const ClearResult cleared = cache.clear();
            CHECK(cleared.removed == 0);
            CHECK(contains(cleared.errors, listing.errors[0]));
            CHECK(contains(cleared.errors, "cannot remove " + cache.entry_path(keys[1]) + ": " + denied));
        }
        for (const Hash128& key : keys) CHECK(cache.load(key).has_value());  // nothing was removed
    }
}

TEST_CASE("disk cache: lock_key makes a second taker wait for the first, and removes its file", "[cache]") {
    TempDir tmp;
    const std::string root = tmp / "root";  // not made yet: lock_key makes the shard directory
    DiskCache first(root, {}), second(root, {});
    const Hash128 key = key_of("locked");
    const std::string lock_path = root + "/" + key.hex().substr(0, 2) + "/" + key.hex() + ".lock";

    KeyLock held = first.lock_key(key);
    REQUIRE(held.held());
    CHECK(fs::is_regular_file(lock_path));
    const mode_t umask = ::umask(0);
    ::umask(umask);
    struct stat st {};
    REQUIRE(::stat(lock_path.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == (0644 & ~umask));

    std::atomic<bool> taken{false};
    std::optional<CacheEntry> seen_after_wait;
    std::thread waiter([&] {
        KeyLock lock = second.lock_key(key);
        taken = lock.held();
        seen_after_wait = second.load(key);
    });
    // Still waiting after a while: the lock is exclusive between DiskCache objects (and processes).
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK_FALSE(taken);
    first.store(key, make_entry("stored while locked", 64, 80), "src");
    held.release();
    waiter.join();
    CHECK(taken);
    REQUIRE(seen_after_wait.has_value());
    CHECK(seen_after_wait->kernel_name == "stored while locked");
    CHECK_FALSE(fs::exists(lock_path));  // each holder removes it as it lets go

    // Taken again at once now that nobody holds it, by either cache; moving the guard keeps it held.
    KeyLock again = second.lock_key(key);
    CHECK(again.held());
    KeyLock moved = std::move(again);
    CHECK(moved.held());
    CHECK_FALSE(again.held());
    moved = KeyLock();
    CHECK_FALSE(fs::exists(lock_path));
    CHECK(first.lock_key(key).held());
}

TEST_CASE("disk cache: where lock_key cannot lock it returns a guard that holds nothing, at once", "[cache]") {
    TempDir tmp;
    const Hash128 key = key_of("unlockable");
    SECTION("no writable root") { CHECK_FALSE(DiskCache("", {}).lock_key(key).held()); }
    SECTION("a root under a regular file") {
        write_bytes(tmp / "file", {'x'});
        DiskCache cache(tmp / "file/root", {});
        CHECK_FALSE(cache.lock_key(key).held());
        CHECK(read_bytes(tmp / "file") == std::vector<char>{'x'});
    }
    SECTION("a memory-only cache") {
        write_bytes(tmp / "file", {'x'});
        DiskCache cache(tmp / "file/root", {});
        cache.store(key, make_entry("k", 8, 81), "src");
        REQUIRE(cache.memory_only());
        CHECK_FALSE(cache.lock_key(key).held());
    }
    SECTION("a FIFO, a directory or a link at the lock's path") {
        DiskCache cache(tmp / "root", {});
        const std::string shard = tmp / ("root/" + key.hex().substr(0, 2));
        const std::string lock_path = shard + "/" + key.hex() + ".lock";
        fs::create_directories(shard);
        for (const std::string kind : {"fifo", "directory", "link"}) {
            INFO(kind);
            if (kind == "link") fs::create_symlink(tmp / "elsewhere", lock_path);
            else make_special_file(kind, lock_path);
            CHECK(finishes_in_time([&] { return !cache.lock_key(key).held(); }, 10));
            CHECK_FALSE(fs::exists(tmp / "elsewhere"));
            fs::remove(lock_path);
        }
    }
}

TEST_CASE("disk cache: prune removes least-recently-used entries until the root fits the size", "[cache]") {
    TempDir tmp;
    DiskCache cache(tmp / "rw", {tmp / "ro"});
    const std::vector<Hash128> keys = keys_in_distinct_shards(5);
    for (size_t i = 0; i < keys.size(); ++i) cache.store(keys[i], make_entry("k", 1000, 20 + i), "src");
    const uint64_t entry_bytes = fs::file_size(cache.entry_path(keys[0]));
    // Used long ago, in key order; then a hit makes keys[0] the most recently used.
    for (size_t i = 0; i < keys.size(); ++i) {
        set_file_time(cache.entry_path(keys[i]), 1000 + 10 * static_cast<time_t>(i));
    }
    REQUIRE(cache.load(keys[0]).has_value());
    // A read-only root's entries are neither counted nor removed.
    DiskCache(tmp / "ro", {}).store(key_of("read-only"), make_entry("ro", 5000, 30), "src");
    const auto present = [&](const Hash128& key) { return fs::exists(cache.entry_path(key)); };

    SECTION("a limit the root already fits removes nothing") {
        const PruneResult result = prune(cache, 5 * entry_bytes);
        CHECK(result.removed == 0);
        CHECK(result.kept == 5);
        CHECK(result.kept_bytes == 5 * entry_bytes);
        CHECK(result.errors.empty());
    }
    SECTION("two entries' worth keeps the two most recently used") {
        const PruneResult result = prune(cache, 2 * entry_bytes + entry_bytes / 2);
        CHECK(result.removed == 3);
        CHECK(result.removed_bytes == 3 * entry_bytes);
        CHECK(result.kept == 2);
        CHECK(result.kept_bytes == 2 * entry_bytes);
        CHECK(result.errors.empty());
        CHECK(present(keys[0]));  // refreshed by load()
        CHECK_FALSE(present(keys[1]));
        CHECK_FALSE(present(keys[2]));
        CHECK_FALSE(present(keys[3]));
        CHECK(present(keys[4]));
        CHECK(count_files(tmp / "rw", ".cu") == 2);  // the sources went with their entries
        CHECK(cache.load(keys[4]).has_value());
        CHECK(DiskCache(tmp / "ro", {}).load(key_of("read-only")).has_value());
    }
    SECTION("an unusable entry goes before older usable ones") {
        // The most recently used entry turns into a 300 MiB sparse file: over the size cap, a miss.
        REQUIRE(::truncate(cache.entry_path(keys[0]).c_str(), off_t{300} << 20) == 0);
        const PruneResult result = prune(cache, 4 * entry_bytes);
        CHECK(result.removed == 1);
        CHECK(result.removed_bytes == uint64_t{300} << 20);
        CHECK(result.kept_bytes == 4 * entry_bytes);
        CHECK_FALSE(present(keys[0]));
        for (size_t i = 1; i < keys.size(); ++i) CHECK(present(keys[i]));
    }
    SECTION("zero empties the writable root; an entry that cannot be removed is named") {
        const std::string stuck = cache.entry_path(keys[2]);
        fs::remove(stuck);
        fs::create_directories(stuck + "/inside");
        const PruneResult result = prune(cache, 0);
        CHECK(result.removed == 4);
        CHECK(result.kept == 1);
        CHECK(result.errors == std::vector<std::string>{"cannot remove " + stuck + ": " + std::strerror(EISDIR)});
        for (const Hash128& key : keys) CHECK(present(key) == (key == keys[2]));
        CHECK(fs::is_directory(stuck + "/inside"));
    }
}

TEST_CASE("disk cache: stores keep the writable root under its size cap, least recently used out first", "[cache]") {
    TempDir tmp;
    constexpr unsigned kEvery = DiskCache::kStoresPerPruneCheck;
    const std::vector<Hash128> keys = keys_in_distinct_shards(2 * kEvery + 1);
    uint64_t entry_bytes = 0;
    {
        DiskCache probe(tmp / "probe", {});
        probe.store(keys[0], make_entry("k", 1000, 0), "src");
        entry_bytes = fs::file_size(probe.entry_path(keys[0]));
    }
    const auto present = [&](const DiskCache& cache, size_t i) { return fs::exists(cache.entry_path(keys[i])); };
    // Each entry marked as used at 1000 + i seconds right after it is stored, so the order is known.
    const auto store = [&](DiskCache& cache, size_t i) {
        cache.store(keys[i], make_entry("k", 1000, static_cast<unsigned>(i)), "src");
        set_file_time(cache.entry_path(keys[i]), 1000 + static_cast<time_t>(i));
    };

    SECTION("a cap of three entries: checked at the first and every 16th store") {
        DiskCache cache(tmp / "rw", {}, 3 * entry_bytes);
        for (size_t i = 0; i < 2 * kEvery; ++i) store(cache, i);
        // Checked at store 0 and store 16 (keeping 14, 15, 16); stores 17-31 went unchecked.
        size_t count = 0;
        for (size_t i = 0; i < 2 * kEvery; ++i) count += present(cache, i) ? 1 : 0;
        CHECK(count == 3 + (kEvery - 1));
        CHECK(present(cache, kEvery - 2));
        CHECK_FALSE(present(cache, kEvery - 3));
        // Store 32 is checked: the three most recently used stay, the new entry among them.
        cache.store(keys[2 * kEvery], make_entry("k", 1000, 2 * kEvery), "src");
        for (size_t i = 0; i <= 2 * kEvery; ++i) {
            INFO("entry " << i);
            CHECK(present(cache, i) == (i >= 2 * kEvery - 2));
        }
        CHECK(count_files(tmp / "rw", ".cu") == 3);  // the sources went with their entries
        CHECK(cache.load(keys[2 * kEvery]).has_value());
    }
    SECTION("no cap keeps everything") {
        DiskCache cache(tmp / "rw", {}, 0);
        for (size_t i = 0; i <= 2 * kEvery; ++i) store(cache, i);
        for (size_t i = 0; i <= 2 * kEvery; ++i) CHECK(present(cache, i));
    }
}

TEST_CASE("parse_cache_size: powers of 1024, and moejit::Error for anything else", "[cache]") {
    CHECK(parse_cache_size("4096") == 4096);
    CHECK(parse_cache_size("0") == 0);
    CHECK(parse_cache_size("500M") == uint64_t{500} << 20);
    CHECK(parse_cache_size("2g") == uint64_t{2} << 30);
    CHECK(parse_cache_size("2GB") == uint64_t{2} << 30);
    CHECK(parse_cache_size("1.5GiB") == (uint64_t{3} << 30) / 2);
    CHECK(parse_cache_size("3T") == uint64_t{3} << 40);
    CHECK(parse_cache_size("0.5K") == 512);
    for (const std::string& bad : std::vector<std::string>{"", "abc", "5X", "M", "1.", ".5", "1e3", "-1", "0.1",
                                                           "0.00001K", "9000000T", "1" + std::string(5000, '0')}) {
        INFO("'" << bad << "'");
        CHECK_THROWS_AS(parse_cache_size(bad), moejit::Error);
    }
}

TEST_CASE("disk cache: prune removes temporary files abandoned for kAbandonedTemporarySeconds, no others",
          "[cache]") {
    TempDir tmp;
    DiskCache cache(tmp / "rw", {tmp / "ro"});
    const std::vector<Hash128> keys = keys_in_distinct_shards(2);
    for (size_t i = 0; i < keys.size(); ++i) cache.store(keys[i], make_entry("k", 1000, 50 + i), "src");
    const uint64_t entry_bytes = fs::file_size(cache.entry_path(keys[0]));
    const std::string shard = fs::path(cache.entry_path(keys[0])).parent_path().string();
    // Named as store() names them; each last written `age` seconds ago (negative: now).
    const auto temporary = [&](const std::string& dir, const std::string& name, size_t bytes, time_t age) {
        const std::string path = dir + "/" + keys[0].hex() + name;
        write_bytes(path, std::vector<char>(bytes, 't'));
        if (age >= 0) set_file_time(path, std::time(nullptr) - age);
        return path;
    };
    const time_t limit = kAbandonedTemporarySeconds;
    const std::string crashed = temporary(shard, ".cubin.11-a-0000000000000001.tmp", 700, 1000000);
    const std::string just_over = temporary(shard, ".cu.12-b-0000000000000002.tmp", 300, limit + 120);
    const std::string just_under = temporary(shard, ".cubin.13-c-0000000000000003.tmp", 200, limit - 120);
    const std::string being_written = temporary(shard, ".cubin.14-d-0000000000000004.tmp", 100, -1);
    const std::string foreign = temporary(shard, ".notes", 50, 1000000);
    // A read-only root's leftovers are not ours to remove.
    DiskCache(tmp / "ro", {}).store(keys[1], make_entry("ro", 1000, 60), "src");
    const std::string read_only_shard =
        fs::path(DiskCache(tmp / "ro", {}).entry_path(keys[1])).parent_path().string();
    const std::string read_only_leftover = temporary(read_only_shard, ".cubin.15-e-0000000000000005.tmp", 10, 1000000);

    const PruneResult result = prune(cache, 1 << 30);
    CHECK(result.removed_temporaries == 2);
    CHECK(result.removed_temporary_bytes == 700 + 300);
    CHECK(result.removed == 0);
    CHECK(result.kept == 2);
    CHECK(result.kept_bytes == 2 * entry_bytes);  // temporary files are not entries
    CHECK(result.errors.empty());
    CHECK_FALSE(fs::exists(crashed));
    CHECK_FALSE(fs::exists(just_over));
    CHECK(fs::exists(just_under));
    CHECK(fs::exists(being_written));
    CHECK(fs::exists(foreign));
    CHECK(fs::exists(read_only_leftover));
    for (const Hash128& key : keys) CHECK(cache.load(key).has_value());

    // Nothing left to remove the second time.
    const PruneResult again = prune(cache, 1 << 30);
    CHECK(again.removed_temporaries == 0);
    CHECK(again.removed_temporary_bytes == 0);
}

TEST_CASE("disk cache: prune removes a crashed tune's temporary tuned tiling, never a tuned tiling", "[cache]") {
    TempDir tmp;
    DiskCache cache(tmp / "rw", {});
    const std::string tuning = tmp / "rw" + "/" + kTuningDirectory;
    fs::create_directories(tuning);
    const std::string tuned = tuning + "/0123456789abcdef0123456789abcdef.config";
    write_bytes(tuned, std::vector<char>(40, 'c'));
    const auto aged = [](const std::string& path, time_t age) { set_file_time(path, std::time(nullptr) - age); };
    aged(tuned, 10 * kAbandonedTemporarySeconds);  // old, but a finished record: kept
    // Named as store_tuned_config names it.
    const std::string crashed = tuning + "/" + temporary_file_name("0123456789abcdef0123456789abcdef.config");
    const std::string being_written = tuning + "/" + temporary_file_name("fedcba9876543210fedcba9876543210.config");
    CHECK(crashed != being_written);
    write_bytes(crashed, std::vector<char>(30, 't'));
    aged(crashed, kAbandonedTemporarySeconds + 120);
    write_bytes(being_written, std::vector<char>(20, 't'));

    const CacheListing listing = cache.list(false);
    CHECK(listing.entries.empty());
    CHECK(listing.temporaries.size() == 2);
    const PruneResult result = prune(cache, 1 << 30);
    CHECK(result.removed_temporaries == 1);
    CHECK(result.removed_temporary_bytes == 30);
    CHECK(result.errors.empty());
    CHECK_FALSE(fs::exists(crashed));
    CHECK(fs::exists(being_written));
    CHECK(fs::exists(tuned));
}

TEST_CASE("disk cache: prune does not read the read-only roots it never removes from", "[cache]") {
    TempDir tmp;
    write_bytes(tmp / "file", {'x'});  // a root under a regular file cannot be read, even by root
    DiskCache cache(tmp / "rw", {tmp / "file/ro"});
    const std::vector<Hash128> keys = keys_in_distinct_shards(3);
    for (size_t i = 0; i < keys.size(); ++i) cache.store(keys[i], make_entry("k", 1000, 70 + i), "src");
    const uint64_t entry_bytes = fs::file_size(cache.entry_path(keys[0]));
    // Listing every root meets the unreadable one; pruning does not.
    REQUIRE(cache.list(false).errors ==
            std::vector<std::string>{"cannot read directory " + (tmp / "file/ro") + ": " + std::strerror(ENOTDIR)});
    CHECK(cache.list(false, CacheRoots::writable).errors.empty());
    const PruneResult result = prune(cache, 2 * entry_bytes);
    CHECK(result.errors.empty());
    CHECK(result.removed == 1);
    CHECK(result.kept == 2);
}

TEST_CASE("disk cache: prune never removes the entry it is told to keep", "[cache]") {
    TempDir tmp;
    DiskCache cache(tmp / "rw", {});
    const std::vector<Hash128> keys = keys_in_distinct_shards(3);
    for (size_t i = 0; i < keys.size(); ++i) cache.store(keys[i], make_entry("k", 1000, 40 + i), "src");
    const PruneResult result = prune(cache, 0, cache.entry_path(keys[1]));
    CHECK(result.removed == 2);
    CHECK(result.kept == 1);
    for (size_t i = 0; i < keys.size(); ++i) CHECK(fs::exists(cache.entry_path(keys[i])) == (i == 1));
}

TEST_CASE("disk cache: MOEJIT_CACHE_MAX_SIZE sets the size cap", "[cache]") {
    const EnvVar root("MOEJIT_CACHE_DIR", std::string("/tmp/unused-moejit-cache"));
    const auto cap_with = [](std::optional<std::string> value) {
        const EnvVar variable("MOEJIT_CACHE_MAX_SIZE", value);
        return DiskCache::from_environment().size_cap();
    };
    CHECK(cap_with(std::nullopt) == DiskCache::kDefaultSizeCap);
    CHECK(cap_with(std::string("500M")) == uint64_t{500} << 20);
    CHECK(cap_with(std::string("2g")) == uint64_t{2} << 30);
    CHECK(cap_with(std::string("0")) == 0);
    CHECK(cap_with(std::string("OFF")) == 0);
    CHECK(cap_with(std::string("lots")) == DiskCache::kDefaultSizeCap);  // warns once, keeps the default
}

TEST_CASE("disk cache: read-only roots are searched first and never written", "[cache]") {
    TempDir tmp;
    const Hash128 shared_key = key_of("in both"), ro_only = key_of("read-only only"), new_key = key_of("new");
    const CacheEntry ro_entry = make_entry("from_read_only", 512, 3);
    const CacheEntry rw_entry = make_entry("from_writable", 512, 4);
    {
        // Fill the "deployment" root through a cache that owns it, then forget that cache.
        DiskCache deploy(tmp / "ro", {});
        deploy.store(shared_key, ro_entry, "src");
        deploy.store(ro_only, ro_entry, "src");
        DiskCache writable(tmp / "rw", {});
        writable.store(shared_key, rw_entry, "src");
    }
    const std::vector<char> ro_file_before = read_bytes(DiskCache(tmp / "ro", {}).entry_path(shared_key));

    DiskCache cache(tmp / "rw", {tmp / "missing", tmp / "ro"});
    CHECK(cache.read_only_roots() == std::vector<std::string>{tmp / "missing", tmp / "ro"});

    std::optional<CacheEntry> loaded = cache.load(ro_only);
    REQUIRE(loaded.has_value());
    CHECK(loaded->kernel_name == "from_read_only");

    loaded = cache.load(shared_key);
    REQUIRE(loaded.has_value());
    CHECK(loaded->kernel_name == "from_read_only");
    CHECK(loaded->cubin == ro_entry.cubin);

    // A corrupt read-only copy falls through to the writable root.
    std::vector<char> broken = ro_file_before;
    broken[0] = 'X';
    write_bytes(DiskCache(tmp / "ro", {}).entry_path(shared_key), broken);
    loaded = cache.load(shared_key);
    REQUIRE(loaded.has_value());
    CHECK(loaded->kernel_name == "from_writable");
    write_bytes(DiskCache(tmp / "ro", {}).entry_path(shared_key), ro_file_before);

    // Stores go to the writable root only.
    cache.store(new_key, rw_entry, "src");
    cache.store(shared_key, rw_entry, "src");
    CHECK(fs::exists(cache.entry_path(new_key)));
    CHECK_FALSE(fs::exists(DiskCache(tmp / "ro", {}).entry_path(new_key)));
    CHECK(read_bytes(DiskCache(tmp / "ro", {}).entry_path(shared_key)) == ro_file_before);
    CHECK_FALSE(fs::exists(tmp / "missing"));

    // list() flags where each entry lives; clear() leaves the read-only root alone.
    size_t read_only_entries = 0, writable_entries = 0;
    for (const CacheEntryInfo& info : cache.list(true).entries) {
        CHECK(info.valid);
        (info.read_only_root ? read_only_entries : writable_entries) += 1;
    }
    CHECK(read_only_entries == 2);
    CHECK(writable_entries == 2);
    CHECK(cache.clear().removed == 2);
    CHECK(cache.load(ro_only).has_value());
    CHECK(cache.list(false).entries.size() == 2);
}

TEST_CASE("disk cache: an unwritable root degrades to memory-only without throwing", "[cache]") {
    TempDir tmp;
    write_bytes(tmp / "file", {'x'});  // a path under a regular file fails even for root
    const Hash128 key = key_of("unwritable");
    const CacheEntry entry = make_entry("k", 64, 5);

    DiskCache cache(tmp / "file/sub", {});
    CHECK_FALSE(cache.memory_only());
    CHECK_NOTHROW(cache.store(key, entry, "src"));
    CHECK(cache.memory_only());
    CHECK_FALSE(cache.load(key).has_value());
    CHECK_NOTHROW(cache.store(key, entry, "src"));
    CHECK(cache.memory_only());
    CHECK(cache.list(true).entries.empty());

    // Exactly one warning per process, however many caches and stores fail.
    const std::string log = stderr_of_hidden_test("[cache-warn-child]", tmp.path);
    INFO("child stderr: " << log);
    CHECK(count_of(log, "caching in memory only") == 1);
    CHECK(log.find(tmp / "file") != std::string::npos);  // the warning names the path
}

// Run only by the test above, in a fresh process (hidden: "[.]").
TEST_CASE("disk cache: unwritable-root warning, child process", "[.][cache-warn-child]") {
    const char* dir = std::getenv("MOEJIT_TEST_DIR");
    REQUIRE(dir != nullptr);
    const std::string base = dir;
    const Hash128 key = key_of("unwritable");
    const CacheEntry entry = make_entry("k", 64, 5);
    DiskCache first(base + "/file/sub", {}), second(base + "/file/other", {});
    first.store(key, entry, "src");
    first.store(key, entry, "src");
    second.store(key, entry, "src");
    CHECK(first.memory_only());
    CHECK(second.memory_only());
}

TEST_CASE("disk cache: an entry whose path is in the way warns once and the rest of the cache stays on disk",
          "[cache]") {
    TempDir tmp;
    DiskCache cache(tmp / "root", {});
    const std::vector<Hash128> keys = keys_in_distinct_shards(4);
    const std::string blocked_entry = cache.entry_path(keys[0]);
    const std::string blocked_shard = fs::path(cache.entry_path(keys[1])).parent_path().string();
    fs::create_directories(blocked_entry);  // the rename onto it fails with EISDIR
    fs::create_directories(tmp / "root");
    write_bytes(blocked_shard, {'x'});       // its shard directory cannot be made

    for (int round = 0; round < 2; ++round)
        for (size_t i = 0; i < 3; ++i) CHECK_NOTHROW(cache.store(keys[i], make_entry("k", 64, 14), "src"));
    CHECK_FALSE(cache.memory_only());
    CHECK_FALSE(cache.load(keys[0]).has_value());
    CHECK_FALSE(cache.load(keys[1]).has_value());
    CHECK(cache.load(keys[2]).has_value());
    cache.store(keys[3], make_entry("later", 64, 15), "src");  // later stores still go to disk
    REQUIRE(cache.load(keys[3]).has_value());
    CHECK(DiskCache(tmp / "root", {}).load(keys[3])->kernel_name == "later");
    CHECK(fs::is_directory(blocked_entry));
    CHECK(count_files(tmp.path, ".tmp") == 0);

    // One warning per blocked entry, however often it is stored, and none about the whole cache.
    const std::string log = stderr_of_hidden_test("[cache-entry-warn-child]", tmp.path);
    INFO("child stderr: " << log);
    CHECK(count_of(log, "[moejit warning]") == 2);
    CHECK(count_of(log, "cannot write a kernel cache entry: " + blocked_entry + ": " + std::strerror(EISDIR)) == 1);
    CHECK(count_of(log, blocked_shard) == 1);
    CHECK(count_of(log, "caching in memory only") == 0);
}

// Run only by the test above, in a fresh process (hidden: "[.]").
TEST_CASE("disk cache: blocked-entry warnings, child process", "[.][cache-entry-warn-child]") {
    const char* dir = std::getenv("MOEJIT_TEST_DIR");
    REQUIRE(dir != nullptr);
    DiskCache cache(std::string(dir) + "/root", {});
    const std::vector<Hash128> keys = keys_in_distinct_shards(4);
    for (int round = 0; round < 3; ++round)
        for (const Hash128& key : keys) cache.store(key, make_entry("k", 64, 16), "src");
    CHECK_FALSE(cache.memory_only());
}

TEST_CASE("disk cache: 8 processes storing one key at once leave one valid entry", "[cache]") {
    TempDir tmp;
    const std::string root = tmp / "root";
    const Hash128 key = key_of("concurrent");
    const CacheEntry entry = make_entry("concurrent_kernel", 256 * 1024, 6);
    constexpr int kProcesses = 8, kStoresEach = 20;

    int start[2];
    REQUIRE(::pipe(start) == 0);
    std::vector<pid_t> children;
    for (int i = 0; i < kProcesses; ++i) {
        const pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            ::close(start[1]);
            char byte;
            while (::read(start[0], &byte, 1) < 0) {}  // returns 0 when the parent closes: go
            DiskCache cache(root, {});
            for (int n = 0; n < kStoresEach; ++n) {
                cache.store(key, entry, "src");
                // Renames are atomic: every load sees a whole entry, never a partial one.
                const std::optional<CacheEntry> loaded = cache.load(key);
                if (!loaded || loaded->kernel_name != entry.kernel_name || loaded->cubin != entry.cubin) ::_exit(3);
            }
            ::_exit(cache.memory_only() ? 4 : 0);
        }
        children.push_back(pid);
    }
    ::close(start[0]);
    ::close(start[1]);  // releases all children at once

    for (pid_t pid : children) {
        int status = 0;
        REQUIRE(::waitpid(pid, &status, 0) == pid);
        CHECK(WIFEXITED(status));
        CHECK(WEXITSTATUS(status) == 0);
    }

    DiskCache cache(root, {});
    const std::string hex = key.hex();
    const std::vector<std::string> expected = {hex + ".cu", hex + ".cubin"};
    std::vector<std::string> names;
    for (const auto& item : fs::directory_iterator(root + "/" + hex.substr(0, 2)))
        names.push_back(item.path().filename().string());
    std::sort(names.begin(), names.end());
    CHECK(names == expected);  // exactly one entry, its source, and no temporary files
    CHECK(count_files(root, ".tmp") == 0);
    const std::optional<CacheEntry> loaded = cache.load(key);
    REQUIRE(loaded.has_value());
    CHECK(loaded->kernel_name == entry.kernel_name);
    CHECK(loaded->cubin == entry.cubin);
    const std::vector<CacheEntryInfo> infos = cache.list(true).entries;
    REQUIRE(infos.size() == 1);
    CHECK(infos[0].valid);
}

TEST_CASE("disk cache: from_environment honours the cache variables", "[cache]") {
    TempDir tmp;
    SECTION("MOEJIT_CACHE_DIR and MOEJIT_CACHE_PATH") {
        EnvVar dir("MOEJIT_CACHE_DIR", tmp / "dir/");
        const std::string path_value = ":" + (tmp / "ro1") + "::" + (tmp / "ro2") + ":";
        EnvVar path("MOEJIT_CACHE_PATH", path_value);
        EnvVar xdg("XDG_CACHE_HOME", tmp / "xdg");
        DiskCache cache = DiskCache::from_environment();
        CHECK(cache.root() == tmp / "dir");
        CHECK(cache.read_only_roots() == std::vector<std::string>{tmp / "ro1", tmp / "ro2"});

        // It is a working cache in that directory.
        const Hash128 key = key_of("environment");
        cache.store(key, make_entry("env", 32, 7), "src");
        CHECK(fs::exists(tmp.path + "/dir/" + key.hex().substr(0, 2) + "/" + key.hex() + ".cubin"));

        // An entry only in a MOEJIT_CACHE_PATH root is found.
        const Hash128 ro_key = key_of("environment read-only");
        DiskCache(tmp / "ro2", {}).store(ro_key, make_entry("ro", 32, 8), "src");
        const std::optional<CacheEntry> loaded = DiskCache::from_environment().load(ro_key);
        REQUIRE(loaded.has_value());
        CHECK(loaded->kernel_name == "ro");
    }
    SECTION("XDG_CACHE_HOME, then HOME") {
        EnvVar dir("MOEJIT_CACHE_DIR", std::nullopt);
        EnvVar path("MOEJIT_CACHE_PATH", std::nullopt);
        EnvVar home("HOME", tmp / "home");
        {
            EnvVar xdg("XDG_CACHE_HOME", tmp / "xdg");
            const DiskCache cache = DiskCache::from_environment();
            CHECK(cache.root() == tmp / "xdg/moejit");
            CHECK(cache.read_only_roots().empty());
        }
        {
            EnvVar xdg("XDG_CACHE_HOME", std::nullopt);
            CHECK(DiskCache::from_environment().root() == tmp / "home/.cache/moejit");
        }
        {
            EnvVar xdg("XDG_CACHE_HOME", "relative/ignored");
            CHECK(DiskCache::from_environment().root() == tmp / "home/.cache/moejit");
        }
    }
}

namespace {

// A problem, its heuristic tiling and a device, enough for a tuning record (no GPU is touched).
struct TuningCase {
    Problem problem;
    Config config;
    DeviceInfo device;
    TuningCase() {
        problem.n = 1536;
        problem.k = 2048;
        problem.experts = 128;
        problem.topk = 8;
        problem.arch = Arch::parse("sm_90a");
        config = choose_config(problem, RowsBucket::large);
        device.name = "test device";
        device.sm_count = 132;
        device.arch = problem.arch;
    }
};

size_t entries_under(const std::string& dir) {
    std::error_code ec;
    return static_cast<size_t>(std::distance(fs::directory_iterator(dir, ec), fs::directory_iterator()));
}

}  // namespace

TEST_CASE("tuned configs are stored in the cache directory, and never without one", "[cache][tuning]") {
    TempDir tmp;
    const TuningCase tuning;
    EnvVar path("MOEJIT_CACHE_PATH", std::nullopt), xdg("XDG_CACHE_HOME", std::nullopt);
    // The winner stored under MOEJIT_CACHE_DIR = tmp/root, and read back.
    auto check_round_trip = [&](const std::string& root) {
        EnvVar dir("MOEJIT_CACHE_DIR", tmp / root);
        const std::string stored = store_tuned_config(tuning.problem, RowsBucket::large, tuning.device, tuning.config);
        CHECK(stored.rfind(tmp / (root + "/tuning/"), 0) == 0);
        CHECK(fs::is_regular_file(stored));
        const std::optional<Config> loaded = tuned_config(tuning.problem, RowsBucket::large, tuning.device);
        REQUIRE(loaded.has_value());
        CHECK(*loaded == tuning.config);
    };
    SECTION("with a cache directory the winner round trips") { check_round_trip("root"); }
    SECTION("a cache directory whose parents do not exist yet is made, parents and all") {
        check_round_trip("a/b/root");
    }
    SECTION("a FIFO or a directory at the tuned config's name is ignored, without blocking") {
        EnvVar dir("MOEJIT_CACHE_DIR", tmp / "root");
        const std::string stored = store_tuned_config(tuning.problem, RowsBucket::large, tuning.device, tuning.config);
        REQUIRE(fs::remove(stored));
        REQUIRE(::mkfifo(stored.c_str(), 0644) == 0);
        CHECK_FALSE(tuned_config(tuning.problem, RowsBucket::large, tuning.device).has_value());
        REQUIRE(fs::remove(stored));
        REQUIRE(fs::create_directory(stored));
        CHECK_FALSE(tuned_config(tuning.problem, RowsBucket::large, tuning.device).has_value());
    }
    SECTION("with neither MOEJIT_CACHE_DIR nor HOME nothing is written, not even under /") {
        EnvVar dir("MOEJIT_CACHE_DIR", std::nullopt), home("HOME", std::nullopt);
        REQUIRE(DiskCache::from_environment().root().empty());
        const bool had_tuning_dir = fs::exists("/tuning");
        const size_t tuning_files = entries_under("/tuning");
        std::string stored = "not called";
        CHECK_NOTHROW(stored = store_tuned_config(tuning.problem, RowsBucket::large, tuning.device, tuning.config));
        CHECK(stored.empty());
        CHECK(fs::exists("/tuning") == had_tuning_dir);
        CHECK(entries_under("/tuning") == tuning_files);
        CHECK_FALSE(tuned_config(tuning.problem, RowsBucket::large, tuning.device).has_value());

        // One warning per process, however many winners go unstored.
        const std::string log = stderr_of_hidden_test("[tuning-warn-child]", tmp.path);
        INFO("child stderr: " << log);
        CHECK(count_of(log, "[moejit warning] cannot store tuned tilings: no cache directory") == 1);
        CHECK(count_of(log, "[moejit warning]") == 1);
    }
}

TEST_CASE("the training and inference gated forwards keep tuned configs of their own", "[cache][tuning]") {
    TempDir tmp;
    EnvVar dir("MOEJIT_CACHE_DIR", tmp / "root"), path("MOEJIT_CACHE_PATH", std::nullopt);
    TuningCase tuning;
    Problem training = tuning.problem, inference = tuning.problem;
    training.permute_x = training.gated = training.saves_preactivation = true;
    inference.permute_x = inference.gated = true;
    const Config for_training = Config::parse("h:m128n256s4"), for_inference = Config::parse("h:m128n128s4");
    REQUIRE_FALSE(store_tuned_config(training, RowsBucket::large, tuning.device, for_training).empty());
    CHECK_FALSE(tuned_config(inference, RowsBucket::large, tuning.device).has_value());
    REQUIRE_FALSE(store_tuned_config(inference, RowsBucket::large, tuning.device, for_inference).empty());
    CHECK(tuned_config(training, RowsBucket::large, tuning.device) == for_training);
    CHECK(tuned_config(inference, RowsBucket::large, tuning.device) == for_inference);
}

TEST_CASE("disk cache: list(), prune and clear() leave alone every file whose name the cache does not write",
          "[cache]") {
    TempDir tmp;
    const std::string root = tmp / "root";
    DiskCache cache(root, {});
    const std::vector<Hash128> keys = keys_in_distinct_shards(2);
    const std::string hex = keys[0].hex(), other_hex = keys[1].hex();
    cache.store(keys[0], make_entry("k", 100, 70), "src");
    const std::string shard_name = hex.substr(0, 2);
    const std::string shard = root + "/" + shard_name, tuning = root + "/" + kTuningDirectory;
    fs::create_directories(tuning);
    const time_t long_ago = std::time(nullptr) - 10 * kAbandonedTemporarySeconds;
    const auto file = [&](const std::string& path) {
        fs::create_directories(fs::path(path).parent_path());
        write_bytes(path, {'x'});
        set_file_time(path, long_ago);  // old enough for prune to take any temporary it recognizes
        return path;
    };

    // The cache's own: an entry, its source, a lock left by a killed process, crashed stores'
    // temporaries, a tuning record and a crashed tune's temporary.
    const std::vector<std::string> ours = {
        cache.entry_path(keys[0]),
        shard + "/" + hex + ".cu",
        file(shard + "/" + hex + ".lock"),
        file(shard + "/" + temporary_file_name(hex + ".cubin")),
        file(shard + "/" + hex + ".cu.4194304-7f3a2b1c0d9e-0123456789abcdef.tmp"),
        file(tuning + "/" + tuning_record_file_name(keys[1])),
        file(tuning + "/" + temporary_file_name(other_hex + ".config")),
    };
    // Someone else's, in the cache's directories, however much they look like ours.
    std::string upper_hex = hex;
    std::transform(upper_hex.begin(), upper_hex.end(), upper_hex.begin(), ::toupper);
    const std::vector<std::string> foreign = {
        file(shard + "/attention.cu"),
        file(shard + "/build.lock"),
        file(shard + "/notes.tmp"),
        file(root + "/00/notes.tmp"),
        file(shard + "/" + other_hex + ".cubin"),  // an entry in another key's shard
        file(shard + "/" + other_hex + ".cu"),
        file(shard + "/" + other_hex + ".lock"),
        file(shard + "/" + upper_hex + ".cubin"),
        file(shard + "/" + hex.substr(0, 31) + ".cubin"),
        file(shard + "/" + hex + ".cubin.bak"),
        file(shard + "/" + hex + ".cubin.tmp"),
        file(shard + "/" + hex + ".cubin.12-ab-0123.tmp"),  // the random part is 16 hex digits
        file(shard + "/" + hex + ".cubin.x-ab-0123456789abcdef.tmp"),
        file(shard + "/" + hex + ".lock.12-ab-0123456789abcdef.tmp"),  // no lock goes through a temporary
        file(shard + "/" + hex + ".config"),                            // records belong in tuning/
        file(shard + "/x" + hex + ".cubin"),
        file(tuning + "/notes.tmp"),
        file(tuning + "/" + other_hex + ".config.bak"),
        file(tuning + "/" + hex + ".cubin"),
        file(tuning + "/" + hex + ".cubin.12-ab-0123456789abcdef.tmp"),
        file(tuning + "/tuning.json"),
    };

    SECTION("classify_cache_file") {
        CHECK(classify_cache_file(shard_name, hex + ".cubin").kind == CacheFileKind::entry);
        CHECK(classify_cache_file(shard_name, hex + ".cubin").key_hex == hex);
        CHECK(classify_cache_file(shard_name, hex + ".cu").kind == CacheFileKind::source);
        CHECK(classify_cache_file(shard_name, hex + ".lock").kind == CacheFileKind::lock);
        CHECK(classify_cache_file(kTuningDirectory, other_hex + ".config").kind == CacheFileKind::tuning_record);
        for (const std::string& final_name : {hex + ".cubin", hex + ".cu"}) {
            const CacheFileName temporary = classify_cache_file(shard_name, temporary_file_name(final_name));
            CHECK(temporary.kind == CacheFileKind::temporary);
            CHECK(temporary.key_hex == hex);
        }
        CHECK(classify_cache_file(kTuningDirectory, temporary_file_name(hex + ".config")).kind ==
              CacheFileKind::temporary);
        for (const std::string& path : foreign) {
            const fs::path name = fs::path(path);
            INFO(path);
            CHECK(classify_cache_file(name.parent_path().filename().string(), name.filename().string()).kind ==
                  CacheFileKind::foreign);
        }
    }
    SECTION("list() and prune") {
        const CacheListing listing = cache.list(false);
        CHECK(listing.errors.empty());
        REQUIRE(listing.entries.size() == 1);
        CHECK(listing.entries[0].path == ours[0]);
        CHECK(listing.entries[0].valid);
        REQUIRE(listing.tuning_records.size() == 1);
        CHECK(listing.tuning_records[0].path == ours[5]);
        CHECK(listing.tuning_records[0].key_hex == other_hex);
        CHECK(listing.tuning_records[0].bytes == 1);
        std::vector<std::string> temporaries;
        for (const CacheTemporaryInfo& temporary : listing.temporaries) temporaries.push_back(temporary.path);
        std::sort(temporaries.begin(), temporaries.end());
        std::vector<std::string> expected = {ours[3], ours[4], ours[6]};
        std::sort(expected.begin(), expected.end());
        CHECK(temporaries == expected);

        const PruneResult pruned = prune(cache, 0);
        CHECK(pruned.errors.empty());
        CHECK(pruned.removed == 1);
        CHECK(pruned.removed_temporaries == 3);
        for (size_t i : {0, 1, 3, 4, 6}) CHECK_FALSE(fs::exists(ours[i]));
        CHECK(fs::exists(ours[5]));  // prune keeps tuned tilings
    }
    SECTION("clear()") {
        const ClearResult cleared = cache.clear();
        CHECK(cleared.errors.empty());
        CHECK(cleared.removed == 1);
        CHECK(cleared.removed_tuning_records == 1);
        for (const std::string& path : ours) {
            INFO(path);
            CHECK_FALSE(fs::exists(path));
        }
    }
    for (const std::string& path : foreign) {
        INFO(path);
        CHECK(read_bytes(path) == std::vector<char>{'x'});
    }
}

TEST_CASE("disk cache: tuned tilings that store_tuned_config writes are listed and cleared as tuning records",
          "[cache][tuning]") {
    TempDir tmp;
    EnvVar dir("MOEJIT_CACHE_DIR", tmp / "rw"), path("MOEJIT_CACHE_PATH", tmp / "ro");
    const TuningCase tuning;
    const std::string stored = store_tuned_config(tuning.problem, RowsBucket::large, tuning.device, tuning.config);
    REQUIRE_FALSE(stored.empty());
    std::string read_only_record;
    {
        EnvVar deploy("MOEJIT_CACHE_DIR", tmp / "ro");
        read_only_record = store_tuned_config(tuning.problem, RowsBucket::small, tuning.device, tuning.config);
    }
    DiskCache cache = DiskCache::from_environment();
    const CacheListing listing = cache.list(false);
    CHECK(listing.errors.empty());
    CHECK(listing.entries.empty());
    CHECK(listing.temporaries.empty());
    REQUIRE(listing.tuning_records.size() == 2);
    CHECK(listing.tuning_records[0].path == read_only_record);  // read-only roots first
    CHECK(listing.tuning_records[0].read_only_root);
    CHECK(listing.tuning_records[1].path == stored);
    CHECK_FALSE(listing.tuning_records[1].read_only_root);
    CHECK(listing.tuning_records[1].bytes == fs::file_size(stored));
    CHECK(listing.tuning_records[1].key_hex == fs::path(stored).stem().string());

    const ClearResult cleared = cache.clear();
    CHECK(cleared.errors.empty());
    CHECK(cleared.removed == 0);
    CHECK(cleared.removed_tuning_records == 1);
    CHECK_FALSE(fs::exists(stored));
    CHECK_FALSE(fs::exists(tmp / "rw/tuning"));
    CHECK(fs::exists(read_only_record));
    CHECK_FALSE(tuned_config(tuning.problem, RowsBucket::large, tuning.device).has_value());
}

// Run only by the test above, in a fresh process (hidden: "[.]").
TEST_CASE("tuned configs without a cache directory, child process", "[.][tuning-warn-child]") {
    EnvVar dir("MOEJIT_CACHE_DIR", std::nullopt), home("HOME", std::nullopt), xdg("XDG_CACHE_HOME", std::nullopt);
    const TuningCase tuning;
    for (RowsBucket bucket : {RowsBucket::decode, RowsBucket::small, RowsBucket::large})
        CHECK(store_tuned_config(tuning.problem, bucket, tuning.device, tuning.config).empty());
}

TEST_CASE("tune_grouped_gemm refuses more routed rows than int32 indexes, before touching a GPU", "[cache][tuning]") {
    const TuningCase tuning;  // top-8
    const std::string message = error_message([&] { tune_grouped_gemm(tuning.problem, int64_t{1} << 28); });
    INFO(message);
    CHECK(mentions(message, "tokens * topk must be below 2^31, got 268435456 * 8"));
    CHECK(mentions(error_message([&] { tune_grouped_gemm(tuning.problem, 0); }), "tokens must be at least 1"));
}

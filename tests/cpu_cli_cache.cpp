// `moejit cache ls|stats|verify|prune|clear` on caches with things wrong with them (files that are
// not entries' kind, directories nobody can read, entries nobody can remove, files that are not the
// cache's at all), tuning records, and `cache prune`. The
// entries are written through DiskCache, so no compiler is needed (label cpu).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>
#include <vector>

#include "cache/disk_cache.hpp"
#include "cache/key.hpp"
#include "tests/catch.hpp"
#include "tests/support/errors.hpp"
#include "tests/support/process.hpp"
#include "tests/support/temp_dir.hpp"

using namespace moejit;
using namespace moejit::testing;
namespace fs = std::filesystem;

namespace {

Hash128 key_of(const std::string& text) {
    KeyInputs inputs;
    inputs.source = text;
    inputs.arch = "sm_90a";
    return make_key(inputs);
}

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << bytes;
    REQUIRE(out.good());
}

// Stores `count` small entries into `root`; returns their keys.
std::vector<Hash128> store_entries(const std::string& root, int count) {
    DiskCache cache(root, {});
    std::vector<Hash128> keys;
    for (int i = 0; i < count; ++i) {
        keys.push_back(key_of("entry " + std::to_string(i)));
        CacheEntry entry;
        entry.kernel_name = "kernel" + std::to_string(i);
        entry.cubin.assign(100 + i, static_cast<char>(i));
        cache.store(keys.back(), entry, "src");
    }
    REQUIRE_FALSE(cache.memory_only());
    return keys;
}

}  // namespace

TEST_CASE("moejit cache verify, ls and clear with a FIFO at an entry path: invalid, never a hang", "[cli]") {
    TempDir tmp;
    const std::string root = tmp / "cache";
    const std::vector<Hash128> keys = store_entries(root, 2);
    const std::string fifo = DiskCache(root, {}).entry_path(keys[0]);
    REQUIRE(fs::remove(fifo));
    REQUIRE(::mkfifo(fifo.c_str(), 0644) == 0);

    const ProcessResult verify = run_cli({"cache", "verify"}, {{"MOEJIT_CACHE_DIR", root}}, "", 30);
    INFO("stdout:\n" << verify.out << "\nstderr:\n" << verify.err);
    REQUIRE_FALSE(verify.timed_out);
    CHECK(verify.status == 1);
    CHECK(verify.out.find("invalid " + fifo + ": not a regular file") != std::string::npos);
    CHECK(verify.out.find("2 entries checked, 1 invalid") != std::string::npos);

    const ProcessResult ls = run_cli({"cache", "ls"}, {{"MOEJIT_CACHE_DIR", root}}, "", 30);
    REQUIRE_FALSE(ls.timed_out);
    CHECK(ls.status == 0);
    CHECK(ls.out.find(keys[0].hex()) != std::string::npos);
    CHECK(ls.out.find("invalid: not a regular file") != std::string::npos);

    const ProcessResult clear = run_cli({"cache", "clear"}, {{"MOEJIT_CACHE_DIR", root}}, "", 30);
    CHECK(clear.status == 0);
    CHECK(clear.out.find("removed 2 entries and 0 tuning records from " + root) != std::string::npos);
    CHECK_FALSE(fs::exists(fs::symlink_status(fifo)));
}

TEST_CASE("moejit cache verify with a 200 GiB sparse entry: invalid, no std::bad_alloc", "[cli]") {
    TempDir tmp;
    const std::string root = tmp / "cache";
    const std::vector<Hash128> keys = store_entries(root, 2);
    const std::string sparse = DiskCache(root, {}).entry_path(keys[1]);
    REQUIRE(::truncate(sparse.c_str(), off_t{200} << 30) == 0);

    const ProcessResult verify = run_cli({"cache", "verify"}, {{"MOEJIT_CACHE_DIR", root}}, "", 30);
    INFO("stdout:\n" << verify.out << "\nstderr:\n" << verify.err);
    CHECK(verify.status == 1);
    CHECK(verify.err.empty());
    CHECK(verify.out.find("invalid " + sparse + ": too large (214748364800 bytes") != std::string::npos);
    CHECK(verify.out.find("2 entries checked, 1 invalid") != std::string::npos);
}

TEST_CASE("moejit cache ls|stats|verify|clear exit 1 naming a cache directory they cannot read", "[cli]") {
    TempDir tmp;
    // A path under a regular file fails with ENOTDIR, for root too (chmod would not stop root).
    write_bytes(tmp / "file", "x");
    const std::string root = tmp / "file/cache";
    const std::string error = "moejit: cannot read directory " + root + ": " + std::strerror(ENOTDIR);
    for (const char* command : {"ls", "stats", "verify", "clear"}) {
        const ProcessResult result = run_cli({"cache", command}, {{"MOEJIT_CACHE_DIR", root}});
        INFO("moejit cache " << command << "\nstdout:\n" << result.out << "\nstderr:\n" << result.err);
        CHECK(result.status == 1);
        CHECK(result.err.find(error + "\n") != std::string::npos);
    }
    CHECK(run_cli({"cache", "verify"}, {{"MOEJIT_CACHE_DIR", root}}).out ==
          "0 entries checked, 0 invalid, 1 read error\n");
    CHECK(run_cli({"cache", "clear"}, {{"MOEJIT_CACHE_DIR", root}}).out ==
          "removed 0 entries and 0 tuning records from " + root + "\n");
    CHECK(run_cli({"cache", "stats"}, {{"MOEJIT_CACHE_DIR", root}})
              .out.find("writable root   " + root + "  0 entries, 0 B; 0 tuning records, 0 B (does not exist)") !=
          std::string::npos);

    // The same for a read-only root; clear leaves read-only roots alone, so it succeeds.
    TempDir empty;
    const Environment read_only = {{"MOEJIT_CACHE_DIR", empty.path}, {"MOEJIT_CACHE_PATH", tmp / "file"}};
    const std::string read_only_error =
        "moejit: cannot read directory " + (tmp / "file") + ": " + std::strerror(ENOTDIR) + "\n";
    CHECK(run_cli({"cache", "ls"}, read_only).err == read_only_error);
    CHECK(run_cli({"cache", "verify"}, read_only).status == 1);
    const ProcessResult stats = run_cli({"cache", "stats"}, read_only);
    CHECK(stats.status == 1);
    CHECK(stats.out.find("read-only root  " + (tmp / "file") +
                         "  0 entries, 0 B; 0 tuning records, 0 B (not a directory)") != std::string::npos);
    CHECK(run_cli({"cache", "clear"}, read_only).status == 0);
}

TEST_CASE("moejit cache clear exits 1 naming an entry it cannot remove, and removes the others", "[cli]") {
    TempDir tmp;
    const std::string root = tmp / "cache";
    const std::vector<Hash128> keys = store_entries(root, 3);
    const std::string stuck = DiskCache(root, {}).entry_path(keys[1]);
    REQUIRE(fs::remove(stuck));
    REQUIRE(fs::create_directory(stuck));  // unlink fails with EISDIR, for root too

    const ProcessResult clear = run_cli({"cache", "clear"}, {{"MOEJIT_CACHE_DIR", root}});
    INFO("stdout:\n" << clear.out << "\nstderr:\n" << clear.err);
    CHECK(clear.status == 1);
    CHECK(clear.out == "removed 2 entries and 0 tuning records from " + root + "\n");
    CHECK(clear.err == "moejit: cannot remove " + stuck + ": " + std::strerror(EISDIR) + "\n");
    CHECK(fs::is_directory(stuck));
    for (const Hash128& key : {keys[0], keys[2]}) CHECK_FALSE(fs::exists(DiskCache(root, {}).entry_path(key)));
}

TEST_CASE("moejit cache commands as a user the cache's permissions shut out exit 1", "[cli]") {
    if (::geteuid() == 0) {
        WARN("running as root, whom chmod cannot deny: skipped (the ENOTDIR and EISDIR tests cover root)");
        return;
    }
    TempDir tmp;
    const std::string root = tmp / "cache";
    const std::vector<Hash128> keys = store_entries(root, 2);
    const std::string entry = DiskCache(root, {}).entry_path(keys[0]);
    const std::string shard = fs::path(entry).parent_path().string();
    const std::string denied = std::strerror(EACCES);
    {
        const ScopedMode closed_root(root, 0);  // to us like mode 700 of another owner
        for (const char* command : {"ls", "stats", "verify", "clear"}) {
            const ProcessResult result = run_cli({"cache", command}, {{"MOEJIT_CACHE_DIR", root}});
            INFO("moejit cache " << command << "\nstdout:\n" << result.out << "\nstderr:\n" << result.err);
            CHECK(result.status == 1);
            CHECK(result.err == "moejit: cannot read directory " + root + ": " + denied + "\n");
        }
    }
    {
        const ScopedMode read_only_shard(shard, 0555);
        const ProcessResult clear = run_cli({"cache", "clear"}, {{"MOEJIT_CACHE_DIR", root}});
        INFO("stdout:\n" << clear.out << "\nstderr:\n" << clear.err);
        CHECK(clear.status == 1);
        CHECK(clear.err.find("moejit: cannot remove " + entry + ": " + denied + "\n") != std::string::npos);
        CHECK(clear.out.find("removed 1 entry and 0 tuning records from " + root) != std::string::npos);
    }
    CHECK(fs::exists(entry));
}

TEST_CASE("moejit cache prune --max-size removes least-recently-used entries down to SIZE", "[cli]") {
    TempDir tmp;
    const std::string root = tmp / "cache";
    const std::vector<Hash128> keys = store_entries(root, 3);
    const DiskCache cache(root, {});
    // keys[0] used longest ago, keys[2] most recently.
    for (size_t i = 0; i < keys.size(); ++i) {
        const time_t used = 1000 + static_cast<time_t>(i);
        const struct timespec times[2] = {{used, 0}, {used, 0}};
        REQUIRE(::utimensat(AT_FDCWD, cache.entry_path(keys[i]).c_str(), times, 0) == 0);
    }
    uint64_t total = 0;
    for (const Hash128& key : keys) total += fs::file_size(cache.entry_path(key));

    for (const char* size : {"2G", "500M", "1.5GiB", "64kb", "1T"}) {
        const ProcessResult result = run_cli({"cache", "prune", "--max-size", size}, {{"MOEJIT_CACHE_DIR", root}});
        INFO("--max-size " << size << "\nstdout:\n" << result.out << "\nstderr:\n" << result.err);
        CHECK(result.status == 0);
        CHECK(result.out.rfind("removed 0 entries (0 B) from " + root + "; 3 entries", 0) == 0);
    }
    // Room for about one entry and a half: the least recently used two go.
    const std::string limit = std::to_string(total / 2);
    const ProcessResult pruned = run_cli({"cache", "prune", "--max-size=" + limit}, {{"MOEJIT_CACHE_DIR", root}});
    INFO("stdout:\n" << pruned.out << "\nstderr:\n" << pruned.err);
    CHECK(pruned.status == 0);
    CHECK(pruned.err.empty());
    CHECK(pruned.out.rfind("removed 2 entries (", 0) == 0);
    CHECK(pruned.out.find("; 1 entry (") != std::string::npos);
    CHECK_FALSE(fs::exists(cache.entry_path(keys[0])));
    CHECK_FALSE(fs::exists(cache.entry_path(keys[1])));
    CHECK(fs::exists(cache.entry_path(keys[2])));

    for (const std::vector<std::string>& bad : std::vector<std::vector<std::string>>{
             {"cache", "prune"},
             {"cache", "prune", "--max-size", "lots"},
             {"cache", "prune", "--max-size", "5X"},
             {"cache", "prune", "--max-size", "-1"},
             {"cache", "prune", "--max-size", "1.G"},
             {"cache", "prune", "--max-size", "99999999999T"},
             {"cache", "prune", "--max-size", "1G", "extra"},
         }) {
        const ProcessResult result = run_cli(bad, {{"MOEJIT_CACHE_DIR", root}});
        INFO("moejit cache prune " << (bad.size() > 2 ? bad[2] + " " + bad.back() : std::string()));
        CHECK(result.status == 1);
        CHECK(result.err.rfind("moejit: ", 0) == 0);
        CHECK(result.out.empty());
    }
    CHECK(fs::exists(cache.entry_path(keys[2])));  // none of those removed anything

    const ProcessResult help = run_cli({"cache", "prune", "--help"}, {{"MOEJIT_CACHE_DIR", root}});
    CHECK(help.status == 0);
    CHECK(help.out.find("prune --max-size SIZE") != std::string::npos);
}

TEST_CASE("moejit cache prune removes abandoned temporary files and leaves read-only roots unread", "[cli]") {
    TempDir tmp;
    const std::string root = tmp / "cache";
    const std::vector<Hash128> keys = store_entries(root, 2);
    const std::string shard = fs::path(DiskCache(root, {}).entry_path(keys[0])).parent_path().string();
    // A crashed store's file, last written a day ago, and one a live store is writing now.
    const std::string abandoned = shard + "/" + keys[0].hex() + ".cubin.11-a-0000000000000001.tmp";
    const std::string in_progress = shard + "/" + keys[0].hex() + ".cubin.12-b-0000000000000002.tmp";
    write_bytes(abandoned, std::string(700, 't'));
    write_bytes(in_progress, std::string(100, 't'));
    const time_t day_ago = std::time(nullptr) - 86400;
    const struct timespec times[2] = {{day_ago, 0}, {day_ago, 0}};
    REQUIRE(::utimensat(AT_FDCWD, abandoned.c_str(), times, 0) == 0);
    // A read-only root nobody can read (under a regular file): prune has no business there.
    write_bytes(tmp / "file", "x");
    const Environment environment = {{"MOEJIT_CACHE_DIR", root}, {"MOEJIT_CACHE_PATH", tmp / "file/deployed"}};

    const ProcessResult pruned = run_cli({"cache", "prune", "--max-size", "1G"}, environment);
    INFO("stdout:\n" << pruned.out << "\nstderr:\n" << pruned.err);
    CHECK(pruned.status == 0);
    CHECK(pruned.err.empty());
    CHECK(pruned.out.rfind("removed 0 entries (0 B) and 1 abandoned temporary file (700 B) from " + root +
                               "; 2 entries (",
                           0) == 0);
    CHECK_FALSE(fs::exists(abandoned));
    CHECK(fs::exists(in_progress));
    for (const Hash128& key : keys) CHECK(fs::exists(DiskCache(root, {}).entry_path(key)));
}

TEST_CASE("moejit cache prune and clear remove only files whose names the cache writes", "[cli]") {
    TempDir tmp;
    const std::string root = tmp / "project";
    // A directory that was never a cache, with names that only look like a cache's.
    fs::create_directories(root + "/de");
    fs::create_directories(root + "/00");
    write_bytes(root + "/de/attention.cu", "k\n");
    write_bytes(root + "/de/build.lock", "l\n");
    write_bytes(root + "/00/notes.tmp", "x\n");
    const time_t two_hours_ago = std::time(nullptr) - 7200;
    const struct timespec times[2] = {{two_hours_ago, 0}, {two_hours_ago, 0}};
    REQUIRE(::utimensat(AT_FDCWD, (root + "/00/notes.tmp").c_str(), times, 0) == 0);

    const ProcessResult pruned = run_cli({"cache", "prune", "--max-size", "1G"}, {{"MOEJIT_CACHE_DIR", root}});
    INFO("prune stdout:\n" << pruned.out << "\nstderr:\n" << pruned.err);
    CHECK(pruned.status == 0);
    CHECK(pruned.out.rfind("removed 0 entries (0 B) from " + root + ";", 0) == 0);
    const ProcessResult cleared = run_cli({"cache", "clear"}, {{"MOEJIT_CACHE_DIR", root}});
    INFO("clear stdout:\n" << cleared.out << "\nstderr:\n" << cleared.err);
    CHECK(cleared.status == 0);
    CHECK(cleared.out == "removed 0 entries and 0 tuning records from " + root + "\n");
    CHECK(read_text(root + "/de/attention.cu") == "k\n");
    CHECK(read_text(root + "/de/build.lock") == "l\n");
    CHECK(read_text(root + "/00/notes.tmp") == "x\n");
}

TEST_CASE("moejit cache ls, stats and clear show and remove tuning records, and no one else's files", "[cli]") {
    TempDir tmp;
    const std::string root = tmp / "cache";
    const std::vector<Hash128> keys = store_entries(root, 1);
    const Hash128 tuned = key_of("a tuned tiling");
    const std::string record = root + "/tuning/" + tuning_record_file_name(tuned);
    const std::string foreign = root + "/tuning/notes.txt";
    fs::create_directories(root + "/tuning");
    write_bytes(record, "h:m128n256s4\nfwd:bf16:n1536:k2048:e128:topk8:sm_90a large test device\n");
    write_bytes(foreign, "mine\n");
    const std::string record_bytes = std::to_string(fs::file_size(record)) + " B";

    const ProcessResult ls = run_cli({"cache", "ls"}, {{"MOEJIT_CACHE_DIR", root}});
    INFO("ls stdout:\n" << ls.out << "\nstderr:\n" << ls.err);
    CHECK(ls.status == 0);
    CHECK(count_of(ls.out, "\n") == 2);
    CHECK(ls.out.find(keys[0].hex()) != std::string::npos);
    CHECK(std::regex_search(ls.out, std::regex(tuned.hex() + R"( +)" + record_bytes + R"( +\S+  rw )" + root +
                                               "  tuning record\n")));

    const ProcessResult stats = run_cli({"cache", "stats"}, {{"MOEJIT_CACHE_DIR", root}});
    INFO("stats stdout:\n" << stats.out << "\nstderr:\n" << stats.err);
    CHECK(stats.status == 0);
    CHECK(stats.out.find("writable root   " + root + "  1 entry, ") != std::string::npos);
    CHECK(stats.out.find("; 1 tuning record, " + record_bytes + "\n") != std::string::npos);
    CHECK(stats.out.find("total           1 entry, ") != std::string::npos);

    const ProcessResult cleared = run_cli({"cache", "clear"}, {{"MOEJIT_CACHE_DIR", root}});
    INFO("clear stdout:\n" << cleared.out << "\nstderr:\n" << cleared.err);
    CHECK(cleared.status == 0);
    CHECK(cleared.out == "removed 1 entry and 1 tuning record from " + root + "\n");
    CHECK_FALSE(fs::exists(record));
    CHECK(read_text(foreign) == "mine\n");
    const std::string emptied = run_cli({"cache", "stats"}, {{"MOEJIT_CACHE_DIR", root}}).out;
    CHECK(emptied.find("total           0 entries, 0 B; 0 tuning records, 0 B\n") != std::string::npos);
}

TEST_CASE("moejit cache stats and verify count one entry as 1 entry", "[cli]") {
    TempDir tmp;
    const std::string root = tmp / "cache";
    store_entries(root, 1);
    const ProcessResult stats = run_cli({"cache", "stats"}, {{"MOEJIT_CACHE_DIR", root}});
    INFO("stdout:\n" << stats.out << "\nstderr:\n" << stats.err);
    CHECK(stats.status == 0);
    CHECK(stats.out.find("1 entries") == std::string::npos);
    CHECK(stats.out.find("writable root   " + root + "  1 entry, ") != std::string::npos);
    CHECK(stats.out.find("total           1 entry, ") != std::string::npos);
    CHECK(run_cli({"cache", "verify"}, {{"MOEJIT_CACHE_DIR", root}}).out == "1 entry checked, 0 invalid\n");
}

TEST_CASE("moejit cache clear names the first 3 files it cannot remove, then counts the rest", "[cli]") {
    TempDir tmp;
    const std::string root = tmp / "cache";
    const std::vector<Hash128> keys = store_entries(root, 10);
    std::vector<std::string> stuck;
    for (const Hash128& key : keys) {
        stuck.push_back(DiskCache(root, {}).entry_path(key));
        REQUIRE(fs::remove(stuck.back()));
        REQUIRE(fs::create_directory(stuck.back()));  // unlink fails with EISDIR, for root too
    }
    const ProcessResult clear = run_cli({"cache", "clear"}, {{"MOEJIT_CACHE_DIR", root}});
    INFO("stdout:\n" << clear.out << "\nstderr:\n" << clear.err);
    CHECK(clear.status == 1);
    CHECK(clear.out == "removed 0 entries and 0 tuning records from " + root + "\n");
    CHECK(count_of(clear.err, "\n") == 4);
    CHECK(count_of(clear.err, "moejit: cannot remove ") == 3);
    CHECK(clear.err.find(std::string(": ") + std::strerror(EISDIR) + "\n") != std::string::npos);
    CHECK(clear.err.find("moejit: ... and 7 more errors\n") != std::string::npos);
    for (const std::string& path : stuck) CHECK(fs::is_directory(path));
}

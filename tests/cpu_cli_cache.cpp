// `moejit cache ls|stats|verify|clear` on caches with things wrong with them: files that are not
// entries' kind, directories nobody can read, entries nobody can remove. The entries are written
// through DiskCache, so no compiler is needed (label cpu).
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "cache/disk_cache.hpp"
#include "cache/key.hpp"
#include "tests/catch.hpp"
#include "tests/support/cli_process.hpp"
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

    const Result verify = run_cli({"cache", "verify"}, root, {}, 30);
    INFO("stdout:\n" << verify.out << "\nstderr:\n" << verify.err);
    REQUIRE_FALSE(verify.timed_out);
    CHECK(verify.status == 1);
    CHECK(verify.out.find("invalid " + fifo + ": not a regular file") != std::string::npos);
    CHECK(verify.out.find("2 entries checked, 1 invalid") != std::string::npos);

    const Result ls = run_cli({"cache", "ls"}, root, {}, 30);
    REQUIRE_FALSE(ls.timed_out);
    CHECK(ls.status == 0);
    CHECK(ls.out.find(keys[0].hex()) != std::string::npos);
    CHECK(ls.out.find("invalid: not a regular file") != std::string::npos);

    const Result clear = run_cli({"cache", "clear"}, root, {}, 30);
    CHECK(clear.status == 0);
    CHECK(clear.out.find("removed 2 entries from " + root) != std::string::npos);
    CHECK_FALSE(fs::exists(fs::symlink_status(fifo)));
}

TEST_CASE("moejit cache verify with a 200 GiB sparse entry: invalid, no std::bad_alloc", "[cli]") {
    TempDir tmp;
    const std::string root = tmp / "cache";
    const std::vector<Hash128> keys = store_entries(root, 2);
    const std::string sparse = DiskCache(root, {}).entry_path(keys[1]);
    REQUIRE(::truncate(sparse.c_str(), off_t{200} << 30) == 0);

    const Result verify = run_cli({"cache", "verify"}, root, {}, 30);
    INFO("stdout:\n" << verify.out << "\nstderr:\n" << verify.err);
    CHECK(verify.status == 1);
    CHECK(verify.err.empty());
    CHECK(verify.out.find("invalid " + sparse + ": too large (214748364800 bytes") != std::string::npos);
    CHECK(verify.out.find("2 entries checked, 1 invalid") != std::string::npos);
}

#include "moe/tuning.hpp"

#include <moejit/error.hpp>

#include "cache/disk_cache.hpp"
#include "cache/hash.hpp"
#include "runtime/embedded_templates.hpp"
#include "runtime/environment.hpp"
#include "runtime/log.hpp"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <sstream>
#include <system_error>
#include <vector>

namespace moejit {

namespace {

// Library version: the project version and every template byte, so a changed kernel retunes.
const Hash128& library_digest() {
    static const Hash128 digest = [] {
        Hasher hasher;
        hasher.field(MOEJIT_VERSION_STRING);
        for (const EmbeddedHeader& header : embedded_headers()) hasher.field(header.name).field(header.contents);
        return hasher.digest();
    }();
    return digest;
}

// <root>/tuning/<this>: one file per (problem, rows bucket, device, library version).
std::string tuning_file_name(const Problem& problem, RowsBucket bucket, const DeviceInfo& device) {
    Hasher hasher;
    hasher.field("moejit-tuning").field(to_spec(problem)).field(to_string(bucket)).field(device.name);
    hasher.field(uint64_t(device.sm_count)).field(library_digest().hex());
    // Named as the cache names records, so that `moejit cache ls|stats|clear` know it for ours.
    return tuning_record_file_name(hasher.digest());
}

std::string tuning_directory(const std::string& root) { return root + "/" + kTuningDirectory; }

}  // namespace

std::optional<Config> tuned_config(const Problem& problem, RowsBucket bucket, const DeviceInfo& device) {
    const DiskCache cache = DiskCache::from_environment();
    std::vector<std::string> roots = cache.read_only_roots();
    roots.push_back(cache.root());
    for (const std::string& root : roots) {
        if (root.empty()) continue;  // no cache directory: "" + "/tuning/..." would name a system path
        std::vector<char> bytes;  // not an ifstream: a FIFO at the name would block it forever
        if (!read_regular_file(tuning_directory(root) + "/" + tuning_file_name(problem, bucket, device), bytes).empty())
            continue;
        const std::string text(bytes.begin(), std::find(bytes.begin(), bytes.end(), '\n'));
        try {
            Config config = Config::parse(text);
            check_config(problem, config);
            return config;
        } catch (const Error& error) {  // a stale or damaged file is ignored, never trusted
            log::debug("ignoring tuned config for " + to_spec(problem) + ": " + error.what());
        }
    }
    return std::nullopt;
}

std::string store_tuned_config(const Problem& problem, RowsBucket bucket, const DeviceInfo& device,
                               const Config& config) {
    const std::string root = DiskCache::from_environment().root();
    if (root.empty()) {  // as DiskCache::store: "" + "/tuning/..." would write below the file system root
        log::warn_once("tuning-no-root", std::string("cannot store tuned tilings: ") + kNoCacheDirectory +
                                             "; the heuristic's tilings stay in use");
        return "";
    }
    const std::string directory = tuning_directory(root), name = tuning_file_name(problem, bucket, device);
    std::error_code error;  // the root's parents too: MOEJIT_CACHE_DIR may name a path not made yet
    std::filesystem::create_directories(directory, error);
    if (error) throw Error("cannot write tuned config: cannot create " + directory + ": " + error.message());
    std::ostringstream text;
    text << config.to_string() << "\n" << to_spec(problem) << " " << to_string(bucket) << " " << device.name << "\n";
    // As the kernel cache writes its entries, so that prune knows a temporary file a crash left behind.
    const std::string failure = write_file_atomically(directory, name, text.str());
    if (!failure.empty()) throw Error("cannot write tuned config: " + failure);
    return directory + "/" + name;
}

KernelPath preferred_path() {
    const std::optional<std::string> value = env::lowercase_value("MOEJIT_KERNEL_PATH");
    if (!value || *value == "auto") return KernelPath::hopper;
    if (*value == "portable") return KernelPath::portable;
    // Unlike a log level, a misspelt path would silently run other kernels than the ones asked for.
    throw Error(std::string("MOEJIT_KERNEL_PATH must be auto or portable, got '") + std::getenv("MOEJIT_KERNEL_PATH") +
                "'");
}

Config select_config(const Problem& problem, RowsBucket bucket, const DeviceInfo& device) {
    const KernelPath path = preferred_path();
    if (path == KernelPath::hopper)
        if (std::optional<Config> tuned = tuned_config(problem, bucket, device)) return *tuned;
    return choose_config(problem, bucket, path);
}

}  // namespace moejit

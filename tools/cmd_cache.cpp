// moejit precompile | cache ls|stats|verify|prune|clear: filling, inspecting and trimming the disk cache.
#include "tools/cli.hpp"

#include "cache/disk_cache.hpp"
#include "cache/prune.hpp"
#include "codegen/models.hpp"
#include "moe/model_kernels.hpp"
#include "runtime/compiler.hpp"
#include "runtime/parallel.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace moejit::cli {

namespace {

// <root>/<shard>/<key>.cubin -> <root>
std::string root_of(const std::string& entry_path) {
    size_t slash = entry_path.rfind('/');
    if (slash == std::string::npos || slash == 0) return ".";
    slash = entry_path.rfind('/', slash - 1);
    return slash == std::string::npos ? "." : entry_path.substr(0, slash);
}

std::string format_age(int64_t mtime) {
    const int64_t seconds = std::max<int64_t>(0, static_cast<int64_t>(std::time(nullptr)) - mtime);
    char text[32];
    if (seconds < 60) std::snprintf(text, sizeof text, "%llds", static_cast<long long>(seconds));
    else if (seconds < 3600) std::snprintf(text, sizeof text, "%lldm", static_cast<long long>(seconds / 60));
    else if (seconds < 86400) std::snprintf(text, sizeof text, "%lldh", static_cast<long long>(seconds / 3600));
    else std::snprintf(text, sizeof text, "%lldd", static_cast<long long>(seconds / 86400));
    return text;
}

// "1 entry", "2 entries": counts in what the commands print read as English.
std::string counted(size_t count, const char* singular, const char* plural) {
    return std::to_string(count) + " " + (count == 1 ? singular : plural);
}

// How many errors report_errors names one by one.
constexpr size_t kErrorsNamed = 3;

// Prints the first kErrorsNamed errors as "moejit: <error>" on stderr, after what could be done
// was printed, and then how many more there were: a cache on a read-only disk fails every file
// alike, and thousands of lines would bury what the first few say. Returns the exit status: a
// cache that could not be read or cleared must not look empty or cleared.
int report_errors(const std::vector<std::string>& errors) {
    std::fflush(stdout);
    const size_t named = std::min(errors.size(), kErrorsNamed);
    for (size_t i = 0; i < named; ++i) std::fprintf(stderr, "moejit: %s\n", errors[i].c_str());
    if (errors.size() > named)
        std::fprintf(stderr, "moejit: ... and %s\n",
                     counted(errors.size() - named, "more error", "more errors").c_str());
    return errors.empty() ? 0 : 1;
}

const char* const kCacheHelp =
    "usage: moejit cache <ls [--verify] | stats | verify | prune --max-size SIZE | clear>\n"
    "\n"
    "The kernel cache: the writable root (MOEJIT_CACHE_DIR, else $XDG_CACHE_HOME/moejit, else\n"
    "~/.cache/moejit) and the read-only roots of MOEJIT_CACHE_PATH (colon-separated, searched first).\n"
    "\n"
    "  ls [--verify]   one line per entry: key, size, age, root kind and root; --verify also reads and\n"
    "                  checks each entry and prints valid or invalid with the reason; then one line per\n"
    "                  tuned tiling (`moejit tune`'s records), ending in \"tuning record\"\n"
    "  stats           the roots, and entries, tuning records and their bytes per root and in all\n"
    "  verify          checks every entry; prints the bad ones; exits 1 if any is bad\n"
    "  prune --max-size SIZE\n"
    "                  removes entries of the writable root, least recently used first (every cache hit\n"
    "                  refreshes an entry's time), until its entries take at most SIZE (tuning records\n"
    "                  stay, uncounted): bytes, or 500M, 2G (K, M, G, T are powers of 1024); also removes\n"
    "                  temporary files that crashed stores or tunes left behind (unwritten for an hour)\n"
    "  clear           removes every entry and tuning record of the writable root (never a read-only\n"
    "                  root, never a file whose name the cache does not write)\n"
    "\n"
    "A directory that cannot be read or an entry that cannot be removed is named on stderr (the first\n"
    "three, then how many more), and the command exits 1.\n";

int cache_ls(const std::vector<std::string>& argv) {
    const Args args("cache ls", argv, {{"--verify", false}});
    if (args.help()) {
        std::fputs(kCacheHelp, stdout);
        return 0;
    }
    args.expect_positionals(0, 0, "");
    const bool verify = args.flag("--verify");
    const DiskCache cache = DiskCache::from_environment();
    const CacheListing listing = cache.list(verify);
    for (const CacheEntryInfo& info : listing.entries) {
        std::printf("%s  %10s  %5s  %s %s", info.key_hex.c_str(), format_bytes(info.bytes).c_str(),
                    format_age(info.mtime).c_str(), info.read_only_root ? "ro" : "rw", root_of(info.path).c_str());
        if (verify || !info.valid)
            std::printf("  %s%s%s", info.valid ? "valid" : "invalid", info.valid ? "" : ": ", info.problem.c_str());
        std::printf("\n");
    }
    for (const TuningRecordInfo& record : listing.tuning_records)
        std::printf("%s  %10s  %5s  %s %s  tuning record\n", record.key_hex.c_str(), format_bytes(record.bytes).c_str(),
                    format_age(record.mtime).c_str(), record.read_only_root ? "ro" : "rw",
                    root_of(record.path).c_str());
    return report_errors(listing.errors);
}

int cache_stats(const std::vector<std::string>& argv) {
    const Args args("cache stats", argv, {});
    if (args.help()) {
        std::fputs(kCacheHelp, stdout);
        return 0;
    }
    args.expect_positionals(0, 0, "");
    const DiskCache cache = DiskCache::from_environment();
    struct Totals {
        size_t entries = 0;
        uint64_t bytes = 0;
        size_t tuning_records = 0;
        uint64_t tuning_bytes = 0;
        Totals& operator+=(const Totals& other) {
            entries += other.entries;
            bytes += other.bytes;
            tuning_records += other.tuning_records;
            tuning_bytes += other.tuning_bytes;
            return *this;
        }
        std::string text() const {
            return counted(entries, "entry", "entries") + ", " + format_bytes(bytes) + "; " +
                   counted(tuning_records, "tuning record", "tuning records") + ", " + format_bytes(tuning_bytes);
        }
    };
    std::map<std::string, Totals> per_root;
    Totals all;
    const CacheListing listing = cache.list(false);
    for (const CacheEntryInfo& info : listing.entries) {
        Totals& totals = per_root[root_of(info.path)];
        ++totals.entries;
        totals.bytes += info.bytes;
    }
    for (const TuningRecordInfo& record : listing.tuning_records) {
        Totals& totals = per_root[root_of(record.path)];
        ++totals.tuning_records;
        totals.tuning_bytes += record.bytes;
    }
    for (const auto& [root, totals] : per_root) all += totals;
    auto line = [&](const char* kind, const std::string& root) {
        const Totals totals = per_root.count(root) ? per_root[root] : Totals{};
        struct stat st {};
        const char* note = "";
        if (root.empty() || ::stat(root.c_str(), &st) != 0) note = " (does not exist)";
        else if (!S_ISDIR(st.st_mode)) note = " (not a directory)";
        std::printf("%-15s %s  %s%s\n", kind, root.empty() ? "(none)" : root.c_str(), totals.text().c_str(), note);
    };
    for (const std::string& root : cache.read_only_roots()) line("read-only root", root);
    line("writable root", cache.root());
    std::printf("%-15s %s\n", "total", all.text().c_str());
    return report_errors(listing.errors);
}

int cache_verify(const std::vector<std::string>& argv) {
    const Args args("cache verify", argv, {});
    if (args.help()) {
        std::fputs(kCacheHelp, stdout);
        return 0;
    }
    args.expect_positionals(0, 0, "");
    const DiskCache cache = DiskCache::from_environment();
    size_t bad = 0;
    const CacheListing listing = cache.list(true);
    for (const CacheEntryInfo& info : listing.entries) {
        if (info.valid) continue;
        ++bad;
        std::printf("invalid %s: %s\n", info.path.c_str(), info.problem.c_str());
    }
    std::printf("%s checked, %zu invalid", counted(listing.entries.size(), "entry", "entries").c_str(), bad);
    if (!listing.errors.empty())
        std::printf(", %s", counted(listing.errors.size(), "read error", "read errors").c_str());
    std::printf("\n");
    return report_errors(listing.errors) != 0 || bad != 0 ? 1 : 0;
}

int cache_prune(const std::vector<std::string>& argv) {
    const Args args("cache prune", argv, {{"--max-size", true}});
    if (args.help()) {
        std::fputs(kCacheHelp, stdout);
        return 0;
    }
    args.expect_positionals(0, 0, "");
    const auto max_size = args.value("--max-size");
    if (!max_size) throw Error("'moejit cache prune' needs --max-size SIZE, such as 500M or 2G");
    const uint64_t max_bytes = parse_cache_size(*max_size);
    const DiskCache cache = DiskCache::from_environment();
    if (cache.root().empty()) throw Error(kNoCacheDirectory);
    const PruneResult result = prune(cache, max_bytes);
    std::string temporaries;
    if (result.removed_temporaries > 0)
        temporaries = " and " + std::to_string(result.removed_temporaries) + " abandoned temporary file" +
                      (result.removed_temporaries == 1 ? "" : "s") + " (" +
                      format_bytes(result.removed_temporary_bytes) + ")";
    std::printf("removed %zu entr%s (%s)%s from %s; %zu entr%s (%s) remain, at most %s\n", result.removed,
                result.removed == 1 ? "y" : "ies", format_bytes(result.removed_bytes).c_str(), temporaries.c_str(),
                cache.root().c_str(), result.kept, result.kept == 1 ? "y" : "ies",
                format_bytes(result.kept_bytes).c_str(), format_bytes(max_bytes).c_str());
    return report_errors(result.errors);
}

int cache_clear(const std::vector<std::string>& argv) {
    const Args args("cache clear", argv, {});
    if (args.help()) {
        std::fputs(kCacheHelp, stdout);
        return 0;
    }
    args.expect_positionals(0, 0, "");
    DiskCache cache = DiskCache::from_environment();
    if (cache.root().empty()) throw Error(kNoCacheDirectory);
    const ClearResult result = cache.clear();
    std::printf("removed %s and %s from %s\n", counted(result.removed, "entry", "entries").c_str(),
                counted(result.removed_tuning_records, "tuning record", "tuning records").c_str(),
                cache.root().c_str());
    if (!cache.read_only_roots().empty()) std::printf("read-only roots (MOEJIT_CACHE_PATH) left as they are\n");
    return report_errors(result.errors);
}

}  // namespace

int cmd_cache(const std::vector<std::string>& argv) {
    if (argv.empty() || argv[0] == "--help" || argv[0] == "-h") {
        std::fputs(kCacheHelp, argv.empty() ? stderr : stdout);
        return argv.empty() ? 1 : 0;
    }
    const std::vector<std::string> rest(argv.begin() + 1, argv.end());
    if (argv[0] == "ls") return cache_ls(rest);
    if (argv[0] == "stats") return cache_stats(rest);
    if (argv[0] == "verify") return cache_verify(rest);
    if (argv[0] == "prune") return cache_prune(rest);
    if (argv[0] == "clear") return cache_clear(rest);
    throw Error("unknown cache command '" + argv[0] + "': expected ls, stats, verify, prune or clear");
}

int cmd_precompile(const std::vector<std::string>& argv) {
    const Args args("precompile", argv,
                    {{"--model", true}, {"--arch", true}, {"--dtype", true}, {"--tokens", true}, {"--jobs", true},
                     {"--weight-grads", true}, {"--inference", false}});
    if (args.help()) {
        std::string models;
        for (const ModelPreset& preset : model_presets()) models += (models.empty() ? "" : ", ") + preset.name;
        std::printf(
            "usage: moejit precompile --model NAME [--arch sm_90a] [--dtype bf16] [--tokens T,...] [--jobs N]\n"
            "                         [--weight-grads fp32|dtype | --inference]\n"
            "\n"
            "Compiles every kernel the model's MoE layer launches, forward and backward, into the writable\n"
            "cache root, several at once, skipping kernels already cached, with a progress line for each\n"
            "kernel as it finishes. Needs NVRTC, no GPU: point MOEJIT_CACHE_DIR at a directory,\n"
            "precompile, and ship it (read-only through MOEJIT_CACHE_PATH if you like); a process running\n"
            "the layer then compiles nothing. The cache's size cap (MOEJIT_CACHE_MAX_SIZE) does not apply\n"
            "here. Tilings are the heuristic's: a tiling that `moejit tune` stored on the target compiles\n"
            "there at its first use.\n"
            "\n"
            "The kernels are those of the model's block, listed where the block builds them:\n"
            "  qwen3-*        Qwen3MoeBlock: the router GEMM (fwd, dX, dW fp32), top-k, routing indices and\n"
            "                 router backward; gate_up (fwd, dX, dW fp32); down (fwd); down's backward\n"
            "                 (dX, dW fp32); the combine, its backward and the gated activation's\n"
            "  llama4-scout   Llama4TextMoe: the same routing, the routed and shared experts' GEMMs in the\n"
            "                 passes it runs, the input scaling, permute and combines\n"
            "  the others     a layer built from GroupedGemm and the routing calls (examples/moe_mlp.cpp):\n"
            "                 route_topk, routing_indices, router_backward; gate_up (permute_x, gated) and\n"
            "                 down (permute_y) in every pass (fwd, dX, dW, dW fp32); down weighting its\n"
            "                 rows (fuse_mul_post: fwd, dX); gated_activation_backward, combine_topk\n"
            "and the MOEJIT_CHECK_ROUTING kernel of each GEMM.\n"
            "\n"
            "    --model NAME     %s\n"
            "    --arch ARCH      sm_80, sm_86, sm_89, sm_90a (default), sm_100a\n"
            "    --dtype DTYPE    bf16 (default) or fp16\n"
            "    --tokens T,...   token counts to expect: the tilings their calls take (on sm_90a decode-sized\n"
            "                     calls take their own); default: large calls only\n"
            "    --jobs N         compiles at once, 1 to 256 (default: one per CPU it may use, at most 32)\n"
            "    --weight-grads W the blocks' weight gradients: fp32 (default) or dtype (the --dtype, for\n"
            "                     blocks built with fp32_weight_gradients = false); the other presets' layer\n"
            "                     compiles both\n"
            "    --inference      the forward alone, of blocks built with training = false (the gated GEMMs\n"
            "                     that save no preactivation): an inference deployment's cache\n",
            models.c_str());
        return 0;
    }
    args.expect_positionals(0, 0, "");
    const auto model_name = args.value("--model");
    if (!model_name) throw Error("'moejit precompile' needs --model NAME (see moejit precompile --help)");
    const ModelPreset& model = find_model(*model_name);
    const Arch arch = Arch::parse(args.value("--arch").value_or("sm_90a"));
    const DType dtype = parse_dtype(args.value("--dtype").value_or("bf16"));
    const LayerOptions layer = parse_layer_options(args);
    unsigned jobs = 0;  // one per CPU it may use
    if (const auto text = args.value("--jobs")) {
        if (text->empty() || text->size() > 3 || text->find_first_not_of("0123456789") != std::string::npos ||
            std::stoi(*text) < 1 || std::stoi(*text) > 256)
            throw Error("bad --jobs '" + *text + "': expected 1 to 256 compiles at once");
        jobs = static_cast<unsigned>(std::stoi(*text));
    }
    // Token counts pick the tilings: each count's rows bucket for each kernel (decode-sized calls
    // take other tiles on sm_90a). Without --tokens: the large-call tilings only.
    std::vector<int64_t> token_counts;
    if (const auto tokens = args.value("--tokens")) token_counts = parse_token_counts(*tokens);

    std::vector<std::pair<Problem, Config>> kernels;
    for (const Problem& problem : model_kernels(model, arch, dtype, layer)) {
        std::vector<RowsBucket> buckets;
        for (int64_t tokens : token_counts) buckets.push_back(layer_rows_bucket(problem, tokens));
        if (buckets.empty()) buckets.push_back(RowsBucket::large);
        for (RowsBucket bucket : buckets) {
            const Config config = choose_config(problem, bucket, preferred_path());
            const bool seen = std::any_of(kernels.begin(), kernels.end(), [&](const auto& kernel) {
                return kernel.first == problem && kernel.second == config;
            });
            if (!seen) kernels.emplace_back(problem, config);
        }
    }
    // A deployment cache holds every kernel it was asked for: the size cap, meant for the JIT's
    // own cache, does not apply here.
    const DiskCache environment = DiskCache::from_environment();
    Compiler compiler(DiskCache(environment.root(), environment.read_only_roots(), /*size_cap=*/0));
    size_t compiled = 0, cached = 0, elsewhere = 0, unstored = 0, done = 0;
    const auto start = std::chrono::steady_clock::now();
    std::mutex progress;  // the counts and the progress lines, in the order the kernels finish
    const size_t threads = run_in_parallel(kernels.size(), jobs, [&](size_t i) {
        const auto& [problem, config] = kernels[i];
        const Binary binary = compiler.get(problem, config);
        std::lock_guard<std::mutex> lock(progress);
        // Whether the entry is in the writable root now: a store that failed left none.
        const bool in_root = compiler.disk().has_entry_in_root(binary.key);
        std::string where;
        if (binary.from_disk) {
            ++cached;
            if (!in_root) {
                ++elsewhere;
                where = " (in a read-only root)";
            }
        } else {
            ++compiled;
            if (!in_root) {
                ++unstored;
                where = " (not stored)";
            }
        }
        std::printf("[%zu/%zu] %s %s  %s %s%s\n", ++done, kernels.size(), to_spec(problem).c_str(),
                    config.to_string().c_str(), binary.from_disk ? "cached" : "compiled",
                    format_ms(binary.milliseconds).c_str(), where.c_str());
        std::fflush(stdout);
    });
    if (unstored > 0)
        throw Error("could not store " + std::to_string(unstored) + " of " + std::to_string(kernels.size()) +
                    " kernels in the kernel cache at " +
                    (compiler.disk().root().empty() ? std::string("(no cache directory)") : compiler.disk().root()) +
                    " (see the warning above); " + std::to_string(compiled - unstored) + " compiled and stored, " +
                    std::to_string(cached) + " already cached");
    std::printf("%zu kernels for %s (%s, %s) are in the cache at %s: %zu compiled, %zu already cached",
                kernels.size(), model.name.c_str(), arch.name().c_str(), to_string(dtype),
                compiler.disk().root().c_str(), compiled, cached);
    if (elsewhere > 0) std::printf(" (%zu of them in read-only roots)", elsewhere);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("; %.1f s, %zu at once\n", seconds, threads);
    return 0;
}

}  // namespace moejit::cli

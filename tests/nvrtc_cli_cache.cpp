// The JIT pipeline end to end without a GPU: spec strings, model presets, Compiler + disk cache
// (hits, corrupt entries, read-only roots, an unwritable root), 8 concurrent `moejit compile`
// processes, concurrent misses of one kernel (the key's lock), and the `moejit` command line. Needs
// NVRTC (label nvrtc).

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <moejit/error.hpp>
#include <moejit/problem.hpp>

#include "cache/disk_cache.hpp"
#include "codegen/config.hpp"
#include "codegen/emit.hpp"
#include "codegen/models.hpp"
#include "moe/model_kernels.hpp"
#include "runtime/compiler.hpp"
#include "runtime/nvrtc.hpp"
#include "tests/catch.hpp"
#include "tests/support/process.hpp"
#include "tests/support/env_var.hpp"
#include "tests/support/temp_dir.hpp"
#include "tests/support/errors.hpp"

using namespace moejit;
using namespace moejit::testing;
namespace fs = std::filesystem;

namespace {

const char* const kSpec = "fwd:bf16:n256:k512:e8:topk2:sm_90a";

// The cache variables of one in-process test: only `dir` (and `path`, if given) count.
struct CacheEnv {
    EnvVar dir, path, dump, log;
    explicit CacheEnv(const std::string& cache_dir, std::optional<std::string> cache_path = std::nullopt)
        : dir("MOEJIT_CACHE_DIR", cache_dir), path("MOEJIT_CACHE_PATH", std::move(cache_path)),
          dump("MOEJIT_DUMP_DIR", std::nullopt), log("MOEJIT_LOG", std::nullopt) {}
};

std::vector<char> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::vector<char>& bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    REQUIRE(out.good());
}

// Every regular file under `dir`, relative paths, sorted.
std::vector<std::string> files_under(const std::string& dir) {
    std::vector<std::string> files;
    std::error_code ec;
    if (!fs::exists(dir, ec)) return files;
    for (const auto& item : fs::recursive_directory_iterator(dir))
        if (item.is_regular_file()) files.push_back(fs::relative(item.path(), dir).string());
    std::sort(files.begin(), files.end());
    return files;
}

Problem small_problem() { return parse_spec(kSpec); }

// The flock(2) waiters blocked on the file with inode `inode`, as /proc/locks lists them ("-> FLOCK").
size_t flock_waiters(ino_t inode) {
    std::ifstream locks("/proc/locks");
    size_t waiters = 0;
    for (std::string line; std::getline(locks, line);)
        if (line.find("-> FLOCK") != std::string::npos &&
            line.find(":" + std::to_string(inode) + " ") != std::string::npos)
            ++waiters;
    return waiters;
}

}  // namespace

// --- specs and models ------------------------------------------------------------------------------

TEST_CASE("spec strings round trip for random valid problems", "[spec]") {
    const char* archs[] = {"sm_80", "sm_86", "sm_89", "sm_90a", "sm_100a"};
    std::mt19937_64 random(20240611);
    auto uniform = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(random); };
    std::set<std::string> specs;
    for (int i = 0; i < 2000; ++i) {
        Problem problem;
        problem.op = Op::fwd;
        problem.dtype = uniform(0, 1) ? DType::bf16 : DType::fp16;
        // Mostly model-sized, sometimes tiny or huge; redrawn past validate()'s bound on E * N * K (2^38:
        // a GEMM's tile counts are int), which huge N and K together with many experts exceed.
        do {
            problem.n = 8 * uniform(1, uniform(0, 3) == 0 ? int64_t{1} << 20 : 4096);
            problem.k = 8 * uniform(1, uniform(0, 3) == 0 ? int64_t{1} << 20 : 4096);
            problem.experts = static_cast<int>(uniform(1, uniform(0, 1) ? 4096 : 256));
        } while (static_cast<long double>(problem.experts) * problem.n * problem.k >=
                 static_cast<long double>(int64_t{1} << 38));
        problem.topk = static_cast<int>(uniform(1, std::min(problem.experts, 16)));
        problem.arch = Arch::parse(archs[uniform(0, 4)]);
        REQUIRE_NOTHROW(problem.validate());
        const std::string spec = to_spec(problem);
        INFO(spec);
        const Problem parsed = parse_spec(spec);
        REQUIRE(parsed == problem);
        REQUIRE(to_spec(parsed) == spec);
        specs.insert(spec);
    }
    CHECK(specs.size() > 1900);  // the generator really varies the fields

    // Every supported arch keeps its exact name, the 'a' suffix included.
    for (const char* arch : archs) {
        const Problem parsed = parse_spec(std::string("fwd:fp16:n8:k8:e1:topk1:") + arch);
        CHECK(parsed.arch.name() == arch);
        CHECK(parsed.dtype == DType::fp16);
    }
    CHECK(parse_spec("fwd:bf16:n1536:k2048:e128:topk8:sm_90a").arch.arch_specific);
    CHECK_FALSE(parse_spec("fwd:bf16:n1536:k2048:e128:topk8:sm_80").arch.arch_specific);
}

TEST_CASE("bad spec strings throw moejit::Error naming the problem", "[spec]") {
    const std::pair<const char*, const char*> bad[] = {
        {"fwd:bf16:n1536:k2048:e128:topk8:sm_90a:bogus", "bogus"},  // unknown field
        {"fwd:bf16:k2048:e128:topk8:sm_90a", "missing"},            // no n
        {"fwd:bf16:n1530:k2048:e128:topk8:sm_90a", "multiple of 8"},
        {"fwd:bf16:n1536:k2044:e128:topk8:sm_90a", "multiple of 8"},
        {"fwd:bf16:n1536:k2048:e128:topk8:sm_75", "sm_75"},  // unsupported arch
        {"fwd:bf16:n1536:k2048:e128:topk8:sm_90", "sm_90"},  // sm_90 without 'a' is not offered
        {"fwd:bf16:n1536:k2048:e4:topk8:sm_90a", "topk"},    // topk > experts
        {"fwd:bf16:n1536:k2048:e128:topk0:sm_90a", "topk"},
        {"fwd:bf16:n0:k2048:e128:topk8:sm_90a", "N"},
        {"fwd:bf16:n1536:k2048:e128:topk8", "arch"},
        {"fwd:n1536:k2048:e128:topk8:sm_90a", "dtype"},
        {"bwd:bf16:n1536:k2048:e128:topk8:sm_90a", "bwd"},
        {"fwd:fp32:n1536:k2048:e128:topk8:sm_90a", "fp32"},
        {"fwd:bf16:n-8:k2048:e128:topk8:sm_90a", "n-8"},
        {"", ""},
    };
    for (const auto& [spec, mention] : bad) {
        INFO("spec '" << spec << "'");
        try {
            parse_spec(spec);
            FAIL("parse_spec accepted a bad spec");
        } catch (const Error& error) {
            CHECK(std::string(error.what()).find(mention) != std::string::npos);
        }
    }
}

TEST_CASE("model presets give the documented shapes and kernels", "[models]") {
    struct Expected {
        const char* name;
        int64_t hidden, intermediate;
        int experts, topk;
        ModelBlock block;
    };
    const Expected expected[] = {
        {"qwen3-30b-a3b", 2048, 768, 128, 8, ModelBlock::qwen3},   {"qwen3-235b-a22b", 4096, 1536, 128, 8, ModelBlock::qwen3},
        {"deepseek-v3", 7168, 2048, 256, 8, ModelBlock::none},     {"mixtral-8x7b", 4096, 14336, 8, 2, ModelBlock::none},
        {"llama4-scout", 5120, 8192, 16, 1, ModelBlock::llama4},   {"gpt-oss-120b", 2880, 2880, 128, 4, ModelBlock::none},
    };
    REQUIRE(model_presets().size() == std::size(expected));
    const Arch arch = Arch::parse("sm_90a");
    for (const Expected& e : expected) {
        INFO(e.name);
        const ModelPreset& model = find_model(e.name);
        CHECK(model.name == e.name);
        CHECK(model.hidden == e.hidden);
        CHECK(model.intermediate == e.intermediate);
        CHECK(model.experts == e.experts);
        CHECK(model.topk == e.topk);
        CHECK(model.block == e.block);

        const Problem gate_up = model_gemm(model, "gate_up", Op::fwd, DType::bf16, arch);
        CHECK(gate_up.n == 2 * e.intermediate);
        CHECK(gate_up.k == e.hidden);
        const Problem down = model_gemm(model, "down", Op::fwd, DType::fp16, arch);
        CHECK(down.n == e.hidden);
        CHECK(down.k == e.intermediate);
        CHECK(down.dtype == DType::fp16);
        CHECK(down.experts == e.experts);
        CHECK(down.topk == e.topk);
        CHECK(down.arch == arch);

        // Every preset's layer runs gate_up forward with the gated activation fused.
        const std::vector<Problem> kernels = model_kernels(model, arch, DType::bf16);
        CHECK(std::any_of(kernels.begin(), kernels.end(), [&](const Problem& p) {
            return p.op == Op::fwd && p.gated && p.n == gate_up.n && p.k == gate_up.k && p.experts == e.experts;
        }));
    }
    CHECK(to_spec(model_gemm(find_model("qwen3-235b-a22b"), "gate_up", Op::fwd, DType::bf16, arch)) ==
          "fwd:bf16:n3072:k4096:e128:topk8:permute_x:gated:sm_90a");

    try {
        find_model("qwen4-1t");
        FAIL("find_model accepted an unknown name");
    } catch (const Error& error) {
        const std::string message = error.what();
        CHECK(message.find("qwen4-1t") != std::string::npos);
        for (const Expected& e : expected) CHECK(message.find(e.name) != std::string::npos);
    }
    CHECK_THROWS_AS(model_gemm(find_model("deepseek-v3"), "up", Op::fwd, DType::bf16, arch), Error);
}

// --- Compiler + disk cache ---------------------------------------------------------------------------

TEST_CASE("Compiler: compile, hit in a second Compiler, recompile truncated and bit-flipped entries",
          "[compiler]") {
    TempDir cache;
    CacheEnv env(cache.path);
    const Problem problem = small_problem();
    const Config config = choose_config(problem);

    Compiler first(DiskCache::from_environment());
    REQUIRE(first.disk().root() == cache.path);
    const Binary compiled = first.get(problem, config);
    CHECK_FALSE(compiled.from_disk);
    REQUIRE(!compiled.cubin.empty());
    CHECK(compiled.kernel_name.find("sm90_row_grouped_gemm") != std::string::npos);  // sm_90a: the Hopper path
    CHECK(compiled.log.find("registers") != std::string::npos);
    const std::string entry = first.disk().entry_path(compiled.key);
    REQUIRE(fs::is_regular_file(entry));
    CHECK(fs::is_regular_file(entry.substr(0, entry.size() - 6) + ".cu"));  // the source beside it

    auto fresh_get = [&]() { return Compiler(DiskCache::from_environment()).get(problem, config); };
    auto all_valid = [&]() {
        const std::vector<CacheEntryInfo> infos = DiskCache::from_environment().list(true).entries;
        REQUIRE(infos.size() == 1);
        CHECK(infos[0].path == entry);
        CHECK(infos[0].valid);
    };

    const Binary hit = fresh_get();
    CHECK(hit.from_disk);
    CHECK(hit.key == compiled.key);
    CHECK(hit.kernel_name == compiled.kernel_name);
    CHECK(hit.cubin == compiled.cubin);
    CHECK(hit.log.empty());

    SECTION("a truncated entry is recompiled and replaced") {
        std::vector<char> bytes = read_bytes(entry);
        bytes.resize(bytes.size() / 2);
        write_bytes(entry, bytes);
    }
    SECTION("an entry truncated inside its header is recompiled and replaced") {
        std::vector<char> bytes = read_bytes(entry);
        bytes.resize(20);
        write_bytes(entry, bytes);
    }
    SECTION("a bit flip in the payload is recompiled and replaced") {
        std::vector<char> bytes = read_bytes(entry);
        bytes[bytes.size() - bytes.size() / 3] ^= 0x10;  // well inside the cubin bytes
        write_bytes(entry, bytes);
    }
    SECTION("an empty entry file is recompiled and replaced") { write_bytes(entry, {}); }

    // The damaged entry is a miss...
    CHECK_FALSE(DiskCache::from_environment().list(true).entries.at(0).valid);
    const Binary recompiled = fresh_get();
    CHECK_FALSE(recompiled.from_disk);
    CHECK(recompiled.key == compiled.key);
    CHECK(recompiled.kernel_name == compiled.kernel_name);
    CHECK(!recompiled.cubin.empty());
    // ...replaced by a valid entry that the next Compiler hits.
    all_valid();
    const Binary hit_again = fresh_get();
    CHECK(hit_again.from_disk);
    CHECK(hit_again.cubin == recompiled.cubin);
    CHECK(hit_again.kernel_name == compiled.kernel_name);
    for (const std::string& file : files_under(cache.path)) CHECK(file.find(".tmp") == std::string::npos);
}

TEST_CASE("MOEJIT_LINEINFO compiles kernels with line tables, cached under keys of their own", "[compiler]") {
    TempDir cache;
    CacheEnv env(cache.path);
    const Problem problem = parse_spec("fwd:bf16:n256:k512:e8:topk2:sm_80");  // a quick compile
    const Config config = choose_config(problem);
    struct Build {
        std::vector<std::string> options;
        std::string ptx;
        Binary binary;
    };
    auto build = [&](std::optional<std::string> lineinfo) {
        EnvVar variable("MOEJIT_LINEINFO", std::move(lineinfo));
        Build result;
        result.options = nvrtc_options(problem.arch);
        result.ptx = nvrtc_compile(emit_source(problem, config), result.options).ptx;
        result.binary = Compiler(DiskCache::from_environment()).get(problem, config);
        return result;
    };
    auto has_lineinfo = [](const Build& b) {
        return std::count(b.options.begin(), b.options.end(), "-lineinfo") == 1;
    };

    const Build plain = build(std::nullopt), off = build("0"), on = build("1"), on_again = build("ON");
    CHECK_FALSE(has_lineinfo(plain));
    CHECK_FALSE(has_lineinfo(off));
    CHECK(has_lineinfo(on));
    CHECK(has_lineinfo(on_again));
    // The PTX maps instructions to the embedded template's lines.
    CHECK(plain.ptx.find(".loc") == std::string::npos);
    CHECK(on.ptx.find(".loc") != std::string::npos);
    CHECK(on.ptx.find("sm80_grouped_gemm.cuh") != std::string::npos);
    // A kernel with line tables never stands in for one without, nor the other way round.
    CHECK_FALSE(plain.binary.from_disk);
    CHECK(off.binary.from_disk);
    CHECK(off.binary.key == plain.binary.key);
    CHECK_FALSE(on.binary.from_disk);
    CHECK(on.binary.key != plain.binary.key);
    CHECK(on_again.binary.from_disk);
    CHECK(on_again.binary.key == on.binary.key);
    CHECK(DiskCache::from_environment().list(true).entries.size() == 2);
}

TEST_CASE("Compiler: a read-only root from MOEJIT_CACHE_PATH is hit and the writable root stays empty",
          "[compiler]") {
    TempDir shipped, local;
    const Problem problem = small_problem();
    const Config config = choose_config(problem);
    Binary built;
    {
        CacheEnv env(shipped.path);
        built = Compiler(DiskCache::from_environment()).get(problem, config);
        REQUIRE_FALSE(built.from_disk);
    }
    const std::vector<std::string> shipped_files = files_under(shipped.path);
    REQUIRE(shipped_files.size() == 2);  // <key>.cubin and <key>.cu

    CacheEnv env(local.path, shipped.path);
    Compiler compiler(DiskCache::from_environment());
    REQUIRE(compiler.disk().read_only_roots() == std::vector<std::string>{shipped.path});
    const Binary hit = compiler.get(problem, config);
    CHECK(hit.from_disk);
    CHECK(hit.key == built.key);
    CHECK(hit.cubin == built.cubin);
    CHECK(hit.kernel_name == built.kernel_name);
    CHECK(files_under(local.path).empty());
    CHECK(files_under(shipped.path) == shipped_files);

    // The CLI sees the same: the entry is listed as read-only, and clear leaves it alone.
    const ProcessResult ls =
        run_cli({"cache", "ls"}, {{"MOEJIT_CACHE_DIR", local.path}, {"MOEJIT_CACHE_PATH", shipped.path}});
    CHECK(ls.status == 0);
    CHECK(ls.out.find(built.key.hex()) != std::string::npos);
    CHECK(ls.out.find("ro " + shipped.path) != std::string::npos);
    const ProcessResult clear =
        run_cli({"cache", "clear"}, {{"MOEJIT_CACHE_DIR", local.path}, {"MOEJIT_CACHE_PATH", shipped.path}});
    CHECK(clear.status == 0);
    CHECK(clear.out.find("removed 0 entries") != std::string::npos);
    CHECK(files_under(shipped.path) == shipped_files);
}

TEST_CASE("moejit compile with an unwritable cache directory works and warns once", "[cli]") {
    TempDir tmp;
    // A path under a regular file cannot be created, even by root (chmod would not stop root).
    write_bytes(tmp / "not-a-dir", {'x'});
    const std::string unwritable = tmp / "not-a-dir/cache";

    const ProcessResult compile = run_cli({"compile", kSpec}, {{"MOEJIT_CACHE_DIR", unwritable}});
    CHECK(compile.status == 0);
    CHECK(count_of(compile.err, "[moejit warning]") == 1);
    CHECK(compile.err.find("cannot write the kernel cache") != std::string::npos);
    CHECK(compile.out.find("not written") != std::string::npos);
    CHECK(std::regex_search(compile.out, std::regex(R"(key\s+[0-9a-f]{32})")));

    // precompile exists to fill a cache: with nowhere to write it fails, after one warning.
    const ProcessResult precompile =
        run_cli({"precompile", "--model", "qwen3-30b-a3b"}, {{"MOEJIT_CACHE_DIR", unwritable}});
    CHECK(precompile.status == 1);
    CHECK(count_of(precompile.err, "[moejit warning]") == 1);
    const std::string total =
        std::to_string(model_kernels(find_model("qwen3-30b-a3b"), Arch::parse("sm_90a"), DType::bf16).size());
    CHECK(precompile.err.find("moejit: could not store " + total + " of " + total + " kernels") != std::string::npos);
    CHECK(precompile.err.find("0 compiled and stored, 0 already cached") != std::string::npos);
    CHECK(read_text(tmp / "not-a-dir") == "x");
}

TEST_CASE("moejit compile with a directory at the entry's path says it wrote nothing", "[cli]") {
    TempDir tmp;
    const std::string cache = tmp / "cache";
    const ProcessResult first = run_cli({"compile", kSpec}, {{"MOEJIT_CACHE_DIR", cache}});
    REQUIRE(first.status == 0);
    std::smatch match;
    REQUIRE(std::regex_search(first.out, match, std::regex(R"(cache\s+(/\S+\.cubin))")));
    const std::string entry = match[1];
    REQUIRE(fs::is_regular_file(entry));
    fs::remove(entry);
    fs::create_directory(entry);

    const ProcessResult second = run_cli({"compile", kSpec}, {{"MOEJIT_CACHE_DIR", cache}});
    INFO(second.out << second.err);
    CHECK(second.status == 0);
    CHECK(count_of(second.err, "[moejit warning]") == 1);
    CHECK(second.out.find("not written (the store to " + entry + " failed") != std::string::npos);
    CHECK(fs::is_directory(entry));
}

TEST_CASE("moejit precompile counts the kernels it stored when some stores fail", "[cli]") {
    TempDir tmp;
    const std::string cache = tmp / "cache";
    const ModelPreset& model = find_model("qwen3-30b-a3b");
    Problem gate_up = model_gemm(model, ModelGemm::gate_up, Op::fwd, DType::bf16, Arch::parse("sm_90a"));
    gate_up.saves_preactivation = true;  // the training block's gated forward, which precompile lists
    const Config config = choose_config(gate_up);
    const std::string key =
        make_key(Compiler(DiskCache(cache, {})).key_inputs(emit_source(gate_up, config), gate_up.arch)).hex();
    // A file where the gate_up kernel's shard directory belongs: its store fails, and the kernels
    // before it (the router's) are stored already.
    fs::create_directories(cache);
    write_bytes(cache + "/" + key.substr(0, 2), {'x'});

    const ProcessResult result = run_cli({"precompile", "--model", "qwen3-30b-a3b"}, {{"MOEJIT_CACHE_DIR", cache}});
    CHECK(result.status == 1);
    CHECK(result.out.find(to_spec(gate_up) + " " + config.to_string() + "  compiled") != std::string::npos);
    CHECK(result.out.find("(not stored)") != std::string::npos);
    std::smatch match;
    REQUIRE(std::regex_search(result.err, match,
                              std::regex(R"(could not store (\d+) of (\d+) kernels in the kernel cache at .*; )"
                                         R"((\d+) compiled and stored, 0 already cached)")));
    const size_t unstored = std::stoul(match[1]), total = std::stoul(match[2]), stored = std::stoul(match[3]);
    CHECK(total == model_kernels(model, Arch::parse("sm_90a"), DType::bf16).size());
    CHECK(unstored >= 1);
    CHECK(stored >= 1);
    CHECK(stored + unstored == total);
    // What it says it stored is what the cache holds.
    const std::vector<std::string> files = files_under(cache);
    CHECK(size_t(std::count_if(files.begin(), files.end(), [](const std::string& file) {
              return file.size() > 6 && file.compare(file.size() - 6, 6, ".cubin") == 0;
          })) == stored);
}

// --- concurrency ------------------------------------------------------------------------------------

TEST_CASE("8 processes compiling the same kernel into one empty cache leave one valid entry", "[cli]") {
    TempDir tmp;
    const std::string cache = tmp / "cache";  // does not exist yet: the processes race to create it
    StartGate gate;
    std::vector<Child> children;
    for (int i = 0; i < 8; ++i)
        children.push_back(spawn_cli({"compile", kSpec}, {{"MOEJIT_CACHE_DIR", cache}}, "", &gate));
    gate.release();  // all 8 are forked and waiting: release them at once

    std::set<std::string> keys;
    for (const Child& child : children) {
        const ProcessResult result = wait_for(child);
        INFO("stdout:\n" << result.out << "\nstderr:\n" << result.err);
        CHECK(result.status == 0);
        CHECK(result.err.empty());
        std::smatch match;
        REQUIRE(std::regex_search(result.out, match, std::regex(R"(key\s+([0-9a-f]{32}))")));
        keys.insert(match[1]);
    }
    REQUIRE(keys.size() == 1);
    const std::string key = *keys.begin();
    const std::string shard = key.substr(0, 2);
    CHECK(files_under(cache) == std::vector<std::string>{shard + "/" + key + ".cu", shard + "/" + key + ".cubin"});

    const ProcessResult verify = run_cli({"cache", "verify"}, {{"MOEJIT_CACHE_DIR", cache}});
    CHECK(verify.status == 0);
    CHECK(verify.out.find("1 entry checked, 0 invalid") != std::string::npos);

    // And the entry is the kernel: a Compiler in this process hits it.
    CacheEnv env(cache);
    const Binary hit = Compiler(DiskCache::from_environment()).get(small_problem(), choose_config(small_problem()));
    CHECK(hit.from_disk);
    CHECK(hit.key.hex() == key);
}

TEST_CASE("Compiler: a miss while another process holds the key's lock waits, then hits the entry it stored",
          "[compiler]") {
    TempDir cache;
    CacheEnv env(cache.path);
    const Problem problem = small_problem();
    const Config config = choose_config(problem);
    // What the other process stores, compiled beforehand so that the test waits on the lock alone.
    Compiler other(DiskCache::from_environment());
    const Source source = emit_source(problem, config);
    const Hash128 key = make_key(other.key_inputs(source, problem.arch));
    const NvrtcOutput built = other.compile_uncached(problem, config);
    const std::string shard = key.hex().substr(0, 2);

    // Held as another process holds it: flock(2) on <root>/<shard>/<key>.lock.
    fs::create_directories(cache / shard);
    const std::string lock_path = cache / (shard + "/" + key.hex() + ".lock");
    const int lock_fd = ::open(lock_path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
    REQUIRE(lock_fd >= 0);
    REQUIRE(::flock(lock_fd, LOCK_EX) == 0);
    struct stat lock_file {};
    REQUIRE(::fstat(lock_fd, &lock_file) == 0);

    std::atomic<bool> finished{false};
    Binary waited;
    std::string failure;
    std::thread compile([&] {
        try {
            waited = Compiler(DiskCache::from_environment()).get(problem, config);
        } catch (const std::exception& error) {
            failure = error.what();
        }
        finished = true;
    });
    // Until the compile blocks on the lock, or (without one) gets done regardless.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
    while (!finished && flock_waiters(lock_file.st_ino) == 0 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    const bool blocked = flock_waiters(lock_file.st_ino) > 0;
    DiskCache(cache.path, {}).store(key, CacheEntry{built.lowered_name, built.cubin}, source.text);
    ::close(lock_fd);  // lets the compile go
    compile.join();

    INFO(failure);
    CHECK(failure.empty());
    CHECK(blocked);
    CHECK(waited.from_disk);  // it looked again once it held the lock, and did not run NVRTC
    CHECK(waited.key == key);
    CHECK(waited.kernel_name == built.lowered_name);
    CHECK(waited.cubin == built.cubin);
    // Its last holder removed the lock file.
    CHECK(files_under(cache.path) ==
          std::vector<std::string>{shard + "/" + key.hex() + ".cu", shard + "/" + key.hex() + ".cubin"});
}

TEST_CASE("Compiler: two compiles of one kernel at once into one empty cache run NVRTC once", "[compiler]") {
    TempDir cache;
    CacheEnv env(cache.path);
    const Problem problem = small_problem();
    const Config config = choose_config(problem);
    Binary results[2];
    std::string failures[2];
    std::atomic<int> ready{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < 2; ++i)
        threads.emplace_back([&, i] {
            Compiler compiler(DiskCache::from_environment());  // each its own, as two processes
            ++ready;
            while (ready < 2) std::this_thread::yield();
            try {
                results[i] = compiler.get(problem, config);
            } catch (const std::exception& error) {
                failures[i] = error.what();
            }
        });
    for (std::thread& thread : threads) thread.join();
    for (const std::string& failure : failures) CHECK(failure.empty());
    CHECK(results[0].from_disk != results[1].from_disk);
    CHECK(results[0].key == results[1].key);
    CHECK(results[0].cubin == results[1].cubin);
    const std::string hex = results[0].key.hex();
    CHECK(files_under(cache.path) ==
          std::vector<std::string>{hex.substr(0, 2) + "/" + hex + ".cu", hex.substr(0, 2) + "/" + hex + ".cubin"});
}

// --- the command line ------------------------------------------------------------------------------

TEST_CASE("moejit --help, every command's --help, and usage errors", "[cli]") {
    TempDir cache;
    const ProcessResult help = run_cli({"--help"}, {{"MOEJIT_CACHE_DIR", cache.path}});
    CHECK(help.status == 0);
    for (const char* command : {"source", "ptx", "sass", "compile", "precompile", "cache"})
        CHECK(help.out.find(command) != std::string::npos);

    const ProcessResult none = run_cli({}, {{"MOEJIT_CACHE_DIR", cache.path}});
    CHECK(none.status == 1);
    CHECK(none.err.find("usage: moejit") != std::string::npos);

    const std::vector<std::vector<std::string>> commands = {
        {"source"}, {"ptx"}, {"sass"}, {"compile"}, {"precompile"}, {"cache"},
        {"cache", "ls"}, {"cache", "stats"}, {"cache", "verify"}, {"cache", "clear"}};
    for (std::vector<std::string> command : commands) {
        const std::string name = command[0];
        command.push_back("--help");
        const ProcessResult result = run_cli(command, {{"MOEJIT_CACHE_DIR", cache.path}});
        INFO("moejit " << name << " --help");
        CHECK(result.status == 0);
        CHECK(result.out.find("moejit " + name) != std::string::npos);
        CHECK(result.err.empty());
    }
    CHECK(run_cli({"help", "ptx"}, {{"MOEJIT_CACHE_DIR", cache.path}}).out.find("moejit ptx") != std::string::npos);
    const std::string precompile = run_cli({"precompile", "--help"}, {{"MOEJIT_CACHE_DIR", cache.path}}).out;
    for (const char* names : {"Qwen3MoeBlock", "Llama4TextMoe", "dW fp32", "MOEJIT_CHECK_ROUTING"})
        CHECK(precompile.find(names) != std::string::npos);

    for (const std::vector<std::string>& bad : std::vector<std::vector<std::string>>{
             {"frobnicate"},
             {"source"},
             {"source", "fwd:bf16:n1536:k2048:e128:topk8:sm_75"},
             {"ptx", "fwd:bf16:n1530:k2048:e128:topk8:sm_90a"},
             {"compile", kSpec, "--bogus"},
             {"source", kSpec, "--dtype", "fp16"},
             {"source", "--model", "qwen3-30b-a3b"},
             {"source", "--model", "nope", "--gemm", "down"},
             {"source", "--model", "qwen3-30b-a3b", "--gemm", "down", "--pass", "bwd"},
             {"source", kSpec, "--config", "m128n128s9w2x4"},
             {"precompile"},
             {"precompile", "--model", "qwen3-30b-a3b", "--tokens", "12,x"},
             {"cache"},
             {"cache", "prune-all"},
         }) {
        const ProcessResult result = run_cli(bad, {{"MOEJIT_CACHE_DIR", cache.path}});
        INFO("moejit " << bad[0] << (bad.size() > 1 ? " " + bad[1] : std::string()));
        CHECK(result.status == 1);
        CHECK(!result.err.empty());
        if (bad[0] != "cache" || bad.size() > 1) {
            CHECK(result.err.rfind("moejit: ", 0) == 0);
            CHECK(result.out.empty());
        }
    }
    CHECK(files_under(cache.path).empty());  // nothing above compiles or writes
}

TEST_CASE("moejit source, source --expand, ptx and sass", "[cli]") {
    TempDir cache;
    const Problem problem = small_problem();
    const Source source = emit_source(problem, choose_config(problem));

    const ProcessResult plain = run_cli({"source", kSpec}, {{"MOEJIT_CACHE_DIR", cache.path}});
    CHECK(plain.status == 0);
    CHECK(plain.out == source.text);

    // The --model form names the same kernel as its spec string.
    const ProcessResult by_model =
        run_cli({"source", "--model", "qwen3-30b-a3b", "--gemm", "down"}, {{"MOEJIT_CACHE_DIR", cache.path}});
    CHECK(by_model.status == 0);
    const Problem down = model_gemm(find_model("qwen3-30b-a3b"), "down", Op::fwd, DType::bf16, Arch::parse("sm_90a"));
    CHECK(by_model.out == emit_source(down, choose_config(down)).text);
    CHECK(run_cli({"source", to_spec(down)}, {{"MOEJIT_CACHE_DIR", cache.path}}).out == by_model.out);
    const ProcessResult fp16 = run_cli(
        {"source", "--model", "mixtral-8x7b", "--gemm=gate_up", "--pass", "fwd", "--dtype", "fp16", "--arch", "sm_80"},
        {{"MOEJIT_CACHE_DIR", cache.path}});
    CHECK(fp16.out.find("fwd:fp16:n28672:k4096:e8:topk2:permute_x:gated:sm_80") != std::string::npos);

    const ProcessResult config =
        run_cli({"source", kSpec, "--config", "m128n64s3w2x2"}, {{"MOEJIT_CACHE_DIR", cache.path}});
    CHECK(config.status == 0);
    CHECK(config.out.find("/*TileN=*/64, /*Stages=*/3") != std::string::npos);

    const ProcessResult expanded = run_cli({"source", kSpec, "--expand"}, {{"MOEJIT_CACHE_DIR", cache.path}});
    CHECK(expanded.status == 0);
    CHECK(expanded.out.find("sm90_row_grouped_gemm") != std::string::npos);
    CHECK(expanded.out.find("GroupedTileScheduler") != std::string::npos);
    CHECK(expanded.out.find("struct alignas(2) bf16") != std::string::npos);  // common/types.cuh
    CHECK(count_of(expanded.out, "struct alignas(2) bf16") == 1);             // each header once
    CHECK(expanded.out.find("Sm90RowGroupedConfig<") != std::string::npos);  // the generated part
    CHECK_FALSE(std::regex_search(expanded.out, std::regex(R"((^|\n)\s*#\s*include\s*")")));
    // The expansion is the whole translation unit: it compiles on its own to the same kernel.
    Source standalone = source;
    standalone.text = expanded.out;
    const NvrtcOutput output = nvrtc_compile(standalone, nvrtc_options(problem.arch));
    CHECK(!output.cubin.empty());
    CHECK(output.lowered_name.find("sm90_row_grouped_gemm") != std::string::npos);

    const ProcessResult ptx = run_cli({"ptx", kSpec}, {{"MOEJIT_CACHE_DIR", cache.path}});
    CHECK(ptx.status == 0);
    CHECK(ptx.out.find("wgmma.mma_async") != std::string::npos);
    CHECK(ptx.out.find(".target sm_90a") != std::string::npos);
    CHECK(ptx.out.find(output.lowered_name) != std::string::npos);

    const ProcessResult sass = run_cli({"sass", kSpec}, {{"MOEJIT_CACHE_DIR", cache.path}});
    if (sass.status == 0) {
        CHECK(sass.out.find("HGMMA") != std::string::npos);
    } else {
        CHECK(sass.status == 1);
        CHECK(sass.err.find("moejit: neither nvdisasm nor cuobjdump was found") != std::string::npos);
    }
    // None of these touch the cache, and sass leaves no temporary cubin behind.
    CHECK(files_under(cache.path).empty());
}

TEST_CASE("moejit precompile --tokens adds the tilings of decode-sized calls", "[cli]") {
    TempDir tmp;
    const std::string cache = tmp.path + "/cache";
    const ProcessResult result =
        run_cli({"precompile", "--model", "qwen3-30b-a3b", "--tokens", "1,8192"}, {{"MOEJIT_CACHE_DIR", cache}});
    REQUIRE(result.status == 0);
    // Every kernel once per distinct tiling: on sm_90a the forward and dX of every GEMM, the
    // router's included (1 token: 1 row), have a decode tiling of their own; dW and the
    // elementwise kernels keep one.
    size_t expected = 0, decode_tilings = 0;
    for (const Problem& problem :
         model_kernels(find_model("qwen3-30b-a3b"), Arch::parse("sm_90a"), DType::bf16)) {
        if (!is_elementwise(problem.op)) CHECK(layer_rows_bucket(problem, 1) == RowsBucket::decode);
        const Config decode = choose_config(problem, RowsBucket::decode);
        const Config large = choose_config(problem, RowsBucket::large);
        expected += decode == large ? 1 : 2;
        decode_tilings += decode == large ? 0 : 1;
        CHECK(result.out.find(to_spec(problem) + " " + decode.to_string() + "  compiled") != std::string::npos);
        CHECK(result.out.find(to_spec(problem) + " " + large.to_string() + "  compiled") != std::string::npos);
    }
    // fwd and dX of gate_up, down's fwd, its backward's dX, the router's dX (its forward, one
    // 128-column tile of outputs, takes 64-row tiles at every row count)
    CHECK(decode_tilings == 5);
    CHECK(result.out.find(std::to_string(expected) + " compiled, 0 already cached") != std::string::npos);
    const ProcessResult no_tokens =
        run_cli({"precompile", "--model", "qwen3-30b-a3b", "--tokens", "0"}, {{"MOEJIT_CACHE_DIR", cache}});
    CHECK(no_tokens.status == 1);
}

TEST_CASE("MOEJIT_DUMP_DIR is created with its missing parents; one that cannot be says why", "[cli]") {
    TempDir tmp;
    const std::string dump = tmp / "missing/parents/dump";
    const ProcessResult compile =
        run_cli({"compile", kSpec}, {{"MOEJIT_CACHE_DIR", tmp / "cache"}, {"MOEJIT_DUMP_DIR", dump}});
    REQUIRE(compile.status == 0);
    CHECK(compile.err.empty());
    std::smatch match;
    REQUIRE(std::regex_search(compile.out, match, std::regex(R"(key\s+([0-9a-f]{32}))")));
    for (const char* suffix : {".cu", ".ptx", ".log"}) CHECK(fs::is_regular_file(dump + "/" + match[1].str() + suffix));
    CHECK(read_text(dump + "/" + match[1].str() + ".cu").find("#include") != std::string::npos);

    write_bytes(tmp / "file", {'x'});  // a parent that is a file: no directory can be made under it
    const ProcessResult blocked =
        run_cli({"compile", kSpec}, {{"MOEJIT_CACHE_DIR", tmp / "cache"}, {"MOEJIT_DUMP_DIR", tmp / "file/dump"}});
    CHECK(blocked.status == 0);  // dumping is a debugging aid: the compile itself goes on
    CHECK(count_of(blocked.err, "MOEJIT_DUMP_DIR=" + (tmp / "file/dump") + " is not writable (") == 1);

    // A full disk lets the files open and fails their writes: /dev/full stands in for it.
    const std::string full = tmp / "full";
    fs::create_directories(full);
    fs::create_symlink("/dev/full", full + "/" + match[1].str() + ".cu");
    const ProcessResult no_space =
        run_cli({"compile", kSpec}, {{"MOEJIT_CACHE_DIR", tmp / "cache"}, {"MOEJIT_DUMP_DIR", full}});
    CHECK(no_space.status == 0);
    CHECK(count_of(no_space.err, "MOEJIT_DUMP_DIR=" + full + " is not writable (" + full + "/" + match[1].str() +
                                     ".cu: cannot write)") == 1);
}

TEST_CASE("moejit compile compiles an elementwise kernel, which has no tiling to report", "[cli]") {
    TempDir tmp;
    const ProcessResult compile =
        run_cli({"compile", "combine:bf16:n2048:k2048:e8:topk8:sm_90a"}, {{"MOEJIT_CACHE_DIR", tmp / "cache"}});
    REQUIRE(compile.status == 0);
    CHECK(compile.out.find("spec       combine:bf16:n2048:k2048:e8:topk8:sm_90a") != std::string::npos);
    CHECK(compile.out.find("config     none (elementwise)") != std::string::npos);
    CHECK(std::regex_search(compile.out, std::regex(R"(registers\s+\d+)")));
}

// The deployment promise end to end: after `moejit precompile --model M --tokens ...`, every kernel
// the model's block asks for, in the tiling its calls of those token counts take, is a disk hit.
TEST_CASE("moejit precompile fills the cache with every kernel the MoE blocks request", "[cli][blocks]") {
    const Arch arch = Arch::parse("sm_90a");
    const std::vector<int64_t> token_counts = {16, 8192};
    struct Case {
        const char* model;
        std::vector<Problem> kernels;
    };
    const Case cases[] = {
        {"qwen3-30b-a3b", Qwen3MoeBlock::kernels(qwen3_moe_config(find_model("qwen3-30b-a3b"), DType::bf16), arch)},
        {"llama4-scout", Llama4TextMoe::kernels(llama4_moe_config(find_model("llama4-scout"), DType::bf16), arch)},
    };
    for (const Case& c : cases) {
        INFO(c.model);
        TempDir tmp;
        const std::string cache = tmp / "cache";
        // A deployment cache keeps everything it was asked for: the JIT cache's size cap does not apply.
        const ProcessResult result = run_cli({"precompile", "--model", c.model, "--tokens", "16,8192"},
                                             {{"MOEJIT_CACHE_DIR", cache}, {"MOEJIT_CACHE_MAX_SIZE", "64K"}});
        REQUIRE(result.status == 0);
        CacheEnv env(cache);
        Compiler compiler(DiskCache::from_environment());
        std::vector<std::pair<Problem, Config>> expected;  // distinct kernels in the block's tilings
        for (const Problem& problem : c.kernels)
            for (int64_t tokens : token_counts) {
                const Config config = choose_config(problem, layer_rows_bucket(problem, tokens));
                INFO(to_spec(problem) << " " << config.to_string() << " for " << tokens << " tokens");
                CHECK(compiler.get(problem, config).from_disk);
                if (std::find(expected.begin(), expected.end(), std::make_pair(problem, config)) == expected.end())
                    expected.emplace_back(problem, config);
            }
        // Nothing more was compiled than the block asks for.
        auto cubins = [&] {
            size_t entries = 0;
            for (const auto& file : fs::recursive_directory_iterator(cache))
                entries += file.path().extension() == ".cubin";
            return entries;
        };
        CHECK(cubins() == expected.size());
        CHECK(c.kernels.size() >= 18);
        if (std::string(c.model) != "qwen3-30b-a3b") continue;

        // Precompiling the block built with `options` into the same cache: every kernel of its list
        // ends up there, and those not there before are the ones `is_new` expects. Returns how many.
        auto precompile_more = [&](const char* option, const char* value, LayerOptions options, auto&& is_new) {
            std::vector<std::string> args = {"precompile", "--model", c.model, "--tokens", "16,8192", option};
            if (value != nullptr) args.push_back(value);
            REQUIRE(run_cli(args, {{"MOEJIT_CACHE_DIR", cache}}).status == 0);
            size_t added = 0;
            for (const Problem& problem :
                 Qwen3MoeBlock::kernels(qwen3_moe_config(find_model(c.model), DType::bf16, options), arch))
                for (int64_t tokens : token_counts) {
                    const Config config = choose_config(problem, layer_rows_bucket(problem, tokens));
                    INFO(option << ": " << to_spec(problem) << " " << config.to_string() << " for " << tokens
                                << " tokens");
                    CHECK(compiler.get(problem, config).from_disk);
                    if (std::find(expected.begin(), expected.end(), std::make_pair(problem, config)) == expected.end()) {
                        CHECK(is_new(problem));
                        expected.emplace_back(problem, config);
                        ++added;
                    }
                }
            CHECK(cubins() == expected.size());
            return added;
        };
        // A block built without fp32_weight_gradients: --weight-grads dtype adds its dW kernels, and
        // only those (the router's, gate_up's and down's dW at least).
        CHECK(precompile_more("--weight-grads", "dtype", LayerOptions{true, false},
                              [](const Problem& p) { return p.op == Op::dw && !p.out_fp32; }) >= 3);
        // An inference deployment: --inference needs the gated forward that saves nothing, which
        // it adds; every other kernel of the forward is already there.
        CHECK(precompile_more("--inference", nullptr, LayerOptions{false, true}, [](const Problem& p) {
                  return p.op == Op::fwd && p.gated && !p.saves_preactivation;
              }) >= 1);
    }
}

TEST_CASE("moejit compile, precompile and cache ls|stats|verify|clear", "[cli]") {
    TempDir tmp;
    const std::string cache = tmp / "cache";

    const ProcessResult compile = run_cli({"compile", kSpec}, {{"MOEJIT_CACHE_DIR", cache}});
    REQUIRE(compile.status == 0);
    CHECK(compile.err.empty());
    std::smatch match;
    REQUIRE(std::regex_search(compile.out, match, std::regex(R"(key\s+([0-9a-f]{32}))")));
    const std::string key = match[1];
    CHECK(compile.out.find("spec       " + std::string(kSpec)) != std::string::npos);
    CHECK(compile.out.find("config     " + choose_config(small_problem()).to_string()) != std::string::npos);
    REQUIRE(std::regex_search(compile.out, match, std::regex(R"(registers\s+(\d+))")));
    CHECK(std::stoi(match[1]) > 16);
    CHECK(std::stoi(match[1]) <= 255);
    CHECK(std::regex_search(compile.out, std::regex(R"(compile\s+[0-9.]+ ms)")));
    CHECK(compile.out.find("spills     0 bytes stores, 0 bytes loads") != std::string::npos);
    const std::string entry = cache + "/" + key.substr(0, 2) + "/" + key + ".cubin";
    CHECK(compile.out.find("cache      " + entry) != std::string::npos);
    REQUIRE(fs::is_regular_file(entry));
    // compile always runs NVRTC, and rewrites the entry it finds.
    const ProcessResult again = run_cli({"compile", kSpec}, {{"MOEJIT_CACHE_DIR", cache}});
    CHECK(again.status == 0);
    CHECK(again.out.find(key) != std::string::npos);
    CHECK(fs::is_regular_file(entry));

    const ProcessResult clear_one = run_cli({"cache", "clear"}, {{"MOEJIT_CACHE_DIR", cache}});
    CHECK(clear_one.status == 0);
    CHECK(clear_one.out.find("removed 1 entry and 0 tuning records from " + cache) != std::string::npos);
    CHECK(files_under(cache).empty());

    const ProcessResult precompile =
        run_cli({"precompile", "--model", "qwen3-30b-a3b", "--arch", "sm_90a"}, {{"MOEJIT_CACHE_DIR", cache}});
    REQUIRE(precompile.status == 0);
    CHECK(precompile.err.empty());
    const std::vector<Problem> kernels =
        model_kernels(find_model("qwen3-30b-a3b"), Arch::parse("sm_90a"), DType::bf16);
    const size_t count = kernels.size();
    const std::string n = std::to_string(count);
    REQUIRE(count == 18);
    // One line a kernel, numbered in the order the compiles finish (several run at once).
    for (size_t i = 0; i < count; ++i) {
        const std::string line = "/" + n + "] " + to_spec(kernels[i]) + " " + choose_config(kernels[i]).to_string() +
                                 "  compiled ";
        CHECK(count_of(precompile.out, line) == 1);
        CHECK(count_of(precompile.out, "[" + std::to_string(i + 1) + "/" + n + "] ") == 1);
    }
    CHECK(precompile.out.find("in the cache at " + cache + ": " + n + " compiled, 0 already cached") !=
          std::string::npos);
    std::vector<CacheEntryInfo> infos;
    {
        CacheEnv env(cache);
        infos = DiskCache::from_environment().list(true).entries;
    }
    REQUIRE(infos.size() == count);
    for (const CacheEntryInfo& info : infos) {
        CHECK(info.valid);
        CHECK_FALSE(info.read_only_root);
    }
    // The entries are the kernels the library looks up: a Compiler hits both.
    {
        CacheEnv env(cache);
        Compiler compiler(DiskCache::from_environment());
        for (const Problem& problem : kernels) CHECK(compiler.get(problem, choose_config(problem)).from_disk);
    }
    // Token counts whose rows buckets are all the large one (4096 would add the medium bucket's
    // swapped kernels): everything is cached already.
    const ProcessResult cached =
        run_cli({"precompile", "--model", "qwen3-30b-a3b", "--tokens", "2048,8192"}, {{"MOEJIT_CACHE_DIR", cache}});
    CHECK(cached.status == 0);
    CHECK(count_of(cached.out, "  cached ") == count);
    CHECK(cached.out.find("0 compiled, " + n + " already cached") != std::string::npos);

    const ProcessResult ls = run_cli({"cache", "ls"}, {{"MOEJIT_CACHE_DIR", cache}});
    CHECK(ls.status == 0);
    CHECK(count_of(ls.out, "\n") == count);
    for (const CacheEntryInfo& info : infos) CHECK(ls.out.find(info.key_hex) != std::string::npos);
    CHECK(count_of(ls.out, "rw " + cache) == count);
    const ProcessResult ls_verify = run_cli({"cache", "ls", "--verify"}, {{"MOEJIT_CACHE_DIR", cache}});
    CHECK(count_of(ls_verify.out, "  valid") == count);

    const ProcessResult stats = run_cli({"cache", "stats"}, {{"MOEJIT_CACHE_DIR", cache}});
    CHECK(stats.status == 0);
    CHECK(stats.out.find("writable root   " + cache + "  " + n + " entries") != std::string::npos);
    CHECK(stats.out.find("total           " + n + " entries") != std::string::npos);

    const ProcessResult verify = run_cli({"cache", "verify"}, {{"MOEJIT_CACHE_DIR", cache}});
    CHECK(verify.status == 0);
    CHECK(verify.out.find(n + " entries checked, 0 invalid") != std::string::npos);

    // Damage one entry: verify names it and fails; ls --verify says why.
    std::vector<char> bytes = read_bytes(infos[0].path);
    bytes[bytes.size() / 2] ^= 0x01;
    write_bytes(infos[0].path, bytes);
    const ProcessResult bad = run_cli({"cache", "verify"}, {{"MOEJIT_CACHE_DIR", cache}});
    CHECK(bad.status == 1);
    CHECK(bad.out.find("invalid " + infos[0].path + ": checksum mismatch") != std::string::npos);
    CHECK(bad.out.find(n + " entries checked, 1 invalid") != std::string::npos);
    CHECK(run_cli({"cache", "ls", "--verify"}, {{"MOEJIT_CACHE_DIR", cache}}).out.find("invalid: checksum mismatch") !=
          std::string::npos);

    const ProcessResult clear = run_cli({"cache", "clear"}, {{"MOEJIT_CACHE_DIR", cache}});
    CHECK(clear.status == 0);
    CHECK(clear.out.find("removed " + n + " entries and 0 tuning records from " + cache) != std::string::npos);
    CHECK(files_under(cache).empty());
    CHECK(run_cli({"cache", "ls"}, {{"MOEJIT_CACHE_DIR", cache}}).out.empty());
    CHECK(run_cli({"cache", "stats"}, {{"MOEJIT_CACHE_DIR", cache}}).out.find("total           0 entries") !=
          std::string::npos);
}

#include "runtime/compiler.hpp"

#include "runtime/embedded_templates.hpp"
#include "runtime/log.hpp"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <utility>

namespace moejit {

Compiler::Compiler(DiskCache cache) : cache_(std::move(cache)) {
    if (const char* dir = std::getenv("MOEJIT_DUMP_DIR")) dump_dir_ = dir;
}

KeyInputs Compiler::key_inputs(const Source& source, const Arch& arch) const {
    static const NvrtcVersion version = nvrtc_version();
    KeyInputs inputs;
    inputs.source = source.text;
    for (const EmbeddedHeader& header : embedded_headers()) inputs.headers.emplace_back(header.name, header.contents);
    inputs.options = nvrtc_options(arch);
    inputs.arch = arch.name();
    inputs.nvrtc_major = version.major;
    inputs.nvrtc_minor = version.minor;
    return inputs;
}

Binary Compiler::get(const Problem& problem, const Config& config, bool recompile) {
    problem.validate();
    const Source source = emit_source(problem, config);
    const auto start = std::chrono::steady_clock::now();
    Binary binary;
    binary.key = make_key(key_inputs(source, problem.arch));

    auto disk_hit = [&](CacheEntry& entry) -> Binary {
        binary.kernel_name = std::move(entry.kernel_name);
        binary.cubin = std::move(entry.cubin);
        binary.from_disk = true;
        binary.milliseconds =
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
        log::debug("disk cache hit " + to_spec(problem) + " " + config.to_string() + " key " + binary.key.hex());
        return std::move(binary);  // returned at once: nothing reads it after
    };
    // Held from the second look until the entry is stored: processes that miss the same kernel at
    // once (a host's training ranks, two precompiles) wait for one compile instead of each running
    // NVRTC. A lock that cannot be taken holds nothing, and everyone compiles, as correct as ever.
    KeyLock lock;
    if (!recompile) {
        if (std::optional<CacheEntry> entry = cache_.load(binary.key)) return disk_hit(*entry);
        lock = cache_.lock_key(binary.key);
        // Whoever held the lock before us may have stored the entry while we waited.
        if (lock.held())
            if (std::optional<CacheEntry> entry = cache_.load(binary.key)) return disk_hit(*entry);
    }

    NvrtcOutput output = nvrtc_compile(source, nvrtc_options(problem.arch));
    binary.kernel_name = output.lowered_name;
    binary.cubin = std::move(output.cubin);
    binary.milliseconds = output.milliseconds;
    binary.log = output.log;
    log::info("compiled " + to_spec(problem) + " " + config.to_string() + " key " + binary.key.hex() + " in " +
              std::to_string(static_cast<int>(output.milliseconds + 0.5)) + " ms");
    cache_.store(binary.key, CacheEntry{binary.kernel_name, binary.cubin}, source.text);
    lock.release();  // the entry is there for the waiters: the dump is ours alone
    dump(binary.key, source, output.ptx, output.log);
    return binary;
}

NvrtcOutput Compiler::compile_uncached(const Problem& problem, const Config& config) {
    problem.validate();
    const Source source = emit_source(problem, config);
    NvrtcOutput output = nvrtc_compile(source, nvrtc_options(problem.arch));
    dump(make_key(key_inputs(source, problem.arch)), source, output.ptx, output.log);
    return output;
}

void Compiler::dump(const Hash128& key, const Source& source, const std::string& ptx, const std::string& log) const {
    if (dump_dir_.empty()) return;
    std::error_code error;
    std::filesystem::create_directories(dump_dir_, error);  // with any missing parents
    const std::string stem = dump_dir_ + "/" + key.hex();
    std::string failed = error ? dump_dir_ + ": " + error.message() : "";
    // A full disk fails the writes, not the opens: every stream is checked after its flush.
    for (const auto& [suffix, text] : {std::pair<const char*, const std::string*>{".cu", &source.text}, {".ptx", &ptx},
                                       {".log", &log}}) {
        if (!failed.empty()) break;
        std::ofstream file(stem + suffix);
        file << *text;
        file.flush();
        if (!file) failed = stem + suffix + ": cannot write";
    }
    if (!failed.empty())
        log::warn_once("dump-dir", "MOEJIT_DUMP_DIR=" + dump_dir_ + " is not writable (" + failed +
                                       "); dumps there are missing or incomplete");
}

}  // namespace moejit

#pragma once
// Host-only half of the pipeline, usable with no GPU:
//   (Problem, Config) -> Source -> Key -> disk-cache hit, or NVRTC + store -> Binary.
#include <moejit/problem.hpp>

#include "cache/disk_cache.hpp"
#include "cache/hash.hpp"
#include "cache/key.hpp"
#include "codegen/config.hpp"
#include "codegen/emit.hpp"
#include "runtime/nvrtc.hpp"

#include <string>
#include <vector>

namespace moejit {

struct Binary {
    Hash128 key;
    std::string kernel_name;  // lowered name of the kernel inside the cubin
    std::vector<char> cubin;
    bool from_disk = false;
    double milliseconds = 0;  // NVRTC time, or disk-lookup time on a hit
    std::string log;          // the NVRTC/ptxas log; empty on a disk hit
};

class Compiler {
public:
    explicit Compiler(DiskCache cache);

    // Disk cache first (read-only roots, then the writable root); NVRTC on a miss, then stored. A
    // miss takes the key's lock (DiskCache::lock_key) and looks again before compiling, so that
    // processes missing the same kernel at once compile it once. With `recompile`, NVRTC runs
    // regardless, without the lock, and the entry is replaced (`moejit compile`).
    Binary get(const Problem& problem, const Config& config, bool recompile = false);
    // Always runs NVRTC (for `moejit ptx` and tests); does not touch the cache.
    NvrtcOutput compile_uncached(const Problem& problem, const Config& config);

    KeyInputs key_inputs(const Source& source, const Arch& arch) const;
    DiskCache& disk() { return cache_; }

private:
    void dump(const Hash128& key, const Source& source, const std::string& ptx, const std::string& log) const;

    DiskCache cache_;
    std::string dump_dir_;  // MOEJIT_DUMP_DIR, empty when unset
};

}  // namespace moejit

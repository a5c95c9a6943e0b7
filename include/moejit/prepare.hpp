#pragma once
// Compiling ahead of the first call. Every kernel JIT-compiles at its first use, one at a time in
// the order the calls need them; a block's first forward and backward then wait for about twenty
// compiles in a row. prepare_kernels compiles (or reads from the disk cache) a whole list at once on
// several host threads, so those calls find every kernel loaded.
#include <moejit/problem.hpp>

#include <cstdint>
#include <vector>

namespace moejit {

// Loads, or JIT-compiles and stores in the disk cache, every kernel of `kernels` for the current
// device (each problem's arch is replaced by the device's), up to `jobs` at once (0: one per CPU the
// process may use, at most 32). Each grouped GEMM gets the tiling its calls take for `tokens` tokens
// (the routed GEMMs see tokens * topk rows, the dense ones tokens): the one `moejit tune` stored,
// else the heuristic's, as chosen now; a GroupedGemm (or block) built before a tuning was stored
// keeps the tiling it chose then. The lists to pass are Qwen3MoeBlock::kernels and
// Llama4TextMoe::kernels, or one's own (a grouped GEMM's passes: op fwd, dx or dw with its flags).
// The routing check's kernels compile only where MOEJIT_CHECK_ROUTING is on. Throws moejit::Error
// for an invalid problem before compiling anything; a compile that fails throws after the others
// finished.
void prepare_kernels(const std::vector<Problem>& kernels, int64_t tokens, unsigned jobs = 0);

}  // namespace moejit

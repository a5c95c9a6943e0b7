// The kernel lists `moejit precompile` compiles are the kernels the MoE blocks launch: each block
// runs forward and backward (with MOEJIT_CHECK_ROUTING on, for its kernels too) in a child process
// whose only cache is a read-only root holding its list, Qwen3MoeBlock::kernels or
// Llama4TextMoe::kernels, in the tilings of the token counts it runs; the same for the blocks built
// for inference, which run the forward alone. A call site that built its
// Problem otherwise, or a kernel missing from a list, would be JIT-compiled there: logged and
// stored in the child's empty writable root. And prepare() compiles all of them ahead of the calls.
#include "tests/catch.hpp"
#include "tests/support/compile_log.hpp"
#include "tests/support/device.hpp"
#include "tests/support/errors.hpp"
#include "tests/support/half.hpp"
#include "tests/support/process.hpp"

#include <moejit/llama4_moe.hpp>
#include <moejit/prepare.hpp>
#include <moejit/qwen3_moe.hpp>

#include "cache/disk_cache.hpp"
#include "moe/model_kernels.hpp"
#include "runtime/compiler.hpp"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

using namespace moejit;
using namespace moejit::testing;
namespace fs = std::filesystem;

namespace {

const Qwen3MoeConfig kQwen3{/*hidden=*/256, /*moe_intermediate=*/128, /*experts=*/16, /*topk=*/4, true, DType::bf16};
const Llama4MoeConfig kLlama4{/*hidden=*/256, /*intermediate=*/128, /*shared_intermediate=*/64, /*experts=*/16,
                              /*topk=*/1, DType::bf16};
// Decode-sized and large calls take different tilings (Hopper): both must be in the list's cache.
const int64_t kTokenCounts[] = {8, 512};
const int64_t kMaxTokens = 512;
const char* const kChildVariable = "BLOCK_KERNELS_CHILD";  // which block the child runs
const char* const kPrepareVariable = "BLOCK_KERNELS_PREPARE";  // set: the child calls prepare() first
const char* const kPreparedMarker = "block child prepared";      // on stderr, between the logged compiles

// The blocks the tests run: "qwen3" and "llama4", and with "-inference" the same built for
// inference (training = false: forward only).
const char* const kBlocks[] = {"qwen3", "llama4", "qwen3-inference", "llama4-inference"};
bool is_llama4(const std::string& block) { return block.rfind("llama4", 0) == 0; }
bool is_inference(const std::string& block) { return block.find("-inference") != std::string::npos; }
Qwen3MoeConfig qwen3_config(const std::string& block) {
    Qwen3MoeConfig config = kQwen3;
    config.training = !is_inference(block);
    return config;
}
Llama4MoeConfig llama4_config(const std::string& block) {
    Llama4MoeConfig config = kLlama4;
    config.training = !is_inference(block);
    return config;
}

std::vector<Problem> block_kernels(const std::string& block, const Arch& arch) {
    return is_llama4(block) ? Llama4TextMoe::kernels(llama4_config(block), arch)
                            : Qwen3MoeBlock::kernels(qwen3_config(block), arch);
}

size_t entries_under(const std::string& dir) {
    size_t count = 0;
    for (const auto& item : fs::recursive_directory_iterator(dir))
        if (item.path().extension() == ".cubin") ++count;
    return count;
}

DeviceBuffer random_bf16(size_t count, unsigned seed, float scale) {
    std::mt19937 random(seed);
    std::uniform_real_distribution<float> uniform(-scale, scale);
    std::vector<uint16_t> bits(count);
    for (uint16_t& b : bits) b = float_to_bf16(uniform(random));
    return DeviceBuffer::from(bits);
}

}  // namespace

TEST_CASE("the MoE blocks launch only the kernels of their lists", "[gpu][blocks]") {
    const Arch arch = current_device().arch;
    for (const std::string block : kBlocks) {
        INFO(block);
        TempDir precompiled, writable;
        Compiler compiler(DiskCache(precompiled.path, {}));
        for (const Problem& problem : block_kernels(block, arch))
            for (int64_t tokens : kTokenCounts)
                compiler.get(problem, choose_config(problem, layer_rows_bucket(problem, tokens)));
        REQUIRE(entries_under(precompiled.path) > 0);

        const ProcessResult child = run_child_tests(
            "block child runs forward and backward",
            {{"MOEJIT_CACHE_DIR", writable.path}, {"MOEJIT_CACHE_PATH", precompiled.path}, {"MOEJIT_LOG", "info"},
             {"MOEJIT_CHECK_ROUTING", "1"}, {kChildVariable, block}});
        INFO("child stdout:\n" << child.out << "\nchild stderr:\n" << child.err);
        CHECK(child.status == 0);
        CHECK(child.out.find("block child done") != std::string::npos);
        CHECK(child.err.find("[moejit info] compiled") == std::string::npos);  // MOEJIT_LOG=info logs each compile
        CHECK(entries_under(writable.path) == 0);
    }
}

TEST_CASE("a block's prepare() compiles every kernel its calls launch, before them", "[gpu][blocks]") {
    for (const std::string block : kBlocks) {
        INFO(block);
        TempDir cache;
        const ProcessResult child = run_child_tests(
            "block child runs forward and backward",
            {{"MOEJIT_CACHE_DIR", cache.path}, {"MOEJIT_LOG", "info"}, {"MOEJIT_CHECK_ROUTING", "1"},
             {kChildVariable, block}, {kPrepareVariable, "1"}});
        INFO("child stdout:\n" << child.out << "\nchild stderr:\n" << child.err);
        CHECK(child.status == 0);
        CHECK(child.out.find("block child done") != std::string::npos);
        REQUIRE(child.err.find(kPreparedMarker) != std::string::npos);
        // Every compile comes before the calls, and each is an entry of the cache.
        const LoggedCompiles compiles = logged_compiles(child.err, kPreparedMarker);
        CHECK(compiles.before > 0);
        CHECK(compiles.after == 0);
        CHECK(entries_under(cache.path) == compiles.before);
    }
    // Token counts the block cannot run are refused, naming the range.
    Qwen3MoeBlock qwen3(kQwen3, kMaxTokens);
    Llama4TextMoe llama4(kLlama4, kMaxTokens);
    for (int64_t tokens : {int64_t(0), int64_t(-1), kMaxTokens + 1}) {
        INFO(tokens << " tokens");
        CHECK(mentions(error_message([&] { qwen3.prepare(tokens); }), "prepare takes 1 to max_tokens (512)"));
        CHECK(mentions(error_message([&] { llama4.prepare(tokens); }), "prepare takes 1 to max_tokens (512)"));
    }
    CHECK(mentions(error_message([&] { prepare_kernels(Qwen3MoeBlock::kernels(kQwen3, current_device().arch), 0); }),
                   "tokens must be in [1, 2^31)"));
}

// Run by the tests above in a child process only.
TEST_CASE("block child runs forward and backward", "[.][block-child]") {
    const char* block = std::getenv(kChildVariable);
    REQUIRE(block != nullptr);
    const bool llama4 = is_llama4(block), training = !is_inference(block);
    const bool prepare = std::getenv(kPrepareVariable) != nullptr;
    const int64_t H = 256, I = 128, Is = 64, E = 16, T = kMaxTokens;
    DeviceBuffer hidden = random_bf16(T * H, 1, 1.0f), grad_output = random_bf16(T * H, 2, 1.0f);
    DeviceBuffer router = random_bf16(E * H, 3, 0.05f), gate_up = random_bf16(E * 2 * I * H, 4, 0.05f);
    DeviceBuffer down = random_bf16(E * H * I, 5, 0.05f);
    DeviceBuffer shared_gate_up = random_bf16(2 * Is * H, 6, 0.05f), shared_down = random_bf16(H * Is, 7, 0.05f);
    DeviceBuffer output(T * H * 2), logits(T * E * 2), grad_hidden(T * H * 2), grad_router(E * H * 4);
    DeviceBuffer grad_gate_up(E * 2 * I * H * 4), grad_down(E * H * I * 4);
    DeviceBuffer grad_shared_gate_up(2 * Is * H * 4), grad_shared_down(H * Is * 4);
    if (llama4) {
        Llama4TextMoe moe(llama4_config(block), kMaxTokens);
        const Llama4MoeWeights weights{router.get(), gate_up.get(), down.get(), shared_gate_up.get(), shared_down.get()};
        const Llama4MoeGradients gradients{grad_hidden.get(),  grad_router.get(),         grad_gate_up.get(),
                                           grad_down.get(),    grad_shared_gate_up.get(), grad_shared_down.get()};
        if (prepare) {
            for (int64_t tokens : kTokenCounts) moe.prepare(tokens);
            std::fprintf(stderr, "%s\n", kPreparedMarker);
        }
        for (int64_t tokens : kTokenCounts) {
            moe.forward(hidden.get(), weights, output.get(), logits.get(), tokens, nullptr);
            if (training) moe.backward(grad_output.get(), weights, gradients, nullptr);
        }
    } else {
        Qwen3MoeBlock moe(qwen3_config(block), kMaxTokens);
        const Qwen3MoeWeights weights{router.get(), gate_up.get(), down.get()};
        const Qwen3MoeGradients gradients{grad_hidden.get(), grad_router.get(), grad_gate_up.get(), grad_down.get()};
        if (prepare) {
            for (int64_t tokens : kTokenCounts) moe.prepare(tokens);
            std::fprintf(stderr, "%s\n", kPreparedMarker);
        }
        for (int64_t tokens : kTokenCounts) {
            moe.forward(hidden.get(), weights, output.get(), logits.get(), tokens, nullptr);
            if (training) moe.backward(grad_output.get(), weights, gradients, nullptr);
        }
    }
    synchronize();
    std::printf("block child done\n");
}

// The `moejit` command line: inspect, compile and precompile kernels, and manage the disk cache.
// Needs NVRTC but no GPU. Errors print "moejit: <message>" on stderr and exit 1.
#include "tools/cli.hpp"

#include "cache/key.hpp"
#include "codegen/models.hpp"
#include "runtime/nvrtc.hpp"

#include <moejit/version.hpp>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

namespace moejit::cli {

Args::Args(std::string command, const std::vector<std::string>& argv, const std::vector<OptionSpec>& known)
    : command_(std::move(command)) {
    for (const std::string& arg : argv)
        if (arg == "--help" || arg == "-h") help_ = true;
    if (help_) return;  // help wins over anything else on the line
    for (size_t i = 0; i < argv.size(); ++i) {
        const std::string& arg = argv[i];
        if (arg.size() < 2 || arg[0] != '-') {
            positionals_.push_back(arg);
            continue;
        }
        const size_t equals = arg.find('=');
        const std::string name = arg.substr(0, equals);
        const OptionSpec* spec = nullptr;
        for (const OptionSpec& option : known)
            if (option.name == name) spec = &option;
        if (spec == nullptr)
            throw Error("unknown option '" + name + "' for 'moejit " + command_ + "' (see moejit " + command_ +
                        " --help)");
        if (values_.count(name)) throw Error(name + " given more than once");
        if (!spec->takes_value) {
            if (equals != std::string::npos) throw Error(name + " takes no value");
            values_[name] = "";
        } else if (equals != std::string::npos) {
            values_[name] = arg.substr(equals + 1);
        } else {
            if (i + 1 >= argv.size()) throw Error(name + " needs a value (see moejit " + command_ + " --help)");
            // "--model --gemm down" means a forgotten value, not a model named "--gemm". No value
            // any option takes starts with "--"; one that did could still be given as name=value.
            if (argv[i + 1].rfind("--", 0) == 0)
                throw Error(name + " needs a value, got the option '" + argv[i + 1] + "' (see moejit " + command_ +
                            " --help)");
            values_[name] = argv[++i];
        }
    }
}

std::optional<std::string> Args::value(const std::string& name) const {
    const auto found = values_.find(name);
    if (found == values_.end()) return std::nullopt;
    return found->second;
}

void Args::expect_positionals(size_t min, size_t max, const std::string& what) const {
    if (positionals_.size() < min)
        throw Error("'moejit " + command_ + "' needs " + what + " (see moejit " + command_ + " --help)");
    if (positionals_.size() > max)
        throw Error("unexpected argument '" + positionals_[max] + "' for 'moejit " + command_ + "'");
}

std::vector<OptionSpec> kernel_options() {
    return {{"--model", true}, {"--gemm", true}, {"--pass", true},
            {"--dtype", true}, {"--arch", true}, {"--config", true}};
}

bool print_command_help(const Args& args, const char* usage, const char* description, const char* trailer) {
    if (!args.help()) return false;
    std::printf("usage: moejit %s %s\n\n%s%s", args.command().c_str(), usage, description, trailer);
    return true;
}

const char* const kSpecHelp =
    "SPEC names one kernel, either as a spec string\n"
    "    fwd:bf16:n1536:k2048:e128:topk8:sm_90a      (op:dtype:nN:kK:eEXPERTS:topkK:arch)\n"
    "or through a model preset:\n"
    "    --model NAME       qwen3-30b-a3b, qwen3-235b-a22b, deepseek-v3, mixtral-8x7b,\n"
    "                       llama4-scout, gpt-oss-120b\n"
    "    --gemm GEMM        gate_up (N = 2*I, K = H) or down (N = H, K = I)\n"
    "    --pass PASS        fwd (the default)\n"
    "    --dtype DTYPE      bf16 (default) or fp16\n"
    "    --arch ARCH        sm_80, sm_86, sm_89, sm_90a (default), sm_100a\n"
    "Either way:\n"
    "    --config CONFIG    tiling instead of the heuristic's: portable m128n128s4w2x4 (tile M,\n"
    "                       tile N, stages, warps M x warps N) or Hopper h:m128n256s3 (sm_90a)\n";

DType parse_dtype(const std::string& text) {
    if (text == "bf16") return DType::bf16;
    if (text == "fp16") return DType::fp16;
    throw Error("unknown dtype '" + text + "': expected bf16 or fp16");
}

LayerOptions parse_layer_options(const Args& args) {
    LayerOptions options;
    options.training = !args.value("--inference");
    if (const auto text = args.value("--weight-grads")) {
        if (!options.training) throw Error("--weight-grads is an option of training: not with --inference");
        if (*text != "fp32" && *text != "dtype") throw Error("bad --weight-grads '" + *text + "': expected fp32 or dtype");
        options.fp32_weight_gradients = *text == "fp32";
    }
    return options;
}

Op parse_pass(const std::string& text) {
    std::string known;
    for (Op op : model_passes()) {
        if (text == to_string(op)) return op;
        known += (known.empty() ? "" : ", ") + std::string(to_string(op));
    }
    throw Error("unknown pass '" + text + "': expected " + known);
}

Kernel resolve_kernel(const Args& args) {
    args.expect_positionals(0, 1, "a SPEC");
    Kernel kernel;
    const auto model = args.value("--model");
    if (!args.positionals().empty()) {
        if (model) throw Error("give either a SPEC string or --model, not both");
        for (const char* option : {"--gemm", "--pass", "--dtype", "--arch"})
            if (args.flag(option))
                throw Error(std::string(option) + " only applies with --model; the SPEC string already says it");
        kernel.problem = parse_spec(args.positionals()[0]);
    } else if (model) {
        const auto gemm = args.value("--gemm");
        if (!gemm) throw Error("--model needs --gemm gate_up or --gemm down");
        kernel.problem = model_gemm(find_model(*model), *gemm, parse_pass(args.value("--pass").value_or("fwd")),
                                    parse_dtype(args.value("--dtype").value_or("bf16")),
                                    Arch::parse(args.value("--arch").value_or("sm_90a")));
    } else {
        throw Error("'moejit " + args.command() + "' needs a SPEC (e.g. fwd:bf16:n1536:k2048:e128:topk8:sm_90a) "
                    "or --model NAME --gemm gate_up|down");
    }
    const auto config = args.value("--config");
    if (is_elementwise(kernel.problem.op)) {  // 256 threads and a grid-stride loop: nothing to tile
        if (config)
            throw Error("--config does not apply to " + to_spec(kernel.problem) + ": " + to_string(kernel.problem.op) +
                        " is an elementwise kernel, without tiles or stages");
        kernel.config = choose_config(kernel.problem);
        return kernel;
    }
    kernel.config =
        config ? Config::parse(*config) : choose_config(kernel.problem, RowsBucket::large, preferred_path());
    check_config(kernel.problem, kernel.config);
    return kernel;
}

int64_t parse_token_count(const std::string& text) {
    if (text.empty() || text.size() > 9 || text.find_first_not_of("0123456789") != std::string::npos ||
        std::stoll(text) < 1)
        throw Error("bad --tokens '" + text + "': expected a positive integer (at most 999999999)");
    return std::stoll(text);
}

std::vector<int64_t> parse_token_counts(const std::string& text) {
    std::vector<int64_t> counts;
    size_t begin = 0;
    while (begin <= text.size()) {
        size_t end = text.find(',', begin);
        if (end == std::string::npos) end = text.size();
        counts.push_back(parse_token_count(text.substr(begin, end - begin)));
        begin = end + 1;
    }
    return counts;
}

std::string format_bytes(uint64_t bytes) {
    char text[32];
    if (bytes < 1024) std::snprintf(text, sizeof text, "%llu B", static_cast<unsigned long long>(bytes));
    else if (bytes < 1024 * 1024) std::snprintf(text, sizeof text, "%.1f KiB", bytes / 1024.0);
    else if (bytes < uint64_t{1} << 30) std::snprintf(text, sizeof text, "%.1f MiB", bytes / 1048576.0);
    else std::snprintf(text, sizeof text, "%.2f GiB", bytes / 1073741824.0);
    return text;
}

std::string format_ms(double milliseconds) {
    char text[32];
    std::snprintf(text, sizeof text, milliseconds >= 10 ? "%.0f ms" : "%.2f ms", milliseconds);
    return text;
}

}  // namespace moejit::cli

namespace {

using namespace moejit::cli;

const char* const kUsage =
    "usage: moejit <command> [options]\n"
    "\n"
    "JIT-compiled Mixture-of-Experts grouped GEMMs: inspect, compile and cache kernels.\n"
    "Needs NVRTC; no command here needs a GPU.\n"
    "\n"
    "commands:\n"
    "  source SPEC [--expand]   print the generated CUDA source (--expand: the whole translation unit)\n"
    "  ptx SPEC                 print the PTX NVRTC produces\n"
    "  sass SPEC                print the SASS of the cubin (through nvdisasm or cuobjdump)\n"
    "  compile SPEC             compile with NVRTC, refresh the cache entry, report registers and spills\n"
    "  precompile --model NAME  compile every kernel a model needs into the cache\n"
    "  cache ls|stats|verify|prune --max-size SIZE|clear\n"
    "                           list, summarize, check, trim (least recently used first) or empty\n"
    "                           the kernel cache\n"
    "  bench --model NAME [--tokens T]\n"
    "                           time the model's grouped GEMMs on this GPU beside cuBLAS (needs a GPU)\n"
    "  tune --model NAME [--tokens T] [--weight-grads fp32|dtype | --inference]\n"
    "                           time every tiling of the grouped GEMMs the model's MoE layer launches,\n"
    "                           store the fastest for later processes (needs a GPU)\n"
    "\n"
    "SPEC: fwd:bf16:n1536:k2048:e128:topk8:sm_90a, or --model NAME --gemm gate_up|down [--pass fwd]\n"
    "      [--dtype bf16|fp16] [--arch sm_90a]\n"
    "\n"
    "environment: MOEJIT_CACHE_DIR (writable cache root), MOEJIT_CACHE_PATH (read-only roots,\n"
    "colon-separated, searched first), MOEJIT_CACHE_MAX_SIZE (size cap, default 4G; 0 or off: none),\n"
    "MOEJIT_DUMP_DIR, MOEJIT_LOG=off|info|debug, MOEJIT_KERNEL_PATH=auto|portable,\n"
    "MOEJIT_CHECK_ROUTING=0|1, MOEJIT_LINEINFO=0|1, MOEJIT_DEPENDENT_LAUNCH=0|1 (the README's table\n"
    "has them all)\n"
    "\n"
    "'moejit <command> --help' describes a command; 'moejit --version' prints the versions that\n"
    "cache entries are keyed by.\n";

struct Command {
    const char* name;
    int (*run)(const std::vector<std::string>&);
};

const Command kCommands[] = {
    {"source", cmd_source},         {"ptx", cmd_ptx},     {"sass", cmd_sass},
    {"compile", cmd_compile},       {"precompile", cmd_precompile}, {"cache", cmd_cache},
    {"bench", cmd_bench},           {"tune", cmd_tune},
};

int dispatch(const std::vector<std::string>& args) {
    if (args.empty()) {
        std::fputs(kUsage, stderr);
        return 1;
    }
    const std::string& name = args[0];
    if (name == "--version") {
        // What cache entries and tuned tilings are keyed by, besides the kernels themselves.
        const moejit::NvrtcVersion nvrtc = moejit::nvrtc_version();
        std::printf("moejit %s (NVRTC %d.%d, cache format %u)\n", moejit::library_version(), nvrtc.major, nvrtc.minor,
                    moejit::kCacheFormatVersion);
        return 0;
    }
    if (name == "--help" || name == "-h" || name == "help") {
        if (name == "help" && args.size() > 1) return dispatch({args[1], "--help"});
        std::fputs(kUsage, stdout);
        return 0;
    }
    for (const Command& command : kCommands)
        if (name == command.name) return command.run(std::vector<std::string>(args.begin() + 1, args.end()));
    throw moejit::Error("unknown command '" + name + "' (see moejit --help)");
}

// Output that never arrived (a full disk, /dev/full) fails the command instead of passing for
// success: stdout is buffered, so a failed write may only show at this last flush.
int flush_output(int status) {
    errno = 0;
    if (std::fflush(stdout) == 0 && !std::ferror(stdout)) return status;
    std::fprintf(stderr, "moejit: cannot write output: %s\n",
                 errno != 0 ? std::strerror(errno) : "a write to stdout failed");
    return 1;
}

}  // namespace

int main(int argc, char** argv) {
    int status = 1;
    try {
        status = dispatch(std::vector<std::string>(argv + 1, argv + argc));
    } catch (const moejit::Error& error) {
        // what() already carries the NVRTC log and numbered source after the message, if any.
        std::fflush(stdout);
        std::fprintf(stderr, "moejit: %s\n", error.what());
    } catch (const std::exception& error) {
        std::fflush(stdout);
        std::fprintf(stderr, "moejit: internal error: %s\n", error.what());
    }
    return flush_output(status);
}

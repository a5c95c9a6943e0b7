#pragma once
// Shared pieces of the `moejit` command line: option parsing, SPEC resolution, formatting.
#include <moejit/error.hpp>
#include <moejit/problem.hpp>

#include "codegen/config.hpp"
#include "moe/model_kernels.hpp"  // LayerOptions
#include "moe/tuning.hpp"  // preferred_path: the CLI picks tilings on the path the library would

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace moejit::cli {

struct OptionSpec {
    std::string name;  // "--arch"
    bool takes_value = false;
};

// "--name value", "--name=value" and flags; positionals in order. --help / -h anywhere sets help().
// Unknown options, a missing value and a repeated option throw moejit::Error.
class Args {
public:
    Args(std::string command, const std::vector<std::string>& argv, const std::vector<OptionSpec>& known);

    bool help() const { return help_; }
    bool flag(const std::string& name) const { return values_.count(name) != 0; }
    std::optional<std::string> value(const std::string& name) const;
    const std::vector<std::string>& positionals() const { return positionals_; }
    // Throws unless there are between `min` and `max` positionals.
    void expect_positionals(size_t min, size_t max, const std::string& what) const;
    const std::string& command() const { return command_; }

private:
    std::string command_;
    bool help_ = false;
    std::map<std::string, std::string> values_;
    std::vector<std::string> positionals_;
};

// The options that name a kernel besides a SPEC string.
std::vector<OptionSpec> kernel_options();
// Help text describing SPEC and kernel_options().
extern const char* const kSpecHelp;

// With --help: prints "usage: moejit COMMAND USAGE", the description and `trailer`; returns true.
bool print_command_help(const Args& args, const char* usage, const char* description, const char* trailer = "");

struct Kernel {
    Problem problem;
    Config config;
};
// SPEC (the one positional) or --model/--gemm/--pass/--dtype/--arch; --config overrides the heuristic,
// which otherwise picks on MOEJIT_KERNEL_PATH's path.
Kernel resolve_kernel(const Args& args);

DType parse_dtype(const std::string& text);
Op parse_pass(const std::string& text);
// --inference and --weight-grads of precompile and tune: the layer of blocks built with training =
// false (the forward alone), or the training layer with weight gradients "fp32" (the blocks'
// default, and without the option) or "dtype" (fp32_weight_gradients = false).
LayerOptions parse_layer_options(const Args& args);

// A --tokens value: digits only, 1 to 999999999 (so that tokens x topk rows stay countable).
int64_t parse_token_count(const std::string& text);
// A comma-separated list of them: "16,8192".
std::vector<int64_t> parse_token_counts(const std::string& text);

std::string format_bytes(uint64_t bytes);  // "12.3 KiB"
std::string format_ms(double milliseconds);  // "152 ms", "0.31 ms"

// Commands: each returns the process exit status; errors are thrown as moejit::Error.
int cmd_source(const std::vector<std::string>& argv);
int cmd_ptx(const std::vector<std::string>& argv);
int cmd_sass(const std::vector<std::string>& argv);
int cmd_compile(const std::vector<std::string>& argv);
int cmd_precompile(const std::vector<std::string>& argv);
int cmd_cache(const std::vector<std::string>& argv);
int cmd_bench(const std::vector<std::string>& argv);  // needs a GPU
int cmd_tune(const std::vector<std::string>& argv);   // needs a GPU

}  // namespace moejit::cli

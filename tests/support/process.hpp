#pragma once
// Runs a program (the `moejit` CLI, or a fresh copy of a test binary) in a child process with a
// clean MOEJIT_* environment and returns its exit status, stdout and stderr. Per-process state
// (warn_once, variables read once) needs a fresh process, which a plain fork would not give.
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "tests/catch.hpp"

extern char** environ;

namespace moejit::test {

// A fresh directory under /tmp, removed with everything in it at scope exit.
struct ScratchDir {
    std::string path;
    ScratchDir() {
        char name[] = "/tmp/moejit-test-XXXXXX";
        REQUIRE(::mkdtemp(name) != nullptr);
        path = name;
    }
    ~ScratchDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
    ScratchDir(const ScratchDir&) = delete;
    ScratchDir& operator=(const ScratchDir&) = delete;
    std::string operator/(const std::string& child) const { return path + "/" + child; }
};

struct ProcessResult {
    int status = -1;  // exit status, or 128 + signal
    std::string out, err;
};

// Variables to set (a value) or leave unset (nullopt) in the child.
using Environment = std::vector<std::pair<std::string, std::optional<std::string>>>;

inline std::string file_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Runs argv[0] with our environment less every MOEJIT_ variable and those `environment` names,
// plus `environment`'s values. Its stdout goes to `stdout_path` when given (e.g. /dev/full), else
// is captured like its stderr.
inline ProcessResult run_process(const std::vector<std::string>& argv, const Environment& environment = {},
                                 const std::string& stdout_path = "") {
    ScratchDir io;
    const std::string out_path = stdout_path.empty() ? io / "stdout" : stdout_path, err_path = io / "stderr";
    auto replaced = [&](const char* item) {
        if (std::strncmp(item, "MOEJIT_", 7) == 0) return true;
        for (const auto& variable : environment)
            if (std::strncmp(item, (variable.first + "=").c_str(), variable.first.size() + 1) == 0) return true;
        return false;
    };
    std::vector<std::string> env;
    for (char** item = environ; *item != nullptr; ++item)
        if (!replaced(*item)) env.emplace_back(*item);
    for (const auto& [name, value] : environment)
        if (value) env.push_back(name + "=" + *value);
    std::vector<char*> args, envp;
    for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    for (const std::string& item : env) envp.push_back(const_cast<char*>(item.c_str()));
    envp.push_back(nullptr);

    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (out < 0 || err < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0) ::_exit(126);
        ::execve(args[0], args.data(), envp.data());
        ::_exit(127);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    ProcessResult result;
    result.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (stdout_path.empty()) result.out = file_text(out_path);
    result.err = file_text(err_path);
    return result;
}

#ifdef MOEJIT_CLI_PATH
// `moejit args...` with its cache in a directory of its own unless `environment` names one.
inline ProcessResult run_cli(const std::vector<std::string>& args, Environment environment = {},
                             const std::string& stdout_path = "") {
    static ScratchDir cache;
    const bool names_cache = std::any_of(environment.begin(), environment.end(),
                                         [](const auto& variable) { return variable.first == "MOEJIT_CACHE_DIR"; });
    if (!names_cache) environment.emplace_back("MOEJIT_CACHE_DIR", cache.path);
    std::vector<std::string> argv = {MOEJIT_CLI_PATH};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_process(argv, environment, stdout_path);
}
#endif

// Runs the hidden test cases tagged `tag` of this test binary in a fresh process.
inline ProcessResult run_child_tests(const std::string& tag, const Environment& environment) {
    return run_process({"/proc/self/exe", tag}, environment);
}

}  // namespace moejit::test

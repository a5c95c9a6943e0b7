#pragma once
// Runs the built `moejit` (MOEJIT_CLI_PATH) in a child process with a controlled environment and
// collects its exit status, stdout and stderr. A child that outlives its deadline is killed and
// reported as timed out, so a hanging command fails its test instead of stalling the suite.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/catch.hpp"
#include "tests/support/temp_dir.hpp"

extern char** environ;

namespace moejit::testing {

inline std::string read_text(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

using EnvOverrides = std::vector<std::pair<std::string, std::optional<std::string>>>;

// The CLI's environment: ours, with every MOEJIT_ variable unset, then `overrides` applied.
inline std::vector<std::string> child_environment(const EnvOverrides& overrides) {
    std::vector<std::string> env;
    for (char** item = environ; *item != nullptr; ++item)
        if (std::strncmp(*item, "MOEJIT_", 7) != 0) env.emplace_back(*item);
    for (const auto& [name, value] : overrides)
        if (value) env.push_back(name + "=" + *value);
    return env;
}

struct Child {
    pid_t pid = -1;
    std::string out_path, err_path;
};

struct Result {
    int status = -1;  // the exit status; 128 + signal if killed; -1 if it ran past its deadline
    bool timed_out = false;
    std::string out, err;
};

// Starts `moejit args...` with stdout and stderr going to files in `io_dir`. With `gate_fd` >= 0
// the child waits until that pipe is closed by the parent before exec, so several start together.
inline Child spawn_cli(const std::vector<std::string>& args, const EnvOverrides& overrides, const std::string& io_dir,
                       int gate_fd = -1, int gate_write_fd = -1) {
    static int counter = 0;
    Child child;
    child.out_path = io_dir + "/out" + std::to_string(counter) + ".txt";
    child.err_path = io_dir + "/err" + std::to_string(counter) + ".txt";
    ++counter;

    std::vector<std::string> argv_strings = {MOEJIT_CLI_PATH};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    const std::vector<std::string> env_strings = child_environment(overrides);
    std::vector<char*> argv, envp;
    for (const std::string& s : argv_strings) argv.push_back(const_cast<char*>(s.c_str()));
    argv.push_back(nullptr);
    for (const std::string& s : env_strings) envp.push_back(const_cast<char*>(s.c_str()));
    envp.push_back(nullptr);

    child.pid = ::fork();
    REQUIRE(child.pid >= 0);
    if (child.pid == 0) {
        const int out = ::open(child.out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        const int err = ::open(child.err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (out < 0 || err < 0) ::_exit(126);
        ::dup2(out, 1);
        ::dup2(err, 2);
        if (gate_fd >= 0) {
            if (gate_write_fd >= 0) ::close(gate_write_fd);
            char byte;
            while (::read(gate_fd, &byte, 1) > 0) {
            }
        }
        ::execve(argv[0], argv.data(), envp.data());
        ::_exit(127);
    }
    return child;
}

inline Result wait_for(const Child& child, int timeout_seconds = 600) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
    int status = 0;
    Result result;
    for (;;) {
        const pid_t done = ::waitpid(child.pid, &status, WNOHANG);
        REQUIRE(done >= 0);
        if (done == child.pid) break;
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(child.pid, SIGKILL);
            REQUIRE(::waitpid(child.pid, &status, 0) == child.pid);
            result.timed_out = true;
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    result.status = result.timed_out ? -1 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    result.out = read_text(child.out_path);
    result.err = read_text(child.err_path);
    return result;
}

// Runs `moejit args...` with MOEJIT_CACHE_DIR = cache_dir (plus `extra`), waits, returns its output.
inline Result run_cli(const std::vector<std::string>& args, const std::string& cache_dir, EnvOverrides extra = {},
                      int timeout_seconds = 600) {
    TempDir io;
    extra.insert(extra.begin(), {"MOEJIT_CACHE_DIR", cache_dir});
    return wait_for(spawn_cli(args, extra, io.path), timeout_seconds);
}

}  // namespace moejit::testing

#pragma once
// Runs a program (the `moejit` CLI, or this test binary again) in a child process with a clean
// MOEJIT_* environment and collects its exit status, stdout and stderr. Per-process state
// (warn_once, variables read once) needs a fresh process, which a plain fork would not give. Every
// child has a deadline: one that outlives it is killed and reported as timed out, so a hang fails
// its test instead of stalling the suite.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/catch.hpp"
#include "tests/support/temp_dir.hpp"

extern char** environ;

namespace moejit::testing {

constexpr int kDeadlineSeconds = 600;

// Variables to set (a value) or leave unset (nullopt) in the child.
using Environment = std::vector<std::pair<std::string, std::optional<std::string>>>;

// Ours, less every MOEJIT_ variable and those `environment` names, plus `environment`'s values:
// the child sees only the moejit settings its test chose.
inline std::vector<std::string> child_environment(const Environment& environment) {
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
    return env;
}

// A pipe that children spawned with it wait on until release(): several then start together.
struct StartGate {
    int read_fd = -1, write_fd = -1;
    StartGate() {
        int fds[2];
        REQUIRE(::pipe(fds) == 0);
        read_fd = fds[0];
        write_fd = fds[1];
    }
    ~StartGate() { release(); }
    void release() {
        if (read_fd >= 0) ::close(read_fd);
        if (write_fd >= 0) ::close(write_fd);
        read_fd = write_fd = -1;
    }
    StartGate(const StartGate&) = delete;
    StartGate& operator=(const StartGate&) = delete;
};

struct Child {
    pid_t pid = -1;
    std::unique_ptr<TempDir> io;  // its captured stdout and stderr
    bool captures_out = true;
};

struct ProcessResult {
    int status = -1;  // the exit status; 128 + signal if one ended it; -1 if it ran past its deadline
    bool timed_out = false;
    std::string out, err;  // out stays empty when stdout went to a path of the test's choosing
};

// Starts argv[0] with child_environment(environment). Its stdout goes to `stdout_path` when given
// (e.g. /dev/full), else is captured like its stderr. With a `gate`, it execs once that is released.
inline Child spawn(const std::vector<std::string>& argv, const Environment& environment = {},
                   const std::string& stdout_path = "", const StartGate* gate = nullptr) {
    Child child;
    child.io = std::make_unique<TempDir>();
    child.captures_out = stdout_path.empty();
    // Everything the child needs is built here: after fork it only makes system calls.
    const std::string out_path = child.captures_out ? *child.io / "stdout" : stdout_path;
    const std::string err_path = *child.io / "stderr";
    const std::vector<std::string> env = child_environment(environment);
    std::vector<char*> args, envp;
    for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
    args.push_back(nullptr);
    for (const std::string& item : env) envp.push_back(const_cast<char*>(item.c_str()));
    envp.push_back(nullptr);

    child.pid = ::fork();
    REQUIRE(child.pid >= 0);
    if (child.pid == 0) {
        const int out = ::open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        const int err = ::open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (out < 0 || err < 0 || ::dup2(out, 1) < 0 || ::dup2(err, 2) < 0) ::_exit(126);
        if (gate != nullptr) {  // our copy of the write end would keep the pipe open forever
            ::close(gate->write_fd);
            char byte;
            for (ssize_t n; (n = ::read(gate->read_fd, &byte, 1)) > 0 || (n < 0 && errno == EINTR);) {
            }
        }
        ::execve(args[0], args.data(), envp.data());
        ::_exit(127);
    }
    return child;
}

// Waits for `child` until `timeout_seconds` have passed, then kills it and reports timed_out. One
// assertion per child however long it runs, so a test's assertion count does not depend on timing.
inline ProcessResult wait_for(const Child& child, int timeout_seconds = kDeadlineSeconds) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_seconds);
    int status = 0;
    ProcessResult result;
    pid_t done;
    while ((done = ::waitpid(child.pid, &status, WNOHANG)) == 0 || (done < 0 && errno == EINTR)) {
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(child.pid, SIGKILL);
            done = ::waitpid(child.pid, &status, 0);
            result.timed_out = true;
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    REQUIRE(done == child.pid);
    result.status = result.timed_out ? -1 : WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (child.captures_out) result.out = read_text(*child.io / "stdout");
    result.err = read_text(*child.io / "stderr");
    return result;
}

#ifdef MOEJIT_CLI_PATH
// Starts `moejit args...`, its cache in a directory of its own unless `environment` names one.
inline Child spawn_cli(const std::vector<std::string>& args, Environment environment = {},
                       const std::string& stdout_path = "", const StartGate* gate = nullptr) {
    const bool names_cache = std::any_of(environment.begin(), environment.end(),
                                         [](const auto& variable) { return variable.first == "MOEJIT_CACHE_DIR"; });
    if (!names_cache) {
        static TempDir cache;
        environment.emplace_back("MOEJIT_CACHE_DIR", cache.path);
    }
    std::vector<std::string> argv = {MOEJIT_CLI_PATH};
    argv.insert(argv.end(), args.begin(), args.end());
    return spawn(argv, environment, stdout_path, gate);
}

// `moejit args...` run to its end (or its deadline), as spawn_cli starts it.
inline ProcessResult run_cli(const std::vector<std::string>& args, Environment environment = {},
                             const std::string& stdout_path = "", int timeout_seconds = kDeadlineSeconds) {
    return wait_for(spawn_cli(args, std::move(environment), stdout_path), timeout_seconds);
}
#endif

// Runs the test cases of this test binary that `test_spec` (a tag or a name) selects, hidden ones
// included, in a fresh process.
inline ProcessResult run_child_tests(const std::string& test_spec, const Environment& environment,
                                     int timeout_seconds = kDeadlineSeconds) {
    return wait_for(spawn({"/proc/self/exe", test_spec}, environment), timeout_seconds);
}

}  // namespace moejit::testing

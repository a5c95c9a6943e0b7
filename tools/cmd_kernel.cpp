// moejit source | ptx | sass | compile: one kernel, from its generated source to its SASS.
#include "tools/cli.hpp"

#include "codegen/emit.hpp"
#include "runtime/compiler.hpp"
#include "runtime/embedded_templates.hpp"
#include "runtime/nvrtc.hpp"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <regex>
#include <set>
#include <string>
#include <vector>

namespace moejit::cli {

namespace {

std::vector<OptionSpec> with_kernel_options(std::vector<OptionSpec> extra) {
    std::vector<OptionSpec> options = kernel_options();
    options.insert(options.end(), extra.begin(), extra.end());
    return options;
}

// The kernel commands' help ends with what SPEC can be.
bool print_help(const Args& args, const char* usage, const char* description) {
    return print_command_help(args, usage, description, (std::string("\n") + kSpecHelp).c_str());
}

// --- source --expand ------------------------------------------------------------------------------

const EmbeddedHeader* find_header(const std::string& name) {
    for (const EmbeddedHeader& header : embedded_headers())
        if (header.name == name) return &header;
    return nullptr;
}

std::string directory_of(const std::string& name) {
    const size_t slash = name.rfind('/');
    return slash == std::string::npos ? "" : name.substr(0, slash + 1);
}

// `#include "name"` -> name; anything else -> "".
std::string quoted_include(const std::string& line) {
    size_t i = line.find_first_not_of(" \t");
    if (i == std::string::npos || line[i] != '#') return "";
    i = line.find_first_not_of(" \t", i + 1);
    if (i == std::string::npos || line.compare(i, 7, "include") != 0) return "";
    i = line.find_first_not_of(" \t", i + 7);
    if (i == std::string::npos || line[i] != '"') return "";
    const size_t end = line.find('"', i + 1);
    return end == std::string::npos ? "" : line.substr(i + 1, end - i - 1);
}

bool is_pragma_once(const std::string& line) {
    return std::regex_match(line, std::regex(R"(\s*#\s*pragma\s+once\s*)"));
}

// Inlines every quoted include that names an embedded header, each header once (as #pragma once
// does), resolving names as NVRTC does: beside the including header first, then from the root.
void expand(const std::string& text, const std::string& dir, std::set<std::string>& seen, std::string& out) {
    size_t start = 0;
    while (start < text.size()) {
        size_t end = text.find('\n', start);
        if (end == std::string::npos) end = text.size();
        const std::string line = text.substr(start, end - start);
        start = end + 1;
        const std::string name = quoted_include(line);
        const EmbeddedHeader* header = nullptr;
        if (!name.empty() && !dir.empty()) header = find_header(dir + name);
        if (!name.empty() && header == nullptr) header = find_header(name);
        if (header == nullptr) {
            out += is_pragma_once(line) ? "// #pragma once" : line;
            out += '\n';
        } else if (!seen.insert(header->name).second) {
            out += "// (" + header->name + " already expanded above)\n";
        } else {
            out += "// ---- begin " + header->name + " ----\n";
            expand(header->contents, directory_of(header->name), seen, out);
            out += "// ---- end " + header->name + " ----\n";
        }
    }
}

// --- sass -----------------------------------------------------------------------------------------

bool is_executable(const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

// PATH first, then the toolkit's default location.
std::string find_tool(const std::string& name) {
    const char* path = std::getenv("PATH");
    const std::string dirs = path != nullptr ? path : "";
    size_t begin = 0;
    while (begin <= dirs.size()) {
        size_t end = dirs.find(':', begin);
        if (end == std::string::npos) end = dirs.size();
        const std::string dir = end > begin ? dirs.substr(begin, end - begin) : ".";
        if (is_executable(dir + "/" + name)) return dir + "/" + name;
        begin = end + 1;
    }
    const std::string fallback = "/usr/local/cuda/bin/" + name;
    return is_executable(fallback) ? fallback : "";
}

// A cubin in a temporary file, removed when this goes out of scope.
struct TempCubin {
    std::string path;
    explicit TempCubin(const std::vector<char>& cubin) {
        const char* tmp = std::getenv("TMPDIR");
        std::string pattern = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/moejit-sass-XXXXXX.cubin";
        std::vector<char> name(pattern.begin(), pattern.end());
        name.push_back('\0');
        const int fd = ::mkstemps(name.data(), 6);
        if (fd < 0) throw Error("cannot create a temporary file " + pattern + ": " + std::strerror(errno));
        path = name.data();
        size_t done = 0;
        while (done < cubin.size()) {
            const ssize_t n = ::write(fd, cubin.data() + done, cubin.size() - done);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                const int error = errno;
                ::close(fd);
                throw Error("cannot write " + path + ": " + std::strerror(error));
            }
            done += static_cast<size_t>(n);
        }
        ::close(fd);
    }
    ~TempCubin() { ::unlink(path.c_str()); }
    TempCubin(const TempCubin&) = delete;
    TempCubin& operator=(const TempCubin&) = delete;
};

// Runs argv[0] with our stdout and stderr; returns its exit status.
int run_tool(const std::vector<std::string>& argv) {
    std::vector<char*> pointers;
    for (const std::string& arg : argv) pointers.push_back(const_cast<char*>(arg.c_str()));
    pointers.push_back(nullptr);
    std::fflush(stdout);
    std::fflush(stderr);
    const pid_t pid = ::fork();
    if (pid < 0) throw Error(std::string("fork failed: ") + std::strerror(errno));
    if (pid == 0) {
        ::execv(pointers[0], pointers.data());
        std::fprintf(stderr, "moejit: cannot run %s: %s\n", pointers[0], std::strerror(errno));
        ::_exit(127);
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) throw Error(std::string("waitpid failed: ") + std::strerror(errno));
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

// --- compile --------------------------------------------------------------------------------------

// ptxas -v: "Used 168 registers, ..." and "0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads".
std::string first_match(const std::string& log, const char* pattern, int groups) {
    std::smatch match;
    const std::string text = log;
    if (!std::regex_search(text, match, std::regex(pattern))) return "";
    std::string out = match[1];
    for (int i = 2; i <= groups; ++i) out += " " + std::string(match[i]);
    return out;
}

}  // namespace

int cmd_source(const std::vector<std::string>& argv) {
    const Args args("source", argv, with_kernel_options({{"--expand", false}}));
    if (print_help(args, "SPEC [--expand]",
                   "Prints the generated CUDA source of one kernel: the short translation unit that includes\n"
                   "its template and instantiates it.\n"
                   "    --expand           inline every included template header (each once), giving the whole\n"
                   "                       translation unit NVRTC compiles\n"))
        return 0;
    const Kernel kernel = resolve_kernel(args);
    const Source source = emit_source(kernel.problem, kernel.config);
    if (!args.flag("--expand")) {
        std::fputs(source.text.c_str(), stdout);
        return 0;
    }
    std::set<std::string> seen;
    std::string out;
    expand(source.text, "", seen, out);
    std::fputs(out.c_str(), stdout);
    return 0;
}

int cmd_ptx(const std::vector<std::string>& argv) {
    const Args args("ptx", argv, kernel_options());
    if (print_help(args, "SPEC", "Compiles one kernel with NVRTC (no cache) and prints its PTX.\n")) return 0;
    const Kernel kernel = resolve_kernel(args);
    Compiler compiler(DiskCache::from_environment());
    const NvrtcOutput output = compiler.compile_uncached(kernel.problem, kernel.config);
    std::fputs(output.ptx.c_str(), stdout);
    return 0;
}

int cmd_sass(const std::vector<std::string>& argv) {
    const Args args("sass", argv, kernel_options());
    if (print_help(args, "SPEC",
                   "Compiles one kernel with NVRTC (no cache) and prints the SASS of its cubin through\n"
                   "'nvdisasm -c', or else 'cuobjdump -sass' (looked up in PATH, then /usr/local/cuda/bin).\n"
                   "With MOEJIT_LINEINFO=1, nvdisasm prints the template line of each instruction.\n"))
        return 0;
    const Kernel kernel = resolve_kernel(args);
    std::string tool = find_tool("nvdisasm");
    std::vector<std::string> command = {tool, "-c"};
    const std::vector<std::string> options = nvrtc_options(kernel.problem.arch);
    if (std::count(options.begin(), options.end(), "-lineinfo") > 0) command.push_back("-g");  // template lines
    if (tool.empty()) {
        tool = find_tool("cuobjdump");
        command = {tool, "-sass"};
    }
    if (tool.empty())
        throw Error("neither nvdisasm nor cuobjdump was found (install the CUDA toolkit's nvdisasm or cuobjdump, "
                    "e.g. the cuda-nvdisasm package, and put it in PATH or /usr/local/cuda/bin)");
    Compiler compiler(DiskCache::from_environment());
    const NvrtcOutput output = compiler.compile_uncached(kernel.problem, kernel.config);
    const TempCubin cubin(output.cubin);
    command.push_back(cubin.path);
    const int status = run_tool(command);
    if (status != 0) throw Error(tool + " failed with exit status " + std::to_string(status));
    return 0;
}

int cmd_compile(const std::vector<std::string>& argv) {
    const Args args("compile", argv, kernel_options());
    if (print_help(args, "SPEC",
                   "Compiles one kernel with NVRTC, replacing its disk-cache entry, and reports the key, the\n"
                   "compile time, registers and spills (from ptxas -v) and where the entry went.\n"))
        return 0;
    const Kernel kernel = resolve_kernel(args);
    Compiler compiler(DiskCache::from_environment());
    const Binary binary = compiler.get(kernel.problem, kernel.config, /*recompile=*/true);
    const std::string registers = first_match(binary.log, R"(Used (\d+) registers)", 1);
    const std::string spills = first_match(binary.log, R"((\d+) bytes spill stores, (\d+) bytes spill loads)", 2);
    const size_t space = spills.find(' ');

    std::printf("spec       %s\n", to_spec(kernel.problem).c_str());
    std::printf("config     %s\n",
                is_elementwise(kernel.problem.op) ? "none (elementwise)" : kernel.config.to_string().c_str());
    std::printf("key        %s\n", binary.key.hex().c_str());
    std::printf("kernel     %s\n", binary.kernel_name.c_str());
    std::printf("compile    %s\n", format_ms(binary.milliseconds).c_str());
    std::printf("cubin      %s\n", format_bytes(binary.cubin.size()).c_str());
    std::printf("registers  %s\n", registers.empty() ? "? (not in the ptxas log)" : registers.c_str());
    if (spills.empty()) std::printf("spills     ? (not in the ptxas log)\n");
    else
        std::printf("spills     %s bytes stores, %s bytes loads\n", spills.substr(0, space).c_str(),
                    spills.substr(space + 1).c_str());
    if (compiler.disk().memory_only())
        std::printf("cache      not written (%s is not writable; see the warning above)\n",
                    compiler.disk().root().empty() ? "the cache directory" : compiler.disk().root().c_str());
    else if (!compiler.disk().has_entry_in_root(binary.key))
        std::printf("cache      not written (the store to %s failed; see the warning above)\n",
                    compiler.disk().entry_path(binary.key).c_str());
    else
        std::printf("cache      %s\n", compiler.disk().entry_path(binary.key).c_str());
    return 0;
}

}  // namespace moejit::cli

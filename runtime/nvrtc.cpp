#include "runtime/nvrtc.hpp"

#include <moejit/error.hpp>

#include "cache/key.hpp"
#include "runtime/embedded_templates.hpp"
#include "runtime/environment.hpp"

#include <nvrtc.h>

#include <chrono>
#include <cstdio>
#include <memory>

namespace moejit {

namespace {

void check(nvrtcResult result, const char* what) {
    if (result != NVRTC_SUCCESS)
        throw Error(std::string("NVRTC ") + what + " failed: " + nvrtcGetErrorString(result));
}

struct ProgramDeleter {
    void operator()(nvrtcProgram* program) const {
        nvrtcDestroyProgram(program);
        delete program;
    }
};
using Program = std::unique_ptr<nvrtcProgram, ProgramDeleter>;

std::string program_log(nvrtcProgram program) {
    size_t size = 0;
    if (nvrtcGetProgramLogSize(program, &size) != NVRTC_SUCCESS || size <= 1) return {};
    std::string log(size, '\0');
    nvrtcGetProgramLog(program, log.data());
    log.resize(size - 1);
    return log;
}

}  // namespace

NvrtcVersion nvrtc_version() {
    NvrtcVersion version;
    check(nvrtcVersion(&version.major, &version.minor), "version query");
    return version;
}

std::vector<std::string> nvrtc_options(const Arch& arch) {
    std::vector<std::string> options = {
        "--gpu-architecture=" + arch.name(),
        "-std=c++17",
        "-default-device",
        "-DNDEBUG",
        "--ptxas-options=-v",  // registers and spills in the log, checked by tests and `moejit compile`
    };
    // Read at every compile, not once, so that a process can build both kinds. The option is part
    // of the key, so kernels with line tables are cached beside those without.
    if (env::flag("MOEJIT_LINEINFO", /*unset=*/false, /*unrecognized=*/true)) options.push_back("-lineinfo");
    return normalize_options(options);
}

std::string numbered_lines(const std::string& text) {
    std::string out;
    int line = 1;
    size_t start = 0;
    while (start < text.size()) {
        size_t end = text.find('\n', start);
        if (end == std::string::npos) end = text.size();
        char prefix[16];
        std::snprintf(prefix, sizeof prefix, "%4d | ", line++);
        out += prefix;
        out.append(text, start, end - start);
        out += '\n';
        start = end + 1;
    }
    return out;
}

NvrtcOutput nvrtc_compile(const Source& source, const std::vector<std::string>& options) {
    const auto start = std::chrono::steady_clock::now();
    const auto& headers = embedded_headers();
    std::vector<const char*> header_names, header_texts;
    for (const EmbeddedHeader& header : headers) {
        header_names.push_back(header.name.c_str());
        header_texts.push_back(header.contents.c_str());
    }

    Program program(new nvrtcProgram{});
    check(nvrtcCreateProgram(program.get(), source.text.c_str(), source.program_name.c_str(),
                             static_cast<int>(headers.size()), header_texts.data(), header_names.data()),
          "create program");
    check(nvrtcAddNameExpression(*program, source.name_expression.c_str()), "add name expression");

    std::vector<const char*> option_pointers;
    for (const std::string& option : options) option_pointers.push_back(option.c_str());
    const nvrtcResult result =
        nvrtcCompileProgram(*program, static_cast<int>(option_pointers.size()), option_pointers.data());

    NvrtcOutput output;
    output.log = program_log(*program);
    if (result != NVRTC_SUCCESS) {
        throw Error(std::string("NVRTC could not compile ") + source.program_name + " (" +
                        nvrtcGetErrorString(result) + ")",
                    output.log + "\n--- generated source (" + source.program_name + ") ---\n" +
                        numbered_lines(source.text));
    }

    size_t size = 0;
    check(nvrtcGetCUBINSize(*program, &size), "cubin size");
    output.cubin.resize(size);
    check(nvrtcGetCUBIN(*program, output.cubin.data()), "get cubin");
    check(nvrtcGetPTXSize(*program, &size), "ptx size");
    output.ptx.resize(size);
    check(nvrtcGetPTX(*program, output.ptx.data()), "get ptx");
    if (!output.ptx.empty() && output.ptx.back() == '\0') output.ptx.pop_back();

    const char* lowered = nullptr;
    check(nvrtcGetLoweredName(*program, source.name_expression.c_str(), &lowered), "lowered name");
    output.lowered_name = lowered;
    output.milliseconds =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    return output;
}

}  // namespace moejit

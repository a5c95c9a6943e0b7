#pragma once
// The one place that calls NVRTC: generated source + embedded headers -> cubin for one exact arch.
#include <moejit/problem.hpp>

#include "codegen/emit.hpp"

#include <string>
#include <vector>

namespace moejit {

struct NvrtcVersion {
    int major = 0;
    int minor = 0;
};
NvrtcVersion nvrtc_version();

// The options every kernel is compiled with (the arch option included), normalized. With
// MOEJIT_LINEINFO on, also -lineinfo: SASS mapped to template lines for compute-sanitizer and ncu.
std::vector<std::string> nvrtc_options(const Arch& arch);

struct NvrtcOutput {
    std::vector<char> cubin;   // SASS for exactly the requested arch
    std::string ptx;
    std::string lowered_name;  // mangled name of source.name_expression
    std::string log;           // ptxas -v report: registers, spills
    double milliseconds = 0;
};

// Throws moejit::Error whose log() holds the NVRTC log and the numbered generated source.
NvrtcOutput nvrtc_compile(const Source& source, const std::vector<std::string>& options);

// "   1 | first line\n   2 | ..." for compile errors that cite generated-source line numbers.
std::string numbered_lines(const std::string& text);

}  // namespace moejit

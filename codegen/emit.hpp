#pragma once
// Emission of the short translation unit that instantiates one kernel template.
#include <moejit/problem.hpp>

#include "codegen/config.hpp"

#include <string>

namespace moejit {

struct Source {
    std::string text;             // what NVRTC compiles
    std::string program_name;     // file name NVRTC uses in its diagnostics
    std::string name_expression;  // for nvrtcAddNameExpression / nvrtcGetLoweredName
};

Source emit_source(const Problem& problem, const Config& config);

}  // namespace moejit

#include "codegen/emit.hpp"

namespace moejit {

Source emit_source(const Problem& problem, const Config& config) {
    const std::string element = problem.dtype == DType::bf16 ? "moejit::bf16" : "moejit::fp16";
    Source source;
    source.program_name = "moejit_" + std::string(to_string(problem.op)) + ".cu";
    source.text =
        "// moejit kernel " + to_spec(problem) + " with config " + config.to_string() + "\n"
        "#include \"kernels/sm80_grouped_gemm_fwd.cuh\"\n"
        "\n"
        "namespace moejit_generated {\n"
        "using Config = moejit::Sm80GroupedGemmConfig<\n"
        "    " + element + ",\n"
        "    /*N=*/" + std::to_string(problem.n) + ", /*K=*/" + std::to_string(problem.k) +
        ", /*Experts=*/" + std::to_string(problem.experts) + ",\n"
        "    /*TileM=*/" + std::to_string(config.tile_m) + ", /*TileN=*/" + std::to_string(config.tile_n) +
        ", /*Stages=*/" + std::to_string(config.stages) + ",\n"
        "    /*WarpsM=*/" + std::to_string(config.warps_m) + ", /*WarpsN=*/" + std::to_string(config.warps_n) +
        ">;\n"
        "}  // namespace moejit_generated\n";
    source.name_expression = "moejit::sm80_grouped_gemm_fwd<moejit_generated::Config>";
    return source;
}

}  // namespace moejit

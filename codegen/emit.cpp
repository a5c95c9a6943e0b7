#include "codegen/emit.hpp"

namespace moejit {

namespace {

std::string element_type(DType dtype) { return dtype == DType::bf16 ? "moejit::bf16" : "moejit::fp16"; }

std::string flags_expression(const Problem& p) {
    std::string flags;
    auto add = [&](bool on, const char* name) {
        if (on) flags += (flags.empty() ? "" : " | ") + std::string(name);
    };
    add(p.permute_x, "moejit::kPermuteX");
    add(p.permute_y, "moejit::kPermuteY");
    add(p.fuse_mul_post, "moejit::kFuseMulPost");
    add(p.gated && p.op == Op::fwd, "moejit::kGated");
    add(p.saves_preactivation, "moejit::kSavesPreactivation");
    add(p.out_fp32, "moejit::kOutFp32");
    return flags.empty() ? "0" : flags;
}

std::string gemm_parameters(const Problem& p, const Config& c) {
    std::string text = "    /*Flags=*/" + flags_expression(p) + ",\n    /*N=*/" + std::to_string(p.n) + ", /*K=*/" +
                       std::to_string(p.k) + ", /*Experts=*/" + std::to_string(p.experts) + ", /*Topk=*/" +
                       std::to_string(p.topk) + ",\n    /*TileM=*/" + std::to_string(c.tile_m) + ", /*TileN=*/" +
                       std::to_string(c.tile_n) + ", /*Stages=*/" + std::to_string(c.stages);
    if (!c.hopper()) text += ", /*WarpsM=*/" + std::to_string(c.warps_m) + ", /*WarpsN=*/" + std::to_string(c.warps_n);
    return text;
}

}  // namespace

Source emit_source(const Problem& problem, const Config& config) {
    std::string header, config_type, kernel;
    const std::string element = element_type(problem.dtype);
    switch (problem.op) {
        case Op::fwd:
        case Op::dx: {
            const std::string pass = std::string("moejit::RowGroupedPass::") + (problem.op == Op::fwd ? "forward" : "dx");
            if (config.swap_ab) {
                header = "kernels/sm90_grouped_gemm_swap_ab.cuh";
                config_type = "moejit::Sm90SwapAbConfig<\n    " + element + ", " + pass + ",\n" +
                              gemm_parameters(problem, config) + ">";
                kernel = "moejit::sm90_row_grouped_gemm_swap_ab";
                break;
            }
            const std::string family = config.hopper() ? "sm90" : "sm80";
            header = "kernels/" + family + "_grouped_gemm.cuh";
            config_type = "moejit::" + std::string(config.hopper() ? "Sm90" : "Sm80") + "RowGroupedConfig<\n    " +
                          element + ", " + pass + ",\n" +
                          gemm_parameters(problem, config) +
                          (config.hopper() ? ", /*Cluster=*/" + std::to_string(config.cluster) : "") + ">";
            kernel = "moejit::" + family + "_row_grouped_gemm";
            break;
        }
        case Op::dw: {
            const std::string family = config.hopper() ? "sm90" : "sm80";
            header = "kernels/" + family + "_grouped_gemm_dw.cuh";
            config_type = "moejit::" + std::string(config.hopper() ? "Sm90" : "Sm80") + "WeightGradConfig<\n    " +
                          element + ",\n" + gemm_parameters(problem, config) +
                          (config.hopper() ? ", /*StagingBoxes=*/" + std::to_string(dw_staging_boxes(problem, config)) +
                                                 ", /*Cluster=*/" + std::to_string(config.cluster) +
                                                 ", /*SliceK=*/" + std::to_string(config.slice_k)
                                           : "") +
                          ">";
            kernel = "moejit::" + family + "_grouped_gemm_dw";
            break;
        }
        case Op::combine:
            header = "kernels/combine_topk.cuh";
            config_type = "moejit::CombineTopkConfig<" + element + ", /*Width=*/" + std::to_string(problem.k) +
                          ", /*Topk=*/" + std::to_string(problem.topk) + ">";
            kernel = "moejit::combine_topk";
            break;
        case Op::gated_backward:
            header = "kernels/gated_activation_backward.cuh";
            config_type = "moejit::GatedBackwardConfig<" + element + ", /*N=*/" + std::to_string(problem.n) + ">";
            kernel = "moejit::gated_activation_backward";
            break;
        case Op::combine_backward:
            header = "kernels/combine_backward.cuh";
            config_type = "moejit::CombineBackwardConfig<" + element + ", /*Width=*/" + std::to_string(problem.k) +
                          ", /*Topk=*/" + std::to_string(problem.topk) + ">";
            kernel = "moejit::combine_backward";
            break;
        case Op::check_routing:
            header = "kernels/check_routing.cuh";
            config_type = "moejit::CheckRoutingConfig</*Experts=*/" + std::to_string(problem.experts) + ">";
            kernel = "moejit::check_routing";
            break;
        case Op::route_topk:
        case Op::router_backward: {
            const bool forward = problem.op == Op::route_topk;
            header = forward ? "kernels/route_topk.cuh" : "kernels/router_backward.cuh";
            config_type = std::string(forward ? "moejit::RouteTopkConfig<" : "moejit::RouterBackwardConfig<") + element +
                          ", /*Experts=*/" + std::to_string(problem.experts) + ", /*Topk=*/" +
                          std::to_string(problem.topk) + ">";
            kernel = forward ? "moejit::route_topk" : "moejit::router_backward";
            break;
        }
        case Op::routing_histogram:
        case Op::routing_indices: {
            const bool histogram = problem.op == Op::routing_histogram;
            header = histogram ? "kernels/routing_histogram.cuh" : "kernels/routing_indices.cuh";
            config_type = "moejit::RoutingIndicesConfig</*Experts=*/" + std::to_string(problem.experts) + ">";
            kernel = histogram ? "moejit::routing_histogram" : "moejit::routing_indices";
            break;
        }
        case Op::permute_rows:
        case Op::unpermute_rows:
            header = "kernels/permute_rows.cuh";
            config_type = "moejit::PermuteRowsConfig<" + element + ", /*Width=*/" + std::to_string(problem.k) +
                          ", /*Topk=*/" + std::to_string(problem.topk) + ", /*Unpermute=*/" +
                          (problem.op == Op::unpermute_rows ? "true" : "false") + ">";
            kernel = "moejit::permute_rows";
            break;
    }
    Source source;
    source.program_name = "moejit_" + std::string(to_string(problem.op)) + ".cu";
    const std::string tiling = is_elementwise(problem.op) ? "(elementwise: no tiling)" : "with config " + config.to_string();
    source.text = "// moejit kernel " + to_spec(problem) + " " + tiling + "\n#include \"" +
                  header + "\"\n\nnamespace moejit_generated {\nusing Config = " + config_type +
                  ";\n}  // namespace moejit_generated\n";
    source.name_expression = kernel + "<moejit_generated::Config>";
    return source;
}

}  // namespace moejit

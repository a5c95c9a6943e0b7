#pragma once
// Host-side MoE routing and float64 references of every grouped-GEMM pass (forward with its
// fusions, dX, dW, combine_topk, gated activation backward), following DESIGN.md's semantics:
//
//   slot s = t*topk + j (token t's j-th choice); gather_idx [M] = slots stably sorted by expert;
//   routed row r of expert e lies in [row_start[e], row_start[e] + m_sizes[e]) and is slot
//   gather_idx[r], token gather_idx[r] / topk.
//
// Everything lives in moejit::testing::moe so it does not collide with helpers that a test file
// defines for itself.
#include "tests/support/device.hpp"
#include "tests/support/half.hpp"
#include "tests/support/reference.hpp"

#include <moejit/problem.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace moejit::testing::moe {

// Fresh per process from std::random_device; MOEJIT_TEST_SEED=<number> replays a run.
inline uint64_t test_seed() {
    static const uint64_t seed = [] {
        if (const char* text = std::getenv("MOEJIT_TEST_SEED")) return uint64_t(std::strtoull(text, nullptr, 0));
        std::random_device device;
        return (uint64_t(device()) << 32) ^ uint64_t(device());
    }();
    return seed;
}

inline std::mt19937_64& rng() {
    static std::mt19937_64 generator(test_seed());
    return generator;
}

// Every 16-bit pattern of a dtype as a float (exact), for fast references over large weights.
inline const float* half_table(DType dtype) {
    static const std::vector<float> tables[2] = {[] {
                                                     std::vector<float> table(65536);
                                                     for (uint32_t i = 0; i < 65536; ++i) table[i] = bf16_to_float(uint16_t(i));
                                                     return table;
                                                 }(),
                                                 [] {
                                                     std::vector<float> table(65536);
                                                     for (uint32_t i = 0; i < 65536; ++i) table[i] = fp16_to_float(uint16_t(i));
                                                     return table;
                                                 }()};
    return tables[dtype == DType::bf16 ? 0 : 1].data();
}

// Uniform in [low, high], rounded to the dtype; generated in parallel (chunks seeded from rng()).
inline std::vector<uint16_t> random_halves(DType dtype, size_t count, float low = -1.0f, float high = 1.0f) {
    std::vector<uint16_t> values(count);
    const uint64_t seed = rng()();
    constexpr size_t kChunk = size_t(1) << 16;
    const int64_t chunks = int64_t((count + kChunk - 1) / kChunk);
    parallel_for(chunks, [&](int64_t begin, int64_t end) {
        for (int64_t chunk = begin; chunk < end; ++chunk) {
            std::mt19937_64 generator(seed + uint64_t(chunk) * 0x9e3779b97f4a7c15ull);
            std::uniform_real_distribution<float> uniform(low, high);
            const size_t stop = std::min(count, size_t(chunk + 1) * kChunk);
            for (size_t i = size_t(chunk) * kChunk; i < stop; ++i) values[i] = to_half(dtype, uniform(generator));
        }
    });
    return values;
}

inline std::vector<double> to_doubles(DType dtype, const std::vector<uint16_t>& bits) {
    const float* table = half_table(dtype);
    std::vector<double> values(bits.size());
    for (size_t i = 0; i < bits.size(); ++i) values[i] = table[bits[i]];
    return values;
}

inline std::vector<float> to_floats(DType dtype, const std::vector<uint16_t>& bits) {
    const float* table = half_table(dtype);
    std::vector<float> values(bits.size());
    for (size_t i = 0; i < bits.size(); ++i) values[i] = table[bits[i]];
    return values;
}

// --- routing ------------------------------------------------------------------------------------

struct HostRouting {
    int experts = 0;
    int topk = 1;
    int64_t tokens = 0;
    std::vector<int> choice;          // [M] expert of slot s = t*topk + j
    std::vector<int> m_sizes;         // [E]
    std::vector<int64_t> row_start;   // [E + 1] exclusive prefix sum of m_sizes
    std::vector<int> gather_idx;      // [M] routed row -> slot, slots stably sorted by expert
    std::vector<int> expert_of_row;   // [M] routed row -> expert
    std::vector<float> topk_weights;  // [M] in slot order, random in [0.05, 1]
    int64_t rows() const { return int64_t(choice.size()); }
};

// From each slot's expert (token t's choices at [t*topk, t*topk + topk), distinct).
inline HostRouting make_routing(int experts, int topk, std::vector<int> choice) {
    if (experts < 1 || topk < 1 || topk > experts || choice.size() % size_t(topk) != 0)
        throw std::invalid_argument("make_routing: bad experts/topk/choice size");
    HostRouting routing;
    routing.experts = experts;
    routing.topk = topk;
    routing.tokens = int64_t(choice.size()) / topk;
    routing.choice = std::move(choice);
    const int64_t rows = routing.rows();
    for (int64_t t = 0; t < routing.tokens; ++t)
        for (int j = 0; j < topk; ++j) {
            const int e = routing.choice[t * topk + j];
            if (e < 0 || e >= experts) throw std::invalid_argument("make_routing: expert out of range");
            for (int i = 0; i < j; ++i)
                if (routing.choice[t * topk + i] == e) throw std::invalid_argument("make_routing: repeated expert");
        }
    routing.m_sizes.assign(experts, 0);
    for (int e : routing.choice) ++routing.m_sizes[e];
    routing.row_start.assign(experts + 1, 0);
    for (int e = 0; e < experts; ++e) routing.row_start[e + 1] = routing.row_start[e] + routing.m_sizes[e];
    // Counting sort by expert, visiting slots in increasing order: stable.
    std::vector<int64_t> cursor(routing.row_start.begin(), routing.row_start.end() - 1);
    routing.gather_idx.assign(rows, 0);
    routing.expert_of_row.assign(rows, 0);
    for (int64_t s = 0; s < rows; ++s) {
        const int e = routing.choice[s];
        routing.gather_idx[cursor[e]] = int(s);
        routing.expert_of_row[cursor[e]] = e;
        ++cursor[e];
    }
    std::uniform_real_distribution<float> weight(0.05f, 1.0f);
    routing.topk_weights.resize(rows);
    for (auto& value : routing.topk_weights) value = weight(rng());
    return routing;
}

inline std::vector<int> all_experts(int experts) {
    std::vector<int> list(experts);
    std::iota(list.begin(), list.end(), 0);
    return list;
}

// Each token picks `topk` distinct experts uniformly from `allowed`. With first >= 0, a token's
// first choice (j = 0) is `first` with probability first_probability.
inline std::vector<int> random_choices(int64_t tokens, int topk, const std::vector<int>& allowed, int first = -1,
                                       double first_probability = 1.0) {
    std::vector<int> choice;
    choice.reserve(size_t(tokens) * topk);
    std::uniform_real_distribution<double> uniform(0, 1);
    for (int64_t t = 0; t < tokens; ++t) {
        const bool forced = first >= 0 && uniform(rng()) < first_probability;
        std::vector<int> pool;
        for (int e : allowed)
            if (!forced || e != first) pool.push_back(e);
        if (forced) choice.push_back(first);
        const int need = topk - (forced ? 1 : 0);
        if (need > int(pool.size())) throw std::invalid_argument("random_choices: too few allowed experts");
        for (int j = 0; j < need; ++j) {
            std::uniform_int_distribution<int> pick(j, int(pool.size()) - 1);
            std::swap(pool[j], pool[pick(rng())]);
            choice.push_back(pool[j]);
        }
    }
    return choice;
}

// Top-1 routing with exactly sizes[e] tokens on expert e, tokens in random order.
inline std::vector<int> choices_from_sizes(const std::vector<int>& sizes) {
    std::vector<int> choice;
    for (size_t e = 0; e < sizes.size(); ++e) choice.insert(choice.end(), sizes[e], int(e));
    std::shuffle(choice.begin(), choice.end(), rng());
    return choice;
}

// --- device helpers -----------------------------------------------------------------------------

// At least 16 bytes, so that an empty tensor still has a valid, aligned address.
template <class T>
DeviceBuffer upload(const std::vector<T>& host) {
    DeviceBuffer buffer(std::max<size_t>(16, host.size() * sizeof(T)));
    if (!host.empty()) check_cuda(driver().cuMemcpyHtoD(buffer.get(), host.data(), host.size() * sizeof(T)), "HtoD");
    return buffer;
}

// A buffer of `count` 16-bit elements (at least 16 bytes), every bit pattern kPoison (NaN).
inline DeviceBuffer poisoned(size_t count) {
    DeviceBuffer buffer(std::max<size_t>(16, count * 2));
    buffer.fill16(kPoison);
    return buffer;
}

template <class T>
std::vector<T> download(const DeviceBuffer& buffer, size_t offset, size_t count) {
    std::vector<T> host(count);
    if (count)
        check_cuda(driver().cuMemcpyDtoH(host.data(), buffer.get() + offset * sizeof(T), count * sizeof(T)), "DtoH");
    return host;
}

// --- weights ------------------------------------------------------------------------------------

// W [E, N, K], kept per expert on the host: experts without routed rows hold nothing here and
// kPoison (NaN) on the device, so reading a wrong expert (e.g. a wrapped 32-bit offset) shows up.
struct HostWeights {
    DType dtype = DType::bf16;
    int64_t n = 0, k = 0;
    std::vector<std::vector<uint16_t>> experts;
};

inline HostWeights random_weights(DType dtype, int64_t n, int64_t k, const HostRouting& routing) {
    HostWeights weights{dtype, n, k, std::vector<std::vector<uint16_t>>(routing.experts)};
    for (int e = 0; e < routing.experts; ++e)
        if (routing.m_sizes[e] > 0) weights.experts[e] = random_halves(dtype, size_t(n) * k);
    return weights;
}

inline DeviceBuffer upload_weights(const HostWeights& weights) {
    const size_t expert_elements = size_t(weights.n) * weights.k;
    DeviceBuffer buffer(weights.experts.size() * expert_elements * 2);
    buffer.fill16(kPoison);
    for (size_t e = 0; e < weights.experts.size(); ++e)
        if (!weights.experts[e].empty())
            check_cuda(driver().cuMemcpyHtoD(buffer.get() + e * expert_elements * 2, weights.experts[e].data(),
                                             expert_elements * 2),
                       "HtoD");
    return buffer;
}

// --- error measure ------------------------------------------------------------------------------

struct ErrorSum {
    double diff = 0, norm = 0;
    int64_t nonfinite = 0, count = 0;
    void add(double out, double ref) {
        ++count;
        if (!std::isfinite(out)) {
            ++nonfinite;
            return;
        }
        diff += (out - ref) * (out - ref);
        norm += ref * ref;
    }
    void merge(const ErrorSum& other) {
        diff += other.diff;
        norm += other.norm;
        nonfinite += other.nonfinite;
        count += other.count;
    }
    // ||out - ref||_F / ||ref||_F (absolute when ref is all zero); NaN if any output is not finite.
    double relative() const {
        if (nonfinite) return NAN;
        return norm == 0 ? std::sqrt(diff) : std::sqrt(diff / norm);
    }
};

inline ErrorSum compare(const std::vector<float>& out, const std::vector<double>& ref) {
    if (out.size() != ref.size()) throw std::invalid_argument("compare: sizes differ");
    ErrorSum sum;
    for (size_t i = 0; i < out.size(); ++i) sum.add(out[i], ref[i]);
    return sum;
}

// --- references (float64, from the rounded inputs) ------------------------------------------------

inline double silu(double x) { return x / (1.0 + std::exp(-x)); }

// The source row of routed row r in an A operand that permute_x gathers (X [T, K]).
inline int64_t token_row(const HostRouting& routing, int64_t r) { return routing.gather_idx[r] / routing.topk; }

struct ForwardReference {
    std::vector<double> y;              // as the forward writes it: [M, N] (slot order with permute_y) or [M, N/2] gated
    std::vector<double> preactivation;  // gated: gate|up [M, N] in routed order
};

// forward of `problem` (its flags; op ignored). x: [T, K] with permute_x, else [M, K] routed order.
inline ForwardReference reference_forward(const Problem& problem, const HostRouting& routing,
                                          const HostWeights& weights, const std::vector<double>& x) {
    const int64_t rows = routing.rows(), n = problem.n, k = problem.k;
    const float* table = half_table(weights.dtype);
    std::vector<double> acc(size_t(rows) * n);
    constexpr int64_t kBlock = 64;
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    parallel_for(rows * blocks, [&](int64_t begin, int64_t end) {
        for (int64_t item = begin; item < end; ++item) {
            const int64_t r = item / blocks, c0 = (item % blocks) * kBlock, c1 = std::min(n, c0 + kBlock);
            const int64_t source = problem.permute_x ? token_row(routing, r) : r;
            const double* x_row = x.data() + source * k;
            const uint16_t* w_expert = weights.experts[routing.expert_of_row[r]].data();
            for (int64_t c = c0; c < c1; ++c) {
                const uint16_t* w_row = w_expert + c * k;
                double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
                int64_t i = 0;
                for (; i + 4 <= k; i += 4) {
                    s0 += x_row[i] * table[w_row[i]];
                    s1 += x_row[i + 1] * table[w_row[i + 1]];
                    s2 += x_row[i + 2] * table[w_row[i + 2]];
                    s3 += x_row[i + 3] * table[w_row[i + 3]];
                }
                for (; i < k; ++i) s0 += x_row[i] * table[w_row[i]];
                acc[r * n + c] = (s0 + s1) + (s2 + s3);
            }
        }
    });
    ForwardReference ref;
    if (problem.gated) {
        const int64_t half = n / 2;
        ref.y.resize(size_t(rows) * half);
        for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < half; ++c) ref.y[r * half + c] = silu(acc[r * n + c]) * acc[r * n + half + c];
        ref.preactivation = std::move(acc);
    } else if (problem.permute_y) {
        ref.y.resize(size_t(rows) * n);
        for (int64_t r = 0; r < rows; ++r) {
            const int64_t slot = routing.gather_idx[r];
            const double scale = problem.fuse_mul_post ? double(routing.topk_weights[slot]) : 1.0;
            for (int64_t c = 0; c < n; ++c) ref.y[slot * n + c] = acc[r * n + c] * scale;
        }
    } else {
        ref.y = std::move(acc);
    }
    return ref;
}

// dx of the GEMM whose forward is `problem`: dX[r] = dY[r] @ W[e], [M, K]. dY [M, N] is read from
// slot gather_idx[r] with permute_y and scaled by topk_weights[gather_idx[r]] with fuse_mul_post;
// dX row r is written to slot gather_idx[r] with permute_x. (gated: dY is d(gate|up), no gating.)
inline std::vector<double> reference_dx(const Problem& problem, const HostRouting& routing,
                                        const HostWeights& weights, const std::vector<double>& dy) {
    const int64_t rows = routing.rows(), n = problem.n, k = problem.k;
    const float* table = half_table(weights.dtype);
    std::vector<double> out(size_t(rows) * k);
    constexpr int64_t kBlock = 256;
    const int64_t blocks = (k + kBlock - 1) / kBlock;
    parallel_for(rows * blocks, [&](int64_t begin, int64_t end) {
        double acc[kBlock];
        for (int64_t item = begin; item < end; ++item) {
            const int64_t r = item / blocks, k0 = (item % blocks) * kBlock, width = std::min(k, k0 + kBlock) - k0;
            const int64_t slot = routing.gather_idx[r];
            const int64_t dy_row = problem.permute_y ? slot : r;
            const int64_t out_row = problem.permute_x ? slot : r;
            const double scale = problem.fuse_mul_post ? double(routing.topk_weights[slot]) : 1.0;
            const uint16_t* w_expert = weights.experts[routing.expert_of_row[r]].data();
            std::fill(acc, acc + width, 0.0);
            for (int64_t c = 0; c < n; ++c) {
                const double d = dy[dy_row * n + c];
                const uint16_t* w_row = w_expert + c * k + k0;
                for (int64_t i = 0; i < width; ++i) acc[i] += d * table[w_row[i]];
            }
            for (int64_t i = 0; i < width; ++i) out[out_row * k + k0 + i] = acc[i] * scale;
        }
    });
    return out;
}

// Row `c` (of N) of dW[e] = sum over the routed rows r of e of outer(dY_r, X_r), into out[0..K).
// dY row r is dy[gather_idx[r]] with permute_y; X row r is x[gather_idx[r] / topk] with permute_x.
inline void reference_dw_row(const Problem& problem, const HostRouting& routing, const std::vector<double>& dy,
                             const std::vector<double>& x, int e, int64_t c, double* out) {
    const int64_t n = problem.n, k = problem.k;
    std::fill(out, out + k, 0.0);
    for (int64_t r = routing.row_start[e]; r < routing.row_start[e + 1]; ++r) {
        const int64_t dy_row = problem.permute_y ? routing.gather_idx[r] : r;
        const int64_t x_row = problem.permute_x ? token_row(routing, r) : r;
        const double d = dy[dy_row * n + c];
        const double* x_values = x.data() + x_row * k;
        for (int64_t i = 0; i < k; ++i) out[i] += d * x_values[i];
    }
}

// out[t] = sum_j slots[t*topk + j], [T, width].
inline std::vector<double> reference_combine(const std::vector<double>& slots, int64_t tokens, int topk,
                                             int64_t width) {
    std::vector<double> out(size_t(tokens) * width, 0.0);
    for (int64_t t = 0; t < tokens; ++t)
        for (int j = 0; j < topk; ++j)
            for (int64_t c = 0; c < width; ++c) out[t * width + c] += slots[(t * topk + j) * width + c];
    return out;
}

// d(gate|up) [rows, n] from gate|up [rows, n] and dh [rows, n/2]:
// d_gate = dh * up * s * (1 + g * (1 - s)), s = sigmoid(g); d_up = dh * silu(g).
inline std::vector<double> reference_gated_backward(const std::vector<double>& preactivation,
                                                    const std::vector<double>& grad_h, int64_t rows, int64_t n) {
    const int64_t half = n / 2;
    std::vector<double> out(size_t(rows) * n);
    for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < half; ++c) {
            const double g = preactivation[r * n + c], up = preactivation[r * n + half + c], dh = grad_h[r * half + c];
            const double s = 1.0 / (1.0 + std::exp(-g));
            out[r * n + c] = dh * up * s * (1.0 + g * (1.0 - s));
            out[r * n + half + c] = dh * g * s;
        }
    return out;
}

}  // namespace moejit::testing::moe

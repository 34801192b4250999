// Multi-scale deformable attention on the CPU: sampling, attention weighting and the sum over levels x points in
// one pass per (batch, query, head), with the semantics of plugins/msda/reference.py: bilinear, zeros outside the
// map, align_corners=False (a normalised x in [0, 1] is the pixel coordinate x * W - 0.5).
//
// Layouts (as the TensorRT plugin's): value (N, S, M, D) with S = sum of H_l * W_l; spatial shapes (L, 2) as
// (H_l, W_l); sampling locations (N, Lq, M, L, P, 2) as (x, y); attention weights (N, Lq, M, L, P); output
// (N, Lq, M * D). Values f32 or bf16, locations and weights f32 or bf16, accumulation in f32 and the output in the
// value's type. The inner loop runs over D contiguous channels of one position and head, with the accumulator in
// registers for D = 16, 32, 64 (any D works): the compiler vectorises it, once per instruction set (AVX-512,
// AVX2+FMA, the x86-64 baseline: msda_cpu_<isa>.cpp), and `select` picks the one this CPU runs. The AVX-512 and
// AVX2 builds run a vector path instead where D is a multiple of their width up to 64 (msda_cpu_vector.hpp). No
// threads here: the caller hands out work items (an index range of N * Lq * M) from its runtime's own thread pool.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

// bumped whenever the op's inputs, outputs or semantics change; plugins/msda/openvino_extension.py reads it here
#define M2F_MSDA_ABI 1

namespace m2f {
namespace msda {

struct Shape {
    int64_t N, S, M, D, Lq, L, P;
};

// bf16 is the top half of an f32: widening is a shift, narrowing rounds to nearest even
inline float bf16_to_float(uint16_t v) {
    uint32_t bits = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

inline uint16_t float_to_bf16(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    if ((bits & 0x7f800000u) == 0x7f800000u && (bits & 0x007fffffu)) {
        return static_cast<uint16_t>((bits >> 16) | 0x40u);  // NaN stays NaN
    }
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<uint16_t>(bits >> 16);
}

template <typename T>
inline float to_float(T v);
template <>
inline float to_float<float>(float v) {
    return v;
}
template <>
inline float to_float<uint16_t>(uint16_t v) {
    return bf16_to_float(v);
}

template <typename T>
inline T from_float(float v);
template <>
inline float from_float<float>(float v) {
    return v;
}
template <>
inline uint16_t from_float<uint16_t>(float v) {
    return float_to_bf16(v);
}

// The work of items [begin, end) of the flattened (n, q, m) index. V: float or uint16_t (bf16) values and output;
// F: float or uint16_t locations and weights; DC: D known at compile time (the accumulator lives in registers),
// or 0 for any D. `level_hw` (L, 2) and `level_start` (L) as int64.
template <typename V, typename F, int64_t DC>
inline void forward_items(float* __restrict acc, const V* __restrict value, const int64_t* level_hw,
                          const int64_t* level_start, const F* __restrict locations, const F* __restrict weights,
                          V* __restrict out, const Shape& s, int64_t begin, int64_t end) {
    const int64_t D = DC > 0 ? DC : s.D;
    const int64_t position_stride = s.M * D;  // from one position to the next in value
    int64_t m = begin % s.M, nq = begin / s.M;  // item = nq * M + m, nq = n * Lq + q: divided once, then counted
    int64_t n = nq / s.Lq, q = nq % s.Lq;
    for (int64_t item = begin; item < end; ++item, ++m) {
        if (m == s.M) {
            m = 0;
            ++nq;
            if (++q == s.Lq) {
                q = 0;
                ++n;
            }
        }
        for (int64_t d = 0; d < D; ++d) acc[d] = 0.0f;
        const int64_t lp_base = (nq * s.M + m) * s.L * s.P;  // into weights; locations: twice that
        for (int64_t l = 0; l < s.L; ++l) {
            const int64_t H = level_hw[2 * l], W = level_hw[2 * l + 1];
            const float Wf = static_cast<float>(W), Hf = static_cast<float>(H);
            const V* level = value + ((n * s.S + level_start[l]) * s.M + m) * D;
            for (int64_t p = 0; p < s.P; ++p) {
                const int64_t lp = lp_base + l * s.P + p;
                const float weight = to_float<F>(weights[lp]);
                const float x = to_float<F>(locations[2 * lp]) * Wf - 0.5f;
                const float y = to_float<F>(locations[2 * lp + 1]) * Hf - 0.5f;
                if (!(x > -1.0f && y > -1.0f && x < Wf && y < Hf)) {
                    continue;  // every corner outside (or NaN): zeros
                }
                // floor by truncation: x, y > -1 here, so x + 1 > 0 truncates to floor(x) + 1
                const int64_t x0 = static_cast<int64_t>(x + 1.0f) - 1, y0 = static_cast<int64_t>(y + 1.0f) - 1;
                const float fx = x - static_cast<float>(x0), fy = y - static_cast<float>(y0);
                const float c00 = weight * (1.0f - fy) * (1.0f - fx), c01 = weight * (1.0f - fy) * fx;
                const float c10 = weight * fy * (1.0f - fx), c11 = weight * fy * fx;
                const V* row = level + (y0 * W + x0) * position_stride;  // the top-left corner (may be outside)
                const int64_t down = W * position_stride;
                if (x0 >= 0 && y0 >= 0 && x0 + 1 < W && y0 + 1 < H) {  // inside: all four corners, no checks
                    const V* r00 = row;
                    const V* r01 = row + position_stride;
                    const V* r10 = row + down;
                    const V* r11 = r10 + position_stride;
                    for (int64_t d = 0; d < D; ++d) {
                        acc[d] += c00 * to_float<V>(r00[d]) + c01 * to_float<V>(r01[d]) + c10 * to_float<V>(r10[d]) +
                                  c11 * to_float<V>(r11[d]);
                    }
                    continue;
                }
                const float corner[4] = {c00, c01, c10, c11};
                for (int c = 0; c < 4; ++c) {  // at an edge: the corners on the map
                    const int64_t cy = y0 + (c >> 1), cx = x0 + (c & 1);
                    if (cy < 0 || cx < 0 || cy >= H || cx >= W) continue;
                    const V* corner_row = level + (cy * W + cx) * position_stride;
                    for (int64_t d = 0; d < D; ++d) acc[d] += corner[c] * to_float<V>(corner_row[d]);
                }
            }
        }
        V* dst = out + (nq * s.M + m) * D;
        for (int64_t d = 0; d < D; ++d) dst[d] = from_float<V>(acc[d]);
    }
}

// The work of items [begin, end) of the flattened (n, q, m) index. V: float or uint16_t (bf16) values and output;
// F: float or uint16_t locations and weights; DC: D known at compile time (the accumulator a local array the
// compiler keeps in registers), or 0 for any D. `level_hw` (L, 2) and `level_start` (L) as int64.
template <typename V, typename F, int64_t DC>
void forward_range(const V* value, const int64_t* level_hw, const int64_t* level_start, const F* locations,
                   const F* weights, V* out, const Shape& s, int64_t begin, int64_t end) {
    if constexpr (DC > 0) {
        float acc[DC];
        forward_items<V, F, DC>(acc, value, level_hw, level_start, locations, weights, out, s, begin, end);
    } else {
        std::vector<float> acc(static_cast<size_t>(s.D));
        forward_items<V, F, 0>(acc.data(), value, level_hw, level_start, locations, weights, out, s, begin, end);
    }
}

// One call's tensors, their element types erased: what the per-ISA entry points take.
struct Call {
    const void* value;
    const int64_t* level_hw;
    const int64_t* level_start;
    const void* locations;
    const void* weights;
    void* out;
    Shape shape;
    bool value_bf16;
    bool locations_bf16;
};

template <typename V, typename F>
void run_typed(const Call& c, int64_t begin, int64_t end) {
    const auto* v = static_cast<const V*>(c.value);
    const auto* loc = static_cast<const F*>(c.locations);
    const auto* w = static_cast<const F*>(c.weights);
    auto* o = static_cast<V*>(c.out);
    switch (c.shape.D) {  // the head widths of Mask2Former and Deformable DETR (256 / 8 = 32, 128 / 4 = 32, ...)
        case 16: return forward_range<V, F, 16>(v, c.level_hw, c.level_start, loc, w, o, c.shape, begin, end);
        case 32: return forward_range<V, F, 32>(v, c.level_hw, c.level_start, loc, w, o, c.shape, begin, end);
        case 64: return forward_range<V, F, 64>(v, c.level_hw, c.level_start, loc, w, o, c.shape, begin, end);
        default: return forward_range<V, F, 0>(v, c.level_hw, c.level_start, loc, w, o, c.shape, begin, end);
    }
}

// The body of each per-ISA entry point (msda_cpu_<isa>.cpp compiles this header with that ISA's flags).
inline void run_call(const Call& c, int64_t begin, int64_t end) {
    if (c.value_bf16 && c.locations_bf16) return run_typed<uint16_t, uint16_t>(c, begin, end);
    if (c.value_bf16) return run_typed<uint16_t, float>(c, begin, end);
    if (c.locations_bf16) return run_typed<float, uint16_t>(c, begin, end);
    return run_typed<float, float>(c, begin, end);
}

// Entry points, one per instruction set (defined in msda_cpu_avx512.cpp, msda_cpu_avx2.cpp, msda_cpu_baseline.cpp)
void run_avx512(const Call& c, int64_t begin, int64_t end);
void run_avx2(const Call& c, int64_t begin, int64_t end);
void run_baseline(const Call& c, int64_t begin, int64_t end);

// The entry point for this CPU, chosen once; `isa` names it ("avx512", "avx2", "baseline"). The environment
// variable M2F_MSDA_ISA names a lower one to use instead (tests run every path this way); a name this CPU cannot
// run, or an unknown one, changes nothing.
inline void (*select(const char** isa))(const Call&, int64_t, int64_t) {
    struct Entry {
        const char* name;
        bool runs;
        void (*run)(const Call&, int64_t, int64_t);
    };
    bool avx512 = false, avx2 = false;
#if defined(__GNUC__) && defined(__x86_64__)
    __builtin_cpu_init();
    avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl");
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    const Entry entries[] = {{"avx512", avx512, run_avx512}, {"avx2", avx2, run_avx2}, {"baseline", true, run_baseline}};
    const char* wanted = std::getenv("M2F_MSDA_ISA");
    const Entry* chosen = nullptr;
    for (const Entry& e : entries) {
        if (e.runs && !chosen) chosen = &e;  // the best this CPU runs
        if (e.runs && wanted && std::strcmp(wanted, e.name) == 0) {
            chosen = &e;
            break;
        }
    }
    *isa = chosen->name;
    return chosen->run;
}

}  // namespace msda
}  // namespace m2f

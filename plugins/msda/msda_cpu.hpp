// Multi-scale deformable attention on the CPU: sampling, attention weighting and the sum over levels x points in
// one pass per (batch, query, head), with the semantics of plugins/msda/reference.py: bilinear, zeros outside the
// map, align_corners=False (a normalised x in [0, 1] is the pixel coordinate x * W - 0.5).
//
// Layouts (as the TensorRT plugin's): value (N, S, M, D) with S = sum of H_l * W_l; spatial shapes (L, 2) as
// (H_l, W_l); sampling locations (N, Lq, M, L, P, 2) as (x, y); attention weights (N, Lq, M, L, P); output
// (N, Lq, M * D). Values f32 or bf16, locations and weights f32 or bf16, accumulation in f32 and the output in the
// value's type. The inner loop runs over D contiguous channels of one position and head: the compiler vectorises
// it, and target_clones picks AVX-512, AVX2+FMA or the baseline at load time. No threads here: the caller hands
// out work items (an index range of N * Lq * M) from its runtime's own thread pool.
#pragma once

#include <cmath>
#include <cstdint>
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

// acc[0:D] += coef * row[0:D]: the hot loop, one copy per instruction set
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define M2F_MSDA_CLONES __attribute__((target_clones("avx512f", "avx2,fma", "default")))
#else
#define M2F_MSDA_CLONES
#endif

M2F_MSDA_CLONES static void axpy_f32(float* __restrict acc, const float* __restrict row, float coef, int64_t D) {
    for (int64_t d = 0; d < D; ++d) acc[d] += coef * row[d];
}

M2F_MSDA_CLONES static void axpy_bf16(float* __restrict acc, const uint16_t* __restrict row, float coef, int64_t D) {
    for (int64_t d = 0; d < D; ++d) {
        uint32_t bits = static_cast<uint32_t>(row[d]) << 16;
        float v;
        std::memcpy(&v, &bits, sizeof v);
        acc[d] += coef * v;
    }
}

inline void axpy(float* acc, const float* row, float coef, int64_t D) { axpy_f32(acc, row, coef, D); }
inline void axpy(float* acc, const uint16_t* row, float coef, int64_t D) { axpy_bf16(acc, row, coef, D); }

// Work items [begin, end) of the flattened (n, q, m) index; `level_hw` (L, 2) and `level_start` (L) as int64.
// V: float or uint16_t (bf16) values and output; F: float or uint16_t locations and weights.
template <typename V, typename F>
void forward_range(const V* value, const int64_t* level_hw, const int64_t* level_start, const F* locations,
                   const F* weights, V* out, const Shape& s, int64_t begin, int64_t end) {
    std::vector<float> acc(static_cast<size_t>(s.D));
    const int64_t position_stride = s.M * s.D;  // from one position to the next in value
    for (int64_t item = begin; item < end; ++item) {
        const int64_t m = item % s.M;
        const int64_t nq = item / s.M;  // n * Lq + q
        const int64_t n = nq / s.Lq;
        std::fill(acc.begin(), acc.end(), 0.0f);
        const int64_t lp_base = (nq * s.M + m) * s.L * s.P;  // into weights; locations: twice that
        for (int64_t l = 0; l < s.L; ++l) {
            const int64_t H = level_hw[2 * l], W = level_hw[2 * l + 1];
            const V* level = value + ((n * s.S + level_start[l]) * s.M + m) * s.D;
            for (int64_t p = 0; p < s.P; ++p) {
                const int64_t lp = lp_base + l * s.P + p;
                const float weight = to_float<F>(weights[lp]);
                const float x = to_float<F>(locations[2 * lp]) * static_cast<float>(W) - 0.5f;
                const float y = to_float<F>(locations[2 * lp + 1]) * static_cast<float>(H) - 0.5f;
                if (!(x > -1.0f && y > -1.0f && x < static_cast<float>(W) && y < static_cast<float>(H))) {
                    continue;  // every corner outside (or NaN): zeros
                }
                const float x0f = std::floor(x), y0f = std::floor(y);
                const int64_t x0 = static_cast<int64_t>(x0f), y0 = static_cast<int64_t>(y0f);
                const float fx = x - x0f, fy = y - y0f;
                const float corner[4] = {(1.0f - fy) * (1.0f - fx), (1.0f - fy) * fx, fy * (1.0f - fx), fy * fx};
                for (int c = 0; c < 4; ++c) {
                    const int64_t cy = y0 + (c >> 1), cx = x0 + (c & 1);
                    if (cy < 0 || cx < 0 || cy >= H || cx >= W) continue;
                    axpy(acc.data(), level + (cy * W + cx) * position_stride, weight * corner[c], s.D);
                }
            }
        }
        V* dst = out + (nq * s.M + m) * s.D;
        for (int64_t d = 0; d < s.D; ++d) dst[d] = from_float<V>(acc[static_cast<size_t>(d)]);
    }
}

}  // namespace msda
}  // namespace m2f

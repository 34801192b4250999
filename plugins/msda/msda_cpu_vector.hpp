// The vector path of the CPU kernel, for D a multiple of the vector width up to 64 (every Mask2Former and
// Deformable DETR head: 256 / 8 = 32, ...), written once over an instruction set's traits (`Isa`, defined by the
// file that compiles it with that set's flags: msda_cpu_avx512.cpp, msda_cpu_avx2.cpp):
//
// 1. the taps: per item (batch, query, head), its sampling points Isa::kLanes at a time in vector lanes: pixel
//    coordinates, floor, the four bilinear corner weights times the attention weight (zero for a corner off the
//    map, and for a point outside or NaN, as msda_cpu.hpp) and each corner's element offset, clamped onto the map
//    so every load is in bounds;
// 2. the sum: per tap, four rows of D channels loaded and multiplied into D / Isa::kLanes accumulators that stay
//    in registers.
//
// The scalar path (msda_cpu.hpp) spends most of its time on the per-point coordinate arithmetic and keeps its
// accumulator on the stack; this one runs the default model's layer in about 0.6x its time
// (benchmarks/results/issue36_kernel_vectors/). Offsets are int32: a value tensor of 2^31 elements or more per batch
// item, or another D, takes the scalar path (`run_vectors` returns false).
//
// Isa provides: kLanes; Float (a vector of kLanes floats); zero(); fma(a, b, acc); broadcast(float);
// load<T>(const T*) (kLanes values, f32 or bf16, widened); store(float*, Float);
// taps<F>(locations, weights, count, lanes, j0, row, Taps<kLanes>&) (step 1 for `count` <= kLanes points).
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "msda_cpu.hpp"

namespace m2f {
namespace msda {

// Per sampling point j = l * P + p of an item: its level's width and height, and where the level starts in a
// head's value rows (in elements); padded to a multiple of 16 lanes (a multiple of every Isa::kLanes).
struct Lanes {
    std::vector<float> width, height;
    std::vector<int32_t> width_i, height_i, start;

    Lanes(const int64_t* level_hw, const int64_t* level_start, const Shape& s) {
        const size_t padded = static_cast<size_t>((s.L * s.P + 15) / 16 * 16);
        width.assign(padded, 1.0f), height.assign(padded, 1.0f);
        width_i.assign(padded, 1), height_i.assign(padded, 1), start.assign(padded, 0);
        for (int64_t l = 0; l < s.L; ++l) {
            for (int64_t p = 0; p < s.P; ++p) {
                const auto j = static_cast<size_t>(l * s.P + p);
                height_i[j] = static_cast<int32_t>(level_hw[2 * l]);
                width_i[j] = static_cast<int32_t>(level_hw[2 * l + 1]);
                height[j] = static_cast<float>(height_i[j]), width[j] = static_cast<float>(width_i[j]);
                start[j] = static_cast<int32_t>(level_start[l] * s.M * s.D);
            }
        }
    }
};

// Four corners x N points: element offsets from the item's head and the weights that multiply them.
template <int N>
struct Taps {
    alignas(64) int32_t offset[4][N];
    alignas(64) float weight[4][N];
};

// Items [begin, end) of the flattened (n, q, m) index; NV = D / Isa::kLanes accumulators.
template <typename Isa, typename V, typename F, int NV>
void forward_vectors(const Call& c, int64_t begin, int64_t end) {
    constexpr int kLanes = Isa::kLanes;
    constexpr int64_t D = NV * kLanes;
    const Shape& s = c.shape;
    const auto* value = static_cast<const V*>(c.value);
    const auto* locations = static_cast<const F*>(c.locations);
    const auto* weights = static_cast<const F*>(c.weights);
    auto* out = static_cast<V*>(c.out);
    const auto row = static_cast<int32_t>(s.M * D);  // from one position to the next
    const auto points = static_cast<int>(s.L * s.P);
    const Lanes lanes(c.level_hw, c.level_start, s);
    Taps<kLanes> t;
    for (int64_t item = begin; item < end; ++item) {
        const int64_t m = item % s.M, n = item / s.M / s.Lq;
        const V* head = value + n * s.S * row + m * D;
        typename Isa::Float acc[NV];
        for (int v = 0; v < NV; ++v) acc[v] = Isa::zero();
        for (int j0 = 0; j0 < points; j0 += kLanes) {
            const int count = points - j0 < kLanes ? points - j0 : kLanes;
            Isa::template taps<F>(locations + (item * points + j0) * 2, weights + item * points + j0, count, lanes,
                                  j0, row, t);
            for (int i = 0; i < count; ++i) {
                for (int corner = 0; corner < 4; ++corner) {
                    const V* r = head + t.offset[corner][i];
                    const auto w = Isa::broadcast(t.weight[corner][i]);
                    for (int v = 0; v < NV; ++v) acc[v] = Isa::fma(w, Isa::template load<V>(r + kLanes * v), acc[v]);
                }
            }
        }
        V* dst = out + item * D;
        alignas(64) float result[D];
        for (int v = 0; v < NV; ++v) Isa::store(result + kLanes * v, acc[v]);
        for (int64_t d = 0; d < D; ++d) dst[d] = from_float<V>(result[d]);
    }
}

template <typename Isa, typename V, typename F>
bool run_vectors_typed(const Call& c, int64_t begin, int64_t end) {
    constexpr int kLanes = Isa::kLanes;
    const int64_t vectors = c.shape.D % kLanes == 0 ? c.shape.D / kLanes : 0;  // 0: not a multiple of the width
    switch (vectors) {
        case 1: return forward_vectors<Isa, V, F, 1>(c, begin, end), true;
        case 2: return forward_vectors<Isa, V, F, 2>(c, begin, end), true;
        case 3: return forward_vectors<Isa, V, F, 3>(c, begin, end), true;
        case 4: return forward_vectors<Isa, V, F, 4>(c, begin, end), true;
        default: break;
    }
    if constexpr (kLanes < 16) {  // narrower vectors: up to D = 64 too
        switch (vectors) {
            case 6: return forward_vectors<Isa, V, F, 6>(c, begin, end), true;
            case 8: return forward_vectors<Isa, V, F, 8>(c, begin, end), true;
            default: break;
        }
    }
    return false;
}

// The vector path for this call, if it applies (else false: the caller runs the scalar one).
template <typename Isa>
bool run_vectors(const Call& c, int64_t begin, int64_t end) {
    if (c.shape.S * c.shape.M * c.shape.D > std::numeric_limits<int32_t>::max()) return false;
    if (c.value_bf16 && c.locations_bf16) return run_vectors_typed<Isa, uint16_t, uint16_t>(c, begin, end);
    if (c.value_bf16) return run_vectors_typed<Isa, uint16_t, float>(c, begin, end);
    if (c.locations_bf16) return run_vectors_typed<Isa, float, uint16_t>(c, begin, end);
    return run_vectors_typed<Isa, float, float>(c, begin, end);
}

}  // namespace msda
}  // namespace m2f

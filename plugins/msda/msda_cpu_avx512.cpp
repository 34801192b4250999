// msda_cpu.hpp compiled for AVX-512 (the flags: plugins/msda/openvino/CMakeLists.txt), with a faster path for
// D a multiple of 16 up to 64 (every Mask2Former and Deformable DETR head: 256 / 8 = 32, ...):
//
// 1. the taps: per item (batch, query, head), its sampling points 16 at a time in vector lanes: pixel coordinates,
//    floor, the four bilinear corner weights times the attention weight (zero for a corner off the map or a point
//    outside or NaN, as the reference) and each corner's element offset, clamped onto the map so every load is
//    in bounds;
// 2. the sum: per tap, four rows of D channels loaded and multiplied into D / 16 vector accumulators that stay
//    in registers.
//
// The scalar version (msda_cpu.hpp) spends most of its time on the per-point coordinate arithmetic and keeps its
// accumulator on the stack; this one runs the default model's layer in about half the time
// (benchmarks/msda_openvino.py). Offsets are int32: a value tensor of 2^31 elements or more per batch item, or any
// other D, takes the scalar path.
#include <immintrin.h>

#include <limits>

#include "msda_cpu.hpp"

namespace m2f {
namespace msda {
namespace {

inline __m512 widen_bf16(__m256i v) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16)); }

template <typename T>
inline __m512 load_masked(const T* p, __mmask16 k);
template <>
inline __m512 load_masked<float>(const float* p, __mmask16 k) {
    return _mm512_maskz_loadu_ps(k, p);
}
template <>
inline __m512 load_masked<uint16_t>(const uint16_t* p, __mmask16 k) {
    return widen_bf16(_mm256_maskz_loadu_epi16(k, p));
}

template <typename T>
inline __m512 load16(const T* p);
template <>
inline __m512 load16<float>(const float* p) {
    return _mm512_loadu_ps(p);
}
template <>
inline __m512 load16<uint16_t>(const uint16_t* p) {
    return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// Per sampling point j = l * P + p of an item: its level's width and height, and where the level starts in a
// head's value rows (in elements); padded to a multiple of 16 lanes.
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
                height_i[j] = static_cast<int32_t>(level_hw[2 * l]), width_i[j] = static_cast<int32_t>(level_hw[2 * l + 1]);
                height[j] = static_cast<float>(height_i[j]), width[j] = static_cast<float>(width_i[j]);
                start[j] = static_cast<int32_t>(level_start[l] * s.M * s.D);
            }
        }
    }
};

// Four corners x 16 points: element offsets from the item's head and the weights that multiply them.
struct Taps {
    alignas(64) int32_t offset[4][16];
    alignas(64) float weight[4][16];
};

// The taps of `count` (1-16) points starting at point j0: locations (x, y) interleaved, weights one per point.
template <typename F>
inline void compute_taps(const F* locations, const F* weights, int count, const Lanes& lanes, int j0, int32_t row,
                         Taps& t) {
    const auto k = static_cast<__mmask16>((1u << count) - 1u);
    const int first = count < 8 ? count : 8, second = count - first;
    const __m512 lo = load_masked<F>(locations, static_cast<__mmask16>((1u << (2 * first)) - 1u));
    const __m512 hi = load_masked<F>(locations + 16, static_cast<__mmask16>((1u << (2 * second)) - 1u));
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
    const __m512 W = _mm512_loadu_ps(lanes.width.data() + j0), H = _mm512_loadu_ps(lanes.height.data() + j0);
    const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f), minus_one = _mm512_set1_ps(-1.0f);
    __m512 x = _mm512_fmsub_ps(_mm512_permutex2var_ps(lo, even, hi), W, half);  // align_corners=False
    __m512 y = _mm512_fmsub_ps(_mm512_permutex2var_ps(lo, odd, hi), H, half);
    // some corner on the map; ordered compares, so NaN is outside (as the scalar path)
    const __mmask16 inside = k & _mm512_cmp_ps_mask(x, minus_one, _CMP_GT_OQ) &
                             _mm512_cmp_ps_mask(y, minus_one, _CMP_GT_OQ) & _mm512_cmp_ps_mask(x, W, _CMP_LT_OQ) &
                             _mm512_cmp_ps_mask(y, H, _CMP_LT_OQ);
    x = _mm512_maskz_mov_ps(inside, x);  // outside: a harmless (0, 0) with weight 0
    y = _mm512_maskz_mov_ps(inside, y);
    const __m512 w = _mm512_maskz_mov_ps(inside, load_masked<F>(weights, k));
    const __m512 xf = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 yf = _mm512_roundscale_ps(y, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512 fx = _mm512_sub_ps(x, xf), fy = _mm512_sub_ps(y, yf), gx = _mm512_sub_ps(one, fx);
    const __m512 top = _mm512_mul_ps(w, _mm512_sub_ps(one, fy)), bottom = _mm512_mul_ps(w, fy);
    const __m512i x0 = _mm512_cvttps_epi32(xf), y0 = _mm512_cvttps_epi32(yf);
    const __m512i ione = _mm512_set1_epi32(1), zero = _mm512_setzero_si512();
    const __m512i x1 = _mm512_add_epi32(x0, ione), y1 = _mm512_add_epi32(y0, ione);
    const __m512i Wi = _mm512_loadu_si512(lanes.width_i.data() + j0);
    const __m512i Hi = _mm512_loadu_si512(lanes.height_i.data() + j0);
    const __mmask16 left = _mm512_cmpge_epi32_mask(x0, zero), up = _mm512_cmpge_epi32_mask(y0, zero);
    const __mmask16 right = _mm512_cmplt_epi32_mask(x1, Wi), down = _mm512_cmplt_epi32_mask(y1, Hi);
    _mm512_store_ps(t.weight[0], _mm512_maskz_mul_ps(left & up, top, gx));
    _mm512_store_ps(t.weight[1], _mm512_maskz_mul_ps(right & up, top, fx));
    _mm512_store_ps(t.weight[2], _mm512_maskz_mul_ps(left & down, bottom, gx));
    _mm512_store_ps(t.weight[3], _mm512_maskz_mul_ps(right & down, bottom, fx));
    const __m512i cx0 = _mm512_max_epi32(x0, zero), cy0 = _mm512_max_epi32(y0, zero);  // clamped onto the map
    const __m512i cx1 = _mm512_min_epi32(x1, _mm512_sub_epi32(Wi, ione));
    const __m512i cy1 = _mm512_min_epi32(y1, _mm512_sub_epi32(Hi, ione));
    const __m512i start = _mm512_loadu_si512(lanes.start.data() + j0), stride = _mm512_set1_epi32(row);
    const __m512i r0 = _mm512_mullo_epi32(cy0, Wi), r1 = _mm512_mullo_epi32(cy1, Wi);
    const auto at = [&](__m512i r, __m512i c) {
        return _mm512_add_epi32(start, _mm512_mullo_epi32(_mm512_add_epi32(r, c), stride));
    };
    _mm512_store_si512(t.offset[0], at(r0, cx0));
    _mm512_store_si512(t.offset[1], at(r0, cx1));
    _mm512_store_si512(t.offset[2], at(r1, cx0));
    _mm512_store_si512(t.offset[3], at(r1, cx1));
}

template <typename V>
inline void store(V* dst, const __m512* acc, int vectors) {
    if constexpr (sizeof(V) == sizeof(float)) {
        for (int v = 0; v < vectors; ++v) _mm512_storeu_ps(dst + 16 * v, acc[v]);
    } else {
        alignas(64) float row[64];
        for (int v = 0; v < vectors; ++v) _mm512_store_ps(row + 16 * v, acc[v]);
        for (int d = 0; d < 16 * vectors; ++d) dst[d] = from_float<V>(row[d]);
    }
}

// Items [begin, end) of the flattened (n, q, m) index; NV = D / 16 accumulators.
template <typename V, typename F, int NV>
void forward_vectors(const Call& c, int64_t begin, int64_t end) {
    const Shape& s = c.shape;
    const auto* value = static_cast<const V*>(c.value);
    const auto* locations = static_cast<const F*>(c.locations);
    const auto* weights = static_cast<const F*>(c.weights);
    auto* out = static_cast<V*>(c.out);
    constexpr int64_t D = NV * 16;
    const auto row = static_cast<int32_t>(s.M * D);  // from one position to the next
    const auto points = static_cast<int>(s.L * s.P);
    const Lanes lanes(c.level_hw, c.level_start, s);
    Taps t;
    for (int64_t item = begin; item < end; ++item) {
        const int64_t m = item % s.M, n = item / s.M / s.Lq;
        const V* head = value + n * s.S * row + m * D;
        const F* item_locations = locations + item * points * 2;
        const F* item_weights = weights + item * points;
        __m512 acc[NV];
        for (int v = 0; v < NV; ++v) acc[v] = _mm512_setzero_ps();
        for (int j0 = 0; j0 < points; j0 += 16) {
            const int count = points - j0 < 16 ? points - j0 : 16;
            compute_taps<F>(item_locations + 2 * j0, item_weights + j0, count, lanes, j0, row, t);
            for (int i = 0; i < count; ++i) {
                for (int corner = 0; corner < 4; ++corner) {
                    const V* r = head + t.offset[corner][i];
                    const __m512 w = _mm512_set1_ps(t.weight[corner][i]);
                    for (int v = 0; v < NV; ++v) acc[v] = _mm512_fmadd_ps(w, load16<V>(r + 16 * v), acc[v]);
                }
            }
        }
        store<V>(out + item * D, acc, NV);
    }
}

template <typename V, typename F>
bool run_vectors(const Call& c, int64_t begin, int64_t end) {
    switch (c.shape.D) {
        case 16: return forward_vectors<V, F, 1>(c, begin, end), true;
        case 32: return forward_vectors<V, F, 2>(c, begin, end), true;
        case 48: return forward_vectors<V, F, 3>(c, begin, end), true;
        case 64: return forward_vectors<V, F, 4>(c, begin, end), true;
        default: return false;
    }
}

bool run_fast(const Call& c, int64_t begin, int64_t end) {
    if (c.shape.S * c.shape.M * c.shape.D > std::numeric_limits<int32_t>::max()) return false;
    if (c.value_bf16 && c.locations_bf16) return run_vectors<uint16_t, uint16_t>(c, begin, end);
    if (c.value_bf16) return run_vectors<uint16_t, float>(c, begin, end);
    if (c.locations_bf16) return run_vectors<float, uint16_t>(c, begin, end);
    return run_vectors<float, float>(c, begin, end);
}

}  // namespace

void run_avx512(const Call& c, int64_t begin, int64_t end) {
    if (!run_fast(c, begin, end)) run_call(c, begin, end);
}

}  // namespace msda
}  // namespace m2f

// The kernel for AVX-512 (the flags: plugins/msda/openvino/CMakeLists.txt): the vector path of msda_cpu_vector.hpp
// over 16-lane vectors where it applies, else msda_cpu.hpp's scalar path compiled with these flags.
#include "msda_cpu_vector.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace m2f {
namespace msda {
#if defined(__x86_64__) || defined(_M_X64)  // elsewhere (aarch64: Jetson) this entry point is the scalar path
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

struct Avx512 {
    static constexpr int kLanes = 16;
    using Float = __m512;

    static Float zero() { return _mm512_setzero_ps(); }
    static Float broadcast(float x) { return _mm512_set1_ps(x); }
    static Float fma(Float a, Float b, Float acc) { return _mm512_fmadd_ps(a, b, acc); }
    static void store(float* p, Float v) { _mm512_store_ps(p, v); }

    template <typename T>
    static Float load(const T* p) {
        if constexpr (sizeof(T) == sizeof(float)) {
            return _mm512_loadu_ps(p);
        } else {
            return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        }
    }

    // The taps of `count` (1-16) points starting at point j0: locations (x, y) interleaved, one weight per point.
    template <typename F>
    static void taps(const F* locations, const F* weights, int count, const Lanes& lanes, int j0, int32_t row,
                     Taps<kLanes>& t) {
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
        // some corner on the map; ordered compares, so NaN is outside
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
};

}  // namespace

void run_avx512(const Call& c, int64_t begin, int64_t end) {
    if (!run_vectors<Avx512>(c, begin, end)) run_call(c, begin, end);
}
#else
void run_avx512(const Call& c, int64_t begin, int64_t end) { run_call(c, begin, end); }
#endif

}  // namespace msda
}  // namespace m2f

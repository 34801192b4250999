// The kernel for AVX2 + FMA (the flags: plugins/msda/openvino/CMakeLists.txt): the vector path of
// msda_cpu_vector.hpp over 8-lane vectors where it applies, else msda_cpu.hpp's scalar path compiled with these flags.
#include "msda_cpu_vector.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace m2f {
namespace msda {
#if defined(__x86_64__) || defined(_M_X64)  // elsewhere (aarch64: Jetson) this entry point is the scalar path
namespace {

inline __m256 widen_bf16(__m128i v) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16)); }

// the first n (0-8) values at p, zeros after them
template <typename T>
inline __m256 load_part(const T* p, int n) {
    if (n == 8) {
        if constexpr (sizeof(T) == sizeof(float)) {
            return _mm256_loadu_ps(p);
        } else {
            return widen_bf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        }
    }
    alignas(32) float part[8] = {};
    for (int i = 0; i < n; ++i) part[i] = to_float<T>(p[i]);
    return _mm256_load_ps(part);
}

// the even (x) or odd (y) entries of two vectors of interleaved pairs, in order
inline __m256 pick(__m256 a, __m256 b, bool odd) {
    const __m256 mixed = odd ? _mm256_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)) : _mm256_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(mixed), _MM_SHUFFLE(3, 1, 2, 0)));
}

struct Avx2 {
    static constexpr int kLanes = 8;
    using Float = __m256;

    static Float zero() { return _mm256_setzero_ps(); }
    static Float broadcast(float x) { return _mm256_set1_ps(x); }
    static Float fma(Float a, Float b, Float acc) { return _mm256_fmadd_ps(a, b, acc); }
    static void store(float* p, Float v) { _mm256_store_ps(p, v); }

    template <typename T>
    static Float load(const T* p) {
        return load_part<T>(p, 8);
    }

    // The taps of `count` (1-8) points starting at point j0: locations (x, y) interleaved, one weight per point.
    template <typename F>
    static void taps(const F* locations, const F* weights, int count, const Lanes& lanes, int j0, int32_t row,
                     Taps<kLanes>& t) {
        const int first = 2 * count < 8 ? 2 * count : 8, second = 2 * count - first;
        const __m256 lo = load_part<F>(locations, first), hi = load_part<F>(locations + 8, second);
        const __m256 W = _mm256_loadu_ps(lanes.width.data() + j0), H = _mm256_loadu_ps(lanes.height.data() + j0);
        const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f), minus_one = _mm256_set1_ps(-1.0f);
        __m256 x = _mm256_fmsub_ps(pick(lo, hi, false), W, half);  // align_corners=False
        __m256 y = _mm256_fmsub_ps(pick(lo, hi, true), H, half);
        // some corner on the map; ordered compares, so NaN is outside (points past `count` have weight 0)
        const __m256 inside = _mm256_and_ps(
            _mm256_and_ps(_mm256_cmp_ps(x, minus_one, _CMP_GT_OQ), _mm256_cmp_ps(y, minus_one, _CMP_GT_OQ)),
            _mm256_and_ps(_mm256_cmp_ps(x, W, _CMP_LT_OQ), _mm256_cmp_ps(y, H, _CMP_LT_OQ)));
        x = _mm256_and_ps(inside, x);  // outside: a harmless (0, 0) with weight 0
        y = _mm256_and_ps(inside, y);
        const __m256 w = _mm256_and_ps(inside, load_part<F>(weights, count));
        const __m256 xf = _mm256_floor_ps(x), yf = _mm256_floor_ps(y);
        const __m256 fx = _mm256_sub_ps(x, xf), fy = _mm256_sub_ps(y, yf), gx = _mm256_sub_ps(one, fx);
        const __m256 top = _mm256_mul_ps(w, _mm256_sub_ps(one, fy)), bottom = _mm256_mul_ps(w, fy);
        const __m256i x0 = _mm256_cvttps_epi32(xf), y0 = _mm256_cvttps_epi32(yf);
        const __m256i ione = _mm256_set1_epi32(1), none = _mm256_set1_epi32(-1);
        const __m256i x1 = _mm256_add_epi32(x0, ione), y1 = _mm256_add_epi32(y0, ione);
        const __m256i Wi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes.width_i.data() + j0));
        const __m256i Hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes.height_i.data() + j0));
        const __m256 left = _mm256_castsi256_ps(_mm256_cmpgt_epi32(x0, none));
        const __m256 up = _mm256_castsi256_ps(_mm256_cmpgt_epi32(y0, none));
        const __m256 right = _mm256_castsi256_ps(_mm256_cmpgt_epi32(Wi, x1));
        const __m256 down = _mm256_castsi256_ps(_mm256_cmpgt_epi32(Hi, y1));
        _mm256_store_ps(t.weight[0], _mm256_and_ps(_mm256_and_ps(left, up), _mm256_mul_ps(top, gx)));
        _mm256_store_ps(t.weight[1], _mm256_and_ps(_mm256_and_ps(right, up), _mm256_mul_ps(top, fx)));
        _mm256_store_ps(t.weight[2], _mm256_and_ps(_mm256_and_ps(left, down), _mm256_mul_ps(bottom, gx)));
        _mm256_store_ps(t.weight[3], _mm256_and_ps(_mm256_and_ps(right, down), _mm256_mul_ps(bottom, fx)));
        const __m256i zero = _mm256_setzero_si256();
        const __m256i cx0 = _mm256_max_epi32(x0, zero), cy0 = _mm256_max_epi32(y0, zero);  // clamped onto the map
        const __m256i cx1 = _mm256_min_epi32(x1, _mm256_sub_epi32(Wi, ione));
        const __m256i cy1 = _mm256_min_epi32(y1, _mm256_sub_epi32(Hi, ione));
        const __m256i start = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes.start.data() + j0));
        const __m256i stride = _mm256_set1_epi32(row);
        const __m256i r0 = _mm256_mullo_epi32(cy0, Wi), r1 = _mm256_mullo_epi32(cy1, Wi);
        const auto at = [&](__m256i r, __m256i c) {
            return _mm256_add_epi32(start, _mm256_mullo_epi32(_mm256_add_epi32(r, c), stride));
        };
        _mm256_store_si256(reinterpret_cast<__m256i*>(t.offset[0]), at(r0, cx0));
        _mm256_store_si256(reinterpret_cast<__m256i*>(t.offset[1]), at(r0, cx1));
        _mm256_store_si256(reinterpret_cast<__m256i*>(t.offset[2]), at(r1, cx0));
        _mm256_store_si256(reinterpret_cast<__m256i*>(t.offset[3]), at(r1, cx1));
    }
};

}  // namespace

void run_avx2(const Call& c, int64_t begin, int64_t end) {
    if (!run_vectors<Avx2>(c, begin, end)) run_call(c, begin, end);
}
#else
void run_avx2(const Call& c, int64_t begin, int64_t end) { run_call(c, begin, end); }
#endif

}  // namespace msda
}  // namespace m2f

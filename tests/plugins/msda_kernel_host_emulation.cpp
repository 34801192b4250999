// Host emulation of the MSDA CUDA kernels (plugins/msda/msda_kernel.cu) for machines without a GPU: the kernel
// bodies, cut from the .cu by tests/plugins/test_msda_kernel_emulated.py into msda_kernels_extracted.inc, run on
// CPU threads. Each warp is 32 std::threads in lockstep at the points that need it (__syncthreads, warp shuffles,
// through a std::barrier); warps and blocks run one after another. It checks indexing, vector/scalar paths, the
// level table and the shuffle reduction; it does not replace running the kernels on a GPU.
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include <cuda_fp16.h>
#include <vector_types.h>

#undef __global__
#undef __device__
#undef __forceinline__
#undef __shared__
#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(x)
#define __shared__ static // one block at a time: block-shared memory is a static

namespace
{
thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local uint3 blockDim;
thread_local int emuLane;
std::barrier<>* emuWarpBarrier = nullptr;
double emuShuffle[32];

// __syncthreads across the running warp: warp 0 (which fills the level table) runs before the block's other warps.
inline void __syncthreads()
{
    emuWarpBarrier->arrive_and_wait();
}

inline uint4 __ldg(uint4 const* p)
{
    return *p;
}

template <typename T>
T __shfl_xor_sync(unsigned /*mask*/, T value, int laneMask)
{
    emuShuffle[emuLane] = static_cast<double>(value);
    emuWarpBarrier->arrive_and_wait();
    T const other = static_cast<T>(emuShuffle[emuLane ^ laneMask]);
    emuWarpBarrier->arrive_and_wait();
    return other;
}

template <typename T>
T atomicAdd(T* address, T value)
{
    return std::atomic_ref<T>(*address).fetch_add(value);
}

using std::floor;
} // namespace

#include "msda_kernels_extracted.inc"

namespace
{

template <typename Body>
void emulateLaunch(int64_t threads, Body body)
{
    constexpr int kBlock = 256;
    int64_t const blocks = (threads + kBlock - 1) / kBlock;
    for (int64_t b = 0; b < blocks; ++b)
    {
        for (int w = 0; w < kBlock / 32; ++w)
        {
            std::barrier<> warp(32);
            emuWarpBarrier = &warp;
            std::vector<std::thread> lanes;
            for (int lane = 0; lane < 32; ++lane)
            {
                lanes.emplace_back(
                    [=]
                    {
                        blockIdx = {static_cast<unsigned>(b), 0, 0};
                        blockDim = {kBlock, 1, 1};
                        threadIdx = {static_cast<unsigned>(w * 32 + lane), 0, 0};
                        emuLane = lane;
                        body();
                    });
            }
            for (auto& t : lanes)
            {
                t.join();
            }
        }
    }
}

bool aligned(void const* p)
{
    return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// Mirrors launchForward: returns -1 for rejected sizes, else 1 when the vector path ran, 0 for the scalar path.
template <typename T>
int forward(T const* value, void const* shapes, int shapes64, T const* locations, T const* weights, T* output, int N,
    int S, int M, int D, int Lq, int L, int P)
{
    if (m2f_msda_check_sizes(N, S, M, D, Lq, L, P) != cudaSuccess)
    {
        return -1;
    }
    constexpr int C = kChunk<T>;
    int64_t const threads = static_cast<int64_t>(N) * Lq * M * ((D + C - 1) / C);
    auto const type = shapes64 ? M2F_MSDA_INDEX_INT64 : M2F_MSDA_INDEX_INT32;
    bool const vec = D % C == 0 && aligned(value) && aligned(output);
    if (threads == 0)
    {
        return vec;
    }
    if (vec)
    {
        emulateLaunch(threads,
            [=] { msdaForwardKernel<T, C, true>(value, shapes, type, locations, weights, output, N, S, M, D, Lq, L, P); });
    }
    else
    {
        emulateLaunch(threads,
            [=] { msdaForwardKernel<T, C, false>(value, shapes, type, locations, weights, output, N, S, M, D, Lq, L, P); });
    }
    return vec;
}

// Mirrors launchBackward: returns -1 for rejected sizes, else 1000 * group + (1 for the vector path).
template <typename T>
int backward(T const* value, void const* shapes, int shapes64, T const* locations, T const* weights,
    T const* gradOutput, T* gradValue, T* gradLocations, T* gradWeights, int N, int S, int M, int D, int Lq, int L, int P)
{
    if (m2f_msda_check_sizes(N, S, M, D, Lq, L, P) != cudaSuccess)
    {
        return -1;
    }
    int64_t const points = static_cast<int64_t>(N) * Lq * M * L * P;
    std::memset(gradValue, 0, sizeof(T) * N * S * M * D);
    std::memset(gradLocations, 0, sizeof(T) * 2 * points);
    std::memset(gradWeights, 0, sizeof(T) * points);
    constexpr int C = kChunk<T>;
    int const chunks = (D + C - 1) / C;
    int64_t const threads = static_cast<int64_t>(N) * Lq * M * chunks;
    int group = chunks & -chunks;
    group = group < 32 ? group : 32;
    auto const type = shapes64 ? M2F_MSDA_INDEX_INT64 : M2F_MSDA_INDEX_INT32;
    bool const vec = D % C == 0 && aligned(value) && aligned(gradOutput);
    if (threads == 0)
    {
        return 1000 * group + vec;
    }
    if (vec)
    {
        emulateLaunch(threads,
            [=]
            {
                msdaBackwardKernel<T, C, true>(value, shapes, type, locations, weights, gradOutput, gradValue,
                    gradLocations, gradWeights, N, S, M, D, Lq, L, P, group);
            });
    }
    else
    {
        emulateLaunch(threads,
            [=]
            {
                msdaBackwardKernel<T, C, false>(value, shapes, type, locations, weights, gradOutput, gradValue,
                    gradLocations, gradWeights, N, S, M, D, Lq, L, P, group);
            });
    }
    return 1000 * group + vec;
}

} // namespace

extern "C" int emu_forward_f32(float const* v, void const* s, int s64, float const* l, float const* w, float* o, int N,
    int S, int M, int D, int Lq, int L, int P)
{
    return forward<float>(v, s, s64, l, w, o, N, S, M, D, Lq, L, P);
}

extern "C" int emu_forward_f16(__half const* v, void const* s, int s64, __half const* l, __half const* w, __half* o,
    int N, int S, int M, int D, int Lq, int L, int P)
{
    return forward<__half>(v, s, s64, l, w, o, N, S, M, D, Lq, L, P);
}

extern "C" int emu_forward_f64(double const* v, void const* s, int s64, double const* l, double const* w, double* o,
    int N, int S, int M, int D, int Lq, int L, int P)
{
    return forward<double>(v, s, s64, l, w, o, N, S, M, D, Lq, L, P);
}

extern "C" int emu_backward_f32(float const* v, void const* s, int s64, float const* l, float const* w,
    float const* go, float* gv, float* gl, float* gw, int N, int S, int M, int D, int Lq, int L, int P)
{
    return backward<float>(v, s, s64, l, w, go, gv, gl, gw, N, S, M, D, Lq, L, P);
}

extern "C" int emu_backward_f64(double const* v, void const* s, int s64, double const* l, double const* w,
    double const* go, double* gv, double* gl, double* gw, int N, int S, int M, int D, int Lq, int L, int P)
{
    return backward<double>(v, s, s64, l, w, go, gv, gl, gw, N, S, M, D, Lq, L, P);
}

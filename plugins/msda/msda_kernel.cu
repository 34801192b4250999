// Multi-scale deformable attention CUDA kernels: forward (float, half, double) and backward (float, double).
// The interface and the meaning of every tensor are in msda_kernel.h; the oracle is plugins/msda/reference.py.
//
// Launch shape: one thread per (n, q, m, channel chunk), a 1-D grid of 256-thread blocks, thread index
//   idx = ((n * Lq + q) * M + m) * chunks + chunk,   chunks = ceil(D / C),   C = 16 bytes / sizeof(T)
// (4 float, 8 half, 2 double channels). The threads of one head sit side by side, so the C-channel chunks of a
// corner pixel are read as coalesced 16-byte loads (LDG.128) and each thread computes the bilinear weights of a
// sampling point once for C channels instead of once per channel. For Mask2Former (D = 32) a head is 8 float
// threads or 4 half threads. When D is not a multiple of C, or a pointer is not 16-byte aligned, the same kernel is
// instantiated with scalar, bounds-checked loads (the last chunk of a head is partial).
//
// Backward: the same thread layout. Each thread scatters its value gradients with atomicAdd and computes partial
// gradients of the point's location and weight over its channels; these are summed over the head's threads with
// warp shuffles (groups of G lanes, G the largest power of two <= 32 dividing `chunks`, so a group never spans two
// heads) and one atomicAdd per group lands them in the (zeroed) outputs.
//
// The level table (H, W, start offset) is read once per block into shared memory; offsets are the prefix sums of
// H * W (level_start_index is not read). A level whose H * W does not fit in what is left of S is treated as empty,
// so shapes that disagree with `value` never read out of bounds.
#include "msda_kernel.h"

#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdint.h>
#include <string.h>

namespace
{

constexpr int kThreadsPerBlock = 256;
constexpr int kVectorBytes = 16;
constexpr unsigned kFullWarp = 0xffffffffu;

// Accumulation type: float for float and half, double for double.
template <typename T>
struct AccOf
{
    using type = float;
};
template <>
struct AccOf<double>
{
    using type = double;
};

// Channels per thread: one 16-byte vector.
template <typename T>
constexpr int kChunk = kVectorBytes / static_cast<int>(sizeof(T));

__device__ __forceinline__ float toAcc(float x)
{
    return x;
}
__device__ __forceinline__ float toAcc(__half x)
{
    return __half2float(x);
}
__device__ __forceinline__ double toAcc(double x)
{
    return x;
}

template <typename T>
__device__ __forceinline__ T fromAcc(typename AccOf<T>::type x);
template <>
__device__ __forceinline__ float fromAcc<float>(float x)
{
    return x;
}
template <>
__device__ __forceinline__ __half fromAcc<__half>(float x)
{
    return __float2half_rn(x);
}
template <>
__device__ __forceinline__ double fromAcc<double>(double x)
{
    return x;
}

// Reads channels [0, valid) of a chunk (kVec: all C channels with one aligned 16-byte load); the rest read as 0.
template <typename T, int C, bool kVec>
__device__ __forceinline__ void loadChunk(T const* __restrict__ p, int valid, typename AccOf<T>::type (&out)[C])
{
    if constexpr (kVec)
    {
        static_assert(C * sizeof(T) == sizeof(uint4), "a vector chunk is 16 bytes");
        uint4 const bits = __ldg(reinterpret_cast<uint4 const*>(p));
        T x[C];
        memcpy(x, &bits, sizeof(bits));
#pragma unroll
        for (int c = 0; c < C; ++c)
        {
            out[c] = toAcc(x[c]);
        }
    }
    else
    {
#pragma unroll
        for (int c = 0; c < C; ++c)
        {
            out[c] = c < valid ? toAcc(p[c]) : typename AccOf<T>::type(0);
        }
    }
}

// Writes channels [0, valid) of a chunk (kVec: one aligned 16-byte store).
template <typename T, int C, bool kVec>
__device__ __forceinline__ void storeChunk(T* __restrict__ p, int valid, typename AccOf<T>::type const (&in)[C])
{
    if constexpr (kVec)
    {
        T x[C];
#pragma unroll
        for (int c = 0; c < C; ++c)
        {
            x[c] = fromAcc<T>(in[c]);
        }
        uint4 bits;
        memcpy(&bits, x, sizeof(bits));
        *reinterpret_cast<uint4*>(p) = bits;
    }
    else
    {
#pragma unroll
        for (int c = 0; c < C; ++c)
        {
            if (c < valid)
            {
                p[c] = fromAcc<T>(in[c]);
            }
        }
    }
}

struct LevelTable
{
    int h[M2F_MSDA_MAX_LEVELS];
    int w[M2F_MSDA_MAX_LEVELS];
    int start[M2F_MSDA_MAX_LEVELS];
};

// Fills the block's level table (thread 0) and synchronises the block; every thread of the block must call it.
__device__ __forceinline__ void loadLevelTable(
    void const* __restrict__ shapes, M2fMsdaIndexType type, int L, int S, LevelTable& table)
{
    if (threadIdx.x == 0)
    {
        int64_t start = 0;
        for (int l = 0; l < L; ++l)
        {
            int64_t h;
            int64_t w;
            if (type == M2F_MSDA_INDEX_INT64)
            {
                h = static_cast<int64_t const*>(shapes)[2 * l];
                w = static_cast<int64_t const*>(shapes)[2 * l + 1];
            }
            else
            {
                h = static_cast<int32_t const*>(shapes)[2 * l];
                w = static_cast<int32_t const*>(shapes)[2 * l + 1];
            }
            bool const fits = h > 0 && w > 0 && h <= S && w <= S && h * w <= S - start;
            table.h[l] = fits ? static_cast<int>(h) : 0;
            table.w[l] = fits ? static_cast<int>(w) : 0;
            table.start[l] = static_cast<int>(start);
            if (fits)
            {
                start += h * w;
            }
        }
    }
    __syncthreads();
}

// grid_sample (align_corners=False) un-normalisation written as the reference computes it: the location is first
// mapped to [-1, 1] (2 * loc - 1), then to the pixel coordinate ((g + 1) * size - 1) / 2 == loc * size - 0.5.
template <typename A>
__device__ __forceinline__ A pixelCoordinate(A loc, int size)
{
    A const g = A(2) * loc - A(1);
    return ((g + A(1)) * static_cast<A>(size) - A(1)) * A(0.5);
}

template <typename T, int C, bool kVec>
__global__ void __launch_bounds__(kThreadsPerBlock) msdaForwardKernel(T const* __restrict__ value,
    void const* __restrict__ spatialShapes, M2fMsdaIndexType shapesType, T const* __restrict__ locations,
    T const* __restrict__ weights, T* __restrict__ output, int N, int S, int M, int D, int Lq, int L, int P)
{
    using A = typename AccOf<T>::type;
    __shared__ LevelTable levels;
    loadLevelTable(spatialShapes, shapesType, L, S, levels);

    int const chunks = (D + C - 1) / C;
    int64_t const idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (idx >= static_cast<int64_t>(N) * Lq * M * chunks)
    {
        return;
    }
    int const chunk = static_cast<int>(idx % chunks);
    int const head = static_cast<int>(idx / chunks); // (n * Lq + q) * M + m
    int const m = head % M;
    int const n = head / (M * Lq);
    int const d0 = chunk * C;
    int const valid = D - d0;
    int const row = M * D; // elements between two consecutive positions of value

    A acc[C];
#pragma unroll
    for (int c = 0; c < C; ++c)
    {
        acc[c] = A(0);
    }

    T const* const valueHead = value + (n * S * M + m) * D + d0;
    int const pointBase = head * L * P;
    for (int l = 0; l < L; ++l)
    {
        int const H = levels.h[l];
        int const W = levels.w[l];
        T const* const valueLevel = valueHead + levels.start[l] * row;
        for (int p = 0; p < P; ++p)
        {
            int const i = pointBase + l * P + p;
            A const x = pixelCoordinate(toAcc(locations[2 * i]), W);
            A const y = pixelCoordinate(toAcc(locations[2 * i + 1]), H);
            // Zero padding: a point contributes only when one of its four neighbours is inside (NaN fails too).
            if (!(x > A(-1) && y > A(-1) && x < static_cast<A>(W) && y < static_cast<A>(H)))
            {
                continue;
            }
            A const a = toAcc(weights[i]);
            A const xFloor = floor(x);
            A const yFloor = floor(y);
            int const x0 = static_cast<int>(xFloor);
            int const y0 = static_cast<int>(yFloor);
            A const lx = x - xFloor;
            A const ly = y - yFloor;
            A const hx = A(1) - lx;
            A const hy = A(1) - ly;
            int const ys[2] = {y0, y0 + 1};
            int const xs[2] = {x0, x0 + 1};
            A const wy[2] = {hy, ly};
            A const wx[2] = {hx, lx};
#pragma unroll
            for (int cy = 0; cy < 2; ++cy)
            {
#pragma unroll
                for (int cx = 0; cx < 2; ++cx)
                {
                    if (ys[cy] < 0 || ys[cy] >= H || xs[cx] < 0 || xs[cx] >= W)
                    {
                        continue;
                    }
                    A v[C];
                    loadChunk<T, C, kVec>(valueLevel + (ys[cy] * W + xs[cx]) * row, valid, v);
                    A const weight = a * wy[cy] * wx[cx];
#pragma unroll
                    for (int c = 0; c < C; ++c)
                    {
                        acc[c] += weight * v[c];
                    }
                }
            }
        }
    }
    storeChunk<T, C, kVec>(output + head * D + d0, valid, acc);
}

template <typename T, int C, bool kVec>
__global__ void __launch_bounds__(kThreadsPerBlock) msdaBackwardKernel(T const* __restrict__ value,
    void const* __restrict__ spatialShapes, M2fMsdaIndexType shapesType, T const* __restrict__ locations,
    T const* __restrict__ weights, T const* __restrict__ gradOutput, T* __restrict__ gradValue,
    T* __restrict__ gradLocations, T* __restrict__ gradWeights, int N, int S, int M, int D, int Lq, int L, int P,
    int group)
{
    using A = typename AccOf<T>::type;
    __shared__ LevelTable levels;
    loadLevelTable(spatialShapes, shapesType, L, S, levels);

    // No early return: every lane of a warp must reach the shuffles below.
    int const chunks = (D + C - 1) / C;
    int64_t const idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    bool const active = idx < static_cast<int64_t>(N) * Lq * M * chunks;
    int const chunk = active ? static_cast<int>(idx % chunks) : 0;
    int const head = active ? static_cast<int>(idx / chunks) : 0;
    int const m = head % M;
    int const n = head / (M * Lq);
    int const d0 = chunk * C;
    int const valid = D - d0;
    int const row = M * D;

    A go[C];
    if (active)
    {
        loadChunk<T, C, kVec>(gradOutput + head * D + d0, valid, go);
    }
    else
    {
#pragma unroll
        for (int c = 0; c < C; ++c)
        {
            go[c] = A(0);
        }
    }

    int const headOffset = (n * S * M + m) * D + d0;
    int const pointBase = head * L * P;
    for (int l = 0; l < L; ++l)
    {
        int const H = levels.h[l];
        int const W = levels.w[l];
        int const levelOffset = headOffset + levels.start[l] * row;
        for (int p = 0; p < P; ++p)
        {
            int const i = pointBase + l * P + p;
            A gradA = A(0);
            A gradX = A(0);
            A gradY = A(0);
            if (active)
            {
                A const x = pixelCoordinate(toAcc(locations[2 * i]), W);
                A const y = pixelCoordinate(toAcc(locations[2 * i + 1]), H);
                if (x > A(-1) && y > A(-1) && x < static_cast<A>(W) && y < static_cast<A>(H))
                {
                    A const a = toAcc(weights[i]);
                    A const xFloor = floor(x);
                    A const yFloor = floor(y);
                    int const x0 = static_cast<int>(xFloor);
                    int const y0 = static_cast<int>(yFloor);
                    A const lx = x - xFloor;
                    A const ly = y - yFloor;
                    A const hx = A(1) - lx;
                    A const hy = A(1) - ly;
                    int const ys[2] = {y0, y0 + 1};
                    int const xs[2] = {x0, x0 + 1};
                    A const wy[2] = {hy, ly};
                    A const wx[2] = {hx, lx};
                    // d(corner weight)/dx and /dy: the y (x) weight times -1 for the low, +1 for the high corner.
                    A const sign[2] = {A(-1), A(1)};
#pragma unroll
                    for (int cy = 0; cy < 2; ++cy)
                    {
#pragma unroll
                        for (int cx = 0; cx < 2; ++cx)
                        {
                            if (ys[cy] < 0 || ys[cy] >= H || xs[cx] < 0 || xs[cx] >= W)
                            {
                                continue;
                            }
                            int const offset = levelOffset + (ys[cy] * W + xs[cx]) * row;
                            A v[C];
                            loadChunk<T, C, kVec>(value + offset, valid, v);
                            A dot = A(0);
#pragma unroll
                            for (int c = 0; c < C; ++c)
                            {
                                dot += go[c] * v[c];
                            }
                            A const weight = wy[cy] * wx[cx];
                            gradA += weight * dot;
                            gradX += sign[cx] * wy[cy] * dot;
                            gradY += sign[cy] * wx[cx] * dot;
                            A const scale = a * weight;
#pragma unroll
                            for (int c = 0; c < C; ++c)
                            {
                                if (c < valid)
                                {
                                    atomicAdd(gradValue + offset + c, scale * go[c]);
                                }
                            }
                        }
                    }
                    // d(pixel x)/d(location x) = W, d(pixel y)/d(location y) = H.
                    gradX *= a * static_cast<A>(W);
                    gradY *= a * static_cast<A>(H);
                }
            }
            for (int offset = group / 2; offset > 0; offset /= 2)
            {
                gradA += __shfl_xor_sync(kFullWarp, gradA, offset);
                gradX += __shfl_xor_sync(kFullWarp, gradX, offset);
                gradY += __shfl_xor_sync(kFullWarp, gradY, offset);
            }
            if (active && chunk % group == 0)
            {
                atomicAdd(gradWeights + i, gradA);
                atomicAdd(gradLocations + 2 * i, gradX);
                atomicAdd(gradLocations + 2 * i + 1, gradY);
            }
        }
    }
}

bool aligned16(void const* p)
{
    return reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0;
}

int blocksFor(int64_t threads)
{
    return static_cast<int>((threads + kThreadsPerBlock - 1) / kThreadsPerBlock);
}

template <typename T>
cudaError_t launchForward(T const* value, void const* spatialShapes, M2fMsdaIndexType shapesType,
    T const* locations, T const* weights, T* output, int N, int S, int M, int D, int Lq, int L, int P,
    cudaStream_t stream)
{
    cudaError_t const sizes = m2f_msda_check_sizes(N, S, M, D, Lq, L, P);
    if (sizes != cudaSuccess)
    {
        return sizes;
    }
    constexpr int C = kChunk<T>;
    int64_t const threads = static_cast<int64_t>(N) * Lq * M * ((D + C - 1) / C);
    if (threads == 0)
    {
        return cudaSuccess;
    }
    if (D % C == 0 && aligned16(value) && aligned16(output))
    {
        msdaForwardKernel<T, C, true><<<blocksFor(threads), kThreadsPerBlock, 0, stream>>>(
            value, spatialShapes, shapesType, locations, weights, output, N, S, M, D, Lq, L, P);
    }
    else
    {
        msdaForwardKernel<T, C, false><<<blocksFor(threads), kThreadsPerBlock, 0, stream>>>(
            value, spatialShapes, shapesType, locations, weights, output, N, S, M, D, Lq, L, P);
    }
    return cudaGetLastError();
}

template <typename T>
cudaError_t launchBackward(T const* value, void const* spatialShapes, M2fMsdaIndexType shapesType,
    T const* locations, T const* weights, T const* gradOutput, T* gradValue, T* gradLocations, T* gradWeights, int N,
    int S, int M, int D, int Lq, int L, int P, cudaStream_t stream)
{
    cudaError_t err = m2f_msda_check_sizes(N, S, M, D, Lq, L, P);
    if (err != cudaSuccess)
    {
        return err;
    }
    int64_t const points = static_cast<int64_t>(N) * Lq * M * L * P;
    size_t const valueBytes = static_cast<size_t>(N) * S * M * D * sizeof(T);
    if ((valueBytes > 0 && (err = cudaMemsetAsync(gradValue, 0, valueBytes, stream)) != cudaSuccess)
        || (points > 0 && (err = cudaMemsetAsync(gradLocations, 0, 2 * points * sizeof(T), stream)) != cudaSuccess)
        || (points > 0 && (err = cudaMemsetAsync(gradWeights, 0, points * sizeof(T), stream)) != cudaSuccess))
    {
        return err;
    }
    constexpr int C = kChunk<T>;
    int const chunks = (D + C - 1) / C;
    int64_t const threads = static_cast<int64_t>(N) * Lq * M * chunks;
    if (threads == 0)
    {
        return cudaSuccess;
    }
    int group = chunks & -chunks; // largest power of two dividing chunks
    group = group < 32 ? group : 32;
    if (D % C == 0 && aligned16(value) && aligned16(gradOutput))
    {
        msdaBackwardKernel<T, C, true><<<blocksFor(threads), kThreadsPerBlock, 0, stream>>>(value, spatialShapes,
            shapesType, locations, weights, gradOutput, gradValue, gradLocations, gradWeights, N, S, M, D, Lq, L, P,
            group);
    }
    else
    {
        msdaBackwardKernel<T, C, false><<<blocksFor(threads), kThreadsPerBlock, 0, stream>>>(value, spatialShapes,
            shapesType, locations, weights, gradOutput, gradValue, gradLocations, gradWeights, N, S, M, D, Lq, L, P,
            group);
    }
    return cudaGetLastError();
}

} // namespace

extern "C" cudaError_t m2f_msda_check_sizes(
    int64_t N, int64_t S, int64_t M, int64_t D, int64_t Lq, int64_t L, int64_t P)
{
    constexpr int64_t kLimit = int64_t(1) << 31; // int32 indexing inside the kernels
    if (N < 0 || S < 0 || M < 0 || D < 0 || Lq < 0 || L < 0 || P < 0 || L > M2F_MSDA_MAX_LEVELS)
    {
        return cudaErrorInvalidValue;
    }
    // Each size fits the launchers' int32 arguments.
    if (N >= kLimit || S >= kLimit || M >= kLimit || D >= kLimit || Lq >= kLimit || P >= kLimit)
    {
        return cudaErrorInvalidValue;
    }
    // Element counts in double: no overflow, and rounding cannot carry a count across 2^31 (it is monotonic).
    double const valueElements = static_cast<double>(N) * S * M * D;
    double const locationElements = static_cast<double>(N) * Lq * M * L * P * 2;
    double const outputElements = static_cast<double>(N) * Lq * M * D;
    double const limit = static_cast<double>(kLimit);
    if (valueElements >= limit || locationElements >= limit || outputElements >= limit)
    {
        return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

extern "C" cudaError_t m2f_msda_forward_f32(float const* value, void const* spatial_shapes,
    M2fMsdaIndexType shapes_type, float const* sampling_locations, float const* attention_weights, float* output,
    int32_t N, int32_t S, int32_t M, int32_t D, int32_t Lq, int32_t L, int32_t P, cudaStream_t stream)
{
    return launchForward<float>(value, spatial_shapes, shapes_type, sampling_locations, attention_weights, output, N,
        S, M, D, Lq, L, P, stream);
}

extern "C" cudaError_t m2f_msda_forward_f16(__half const* value, void const* spatial_shapes,
    M2fMsdaIndexType shapes_type, __half const* sampling_locations, __half const* attention_weights, __half* output,
    int32_t N, int32_t S, int32_t M, int32_t D, int32_t Lq, int32_t L, int32_t P, cudaStream_t stream)
{
    return launchForward<__half>(value, spatial_shapes, shapes_type, sampling_locations, attention_weights, output,
        N, S, M, D, Lq, L, P, stream);
}

extern "C" cudaError_t m2f_msda_forward_f64(double const* value, void const* spatial_shapes,
    M2fMsdaIndexType shapes_type, double const* sampling_locations, double const* attention_weights, double* output,
    int32_t N, int32_t S, int32_t M, int32_t D, int32_t Lq, int32_t L, int32_t P, cudaStream_t stream)
{
    return launchForward<double>(value, spatial_shapes, shapes_type, sampling_locations, attention_weights, output,
        N, S, M, D, Lq, L, P, stream);
}

extern "C" cudaError_t m2f_msda_backward_f32(float const* value, void const* spatial_shapes,
    M2fMsdaIndexType shapes_type, float const* sampling_locations, float const* attention_weights,
    float const* grad_output, float* grad_value, float* grad_sampling_locations, float* grad_attention_weights,
    int32_t N, int32_t S, int32_t M, int32_t D, int32_t Lq, int32_t L, int32_t P, cudaStream_t stream)
{
    return launchBackward<float>(value, spatial_shapes, shapes_type, sampling_locations, attention_weights,
        grad_output, grad_value, grad_sampling_locations, grad_attention_weights, N, S, M, D, Lq, L, P, stream);
}

extern "C" cudaError_t m2f_msda_backward_f64(double const* value, void const* spatial_shapes,
    M2fMsdaIndexType shapes_type, double const* sampling_locations, double const* attention_weights,
    double const* grad_output, double* grad_value, double* grad_sampling_locations, double* grad_attention_weights,
    int32_t N, int32_t S, int32_t M, int32_t D, int32_t Lq, int32_t L, int32_t P, cudaStream_t stream)
{
    return launchBackward<double>(value, spatial_shapes, shapes_type, sampling_locations, attention_weights,
        grad_output, grad_value, grad_sampling_locations, grad_attention_weights, N, S, M, D, Lq, L, P, stream);
}

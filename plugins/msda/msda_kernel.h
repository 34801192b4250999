// Multi-scale deformable attention (MSDA): CUDA launchers shared by the torch extension and the TensorRT plugin.
//
// Interface (the same as plugins/msda/reference.py and TensorRT's MultiscaleDeformableAttnPlugin_TRT):
//   value               [N, S, M, D]          S = sum over levels of H_l * W_l
//   spatial_shapes      [L, 2]  int32|int64   (H_l, W_l) per level
//   level_start_index   [L]                   not read: offsets are the prefix sums of H_l * W_l, as in the reference
//   sampling_locations  [N, Lq, M, L, P, 2]   normalised (x, y); 0 and 1 are the outer pixel edges
//   attention_weights   [N, Lq, M, L, P]
//   output              [N, Lq, M * D]
//
// Sampling is bilinear with zero padding (grid_sample, align_corners=False): x -> pixel x * W - 0.5.
// All pointers are device pointers to contiguous (row-major) tensors; every launcher is asynchronous on `stream`.
// A launcher returns cudaErrorInvalidValue without launching when the sizes are out of range (see
// m2f_msda_check_sizes), otherwise the launch status (cudaGetLastError()).
#ifndef M2F_MSDA_KERNEL_H
#define M2F_MSDA_KERNEL_H

#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <stdint.h>

// Most levels one call may have (the level table lives in shared memory). Mask2Former uses 3, Deformable DETR 4.
#define M2F_MSDA_MAX_LEVELS 16

#ifdef __cplusplus
extern "C" {
#endif

// Element type of spatial_shapes.
typedef enum M2fMsdaIndexType
{
    M2F_MSDA_INDEX_INT32 = 0,
    M2F_MSDA_INDEX_INT64 = 1,
} M2fMsdaIndexType;

// cudaSuccess when the sizes fit the kernels: all sizes >= 0 (an empty tensor launches nothing),
// L <= M2F_MSDA_MAX_LEVELS, and every tensor (value, sampling_locations, output) has fewer than 2^31 elements (int32
// indexing); else cudaErrorInvalidValue.
cudaError_t m2f_msda_check_sizes(int64_t N, int64_t S, int64_t M, int64_t D, int64_t Lq, int64_t L, int64_t P);

// Forward: output = sum over (level, point) of attention_weight * bilinear(value, location).
// Half precision reads and writes __half and accumulates in float; float64 exists for gradcheck.
cudaError_t m2f_msda_forward_f32(float const* value, void const* spatial_shapes, M2fMsdaIndexType shapes_type,
    float const* sampling_locations, float const* attention_weights, float* output, int32_t N, int32_t S, int32_t M,
    int32_t D, int32_t Lq, int32_t L, int32_t P, cudaStream_t stream);

cudaError_t m2f_msda_forward_f16(__half const* value, void const* spatial_shapes, M2fMsdaIndexType shapes_type,
    __half const* sampling_locations, __half const* attention_weights, __half* output, int32_t N, int32_t S,
    int32_t M, int32_t D, int32_t Lq, int32_t L, int32_t P, cudaStream_t stream);

cudaError_t m2f_msda_forward_f64(double const* value, void const* spatial_shapes, M2fMsdaIndexType shapes_type,
    double const* sampling_locations, double const* attention_weights, double* output, int32_t N, int32_t S,
    int32_t M, int32_t D, int32_t Lq, int32_t L, int32_t P, cudaStream_t stream);

// Backward: gradients of the forward for value [N,S,M,D], sampling_locations [N,Lq,M,L,P,2] and attention_weights
// [N,Lq,M,L,P] given grad_output [N,Lq,M*D]. The launcher zeroes the three gradient buffers on `stream` first
// (they are accumulated with atomicAdd), so they need no initialisation.
cudaError_t m2f_msda_backward_f32(float const* value, void const* spatial_shapes, M2fMsdaIndexType shapes_type,
    float const* sampling_locations, float const* attention_weights, float const* grad_output, float* grad_value,
    float* grad_sampling_locations, float* grad_attention_weights, int32_t N, int32_t S, int32_t M, int32_t D,
    int32_t Lq, int32_t L, int32_t P, cudaStream_t stream);

cudaError_t m2f_msda_backward_f64(double const* value, void const* spatial_shapes, M2fMsdaIndexType shapes_type,
    double const* sampling_locations, double const* attention_weights, double const* grad_output, double* grad_value,
    double* grad_sampling_locations, double* grad_attention_weights, int32_t N, int32_t S, int32_t M, int32_t D,
    int32_t Lq, int32_t L, int32_t P, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif // M2F_MSDA_KERNEL_H

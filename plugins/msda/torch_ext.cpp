// Torch bindings of the MSDA CUDA launchers (msda_kernel.h): forward for float32/float16/float64, backward for
// float32/float64. Built on first use by plugins/msda/extension.py; shapes and meaning as plugins/msda/reference.py.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/extension.h>

#include <vector>

#include "msda_kernel.h"

namespace
{

struct Sizes
{
    int32_t N, S, M, D, Lq, L, P;
};

M2fMsdaIndexType indexType(torch::Tensor const& spatialShapes)
{
    return spatialShapes.scalar_type() == torch::kInt64 ? M2F_MSDA_INDEX_INT64 : M2F_MSDA_INDEX_INT32;
}

// Checks devices, dtypes and shapes of the forward inputs (all contiguous) and returns the sizes.
Sizes checkInputs(torch::Tensor const& value, torch::Tensor const& spatialShapes, torch::Tensor const& locations,
    torch::Tensor const& weights)
{
    TORCH_CHECK(value.is_cuda(), "msda: value must be a CUDA tensor");
    for (auto const* t : {&spatialShapes, &locations, &weights})
    {
        TORCH_CHECK(t->device() == value.device(), "msda: all tensors must be on ", value.device(), ", got ",
            t->device());
        TORCH_CHECK(t->is_contiguous(), "msda: inputs must be contiguous");
    }
    TORCH_CHECK(value.is_contiguous(), "msda: inputs must be contiguous");
    TORCH_CHECK(value.dim() == 4, "msda: value must be (N, S, M, D), got ", value.sizes());
    TORCH_CHECK(locations.dim() == 6 && locations.size(5) == 2,
        "msda: sampling_locations must be (N, Lq, M, L, P, 2), got ", locations.sizes());
    TORCH_CHECK(weights.dim() == 5, "msda: attention_weights must be (N, Lq, M, L, P), got ", weights.sizes());
    TORCH_CHECK(spatialShapes.dim() == 2 && spatialShapes.size(1) == 2, "msda: spatial_shapes must be (L, 2), got ",
        spatialShapes.sizes());
    TORCH_CHECK(spatialShapes.scalar_type() == torch::kInt64 || spatialShapes.scalar_type() == torch::kInt32,
        "msda: spatial_shapes must be int64 or int32, got ", spatialShapes.scalar_type());
    TORCH_CHECK(locations.scalar_type() == value.scalar_type() && weights.scalar_type() == value.scalar_type(),
        "msda: value, sampling_locations and attention_weights must share a dtype, got ", value.scalar_type(), ", ",
        locations.scalar_type(), ", ", weights.scalar_type());

    int64_t const N = value.size(0), S = value.size(1), M = value.size(2), D = value.size(3);
    int64_t const Lq = locations.size(1), L = locations.size(3), P = locations.size(4);
    TORCH_CHECK(locations.size(0) == N && locations.size(2) == M, "msda: sampling_locations ", locations.sizes(),
        " does not match value ", value.sizes());
    TORCH_CHECK(weights.size(0) == N && weights.size(1) == Lq && weights.size(2) == M && weights.size(3) == L
            && weights.size(4) == P,
        "msda: attention_weights ", weights.sizes(), " does not match sampling_locations ", locations.sizes());
    TORCH_CHECK(spatialShapes.size(0) == L, "msda: ", spatialShapes.size(0), " spatial shapes for ", L, " levels");
    TORCH_CHECK(m2f_msda_check_sizes(N, S, M, D, Lq, L, P) == cudaSuccess,
        "msda: sizes out of the kernel's range (at most ", M2F_MSDA_MAX_LEVELS,
        " levels, fewer than 2^31 elements per tensor): value ", value.sizes(), ", sampling_locations ",
        locations.sizes());
    return Sizes{static_cast<int32_t>(N), static_cast<int32_t>(S), static_cast<int32_t>(M), static_cast<int32_t>(D),
        static_cast<int32_t>(Lq), static_cast<int32_t>(L), static_cast<int32_t>(P)};
}

void checkLaunch(cudaError_t err, char const* what)
{
    TORCH_CHECK(err == cudaSuccess, "msda: ", what, " failed: ", cudaGetErrorString(err));
}

torch::Tensor forward(
    torch::Tensor value, torch::Tensor spatialShapes, torch::Tensor locations, torch::Tensor weights)
{
    value = value.contiguous();
    spatialShapes = spatialShapes.contiguous();
    locations = locations.contiguous();
    weights = weights.contiguous();
    Sizes const s = checkInputs(value, spatialShapes, locations, weights);
    c10::cuda::CUDAGuard const guard(value.device());
    cudaStream_t const stream = c10::cuda::getCurrentCUDAStream().stream();
    auto output = torch::empty({s.N, s.Lq, static_cast<int64_t>(s.M) * s.D}, value.options());
    void const* shapes = spatialShapes.data_ptr();
    M2fMsdaIndexType const type = indexType(spatialShapes);

    switch (value.scalar_type())
    {
    case torch::kFloat32:
        checkLaunch(m2f_msda_forward_f32(value.data_ptr<float>(), shapes, type, locations.data_ptr<float>(),
                        weights.data_ptr<float>(), output.data_ptr<float>(), s.N, s.S, s.M, s.D, s.Lq, s.L, s.P,
                        stream),
            "forward (float32)");
        break;
    case torch::kFloat16:
        checkLaunch(m2f_msda_forward_f16(reinterpret_cast<__half const*>(value.data_ptr<at::Half>()), shapes, type,
                        reinterpret_cast<__half const*>(locations.data_ptr<at::Half>()),
                        reinterpret_cast<__half const*>(weights.data_ptr<at::Half>()),
                        reinterpret_cast<__half*>(output.data_ptr<at::Half>()), s.N, s.S, s.M, s.D, s.Lq, s.L, s.P,
                        stream),
            "forward (float16)");
        break;
    case torch::kFloat64:
        checkLaunch(m2f_msda_forward_f64(value.data_ptr<double>(), shapes, type, locations.data_ptr<double>(),
                        weights.data_ptr<double>(), output.data_ptr<double>(), s.N, s.S, s.M, s.D, s.Lq, s.L, s.P,
                        stream),
            "forward (float64)");
        break;
    default: TORCH_CHECK(false, "msda: forward supports float32, float16 and float64, got ", value.scalar_type());
    }
    return output;
}

std::vector<torch::Tensor> backward(torch::Tensor value, torch::Tensor spatialShapes, torch::Tensor locations,
    torch::Tensor weights, torch::Tensor gradOutput)
{
    value = value.contiguous();
    spatialShapes = spatialShapes.contiguous();
    locations = locations.contiguous();
    weights = weights.contiguous();
    gradOutput = gradOutput.contiguous();
    Sizes const s = checkInputs(value, spatialShapes, locations, weights);
    TORCH_CHECK(gradOutput.device() == value.device() && gradOutput.scalar_type() == value.scalar_type(),
        "msda: grad_output must match value's device and dtype");
    TORCH_CHECK(gradOutput.dim() == 3 && gradOutput.size(0) == s.N && gradOutput.size(1) == s.Lq
            && gradOutput.size(2) == static_cast<int64_t>(s.M) * s.D,
        "msda: grad_output must be (N, Lq, M * D), got ", gradOutput.sizes());
    c10::cuda::CUDAGuard const guard(value.device());
    cudaStream_t const stream = c10::cuda::getCurrentCUDAStream().stream();
    // No initialisation needed: the launcher zeroes the gradients on the stream.
    auto gradValue = torch::empty_like(value);
    auto gradLocations = torch::empty_like(locations);
    auto gradWeights = torch::empty_like(weights);
    void const* shapes = spatialShapes.data_ptr();
    M2fMsdaIndexType const type = indexType(spatialShapes);

    switch (value.scalar_type())
    {
    case torch::kFloat32:
        checkLaunch(m2f_msda_backward_f32(value.data_ptr<float>(), shapes, type, locations.data_ptr<float>(),
                        weights.data_ptr<float>(), gradOutput.data_ptr<float>(), gradValue.data_ptr<float>(),
                        gradLocations.data_ptr<float>(), gradWeights.data_ptr<float>(), s.N, s.S, s.M, s.D, s.Lq,
                        s.L, s.P, stream),
            "backward (float32)");
        break;
    case torch::kFloat64:
        checkLaunch(m2f_msda_backward_f64(value.data_ptr<double>(), shapes, type, locations.data_ptr<double>(),
                        weights.data_ptr<double>(), gradOutput.data_ptr<double>(), gradValue.data_ptr<double>(),
                        gradLocations.data_ptr<double>(), gradWeights.data_ptr<double>(), s.N, s.S, s.M, s.D, s.Lq,
                        s.L, s.P, stream),
            "backward (float64)");
        break;
    default:
        TORCH_CHECK(false, "msda: backward supports float32 and float64 (cast float16 first), got ",
            value.scalar_type());
    }
    return {gradValue, gradLocations, gradWeights};
}

} // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m)
{
    m.doc() = "Multi-scale deformable attention CUDA kernels (plugins/msda/msda_kernel.cu)";
    m.def("forward", &forward, "MSDA forward: (value, spatial_shapes, sampling_locations, attention_weights) -> out",
        pybind11::arg("value"), pybind11::arg("spatial_shapes"), pybind11::arg("sampling_locations"),
        pybind11::arg("attention_weights"));
    m.def("backward", &backward,
        "MSDA backward: (..., grad_output) -> (grad_value, grad_sampling_locations, grad_attention_weights)",
        pybind11::arg("value"), pybind11::arg("spatial_shapes"), pybind11::arg("sampling_locations"),
        pybind11::arg("attention_weights"), pybind11::arg("grad_output"));
    m.attr("max_levels") = M2F_MSDA_MAX_LEVELS;
}

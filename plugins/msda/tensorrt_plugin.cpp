// TensorRT IPluginV3 plugin "M2F_MultiscaleDeformableAttn" (version "1"): multi-scale deformable attention on the
// CUDA kernel of msda_kernel.cu. Its inputs are those of TensorRT's built-in MultiscaleDeformableAttnPlugin_TRT:
//   0 value               [N, S, M, D]          float32 | float16
//   1 spatial_shapes      [L, 2]                int32   (H, W) per level
//   2 level_start_index   [L]                   int32   (shape checked, values not read: prefix sums of H * W)
//   3 sampling_locations  [N, Lq, M, L, P, 2]   same type as value
//   4 attention_weights   [N, Lq, M, L, P]      same type as value
// and its output is [N, Lq, M * D] in value's type (the built-in's output is [N, Lq, M, D], the same memory).
// No attributes. Linear format only. See README.md for building, loading and the ONNX node.
//
// Registration: by default a static registrar adds the creator to TensorRT's global plugin registry when the
// library is loaded (ctypes.CDLL(..., RTLD_GLOBAL), trtexec --staticPlugins, dlopen). Built with
// -DM2F_MSDA_LOADLIBRARY_ENTRY_POINTS it instead exports setLoggerFinder/getCreators for
// IPluginRegistry::loadLibrary (trtexec --dynamicPlugins, serialising the library into version-compatible plans).
#include "msda_kernel.h"

#include <NvInferRuntime.h>
#include <cuda_runtime_api.h>

#include <exception>
#include <iostream>
#include <string>
#include <utility>

// The identity comes from plugin.json through CMake; these defaults (the same values) serve builds without CMake.
#ifndef M2F_MSDA_PLUGIN_NAME
#define M2F_MSDA_PLUGIN_NAME "M2F_MultiscaleDeformableAttn"
#endif
#ifndef M2F_MSDA_PLUGIN_VERSION
#define M2F_MSDA_PLUGIN_VERSION "1"
#endif
#ifndef M2F_MSDA_PLUGIN_NAMESPACE
#define M2F_MSDA_PLUGIN_NAMESPACE ""
#endif

namespace m2f
{
namespace
{

using nvinfer1::DataType;
using nvinfer1::Dims;
using nvinfer1::DimsExprs;
using nvinfer1::DynamicPluginTensorDesc;
using nvinfer1::PluginFieldCollection;
using nvinfer1::PluginTensorDesc;

constexpr char const* kPluginName = M2F_MSDA_PLUGIN_NAME;
constexpr char const* kPluginVersion = M2F_MSDA_PLUGIN_VERSION;
constexpr int32_t kNbInputs = 5;
constexpr int32_t kNbOutputs = 1;
constexpr int32_t kStatusSuccess = 0;
constexpr int32_t kStatusFailure = -1;

enum Input : int32_t
{
    kValue = 0,
    kSpatialShapes = 1,
    kLevelStartIndex = 2,
    kSamplingLocations = 3,
    kAttentionWeights = 4,
};

nvinfer1::ILoggerFinder* gLoggerFinder = nullptr; // set through setLoggerFinder (loadLibrary builds only)

void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        std::string const line = std::string("[") + kPluginName + "] " + message;
        nvinfer1::ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
        if (logger != nullptr)
        {
            logger->log(severity, line.c_str());
        }
        else
        {
            std::cerr << line << std::endl;
        }
    }
    catch (...)
    {
    }
}

void logError(std::string const& message) noexcept
{
    logMessage(nvinfer1::ILogger::Severity::kERROR, message);
}

// A dimension below 0 is not known yet (build time) and matches anything.
bool sameDim(int64_t a, int64_t b)
{
    return a < 0 || b < 0 || a == b;
}

// Ranks and the sizes the five inputs share (N, M, L, Lq, P); on failure `why` says what is wrong.
bool checkInputDims(Dims const (&d)[kNbInputs], std::string& why)
{
    Dims const& value = d[kValue];
    Dims const& shapes = d[kSpatialShapes];
    Dims const& starts = d[kLevelStartIndex];
    Dims const& locations = d[kSamplingLocations];
    Dims const& weights = d[kAttentionWeights];
    if (value.nbDims != 4 || shapes.nbDims != 2 || starts.nbDims != 1 || locations.nbDims != 6 || weights.nbDims != 5)
    {
        why = "expected ranks value 4, spatial_shapes 2, level_start_index 1, sampling_locations 6, "
              "attention_weights 5";
        return false;
    }
    if (!sameDim(shapes.d[1], 2) || !sameDim(locations.d[5], 2))
    {
        why = "spatial_shapes must be [L, 2] and sampling_locations [N, Lq, M, L, P, 2]";
        return false;
    }
    if (!sameDim(value.d[0], locations.d[0]) || !sameDim(value.d[0], weights.d[0]))
    {
        why = "batch sizes of value, sampling_locations and attention_weights differ";
        return false;
    }
    if (!sameDim(value.d[2], locations.d[2]) || !sameDim(value.d[2], weights.d[2]))
    {
        why = "numbers of heads of value, sampling_locations and attention_weights differ";
        return false;
    }
    if (!sameDim(shapes.d[0], starts.d[0]) || !sameDim(shapes.d[0], locations.d[3])
        || !sameDim(shapes.d[0], weights.d[3]))
    {
        why = "numbers of levels of spatial_shapes, level_start_index, sampling_locations and attention_weights differ";
        return false;
    }
    if (locations.d[3] > M2F_MSDA_MAX_LEVELS)
    {
        why = "more than " + std::to_string(M2F_MSDA_MAX_LEVELS) + " levels";
        return false;
    }
    if (!sameDim(locations.d[1], weights.d[1]) || !sameDim(locations.d[4], weights.d[4]))
    {
        why = "query or point counts of sampling_locations and attention_weights differ";
        return false;
    }
    return true;
}

class MsdaPlugin final : public nvinfer1::IPluginV3,
                         public nvinfer1::IPluginV3OneCore,
                         public nvinfer1::IPluginV3OneBuild,
                         public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit MsdaPlugin(std::string pluginNamespace)
        : mNamespace(std::move(pluginNamespace))
    {
    }

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<nvinfer1::IPluginV3OneBuild*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        try
        {
            return new MsdaPlugin(mNamespace);
        }
        catch (std::exception const& e)
        {
            logError(std::string("clone failed: ") + e.what());
        }
        return nullptr;
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override
    {
        return kPluginName;
    }

    char const* getPluginVersion() const noexcept override
    {
        return kPluginVersion;
    }

    char const* getPluginNamespace() const noexcept override
    {
        return mNamespace.c_str();
    }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override
    {
        return kNbOutputs;
    }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
        int32_t nbInputs) const noexcept override
    {
        if (outputTypes == nullptr || inputTypes == nullptr || nbOutputs != kNbOutputs || nbInputs != kNbInputs)
        {
            logError("getOutputDataTypes: expected 5 inputs and 1 output");
            return kStatusFailure;
        }
        outputTypes[0] = inputTypes[kValue];
        return kStatusSuccess;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
        int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override
    {
        if (inputs == nullptr || outputs == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs
            || inputs[kValue].nbDims != 4 || inputs[kSamplingLocations].nbDims != 6)
        {
            logError("getOutputShapes: expected value [N, S, M, D] and sampling_locations [N, Lq, M, L, P, 2]");
            return kStatusFailure;
        }
        outputs[0].nbDims = 3;
        outputs[0].d[0] = inputs[kValue].d[0];             // N
        outputs[0].d[1] = inputs[kSamplingLocations].d[1]; // Lq
        outputs[0].d[2] = exprBuilder.operation(
            nvinfer1::DimensionOperation::kPROD, *inputs[kValue].d[2], *inputs[kValue].d[3]); // M * D
        return outputs[0].d[2] != nullptr ? kStatusSuccess : kStatusFailure;
    }

    bool supportsFormatCombination(
        int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept override
    {
        if (inOut == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs || pos < 0
            || pos >= kNbInputs + kNbOutputs)
        {
            return false;
        }
        PluginTensorDesc const& desc = inOut[pos].desc;
        if (desc.format != nvinfer1::TensorFormat::kLINEAR)
        {
            return false;
        }
        if (pos == kSpatialShapes || pos == kLevelStartIndex)
        {
            return desc.type == DataType::kINT32;
        }
        if (pos == kValue)
        {
            return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
        }
        // sampling_locations, attention_weights and the output follow value (position 0 is already fixed).
        return desc.type == inOut[kValue].desc.type;
    }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override
    {
        if (in == nullptr || out == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs)
        {
            logError("configurePlugin: expected 5 inputs and 1 output");
            return kStatusFailure;
        }
        Dims const dims[kNbInputs] = {in[0].desc.dims, in[1].desc.dims, in[2].desc.dims, in[3].desc.dims,
            in[4].desc.dims};
        std::string why;
        if (!checkInputDims(dims, why))
        {
            logError("configurePlugin: " + why);
            return kStatusFailure;
        }
        return kStatusSuccess;
    }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* /*inputs*/, int32_t /*nbInputs*/,
        DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept override
    {
        return 0;
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override
    {
        if (in == nullptr || out == nullptr || nbInputs != kNbInputs || nbOutputs != kNbOutputs)
        {
            logError("onShapeChange: expected 5 inputs and 1 output");
            return kStatusFailure;
        }
        Dims const dims[kNbInputs] = {in[0].dims, in[1].dims, in[2].dims, in[3].dims, in[4].dims};
        std::string why;
        if (!checkInputDims(dims, why))
        {
            logError("onShapeChange: " + why);
            return kStatusFailure;
        }
        Dims const& v = dims[kValue];
        Dims const& loc = dims[kSamplingLocations];
        if (m2f_msda_check_sizes(v.d[0], v.d[1], v.d[2], v.d[3], loc.d[1], loc.d[3], loc.d[4]) != cudaSuccess)
        {
            logError("onShapeChange: sizes out of the kernel's range (at most " + std::to_string(M2F_MSDA_MAX_LEVELS)
                + " levels, fewer than 2^31 elements per tensor)");
            return kStatusFailure;
        }
        return kStatusSuccess;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
        void const* const* inputs, void* const* outputs, void* /*workspace*/, cudaStream_t stream) noexcept override
    {
        if (inputDesc == nullptr || inputs == nullptr || outputs == nullptr)
        {
            logError("enqueue: null descriptors or buffers");
            return kStatusFailure;
        }
        Dims const& v = inputDesc[kValue].dims;
        Dims const& loc = inputDesc[kSamplingLocations].dims;
        int64_t const N = v.d[0], S = v.d[1], M = v.d[2], D = v.d[3], Lq = loc.d[1], L = loc.d[3], P = loc.d[4];
        if (m2f_msda_check_sizes(N, S, M, D, Lq, L, P) != cudaSuccess)
        {
            logError("enqueue: sizes out of the kernel's range");
            return kStatusFailure;
        }
        auto const n = static_cast<int32_t>(N), s = static_cast<int32_t>(S), m = static_cast<int32_t>(M);
        auto const d = static_cast<int32_t>(D), lq = static_cast<int32_t>(Lq), l = static_cast<int32_t>(L);
        auto const p = static_cast<int32_t>(P);
        void const* shapes = inputs[kSpatialShapes];
        cudaError_t err = cudaSuccess;
        switch (inputDesc[kValue].type)
        {
        case DataType::kFLOAT:
            err = m2f_msda_forward_f32(static_cast<float const*>(inputs[kValue]), shapes, M2F_MSDA_INDEX_INT32,
                static_cast<float const*>(inputs[kSamplingLocations]),
                static_cast<float const*>(inputs[kAttentionWeights]), static_cast<float*>(outputs[0]), n, s, m, d, lq,
                l, p, stream);
            break;
        case DataType::kHALF:
            err = m2f_msda_forward_f16(static_cast<__half const*>(inputs[kValue]), shapes, M2F_MSDA_INDEX_INT32,
                static_cast<__half const*>(inputs[kSamplingLocations]),
                static_cast<__half const*>(inputs[kAttentionWeights]), static_cast<__half*>(outputs[0]), n, s, m, d,
                lq, l, p, stream);
            break;
        default: logError("enqueue: value must be float32 or float16"); return kStatusFailure;
        }
        if (err != cudaSuccess)
        {
            logError(std::string("enqueue: kernel launch failed: ") + cudaGetErrorString(err));
            return kStatusFailure;
        }
        return kStatusSuccess;
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* /*context*/) noexcept override
    {
        return clone(); // no per-context resources
    }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        return &mNoFields; // no attributes: nothing to serialise
    }

private:
    std::string mNamespace;
    PluginFieldCollection mNoFields{0, nullptr};
};

class MsdaPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    char const* getPluginName() const noexcept override
    {
        return kPluginName;
    }

    char const* getPluginVersion() const noexcept override
    {
        return kPluginVersion;
    }

    char const* getPluginNamespace() const noexcept override
    {
        return M2F_MSDA_PLUGIN_NAMESPACE;
    }

    PluginFieldCollection const* getFieldNames() noexcept override
    {
        return &mNoFields;
    }

    nvinfer1::IPluginV3* createPlugin(char const* /*name*/, PluginFieldCollection const* /*fc*/,
        nvinfer1::TensorRTPhase /*phase*/) noexcept override
    {
        // The plugin has no attributes: fields (e.g. ONNX node attributes) are ignored in both phases.
        try
        {
            return new MsdaPlugin(M2F_MSDA_PLUGIN_NAMESPACE);
        }
        catch (std::exception const& e)
        {
            logError(std::string("createPlugin failed: ") + e.what());
        }
        return nullptr;
    }

private:
    PluginFieldCollection mNoFields{0, nullptr};
};

} // namespace
} // namespace m2f

#ifdef M2F_MSDA_LOADLIBRARY_ENTRY_POINTS

extern "C" void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    m2f::gLoggerFinder = finder;
}

extern "C" nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static m2f::MsdaPluginCreator creator;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}

#else

namespace m2f
{
namespace
{

// Registers the creator in TensorRT's global registry when the library is loaded, under the same namespace the
// creator reports (REGISTER_TENSORRT_PLUGIN would always register under "").
struct StaticRegistration
{
    MsdaPluginCreator creator;

    StaticRegistration()
    {
        nvinfer1::IPluginRegistry* registry = getPluginRegistry();
        if (registry == nullptr || !registry->registerCreator(creator, M2F_MSDA_PLUGIN_NAMESPACE))
        {
            logError("could not register the plugin creator (already registered?)");
        }
    }
};

StaticRegistration gRegistration;

} // namespace
} // namespace m2f

#endif

// Host-side checks of the M2F_MultiscaleDeformableAttn TensorRT plugin (plugins/msda/tensorrt_plugin.cpp) through
// TensorRT's own interfaces, without libnvinfer or a GPU: creator identity, capabilities, output types, format
// combinations, shape validation, serialisation, clone. Built with -DM2F_MSDA_LOADLIBRARY_ENTRY_POINTS (so the
// creator comes from getCreators and nothing needs TensorRT's registry) by tests/plugins/test_msda_tensorrt_plugin.py.
#include <NvInferRuntime.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <initializer_list>
#include <memory>

using namespace nvinfer1;

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

#define CHECK(cond)                                                                                                    \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            std::fprintf(stderr, "FAILED line %d: %s\n", __LINE__, #cond);                                             \
            return 1;                                                                                                  \
        }                                                                                                              \
    } while (0)

namespace
{

Dims makeDims(std::initializer_list<int64_t> sizes)
{
    Dims d{};
    d.nbDims = static_cast<int32_t>(sizes.size());
    int32_t i = 0;
    for (int64_t s : sizes)
    {
        d.d[i++] = s;
    }
    return d;
}

struct Io
{
    DynamicPluginTensorDesc tensors[6];
    PluginTensorDesc plain[6];
};

// value [N, S, M, D], spatial_shapes [L, 2], level_start_index [L], locations [N, Lq, M, L, P, 2],
// weights [N, Lq, M, L, P], output [N, Lq, M * D]
Io makeIo(DataType floatType, int64_t N, int64_t S, int64_t M, int64_t D, int64_t Lq, int64_t L, int64_t P)
{
    Dims const dims[6] = {makeDims({N, S, M, D}), makeDims({L, 2}), makeDims({L}), makeDims({N, Lq, M, L, P, 2}),
        makeDims({N, Lq, M, L, P}), makeDims({N, Lq, M * D})};
    Io io{};
    for (int32_t i = 0; i < 6; ++i)
    {
        DataType const type = (i == 1 || i == 2) ? DataType::kINT32 : floatType;
        io.plain[i].dims = dims[i];
        io.plain[i].type = type;
        io.plain[i].format = TensorFormat::kLINEAR;
        io.tensors[i].desc = io.plain[i];
        io.tensors[i].min = dims[i];
        io.tensors[i].max = dims[i];
    }
    return io;
}

} // namespace

int main()
{
    int32_t nbCreators = 0;
    IPluginCreatorInterface* const* creators = getCreators(nbCreators);
    CHECK(nbCreators == 1 && creators != nullptr && creators[0] != nullptr);
    CHECK(std::strcmp(creators[0]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0);
    auto* creator = static_cast<IPluginCreatorV3One*>(creators[0]);
    CHECK(std::strcmp(creator->getPluginName(), "M2F_MultiscaleDeformableAttn") == 0);
    CHECK(std::strcmp(creator->getPluginVersion(), "1") == 0);
    CHECK(std::strcmp(creator->getPluginNamespace(), "") == 0);
    CHECK(creator->getFieldNames() != nullptr && creator->getFieldNames()->nbFields == 0);

    PluginFieldCollection const noFields{0, nullptr};
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("msda", &noFields, TensorRTPhase::kBUILD));
    CHECK(plugin != nullptr);
    auto* core = static_cast<IPluginV3OneCore*>(plugin->getCapabilityInterface(PluginCapabilityType::kCORE));
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    CHECK(core != nullptr && build != nullptr && runtime != nullptr);
    CHECK(std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0);
    CHECK(std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0);
    CHECK(std::strcmp(runtime->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0);
    CHECK(std::strcmp(core->getPluginName(), creator->getPluginName()) == 0);
    CHECK(std::strcmp(core->getPluginVersion(), creator->getPluginVersion()) == 0);
    CHECK(std::strcmp(core->getPluginNamespace(), creator->getPluginNamespace()) == 0);
    CHECK(build->getNbOutputs() == 1);

    // the output type follows value
    for (DataType t : {DataType::kFLOAT, DataType::kHALF})
    {
        DataType const inTypes[5] = {t, DataType::kINT32, DataType::kINT32, t, t};
        DataType outType = DataType::kINT8;
        CHECK(build->getOutputDataTypes(&outType, 1, inTypes, 5) == 0 && outType == t);
    }

    // formats: linear; float32 or float16 for the three float tensors and the output, int32 for the shape tensors
    for (DataType t : {DataType::kFLOAT, DataType::kHALF})
    {
        Io io = makeIo(t, 2, 20, 8, 32, 7, 2, 4);
        for (int32_t pos = 0; pos < 6; ++pos)
        {
            CHECK(build->supportsFormatCombination(pos, io.tensors, 5, 1));
        }
        DataType const other = t == DataType::kFLOAT ? DataType::kHALF : DataType::kFLOAT;
        for (int32_t pos : {3, 4, 5})
        {
            Io mixed = io;
            mixed.tensors[pos].desc.type = other;
            CHECK(!build->supportsFormatCombination(pos, mixed.tensors, 5, 1));
        }
        for (int32_t pos : {1, 2})
        {
            Io wide = io;
            wide.tensors[pos].desc.type = DataType::kINT64;
            CHECK(!build->supportsFormatCombination(pos, wide.tensors, 5, 1));
        }
        Io planar = io;
        planar.tensors[0].desc.format = TensorFormat::kCHW32;
        CHECK(!build->supportsFormatCombination(0, planar.tensors, 5, 1));
    }
    Io ints = makeIo(DataType::kINT8, 2, 20, 8, 32, 7, 2, 4);
    CHECK(!build->supportsFormatCombination(0, ints.tensors, 5, 1));
    Io bf16 = makeIo(DataType::kBF16, 2, 20, 8, 32, 7, 2, 4);
    CHECK(!build->supportsFormatCombination(0, bf16.tensors, 5, 1));
    CHECK(!build->supportsFormatCombination(6, ints.tensors, 5, 1));

    // shape validation at build time (-1: dynamic) and at run time
    Io good = makeIo(DataType::kHALF, 2, 20, 8, 32, 7, 2, 4);
    CHECK(build->configurePlugin(good.tensors, 5, good.tensors + 5, 1) == 0);
    CHECK(runtime->onShapeChange(good.plain, 5, good.plain + 5, 1) == 0);
    Io dynamic = makeIo(DataType::kHALF, -1, -1, 8, 32, -1, 2, 4);
    CHECK(build->configurePlugin(dynamic.tensors, 5, dynamic.tensors + 5, 1) == 0);
    Io heads = good;
    heads.tensors[3].desc.dims.d[2] = 4; // sampling_locations with 4 heads, value with 8
    heads.plain[3].dims.d[2] = 4;
    CHECK(build->configurePlugin(heads.tensors, 5, heads.tensors + 5, 1) != 0);
    CHECK(runtime->onShapeChange(heads.plain, 5, heads.plain + 5, 1) != 0);
    Io rank = good;
    rank.tensors[4].desc.dims.nbDims = 4;
    CHECK(build->configurePlugin(rank.tensors, 5, rank.tensors + 5, 1) != 0);
    Io levels = makeIo(DataType::kFLOAT, 1, 17, 1, 4, 3, 17, 1); // one level more than the kernel holds
    CHECK(build->configurePlugin(levels.tensors, 5, levels.tensors + 5, 1) != 0);
    Io huge = makeIo(DataType::kFLOAT, 1, int64_t(1) << 20, 64, 64, 3, 2, 4); // 2^32 value elements
    CHECK(runtime->onShapeChange(huge.plain, 5, huge.plain + 5, 1) != 0);
    CHECK(build->getWorkspaceSize(good.tensors, 5, good.tensors + 5, 1) == 0);

    // enqueue rejects an unsupported type before touching the GPU
    Io int8 = makeIo(DataType::kINT8, 1, 4, 1, 4, 1, 1, 1);
    void const* inputs[5] = {nullptr, nullptr, nullptr, nullptr, nullptr};
    void* outputs[1] = {nullptr};
    CHECK(runtime->enqueue(int8.plain, int8.plain + 5, inputs, outputs, nullptr, nullptr) != 0);

    // nothing to serialise; clones and runtime-phase plugins are independent objects with the same identity
    CHECK(runtime->getFieldsToSerialize() != nullptr && runtime->getFieldsToSerialize()->nbFields == 0);
    std::unique_ptr<IPluginV3> copy(plugin->clone());
    std::unique_ptr<IPluginV3> attached(runtime->attachToContext(nullptr));
    std::unique_ptr<IPluginV3> deserialized(creator->createPlugin("msda", &noFields, TensorRTPhase::kRUNTIME));
    for (IPluginV3* other : {copy.get(), attached.get(), deserialized.get()})
    {
        CHECK(other != nullptr && other != plugin.get());
        auto* otherCore = static_cast<IPluginV3OneCore*>(other->getCapabilityInterface(PluginCapabilityType::kCORE));
        CHECK(std::strcmp(otherCore->getPluginName(), "M2F_MultiscaleDeformableAttn") == 0);
    }
    std::puts("msda TensorRT plugin harness: ok");
    return 0;
}

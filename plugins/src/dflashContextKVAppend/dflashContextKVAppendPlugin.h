// DFlashContextKVAppend: IPluginV3 glue around dflashContextKVAppendMath.h. Its outputs are the
// updated caches, aliased to the cache inputs (IPluginV3OneBuildV2::getAliasedInput).
// The op contract is documented in plugins/README.md.
#pragma once

#include "common/pluginBase.h"
#include "dflashContextKVAppend/dflashContextKVAppendAttributes.h"

#include <string>

namespace dflash
{

class DFlashContextKVAppendPlugin
    : public PluginBase<DFlashContextKVAppendPlugin, kvappend::Attributes, nvinfer1::IPluginV3OneBuildV2>
{
public:
    static constexpr char const* kName = "DFlashContextKVAppend";
    static constexpr int32_t kNumOutputs = 2;

    enum Input : int32_t
    {
        kKV = 0,
        kKNormWeight,
        kRopeCos,
        kRopeSin,
        kKCache,
        kVCache,
        kCtxLens,
        kNewLens,
        kNumInputs
    };

    using PluginBase::PluginBase;

    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getAliasedInput(int32_t outputIndex) noexcept override;

    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

    // "" when the inputs' shapes (unknown extents -1) fit the contract, else the reason.
    std::string checkShapes(nvinfer1::Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const;
};

} // namespace dflash

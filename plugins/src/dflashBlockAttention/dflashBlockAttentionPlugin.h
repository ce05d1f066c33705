// DFlashBlockAttention: IPluginV3 glue around the math of dflashBlockAttentionMath.h.
// The op contract (fields, inputs, outputs, semantics) is documented in plugins/README.md.
#pragma once

#include "common/pluginBase.h"
#include "dflashBlockAttention/dflashBlockAttentionAttributes.h"
#include "dflashBlockAttention/dflashBlockAttentionMath.h"

#include <string>

namespace dflash
{

class DFlashBlockAttentionPlugin
    : public PluginBase<DFlashBlockAttentionPlugin, blockattn::Attributes, nvinfer1::IPluginV3OneBuild>
{
public:
    static constexpr char const* kName = "DFlashBlockAttention";
    static constexpr int32_t kNumOutputs = 1;

    enum Input : int32_t
    {
        kQKV = 0,
        kQNormWeight,
        kKNormWeight,
        kRopeCos,
        kRopeSin,
        kKCache,
        kVCache,
        kCtxLens,
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
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

    // "" when the inputs' shapes (unknown extents -1) fit the contract, else the reason.
    std::string checkShapes(nvinfer1::Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const;

private:
    blockattn::Dims callDims(nvinfer1::Dims const* dims) const;
};

} // namespace dflash

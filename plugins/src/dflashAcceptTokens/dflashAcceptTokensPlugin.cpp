#include "dflashAcceptTokens/dflashAcceptTokensPlugin.h"

#include "common/shapeCheck.h"
#include "dflashAcceptTokens/dflashAcceptTokensLaunch.h"

namespace dflash
{

using nvinfer1::DataType;
using nvinfer1::Dims;

int32_t DFlashAcceptTokensPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNumInputs || nbOutputs != kNumOutputs || inputTypes[kDraftTokens] != DataType::kINT32
        || inputTypes[kTargetTokens] != DataType::kINT32)
    {
        return reportError("expects 2 INT32 inputs and 2 outputs");
    }
    outputTypes[0] = DataType::kINT32;
    outputTypes[1] = DataType::kINT32;
    return 0;
}

std::string DFlashAcceptTokensPlugin::checkShapes(Dims const* dims, int32_t nbInputs, int32_t nbOutputs)
{
    if (nbInputs != kNumInputs || nbOutputs != kNumOutputs)
    {
        return "expects 2 inputs and 2 outputs, got " + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs);
    }
    ShapeCheck c;
    if (c.rank(kDraftTokens, "draft_tokens", dims[kDraftTokens], 2)
        && c.rank(kTargetTokens, "target_tokens", dims[kTargetTokens], 2))
    {
        Dims const& draft = dims[kDraftTokens];
        c.equal(kTargetTokens, "target_tokens", dims[kTargetTokens], 0, draft.d[0], "batch");
        c.equal(kTargetTokens, "target_tokens", dims[kTargetTokens], 1, draft.d[1] < 0 ? -1 : draft.d[1] + 1,
            "draft_tokens dim 1 + 1");
    }
    return c.error();
}

int32_t DFlashAcceptTokensPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const*, int32_t, nvinfer1::DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder&) noexcept
{
    if (checkInputs(inputs, nbInputs, nbOutputs) != 0)
    {
        return -1;
    }
    for (int32_t o = 0; o < kNumOutputs; ++o)
    {
        outputs[o].nbDims = 1;
        outputs[o].d[0] = inputs[kDraftTokens].d[0];
    }
    return 0;
}

bool DFlashAcceptTokensPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return isLinearTensor(pos, inOut, nbInputs, nbOutputs) && inOut[pos].desc.type == DataType::kINT32;
}

int32_t DFlashAcceptTokensPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const*, void const* const* inputs, void* const* outputs, void*, cudaStream_t stream) noexcept
{
    auto const dims = inputDims(inputDesc, kNumInputs);
    std::string error = checkShapes(dims.data(), kNumInputs, kNumOutputs);
    if (error.empty())
    {
        error = deviceError(true);
    }
    if (reportError(error, " enqueue") != 0)
    {
        return -1;
    }
    accept::Tensors const tensors{static_cast<int32_t const*>(inputs[kDraftTokens]),
        static_cast<int32_t const*>(inputs[kTargetTokens]), static_cast<int32_t*>(outputs[0]),
        static_cast<int32_t*>(outputs[1])};
    return reportLaunch(accept::launchAcceptTokens(tensors, static_cast<int32_t>(dims[kDraftTokens].d[0]),
        static_cast<int32_t>(dims[kTargetTokens].d[1]), stream));
}

} // namespace dflash

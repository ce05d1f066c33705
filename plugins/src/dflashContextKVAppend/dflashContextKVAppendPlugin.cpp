#include "dflashContextKVAppend/dflashContextKVAppendPlugin.h"

#include "common/shapeCheck.h"
#include "dflashContextKVAppend/dflashContextKVAppendLaunch.h"

namespace dflash
{

using nvinfer1::DataType;
using nvinfer1::Dims;

int32_t DFlashContextKVAppendPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNumInputs || nbOutputs != kNumOutputs || !isActivationType(inputTypes[kKV]))
    {
        return reportError("expects 8 inputs with kv of type FLOAT, HALF or BF16, and 2 outputs");
    }
    outputTypes[0] = inputTypes[kKV];
    outputTypes[1] = inputTypes[kKV];
    return 0;
}

std::string DFlashContextKVAppendPlugin::checkShapes(Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const
{
    if (nbInputs != kNumInputs || nbOutputs != kNumOutputs)
    {
        return "expects 8 inputs and 2 outputs, got " + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs);
    }
    int64_t const numKvHeads = mAttributes.numKvHeads;
    int64_t const headDim = mAttributes.headDim;
    ShapeCheck c;
    if (c.rank(kKV, "kv", dims[kKV], 3))
    {
        c.equal(kKV, "kv", dims[kKV], 2, 2 * numKvHeads * headDim, "2 * num_kv_heads * head_dim");
    }
    if (c.rank(kKNormWeight, "k_norm_weight", dims[kKNormWeight], 1))
    {
        c.equal(kKNormWeight, "k_norm_weight", dims[kKNormWeight], 0, headDim, "head_dim");
    }
    checkRopeTables(c, dims, kRopeCos, kRopeSin, headDim);
    checkKvCaches(c, dims, kKCache, kVCache, dims[kKV].d[0], numKvHeads, headDim);
    checkPerSequence(c, dims, kCtxLens, "ctx_lens", dims[kKV].d[0]);
    checkPerSequence(c, dims, kNewLens, "new_lens", dims[kKV].d[0]);
    return c.error();
}

int32_t DFlashContextKVAppendPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const*, int32_t, nvinfer1::DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder&) noexcept
{
    if (checkInputs(inputs, nbInputs, nbOutputs) != 0)
    {
        return -1;
    }
    outputs[0] = inputs[kKCache];
    outputs[1] = inputs[kVCache];
    return 0;
}

bool DFlashContextKVAppendPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (!isLinearTensor(pos, inOut, nbInputs, nbOutputs))
    {
        return false;
    }
    DataType const type = inOut[pos].desc.type;
    switch (pos)
    {
    case kKV: return isActivationType(type);
    case kRopeCos:
    case kRopeSin: return type == DataType::kFLOAT;
    case kCtxLens:
    case kNewLens: return type == DataType::kINT32;
    default: return type == inOut[kKV].desc.type; // k_norm_weight, the caches and the outputs share kv's type
    }
}

int32_t DFlashContextKVAppendPlugin::getAliasedInput(int32_t outputIndex) noexcept
{
    return outputIndex == 0 ? kKCache : (outputIndex == 1 ? kVCache : -1);
}

int32_t DFlashContextKVAppendPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const*, void const* const* inputs, void* const* outputs, void*, cudaStream_t stream) noexcept
{
    auto const dims = inputDims(inputDesc, kNumInputs);
    ElemType type;
    std::string error = checkShapes(dims.data(), kNumInputs, kNumOutputs);
    if (error.empty() && !toElemType(inputDesc[kKV].type, type))
    {
        error = "unsupported kv type";
    }
    if (reportError(error, " enqueue") != 0)
    {
        return -1;
    }
    kvappend::Dims d{};
    d.batch = static_cast<int32_t>(dims[kKV].d[0]);
    d.newLen = static_cast<int32_t>(dims[kKV].d[1]);
    d.numKvHeads = mAttributes.numKvHeads;
    d.headDim = mAttributes.headDim;
    d.cacheLen = static_cast<int32_t>(dims[kKCache].d[2]);
    d.maxPos = static_cast<int32_t>(dims[kRopeCos].d[0]);
    d.qkNorm = mAttributes.qkNorm;
    d.eps = mAttributes.eps;
    kvappend::RawTensors const tensors{inputs[kKV], inputs[kKNormWeight], static_cast<float const*>(inputs[kRopeCos]),
        static_cast<float const*>(inputs[kRopeSin]), inputs[kKCache], inputs[kVCache],
        static_cast<int32_t const*>(inputs[kCtxLens]), static_cast<int32_t const*>(inputs[kNewLens]), outputs[0],
        outputs[1]};
    return reportLaunch(kvappend::launchContextKvAppend(type, d, tensors, stream));
}

} // namespace dflash

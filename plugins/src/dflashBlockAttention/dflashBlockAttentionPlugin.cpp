#include "dflashBlockAttention/dflashBlockAttentionPlugin.h"

#include "common/shapeCheck.h"
#include "dflashBlockAttention/dflashBlockAttentionLaunch.h"

#include <array>

namespace dflash
{

using nvinfer1::DataType;
using nvinfer1::Dims;

int32_t DFlashBlockAttentionPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNumInputs || nbOutputs != kNumOutputs || !isActivationType(inputTypes[kQKV]))
    {
        return reportError("expects 8 inputs with qkv of type FLOAT, HALF or BF16, and 1 output");
    }
    outputTypes[0] = inputTypes[kQKV];
    return 0;
}

std::string DFlashBlockAttentionPlugin::checkShapes(Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const
{
    if (nbOutputs != kNumOutputs)
    {
        return "expects 1 output";
    }
    if (nbInputs != kNumInputs)
    {
        return "expects 8 inputs, got " + std::to_string(nbInputs);
    }
    int64_t const numHeads = mAttributes.numHeads;
    int64_t const numKvHeads = mAttributes.numKvHeads;
    int64_t const headDim = mAttributes.headDim;
    ShapeCheck c;
    if (c.rank(kQKV, "qkv", dims[kQKV], 3))
    {
        c.equal(kQKV, "qkv", dims[kQKV], 2, (numHeads + 2 * numKvHeads) * headDim,
            "(num_heads + 2 * num_kv_heads) * head_dim");
    }
    for (int32_t i : {kQNormWeight, kKNormWeight})
    {
        char const* const name = i == kQNormWeight ? "q_norm_weight" : "k_norm_weight";
        if (c.rank(i, name, dims[i], 1))
        {
            c.equal(i, name, dims[i], 0, headDim, "head_dim");
        }
    }
    checkRopeTables(c, dims, kRopeCos, kRopeSin, headDim);
    checkKvCaches(c, dims, kKCache, kVCache, dims[kQKV].d[0], numKvHeads, headDim);
    checkPerSequence(c, dims, kCtxLens, "ctx_lens", dims[kQKV].d[0]);
    return c.error();
}

int32_t DFlashBlockAttentionPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const*, int32_t, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
    nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if (checkInputs(inputs, nbInputs, nbOutputs) != 0)
    {
        return -1;
    }
    outputs[0].nbDims = 3;
    outputs[0].d[0] = inputs[kQKV].d[0];
    outputs[0].d[1] = inputs[kQKV].d[1];
    outputs[0].d[2] = exprBuilder.constant(static_cast<int64_t>(mAttributes.numHeads) * mAttributes.headDim);
    return 0;
}

bool DFlashBlockAttentionPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (!isLinearTensor(pos, inOut, nbInputs, nbOutputs))
    {
        return false;
    }
    DataType const type = inOut[pos].desc.type;
    switch (pos)
    {
    case kQKV: return isActivationType(type);
    case kRopeCos:
    case kRopeSin: return type == DataType::kFLOAT;
    case kCtxLens: return type == DataType::kINT32;
    default: return type == inOut[kQKV].desc.type; // norm weights, caches and the output share qkv's type
    }
}

blockattn::Dims DFlashBlockAttentionPlugin::callDims(Dims const* dims) const
{
    blockattn::Dims d{};
    d.batch = static_cast<int32_t>(dims[kQKV].d[0]);
    d.blockLen = static_cast<int32_t>(dims[kQKV].d[1]);
    d.numHeads = mAttributes.numHeads;
    d.numKvHeads = mAttributes.numKvHeads;
    d.headDim = mAttributes.headDim;
    d.cacheLen = static_cast<int32_t>(dims[kKCache].d[2]);
    d.maxPos = static_cast<int32_t>(dims[kRopeCos].d[0]);
    d.window = mAttributes.window;
    d.qkNorm = mAttributes.qkNorm;
    d.eps = mAttributes.eps;
    return d;
}

size_t DFlashBlockAttentionPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs,
    int32_t nbInputs, nvinfer1::DynamicPluginTensorDesc const*, int32_t) const noexcept
{
    if (nbInputs != kNumInputs)
    {
        return 0;
    }
    std::array<Dims, kNumInputs> maxDims{};
    for (int32_t i = 0; i < kNumInputs; ++i)
    {
        maxDims[i] = inputs[i].max;
    }
    blockattn::Dims const dims = callDims(maxDims.data());
    return blockattn::workspaceBytes(dims, blockattn::makePlan(dims));
}

int32_t DFlashBlockAttentionPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const*, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    auto const dims = inputDims(inputDesc, kNumInputs);
    ElemType type;
    std::string error = checkShapes(dims.data(), kNumInputs, kNumOutputs);
    if (error.empty() && !toElemType(inputDesc[kQKV].type, type))
    {
        error = "unsupported qkv type";
    }
    if (reportError(error, " enqueue") != 0)
    {
        return -1;
    }
    blockattn::Dims const d = callDims(dims.data());
    blockattn::RawTensors const tensors{inputs[kQKV], inputs[kQNormWeight], inputs[kKNormWeight],
        static_cast<float const*>(inputs[kRopeCos]), static_cast<float const*>(inputs[kRopeSin]), inputs[kKCache],
        inputs[kVCache], static_cast<int32_t const*>(inputs[kCtxLens]), outputs[0]};
    return reportLaunch(blockattn::launchBlockAttention(type, d, tensors, blockattn::makePlan(d), workspace, stream));
}

} // namespace dflash

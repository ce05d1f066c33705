#include "dflashBlockAttention/dflashBlockAttentionPlugin.h"

#include "common/shapeCheck.h"
#include "dflashBlockAttention/dflashBlockAttentionLaunch.h"

#include <array>

namespace dflash
{

using nvinfer1::DataType;
using nvinfer1::Dims;

template <bool kPaged>
int32_t BlockAttentionPlugin<kPaged>::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNumInputs || nbOutputs != kNumOutputs || !isActivationType(inputTypes[kQKV]))
    {
        return Base::reportError("expects 8 inputs with qkv of type FLOAT, HALF or BF16, and 1 output");
    }
    outputTypes[0] = inputTypes[kQKV];
    return 0;
}

template <bool kPaged>
std::string BlockAttentionPlugin<kPaged>::checkShapes(Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const
{
    if (nbOutputs != kNumOutputs)
    {
        return "expects 1 output";
    }
    if (nbInputs != kNumInputs)
    {
        return "expects 8 inputs, got " + std::to_string(nbInputs);
    }
    int64_t const numHeads = this->mAttributes.numHeads;
    int64_t const numKvHeads = this->mAttributes.numKvHeads;
    int64_t const headDim = this->mAttributes.headDim;
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
    if (kPaged)
    {
        checkKvPool(c, dims, kKCache, kVCache, dims[kQKV].d[0], numKvHeads, headDim);
    }
    else
    {
        checkKvCaches(c, dims, kKCache, kVCache, dims[kQKV].d[0], numKvHeads, headDim);
    }
    checkPerSequence(c, dims, kCtxLens, "ctx_lens", dims[kQKV].d[0]);
    return c.error();
}

template <bool kPaged>
std::string BlockAttentionPlugin<kPaged>::deviceError(bool requireDevice)
{
    DeviceInfo device{};
    std::string const error = this->mDevice.get(device);
    if (!error.empty())
    {
        return requireDevice ? error : "";
    }
    return blockattn::checkDevice(device, this->mAttributes.headDim);
}

template <bool kPaged>
int32_t BlockAttentionPlugin<kPaged>::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const*, int32_t, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
    nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if (Base::checkInputs(inputs, nbInputs, nbOutputs) != 0)
    {
        return -1;
    }
    outputs[0].nbDims = 3;
    outputs[0].d[0] = inputs[kQKV].d[0];
    outputs[0].d[1] = inputs[kQKV].d[1];
    outputs[0].d[2] = exprBuilder.constant(static_cast<int64_t>(this->mAttributes.numHeads) * this->mAttributes.headDim);
    return 0;
}

template <bool kPaged>
bool BlockAttentionPlugin<kPaged>::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (!Base::isLinearTensor(pos, inOut, nbInputs, nbOutputs))
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
    case kVCache: return kPaged ? type == DataType::kINT32 : type == inOut[kQKV].desc.type;
    default: return type == inOut[kQKV].desc.type; // norm weights, caches and the output share qkv's type
    }
}

template <bool kPaged>
blockattn::Dims BlockAttentionPlugin<kPaged>::callDims(Dims const* dims) const
{
    blockattn::Dims d{};
    d.batch = static_cast<int32_t>(dims[kQKV].d[0]);
    d.blockLen = static_cast<int32_t>(dims[kQKV].d[1]);
    d.numHeads = this->mAttributes.numHeads;
    d.numKvHeads = this->mAttributes.numKvHeads;
    d.headDim = this->mAttributes.headDim;
    d.cacheLen = kPaged ? static_cast<int32_t>(dims[kKCache].d[2] * dims[kVCache].d[2])
                        : static_cast<int32_t>(dims[kKCache].d[2]);
    d.maxPos = static_cast<int32_t>(dims[kRopeCos].d[0]);
    d.window = this->mAttributes.window;
    d.qkNorm = this->mAttributes.qkNorm;
    d.eps = this->mAttributes.eps;
    return d;
}

template <bool kPaged>
size_t BlockAttentionPlugin<kPaged>::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs,
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
    return blockattn::maxWorkspaceBytes(callDims(maxDims.data()));
}

template <bool kPaged>
int32_t BlockAttentionPlugin<kPaged>::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const*, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    auto const dims = Base::inputDims(inputDesc, kNumInputs);
    ElemType type = ElemType::kFLOAT32;
    std::string error = checkShapes(dims.data(), kNumInputs, kNumOutputs);
    if (error.empty() && !toElemType(inputDesc[kQKV].type, type))
    {
        error = "unsupported qkv type";
    }
    DeviceInfo device{};
    if (error.empty())
    {
        error = this->mDevice.get(device);
    }
    if (error.empty())
    {
        error = blockattn::checkDevice(device, this->mAttributes.headDim);
    }
    if (Base::reportError(error, " enqueue") != 0)
    {
        return -1;
    }
    blockattn::Dims const d = callDims(dims.data());
    blockattn::CacheLayout const layout{kPaged, kPaged ? static_cast<int32_t>(dims[kKCache].d[1]) : 0,
        kPaged ? static_cast<int32_t>(dims[kKCache].d[2]) : 0, kPaged ? static_cast<int32_t>(dims[kVCache].d[2]) : 0};
    blockattn::RawTensors const tensors{inputs[kQKV], inputs[kQNormWeight], inputs[kKNormWeight],
        static_cast<float const*>(inputs[kRopeCos]), static_cast<float const*>(inputs[kRopeSin]), inputs[kKCache],
        kPaged ? nullptr : inputs[kVCache], kPaged ? static_cast<int32_t const*>(inputs[kVCache]) : nullptr,
        static_cast<int32_t const*>(inputs[kCtxLens]), outputs[0]};
    return Base::reportLaunch(blockattn::launchBlockAttention(
        type, d, layout, tensors, blockattn::makePlan(d, device), device, workspace, stream));
}

template class BlockAttentionPlugin<false>;
template class BlockAttentionPlugin<true>;

} // namespace dflash

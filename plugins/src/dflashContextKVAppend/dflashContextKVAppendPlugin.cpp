#include "dflashContextKVAppend/dflashContextKVAppendPlugin.h"

#include "common/shapeCheck.h"
#include "dflashContextKVAppend/dflashContextKVAppendLaunch.h"

namespace dflash
{

using nvinfer1::DataType;
using nvinfer1::Dims;

template <bool kPaged>
int32_t KvAppendPlugin<kPaged>::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    if (nbInputs != kNumInputs || nbOutputs != kNumOutputs || !isActivationType(inputTypes[kKV]))
    {
        return Base::reportError(kPaged ? "expects 8 inputs with kv of type FLOAT, HALF or BF16, and 1 output"
                                        : "expects 8 inputs with kv of type FLOAT, HALF or BF16, and 2 outputs");
    }
    for (int32_t o = 0; o < kNumOutputs; ++o)
    {
        outputTypes[o] = inputTypes[kKV];
    }
    return 0;
}

template <bool kPaged>
std::string KvAppendPlugin<kPaged>::checkShapes(Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const
{
    if (nbInputs != kNumInputs || nbOutputs != kNumOutputs)
    {
        return "expects 8 inputs and " + std::to_string(kNumOutputs) + " output(s), got " + std::to_string(nbInputs)
            + " and " + std::to_string(nbOutputs);
    }
    int64_t const numKvHeads = this->mAttributes.numKvHeads;
    int64_t const headDim = this->mAttributes.headDim;
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
    if (kPaged)
    {
        checkKvPool(c, dims, kKCache, kVCache, dims[kKV].d[0], numKvHeads, headDim);
    }
    else
    {
        checkKvCaches(c, dims, kKCache, kVCache, dims[kKV].d[0], numKvHeads, headDim);
    }
    checkPerSequence(c, dims, kCtxLens, "ctx_lens", dims[kKV].d[0]);
    checkPerSequence(c, dims, kNewLens, "new_lens", dims[kKV].d[0]);
    return c.error();
}

template <bool kPaged>
int32_t KvAppendPlugin<kPaged>::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const*, int32_t, nvinfer1::DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder&) noexcept
{
    if (Base::checkInputs(inputs, nbInputs, nbOutputs) != 0)
    {
        return -1;
    }
    outputs[0] = inputs[kKCache];
    if (!kPaged)
    {
        outputs[1] = inputs[kVCache];
    }
    return 0;
}

template <bool kPaged>
bool KvAppendPlugin<kPaged>::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (!Base::isLinearTensor(pos, inOut, nbInputs, nbOutputs))
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
    case kVCache: return kPaged ? type == DataType::kINT32 : type == inOut[kKV].desc.type;
    default: return type == inOut[kKV].desc.type; // k_norm_weight, the caches and the outputs share kv's type
    }
}

template <bool kPaged>
int32_t KvAppendPlugin<kPaged>::getAliasedInput(int32_t outputIndex) noexcept
{
    switch (outputIndex)
    {
    case 0: return kKCache;
    case 1: return kPaged ? -1 : kVCache;
    default: return -1;
    }
}

template <bool kPaged>
std::string KvAppendPlugin<kPaged>::checkAliasing(void const* const* inputs, void* const* outputs)
{
    for (int32_t o = 0; o < kNumOutputs; ++o)
    {
        int32_t const input = o == 0 ? kKCache : kVCache;
        if (outputs[o] != inputs[input])
        {
            return "output " + std::to_string(o) + " is not aliased to input " + std::to_string(input)
                + " (the cache): build the engine with PreviewFeature::kALIASED_PLUGIN_IO_10_03 so that the cache is "
                  "updated in place; this plugin does not copy the cache";
        }
    }
    return "";
}

template <bool kPaged>
int32_t KvAppendPlugin<kPaged>::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const*, void const* const* inputs, void* const* outputs, void*, cudaStream_t stream) noexcept
{
    auto const dims = Base::inputDims(inputDesc, kNumInputs);
    ElemType type = ElemType::kFLOAT32;
    std::string error = checkShapes(dims.data(), kNumInputs, kNumOutputs);
    if (error.empty() && !toElemType(inputDesc[kKV].type, type))
    {
        error = "unsupported kv type";
    }
    if (error.empty())
    {
        error = checkAliasing(inputs, outputs);
    }
    if (error.empty())
    {
        error = this->deviceError(true);
    }
    if (Base::reportError(error, " enqueue") != 0)
    {
        return -1;
    }
    kvappend::Dims d{};
    d.batch = static_cast<int32_t>(dims[kKV].d[0]);
    d.newLen = static_cast<int32_t>(dims[kKV].d[1]);
    d.numKvHeads = this->mAttributes.numKvHeads;
    d.headDim = this->mAttributes.headDim;
    d.cacheLen = kPaged ? static_cast<int32_t>(dims[kKCache].d[2] * dims[kVCache].d[2])
                        : static_cast<int32_t>(dims[kKCache].d[2]);
    d.maxPos = static_cast<int32_t>(dims[kRopeCos].d[0]);
    d.qkNorm = this->mAttributes.qkNorm;
    d.eps = this->mAttributes.eps;
    kvappend::CacheLayout const layout{kPaged, kPaged ? static_cast<int32_t>(dims[kKCache].d[1]) : 0,
        kPaged ? static_cast<int32_t>(dims[kKCache].d[2]) : 0, kPaged ? static_cast<int32_t>(dims[kVCache].d[2]) : 0};
    kvappend::RawTensors const tensors{inputs[kKV], inputs[kKNormWeight], static_cast<float const*>(inputs[kRopeCos]),
        static_cast<float const*>(inputs[kRopeSin]), outputs[0], kPaged ? nullptr : outputs[1],
        kPaged ? static_cast<int32_t const*>(inputs[kVCache]) : nullptr, static_cast<int32_t const*>(inputs[kCtxLens]),
        static_cast<int32_t const*>(inputs[kNewLens])};
    return Base::reportLaunch(kvappend::launchContextKvAppend(type, d, layout, tensors, stream));
}

template class KvAppendPlugin<false>;
template class KvAppendPlugin<true>;

} // namespace dflash

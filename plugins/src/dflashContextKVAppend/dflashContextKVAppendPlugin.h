// DFlashContextKVAppend and DFlashPagedKVAppend: IPluginV3 glue around dflashContextKVAppendMath.h.
// Their outputs are the updated caches, aliased to the cache inputs
// (IPluginV3OneBuildV2::getAliasedInput), so the engine must be built with
// PreviewFeature::kALIASED_PLUGIN_IO_10_03; enqueue refuses outputs that are not the inputs'
// buffers instead of copying the cache. The op contracts are documented in plugins/README.md.
#pragma once

#include "common/pluginBase.h"
#include "dflashContextKVAppend/dflashContextKVAppendAttributes.h"

#include <string>

namespace dflash
{

// kPaged selects the cache operands: inputs 4 and 5 are k_cache and v_cache
// ([b, num_kv_heads, S, head_dim], outputs k_cache_out and v_cache_out) or kv_pool
// ([2, pages, tokens_per_page, num_kv_heads, head_dim], output kv_pool_out) and page_table
// ([b, 2, max_pages] INT32).
template <bool kPaged>
class KvAppendPlugin : public PluginBase<KvAppendPlugin<kPaged>, kvappend::Attributes, nvinfer1::IPluginV3OneBuildV2>
{
    using Base = PluginBase<KvAppendPlugin<kPaged>, kvappend::Attributes, nvinfer1::IPluginV3OneBuildV2>;

public:
    static constexpr char const* kName = kPaged ? "DFlashPagedKVAppend" : "DFlashContextKVAppend";
    static constexpr int32_t kNumOutputs = kPaged ? 1 : 2;

    enum Input : int32_t
    {
        kKV = 0,
        kKNormWeight,
        kRopeCos,
        kRopeSin,
        kKCache, // paged: kv_pool
        kVCache, // paged: page_table
        kCtxLens,
        kNewLens,
        kNumInputs
    };

    using Base::Base;

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

    // "" when every output is the buffer of the input it aliases, else which one is not.
    static std::string checkAliasing(void const* const* inputs, void* const* outputs);
};

using DFlashContextKVAppendPlugin = KvAppendPlugin<false>;
using DFlashPagedKVAppendPlugin = KvAppendPlugin<true>;

} // namespace dflash

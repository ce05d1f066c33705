// DFlashBlockAttention and DFlashPagedBlockAttention: IPluginV3 glue around the math of
// dflashBlockAttentionMath.h, reading a contiguous K/V cache or a paged pool. The op contracts
// (fields, inputs, outputs, semantics) are documented in plugins/README.md.
#pragma once

#include "common/deviceInfo.h"
#include "common/pluginBase.h"
#include "dflashBlockAttention/dflashBlockAttentionAttributes.h"
#include "dflashBlockAttention/dflashBlockAttentionMath.h"

#include <string>

namespace dflash
{

// kPaged selects the cache operands: inputs 5 and 6 are k_cache and v_cache
// ([b, num_kv_heads, S, head_dim]) or kv_pool ([2, pages, tokens_per_page, num_kv_heads, head_dim])
// and page_table ([b, 2, max_pages] INT32).
template <bool kPaged>
class BlockAttentionPlugin
    : public PluginBase<BlockAttentionPlugin<kPaged>, blockattn::Attributes, nvinfer1::IPluginV3OneBuild>
{
    using Base = PluginBase<BlockAttentionPlugin<kPaged>, blockattn::Attributes, nvinfer1::IPluginV3OneBuild>;

public:
    static constexpr char const* kName = kPaged ? "DFlashPagedBlockAttention" : "DFlashBlockAttention";
    static constexpr int32_t kNumOutputs = 1;

    enum Input : int32_t
    {
        kQKV = 0,
        kQNormWeight,
        kKNormWeight,
        kRopeCos,
        kRopeSin,
        kKCache, // paged: kv_pool
        kVCache, // paged: page_table
        kCtxLens,
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
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;

    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

    // "" when the inputs' shapes (unknown extents -1) fit the contract, else the reason.
    std::string checkShapes(nvinfer1::Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const;

    // Compute capability and the shared memory the head size needs (see PluginBase::deviceError).
    std::string deviceError(bool requireDevice);

private:
    blockattn::Dims callDims(nvinfer1::Dims const* dims) const;
};

using DFlashBlockAttentionPlugin = BlockAttentionPlugin<false>;
using DFlashPagedBlockAttentionPlugin = BlockAttentionPlugin<true>;

} // namespace dflash

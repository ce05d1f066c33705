// AllGather: IPluginV3 glue around the NCCL all-gather of collectives/communicator.h. The group's
// tensors concatenated along `axis` in rank order; the op contract is documented in plugins/README.md.
#pragma once

#include "common/attributeChecks.h"
#include "common/pluginBase.h"

#include <string>
#include <vector>

namespace dflash
{
namespace allgather
{

struct Attributes
{
    int32_t groupSize{0};
    int32_t axis{-1};

    std::vector<FieldRef> fieldRefs()
    {
        return {requiredField("group_size", groupSize), optionalField("axis", axis)};
    }

    // The axis is checked against the input's rank with the shapes; here only against the most
    // dimensions a TensorRT tensor can have.
    std::string validate() const
    {
        int32_t const maxRank = nvinfer1::Dims::MAX_DIMS;
        return firstError({checkPositive("group_size", groupSize),
            axis >= -maxRank && axis < maxRank ? ""
                                               : "axis (" + std::to_string(axis) + ") must be in [-"
                    + std::to_string(maxRank) + ", " + std::to_string(maxRank) + ")"});
    }
};

} // namespace allgather

class AllGatherPlugin : public PluginBase<AllGatherPlugin, allgather::Attributes, nvinfer1::IPluginV3OneBuild>
{
public:
    static constexpr char const* kName = "AllGather";
    static constexpr int32_t kNumOutputs = 1;

    enum Input : int32_t
    {
        kInput = 0,
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

    // "" when the call has one input and one output and axis is within the input's rank, else the reason.
    std::string checkShapes(nvinfer1::Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const;

private:
    // The axis as an index into dims of rank `rank` (axis < 0 counts from the end).
    int32_t axisIndex(int32_t rank) const
    {
        return mAttributes.axis < 0 ? mAttributes.axis + rank : mAttributes.axis;
    }
};

} // namespace dflash

// AllReduce: IPluginV3 glue around the NCCL all-reduce of collectives/communicator.h. The sum of one
// tensor over the tensor-parallel group; the op contract is documented in plugins/README.md.
#pragma once

#include "common/attributeChecks.h"
#include "common/pluginBase.h"

#include <string>
#include <vector>

namespace dflash
{
namespace allreduce
{

struct Attributes
{
    int32_t groupSize{0};
    std::string reduceOp{"sum"};

    std::vector<FieldRef> fieldRefs()
    {
        return {requiredField("group_size", groupSize), optionalField("reduce_op", reduceOp)};
    }

    std::string validate() const
    {
        return firstError({checkPositive("group_size", groupSize),
            reduceOp == "sum" ? "" : "reduce_op ('" + reduceOp + "') must be 'sum'"});
    }
};

} // namespace allreduce

class AllReducePlugin : public PluginBase<AllReducePlugin, allreduce::Attributes, nvinfer1::IPluginV3OneBuild>
{
public:
    static constexpr char const* kName = "AllReduce";
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

    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

    // "" when the call has one input and one output (any rank), else the reason.
    static std::string checkShapes(nvinfer1::Dims const* dims, int32_t nbInputs, int32_t nbOutputs);
};

} // namespace dflash

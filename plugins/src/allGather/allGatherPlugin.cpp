#include "allGather/allGatherPlugin.h"

#include "collectives/collectiveShapes.h"
#include "collectives/communicator.h"

namespace dflash
{

using nvinfer1::DataType;
using nvinfer1::Dims;

int32_t AllGatherPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    return reportError(collective::outputType(outputTypes, nbOutputs, inputTypes, nbInputs));
}

std::string AllGatherPlugin::checkShapes(Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const
{
    std::string const error = collective::checkArity(nbInputs, nbOutputs);
    if (!error.empty())
    {
        return error;
    }
    int32_t const rank = dims[kInput].nbDims;
    int32_t const axis = mAttributes.axis;
    if (axis < -rank || axis >= rank)
    {
        return "axis " + std::to_string(axis) + " is out of range for input 0 (x) of rank " + std::to_string(rank);
    }
    return "";
}

int32_t AllGatherPlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const*, int32_t, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
    nvinfer1::IExprBuilder& exprBuilder) noexcept
{
    if (checkInputs(inputs, nbInputs, nbOutputs) != 0)
    {
        return -1;
    }
    int32_t const axis = axisIndex(inputs[kInput].nbDims);
    outputs[0] = inputs[kInput];
    outputs[0].d[axis] = exprBuilder.operation(
        nvinfer1::DimensionOperation::kPROD, *inputs[kInput].d[axis], *exprBuilder.constant(mAttributes.groupSize));
    return outputs[0].d[axis] == nullptr ? reportError("cannot multiply the gathered axis by group_size") : 0;
}

bool AllGatherPlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return collective::supportsFormat(pos, inOut, nbInputs, nbOutputs);
}

size_t AllGatherPlugin::getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    nvinfer1::DynamicPluginTensorDesc const*, int32_t nbOutputs) const noexcept
{
    ElemType type = ElemType::kFLOAT32;
    if (!checkShapes(&inputs[kInput].max, nbInputs, nbOutputs).empty() || !toElemType(inputs[kInput].desc.type, type))
    {
        return 0;
    }
    Dims const& max = inputs[kInput].max;
    int32_t const axis = axisIndex(max.nbDims);
    return collective::gatherWorkspaceBytes(collective::volume(max, 0, axis), collective::volume(max, axis, max.nbDims),
        mAttributes.groupSize, collective::elemBytes(type));
}

int32_t AllGatherPlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs, void* const* outputs, void* workspace,
    cudaStream_t stream) noexcept
{
    ElemType type = ElemType::kFLOAT32;
    Dims const& dims = inputDesc[kInput].dims;
    std::string error = checkShapes(&dims, kNumInputs, kNumOutputs);
    if (error.empty())
    {
        error = collective::enqueueType(inputDesc, outputDesc, type);
    }
    if (error.empty())
    {
        error = collective::checkGroup(mAttributes.groupSize);
    }
    if (error.empty())
    {
        error = deviceError(true);
    }
    if (error.empty())
    {
        int32_t const axis = axisIndex(dims.nbDims);
        error = collective::allGather(inputs[kInput], outputs[0], workspace, collective::volume(dims, 0, axis),
            collective::volume(dims, axis, dims.nbDims), type, mAttributes.groupSize, stream);
    }
    return reportError(error, " enqueue");
}

} // namespace dflash

#include "allReduce/allReducePlugin.h"

#include "collectives/collectiveShapes.h"
#include "collectives/communicator.h"

namespace dflash
{

using nvinfer1::DataType;
using nvinfer1::Dims;

int32_t AllReducePlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    return reportError(collective::outputType(outputTypes, nbOutputs, inputTypes, nbInputs));
}

std::string AllReducePlugin::checkShapes(Dims const*, int32_t nbInputs, int32_t nbOutputs)
{
    return collective::checkArity(nbInputs, nbOutputs);
}

int32_t AllReducePlugin::getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs,
    nvinfer1::DimsExprs const*, int32_t, nvinfer1::DimsExprs* outputs, int32_t nbOutputs, nvinfer1::IExprBuilder&) noexcept
{
    if (checkInputs(inputs, nbInputs, nbOutputs) != 0)
    {
        return -1;
    }
    outputs[0] = inputs[kInput];
    return 0;
}

bool AllReducePlugin::supportsFormatCombination(
    int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    return collective::supportsFormat(pos, inOut, nbInputs, nbOutputs);
}

int32_t AllReducePlugin::enqueue(nvinfer1::PluginTensorDesc const* inputDesc,
    nvinfer1::PluginTensorDesc const* outputDesc, void const* const* inputs, void* const* outputs, void*,
    cudaStream_t stream) noexcept
{
    ElemType type = ElemType::kFLOAT32;
    std::string error = collective::enqueueType(inputDesc, outputDesc, type);
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
        Dims const& dims = inputDesc[kInput].dims;
        error = collective::allReduce(inputs[kInput], outputs[0], collective::volume(dims, 0, dims.nbDims), type,
            mAttributes.groupSize, stream);
    }
    return reportError(error, " enqueue");
}

} // namespace dflash

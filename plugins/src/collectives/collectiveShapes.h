// What the AllReduce and AllGather glue shares: the call's arity and types, and element counts.
#pragma once

#include "common/tensorrt.h"

#include <cstddef>
#include <cstdint>
#include <string>

namespace dflash
{
namespace collective
{

// "" for one input and one output, else the reason.
inline std::string checkArity(int32_t nbInputs, int32_t nbOutputs)
{
    return nbInputs == 1 && nbOutputs == 1 ? ""
                                           : "expects 1 input and 1 output, got " + std::to_string(nbInputs) + " and "
            + std::to_string(nbOutputs);
}

// The product of dims.d[begin:end] (1 for an empty range; 0 when an extent is unknown or empty).
inline size_t volume(nvinfer1::Dims const& dims, int32_t begin, int32_t end)
{
    size_t n = 1;
    for (int32_t i = begin; i < end; ++i)
    {
        n *= dims.d[i] < 0 ? 0 : static_cast<size_t>(dims.d[i]);
    }
    return n;
}

// The output type of a collective: the input's, which must be FLOAT, HALF or BF16.
inline std::string outputType(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
    int32_t nbInputs)
{
    std::string const error = checkArity(nbInputs, nbOutputs);
    if (!error.empty())
    {
        return error;
    }
    if (!isActivationType(inputTypes[0]))
    {
        return "the input must be FLOAT, HALF or BF16";
    }
    outputTypes[0] = inputTypes[0];
    return "";
}

// supportsFormatCombination of a collective: linear FLOAT, HALF or BF16, the output of the input's type.
inline bool supportsFormat(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
    int32_t nbOutputs)
{
    if (nbInputs != 1 || nbOutputs != 1 || pos < 0 || pos > 1
        || inOut[pos].desc.format != nvinfer1::TensorFormat::kLINEAR)
    {
        return false;
    }
    return pos == 0 ? isActivationType(inOut[0].desc.type) : inOut[1].desc.type == inOut[0].desc.type;
}

// The element type of an enqueue's tensors; "" or why they cannot be reduced or gathered.
inline std::string enqueueType(
    nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc, ElemType& type)
{
    return toElemType(inputDesc[0].type, type) && outputDesc[0].type == inputDesc[0].type
        ? ""
        : "the input and output must be FLOAT, HALF or BF16, of one type";
}

} // namespace collective
} // namespace dflash

// The TensorRT plugin interfaces. Only NvInferRuntime.h is included: NvInfer.h pulls in
// deprecated declarations that warn under -Werror.
#pragma once

#include <NvInferRuntime.h>

#include "common/floatTypes.h"

namespace dflash
{

constexpr char const* kPluginNamespace = "dflash_trt";
constexpr char const* kPluginVersion = "1";

// Maps a TensorRT activation type to the math's element type; false for other types.
inline bool toElemType(nvinfer1::DataType type, ElemType& out)
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT: out = ElemType::kFLOAT32; return true;
    case nvinfer1::DataType::kHALF: out = ElemType::kFLOAT16; return true;
    case nvinfer1::DataType::kBF16: out = ElemType::kBFLOAT16; return true;
    default: return false;
    }
}

inline bool isActivationType(nvinfer1::DataType type)
{
    ElemType unused;
    return toElemType(type, unused);
}

} // namespace dflash

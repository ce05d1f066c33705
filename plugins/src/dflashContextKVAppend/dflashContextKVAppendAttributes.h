// Attributes (PluginFields) of DFlashContextKVAppend and their validation.
#pragma once

#include "common/pluginFields.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace dflash
{
namespace kvappend
{

struct Attributes
{
    int32_t numKvHeads{0};
    int32_t headDim{0};
    int32_t qkNorm{1};
    float eps{1e-6f};

    std::vector<FieldRef> fieldRefs()
    {
        using nvinfer1::PluginFieldType;
        return {
            {"num_kv_heads", PluginFieldType::kINT32, &numKvHeads, true},
            {"head_dim", PluginFieldType::kINT32, &headDim, true},
            {"qk_norm", PluginFieldType::kINT32, &qkNorm, false},
            {"eps", PluginFieldType::kFLOAT32, &eps, false},
        };
    }

    std::string validate() const
    {
        if (numKvHeads <= 0)
        {
            return "num_kv_heads (" + std::to_string(numKvHeads) + ") must be positive";
        }
        if (headDim != 64 && headDim != 128)
        {
            return "head_dim (" + std::to_string(headDim) + ") must be 64 or 128";
        }
        if (qkNorm != 0 && qkNorm != 1)
        {
            return "qk_norm (" + std::to_string(qkNorm) + ") must be 0 or 1";
        }
        if (!(eps >= 0.0f) || std::isinf(eps))
        {
            return "eps (" + std::to_string(eps) + ") must be finite and >= 0";
        }
        return "";
    }
};

} // namespace kvappend

} // namespace dflash

// Attributes (PluginFields) of DFlashBlockAttention and their validation.
#pragma once

#include "common/pluginFields.h"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

namespace dflash
{
namespace blockattn
{

struct Attributes
{
    int32_t numHeads{0};
    int32_t numKvHeads{0};
    int32_t headDim{0};
    int32_t window{0};
    int32_t qkNorm{1};
    float eps{1e-6f};

    std::vector<FieldRef> fieldRefs()
    {
        using nvinfer1::PluginFieldType;
        return {
            {"num_heads", PluginFieldType::kINT32, &numHeads, true},
            {"num_kv_heads", PluginFieldType::kINT32, &numKvHeads, true},
            {"head_dim", PluginFieldType::kINT32, &headDim, true},
            {"window", PluginFieldType::kINT32, &window, false},
            {"qk_norm", PluginFieldType::kINT32, &qkNorm, false},
            {"eps", PluginFieldType::kFLOAT32, &eps, false},
        };
    }

    // "" when valid, else the reason.
    std::string validate() const
    {
        if (numHeads <= 0 || numKvHeads <= 0)
        {
            return "num_heads (" + std::to_string(numHeads) + ") and num_kv_heads (" + std::to_string(numKvHeads)
                + ") must be positive";
        }
        if (numHeads % numKvHeads != 0)
        {
            return "num_heads (" + std::to_string(numHeads) + ") must be a multiple of num_kv_heads ("
                + std::to_string(numKvHeads) + ")";
        }
        if (headDim != 64 && headDim != 128)
        {
            return "head_dim (" + std::to_string(headDim) + ") must be 64 or 128";
        }
        if (window < 0)
        {
            return "window (" + std::to_string(window) + ") must be >= 0 (0 disables the sliding window)";
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

} // namespace blockattn
} // namespace dflash

// Attributes (PluginFields) of DFlashBlockAttention and their validation.
#pragma once

#include "common/attributeChecks.h"
#include "common/pluginFields.h"

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
        return {
            requiredField("num_heads", numHeads),
            requiredField("num_kv_heads", numKvHeads),
            requiredField("head_dim", headDim),
            optionalField("window", window),
            optionalField("qk_norm", qkNorm),
            optionalField("eps", eps),
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
        std::string const windowError = window < 0
            ? "window (" + std::to_string(window) + ") must be >= 0 (0 disables the sliding window)"
            : "";
        return firstError({checkHeadDim(headDim), windowError, checkFlag("qk_norm", qkNorm), checkEps(eps)});
    }
};

} // namespace blockattn
} // namespace dflash

// Attributes (PluginFields) of DFlashContextKVAppend and their validation.
#pragma once

#include "common/attributeChecks.h"
#include "common/pluginFields.h"

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
        return {
            requiredField("num_kv_heads", numKvHeads),
            requiredField("head_dim", headDim),
            optionalField("qk_norm", qkNorm),
            optionalField("eps", eps),
        };
    }

    // "" when valid, else the reason.
    std::string validate() const
    {
        return firstError({checkPositive("num_kv_heads", numKvHeads), checkHeadDim(headDim),
            checkFlag("qk_norm", qkNorm), checkEps(eps)});
    }
};

} // namespace kvappend

} // namespace dflash

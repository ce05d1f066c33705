// Checks of attribute values that several plugins share. Each returns "" when the value is
// allowed, else the reason, naming the field.
#pragma once

#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace dflash
{

inline std::string checkPositive(char const* name, int32_t value)
{
    return value > 0 ? "" : std::string(name) + " (" + std::to_string(value) + ") must be positive";
}

inline std::string checkHeadDim(int32_t headDim)
{
    return headDim == 64 || headDim == 128 ? "" : "head_dim (" + std::to_string(headDim) + ") must be 64 or 128";
}

// A 0/1 switch such as qk_norm.
inline std::string checkFlag(char const* name, int32_t value)
{
    return value == 0 || value == 1 ? "" : std::string(name) + " (" + std::to_string(value) + ") must be 0 or 1";
}

inline std::string checkEps(float eps)
{
    return eps >= 0.0f && !std::isinf(eps) ? "" : "eps (" + std::to_string(eps) + ") must be finite and >= 0";
}

// The first non-empty reason, or "" when there is none.
inline std::string firstError(std::initializer_list<std::string> reasons)
{
    for (std::string const& reason : reasons)
    {
        if (!reason.empty())
        {
            return reason;
        }
    }
    return "";
}

} // namespace dflash

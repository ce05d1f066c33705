// Per-head RMSNorm and rotary embedding, shared by the attention and the cache-append plugins.
#pragma once

#include "common/floatTypes.h"
#include "common/hd.h"

#include <cmath>
#include <cstdint>

namespace dflash
{

// out = rope(rmsnorm(x) * weight) in fp32, rmsnorm skipped when !qkNorm. cosRow and sinRow are
// the RoPE table rows of the token's absolute position (headDim / 2 entries each); rotate-half
// layout: x1 = x[:d/2], x2 = x[d/2:], out = [x1 cos - x2 sin, x2 cos + x1 sin].
template <typename T>
HD inline void normRopeHead(T const* x, T const* weight, float const* cosRow, float const* sinRow, int32_t headDim,
    bool qkNorm, float eps, float* out)
{
    float inverseRms = 1.0f;
    if (qkNorm)
    {
        float sumSquares = 0.0f;
        for (int32_t d = 0; d < headDim; ++d)
        {
            float const v = toFloat(x[d]);
            sumSquares += v * v;
        }
        inverseRms = 1.0f / sqrtf(sumSquares / static_cast<float>(headDim) + eps);
    }
    int32_t const half = headDim / 2;
    for (int32_t d = 0; d < half; ++d)
    {
        float x1 = toFloat(x[d]) * inverseRms;
        float x2 = toFloat(x[d + half]) * inverseRms;
        if (qkNorm)
        {
            x1 *= toFloat(weight[d]);
            x2 *= toFloat(weight[d + half]);
        }
        out[d] = x1 * cosRow[d] - x2 * sinRow[d];
        out[d + half] = x2 * cosRow[d] + x1 * sinRow[d];
    }
}

} // namespace dflash

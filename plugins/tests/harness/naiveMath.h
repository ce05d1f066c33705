// Straightforward double-precision references for the harness's enqueue checks, written
// independently of the plugins' tiled math.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace harness
{

inline std::vector<float> randomVector(size_t count, std::mt19937& rng, float low = -1.0f, float high = 1.0f)
{
    std::uniform_real_distribution<float> dist(low, high);
    std::vector<float> v(count);
    for (float& x : v)
    {
        x = dist(rng);
    }
    return v;
}

// RoPE tables [maxPos][headDim / 2] with theta = 10000.
inline void ropeTables(int32_t maxPos, int32_t headDim, std::vector<float>& cosTable, std::vector<float>& sinTable)
{
    int32_t const half = headDim / 2;
    cosTable.resize(static_cast<size_t>(maxPos) * half);
    sinTable.resize(cosTable.size());
    for (int32_t p = 0; p < maxPos; ++p)
    {
        for (int32_t i = 0; i < half; ++i)
        {
            double const angle = p * std::pow(10000.0, -2.0 * i / headDim);
            cosTable[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(angle));
            sinTable[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(angle));
        }
    }
}

inline std::vector<double> naiveNormRope(float const* x, float const* weight, float const* cosTable,
    float const* sinTable, int32_t pos, int32_t headDim, bool qkNorm, double eps)
{
    std::vector<double> y(x, x + headDim);
    if (qkNorm)
    {
        double meanSquare = 0.0;
        for (double v : y)
        {
            meanSquare += v * v / headDim;
        }
        for (int32_t d = 0; d < headDim; ++d)
        {
            y[d] = y[d] / std::sqrt(meanSquare + eps) * weight[d];
        }
    }
    int32_t const half = headDim / 2;
    std::vector<double> out(headDim);
    for (int32_t d = 0; d < half; ++d)
    {
        double const c = cosTable[static_cast<size_t>(pos) * half + d];
        double const s = sinTable[static_cast<size_t>(pos) * half + d];
        out[d] = y[d] * c - y[d + half] * s;
        out[d + half] = y[d + half] * c + y[d] * s;
    }
    return out;
}

} // namespace harness

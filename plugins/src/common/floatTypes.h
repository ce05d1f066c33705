// Element types of the plugins' tensors and their conversions to and from fp32.
//
// Half and BFloat16 are 16-bit storage types with the same layout as CUDA's __half and
// __nv_bfloat16. Device code converts with the CUDA intrinsics; host code with the bit-exact
// round-to-nearest-even routines below, so both produce identical bits.
#pragma once

#include "common/hd.h"

#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace dflash
{

enum class ElemType : int32_t
{
    kFLOAT32 = 0,
    kFLOAT16 = 1,
    kBFLOAT16 = 2,
};

struct Half
{
    uint16_t bits;
};

struct BFloat16
{
    uint16_t bits;
};

HD inline float bitsToFloat(uint32_t bits)
{
#ifdef __CUDA_ARCH__
    return __uint_as_float(bits);
#else
    float f;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
#endif
}

HD inline uint32_t floatToBits(float f)
{
#ifdef __CUDA_ARCH__
    return __float_as_uint(f);
#else
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof(bits));
    return bits;
#endif
}

HD inline float quietNaN()
{
    return bitsToFloat(0x7FC00000u);
}

// Rounds the low `shift` bits away from `value`, to nearest, ties to even.
HD inline uint32_t roundShiftRightEven(uint32_t value, uint32_t shift)
{
    uint32_t const kept = value >> shift;
    uint32_t const rest = value & ((1u << shift) - 1u);
    uint32_t const halfway = 1u << (shift - 1u);
    return kept + ((rest > halfway || (rest == halfway && (kept & 1u))) ? 1u : 0u);
}

HD inline uint16_t floatToHalfBits(float f)
{
#ifdef __CUDA_ARCH__
    return __half_as_ushort(__float2half_rn(f));
#else
    uint32_t const x = floatToBits(f);
    uint32_t const sign = (x >> 16) & 0x8000u;
    uint32_t const magnitude = x & 0x7FFFFFFFu;
    if (magnitude > 0x7F800000u)
    {
        return static_cast<uint16_t>(sign | 0x7E00u);
    }
    uint32_t const exponent = magnitude >> 23;
    if (exponent >= 143) // |f| >= 2^16 (or inf): beyond the largest half
    {
        return static_cast<uint16_t>(sign | 0x7C00u);
    }
    if (exponent >= 113) // normal half; a carry out of the mantissa rounds up the exponent, up to inf
    {
        uint32_t const rebased = ((exponent - 112) << 23) | (magnitude & 0x7FFFFFu);
        return static_cast<uint16_t>(sign | roundShiftRightEven(rebased, 13));
    }
    if (exponent < 102) // |f| < 2^-25 rounds to zero
    {
        return static_cast<uint16_t>(sign);
    }
    // Subnormal half: mantissa = |f| * 2^24, with the implicit bit made explicit.
    uint32_t const mantissa = (magnitude & 0x7FFFFFu) | 0x800000u;
    return static_cast<uint16_t>(sign | roundShiftRightEven(mantissa, 126 - exponent));
#endif
}

HD inline float halfBitsToFloat(uint16_t h)
{
#ifdef __CUDA_ARCH__
    return __half2float(__ushort_as_half(h));
#else
    uint32_t const sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    uint32_t const exponent = (h >> 10) & 0x1Fu;
    uint32_t const mantissa = h & 0x3FFu;
    if (exponent == 0)
    {
        float const value = static_cast<float>(mantissa) * 5.9604644775390625e-8f; // 2^-24, exact
        return bitsToFloat(sign | floatToBits(value));
    }
    if (exponent == 31)
    {
        return bitsToFloat(sign | 0x7F800000u | (mantissa << 13));
    }
    return bitsToFloat(sign | ((exponent + 112) << 23) | (mantissa << 13));
#endif
}

HD inline uint16_t floatToBFloat16Bits(float f)
{
#ifdef __CUDA_ARCH__
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
#else
    uint32_t const x = floatToBits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u)
    {
        return static_cast<uint16_t>((x >> 16) | 0x40u);
    }
    return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
#endif
}

HD inline float bfloat16BitsToFloat(uint16_t b)
{
    return bitsToFloat(static_cast<uint32_t>(b) << 16);
}

HD inline float toFloat(float v)
{
    return v;
}

HD inline float toFloat(Half v)
{
    return halfBitsToFloat(v.bits);
}

HD inline float toFloat(BFloat16 v)
{
    return bfloat16BitsToFloat(v.bits);
}

template <typename T>
HD inline T fromFloat(float v);

template <>
HD inline float fromFloat<float>(float v)
{
    return v;
}

template <>
HD inline Half fromFloat<Half>(float v)
{
    return Half{floatToHalfBits(v)};
}

template <>
HD inline BFloat16 fromFloat<BFloat16>(float v)
{
    return BFloat16{floatToBFloat16Bits(v)};
}

} // namespace dflash

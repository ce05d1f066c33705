// Maps the runtime element type (and head size) of a call to the compile-time types of the math.
#pragma once

#include "common/floatTypes.h"

#include <cstdint>

namespace dflash
{

template <typename T>
struct TypeTag
{
    using type = T;
};

template <int32_t N>
struct IntTag
{
    static constexpr int32_t value = N;
};

// Calls fn(TypeTag<T>{}) for the element type; returns -1 for an unsupported type.
template <typename Fn>
int32_t dispatchElemType(ElemType type, Fn&& fn)
{
    switch (type)
    {
    case ElemType::kFLOAT32: return fn(TypeTag<float>{});
    case ElemType::kFLOAT16: return fn(TypeTag<Half>{});
    case ElemType::kBFLOAT16: return fn(TypeTag<BFloat16>{});
    }
    return -1;
}

// Calls fn(TypeTag<T>{}, IntTag<D>{}) for head sizes 64 and 128; returns -1 otherwise.
template <typename Fn>
int32_t dispatchElemTypeAndHeadDim(ElemType type, int32_t headDim, Fn&& fn)
{
    return dispatchElemType(type, [&](auto typeTag) {
        switch (headDim)
        {
        case 64: return fn(typeTag, IntTag<64>{});
        case 128: return fn(typeTag, IntTag<128>{});
        }
        return -1;
    });
}

} // namespace dflash

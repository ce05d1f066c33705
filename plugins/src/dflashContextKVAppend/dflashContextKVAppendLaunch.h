// Launch entry point of DFlashContextKVAppend, defined by dflashContextKVAppendKernels.cu in CUDA
// builds and by dflashContextKVAppendHost.cpp in host builds.
#pragma once

#include "common/floatTypes.h"
#include "dflashContextKVAppend/dflashContextKVAppendMath.h"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace dflash
{
namespace kvappend
{

struct RawTensors
{
    void const* kv;
    void const* kNormWeight;
    float const* ropeCos;
    float const* ropeSin;
    void const* kCacheIn;
    void const* vCacheIn;
    int32_t const* ctxLens;
    int32_t const* newLens;
    void* kCacheOut; // may alias kCacheIn; otherwise the input cache is copied first
    void* vCacheOut;
};

template <typename T>
Tensors<T> typed(RawTensors const& r)
{
    return Tensors<T>{static_cast<T const*>(r.kv), static_cast<T const*>(r.kNormWeight), r.ropeCos, r.ropeSin,
        r.ctxLens, r.newLens, static_cast<T*>(r.kCacheOut), static_cast<T*>(r.vCacheOut)};
}

inline size_t cacheBytes(Dims const& dims, size_t elemSize)
{
    return static_cast<size_t>(dims.batch) * dims.numKvHeads * dims.cacheLen * dims.headDim * elemSize;
}

int32_t launchContextKvAppend(ElemType type, Dims const& dims, RawTensors const& tensors, cudaStream_t stream);

} // namespace kvappend
} // namespace dflash

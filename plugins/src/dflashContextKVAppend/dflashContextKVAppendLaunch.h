// Launch entry point of DFlashContextKVAppend (contiguous and paged caches), defined by
// dflashContextKVAppendKernels.cu in CUDA builds and by dflashContextKVAppendHost.cpp in host builds.
// The cache is updated in place: the plugin refuses to run when TensorRT did not alias its outputs
// to the cache inputs, rather than copying the whole cache.
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

struct CacheLayout
{
    bool paged;
    int32_t numPages;      // paged only
    int32_t tokensPerPage; // paged only
    int32_t maxPages;      // paged only
};

struct RawTensors
{
    void const* kv;
    void const* kNormWeight;
    float const* ropeCos;
    float const* ropeSin;
    void* kCache; // contiguous: k_cache; paged: kv_pool
    void* vCache; // contiguous: v_cache; paged: unused
    int32_t const* pageTable;
    int32_t const* ctxLens;
    int32_t const* newLens;
};

template <typename T>
Tensors<T, ContiguousKv<T*>> contiguousTensors(RawTensors const& r, Dims const& dims)
{
    return {static_cast<T const*>(r.kv), static_cast<T const*>(r.kNormWeight), r.ropeCos, r.ropeSin, r.ctxLens,
        r.newLens,
        ContiguousKv<T*>{static_cast<T*>(r.kCache), static_cast<T*>(r.vCache), dims.numKvHeads, dims.cacheLen,
            dims.headDim}};
}

template <typename T>
Tensors<T, PagedKv<T*>> pagedTensors(RawTensors const& r, Dims const& dims, CacheLayout const& layout)
{
    T* const pool = static_cast<T*>(r.kCache);
    int64_t const half = static_cast<int64_t>(layout.numPages) * layout.tokensPerPage * dims.numKvHeads * dims.headDim;
    return {static_cast<T const*>(r.kv), static_cast<T const*>(r.kNormWeight), r.ropeCos, r.ropeSin, r.ctxLens,
        r.newLens,
        PagedKv<T*>{pool, pool + half, r.pageTable, layout.numPages, layout.tokensPerPage, layout.maxPages,
            dims.numKvHeads, dims.headDim}};
}

int32_t launchContextKvAppend(
    ElemType type, Dims const& dims, CacheLayout const& layout, RawTensors const& tensors, cudaStream_t stream);

} // namespace kvappend
} // namespace dflash

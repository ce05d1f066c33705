// DFlashContextKVAppend math (contiguous and paged caches), written once for the CUDA kernels and
// the host build: k-norm and RoPE of newly committed context keys and their scatter, with the raw
// values, into a layer's K/V cache at each sequence's current length. The cache is updated in place.
#pragma once

#include "common/ctaGroup.h"
#include "common/floatTypes.h"
#include "common/hd.h"
#include "common/kvCache.h"

#include <cmath>
#include <cstdint>

namespace dflash
{
namespace kvappend
{

struct Dims
{
    int32_t batch;
    int32_t newLen; // N, rows of the kv input per sequence
    int32_t numKvHeads;
    int32_t headDim;
    int32_t cacheLen; // capacity of a sequence (paged: maxPages * tokensPerPage)
    int32_t maxPos;
    int32_t qkNorm;
    float eps;
};

// Cache is ContiguousKv<T*> or PagedKv<T*> (common/kvCache.h).
template <typename T, typename Cache>
struct Tensors
{
    T const* kv; // [batch][newLen][2 * numKvHeads * headDim]: k heads then v heads
    T const* kNormWeight;
    float const* ropeCos;
    float const* ropeSin;
    int32_t const* ctxLens;
    int32_t const* newLens;
    Cache cache; // updated in place
};

// Row `row` of a sequence lands at position ctxLen + row if it is one of the sequence's newLen
// valid rows and the position fits both the cache and the RoPE tables.
HD inline bool rowIsWritten(int32_t ctxLen, int32_t newLen, int32_t row, Dims const& dims)
{
    int32_t const pos = ctxLen + row;
    return ctxLen >= 0 && row < newLen && pos < dims.cacheLen && pos < dims.maxPos;
}

HD inline int32_t smemFloats(int32_t headDim)
{
    return 2 * headDim;
}

// One CTA per (seq, kvHead, row), headDim threads on the device; smem holds smemFloats(D) floats.
// The key's RMSNorm is a tree reduction over the CTA's threads and its RoPE one element per thread.
template <typename T, int32_t D, typename Cache>
HD void contextKvAppendCta(Dims const& dims, Tensors<T, Cache> const& t, int32_t seq, int32_t kvHead, int32_t row,
    float* smem)
{
    static_assert((D & (D - 1)) == 0, "the norm's tree reduction needs a power-of-two head size");
    CtaGroup const group;
    constexpr int32_t half = D / 2;
    countCta(false);
    int32_t const ctxLen = t.ctxLens[seq];
    if (!rowIsWritten(ctxLen, t.newLens[seq], row, dims))
    {
        return;
    }
    int32_t const pos = ctxLen + row;
    int64_t const kDst = t.cache.kOffset(seq, kvHead, pos);
    int64_t const vDst = t.cache.vOffset(seq, kvHead, pos);
    if (kDst == kNoSlot || vDst == kNoSlot)
    {
        return; // a paged sequence whose page table has no page for this position
    }
    countCta(true);
    T const* const token = t.kv + (static_cast<int64_t>(seq) * dims.newLen + row) * 2 * dims.numKvHeads * D;
    T const* const key = token + static_cast<int64_t>(kvHead) * D;
    T const* const value = token + static_cast<int64_t>(dims.numKvHeads + kvHead) * D;
    float* const x = smem;       // [D] the raw key in fp32
    float* const squares = smem + D; // [D] reduced in place to the sum of squares
    bool const qkNorm = dims.qkNorm != 0;

    group.forEach(D, [&](int32_t d) {
        float const v = toFloat(key[d]);
        x[d] = v;
        squares[d] = v * v;
    });
    group.sync();
    for (int32_t stride = half; stride > 0; stride /= 2)
    {
        group.forEach(stride, [&](int32_t d) { squares[d] += squares[d + stride]; });
        group.sync();
    }

    int64_t const ropeRow = static_cast<int64_t>(pos) * half;
    group.forEach(D, [&](int32_t d) {
        float const inverseRms = qkNorm ? 1.0f / sqrtf(squares[0] / static_cast<float>(D) + dims.eps) : 1.0f;
        int32_t const i = d < half ? d : d - half; // the rotation pair (i, i + half)
        float x1 = x[i] * inverseRms;
        float x2 = x[i + half] * inverseRms;
        if (qkNorm)
        {
            x1 *= toFloat(t.kNormWeight[i]);
            x2 *= toFloat(t.kNormWeight[i + half]);
        }
        float const c = t.ropeCos[ropeRow + i];
        float const s = t.ropeSin[ropeRow + i];
        t.cache.k[kDst + d] = fromFloat<T>(d < half ? x1 * c - x2 * s : x2 * c + x1 * s);
        t.cache.v[vDst + d] = value[d];
    });
}

} // namespace kvappend
} // namespace dflash

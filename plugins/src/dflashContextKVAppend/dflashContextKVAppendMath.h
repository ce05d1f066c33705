// DFlashContextKVAppend math, written once for the CUDA kernels and the host build: k-norm and
// RoPE of newly committed context keys and their scatter, with the raw values, into a layer's
// K/V cache at each sequence's current length.
#pragma once

#include "common/ctaGroup.h"
#include "common/floatTypes.h"
#include "common/hd.h"
#include "common/normRope.h"

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
    int32_t cacheLen; // S
    int32_t maxPos;
    int32_t qkNorm;
    float eps;
};

template <typename T>
struct Tensors
{
    T const* kv; // [batch][newLen][2 * numKvHeads * headDim]: k heads then v heads
    T const* kNormWeight;
    float const* ropeCos;
    float const* ropeSin;
    int32_t const* ctxLens;
    int32_t const* newLens;
    T* kCache; // [batch][numKvHeads][cacheLen][headDim], updated in place
    T* vCache;
};

// Row `row` of a sequence lands at position ctxLen + row if it is one of the sequence's newLen
// valid rows and the position fits both the cache and the RoPE tables.
HD inline bool rowIsWritten(int32_t ctxLen, int32_t newLen, int32_t row, Dims const& dims)
{
    int32_t const pos = ctxLen + row;
    return ctxLen >= 0 && row < newLen && pos < dims.cacheLen && pos < dims.maxPos;
}

// One CTA per (seq, kvHead, row); smem holds headDim floats.
template <typename T, int32_t D>
HD void contextKvAppendCta(Dims const& dims, Tensors<T> const& t, int32_t seq, int32_t kvHead, int32_t row, float* smem)
{
    CtaGroup const group;
    int32_t const ctxLen = t.ctxLens[seq];
    if (!rowIsWritten(ctxLen, t.newLens[seq], row, dims))
    {
        return;
    }
    int32_t const pos = ctxLen + row;
    T const* const token = t.kv + (static_cast<int64_t>(seq) * dims.newLen + row) * 2 * dims.numKvHeads * D;
    int64_t const ropeRow = static_cast<int64_t>(pos) * (D / 2);
    group.forEach(1, [&](int32_t) {
        normRopeHead(token + static_cast<int64_t>(kvHead) * D, t.kNormWeight, t.ropeCos + ropeRow, t.ropeSin + ropeRow,
            D, dims.qkNorm != 0, dims.eps, smem);
    });
    group.sync();
    int64_t const dst = ((static_cast<int64_t>(seq) * dims.numKvHeads + kvHead) * dims.cacheLen + pos) * D;
    T const* const value = token + static_cast<int64_t>(dims.numKvHeads + kvHead) * D;
    group.forEach(D, [&](int32_t d) {
        t.kCache[dst + d] = fromFloat<T>(smem[d]);
        t.vCache[dst + d] = value[d];
    });
}

} // namespace kvappend
} // namespace dflash

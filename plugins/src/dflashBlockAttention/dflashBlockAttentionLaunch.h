// Host-side planning, device checks and the launch entry point of DFlashBlockAttention (contiguous
// and paged caches). The launch is defined by dflashBlockAttentionKernels.cu in CUDA builds and by
// dflashBlockAttentionHost.cpp in host builds.
#pragma once

#include "common/deviceInfo.h"
#include "common/floatTypes.h"
#include "dflashBlockAttention/dflashBlockAttentionMath.h"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace dflash
{
namespace blockattn
{

constexpr int32_t kMinKeysPerSplit = 256; // fewer keys per split cost more in partials than they gain
constexpr int32_t kMaxSplits = 32;
constexpr int32_t kCtasPerSmTarget = 2; // split keys until the grid has about this many CTAs per SM

// The cache operands of a call: contiguous (kCache, vCache) or paged (pool in kCache, pageTable).
struct CacheLayout
{
    bool paged;
    int32_t numPages;      // paged only
    int32_t tokensPerPage; // paged only
    int32_t maxPages;      // paged only: page-table entries per sequence
};

struct RawTensors
{
    void const* qkv;
    void const* qNormWeight;
    void const* kNormWeight;
    float const* ropeCos;
    float const* ropeSin;
    void const* kCache; // contiguous: k_cache; paged: kv_pool
    void const* vCache; // contiguous: v_cache; paged: unused
    int32_t const* pageTable;
    int32_t const* ctxLens;
    void* out;
};

template <typename T>
Tensors<T, ContiguousKv<T const*>> contiguousTensors(RawTensors const& r, Dims const& dims)
{
    return {static_cast<T const*>(r.qkv), static_cast<T const*>(r.qNormWeight), static_cast<T const*>(r.kNormWeight),
        r.ropeCos, r.ropeSin,
        ContiguousKv<T const*>{static_cast<T const*>(r.kCache), static_cast<T const*>(r.vCache), dims.numKvHeads,
            dims.cacheLen, dims.headDim},
        r.ctxLens, static_cast<T*>(r.out)};
}

template <typename T>
Tensors<T, PagedKv<T const*>> pagedTensors(RawTensors const& r, Dims const& dims, CacheLayout const& layout)
{
    T const* const pool = static_cast<T const*>(r.kCache);
    int64_t const half = static_cast<int64_t>(layout.numPages) * layout.tokensPerPage * dims.numKvHeads * dims.headDim;
    return {static_cast<T const*>(r.qkv), static_cast<T const*>(r.qNormWeight), static_cast<T const*>(r.kNormWeight),
        r.ropeCos, r.ropeSin,
        PagedKv<T const*>{pool, pool + half, r.pageTable, layout.numPages, layout.tokensPerPage, layout.maxPages,
            dims.numKvHeads, dims.headDim},
        r.ctxLens, static_cast<T*>(r.out)};
}

inline int32_t ceilDiv(int32_t a, int32_t b)
{
    return (a + b - 1) / b;
}

inline int64_t totalRows(Dims const& dims)
{
    return static_cast<int64_t>(dims.batch) * dims.numHeads * dims.blockLen;
}

inline size_t smemBytes(int32_t rowsPerTile, int32_t headDim)
{
    return static_cast<size_t>(smemFloats(rowsPerTile, headDim)) * sizeof(float);
}

// The largest row tile (64, 32, ..., 1) whose shared memory fits one CTA of the device; 0 if none.
inline int32_t rowTileCap(int32_t headDim, int32_t maxSmemPerCta)
{
    for (int32_t cap = kRowTile; cap >= 1; cap /= 2)
    {
        if (smemBytes(cap, headDim) <= static_cast<size_t>(maxSmemPerCta))
        {
            return cap;
        }
    }
    return 0;
}

// "" when the kernels can run this call's head size on the device, else why not.
inline std::string checkDevice(DeviceInfo const& device, int32_t headDim)
{
    std::string const error = checkComputeCapability(device);
    if (!error.empty())
    {
        return error;
    }
    if (rowTileCap(headDim, device.maxSmemPerCta) == 0)
    {
        return "the device allows " + std::to_string(device.maxSmemPerCta) + " bytes of shared memory per CTA; head_dim "
            + std::to_string(headDim) + " needs at least " + std::to_string(smemBytes(1, headDim));
    }
    return "";
}

// The launch of one call. Row tiles are as large as the device's shared memory per CTA allows.
// Keys are split only while the grid has fewer than kCtasPerSmTarget CTAs per SM (batch x kv heads
// x row tiles CTAs before splitting), never below kMinKeysPerSplit keys per split (counted on the
// longest visible key range the shapes allow; each CTA then splits its own sequence's actual range)
// and never into more than kMaxSplits. keysPerSplitOverride > 0 forces the split size instead
// (tests use it to exercise the merge on short contexts). maxRowsPerTile < kRowTile caps the tile
// (the workspace bound uses it).
inline Plan makePlan(Dims const& dims, DeviceInfo const& device, int32_t keysPerSplitOverride = 0,
    int32_t maxRowsPerTile = kRowTile)
{
    Plan plan{};
    plan.groupSize = dims.numHeads / dims.numKvHeads;
    plan.rowsPerGroup = plan.groupSize * dims.blockLen;
    int32_t const cap = minI(maxI(rowTileCap(dims.headDim, device.maxSmemPerCta), 1), maxRowsPerTile);
    plan.rowsPerTile = maxI(1, minI(plan.rowsPerGroup, cap));
    plan.rowTiles = maxI(1, ceilDiv(plan.rowsPerGroup, plan.rowsPerTile));
    int32_t maxKeys = dims.cacheLen + dims.blockLen;
    if (dims.window > 0)
    {
        maxKeys = minI(maxKeys, dims.window - 1 + dims.blockLen);
    }
    maxKeys = maxI(maxKeys, 1);
    if (keysPerSplitOverride > 0)
    {
        plan.minKeysPerSplit = ceilDiv(keysPerSplitOverride, kKeyTile) * kKeyTile;
        plan.numSplits = ceilDiv(maxKeys, plan.minKeysPerSplit);
        return plan;
    }
    plan.minKeysPerSplit = kMinKeysPerSplit;
    int64_t const baseCtas = static_cast<int64_t>(maxI(dims.batch, 1)) * dims.numKvHeads * plan.rowTiles;
    int64_t const targetCtas = static_cast<int64_t>(minI(maxI(device.smCount, 1), kMaxSmCount)) * kCtasPerSmTarget;
    int64_t const byGrid = targetCtas / baseCtas;
    int32_t const byKeys = ceilDiv(maxKeys, kMinKeysPerSplit);
    plan.numSplits = static_cast<int32_t>(maxI(1, minI(minI(kMaxSplits, byKeys), static_cast<int32_t>(minI(byGrid, kMaxSplits)))));
    return plan;
}

inline size_t counterCount(Dims const& dims, Plan const& plan)
{
    return static_cast<size_t>(dims.batch) * dims.numKvHeads * plan.rowTiles;
}

inline size_t partialFloats(Dims const& dims, Plan const& plan)
{
    return static_cast<size_t>(totalRows(dims)) * plan.numSplits * (dims.headDim + 2);
}

inline size_t workspaceBytes(Dims const& dims, Plan const& plan)
{
    if (plan.numSplits == 1)
    {
        return 0;
    }
    return partialFloats(dims, plan) * sizeof(float) + counterCount(dims, plan) * sizeof(int32_t);
}

// The split partials and semaphores laid out in a workspace of workspaceBytes(dims, plan).
inline Partials workspacePartials(void* workspace, Dims const& dims, Plan const& plan)
{
    if (plan.numSplits == 1)
    {
        return Partials{};
    }
    auto* const base = static_cast<float*>(workspace);
    int64_t const slots = totalRows(dims) * plan.numSplits;
    return Partials{base, base + slots, base + 2 * slots, reinterpret_cast<int32_t*>(base + partialFloats(dims, plan))};
}

// A workspace that fits every call whose extents are at most maxDims' (batch 1..max, block 1..max,
// capacity up to max) on any device: the most any such plan needs, planned for kMaxSmCount SMs and
// every row-tile size. Bounded by about kMaxSmCount * kCtasPerSmTarget * kRowTile rows of partials
// whatever the batch and context.
inline size_t maxWorkspaceBytes(Dims const& maxDims)
{
    DeviceInfo device = largestDevice();
    size_t most = 0;
    for (int32_t cap = kRowTile; cap >= 1; cap /= 2)
    {
        for (int32_t batch = 1; batch <= maxDims.batch; ++batch)
        {
            for (int32_t block = 1; block <= maxDims.blockLen; ++block)
            {
                Dims d = maxDims;
                d.batch = batch;
                d.blockLen = block;
                size_t const bytes = workspaceBytes(d, makePlan(d, device, 0, cap));
                most = bytes > most ? bytes : most;
            }
        }
    }
    return most;
}

// Runs the attention of one call, planned with makePlan(dims, device, ...) for the device the
// stream runs on. Returns 0 on success; a nonzero status otherwise.
int32_t launchBlockAttention(ElemType type, Dims const& dims, CacheLayout const& layout, RawTensors const& tensors,
    Plan const& plan, DeviceInfo const& device, void* workspace, cudaStream_t stream);

} // namespace blockattn
} // namespace dflash

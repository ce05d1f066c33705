// Host-side planning and the launch entry point of DFlashBlockAttention. The launch is defined by
// dflashBlockAttentionKernels.cu in CUDA builds and by dflashBlockAttentionHost.cpp in host builds.
#pragma once

#include "common/floatTypes.h"
#include "dflashBlockAttention/dflashBlockAttentionMath.h"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace dflash
{
namespace blockattn
{

constexpr int32_t kMinKeysPerSplit = 256;
constexpr int32_t kMaxSplits = 32;

struct RawTensors
{
    void const* qkv;
    void const* qNormWeight;
    void const* kNormWeight;
    float const* ropeCos;
    float const* ropeSin;
    void const* kCache;
    void const* vCache;
    int32_t const* ctxLens;
    void* out;
};

template <typename T>
Tensors<T> typed(RawTensors const& r)
{
    return Tensors<T>{static_cast<T const*>(r.qkv), static_cast<T const*>(r.qNormWeight),
        static_cast<T const*>(r.kNormWeight), r.ropeCos, r.ropeSin, static_cast<T const*>(r.kCache),
        static_cast<T const*>(r.vCache), r.ctxLens, static_cast<T*>(r.out)};
}

inline int32_t ceilDiv(int32_t a, int32_t b)
{
    return (a + b - 1) / b;
}

inline int64_t totalRows(Dims const& dims)
{
    return static_cast<int64_t>(dims.batch) * dims.numHeads * dims.blockLen;
}

// Keys are split so that the grid has enough CTAs for long contexts. keysPerSplitOverride > 0
// forces a split size (tests use it to exercise the merge on short contexts). Without an
// override the number of splits grows monotonically with cacheLen + blockLen, so a workspace
// sized for the largest shapes fits every smaller call.
inline Plan makePlan(Dims const& dims, int32_t keysPerSplitOverride = 0)
{
    Plan plan{};
    plan.groupSize = dims.numHeads / dims.numKvHeads;
    plan.rowsPerGroup = plan.groupSize * dims.blockLen;
    plan.rowsPerTile = plan.rowsPerGroup < kRowTile ? (plan.rowsPerGroup > 0 ? plan.rowsPerGroup : 1) : kRowTile;
    plan.rowTiles = ceilDiv(plan.rowsPerGroup, plan.rowsPerTile);
    int32_t const maxKeys = dims.cacheLen + dims.blockLen;
    if (keysPerSplitOverride > 0)
    {
        plan.keysPerSplit = ceilDiv(keysPerSplitOverride, kKeyTile) * kKeyTile;
        plan.numSplits = ceilDiv(maxKeys, plan.keysPerSplit);
    }
    else
    {
        int32_t const splits = ceilDiv(maxKeys, kMinKeysPerSplit);
        plan.numSplits = splits < 1 ? 1 : (splits > kMaxSplits ? kMaxSplits : splits);
        plan.keysPerSplit = ceilDiv(ceilDiv(maxKeys, plan.numSplits), kKeyTile) * kKeyTile;
    }
    return plan;
}

inline size_t workspaceBytes(Dims const& dims, Plan const& plan)
{
    if (plan.numSplits == 1)
    {
        return 0;
    }
    return static_cast<size_t>(totalRows(dims)) * plan.numSplits * (dims.headDim + 2) * sizeof(float);
}

// The split partials laid out in a workspace of workspaceBytes(dims, plan); none with one split.
inline Partials workspacePartials(void* workspace, Dims const& dims, Plan const& plan)
{
    return plan.numSplits > 1 ? carvePartials(static_cast<float*>(workspace), totalRows(dims), plan.numSplits)
                              : Partials{};
}

// Runs the attention of one call. Returns 0 on success; a nonzero status otherwise.
int32_t launchBlockAttention(ElemType type, Dims const& dims, RawTensors const& tensors, Plan const& plan,
    void* workspace, cudaStream_t stream);

} // namespace blockattn
} // namespace dflash

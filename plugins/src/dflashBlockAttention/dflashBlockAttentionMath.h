// DFlashBlockAttention math, written once for the CUDA kernels and the host build.
//
// One call attends the B query tokens of a drafted block of every sequence to that sequence's
// cached context keys plus the block's own keys (bidirectional inside the block, optional sliding
// window). Positions: context key j sits at position j and block token i at ctxLen + i, so the
// virtual key index j in [0, ctxLen + B) — context keys first, then block keys — is also the key's
// position.
//
// Work decomposition (see plugins/README.md): a CTA owns one (sequence, kv head, row tile, key
// split). Its rows are the query heads of the kv head's GQA group times the block's queries, so
// every K/V element it loads serves all of them. The launch fixes the most splits a row tile may
// use; each CTA cuts its sequence's actual visible key range into as few of them as needed and
// exits at once when its split is empty. The CTA that finishes a row tile's splits last (a
// semaphore in global memory) merges them: there is no second kernel.
#pragma once

#include "common/ctaGroup.h"
#include "common/floatTypes.h"
#include "common/hd.h"
#include "common/kvCache.h"
#include "common/normRope.h"

#include <cmath>
#include <cstdint>

namespace dflash
{
namespace blockattn
{

constexpr int32_t kKeyTile = 32; // keys staged in shared memory per step
constexpr int32_t kRowTile = 64; // query rows (group heads x block queries) per CTA at most

struct Dims
{
    int32_t batch;
    int32_t blockLen;
    int32_t numHeads;
    int32_t numKvHeads;
    int32_t headDim;
    int32_t cacheLen; // capacity of a sequence's context cache (paged: maxPages * tokensPerPage)
    int32_t maxPos;   // rows of the RoPE tables
    int32_t window;   // 0: no sliding window
    int32_t qkNorm;
    float eps;
};

// Cache is ContiguousKv<T const*> or PagedKv<T const*> (common/kvCache.h).
template <typename T, typename Cache>
struct Tensors
{
    T const* qkv;
    T const* qNormWeight;
    T const* kNormWeight;
    float const* ropeCos;
    float const* ropeSin;
    Cache cache;
    int32_t const* ctxLens;
    T* out;
};

struct Plan
{
    int32_t groupSize;       // query heads per kv head
    int32_t rowsPerGroup;    // groupSize * blockLen
    int32_t rowsPerTile;     // chosen so that the CTA's shared memory fits the device
    int32_t rowTiles;
    int32_t numSplits;       // key splits launched per row tile (the most a sequence may use)
    int32_t minKeysPerSplit; // a sequence uses min(numSplits, ceil(keys / minKeysPerSplit)) splits
};

// Split partials and the per-row-tile semaphores, laid out in the plugin's workspace.
struct Partials
{
    float* maxes;      // [rows][numSplits]
    float* sums;       // [rows][numSplits]
    float* accs;       // [rows][numSplits][headDim]
    int32_t* counters; // [batch][numKvHeads][rowTiles], zeroed before the launch
};

HD inline int32_t ceilDivHD(int32_t a, int32_t b)
{
    return (a + b - 1) / b;
}

template <typename Cache>
HD inline bool sequenceIsValid(int32_t seq, int32_t ctxLen, Dims const& dims, Cache const& cache)
{
    return ctxLen >= 0 && ctxLen + dims.blockLen <= dims.maxPos && cache.prefixUsable(seq, ctxLen);
}

HD inline bool keyVisible(int32_t queryPos, int32_t keyPos, int32_t window)
{
    int32_t const distance = queryPos > keyPos ? queryPos - keyPos : keyPos - queryPos;
    return window <= 0 || distance < window;
}

// First key that some query of the block can see: the window ends at ctxLen - window + 1.
HD inline int32_t firstVisibleKey(int32_t ctxLen, int32_t window)
{
    int32_t const first = ctxLen - window + 1;
    return (window > 0 && first > 0) ? first : 0;
}

// The keys [begin, end) of split `split` of a sequence, and how many splits the sequence uses.
struct SplitRange
{
    int32_t begin;
    int32_t end;
    int32_t used;
};

HD inline SplitRange splitRange(int32_t ctxLen, Dims const& dims, Plan const& plan, int32_t split)
{
    int32_t const keyBegin = firstVisibleKey(ctxLen, dims.window);
    int32_t const keyEnd = ctxLen + dims.blockLen;
    int32_t const keys = keyEnd - keyBegin; // >= blockLen >= 1
    int32_t used = minI(plan.numSplits, ceilDivHD(keys, plan.minKeysPerSplit));
    int32_t const keysPerSplit = ceilDivHD(ceilDivHD(keys, used), kKeyTile) * kKeyTile;
    used = ceilDivHD(keys, keysPerSplit); // no empty split
    int32_t const begin = keyBegin + split * keysPerSplit;
    return SplitRange{begin, minI(keyEnd, begin + keysPerSplit), used};
}

HD inline float scaledDot(float const* q, float const* k, int32_t headDim, float scale)
{
    float acc = 0.0f;
    for (int32_t d = 0; d < headDim; ++d)
    {
        acc += q[d] * k[d];
    }
    return acc * scale;
}

// Online softmax over one tile of scores (invisible keys hold -inf). Replaces the scores by their
// weights relative to the new running max, updates the running max and sum, and returns the
// factor by which the running output accumulator must be rescaled.
HD inline float softmaxTileUpdate(float* scores, int32_t count, float& runningMax, float& runningSum)
{
    float newMax = runningMax;
    for (int32_t j = 0; j < count; ++j)
    {
        newMax = fmaxf(newMax, scores[j]);
    }
    if (newMax == -INFINITY) // nothing visible so far
    {
        for (int32_t j = 0; j < count; ++j)
        {
            scores[j] = 0.0f;
        }
        return 1.0f;
    }
    float const rescale = expf(runningMax - newMax);
    float tileSum = 0.0f;
    for (int32_t j = 0; j < count; ++j)
    {
        float const weight = expf(scores[j] - newMax);
        scores[j] = weight;
        tileSum += weight;
    }
    runningSum = runningSum * rescale + tileSum;
    runningMax = newMax;
    return rescale;
}

HD inline float accumulateElement(
    float acc, float rescale, float const* weights, float const* valueColumn, int32_t valueStride, int32_t count)
{
    acc *= rescale;
    for (int32_t j = 0; j < count; ++j)
    {
        acc += weights[j] * valueColumn[j * valueStride];
    }
    return acc;
}

// Combines the key splits of one output element, reading what other CTAs wrote. Every query sees
// at least its own block key, so some split has a finite max and the denominator is positive; a
// split that saw no visible key (max -inf, sum and accumulator 0) gets weight exp(-inf) = 0.
HD inline float mergeSplits(
    float const* maxes, float const* sums, float const* accs, int32_t accStride, int32_t numSplits)
{
    float globalMax = -INFINITY;
    for (int32_t s = 0; s < numSplits; ++s)
    {
        globalMax = fmaxf(globalMax, loadFromOtherCta(maxes + s));
    }
    float numerator = 0.0f;
    float denominator = 0.0f;
    for (int32_t s = 0; s < numSplits; ++s)
    {
        float const weight = expf(loadFromOtherCta(maxes + s) - globalMax);
        numerator += weight * loadFromOtherCta(accs + s * accStride);
        denominator += weight * loadFromOtherCta(sums + s);
    }
    return numerator / denominator;
}

// Shared memory of one CTA; rows are padded to headDim + 1 floats to avoid bank conflicts.
struct Smem
{
    float* q;        // [rowsPerTile][headDim + 1] normed, roped queries
    float* acc;      // [rowsPerTile][headDim + 1] unnormalised outputs
    float* k;        // [kKeyTile][headDim + 1]
    float* v;        // [kKeyTile][headDim + 1]
    float* weights;  // [rowsPerTile][kKeyTile + 1] scores, then softmax weights
    float* rowMax;   // [rowsPerTile]
    float* rowSum;   // [rowsPerTile]
    float* rescale;  // [rowsPerTile]
    float* flag;     // [1] the semaphore's answer
};

HD inline int32_t smemFloats(int32_t rowsPerTile, int32_t headDim)
{
    int32_t const ld = headDim + 1;
    return 2 * rowsPerTile * ld + 2 * kKeyTile * ld + rowsPerTile * (kKeyTile + 1) + 3 * rowsPerTile + 1;
}

HD inline Smem carveSmem(float* base, int32_t rowsPerTile, int32_t headDim)
{
    int32_t const ld = headDim + 1;
    Smem s;
    s.q = base;
    s.acc = s.q + rowsPerTile * ld;
    s.k = s.acc + rowsPerTile * ld;
    s.v = s.k + kKeyTile * ld;
    s.weights = s.v + kKeyTile * ld;
    s.rowMax = s.weights + rowsPerTile * (kKeyTile + 1);
    s.rowSum = s.rowMax + rowsPerTile;
    s.rescale = s.rowSum + rowsPerTile;
    s.flag = s.rescale + rowsPerTile;
    return s;
}

// Row r of a kv head's group is query head kvHead * groupSize + r / blockLen at block query r % blockLen.
struct RowIndex
{
    int32_t head;
    int32_t query;
};

HD inline RowIndex rowIndex(Dims const& dims, Plan const& plan, int32_t kvHead, int32_t row)
{
    return RowIndex{kvHead * plan.groupSize + row / dims.blockLen, row % dims.blockLen};
}

HD inline int64_t outputOffset(Dims const& dims, int32_t seq, RowIndex const& ri)
{
    return ((static_cast<int64_t>(seq) * dims.blockLen + ri.query) * dims.numHeads + ri.head) * dims.headDim;
}

// One CTA: (seq, kvHead, rowTile, split). smem holds smemFloats(plan.rowsPerTile, D) floats.
template <typename T, int32_t D, typename Cache>
HD void blockAttentionCta(Dims const& dims, Tensors<T, Cache> const& t, Plan const& plan, Partials const& partials,
    int32_t seq, int32_t kvHead, int32_t rowTile, int32_t split, float* smemBase)
{
    CtaGroup const group;
    constexpr int32_t ld = D + 1;
    constexpr int32_t weightLd = kKeyTile + 1;
    constexpr int32_t half = D / 2;
    countCta(false);
    int32_t const ctxLen = t.ctxLens[seq];
    int32_t const rowBegin = rowTile * plan.rowsPerTile;
    int32_t const rows = minI(plan.rowsPerTile, plan.rowsPerGroup - rowBegin);

    if (!sequenceIsValid(seq, ctxLen, dims, t.cache))
    {
        if (split == 0)
        {
            group.forEach(rows * D, [&](int32_t e) {
                RowIndex const ri = rowIndex(dims, plan, kvHead, rowBegin + e / D);
                t.out[outputOffset(dims, seq, ri) + e % D] = fromFloat<T>(quietNaN());
            });
        }
        return;
    }
    SplitRange const range = splitRange(ctxLen, dims, plan, split);
    if (split >= range.used)
    {
        return; // this sequence needs fewer splits: nothing to load, norm or rope
    }
    countCta(true);

    Smem const s = carveSmem(smemBase, plan.rowsPerTile, D);
    int64_t const tokenStride = static_cast<int64_t>(dims.numHeads + 2 * dims.numKvHeads) * D;
    T const* const blockTokens = t.qkv + static_cast<int64_t>(seq) * dims.blockLen * tokenStride;
    float const scale = 1.0f / sqrtf(static_cast<float>(D));

    group.forEach(rows, [&](int32_t r) {
        RowIndex const ri = rowIndex(dims, plan, kvHead, rowBegin + r);
        int64_t const ropeRow = static_cast<int64_t>(ctxLen + ri.query) * half;
        normRopeHead(blockTokens + ri.query * tokenStride + static_cast<int64_t>(ri.head) * D, t.qNormWeight,
            t.ropeCos + ropeRow, t.ropeSin + ropeRow, D, dims.qkNorm != 0, dims.eps, s.q + r * ld);
        s.rowMax[r] = -INFINITY;
        s.rowSum[r] = 0.0f;
    });
    group.forEach(rows * D, [&](int32_t e) { s.acc[(e / D) * ld + e % D] = 0.0f; });
    // No sync here: the first tile's loads touch none of q, acc, rowMax and rowSum (the split is never
    // empty, so that tile exists), and the sync after those loads orders these writes before any read.
    // Every sync() below is needed: tests/cta/sync_mutants.py deletes each in turn and ThreadSanitizer
    // must then report a race.

    for (int32_t tileBegin = range.begin; tileBegin < range.end; tileBegin += kKeyTile)
    {
        int32_t const count = minI(kKeyTile, range.end - tileBegin);
        int32_t const contextCount = maxI(0, minI(count, ctxLen - tileBegin));

        group.forEach(contextCount * D, [&](int32_t e) {
            int32_t const j = e / D;
            s.k[j * ld + e % D] = toFloat(t.cache.k[t.cache.kOffset(seq, kvHead, tileBegin + j) + e % D]);
            s.v[j * ld + e % D] = toFloat(t.cache.v[t.cache.vOffset(seq, kvHead, tileBegin + j) + e % D]);
        });
        group.forEach(count - contextCount, [&](int32_t b) {
            int32_t const j = contextCount + b;
            int32_t const query = tileBegin + j - ctxLen;
            int64_t const ropeRow = static_cast<int64_t>(tileBegin + j) * half;
            normRopeHead(blockTokens + query * tokenStride + static_cast<int64_t>(dims.numHeads + kvHead) * D,
                t.kNormWeight, t.ropeCos + ropeRow, t.ropeSin + ropeRow, D, dims.qkNorm != 0, dims.eps, s.k + j * ld);
        });
        group.forEach((count - contextCount) * D, [&](int32_t e) {
            int32_t const j = contextCount + e / D;
            int32_t const query = tileBegin + j - ctxLen;
            int64_t const src
                = query * tokenStride + static_cast<int64_t>(dims.numHeads + dims.numKvHeads + kvHead) * D + e % D;
            s.v[j * ld + e % D] = toFloat(blockTokens[src]);
        });
        group.sync();

        group.forEach(rows * count, [&](int32_t e) {
            int32_t const r = e / count;
            int32_t const j = e % count;
            int32_t const queryPos = ctxLen + (rowBegin + r) % dims.blockLen;
            s.weights[r * weightLd + j] = keyVisible(queryPos, tileBegin + j, dims.window)
                ? scaledDot(s.q + r * ld, s.k + j * ld, D, scale)
                : -INFINITY;
        });
        group.sync();

        group.forEach(rows, [&](int32_t r) {
            s.rescale[r] = softmaxTileUpdate(s.weights + r * weightLd, count, s.rowMax[r], s.rowSum[r]);
        });
        group.sync();

        group.forEach(rows * D, [&](int32_t e) {
            int32_t const r = e / D;
            int32_t const d = e % D;
            s.acc[r * ld + d] = accumulateElement(s.acc[r * ld + d], s.rescale[r], s.weights + r * weightLd, s.v + d, ld, count);
        });
        group.sync();
    }

    if (range.used == 1)
    {
        group.forEach(rows * D, [&](int32_t e) {
            int32_t const r = e / D;
            RowIndex const ri = rowIndex(dims, plan, kvHead, rowBegin + r);
            t.out[outputOffset(dims, seq, ri) + e % D] = fromFloat<T>(s.acc[r * ld + e % D] / s.rowSum[r]);
        });
        return;
    }
    int64_t const firstRow = (static_cast<int64_t>(seq) * dims.numKvHeads + kvHead) * plan.rowsPerGroup + rowBegin;
    group.forEach(rows, [&](int32_t r) {
        int64_t const slot = (firstRow + r) * plan.numSplits + split;
        partials.maxes[slot] = s.rowMax[r];
        partials.sums[slot] = s.rowSum[r];
    });
    group.forEach(rows * D, [&](int32_t e) {
        int64_t const slot = (firstRow + e / D) * plan.numSplits + split;
        partials.accs[slot * D + e % D] = s.acc[(e / D) * ld + e % D];
    });
    int32_t* const counter
        = partials.counters + (static_cast<int64_t>(seq) * dims.numKvHeads + kvHead) * plan.rowTiles + rowTile;
    if (!group.arriveLast(counter, range.used, s.flag))
    {
        return;
    }
    countMerge();
    group.forEach(rows * D, [&](int32_t e) {
        int32_t const r = e / D;
        int64_t const slot = (firstRow + r) * plan.numSplits;
        RowIndex const ri = rowIndex(dims, plan, kvHead, rowBegin + r);
        t.out[outputOffset(dims, seq, ri) + e % D] = fromFloat<T>(mergeSplits(partials.maxes + slot,
            partials.sums + slot, partials.accs + slot * D + e % D, D, range.used));
    });
}

} // namespace blockattn
} // namespace dflash

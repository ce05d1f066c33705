// The two K/V cache layouts the plugins read and write, as views the math indexes through.
//
// Contiguous: k_cache and v_cache, each [batch][numKvHeads][capacity][headDim].
// Paged (the layout serving engines use): one pool [2][numPages][tokensPerPage][numKvHeads][headDim]
// (index 0 keys, 1 values) and a page table [batch][2][maxPages] of int32 page ids: position p of
// sequence s keeps its key in page pageTable[s][0][p / tokensPerPage] of pool[0] and its value in
// page pageTable[s][1][p / tokensPerPage] of pool[1], both at slot p % tokensPerPage. A sequence's
// capacity is maxPages * tokensPerPage; a page id outside [0, numPages) marks a position unusable.
#pragma once

#include "common/hd.h"

#include <cstdint>

namespace dflash
{

constexpr int64_t kNoSlot = -1;

// Ptr is `T const*` (attention reads) or `T*` (the append writes).
template <typename Ptr>
struct ContiguousKv
{
    Ptr k;
    Ptr v;
    int32_t numKvHeads;
    int32_t capacity;
    int32_t headDim;

    HD int32_t capacityOf(int32_t) const
    {
        return capacity;
    }

    // Element offsets of the first element of (seq, kvHead, pos) in k and v; kNoSlot when unusable.
    HD int64_t kOffset(int32_t seq, int32_t kvHead, int32_t pos) const
    {
        return ((static_cast<int64_t>(seq) * numKvHeads + kvHead) * capacity + pos) * headDim;
    }

    HD int64_t vOffset(int32_t seq, int32_t kvHead, int32_t pos) const
    {
        return kOffset(seq, kvHead, pos);
    }

    // Whether positions [0, count) of seq all have slots.
    HD bool prefixUsable(int32_t, int32_t count) const
    {
        return count <= capacity;
    }
};

template <typename Ptr>
struct PagedKv
{
    Ptr k; // pool[0]
    Ptr v; // pool[1]
    int32_t const* pageTable;
    int32_t numPages;
    int32_t tokensPerPage;
    int32_t maxPages;
    int32_t numKvHeads;
    int32_t headDim;

    HD int32_t capacityOf(int32_t) const
    {
        return maxPages * tokensPerPage;
    }

    HD int64_t offset(int32_t seq, int32_t which, int32_t kvHead, int32_t pos) const
    {
        if (pos < 0 || pos >= maxPages * tokensPerPage)
        {
            return kNoSlot;
        }
        int32_t const page = pageTable[(static_cast<int64_t>(seq) * 2 + which) * maxPages + pos / tokensPerPage];
        if (page < 0 || page >= numPages)
        {
            return kNoSlot;
        }
        return ((static_cast<int64_t>(page) * tokensPerPage + pos % tokensPerPage) * numKvHeads + kvHead) * headDim;
    }

    HD int64_t kOffset(int32_t seq, int32_t kvHead, int32_t pos) const
    {
        return offset(seq, 0, kvHead, pos);
    }

    HD int64_t vOffset(int32_t seq, int32_t kvHead, int32_t pos) const
    {
        return offset(seq, 1, kvHead, pos);
    }

    HD bool prefixUsable(int32_t seq, int32_t count) const
    {
        if (count > maxPages * tokensPerPage)
        {
            return false;
        }
        for (int32_t p = 0; p < count; p += tokensPerPage)
        {
            if (kOffset(seq, 0, p) == kNoSlot || vOffset(seq, 0, p) == kNoSlot)
            {
                return false;
            }
        }
        return true;
    }
};

} // namespace dflash

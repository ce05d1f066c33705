// DFlashAcceptTokens math, written once for the CUDA kernel and the host build: greedy
// acceptance of a drafted block against the target's argmax tokens.
#pragma once

#include "common/ctaGroup.h"
#include "common/hd.h"

#include <cstdint>

namespace dflash
{
namespace accept
{

struct Tensors
{
    int32_t const* draftTokens;  // [batch][blockLen - 1]: the block's drafted tokens 1..B-1
    int32_t const* targetTokens; // [batch][blockLen]: target argmax after block tokens 0..B-1
    int32_t* acceptedLen;        // [batch]
    int32_t* bonusToken;         // [batch]
};

// Draft token i is accepted while it equals the target's prediction for its position and every
// earlier draft was accepted; the bonus token is the target's prediction after the last accepted one.
HD inline void acceptRow(int32_t const* draft, int32_t const* target, int32_t blockLen, int32_t* accepted, int32_t* bonus)
{
    int32_t n = 0;
    while (n < blockLen - 1 && draft[n] == target[n])
    {
        ++n;
    }
    *accepted = n;
    *bonus = target[n];
}

// One CTA for sequences [firstSeq, firstSeq + count).
HD inline void acceptTokensCta(Tensors const& t, int32_t blockLen, int32_t firstSeq, int32_t count)
{
    CtaGroup const group;
    group.forEach(count, [&](int32_t i) {
        int64_t const seq = static_cast<int64_t>(firstSeq) + i;
        acceptRow(t.draftTokens + seq * (blockLen - 1), t.targetTokens + seq * blockLen, blockLen,
            t.acceptedLen + seq, t.bonusToken + seq);
    });
}

} // namespace accept
} // namespace dflash

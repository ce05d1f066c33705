// Host build of DFlashContextKVAppend: runs contextKvAppendCta over the kernel's grid on host memory.
#include "common/dispatch.h"
#include "dflashContextKVAppend/dflashContextKVAppendLaunch.h"

#include <cstring>

namespace dflash
{
namespace kvappend
{

int32_t launchContextKvAppend(ElemType type, Dims const& dims, RawTensors const& tensors, cudaStream_t)
{
    return dispatchElemTypeAndHeadDim(type, dims.headDim, [&](auto typeTag, auto dimTag) {
        using T = typename decltype(typeTag)::type;
        constexpr int32_t D = decltype(dimTag)::value;
        if (tensors.kCacheOut != tensors.kCacheIn)
        {
            std::memcpy(tensors.kCacheOut, tensors.kCacheIn, cacheBytes(dims, sizeof(T)));
        }
        if (tensors.vCacheOut != tensors.vCacheIn)
        {
            std::memcpy(tensors.vCacheOut, tensors.vCacheIn, cacheBytes(dims, sizeof(T)));
        }
        Tensors<T> const t = typed<T>(tensors);
        float smem[D];
        for (int32_t seq = 0; seq < dims.batch; ++seq)
        {
            for (int32_t kvHead = 0; kvHead < dims.numKvHeads; ++kvHead)
            {
                for (int32_t row = 0; row < dims.newLen; ++row)
                {
                    contextKvAppendCta<T, D>(dims, t, seq, kvHead, row, smem);
                }
            }
        }
        return 0;
    });
}

} // namespace kvappend
} // namespace dflash

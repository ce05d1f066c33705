// Host build of DFlashContextKVAppend: runs contextKvAppendCta over the kernel's grid on host memory.
#include "common/dispatch.h"
#include "dflashContextKVAppend/dflashContextKVAppendLaunch.h"

namespace dflash
{
namespace kvappend
{
namespace
{

template <typename T, int32_t D, typename Cache>
int32_t run(Dims const& dims, Tensors<T, Cache> const& t)
{
    float smem[2 * D];
    for (int32_t seq = 0; seq < dims.batch; ++seq)
    {
        for (int32_t kvHead = 0; kvHead < dims.numKvHeads; ++kvHead)
        {
            for (int32_t row = 0; row < dims.newLen; ++row)
            {
                contextKvAppendCta<T, D, Cache>(dims, t, seq, kvHead, row, smem);
            }
        }
    }
    return 0;
}

} // namespace

int32_t launchContextKvAppend(
    ElemType type, Dims const& dims, CacheLayout const& layout, RawTensors const& tensors, cudaStream_t)
{
    return dispatchElemTypeAndHeadDim(type, dims.headDim, [&](auto typeTag, auto dimTag) {
        using T = typename decltype(typeTag)::type;
        constexpr int32_t D = decltype(dimTag)::value;
        return layout.paged ? run<T, D>(dims, pagedTensors<T>(tensors, dims, layout))
                            : run<T, D>(dims, contiguousTensors<T>(tensors, dims));
    });
}

} // namespace kvappend
} // namespace dflash

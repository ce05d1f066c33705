// CUDA build of DFlashContextKVAppend: one CTA of headDim threads per (row, kv head, sequence),
// writing into the cache in place (no copy of the cache, ever).
#include "common/dispatch.h"
#include "dflashContextKVAppend/dflashContextKVAppendLaunch.h"

namespace dflash
{
namespace kvappend
{
namespace
{

template <typename T, int32_t D, typename Cache>
__global__ void __launch_bounds__(D) appendKernel(Dims const dims, Tensors<T, Cache> const t)
{
    __shared__ float smem[2 * D];
    contextKvAppendCta<T, D, Cache>(dims, t, static_cast<int32_t>(blockIdx.z), static_cast<int32_t>(blockIdx.y),
        static_cast<int32_t>(blockIdx.x), smem);
}

template <typename T, int32_t D, typename Cache>
int32_t launch(Dims const& dims, Tensors<T, Cache> const& t, cudaStream_t stream)
{
    dim3 const grid(static_cast<unsigned>(dims.newLen), static_cast<unsigned>(dims.numKvHeads),
        static_cast<unsigned>(dims.batch));
    appendKernel<T, D, Cache><<<grid, D, 0, stream>>>(dims, t);
    return cudaPeekAtLastError() == cudaSuccess ? 0 : -1;
}

} // namespace

int32_t launchContextKvAppend(
    ElemType type, Dims const& dims, CacheLayout const& layout, RawTensors const& tensors, cudaStream_t stream)
{
    if (dims.batch > 65535 || dims.numKvHeads > 65535)
    {
        return -1;
    }
    if (dims.batch == 0 || dims.newLen == 0)
    {
        return 0;
    }
    return dispatchElemTypeAndHeadDim(type, dims.headDim, [&](auto typeTag, auto dimTag) {
        using T = typename decltype(typeTag)::type;
        constexpr int32_t D = decltype(dimTag)::value;
        return layout.paged ? launch<T, D>(dims, pagedTensors<T>(tensors, dims, layout), stream)
                            : launch<T, D>(dims, contiguousTensors<T>(tensors, dims), stream);
    });
}

} // namespace kvappend
} // namespace dflash

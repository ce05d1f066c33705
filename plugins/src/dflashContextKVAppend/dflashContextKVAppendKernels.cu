// CUDA build of DFlashContextKVAppend: one CTA of headDim threads per (row, kv head, sequence).
#include "common/dispatch.h"
#include "dflashContextKVAppend/dflashContextKVAppendLaunch.h"

namespace dflash
{
namespace kvappend
{
namespace
{

template <typename T, int32_t D>
__global__ void __launch_bounds__(D) appendKernel(Dims const dims, Tensors<T> const t)
{
    __shared__ float smem[D];
    contextKvAppendCta<T, D>(dims, t, static_cast<int32_t>(blockIdx.z), static_cast<int32_t>(blockIdx.y),
        static_cast<int32_t>(blockIdx.x), smem);
}

} // namespace

int32_t launchContextKvAppend(ElemType type, Dims const& dims, RawTensors const& tensors, cudaStream_t stream)
{
    if (dims.batch > 65535 || dims.numKvHeads > 65535)
    {
        return -1;
    }
    return dispatchElemTypeAndHeadDim(type, dims.headDim, [&](auto typeTag, auto dimTag) {
        using T = typename decltype(typeTag)::type;
        constexpr int32_t D = decltype(dimTag)::value;
        size_t const bytes = cacheBytes(dims, sizeof(T));
        if (tensors.kCacheOut != tensors.kCacheIn
            && cudaMemcpyAsync(tensors.kCacheOut, tensors.kCacheIn, bytes, cudaMemcpyDeviceToDevice, stream)
                != cudaSuccess)
        {
            return -1;
        }
        if (tensors.vCacheOut != tensors.vCacheIn
            && cudaMemcpyAsync(tensors.vCacheOut, tensors.vCacheIn, bytes, cudaMemcpyDeviceToDevice, stream)
                != cudaSuccess)
        {
            return -1;
        }
        if (dims.batch == 0 || dims.newLen == 0)
        {
            return 0;
        }
        dim3 const grid(static_cast<unsigned>(dims.newLen), static_cast<unsigned>(dims.numKvHeads),
            static_cast<unsigned>(dims.batch));
        appendKernel<T, D><<<grid, D, 0, stream>>>(dims, typed<T>(tensors));
        return cudaGetLastError() == cudaSuccess ? 0 : -1;
    });
}

} // namespace kvappend
} // namespace dflash

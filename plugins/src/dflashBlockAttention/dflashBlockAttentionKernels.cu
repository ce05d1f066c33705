// CUDA build of DFlashBlockAttention: one kernel runs blockAttentionCta per (key split x row
// tile, kv head, sequence); a second merges the key splits when there is more than one.
#include "common/dispatch.h"
#include "dflashBlockAttention/dflashBlockAttentionLaunch.h"

namespace dflash
{
namespace blockattn
{
namespace
{

constexpr int32_t kThreads = 128;

template <typename T, int32_t D>
__global__ void __launch_bounds__(kThreads)
    splitKernel(Dims const dims, Tensors<T> const t, Plan const plan, Partials const partials)
{
    extern __shared__ float smem[];
    int32_t const split = static_cast<int32_t>(blockIdx.x) % plan.numSplits;
    int32_t const rowTile = static_cast<int32_t>(blockIdx.x) / plan.numSplits;
    blockAttentionCta<T, D>(dims, t, plan, partials, static_cast<int32_t>(blockIdx.z),
        static_cast<int32_t>(blockIdx.y), rowTile, split, smem);
}

template <typename T, int32_t D>
__global__ void __launch_bounds__(D)
    mergeKernel(Dims const dims, Tensors<T> const t, Plan const plan, Partials const partials)
{
    mergeSplitsCta<T, D>(dims, t, plan, partials, static_cast<int64_t>(blockIdx.x));
}

} // namespace

int32_t launchBlockAttention(
    ElemType type, Dims const& dims, RawTensors const& tensors, Plan const& plan, void* workspace, cudaStream_t stream)
{
    if (dims.batch > 65535 || dims.numKvHeads > 65535)
    {
        return -1;
    }
    if (totalRows(dims) == 0)
    {
        return 0;
    }
    return dispatchElemTypeAndHeadDim(type, dims.headDim, [&](auto typeTag, auto dimTag) {
        using T = typename decltype(typeTag)::type;
        constexpr int32_t D = decltype(dimTag)::value;
        Tensors<T> const t = typed<T>(tensors);
        Partials const partials = workspacePartials(workspace, dims, plan);
        size_t const smemBytes = static_cast<size_t>(smemFloats(plan.rowsPerTile, D)) * sizeof(float);
        if (cudaFuncSetAttribute(splitKernel<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                static_cast<int>(smemBytes))
            != cudaSuccess)
        {
            return -1;
        }
        dim3 const grid(static_cast<unsigned>(plan.numSplits * plan.rowTiles), static_cast<unsigned>(dims.numKvHeads),
            static_cast<unsigned>(dims.batch));
        splitKernel<T, D><<<grid, kThreads, smemBytes, stream>>>(dims, t, plan, partials);
        if (plan.numSplits > 1)
        {
            mergeKernel<T, D><<<static_cast<unsigned>(totalRows(dims)), D, 0, stream>>>(dims, t, plan, partials);
        }
        return cudaGetLastError() == cudaSuccess ? 0 : -1;
    });
}

} // namespace blockattn
} // namespace dflash

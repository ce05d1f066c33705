// Host build of DFlashBlockAttention: runs blockAttentionCta over the grid the CUDA kernel uses,
// one CTA after another, on host memory. The semaphore counters are zeroed first, as the CUDA
// launch does with a memset; the last split of each row tile then merges, as on the device.
#include "common/dispatch.h"
#include "dflashBlockAttention/dflashBlockAttentionLaunch.h"

#include <cstring>
#include <vector>

namespace dflash
{
namespace blockattn
{
namespace
{

template <typename T, int32_t D, typename Cache>
int32_t run(Dims const& dims, Tensors<T, Cache> const& t, Plan const& plan, void* workspace)
{
    Partials const partials = workspacePartials(workspace, dims, plan);
    if (plan.numSplits > 1)
    {
        std::memset(partials.counters, 0, counterCount(dims, plan) * sizeof(int32_t));
    }
    std::vector<float> smem(static_cast<size_t>(smemFloats(plan.rowsPerTile, D)));
    for (int32_t seq = 0; seq < dims.batch; ++seq)
    {
        for (int32_t kvHead = 0; kvHead < dims.numKvHeads; ++kvHead)
        {
            for (int32_t rowTile = 0; rowTile < plan.rowTiles; ++rowTile)
            {
                for (int32_t split = 0; split < plan.numSplits; ++split)
                {
                    blockAttentionCta<T, D, Cache>(dims, t, plan, partials, seq, kvHead, rowTile, split, smem.data());
                }
            }
        }
    }
    return 0;
}

} // namespace

int32_t launchBlockAttention(ElemType type, Dims const& dims, CacheLayout const& layout, RawTensors const& tensors,
    Plan const& plan, DeviceInfo const& device, void* workspace, cudaStream_t)
{
    if (smemBytes(plan.rowsPerTile, dims.headDim) > static_cast<size_t>(device.maxSmemPerCta))
    {
        return -1; // what the CUDA launch refuses too
    }
    return dispatchElemTypeAndHeadDim(type, dims.headDim, [&](auto typeTag, auto dimTag) {
        using T = typename decltype(typeTag)::type;
        constexpr int32_t D = decltype(dimTag)::value;
        return layout.paged ? run<T, D>(dims, pagedTensors<T>(tensors, dims, layout), plan, workspace)
                            : run<T, D>(dims, contiguousTensors<T>(tensors, dims), plan, workspace);
    });
}

} // namespace blockattn
} // namespace dflash

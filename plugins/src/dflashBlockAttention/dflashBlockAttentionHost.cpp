// Host build of DFlashBlockAttention: runs the CTA functions of dflashBlockAttentionMath.h over
// the same grid the CUDA kernels use, one CTA after another, on host memory.
#include "common/dispatch.h"
#include "dflashBlockAttention/dflashBlockAttentionLaunch.h"

#include <vector>

namespace dflash
{
namespace blockattn
{

int32_t launchBlockAttention(
    ElemType type, Dims const& dims, RawTensors const& tensors, Plan const& plan, void* workspace, cudaStream_t)
{
    return dispatchElemTypeAndHeadDim(type, dims.headDim, [&](auto typeTag, auto dimTag) {
        using T = typename decltype(typeTag)::type;
        constexpr int32_t D = decltype(dimTag)::value;
        Tensors<T> const t = typed<T>(tensors);
        Partials const partials = workspacePartials(workspace, dims, plan);
        std::vector<float> smem(static_cast<size_t>(smemFloats(plan.rowsPerTile, D)));
        for (int32_t seq = 0; seq < dims.batch; ++seq)
        {
            for (int32_t kvHead = 0; kvHead < dims.numKvHeads; ++kvHead)
            {
                for (int32_t rowTile = 0; rowTile < plan.rowTiles; ++rowTile)
                {
                    for (int32_t split = 0; split < plan.numSplits; ++split)
                    {
                        blockAttentionCta<T, D>(dims, t, plan, partials, seq, kvHead, rowTile, split, smem.data());
                    }
                }
            }
        }
        if (plan.numSplits > 1)
        {
            for (int64_t row = 0; row < totalRows(dims); ++row)
            {
                mergeSplitsCta<T, D>(dims, t, plan, partials, row);
            }
        }
        return 0;
    });
}

} // namespace blockattn
} // namespace dflash

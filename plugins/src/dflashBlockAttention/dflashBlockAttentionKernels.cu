// CUDA build of DFlashBlockAttention: one kernel runs blockAttentionCta per (key split x row tile,
// kv head, sequence). The CTA that finishes a row tile's splits last merges them (a semaphore in
// the workspace, zeroed by a memset before the launch), so there is no second kernel.
#include "common/dispatch.h"
#include "dflashBlockAttention/dflashBlockAttentionLaunch.h"

#include <atomic>

namespace dflash
{
namespace blockattn
{
namespace
{

constexpr int32_t kThreads = 128;
constexpr int32_t kMaxDevices = 64;

template <typename T, int32_t D, typename Cache>
__global__ void __launch_bounds__(kThreads)
    attentionKernel(Dims const dims, Tensors<T, Cache> const t, Plan const plan, Partials const partials)
{
    extern __shared__ float smem[];
    int32_t const split = static_cast<int32_t>(blockIdx.x) % plan.numSplits;
    int32_t const rowTile = static_cast<int32_t>(blockIdx.x) / plan.numSplits;
    blockAttentionCta<T, D, Cache>(dims, t, plan, partials, static_cast<int32_t>(blockIdx.z),
        static_cast<int32_t>(blockIdx.y), rowTile, split, smem);
}

// Raises the kernel's dynamic shared-memory limit to what the device allows, once per device (the
// attribute belongs to the device's context, not to a launch).
template <typename Kernel>
bool allowSharedMemoryOnce(Kernel kernel, std::atomic<uint64_t>& doneDevices, int32_t maxSmemPerCta)
{
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0 || device >= kMaxDevices)
    {
        return false;
    }
    uint64_t const bit = uint64_t{1} << device;
    if (doneDevices.load(std::memory_order_acquire) & bit)
    {
        return true;
    }
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, maxSmemPerCta) != cudaSuccess)
    {
        return false;
    }
    doneDevices.fetch_or(bit, std::memory_order_acq_rel);
    return true;
}

template <typename T, int32_t D, typename Cache>
int32_t launch(Dims const& dims, Tensors<T, Cache> const& t, Plan const& plan, void* workspace,
    int32_t maxSmemPerCta, cudaStream_t stream)
{
    static std::atomic<uint64_t> doneDevices{0};
    auto* const kernel = attentionKernel<T, D, Cache>;
    size_t const smem = smemBytes(plan.rowsPerTile, D);
    if (smem > static_cast<size_t>(maxSmemPerCta) || !allowSharedMemoryOnce(kernel, doneDevices, maxSmemPerCta))
    {
        return -1;
    }
    Partials const partials = workspacePartials(workspace, dims, plan);
    if (plan.numSplits > 1
        && cudaMemsetAsync(partials.counters, 0, counterCount(dims, plan) * sizeof(int32_t), stream) != cudaSuccess)
    {
        return -1;
    }
    dim3 const grid(static_cast<unsigned>(plan.numSplits * plan.rowTiles), static_cast<unsigned>(dims.numKvHeads),
        static_cast<unsigned>(dims.batch));
    kernel<<<grid, kThreads, smem, stream>>>(dims, t, plan, partials);
    // Peek: a launch error is this call's, and reading it must not clear an error left by another component.
    return cudaPeekAtLastError() == cudaSuccess ? 0 : -1;
}

} // namespace

int32_t launchBlockAttention(ElemType type, Dims const& dims, CacheLayout const& layout, RawTensors const& tensors,
    Plan const& plan, DeviceInfo const& device, void* workspace, cudaStream_t stream)
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
        return layout.paged ? launch<T, D>(dims, pagedTensors<T>(tensors, dims, layout), plan, workspace,
                                  device.maxSmemPerCta, stream)
                            : launch<T, D>(dims, contiguousTensors<T>(tensors, dims), plan, workspace,
                                  device.maxSmemPerCta, stream);
    });
}

} // namespace blockattn
} // namespace dflash

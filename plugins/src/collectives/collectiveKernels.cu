// CUDA build of the collectives' copy: the all-gather transpose (collectiveLaunch.h). One thread per
// output element in a grid-stride loop: consecutive threads write consecutive elements of a chunk
// and read consecutive elements of the source chunk, so both sides are coalesced.
#include "collectives/collectiveLaunch.h"

namespace dflash
{
namespace collective
{
namespace
{

constexpr int32_t kThreads = 256;
constexpr int64_t kMaxBlocks = 4096; // grid-stride beyond: plenty of CTAs for a copy on any GPU

template <typename T>
__global__ void __launch_bounds__(kThreads)
    gatherTransposeKernel(T const* __restrict__ src, T* __restrict__ dst, int32_t group, int64_t outer, int64_t chunk)
{
    int64_t const total = static_cast<int64_t>(group) * outer * chunk;
    int64_t const stride = static_cast<int64_t>(gridDim.x) * kThreads;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride)
    {
        int64_t const c = i % chunk;
        int64_t const row = i / chunk; // o * group + g
        int64_t const g = row % group;
        int64_t const o = row / group;
        dst[i] = src[(g * outer + o) * chunk + c];
    }
}

template <typename T>
int32_t launch(void const* src, void* dst, int32_t group, int64_t outer, int64_t chunk, cudaStream_t stream)
{
    int64_t const total = static_cast<int64_t>(group) * outer * chunk;
    int64_t const blocks = (total + kThreads - 1) / kThreads;
    gatherTransposeKernel<T><<<static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks), kThreads, 0, stream>>>(
        static_cast<T const*>(src), static_cast<T*>(dst), group, outer, chunk);
    return cudaPeekAtLastError() == cudaSuccess ? 0 : -1;
}

} // namespace

int32_t launchGatherTranspose(
    void const* src, void* dst, int32_t group, int64_t outer, int64_t chunk, ElemType type, cudaStream_t stream)
{
    if (group <= 0 || outer <= 0 || chunk <= 0)
    {
        return 0;
    }
    switch (type)
    {
    case ElemType::kFLOAT32: return launch<float>(src, dst, group, outer, chunk, stream);
    case ElemType::kFLOAT16: return launch<Half>(src, dst, group, outer, chunk, stream);
    case ElemType::kBFLOAT16: return launch<BFloat16>(src, dst, group, outer, chunk, stream);
    }
    return -1;
}

} // namespace collective
} // namespace dflash

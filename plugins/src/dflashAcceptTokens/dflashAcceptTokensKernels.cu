// CUDA build of DFlashAcceptTokens: one thread per sequence.
#include "dflashAcceptTokens/dflashAcceptTokensLaunch.h"

namespace dflash
{
namespace accept
{
namespace
{

constexpr int32_t kThreads = 128;

__global__ void __launch_bounds__(kThreads) acceptKernel(Tensors const t, int32_t batch, int32_t blockLen)
{
    int32_t const firstSeq = static_cast<int32_t>(blockIdx.x) * kThreads;
    acceptTokensCta(t, blockLen, firstSeq, minI(kThreads, batch - firstSeq));
}

} // namespace

int32_t launchAcceptTokens(Tensors const& tensors, int32_t batch, int32_t blockLen, cudaStream_t stream)
{
    if (batch == 0)
    {
        return 0;
    }
    unsigned const blocks = static_cast<unsigned>((batch + kThreads - 1) / kThreads);
    acceptKernel<<<blocks, kThreads, 0, stream>>>(tensors, batch, blockLen);
    return cudaPeekAtLastError() == cudaSuccess ? 0 : -1;
}

} // namespace accept
} // namespace dflash

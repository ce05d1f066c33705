// Host build of DFlashAcceptTokens: one CTA covering the whole batch, on host memory.
#include "dflashAcceptTokens/dflashAcceptTokensLaunch.h"

namespace dflash
{
namespace accept
{

int32_t launchAcceptTokens(Tensors const& tensors, int32_t batch, int32_t blockLen, cudaStream_t)
{
    acceptTokensCta(tensors, blockLen, 0, batch);
    return 0;
}

} // namespace accept
} // namespace dflash

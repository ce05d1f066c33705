// Launch entry point of DFlashAcceptTokens, defined by dflashAcceptTokensKernels.cu in CUDA builds
// and by dflashAcceptTokensHost.cpp in host builds.
#pragma once

#include "dflashAcceptTokens/dflashAcceptTokensMath.h"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dflash
{
namespace accept
{

int32_t launchAcceptTokens(Tensors const& tensors, int32_t batch, int32_t blockLen, cudaStream_t stream);

} // namespace accept
} // namespace dflash

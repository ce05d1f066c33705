// Launch entry point of the collectives' one kernel, defined by collectiveKernels.cu (CUDA builds only).
#pragma once

#include "common/floatTypes.h"

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dflash
{
namespace collective
{

// dst[o, g, c] = src[g, o, c] for o < outer, g < group, c < chunk: NCCL's all-gather layout (rank
// blocks) to the concatenation along an inner axis. group 1 and outer 1 make it a plain copy.
int32_t launchGatherTranspose(
    void const* src, void* dst, int32_t group, int64_t outer, int64_t chunk, ElemType type, cudaStream_t stream);

} // namespace collective
} // namespace dflash

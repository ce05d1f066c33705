// Execution-space marker for math shared by the CUDA kernels and the host build.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define HD __host__ __device__
#else
#define HD
#endif

namespace dflash
{

HD inline int32_t minI(int32_t a, int32_t b)
{
    return a < b ? a : b;
}

HD inline int32_t maxI(int32_t a, int32_t b)
{
    return a > b ? a : b;
}

} // namespace dflash

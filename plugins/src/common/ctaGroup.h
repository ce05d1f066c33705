// The unit of cooperative work shared by the CUDA kernels and the host build.
//
// A "CTA function" is written once as a sequence of phases: each phase is a forEach over
// independent items, and phases are separated by sync(). On the device the CTA's threads split
// each phase's items and sync() is __syncthreads(); on the host one thread runs every item of a
// phase in order, which computes the same values because items of a phase never depend on
// each other.
#pragma once

#include "common/hd.h"

#include <cstdint>

namespace dflash
{

struct CtaGroup
{
    template <typename Fn>
    HD void forEach(int32_t count, Fn&& fn) const
    {
#ifdef __CUDA_ARCH__
        for (int32_t item = static_cast<int32_t>(threadIdx.x); item < count; item += static_cast<int32_t>(blockDim.x))
#else
        for (int32_t item = 0; item < count; ++item)
#endif
        {
            fn(item);
        }
    }

    HD void sync() const
    {
#ifdef __CUDA_ARCH__
        __syncthreads();
#endif
    }
};

} // namespace dflash

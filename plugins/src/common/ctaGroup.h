// The unit of cooperative work shared by the CUDA kernels and the host build.
//
// A "CTA function" is written once as a sequence of phases: each phase is a forEach over
// independent items, and phases are separated by sync(). On the device the CTA's threads split
// each phase's items and sync() is __syncthreads().
//
// On the host there are three ways to run a CTA function, chosen by the calling thread's
// HostCtaThread (null by default):
//  - none (the plugins' host build): one thread runs every item of a phase in order; sync() does
//    nothing. This computes the same values because items of a phase never depend on each other.
//  - threaded (tests/cta, under ThreadSanitizer): one std::thread per GPU thread, each taking items
//    tid, tid + n, ... as the device does, and sync() waits on a std::barrier. A missing sync()
//    between a phase that writes shared memory and one that reads it is then a data race.
//  - reordered (tests/cta, under ASan + UBSan): one thread runs each phase's items in reverse or
//    strided order, which any hidden dependence between the items of a phase would expose.
#pragma once

#include "common/hd.h"

#include <cstdint>

namespace dflash
{

enum class HostItemOrder : int32_t
{
    kFORWARD = 0,
    kREVERSE = 1,
    kSTRIDED = 2, // items s, s + 7, s + 14, ... for s = 0..6
};

// How the calling host thread takes part in a CTA (see the file comment).
struct HostCtaThread
{
    int32_t tid;
    int32_t numThreads;
    void (*sync)(void* arg); // null: sync() does nothing
    void* syncArg;
    HostItemOrder order;
};

// Counters the host runs of the CTA functions fill in, when a test asks for them.
struct HostCtaStats
{
    int64_t ctas;         // CTA functions entered
    int64_t ctasWithWork; // CTAs that got past their early exits and computed something
    int64_t merges;       // CTAs that merged the key splits of their rows (the last to arrive)
};

#ifndef __CUDA_ARCH__
inline HostCtaThread*& hostCtaThread()
{
    thread_local HostCtaThread* current = nullptr;
    return current;
}

inline HostCtaStats*& hostCtaStats()
{
    thread_local HostCtaStats* current = nullptr;
    return current;
}
#endif

struct CtaGroup
{
    template <typename Fn>
    HD void forEach(int32_t count, Fn&& fn) const
    {
#ifdef __CUDA_ARCH__
        for (int32_t item = static_cast<int32_t>(threadIdx.x); item < count; item += static_cast<int32_t>(blockDim.x))
        {
            fn(item);
        }
#else
        HostCtaThread const* const t = hostCtaThread();
        if (t == nullptr)
        {
            for (int32_t item = 0; item < count; ++item)
            {
                fn(item);
            }
            return;
        }
        if (t->numThreads > 1)
        {
            for (int32_t item = t->tid; item < count; item += t->numThreads)
            {
                fn(item);
            }
            return;
        }
        switch (t->order)
        {
        case HostItemOrder::kFORWARD:
            for (int32_t item = 0; item < count; ++item)
            {
                fn(item);
            }
            break;
        case HostItemOrder::kREVERSE:
            for (int32_t item = count - 1; item >= 0; --item)
            {
                fn(item);
            }
            break;
        case HostItemOrder::kSTRIDED:
            for (int32_t start = 0; start < 7; ++start)
            {
                for (int32_t item = start; item < count; item += 7)
                {
                    fn(item);
                }
            }
            break;
        }
#endif
    }

    HD void sync() const
    {
#ifdef __CUDA_ARCH__
        __syncthreads();
#else
        HostCtaThread const* const t = hostCtaThread();
        if (t != nullptr && t->sync != nullptr)
        {
            t->sync(t->syncArg);
        }
#endif
    }

    // Semaphore of the CTAs that share *counter (a zeroed int in global memory): call it in every
    // thread of the CTA after the CTA's results are written; it returns true, in every thread, in
    // the CTA that arrives last of `expected`, which may then read what the others wrote.
    // `flag` is one float of the CTA's shared memory.
    HD bool arriveLast(int32_t* counter, int32_t expected, float* flag) const
    {
#ifdef __CUDA_ARCH__
        __threadfence(); // this thread's writes are visible device-wide before the CTA arrives
        __syncthreads();
        if (threadIdx.x == 0)
        {
            *flag = atomicAdd(counter, 1) == expected - 1 ? 1.0f : 0.0f;
        }
        __syncthreads();
        bool const last = *flag != 0.0f;
        if (last)
        {
            __threadfence();
        }
        return last;
#else
        sync();
        forEach(1, [&](int32_t) {
            *flag = __atomic_fetch_add(counter, 1, __ATOMIC_ACQ_REL) == expected - 1 ? 1.0f : 0.0f;
        });
        sync();
        return *flag != 0.0f;
#endif
    }
};

// A float written by another CTA of the same launch (read after arriveLast): bypasses L1 on the device.
HD inline float loadFromOtherCta(float const* p)
{
#ifdef __CUDA_ARCH__
    return __ldcg(p);
#else
    return *p;
#endif
}

HD inline void countCta(bool withWork)
{
#ifndef __CUDA_ARCH__
    if (HostCtaStats* const s = hostCtaStats())
    {
        // only the first host thread of a CTA counts it
        HostCtaThread const* const t = hostCtaThread();
        if (t == nullptr || t->tid == 0)
        {
            (withWork ? s->ctasWithWork : s->ctas) += 1;
        }
    }
#else
    (void) withWork;
#endif
}

HD inline void countMerge()
{
#ifndef __CUDA_ARCH__
    if (HostCtaStats* const s = hostCtaStats())
    {
        HostCtaThread const* const t = hostCtaThread();
        if (t == nullptr || t->tid == 0)
        {
            s->merges += 1;
        }
    }
#endif
}

} // namespace dflash

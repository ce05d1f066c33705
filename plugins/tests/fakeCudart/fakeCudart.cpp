// A stand-in for the few CUDA runtime calls the plugins' CUDA launches make, for machines without a
// GPU: LD_PRELOAD it in front of libcudart and the CUDA build's enqueue runs its host side for real
// (device query, planning, cudaFuncSetAttribute, the semaphore memset, the kernel launch) while no
// kernel executes. Every call is appended to $FAKE_CUDART_LOG as one line, for the tests to count:
//
//   getDevice | deviceGetAttribute <attr> | funcSetAttribute <attr> <value> | memsetAsync <bytes>
//   memcpyAsync <bytes> | launch <gx> <gy> <gz> <bx> <by> <bz> <smem> | peekAtLastError | getLastError
//
// $FAKE_CUDART_DEVICE = "ccMajor,ccMinor,SMs,maxSmemPerCtaOptin,smemPerSm" (default an H100 SXM).
// cudaMemsetAsync writes host memory (the tests pass host buffers); nothing else touches memory.
#include <cuda_runtime_api.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace
{

std::mutex gMutex;

void logLine(char const* format, ...) __attribute__((format(printf, 1, 2)));

void logLine(char const* format, ...)
{
    char const* path = std::getenv("FAKE_CUDART_LOG");
    if (path == nullptr)
    {
        return;
    }
    std::lock_guard<std::mutex> lock(gMutex);
    FILE* file = std::fopen(path, "a");
    if (file == nullptr)
    {
        return;
    }
    va_list args;
    va_start(args, format);
    std::vfprintf(file, format, args);
    va_end(args);
    std::fputc('\n', file);
    std::fclose(file);
}

int deviceValue(int index)
{
    int values[5] = {9, 0, 132, 227 * 1024, 228 * 1024};
    if (char const* spec = std::getenv("FAKE_CUDART_DEVICE"))
    {
        std::sscanf(spec, "%d,%d,%d,%d,%d", &values[0], &values[1], &values[2], &values[3], &values[4]);
    }
    return values[index];
}

thread_local dim3 gGrid;
thread_local dim3 gBlock;
thread_local size_t gShared = 0;

} // namespace

extern "C"
{

cudaError_t CUDARTAPI cudaGetDevice(int* device)
{
    logLine("getDevice");
    *device = 0;
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int)
{
    logLine("deviceGetAttribute %d", static_cast<int>(attr));
    switch (attr)
    {
    case cudaDevAttrComputeCapabilityMajor: *value = deviceValue(0); break;
    case cudaDevAttrComputeCapabilityMinor: *value = deviceValue(1); break;
    case cudaDevAttrMultiProcessorCount: *value = deviceValue(2); break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = deviceValue(3); break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = deviceValue(4); break;
    default: return cudaErrorInvalidValue;
    }
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaFuncSetAttribute(void const*, enum cudaFuncAttribute attr, int value)
{
    logLine("funcSetAttribute %d %d", static_cast<int>(attr), value);
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t)
{
    logLine("memsetAsync %zu", bytes);
    std::memset(ptr, value, bytes);
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaMemcpyAsync(void*, void const*, size_t bytes, enum cudaMemcpyKind, cudaStream_t)
{
    logLine("memcpyAsync %zu", bytes);
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaPeekAtLastError(void)
{
    logLine("peekAtLastError");
    return cudaSuccess;
}

cudaError_t CUDARTAPI cudaGetLastError(void)
{
    logLine("getLastError");
    return cudaSuccess;
}

unsigned CUDARTAPI __cudaPushCallConfiguration(dim3 grid, dim3 block, size_t shared, struct CUstream_st*)
{
    gGrid = grid;
    gBlock = block;
    gShared = shared;
    return 0;
}

cudaError_t CUDARTAPI __cudaPopCallConfiguration(dim3* grid, dim3* block, size_t* shared, void* stream)
{
    *grid = gGrid;
    *block = gBlock;
    *shared = gShared;
    *static_cast<cudaStream_t*>(stream) = nullptr;
    return cudaSuccess;
}

cudaError_t CUDARTAPI __cudaGetKernel(cudaKernel_t* kernel, void const* function)
{
    *kernel = reinterpret_cast<cudaKernel_t>(const_cast<void*>(function));
    return cudaSuccess;
}

cudaError_t CUDARTAPI __cudaLaunchKernel(cudaKernel_t, dim3 grid, dim3 block, void**, size_t shared, cudaStream_t)
{
    logLine("launch %u %u %u %u %u %u %zu", grid.x, grid.y, grid.z, block.x, block.y, block.z, shared);
    return cudaSuccess;
}

} // extern "C"

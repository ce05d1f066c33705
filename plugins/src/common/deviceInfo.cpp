// queryCurrentDevice for the CUDA build (the host build plans for hostDevice()).
#include "common/deviceInfo.h"

#include <cuda_runtime_api.h>

namespace dflash
{

std::string queryCurrentDevice(DeviceInfo& device)
{
    int id = 0;
    cudaError_t status = cudaGetDevice(&id);
    int values[5] = {};
    cudaDeviceAttr const attributes[5] = {cudaDevAttrComputeCapabilityMajor, cudaDevAttrComputeCapabilityMinor,
        cudaDevAttrMultiProcessorCount, cudaDevAttrMaxSharedMemoryPerBlockOptin,
        cudaDevAttrMaxSharedMemoryPerMultiprocessor};
    for (int i = 0; i < 5 && status == cudaSuccess; ++i)
    {
        status = cudaDeviceGetAttribute(&values[i], attributes[i], id);
    }
    if (status != cudaSuccess)
    {
        // Not cleared with cudaGetLastError(): that could also swallow another component's pending error.
        return std::string("cannot query the CUDA device: ") + cudaGetErrorString(status);
    }
    device = DeviceInfo{values[0], values[1], values[2], values[3], values[4]};
    return "";
}

} // namespace dflash

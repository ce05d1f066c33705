// What the launches need to know about the GPU: compute capability, SM count and shared memory.
// The CUDA build queries the current device (queryCurrentDevice, once per plugin instance); the
// host build plans for hostDevice(), an H100 SXM.
#pragma once

#include <cstdint>
#include <string>

namespace dflash
{

struct DeviceInfo
{
    int32_t ccMajor;
    int32_t ccMinor;
    int32_t smCount;
    int32_t maxSmemPerCta; // bytes of dynamic shared memory one CTA may opt in to
    int32_t smemPerSm;     // bytes
};

// Plans never assume more SMs than this (GB300 has 160, RTX PRO 6000 188), so a workspace sized
// for kMaxSmCount fits the plan of any device.
constexpr int32_t kMaxSmCount = 256;

inline DeviceInfo hostDevice()
{
    return DeviceInfo{9, 0, 132, 227 * 1024, 228 * 1024};
}

inline DeviceInfo largestDevice()
{
    return DeviceInfo{12, 0, kMaxSmCount, 227 * 1024, 228 * 1024};
}

// The kernels are built as SASS for sm_80, sm_90, sm_100 and sm_120 and as compute_80 PTX, which
// the driver compiles for any newer GPU; older GPUs cannot run them.
inline std::string checkComputeCapability(DeviceInfo const& device)
{
    if (device.ccMajor < 8)
    {
        return "compute capability " + std::to_string(device.ccMajor) + "." + std::to_string(device.ccMinor)
            + " is not supported: the kernels need 8.0 or newer (built as sm_80, sm_90, sm_100, sm_120 SASS and "
              "compute_80 PTX)";
    }
    return "";
}

#ifdef DFLASH_TRT_CUDA_BUILD
// The current device's properties; "" on success, else the CUDA error.
std::string queryCurrentDevice(DeviceInfo& device);
#endif

// The device of a plugin instance (an execution context is bound to one device), queried once.
class DeviceCache
{
public:
    // "" and the device, else why the device is unknown.
    std::string get(DeviceInfo& device)
    {
#ifdef DFLASH_TRT_CUDA_BUILD
        if (!mKnown)
        {
            mError = queryCurrentDevice(mDevice);
            mKnown = mError.empty();
        }
        device = mDevice;
        return mError;
#else
        device = hostDevice();
        return "";
#endif
    }

private:
    DeviceInfo mDevice{};
    bool mKnown{false};
    std::string mError;
};

} // namespace dflash

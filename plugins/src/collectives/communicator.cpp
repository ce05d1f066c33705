#include "collectives/communicator.h"

#ifdef DFLASH_TRT_CUDA_BUILD
#include "collectives/collectiveLaunch.h"

#include <dlfcn.h>
#include <nccl.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#endif

namespace dflash
{
namespace collective
{

#ifdef DFLASH_TRT_CUDA_BUILD

static_assert(kUniqueIdBytes == NCCL_UNIQUE_ID_BYTES && sizeof(ncclUniqueId) == NCCL_UNIQUE_ID_BYTES,
    "the exported unique id buffer must hold an ncclUniqueId");

namespace
{

constexpr int kMinNcclVersion = 21000; // 2.10: ncclBfloat16

// The NCCL entry points used here, typed by nccl.h's own declarations.
struct Nccl
{
    decltype(&ncclGetVersion) getVersion;
    decltype(&ncclGetErrorString) getErrorString;
    decltype(&ncclGetUniqueId) getUniqueId;
    decltype(&ncclCommInitRank) commInitRank;
    decltype(&ncclCommCount) commCount;
    decltype(&ncclCommDestroy) commDestroy;
    decltype(&ncclAllReduce) allReduce;
    decltype(&ncclAllGather) allGather;
};

// The process-wide state, guarded by gMutex: enqueue copies it (the copy is a few words).
struct State
{
    Nccl nccl{};
    bool loaded{false};
    ncclComm_t comm{nullptr};
    int32_t rank{0};
    int32_t world{0};
};

std::mutex gMutex;
State gState;

template <typename Fn>
bool resolve(void* handle, char const* name, Fn& fn)
{
    fn = reinterpret_cast<Fn>(dlsym(handle, name));
    return fn != nullptr;
}

// Opens libnccl once; "" or why not. The caller holds gMutex.
std::string loadNccl()
{
    if (gState.loaded)
    {
        return "";
    }
    char const* const env = std::getenv("DFLASH_TRT_NCCL_LIBRARY");
    std::string const path = env != nullptr && *env != '\0' ? env : "libnccl.so.2";
    void* const handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr)
    {
        char const* const reason = dlerror();
        return "cannot load " + path + " (" + (reason == nullptr ? "unknown error" : reason)
            + "): install NCCL (pip install nvidia-nccl-cu13) and put its lib directory on LD_LIBRARY_PATH, or set "
              "DFLASH_TRT_NCCL_LIBRARY to its libnccl.so.2";
    }
    Nccl n{};
    bool const complete = resolve(handle, "ncclGetVersion", n.getVersion)
        && resolve(handle, "ncclGetErrorString", n.getErrorString) && resolve(handle, "ncclGetUniqueId", n.getUniqueId)
        && resolve(handle, "ncclCommInitRank", n.commInitRank) && resolve(handle, "ncclCommCount", n.commCount)
        && resolve(handle, "ncclCommDestroy", n.commDestroy)
        && resolve(handle, "ncclAllReduce", n.allReduce) && resolve(handle, "ncclAllGather", n.allGather);
    int version = 0;
    if (!complete || n.getVersion(&version) != ncclSuccess)
    {
        dlclose(handle);
        return path + " is not a usable NCCL library (missing entry points)";
    }
    if (version < kMinNcclVersion)
    {
        dlclose(handle);
        return path + " is NCCL " + std::to_string(version) + ", older than 2.10 (no bfloat16)";
    }
    gState.nccl = n;
    gState.loaded = true; // never closed: communicators and engines may use it until the process exits
    return "";
}

std::string ncclError(State const& s, char const* call, ncclResult_t result)
{
    return std::string(call) + " failed: " + s.nccl.getErrorString(result);
}

ncclDataType_t ncclType(ElemType type)
{
    switch (type)
    {
    case ElemType::kFLOAT32: return ncclFloat32;
    case ElemType::kFLOAT16: return ncclFloat16;
    case ElemType::kBFLOAT16: return ncclBfloat16;
    }
    return ncclFloat32;
}

// A copy of the state when its communicator has groupSize ranks, else the reason.
std::string snapshot(int32_t groupSize, State& out)
{
    std::lock_guard<std::mutex> lock(gMutex);
    if (gState.comm == nullptr)
    {
        return "no NCCL communicator in this process: the runtime must call dflash_trt_nccl_init(id, rank, world) "
               "before it runs an engine with collectives";
    }
    if (gState.world != groupSize)
    {
        return "the NCCL communicator has " + std::to_string(gState.world) + " ranks, the engine was built for group_size "
            + std::to_string(groupSize);
    }
    out = gState;
    return "";
}

std::string copy(void const* in, void* out, size_t count, ElemType type, cudaStream_t stream)
{
    if (in == out)
    {
        return "";
    }
    return launchGatherTranspose(in, out, 1, 1, static_cast<int64_t>(count), type, stream) == 0 ? ""
                                                                                                  : "copy launch failed";
}

} // namespace

std::string uniqueId(char* out)
{
    std::lock_guard<std::mutex> lock(gMutex);
    std::string const error = loadNccl();
    if (!error.empty())
    {
        return error;
    }
    ncclUniqueId id{};
    ncclResult_t const result = gState.nccl.getUniqueId(&id);
    if (result != ncclSuccess)
    {
        return ncclError(gState, "ncclGetUniqueId", result);
    }
    std::memcpy(out, id.internal, kUniqueIdBytes);
    return "";
}

std::string init(char const* id, int32_t rank, int32_t world)
{
    if (world < 1 || rank < 0 || rank >= world)
    {
        return "rank " + std::to_string(rank) + " of world " + std::to_string(world)
            + ": need world >= 1 and 0 <= rank < world";
    }
    std::lock_guard<std::mutex> lock(gMutex);
    if (gState.comm != nullptr)
    {
        return "this process already has an NCCL communicator (rank " + std::to_string(gState.rank) + " of "
            + std::to_string(gState.world) + ")";
    }
    std::string const error = loadNccl();
    if (!error.empty())
    {
        return error;
    }
    ncclUniqueId uid{};
    std::memcpy(uid.internal, id, kUniqueIdBytes);
    ncclComm_t comm = nullptr;
    ncclResult_t result = gState.nccl.commInitRank(&comm, world, uid, rank);
    if (result != ncclSuccess)
    {
        return ncclError(gState, "ncclCommInitRank", result);
    }
    int count = 0;
    result = gState.nccl.commCount(comm, &count);
    if (result != ncclSuccess || count != world)
    {
        gState.nccl.commDestroy(comm);
        return "ncclCommInitRank made a communicator of " + std::to_string(count) + " ranks, expected "
            + std::to_string(world);
    }
    gState.comm = comm;
    gState.rank = rank;
    gState.world = world;
    return "";
}

std::string checkGroup(int32_t groupSize)
{
    State unused;
    return groupSize == 1 ? "" : snapshot(groupSize, unused);
}

std::string allReduce(void const* in, void* out, size_t count, ElemType type, int32_t groupSize, cudaStream_t stream)
{
    if (count == 0)
    {
        return "";
    }
    if (groupSize == 1)
    {
        return copy(in, out, count, type, stream);
    }
    State s;
    std::string const error = snapshot(groupSize, s);
    if (!error.empty())
    {
        return error;
    }
    ncclResult_t const result = s.nccl.allReduce(in, out, count, ncclType(type), ncclSum, s.comm, stream);
    return result == ncclSuccess ? "" : ncclError(s, "ncclAllReduce", result);
}

std::string allGather(void const* in, void* out, void* workspace, size_t outer, size_t chunk, ElemType type,
    int32_t groupSize, cudaStream_t stream)
{
    if (outer == 0 || chunk == 0)
    {
        return "";
    }
    if (groupSize == 1)
    {
        return copy(in, out, outer * chunk, type, stream);
    }
    State s;
    std::string const error = snapshot(groupSize, s);
    if (!error.empty())
    {
        return error;
    }
    if (outer == 1) // rank blocks are already the concatenation
    {
        ncclResult_t const result = s.nccl.allGather(in, out, chunk, ncclType(type), s.comm, stream);
        return result == ncclSuccess ? "" : ncclError(s, "ncclAllGather", result);
    }
    if (workspace == nullptr)
    {
        return "no workspace for the gathered rank blocks";
    }
    ncclResult_t const result = s.nccl.allGather(in, workspace, outer * chunk, ncclType(type), s.comm, stream);
    if (result != ncclSuccess)
    {
        return ncclError(s, "ncclAllGather", result);
    }
    return launchGatherTranspose(workspace, out, groupSize, static_cast<int64_t>(outer), static_cast<int64_t>(chunk),
               type, stream)
            == 0
        ? ""
        : "transpose launch failed";
}

#else // host build

namespace
{

std::string needsCudaBuild()
{
    return "the collectives (AllReduce, AllGather, NCCL) need the CUDA build of libdflash_trt_plugins.so; this is "
           "the host build, for TensorRT-RTX's CPU engine build only";
}

} // namespace

std::string uniqueId(char*)
{
    return needsCudaBuild();
}

std::string init(char const*, int32_t, int32_t)
{
    return needsCudaBuild();
}

std::string checkGroup(int32_t)
{
    return needsCudaBuild();
}

std::string allReduce(void const*, void*, size_t, ElemType, int32_t, cudaStream_t)
{
    return needsCudaBuild();
}

std::string allGather(void const*, void*, void*, size_t, size_t, ElemType, int32_t, cudaStream_t)
{
    return needsCudaBuild();
}

#endif

} // namespace collective
} // namespace dflash

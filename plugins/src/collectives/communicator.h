// The process-wide NCCL communicator the AllReduce and AllGather plugins run over, and the
// collectives themselves. The runtime creates the communicator before it deserializes an engine:
// rank 0 calls uniqueId(), hands the id to every rank (MPI), and each rank calls init() on its device
// (the exported dflash_trt_nccl_unique_id / dflash_trt_nccl_init, src/pluginLibrary.cpp).
//
// The CUDA build compiles against the real nccl.h and opens libnccl.so.2 with dlopen on first use
// ($DFLASH_TRT_NCCL_LIBRARY when set), so the library loads, and serves tp 1 engines, on hosts
// without NCCL. In the host build every function returns an error: the collectives need the CUDA
// build (the host build exists for TensorRT-RTX's CPU build, which never enqueues).
#pragma once

#include "common/floatTypes.h"

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace dflash
{
namespace collective
{

constexpr size_t kUniqueIdBytes = 128; // NCCL_UNIQUE_ID_BYTES (checked against nccl.h in the CUDA build)

// Every function returns "" on success, else the reason.

// A new NCCL unique id (rank 0 of the group creates it) into out[kUniqueIdBytes].
std::string uniqueId(char* out);

// Creates this process's communicator: rank `rank` of `world` on the current CUDA device. Refused when
// one exists already.
std::string init(char const* id, int32_t rank, int32_t world);

// "" when a communicator of groupSize ranks exists, else why the collective cannot run. groupSize 1
// needs none.
std::string checkGroup(int32_t groupSize);

// out = the sum of every rank's in (count elements; out may be in). With groupSize 1, a copy.
std::string allReduce(
    void const* in, void* out, size_t count, ElemType type, int32_t groupSize, cudaStream_t stream);

// The ranks' inputs [outer, chunk] concatenated per row in rank order: out [outer, groupSize * chunk].
// With outer > 1 NCCL gathers into workspace ([groupSize, outer, chunk], gatherWorkspaceBytes) and a
// kernel transposes it into out; with outer 1 NCCL gathers into out directly.
std::string allGather(void const* in, void* out, void* workspace, size_t outer, size_t chunk, ElemType type,
    int32_t groupSize, cudaStream_t stream);

// Workspace bytes allGather needs for an input of outer x chunk elements of `elemBytes` each.
inline size_t gatherWorkspaceBytes(size_t outer, size_t chunk, int32_t groupSize, size_t elemBytes)
{
    return outer > 1 ? outer * chunk * static_cast<size_t>(groupSize) * elemBytes : 0;
}

inline size_t elemBytes(ElemType type)
{
    return type == ElemType::kFLOAT32 ? 4 : 2;
}

} // namespace collective
} // namespace dflash

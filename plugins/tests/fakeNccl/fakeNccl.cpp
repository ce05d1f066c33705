// A stand-in libnccl.so.2 for machines without a GPU: the CUDA build of the plugins opens it through
// $DFLASH_TRT_NCCL_LIBRARY, so the collectives' enqueue runs its host side for real (communicator checks,
// counts, buffers, workspace) while tests/fakeCudart answers the CUDA runtime. The functions are defined
// against the real nccl.h, so the compiler checks every signature against NVIDIA's declarations.
//
// The communicator simulates a group whose every rank holds this rank's data, on host memory: all-reduce
// writes nranks * x (fp32 only), all-gather writes nranks copies of x (any type). Each call is appended to
// $FAKE_CUDART_LOG as one line: "ncclAllReduce <count> <datatype> <op> <in-place>" or
// "ncclAllGather <sendcount> <datatype>".
#include <nccl.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

struct ncclComm
{
    int nranks;
    int rank;
};

namespace
{

void logLine(char const* text)
{
    if (char const* path = std::getenv("FAKE_CUDART_LOG"))
    {
        if (FILE* file = std::fopen(path, "a"))
        {
            std::fprintf(file, "%s\n", text);
            std::fclose(file);
        }
    }
}

size_t elemBytes(ncclDataType_t type)
{
    return type == ncclFloat32 ? 4 : type == ncclFloat16 || type == ncclBfloat16 ? 2 : 0;
}

} // namespace

extern "C"
{

ncclResult_t ncclGetVersion(int* version)
{
    *version = NCCL_VERSION_CODE;
    return ncclSuccess;
}

char const* ncclGetErrorString(ncclResult_t result)
{
    return result == ncclSuccess ? "no error" : "fake NCCL error";
}

ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId)
{
    std::memset(uniqueId->internal, 'F', NCCL_UNIQUE_ID_BYTES);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank)
{
    if (commId.internal[0] != 'F')
    {
        return ncclInvalidArgument;
    }
    *comm = new ncclComm{nranks, rank};
    return ncclSuccess;
}

ncclResult_t ncclCommCount(const ncclComm_t comm, int* count)
{
    *count = comm->nranks;
    return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm)
{
    delete comm;
    return ncclSuccess;
}

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclRedOp_t op,
    ncclComm_t comm, cudaStream_t)
{
    char line[128];
    std::snprintf(line, sizeof(line), "ncclAllReduce %zu %d %d %d", count, static_cast<int>(datatype),
        static_cast<int>(op), sendbuff == recvbuff ? 1 : 0);
    logLine(line);
    if (datatype != ncclFloat32 || op != ncclSum)
    {
        return ncclInvalidArgument;
    }
    for (size_t i = 0; i < count; ++i)
    {
        static_cast<float*>(recvbuff)[i] = static_cast<float const*>(sendbuff)[i] * static_cast<float>(comm->nranks);
    }
    return ncclSuccess;
}

ncclResult_t ncclAllGather(
    const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype, ncclComm_t comm, cudaStream_t)
{
    char line[128];
    std::snprintf(line, sizeof(line), "ncclAllGather %zu %d", sendcount, static_cast<int>(datatype));
    logLine(line);
    size_t const bytes = sendcount * elemBytes(datatype);
    for (int r = 0; r < comm->nranks; ++r)
    {
        std::memcpy(static_cast<char*>(recvbuff) + r * bytes, sendbuff, bytes);
    }
    return ncclSuccess;
}

} // extern "C"

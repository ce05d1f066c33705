// Entry points TensorRT looks up when it loads this library (IPluginRegistry::loadLibrary,
// trtexec --dynamicPlugins, the ONNX parser's plugin import): setLoggerFinder and getCreators.
// The library holds only IPluginV3 creators, so there is no getPluginCreators (IPluginV2 list).
// The runtime's entry points: dflashTrtPluginsBackend, and the NCCL communicator of the collectives
// (dflash_trt_nccl_unique_id, dflash_trt_nccl_init).
#include "allGather/allGatherPlugin.h"
#include "allReduce/allReducePlugin.h"
#include "collectives/communicator.h"
#include "common/pluginBase.h"
#include "dflashAcceptTokens/dflashAcceptTokensPlugin.h"
#include "dflashBlockAttention/dflashBlockAttentionPlugin.h"
#include "dflashContextKVAppend/dflashContextKVAppendPlugin.h"

#define DFLASH_TRT_EXPORT extern "C" __attribute__((visibility("default")))

DFLASH_TRT_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder)
{
    dflash::setLoggerFinder(finder);
}

DFLASH_TRT_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static dflash::PluginCreator<dflash::DFlashBlockAttentionPlugin> blockAttention;
    static dflash::PluginCreator<dflash::DFlashContextKVAppendPlugin> contextKvAppend;
    static dflash::PluginCreator<dflash::DFlashAcceptTokensPlugin> acceptTokens;
    static dflash::PluginCreator<dflash::DFlashPagedBlockAttentionPlugin> pagedBlockAttention;
    static dflash::PluginCreator<dflash::DFlashPagedKVAppendPlugin> pagedKvAppend;
    static dflash::PluginCreator<dflash::AllReducePlugin> allReduce;
    static dflash::PluginCreator<dflash::AllGatherPlugin> allGather;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {
        &blockAttention, &contextKvAppend, &acceptTokens, &pagedBlockAttention, &pagedKvAppend, &allReduce, &allGather};
    nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
    return creators;
}

// "cuda" when enqueue launches CUDA kernels on device memory, "host" when it runs the same math
// on host memory (a DFLASH_TRT_CUDA=OFF build, for CPU-only testing; never load it into a GPU engine).
DFLASH_TRT_EXPORT char const* dflashTrtPluginsBackend()
{
#ifdef DFLASH_TRT_CUDA_BUILD
    return "cuda";
#else
    return "host";
#endif
}

namespace
{

// The message of the calling thread's last failed NCCL entry point (valid until its next call).
char const* ncclStatus(std::string const& error)
{
    thread_local std::string message;
    message = error;
    return message.empty() ? nullptr : message.c_str();
}

} // namespace

// Writes a new NCCL unique id (128 bytes, NCCL_UNIQUE_ID_BYTES) to `out`: rank 0 calls this and sends
// the id to the other ranks. Returns NULL on success, else why not (the host build always fails).
DFLASH_TRT_EXPORT char const* dflash_trt_nccl_unique_id(char out[128])
{
    return ncclStatus(out == nullptr ? "null output buffer" : dflash::collective::uniqueId(out));
}

// Creates the process-wide communicator of the AllReduce/AllGather plugins: rank `rank` of `world`,
// on the current CUDA device, from rank 0's unique id. Every rank calls it (it blocks until all have)
// before deserializing an engine with collectives. Returns NULL on success, else why not.
DFLASH_TRT_EXPORT char const* dflash_trt_nccl_init(char const id[128], int rank, int world)
{
    return ncclStatus(id == nullptr ? "null unique id" : dflash::collective::init(id, rank, world));
}

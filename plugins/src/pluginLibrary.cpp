// Entry points TensorRT looks up when it loads this library (IPluginRegistry::loadLibrary,
// trtexec --dynamicPlugins, the ONNX parser's plugin import): setLoggerFinder and getCreators.
// The library holds only IPluginV3 creators, so there is no getPluginCreators (IPluginV2 list).
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
    static nvinfer1::IPluginCreatorInterface* const creators[]
        = {&blockAttention, &contextKvAppend, &acceptTokens, &pagedBlockAttention, &pagedKvAppend};
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

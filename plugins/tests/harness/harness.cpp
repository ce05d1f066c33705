#include "harness.h"

#include <dlfcn.h>

#include <cstdio>
#include <cstring>
#include <sstream>
#include <stdexcept>

namespace harness
{

void Runner::run(std::string const& name, std::function<void()> const& body)
{
    try
    {
        body();
        std::printf("PASS %s\n", name.c_str());
    }
    catch (CaseFailure const& f)
    {
        ++mFailures;
        std::printf("FAIL %s: %s\n", name.c_str(), f.message.c_str());
    }
    std::fflush(stdout);
}

void CapturingLogger::log(Severity severity, char const* message) noexcept
{
    if (severity <= Severity::kERROR)
    {
        mErrors.emplace_back(message);
    }
}

std::vector<std::string> CapturingLogger::takeErrors()
{
    std::vector<std::string> errors;
    errors.swap(mErrors);
    return errors;
}

PluginLibrary::PluginLibrary(std::string const& path)
    : mHandle(dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL))
{
    if (mHandle == nullptr)
    {
        throw std::runtime_error(std::string("dlopen failed: ") + dlerror());
    }
}

PluginLibrary::~PluginLibrary()
{
    dlclose(mHandle);
}

std::vector<nvinfer1::IPluginCreatorInterface*> PluginLibrary::creators() const
{
    using GetCreators = nvinfer1::IPluginCreatorInterface* const* (*) (int32_t&);
    auto const getCreators = reinterpret_cast<GetCreators>(dlsym(mHandle, "getCreators"));
    if (getCreators == nullptr)
    {
        throw CaseFailure{"the library exports no getCreators"};
    }
    int32_t count = -1;
    nvinfer1::IPluginCreatorInterface* const* list = getCreators(count);
    return std::vector<nvinfer1::IPluginCreatorInterface*>(list, list + count);
}

nvinfer1::IPluginCreatorV3One* PluginLibrary::creator(std::string const& name) const
{
    for (nvinfer1::IPluginCreatorInterface* c : creators())
    {
        auto* const v3 = static_cast<nvinfer1::IPluginCreatorV3One*>(c);
        if (std::strcmp(c->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0 && name == v3->getPluginName())
        {
            return v3;
        }
    }
    throw CaseFailure{"no IPluginCreatorV3One named " + name};
}

void PluginLibrary::setLoggerFinder(nvinfer1::ILoggerFinder* finder) const
{
    using SetLoggerFinder = void (*)(nvinfer1::ILoggerFinder*);
    auto const fn = reinterpret_cast<SetLoggerFinder>(dlsym(mHandle, "setLoggerFinder"));
    if (fn == nullptr)
    {
        throw CaseFailure{"the library exports no setLoggerFinder"};
    }
    fn(finder);
}

void* PluginLibrary::symbol(char const* name) const
{
    return dlsym(mHandle, name);
}

std::string PluginLibrary::backend() const
{
    using Backend = char const* (*) ();
    auto const fn = reinterpret_cast<Backend>(dlsym(mHandle, "dflashTrtPluginsBackend"));
    return fn == nullptr ? "" : fn();
}

Fields& Fields::add(char const* name, void const* data, size_t bytes, nvinfer1::PluginFieldType type, int32_t length)
{
    auto const* const begin = static_cast<unsigned char const*>(data);
    mValues.emplace_back(begin, begin + (data == nullptr ? 0 : bytes));
    mFields.emplace_back(name, data == nullptr ? nullptr : mValues.back().data(), type, length);
    return *this;
}

Fields& Fields::i32(char const* name, int32_t value)
{
    return add(name, &value, sizeof(value), nvinfer1::PluginFieldType::kINT32, 1);
}

Fields& Fields::i64(char const* name, int64_t value)
{
    return add(name, &value, sizeof(value), nvinfer1::PluginFieldType::kINT64, 1);
}

Fields& Fields::f32(char const* name, float value)
{
    return add(name, &value, sizeof(value), nvinfer1::PluginFieldType::kFLOAT32, 1);
}

Fields& Fields::f64(char const* name, double value)
{
    return add(name, &value, sizeof(value), nvinfer1::PluginFieldType::kFLOAT64, 1);
}

nvinfer1::PluginFieldCollection const* Fields::collection()
{
    mCollection.nbFields = static_cast<int32_t>(mFields.size());
    mCollection.fields = mFields.data();
    return &mCollection;
}

nvinfer1::Dims dims(std::vector<int64_t> const& extents)
{
    nvinfer1::Dims d{};
    d.nbDims = static_cast<int32_t>(extents.size());
    for (size_t i = 0; i < extents.size(); ++i)
    {
        d.d[i] = extents[i];
    }
    return d;
}

nvinfer1::PluginTensorDesc tensorDesc(nvinfer1::DataType type, std::vector<int64_t> const& extents)
{
    nvinfer1::PluginTensorDesc desc{};
    desc.dims = dims(extents);
    desc.type = type;
    desc.format = nvinfer1::TensorFormat::kLINEAR;
    desc.scale = -1.0f;
    return desc;
}

nvinfer1::DynamicPluginTensorDesc dynamicDesc(nvinfer1::DataType type, std::vector<int64_t> const& extents)
{
    nvinfer1::DynamicPluginTensorDesc desc{};
    desc.desc = tensorDesc(type, extents);
    desc.min = desc.opt = desc.max = desc.desc.dims;
    return desc;
}

nvinfer1::IPluginV3OneCore* core(nvinfer1::IPluginV3* plugin)
{
    return static_cast<nvinfer1::IPluginV3OneCore*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kCORE));
}

nvinfer1::IPluginV3OneBuild* build(nvinfer1::IPluginV3* plugin)
{
    return static_cast<nvinfer1::IPluginV3OneBuild*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kBUILD));
}

nvinfer1::IPluginV3OneRuntime* runtime(nvinfer1::IPluginV3* plugin)
{
    return static_cast<nvinfer1::IPluginV3OneRuntime*>(
        plugin->getCapabilityInterface(nvinfer1::PluginCapabilityType::kRUNTIME));
}

std::string describeFields(nvinfer1::PluginFieldCollection const* fc)
{
    std::ostringstream out;
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        nvinfer1::PluginField const& f = fc->fields[i];
        out << f.name << "=";
        if (f.type == nvinfer1::PluginFieldType::kINT32 && f.length == 1)
        {
            out << *static_cast<int32_t const*>(f.data);
        }
        else if (f.type == nvinfer1::PluginFieldType::kFLOAT32 && f.length == 1)
        {
            out << *static_cast<float const*>(f.data);
        }
        else if (f.type == nvinfer1::PluginFieldType::kCHAR && f.length >= 0)
        {
            out << std::string(static_cast<char const*>(f.data), static_cast<size_t>(f.length));
        }
        else
        {
            out << "<type " << static_cast<int32_t>(f.type) << " length " << f.length << ">";
        }
        out << ";";
    }
    return out.str();
}

void expectRefused(nvinfer1::IPluginCreatorV3One* creator, CapturingLogger& logger, Fields& fields,
    std::string const& expected)
{
    logger.takeErrors();
    PluginPtr plugin(creator->createPlugin("refused", fields.collection(), nvinfer1::TensorRTPhase::kBUILD));
    std::vector<std::string> const errors = logger.takeErrors();
    EXPECT(plugin == nullptr, "createPlugin accepted fields that should be refused (" + expected + ")");
    EXPECT(errors.size() == 1, "expected one logged error for: " + expected);
    EXPECT(errors[0].find(expected) != std::string::npos, "logged '" + errors[0] + "', expected it to contain '" + expected + "'");
    EXPECT(errors[0].find(creator->getPluginName()) != std::string::npos, "the message names the plugin: " + errors[0]);
}

} // namespace harness

// usage: dflash_trt_plugin_harness <libdflash_trt_plugins.so> [--expect-enqueue-error | --fake-cuda-runtime |
//                                                               --fake-nccl]
int main(int argc, char** argv)
{
    if (argc < 2)
    {
        std::fprintf(stderr,
            "usage: %s <libdflash_trt_plugins.so> [--expect-enqueue-error | --fake-cuda-runtime | --fake-nccl]\n",
            argv[0]);
        return 2;
    }
    harness::Runner runner;
    try
    {
        harness::PluginLibrary library(argv[1]);
        harness::CapturingLogger logger;
        harness::LoggerFinder finder(&logger);
        library.setLoggerFinder(&finder);
        bool const host = library.backend() == "host";
        bool const expectEnqueueError = argc > 2 && std::strcmp(argv[2], "--expect-enqueue-error") == 0;
        bool const fakeRuntime = argc > 2 && std::strcmp(argv[2], "--fake-cuda-runtime") == 0;
        bool const fakeNccl = argc > 2 && std::strcmp(argv[2], "--fake-nccl") == 0;
        std::printf("backend %s\n", library.backend().c_str());
        harness::Context ctx{runner, library, logger, host, !host && expectEnqueueError};
        if (fakeNccl)
        {
            harness::fakeNcclCases(ctx);
            std::printf("SUMMARY failures=%d\n", runner.failures());
            return runner.failures() == 0 ? 0 : 1;
        }
        if (fakeRuntime)
        {
            harness::fakeRuntimeCases(ctx);
            std::printf("SUMMARY failures=%d\n", runner.failures());
            return runner.failures() == 0 ? 0 : 1;
        }
        harness::blockAttentionCases(ctx);
        harness::contextKvAppendCases(ctx);
        harness::acceptTokensCases(ctx);
        harness::collectiveCases(ctx);
        runner.run("null_logger_finder", [&] {
            // TensorRT-RTX hands the library a null finder: errors must still be reported (stderr), not crash.
            library.setLoggerFinder(nullptr);
            harness::Fields fields;
            fields.i32("num_heads", 0).i32("num_kv_heads", 1).i32("head_dim", 64);
            harness::PluginPtr plugin(library.creator("DFlashBlockAttention")
                                          ->createPlugin("null_finder", fields.collection(), nvinfer1::TensorRTPhase::kBUILD));
            library.setLoggerFinder(&finder);
            EXPECT(plugin == nullptr, "invalid fields accepted with a null logger finder");
        });
    }
    catch (std::exception const& e)
    {
        std::printf("FAIL setup: %s\n", e.what());
        return 1;
    }
    catch (harness::CaseFailure const& f)
    {
        std::printf("FAIL setup: %s\n", f.message.c_str());
        return 1;
    }
    std::printf("SUMMARY failures=%d\n", runner.failures());
    return runner.failures() == 0 ? 0 : 1;
}

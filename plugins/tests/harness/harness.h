// Shared pieces of the plugin harness: case runner, plugin library loading, a capturing logger,
// PluginFieldCollection and tensor descriptor builders.
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace harness
{

struct CaseFailure
{
    std::string message;
};

#define EXPECT(cond, what)                                                                                             \
    do                                                                                                                 \
    {                                                                                                                  \
        if (!(cond))                                                                                                   \
        {                                                                                                              \
            throw ::harness::CaseFailure{std::string(what) + " [" #cond "] at line " + std::to_string(__LINE__)};      \
        }                                                                                                              \
    } while (0)

// Runs named cases; prints "PASS <name>" or "FAIL <name>: <reason>" for each.
class Runner
{
public:
    void run(std::string const& name, std::function<void()> const& body);
    int32_t failures() const
    {
        return mFailures;
    }

private:
    int32_t mFailures{0};
};

class CapturingLogger : public nvinfer1::ILogger
{
public:
    void log(Severity severity, char const* message) noexcept override;
    // Error messages logged since the last call.
    std::vector<std::string> takeErrors();

private:
    std::vector<std::string> mErrors;
};

class LoggerFinder : public nvinfer1::ILoggerFinder
{
public:
    explicit LoggerFinder(nvinfer1::ILogger* logger)
        : mLogger(logger)
    {
    }
    nvinfer1::ILogger* findLogger() override
    {
        return mLogger;
    }

private:
    nvinfer1::ILogger* mLogger;
};

// The plugin library under test, opened with dlopen and used only through its exported entry points.
class PluginLibrary
{
public:
    explicit PluginLibrary(std::string const& path);
    ~PluginLibrary();
    PluginLibrary(PluginLibrary const&) = delete;
    PluginLibrary& operator=(PluginLibrary const&) = delete;

    std::vector<nvinfer1::IPluginCreatorInterface*> creators() const;
    nvinfer1::IPluginCreatorV3One* creator(std::string const& name) const;
    void setLoggerFinder(nvinfer1::ILoggerFinder* finder) const;
    std::string backend() const;
    void* symbol(char const* name) const; // an exported symbol, or nullptr

private:
    void* mHandle;
};

// A PluginFieldCollection whose values live as long as the builder.
class Fields
{
public:
    Fields& i32(char const* name, int32_t value);
    Fields& i64(char const* name, int64_t value);
    Fields& f32(char const* name, float value);
    Fields& f64(char const* name, double value);
    // A field holding a copy of `bytes` bytes of data (data may be null), declared with type and length.
    Fields& add(char const* name, void const* data, size_t bytes, nvinfer1::PluginFieldType type, int32_t length);
    nvinfer1::PluginFieldCollection const* collection();

private:
    std::deque<std::vector<unsigned char>> mValues;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mCollection{};
};

nvinfer1::Dims dims(std::vector<int64_t> const& extents);
nvinfer1::DynamicPluginTensorDesc dynamicDesc(nvinfer1::DataType type, std::vector<int64_t> const& extents);
nvinfer1::PluginTensorDesc tensorDesc(nvinfer1::DataType type, std::vector<int64_t> const& extents);

using PluginPtr = std::unique_ptr<nvinfer1::IPluginV3>;

nvinfer1::IPluginV3OneCore* core(nvinfer1::IPluginV3* plugin);
nvinfer1::IPluginV3OneBuild* build(nvinfer1::IPluginV3* plugin);
nvinfer1::IPluginV3OneRuntime* runtime(nvinfer1::IPluginV3* plugin);

// Field values of a PluginFieldCollection as text "name=value;...", to compare serializations.
std::string describeFields(nvinfer1::PluginFieldCollection const* fc);

// Checks that creating `plugin` with `fields` fails, logging exactly one error containing `expected`.
void expectRefused(nvinfer1::IPluginCreatorV3One* creator, CapturingLogger& logger, Fields& fields,
    std::string const& expected);

// Everything a case file needs to run its cases.
struct Context
{
    Runner& runner;
    PluginLibrary& library;
    CapturingLogger& logger;
    bool runEnqueue;      // host backend: enqueue on host memory is compared with a reference
    bool expectEnqueueError; // CUDA backend without a device: enqueue must fail cleanly
};

void blockAttentionCases(Context& ctx);
void contextKvAppendCases(Context& ctx);
void acceptTokensCases(Context& ctx);
void collectiveCases(Context& ctx);
void fakeNcclCases(Context& ctx); // CUDA build on tests/fakeCudart and tests/fakeNccl (--fake-nccl)
void fakeRuntimeCases(Context& ctx); // CUDA build with tests/fakeCudart preloaded (--fake-cuda-runtime)

} // namespace harness

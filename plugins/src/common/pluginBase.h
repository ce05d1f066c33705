// What the three IPluginV3 plugins share: the capability plumbing, identity, clone, attribute
// serialization, shape-check plumbing and error reporting, and a creator that parses, validates and
// reports attributes.
#pragma once

#include "common/deviceInfo.h"
#include "common/pluginFields.h"
#include "common/pluginLogging.h"
#include "common/shapeCheck.h"
#include "common/tensorrt.h"

#include <array>
#include <cstdint>
#include <exception>
#include <string>
#include <vector>

namespace dflash
{

// The IPluginV3 plumbing every plugin shares, written once for a plugin class Derived (CRTP).
// BuildInterface is IPluginV3OneBuild, or IPluginV3OneBuildV2 for plugins that alias outputs to inputs.
//
// Derived provides (and may hide deviceError, see below):
//  - kName, kNumInputs (an enumerator of its input enum) and kNumOutputs;
//  - a constructor from Attributes (inheriting PluginBase's does);
//  - std::string checkShapes(nvinfer1::Dims const* dims, int32_t nbInputs, int32_t nbOutputs) const
//    (it may be static): "" when the inputs' shapes (unknown extents -1) fit the contract, else the
//    reason. configurePlugin and onShapeChange run it; getOutputShapes and enqueue should too.
// Attributes has fieldRefs() and validate() (see PluginCreator); its fields are serialized.
template <typename Derived, typename AttributesT, typename BuildInterface>
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public BuildInterface,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
    using Attributes = AttributesT;

    explicit PluginBase(Attributes const& attributes)
        : mAttributes(attributes)
    {
    }

    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override
    {
        switch (type)
        {
        case nvinfer1::PluginCapabilityType::kCORE: return static_cast<nvinfer1::IPluginV3OneCore*>(this);
        case nvinfer1::PluginCapabilityType::kBUILD: return static_cast<BuildInterface*>(this);
        case nvinfer1::PluginCapabilityType::kRUNTIME: return static_cast<nvinfer1::IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    nvinfer1::IPluginV3* clone() noexcept override
    {
        try
        {
            return new Derived(mAttributes);
        }
        catch (std::exception const& e)
        {
            logError(std::string(Derived::kName) + " clone: " + e.what());
            return nullptr;
        }
    }

    char const* getPluginName() const noexcept override
    {
        return Derived::kName;
    }

    char const* getPluginVersion() const noexcept override
    {
        return kPluginVersion;
    }

    char const* getPluginNamespace() const noexcept override
    {
        return kPluginNamespace;
    }

    int32_t getNbOutputs() const noexcept override
    {
        return Derived::kNumOutputs;
    }

    // Build time: the shapes, and the build device when there is one (see deviceError).
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const*, int32_t nbOutputs) noexcept override
    {
        if (checkInputs(in, nbInputs, nbOutputs) != 0)
        {
            return -1;
        }
        return reportError(static_cast<Derived*>(this)->deviceError(false), " configure");
    }

    // Run time: the shapes and the device the engine runs on.
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const*,
        int32_t nbOutputs) noexcept override
    {
        if (checkInputs(in, nbInputs, nbOutputs) != 0)
        {
            return -1;
        }
        return reportError(static_cast<Derived*>(this)->deviceError(true), " onShapeChange");
    }

    // "" when the plugin's kernels can run on the current device, else why not: every kernel needs
    // compute capability 8.0 or newer; a plugin with further requirements hides this. requireDevice
    // is false at build time, where a builder without a usable device is not an error (TensorRT-RTX
    // builds on a CPU). The host build plans for hostDevice().
    std::string deviceError(bool requireDevice)
    {
        DeviceInfo device{};
        std::string const error = mDevice.get(device);
        if (!error.empty())
        {
            return requireDevice ? error : "";
        }
        return checkComputeCapability(device);
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override
    {
        return clone();
    }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        mSerialized = toPluginFields(mAttributes.fieldRefs(), true);
        mSerializedCollection.nbFields = static_cast<int32_t>(mSerialized.size());
        mSerializedCollection.fields = mSerialized.data();
        return &mSerializedCollection;
    }

protected:
    // The dims of the first min(nbInputs, kNumInputs) inputs, as an array of kNumInputs (the rest
    // are empty). Build-time expressions keep their constants; the other extents become -1.
    template <typename Desc>
    static auto inputDims(Desc const* inputs, int32_t nbInputs)
    {
        std::array<nvinfer1::Dims, Derived::kNumInputs> dims{};
        for (int32_t i = 0; i < nbInputs && i < Derived::kNumInputs; ++i)
        {
            dims[i] = dimsOf(inputs[i]);
        }
        return dims;
    }

    // Runs Derived::checkShapes on the inputs; logs "<name>: <reason>" and returns -1 when they do
    // not fit, else returns 0.
    template <typename Desc>
    int32_t checkInputs(Desc const* inputs, int32_t nbInputs, int32_t nbOutputs) const
    {
        auto const dims = inputDims(inputs, nbInputs);
        return reportError(static_cast<Derived const*>(this)->checkShapes(dims.data(), nbInputs, nbOutputs));
    }

    // 0 when error is empty; else logs "<name><context>: <error>" and returns -1.
    static int32_t reportError(std::string const& error, char const* context = "")
    {
        if (error.empty())
        {
            return 0;
        }
        logError(std::string(Derived::kName) + context + ": " + error);
        return -1;
    }

    // The status of a launch, logged when it failed.
    static int32_t reportLaunch(int32_t status)
    {
        if (status != 0)
        {
            logError(std::string(Derived::kName) + " enqueue: launch failed");
        }
        return status;
    }

    // Whether pos is a tensor of a call with the plugin's input and output counts, in linear format:
    // what supportsFormatCombination requires of every tensor before looking at its type.
    static bool isLinearTensor(
        int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs)
    {
        return nbInputs == Derived::kNumInputs && nbOutputs == Derived::kNumOutputs && pos >= 0
            && pos < nbInputs + nbOutputs && inOut[pos].desc.format == nvinfer1::TensorFormat::kLINEAR;
    }

    Attributes mAttributes;
    DeviceCache mDevice; // the device of this instance (an execution context is bound to one)

private:
    static nvinfer1::Dims dimsOf(nvinfer1::DimsExprs const& exprs)
    {
        return toDims(exprs);
    }

    static nvinfer1::Dims dimsOf(nvinfer1::DynamicPluginTensorDesc const& desc)
    {
        return desc.desc.dims;
    }

    static nvinfer1::Dims dimsOf(nvinfer1::PluginTensorDesc const& desc)
    {
        return desc.dims;
    }

    std::vector<nvinfer1::PluginField> mSerialized;
    nvinfer1::PluginFieldCollection mSerializedCollection{};
};

// Plugin provides kName, an Attributes type with fieldRefs() and validate() ("" when valid), and
// a constructor from Attributes (a PluginBase gives the last two).
template <typename Plugin>
class PluginCreator : public nvinfer1::IPluginCreatorV3One
{
public:
    PluginCreator()
        : mFieldNames(toPluginFields(typename Plugin::Attributes{}.fieldRefs(), false))
    {
        mFieldNameCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
        mFieldNameCollection.fields = mFieldNames.data();
    }

    char const* getPluginName() const noexcept override
    {
        return Plugin::kName;
    }

    char const* getPluginVersion() const noexcept override
    {
        return kPluginVersion;
    }

    char const* getPluginNamespace() const noexcept override
    {
        return kPluginNamespace;
    }

    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return &mFieldNameCollection;
    }

    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase) noexcept override
    {
        std::string const where = std::string(Plugin::kName) + " '" + (name == nullptr ? "" : name) + "': ";
        try
        {
            typename Plugin::Attributes attributes;
            std::string error = readFields(fc, attributes.fieldRefs());
            if (error.empty())
            {
                error = attributes.validate();
            }
            if (!error.empty())
            {
                logError(where + error);
                return nullptr;
            }
            return new Plugin(attributes);
        }
        catch (std::exception const& e)
        {
            logError(where + e.what());
            return nullptr;
        }
    }

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldNameCollection{};
};

} // namespace dflash

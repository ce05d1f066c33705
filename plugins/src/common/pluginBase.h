// What the three IPluginV3 plugins share: the capability plumbing, identity, attribute
// serialization, and a creator that parses, validates and reports attributes.
#pragma once

#include "common/pluginFields.h"
#include "common/pluginLogging.h"
#include "common/tensorrt.h"

#include <exception>
#include <string>
#include <vector>

namespace dflash
{

// BuildInterface is IPluginV3OneBuild, or IPluginV3OneBuildV2 for plugins that alias outputs to inputs.
template <typename BuildInterface>
class PluginBase : public nvinfer1::IPluginV3,
                   public nvinfer1::IPluginV3OneCore,
                   public BuildInterface,
                   public nvinfer1::IPluginV3OneRuntime
{
public:
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

    char const* getPluginVersion() const noexcept override
    {
        return kPluginVersion;
    }

    char const* getPluginNamespace() const noexcept override
    {
        return kPluginNamespace;
    }

    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override
    {
        return clone();
    }

    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override
    {
        mSerialized = toPluginFields(fieldRefs(), true);
        mSerializedCollection.nbFields = static_cast<int32_t>(mSerialized.size());
        mSerializedCollection.fields = mSerialized.data();
        return &mSerializedCollection;
    }

protected:
    // The plugin's attributes, pointing into this object.
    virtual std::vector<FieldRef> fieldRefs() = 0;

private:
    std::vector<nvinfer1::PluginField> mSerialized;
    nvinfer1::PluginFieldCollection mSerializedCollection{};
};

// Plugin provides kName, an Attributes type with fieldRefs() and validate() ("" when valid), and
// a constructor from Attributes.
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

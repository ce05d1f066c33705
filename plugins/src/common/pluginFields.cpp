#include "common/pluginFields.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace dflash
{
namespace
{

char const* typeName(nvinfer1::PluginFieldType type)
{
    switch (type)
    {
    case nvinfer1::PluginFieldType::kINT32: return "INT32";
    case nvinfer1::PluginFieldType::kINT64: return "INT64";
    case nvinfer1::PluginFieldType::kFLOAT32: return "FLOAT32";
    case nvinfer1::PluginFieldType::kFLOAT64: return "FLOAT64";
    case nvinfer1::PluginFieldType::kCHAR: return "CHAR";
    default: return "an unsupported type";
    }
}

std::string readString(nvinfer1::PluginField const& field, FieldRef const& ref, std::string const& where)
{
    if (field.type != nvinfer1::PluginFieldType::kCHAR)
    {
        return where + " has type " + typeName(field.type) + ", expected CHAR";
    }
    if (field.length < 0 || (field.length > 0 && field.data == nullptr))
    {
        return where + " has no characters for length " + std::to_string(field.length);
    }
    std::string value(static_cast<char const*>(field.data), static_cast<size_t>(field.length));
    while (!value.empty() && value.back() == '\0')
    {
        value.pop_back();
    }
    if (value.find('\0') != std::string::npos)
    {
        return where + " holds a NUL character";
    }
    *static_cast<std::string*>(ref.value) = value;
    return "";
}

std::string readOne(nvinfer1::PluginField const& field, FieldRef const& ref)
{
    std::string const where = std::string("field '") + ref.name + "'";
    if (ref.type == nvinfer1::PluginFieldType::kCHAR)
    {
        return readString(field, ref, where);
    }
    if (field.length != 1 || field.data == nullptr)
    {
        return where + " must hold exactly one value, got length " + std::to_string(field.length);
    }
    bool const wantInt = ref.type == nvinfer1::PluginFieldType::kINT32;
    if (wantInt && field.type == nvinfer1::PluginFieldType::kINT32)
    {
        std::memcpy(ref.value, field.data, sizeof(int32_t));
        return "";
    }
    if (wantInt && field.type == nvinfer1::PluginFieldType::kINT64)
    {
        int64_t v;
        std::memcpy(&v, field.data, sizeof(v));
        if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
        {
            return where + " value " + std::to_string(v) + " does not fit INT32";
        }
        *static_cast<int32_t*>(ref.value) = static_cast<int32_t>(v);
        return "";
    }
    if (!wantInt && field.type == nvinfer1::PluginFieldType::kFLOAT32)
    {
        std::memcpy(ref.value, field.data, sizeof(float));
        return "";
    }
    if (!wantInt && field.type == nvinfer1::PluginFieldType::kFLOAT64)
    {
        double v;
        std::memcpy(&v, field.data, sizeof(v));
        *static_cast<float*>(ref.value) = static_cast<float>(v);
        return "";
    }
    return where + " has type " + typeName(field.type) + ", expected " + typeName(ref.type);
}

} // namespace

std::string readFields(nvinfer1::PluginFieldCollection const* fc, std::vector<FieldRef> const& refs)
{
    std::vector<bool> seen(refs.size(), false);
    int32_t const count = fc == nullptr ? 0 : fc->nbFields;
    for (int32_t i = 0; i < count; ++i)
    {
        nvinfer1::PluginField const& field = fc->fields[i];
        char const* const name = field.name == nullptr ? "" : field.name;
        size_t r = 0;
        while (r < refs.size() && std::strcmp(refs[r].name, name) != 0)
        {
            ++r;
        }
        if (r == refs.size())
        {
            return std::string("unknown field '") + name + "'";
        }
        if (seen[r])
        {
            return std::string("field '") + name + "' given twice";
        }
        seen[r] = true;
        std::string error = readOne(field, refs[r]);
        if (!error.empty())
        {
            return error;
        }
    }
    for (size_t r = 0; r < refs.size(); ++r)
    {
        if (refs[r].required && !seen[r])
        {
            return std::string("missing required field '") + refs[r].name + "'";
        }
    }
    return "";
}

std::vector<nvinfer1::PluginField> toPluginFields(std::vector<FieldRef> const& refs, bool withData)
{
    std::vector<nvinfer1::PluginField> fields;
    fields.reserve(refs.size());
    for (FieldRef const& ref : refs)
    {
        if (ref.type == nvinfer1::PluginFieldType::kCHAR)
        {
            std::string const& value = *static_cast<std::string const*>(ref.value);
            fields.emplace_back(ref.name, withData ? value.c_str() : nullptr, ref.type,
                withData ? static_cast<int32_t>(value.size()) : 1);
            continue;
        }
        fields.emplace_back(ref.name, withData ? ref.value : nullptr, ref.type, 1);
    }
    return fields;
}

} // namespace dflash

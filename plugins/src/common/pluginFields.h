// Typed plugin attributes <-> nvinfer1::PluginFieldCollection.
#pragma once

#include "common/tensorrt.h"

#include <cstdint>
#include <string>
#include <vector>

namespace dflash
{

// One attribute of a plugin: its field name and type, where its value lives, and whether the
// creator requires it (optional attributes keep the value they already hold).
struct FieldRef
{
    char const* name;
    nvinfer1::PluginFieldType type; // kINT32, kFLOAT32 or kCHAR (value is then a std::string)
    void* value;
    bool required;
};

// FieldRefs whose type follows the value's: INT32 for int32_t, FLOAT32 for float, CHAR for std::string.
inline FieldRef requiredField(char const* name, int32_t& value)
{
    return {name, nvinfer1::PluginFieldType::kINT32, &value, true};
}

inline FieldRef optionalField(char const* name, int32_t& value)
{
    return {name, nvinfer1::PluginFieldType::kINT32, &value, false};
}

inline FieldRef optionalField(char const* name, float& value)
{
    return {name, nvinfer1::PluginFieldType::kFLOAT32, &value, false};
}

inline FieldRef optionalField(char const* name, std::string& value)
{
    return {name, nvinfer1::PluginFieldType::kCHAR, &value, false};
}

// Reads fc into refs. INT32 attributes also accept an in-range INT64 field, FLOAT32 ones a
// FLOAT64 field (ONNX attributes are 64-bit). A CHAR attribute takes `length` characters, without
// the trailing NULs some writers count in. Returns "" on success, else the reason: unknown,
// duplicate or missing fields, wrong types or lengths.
std::string readFields(nvinfer1::PluginFieldCollection const* fc, std::vector<FieldRef> const& refs);

// Fields describing refs, pointing at the values when withData (serialization), else at nothing
// (a creator's field names). A CHAR field's length is its string's size (no NUL counted).
std::vector<nvinfer1::PluginField> toPluginFields(std::vector<FieldRef> const& refs, bool withData);

} // namespace dflash

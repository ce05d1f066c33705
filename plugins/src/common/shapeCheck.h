// Shape checks shared by build time (unknown extents are -1 and skipped) and run time.
#pragma once

#include "common/tensorrt.h"

#include <cstdint>
#include <limits>
#include <string>

namespace dflash
{

class ShapeCheck
{
public:
    // Checks the rank of input `index` and that its extents fit int32; false stops further checks.
    bool rank(int32_t index, char const* tensor, nvinfer1::Dims const& dims, int32_t expected)
    {
        if (!mError.empty())
        {
            return false;
        }
        if (dims.nbDims != expected)
        {
            mError = where(index, tensor) + " has rank " + std::to_string(dims.nbDims) + ", expected "
                + std::to_string(expected);
            return false;
        }
        for (int32_t axis = 0; axis < dims.nbDims; ++axis)
        {
            if (dims.d[axis] > std::numeric_limits<int32_t>::max())
            {
                mError = where(index, tensor) + " dim " + std::to_string(axis) + " exceeds INT32";
                return false;
            }
        }
        return true;
    }

    // Checks dims.d[axis] == expected when both are known (>= 0).
    void equal(int32_t index, char const* tensor, nvinfer1::Dims const& dims, int32_t axis, int64_t expected,
        char const* meaning)
    {
        int64_t const actual = dims.d[axis];
        if (mError.empty() && actual >= 0 && expected >= 0 && actual != expected)
        {
            mError = where(index, tensor) + " dim " + std::to_string(axis) + " is " + std::to_string(actual)
                + ", expected " + meaning + " = " + std::to_string(expected);
        }
    }

    // Records `reason` about input `index` unless an earlier check failed.
    void fail(int32_t index, char const* tensor, std::string const& reason)
    {
        if (mError.empty())
        {
            mError = where(index, tensor) + " " + reason;
        }
    }

    std::string const& error() const
    {
        return mError;
    }

private:
    static std::string where(int32_t index, char const* tensor)
    {
        return "input " + std::to_string(index) + " (" + tensor + ")";
    }

    std::string mError;
};

// Inputs DFlashBlockAttention and DFlashContextKVAppend share. Each check reports the first
// mismatch through c, as ShapeCheck does; the indices are the inputs' positions in the plugin.

// rope_cos and rope_sin: [max_pos, head_dim / 2], the same max_pos.
inline void checkRopeTables(
    ShapeCheck& c, nvinfer1::Dims const* dims, int32_t cosIndex, int32_t sinIndex, int64_t headDim)
{
    for (int32_t i : {cosIndex, sinIndex})
    {
        char const* const name = i == cosIndex ? "rope_cos" : "rope_sin";
        if (c.rank(i, name, dims[i], 2))
        {
            c.equal(i, name, dims[i], 1, headDim / 2, "head_dim / 2");
            c.equal(i, name, dims[i], 0, dims[cosIndex].d[0], "rope_cos dim 0");
        }
    }
}

// k_cache and v_cache: [batch, num_kv_heads, S, head_dim], the same S.
inline void checkKvCaches(ShapeCheck& c, nvinfer1::Dims const* dims, int32_t kIndex, int32_t vIndex, int64_t batch,
    int64_t numKvHeads, int64_t headDim)
{
    for (int32_t i : {kIndex, vIndex})
    {
        char const* const name = i == kIndex ? "k_cache" : "v_cache";
        if (c.rank(i, name, dims[i], 4))
        {
            c.equal(i, name, dims[i], 0, batch, "batch");
            c.equal(i, name, dims[i], 1, numKvHeads, "num_kv_heads");
            c.equal(i, name, dims[i], 2, dims[kIndex].d[2], "k_cache dim 2");
            c.equal(i, name, dims[i], 3, headDim, "head_dim");
        }
    }
}

// kv_pool: [2, pages, tokens_per_page, num_kv_heads, head_dim]; page_table: [batch, 2, max_pages];
// a sequence's capacity max_pages * tokens_per_page must fit INT32.
inline void checkKvPool(ShapeCheck& c, nvinfer1::Dims const* dims, int32_t poolIndex, int32_t tableIndex,
    int64_t batch, int64_t numKvHeads, int64_t headDim)
{
    nvinfer1::Dims const& pool = dims[poolIndex];
    nvinfer1::Dims const& table = dims[tableIndex];
    if (c.rank(poolIndex, "kv_pool", pool, 5))
    {
        c.equal(poolIndex, "kv_pool", pool, 0, 2, "2 (keys, values)");
        c.equal(poolIndex, "kv_pool", pool, 3, numKvHeads, "num_kv_heads");
        c.equal(poolIndex, "kv_pool", pool, 4, headDim, "head_dim");
    }
    if (c.rank(tableIndex, "page_table", table, 3))
    {
        c.equal(tableIndex, "page_table", table, 0, batch, "batch");
        c.equal(tableIndex, "page_table", table, 1, 2, "2 (key pages, value pages)");
        if (pool.nbDims == 5 && pool.d[2] > 0 && table.d[2] > 0
            && pool.d[2] * table.d[2] > std::numeric_limits<int32_t>::max())
        {
            c.fail(tableIndex, "page_table", "max_pages * tokens_per_page exceeds INT32");
        }
    }
}

// A per-sequence vector such as ctx_lens: [batch].
inline void checkPerSequence(ShapeCheck& c, nvinfer1::Dims const* dims, int32_t index, char const* name, int64_t batch)
{
    if (c.rank(index, name, dims[index], 1))
    {
        c.equal(index, name, dims[index], 0, batch, "batch");
    }
}

// Dims of build-time dimension expressions: constants are kept, the rest become -1.
inline nvinfer1::Dims toDims(nvinfer1::DimsExprs const& exprs)
{
    nvinfer1::Dims dims{};
    dims.nbDims = exprs.nbDims;
    for (int32_t axis = 0; axis < exprs.nbDims; ++axis)
    {
        dims.d[axis] = exprs.d[axis]->isConstant() ? exprs.d[axis]->getConstantValue() : -1;
    }
    return dims;
}

} // namespace dflash

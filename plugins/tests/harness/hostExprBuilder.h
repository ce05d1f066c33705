// A host implementation of TensorRT's IExprBuilder / IDimensionExpr, so that getOutputShapes
// can be called without TensorRT. An expression is a constant or a symbol (an input extent
// unknown at build time); operations fold constants and otherwise build the text "(a op b)".
#pragma once

#include <NvInferRuntime.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace harness
{

class HostDimExpr : public nvinfer1::IDimensionExpr
{
public:
    HostDimExpr(std::string text, bool constant, int64_t value)
        : mState(std::move(text), constant, value)
    {
        mImpl = &mState;
    }

    ~HostDimExpr() noexcept override = default;

    std::string const& text() const
    {
        return mState.text;
    }

private:
    struct State : nvinfer1::apiv::VDimensionExpr
    {
        State(std::string text_, bool constant_, int64_t value_)
            : text(std::move(text_))
            , constant(constant_)
            , value(value_)
        {
        }

        bool isConstant() const override
        {
            return constant;
        }

        int64_t getConstantValue() const override
        {
            return constant ? value : std::numeric_limits<int64_t>::min();
        }

        bool isSizeTensor() const override
        {
            return false;
        }

        std::string text;
        bool constant;
        int64_t value;
    };

    State mState;
};

class HostExprBuilder : public nvinfer1::IExprBuilder
{
public:
    HostExprBuilder()
    {
        mImpl = &mState;
    }

    ~HostExprBuilder() noexcept override = default;

    // An input extent unknown at build time, e.g. "b".
    nvinfer1::IDimensionExpr const* symbol(std::string const& name)
    {
        return mState.make(name, false, 0);
    }

    // Dims expressions of an input: a value < 0 becomes a symbol named after its position.
    nvinfer1::DimsExprs dims(std::vector<int64_t> const& extents, std::vector<std::string> const& names)
    {
        nvinfer1::DimsExprs out{};
        out.nbDims = static_cast<int32_t>(extents.size());
        for (size_t i = 0; i < extents.size(); ++i)
        {
            out.d[i] = extents[i] < 0 ? symbol(names.at(i)) : mState.constant(extents[i]);
        }
        return out;
    }

    static std::string text(nvinfer1::IDimensionExpr const* e)
    {
        return static_cast<HostDimExpr const*>(e)->text();
    }

private:
    struct State : nvinfer1::apiv::VExprBuilder
    {
        nvinfer1::IDimensionExpr const* make(std::string text, bool constant, int64_t value)
        {
            owned.push_back(std::make_unique<HostDimExpr>(std::move(text), constant, value));
            return owned.back().get();
        }

        nvinfer1::IDimensionExpr const* constant(int64_t value) override
        {
            return make(std::to_string(value), true, value);
        }

        nvinfer1::IDimensionExpr const* operation(nvinfer1::DimensionOperation op, nvinfer1::IDimensionExpr const& a,
            nvinfer1::IDimensionExpr const& b) override
        {
            static char const* const symbols[] = {"+", "*", " max ", " min ", "-", "==", "<", "//", " ceildiv "};
            int32_t const index = static_cast<int32_t>(op);
            if (index < 0 || index > 8)
            {
                return nullptr;
            }
            if (a.isConstant() && b.isConstant())
            {
                int64_t const value = fold(op, a.getConstantValue(), b.getConstantValue());
                return make(std::to_string(value), true, value);
            }
            return make("(" + HostExprBuilder::text(&a) + symbols[index] + HostExprBuilder::text(&b) + ")", false, 0);
        }

        nvinfer1::IDimensionExpr const* declareSizeTensor(
            int32_t, nvinfer1::IDimensionExpr const&, nvinfer1::IDimensionExpr const&) override
        {
            return nullptr; // no plugin here has size-tensor outputs
        }

        static int64_t fold(nvinfer1::DimensionOperation op, int64_t a, int64_t b)
        {
            using Op = nvinfer1::DimensionOperation;
            switch (op)
            {
            case Op::kSUM: return a + b;
            case Op::kPROD: return a * b;
            case Op::kMAX: return a > b ? a : b;
            case Op::kMIN: return a < b ? a : b;
            case Op::kSUB: return a - b;
            case Op::kEQUAL: return a == b;
            case Op::kLESS: return a < b;
            case Op::kFLOOR_DIV: return a / b - ((a % b != 0) && ((a < 0) != (b < 0)));
            case Op::kCEIL_DIV: return a / b + ((a % b != 0) && ((a < 0) == (b < 0)));
            }
            return 0;
        }

        std::vector<std::unique_ptr<HostDimExpr>> owned;
    };

    State mState;
};

} // namespace harness

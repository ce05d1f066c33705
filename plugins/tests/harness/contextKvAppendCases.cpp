// Harness cases of DFlashContextKVAppend.
#include "harness.h"
#include "hostExprBuilder.h"
#include "naiveMath.h"

#include <cmath>
#include <cstring>

namespace harness
{
namespace
{

using nvinfer1::DataType;

constexpr char const* kName = "DFlashContextKVAppend";

PluginPtr create(PluginLibrary& library, int32_t numKvHeads, int32_t headDim, int32_t qkNorm)
{
    Fields f;
    f.i32("num_kv_heads", numKvHeads).i32("head_dim", headDim).i32("qk_norm", qkNorm).f32("eps", 1e-6f);
    PluginPtr plugin(library.creator(kName)->createPlugin("append", f.collection(), nvinfer1::TensorRTPhase::kBUILD));
    EXPECT(plugin != nullptr, "createPlugin refused valid fields");
    return plugin;
}

std::vector<nvinfer1::DynamicPluginTensorDesc> descsFor(
    DataType t, int64_t b, int64_t n, int64_t kvHeads, int64_t headDim, int64_t S, int64_t maxPos)
{
    std::vector<int64_t> const cache{b, kvHeads, S, headDim};
    return {dynamicDesc(t, {b, n, 2 * kvHeads * headDim}), dynamicDesc(t, {headDim}),
        dynamicDesc(DataType::kFLOAT, {maxPos, headDim / 2}), dynamicDesc(DataType::kFLOAT, {maxPos, headDim / 2}),
        dynamicDesc(t, cache), dynamicDesc(t, cache), dynamicDesc(DataType::kINT32, {b}),
        dynamicDesc(DataType::kINT32, {b}), dynamicDesc(t, cache), dynamicDesc(t, cache)};
}

// Appends on host memory, in place (aliased) or into separate output caches, and compares every
// cache element with a naive reference: written rows hold k-normed, roped keys and raw values,
// every other element keeps its old value.
void checkAppend(Context& ctx, bool aliased)
{
    int32_t const b = 3, n = 4, kvHeads = 2, D = 64, S = 10, maxPos = 12;
    std::vector<int32_t> const ctxLens{2, 8, 0};
    std::vector<int32_t> const newLens{4, 4, 0}; // sequence 1 overflows the cache after 2 rows; sequence 2 appends nothing
    std::mt19937 rng(11);
    std::vector<float> const kv = randomVector(static_cast<size_t>(b) * n * 2 * kvHeads * D, rng);
    std::vector<float> const weight = randomVector(D, rng, 0.5f, 1.5f);
    std::vector<float> cosTable, sinTable;
    ropeTables(maxPos, D, cosTable, sinTable);
    std::vector<float> const kOld = randomVector(static_cast<size_t>(b) * kvHeads * S * D, rng);
    std::vector<float> const vOld = randomVector(kOld.size(), rng);

    std::vector<float> kIn = kOld, vIn = vOld, kOut(kOld.size(), -7.0f), vOut(vOld.size(), -7.0f);
    PluginPtr plugin = create(ctx.library, kvHeads, D, 1);
    auto const dyn = descsFor(DataType::kFLOAT, b, n, kvHeads, D, S, maxPos);
    std::vector<nvinfer1::PluginTensorDesc> descs;
    for (auto const& d : dyn)
    {
        descs.push_back(d.desc);
    }
    EXPECT(build(plugin.get())->configurePlugin(dyn.data(), 8, dyn.data() + 8, 2) == 0, "configurePlugin failed");
    void const* inputs[] = {kv.data(), weight.data(), cosTable.data(), sinTable.data(), kIn.data(), vIn.data(),
        ctxLens.data(), newLens.data()};
    void* outputs[] = {aliased ? kIn.data() : kOut.data(), aliased ? vIn.data() : vOut.data()};
    EXPECT(runtime(plugin.get())->enqueue(descs.data(), descs.data() + 8, inputs, outputs, nullptr, nullptr) == 0,
        "enqueue failed");
    std::vector<float> const& kNew = aliased ? kIn : kOut;
    std::vector<float> const& vNew = aliased ? vIn : vOut;

    std::vector<double> kExpected(kOld.begin(), kOld.end()), vExpected(vOld.begin(), vOld.end());
    for (int32_t s = 0; s < b; ++s)
    {
        for (int32_t row = 0; row < newLens[s] && ctxLens[s] + row < S; ++row)
        {
            int32_t const pos = ctxLens[s] + row;
            for (int32_t h = 0; h < kvHeads; ++h)
            {
                float const* token = kv.data() + (static_cast<size_t>(s) * n + row) * 2 * kvHeads * D;
                std::vector<double> const k
                    = naiveNormRope(token + h * D, weight.data(), cosTable.data(), sinTable.data(), pos, D, true, 1e-6);
                size_t const dst = ((static_cast<size_t>(s) * kvHeads + h) * S + pos) * D;
                for (int32_t d = 0; d < D; ++d)
                {
                    kExpected[dst + d] = k[d];
                    vExpected[dst + d] = token[(kvHeads + h) * D + d];
                }
            }
        }
    }
    for (size_t i = 0; i < kExpected.size(); ++i)
    {
        EXPECT(std::abs(kNew[i] - kExpected[i]) < 1e-5, "k_cache element " + std::to_string(i));
        EXPECT(vNew[i] == static_cast<float>(vExpected[i]), "v_cache element " + std::to_string(i));
    }
    if (!aliased)
    {
        EXPECT(kIn == kOld && vIn == vOld, "the input caches stay untouched when the outputs are separate");
    }
}

} // namespace

void contextKvAppendCases(Context& ctx)
{
    PluginLibrary& lib = ctx.library;

    ctx.runner.run("kv_append_field_names", [&] {
        nvinfer1::PluginFieldCollection const* fc = lib.creator(kName)->getFieldNames();
        std::vector<std::string> const names{"num_kv_heads", "head_dim", "qk_norm", "eps"};
        EXPECT(fc->nbFields == 4, "four fields");
        for (int32_t i = 0; i < 4; ++i)
        {
            EXPECT(names[i] == fc->fields[i].name, std::string("field ") + fc->fields[i].name);
        }
    });

    ctx.runner.run("kv_append_aliasing", [&] {
        PluginPtr plugin = create(lib, 2, 64, 1);
        nvinfer1::InterfaceInfo const info = build(plugin.get())->getInterfaceInfo();
        EXPECT(std::strcmp(info.kind, "PLUGIN_V3ONE_BUILD") == 0 && info.major == 2, "build interface V2 (aliasing)");
        auto* const v2 = static_cast<nvinfer1::IPluginV3OneBuildV2*>(build(plugin.get()));
        EXPECT(v2->getAliasedInput(0) == 4 && v2->getAliasedInput(1) == 5, "outputs alias k_cache and v_cache");
        EXPECT(v2->getAliasedInput(2) == -1, "no third output");
        EXPECT(build(plugin.get())->getNbOutputs() == 2, "two outputs");
    });

    ctx.runner.run("kv_append_output_shapes_and_types", [&] {
        PluginPtr plugin = create(lib, 2, 128, 1);
        HostExprBuilder eb;
        std::vector<nvinfer1::DimsExprs> in{eb.dims({-1, -1, 512}, {"b", "N"}), eb.dims({128}, {}),
            eb.dims({-1, 64}, {"P"}), eb.dims({-1, 64}, {"P"}), eb.dims({-1, 2, -1, 128}, {"b", "", "S"}),
            eb.dims({-1, 2, -1, 128}, {"b", "", "S"}), eb.dims({-1}, {"b"}), eb.dims({-1}, {"b"})};
        nvinfer1::DimsExprs out[2]{};
        EXPECT(build(plugin.get())->getOutputShapes(in.data(), 8, nullptr, 0, out, 2, eb) == 0, "getOutputShapes failed");
        for (auto const& o : out)
        {
            EXPECT(o.nbDims == 4 && HostExprBuilder::text(o.d[0]) == "b" && HostExprBuilder::text(o.d[2]) == "S"
                    && o.d[1]->getConstantValue() == 2 && o.d[3]->getConstantValue() == 128,
                "outputs have the cache shape");
        }
        in[0] = eb.dims({-1, -1, 256}, {"b", "N"});
        ctx.logger.takeErrors();
        EXPECT(build(plugin.get())->getOutputShapes(in.data(), 8, nullptr, 0, out, 2, eb) != 0, "kv width must match");
        EXPECT(ctx.logger.takeErrors().size() == 1, "the refusal is logged");
        DataType const types[] = {DataType::kBF16, DataType::kBF16, DataType::kFLOAT, DataType::kFLOAT,
            DataType::kBF16, DataType::kBF16, DataType::kINT32, DataType::kINT32};
        DataType outTypes[2]{};
        EXPECT(build(plugin.get())->getOutputDataTypes(outTypes, 2, types, 8) == 0, "getOutputDataTypes failed");
        EXPECT(outTypes[0] == DataType::kBF16 && outTypes[1] == DataType::kBF16, "outputs follow kv's type");
    });

    ctx.runner.run("kv_append_formats", [&] {
        PluginPtr plugin = create(lib, 2, 64, 1);
        auto* const b = build(plugin.get());
        auto descs = descsFor(DataType::kHALF, 2, 3, 2, 64, 16, 32);
        for (int32_t pos = 0; pos < 10; ++pos)
        {
            EXPECT(b->supportsFormatCombination(pos, descs.data(), 8, 2), "valid combination at " + std::to_string(pos));
        }
        descs[7].desc.type = DataType::kFLOAT;
        EXPECT(!b->supportsFormatCombination(7, descs.data(), 8, 2), "FLOAT new_lens");
        descs = descsFor(DataType::kHALF, 2, 3, 2, 64, 16, 32);
        descs[9].desc.type = DataType::kFLOAT;
        EXPECT(!b->supportsFormatCombination(9, descs.data(), 8, 2), "output type differs from kv");
        descs = descsFor(DataType::kHALF, 2, 3, 2, 64, 16, 32);
        descs[2].desc.type = DataType::kHALF;
        EXPECT(!b->supportsFormatCombination(2, descs.data(), 8, 2), "HALF rope_cos");
    });

    ctx.runner.run("kv_append_serialize_and_invalid_attributes", [&] {
        PluginPtr plugin = create(lib, 4, 128, 0);
        nvinfer1::PluginFieldCollection const* fields = runtime(plugin.get())->getFieldsToSerialize();
        std::string const expected = "num_kv_heads=4;head_dim=128;qk_norm=0;eps=1e-06;";
        EXPECT(describeFields(fields) == expected, "serialized fields: " + describeFields(fields));
        PluginPtr restored(lib.creator(kName)->createPlugin("restored", fields, nvinfer1::TensorRTPhase::kRUNTIME));
        EXPECT(restored != nullptr && describeFields(runtime(restored.get())->getFieldsToSerialize()) == expected,
            "round trip");
        nvinfer1::IPluginCreatorV3One* creator = lib.creator(kName);
        Fields zero;
        zero.i32("num_kv_heads", 0).i32("head_dim", 64);
        expectRefused(creator, ctx.logger, zero, "num_kv_heads (0) must be positive");
        Fields badDim;
        badDim.i32("num_kv_heads", 2).i32("head_dim", 32);
        expectRefused(creator, ctx.logger, badDim, "head_dim (32) must be 64 or 128");
        Fields attentionField;
        attentionField.i32("num_kv_heads", 2).i32("head_dim", 64).i32("num_heads", 8);
        expectRefused(creator, ctx.logger, attentionField, "unknown field 'num_heads'");
    });

    if (ctx.runEnqueue)
    {
        ctx.runner.run("kv_append_enqueue_host_in_place", [&] { checkAppend(ctx, true); });
        ctx.runner.run("kv_append_enqueue_host_separate_outputs", [&] { checkAppend(ctx, false); });
    }
}

} // namespace harness

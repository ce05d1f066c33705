// Harness cases of DFlashContextKVAppend.
#include "harness.h"
#include "hostExprBuilder.h"
#include "naiveMath.h"

#include <algorithm>
#include <cmath>
#include <random>
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

struct AppendProblem
{
    int32_t b = 3, n = 4, kvHeads = 2, D = 64, S = 10, maxPos = 12;
    std::vector<int32_t> ctxLens{2, 8, 0};
    std::vector<int32_t> newLens{4, 4, 0}; // sequence 1 overflows the cache after 2 rows; sequence 2 appends nothing
    std::vector<float> kv, weight, cosTable, sinTable, kOld, vOld;

    AppendProblem()
    {
        std::mt19937 rng(11);
        kv = randomVector(static_cast<size_t>(b) * n * 2 * kvHeads * D, rng);
        weight = randomVector(D, rng, 0.5f, 1.5f);
        ropeTables(maxPos, D, cosTable, sinTable);
        kOld = randomVector(static_cast<size_t>(b) * kvHeads * S * D, rng);
        vOld = randomVector(kOld.size(), rng);
    }

    // The caches after the append, per the contract, from a naive double computation.
    void expected(std::vector<double>& k, std::vector<double>& v) const
    {
        k.assign(kOld.begin(), kOld.end());
        v.assign(vOld.begin(), vOld.end());
        for (int32_t s = 0; s < b; ++s)
        {
            for (int32_t row = 0; row < newLens[s] && ctxLens[s] + row < S; ++row)
            {
                int32_t const pos = ctxLens[s] + row;
                for (int32_t h = 0; h < kvHeads; ++h)
                {
                    float const* token = kv.data() + (static_cast<size_t>(s) * n + row) * 2 * kvHeads * D;
                    std::vector<double> const key = naiveNormRope(
                        token + h * D, weight.data(), cosTable.data(), sinTable.data(), pos, D, true, 1e-6);
                    size_t const dst = ((static_cast<size_t>(s) * kvHeads + h) * S + pos) * D;
                    for (int32_t d = 0; d < D; ++d)
                    {
                        k[dst + d] = key[d];
                        v[dst + d] = token[(kvHeads + h) * D + d];
                    }
                }
            }
        }
    }
};

std::vector<nvinfer1::PluginTensorDesc> plainDescs(std::vector<nvinfer1::DynamicPluginTensorDesc> const& dyn)
{
    std::vector<nvinfer1::PluginTensorDesc> descs;
    for (auto const& d : dyn)
    {
        descs.push_back(d.desc);
    }
    return descs;
}

// Appends on host memory, in place (aliased) or with output buffers other than the caches, and
// compares every cache element with a naive reference: written rows hold k-normed, roped keys and
// raw values, every other element keeps its old value. Separate outputs must be refused.
void checkAppend(Context& ctx, bool aliased)
{
    AppendProblem const p;
    std::vector<float> kIn = p.kOld, vIn = p.vOld, kOut(p.kOld.size(), -7.0f), vOut(p.vOld.size(), -7.0f);
    PluginPtr plugin = create(ctx.library, p.kvHeads, p.D, 1);
    auto const dyn = descsFor(DataType::kFLOAT, p.b, p.n, p.kvHeads, p.D, p.S, p.maxPos);
    auto const descs = plainDescs(dyn);
    EXPECT(build(plugin.get())->configurePlugin(dyn.data(), 8, dyn.data() + 8, 2) == 0, "configurePlugin failed");
    void const* inputs[] = {p.kv.data(), p.weight.data(), p.cosTable.data(), p.sinTable.data(), kIn.data(), vIn.data(),
        p.ctxLens.data(), p.newLens.data()};
    void* outputs[] = {aliased ? kIn.data() : kOut.data(), aliased ? vIn.data() : vOut.data()};
    ctx.logger.takeErrors();
    int32_t const status = runtime(plugin.get())->enqueue(descs.data(), descs.data() + 8, inputs, outputs, nullptr, nullptr);
    if (!aliased)
    {
        EXPECT(status != 0, "enqueue with outputs other than the caches must be refused, not copy the cache");
        std::vector<std::string> const errors = ctx.logger.takeErrors();
        EXPECT(errors.size() == 1 && errors[0].find("is not aliased to input 4") != std::string::npos
                && errors[0].find("kALIASED_PLUGIN_IO_10_03") != std::string::npos,
            "the refusal names the aliasing and the preview feature");
        EXPECT(kIn == p.kOld && vIn == p.vOld, "the caches stay untouched");
        EXPECT(kOut == std::vector<float>(kOut.size(), -7.0f), "nothing is written to the outputs");
        return;
    }
    EXPECT(status == 0, "enqueue failed");
    std::vector<double> kExpected, vExpected;
    p.expected(kExpected, vExpected);
    for (size_t i = 0; i < kExpected.size(); ++i)
    {
        EXPECT(std::abs(kIn[i] - kExpected[i]) < 1e-5, "k_cache element " + std::to_string(i));
        EXPECT(vIn[i] == static_cast<float>(vExpected[i]), "v_cache element " + std::to_string(i));
    }
}

// The same append into a paged pool (pages of 5 positions, key and value pages shuffled
// independently, one page of sequence 0 missing): the pool read back through the page table equals
// the reference wherever a page exists, and nothing else in the pool changes.
void checkPagedAppend(Context& ctx)
{
    AppendProblem const p;
    int32_t const tpp = 5, maxPages = (p.S + tpp - 1) / tpp, numPages = p.b * maxPages + 2;
    size_t const half = static_cast<size_t>(numPages) * tpp * p.kvHeads * p.D;
    std::mt19937 rng(5);
    std::vector<float> pool = randomVector(2 * half, rng);
    std::vector<int32_t> table(static_cast<size_t>(p.b) * 2 * maxPages);
    for (int32_t which = 0; which < 2; ++which)
    {
        std::vector<int32_t> pages(static_cast<size_t>(numPages));
        for (int32_t i = 0; i < numPages; ++i)
        {
            pages[i] = i;
        }
        std::shuffle(pages.begin(), pages.end(), rng);
        for (int32_t s = 0; s < p.b; ++s)
        {
            for (int32_t i = 0; i < maxPages; ++i)
            {
                table[(static_cast<size_t>(s) * 2 + which) * maxPages + i] = pages[s * maxPages + i];
            }
        }
    }
    auto slot = [&](int32_t s, int32_t which, int32_t h, int32_t pos) -> int64_t {
        int32_t const page = table[(static_cast<size_t>(s) * 2 + which) * maxPages + pos / tpp];
        if (page < 0 || page >= numPages)
        {
            return -1;
        }
        return which * static_cast<int64_t>(half) + ((static_cast<int64_t>(page) * tpp + pos % tpp) * p.kvHeads + h) * p.D;
    };
    // Seed the pool with the old caches, then drop sequence 0's key page for positions 5..9.
    for (int32_t s = 0; s < p.b; ++s)
    {
        for (int32_t h = 0; h < p.kvHeads; ++h)
        {
            for (int32_t pos = 0; pos < p.S; ++pos)
            {
                size_t const src = ((static_cast<size_t>(s) * p.kvHeads + h) * p.S + pos) * p.D;
                std::copy(p.kOld.begin() + src, p.kOld.begin() + src + p.D, pool.begin() + slot(s, 0, h, pos));
                std::copy(p.vOld.begin() + src, p.vOld.begin() + src + p.D, pool.begin() + slot(s, 1, h, pos));
            }
        }
    }
    table[(0 * 2 + 0) * maxPages + 1] = -1;
    std::vector<float> const before = pool;

    Fields f;
    f.i32("num_kv_heads", p.kvHeads).i32("head_dim", p.D).i32("qk_norm", 1).f32("eps", 1e-6f);
    PluginPtr plugin(ctx.library.creator("DFlashPagedKVAppend")->createPlugin("paged", f.collection(),
        nvinfer1::TensorRTPhase::kBUILD));
    EXPECT(plugin != nullptr, "createPlugin refused valid fields");
    std::vector<int64_t> const poolShape{2, numPages, tpp, p.kvHeads, p.D};
    std::vector<nvinfer1::DynamicPluginTensorDesc> const dyn{
        dynamicDesc(DataType::kFLOAT, {p.b, p.n, 2 * p.kvHeads * p.D}), dynamicDesc(DataType::kFLOAT, {p.D}),
        dynamicDesc(DataType::kFLOAT, {p.maxPos, p.D / 2}), dynamicDesc(DataType::kFLOAT, {p.maxPos, p.D / 2}),
        dynamicDesc(DataType::kFLOAT, poolShape), dynamicDesc(DataType::kINT32, {p.b, 2, maxPages}),
        dynamicDesc(DataType::kINT32, {p.b}), dynamicDesc(DataType::kINT32, {p.b}), dynamicDesc(DataType::kFLOAT, poolShape)};
    auto const descs = plainDescs(dyn);
    for (int32_t pos = 0; pos < 9; ++pos)
    {
        EXPECT(build(plugin.get())->supportsFormatCombination(pos, dyn.data(), 8, 1), "paged format at " + std::to_string(pos));
    }
    EXPECT(build(plugin.get())->configurePlugin(dyn.data(), 8, dyn.data() + 8, 1) == 0, "configurePlugin failed");
    void const* inputs[] = {p.kv.data(), p.weight.data(), p.cosTable.data(), p.sinTable.data(), pool.data(), table.data(),
        p.ctxLens.data(), p.newLens.data()};
    std::vector<float> other(pool.size(), 0.0f);
    void* refused[] = {other.data()};
    ctx.logger.takeErrors();
    EXPECT(runtime(plugin.get())->enqueue(descs.data(), descs.data() + 8, inputs, refused, nullptr, nullptr) != 0,
        "an output other than the pool must be refused");
    EXPECT(ctx.logger.takeErrors().size() == 1 && pool == before, "refused, logged, pool untouched");
    void* outputs[] = {pool.data()};
    EXPECT(runtime(plugin.get())->enqueue(descs.data(), descs.data() + 8, inputs, outputs, nullptr, nullptr) == 0,
        "paged enqueue failed");

    std::vector<double> kExpected, vExpected;
    p.expected(kExpected, vExpected);
    std::vector<bool> touched(pool.size(), false);
    for (int32_t s = 0; s < p.b; ++s)
    {
        for (int32_t h = 0; h < p.kvHeads; ++h)
        {
            for (int32_t pos = 0; pos < p.S; ++pos)
            {
                size_t const ref = ((static_cast<size_t>(s) * p.kvHeads + h) * p.S + pos) * p.D;
                int64_t const k = slot(s, 0, h, pos);
                int64_t const v = slot(s, 1, h, pos);
                bool const rowWritten = pos >= p.ctxLens[s] && pos < p.ctxLens[s] + p.newLens[s];
                bool const skipped = k < 0; // no key page: the row is not written at all
                for (int32_t d = 0; d < p.D; ++d)
                {
                    if (k >= 0)
                    {
                        touched[k + d] = true;
                        EXPECT(std::abs(pool[k + d] - kExpected[ref + d]) < 1e-5, "pool key at seq " + std::to_string(s)
                                + " pos " + std::to_string(pos));
                    }
                    touched[v + d] = true;
                    double const want = rowWritten && skipped ? p.vOld[ref + d] : vExpected[ref + d];
                    EXPECT(pool[v + d] == static_cast<float>(want), "pool value at seq " + std::to_string(s) + " pos "
                            + std::to_string(pos));
                }
            }
        }
    }
    for (size_t i = 0; i < pool.size(); ++i)
    {
        EXPECT(touched[i] || pool[i] == before[i], "pool element " + std::to_string(i) + " outside every page changed");
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
        ctx.runner.run("kv_append_enqueue_host_separate_outputs_refused", [&] { checkAppend(ctx, false); });
        ctx.runner.run("paged_kv_append_enqueue_host", [&] { checkPagedAppend(ctx); });
    }
    ctx.runner.run("paged_kv_append_aliasing_and_shapes", [&] {
        Fields f;
        f.i32("num_kv_heads", 2).i32("head_dim", 64);
        PluginPtr plugin(lib.creator("DFlashPagedKVAppend")->createPlugin("paged", f.collection(),
            nvinfer1::TensorRTPhase::kBUILD));
        EXPECT(plugin != nullptr, "createPlugin refused valid fields");
        auto* const v2 = static_cast<nvinfer1::IPluginV3OneBuildV2*>(build(plugin.get()));
        EXPECT(v2->getNbOutputs() == 1 && v2->getAliasedInput(0) == 4 && v2->getAliasedInput(1) == -1,
            "one output, aliased to kv_pool");
        HostExprBuilder eb;
        std::vector<nvinfer1::DimsExprs> in{eb.dims({-1, -1, 256}, {"b", "N"}), eb.dims({64}, {}),
            eb.dims({-1, 32}, {"P"}), eb.dims({-1, 32}, {"P"}), eb.dims({2, -1, 16, 2, 64}, {"", "pages"}),
            eb.dims({-1, 2, -1}, {"b", "", "M"}), eb.dims({-1}, {"b"}), eb.dims({-1}, {"b"})};
        nvinfer1::DimsExprs out[1]{};
        EXPECT(build(plugin.get())->getOutputShapes(in.data(), 8, nullptr, 0, out, 1, eb) == 0, "getOutputShapes failed");
        EXPECT(out[0].nbDims == 5 && HostExprBuilder::text(out[0].d[1]) == "pages" && out[0].d[2]->getConstantValue() == 16,
            "the output has the pool's shape");
        in[4] = eb.dims({2, -1, 16, 3, 64}, {"", "pages"});
        ctx.logger.takeErrors();
        EXPECT(build(plugin.get())->getOutputShapes(in.data(), 8, nullptr, 0, out, 1, eb) != 0, "pool kv heads must match");
        std::vector<std::string> const errors = ctx.logger.takeErrors();
        EXPECT(errors.size() == 1 && errors[0].find("kv_pool") != std::string::npos, "the message names kv_pool");
    });
}

} // namespace harness

// Harness cases of DFlashBlockAttention (and of the library's creator list).
#include "harness.h"
#include "hostExprBuilder.h"
#include "naiveMath.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

namespace harness
{
namespace
{

using nvinfer1::DataType;

constexpr char const* kName = "DFlashBlockAttention";

struct Config
{
    int32_t numHeads{8};
    int32_t numKvHeads{2};
    int32_t headDim{64};
    int32_t window{0};
    int32_t qkNorm{1};
    float eps{1e-6f};
};

Fields fieldsOf(Config const& c)
{
    Fields f;
    f.i32("num_heads", c.numHeads).i32("num_kv_heads", c.numKvHeads).i32("head_dim", c.headDim);
    f.i32("window", c.window).i32("qk_norm", c.qkNorm).f32("eps", c.eps);
    return f;
}

PluginPtr create(PluginLibrary& library, Config const& c)
{
    Fields f = fieldsOf(c);
    PluginPtr plugin(library.creator(kName)->createPlugin("attn", f.collection(), nvinfer1::TensorRTPhase::kBUILD));
    EXPECT(plugin != nullptr, "createPlugin refused valid fields");
    return plugin;
}

// Input shapes of one call: b sequences, B block tokens, cache capacity S, RoPE rows maxPos.
std::vector<std::vector<int64_t>> inputShapes(Config const& c, int64_t b, int64_t B, int64_t S, int64_t maxPos)
{
    int64_t const width = static_cast<int64_t>(c.numHeads + 2 * c.numKvHeads) * c.headDim;
    return {{b, B, width}, {c.headDim}, {c.headDim}, {maxPos, c.headDim / 2}, {maxPos, c.headDim / 2},
        {b, c.numKvHeads, S, c.headDim}, {b, c.numKvHeads, S, c.headDim}, {b}};
}

std::vector<nvinfer1::DynamicPluginTensorDesc> dynamicDescs(
    std::vector<std::vector<int64_t>> const& shapes, DataType t, std::vector<int64_t> const& outShape)
{
    std::vector<DataType> const types{t, t, t, DataType::kFLOAT, DataType::kFLOAT, t, t, DataType::kINT32, t};
    std::vector<nvinfer1::DynamicPluginTensorDesc> descs;
    for (size_t i = 0; i < types.size(); ++i)
    {
        descs.push_back(dynamicDesc(types[i], i < shapes.size() ? shapes[i] : outShape));
    }
    return descs;
}

// One random fp32 problem and its double-precision reference.
struct Problem
{
    Config c;
    int32_t b, B, S, maxPos;
    std::vector<int32_t> ctxLens;
    std::vector<float> qkv, qWeight, kWeight, cosTable, sinTable, kCache, vCache;

    Problem(Config const& config, int32_t b_, int32_t B_, int32_t S_, std::vector<int32_t> ctx, uint32_t seed)
        : c(config), b(b_), B(B_), S(S_), maxPos(S_ + B_), ctxLens(std::move(ctx))
    {
        std::mt19937 rng(seed);
        qkv = randomVector(static_cast<size_t>(b) * B * (c.numHeads + 2 * c.numKvHeads) * c.headDim, rng);
        qWeight = randomVector(c.headDim, rng, 0.5f, 1.5f);
        kWeight = randomVector(c.headDim, rng, 0.5f, 1.5f);
        ropeTables(maxPos, c.headDim, cosTable, sinTable);
        kCache = randomVector(static_cast<size_t>(b) * c.numKvHeads * S * c.headDim, rng);
        vCache = randomVector(kCache.size(), rng);
    }

    float const* token(int32_t s, int32_t i, int32_t headSlot) const
    {
        return qkv.data() + ((static_cast<size_t>(s) * B + i) * (c.numHeads + 2 * c.numKvHeads) + headSlot) * c.headDim;
    }

    std::vector<double> reference() const
    {
        int32_t const D = c.headDim;
        int32_t const group = c.numHeads / c.numKvHeads;
        std::vector<double> out(static_cast<size_t>(b) * B * c.numHeads * D, std::nan(""));
        for (int32_t s = 0; s < b; ++s)
        {
            int32_t const ctx = ctxLens[s];
            if (ctx < 0 || ctx > S || ctx + B > maxPos)
            {
                continue;
            }
            for (int32_t h = 0; h < c.numHeads; ++h)
            {
                int32_t const kv = h / group;
                std::vector<std::vector<double>> keys, values;
                std::vector<int32_t> positions;
                for (int32_t j = 0; j < ctx; ++j)
                {
                    float const* k = kCache.data() + ((static_cast<size_t>(s) * c.numKvHeads + kv) * S + j) * D;
                    float const* v = vCache.data() + ((static_cast<size_t>(s) * c.numKvHeads + kv) * S + j) * D;
                    keys.emplace_back(k, k + D);
                    values.emplace_back(v, v + D);
                    positions.push_back(j);
                }
                for (int32_t j = 0; j < B; ++j)
                {
                    keys.push_back(naiveNormRope(token(s, j, c.numHeads + kv), kWeight.data(), cosTable.data(),
                        sinTable.data(), ctx + j, D, c.qkNorm != 0, c.eps));
                    float const* v = token(s, j, c.numHeads + c.numKvHeads + kv);
                    values.emplace_back(v, v + D);
                    positions.push_back(ctx + j);
                }
                for (int32_t i = 0; i < B; ++i)
                {
                    std::vector<double> const q = naiveNormRope(token(s, i, h), qWeight.data(), cosTable.data(),
                        sinTable.data(), ctx + i, D, c.qkNorm != 0, c.eps);
                    std::vector<double> scores;
                    for (size_t j = 0; j < keys.size(); ++j)
                    {
                        bool const visible = c.window <= 0 || std::abs(ctx + i - positions[j]) < c.window;
                        double dot = 0.0;
                        for (int32_t d = 0; d < D; ++d)
                        {
                            dot += q[d] * keys[j][d];
                        }
                        scores.push_back(visible ? dot / std::sqrt(static_cast<double>(D))
                                                 : -std::numeric_limits<double>::infinity());
                    }
                    double const top = *std::max_element(scores.begin(), scores.end());
                    double sum = 0.0;
                    for (double& x : scores)
                    {
                        x = std::exp(x - top);
                        sum += x;
                    }
                    double* o = out.data() + ((static_cast<size_t>(s) * B + i) * c.numHeads + h) * D;
                    for (int32_t d = 0; d < D; ++d)
                    {
                        double acc = 0.0;
                        for (size_t j = 0; j < keys.size(); ++j)
                        {
                            acc += scores[j] * values[j][d];
                        }
                        o[d] = acc / sum;
                    }
                }
            }
        }
        return out;
    }

    // Runs the plugin's enqueue on host memory; returns its status and fills `out`.
    int32_t enqueue(nvinfer1::IPluginV3* plugin, std::vector<float>& out) const
    {
        std::vector<std::vector<int64_t>> const shapes = inputShapes(c, b, B, S, maxPos);
        std::vector<int64_t> const outShape{b, B, static_cast<int64_t>(c.numHeads) * c.headDim};
        std::vector<nvinfer1::DynamicPluginTensorDesc> const dyn = dynamicDescs(shapes, DataType::kFLOAT, outShape);
        std::vector<nvinfer1::PluginTensorDesc> descs;
        for (auto const& d : dyn)
        {
            descs.push_back(d.desc);
        }
        EXPECT(build(plugin)->configurePlugin(dyn.data(), 8, dyn.data() + 8, 1) == 0, "configurePlugin failed");
        if (runtime(plugin)->onShapeChange(descs.data(), 8, descs.data() + 8, 1) != 0)
        {
            return -2; // the run-time checks (shapes, device) refused the call
        }
        std::vector<unsigned char> workspace(build(plugin)->getWorkspaceSize(dyn.data(), 8, dyn.data() + 8, 1));
        out.assign(static_cast<size_t>(b) * B * c.numHeads * c.headDim, 0.0f);
        void const* inputs[] = {qkv.data(), qWeight.data(), kWeight.data(), cosTable.data(), sinTable.data(),
            kCache.data(), vCache.data(), ctxLens.data()};
        void* outputs[] = {out.data()};
        return runtime(plugin)->enqueue(descs.data(), descs.data() + 8, inputs, outputs, workspace.data(), nullptr);
    }
};

// The problem's caches moved into a paged pool: pages of tokensPerPage positions, key and value
// pages shuffled independently through the page table, every unused slot NaN.
struct PagedCopy
{
    int32_t tokensPerPage, maxPages, numPages;
    std::vector<float> pool;
    std::vector<int32_t> pageTable;

    PagedCopy(Problem const& p, int32_t tokensPerPage_, uint32_t seed)
        : tokensPerPage(tokensPerPage_)
        , maxPages((p.S + tokensPerPage_ - 1) / tokensPerPage_)
        , numPages(p.b * maxPages + 3)
    {
        int32_t const D = p.c.headDim;
        int32_t const kvHeads = p.c.numKvHeads;
        size_t const half = static_cast<size_t>(numPages) * tokensPerPage * kvHeads * D;
        pool.assign(2 * half, std::nanf(""));
        std::mt19937 rng(seed);
        for (int32_t which = 0; which < 2; ++which)
        {
            std::vector<int32_t> pages(static_cast<size_t>(numPages));
            for (int32_t i = 0; i < numPages; ++i)
            {
                pages[i] = i;
            }
            std::shuffle(pages.begin(), pages.end(), rng);
            pageTable.resize(static_cast<size_t>(p.b) * 2 * maxPages);
            for (int32_t s = 0; s < p.b; ++s)
            {
                for (int32_t i = 0; i < maxPages; ++i)
                {
                    pageTable[(static_cast<size_t>(s) * 2 + which) * maxPages + i] = pages[s * maxPages + i];
                }
            }
            std::vector<float> const& cache = which == 0 ? p.kCache : p.vCache;
            for (int32_t s = 0; s < p.b; ++s)
            {
                for (int32_t h = 0; h < kvHeads; ++h)
                {
                    for (int32_t pos = 0; pos < std::max(0, std::min(p.ctxLens[s], p.S)); ++pos)
                    {
                        int32_t const page = pageTable[(static_cast<size_t>(s) * 2 + which) * maxPages + pos / tokensPerPage];
                        float const* src = cache.data() + ((static_cast<size_t>(s) * kvHeads + h) * p.S + pos) * D;
                        float* dst = pool.data() + which * half
                            + ((static_cast<size_t>(page) * tokensPerPage + pos % tokensPerPage) * kvHeads + h) * D;
                        std::copy(src, src + D, dst);
                    }
                }
            }
        }
    }

    int32_t enqueue(nvinfer1::IPluginV3* plugin, Problem const& p, std::vector<float>& out) const
    {
        std::vector<std::vector<int64_t>> shapes = inputShapes(p.c, p.b, p.B, p.S, p.maxPos);
        shapes[5] = {2, numPages, tokensPerPage, p.c.numKvHeads, p.c.headDim};
        shapes[6] = {p.b, 2, maxPages};
        std::vector<int64_t> const outShape{p.b, p.B, static_cast<int64_t>(p.c.numHeads) * p.c.headDim};
        std::vector<nvinfer1::DynamicPluginTensorDesc> dyn = dynamicDescs(shapes, DataType::kFLOAT, outShape);
        dyn[6].desc.type = DataType::kINT32;
        std::vector<nvinfer1::PluginTensorDesc> descs;
        for (auto const& d : dyn)
        {
            descs.push_back(d.desc);
        }
        for (int32_t pos = 0; pos < 9; ++pos)
        {
            EXPECT(build(plugin)->supportsFormatCombination(pos, dyn.data(), 8, 1), "paged format at " + std::to_string(pos));
        }
        EXPECT(build(plugin)->configurePlugin(dyn.data(), 8, dyn.data() + 8, 1) == 0, "configurePlugin failed");
        EXPECT(runtime(plugin)->onShapeChange(descs.data(), 8, descs.data() + 8, 1) == 0, "onShapeChange failed");
        std::vector<unsigned char> workspace(build(plugin)->getWorkspaceSize(dyn.data(), 8, dyn.data() + 8, 1));
        out.assign(static_cast<size_t>(p.b) * p.B * p.c.numHeads * p.c.headDim, 0.0f);
        void const* inputs[] = {p.qkv.data(), p.qWeight.data(), p.kWeight.data(), p.cosTable.data(), p.sinTable.data(),
            pool.data(), pageTable.data(), p.ctxLens.data()};
        void* outputs[] = {out.data()};
        return runtime(plugin)->enqueue(descs.data(), descs.data() + 8, inputs, outputs, workspace.data(), nullptr);
    }
};

PluginPtr createPaged(PluginLibrary& library, Config const& c)
{
    Fields f = fieldsOf(c);
    PluginPtr plugin(library.creator("DFlashPagedBlockAttention")
                         ->createPlugin("paged", f.collection(), nvinfer1::TensorRTPhase::kBUILD));
    EXPECT(plugin != nullptr, "createPlugin refused valid fields");
    return plugin;
}

void checkOutput(std::vector<float> const& out, std::vector<double> const& expected)
{
    double worst = 0.0;
    for (size_t i = 0; i < out.size(); ++i)
    {
        if (std::isnan(expected[i]))
        {
            EXPECT(std::isnan(out[i]), "an invalid sequence must produce NaN at element " + std::to_string(i));
            continue;
        }
        worst = std::max(worst, std::abs(out[i] - expected[i]));
    }
    EXPECT(worst < 1e-4, "max abs error vs the double reference is " + std::to_string(worst));
}

void checkPagedAgainstReference(Context& ctx, Problem const& p, int32_t tokensPerPage)
{
    PagedCopy const paged(p, tokensPerPage, 99);
    PluginPtr plugin = createPaged(ctx.library, p.c);
    std::vector<float> out;
    EXPECT(paged.enqueue(plugin.get(), p, out) == 0, "paged enqueue failed");
    checkOutput(out, p.reference());
}

void checkAgainstReference(Context& ctx, Problem const& p)
{
    PluginPtr plugin = create(ctx.library, p.c);
    std::vector<float> out;
    EXPECT(p.enqueue(plugin.get(), out) == 0, "enqueue failed");
    checkOutput(out, p.reference());
}

} // namespace

void blockAttentionCases(Context& ctx)
{
    PluginLibrary& lib = ctx.library;

    ctx.runner.run("creators_exported", [&] {
        std::vector<nvinfer1::IPluginCreatorInterface*> const creators = lib.creators();
        std::vector<std::string> names;
        for (nvinfer1::IPluginCreatorInterface* c : creators)
        {
            nvinfer1::InterfaceInfo const info = c->getInterfaceInfo();
            EXPECT(std::strcmp(info.kind, "PLUGIN CREATOR_V3ONE") == 0 && info.major == 1, "creator is not V3One");
            auto* const v3 = static_cast<nvinfer1::IPluginCreatorV3One*>(c);
            EXPECT(std::strcmp(v3->getPluginVersion(), "1") == 0, "version must be \"1\"");
            EXPECT(std::strcmp(v3->getPluginNamespace(), "dflash_trt") == 0, "namespace must be dflash_trt");
            names.emplace_back(v3->getPluginName());
        }
        std::vector<std::string> const expected{"DFlashBlockAttention", "DFlashContextKVAppend", "DFlashAcceptTokens",
            "DFlashPagedBlockAttention", "DFlashPagedKVAppend", "AllReduce", "AllGather"};
        EXPECT(names == expected, "creator names");
    });

    ctx.runner.run("block_attention_field_names", [&] {
        nvinfer1::PluginFieldCollection const* fc = lib.creator(kName)->getFieldNames();
        std::vector<std::string> const names{"num_heads", "num_kv_heads", "head_dim", "window", "qk_norm", "eps"};
        EXPECT(fc->nbFields == 6, "six fields");
        for (int32_t i = 0; i < 6; ++i)
        {
            EXPECT(names[i] == fc->fields[i].name, std::string("field ") + fc->fields[i].name);
            EXPECT(fc->fields[i].type
                    == (i == 5 ? nvinfer1::PluginFieldType::kFLOAT32 : nvinfer1::PluginFieldType::kINT32),
                "field type");
        }
    });

    ctx.runner.run("block_attention_capabilities", [&] {
        PluginPtr plugin = create(lib, Config{});
        EXPECT(std::strcmp(core(plugin.get())->getPluginName(), kName) == 0, "name");
        EXPECT(std::strcmp(core(plugin.get())->getPluginVersion(), "1") == 0, "version");
        EXPECT(std::strcmp(core(plugin.get())->getPluginNamespace(), "dflash_trt") == 0, "namespace");
        EXPECT(std::strcmp(core(plugin.get())->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0, "core kind");
        EXPECT(std::strcmp(build(plugin.get())->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0, "build kind");
        EXPECT(std::strcmp(runtime(plugin.get())->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0, "runtime kind");
        EXPECT(build(plugin.get())->getNbOutputs() == 1, "one output");
    });

    ctx.runner.run("block_attention_output_types", [&] {
        PluginPtr plugin = create(lib, Config{});
        for (DataType t : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
        {
            DataType const in[] = {t, t, t, DataType::kFLOAT, DataType::kFLOAT, t, t, DataType::kINT32};
            DataType out = DataType::kINT8;
            EXPECT(build(plugin.get())->getOutputDataTypes(&out, 1, in, 8) == 0, "getOutputDataTypes failed");
            EXPECT(out == t, "output type follows qkv");
        }
        DataType const bad[] = {DataType::kINT32, DataType::kINT32, DataType::kINT32, DataType::kFLOAT,
            DataType::kFLOAT, DataType::kINT32, DataType::kINT32, DataType::kINT32};
        DataType out{};
        EXPECT(build(plugin.get())->getOutputDataTypes(&out, 1, bad, 8) != 0, "INT32 qkv must be refused");
        EXPECT(!ctx.logger.takeErrors().empty(), "the refusal is logged");
    });

    ctx.runner.run("block_attention_output_shapes", [&] {
        Config c;
        c.numHeads = 12;
        c.numKvHeads = 4;
        c.headDim = 128;
        PluginPtr plugin = create(lib, c);
        HostExprBuilder eb;
        std::vector<nvinfer1::DimsExprs> in{eb.dims({-1, -1, 20 * 128}, {"b", "B"}), eb.dims({128}, {}),
            eb.dims({128}, {}), eb.dims({-1, 64}, {"max_pos"}), eb.dims({-1, 64}, {"max_pos"}),
            eb.dims({-1, 4, -1, 128}, {"b", "", "S"}), eb.dims({-1, 4, -1, 128}, {"b", "", "S"}), eb.dims({-1}, {"b"})};
        nvinfer1::DimsExprs out{};
        EXPECT(build(plugin.get())->getOutputShapes(in.data(), 8, nullptr, 0, &out, 1, eb) == 0, "getOutputShapes failed");
        EXPECT(out.nbDims == 3, "rank 3");
        EXPECT(HostExprBuilder::text(out.d[0]) == "b" && HostExprBuilder::text(out.d[1]) == "B", "[b, B, ...]");
        EXPECT(out.d[2]->isConstant() && out.d[2]->getConstantValue() == 12 * 128, "last dim num_heads * head_dim");
    });

    ctx.runner.run("block_attention_shape_mismatch_refused", [&] {
        PluginPtr plugin = create(lib, Config{}); // 8 heads, 2 kv heads, head_dim 64: qkv width 768
        HostExprBuilder eb;
        auto shapesWith = [&](int64_t qkvWidth, int64_t cacheHeads) {
            return std::vector<nvinfer1::DimsExprs>{eb.dims({-1, -1, qkvWidth}, {"b", "B"}), eb.dims({64}, {}),
                eb.dims({64}, {}), eb.dims({-1, 32}, {"P"}), eb.dims({-1, 32}, {"P"}),
                eb.dims({-1, cacheHeads, -1, 64}, {"b", "", "S"}), eb.dims({-1, cacheHeads, -1, 64}, {"b", "", "S"}),
                eb.dims({-1}, {"b"})};
        };
        nvinfer1::DimsExprs out{};
        ctx.logger.takeErrors();
        EXPECT(build(plugin.get())->getOutputShapes(shapesWith(700, 2).data(), 8, nullptr, 0, &out, 1, eb) != 0,
            "a qkv width that does not match the attributes must be refused");
        std::vector<std::string> errors = ctx.logger.takeErrors();
        EXPECT(errors.size() == 1 && errors[0].find("qkv") != std::string::npos, "the message names qkv");
        EXPECT(build(plugin.get())->getOutputShapes(shapesWith(768, 3).data(), 8, nullptr, 0, &out, 1, eb) != 0,
            "a k_cache head count other than num_kv_heads must be refused");
        errors = ctx.logger.takeErrors();
        EXPECT(errors.size() == 1 && errors[0].find("k_cache") != std::string::npos, "the message names k_cache");
        EXPECT(build(plugin.get())->getOutputShapes(shapesWith(768, 2).data(), 7, nullptr, 0, &out, 1, eb) != 0,
            "seven inputs must be refused");
    });

    ctx.runner.run("block_attention_formats", [&] {
        Config const c;
        PluginPtr plugin = create(lib, c);
        auto* const b = build(plugin.get());
        auto const shapes = inputShapes(c, 2, 4, 16, 32);
        for (DataType t : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
        {
            auto descs = dynamicDescs(shapes, t, {2, 4, 512});
            for (int32_t pos = 0; pos < 9; ++pos)
            {
                EXPECT(b->supportsFormatCombination(pos, descs.data(), 8, 1), "valid combination at " + std::to_string(pos));
            }
        }
        auto expectRejected = [&](int32_t pos, DataType qkvType, DataType type, char const* what) {
            auto descs = dynamicDescs(shapes, qkvType, {2, 4, 512});
            descs[pos].desc.type = type;
            EXPECT(!b->supportsFormatCombination(pos, descs.data(), 8, 1), what);
        };
        expectRejected(0, DataType::kFLOAT, DataType::kINT8, "INT8 qkv");
        expectRejected(0, DataType::kFLOAT, DataType::kINT32, "INT32 qkv");
        expectRejected(1, DataType::kHALF, DataType::kFLOAT, "q_norm_weight type differs from qkv");
        expectRejected(3, DataType::kHALF, DataType::kHALF, "HALF rope_cos");
        expectRejected(4, DataType::kFLOAT, DataType::kBF16, "BF16 rope_sin");
        expectRejected(5, DataType::kBF16, DataType::kHALF, "k_cache type differs from qkv");
        expectRejected(6, DataType::kHALF, DataType::kFLOAT, "v_cache type differs from qkv");
        expectRejected(7, DataType::kFLOAT, DataType::kINT64, "INT64 ctx_lens");
        expectRejected(8, DataType::kHALF, DataType::kFLOAT, "output type differs from qkv");
        auto descs = dynamicDescs(shapes, DataType::kHALF, {2, 4, 512});
        descs[0].desc.format = nvinfer1::TensorFormat::kHWC8;
        EXPECT(!b->supportsFormatCombination(0, descs.data(), 8, 1), "non-linear format");
        EXPECT(!b->supportsFormatCombination(9, descs.data(), 8, 1), "position past the output");
    });

    ctx.runner.run("block_attention_serialize_roundtrip", [&] {
        Config c;
        c.numHeads = 16;
        c.numKvHeads = 16;
        c.headDim = 128;
        c.window = 7;
        c.qkNorm = 0;
        c.eps = 1e-5f;
        PluginPtr plugin = create(lib, c);
        nvinfer1::PluginFieldCollection const* fields = runtime(plugin.get())->getFieldsToSerialize();
        std::string const expected = "num_heads=16;num_kv_heads=16;head_dim=128;window=7;qk_norm=0;eps=1e-05;";
        EXPECT(describeFields(fields) == expected, "serialized fields: " + describeFields(fields));
        PluginPtr restored(lib.creator(kName)->createPlugin("restored", fields, nvinfer1::TensorRTPhase::kRUNTIME));
        EXPECT(restored != nullptr, "deserialization refused");
        EXPECT(describeFields(runtime(restored.get())->getFieldsToSerialize()) == expected, "restored fields");
        PluginPtr cloned(plugin->clone());
        EXPECT(cloned != nullptr && describeFields(runtime(cloned.get())->getFieldsToSerialize()) == expected, "clone");
        PluginPtr attached(runtime(plugin.get())->attachToContext(nullptr));
        EXPECT(attached != nullptr && attached.get() != plugin.get(), "attachToContext returns a new plugin");
        EXPECT(describeFields(runtime(attached.get())->getFieldsToSerialize()) == expected, "attached fields");
    });

    ctx.runner.run("block_attention_defaults", [&] {
        Fields f;
        f.i32("num_heads", 4).i32("num_kv_heads", 1).i32("head_dim", 64);
        PluginPtr plugin(lib.creator(kName)->createPlugin("defaults", f.collection(), nvinfer1::TensorRTPhase::kBUILD));
        EXPECT(plugin != nullptr, "the optional fields must have defaults");
        EXPECT(describeFields(runtime(plugin.get())->getFieldsToSerialize())
                == "num_heads=4;num_kv_heads=1;head_dim=64;window=0;qk_norm=1;eps=1e-06;",
            "defaults window=0, qk_norm=1, eps=1e-6");
    });

    ctx.runner.run("block_attention_64bit_fields", [&] {
        Fields f; // what an ONNX importer may hand over: int64 and double attributes
        f.i64("num_heads", 8).i64("num_kv_heads", 4).i64("head_dim", 128).i64("window", 3).i64("qk_norm", 1);
        f.f64("eps", 1e-5);
        PluginPtr plugin(lib.creator(kName)->createPlugin("wide", f.collection(), nvinfer1::TensorRTPhase::kBUILD));
        EXPECT(plugin != nullptr, "INT64/FLOAT64 fields must be accepted");
        EXPECT(describeFields(runtime(plugin.get())->getFieldsToSerialize())
                == "num_heads=8;num_kv_heads=4;head_dim=128;window=3;qk_norm=1;eps=1e-05;",
            "converted values");
    });

    ctx.runner.run("block_attention_invalid_attributes", [&] {
        nvinfer1::IPluginCreatorV3One* creator = lib.creator(kName);
        auto refuse = [&](Config c, std::string const& expected) {
            Fields f = fieldsOf(c);
            expectRefused(creator, ctx.logger, f, expected);
        };
        Config c;
        c.numHeads = 0;
        refuse(c, "must be positive");
        c = Config{};
        c.numKvHeads = 0;
        refuse(c, "must be positive");
        c = Config{};
        c.numHeads = 12;
        c.numKvHeads = 5;
        refuse(c, "num_heads (12) must be a multiple of num_kv_heads (5)");
        c = Config{};
        c.headDim = 96;
        refuse(c, "head_dim (96) must be 64 or 128");
        c = Config{};
        c.window = -1;
        refuse(c, "window (-1) must be >= 0");
        c = Config{};
        c.qkNorm = 2;
        refuse(c, "qk_norm (2) must be 0 or 1");
        c = Config{};
        c.eps = -1.0f;
        refuse(c, "eps");

        Fields missing;
        missing.i32("num_heads", 8).i32("head_dim", 64);
        expectRefused(creator, ctx.logger, missing, "missing required field 'num_kv_heads'");
        Fields unknown = fieldsOf(Config{});
        unknown.i32("numheads", 8);
        expectRefused(creator, ctx.logger, unknown, "unknown field 'numheads'");
        Fields twice = fieldsOf(Config{});
        twice.i32("window", 2);
        expectRefused(creator, ctx.logger, twice, "field 'window' given twice");
        Fields wrongType;
        wrongType.f32("num_heads", 8.0f).i32("num_kv_heads", 2).i32("head_dim", 64);
        expectRefused(creator, ctx.logger, wrongType, "field 'num_heads' has type FLOAT32, expected INT32");
        Fields tooLong;
        int32_t const pair[2] = {8, 8};
        tooLong.add("num_heads", pair, sizeof(pair), nvinfer1::PluginFieldType::kINT32, 2);
        tooLong.i32("num_kv_heads", 2).i32("head_dim", 64);
        expectRefused(creator, ctx.logger, tooLong, "field 'num_heads' must hold exactly one value");
        Fields tooWide;
        tooWide.i64("num_heads", int64_t{1} << 40).i32("num_kv_heads", 2).i32("head_dim", 64);
        expectRefused(creator, ctx.logger, tooWide, "does not fit INT32");
    });

    ctx.runner.run("block_attention_configure_and_workspace", [&] {
        Config c;
        c.headDim = 128;
        PluginPtr plugin = create(lib, c);
        auto* const b = build(plugin.get());
        // Build-time shapes with unknown batch, block and cache lengths; max dims from the profile.
        auto descs = dynamicDescs(inputShapes(c, -1, -1, -1, 8192), DataType::kHALF, {-1, -1, 1024});
        auto const maxShapes = inputShapes(c, 2, 16, 4096, 8192);
        for (size_t i = 0; i < maxShapes.size(); ++i)
        {
            descs[i].max = dims(maxShapes[i]);
        }
        EXPECT(b->configurePlugin(descs.data(), 8, descs.data() + 8, 1) == 0, "configurePlugin with wildcards");
        // Split partials are planned for at most 256 SMs x 2 CTAs x 64 rows, whatever the batch and
        // context: (128 + 2) floats per row and split, plus one semaphore per (sequence, kv head, row tile).
        size_t const bound = size_t{256} * 2 * 64 * 130 * 4 + size_t{64} * 2 * 16 * 4;
        size_t const small = b->getWorkspaceSize(descs.data(), 8, descs.data() + 8, 1);
        EXPECT(small > 0 && small <= bound, "workspace for split partials: " + std::to_string(small));
        auto const bigShapes = inputShapes(c, 64, 16, 32768, 40000); // was 64 * 8 * 16 * 32 splits * 130 * 4 = 545 MB
        for (size_t i = 0; i < bigShapes.size(); ++i)
        {
            descs[i].max = dims(bigShapes[i]);
        }
        size_t const big = b->getWorkspaceSize(descs.data(), 8, descs.data() + 8, 1);
        EXPECT(big >= small && big <= bound, "bounded workspace at batch 64 x 32k context: " + std::to_string(big));
        auto const shortShapes = inputShapes(c, 2, 16, 200, 8192);
        for (size_t i = 0; i < shortShapes.size(); ++i)
        {
            descs[i].max = dims(shortShapes[i]);
        }
        EXPECT(b->getWorkspaceSize(descs.data(), 8, descs.data() + 8, 1) == 0, "one split needs no workspace");
        descs[6].desc.dims.d[3] = 64;
        ctx.logger.takeErrors();
        EXPECT(b->configurePlugin(descs.data(), 8, descs.data() + 8, 1) != 0, "v_cache head_dim 64 must be refused");
        std::vector<std::string> const errors = ctx.logger.takeErrors();
        EXPECT(errors.size() == 1 && errors[0].find("v_cache") != std::string::npos, "the message names v_cache");
    });

    if (ctx.runEnqueue)
    {
        ctx.runner.run("block_attention_enqueue_host", [&] {
            Config c;
            c.numHeads = 4;
            c.numKvHeads = 2;
            checkAgainstReference(ctx, Problem(c, 2, 3, 40, {5, 40}, 1));
            c.window = 4;
            c.qkNorm = 0;
            checkAgainstReference(ctx, Problem(c, 3, 3, 40, {0, 17, 39}, 2));
        });
        ctx.runner.run("block_attention_enqueue_host_key_splits", [&] {
            Config c; // cache 600 + block 4 keys: three key splits merged
            c.numHeads = 8;
            c.numKvHeads = 1;
            c.headDim = 128;
            checkAgainstReference(ctx, Problem(c, 2, 4, 600, {0, 597}, 3));
            c.window = 300;
            checkAgainstReference(ctx, Problem(c, 2, 4, 600, {596, 420}, 4));
        });
        ctx.runner.run("block_attention_enqueue_host_invalid_ctx_is_nan", [&] {
            Config c;
            c.numHeads = 2;
            c.numKvHeads = 1;
            checkAgainstReference(ctx, Problem(c, 3, 2, 20, {3, 21, -1}, 5)); // 21 > S, -1 < 0: NaN rows
            checkAgainstReference(ctx, Problem(c, 2, 2, 600, {700, 10}, 6));  // same through the split merge
        });
    }
    ctx.runner.run("paged_block_attention_shapes", [&] {
        Config const c;
        PluginPtr plugin = createPaged(lib, c);
        HostExprBuilder eb;
        auto shapesWith = [&](int64_t poolLead, int64_t tableMiddle) {
            return std::vector<nvinfer1::DimsExprs>{eb.dims({-1, -1, 768}, {"b", "B"}), eb.dims({64}, {}),
                eb.dims({64}, {}), eb.dims({-1, 32}, {"P"}), eb.dims({-1, 32}, {"P"}),
                eb.dims({poolLead, -1, -1, 2, 64}, {"", "pages", "tpp"}), eb.dims({-1, tableMiddle, -1}, {"b", "", "M"}),
                eb.dims({-1}, {"b"})};
        };
        nvinfer1::DimsExprs out{};
        EXPECT(build(plugin.get())->getOutputShapes(shapesWith(2, 2).data(), 8, nullptr, 0, &out, 1, eb) == 0,
            "getOutputShapes failed");
        EXPECT(out.nbDims == 3 && out.d[2]->getConstantValue() == 512, "[b, B, num_heads * head_dim]");
        ctx.logger.takeErrors();
        EXPECT(build(plugin.get())->getOutputShapes(shapesWith(3, 2).data(), 8, nullptr, 0, &out, 1, eb) != 0,
            "kv_pool dim 0 must be 2");
        std::vector<std::string> errors = ctx.logger.takeErrors();
        EXPECT(errors.size() == 1 && errors[0].find("kv_pool") != std::string::npos, "the message names kv_pool");
        EXPECT(build(plugin.get())->getOutputShapes(shapesWith(2, 1).data(), 8, nullptr, 0, &out, 1, eb) != 0,
            "page_table dim 1 must be 2");
        errors = ctx.logger.takeErrors();
        EXPECT(errors.size() == 1 && errors[0].find("page_table") != std::string::npos, "the message names page_table");
    });

    if (ctx.runEnqueue)
    {
        ctx.runner.run("paged_block_attention_enqueue_host", [&] {
            Config c;
            c.numHeads = 4;
            c.numKvHeads = 2;
            checkPagedAgainstReference(ctx, Problem(c, 2, 3, 40, {5, 40}, 1), 8);
            c.window = 4;
            c.qkNorm = 0;
            checkPagedAgainstReference(ctx, Problem(c, 3, 3, 40, {0, 17, 39}, 2), 3);
            c = Config{}; // three key splits merged
            c.numHeads = 8;
            c.numKvHeads = 1;
            c.headDim = 128;
            checkPagedAgainstReference(ctx, Problem(c, 2, 4, 600, {0, 597}, 3), 64);
        });
        ctx.runner.run("paged_block_attention_missing_page_is_nan", [&] {
            Config c;
            c.numHeads = 2;
            c.numKvHeads = 1;
            Problem const p(c, 2, 2, 20, {12, 12}, 5);
            PagedCopy paged(p, 4, 7);
            paged.pageTable[(0 * 2 + 1) * paged.maxPages + 1] = -1;            // sequence 0: no value page for positions 4..7
            paged.pageTable[(1 * 2 + 0) * paged.maxPages + 4] = paged.numPages; // sequence 1: past its context, unused
            PluginPtr plugin = createPaged(ctx.library, c);
            std::vector<float> out;
            EXPECT(paged.enqueue(plugin.get(), p, out) == 0, "paged enqueue failed");
            std::vector<double> expected = p.reference();
            std::fill(expected.begin(), expected.begin() + expected.size() / 2, std::nan(""));
            checkOutput(out, expected);
        });
    }
    if (ctx.expectEnqueueError)
    {
        ctx.runner.run("block_attention_enqueue_reports_cuda_error", [&] {
            Config c;
            Problem const p(c, 1, 2, 8, {3}, 7);
            PluginPtr plugin = create(lib, c);
            std::vector<float> out;
            ctx.logger.takeErrors();
            EXPECT(p.enqueue(plugin.get(), out) == -2, "onShapeChange without a CUDA device must refuse");
            std::vector<std::string> errors = ctx.logger.takeErrors();
            EXPECT(errors.size() == 1 && errors[0].find("onShapeChange: cannot query the CUDA device") != std::string::npos,
                "the refusal is logged: " + (errors.empty() ? std::string() : errors[0]));
            // enqueue refuses too, before any launch
            std::vector<std::vector<int64_t>> const shapes = inputShapes(c, 1, 2, 8, p.maxPos);
            auto const dyn = dynamicDescs(shapes, DataType::kFLOAT, {1, 2, 512});
            std::vector<nvinfer1::PluginTensorDesc> descs;
            for (auto const& d : dyn)
            {
                descs.push_back(d.desc);
            }
            out.assign(1024, 0.0f);
            void const* inputs[] = {p.qkv.data(), p.qWeight.data(), p.kWeight.data(), p.cosTable.data(),
                p.sinTable.data(), p.kCache.data(), p.vCache.data(), p.ctxLens.data()};
            void* outputs[] = {out.data()};
            EXPECT(runtime(plugin.get())->enqueue(descs.data(), descs.data() + 8, inputs, outputs, nullptr, nullptr) != 0,
                "enqueue without a CUDA device must fail");
            errors = ctx.logger.takeErrors();
            EXPECT(errors.size() == 1 && errors[0].find("enqueue: cannot query the CUDA device") != std::string::npos,
                "the failure is logged");
        });
    }
}

} // namespace harness

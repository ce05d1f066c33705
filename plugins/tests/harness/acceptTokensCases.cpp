// Harness cases of DFlashAcceptTokens.
#include "harness.h"
#include "hostExprBuilder.h"

namespace harness
{
namespace
{

using nvinfer1::DataType;

constexpr char const* kName = "DFlashAcceptTokens";

PluginPtr create(PluginLibrary& library)
{
    Fields none;
    PluginPtr plugin(library.creator(kName)->createPlugin("accept", none.collection(), nvinfer1::TensorRTPhase::kBUILD));
    EXPECT(plugin != nullptr, "createPlugin refused an empty field collection");
    return plugin;
}

// Runs enqueue on host memory for draft [b, B-1] and target [b, B] tokens.
int32_t runAccept(nvinfer1::IPluginV3* plugin, int64_t b, int64_t blockLen, std::vector<int32_t> const& draft,
    std::vector<int32_t> const& target, std::vector<int32_t>& accepted, std::vector<int32_t>& bonus)
{
    nvinfer1::PluginTensorDesc const descs[] = {tensorDesc(DataType::kINT32, {b, blockLen - 1}),
        tensorDesc(DataType::kINT32, {b, blockLen}), tensorDesc(DataType::kINT32, {b}),
        tensorDesc(DataType::kINT32, {b})};
    accepted.assign(b, -1);
    bonus.assign(b, -1);
    void const* inputs[] = {draft.data(), target.data()};
    void* outputs[] = {accepted.data(), bonus.data()};
    return runtime(plugin)->enqueue(descs, descs + 2, inputs, outputs, nullptr, nullptr);
}

} // namespace

void acceptTokensCases(Context& ctx)
{
    PluginLibrary& lib = ctx.library;

    ctx.runner.run("accept_tokens_fields", [&] {
        EXPECT(lib.creator(kName)->getFieldNames()->nbFields == 0, "no attributes");
        Fields stray;
        stray.i32("window", 1);
        expectRefused(lib.creator(kName), ctx.logger, stray, "unknown field 'window'");
        PluginPtr plugin = create(lib);
        EXPECT(runtime(plugin.get())->getFieldsToSerialize()->nbFields == 0, "nothing to serialize");
    });

    ctx.runner.run("accept_tokens_shapes_types_formats", [&] {
        PluginPtr plugin = create(lib);
        HostExprBuilder eb;
        nvinfer1::DimsExprs in[] = {eb.dims({-1, 15}, {"b"}), eb.dims({-1, 16}, {"b"})};
        nvinfer1::DimsExprs out[2]{};
        EXPECT(build(plugin.get())->getOutputShapes(in, 2, nullptr, 0, out, 2, eb) == 0, "getOutputShapes failed");
        EXPECT(out[0].nbDims == 1 && HostExprBuilder::text(out[0].d[0]) == "b", "accepted_len is [b]");
        EXPECT(out[1].nbDims == 1 && HostExprBuilder::text(out[1].d[0]) == "b", "bonus_token is [b]");
        in[1] = eb.dims({-1, 15}, {"b"});
        ctx.logger.takeErrors();
        EXPECT(build(plugin.get())->getOutputShapes(in, 2, nullptr, 0, out, 2, eb) != 0,
            "target_tokens must have one more column than draft_tokens");
        EXPECT(ctx.logger.takeErrors().size() == 1, "the refusal is logged");
        DataType const ints[] = {DataType::kINT32, DataType::kINT32};
        DataType outTypes[2]{};
        EXPECT(build(plugin.get())->getOutputDataTypes(outTypes, 2, ints, 2) == 0, "getOutputDataTypes failed");
        EXPECT(outTypes[0] == DataType::kINT32 && outTypes[1] == DataType::kINT32, "INT32 outputs");
        nvinfer1::DynamicPluginTensorDesc descs[] = {dynamicDesc(DataType::kINT32, {2, 3}),
            dynamicDesc(DataType::kINT32, {2, 4}), dynamicDesc(DataType::kINT32, {2}), dynamicDesc(DataType::kINT32, {2})};
        for (int32_t pos = 0; pos < 4; ++pos)
        {
            EXPECT(build(plugin.get())->supportsFormatCombination(pos, descs, 2, 2), "INT32 everywhere");
        }
        descs[1].desc.type = DataType::kINT64;
        EXPECT(!build(plugin.get())->supportsFormatCombination(1, descs, 2, 2), "INT64 target_tokens");
    });

    if (ctx.runEnqueue)
    {
        ctx.runner.run("accept_tokens_enqueue_host", [&] {
            PluginPtr plugin = create(lib);
            // B = 4: three drafted tokens per sequence, four target predictions.
            std::vector<int32_t> const draft{
                5, 6, 7,   // all match: accept 3, bonus is the 4th prediction
                9, 6, 7,   // first draft wrong: accept 0, bonus is the 1st prediction
                5, 6, 0,   // last draft wrong: accept 2
                5, 0, 7};  // a later match after a miss does not count: accept 1
            std::vector<int32_t> const target{5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, 8};
            std::vector<int32_t> accepted, bonus;
            EXPECT(runAccept(plugin.get(), 4, 4, draft, target, accepted, bonus) == 0, "enqueue failed");
            EXPECT((accepted == std::vector<int32_t>{3, 0, 2, 1}), "accepted lengths");
            EXPECT((bonus == std::vector<int32_t>{8, 5, 7, 6}), "bonus tokens");
            // B = 1: nothing drafted, the bonus token is the only prediction.
            EXPECT(runAccept(plugin.get(), 2, 1, {}, {42, 43}, accepted, bonus) == 0, "enqueue with B = 1 failed");
            EXPECT((accepted == std::vector<int32_t>{0, 0}) && (bonus == std::vector<int32_t>{42, 43}), "B = 1");
        });
    }
    if (ctx.expectEnqueueError)
    {
        ctx.runner.run("accept_tokens_enqueue_reports_cuda_error", [&] {
            PluginPtr plugin = create(lib);
            std::vector<int32_t> accepted, bonus;
            ctx.logger.takeErrors();
            EXPECT(runAccept(plugin.get(), 1, 2, {1}, {1, 2}, accepted, bonus) != 0, "enqueue without a device must fail");
            EXPECT(ctx.logger.takeErrors().size() == 1, "the failure is logged");
        });
    }
}

} // namespace harness

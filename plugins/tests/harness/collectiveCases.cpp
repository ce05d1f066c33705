// Harness cases of the collectives AllReduce and AllGather: fields (a CHAR field among them), shapes,
// types, formats, workspace, serialization, and enqueue refusing cleanly where it cannot run.
#include "harness.h"
#include "hostExprBuilder.h"

#include <algorithm>
#include <cstring>

namespace harness
{
namespace
{

using nvinfer1::DataType;
using nvinfer1::PluginFieldType;

constexpr char const* kAllReduce = "AllReduce";
constexpr char const* kAllGather = "AllGather";

Fields& chars(Fields& f, char const* name, std::string const& value, size_t nuls = 0)
{
    std::string data = value + std::string(nuls, '\0');
    return f.add(name, data.data(), data.size(), PluginFieldType::kCHAR, static_cast<int32_t>(data.size()));
}

PluginPtr create(PluginLibrary& library, char const* name, Fields& fields)
{
    PluginPtr plugin(library.creator(name)->createPlugin("collective", fields.collection(), nvinfer1::TensorRTPhase::kBUILD));
    EXPECT(plugin != nullptr, std::string("createPlugin refused valid ") + name + " fields");
    return plugin;
}

PluginPtr allGather(PluginLibrary& library, int32_t groupSize, int32_t axis)
{
    Fields f;
    f.i32("group_size", groupSize).i32("axis", axis);
    return create(library, kAllGather, f);
}

// The output dims text of a one-input plugin for an input of `extents` (< 0: a symbol named by `names`).
std::vector<std::string> outputShape(nvinfer1::IPluginV3* plugin, std::vector<int64_t> const& extents,
    std::vector<std::string> const& names, int32_t& status)
{
    HostExprBuilder eb;
    nvinfer1::DimsExprs in[] = {eb.dims(extents, names)};
    nvinfer1::DimsExprs out[1]{};
    status = build(plugin)->getOutputShapes(in, 1, nullptr, 0, out, 1, eb);
    std::vector<std::string> text;
    for (int32_t i = 0; status == 0 && i < out[0].nbDims; ++i)
    {
        text.push_back(HostExprBuilder::text(out[0].d[i]));
    }
    return text;
}

// Runs enqueue on a [2, 3, 4] tensor; returns its status and the errors it logged.
int32_t enqueue(nvinfer1::IPluginV3* plugin, int64_t gathered, CapturingLogger& logger, std::vector<std::string>& errors)
{
    nvinfer1::PluginTensorDesc const descs[]
        = {tensorDesc(DataType::kHALF, {2, 3, 4}), tensorDesc(DataType::kHALF, {2, 3, 4 * gathered})};
    std::vector<uint16_t> in(24, 0), out(24 * gathered, 0), workspace(24 * gathered, 0);
    void const* inputs[] = {in.data()};
    void* outputs[] = {out.data()};
    logger.takeErrors();
    int32_t const status = runtime(plugin)->enqueue(descs, descs + 1, inputs, outputs, workspace.data(), nullptr);
    errors = logger.takeErrors();
    return status;
}

} // namespace

void collectiveCases(Context& ctx)
{
    PluginLibrary& lib = ctx.library;

    ctx.runner.run("all_reduce_fields", [&] {
        nvinfer1::PluginFieldCollection const* fc = lib.creator(kAllReduce)->getFieldNames();
        EXPECT(fc->nbFields == 2 && std::strcmp(fc->fields[0].name, "group_size") == 0
                && fc->fields[0].type == PluginFieldType::kINT32 && std::strcmp(fc->fields[1].name, "reduce_op") == 0
                && fc->fields[1].type == PluginFieldType::kCHAR,
            "fields group_size (INT32) and reduce_op (CHAR)");
        Fields defaults;
        defaults.i32("group_size", 2);
        PluginPtr plugin = create(lib, kAllReduce, defaults);
        EXPECT(describeFields(runtime(plugin.get())->getFieldsToSerialize()) == "group_size=2;reduce_op=sum;",
            "reduce_op defaults to sum");
        Fields onnx; // ONNX attributes: INT64, and a string whose length may count a NUL
        chars(onnx.i64("group_size", 4), "reduce_op", "sum", 1);
        plugin = create(lib, kAllReduce, onnx);
        EXPECT(describeFields(runtime(plugin.get())->getFieldsToSerialize()) == "group_size=4;reduce_op=sum;",
            "INT64 group_size and a NUL-terminated reduce_op");
        Fields zero;
        zero.i32("group_size", 0);
        expectRefused(lib.creator(kAllReduce), ctx.logger, zero, "group_size (0) must be positive");
        Fields max;
        chars(max.i32("group_size", 2), "reduce_op", "max");
        expectRefused(lib.creator(kAllReduce), ctx.logger, max, "reduce_op ('max') must be 'sum'");
        Fields intOp;
        intOp.i32("group_size", 2).i32("reduce_op", 0);
        expectRefused(lib.creator(kAllReduce), ctx.logger, intOp, "field 'reduce_op' has type INT32, expected CHAR");
        Fields missing;
        chars(missing, "reduce_op", "sum");
        expectRefused(lib.creator(kAllReduce), ctx.logger, missing, "missing required field 'group_size'");
        Fields stray;
        stray.i32("group_size", 2).i32("axis", -1);
        expectRefused(lib.creator(kAllReduce), ctx.logger, stray, "unknown field 'axis'");
    });

    ctx.runner.run("all_reduce_shapes_types_formats", [&] {
        Fields f;
        f.i32("group_size", 2);
        PluginPtr plugin = create(lib, kAllReduce, f);
        int32_t status = -1;
        auto const shape = outputShape(plugin.get(), {-1, -1, 96}, {"b", "t", ""}, status);
        EXPECT(status == 0 && (shape == std::vector<std::string>{"b", "t", "96"}), "output shape = input shape");
        for (DataType t : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
        {
            DataType out = DataType::kINT8;
            EXPECT(build(plugin.get())->getOutputDataTypes(&out, 1, &t, 1) == 0 && out == t, "output type = input type");
            nvinfer1::DynamicPluginTensorDesc descs[] = {dynamicDesc(t, {2, 3, 96}), dynamicDesc(t, {2, 3, 96})};
            EXPECT(build(plugin.get())->supportsFormatCombination(0, descs, 1, 1), "linear fp32/fp16/bf16 input");
            EXPECT(build(plugin.get())->supportsFormatCombination(1, descs, 1, 1), "output of the input's type");
            descs[1].desc.type = t == DataType::kFLOAT ? DataType::kHALF : DataType::kFLOAT;
            EXPECT(!build(plugin.get())->supportsFormatCombination(1, descs, 1, 1), "output of another type");
        }
        nvinfer1::DynamicPluginTensorDesc ints[] = {dynamicDesc(DataType::kINT32, {4}), dynamicDesc(DataType::kINT32, {4})};
        EXPECT(!build(plugin.get())->supportsFormatCombination(0, ints, 1, 1), "INT32 is not reduced");
        DataType const in = DataType::kINT32;
        DataType out = DataType::kINT32;
        ctx.logger.takeErrors();
        EXPECT(build(plugin.get())->getOutputDataTypes(&out, 1, &in, 1) != 0, "INT32 input refused");
        EXPECT(ctx.logger.takeErrors().size() == 1, "the refusal is logged");
        EXPECT(build(plugin.get())->getWorkspaceSize(ints, 1, ints + 1, 1) == 0, "no workspace");
    });

    ctx.runner.run("all_gather_fields_and_serialize", [&] {
        nvinfer1::PluginFieldCollection const* fc = lib.creator(kAllGather)->getFieldNames();
        EXPECT(fc->nbFields == 2 && std::strcmp(fc->fields[0].name, "group_size") == 0
                && std::strcmp(fc->fields[1].name, "axis") == 0 && fc->fields[1].type == PluginFieldType::kINT32,
            "fields group_size and axis (INT32)");
        Fields defaults;
        defaults.i64("group_size", 2);
        PluginPtr plugin = create(lib, kAllGather, defaults);
        nvinfer1::PluginFieldCollection const* fields = runtime(plugin.get())->getFieldsToSerialize();
        EXPECT(describeFields(fields) == "group_size=2;axis=-1;", "axis defaults to -1: " + describeFields(fields));
        PluginPtr restored(lib.creator(kAllGather)->createPlugin("restored", fields, nvinfer1::TensorRTPhase::kRUNTIME));
        EXPECT(restored != nullptr && describeFields(runtime(restored.get())->getFieldsToSerialize()) == "group_size=2;axis=-1;",
            "serialize round trip");
        PluginPtr cloned(plugin->clone());
        EXPECT(cloned != nullptr && std::strcmp(core(cloned.get())->getPluginName(), kAllGather) == 0, "clone");
        Fields zero;
        zero.i32("group_size", 0);
        expectRefused(lib.creator(kAllGather), ctx.logger, zero, "group_size (0) must be positive");
        Fields far;
        far.i32("group_size", 2).i32("axis", 8);
        expectRefused(lib.creator(kAllGather), ctx.logger, far, "axis (8) must be in [-8, 8)");
        Fields op;
        chars(op.i32("group_size", 2), "reduce_op", "sum");
        expectRefused(lib.creator(kAllGather), ctx.logger, op, "unknown field 'reduce_op'");
    });

    ctx.runner.run("all_gather_output_shapes", [&] {
        int32_t status = -1;
        PluginPtr last = allGather(lib, 2, -1);
        auto shape = outputShape(last.get(), {-1, -1, 64}, {"b", "t", ""}, status);
        EXPECT(status == 0 && (shape == std::vector<std::string>{"b", "t", "128"}), "last axis times group_size");
        PluginPtr first = allGather(lib, 4, 0);
        shape = outputShape(first.get(), {-1, 3}, {"b", ""}, status);
        EXPECT(status == 0 && (shape == std::vector<std::string>{"(b*4)", "3"}), "a symbolic axis times group_size");
        PluginPtr middle = allGather(lib, 3, -2);
        shape = outputShape(middle.get(), {-1, 5, 7}, {"b", "", ""}, status);
        EXPECT(status == 0 && (shape == std::vector<std::string>{"b", "15", "7"}), "axis -2");
        PluginPtr outside = allGather(lib, 2, 3);
        ctx.logger.takeErrors();
        outputShape(outside.get(), {-1, 5, 7}, {"b", "", ""}, status);
        std::vector<std::string> const errors = ctx.logger.takeErrors();
        EXPECT(status != 0 && errors.size() == 1, "axis 3 of a rank-3 input is refused, logged once");
        EXPECT(errors[0].find("AllGather: axis 3 is out of range for input 0 (x) of rank 3") != std::string::npos,
            errors[0]);
        outputShape(last.get(), {}, {}, status);
        EXPECT(status != 0, "a rank-0 input has no axis to gather");
    });

    ctx.runner.run("all_gather_types_formats_workspace", [&] {
        PluginPtr plugin = allGather(lib, 2, -1);
        for (DataType t : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
        {
            DataType out = DataType::kINT8;
            EXPECT(build(plugin.get())->getOutputDataTypes(&out, 1, &t, 1) == 0 && out == t, "output type = input type");
            nvinfer1::DynamicPluginTensorDesc descs[] = {dynamicDesc(t, {4, 16, 64}), dynamicDesc(t, {4, 16, 128})};
            EXPECT(build(plugin.get())->supportsFormatCombination(0, descs, 1, 1)
                    && build(plugin.get())->supportsFormatCombination(1, descs, 1, 1),
                "linear fp32/fp16/bf16");
            // The rank blocks [2, 4*16, 64] gathered before the transpose: the output's size at the profile maximum.
            size_t const bytes = 2 * 4 * 16 * 64 * (t == DataType::kFLOAT ? 4 : 2);
            EXPECT(build(plugin.get())->getWorkspaceSize(descs, 1, descs + 1, 1) == bytes, "workspace of the maximum");
        }
        nvinfer1::DynamicPluginTensorDesc descs[] = {dynamicDesc(DataType::kHALF, {1, 64}), dynamicDesc(DataType::kHALF, {2, 64})};
        descs[0].max = dims({8, 64});
        EXPECT(build(plugin.get())->getWorkspaceSize(descs, 1, descs + 1, 1) == 2 * 8 * 64 * 2, "sized by max, not desc");
        PluginPtr outer = allGather(lib, 2, 0);
        EXPECT(build(outer.get())->getWorkspaceSize(descs, 1, descs + 1, 1) == 0,
            "axis 0: NCCL gathers into the output, no workspace");
        nvinfer1::DynamicPluginTensorDesc ints[] = {dynamicDesc(DataType::kINT32, {4}), dynamicDesc(DataType::kINT32, {8})};
        EXPECT(!build(plugin.get())->supportsFormatCombination(0, ints, 1, 1), "INT32 is not gathered");
    });

    if (ctx.runEnqueue)
    {
        ctx.runner.run("collectives_enqueue_host_needs_cuda_build", [&] {
            Fields f;
            f.i32("group_size", 1);
            std::vector<std::string> errors;
            std::vector<PluginPtr> plugins;
            plugins.push_back(create(lib, kAllReduce, f));
            plugins.push_back(allGather(lib, 1, -1));
            for (PluginPtr const& plugin : plugins)
            {
                EXPECT(enqueue(plugin.get(), 1, ctx.logger, errors) != 0, "the host build cannot run a collective");
                EXPECT(errors.size() == 1 && errors[0].find("need the CUDA build") != std::string::npos,
                    errors.empty() ? "nothing logged" : errors[0]);
            }
        });
    }
    if (ctx.expectEnqueueError)
    {
        ctx.runner.run("collectives_enqueue_reports_no_communicator", [&] {
            Fields f;
            f.i32("group_size", 2);
            std::vector<std::string> errors;
            PluginPtr reduce = create(lib, kAllReduce, f);
            EXPECT(enqueue(reduce.get(), 1, ctx.logger, errors) != 0, "no communicator: enqueue fails");
            EXPECT(errors.size() == 1 && errors[0].find("AllReduce enqueue: no NCCL communicator") != std::string::npos,
                errors.empty() ? "nothing logged" : errors[0]);
            PluginPtr gather = allGather(lib, 2, -1);
            EXPECT(enqueue(gather.get(), 2, ctx.logger, errors) != 0, "no communicator: enqueue fails");
            EXPECT(errors.size() == 1 && errors[0].find("AllGather enqueue: no NCCL communicator") != std::string::npos,
                errors.empty() ? "nothing logged" : errors[0]);
        });
    }
}

} // namespace harness

namespace harness
{
namespace
{

using NcclUniqueId = char const* (*) (char*);
using NcclInit = char const* (*) (char const*, int, int);

// enqueue of a one-input collective on host buffers (fp32); prints "FAKE <step> enqueue <status>".
int32_t enqueueF32(char const* step, nvinfer1::IPluginV3* plugin, std::vector<int64_t> const& inShape,
    std::vector<int64_t> const& outShape, std::vector<float> const& in, std::vector<float>& out,
    std::vector<float>& workspace)
{
    nvinfer1::PluginTensorDesc const descs[] = {tensorDesc(DataType::kFLOAT, inShape), tensorDesc(DataType::kFLOAT, outShape)};
    void const* inputs[] = {in.data()};
    void* outputs[] = {out.data()};
    int32_t const status = runtime(plugin)->enqueue(descs, descs + 1, inputs, outputs, workspace.data(), nullptr);
    std::printf("FAKE %s enqueue %d\n", step, status);
    return status;
}

} // namespace

void fakeNcclCases(Context& ctx)
{
    PluginLibrary& lib = ctx.library;
    auto const uniqueId = reinterpret_cast<NcclUniqueId>(lib.symbol("dflash_trt_nccl_unique_id"));
    auto const init = reinterpret_cast<NcclInit>(lib.symbol("dflash_trt_nccl_init"));
    std::vector<float> x(24);
    for (size_t i = 0; i < x.size(); ++i)
    {
        x[i] = static_cast<float>(i) + 0.5f;
    }
    Fields two;
    two.i32("group_size", 2);
    Fields four;
    four.i32("group_size", 4);
    Fields one;
    one.i32("group_size", 1);

    ctx.runner.run("fake_nccl_communicator", [&] {
        EXPECT(uniqueId != nullptr && init != nullptr, "the NCCL entry points are exported");
        PluginPtr reduce = create(lib, kAllReduce, two);
        std::vector<float> out(24, 0.0f), workspace(48, 0.0f);
        ctx.logger.takeErrors();
        EXPECT(enqueueF32("before_init", reduce.get(), {2, 3, 4}, {2, 3, 4}, x, out, workspace) != 0,
            "no communicator yet");
        std::vector<std::string> errors = ctx.logger.takeErrors();
        EXPECT(errors.size() == 1 && errors[0].find("no NCCL communicator") != std::string::npos, "logged");
        char id[128] = {};
        EXPECT(uniqueId(id) == nullptr && id[0] == 'F' && id[127] == 'F', "the fake NCCL's unique id");
        char const* error = init(id, 0, 2);
        EXPECT(error == nullptr, std::string("init: ") + (error == nullptr ? "" : error));
        error = init(id, 1, 2);
        EXPECT(error != nullptr && std::string(error).find("already has an NCCL communicator (rank 0 of 2)") != std::string::npos,
            "a second communicator is refused");
    });

    ctx.runner.run("fake_nccl_all_reduce", [&] {
        PluginPtr reduce = create(lib, kAllReduce, two);
        std::vector<float> out(24, 0.0f), workspace(1, 0.0f);
        EXPECT(enqueueF32("all_reduce", reduce.get(), {2, 3, 4}, {2, 3, 4}, x, out, workspace) == 0, "enqueue");
        for (size_t i = 0; i < x.size(); ++i)
        {
            EXPECT(out[i] == 2.0f * x[i], "the sum over 2 ranks of the same x");
        }
        PluginPtr wrongGroup = create(lib, kAllReduce, four);
        ctx.logger.takeErrors();
        EXPECT(enqueueF32("all_reduce_group_4", wrongGroup.get(), {2, 3, 4}, {2, 3, 4}, x, out, workspace) != 0,
            "a 2-rank communicator cannot serve group_size 4");
        std::vector<std::string> const errors = ctx.logger.takeErrors();
        EXPECT(errors.size() == 1
                && errors[0].find("the NCCL communicator has 2 ranks, the engine was built for group_size 4")
                    != std::string::npos,
            errors.empty() ? "nothing logged" : errors[0]);
        PluginPtr single = create(lib, kAllReduce, one);
        EXPECT(enqueueF32("all_reduce_group_1", single.get(), {2, 3, 4}, {2, 3, 4}, x, out, workspace) == 0,
            "group_size 1: a copy, no NCCL");
    });

    ctx.runner.run("fake_nccl_all_gather", [&] {
        Fields last;
        last.i32("group_size", 2).i32("axis", -1);
        PluginPtr gather = create(lib, kAllGather, last);
        std::vector<float> out(48, -1.0f), workspace(48, 0.0f);
        EXPECT(enqueueF32("all_gather_last", gather.get(), {2, 3, 4}, {2, 3, 8}, x, out, workspace) == 0, "enqueue");
        // NCCL wrote the rank blocks [2, 6, 4] to the workspace; the transpose into out is a kernel (not run).
        for (size_t i = 0; i < 48; ++i)
        {
            EXPECT(workspace[i] == x[i % 24], "rank blocks in the workspace");
            EXPECT(out[i] == -1.0f, "out is written only by the transpose kernel");
        }
        Fields first;
        first.i32("group_size", 2).i32("axis", 0);
        PluginPtr outer = create(lib, kAllGather, first);
        std::fill(workspace.begin(), workspace.end(), 0.0f);
        EXPECT(enqueueF32("all_gather_first", outer.get(), {2, 3, 4}, {4, 3, 4}, x, out, workspace) == 0, "enqueue");
        for (size_t i = 0; i < 48; ++i)
        {
            EXPECT(out[i] == x[i % 24], "axis 0: NCCL gathers straight into out");
            EXPECT(workspace[i] == 0.0f, "no workspace for axis 0");
        }
    });
}

} // namespace harness

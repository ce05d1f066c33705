// Harness cases for a CUDA build whose CUDA runtime calls are answered by tests/fakeCudart (LD_PRELOAD):
// the plugins' configure/onShapeChange/enqueue run their host side for real, no kernel executes, and
// every runtime call lands in $FAKE_CUDART_LOG. Each step prints "FAKE <step> <status>"; the pytest
// (tests/plugins/test_host_cuda.py) compares the statuses and the log with the plan it expects.
#include "harness.h"

#include <cstdio>
#include <vector>

namespace harness
{
namespace
{

using nvinfer1::DataType;

struct Call
{
    std::vector<nvinfer1::DynamicPluginTensorDesc> dyn;
    int32_t nbInputs;

    std::vector<nvinfer1::PluginTensorDesc> descs() const
    {
        std::vector<nvinfer1::PluginTensorDesc> out;
        for (auto const& d : dyn)
        {
            out.push_back(d.desc);
        }
        return out;
    }
};

PluginPtr create(PluginLibrary& library, char const* name, Fields& fields)
{
    PluginPtr plugin(library.creator(name)->createPlugin("fake", fields.collection(), nvinfer1::TensorRTPhase::kBUILD));
    EXPECT(plugin != nullptr, std::string("createPlugin ") + name);
    return plugin;
}

// configurePlugin, onShapeChange, then `enqueues` enqueues with dummy buffers (no kernel runs; only the
// workspace is written, by the semaphore memset). aliasOutputs: output o is input aliasInputs[o].
void drive(Context& ctx, char const* step, nvinfer1::IPluginV3* plugin, Call const& call, int32_t enqueues,
    std::vector<int32_t> const& aliasInputs, bool separateOutputs = false)
{
    int32_t const nbOutputs = static_cast<int32_t>(call.dyn.size()) - call.nbInputs;
    std::printf("FAKE %s configure %d\n", step,
        build(plugin)->configurePlugin(call.dyn.data(), call.nbInputs, call.dyn.data() + call.nbInputs, nbOutputs));
    auto const descs = call.descs();
    std::printf("FAKE %s onShapeChange %d\n", step,
        runtime(plugin)->onShapeChange(descs.data(), call.nbInputs, descs.data() + call.nbInputs, nbOutputs));
    std::vector<unsigned char> workspace(
        build(plugin)->getWorkspaceSize(call.dyn.data(), call.nbInputs, call.dyn.data() + call.nbInputs, nbOutputs) + 1);
    std::vector<std::vector<unsigned char>> buffers(call.dyn.size(), std::vector<unsigned char>(64));
    std::vector<void const*> inputs;
    std::vector<void*> outputs;
    for (int32_t i = 0; i < call.nbInputs; ++i)
    {
        inputs.push_back(buffers[i].data());
    }
    for (int32_t o = 0; o < nbOutputs; ++o)
    {
        outputs.push_back(o < static_cast<int32_t>(aliasInputs.size()) && !separateOutputs
                ? buffers[aliasInputs[o]].data()
                : buffers[call.nbInputs + o].data());
    }
    for (int32_t i = 0; i < enqueues; ++i)
    {
        std::printf("FAKE %s enqueue %d\n", step,
            runtime(plugin)->enqueue(descs.data(), descs.data() + call.nbInputs, inputs.data(), outputs.data(),
                workspace.data(), nullptr));
    }
    std::fflush(stdout);
    ctx.logger.takeErrors();
}

} // namespace

void fakeRuntimeCases(Context& ctx)
{
    ctx.runner.run("fake_runtime_launches", [&] {
        // Qwen3-8B-shaped drafter layer: 32 q heads, 8 kv heads, head_dim 128, block 16, batch 1, S 4096.
        Fields attention;
        attention.i32("num_heads", 32).i32("num_kv_heads", 8).i32("head_dim", 128);
        int64_t const width = (32 + 2 * 8) * 128;
        std::vector<int64_t> const rope{4200, 64};
        Call const contiguous{{dynamicDesc(DataType::kHALF, {1, 16, width}), dynamicDesc(DataType::kHALF, {128}),
                                  dynamicDesc(DataType::kHALF, {128}), dynamicDesc(DataType::kFLOAT, rope),
                                  dynamicDesc(DataType::kFLOAT, rope), dynamicDesc(DataType::kHALF, {1, 8, 4096, 128}),
                                  dynamicDesc(DataType::kHALF, {1, 8, 4096, 128}), dynamicDesc(DataType::kINT32, {1}),
                                  dynamicDesc(DataType::kHALF, {1, 16, 32 * 128})},
            8};
        PluginPtr blockAttention = create(ctx.library, "DFlashBlockAttention", attention);
        drive(ctx, "attention", blockAttention.get(), contiguous, 3, {});

        Call paged = contiguous;
        paged.dyn[5] = dynamicDesc(DataType::kHALF, {2, 300, 16, 8, 128});
        paged.dyn[6] = dynamicDesc(DataType::kINT32, {1, 2, 256}); // capacity 256 * 16 = 4096
        PluginPtr pagedAttention = create(ctx.library, "DFlashPagedBlockAttention", attention);
        drive(ctx, "paged_attention", pagedAttention.get(), paged, 1, {});

        Fields append;
        append.i32("num_kv_heads", 8).i32("head_dim", 128);
        std::vector<int64_t> const cache{1, 8, 4096, 128};
        Call const appendCall{{dynamicDesc(DataType::kHALF, {1, 5, 2 * 8 * 128}), dynamicDesc(DataType::kHALF, {128}),
                                  dynamicDesc(DataType::kFLOAT, rope), dynamicDesc(DataType::kFLOAT, rope),
                                  dynamicDesc(DataType::kHALF, cache), dynamicDesc(DataType::kHALF, cache),
                                  dynamicDesc(DataType::kINT32, {1}), dynamicDesc(DataType::kINT32, {1}),
                                  dynamicDesc(DataType::kHALF, cache), dynamicDesc(DataType::kHALF, cache)},
            8};
        PluginPtr kvAppend = create(ctx.library, "DFlashContextKVAppend", append);
        drive(ctx, "append", kvAppend.get(), appendCall, 1, {4, 5});
        drive(ctx, "append_separate_outputs", kvAppend.get(), appendCall, 1, {4, 5}, true);

        Call pagedAppend = appendCall;
        pagedAppend.dyn[4] = dynamicDesc(DataType::kHALF, {2, 300, 16, 8, 128});
        pagedAppend.dyn[5] = dynamicDesc(DataType::kINT32, {1, 2, 256});
        pagedAppend.dyn.pop_back();
        pagedAppend.dyn[8] = dynamicDesc(DataType::kHALF, {2, 300, 16, 8, 128});
        PluginPtr pagedKvAppend = create(ctx.library, "DFlashPagedKVAppend", append);
        drive(ctx, "paged_append", pagedKvAppend.get(), pagedAppend, 1, {4});
    });
}

} // namespace harness

// C ABI over the plugins' launch functions, for tests that compare the math with the PyTorch
// reference through ctypes: host buffers in, host buffers out, 0 on success or 1 with the reason
// in dflash_math_last_error(). Built twice: libdflash_trt_math_host.so runs the host build of the
// math; libdflash_trt_math_cuda.so (DFLASH_TRT_MATH_CUDA) stages the buffers through device
// memory and runs the CUDA kernels.
#include "dflashAcceptTokens/dflashAcceptTokensLaunch.h"
#include "dflashBlockAttention/dflashBlockAttentionAttributes.h"
#include "dflashBlockAttention/dflashBlockAttentionLaunch.h"
#include "dflashContextKVAppend/dflashContextKVAppendAttributes.h"
#include "dflashContextKVAppend/dflashContextKVAppendLaunch.h"

#include "common/deviceInfo.h"

#include <cstring>
#include <string>
#include <vector>

#define DFLASH_MATH_EXPORT extern "C" __attribute__((visibility("default")))

namespace
{

using dflash::ElemType;

thread_local std::string gLastError;

int32_t fail(std::string const& message)
{
    gLastError = message;
    return 1;
}

bool toElemType(int32_t code, ElemType& type)
{
    if (code < 0 || code > 2)
    {
        return false;
    }
    type = static_cast<ElemType>(code);
    return true;
}

size_t elemSize(ElemType type)
{
    return type == ElemType::kFLOAT32 ? 4 : 2;
}

// Makes host buffers available to a launch and copies its results back.
class Staging
{
public:
    Staging() = default;
    Staging(Staging const&) = delete;
    Staging& operator=(Staging const&) = delete;

#ifdef DFLASH_TRT_MATH_CUDA
    ~Staging()
    {
        for (void* p : mDevice)
        {
            cudaFree(p);
        }
    }

    void const* in(void const* host, size_t bytes)
    {
        void* device = allocate(bytes);
        if (device != nullptr && bytes > 0)
        {
            check(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice));
        }
        return device;
    }

    void* inOut(void* host, size_t bytes)
    {
        void* device = const_cast<void*>(in(host, bytes));
        mCopyBack.push_back({host, device, bytes});
        return device;
    }

    void* out(void* host, size_t bytes)
    {
        void* device = allocate(bytes);
        mCopyBack.push_back({host, device, bytes});
        return device;
    }

    void* scratch(size_t bytes)
    {
        return allocate(bytes);
    }

    // Waits for the launch and copies the results back; "" on success.
    std::string finish()
    {
        check(cudaDeviceSynchronize());
        for (CopyBack const& c : mCopyBack)
        {
            if (mStatus == cudaSuccess && c.bytes > 0)
            {
                check(cudaMemcpy(c.host, c.device, c.bytes, cudaMemcpyDeviceToHost));
            }
        }
        return error();
    }

    std::string error() const
    {
        return mStatus == cudaSuccess ? "" : std::string("CUDA error: ") + cudaGetErrorString(mStatus);
    }

private:
    struct CopyBack
    {
        void* host;
        void* device;
        size_t bytes;
    };

    void* allocate(size_t bytes)
    {
        void* device = nullptr;
        if (mStatus == cudaSuccess && check(cudaMalloc(&device, bytes > 0 ? bytes : 1)))
        {
            mDevice.push_back(device);
        }
        return device;
    }

    bool check(cudaError_t status)
    {
        if (mStatus == cudaSuccess)
        {
            mStatus = status;
        }
        return status == cudaSuccess;
    }

    cudaError_t mStatus{cudaSuccess};
    std::vector<void*> mDevice;
    std::vector<CopyBack> mCopyBack;
#else
    void const* in(void const* host, size_t)
    {
        return host;
    }

    void* inOut(void* host, size_t)
    {
        return host;
    }

    void* out(void* host, size_t)
    {
        return host;
    }

    void* scratch(size_t bytes)
    {
        mScratch.emplace_back(bytes);
        return mScratch.back().data();
    }

    std::string finish()
    {
        return "";
    }

    std::string error() const
    {
        return "";
    }

private:
    std::vector<std::vector<unsigned char>> mScratch;
#endif
};

} // namespace

DFLASH_MATH_EXPORT char const* dflash_math_last_error()
{
    return gLastError.c_str();
}

DFLASH_MATH_EXPORT char const* dflash_math_backend()
{
#ifdef DFLASH_TRT_MATH_CUDA
    return "cuda";
#else
    return "host";
#endif
}

namespace
{

namespace ba = dflash::blockattn;
namespace kva = dflash::kvappend;

#ifndef DFLASH_TRT_MATH_CUDA
dflash::DeviceInfo gDevice = dflash::hostDevice();
#endif
thread_local dflash::HostCtaStats gStats{};

// The device the launches are planned for: the current CUDA device, or the one set with
// dflash_math_set_device (default hostDevice()) in the host library.
std::string currentDevice(dflash::DeviceInfo& device)
{
#ifdef DFLASH_TRT_MATH_CUDA
    return dflash::queryCurrentDevice(device);
#else
    device = gDevice;
    return "";
#endif
}

// Collects the host CTA counters of one launch (dflash_math_last_stats).
class StatsScope
{
public:
    StatsScope()
    {
        gStats = dflash::HostCtaStats{};
#ifndef DFLASH_TRT_MATH_CUDA
        dflash::hostCtaStats() = &gStats;
#endif
    }
    ~StatsScope()
    {
#ifndef DFLASH_TRT_MATH_CUDA
        dflash::hostCtaStats() = nullptr;
#endif
    }
    StatsScope(StatsScope const&) = delete;
    StatsScope& operator=(StatsScope const&) = delete;
};

int32_t blockAttention(int32_t dtype, ba::Dims const& dims, ba::CacheLayout const& layout, int32_t keysPerSplit,
    void const* qkv, void const* qNormWeight, void const* kNormWeight, float const* ropeCos, float const* ropeSin,
    void const* cacheA, size_t cacheABytes, void const* cacheB, size_t cacheBBytes, int32_t const* ctxLens, void* out)
{
    ElemType type;
    if (!toElemType(dtype, type))
    {
        return fail("dtype must be 0 (fp32), 1 (fp16) or 2 (bf16)");
    }
    ba::Attributes const attributes{dims.numHeads, dims.numKvHeads, dims.headDim, dims.window, dims.qkNorm, dims.eps};
    std::string error = attributes.validate();
    if (!error.empty())
    {
        return fail(error);
    }
    if (dims.batch < 0 || dims.blockLen < 0 || dims.cacheLen < 0 || dims.maxPos < 0)
    {
        return fail("batch, block_len, cache_len and max_pos must be >= 0");
    }
    dflash::DeviceInfo device{};
    error = currentDevice(device);
    if (error.empty())
    {
        error = ba::checkDevice(device, dims.headDim);
    }
    if (!error.empty())
    {
        return fail(error);
    }
    ba::Plan const plan = ba::makePlan(dims, device, keysPerSplit);
    size_t const es = elemSize(type);
    size_t const tokens = static_cast<size_t>(dims.batch) * dims.blockLen;
    size_t const ropeBytes = static_cast<size_t>(dims.maxPos) * (dims.headDim / 2) * sizeof(float);
    Staging s;
    ba::RawTensors const tensors{s.in(qkv, tokens * (dims.numHeads + 2 * dims.numKvHeads) * dims.headDim * es),
        s.in(qNormWeight, dims.headDim * es), s.in(kNormWeight, dims.headDim * es),
        static_cast<float const*>(s.in(ropeCos, ropeBytes)), static_cast<float const*>(s.in(ropeSin, ropeBytes)),
        s.in(cacheA, cacheABytes), layout.paged ? nullptr : s.in(cacheB, cacheBBytes),
        layout.paged ? static_cast<int32_t const*>(s.in(cacheB, cacheBBytes)) : nullptr,
        static_cast<int32_t const*>(s.in(ctxLens, dims.batch * sizeof(int32_t))),
        s.out(out, tokens * dims.numHeads * dims.headDim * es)};
    void* const workspace = s.scratch(ba::workspaceBytes(dims, plan));
    error = s.error();
    StatsScope stats;
    if (error.empty() && ba::launchBlockAttention(type, dims, layout, tensors, plan, device, workspace, nullptr) != 0)
    {
        return fail("launch failed: " + s.finish());
    }
    error = s.finish();
    return error.empty() ? 0 : fail(error);
}

int32_t kvAppend(int32_t dtype, kva::Dims const& dims, kva::CacheLayout const& layout, void const* kv,
    void const* kNormWeight, float const* ropeCos, float const* ropeSin, void* cacheA, size_t cacheABytes, void* cacheB,
    size_t cacheBBytes, int32_t const* pageTable, size_t pageTableBytes, int32_t const* ctxLens, int32_t const* newLens)
{
    ElemType type;
    if (!toElemType(dtype, type))
    {
        return fail("dtype must be 0 (fp32), 1 (fp16) or 2 (bf16)");
    }
    std::string error = kva::Attributes{dims.numKvHeads, dims.headDim, dims.qkNorm, dims.eps}.validate();
    if (!error.empty())
    {
        return fail(error);
    }
    if (dims.batch < 0 || dims.newLen < 0 || dims.cacheLen < 0 || dims.maxPos < 0)
    {
        return fail("batch, new_len, cache_len and max_pos must be >= 0");
    }
    size_t const es = elemSize(type);
    size_t const ropeBytes = static_cast<size_t>(dims.maxPos) * (dims.headDim / 2) * sizeof(float);
    Staging s;
    kva::RawTensors const tensors{
        s.in(kv, static_cast<size_t>(dims.batch) * dims.newLen * 2 * dims.numKvHeads * dims.headDim * es),
        s.in(kNormWeight, dims.headDim * es), static_cast<float const*>(s.in(ropeCos, ropeBytes)),
        static_cast<float const*>(s.in(ropeSin, ropeBytes)), s.inOut(cacheA, cacheABytes),
        layout.paged ? nullptr : s.inOut(cacheB, cacheBBytes),
        layout.paged ? static_cast<int32_t const*>(s.in(pageTable, pageTableBytes)) : nullptr,
        static_cast<int32_t const*>(s.in(ctxLens, dims.batch * sizeof(int32_t))),
        static_cast<int32_t const*>(s.in(newLens, dims.batch * sizeof(int32_t)))};
    error = s.error();
    StatsScope stats;
    if (error.empty() && kva::launchContextKvAppend(type, dims, layout, tensors, nullptr) != 0)
    {
        return fail("launch failed: " + s.finish());
    }
    error = s.finish();
    return error.empty() ? 0 : fail(error);
}

} // namespace

// dtype: 0 fp32, 1 fp16, 2 bf16. keys_per_split > 0 forces the key split size (0: the plugin's plan).
DFLASH_MATH_EXPORT int32_t dflash_math_block_attention(int32_t dtype, int32_t batch, int32_t block_len,
    int32_t num_heads, int32_t num_kv_heads, int32_t head_dim, int32_t cache_len, int32_t max_pos, int32_t window,
    int32_t qk_norm, float eps, int32_t keys_per_split, void const* qkv, void const* q_norm_weight,
    void const* k_norm_weight, float const* rope_cos, float const* rope_sin, void const* k_cache, void const* v_cache,
    int32_t const* ctx_lens, void* out)
{
    ba::Dims const dims{batch, block_len, num_heads, num_kv_heads, head_dim, cache_len, max_pos, window, qk_norm, eps};
    size_t const cacheBytes = static_cast<size_t>(batch < 0 ? 0 : batch) * (num_kv_heads < 0 ? 0 : num_kv_heads)
        * (cache_len < 0 ? 0 : cache_len) * (head_dim < 0 ? 0 : head_dim) * (dtype == 0 ? 4 : 2);
    return blockAttention(dtype, dims, ba::CacheLayout{false, 0, 0, 0}, keys_per_split, qkv, q_norm_weight,
        k_norm_weight, rope_cos, rope_sin, k_cache, cacheBytes, v_cache, cacheBytes, ctx_lens, out);
}

// The paged layout: kv_pool [2][num_pages][tokens_per_page][num_kv_heads][head_dim], page_table
// [batch][2][max_pages] int32.
DFLASH_MATH_EXPORT int32_t dflash_math_paged_block_attention(int32_t dtype, int32_t batch, int32_t block_len,
    int32_t num_heads, int32_t num_kv_heads, int32_t head_dim, int32_t num_pages, int32_t tokens_per_page,
    int32_t max_pages, int32_t max_pos, int32_t window, int32_t qk_norm, float eps, int32_t keys_per_split,
    void const* qkv, void const* q_norm_weight, void const* k_norm_weight, float const* rope_cos,
    float const* rope_sin, void const* kv_pool, int32_t const* page_table, int32_t const* ctx_lens, void* out)
{
    if (num_pages < 0 || tokens_per_page < 1 || max_pages < 0)
    {
        return fail("num_pages and max_pages must be >= 0 and tokens_per_page >= 1");
    }
    ba::Dims const dims{batch, block_len, num_heads, num_kv_heads, head_dim, max_pages * tokens_per_page, max_pos,
        window, qk_norm, eps};
    size_t const poolBytes = size_t{2} * num_pages * tokens_per_page * (num_kv_heads < 0 ? 0 : num_kv_heads)
        * (head_dim < 0 ? 0 : head_dim) * (dtype == 0 ? 4 : 2);
    size_t const tableBytes = static_cast<size_t>(batch < 0 ? 0 : batch) * 2 * max_pages * sizeof(int32_t);
    return blockAttention(dtype, dims, ba::CacheLayout{true, num_pages, tokens_per_page, max_pages}, keys_per_split,
        qkv, q_norm_weight, k_norm_weight, rope_cos, rope_sin, kv_pool, poolBytes, page_table, tableBytes, ctx_lens,
        out);
}

// Updates k_cache and v_cache in place, as TensorRT does when it honours the plugin's output aliasing
// (the plugin refuses to run otherwise).
DFLASH_MATH_EXPORT int32_t dflash_math_context_kv_append(int32_t dtype, int32_t batch, int32_t new_len,
    int32_t num_kv_heads, int32_t head_dim, int32_t cache_len, int32_t max_pos, int32_t qk_norm, float eps,
    void const* kv, void const* k_norm_weight, float const* rope_cos, float const* rope_sin, void* k_cache,
    void* v_cache, int32_t const* ctx_lens, int32_t const* new_lens)
{
    kva::Dims const dims{batch, new_len, num_kv_heads, head_dim, cache_len, max_pos, qk_norm, eps};
    size_t const cacheBytes = static_cast<size_t>(batch < 0 ? 0 : batch) * (num_kv_heads < 0 ? 0 : num_kv_heads)
        * (cache_len < 0 ? 0 : cache_len) * (head_dim < 0 ? 0 : head_dim) * (dtype == 0 ? 4 : 2);
    return kvAppend(dtype, dims, kva::CacheLayout{false, 0, 0, 0}, kv, k_norm_weight, rope_cos, rope_sin, k_cache,
        cacheBytes, v_cache, cacheBytes, nullptr, 0, ctx_lens, new_lens);
}

DFLASH_MATH_EXPORT int32_t dflash_math_paged_kv_append(int32_t dtype, int32_t batch, int32_t new_len,
    int32_t num_kv_heads, int32_t head_dim, int32_t num_pages, int32_t tokens_per_page, int32_t max_pages,
    int32_t max_pos, int32_t qk_norm, float eps, void const* kv, void const* k_norm_weight, float const* rope_cos,
    float const* rope_sin, void* kv_pool, int32_t const* page_table, int32_t const* ctx_lens, int32_t const* new_lens)
{
    if (num_pages < 0 || tokens_per_page < 1 || max_pages < 0)
    {
        return fail("num_pages and max_pages must be >= 0 and tokens_per_page >= 1");
    }
    kva::Dims const dims{batch, new_len, num_kv_heads, head_dim, max_pages * tokens_per_page, max_pos, qk_norm, eps};
    size_t const poolBytes = size_t{2} * num_pages * tokens_per_page * (num_kv_heads < 0 ? 0 : num_kv_heads)
        * (head_dim < 0 ? 0 : head_dim) * (dtype == 0 ? 4 : 2);
    size_t const tableBytes = static_cast<size_t>(batch < 0 ? 0 : batch) * 2 * max_pages * sizeof(int32_t);
    return kvAppend(dtype, dims, kva::CacheLayout{true, num_pages, tokens_per_page, max_pages}, kv, k_norm_weight,
        rope_cos, rope_sin, kv_pool, poolBytes, nullptr, 0, page_table, tableBytes, ctx_lens, new_lens);
}

// The launch plan of a DFlashBlockAttention call on the current device: out[0..3] = rows per tile,
// row tiles, key splits launched, min keys per split; workspace[0] = this call's workspace bytes,
// workspace[1] = what getWorkspaceSize reserves for a profile whose maxima are these extents.
DFLASH_MATH_EXPORT int32_t dflash_math_block_attention_plan(int32_t batch, int32_t block_len, int32_t num_heads,
    int32_t num_kv_heads, int32_t head_dim, int32_t cache_len, int32_t window, int32_t* out, int64_t* workspace)
{
    ba::Attributes const attributes{num_heads, num_kv_heads, head_dim, window, 1, 1e-6f};
    std::string error = attributes.validate();
    dflash::DeviceInfo device{};
    if (error.empty())
    {
        error = currentDevice(device);
    }
    if (error.empty())
    {
        error = ba::checkDevice(device, head_dim);
    }
    if (!error.empty())
    {
        return fail(error);
    }
    ba::Dims const dims{batch, block_len, num_heads, num_kv_heads, head_dim, cache_len, cache_len + block_len, window,
        1, 1e-6f};
    ba::Plan const plan = ba::makePlan(dims, device);
    out[0] = plan.rowsPerTile;
    out[1] = plan.rowTiles;
    out[2] = plan.numSplits;
    out[3] = plan.minKeysPerSplit;
    workspace[0] = static_cast<int64_t>(ba::workspaceBytes(dims, plan));
    workspace[1] = static_cast<int64_t>(ba::maxWorkspaceBytes(dims));
    return 0;
}

// Host CTA counters of the last launch on this thread: CTAs entered, CTAs that did work, merges.
DFLASH_MATH_EXPORT void dflash_math_last_stats(int64_t* out)
{
    out[0] = gStats.ctas;
    out[1] = gStats.ctasWithWork;
    out[2] = gStats.merges;
}

DFLASH_MATH_EXPORT int32_t dflash_math_accept_tokens(int32_t batch, int32_t block_len, int32_t const* draft_tokens,
    int32_t const* target_tokens, int32_t* accepted_len, int32_t* bonus_token)
{
    if (batch < 0 || block_len < 1)
    {
        return fail("batch must be >= 0 and block_len >= 1");
    }
    size_t const b = static_cast<size_t>(batch);
    Staging s;
    dflash::accept::Tensors const tensors{
        static_cast<int32_t const*>(s.in(draft_tokens, b * (block_len - 1) * sizeof(int32_t))),
        static_cast<int32_t const*>(s.in(target_tokens, b * block_len * sizeof(int32_t))),
        static_cast<int32_t*>(s.out(accepted_len, b * sizeof(int32_t))),
        static_cast<int32_t*>(s.out(bonus_token, b * sizeof(int32_t)))};
    std::string error = s.error();
    if (error.empty() && dflash::accept::launchAcceptTokens(tensors, batch, block_len, nullptr) != 0)
    {
        return fail("launch failed: " + s.finish());
    }
    error = s.finish();
    return error.empty() ? 0 : fail(error);
}

#ifdef DFLASH_TRT_MATH_CUDA

// Number of usable CUDA devices; a negative CUDA error code when the runtime cannot tell.
DFLASH_MATH_EXPORT int32_t dflash_math_device_count()
{
    int count = 0;
    cudaError_t const status = cudaGetDeviceCount(&count);
    return status == cudaSuccess ? count : -static_cast<int32_t>(status);
}

#else

// The device the host library plans for (what queryCurrentDevice returns in the CUDA build);
// sm_count 0 restores hostDevice().
DFLASH_MATH_EXPORT void dflash_math_set_device(
    int32_t cc_major, int32_t cc_minor, int32_t sm_count, int32_t max_smem_per_cta, int32_t smem_per_sm)
{
    gDevice = sm_count == 0 ? dflash::hostDevice()
                            : dflash::DeviceInfo{cc_major, cc_minor, sm_count, max_smem_per_cta, smem_per_sm};
}

// The host element conversions the math uses (fp32 <-> fp16/bf16, round to nearest even).
DFLASH_MATH_EXPORT int32_t dflash_math_from_float(int32_t dtype, int64_t count, float const* in, void* out)
{
    ElemType type;
    if (!toElemType(dtype, type) || type == ElemType::kFLOAT32 || count < 0)
    {
        return fail("dtype must be 1 (fp16) or 2 (bf16) and count >= 0");
    }
    auto* const bits = static_cast<uint16_t*>(out);
    for (int64_t i = 0; i < count; ++i)
    {
        bits[i] = type == ElemType::kFLOAT16 ? dflash::floatToHalfBits(in[i]) : dflash::floatToBFloat16Bits(in[i]);
    }
    return 0;
}

DFLASH_MATH_EXPORT int32_t dflash_math_to_float(int32_t dtype, int64_t count, void const* in, float* out)
{
    ElemType type;
    if (!toElemType(dtype, type) || type == ElemType::kFLOAT32 || count < 0)
    {
        return fail("dtype must be 1 (fp16) or 2 (bf16) and count >= 0");
    }
    auto const* const bits = static_cast<uint16_t const*>(in);
    for (int64_t i = 0; i < count; ++i)
    {
        out[i] = type == ElemType::kFLOAT16 ? dflash::halfBitsToFloat(bits[i]) : dflash::bfloat16BitsToFloat(bits[i]);
    }
    return 0;
}

#endif

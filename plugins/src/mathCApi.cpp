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

// dtype: 0 fp32, 1 fp16, 2 bf16. keys_per_split > 0 forces the key split size (0: the plugin's plan).
DFLASH_MATH_EXPORT int32_t dflash_math_block_attention(int32_t dtype, int32_t batch, int32_t block_len,
    int32_t num_heads, int32_t num_kv_heads, int32_t head_dim, int32_t cache_len, int32_t max_pos, int32_t window,
    int32_t qk_norm, float eps, int32_t keys_per_split, void const* qkv, void const* q_norm_weight,
    void const* k_norm_weight, float const* rope_cos, float const* rope_sin, void const* k_cache, void const* v_cache,
    int32_t const* ctx_lens, void* out)
{
    namespace ba = dflash::blockattn;
    ElemType type;
    if (!toElemType(dtype, type))
    {
        return fail("dtype must be 0 (fp32), 1 (fp16) or 2 (bf16)");
    }
    ba::Attributes const attributes{num_heads, num_kv_heads, head_dim, window, qk_norm, eps};
    std::string error = attributes.validate();
    if (!error.empty())
    {
        return fail(error);
    }
    if (batch < 0 || block_len < 0 || cache_len < 0 || max_pos < 0)
    {
        return fail("batch, block_len, cache_len and max_pos must be >= 0");
    }
    ba::Dims const dims{batch, block_len, num_heads, num_kv_heads, head_dim, cache_len, max_pos, window, qk_norm, eps};
    ba::Plan const plan = ba::makePlan(dims, keys_per_split);
    size_t const es = elemSize(type);
    size_t const tokens = static_cast<size_t>(batch) * block_len;
    size_t const cacheElems = static_cast<size_t>(batch) * num_kv_heads * cache_len * head_dim;
    size_t const ropeBytes = static_cast<size_t>(max_pos) * (head_dim / 2) * sizeof(float);
    Staging s;
    ba::RawTensors const tensors{s.in(qkv, tokens * (num_heads + 2 * num_kv_heads) * head_dim * es),
        s.in(q_norm_weight, head_dim * es), s.in(k_norm_weight, head_dim * es),
        static_cast<float const*>(s.in(rope_cos, ropeBytes)), static_cast<float const*>(s.in(rope_sin, ropeBytes)),
        s.in(k_cache, cacheElems * es), s.in(v_cache, cacheElems * es),
        static_cast<int32_t const*>(s.in(ctx_lens, batch * sizeof(int32_t))),
        s.out(out, tokens * num_heads * head_dim * es)};
    void* const workspace = s.scratch(ba::workspaceBytes(dims, plan));
    error = s.error();
    if (error.empty() && ba::launchBlockAttention(type, dims, tensors, plan, workspace, nullptr) != 0)
    {
        return fail("launch failed: " + s.finish());
    }
    error = s.finish();
    return error.empty() ? 0 : fail(error);
}

// Passing the same buffer as k_cache_in and k_cache_out (and v) updates it in place, as TensorRT
// does when it honours the plugin's output aliasing; distinct buffers exercise the copying path.
DFLASH_MATH_EXPORT int32_t dflash_math_context_kv_append(int32_t dtype, int32_t batch, int32_t new_len,
    int32_t num_kv_heads, int32_t head_dim, int32_t cache_len, int32_t max_pos, int32_t qk_norm, float eps,
    void const* kv, void const* k_norm_weight, float const* rope_cos, float const* rope_sin, void* k_cache_in,
    void* v_cache_in, int32_t const* ctx_lens, int32_t const* new_lens, void* k_cache_out, void* v_cache_out)
{
    namespace kva = dflash::kvappend;
    ElemType type;
    if (!toElemType(dtype, type))
    {
        return fail("dtype must be 0 (fp32), 1 (fp16) or 2 (bf16)");
    }
    std::string error = kva::Attributes{num_kv_heads, head_dim, qk_norm, eps}.validate();
    if (!error.empty())
    {
        return fail(error);
    }
    if (batch < 0 || new_len < 0 || cache_len < 0 || max_pos < 0)
    {
        return fail("batch, new_len, cache_len and max_pos must be >= 0");
    }
    kva::Dims const dims{batch, new_len, num_kv_heads, head_dim, cache_len, max_pos, qk_norm, eps};
    size_t const es = elemSize(type);
    size_t const cache = kva::cacheBytes(dims, es);
    size_t const ropeBytes = static_cast<size_t>(max_pos) * (head_dim / 2) * sizeof(float);
    Staging s;
    void const* const kv_ = s.in(kv, static_cast<size_t>(batch) * new_len * 2 * num_kv_heads * head_dim * es);
    void const* const knw = s.in(k_norm_weight, head_dim * es);
    auto const* const cos_ = static_cast<float const*>(s.in(rope_cos, ropeBytes));
    auto const* const sin_ = static_cast<float const*>(s.in(rope_sin, ropeBytes));
    auto const* const ctx = static_cast<int32_t const*>(s.in(ctx_lens, batch * sizeof(int32_t)));
    auto const* const lens = static_cast<int32_t const*>(s.in(new_lens, batch * sizeof(int32_t)));
    void* kOut = nullptr;
    void* vOut = nullptr;
    void const* kIn = nullptr;
    void const* vIn = nullptr;
    if (k_cache_in == k_cache_out)
    {
        kIn = kOut = s.inOut(k_cache_out, cache);
    }
    else
    {
        kIn = s.in(k_cache_in, cache);
        kOut = s.out(k_cache_out, cache);
    }
    if (v_cache_in == v_cache_out)
    {
        vIn = vOut = s.inOut(v_cache_out, cache);
    }
    else
    {
        vIn = s.in(v_cache_in, cache);
        vOut = s.out(v_cache_out, cache);
    }
    kva::RawTensors const tensors{kv_, knw, cos_, sin_, kIn, vIn, ctx, lens, kOut, vOut};
    error = s.error();
    if (error.empty() && kva::launchContextKvAppend(type, dims, tensors, nullptr) != 0)
    {
        return fail("launch failed: " + s.finish());
    }
    error = s.finish();
    return error.empty() ? 0 : fail(error);
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

// CTA harness: runs the plugins' CTA functions (src/*/...Math.h) the way the GPU would, on the host,
// so that the sanitizers can see what the plain host build cannot.
//
//   dflash_trt_cta_harness threaded   one std::thread per GPU thread, std::barrier as sync() (run it
//                                     under ThreadSanitizer: a missing sync() is a data race)
//   dflash_trt_cta_harness reordered  one thread, each phase's items and the grid's CTAs in reverse and
//                                     in strided order, shared memory and workspace filled with NaN
//                                     before every CTA / launch (run it under ASan + UBSan)
//
// Every run is compared bit for bit with the plain in-order host run (the plugin's host build), which
// is itself checked against a naive double-precision reference. Prints PASS/FAIL lines; exits 1 on a
// failure (and the sanitizers exit nonzero on a report).
#include "dflashAcceptTokens/dflashAcceptTokensMath.h"
#include "dflashBlockAttention/dflashBlockAttentionLaunch.h"
#include "dflashContextKVAppend/dflashContextKVAppendLaunch.h"
#include "naiveMath.h"

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <thread>
#include <vector>

namespace
{

using dflash::HostCtaThread;
using dflash::HostItemOrder;

enum class Mode
{
    kPlain,    // the plugin host build: no HostCtaThread
    kThreaded, // one std::thread per GPU thread
    kReverse,
    kStrided,
};

char const* modeName(Mode mode)
{
    switch (mode)
    {
    case Mode::kPlain: return "plain";
    case Mode::kThreaded: return "threaded";
    case Mode::kReverse: return "reverse";
    case Mode::kStrided: return "strided";
    }
    return "?";
}

int gFailures = 0;

std::string sci(double x)
{
    char text[32];
    std::snprintf(text, sizeof(text), "%.2e", x);
    return text;
}

void report(bool ok, std::string const& what)
{
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", what.c_str());
    std::fflush(stdout);
    gFailures += ok ? 0 : 1;
}

// Runs cta(index, smem) for every CTA index of a grid, as `mode` says. smemFloats floats of shared
// memory per CTA, NaN-filled before each CTA.
void runGrid(Mode mode, int32_t numCtas, int32_t threadsPerCta, size_t smemFloats,
    std::function<void(int32_t, float*)> const& cta)
{
    std::vector<int32_t> order(static_cast<size_t>(numCtas));
    for (int32_t i = 0; i < numCtas; ++i)
    {
        order[i] = i;
    }
    if (mode == Mode::kReverse)
    {
        std::reverse(order.begin(), order.end());
    }
    else if (mode == Mode::kStrided)
    {
        std::vector<int32_t> strided;
        for (int32_t start = 0; start < 5; ++start)
        {
            for (int32_t i = start; i < numCtas; i += 5)
            {
                strided.push_back(i);
            }
        }
        order = strided;
    }
    std::vector<float> smem(smemFloats + 1);
    float const nan = std::numeric_limits<float>::quiet_NaN();
    if (mode != Mode::kThreaded)
    {
        HostCtaThread self{0, 1, nullptr, nullptr,
            mode == Mode::kReverse ? HostItemOrder::kREVERSE
                                   : (mode == Mode::kStrided ? HostItemOrder::kSTRIDED : HostItemOrder::kFORWARD)};
        dflash::hostCtaThread() = mode == Mode::kPlain ? nullptr : &self;
        for (int32_t index : order)
        {
            std::fill(smem.begin(), smem.end(), nan);
            cta(index, smem.data());
        }
        dflash::hostCtaThread() = nullptr;
        return;
    }
    std::barrier<> barrier(threadsPerCta);
    auto const sync = [](void* arg) { static_cast<std::barrier<>*>(arg)->arrive_and_wait(); };
    std::vector<std::thread> threads;
    for (int32_t tid = 0; tid < threadsPerCta; ++tid)
    {
        threads.emplace_back([&, tid] {
            HostCtaThread self{tid, threadsPerCta, sync, &barrier, HostItemOrder::kFORWARD};
            dflash::hostCtaThread() = &self;
            for (int32_t index : order)
            {
                if (tid == 0)
                {
                    std::fill(smem.begin(), smem.end(), nan);
                }
                barrier.arrive_and_wait(); // a new CTA starts with fresh shared memory
                cta(index, smem.data());
                barrier.arrive_and_wait(); // every thread has left the CTA before the next one reuses smem
            }
            dflash::hostCtaThread() = nullptr;
        });
    }
    for (std::thread& t : threads)
    {
        t.join();
    }
}

bool sameBits(std::vector<float> const& a, std::vector<float> const& b)
{
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// ---- DFlashBlockAttention ---------------------------------------------------------------------------

struct AttentionCase
{
    char const* name;
    int32_t batch, block, numHeads, numKvHeads, headDim, capacity, window, keysPerSplit, rowsCap;
    std::vector<int32_t> ctxLens;
    int32_t tokensPerPage; // 0: contiguous
};

struct AttentionData
{
    AttentionCase c;
    int32_t maxPos;
    std::vector<float> qkv, qWeight, kWeight, cosTable, sinTable, kCache, vCache, pool;
    std::vector<int32_t> pageTable;
    int32_t maxPages{0}, numPages{0};

    explicit AttentionData(AttentionCase const& c_)
        : c(c_)
        , maxPos(c_.capacity + c_.block)
    {
        std::mt19937 rng(17);
        qkv = harness::randomVector(static_cast<size_t>(c.batch) * c.block * (c.numHeads + 2 * c.numKvHeads) * c.headDim, rng);
        qWeight = harness::randomVector(c.headDim, rng, 0.5f, 1.5f);
        kWeight = harness::randomVector(c.headDim, rng, 0.5f, 1.5f);
        harness::ropeTables(maxPos, c.headDim, cosTable, sinTable);
        kCache = harness::randomVector(static_cast<size_t>(c.batch) * c.numKvHeads * c.capacity * c.headDim, rng);
        vCache = harness::randomVector(kCache.size(), rng);
        for (int32_t s = 0; s < c.batch; ++s) // slots past the context are NaN: never read
        {
            for (int32_t h = 0; h < c.numKvHeads; ++h)
            {
                for (int32_t p = c.ctxLens[s]; p < c.capacity; ++p)
                {
                    size_t const o = ((static_cast<size_t>(s) * c.numKvHeads + h) * c.capacity + p) * c.headDim;
                    std::fill(kCache.begin() + o, kCache.begin() + o + c.headDim, std::nanf(""));
                    std::fill(vCache.begin() + o, vCache.begin() + o + c.headDim, std::nanf(""));
                }
            }
        }
        if (c.tokensPerPage > 0)
        {
            maxPages = (c.capacity + c.tokensPerPage - 1) / c.tokensPerPage;
            numPages = c.batch * maxPages + 1;
            size_t const half = static_cast<size_t>(numPages) * c.tokensPerPage * c.numKvHeads * c.headDim;
            pool.assign(2 * half, std::nanf(""));
            pageTable.resize(static_cast<size_t>(c.batch) * 2 * maxPages);
            for (int32_t s = 0; s < c.batch; ++s)
            {
                for (int32_t i = 0; i < maxPages; ++i)
                {
                    pageTable[(static_cast<size_t>(s) * 2) * maxPages + i] = numPages - 1 - (s * maxPages + i);
                    pageTable[(static_cast<size_t>(s) * 2 + 1) * maxPages + i] = s * maxPages + i;
                }
                for (int32_t which = 0; which < 2; ++which)
                {
                    for (int32_t h = 0; h < c.numKvHeads; ++h)
                    {
                        for (int32_t p = 0; p < c.capacity; ++p)
                        {
                            int32_t const page = pageTable[(static_cast<size_t>(s) * 2 + which) * maxPages + p / c.tokensPerPage];
                            std::vector<float> const& src = which == 0 ? kCache : vCache;
                            size_t const from = ((static_cast<size_t>(s) * c.numKvHeads + h) * c.capacity + p) * c.headDim;
                            size_t const to = which * half
                                + ((static_cast<size_t>(page) * c.tokensPerPage + p % c.tokensPerPage) * c.numKvHeads + h) * c.headDim;
                            std::copy(src.begin() + from, src.begin() + from + c.headDim, pool.begin() + to);
                        }
                    }
                }
            }
        }
    }

    std::vector<double> reference() const
    {
        int32_t const D = c.headDim;
        int32_t const width = c.numHeads + 2 * c.numKvHeads;
        std::vector<double> out(static_cast<size_t>(c.batch) * c.block * c.numHeads * D);
        for (int32_t s = 0; s < c.batch; ++s)
        {
            int32_t const ctx = c.ctxLens[s];
            for (int32_t h = 0; h < c.numHeads; ++h)
            {
                int32_t const kv = h / (c.numHeads / c.numKvHeads);
                auto token = [&](int32_t i, int32_t slot) {
                    return qkv.data() + ((static_cast<size_t>(s) * c.block + i) * width + slot) * D;
                };
                std::vector<std::vector<double>> keys, values;
                for (int32_t j = 0; j < ctx; ++j)
                {
                    size_t const o = ((static_cast<size_t>(s) * c.numKvHeads + kv) * c.capacity + j) * D;
                    keys.emplace_back(kCache.begin() + o, kCache.begin() + o + D);
                    values.emplace_back(vCache.begin() + o, vCache.begin() + o + D);
                }
                for (int32_t j = 0; j < c.block; ++j)
                {
                    keys.push_back(harness::naiveNormRope(token(j, c.numHeads + kv), kWeight.data(), cosTable.data(),
                        sinTable.data(), ctx + j, D, true, 1e-6));
                    values.emplace_back(token(j, c.numHeads + c.numKvHeads + kv), token(j, c.numHeads + c.numKvHeads + kv) + D);
                }
                for (int32_t i = 0; i < c.block; ++i)
                {
                    std::vector<double> const q = harness::naiveNormRope(
                        token(i, h), qWeight.data(), cosTable.data(), sinTable.data(), ctx + i, D, true, 1e-6);
                    std::vector<double> w(keys.size());
                    double top = -std::numeric_limits<double>::infinity();
                    for (size_t j = 0; j < keys.size(); ++j)
                    {
                        double dot = 0.0;
                        for (int32_t d = 0; d < D; ++d)
                        {
                            dot += q[d] * keys[j][d];
                        }
                        bool const visible = c.window <= 0 || std::abs(ctx + i - static_cast<int32_t>(j)) < c.window;
                        w[j] = visible ? dot / std::sqrt(static_cast<double>(D)) : -std::numeric_limits<double>::infinity();
                        top = std::max(top, w[j]);
                    }
                    double sum = 0.0;
                    for (double& x : w)
                    {
                        x = std::exp(x - top);
                        sum += x;
                    }
                    for (int32_t d = 0; d < D; ++d)
                    {
                        double acc = 0.0;
                        for (size_t j = 0; j < keys.size(); ++j)
                        {
                            acc += w[j] * values[j][d];
                        }
                        out[((static_cast<size_t>(s) * c.block + i) * c.numHeads + h) * D + d] = acc / sum;
                    }
                }
            }
        }
        return out;
    }

    template <int32_t D>
    std::vector<float> run(Mode mode) const
    {
        namespace ba = dflash::blockattn;
        ba::Dims const dims{c.batch, c.block, c.numHeads, c.numKvHeads, D, c.capacity, maxPos, c.window, 1, 1e-6f};
        ba::Plan const plan = ba::makePlan(dims, dflash::hostDevice(), c.keysPerSplit, c.rowsCap);
        std::vector<float> out(static_cast<size_t>(c.batch) * c.block * c.numHeads * D, -1.0f);
        std::vector<float> workspace((ba::workspaceBytes(dims, plan) + 3) / 4, std::nanf(""));
        ba::Partials const partials = ba::workspacePartials(workspace.data(), dims, plan);
        if (plan.numSplits > 1)
        {
            std::fill(partials.counters, partials.counters + ba::counterCount(dims, plan), 0);
        }
        ba::CacheLayout const layout{c.tokensPerPage > 0, numPages, c.tokensPerPage, maxPages};
        ba::RawTensors const raw{qkv.data(), qWeight.data(), kWeight.data(), cosTable.data(), sinTable.data(),
            layout.paged ? pool.data() : kCache.data(), layout.paged ? nullptr : vCache.data(),
            layout.paged ? pageTable.data() : nullptr, c.ctxLens.data(), out.data()};
        int32_t const perSeq = c.numKvHeads * plan.rowTiles * plan.numSplits;
        auto grid = [&](auto const& t) {
            using Cache = decltype(t.cache);
            runGrid(mode, c.batch * perSeq, 128, static_cast<size_t>(ba::smemFloats(plan.rowsPerTile, D)),
                [&](int32_t index, float* smem) {
                    int32_t const seq = index / perSeq;
                    int32_t const kvHead = index % perSeq / (plan.rowTiles * plan.numSplits);
                    int32_t const rowTile = index % (plan.rowTiles * plan.numSplits) / plan.numSplits;
                    int32_t const split = index % plan.numSplits;
                    ba::blockAttentionCta<float, D, Cache>(dims, t, plan, partials, seq, kvHead, rowTile, split, smem);
                });
        };
        if (layout.paged)
        {
            grid(ba::pagedTensors<float>(raw, dims, layout));
        }
        else
        {
            grid(ba::contiguousTensors<float>(raw, dims));
        }
        return out;
    }
};

template <int32_t D>
void attentionCase(AttentionCase const& c, std::vector<Mode> const& modes)
{
    AttentionData const data(c);
    std::vector<float> const plain = data.run<D>(Mode::kPlain);
    std::vector<double> const want = data.reference();
    double worst = 0.0;
    for (size_t i = 0; i < plain.size(); ++i)
    {
        worst = std::max(worst, std::isnan(plain[i]) ? 1e30 : std::abs(plain[i] - want[i]));
    }
    report(worst < 1e-4, std::string("attention_") + c.name + "_plain_vs_reference (max error " + sci(worst) + ")");
    for (Mode mode : modes)
    {
        report(sameBits(data.run<D>(mode), plain), std::string("attention_") + c.name + "_" + modeName(mode) + "_bitwise");
    }
}

// ---- DFlashContextKVAppend ----------------------------------------------------------------------

template <int32_t D>
void appendCase(bool paged, std::vector<Mode> const& modes)
{
    namespace kva = dflash::kvappend;
    int32_t const batch = 3, newLen = 4, kvHeads = 2, capacity = 12, tpp = 4;
    std::vector<int32_t> const ctxLens{0, 9, 5};
    std::vector<int32_t> const newLens{4, 4, 2};
    std::mt19937 rng(23);
    std::vector<float> const kv = harness::randomVector(static_cast<size_t>(batch) * newLen * 2 * kvHeads * D, rng);
    std::vector<float> const weight = harness::randomVector(D, rng, 0.5f, 1.5f);
    std::vector<float> cosTable, sinTable;
    harness::ropeTables(capacity, D, cosTable, sinTable);
    int32_t const maxPages = capacity / tpp, numPages = batch * maxPages;
    std::vector<int32_t> table(static_cast<size_t>(batch) * 2 * maxPages);
    for (size_t i = 0; i < table.size(); ++i)
    {
        table[i] = static_cast<int32_t>((i * 7) % numPages); // distinct pages within the key half and within the value half
    }
    size_t const elems = paged ? 2 * static_cast<size_t>(numPages) * tpp * kvHeads * D
                               : 2 * static_cast<size_t>(batch) * kvHeads * capacity * D;
    std::vector<float> const start = harness::randomVector(elems, rng);
    kva::Dims const dims{batch, newLen, kvHeads, D, capacity, capacity, 1, 1e-6f};
    kva::CacheLayout const layout{paged, numPages, tpp, maxPages};
    auto run = [&](Mode mode) {
        std::vector<float> cache = start;
        kva::RawTensors const raw{kv.data(), weight.data(), cosTable.data(), sinTable.data(), cache.data(),
            paged ? nullptr : cache.data() + elems / 2, paged ? table.data() : nullptr, ctxLens.data(), newLens.data()};
        auto grid = [&](auto const& t) {
            using Cache = decltype(t.cache);
            runGrid(mode, batch * kvHeads * newLen, D, static_cast<size_t>(kva::smemFloats(D)), [&](int32_t index, float* smem) {
                kva::contextKvAppendCta<float, D, Cache>(
                    dims, t, index / (kvHeads * newLen), index / newLen % kvHeads, index % newLen, smem);
            });
        };
        if (paged)
        {
            grid(kva::pagedTensors<float>(raw, dims, layout));
        }
        else
        {
            grid(kva::contiguousTensors<float>(raw, dims));
        }
        return cache;
    };
    std::vector<float> const plain = run(Mode::kPlain);
    // Written keys against the naive norm + RoPE; everything else unchanged.
    double worst = 0.0;
    size_t written = 0;
    for (int32_t s = 0; s < batch; ++s)
    {
        for (int32_t row = 0; row < newLens[s] && ctxLens[s] + row < capacity; ++row)
        {
            int32_t const pos = ctxLens[s] + row;
            for (int32_t h = 0; h < kvHeads; ++h)
            {
                float const* token = kv.data() + (static_cast<size_t>(s) * newLen + row) * 2 * kvHeads * D;
                std::vector<double> const key = harness::naiveNormRope(
                    token + h * D, weight.data(), cosTable.data(), sinTable.data(), pos, D, true, 1e-6);
                size_t const k = paged
                    ? ((static_cast<size_t>(table[(s * 2) * maxPages + pos / tpp]) * tpp + pos % tpp) * kvHeads + h) * D
                    : ((static_cast<size_t>(s) * kvHeads + h) * capacity + pos) * D;
                for (int32_t d = 0; d < D; ++d)
                {
                    worst = std::max(worst, std::abs(plain[k + d] - key[d]));
                }
                ++written;
            }
        }
    }
    size_t changed = 0;
    for (size_t i = 0; i < elems; ++i)
    {
        changed += plain[i] != start[i] ? 1 : 0;
    }
    std::string const name = std::string("append_") + (paged ? "paged" : "contiguous") + "_d" + std::to_string(D);
    report(worst < 1e-5 && changed <= 2 * written * D && changed > written * D,
        name + "_plain_vs_reference (max error " + sci(worst) + ")");
    for (Mode mode : modes)
    {
        report(sameBits(run(mode), plain), name + "_" + modeName(mode) + "_bitwise");
    }
}

// ---- DFlashAcceptTokens ---------------------------------------------------------------------------

void acceptCase(std::vector<Mode> const& modes)
{
    int32_t const batch = 300, block = 6;
    std::vector<int32_t> target(static_cast<size_t>(batch) * block), draft(static_cast<size_t>(batch) * (block - 1));
    for (int32_t s = 0; s < batch; ++s)
    {
        for (int32_t i = 0; i < block; ++i)
        {
            target[static_cast<size_t>(s) * block + i] = (s * 7 + i * 3) % 4;
        }
        for (int32_t i = 0; i < block - 1; ++i)
        {
            draft[static_cast<size_t>(s) * (block - 1) + i] = i < s % block ? target[static_cast<size_t>(s) * block + i] : 9;
        }
    }
    auto run = [&](Mode mode) {
        std::vector<int32_t> accepted(batch, -1), bonus(batch, -1);
        dflash::accept::Tensors const t{draft.data(), target.data(), accepted.data(), bonus.data()};
        runGrid(mode, (batch + 127) / 128, 128, 0, [&](int32_t index, float*) {
            dflash::accept::acceptTokensCta(t, block, index * 128, std::min(128, batch - index * 128));
        });
        accepted.insert(accepted.end(), bonus.begin(), bonus.end());
        return accepted;
    };
    std::vector<int32_t> const plain = run(Mode::kPlain);
    bool ok = true;
    for (int32_t s = 0; s < batch; ++s)
    {
        ok = ok && plain[s] == s % block && plain[batch + s] == target[static_cast<size_t>(s) * block + s % block];
    }
    report(ok, "accept_plain_vs_reference");
    for (Mode mode : modes)
    {
        report(run(mode) == plain, std::string("accept_") + modeName(mode) + "_equal");
    }
}

} // namespace

int main(int argc, char** argv)
{
    std::string const what = argc > 1 ? argv[1] : "";
    std::vector<Mode> modes;
    if (what == "threaded")
    {
        modes = {Mode::kThreaded};
    }
    else if (what == "reordered")
    {
        modes = {Mode::kReverse, Mode::kStrided};
    }
    else
    {
        std::fprintf(stderr, "usage: %s threaded|reordered\n", argv[0]);
        return 2;
    }
    // Shapes that reach every phase: several key tiles per split, forced splits merged by the last CTA,
    // sequences that need fewer splits than launched (early exits), a window that hides whole tiles, two
    // row tiles of unequal size, an empty context, and the paged layout.
    attentionCase<64>({"splits", 3, 5, 8, 2, 64, 150, 0, 64, 64, {0, 150, 70}, 0}, modes);
    attentionCase<64>({"window_rowtiles", 2, 7, 8, 1, 64, 100, 9, 32, 32, {100, 37}, 0}, modes);
    attentionCase<64>({"paged", 2, 4, 4, 2, 64, 96, 0, 64, 64, {96, 50}, 16}, modes);
    attentionCase<128>({"d128_unsplit", 1, 3, 4, 1, 128, 70, 0, 0, 64, {70}, 0}, modes);
    appendCase<64>(false, modes);
    appendCase<64>(true, modes);
    appendCase<128>(false, modes);
    acceptCase(modes);
    std::printf("SUMMARY failures=%d\n", gFailures);
    return gFailures == 0 ? 0 : 1;
}

#!/usr/bin/env python
"""Analytic roofline estimate of one DFlashBlockAttention call on datacenter GPUs, and this plugin's kernel.

These are analytic estimates from vendor peak figures, not measurements: time = max(bytes / HBM
bandwidth, FLOPs / dense BF16 tensor throughput) per call (one drafter layer, bf16 tensors, every
sequence at the same context length, no sliding window). Launch latency, softmax/exp throughput, RoPE,
RMSNorm arithmetic and cache effects are not modelled, so small shapes are optimistic lower bounds.
Beside it, a model of the plugin's own kernel from its instruction mix and occupancy (see kernel_model).
Writes <out>/plugin_roofline.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

ELEM = 2  # bytes per bf16 element (qkv, norm weights, K/V cache, output)
FP32 = 4  # RoPE tables, ctx_lens


@dataclass(frozen=True)
class Gpu:
    name: str
    hbm_tb_s: float  # peak HBM bandwidth, TB/s
    bf16_dense_tflops: float  # peak dense (no 2:4 sparsity) BF16 tensor-core throughput, TFLOP/s
    source: str
    sms: int  # streaming multiprocessors
    clock_ghz: float  # boost clock
    smem_per_sm_kb: int  # shared memory per SM (the kernel's CTAs per SM follow from it)


GPUS = (
    Gpu(
        "H100 SXM",
        3.35,
        989.0,
        "NVIDIA H100 Tensor Core GPU datasheet (SXM5): 3.35 TB/s HBM3; "
        "BF16 Tensor Core 1,979 TFLOPS with sparsity = 989 TFLOPS dense",
        132,
        1.98,
        228,
    ),
    Gpu(
        "H200",
        4.8,
        989.0,
        "NVIDIA H200 Tensor Core GPU datasheet (SXM): 4.8 TB/s HBM3e; "
        "BF16 Tensor Core 1,979 TFLOPS with sparsity = 989 TFLOPS dense",
        132,
        1.98,
        228,
    ),
    Gpu(
        "B200",
        8.0,
        2250.0,
        "NVIDIA HGX B200 specifications: 8 TB/s HBM3e per GPU; "
        "FP16/BF16 Tensor Core 36 PFLOPS with sparsity per 8 GPUs = 2.25 PFLOPS dense per GPU",
        148,
        1.965,
        228,
    ),
    Gpu(
        "B300",
        8.0,
        2250.0,
        "NVIDIA HGX B300 specifications: 8 TB/s HBM3e per GPU; "
        "FP16/BF16 Tensor Core 36 PFLOPS with sparsity per 8 GPUs = 2.25 PFLOPS dense per GPU",
        148,
        1.965,
        228,
    ),
)
# SM counts and boost clocks: H100/H200 SXM 132 SMs at 1.98 GHz (NVIDIA Hopper architecture whitepaper);
# B200/B300 148 SMs at ~1.965 GHz are assumptions (NVIDIA publishes no per-SKU SM clock for them).

# Per-SM issue rates the kernel model uses (Ampere to Blackwell): 128 FP32 FMA lanes per clock (64 on
# sm_80, none of the GPUs here), and one warp-wide 32-bit shared-memory load (32 lanes, 128 B) per clock.
FMA_LANES_PER_CLK = 128
LDS_LANES_PER_CLK = 32


@dataclass(frozen=True)
class Shape:
    name: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    block: int


SHAPES = (
    Shape("Qwen3-8B-DFlash-b16", 32, 8, 128, 16),
    Shape("Llama-3.1-8B drafter (b10)", 32, 8, 128, 10),
)


def bytes_moved(s: Shape, batch: int, ctx: int) -> int:
    """Compulsory HBM traffic: each input element read once, the output written once."""
    nh, nkv, d, blk = s.num_heads, s.num_kv_heads, s.head_dim, s.block
    qkv = batch * blk * (nh + 2 * nkv) * d * ELEM
    norm_weights = 2 * d * ELEM
    rope_rows = 2 * batch * blk * (d // 2) * FP32  # only the rows at the block's positions
    kv_cache = 2 * batch * nkv * ctx * d * ELEM
    out = batch * blk * nh * d * ELEM
    return qkv + norm_weights + rope_rows + kv_cache + out + batch * FP32


def flops(s: Shape, batch: int, ctx: int) -> int:
    """Tensor-core FLOPs: Q·K^T and P·V over ctx + block keys, 2 FLOPs per multiply-add."""
    return 2 * 2 * batch * s.num_heads * s.block * (ctx + s.block) * s.head_dim


def kernel_plan(gpu: Gpu, s: Shape, batch: int, ctx: int) -> dict:
    """makePlan of plugins/src/dflashBlockAttention/dflashBlockAttentionLaunch.h for this GPU, and the splits
    each sequence (all at ctx) actually uses (splitRange)."""
    d, rows_per_group = s.head_dim, s.num_heads // s.num_kv_heads * s.block

    def smem_bytes(rows: int) -> int:
        return 4 * (2 * rows * (d + 1) + 2 * 32 * (d + 1) + rows * 33 + 3 * rows + 1)

    cap = next(r for r in (64, 32, 16, 8, 4, 2, 1) if smem_bytes(r) <= 227 * 1024)
    rows = min(rows_per_group, cap)
    row_tiles = -(-rows_per_group // rows)
    base = batch * s.num_kv_heads * row_tiles
    launched = max(1, min(32, -(-(ctx + s.block) // 256), 2 * min(gpu.sms, 256) // base))
    keys = ctx + s.block
    used = min(launched, -(-keys // 256))
    keys_per_split = -(-(-(-keys // used)) // 32) * 32
    used = -(-keys // keys_per_split)
    return {
        "rows_per_tile": rows,
        "row_tiles": row_tiles,
        "splits_launched": launched,
        "splits_used": used,
        "keys_per_split": keys_per_split,
        "smem_bytes": smem_bytes(rows),
        "ctas_per_sm": min(16, gpu.smem_per_sm_kb * 1024 // smem_bytes(rows)),
    }


def kernel_model(gpu: Gpu, s: Shape, batch: int, ctx: int) -> dict:
    """Time of this plugin's kernel (scalar fp32 CUDA cores) from its instruction mix and occupancy.

    Per CTA (rows R, keys n of its split, head_dim D): Q.K^T is R*n*D FMAs and P.V another R*n*D; each FMA
    takes both operands from shared memory (q and k rows, then weights and v columns): 2 LDS.32 per FMA.
    An SM issues one warp-wide LDS.32 per clock (32 lanes) against 128 FMA lanes, so the kernel is bound by
    shared-memory issue, 4*R*n*D lane-loads per CTA at 32 per clock. The busiest SM runs ceil(CTAs / SMs)
    CTAs (equal work each); its time is that many CTAs' issue time. The call also cannot beat its HBM traffic
    (the roofline's bytes plus the split partials written and read back). Not included, all of which only add:
    global-load latency (scalar loads, no cp.async/TMA, load phases separated from compute by barriers),
    expf, norm/RoPE, the merge, launch latency. So this is a lower bound on the kernel's time.
    """
    plan = kernel_plan(gpu, s, batch, ctx)
    ctas = batch * s.num_kv_heads * plan["row_tiles"] * plan["splits_used"]
    per_sm = -(-ctas // gpu.sms)
    n = min(plan["keys_per_split"], ctx + s.block)
    fma = 2 * plan["rows_per_tile"] * n * s.head_dim
    lds = 2 * fma
    clk = gpu.clock_ghz * 1e9
    t_lds = per_sm * lds / (LDS_LANES_PER_CLK * clk) * 1e6
    t_fma = per_sm * fma / (FMA_LANES_PER_CLK * clk) * 1e6
    partials = (
        0
        if plan["splits_used"] == 1
        else 2 * batch * s.num_heads * s.block * plan["splits_used"] * (s.head_dim + 2) * FP32
    )
    t_hbm = (bytes_moved(s, batch, ctx) + partials) / (gpu.hbm_tb_s * 1e12) * 1e6
    bound = max(("shared-memory issue", t_lds), ("FP32 issue", t_fma), ("HBM", t_hbm), key=lambda x: x[1])
    return {
        "t_kernel_model_us": round(bound[1], 3),
        "kernel_bound": bound[0],
        "kernel_ctas": ctas,
        "kernel_ctas_busiest_sm": per_sm,
        **{f"kernel_{k}": v for k, v in plan.items()},
    }


def estimate(gpu: Gpu, s: Shape, batch: int, ctx: int) -> dict:
    b, f = bytes_moved(s, batch, ctx), flops(s, batch, ctx)
    t_mem = b / (gpu.hbm_tb_s * 1e12) * 1e6
    t_math = f / (gpu.bf16_dense_tflops * 1e12) * 1e6
    t_roof = max(t_mem, t_math)
    kernel = kernel_model(gpu, s, batch, ctx)
    return {
        "model": s.name,
        "gpu": gpu.name,
        "batch": batch,
        "ctx": ctx,
        "bytes": b,
        "flops": f,
        "flops_per_byte": round(f / b, 2),
        "t_memory_us": round(t_mem, 3),
        "t_compute_us": round(t_math, 3),
        "t_roofline_us": round(t_roof, 3),
        "bound": "memory" if t_mem >= t_math else "compute",
        **kernel,
        "kernel_fraction_of_roofline": round(t_roof / kernel["t_kernel_model_us"], 4),
    }


def markdown(rows: list[dict], batches: list[int], contexts: list[int]) -> str:
    head = __doc__.strip().splitlines()
    lines = [
        f"# {head[0]}",
        "",
        " ".join(line.strip() for line in head[2:6]),
        "",
        "Peak figures used (vendor peak numbers, not sustained):",
        "",
    ]
    lines += [
        f"- **{g.name}**: {g.hbm_tb_s} TB/s, {g.bf16_dense_tflops:,.0f} dense BF16 TFLOP/s ({g.source})" for g in GPUS
    ]
    lines += [
        "",
        "bytes = qkv + norm weights + RoPE rows at the block's positions + K/V cache (ctx positions) + "
        "output + ctx_lens; FLOPs = 4 * batch * num_heads * block * (ctx + block) * head_dim.",
        "",
    ]
    ridges = ", ".join(f"{g.name} {g.bf16_dense_tflops / g.hbm_tb_s:.0f}" for g in GPUS)
    intensities = ", ".join(f"{s.name} {s.num_heads * s.block / s.num_kv_heads:.0f}" for s in SHAPES)
    lines += [
        f"Reading: at long context the intensity tends to num_heads * block / num_kv_heads FLOP/byte "
        f"({intensities}), below every ridge point (peak FLOP/s / peak B/s: {ridges}), so the op is bound "
        "by reading the K/V cache and its time scales with batch * ctx / bandwidth. B200 and B300 have the "
        "same vendor HBM and dense BF16 figures, hence identical estimates.",
        "",
    ]
    lines += [
        '**This plugin\'s kernel** (the second figure in each GPU column, "kernel"): a model of '
        "`DFlashBlockAttention`'s CUDA kernel as built, from its instruction mix and occupancy, not a "
        "measurement. It computes in scalar fp32 on CUDA cores: every FMA of Q.K^T and P.V reads both "
        "operands from shared memory (2 LDS.32 per FMA), and an SM issues one warp-wide LDS.32 per clock "
        f"against {FMA_LANES_PER_CLK} FMA lanes, so it is bound by shared-memory issue at 16 FMA per SM "
        "per clock; no tensor-core MMA, no cp.async/TMA, no vector loads. The busiest SM runs "
        "ceil(CTAs / SMs) CTAs of the plugin's own plan (its key splits from SM count, batch and length). "
        "Global-load latency, expf, norm/RoPE, the merge and the launch are left out, so the modelled "
        "time is a lower bound, and the kernel reaches at most the listed fraction of the roofline. "
        "Engines therefore use TensorRT's fused attention (ONNX `Attention` -> `IAttention`) for this "
        "step; the plugin is the portable path (any sm_80+ GPU, paged or contiguous cache, CPU twin).",
        "",
    ]
    h100 = [r for r in rows if r["gpu"] == GPUS[0].name]
    worst, best = (
        min(h100, key=lambda r: r["kernel_fraction_of_roofline"]),
        max(h100, key=lambda r: r["kernel_fraction_of_roofline"]),
    )
    lines += [
        f"On {GPUS[0].name} the modelled kernel reaches {100 * worst['kernel_fraction_of_roofline']:.1f}% "
        f"({worst['model']}, batch {worst['batch']}, ctx {worst['ctx']}) to "
        f"{100 * best['kernel_fraction_of_roofline']:.1f}% ({best['model']}, batch {best['batch']}, "
        f"ctx {best['ctx']}) of the roofline.",
        "",
    ]
    by_key = {(r["model"], r["gpu"], r["batch"], r["ctx"]): r for r in rows}
    for s in SHAPES:
        lines += [
            f"## {s.name}: {s.num_heads} q heads, {s.num_kv_heads} kv heads, head_dim {s.head_dim}, block {s.block}",
            "",
            "| batch | ctx | MB moved | GFLOP | FLOP/B | "
            + " | ".join(f"{g.name} µs roofline / kernel" for g in GPUS)
            + " | bound | kernel % of roofline ("
            + GPUS[0].name
            + ") |",
            "|---:|---:|---:|---:|---:|" + "---:|" * len(GPUS) + "---|---:|",
        ]
        for batch in batches:
            for ctx in contexts:
                r0 = by_key[(s.name, GPUS[0].name, batch, ctx)]
                times = " | ".join(
                    f"{by_key[(s.name, g.name, batch, ctx)]['t_roofline_us']:.2f} / "
                    f"{by_key[(s.name, g.name, batch, ctx)]['t_kernel_model_us']:.0f}"
                    for g in GPUS
                )
                bounds = sorted({by_key[(s.name, g.name, batch, ctx)]["bound"] for g in GPUS})
                lines.append(
                    f"| {batch} | {ctx} | {r0['bytes'] / 1e6:.2f} | {r0['flops'] / 1e9:.3f} | "
                    f"{r0['flops_per_byte']:.1f} | {times} | {'/'.join(bounds)} | "
                    f"{100 * r0['kernel_fraction_of_roofline']:.1f}% |"
                )
        lines.append("")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, batches: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = sorted({batches[0], batches[len(batches) // 2], batches[-1]})
    fig, axes = plt.subplots(1, len(SHAPES), figsize=(6 * len(SHAPES), 5.2), sharey=True)
    styles = ["-", "--", ":"]
    for ax, s in zip(axes, SHAPES):
        for gi, g in enumerate(GPUS):
            for bi, batch in enumerate(shown):
                sel = [r for r in rows if r["model"] == s.name and r["gpu"] == g.name and r["batch"] == batch]
                ax.plot(
                    [r["ctx"] for r in sel],
                    [r["t_roofline_us"] for r in sel],
                    styles[bi],
                    color=f"C{gi}",
                    marker="o",
                    ms=3,
                    label=f"{g.name}, batch {batch}",
                )
                if gi == 0:
                    ax.plot(
                        [r["ctx"] for r in sel],
                        [r["t_kernel_model_us"] for r in sel],
                        styles[bi],
                        color="k",
                        marker="x",
                        ms=3,
                        label=f"this plugin's kernel (model), {g.name}, batch {batch}",
                    )
        ax.set(xscale="log", yscale="log", xlabel="context length (tokens)", title=s.name)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("time per call (µs)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(GPUS) + 1, fontsize=7)
    fig.suptitle(
        "DFlashBlockAttention: analytic roofline from vendor peaks (colours; B200 and B300 coincide) and "
        "a lower-bound model of this plugin's scalar kernel (black); nothing measured",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out-dir", type=Path, default=Path("results"), help="default: results")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    ap.add_argument("--contexts", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384, 32768])
    args = ap.parse_args(argv)
    if min(args.batches) < 1 or min(args.contexts) < 0:
        ap.error("batches must be >= 1 and contexts >= 0")

    rows = [estimate(g, s, b, c) for s in SHAPES for g in GPUS for b in args.batches for c in args.contexts]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "note": " ".join(__doc__.strip().splitlines()[2:6]),
        "kernel_model": " ".join(kernel_model.__doc__.split()),
        "dtype": "bfloat16",
        "gpus": [asdict(g) for g in GPUS],
        "shapes": [asdict(s) for s in SHAPES],
    }
    (args.out_dir / "plugin_roofline.json").write_text(json.dumps({**meta, "rows": rows}, indent=1) + "\n")
    (args.out_dir / "plugin_roofline.md").write_text(markdown(rows, args.batches, args.contexts) + "\n")
    plot(rows, args.out_dir / "plugin_roofline.png", args.batches)
    for ext in ("json", "md", "png"):
        print(args.out_dir / f"plugin_roofline.{ext}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

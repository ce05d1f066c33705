"""The build plan from config.json files alone: checks, optimization-profile shapes of both graphs and memory per
TP rank (`build --dry-run`, and the first step of every build).

Weights per rank come from the checkpoint's sharding rules (`checkpoint.layout` / `checkpoint.sharding`), so a
dry-run plans exactly what `convert` shards and `export` traces. Memory per rank:

- target / drafter weights: the rank's shard in the engine dtype. The drafter graph embeds the target's input
  embedding and LM head (it takes token ids and returns logits), so its engine holds its own vocab-parallel copy of
  them (one tensor when the target ties them).
- target KV cache: max_batch_size x max_seq_len x layers x 2 x kv_heads/tp x head_dim x bytes (kv_heads duplicated
  when tp > kv_heads, as the sharding rules do); drafter context cache likewise with the drafter's dimensions.
- I/O buffers: the graphs' outputs at the largest profile (logits, features, present K/V), owned by the runtime.
- activations: an estimate (a few hidden-sized and FFN-sized tensors per token of the largest profile); a built
  engine reports the real figure ("Total Activation Memory", in build_report.json).

gpt-oss (`GptOssForCausalLM`, mixture of experts) is planned from its config.json for `--dry-run` only: attention,
embedding and head by the same rules, expert weights from `num_local_experts` x (gate, up, down) split on the expert
FFN dimension by tp (TensorRT-LLM's MoE tensor parallelism), at MXFP4's 4.25 bits per weight when the config says
so. Export does not support it (MoE, attention sinks, YaRN RoPE, sliding-window target layers).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dflash_trt.checkpoint.layout import drafter_entries, rank_specs, target_entries
from dflash_trt.checkpoint.plan import ConfigPair, human_bytes
from dflash_trt.checkpoint.sharding import FusedQKV, check_parallel, pad_to_multiple
from dflash_trt.config import DrafterConfig, TargetConfig, check_pair, read_json
from dflash_trt.dtypes import DType, dtype_named
from dflash_trt.engine.recipe import RTX_ARCHS, BuildRecipe
from dflash_trt.errors import UserError
from dflash_trt.export.graphs import DRAFTER, TARGET, past_names, present_names

MXFP4_BITS = 4.25  # 4-bit values plus one 8-bit scale per 32 (OCP microscaling)
PLANNING_ONLY = {
    "GptOssForCausalLM": "gpt-oss (mixture of experts, attention sinks, YaRN RoPE, sliding-window target layers)"
}
Shape = tuple[int, ...]
Profile = dict[str, tuple[Shape, Shape, Shape]]


@dataclass(frozen=True)
class MoE:
    """Mixture-of-experts FFN of a planning-only target: every layer holds `num_experts` gated experts."""

    num_experts: int
    experts_per_token: int
    intermediate_size: int
    quant: str | None  # the checkpoint's quantization of the experts ("mxfp4") or None (engine dtype)

    def bits(self, dtype: DType) -> float:
        return MXFP4_BITS if self.quant == "mxfp4" else 8 * dtype.itemsize


@dataclass(frozen=True)
class Pair(ConfigPair):
    """The target and drafter configs of a build (HF directories or a `convert` checkpoint)."""

    architecture: str  # the target's HF architecture name
    moe: MoE | None = None
    checkpoint: Path | None = None  # a `convert` output these configs were read from
    checkpoint_tp: int | None = None

    @property
    def exportable(self) -> bool:
        return self.architecture not in PLANNING_ONLY


def _gpt_oss(hf: dict[str, Any], source: str) -> tuple[TargetConfig, MoE]:
    """The planning view of a gpt-oss config: a TargetConfig for attention/embedding/head plus its experts."""

    def need(key: str, *alts: str) -> Any:
        for k in (key, *alts):
            if k in hf:
                return hf[k]
        raise UserError(f"{source}: missing field '{key}'; this does not look like a gpt-oss config.json")

    heads = int(need("num_attention_heads"))
    hidden = int(need("hidden_size"))
    quant = (hf.get("quantization_config") or {}).get("quant_method")
    moe = MoE(
        int(need("num_local_experts")),
        int(need("num_experts_per_tok", "experts_per_token")),
        int(need("intermediate_size")),
        quant,
    )
    eos = hf.get("eos_token_id")
    target = TargetConfig(
        arch="gpt_oss",
        vocab_size=int(need("vocab_size")),
        hidden_size=hidden,
        intermediate_size=moe.intermediate_size,
        num_layers=int(need("num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hidden // heads),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        rope_theta=float(hf.get("rope_theta", 10000.0)),
        rope_scaling=hf.get("rope_scaling"),
        max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        qkv_bias=bool(hf.get("attention_bias")),
        eos_token_ids=tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),)),
    )
    return target, moe


def read_pair(target_dir: Path, drafter_dir: Path) -> Pair:
    """Both config.json files of HF directories, typed, with the pair checked."""
    target_path, drafter_path = Path(target_dir) / "config.json", Path(drafter_dir) / "config.json"
    target_hf, drafter_hf = read_json(target_path), read_json(drafter_path)
    archs = target_hf.get("architectures") or []
    planning = next((a for a in archs if a in PLANNING_ONLY), None)
    moe = None
    if planning:
        target, moe = _gpt_oss(target_hf, str(target_path))
    else:
        target = TargetConfig.from_hf(target_hf, str(target_path))
    drafter = DrafterConfig.from_hf(drafter_hf, str(drafter_path))
    check_pair(target, drafter, str(drafter_path))
    arch = planning or next(iter(archs), target.arch)
    return Pair(Path(target_dir), Path(drafter_dir), target, drafter, target_hf, drafter_hf, arch, moe)


def read_checkpoint(directory: Path) -> Pair:
    """The pair of a `dflash-trt convert` output (its configs keep the HF configs they were made from)."""
    from dflash_trt.checkpoint.trtllm_config import read_converted

    directory = Path(directory)
    if not (directory / "target" / "config.json").is_file():
        raise UserError(
            f"--checkpoint {directory}: no target/config.json; pass a directory written by `dflash-trt convert`"
        )
    target_json, drafter_json, target, drafter = read_converted(directory)
    check_pair(target, drafter, str(directory / "drafter" / "config.json"))
    hf = target_json["dflash_trt"]["hf_config"]
    arch = next(iter(hf.get("architectures") or []), target.arch)
    tp = int((target_json.get("mapping") or {}).get("tp_size", 1))
    return Pair(
        directory / "target",
        directory / "drafter",
        target,
        drafter,
        hf,
        drafter_json["dflash_trt"]["hf_config"],
        arch,
        checkpoint=directory,
        checkpoint_tp=tp,
    )


@dataclass(frozen=True)
class RankMemory:
    """Bytes one TP rank needs (see the module docstring for what each figure covers)."""

    target_weights: int
    drafter_weights: int
    target_kv: int
    drafter_kv: int
    io_buffers: int
    activations: int

    @property
    def total(self) -> int:
        return sum(dataclasses.astuple(self))


@dataclass(frozen=True)
class BuildPlan:
    """Everything a build will do, known from config files and the recipe alone."""

    pair: Pair
    recipe: BuildRecipe
    dtype: DType
    block_size: int
    profiles: dict[str, dict[str, Profile]]  # graph -> phase -> input -> (min, opt, max)
    memory: list[RankMemory]  # one per rank
    notes: list[str] = field(default_factory=list)

    @property
    def tp(self) -> int:
        return self.recipe.tp_size

    @property
    def max_num_tokens(self) -> int:
        """Tokens of the largest forward (TensorRT-LLM's max_num_tokens): a full prefill batch or a verify batch."""
        return self.recipe.max_batch_size * max(self.recipe.max_input_len, self.block_size)

    @property
    def kv_heads_per_rank(self) -> dict[str, int]:
        return {TARGET: kv_per_rank(self.pair.target, self.tp), DRAFTER: kv_per_rank(self.pair.drafter, self.tp)}


def kv_per_rank(cfg: TargetConfig | DrafterConfig, tp: int) -> int:
    """KV heads each of `tp` ranks holds (replicated when tp exceeds the KV heads)."""
    return FusedQKV(cfg.num_heads, cfg.num_kv_heads, cfg.head_dim).kv_heads_per_rank(tp)


def _check(pair: Pair, recipe: BuildRecipe, source: str) -> int:
    """Cross-model checks of the recipe; returns the block size."""
    drafter_cfg = f"{pair.drafter_dir / 'config.json'}"
    block = recipe.block_size or pair.drafter.block_size
    if block > pair.drafter.block_size:
        raise UserError(
            f"{source}: field 'block_size' is {block} but the drafter ({drafter_cfg}) was trained with "
            f"block_size {pair.drafter.block_size}; use {pair.drafter.block_size} or less"
        )
    for cfg, path in ((pair.target, pair.target_dir / "config.json"), (pair.drafter, pair.drafter_dir / "config.json")):
        try:
            check_parallel(
                num_heads=cfg.num_heads,
                num_kv_heads=cfg.num_kv_heads,
                intermediate_size=cfg.intermediate_size,
                tp=recipe.tp_size,
                pp=1,
                source=str(path),
            )
        except UserError as exc:  # name the recipe field, not convert's --tp flag
            raise UserError(f"{source}: field 'tp_size' {str(exc).removeprefix(f'--tp {recipe.tp_size}: ')}") from None
    if pair.checkpoint_tp is not None and pair.checkpoint_tp != recipe.tp_size:
        raise UserError(
            f"{source}: field 'tp_size' is {recipe.tp_size} but --checkpoint {pair.checkpoint} was "
            f"converted for tp {pair.checkpoint_tp}; pass --tp {pair.checkpoint_tp} or re-run convert"
        )
    limit = pair.target.max_position_embeddings
    if recipe.max_seq_len > limit:
        raise UserError(
            f"{source}: field 'max_seq_len' {recipe.max_seq_len} exceeds the target's "
            f"max_position_embeddings {limit}; use {limit} or less"
        )
    if recipe.max_input_len + block > recipe.max_seq_len:
        raise UserError(
            f"{source}: field 'max_seq_len' {recipe.max_seq_len} leaves no room for one block of {block} "
            f"after a {recipe.max_input_len}-token prompt; raise it or lower 'max_input_len'"
        )
    if recipe.attention == "plugin":
        from dflash_trt.plugins.contracts import BLOCK_ATTENTION

        allowed = BLOCK_ATTENTION.type_params["T"]
        dtype = dtype_named(recipe.dtype)
        if dtype.trtllm not in allowed:
            raise UserError(
                f"{source}: field 'dtype' is {recipe.dtype} but {BLOCK_ATTENTION.name} supports "
                f"{', '.join(allowed)}; use another dtype or 'attention: native'"
            )
        head_dims = next(a.choices for a in BLOCK_ATTENTION.attrs if a.name == "head_dim")
        if pair.drafter.head_dim not in head_dims:
            raise UserError(
                f"{source}: field 'attention' is plugin but {BLOCK_ATTENTION.name} supports head_dim "
                f"{head_dims}, the drafter's is {pair.drafter.head_dim}; use 'attention: native'"
            )
    return block


def graph_profiles(pair: Pair, recipe: BuildRecipe, block: int, tp: int, source: str) -> dict[str, dict[str, Profile]]:
    """(min, opt, max) of every input of both graphs per phase. `prefill` starts rows (a prompt into empty caches:
    the runtime binds a one-position scratch cache), `step` drafts and verifies one block over the full caches (the
    runtime binds its cache buffers once, past = their capacity). Without a `prefill` profile, `step` covers both."""
    mb, mi, ms = recipe.max_batch_size, recipe.max_input_len, recipe.max_seq_len
    spans = {  # phase -> (tokens max, opt batch, opt tokens, opt past)
        "prefill": (mi, 1, mi, 1),
        "step": (block if "prefill" in recipe.profiles else max(block, mi), mb, block, ms),
    }
    feature_width = len(pair.drafter.target_layer_ids) * pair.target.hidden_size
    out: dict[str, dict[str, Profile]] = {TARGET: {}, DRAFTER: {}}
    for phase, opts in recipe.profiles.items():
        t_max, ob, ot, op = spans[phase]
        ob, ot, op = opts.get("opt_batch_size", ob), opts.get("opt_num_tokens", ot), opts.get("opt_past_len", op)
        for key, value, hi in (("opt_batch_size", ob, mb), ("opt_num_tokens", ot, t_max), ("opt_past_len", op, ms)):
            if value > hi:
                raise UserError(
                    f"{source}: field 'profiles.{phase}.{key}' is {value}, above its maximum {hi}; lower it"
                )
        n_max = 1 if phase == "prefill" else block

        def rng(lo: int, opt: int, hi: int) -> tuple[int, int, int]:
            return lo, min(max(opt, lo), hi), hi

        b, t, p, n = rng(1, ob, mb), rng(1, ot, t_max), rng(1, op, ms), rng(1, n_max, n_max)

        def shape(*dims: tuple[int, int, int] | int) -> tuple[Shape, Shape, Shape]:
            return tuple(tuple(d[i] if isinstance(d, tuple) else d for d in dims) for i in range(3))

        for graph, cfg in ((TARGET, pair.target), (DRAFTER, pair.drafter)):
            past = shape(b, kv_per_rank(cfg, tp), p, cfg.head_dim)
            prof: Profile = {}
            if graph == TARGET:
                prof["input_ids"] = shape(b, t)
                prof["cache_lens"] = shape(b)
                prof["logits_index"] = shape(b, n)
            else:
                prof["input_ids"] = shape(b, rng(2, block, block))
                prof["features"] = shape(b, t, feature_width)
                prof["feature_lens"] = shape(b)
                prof["cache_lens"] = shape(b)
            prof.update({name: past for name in past_names(cfg.num_layers)})
            out[graph][phase] = prof
    return out


def _weights(pair: Pair, dtype: DType, tp: int) -> tuple[int, int]:
    """Per-rank weight bytes of the target engine and the drafter engine (the latter with its embedding/head copy)."""
    target = pair.target
    if pair.moe is not None:
        target = dataclasses.replace(target, intermediate_size=0)  # dense part only; experts added below
    t_bytes = sum(s.nbytes for s in rank_specs(target_entries(target), tp, dtype)[0])
    if pair.moe is not None:
        moe, h = pair.moe, target.hidden_size
        per_layer = moe.num_experts * 3 * h * (moe.intermediate_size // tp) * moe.bits(dtype) / 8
        router = (moe.num_experts * h + moe.num_experts) * dtype.itemsize  # replicated
        t_bytes += int(target.num_layers * (per_layer + router))
    d_bytes = sum(s.nbytes for s in rank_specs(drafter_entries(pair.drafter), tp, dtype)[0])
    vocab_rows = pad_to_multiple(pair.target.vocab_size, tp) // tp
    tables = 1 if pair.target.tie_word_embeddings else 2
    d_bytes += tables * vocab_rows * pair.target.hidden_size * dtype.itemsize
    return t_bytes, d_bytes


def _memory(pair: Pair, recipe: BuildRecipe, dtype: DType, block: int, tp: int) -> RankMemory:
    mb, mi, ms, size = recipe.max_batch_size, recipe.max_input_len, recipe.max_seq_len, dtype.itemsize
    t, d = pair.target, pair.drafter
    t_kv, d_kv = kv_per_rank(t, tp), kv_per_rank(d, tp)
    target_kv = mb * ms * t.num_layers * 2 * t_kv * t.head_dim * size
    drafter_kv = mb * ms * d.num_layers * 2 * d_kv * d.head_dim * size
    tokens = mb * max(mi, block)  # the largest forward
    features = len(d.target_layer_ids) * t.hidden_size
    io = (
        mb * block * t.vocab_size * size  # verify logits (the largest logits output)
        + tokens * features * size  # features out of the target, into the drafter
        + tokens * t.num_layers * 2 * t_kv * t.head_dim * size
    )  # present K/V of the target
    ffn = pair.moe.experts_per_token * pair.moe.intermediate_size if pair.moe else t.intermediate_size
    per_token = size * (4 * t.hidden_size + 2 * (t.num_heads // tp + 2 * t_kv) * t.head_dim + 3 * ffn // tp)
    t_w, d_w = _weights(pair, dtype, tp)
    return RankMemory(t_w, d_w, target_kv, drafter_kv, io, tokens * per_token)


def make_build_plan(pair: Pair, recipe: BuildRecipe, source: str = "recipe") -> BuildPlan:
    """Check the recipe against the pair and plan shapes and memory for every rank."""
    block = _check(pair, recipe, source)
    dtype = dtype_named(recipe.dtype)
    tp = recipe.tp_size
    profiles = graph_profiles(pair, recipe, block, tp, source)
    memory = [_memory(pair, recipe, dtype, block, tp) for _ in range(tp)]  # the rules shard evenly
    notes = []
    if not pair.exportable:
        notes.append(
            f"{pair.architecture}: {PLANNING_ONLY[pair.architecture]} is planned from config.json only; "
            "export and engine builds support Llama, Qwen2 and Qwen3 targets"
        )
        if pair.moe and pair.moe.quant == "mxfp4":
            notes.append(
                f"expert weights counted at MXFP4 ({MXFP4_BITS} bits/weight, as published); "
                f"everything else in {dtype.trtllm}"
            )
    if recipe.dtype == "fp32":
        notes.append(
            "fp32: TensorRT has no fused attention kernel for fp32; attention is built decomposed "
            "(IAttention.decomposable), slower than fp16/bf16"
        )
    archs = recipe.gpu_archs
    if archs and not set(archs) & set(RTX_ARCHS):
        notes.append(
            f"gpu_archs {archs}: datacenter engines are built on such a GPU; the CPU verification build "
            "(TensorRT-RTX, targets SM75-SM89 and SM120/SM121 only) proves the graphs, not those engines"
        )
    return BuildPlan(pair, recipe, dtype, block, profiles, memory, notes)


def _shape_str(shapes: tuple[Shape, Shape, Shape]) -> str:
    return " / ".join("x".join(map(str, s)) for s in shapes)


def format_plan(plan: BuildPlan) -> str:
    """The dry-run report: the build, the profile shapes of each graph and the memory table per rank."""
    r, p = plan.recipe, plan.pair
    lines = [
        f"build plan: {p.architecture} target {p.target_dir} + drafter {p.drafter_dir}",
        f"  tp {plan.tp}, dtype {plan.dtype.trtllm}, attention {r.attention}, block {plan.block_size} "
        f"(max_draft_len {plan.block_size - 1}), max_batch_size {r.max_batch_size}, max_input_len {r.max_input_len}, "
        f"max_seq_len {r.max_seq_len}, max_num_tokens {plan.max_num_tokens}, "
        f"gpu_archs {r.gpu_archs or ['build host GPU']}",
        "",
        "optimization profiles (min / opt / max; every rank alike):",
    ]
    for graph, phases in plan.profiles.items():
        cfg = p.target if graph == TARGET else p.drafter
        for phase, prof in phases.items():
            lines.append(f"  {graph}/{phase}:")
            pasts = set(past_names(cfg.num_layers))
            for name, shapes in prof.items():
                if name not in pasts:
                    lines.append(f"    {name:<28} {_shape_str(shapes)}")
            first = past_names(cfg.num_layers)[0]
            lines.append(f"    {'past_key_values.*':<28} {_shape_str(prof[first])}  ({len(pasts)} tensors)")
    lines.append(
        f"  outputs: {TARGET}: logits, features, {present_names(1)[0].replace('0', '*')}; "
        f"{DRAFTER}: logits, draft_tokens, present.*"
    )
    cols = (
        "rank",
        "target weights",
        "drafter weights",
        "target KV",
        "drafter KV",
        "I/O buffers",
        "activations*",
        "total",
    )
    lines += ["", "memory per rank:", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rank, m in enumerate(plan.memory):
        values = (m.target_weights, m.drafter_weights, m.target_kv, m.drafter_kv, m.io_buffers, m.activations, m.total)
        lines.append(f"| {rank} | " + " | ".join(human_bytes(v) for v in values) + " |")
    lines.append("* estimate; a built engine reports its real activation memory (build_report.json)")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def plan_dict(plan: BuildPlan) -> dict[str, Any]:
    """The plan as JSON (build_report.json, --dry-run --json)."""
    return {
        "tp_size": plan.tp,
        "dtype": plan.dtype.trtllm,
        "block_size": plan.block_size,
        "max_num_tokens": plan.max_num_tokens,
        "profiles": {
            g: {ph: {n: [list(s) for s in shapes] for n, shapes in prof.items()} for ph, prof in phases.items()}
            for g, phases in plan.profiles.items()
        },
        "memory_per_rank": [{**dataclasses.asdict(m), "total": m.total} for m in plan.memory],
        "notes": plan.notes,
    }

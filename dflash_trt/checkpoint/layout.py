"""One weight-name table per architecture, and everything derived from it.

Each row is a `Weight`: an internal tensor (the reference model's parameter name, `dflash_trt.models`)
made of one or more TensorRT-LLM tensors (`Entry`), each built from one or more HF tensors with a
sharding rule. The internal tensor is the row-concatenation (dim 0) of its parts:

    layers.{i}.attn.wqkv.weight = attention.qkv            = [q_proj; k_proj; v_proj]
    layers.{i}.mlp.w13.weight   = [mlp.fc; mlp.gate]       = [gate_proj; up_proj]

The table drives all four renamings: the converter (`target_entries` / `drafter_entries`, and
`rank_specs`: what rank r's file must contain, from configs alone), HF loading (`internal_from_hf`),
converted-checkpoint loading (`internal_from_trtllm`) and z-lab export (`hf_from_internal`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dflash_trt.checkpoint.safetensors_io import RankTensor
from dflash_trt.checkpoint.sharding import COLUMN, ROW, FusedQKV, Replicated, Rule, Shape, VocabParallel
from dflash_trt.config import DrafterConfig, TargetConfig
from dflash_trt.dtypes import DType
from dflash_trt.errors import UserError

REPLICATED = Replicated()


@dataclass(frozen=True)
class Entry:
    """One output tensor: its TRT-LLM name, the HF tensors it is built from, and its sharding rule."""

    name: str
    sources: tuple[str, ...]  # (q, k, v) for a fused qkv, else one name
    source_shapes: tuple[Shape, ...]
    rule: Rule

    @property
    def shape(self) -> Shape:
        """Unsharded output shape (q, k, v rows summed for a fused qkv; vocab unpadded)."""
        first = self.source_shapes[0]
        return (sum(s[0] for s in self.source_shapes), *first[1:])

    def rank_shape(self, tp: int) -> Shape:
        return self.rule.shard_shape(self.shape, tp)


@dataclass(frozen=True)
class Weight:
    """One internal (reference-model) tensor: the dim-0 concatenation of its TRT-LLM `parts`."""

    internal: str
    parts: tuple[Entry, ...]

    @property
    def sources(self) -> tuple[str, ...]:
        """The HF tensors, in row order of the internal tensor."""
        return tuple(s for p in self.parts for s in p.sources)

    @property
    def source_shapes(self) -> tuple[Shape, ...]:
        return tuple(s for p in self.parts for s in p.source_shapes)


def _one(internal: str, trtllm: str, source: str, shape: Shape, rule: Rule) -> Weight:
    return Weight(internal, (Entry(trtllm, (source,), (shape,), rule),))


def _layer(src: str, dst: str, out: str, cfg: TargetConfig | DrafterConfig, *, qk_norm: bool) -> list[Weight]:
    """One decoder layer; `src` / `dst` / `out` are the HF / TRT-LLM / internal name prefixes ending in '.'."""
    hidden, heads, kv_heads, head_dim = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    inter = cfg.intermediate_size
    q, kv = heads * head_dim, kv_heads * head_dim
    qkv = FusedQKV(heads, kv_heads, head_dim)
    attn = f"{src}self_attn."

    def one(internal: str, trtllm: str, hf: str, shape: Shape, rule: Rule) -> Weight:
        return _one(out + internal, dst + trtllm, hf, shape, rule)

    def fused_qkv(internal: str, trtllm: str, kind: str, cols: tuple[int, ...]) -> Weight:
        sources = tuple(f"{attn}{p}_proj.{kind}" for p in "qkv")
        shapes = ((q, *cols), (kv, *cols), (kv, *cols))
        return Weight(out + internal, (Entry(dst + trtllm, sources, shapes, qkv),))

    rows = [fused_qkv("attn.wqkv.weight", "attention.qkv.weight", "weight", (hidden,))]
    if cfg.qkv_bias:
        rows.append(fused_qkv("attn.wqkv.bias", "attention.qkv.bias", "bias", ()))
    if qk_norm:
        rows += [
            one("attn.q_norm.weight", "attention.q_layernorm.weight", f"{attn}q_norm.weight", (head_dim,), REPLICATED),
            one("attn.k_norm.weight", "attention.k_layernorm.weight", f"{attn}k_norm.weight", (head_dim,), REPLICATED),
        ]
    # TRT-LLM GatedMLP: fc = gate_proj (goes through the activation), gate = up_proj; w13 = [gate; up].
    w13 = (
        Entry(f"{dst}mlp.fc.weight", (f"{src}mlp.gate_proj.weight",), ((inter, hidden),), COLUMN),
        Entry(f"{dst}mlp.gate.weight", (f"{src}mlp.up_proj.weight",), ((inter, hidden),), COLUMN),
    )
    return [
        *rows,
        one("attn.wo.weight", "attention.dense.weight", f"{attn}o_proj.weight", (hidden, q), ROW),
        Weight(f"{out}mlp.w13.weight", w13),
        one("mlp.w2.weight", "mlp.proj.weight", f"{src}mlp.down_proj.weight", (hidden, inter), ROW),
        one("attn_norm.weight", "input_layernorm.weight", f"{src}input_layernorm.weight", (hidden,), REPLICATED),
        one("mlp_norm.weight", "post_layernorm.weight", f"{src}post_attention_layernorm.weight", (hidden,), REPLICATED),
    ]


def target_weights(cfg: TargetConfig) -> list[Weight]:
    """The target model; a tied lm_head is built from `model.embed_tokens.weight`, like TRT-LLM."""
    vocab = VocabParallel(cfg.vocab_size)
    table = (cfg.vocab_size, cfg.hidden_size)
    out = [_one("embed.weight", "transformer.vocab_embedding.weight", "model.embed_tokens.weight", table, vocab)]
    for i in range(cfg.num_layers):
        out += _layer(f"model.layers.{i}.", f"transformer.layers.{i}.", f"layers.{i}.", cfg, qk_norm=cfg.qk_norm)
    head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    return [
        *out,
        _one("norm.weight", "transformer.ln_f.weight", "model.norm.weight", (cfg.hidden_size,), REPLICATED),
        _one("lm_head.weight", "lm_head.weight", head, table, vocab),
    ]


def drafter_weights(cfg: DrafterConfig) -> list[Weight]:
    """The z-lab drafter: `dflash.fc` / `dflash.hidden_norm`, Qwen3 layers, `transformer.ln_f`; no embedding/lm_head.
    DFlash2 adds per layer `attention_conv` / `mlp_conv` and `dflash.candidate_selector.*` (all replicated).

    `fc` and `hidden_norm` are replicated, not split: the fused context c = hidden_norm(fc(features))
    is the input of every draft layer's column-parallel k/v projections, which need all H columns on
    every rank. Replicating them makes c bit-identical on all ranks with no collective per draft step,
    and the RMS norm needs the whole hidden vector anyway (a split fc would need an all-gather first).
    """
    hidden = cfg.hidden_size
    fused = len(cfg.target_layer_ids) * hidden
    out = [
        _one("fc.weight", "dflash.fc.weight", "fc.weight", (hidden, fused), REPLICATED),
        _one("hidden_norm.weight", "dflash.hidden_norm.weight", "hidden_norm.weight", (hidden,), REPLICATED),
    ]
    for i in range(cfg.num_layers):
        out += _layer(f"layers.{i}.", f"transformer.layers.{i}.", f"layers.{i}.", cfg, qk_norm=True)
        if cfg.is_dflash2:
            out += _dflash2_convs(i, cfg)
    out.append(_one("norm.weight", "transformer.ln_f.weight", "norm.weight", (hidden,), REPLICATED))
    if cfg.is_dflash2:
        out += _dflash2_selector(cfg)
    return out


def _dflash2_convs(i: int, cfg: DrafterConfig) -> list[Weight]:
    """Layer i's two grouped dynamic causal convs (z-lab `attention_conv` / `mlp_conv`), replicated.

    They act on the full hidden vector before the column-parallel projections and after the row-parallel
    ones' all-reduce (a depthwise conv whose taps come from the replicated normed input), so every rank
    needs all H channels; they are small (2*K*H + 2*K*G*H values each) and splitting them would add
    collectives per sublayer.
    """
    hidden, kernel = cfg.hidden_size, cfg.conv_kernel_size
    taps = 2 * kernel * (hidden // cfg.conv_group_size)
    out = []
    for internal, zlab in (("attn_conv", "attention_conv"), ("mlp_conv", "mlp_conv")):
        src = dst = f"layers.{i}.{zlab}."
        out += [
            _one(
                f"layers.{i}.{internal}.base",
                f"transformer.{dst}base_kernel",
                f"{src}base_kernel",
                (2, kernel, hidden),
                REPLICATED,
            ),
            _one(
                f"layers.{i}.{internal}.proj.weight",
                f"transformer.{dst}kernel_projection.weight",
                f"{src}kernel_projection.weight",
                (taps, hidden),
                REPLICATED,
            ),
        ]
    return out


def _dflash2_selector(cfg: DrafterConfig) -> list[Weight]:
    """The candidate selector, replicated (see checkpoint/README.md): its left-to-right walk looks up one
    predecessor and k successor rows per position, B-1 dependent steps; vocab-split codebooks would need a
    collective in each step, where replicas cost 2*V*r values per rank and no communication."""
    rank, vocab, src = cfg.selector_rank, cfg.vocab_size, "candidate_selector."
    return [
        _one(
            "selector.pred.weight",
            f"dflash.{src}predecessor_codebook.weight",
            f"{src}predecessor_codebook.weight",
            (vocab, rank),
            REPLICATED,
        ),
        _one(
            "selector.succ.weight",
            f"dflash.{src}successor_codebook.weight",
            f"{src}successor_codebook.weight",
            (vocab, rank),
            REPLICATED,
        ),
        _one(
            "selector.proj.weight",
            f"dflash.{src}hidden_projection.weight",
            f"{src}hidden_projection.weight",
            (rank, cfg.hidden_size),
            REPLICATED,
        ),
    ]


# Names some published DFlash2 checkpoints use instead of the table's (z-lab's `from_pretrained` remaps them).
HF_ALIASES = {
    f"candidate_selector.{name}.weight": f"candidate_selector.{name}"
    for name in ("predecessor_codebook", "successor_codebook")
}


def hf_getter(tensors: Mapping[str, Tensor]) -> Callable[[str], Tensor]:
    """`get` for `internal_from_hf` over a name -> tensor mapping, accepting `HF_ALIASES` spellings."""

    def get(name: str) -> Tensor:
        if name not in tensors and HF_ALIASES.get(name) in tensors:
            return tensors[HF_ALIASES[name]]
        return tensors[name]

    return get


def entries_of(weights: list[Weight]) -> list[Entry]:
    """The TRT-LLM tensors of a table, in file order."""
    return [part for w in weights for part in w.parts]


def target_entries(cfg: TargetConfig) -> list[Entry]:
    return entries_of(target_weights(cfg))


def drafter_entries(cfg: DrafterConfig) -> list[Entry]:
    return entries_of(drafter_weights(cfg))


def rank_specs(entries: list[Entry], tp: int, dtype: DType) -> list[list[RankTensor]]:
    """For each rank, the tensors its file must contain, in file order."""
    return [[RankTensor(e.name, e.rank_shape(tp), dtype.code) for e in entries] for _ in range(tp)]


def _cat(tensors: list[Tensor]) -> Tensor:
    """Row-concatenation; a single tensor is passed through uncopied (a tied lm_head stays the embedding)."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


def internal_from_hf(weights: list[Weight], get: Callable[[str], Tensor], source: Path | str) -> dict[str, Tensor]:
    """HF tensors (looked up by `get`, which raises KeyError for a missing name) -> internal state dict.

    Every source tensor's shape is checked against the config-implied one; a mismatch or a missing
    tensor is a one-line `UserError` naming `source` and the tensor.
    """

    def take(name: str, shape: Shape) -> Tensor:
        try:
            t = get(name)
        except KeyError:
            raise UserError(
                f"{source}: tensor '{name}' is missing; the checkpoint does not match its config.json"
            ) from None
        if tuple(t.shape) != shape:
            raise UserError(f"{source}: tensor '{name}' has shape {list(t.shape)}, config.json implies {list(shape)}")
        return t

    return {w.internal: _cat([take(n, s) for n, s in zip(w.sources, w.source_shapes, strict=True)]) for w in weights}


def internal_from_trtllm(
    weights: list[Weight], tensors: Mapping[str, Tensor], source: Path | str = "converted rank file"
) -> dict[str, Tensor]:
    """One rank file of a converted checkpoint -> that rank's internal state dict.

    Each internal tensor is the concatenation of the rank's parts: at tp > 1 that is exactly the
    rank-local `wqkv` ([q_r; k_r; v_r]) and `w13` ([gate_r; up_r]); vocab tensors stay padded shards.
    """
    missing = next((p.name for w in weights for p in w.parts if p.name not in tensors), None)
    if missing is not None:
        raise UserError(f"{source}: tensor '{missing}' is missing; re-run `dflash-trt convert`")
    return {w.internal: _cat([tensors[p.name] for p in w.parts]) for w in weights}


def hf_from_internal(weights: list[Weight], state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A tp=1 internal state dict -> HF / z-lab names, fused rows split by the table's source shapes.

    A tied target's `lm_head.weight` and `embed.weight` both map to `model.embed_tokens.weight`; they
    must then be equal, and the tensor is written once.
    """
    out: dict[str, Tensor] = {}
    for w in weights:
        pieces = state[w.internal].split([shape[0] for shape in w.source_shapes])
        for name, piece in zip(w.sources, pieces, strict=True):
            if name in out and not torch.equal(out[name], piece):
                raise ValueError(f"'{w.internal}' differs from the other internal tensor stored as '{name}'")
            out.setdefault(name, piece)
    return out

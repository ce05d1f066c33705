"""Which tensors a converted checkpoint holds: HF source names -> TensorRT-LLM names, shapes, rules.

Everything here is computed from configs alone. `rank_specs` is the single answer to "what must
rank r's file contain" for the converter, the dry-run plan, checkpoint validation and the TP loader.
"""

from __future__ import annotations

from dataclasses import dataclass

from dflash_trt.checkpoint.safetensors_io import Shape, TensorSpec
from dflash_trt.dtypes import DType
from dflash_trt.checkpoint.sharding import COLUMN, ROW, FusedQKV, Replicated, Rule, VocabParallel
from dflash_trt.config import DrafterConfig, TargetConfig

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


def _layer(
    src: str, dst: str, cfg: TargetConfig | DrafterConfig, *, qk_norm: bool
) -> list[Entry]:
    """Entries of one decoder layer; `src` / `dst` are the HF / TRT-LLM name prefixes ending in '.'."""
    hidden, heads, kv_heads, head_dim = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    inter, bias = cfg.intermediate_size, cfg.qkv_bias
    q, kv = heads * head_dim, kv_heads * head_dim
    qkv = FusedQKV(heads, kv_heads, head_dim)
    attn = f"{src}self_attn."
    out = [
        Entry(
            f"{dst}attention.qkv.weight",
            tuple(f"{attn}{p}_proj.weight" for p in "qkv"),
            ((q, hidden), (kv, hidden), (kv, hidden)),
            qkv,
        )
    ]
    if bias:
        out.append(
            Entry(f"{dst}attention.qkv.bias", tuple(f"{attn}{p}_proj.bias" for p in "qkv"), ((q,), (kv,), (kv,)), qkv)
        )
    if qk_norm:
        out += [
            Entry(f"{dst}attention.q_layernorm.weight", (f"{attn}q_norm.weight",), ((head_dim,),), REPLICATED),
            Entry(f"{dst}attention.k_layernorm.weight", (f"{attn}k_norm.weight",), ((head_dim,),), REPLICATED),
        ]
    return [
        *out,
        Entry(f"{dst}attention.dense.weight", (f"{attn}o_proj.weight",), ((hidden, q),), ROW),
        # TRT-LLM GatedMLP: fc = gate_proj (goes through the activation), gate = up_proj.
        Entry(f"{dst}mlp.fc.weight", (f"{src}mlp.gate_proj.weight",), ((inter, hidden),), COLUMN),
        Entry(f"{dst}mlp.gate.weight", (f"{src}mlp.up_proj.weight",), ((inter, hidden),), COLUMN),
        Entry(f"{dst}mlp.proj.weight", (f"{src}mlp.down_proj.weight",), ((hidden, inter),), ROW),
        Entry(f"{dst}input_layernorm.weight", (f"{src}input_layernorm.weight",), ((hidden,),), REPLICATED),
        Entry(f"{dst}post_layernorm.weight", (f"{src}post_attention_layernorm.weight",), ((hidden,),), REPLICATED),
    ]


def target_entries(cfg: TargetConfig) -> list[Entry]:
    """The target model; a tied lm_head is written from `model.embed_tokens.weight`, like TRT-LLM."""
    vocab = VocabParallel(cfg.vocab_size)
    table = ((cfg.vocab_size, cfg.hidden_size),)
    out = [Entry("transformer.vocab_embedding.weight", ("model.embed_tokens.weight",), table, vocab)]
    for i in range(cfg.num_layers):
        out += _layer(f"model.layers.{i}.", f"transformer.layers.{i}.", cfg, qk_norm=cfg.qk_norm)
    head = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    return [
        *out,
        Entry("transformer.ln_f.weight", ("model.norm.weight",), ((cfg.hidden_size,),), REPLICATED),
        Entry("lm_head.weight", (head,), table, vocab),
    ]


def drafter_entries(cfg: DrafterConfig) -> list[Entry]:
    """The z-lab drafter: `dflash.fc` / `dflash.hidden_norm`, Qwen3 layers, `transformer.ln_f`; no embedding/lm_head.

    `fc` and `hidden_norm` are replicated, not split: the fused context c = hidden_norm(fc(features))
    is the input of every draft layer's column-parallel k/v projections, which need all H columns on
    every rank. Replicating them makes c bit-identical on all ranks with no collective per draft step,
    and the RMS norm needs the whole hidden vector anyway (a split fc would need an all-gather first).
    """
    fused = len(cfg.target_layer_ids) * cfg.hidden_size
    out = [
        Entry("dflash.fc.weight", ("fc.weight",), ((cfg.hidden_size, fused),), REPLICATED),
        Entry("dflash.hidden_norm.weight", ("hidden_norm.weight",), ((cfg.hidden_size,),), REPLICATED),
    ]
    for i in range(cfg.num_layers):
        out += _layer(f"layers.{i}.", f"transformer.layers.{i}.", cfg, qk_norm=True)
    return [*out, Entry("transformer.ln_f.weight", ("norm.weight",), ((cfg.hidden_size,),), REPLICATED)]


def rank_specs(entries: list[Entry], tp: int, dtype: DType) -> list[list[TensorSpec]]:
    """For each rank, the tensors its file must contain, in file order."""
    return [[TensorSpec(e.name, e.rank_shape(tp), dtype.code) for e in entries] for _ in range(tp)]

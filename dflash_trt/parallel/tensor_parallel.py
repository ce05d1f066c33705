"""Run the reference models tensor parallel, gpt-fast style: each rank builds the model at its shard's
sizes and loads its shard; forward hooks add the collectives, so the model code itself knows nothing of TP.

- attention `wo` and MLP `w2` are row-parallel: their outputs are all-reduced;
- `wqkv` (this rank's q heads and its kv head group) and `w13` are column-parallel: no collective;
- the embedding and LM head are vocab-parallel (rows padded to a multiple of tp): the embedding zeroes
  tokens outside this rank's rows and all-reduces; the LM head all-gathers logits and drops the padding;
- the drafter's `fc`/`hidden_norm` are replicated, so the fused context is identical on every rank;
- DFlash2's convs and selector are replicated: the finish conv sees `wo`/`w2` outputs after their all-reduce.
The split rules themselves live in `dflash_trt.checkpoint.sharding` (the converter's source of truth).
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from dflash_trt.checkpoint.sharding import pad_to_multiple
from dflash_trt.config import DrafterConfig, TargetConfig
from dflash_trt.models.drafter import DFlashDrafter
from dflash_trt.models.drafter2 import make_drafter
from dflash_trt.models.target import Transformer
from dflash_trt.parallel.comm import Mapping, all_gather_last_dim, all_reduce


def local_config(cfg: TargetConfig | DrafterConfig, tp: int) -> TargetConfig | DrafterConfig:
    """The config of one rank's shard: its heads (kv heads duplicated when tp > kv heads) and FFN slice."""
    if tp == 1:
        return cfg
    sizes = dict(
        num_heads=cfg.num_heads // tp,
        num_kv_heads=max(1, cfg.num_kv_heads // tp),
        intermediate_size=cfg.intermediate_size // tp,
    )
    if isinstance(cfg, TargetConfig):
        sizes |= dict(vocab_size=pad_to_multiple(cfg.vocab_size, tp) // tp, tie_word_embeddings=False)
    return replace(cfg, **sizes)


class VocabParallelEmbedding(nn.Embedding):
    """This rank's rows [offset, offset + rows) of the embedding table; other tokens sum in from peers."""

    def __init__(self, rows: int, dim: int, offset: int) -> None:
        super().__init__(rows, dim)
        self.offset = offset

    def forward(self, tokens: Tensor) -> Tensor:
        local = tokens - self.offset
        mine = (local >= 0) & (local < self.num_embeddings)
        out = super().forward(local.clamp(0, self.num_embeddings - 1)) * mine[..., None]
        return all_reduce(out)


class VocabParallelHead(nn.Linear):
    """This rank's rows of the LM head; logits are gathered from all ranks and the padding dropped."""

    def __init__(self, dim: int, rows: int, world: int, vocab_size: int) -> None:
        super().__init__(dim, rows, bias=False)
        self.world, self.vocab_size = world, vocab_size

    def forward(self, x: Tensor) -> Tensor:
        return all_gather_last_dim(super().forward(x), self.world)[..., : self.vocab_size]


def _all_reduce_output(_module: nn.Module, _inputs, output: Tensor) -> Tensor:
    return all_reduce(output)


def _hook_row_parallel(layers: nn.ModuleList) -> None:
    for layer in layers:
        layer.attn.wo.register_forward_hook(_all_reduce_output)
        layer.mlp.w2.register_forward_hook(_all_reduce_output)


def build_target(cfg: TargetConfig, mapping: Mapping) -> Transformer:
    """An empty target at this rank's shard sizes, with the collectives wired in."""
    tp = mapping.tp_size
    local = local_config(cfg, tp)
    model = Transformer(local)
    if tp > 1:
        rows = local.vocab_size
        model.embed = VocabParallelEmbedding(rows, cfg.hidden_size, mapping.tp_rank * rows)
        model.lm_head = VocabParallelHead(cfg.hidden_size, rows, tp, cfg.vocab_size)
        _hook_row_parallel(model.layers)
    return model


def build_drafter(cfg: DrafterConfig, mapping: Mapping) -> DFlashDrafter:
    model = make_drafter(local_config(cfg, mapping.tp_size))
    if mapping.tp_size > 1:
        _hook_row_parallel(model.layers)
    return model

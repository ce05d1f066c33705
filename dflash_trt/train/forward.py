"""Training forward and loss of a DFlash drafter: the drafter's own inference forward, over all blocks.

Every block of a batch is one row of the drafter's forward (`DFlashDrafter.context_kv` + `forward`, the
same calls as inference): its context is the sequence's injected K/V, valid strictly before the block's
anchor (the anchor's own target feature does not exist yet at inference), and it sees its whole block.
The context K/V of a sequence is computed once and shared by its blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dflash_trt.models.drafter import DFlashDrafter, output_logits
from dflash_trt.models.drafter2 import DFlash2Drafter
from dflash_trt.models.layers import Keys, Rope


@dataclass
class Batch:
    """Padded sequences with sampled anchors. Positions are absolute (context j sits at pos_offset + j)."""

    features: Tensor  # [b, L, F] target features of the (cropped) sequences
    pos_offset: Tensor  # [b] absolute position of column 0
    block_ids: Tensor  # [b, n, B] = [token at anchor, MASK ...]
    anchors: Tensor  # [b, n] column of each anchor (padded anchors: any column, valid False)
    valid: Tensor  # [b, n] bool
    labels: Tensor  # [b, n, B-1] target tokens at anchor+1 .. anchor+B-1


def drafter_rope(drafter: DFlashDrafter) -> Rope:
    """RoPE tables over the drafter's whole position range."""
    cfg = drafter.cfg
    return Rope.build(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, cfg.max_position_embeddings)


def block_hidden(drafter: DFlashDrafter, embed: nn.Module, batch: Batch, rope: Rope) -> Tensor:
    """Final-normed hidden states [b*n, B, H] of every block (padded anchors see only their own block)."""
    b, n, block = batch.block_ids.shape
    ctx_pos = batch.pos_offset[:, None] + torch.arange(batch.features.shape[1])

    def per_block(t: Tensor) -> Tensor:  # [b, L, kv_heads, d] -> [b*n, kv_heads, L, d]
        t = t.transpose(1, 2)
        return t[:, None].expand(b, n, *t.shape[1:]).reshape(b * n, *t.shape[1:])

    ctx_lens = torch.where(batch.valid, batch.anchors, 0)  # [b, n]: columns before the anchor
    cols = torch.arange(batch.features.shape[1])
    valid = (cols < ctx_lens[:, :, None]).view(b * n, -1)
    pos = ctx_pos[:, None].expand(b, n, -1).reshape(b * n, -1)
    context = [
        Keys(per_block(k), per_block(v), pos, valid) for k, v in drafter.context_kv(batch.features, ctx_pos, rope)
    ]
    positions = (batch.pos_offset[:, None, None] + batch.anchors[:, :, None] + torch.arange(block)).view(b * n, block)
    return drafter(embed(batch.block_ids.view(b * n, block)), positions, context, rope)


def mask_logits(lm_head: nn.Module, hidden: Tensor, valid: Tensor) -> Tensor:
    """LM-head logits [m, B-1, V] at the mask positions of the m valid blocks (hidden [b*n, B, H], valid [b, n])."""
    return lm_head(hidden[:, 1:][valid.view(-1)])


class DecayedCrossEntropy(torch.autograd.Function):
    """mean over blocks of sum_k w_k CE(logits_k, label_k), and the argmax, in one pass over the logits.

    The backward writes (softmax - onehot) * w_k / m straight into a gradient of the logits' dtype,
    instead of autograd's chain of fp32 copies, log-softmax and NLL backward over the [m, B-1, V] tensor.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        lf = logits.float()
        lse = torch.logsumexp(lf, dim=-1)
        ce = lse - lf.gather(-1, labels[..., None])[..., 0]
        ctx.save_for_backward(logits, labels, lse, weights)
        return (ce * weights).sum(-1).mean(), lf.argmax(-1)

    @staticmethod
    def backward(ctx, grad: Tensor, _argmax_grad: Tensor) -> tuple[Tensor, None, None]:
        logits, labels, lse, weights = ctx.saved_tensors
        g = logits.to(torch.float32, copy=True).sub_(lse[..., None]).exp_()
        g.scatter_add_(-1, labels[..., None], torch.full_like(lse[..., None], -1.0))
        g.mul_((grad * weights / logits.shape[0])[None, :, None])
        return g.to(logits.dtype), None, None


def loss_and_accuracy(logits: Tensor, labels: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Position-decayed cross-entropy over logits [m, B-1, V] and accuracy per position [B-1]."""
    loss, pred = DecayedCrossEntropy.apply(logits, labels, weights)
    return loss, (pred == labels).float().mean(0)


def expected_tau(acc: Tensor | list[float]) -> float:
    """Tokens per step if position k is accepted with probability acc_k independently: 1 + sum_k prod_{j<=k} acc_j."""
    acc = torch.as_tensor(acc, dtype=torch.float64)
    return 1.0 + float(torch.cumprod(acc, 0).sum())


def frozen(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def init_dflash2(drafter: DFlash2Drafter) -> None:
    """Start DFlash2's extras as no-ops so a fresh (or warm-started) drafter begins as its v1 layers: conv tap
    0 = identity (base 1, other taps and the dynamic projection 0), and a zero selector projection (no bigram
    term) over unit-normal codebooks, which then receive gradient through the projection."""
    with torch.no_grad():
        for layer in drafter.layers:
            for conv in (layer.attn_conv, layer.mlp_conv):
                conv.base.zero_()
                conv.base[:, 0] = 1.0
                conv.proj.weight.zero_()
        drafter.selector.pred.weight.normal_()
        drafter.selector.succ.weight.normal_()
        drafter.selector.proj.weight.zero_()


def selector_loss_and_accuracy(
    drafter: DFlash2Drafter, hidden: Tensor, logits: Tensor, batch: Batch, weights: Tensor
) -> tuple[Tensor, Tensor]:
    """DFlash2 loss: decayed CE of the drafter's own logits plus decayed CE of the selector's full-vocab scores
    with teacher-forced predecessors (position k's predecessor is the true token at k-1, the anchor for k=1:
    exactly the walk's state whenever position k can still be accepted). Accuracy per position is the
    inference rule under teacher forcing: the best-scoring of the top-k candidates equals the label.

    hidden [b*n, B, H] of all blocks, logits [m, B-1, V] of the m valid ones.
    """
    valid = batch.valid.view(-1)
    labels = batch.labels[batch.valid]  # [m, B-1]
    logits = output_logits(drafter.cfg, logits)
    sel = drafter.selector
    preds = torch.cat([batch.block_ids[batch.valid][:, :1], labels[:, :-1]], dim=1)  # [m, B-1]
    query = sel.pred(preds) * sel.proj(hidden[:, 1:][valid])  # [m, B-1, r]
    scores = logits + query @ sel.succ.weight.t().to(query.dtype)
    loss_unary, _ = DecayedCrossEntropy.apply(logits, labels, weights)
    loss_sel, _ = DecayedCrossEntropy.apply(scores, labels, weights)
    with torch.no_grad():
        candidates = logits.topk(drafter.cfg.selector_top_k, dim=-1).indices
        best = candidates.gather(-1, scores.gather(-1, candidates).argmax(-1, keepdim=True))[..., 0]
    return loss_unary + loss_sel, (best == labels).float().mean(0)

"""Training forward and loss of a DFlash drafter, built from the drafter's own modules.

Only the attention layout differs from inference (`DFlashDrafter.append_context` + `draft_logits`): here
the fused context of the whole sequence and all blocks go through each layer in one pass, under the
block mask of `blocks.block_mask`. The context/block projections (`context_kv`, `block_qkv`: norms,
RoPE), output projection, MLP, embedding and LM head are the drafter's own calls: one source of truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dflash_trt.models.drafter import DFlashDrafter
from dflash_trt.models.layers import attention, rope_inv_freq, rope_tables


@dataclass
class Batch:
    """Padded sequences with sampled anchors. Positions are absolute (context j sits at pos_offset + j)."""

    features: Tensor  # [b, L, F] target features of the (cropped) sequences
    pos_offset: Tensor  # [b] absolute position of column 0
    block_ids: Tensor  # [b, n, B] = [token at anchor, MASK ...]
    anchors: Tensor  # [b, n] column of each anchor (padded anchors: any column, valid False)
    valid: Tensor  # [b, n] bool
    labels: Tensor  # [b, n, B-1] target tokens at anchor+1 .. anchor+B-1


class RopeTables:
    """cos/sin tables for the drafter's rope config, grown on demand."""

    def __init__(self, drafter: DFlashDrafter) -> None:
        self.inv_freq = rope_inv_freq(drafter.cfg.head_dim, drafter.cfg.rope_theta, drafter.cfg.rope_scaling)
        self.cos, self.sin = rope_tables(self.inv_freq, 0)

    def __call__(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        need = int(positions.max()) + 1
        if need > len(self.cos):
            self.cos, self.sin = rope_tables(self.inv_freq, max(need, 2 * len(self.cos)))
        return self.cos[positions], self.sin[positions]


def block_hidden(drafter: DFlashDrafter, batch: Batch, visible: Tensor, rope: RopeTables) -> Tensor:
    """Final-normed hidden states [b, n*B, H] of every block position."""
    b, n, block = batch.block_ids.shape
    ctx_len = batch.features.shape[1]
    ctx_pos = batch.pos_offset[:, None] + torch.arange(ctx_len)
    blk_pos = (batch.pos_offset[:, None, None] + batch.anchors[:, :, None] + torch.arange(block)).view(b, n * block)
    cos_c, sin_c = rope(ctx_pos)
    cos_b, sin_b = rope(blk_pos)
    c = drafter.hidden_norm(drafter.fc(batch.features))
    x = drafter.embed(batch.block_ids.view(b, n * block))
    for layer in drafter.layers:
        attn = layer.attn
        k_ctx, v_ctx = attn.context_kv(c, cos_c, sin_c)
        q, k, v = attn.block_qkv(layer.attn_norm(x), cos_b, sin_b)
        k, v = torch.cat([k_ctx, k], dim=1), torch.cat([v_ctx, v], dim=1)
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), visible[:, None])
        x = x + attn.wo(out.transpose(1, 2).reshape(b, n * block, -1))
        x = x + layer.mlp(layer.mlp_norm(x))
    return drafter.norm(x)


def mask_logits(drafter: DFlashDrafter, hidden: Tensor, valid: Tensor, block: int) -> Tensor:
    """LM-head logits [m, B-1, V] at the mask positions of the m valid blocks."""
    b = hidden.shape[0]
    h = hidden.view(b, -1, block, hidden.shape[-1])[:, :, 1:][valid]
    return drafter.lm_head(h)


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
